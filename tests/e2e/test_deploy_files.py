"""The deployment files cannot run here (no container engine), so check what can be
checked: their configs parse, their commands name nodes that the config has in the
right roles, and the compose file's commands start the same cluster as local
processes when the host names are mapped to loopback ports."""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmq.config import load_config, parse_config
from dmq.node import parse_roles, resolve_node
from tests.support.procs import free_ports, toml_config
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _compose_services() -> dict[str, list[str]]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {name: svc["command"] for name, svc in doc["services"].items()}


def _opt(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_compose_commands_match_the_docker_config() -> None:
    cfg = load_config(ROOT / "deploy" / "docker-cluster.toml")
    services = _compose_services()
    assert len(services) == len(cfg.controllers) + len(cfg.brokers) == 6
    for name, cmd in services.items():
        node_id = int(_opt(cmd, "--node-id"))
        spec = resolve_node(cfg, node_id, parse_roles(_opt(cmd, "--role")), "/data")
        assert spec.address.host == name  # the node listens on its own service name
        assert _opt(cmd, "--config") == "/app/config/docker-cluster.toml"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/docker-cluster.toml ./config/docker-cluster.toml" in dockerfile
    assert "USER dmq" in dockerfile and 'ENTRYPOINT ["dmq"]' in dockerfile


def test_k8s_statefulsets_derive_ids_that_the_configmap_has() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "dmq.yaml").read_text()))
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    import tomllib

    cfg = parse_config(tomllib.loads(cm["data"]["cluster.toml"]))
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        name = sts["metadata"]["name"]
        container = sts["spec"]["template"]["spec"]["containers"][0]
        args = " ".join(container["args"])
        base = int(re.search(r"\+ (\d+) \)\)", args).group(1))  # type: ignore[union-attr]
        role = re.search(r"--role (\S+)", args).group(1)  # type: ignore[union-attr]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for ordinal in range(sts["spec"]["replicas"]):
            spec = resolve_node(cfg, ordinal + base, parse_roles(role), "/data")
            assert spec.address.host == f"{name}-{ordinal}.{name}"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_compose_cluster_starts_locally(tmp_path: Path) -> None:
    services = _compose_services()
    ports = dict(zip(services, free_ports(len(services)), strict=True))
    ctl = [(int(_opt(c, "--node-id")), ports[n]) for n, c in services.items()
           if _opt(c, "--role") == "controller"]
    brk = [(int(_opt(c, "--node-id")), ports[n]) for n, c in services.items()
           if _opt(c, "--role") == "broker"]
    config = tmp_path / "local.toml"
    config.write_text(toml_config(ctl, brk, {"default.replication.factor": 3,
                                            "min.insync.replicas": 2}))
    procs: list[subprocess.Popen[bytes]] = []  # controllers first: stopped last
    services = dict(sorted(services.items(), key=lambda kv: _opt(kv[1], "--role") != "controller"))
    ports = {name: ports[name] for name in services}  # in the order they start
    try:
        for name, cmd in services.items():
            args = [a.replace("/app/config/docker-cluster.toml", str(config))
                    .replace("/data", str(tmp_path / name)) for a in cmd]
            logf = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed below
            procs.append(subprocess.Popen([sys.executable, "-m", "dmq", *args], stdout=logf,
                                          stderr=subprocess.STDOUT))
            logf.close()
        for (name, port), proc in zip(ports.items(), procs, strict=True):
            # seven interpreters start at once: on a loaded machine that takes a while;
            # a node that exits instead fails the test at once, with its log
            with contextlib.suppress(AssertionError):
                wait_until(lambda p=proc, n=port: p.poll() is not None or _listening(n), 90,
                           f"{name} listening on {port}")
            if proc.poll() is not None or not _listening(port):
                log = (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"{name} (exit {proc.poll()}) not listening on {port}:\n{log}")
        out = subprocess.run([sys.executable, "-m", "dmq", "api-versions", "--bootstrap",
                              f"127.0.0.1:{ports['broker-1']}"], capture_output=True, text=True,
                             timeout=30, check=False)
        assert out.returncode == 0, out.stderr
        assert '"node_id": 101' in out.stdout, shlex.quote(out.stdout)
    finally:
        # the brokers first, then the controllers (a broker's controlled shutdown needs one)
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

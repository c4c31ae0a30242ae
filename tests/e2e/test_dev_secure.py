"""`dmq dev --secure`: TLS everywhere, SASL logins and ACLs, and every command it prints
works as printed: `dmq topics list`, dmq-produce and dmq-consume with the generated
admin.properties, the kcat line (when kcat is installed) and the curl line (when curl
is). A client without credentials is refused at once with one clear line."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka.support import free_block, start_dev, stop_dev

pytestmark = pytest.mark.slow


class SecureDev:
    def __init__(self, proc: subprocess.Popen[str], lines: list[str], data_dir: Path,
                 base: int) -> None:
        self.proc = proc
        self.lines = lines
        self.data_dir = data_dir
        self.base = base

    def command(self, program: str, sub: str | None = None) -> str:
        """The printed line running `program` (its last pipeline stage; the program's
        path may be absolute) with first argument `sub` when given."""
        for line in self.lines:
            text = line.strip()
            stage = text.split("|")[-1].strip()
            words = shlex.split(stage) if stage else []
            if words and Path(words[0]).name == program and (sub is None
                                                             or words[1:2] == [sub]):
                return text
        raise AssertionError(f"no printed {program} command in:\n{''.join(self.lines)}")


@pytest.fixture(scope="module")
def secure_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureDev]:
    """`dmq dev --secure` with one combined node (a free base port for its protocol,
    Kafka and HTTP ports)."""
    tmp = tmp_path_factory.mktemp("secure")
    base = free_block((0, 20, 30))
    proc, lines = start_dev(tmp, base, brokers=1, extra=("--secure",))
    try:
        assert lines and lines[-1].startswith("Ctrl-C stops"), "".join(lines)
        yield SecureDev(proc, lines, tmp / "dev", base)
    finally:
        stop_dev(proc)


def _run(line: str, stdin: str | None = None, timeout: float = 60
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shlex.split(line), input=stdin, capture_output=True, text=True,
                          timeout=timeout)


def test_admin_properties_is_private_and_holds_the_printed_password(
        secure_dev: SecureDev) -> None:
    props = secure_dev.data_dir / "admin.properties"
    assert stat.S_IMODE(props.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in props.read_text().splitlines()
                  if line and not line.startswith("#"))
    assert values["security.protocol"] == "SASL_SSL"
    assert values["sasl.username"] == "admin"
    assert len(values["sasl.password"]) >= 16
    assert Path(values["ssl.ca.location"]).is_file()
    out = "".join(secure_dev.lines)
    assert f"password {values['sasl.password']}" in out
    assert "consumed 'hello from dmq'" in out  # the smoke message went through TLS + SASL


def test_printed_dmq_commands_work_as_printed(secure_dev: SecureDev) -> None:
    listed = _run(secure_dev.command("dmq", "topics"))
    assert listed.returncode == 0, listed.stderr
    assert "hello" in listed.stdout.split()

    produce = secure_dev.command("dmq-produce")
    echo, _, tool = produce.partition("|")
    typed = shlex.split(echo)[1]
    produced = _run(tool, stdin=typed + "\n")
    assert produced.returncode == 0, produced.stderr

    # the consume line runs until stopped: read its output until the message shows
    consume = subprocess.Popen(shlex.split(secure_dev.command("dmq-consume")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert consume.stdout is not None
    seen: queue.Queue[str] = queue.Queue()
    out = consume.stdout

    def pump() -> None:
        for text in out:
            seen.put(text)

    threading.Thread(target=pump, daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while typed not in got and time.monotonic() < deadline:
            try:
                got.append(seen.get(timeout=1).rstrip("\n"))
            except queue.Empty:
                if consume.poll() is not None:
                    break
    finally:
        consume.terminate()
        consume.wait(timeout=10)
    assert got[:2] == ["hello from dmq", typed], (got, consume.stderr and consume.stderr.read())


def test_a_client_without_credentials_is_refused_in_one_line(secure_dev: SecureDev) -> None:
    bootstrap = f"127.0.0.1:{secure_dev.base}"
    env = {k: v for k, v in os.environ.items() if k != "DMQ_COMMAND_CONFIG"}
    for args in ([sys.executable, "-m", "dmq", "topics", "list", "--bootstrap", bootstrap],
                 [sys.executable, "-c", "import sys; from dmq.cli.tools import consume_main; "
                  "consume_main(sys.argv[1:])", "--bootstrap", bootstrap, "--topic", "hello"]):
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ") and "does the listener require TLS?" in lines[0]
        assert "--command-config" in lines[0]


def test_wrong_credentials_are_refused_in_one_line(secure_dev: SecureDev,
                                                   tmp_path: Path) -> None:
    """TLS but no SASL login: the node's SASL refusal, at once."""
    props = dict(line.split("=", 1) for line in
                 (secure_dev.data_dir / "admin.properties").read_text().splitlines()
                 if line and not line.startswith("#"))
    ssl_only = tmp_path / "ssl.properties"
    ssl_only.write_text(f"security.protocol=SSL\nssl.ca.location={props['ssl.ca.location']}\n")
    done = subprocess.run([sys.executable, "-m", "dmq", "topics", "list", "--bootstrap",
                           f"127.0.0.1:{secure_dev.base}", "--command-config", str(ssl_only)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: [SASL_AUTHENTICATION_FAILED]"), \
        done.stderr


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_printed_kcat_line_works(secure_dev: SecureDev) -> None:
    done = _run(secure_dev.command("kcat"))
    assert done.returncode == 0, done.stderr
    assert "1 brokers:" in done.stdout and "topic \"hello\"" in done.stdout, done.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_printed_curl_line_works(secure_dev: SecureDev) -> None:
    done = _run(secure_dev.command("curl"))
    assert done.returncode == 0, done.stderr
    brokers = json.loads(done.stdout)
    assert [b["brokerId"] for b in brokers] == [1]
    # and without the login, the same URL is refused
    line = shlex.split(secure_dev.command("curl"))
    i = line.index("-u")
    del line[i:i + 2]
    refused = subprocess.run([*line, "-s", "-o", "/dev/null", "-w", "%{http_code}"],
                             capture_output=True, text=True, timeout=30)
    assert refused.stdout == "401"


def test_readme_quick_start_shows_what_dev_prints(secure_dev: SecureDev) -> None:
    """README's Security quick start lists the commands `dmq dev --secure --controllers 1
    --brokers 1 --base-port 19091` prints, with its paths shortened and the password
    elided: the same commands, in the same order."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Security", 1)[1].split("**Quick start.**", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    readme = [line for line in block.splitlines()
              if line.strip() and not line.startswith(("#", ".venv/bin/dmq dev"))]
    password = next(line.split("password ", 1)[1].split(" ", 1)[0]
                    for line in secure_dev.lines if line.startswith("superuser:"))
    base = secure_dev.base
    start = next(i for i, line in enumerate(secure_dev.lines) if line.startswith("try it:"))
    printed = []
    for line in secure_dev.lines[start + 1:]:
        if not line.startswith("  "):
            break
        line = line.strip().replace(str(secure_dev.data_dir), "dmq-dev-data")
        line = re.sub(r"\S*/(dmq(-produce|-consume)?) ", r"\1 ", line)
        for offset in (30, 20, 0):
            line = line.replace(f"127.0.0.1:{base + offset}", f"127.0.0.1:{19091 + offset}")
        printed.append(line.replace(password, "3zQ...Hk"))
    assert readme == printed


def test_cluster_start_waits_for_a_tls_node(tmp_path: Path) -> None:
    """`dmq cluster start` asks a TLS node whether it answers over TLS (verified
    against the config's CA): it returns once the node is up instead of timing out."""
    from dmq.cli.dev import free_base_port
    from dmq.security.certs import CA

    ca = CA(tmp_path / "certs")
    ca.issue("node-1")
    port = free_base_port(1, 1)
    config = tmp_path / "cluster.toml"
    certs = tmp_path / "certs"
    config.write_text(
        f'[[controllers]]\nid = 1\nhost = "127.0.0.1"\nport = {port}\n\n[settings]\n'
        f'"ssl.certificate.location" = "{certs}/node-{{id}}.pem"\n'
        f'"ssl.key.location" = "{certs}/node-{{id}}.key"\n'
        f'"ssl.ca.location" = "{certs}/ca.pem"\n')
    data = tmp_path / "data"
    done = subprocess.run([sys.executable, "-m", "dmq", "cluster", "start", "--config",
                           str(config), "--data-dir", str(data), "--timeout-ms", "30000"],
                          capture_output=True, text=True, timeout=60)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "started node 1" in done.stdout
    finally:
        stopped = subprocess.run([sys.executable, "-m", "dmq", "cluster", "stop",
                                  "--data-dir", str(data)],
                                 capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr


def test_python_clients_with_security_from_admin_properties(secure_dev: SecureDev) -> None:
    """The library's `security=` (no context variables set): Admin, GroupAdmin, a
    producer and a group consumer, as the generated admin."""
    import asyncio

    from dmq.client.admin import Admin
    from dmq.client.admin_groups import GroupAdmin
    from dmq.client.consumer import Consumer
    from dmq.client.producer import Producer
    from dmq.protocol.connection import DEFAULT_SASL, DEFAULT_TLS
    from dmq.security.client_config import ClientSecurity

    sec = ClientSecurity.from_file(secure_dev.data_dir / "admin.properties")
    bootstrap = f"127.0.0.1:{secure_dev.base}"

    async def go() -> tuple[list[str], bytes, list[str]]:
        assert DEFAULT_SASL.get() is None and DEFAULT_TLS.get() is None
        async with Admin(bootstrap, security=sec) as admin:
            await admin.create_topic("lib", 1, 1)
            topics = sorted(await admin.list_topics())
        async with Producer(bootstrap, security=sec, linger_ms=0) as p:
            await p.send_and_wait("lib", b"from the library")
        async with Consumer(bootstrap, security=sec, group_id="lib-group",
                            auto_offset_reset="earliest") as c:
            c.subscribe(["lib"])
            got: list[bytes] = []
            for _ in range(30):
                for records in (await c.getmany(timeout_ms=1000)).values():
                    got += [r.value for r in records]
                if got:
                    break
            await c.commit()
        async with GroupAdmin(bootstrap, security=sec) as ga:
            groups = [g.group_id for g in await ga.list_groups()]
        return topics, got[0] if got else b"", groups

    topics, value, groups = asyncio.run(go())
    assert "lib" in topics and value == b"from the library" and "lib-group" in groups

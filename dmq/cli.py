"""The `dmq` command. Thin: parse flags, build config objects, call the library, print."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from dmq.config import ClusterConfig, ConfigError, load_config, parse_override

log = logging.getLogger("dmq.cli")


def _install_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        pass


def _load(config_path: str, overrides: tuple[str, ...]) -> ClusterConfig:
    config = load_config(config_path)
    if overrides:
        config = config.with_settings(dict(parse_override(o) for o in overrides))
    return config


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmq")
def main() -> None:
    """DistributedMQ: a replicated, persistent message log."""


@main.command()
@click.option("--role", "role", required=True,
              help="controller, broker, or controller,broker (combined mode)")
@click.option("--node-id", type=int, required=True, help="this node's id in the config")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="cluster config: TOML, or the seed's services.json")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="data folder (default ./dmq-data/node-<id>)")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a setting, e.g. --set broker.session.timeout.ms=30000")
@click.option("--http-port", type=int, default=None,
              help="serve /metrics, /healthz, /readyz and status JSON on this port "
                   "(default: the node's http_port in the config, else off; 0: any free port)")
@click.option("--kafka-port", type=int, default=None,
              help="serve Kafka clients on this port (broker roles; same as "
                   "--set kafka.port=N; default off)")
def server(role: str, node_id: int, config_path: str, data_dir: str | None, log_level: str,
           log_format: str, overrides: tuple[str, ...], http_port: int | None,
           kafka_port: int | None) -> None:
    """Run one node until SIGTERM or SIGINT."""
    from dmq.logs import setup_logging
    from dmq.node import Node, parse_roles, resolve_node

    setup_logging(log_level, f"node-{node_id}", log_format)
    if kafka_port is not None:
        overrides = (*overrides, f"kafka.port={kafka_port}")
    try:
        config = _load(config_path, overrides)
        spec = resolve_node(config, node_id, parse_roles(role), data_dir, http_port)
    except ConfigError as exc:
        _fail(str(exc), 2)
        return
    _install_uvloop()

    async def run() -> int:
        node = Node(config, spec)
        stop = asyncio.Event()
        node.on_fatal = stop.set  # crash-only: an essential task died
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await node.start()
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            await node.stop()
            return 1
        await stop.wait()
        if node.failure is None:
            await node.stop()
            return 0
        return await _stop_failed_node(node)

    sys.exit(asyncio.run(run()))


async def _stop_failed_node(node: Any) -> int:
    """A node whose essential task died stops within a bound, then the process exits
    with EXIT_FATAL; if even the stop hangs, the process ends at once."""
    import os

    from dmq.aio import wait_for
    from dmq.node import EXIT_FATAL

    try:
        await wait_for(node.stop(), FATAL_STOP_TIMEOUT_S)
    except Exception:  # exiting anyway; the reason is logged already
        logging.shutdown()
        os._exit(EXIT_FATAL)
    return EXIT_FATAL


FATAL_STOP_TIMEOUT_S = 10.0


@main.command("api-versions")
@click.option("--bootstrap", default="127.0.0.1:9091", show_default=True, help="HOST:PORT")
@click.option("--timeout-ms", default=5000, show_default=True)
def api_versions(bootstrap: str, timeout_ms: int) -> None:
    """Ask a node which APIs and versions it serves."""
    from dmq.protocol.api import ApiKey
    from dmq.protocol.connection import request_once
    from dmq.protocol.errors import DmqError

    host, _, port = bootstrap.rpartition(":")
    try:
        body: Any = asyncio.run(request_once(host, int(port), ApiKey.API_VERSIONS, {},
                                             timeout_ms=timeout_ms))
    except (DmqError, ValueError) as exc:
        _fail(str(exc))
        return
    names = {int(k): k.name for k in ApiKey}
    body["apis"] = [[names.get(k, str(k)), lo, hi] for k, lo, hi in body["apis"]]
    click.echo(json.dumps(body, indent=2))


@main.command()
@click.option("--controllers", default=3, show_default=True, help="number of controllers")
@click.option("--brokers", default=3, show_default=True, help="number of brokers")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="where node data and the generated config go (default ./dmq-dev-data)")
@click.option("--base-port", default=None, type=int,
              help="controllers listen from here (default 9091, the seed's layout); the "
                   "brokers' Kafka listeners from here + 20")
@click.option("--broker-base-port", default=None, type=int,
              help="brokers listen from here (default 8081 as in the seed; base+10 when "
                   "--base-port is given)")
@click.option("--quiet", is_flag=True, help="write node logs to files instead of the terminal")
@click.option("--check", is_flag=True,
              help="start, verify the cluster end to end, stop, and exit (0 when healthy)")
@click.option("--http-base-port", type=int, default=None,
              help="serve HTTP (/metrics, /healthz, REST) from this port, same offsets as "
                   "--base-port (default: off)")
def dev(controllers: int, brokers: int, data_dir: str | None, base_port: int | None,
        broker_base_port: int | None, quiet: bool, check: bool,
        http_base_port: int | None) -> None:
    """Start a whole local cluster as child processes; Ctrl-C stops it."""
    from dmq.devcluster import KAFKA_PORT_OFFSET, DevCluster, default_data_dir, smoke_check

    _install_uvloop()
    if base_port is None:
        base_port = 9091
        if broker_base_port is None:
            broker_base_port = 8081
    cluster = DevCluster(Path(data_dir) if data_dir else default_data_dir(), controllers,
                         brokers, base_port, quiet=quiet or check, echo=click.echo,
                         http_base_port=http_base_port, broker_base_port=broker_base_port,
                         kafka_base_port=base_port + KAFKA_PORT_OFFSET)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await cluster.start()
            click.echo(f"dmq dev: {len(cluster.nodes)} node(s) up, data in {cluster.data_dir}")
            click.echo(f"bootstrap: {cluster.bootstrap}")
            if cluster.kafka_bootstrap is not None:
                click.echo(f"Kafka clients: {cluster.kafka_bootstrap}  (e.g. kcat -b "
                           f"{cluster.kafka_bootstrap} -L)")
            if http_base_port is not None:
                click.echo("http: " + ", ".join(
                    f"node {n.node_id} http://{cluster.host}:{cluster.http_port(n)}"
                    for n in cluster.nodes))
            for line in await smoke_check(cluster):
                click.echo(line)
            if check:
                return 0
            click.echo("Ctrl-C stops the cluster.")
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    died = asyncio.ensure_future(cluster.wait_for_exit())
                    await asyncio.wait([stopping, died], return_when=asyncio.FIRST_COMPLETED)
                    if not died.done():
                        died.cancel()
                    elif died.exception() is None:  # a node died: say why, keep the rest
                        click.echo(f"error: {died.result().exit_report()}", err=True)
                    else:  # no node left running
                        return 1
            finally:
                stopping.cancel()
            return 0
        except Exception as exc:
            click.echo(f"error: {exc}", err=True)
            return 1
        finally:
            click.echo("stopping the cluster...")
            await cluster.stop()
            click.echo("stopped.")

    sys.exit(asyncio.run(run()))


def _register_subcommands() -> None:
    """Admin command groups live in their own modules; each adds itself to `main`."""
    import importlib

    for module in ("dmq.cli_admin", "dmq.cli_groups", "dmq.cli_partitions"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(main)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    main()

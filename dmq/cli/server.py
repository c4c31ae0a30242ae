"""`dmq server` (run one node) and `dmq api-versions`. Thin: parse flags, build config
objects, call the library, print."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Any

import click

from dmq.cli.common import command_config_option, fail, install_uvloop
from dmq.config import ClusterConfig, ConfigError, load_config, parse_override


def _load(config_path: str, overrides: tuple[str, ...]) -> ClusterConfig:
    config = load_config(config_path)
    if overrides:
        config = config.with_settings(dict(parse_override(o) for o in overrides))
    return config


@click.command()
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
        fail(str(exc), 2)
    install_uvloop()

    async def run() -> int:
        node = Node(config, spec)
        stop = asyncio.Event()
        node.on_fatal = stop.set  # crash-only: an essential task died
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, node.reload_tls)  # renewed TLS files, now
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


@click.command("api-versions")
@click.option("--bootstrap", default="127.0.0.1:9091", show_default=True, help="HOST:PORT")
@click.option("--timeout-ms", default=5000, show_default=True)
@command_config_option
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
        fail(str(exc))
    names = {int(k): k.name for k in ApiKey}
    body["apis"] = [[names.get(k, str(k)), lo, hi] for k, lo, hi in body["apis"]]
    click.echo(json.dumps(body, indent=2))

"""Helpers shared by the `dmq` commands and the console tools: where the cluster is
(bootstrap resolution), running one admin call, the common admin options, the client
security option (`--command-config FILE`, default `$DMQ_COMMAND_CONFIG`), table output,
error exits, and installing uvloop (entry points only, never the library).

Everything here is public and used from several modules of `dmq.cli`; a helper used by
one module stays private in that module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from dmq.config import ConfigError, load_config, parse_override
from dmq.protocol.errors import DmqError

T = TypeVar("T")
DEFAULT_CONFIG = "config/cluster.toml"
COMMAND_CONFIG_ENV = "DMQ_COMMAND_CONFIG"


def install_uvloop() -> None:
    """Run asyncio on uvloop in this process (called by entry points before
    `asyncio.run`)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        pass


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `code`."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def resolve_bootstrap(bootstrap: str | None, config_path: str | None) -> str:
    """`--bootstrap` as given, else the controllers of `--config` (default
    `config/cluster.toml` when that file exists)."""
    if bootstrap:
        return bootstrap
    path = config_path or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    if path is None:
        raise click.UsageError(f"give --bootstrap HOST:PORT or --config (no {DEFAULT_CONFIG} "
                               "here)")
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return ",".join(c.address for c in config.controllers)


def run_admin(bootstrap: str | None, config_path: str | None, timeout_ms: int,
              fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run `fn(admin)` with an `Admin` on the resolved bootstrap; a cluster-side error
    becomes `error: ...` and exit 1, a bad argument a usage error."""
    from dmq.client.admin import Admin

    addrs = resolve_bootstrap(bootstrap, config_path)

    async def go() -> T:
        async with Admin(addrs, request_timeout_ms=timeout_ms) as admin:
            return await fn(admin)

    try:
        return asyncio.run(go())
    except DmqError as exc:
        fail(error_text(exc))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def error_text(exc: DmqError) -> str:
    """A cluster-side error as one line; when the cluster refused a client that ran
    without security settings, how to give them."""
    from dmq.metadata.discovery import refused
    from dmq.protocol.connection import DEFAULT_SASL, DEFAULT_TLS

    text = str(exc)
    if refused(exc) and DEFAULT_TLS.get() is None and DEFAULT_SASL.get() is None:
        text += (f" (a secured cluster: give its client properties with --command-config "
                 f"FILE or ${COMMAND_CONFIG_ENV})")
    return text


def load_security(path: str | None) -> Any:
    """The `dmq.security.client_config.ClientSecurity` of a Kafka client properties file
    (None without one); a bad file is a usage error naming the file and property."""
    if not path:
        return None
    from dmq.security.client_config import ClientConfigError, load

    try:
        return load(path)
    except ClientConfigError as exc:
        raise click.UsageError(str(exc)) from None


def command_config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--command-config FILE` (default: `$DMQ_COMMAND_CONFIG`): the command runs with
    that TLS and SASL identity. Every connection it opens (inside `asyncio.run` too: the
    settings are context variables) uses them; the command's own function does not see
    the option."""

    @functools.wraps(f)
    def with_security(*args: Any, command_config: str | None = None, **kwargs: Any) -> Any:
        security = load_security(command_config)
        with security.applied() if security is not None else contextlib.nullcontext():
            return f(*args, **kwargs)

    return click.option(
        "--command-config", "command_config", type=click.Path(dir_okay=False, exists=True),
        default=None, metavar="FILE", envvar=COMMAND_CONFIG_ENV, show_envvar=True,
        help="client security as Kafka client properties (security.protocol, "
             "ssl.ca.location, ssl.certificate.location, ssl.key.location, sasl.mechanism, "
             "sasl.username, sasl.password)")(with_security)


def admin_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every admin command: --bootstrap, --config, --timeout-ms and
    --command-config (`command_config_option`)."""
    f = command_config_option(f)
    f = click.option("--timeout-ms", default=30_000, show_default=True,
                     help="overall time limit of the request")(f)
    f = click.option("--config", "--config-file", "config_path",
                     type=click.Path(dir_okay=False), default=None,
                     help=f"cluster config whose controllers are the default bootstrap "
                          f"(default {DEFAULT_CONFIG} if present)")(f)
    f = click.option("--bootstrap", default=None, metavar="HOST:PORT[,HOST:PORT...]",
                     help="any controller or broker addresses")(f)
    return f


def parse_configs(pairs: tuple[str, ...]) -> dict[str, str]:
    """`KEY=VALUE` options as a dict; a malformed one is a usage error."""
    try:
        return dict(parse_override(p) for p in pairs)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def report_each(results: dict[str, Any], done: Callable[[str], str],
                error: Callable[[str, Any], str]) -> None:
    """One line per result: `done(name)` on stdout for a None error, `error(name, err)`
    on stderr otherwise; exit 1 after them when any failed."""
    failed = False
    for name, err in results.items():
        if err is not None:
            click.echo(error(name, err), err=True)
            failed = True
        else:
            click.echo(done(name))
    if failed:
        sys.exit(1)


def table(rows: list[list[Any]]) -> None:
    """Print rows as left-aligned columns (the first row is the header)."""
    if not rows:
        return
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())

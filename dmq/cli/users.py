"""`dmq users ...`: the SASL/HTTP users kept in the cluster's metadata, through
`dmq.client.admin.Admin` (see dmq.security.users).

    dmq users create alice --bootstrap HOST:PORT [--password PW]   (else asked, or a
    dmq users passwd alice ...                                      line from stdin)
    dmq users delete alice ...
    dmq users list ...

The password never leaves this process: a salt and the salted password are sent.
`--command-config FILE` (Kafka client properties) gives the TLS and SASL identity
when the cluster asks for one. Parse, call the library, print.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from dmq.cli.common import admin_options, fail, run_admin, table
from dmq.client.admin import SCRAM_MECHANISMS
from dmq.protocol.errors import ResourceNotFoundError


@click.group()
def users() -> None:
    """Create, list, change the password of and delete users (SCRAM credentials)."""


def _read_password(password: str | None, user: str) -> str:
    if password:
        return password
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            fail("no password: give --password, or one line on stdin")
        return line
    value: str = click.prompt(f"password for {user}", hide_input=True,
                              confirmation_prompt=True)
    return value


def _mechanisms(values: tuple[str, ...]) -> tuple[str, ...]:
    mechs = tuple(v.upper() for v in values) or SCRAM_MECHANISMS
    bad = [m for m in mechs if m not in SCRAM_MECHANISMS]
    if bad:
        raise click.UsageError(f"--mechanism: one of {', '.join(SCRAM_MECHANISMS)}")
    return mechs


_PASSWORD = click.option("--password", default=None,
                         help="the password (default: asked for, or one line of stdin)")
_MECHANISM = click.option("--mechanism", "mechanisms", multiple=True,
                          metavar="SCRAM-SHA-256|SCRAM-SHA-512",
                          help="credentials to set (default: both)")
_ITERATIONS = click.option("--iterations", type=int, default=8192, show_default=True,
                           help="PBKDF2 iterations (4096 to 16384)")


@users.command("create")
@click.argument("user")
@_PASSWORD
@_MECHANISM
@_ITERATIONS
@admin_options
def users_create(user: str, password: str | None, mechanisms: tuple[str, ...],
                 iterations: int, bootstrap: str | None,
                 config_path: str | None, timeout_ms: int) -> None:
    """Create USER (refused if it exists: use passwd)."""
    mechs = _mechanisms(mechanisms)
    secret = _read_password(password, user)

    async def go(a: Any) -> None:
        try:
            await a.describe_user_scram_credentials([user])
        except ResourceNotFoundError:
            pass
        else:
            fail(f"user {user!r} exists (change its password with: dmq users passwd)")
        await _set(a, user, mechs, secret, iterations)

    run_admin(bootstrap, config_path, timeout_ms, go)
    click.echo(f"created user {user}")


@users.command("passwd")
@click.argument("user")
@_PASSWORD
@_MECHANISM
@_ITERATIONS
@admin_options
def users_passwd(user: str, password: str | None, mechanisms: tuple[str, ...],
                 iterations: int, bootstrap: str | None,
                 config_path: str | None, timeout_ms: int) -> None:
    """Change USER's password (the old one is refused from then on)."""
    mechs = _mechanisms(mechanisms)
    secret = _read_password(password, user)

    async def go(a: Any) -> None:
        await a.describe_user_scram_credentials([user])  # RESOURCE_NOT_FOUND if none
        await _set(a, user, mechs, secret, iterations)

    run_admin(bootstrap, config_path, timeout_ms, go)
    click.echo(f"changed the password of {user}")


async def _set(a: Any, user: str, mechs: tuple[str, ...], password: str,
               iterations: int) -> None:
    err = (await a.alter_user_scram_credentials([(user, m, password) for m in mechs],
                                                iterations=iterations))[user]
    if err is not None:
        raise err


@users.command("delete")
@click.argument("user")
@admin_options
def users_delete(user: str, bootstrap: str | None,
                 config_path: str | None, timeout_ms: int) -> None:
    """Delete USER: it cannot log in anywhere any more."""
    async def go(a: Any) -> None:
        await a.delete_user(user)

    run_admin(bootstrap, config_path, timeout_ms, go)
    click.echo(f"deleted user {user}")


@users.command("list")
@admin_options
def users_list(bootstrap: str | None, config_path: str | None,
               timeout_ms: int) -> None:
    """Every user that can log in, with its mechanisms and iterations."""
    async def go(a: Any) -> dict[str, list[tuple[str, int]]]:
        result: dict[str, list[tuple[str, int]]] = await a.describe_user_scram_credentials()
        return result

    found = run_admin(bootstrap, config_path, timeout_ms, go)
    table([["USER", "MECHANISMS"]] + [
        [u, ", ".join(f"{m} ({i})" for m, i in creds)] for u, creds in sorted(found.items())])

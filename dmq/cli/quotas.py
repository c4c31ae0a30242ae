"""`dmq quotas ...`: client quotas (per-user produce and fetch byte rates, per broker)
kept in the cluster's metadata, through `dmq.client.admin.Admin` (see
dmq.security.quotas).

    dmq quotas set --user alice --producer-byte-rate 1048576 --consumer-byte-rate 2097152
    dmq quotas set --default --producer-byte-rate 10485760      (every user's default)
    dmq quotas remove --user alice [--producer-byte-rate] [--consumer-byte-rate]
    dmq quotas list

`--command-config FILE` (Kafka client properties) gives the TLS and SASL identity
when the cluster asks for one. Parse, call the library, print.
"""

from __future__ import annotations

from typing import Any

import click

from dmq.cli.common import admin_options, run_admin, table


@click.group()
def quotas() -> None:
    """Set, list and remove client quotas (bytes/s a user may produce or fetch, per
    broker)."""


def _entity(user: str | None, default: bool) -> str | None:
    if (user is None) == (not default):
        raise click.UsageError("give one of --user USER or --default")
    return None if default else user


_USER = click.option("--user", default=None, help="the user (a SASL user name, or the "
                     "name of a principal User:<name>)")
_DEFAULT = click.option("--default", "default", is_flag=True,
                        help="the default of every user without a quota of its own")


def _name(user: str | None) -> str:
    return "<default>" if user is None else user


@quotas.command("set")
@_USER
@_DEFAULT
@click.option("--producer-byte-rate", type=int, default=None,
              help="bytes/s the user may produce to each broker")
@click.option("--consumer-byte-rate", type=int, default=None,
              help="bytes/s the user may fetch from each broker")
@admin_options
def quotas_set(user: str | None, default: bool, producer_byte_rate: int | None,
               consumer_byte_rate: int | None, bootstrap: str | None,
               config_path: str | None, timeout_ms: int) -> None:
    """Set quotas of a user (or the default); those not given are left as they are."""
    entity = _entity(user, default)
    if producer_byte_rate is None and consumer_byte_rate is None:
        raise click.UsageError("give --producer-byte-rate and/or --consumer-byte-rate")

    async def go(a: Any) -> None:
        await a.set_client_quotas(entity, producer_byte_rate=producer_byte_rate,
                                  consumer_byte_rate=consumer_byte_rate)

    run_admin(bootstrap, config_path, timeout_ms, go)
    click.echo(f"set quotas of {_name(entity)}")


@quotas.command("remove")
@_USER
@_DEFAULT
@click.option("--producer-byte-rate", "producer", is_flag=True,
              help="remove only the producer quota")
@click.option("--consumer-byte-rate", "consumer", is_flag=True,
              help="remove only the consumer quota")
@admin_options
def quotas_remove(user: str | None, default: bool, producer: bool, consumer: bool,
                  bootstrap: str | None, config_path: str | None, timeout_ms: int) -> None:
    """Remove quotas of a user (or the default): both, unless one is named."""
    entity = _entity(user, default)
    keys = [k for k, on in (("producer_byte_rate", producer),
                            ("consumer_byte_rate", consumer)) if on]
    keys = keys or ["producer_byte_rate", "consumer_byte_rate"]

    async def go(a: Any) -> None:
        err = (await a.alter_client_quotas({entity: dict.fromkeys(keys)}))[entity]
        if err is not None:
            raise err

    run_admin(bootstrap, config_path, timeout_ms, go)
    click.echo(f"removed {', '.join(keys)} of {_name(entity)}")


@quotas.command("list")
@admin_options
def quotas_list(bootstrap: str | None, config_path: str | None, timeout_ms: int) -> None:
    """Every quota entry: user, producer and consumer byte rates (-: none)."""
    async def go(a: Any) -> dict[str | None, dict[str, int]]:
        found: dict[str | None, dict[str, int]] = await a.describe_client_quotas()
        return found

    found = run_admin(bootstrap, config_path, timeout_ms, go)
    table([["USER", "PRODUCER_BYTE_RATE", "CONSUMER_BYTE_RATE"]] + [
        [_name(u), q.get("producer_byte_rate", "-"), q.get("consumer_byte_rate", "-")]
        for u, q in found.items()])

"""`dmq groups list|describe|reset-offsets|delete-offsets|delete`: thin wrappers over
`dmq.client.admin_groups.GroupAdmin` (like kafka-consumer-groups.sh).

Bootstrap as in `dmq topics`: `--bootstrap HOST:PORT,...` (any controller or broker) or
the controllers of `--config`. Parse, call the library, print.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from dmq.cli.common import admin_options, report_each, run_admin, table

T = TypeVar("T")


def _run(bootstrap: str | None, config_path: str | None, timeout_ms: int,
         fn: Callable[[Any], Awaitable[T]]) -> T:
    """`dmq.cli.common.run_admin` with a `GroupAdmin` over its `Admin`."""
    from dmq.client.admin_groups import GroupAdmin

    async def with_groups(admin: Any) -> T:
        async with GroupAdmin(admin) as ga:
            return await fn(ga)

    return run_admin(bootstrap, config_path, timeout_ms, with_groups)


@click.group()
def groups() -> None:
    """List, describe, reset offsets of, and delete consumer groups."""


@groups.command("list")
@admin_options
@click.option("--json", "as_json", is_flag=True)
def groups_list(bootstrap: str | None, config_path: str | None, timeout_ms: int,
                as_json: bool) -> None:
    """Every group the coordinator knows or that has committed offsets."""
    listing = _run(bootstrap, config_path, timeout_ms, lambda ga: ga.list_groups())
    if as_json:
        click.echo(json.dumps([{"group_id": g.group_id, "state": g.state,
                                "members": g.members} for g in listing]))
        return
    table([["GROUP", "STATE", "MEMBERS"]] + [[g.group_id, g.state, g.members]
                                               for g in listing])


@groups.command("describe")
@click.argument("group_id")
@admin_options
@click.option("--json", "as_json", is_flag=True)
def groups_describe(group_id: str, bootstrap: str | None, config_path: str | None,
                    timeout_ms: int, as_json: bool) -> None:
    """Members, their partitions, committed offset, log end offset and lag."""
    d = _run(bootstrap, config_path, timeout_ms, lambda ga: ga.describe_group(group_id))
    if as_json:
        click.echo(json.dumps({
            "group_id": d.group_id, "state": d.state, "epoch": d.epoch,
            "assignor": d.assignor, "total_lag": d.total_lag,
            "members": [{"member_id": m.member_id, "instance_id": m.instance_id,
                         "member_epoch": m.member_epoch, "client_id": m.client_id,
                         "host": m.host, "assignment": sorted(map(list, m.assignment))}
                        for m in d.members],
            "partitions": [{"topic": p.topic, "partition": p.partition,
                            "committed": p.committed, "log_end_offset": p.log_end_offset,
                            "lag": p.lag, "owner": p.owner} for p in d.partitions]}))
        return
    click.echo(f"group: {d.group_id}  state: {d.state}  epoch: {d.epoch}  "
               f"assignor: {d.assignor}  members: {len(d.members)}  total lag: {d.total_lag}")
    clients = {m.member_id: m for m in d.members}
    table([["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "MEMBER", "CLIENT", "HOST"]]
           + [[p.topic, p.partition, "-" if p.committed is None else p.committed,
               "-" if p.log_end_offset is None else p.log_end_offset,
               "-" if p.lag is None else p.lag, p.owner or "-",
               clients[p.owner].client_id if p.owner in clients else "-",
               clients[p.owner].host if p.owner in clients else "-"]
              for p in d.partitions])


@groups.command("reset-offsets")
@click.argument("group_id")
@click.option("--topic", required=True, help="every partition of this topic")
@click.option("--to-earliest", is_flag=True)
@click.option("--to-latest", is_flag=True)
@click.option("--to-offset", type=int, default=None)
@click.option("--to-datetime", default=None, metavar="ISO",
              help="e.g. 2026-11-26T05:00:00 (local time unless it has an offset)")
@click.option("--dry-run", is_flag=True, help="show the new offsets, change nothing")
@admin_options
def groups_reset_offsets(group_id: str, topic: str, to_earliest: bool, to_latest: bool,
                         to_offset: int | None, to_datetime: str | None, dry_run: bool,
                         bootstrap: str | None, config_path: str | None,
                         timeout_ms: int) -> None:
    """Move an empty group's committed offsets."""
    chosen = [x for x in (to_earliest, to_latest, to_offset is not None,
                          to_datetime is not None) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --to-earliest, --to-latest, "
                               "--to-offset N, --to-datetime ISO")
    if to_datetime is not None:
        try:
            ts_ms = int(datetime.fromisoformat(to_datetime).timestamp() * 1000)
        except ValueError as exc:
            raise click.UsageError(f"--to-datetime: {exc}") from None
        result = _run(bootstrap, config_path, timeout_ms,
                      lambda ga: ga.reset_offsets_to_time(group_id, topic, ts_ms,
                                                          dry_run=dry_run))
    else:
        to: str | int = "earliest" if to_earliest else "latest" if to_latest else \
            int(to_offset)  # type: ignore[arg-type]
        result = _run(bootstrap, config_path, timeout_ms,
                      lambda ga: ga.reset_offsets(group_id, topic, to=to, dry_run=dry_run))
    table([["TOPIC", "PARTITION", "NEW-OFFSET"]] + [[t, p, o] for (t, p), o in
                                                      sorted(result.items())])
    click.echo("(dry run: nothing changed)" if dry_run else
               f"reset {len(result)} partitions of group {group_id}")


@groups.command("delete-offsets")
@click.argument("group_id")
@click.option("--topic", required=True)
@click.option("--partition", "partitions", type=int, multiple=True,
              help="repeatable; default: every partition with a committed offset")
@admin_options
def groups_delete_offsets(group_id: str, topic: str, partitions: tuple[int, ...],
                          bootstrap: str | None, config_path: str | None,
                          timeout_ms: int) -> None:
    """Delete a group's committed offsets of a topic it is not subscribed to."""
    async def delete(ga: Any) -> dict[str, Any]:
        wanted = list(partitions)
        if not wanted:
            desc = await ga.describe_group(group_id)
            wanted = [p.partition for p in desc.partitions
                      if p.topic == topic and p.committed is not None]
        result = await ga.delete_offsets(group_id, [(topic, p) for p in wanted])
        return {f"{t}-{p}": err for (t, p), err in sorted(result.items())}
    report_each(_run(bootstrap, config_path, timeout_ms, delete),
                lambda tp: f"deleted the committed offset of {tp}",
                lambda tp, err: f"error: {tp}: {err}")


@groups.command("delete")
@click.argument("group_ids", nargs=-1, required=True)
@admin_options
def groups_delete(group_ids: tuple[str, ...], bootstrap: str | None, config_path: str | None,
                  timeout_ms: int) -> None:
    """Delete empty groups and their committed offsets."""
    report_each(_run(bootstrap, config_path, timeout_ms,
                     lambda ga: ga.delete_groups(list(group_ids))),
                lambda g: f"deleted group {g}", lambda g, err: f"error: group {g}: {err}")

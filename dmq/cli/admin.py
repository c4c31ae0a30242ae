"""`dmq cluster ...` and `dmq topics ...`: thin wrappers over `dmq.client.admin.Admin`.

Every command takes `--bootstrap HOST:PORT[,HOST:PORT...]` (any controller or broker);
without it, the controllers listed in `--config` (default `config/cluster.toml` when
that file exists) are used. Parse, call the library, print; no logic of their own.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from dmq.cli.common import (
    admin_options,
    command_config_option,
    parse_configs,
    report_each,
    run_admin,
    table,
)
from dmq.cli.launch import cluster_start, cluster_stop
from dmq.protocol.errors import DmqError


@click.group()
def cluster() -> None:
    """Cluster status; start and stop the nodes of a config locally."""


cluster.add_command(cluster_start)
cluster.add_command(cluster_stop)


@cluster.command("status")
@admin_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (for scripts)")
def cluster_status(bootstrap: str | None, config_path: str | None, timeout_ms: int,
                   as_json: bool) -> None:
    """Controller leader and term, each controller's Raft state, brokers and heartbeats."""
    async def go(a: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        status = await a.cluster_status(timeout_ms=min(timeout_ms, 5000))
        if as_json:
            return status, []
        try:
            return status, await a.list_partition_reassignments()
        except DmqError:  # no active controller: the status above says so
            return status, []

    status, moving = run_admin(bootstrap, config_path, timeout_ms, go)
    if as_json:
        click.echo(json.dumps(status))
        return
    ctl = status["controller_id"]
    click.echo(f"controller: {ctl if ctl >= 0 else 'none'}  term: {status['controller_term']}  "
               f"metadata version: {status['metadata_version']}  "
               f"cluster id: {status.get('cluster_id') or '-'}")
    click.echo("\ncontrollers:")
    table([["ID", "ROLE", "TERM", "COMMIT", "APPLIED"]] + [
        [c["node_id"], c["role"], c["term"], c["commit_index"], c["last_applied"]]
        for c in status["controllers"]])
    click.echo("\nbrokers:")
    table([["ID", "ADDRESS", "STATE", "LAST HEARTBEAT"]] + [
        [b["broker_id"], f"{b['host']}:{b['port']}", b["state"],
         f"{b['last_heartbeat_ms_ago'] / 1000:.1f}s ago" if b["last_heartbeat_ms_ago"] >= 0
         else "-"] for b in status["brokers"]])
    if moving:
        click.echo("\nreassignments in progress:")
        table([["PARTITION", "REPLICAS", "ADDING", "REMOVING", "ISR", "BYTES LEFT"]] + [
            [f"{r['topic']}-{r['partition']}", ",".join(map(str, r["replicas"])),
             ",".join(map(str, r["adding"])), ",".join(map(str, r["removing"])),
             ",".join(map(str, r["isr"])),
             r["bytes_left"] if r.get("bytes_left", -1) >= 0 else "?"] for r in moving])


@click.group()
def topics() -> None:
    """Create, list, describe, alter and delete topics; delete records below an offset."""


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=int, default=-1, help="default: the cluster's num.partitions")
@click.option("--replication-factor", type=int, default=-1,
              help="default: the cluster's default.replication.factor")
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE", help="topic config")
@click.option("--config-file", "config_path", type=click.Path(dir_okay=False), default=None,
              help="cluster config whose controllers are the default bootstrap")
@click.option("--bootstrap", default=None, metavar="HOST:PORT[,HOST:PORT...]")
@click.option("--timeout-ms", default=30_000, show_default=True)
@command_config_option
def topics_create(name: str, partitions: int, replication_factor: int, configs: tuple[str, ...],
                  config_path: str | None, bootstrap: str | None, timeout_ms: int) -> None:
    """Create a topic."""
    cfg = parse_configs(configs)
    topic_id = run_admin(bootstrap, config_path, timeout_ms,
                         lambda a: a.create_topic(name, partitions, replication_factor, cfg))
    click.echo(f"created topic {name} ({topic_id})")


@topics.command("list")
@admin_options
def topics_list(bootstrap: str | None, config_path: str | None, timeout_ms: int) -> None:
    """List topic names."""
    for name in run_admin(bootstrap, config_path, timeout_ms, lambda a: a.list_topics()):
        click.echo(name)


@topics.command("describe")
@click.argument("names", nargs=-1)
@admin_options
@click.option("--json", "as_json", is_flag=True)
def topics_describe(names: tuple[str, ...], bootstrap: str | None, config_path: str | None,
                    timeout_ms: int, as_json: bool) -> None:
    """Partitions with leader, replicas and ISR (every topic when none is named)."""
    described = run_admin(bootstrap, config_path, timeout_ms,
                          lambda a: a.describe_topics(list(names) or None))
    if as_json:
        click.echo(json.dumps({n: {"id": t.topic_id, "configs": t.configs, "partitions": [
            {"partition": p.partition, "leader": p.leader, "leader_epoch": p.leader_epoch,
             "replicas": list(p.replicas), "isr": list(p.isr)}
            for _, p in sorted(t.partitions.items())]} for n, t in described.items()}))
        return
    for name, t in described.items():
        cfg = ",".join(f"{k}={v}" for k, v in sorted(t.configs.items()))
        click.echo(f"topic: {name}  id: {t.topic_id}  partitions: {len(t.partitions)}  "
                   f"replication factor: {t.replication_factor}"
                   + (f"  configs: {cfg}" if cfg else ""))
        table([["  PARTITION", "LEADER", "REPLICAS", "ISR"]] + [
            [f"  {p.partition}", p.leader if p.leader >= 0 else "none",
             ",".join(map(str, p.replicas)), ",".join(map(str, p.isr))]
            for _, p in sorted(t.partitions.items())])


@topics.command("delete")
@click.argument("name")
@admin_options
def topics_delete(name: str, bootstrap: str | None, config_path: str | None,
                  timeout_ms: int) -> None:
    """Delete a topic."""
    errors = run_admin(bootstrap, config_path, timeout_ms, lambda a: a.delete_topics([name]))
    if errors.get(name) is not None:
        click.echo(f"error: {errors[name]}", err=True)
        sys.exit(1)
    click.echo(f"deleted topic {name}")


@topics.command("alter")
@click.argument("name")
@click.option("--partitions", type=int, default=None, help="grow to this many partitions")
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE",
              help="set a topic config (KEY= resets it to the cluster default)")
@click.option("--config-file", "config_path", type=click.Path(dir_okay=False), default=None,
              help="cluster config whose controllers are the default bootstrap")
@click.option("--bootstrap", default=None, metavar="HOST:PORT[,HOST:PORT...]")
@click.option("--timeout-ms", default=30_000, show_default=True)
@command_config_option
def topics_alter(name: str, partitions: int | None, configs: tuple[str, ...],
                 config_path: str | None, bootstrap: str | None, timeout_ms: int) -> None:
    """Add partitions or change topic configs."""
    if partitions is None and not configs:
        raise click.UsageError("give --partitions N and/or --config KEY=VALUE")
    changes: dict[str, str | None] = {k: (v if v != "" else None)
                                      for k, v in parse_configs(configs).items()}

    async def go(admin: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if partitions is not None:
            out["partitions"] = (await admin.create_partitions({name: partitions}))[name]
        if changes:
            out["configs"] = (await admin.alter_configs({name: changes}))[name]
        return out

    report_each(run_admin(bootstrap, config_path, timeout_ms, go),
                lambda what: f"altered {what} of topic {name}",
                lambda what, err: f"error ({what}): {err}")


@topics.command("delete-records")
@click.option("--topic", default=None, help="with --partition and --before-offset")
@click.option("--partition", type=int, default=None)
@click.option("--before-offset", type=int, default=None,
              help="delete the records below this offset (-1: every record, up to the "
                   "high watermark)")
@click.option("--offset-json-file", type=click.Path(exists=True, dir_okay=False),
              default=None, help='kafka-delete-records.sh\'s file: {"partitions": [{"topic": '
                                 '"T", "partition": P, "offset": N}, ...], "version": 1}')
@admin_options
def topics_delete_records(topic: str | None, partition: int | None, before_offset: int | None,
                          offset_json_file: str | None, bootstrap: str | None,
                          config_path: str | None, timeout_ms: int) -> None:
    """Move partitions' log start up to an offset (Kafka's DeleteRecords)."""
    before = _delete_records_targets(topic, partition, before_offset, offset_json_file)
    results = run_admin(bootstrap, config_path, timeout_ms,
                        lambda a: a.delete_records(before, timeout_ms=timeout_ms))
    failed = False
    for (t, p), res in sorted(results.items()):
        if res.error is not None:
            failed = True
            click.echo(f"error: {t}-{p}: {res.error}", err=True)
        else:
            click.echo(f"{t}-{p}: log start (low watermark) {res.low_watermark}")
    if failed:
        sys.exit(1)


def _delete_records_targets(topic: str | None, partition: int | None,
                            before_offset: int | None,
                            offset_json_file: str | None) -> dict[tuple[str, int], int]:
    flags = (topic, partition, before_offset)
    if offset_json_file is not None:
        if any(f is not None for f in flags):
            raise click.UsageError("give --offset-json-file or --topic/--partition/"
                                   "--before-offset, not both")
        try:
            with open(offset_json_file) as f:
                rows = json.load(f)["partitions"]
            before = {(str(r["topic"]), int(r["partition"])): int(r["offset"]) for r in rows}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise click.UsageError(f"{offset_json_file}: not a delete-records offsets file "
                                   f'({{"partitions": [{{"topic", "partition", "offset"}}]}}): '
                                   f"{exc}") from None
        if not before:
            raise click.UsageError(f"{offset_json_file}: no partitions listed")
        return before
    if topic is None or partition is None or before_offset is None:
        raise click.UsageError("give --topic, --partition and --before-offset (or "
                               "--offset-json-file)")
    if before_offset < -1:
        raise click.UsageError(f"--before-offset {before_offset}: an offset >= 0, or -1 for "
                               "the high watermark")
    return {(topic, partition): before_offset}

"""`dmq partitions ...` and `dmq brokers ...`: day-2 operations over the Admin library.

- `partitions reassign --plan FILE` starts reassignments (JSON list of
  {"topic", "partition", "replicas"}); `--throttle BYTES_PER_S` first sets, as Kafka's
  tool, the dynamic configs `leader.replication.throttled.rate` and
  `follower.replication.throttled.rate` of every broker of the moves (old and new
  replicas; keys `KEY:ID`): each copies at most that many bytes/s for replicas being
  added, as follower and as leader; `--verify` says which are done and, once no
  reassignment is left in progress, removes every replication throttle (as Kafka's
  tool does), `--cancel` stops them (those of the plan, or all in progress) and removes
  the throttles likewise, `--generate --topics T,... --brokers ID,...` prints a balanced
  (rack-aware) plan for those topics over those brokers.
- `partitions elect-leaders [--topic T]` moves leadership back to preferred replicas.
- `brokers decommission ID` has the controller move every replica off a broker (alive
  or dead) and waits until it holds none; `brokers unregister ID` then forgets it
  (refused while it hosts replicas).

The controller does the work (see dmq.controller.planner, "reassignment"); these
commands parse, call, print.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import zlib
from typing import Any

import click

from dmq.cli.common import admin_options, run_admin
from dmq.controller.placement import assign_replicas
from dmq.protocol.errors import DmqError

THROTTLE_KEY = "follower.replication.throttled.rate"
LEADER_THROTTLE_KEY = "leader.replication.throttled.rate"
THROTTLE_KEYS = (LEADER_THROTTLE_KEY, THROTTLE_KEY)


def _is_throttle_key(key: str) -> bool:
    """A replication throttle, cluster-wide (`KEY`) or of one broker (`KEY:ID`)."""
    return key.partition(":")[0] in THROTTLE_KEYS


def _ids(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"{what}: expected comma-separated broker ids, got {text!r}"
                               ) from None
    if not out:
        raise click.UsageError(f"{what}: no broker ids given")
    return out


def load_plan(path: str) -> list[tuple[str, int, list[int]]]:
    """A plan file: [{"topic": str, "partition": int, "replicas": [int, ...]}, ...]
    (also accepted: {"partitions": [...]}, the form `--generate` prints)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise click.UsageError(f"cannot read plan {path}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("partitions")
    if not isinstance(data, list):
        raise click.UsageError(f"plan {path}: expected a JSON list of "
                               '{"topic", "partition", "replicas"}')
    out = []
    for i, row in enumerate(data):
        try:
            topic, partition, replicas = row["topic"], row["partition"], row["replicas"]
            if not (isinstance(topic, str) and isinstance(partition, int)
                    and isinstance(replicas, list)
                    and all(isinstance(r, int) for r in replicas)):
                raise TypeError
        except (KeyError, TypeError):
            raise click.UsageError(
                f"plan {path}: entry {i} must be {{\"topic\": str, \"partition\": int, "
                f"\"replicas\": [int, ...]}}, got {row!r:.200}") from None
        out.append((topic, partition, replicas))
    return out


def generate_plan(current: dict[str, dict[int, tuple[int, ...]]],
                  brokers: list[tuple[int, str | None]]) -> list[dict[str, Any]]:
    """A balanced placement of the given topics' partitions over `brokers` ((id, rack)):
    each partition keeps its replication factor; placement is the one new topics get
    (dmq.controller.placement: preferred leaders and followers spread evenly, replicas
    on distinct racks when every broker has one), from a start fixed per topic name so
    the same input proposes the same plan."""
    out = []
    for topic in sorted(current):
        parts = current[topic]
        by_rf: dict[int, list[tuple[int, ...]]] = {}
        for rf in sorted({len(r) for r in parts.values()}):
            try:
                by_rf[rf] = assign_replicas(brokers, max(parts) + 1, rf,
                                            random.Random(zlib.crc32(topic.encode())))
            except DmqError as exc:
                raise click.UsageError(f"topic {topic}: {exc.message}") from None
        for p, reps in sorted(parts.items()):
            out.append({"topic": topic, "partition": p, "replicas": list(by_rf[len(reps)][p])})
    return out


@click.group()
def partitions() -> None:
    """Reassign partitions and elect preferred leaders."""


@partitions.command("reassign")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), default=None,
              help="JSON list of {topic, partition, replicas}")
@click.option("--generate", is_flag=True, help="print a balanced plan (needs --topics, "
                                                "--brokers); changes nothing")
@click.option("--topics", default=None, help="with --generate: comma-separated topics")
@click.option("--brokers", "broker_list", default=None,
              help="with --generate: comma-separated target broker ids")
@click.option("--verify", is_flag=True, help="say which reassignments of the plan are done")
@click.option("--cancel", is_flag=True,
              help="cancel the plan's reassignments (every one in progress without --plan)")
@click.option("--throttle", type=click.IntRange(min=1), default=None, metavar="BYTES_PER_S",
              help="with --plan: limit what each broker of the moves sends and fetches "
                   "for replicas being added to this many bytes/s (removed by --verify "
                   "once all are done)")
@admin_options
def partitions_reassign(plan_path: str | None, generate: bool, topics: str | None,
                        broker_list: str | None, verify: bool, cancel: bool,
                        throttle: int | None, bootstrap: str | None, config_path: str | None,
                        timeout_ms: int) -> None:
    """Move partitions to new replica sets, through the controller: new replicas are
    added and catch up, leadership moves if the leader leaves, old replicas are dropped
    (their logs deleted)."""
    if sum((generate, verify, cancel)) > 1:
        raise click.UsageError("give at most one of --generate, --verify, --cancel")
    if throttle is not None and (generate or verify or cancel):
        raise click.UsageError("--throttle goes with --plan alone (starting reassignments)")
    if generate:
        if not topics or not broker_list:
            raise click.UsageError("--generate needs --topics and --brokers")
        ids = _ids(broker_list, "--brokers")
        names = [t for t in topics.split(",") if t]

        async def describe(a: Any) -> tuple[Any, dict[int, str | None], Any]:
            cluster = await a.describe_cluster()
            return (await a.describe_topics(names),
                    {b["broker_id"]: b.get("rack") for b in cluster["brokers"]},
                    await a.list_partition_reassignments(names))

        described, racks, moving = run_admin(bootstrap, config_path, timeout_ms, describe)
        unknown = [b for b in ids if b not in racks]
        if unknown:
            raise click.UsageError(f"--brokers: {unknown} are not registered brokers")
        # a partition being reassigned lists its old replicas too: its size is the target's
        removing = {(r["topic"], r["partition"]): r["removing"] for r in moving}
        current = {n: {p.partition: tuple(r for r in p.replicas
                                          if r not in removing.get((n, p.partition), ()))
                       for p in t.partitions.values()}
                   for n, t in described.items()}
        click.echo("current:")
        click.echo(json.dumps([{"topic": n, "partition": p, "replicas": list(r)}
                               for n in sorted(current) for p, r in sorted(current[n].items())]))
        click.echo("proposed:")
        click.echo(json.dumps(generate_plan(current, [(b, racks[b]) for b in ids])))
        return
    if cancel:
        async def do_cancel(a: Any) -> tuple[dict[tuple[str, int], Any], str | None]:
            if plan_path is not None:
                keys = [(t, p) for t, p, _ in load_plan(plan_path)]
            else:
                keys = [(r["topic"], r["partition"])
                        for r in await a.list_partition_reassignments()]
            res: dict[tuple[str, int], Any] = {}
            if keys:
                res = dict(await a.alter_partition_reassignments([(t, p, None)
                                                                  for t, p in keys]))
            return res, await _maybe_remove_throttle(a)

        res, note = run_admin(bootstrap, config_path, timeout_ms, do_cancel)
        if not res:
            click.echo("no reassignment in progress")
        for (t, p), err in sorted(res.items()):
            click.echo(f"{t}-{p}: " + ("cancelled" if err is None else f"error: {err}"))
        if note:
            click.echo(note)
        sys.exit(1 if any(e is not None for e in res.values()) else 0)
    if plan_path is None:
        raise click.UsageError("give --plan FILE (or --generate, or --cancel)")
    plan = load_plan(plan_path)
    if verify:
        async def do_verify(a: Any) -> tuple[Any, Any, str | None]:
            names = sorted({t for t, _, _ in plan})
            described = await a.describe_topics(names)
            moving = await a.list_partition_reassignments(names)
            done = not moving and all(
                t in described and (info := described[t].partitions.get(p)) is not None
                and list(info.replicas) == target for t, p, target in plan)
            return described, moving, (await _maybe_remove_throttle(a)) if done else None

        described, moving, note = run_admin(bootstrap, config_path, timeout_ms, do_verify)
        busy = {(r["topic"], r["partition"]): r for r in moving}
        pending = 0
        for t, p, target in plan:
            info = described.get(t).partitions.get(p) if t in described else None
            if info is None:
                line, pending = "does not exist", pending + 1
            elif (t, p) in busy:
                r = busy[(t, p)]
                left = r.get("bytes_left", -1)
                line = (f"in progress (adding {r['adding']}, removing {r['removing']}, "
                        f"isr {r['isr']}, "
                        f"{'bytes left unknown' if left < 0 else f'{left} bytes left'})")
                pending += 1
            elif list(info.replicas) == target:
                line = f"complete (replicas {list(info.replicas)}, isr {list(info.isr)})"
            else:
                line = f"not started or replaced: replicas are {list(info.replicas)}"
                pending += 1
            click.echo(f"{t}-{p}: {line}")
        if note:
            click.echo(note)
        sys.exit(1 if pending else 0)

    async def start(a: Any) -> tuple[Any, list[int]]:
        involved: list[int] = []
        if throttle is not None:
            # as Kafka's tool: on every broker of the moves, the old replicas (leaders
            # sending) and the new (followers fetching); before the moves, since the
            # new replicas start copying at once
            described = await a.describe_topics(sorted({t for t, _, _ in plan}))
            brokers = {r for _, _, target in plan for r in target}
            for t, p, _ in plan:
                info = described[t].partitions.get(p) if t in described else None
                brokers.update(info.replicas if info is not None else ())
            involved = sorted(brokers)
            await a.alter_dynamic_configs({f"{key}:{b}": str(throttle)
                                           for key in THROTTLE_KEYS for b in involved})
        return await a.alter_partition_reassignments(plan), involved

    res, involved = run_admin(bootstrap, config_path, timeout_ms, start)
    if throttle is not None:
        click.echo(f"throttle: {LEADER_THROTTLE_KEY}={throttle} and {THROTTLE_KEY}="
                   f"{throttle} bytes/s on brokers {','.join(map(str, involved))}, for "
                   "replicas being added (`--verify` removes it once all are done)")
    for (t, p), err in sorted(res.items()):
        click.echo(f"{t}-{p}: " + ("reassignment started" if err is None else f"error: {err}"))
    sys.exit(1 if any(e is not None for e in res.values()) else 0)


async def _maybe_remove_throttle(a: Any) -> str | None:
    """Remove every replication throttle (cluster-wide and per broker) once no
    reassignment is left in progress in the cluster (another one may still be copying
    under them). What was done, or None when no throttle is set."""
    keys = [k for k in await a.describe_dynamic_configs(overrides_only=True)
            if _is_throttle_key(k)]
    if not keys:
        return None
    left = await a.list_partition_reassignments()
    if left:
        return f"throttle kept: {len(left)} reassignment(s) still in progress"
    await a.alter_dynamic_configs(dict.fromkeys(keys))
    return "throttle removed"


@partitions.command("elect-leaders")
@click.option("--topic", default=None, help="only this topic (default: every topic)")
@admin_options
def partitions_elect_leaders(topic: str | None, bootstrap: str | None,
                             config_path: str | None, timeout_ms: int) -> None:
    """Move each partition's leadership to its preferred (first) replica when that
    replica is online and in sync."""
    res = run_admin(bootstrap, config_path, timeout_ms, lambda a: a.elect_leaders(topic))
    if not res:
        click.echo("every partition is led by its preferred replica")
    for (t, p), err in sorted(res.items()):
        click.echo(f"{t}-{p}: " + ("leader moved to the preferred replica" if err is None
                                   else f"not moved: {err}"))


@click.group()
def brokers() -> None:
    """Day-2 operations on brokers."""


@brokers.command("decommission")
@click.argument("broker_id", type=int)
@click.option("--wait-ms", default=120_000, show_default=True,
              help="wait this long for the broker to hold nothing (0: do not wait)")
@admin_options
def brokers_decommission(broker_id: int, wait_ms: int, bootstrap: str | None,
                         config_path: str | None, timeout_ms: int) -> None:
    """Move every replica off a broker (alive or dead) by reassignments, then wait until
    it holds none. The controller plans the moves (`Admin.decommission_broker`) and
    writes them as one metadata batch: safe to interrupt and to run again, a rerun
    starts only what is missing and follows the rest."""
    async def go(a: Any) -> int:
        res, already = await a.decommission_broker(broker_id)
        for (t, p), err in sorted(res.items()):
            if err is not None:
                click.echo(f"{t}-{p}: error: {err}")
        started = sum(1 for err in res.values() if err is None)
        click.echo(f"broker {broker_id}: {started} partition replica(s) reassigned"
                   + (f", {already} already being moved off" if already else ""))
        loop = asyncio.get_running_loop()
        # a refused move leaves its replica on the broker: waiting could not end well
        refused = any(err is not None for err in res.values())
        deadline = loop.time() + (0 if refused else wait_ms / 1000)
        shown: int | None = None
        while True:
            topics = await a.describe_topics()
            left = sum(1 for t in topics.values() for p in t.partitions.values()
                       if broker_id in p.replicas)
            if left == 0:
                return 0
            figures = [r.get("bytes_left", -1) for r in await a.list_partition_reassignments()
                       if broker_id in r["removing"]]
            copy = -1 if not figures or min(figures) < 0 else sum(figures)
            if left != shown or loop.time() >= deadline:
                click.echo(f"broker {broker_id} still holds {left} partition replica(s): "
                           f"{len(figures)} being moved off, " + (
                               "bytes left unknown" if copy < 0 else f"{copy} bytes left"))
                shown = left
            if loop.time() >= deadline:
                return left
            await asyncio.sleep(0.2)

    try:
        left = run_admin(bootstrap, config_path, timeout_ms + wait_ms, go)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the moves already started go on; run `dmq brokers "
                   f"decommission {broker_id}` again to follow them", err=True)
        sys.exit(130)
    if left:
        click.echo("see `dmq partitions reassign --verify` or run this again")
        sys.exit(1)
    click.echo(f"broker {broker_id} holds no partition replicas")


@brokers.command("unregister")
@click.argument("broker_id", type=int)
@admin_options
def brokers_unregister(broker_id: int, bootstrap: str | None, config_path: str | None,
                       timeout_ms: int) -> None:
    """Forget a broker that will never return (refused while it hosts replicas). A
    broker that is still running registers again by itself."""
    run_admin(bootstrap, config_path, timeout_ms, lambda a: a.unregister_broker(broker_id))
    click.echo(f"broker {broker_id} unregistered")

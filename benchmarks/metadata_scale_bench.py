"""Metadata at scale (issue 23, item 2): one big RF=3 topic on 3 real brokers.

Reports, with real `dmq server` processes (tests/support/procs.py `ProcessCluster`):

- topic creation: CreateTopics answered; every partition led in the controller's
  metadata; one acks=1 record produced to every partition (the leaders serve);
- a broker restart (kill -9 by default, `--clean` for SIGTERM) until it serves again:
  its port listens, it is unfenced (listed in Metadata again), an acks=all record to
  every partition succeeds, every one of its replicas is back in the ISR;
- controller and broker RSS, controller CPU seconds over the run.

And in-process (`--inproc`, no servers): the controller's costs of the same topic and
of single changes after it (plan, encode, apply, image, Metadata answer, snapshot), the
figures that say whether anything is O(all partitions) per record; `--broker-apply`:
one broker's event-loop time applying an image (one change; a fence moving leaderships
to it).

    .venv/bin/python benchmarks/metadata_scale_bench.py --inproc
    .venv/bin/python benchmarks/metadata_scale_bench.py --broker-apply   # ~1 min: 10,000 logs
    .venv/bin/python benchmarks/metadata_scale_bench.py               # 10,000 partitions
    .venv/bin/python benchmarks/metadata_scale_bench.py --partitions 2000 --restarts 2

Every phase is bounded (`--phase-timeout`); the cluster's processes and folder are
removed on exit, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf_common import proc_cpu_s as cpu_s  # noqa: E402
from perf_common import proc_rss_mb as rss_mb  # noqa: E402
from perf_common import spread_once  # noqa: E402

from dmq.client.admin import Admin  # noqa: E402
from dmq.client.producer import Producer  # noqa: E402
from tests.support.procs import ProcessCluster, wait_port  # noqa: E402

TOPIC = "big"
LOADED = re.compile(r"loaded \d+ partition logs in (\d+) ms")  # ReplicaManager.load_logs
SMALL = "ten"  # the 10-partition topic the round-robin figure is compared with


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float,
                poll_s: float = 0.05) -> float:
    """Seconds until `check()` is true; TimeoutError naming `what` past `timeout_s`."""
    start = time.monotonic()
    while True:
        try:
            if await check():
                return time.monotonic() - start
        except Exception as exc:  # noqa: BLE001 - a node still starting answers errors
            last = exc
        else:
            last = None
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f}s (last error: {last!r})")
        await asyncio.sleep(poll_s)


async def produce_all(bootstrap: str, partitions: int, acks: str, timeout_s: float) -> None:
    """One record to every partition; returns when all are acknowledged."""
    async with Producer(bootstrap, acks=acks, linger_ms=20, enable_idempotence=False,
                        request_timeout_ms=10_000, delivery_timeout_ms=int(timeout_s * 1000),
                        retry_backoff_ms=20, retry_backoff_max_ms=200) as producer:
        handles = [await producer.send(TOPIC, b"x", partition=p) for p in range(partitions)]
        await asyncio.wait_for(asyncio.gather(*handles), timeout_s)


async def scale_run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.partitions
    settings = {"max.partition.replicas.per.broker": max(4000, n + 100),  # + the 10-partition topic
                "max.partitions.per.topic": max(10_000, n),
                "max.partitions.per.request": max(10_000, n)}
    out: dict[str, Any] = {"partitions": n, "restarts": []}
    with ProcessCluster(controllers=args.controllers, brokers=3, settings=settings) as cluster:
        cluster.start()
        bs = cluster.bootstrap
        ctl_pids = [cluster.nodes[i].proc.pid for i in cluster.controller_ids]  # type: ignore[union-attr]
        brokers = cluster.broker_ids
        async with Admin(bs, request_timeout_ms=int(args.phase_timeout * 1000)) as admin:
            async def all_brokers() -> bool:
                return len((await admin.metadata([])).brokers) == len(brokers)
            await until("brokers registered", all_brokers, args.phase_timeout)
            cpu0 = sum(cpu_s(p) for p in ctl_pids)
            out["controller_rss_before_mb"] = max(rss_mb(p) for p in ctl_pids)

            t0 = time.monotonic()
            await admin.create_topic(TOPIC, n, 3)
            out["create_answered_s"] = time.monotonic() - t0

            async def all_led() -> bool:
                t = (await admin.metadata([TOPIC])).topics.get(TOPIC)
                return t is not None and len(t.partitions) == n and all(
                    p.leader >= 0 for p in t.partitions.values())
            await until("every partition led", all_led, args.phase_timeout)
            out["create_led_s"] = time.monotonic() - t0
            await produce_all(bs, n, "1", args.phase_timeout)
            out["create_serving_s"] = time.monotonic() - t0

            async def all_in_sync() -> bool:
                t = (await admin.metadata([TOPIC])).topics[TOPIC]
                return all(len(p.isr) == 3 for p in t.partitions.values())
            await until("every ISR full", all_in_sync, args.phase_timeout, 0.2)
            out["create_in_sync_s"] = time.monotonic() - t0

            broker_pids = {b: cluster.nodes[b].proc.pid for b in brokers}  # type: ignore[union-attr]
            if args.idle > 0:
                out.update(await idle_window(broker_pids, args.settle, args.idle))
            if args.spread > 0:
                out.update(await spread_compare(bs, admin, n, args.spread, args.spread_runs,
                                                broker_pids))

            victim = brokers[-1]

            async def epoch_of(v: int) -> tuple[int, str]:
                d = await admin.describe_cluster()
                b = next(b for b in d["brokers"] if b["broker_id"] == v)
                return int(b["broker_epoch"]), str(b["state"])

            async def metadata_version() -> int:
                return int((await admin.describe_cluster())["metadata_version"])
            for i in range(args.restarts):
                row: dict[str, float] = {}
                old_epoch = (await epoch_of(victim))[0]
                version0 = await metadata_version()
                cluster.kill(victim, signal.SIGTERM if args.clean else signal.SIGKILL)
                t0 = time.monotonic()
                cluster.start(victim, wait=False)
                wait_port(cluster.nodes[victim].port, args.phase_timeout)
                row["port_s"] = time.monotonic() - t0

                async def registered(v: int = victim, old: int = old_epoch) -> bool:
                    return (await epoch_of(v))[0] != old

                async def unfenced(v: int = victim) -> bool:
                    return (await epoch_of(v))[1] == "ONLINE"
                await until("broker registered again", registered, args.phase_timeout)
                row["registered_s"] = time.monotonic() - t0
                await until("broker unfenced", unfenced, args.phase_timeout)
                row["unfenced_s"] = time.monotonic() - t0
                await produce_all(bs, n, "all", args.phase_timeout)
                row["produce_all_s"] = time.monotonic() - t0
                loaded = LOADED.findall(cluster.nodes[victim].log_path.read_text(errors="replace"))
                if loaded:  # the broker's own figure for opening its logs, this start's
                    row["logs_loaded_s"] = int(loaded[-1]) / 1000

                behind: list[int] = []

                async def back_in_sync(v: int = victim, behind: list[int] = behind) -> bool:
                    t = (await admin.metadata([TOPIC])).topics[TOPIC]
                    behind[:] = [p for p, i in t.partitions.items() if v not in i.isr]
                    return not behind
                try:
                    await until("replicas back in the ISR", back_in_sync, args.phase_timeout,
                                0.2)
                except TimeoutError as exc:
                    raise TimeoutError(f"{exc}: {len(behind)} of {n} partitions without broker "
                                       f"{victim} in the ISR (e.g. {behind[:5]}); its log: "
                                       f"{cluster.nodes[victim].log_path}") from None
                row["in_sync_s"] = time.monotonic() - t0
                # metadata entries the restart took (each one a new image on every broker)
                row["entries"] = await metadata_version() - version0
                row["broker_rss_mb"] = rss_mb(cluster.nodes[victim].proc.pid)  # type: ignore[union-attr]
                out["restarts"].append(row)
                print(f"restart {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
                      flush=True)
            out["controller_rss_mb"] = max(rss_mb(p) for p in ctl_pids)
            out["controller_cpu_s"] = sum(cpu_s(p) for p in ctl_pids) - cpu0
            out["broker_rss_mb"] = {b: round(rss_mb(cluster.nodes[b].proc.pid))  # type: ignore[union-attr]
                                    for b in brokers}
    return out


async def idle_window(pids: dict[int, int], settle_s: float, idle_s: float) -> dict[str, Any]:
    """Each broker's CPU (% of a core) over `idle_s` after `settle_s`, and its RSS."""
    await asyncio.sleep(settle_s)
    cpu0 = {b: cpu_s(p) for b, p in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(idle_s)
    wall = time.monotonic() - t0
    return {"idle_cpu_pct": {b: (cpu_s(p) - cpu0[b]) / wall * 100 for b, p in pids.items()},
            "idle_rss_mb": {b: rss_mb(p) for b, p in pids.items()}}


async def spread_compare(bootstrap: str, admin: Admin, partitions: int, records: int,
                         runs: int, pids: dict[int, int] | None = None) -> dict[str, Any]:
    """acks=1 100 B records round-robin over the big topic's partitions and over a
    10-partition RF=3 topic of the same cluster, alternating, `runs` times each. With
    `pids` (broker id -> pid), each run also prints CPU microseconds per record of this
    client and of each broker (`/proc`): on a shared machine a steadier figure than
    records/s, and the one that says which process a change helped."""
    await admin.create_topic(SMALL, 10, 3)

    async def small_led() -> bool:
        t = (await admin.metadata([SMALL])).topics.get(SMALL)
        return t is not None and len(t.partitions) == 10 and all(
            p.leader >= 0 for p in t.partitions.values())
    await until("the 10-partition topic led", small_led, 60)
    big: list[float] = []
    small: list[float] = []
    cpu: dict[str, list[dict[str, float]]] = {"big": [], "small": []}
    pids = pids or {}

    async def one(topic: str, count: int) -> float:
        c0 = {b: cpu_s(p) for b, p in pids.items()}
        client0 = time.process_time()
        rate = float((await spread_once(bootstrap, topic, count, records, 100))["records_s"])
        us = {"client": (time.process_time() - client0) / records * 1e6,
              **{str(b): (cpu_s(p) - c0[b]) / records * 1e6 for b, p in pids.items()}}
        cpu["big" if topic == TOPIC else "small"].append(us)
        print(f"  {count} partitions: {rate:,.0f} records/s, CPU us/record "
              + " ".join(f"{k} {v:.1f}" for k, v in us.items()), flush=True)
        return rate

    # a warm-up of each: metadata, connections, a first batch on every partition
    await spread_once(bootstrap, TOPIC, partitions, partitions, 100)
    await spread_once(bootstrap, SMALL, 10, 10_000, 100)
    for _ in range(runs):
        big.append(await one(TOPIC, partitions))
        small.append(await one(SMALL, 10))
        print(f"round-robin over {partitions}: {big[-1]:,.0f} records/s, over 10: "
              f"{small[-1]:,.0f} records/s", flush=True)
    return {"spread_big": big, "spread_small": small, "spread_cpu_us": cpu,
            "spread_ratio": statistics.median(big) / statistics.median(small)}


def _planner(partitions: int, history_entries: int) -> tuple[Any, Any]:
    """A metadata state and a planner whose per-broker and per-topic limits admit
    `partitions` partitions of RF 3 on 3 brokers."""
    from dmq.config import SETTINGS
    from dmq.controller.planner import Planner
    from dmq.metadata.state import MetadataState

    settings = {"max.partition.replicas.per.broker": max(4000, partitions),
                "max.partitions.per.topic": max(10_000, partitions),
                "max.partitions.per.request": max(10_000, partitions)}
    state = MetadataState(history_entries=history_entries)
    planner = Planner(state, lambda k: settings.get(k, SETTINGS[k].default), random.Random(7))
    return state, planner


def inproc(partitions: int) -> None:
    """The controller's own costs, no servers, no sockets."""
    import msgpack

    from dmq.metadata.image import metadata_body
    from dmq.metadata.records import (
        NO_CHANGE,
        PartitionChange,
        Record,
        decode_batch_wire,
        encode_batch,
    )
    from dmq.metadata.state import MetadataState

    state, planner = _planner(partitions, history_entries=10_000)

    def commit(recs: list[Record]) -> None:
        state.apply_entry(state.version + 1, decode_batch_wire(encode_batch(recs)))

    def timed(label: str, fn: Callable[[], Any], repeat: int = 1) -> Any:
        t0 = time.perf_counter()
        for _ in range(repeat):
            r = fn()
        ms = (time.perf_counter() - t0) * 1000 / repeat
        mean = f" (mean of {repeat})" if repeat > 1 else ""
        print(f"  {label:<52} {ms:9.3f} ms{mean}")
        return r

    for b in (1, 2, 3):
        commit(planner.register_broker(b, "127.0.0.1", 9000 + b, None, f"inc-{b}"))
        commit(planner.unfence_broker(b))
    print(f"in-process controller costs, one topic of {partitions} partitions, RF=3, "
          f"3 brokers")
    recs, _ = timed("plan CreateTopics", lambda: planner.create_topics(
        [{"name": TOPIC, "partitions": partitions, "replication_factor": 3, "configs": {}}]))
    data = timed("encode the entry", lambda: encode_batch(recs))
    wire = timed("decode the entry", lambda: decode_batch_wire(data))
    timed("apply the entry", lambda: state.apply_entry(state.version + 1, wire))
    img = timed("publish the image", lambda: state.image(1, 1, ("127.0.0.1", 1)))
    timed("Metadata answer (every topic)", lambda: metadata_body(img, None))
    timed("the same answer again (same version)", lambda: metadata_body(img, None))
    snap = timed("snapshot (to_snapshot + msgpack)",
                 lambda: msgpack.packb(state.to_snapshot(), use_bin_type=True))
    print(f"  (entry {len(data):,} bytes, snapshot {len(snap):,} bytes)")
    timed("restore the snapshot", lambda: MetadataState().restore(
        msgpack.unpackb(snap, raw=False, strict_map_key=False)))

    i = [0]

    def one_change() -> None:
        p = state.topics[TOPIC].partitions[i[0] % partitions]
        i[0] += 1
        commit([PartitionChange(TOPIC, p.partition, p.partition_epoch, NO_CHANGE, p.isr)])
        state.image(1, 1, ("127.0.0.1", 1))  # published after every entry, as the service does
    timed("one partition change + publish", one_change, 200)
    epoch = state.brokers[2].broker_epoch
    alter = [[TOPIC, [[p.partition, p.leader_epoch, p.partition_epoch, [p.leader]]
                      for p in list(state.topics[TOPIC].partitions.values())[:100]
                      if p.leader == 2]]]
    timed("AlterPartition of 100 partitions (plan)",
          lambda: planner.alter_partition(2, epoch, alter))
    fence = timed("plan fencing a broker", lambda: planner.fence_broker(3))
    print(f"  ({len(fence)} records)")
    timed("apply it + publish", lambda: (commit(fence), state.image(1, 1, ("127.0.0.1", 1))))
    timed("plan unfencing it", lambda: planner.unfence_broker(3))
    timed("replica counts (placement limits)", planner.replica_counts)


async def broker_apply(partitions: int) -> None:
    """One broker's `ReplicaManager.apply_image` (in process, real logs in a temporary
    folder): the event-loop time of an image after one partition change, and of the
    image fencing another broker (its leaderships move here); then a restart of it
    after a clean stop: opening every log, and its first image."""
    import logging
    import shutil
    import tempfile

    from dmq.broker.replica_manager import ReplicaManager
    from dmq.config import ClusterConfig, NodeAddress
    from dmq.metadata.records import NO_CHANGE, PartitionChange, Record, records_to_wire
    from dmq.protocol.errors import NotControllerError

    logging.disable(logging.WARNING)
    state, planner = _planner(partitions, history_entries=100)

    def commit(recs: list[Record]) -> None:
        state.apply_entry(state.version + 1, records_to_wire(recs))

    for b in (1, 2, 3):
        commit(planner.register_broker(b, "127.0.0.1", 9, None, f"inc-{b}"))
        commit(planner.unfence_broker(b))
    commit(planner.create_topics([{"name": TOPIC, "partitions": partitions,
                                   "replication_factor": 3, "configs": {}}])[0])

    async def no_controller(*_: Any) -> Any:
        raise NotControllerError("no controller here")

    root = Path(tempfile.mkdtemp(prefix="dmq-bench-"))
    try:
        rm = ReplicaManager(ClusterConfig((NodeAddress(9, "127.0.0.1", 9),), (), {}), 1,
                            root, no_controller, lambda: 1)
        await rm.load_logs()
        rm.start()
        t0 = time.perf_counter()
        rm.apply_image(state.image())
        await rm.wait_idle(600_000)
        print(f"broker 1, {len(rm.partitions)} replicas: first image (logs created) "
              f"{time.perf_counter() - t0:.1f} s")
        times = []
        for i in range(20):
            p = state.topics[TOPIC].partitions[i]
            commit([PartitionChange(TOPIC, i, p.partition_epoch, NO_CHANGE, p.isr)])
            img = state.image()
            t0 = time.perf_counter()
            rm.apply_image(img)
            times.append(time.perf_counter() - t0)
        print(f"  image after one partition change: {statistics.median(times) * 1000:.3f} ms "
              f"(median of 20)")
        commit(planner.fence_broker(2))
        moved = sum(1 for p in state.topics[TOPIC].partitions.values() if p.leader == 1)
        t0 = time.perf_counter()
        rm.apply_image(state.image())
        print(f"  image fencing broker 2 ({moved} leaderships here now): "
              f"{time.perf_counter() - t0:.2f} s")
        await rm.stop()
        # what a restarted broker does before it registers: open every log on disk
        again = ReplicaManager(ClusterConfig((NodeAddress(9, "127.0.0.1", 9),), (), {}), 1,
                               root, no_controller, lambda: 1)
        t0 = time.perf_counter()
        await again.load_logs()
        print(f"  restart after a clean stop: opening the {partitions} logs (before it "
              f"registers) {time.perf_counter() - t0:.1f} s")
        again.start()
        t0 = time.perf_counter()
        again.apply_image(state.image())
        print(f"  its first image (every replica, roles taken) "
              f"{time.perf_counter() - t0:.2f} s")
        await again.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partitions", type=int, default=10_000)
    ap.add_argument("--controllers", type=int, default=1)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--clean", action="store_true", help="restart with SIGTERM, not kill -9")
    ap.add_argument("--phase-timeout", type=float, default=120.0)
    ap.add_argument("--idle", type=float, default=0.0,
                    help="after the create: seconds of idle brokers (CPU and RSS)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds between full ISRs and the idle window")
    ap.add_argument("--spread", type=int, default=0, metavar="N",
                    help="after the create: N records round-robin over the partitions, "
                         "against a 10-partition topic")
    ap.add_argument("--spread-runs", type=int, default=3)
    ap.add_argument("--inproc", action="store_true", help="in-process controller costs only")
    ap.add_argument("--broker-apply", action="store_true",
                    help="in-process: one broker applying images (creates the logs)")
    args = ap.parse_args(argv)
    if args.inproc or args.broker_apply:
        if args.inproc:
            inproc(args.partitions)
        if args.broker_apply:
            asyncio.run(broker_apply(args.partitions))
        return 0
    out = asyncio.run(scale_run(args))
    print(f"{out['partitions']} partitions RF=3 on 3 brokers, {args.controllers} controller(s)")
    print(f"  create: answered {out['create_answered_s']:.2f} s, every partition led "
          f"{out['create_led_s']:.2f} s, a record on every partition {out['create_serving_s']:.2f}"
          f" s, every ISR full {out['create_in_sync_s']:.2f} s")
    if "idle_cpu_pct" in out:
        print("  idle: " + ", ".join(
            f"broker {b} CPU {out['idle_cpu_pct'][b]:.1f}% RSS {out['idle_rss_mb'][b]:.0f} MB"
            for b in sorted(out["idle_cpu_pct"])))
    if "spread_ratio" in out:
        print(f"  round-robin acks=1 100 B: over {out['partitions']} partitions median "
              f"{statistics.median(out['spread_big']):,.0f} records/s, over 10 "
              f"{statistics.median(out['spread_small']):,.0f}: ratio {out['spread_ratio']:.2f}")
        for side, label in (("big", f"{out['partitions']} partitions"), ("small", "10")):
            runs = out["spread_cpu_us"][side]
            if runs and len(runs[0]) > 1:
                print(f"    CPU us/record over {label} (median of runs): " + ", ".join(
                    f"{k} {statistics.median(r[k] for r in runs):.1f}" for k in runs[0]))
    rs = out["restarts"]
    for key, label in (("port_s", "listening"), ("registered_s", "registered"),
                       ("unfenced_s", "unfenced"),
                       ("produce_all_s", "acks=all record on every partition"),
                       ("in_sync_s", "all its replicas in the ISR")):
        vals = [r[key] for r in rs]
        print(f"  restart ({'SIGTERM' if args.clean else 'kill -9'}) to {label}: median "
              f"{statistics.median(vals):.2f} s, max {max(vals):.2f} s")
    loads = [r["logs_loaded_s"] for r in rs if "logs_loaded_s" in r]
    if loads:  # (part of the time to registered)
        print(f"  of which opening its logs (the broker's log): median "
              f"{statistics.median(loads):.2f} s, max {max(loads):.2f} s")
    print(f"  metadata entries per restart: {[int(r['entries']) for r in rs]}")
    print(f"  controller RSS {out['controller_rss_before_mb']:.0f} -> "
          f"{out['controller_rss_mb']:.0f} MB, controller CPU {out['controller_cpu_s']:.1f} s; "
          f"broker RSS {out['broker_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Partition reassignment, broker decommission and preferred leader election against real
`dmq server` processes: a 3-replica partition moved to three other brokers under a
running acks=all producer and a consumer, the active controller killed in the middle of
a reassignment, and a dead broker decommissioned."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from dmq.client.admin import Admin
from dmq.protocol.errors import DmqError
from tests.support.broker_wire import FAST, wait_until
from tests.support.procs import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SETTINGS = {**FAST, "default.replication.factor": 3, "min.insync.replicas": 2}
THROTTLE_KEY = "follower.replication.throttled.rate"


async def _partition(admin: Admin, topic: str, p: int = 0) -> Any:
    return (await admin.describe_topics([topic]))[topic].partitions[p]


async def _settled(admin: Admin, topic: str, target: list[int], p: int = 0) -> bool:
    """The reassignment is done: replicas are the target, all in sync, none moving."""
    try:
        info = await _partition(admin, topic, p)
        moving = await admin.list_partition_reassignments([topic])
    except DmqError:
        return False
    return (list(info.replicas) == target and sorted(info.isr) == sorted(target)
            and info.leader in target and not moving)


def _dirs(cluster: ProcessCluster, broker: int, topic: str, p: int = 0) -> list[str]:
    """The partition's folders on a broker (also one renamed for deletion)."""
    root = cluster.nodes[broker].data_dir
    return [d.name for d in root.rglob(f"{topic}-{p}*") if d.is_dir()] if root.exists() else []


def _now(fn: Any) -> Any:
    """A synchronous condition for `wait_until`."""
    async def check() -> bool:
        return bool(fn())
    return check


def _http_json(port: int, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return json.loads(r.read())
    except (OSError, ValueError) as exc:  # not listening yet: wait_until retries
        raise OSError(f"GET {path}: {exc}") from exc


def _cli(cluster: ProcessCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmq.cli", *args, "--bootstrap",
                           cluster.bootstrap], capture_output=True, text=True, timeout=90)


def _with_racks(pc: ProcessCluster, racks: dict[int, str]) -> None:
    """Give brokers a `rack` in the cluster config (before they start)."""
    text = pc.config_path.read_text()
    for b, rack in racks.items():
        entry = f"[[brokers]]\nid = {b}\n"
        assert entry in text, text
        text = text.replace(entry, f'{entry}rack = "{rack}"\n')
    pc.config_path.write_text(text)


async def test_move_partition_to_three_other_brokers_under_producer_and_consumer(
        tmp_path: Path) -> None:
    with ProcessCluster(controllers=1, brokers=6, settings=SETTINGS) as pc:
        # three racks of two brokers (the same cluster serves the rack check at the end)
        rack_of = {b: f"r{i // 2}" for i, b in enumerate(pc.broker_ids)}
        _with_racks(pc, rack_of)
        pc.start()
        b = pc.bootstrap
        async with Admin(b) as admin:
            await _topic_led(pc, admin, "mv", 1)
            old = list((await _partition(admin, "mv")).replicas)
            target = [x for x in pc.broker_ids if x not in old]
            assert len(target) == 3
            # a leader being known does not mean every replica has made its folder yet
            await wait_until(_now(lambda: all(_dirs(pc, x, "mv") for x in old)), 30,
                             "mv-0 folders on the old replicas")

            acked: dict[int, int] = {}
            stop = asyncio.Event()
            consumed: list[tuple[int, int]] = []

            async def produce() -> None:
                async with Producer(b, acks="all", linger_ms=2, request_timeout_ms=5000,
                                    delivery_timeout_ms=60_000, retry_backoff_ms=50) as p:
                    i = 0
                    while not stop.is_set():
                        handles = [(i + k, await p.send("mv", b"%d" % (i + k), partition=0))
                                   for k in range(50)]
                        i += 50
                        for n, h in handles:
                            try:
                                acked[n] = (await h).offset
                            except DmqError:
                                pass
                        await asyncio.sleep(0.01)

            async def consume() -> None:
                async with Consumer(b, auto_offset_reset="earliest") as c:
                    c.assign([TopicPartition("mv", 0)])
                    while not stop.is_set():
                        got = await c.getmany(timeout_ms=200)
                        for recs in got.values():
                            consumed.extend((r.offset, int(r.value)) for r in recs)

            tasks = [asyncio.create_task(produce()), asyncio.create_task(consume())]
            try:
                await wait_until(_now(lambda: len(acked) >= 500), 30, "500 records acknowledged")
                plan = tmp_path / "plan.json"
                plan.write_text(json.dumps([{"topic": "mv", "partition": 0,
                                             "replicas": target}]))
                out = await asyncio.to_thread(_cli, pc, "partitions", "reassign", "--plan",
                                              str(plan))
                assert out.returncode == 0, out.stdout + out.stderr
                assert "mv-0: reassignment started" in out.stdout
                await wait_until(lambda: _settled(admin, "mv", target), 60,
                                 "the reassignment to complete")
                n_done = len(acked)
                await wait_until(_now(lambda: len(acked) >= n_done + 300), 30,
                                 "records acknowledged by the new replicas")
            finally:
                stop.set()
                results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            verify = await asyncio.to_thread(_cli, pc, "partitions", "reassign", "--verify",
                                             "--plan", str(plan))
            assert verify.returncode == 0 and "mv-0: complete" in verify.stdout, verify.stdout
        # the old replicas' folders are gone (renamed at once, removed in the background)
        for x in old:
            await wait_until(_now(lambda x=x: not _dirs(pc, x, "mv")), 30,
                             f"broker {x}'s mv-0 folder deleted")
        assert all(_dirs(pc, x, "mv") for x in target)
        # read everything back (from the new replicas: nothing else hosts it now)
        async with Consumer(b, auto_offset_reset="earliest") as c:
            tp = TopicPartition("mv", 0)
            c.assign([tp])
            end = (await c.end_offsets([tp]))[tp]
            log: list[tuple[int, int]] = []
            while not log or log[-1][0] < end - 1:
                got = await c.getmany(timeout_ms=10_000)
                assert got, f"stalled at {log[-1] if log else None} of {end}"
                log += [(r.offset, int(r.value)) for r in got[tp]]
        values = [v for _o, v in log]
        assert len(values) == len(set(values)), "a record was written twice"
        assert values == sorted(values), "records out of send order"
        where = {v: o for o, v in log}
        missing = [i for i, off in acked.items() if where.get(i) != off]
        assert not missing, f"acknowledged records not in the log: {missing[:10]}"
        # the live consumer saw a prefix of the same log, in order, nothing twice
        assert consumed == log[:len(consumed)]
        print(f"\n{len(acked)} records acknowledged, {len(log)} in the log, moved "
              f"{old} -> {target}")
        # racks: every broker registered its rack, and a new RF=3 topic has one replica
        # in each of the three racks, for every partition
        async with Admin(b) as admin:
            d = await admin.describe_cluster()
            assert {x["broker_id"]: x.get("rack") for x in d["brokers"]} == rack_of
            await admin.create_topic("racked", 6, 3)
            t = (await admin.describe_topics(["racked"]))["racked"]
            assert len(t.partitions) == 6
            for p in t.partitions.values():
                assert sorted(rack_of[r] for r in p.replicas) == ["r0", "r1", "r2"], p


async def _all_online(admin: Admin, ids: list[int]) -> bool:
    d = await admin.describe_cluster()
    return sorted(x["broker_id"] for x in d["brokers"] if x["state"] == "ONLINE") == ids


async def _topic_led(pc: ProcessCluster, admin: Admin, topic: str, partitions: int) -> None:
    """Every broker online (so placement may use any of them), then the topic created
    with 3 replicas and a leader for each partition."""
    await wait_until(lambda: _all_online(admin, pc.broker_ids), 30, "brokers online")
    await ensure_topic(pc.bootstrap, topic, partitions, 3, 30)

    async def all_led() -> bool:
        try:
            t = (await admin.describe_topics([topic]))[topic]
        except DmqError:
            return False
        return len(t.partitions) == partitions and all(
            p.leader >= 0 for p in t.partitions.values())

    await wait_until(all_led, 30, f"a leader for each partition of {topic}")


async def test_active_controller_killed_mid_reassignment_it_completes() -> None:
    with ProcessCluster(controllers=3, brokers=4, settings=SETTINGS, http=True) as pc:
        pc.start()
        b = pc.bootstrap
        async with Admin(b) as admin:
            await _topic_led(pc, admin, "ha", 1)
            async with Producer(b, acks="all") as p:
                for i in range(200):
                    await p.send("ha", b"%d" % i, partition=0)
                await p.flush()
            info = await _partition(admin, "ha")
            new = next(x for x in pc.broker_ids if x not in info.replicas)
            target = [new, *info.replicas[1:]]
            # the new replica's broker is down: the reassignment cannot finish before
            # the controller dies
            pc.kill(new, signal.SIGKILL)
            res = await admin.alter_partition_reassignments([("ha", 0, target)])
            assert res == {("ha", 0): None}
            moving = await admin.list_partition_reassignments()
            assert [(r["topic"], r["adding"], r["removing"]) for r in moving] == [
                ("ha", [new], [info.replicas[0]])]
            status = await asyncio.to_thread(_cli, pc, "cluster", "status")
            assert "reassignments in progress:" in status.stdout, status.stdout
            row = next(ln for ln in status.stdout.splitlines() if ln.startswith("ha-0"))
            assert row.split()[2:4] == [str(new), str(info.replicas[0])], row
            # the HTTP cluster view (served by the controllers) lists it too
            port = pc.nodes[pc.controller_ids[0]].http_port
            assert port is not None

            async def rest_lists_it() -> bool:
                view = await asyncio.to_thread(_http_json, port, "/api/v1/metadata/cluster")
                return [(r["topic"], r["adding"], r["removing"])
                        for r in view["reassignments"]] == [("ha", [new], [info.replicas[0]])]

            await wait_until(rest_lists_it, 30, "the REST cluster view")
            active = (await admin.describe_cluster())["controller_id"]
            pc.kill(active, signal.SIGKILL)
            pc.start(new)
            await wait_until(lambda: _settled(admin, "ha", target), 60,
                             "the reassignment to complete under the new controller")
            assert (await admin.describe_cluster())["controller_id"] not in (active, -1)
        await wait_until(_now(lambda: not _dirs(pc, info.replicas[0], "ha")), 30,
                         "the dropped replica's folder deleted")
        async with Consumer(b, auto_offset_reset="earliest") as c:
            tp = TopicPartition("ha", 0)
            c.assign([tp])
            values: list[int] = []
            while len(values) < 200:
                got = await c.getmany(timeout_ms=10_000)
                assert got, f"stalled after {len(values)}"
                values += [int(r.value) for r in got[tp]]
        assert values == list(range(200))


async def test_decommission_dead_broker_restores_full_replication() -> None:
    with ProcessCluster(controllers=1, brokers=4, settings=SETTINGS) as pc:
        pc.start()
        b = pc.bootstrap
        async with Admin(b) as admin:
            await _topic_led(pc, admin, "dc", 4)
            async with Producer(b, acks="all", linger_ms=2) as p:
                for i in range(4 * 50):  # 100 KB a partition to copy
                    await p.send("dc", bytes(2000), partition=i % 4)
                await p.flush()
            t = (await admin.describe_topics(["dc"]))["dc"]
            victim = t.partitions[0].replicas[0]
            hosted = [p.partition for p in t.partitions.values() if victim in p.replicas]
            assert hosted
            pc.kill(victim, signal.SIGKILL)

            async def fenced() -> bool:
                d = await admin.describe_cluster()
                return any(x["broker_id"] == victim and x["state"] == "FENCED"
                           for x in d["brokers"])

            await wait_until(fenced, 30, f"broker {victim} fenced")
            refused = await asyncio.to_thread(_cli, pc, "brokers", "unregister", str(victim))
            assert refused.returncode == 1 and "still hosts" in refused.stderr, refused
            # the copies crawl under a throttle while the command is interrupted (Ctrl-C
            # once the moves are in), then run again: it starts nothing new and reports
            await admin.alter_dynamic_configs({THROTTLE_KEY: "5000"})  # ~20 s a partition
            first = subprocess.Popen(
                [sys.executable, "-m", "dmq.cli", "brokers", "decommission", str(victim),
                 "--bootstrap", b], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            try:
                async def moves_in() -> bool:
                    return len([r for r in await admin.list_partition_reassignments()
                                if r["removing"] == [victim]]) == len(hosted)

                await wait_until(moves_in, 30, "the decommission's moves submitted")
                first.send_signal(signal.SIGINT)
                out1, err1 = await asyncio.to_thread(first.communicate, timeout=30)
            finally:
                if first.poll() is None:
                    first.kill()
                    first.wait()
            assert first.returncode == 130, out1 + err1
            assert "the moves already started go on" in err1 and "Traceback" not in err1, err1
            again = await asyncio.to_thread(_cli, pc, "brokers", "decommission", str(victim),
                                            "--wait-ms", "0")
            assert again.returncode == 1, again.stdout + again.stderr
            assert (f"broker {victim}: 0 partition replica(s) reassigned, {len(hosted)} "
                    "already being moved off") in again.stdout, again.stdout
            assert (f"still holds {len(hosted)} partition replica(s): {len(hosted)} being "
                    "moved off") in again.stdout, again.stdout
            await admin.alter_dynamic_configs({THROTTLE_KEY: None})
            out = await asyncio.to_thread(_cli, pc, "brokers", "decommission", str(victim))
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"broker {victim} holds no partition replicas" in out.stdout

            async def fully_replicated() -> bool:
                t = (await admin.describe_topics(["dc"]))["dc"]
                return all(len(p.replicas) == 3 and sorted(p.isr) == sorted(p.replicas)
                           and victim not in p.replicas for p in t.partitions.values())

            await wait_until(fully_replicated, 30, "every partition back to 3 in-sync replicas")
            # nothing moves while nothing needs to
            assert await admin.list_partition_reassignments() == []
            out = await asyncio.to_thread(_cli, pc, "brokers", "unregister", str(victim))
            assert out.returncode == 0 and f"broker {victim} unregistered" in out.stdout, out
            d = await admin.describe_cluster()
            assert victim not in [x["broker_id"] for x in d["brokers"]]


async def test_elect_leaders_moves_leadership_back_to_the_preferred_replica() -> None:
    with ProcessCluster(controllers=1, brokers=3, settings=SETTINGS) as pc:
        pc.start()
        b = pc.bootstrap
        async with Admin(b) as admin:
            await _topic_led(pc, admin, "el", 1)
            pref = (await _partition(admin, "el")).replicas[0]
            pc.signal(pref, signal.SIGSTOP)  # fenced: leadership moves away

            async def moved() -> bool:
                return (await _partition(admin, "el")).leader not in (pref, -1)

            try:
                await wait_until(moved, 30, "leadership to move off the paused broker")
            finally:
                pc.signal(pref, signal.SIGCONT)

            async def back_in_sync() -> bool:
                return pref in (await _partition(admin, "el")).isr

            await wait_until(back_in_sync, 30, f"broker {pref} back in the ISR")
            assert (await _partition(admin, "el")).leader != pref  # no balancer in SETTINGS
            out = await asyncio.to_thread(_cli, pc, "partitions", "elect-leaders", "--topic", "el")
            assert out.returncode == 0, out.stdout + out.stderr
            assert out.stdout.strip() == "el-0: leader moved to the preferred replica"
            assert (await _partition(admin, "el")).leader == pref
            again = await asyncio.to_thread(_cli, pc, "partitions", "elect-leaders")
            assert again.stdout.strip() == "every partition is led by its preferred replica"

"""A consumer process for the group end-to-end tests.

    python -m tests.e2e.groups_worker BOOTSTRAP GROUP TOPIC OUT_FILE NAME SESSION_MS

Subscribes to TOPIC in GROUP and appends one line per event to OUT_FILE, flushed at
once so a kill -9 loses nothing already written:
    R <partition> <offset> <value>      a consumed record
    A <p,p,...>                         partitions assigned (only the added ones)
    V <p,p,...>                         partitions revoked (only the removed ones)
SIGTERM closes the consumer cleanly (commit, revoke, leave the group)."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from dmq.client.consumer import Consumer
from dmq.client.group import RebalanceListener


class Log(RebalanceListener):
    def __init__(self, out: Any) -> None:
        self.out = out

    def on_partitions_assigned(self, assigned: set[Any]) -> None:
        self.out.write(f"A {','.join(str(p) for _, p in sorted(assigned))}\n")
        self.out.flush()

    def on_partitions_revoked(self, revoked: set[Any]) -> None:
        self.out.write(f"V {','.join(str(p) for _, p in sorted(revoked))}\n")
        self.out.flush()


async def main(bootstrap: str, group: str, topic: str, path: str, name: str,
               session_ms: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with open(path, "a", buffering=1) as out:
        consumer = Consumer(bootstrap, group_id=group, client_id=name,
                            auto_offset_reset="earliest", session_timeout_ms=session_ms,
                            heartbeat_interval_ms=250, auto_commit_interval_ms=200)
        await consumer.start()
        consumer.subscribe([topic], listener=Log(out))
        while not stop.is_set():
            got = await consumer.getmany(timeout_ms=100)
            lines = [f"R {tp.partition} {r.offset} {r.value.decode()}\n"
                     for tp, recs in got.items() for r in recs]
            if lines:
                out.write("".join(lines))
                out.flush()
        await consumer.close()


if __name__ == "__main__":
    b, g, t, p, n, s = sys.argv[1:7]
    asyncio.run(main(b, g, t, p, n, int(s)))

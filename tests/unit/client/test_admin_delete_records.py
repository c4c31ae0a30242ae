"""`Admin.delete_records` against in-process fake nodes: requests go to each
partition's leader, grouped per leader; a partition whose leader moved is asked again
after a metadata refresh; per-partition errors come back in the result map."""

from __future__ import annotations

from typing import Any

from dmq.client.admin import Admin
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode, OffsetOutOfRangeError
from dmq.protocol.server import RequestContext
from tests.support.fake_cluster import FakeCluster


async def test_delete_records_follows_a_moved_leader_and_reports_per_partition() -> None:
    fake = await FakeCluster(nodes=2, auto_create=False).start()
    fake.create_topic("t", 2)  # partition 0 led by 101, partition 1 by 102
    asked: list[tuple[int, list[Any]]] = []
    moved = [False]

    def handler(node_id: int) -> Any:
        def delete_records(ctx: RequestContext, body: Any) -> Any:
            asked.append((node_id, body["topics"]))
            out = []
            for topic, parts in body["topics"]:
                rows = []
                for p, offset in parts:
                    if topic == "t" and p == 0 and not moved[0]:
                        moved[0] = True  # the leader moves as the request arrives
                        fake.move_leader("t", 0, 102)
                    if fake.topics[topic][p].leader != node_id:
                        rows.append([p, int(ErrorCode.NOT_LEADER_OR_FOLLOWER), -1])
                    elif offset > 50:
                        rows.append([p, int(ErrorCode.OFFSET_OUT_OF_RANGE), -1])
                    else:
                        rows.append([p, 0, offset])
                out.append([topic, rows])
            return {"topics": out}
        return delete_records

    for node in fake.nodes:
        node.server.register(ApiKey.DELETE_RECORDS, handler(node.node_id))
    try:
        async with Admin(fake.bootstrap, request_timeout_ms=5000) as admin:
            res = await admin.delete_records({("t", 0): 7, ("t", 1): 99})
    finally:
        await fake.stop()
    assert (res[("t", 0)].low_watermark, res[("t", 0)].error) == (7, None)
    assert isinstance(res[("t", 1)].error, OffsetOutOfRangeError)
    assert res[("t", 1)].low_watermark == -1
    # one request per leader, then partition 0 alone again, to its new leader
    assert sorted(asked[:2]) == [(101, [["t", [[0, 7]]]]), (102, [["t", [[1, 99]]]])]
    assert asked[2:] == [(102, [["t", [[0, 7]]]])]

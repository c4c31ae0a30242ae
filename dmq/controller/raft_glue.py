"""The controller's use of `dmq.raft.RaftNode`: build it from the cluster config, serve
its API keys, and turn its local errors into wire errors.

`RaftGlue` is the only controller module that knows the Raft driver's API. It proposes
record batches (one entry each) and maps NotLeader to NOT_CONTROLLER naming the leader,
dropped proposals to a retriable RAFT_NOT_READY, and unknown outcomes to
REQUEST_TIMED_OUT (the write may or may not have happened; controller writes are
planned against the state, so a retry is checked again). A proposal larger than one
Raft entry may be (max.frame.bytes less framing) is refused at once with the
non-retriable RECORD_LIST_TOO_LARGE; when this controller stops leading, its pending
proposals fail at once with NOT_CONTROLLER naming the new leader when known.

It also tells the Raft driver what the metadata state machine can apply, so a peer's
append with an entry that does not decode (or a snapshot that does not restore) is
refused before it is stored, and that the node must end if a Raft task dies.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgpack  # type: ignore[import-untyped]

from dmq.controller.state_machine import MetadataStateMachine
from dmq.metadata.records import MalformedRecordError, Record, decode_batch, encode_batch
from dmq.metadata.state import MetadataState
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import (
    DmqError,
    NotControllerError,
    RaftNotReadyError,
    RecordListTooLargeError,
    RequestTimedOutError,
)
from dmq.raft.core import EntryTooLargeError, NotLeaderError, RaftError
from dmq.raft.node import RaftNode, RaftNodeConfig
from dmq.raft.storage import FileStorage
from dmq.types import NodeId

if TYPE_CHECKING:
    from dmq.services import ServiceContext

log = logging.getLogger("dmq.controller.raft")


class RaftGlue:
    def __init__(self, ctx: ServiceContext, sm: MetadataStateMachine) -> None:
        config = ctx.config
        self.config = config
        self.node_id = ctx.node_id
        peers = {NodeId(c.node_id): (c.host, c.port) for c in config.controllers
                 if c.node_id != self.node_id}
        self.raft_config = RaftNodeConfig(
            node_id=NodeId(self.node_id), peers=peers,
            tick_ms=int(config.get("raft.tick.ms")),
            election_ticks=int(config.get("raft.election.timeout.ticks")),
            heartbeat_ticks=int(config.get("raft.heartbeat.ticks")),
            leader_loss_ticks=int(config.get("raft.leader.loss.timeout.ticks")),
            snapshot_interval_entries=int(config.get("raft.snapshot.interval.entries")),
            max_frame_bytes=int(config.get("max.frame.bytes")))
        self.storage_dir = ctx.spec.data_dir / "metadata-raft"
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.storage = FileStorage(str(self.storage_dir))
        self.raft = RaftNode(self.raft_config, self.storage, sm, ctx.clock, ctx.rng,
                             validate_entry=validate_entry,
                             validate_snapshot=validate_snapshot, on_fatal=ctx.fatal)
        self.raft.register(ctx.server)
        ctx.server.register(ApiKey.RAFT_STATUS, self._status)
        self._started = False

    async def _status(self, ctx: Any, body: Any) -> Any:
        return self.status()

    async def start(self) -> None:
        await self.raft.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.raft.stop()
        self.storage.close()

    def status(self) -> dict[str, Any]:
        if not self._started:
            return {"node_id": self.node_id, "role": "FOLLOWER", "term": -1, "leader_id": 0,
                    "commit_index": -1, "last_applied": -1, "last_log_index": -1, "peers": {}}
        return self.raft.status()

    def leader_hint(self, leader_id: int) -> tuple[int, str, int] | None:
        addr = self.config.node(leader_id) if leader_id > 0 else None
        return (leader_id, addr.host, addr.port) if addr is not None else None

    async def propose_records(self, records: list[Record], timeout_ms: int,
                              barrier: bool = False) -> int:
        """Propose one entry; its index once committed and applied here. An empty
        batch is a barrier: once applied, so is everything committed before it."""
        assert records or barrier
        try:
            return int(await self.raft.propose(encode_batch(records), timeout_ms))
        except NotLeaderError as exc:
            raise NotControllerError(f"controller {self.node_id} is not the leader",
                                     leader=self.leader_hint(int(exc.leader_id))) from None
        except EntryTooLargeError as exc:
            raise RecordListTooLargeError(f"metadata write refused: {exc}") from None
        except DmqError:
            raise
        except RaftError as exc:
            if type(exc).__name__ == "ProposalOutcomeUnknownError":
                raise RequestTimedOutError(f"outcome of the metadata write unknown: {exc}") \
                    from None
            raise RaftNotReadyError(f"metadata write not accepted: {exc}") from None

    async def maybe_transfer_leadership(self, timeout_ms: int | None = None) -> None:
        """On a graceful stop, hand leadership to the most caught-up peer first."""
        if not self._started or not self.raft_config.peers:
            return
        if self.raft.status()["role"] != "LEADER":
            return
        try:
            new = await self.raft.transfer_leadership(None, timeout_ms)
            log.info("controller=%d handed leadership to %d", self.node_id, new)
        except (DmqError, RaftError, ValueError) as exc:
            log.info("controller=%d leadership transfer failed: %s", self.node_id, exc)


def validate_entry(data: bytes) -> str | None:
    """Why a metadata Raft entry could not be applied (None: it can). Empty data is a
    barrier; anything else must be a msgpack array of well-formed records."""
    if not data:
        return None
    try:
        decode_batch(data)
    except MalformedRecordError as exc:
        return str(exc)
    return None


def validate_snapshot(data: bytes) -> str | None:
    """Why a metadata snapshot could not be restored (None: it can), checked by
    restoring it into a scratch state."""
    if not data:
        return None
    try:
        MetadataState().restore(msgpack.unpackb(data, raw=False, strict_map_key=False))
    except Exception as exc:  # any failure here would fail the real restore too
        return f"metadata snapshot does not restore: {type(exc).__name__}: {exc}"[:300]
    return None


__all__ = ["RaftGlue", "validate_entry", "validate_snapshot"]

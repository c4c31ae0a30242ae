"""Deliberately broken Raft cores: the simulator must catch each of them.

A checker that cannot fail proves nothing. Each subclass removes one safety rule by
overriding the single hook the real core uses for it.
"""

from __future__ import annotations

from dmq.raft.core import RaftCore
from dmq.raft.messages import NO_NODE, HardState, VoteRequest
from dmq.types import RaftIndex


class VoteWithoutLogCheck(RaftCore):
    """Grants votes without the §5.4.1 "candidate's log is at least as up to date" check."""

    def _log_up_to_date(self, m: VoteRequest) -> bool:
        return True


class CommitEarlierTermByCounting(RaftCore):
    """Commits any entry stored on a majority, even of an earlier term (Figure 8 bug)."""

    def _may_commit_term(self, index: int) -> bool:
        return True


class VoteNotPersisted(RaftCore):
    """Never hands the vote to storage: after a restart it may vote twice in one term."""

    def _hard_state(self) -> HardState:
        return HardState(self.term, NO_NODE, RaftIndex(self.commit))


MUTANTS = {
    "vote_without_log_check": VoteWithoutLogCheck,
    "commit_earlier_term": CommitEarlierTermByCounting,
    "vote_not_persisted": VoteNotPersisted,
}

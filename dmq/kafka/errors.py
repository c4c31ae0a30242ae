"""dmq error codes as Kafka error codes, for every Kafka answer a handler builds.

The numbers dmq shares with Kafka (below 1000) are Kafka's already; the dmq-only codes
(1000 and up) map to the nearest Kafka code a Kafka client acts on. Both the data and
admin handlers (`dmq.kafka.apis`) and the group handlers (`dmq.kafka.groups`) use it;
it imports neither.
"""

from __future__ import annotations

from dmq.broker.errors import error_code_of
from dmq.protocol.errors import DmqError, ErrorCode

# dmq-only codes (1000+) mapped to the nearest Kafka code a Kafka client understands.
_KAFKA_CODE = {
    ErrorCode.UNKNOWN_API_KEY: ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.FRAME_TOO_LARGE: ErrorCode.MESSAGE_TOO_LARGE,
    ErrorCode.NODE_SHUTTING_DOWN: ErrorCode.NOT_LEADER_OR_FOLLOWER,
    ErrorCode.BROKER_FENCED: ErrorCode.NOT_LEADER_OR_FOLLOWER,
    ErrorCode.RAFT_NOT_READY: ErrorCode.NOT_CONTROLLER,
}


def kafka_code(code: int) -> int:
    """A dmq error code as a Kafka one: shared numbers are Kafka's already."""
    if code >= 1000:
        try:
            return int(_KAFKA_CODE.get(ErrorCode(code), ErrorCode.UNKNOWN_SERVER_ERROR))
        except ValueError:
            return int(ErrorCode.UNKNOWN_SERVER_ERROR)
    return code




def forward_error_code(exc: DmqError | OSError | TimeoutError) -> int:
    """The Kafka code of a request forwarded to the controller that failed: the
    controller's error, or REQUEST_TIMED_OUT when it could not be reached."""
    if isinstance(exc, DmqError):
        return kafka_code(int(error_code_of(exc)))
    return int(ErrorCode.REQUEST_TIMED_OUT)


__all__ = ["forward_error_code", "kafka_code"]

from __future__ import annotations

import pytest

from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    InvalidRequestError,
    NotLeaderOrFollowerError,
    error_for,
    is_retriable,
)
from dmq.protocol.schema import BYTES, INT, STR, Array, Nullable, Struct, Tuple


def test_every_code_maps_to_its_own_class() -> None:
    seen = set()
    for code in ErrorCode:
        if code is ErrorCode.NONE:
            continue
        exc = error_for(int(code), "m")
        assert exc.code is code
        assert type(exc) not in seen
        seen.add(type(exc))


def test_unknown_code_becomes_unknown_server_error() -> None:
    exc = error_for(31337)
    assert exc.code is ErrorCode.UNKNOWN_SERVER_ERROR


def test_retriable_flags_follow_kafka() -> None:
    assert is_retriable(ErrorCode.NOT_LEADER_OR_FOLLOWER)
    assert NotLeaderOrFollowerError().refresh_metadata
    assert not is_retriable(ErrorCode.MESSAGE_TOO_LARGE)
    assert isinstance(NotLeaderOrFollowerError("x", leader=(1, "h", 2)), DmqError)


def test_struct_validation_paths_and_defaults() -> None:
    schema = Struct({"t": STR, "p": Array(Struct({"i": INT, "b": BYTES}))},
                    {"acks": (INT, -1), "tag": (Nullable(STR), None)})
    body = schema.check({"t": "x", "p": [{"i": 1, "b": b""}]})
    assert body["acks"] == -1 and body["tag"] is None
    with pytest.raises(InvalidRequestError, match=r"body.p\[0\].i"):
        schema.check({"t": "x", "p": [{"i": "1", "b": b""}]}, "body")
    with pytest.raises(InvalidRequestError, match="missing"):
        schema.check({"p": []}, "body")
    with pytest.raises(InvalidRequestError):
        schema.check([1, 2], "body")
    with pytest.raises(InvalidRequestError):
        INT.check(True, "x")  # bools are not ints on the wire
    with pytest.raises(InvalidRequestError):
        Tuple(INT, STR).check([1], "x")
    with pytest.raises(InvalidRequestError, match="exceed"):
        Array(INT, max_items=2).check([1, 2, 3], "x")

"""Raw-form frames (dmq.protocol.codec): what the decoder refuses, and how. Every
malformed frame is a `ProtocolViolation` naming what is wrong (the correlation id
kept when the header was readable, so the server answers instead of hanging up)."""

from __future__ import annotations

import struct

import msgpack
import pytest

from dmq.protocol.codec import (
    RAW_FLAG,
    RAW_SECTION_EXT,
    FrameDecoder,
    RawFrame,
    VectoredBody,
    decode_request,
    decode_response,
    encode_request,
    encode_request_raw,
    encode_response_raw,
)
from dmq.protocol.errors import ErrorCode, ProtocolViolation


def _ref(off: int, length: int, code: int = RAW_SECTION_EXT) -> msgpack.ExtType:
    return msgpack.ExtType(code, struct.pack(">II", off, length))


def _raw(obj: object, area: bytes, *, word_delta: int = 0, header_len: int | None = None
         ) -> bytes:
    """A raw-form frame built by hand (the length word may lie by `word_delta`)."""
    header = msgpack.packb(obj, use_bin_type=True)
    h = len(header) if header_len is None else header_len
    n = 4 + len(header) + len(area)
    return struct.pack(">II", RAW_FLAG | (n + word_delta), h) + header + area


def _decode(frame: bytes) -> object:
    (payload,) = FrameDecoder().feed(frame)
    return decode_request(payload)


def _request(body: object) -> list[object]:
    return [0, 0, 7, "c", body]


def test_a_raw_request_gives_its_sections_as_views_of_the_frame() -> None:
    frame = _raw(_request({"a": _ref(0, 3), "b": [_ref(3, 2)]}), b"xyzuv")
    (payload,) = FrameDecoder().feed(frame)
    assert type(payload) is RawFrame
    header, body = decode_request(payload)
    assert header.correlation_id == 7
    assert type(body["a"]) is memoryview and bytes(body["a"]) == b"xyz"
    assert bytes(body["b"][0]) == b"uv"
    assert body["a"].obj is payload  # no copy: a view of the received frame


@pytest.mark.parametrize(("obj", "area", "why"), [
    (_request({"a": _ref(0, 9)}), b"12345", "runs past the section area of 5 bytes"),
    (_request({"a": _ref(2, 3)}), b"12345", "at offset 2 where the next one starts at 0"),
    (_request([_ref(0, 3), _ref(1, 3)]), b"123456", "at offset 1 where the next one starts at 3"),
    (_request([_ref(0, 3), _ref(0, 3)]), b"123", "at offset 0 where the next one starts at 3"),
    (_request({"a": _ref(0, 3)}), b"12345", "section area of 5 bytes but its references cover 3"),
    (_request({"a": b"x"}), b"12", "section area of 2 bytes but its references cover 0"),
    (_request({"a": _ref(0, 3, code=5)}), b"123", "ext type 5 of 8 bytes in a raw frame"),
    (_request({"a": msgpack.ExtType(1, b"123")}), b"", "ext type 1 of 3 bytes"),
])
def test_bad_section_references_are_refused_naming_the_problem(obj, area, why) -> None:
    with pytest.raises(ProtocolViolation, match=why) as info:
        _decode(_raw(obj, area))
    assert info.value.correlation_id == 7  # answered, not hung up on


def test_a_reference_as_a_map_key_or_in_the_header_is_refused() -> None:
    with pytest.raises(ProtocolViolation, match="raw frame header is not valid msgpack"):
        _decode(_raw(_request({_ref(0, 1): 1}), b"x"))
    with pytest.raises(ProtocolViolation, match="bad request header field types"):
        _decode(_raw([_ref(0, 1), 0, 7, "c", {}], b"x"))
    with pytest.raises(ProtocolViolation, match="correlation id must be a 32-bit integer"):
        _decode(_raw([0, 0, _ref(0, 1), "c", {}], b"x"))


def test_a_reference_in_a_plain_frame_is_refused() -> None:
    payload = msgpack.packb(_request({"a": _ref(0, 1)}), use_bin_type=True)
    with pytest.raises(ProtocolViolation, match="ext type 1 in a plain frame"):
        _decode(struct.pack(">I", len(payload)) + payload)
    with pytest.raises(ProtocolViolation, match="ext type 1 in a plain frame"):
        decode_response(msgpack.packb([1, 0, {"a": _ref(0, 1)}], use_bin_type=True))


def test_lying_lengths_are_refused() -> None:
    # the header length runs past the frame
    with pytest.raises(ProtocolViolation, match="header length 500 exceeds the"):
        _decode(_raw(_request({}), b"", header_len=500))
    # a length word shorter than the frame: the section runs past what it declares
    frame = _raw(_request({"a": _ref(0, 4)}), b"1234", word_delta=-2)
    dec = FrameDecoder()
    (payload,) = dec.feed(frame)
    with pytest.raises(ProtocolViolation, match="runs past the section area of 2 bytes"):
        decode_request(payload)
    # the next "frame" is the two bytes left over: too short for any frame
    assert dec.buffered_bytes == 2
    # a length word longer than the frame: the header's references do not cover it
    frame = _raw(_request({"a": _ref(0, 4)}), b"1234", word_delta=3)
    (payload,) = FrameDecoder().feed(frame + b"abc")
    with pytest.raises(ProtocolViolation, match="section area of 7 bytes but its references "
                                                "cover 4"):
        decode_request(payload)
    # a raw word too short to hold the header length, and one over the frame limit
    with pytest.raises(ProtocolViolation, match="raw frame of 2 bytes has no room"):
        FrameDecoder().feed(struct.pack(">I", RAW_FLAG | 2) + b"..")
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 1000") as info:
        FrameDecoder(1000).feed(struct.pack(">I", RAW_FLAG | 5000))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_raw_encoders_round_trip_and_put_small_values_in_the_header() -> None:
    big = b"B" * 10_000
    view = memoryview(b"V" * 5000)
    body = VectoredBody(small=b"s" * 100, big=big, rows=[[1, view, "x"]])
    parts = encode_request_raw(3, 1, 9, "cid", body)
    assert parts[1] is big and parts[2] is view  # by reference, in order
    (payload,) = FrameDecoder().feed(b"".join(parts))
    header, got = decode_request(payload)
    assert (header.api_key, header.api_version, header.correlation_id) == (3, 1, 9)
    assert type(got["small"]) is bytes and bytes(got["big"]) == big
    assert bytes(got["rows"][0][1]) == bytes(view)
    # the same body, plain: identical values
    (plain,) = FrameDecoder().feed(encode_request(3, 1, 9, "cid", dict(body)))
    _, want = decode_request(plain)
    assert {k: v for k, v in want.items() if k != "rows"} == \
        {"small": got["small"], "big": bytes(got["big"])}
    (resp,) = FrameDecoder().feed(b"".join(encode_response_raw(9, 0, body)))
    cid, code, rbody = decode_response(resp)
    assert (cid, code, bytes(rbody["big"])) == (9, 0, big)


async def test_write_frame_writev_path_keeps_every_byte_in_order() -> None:
    """On asyncio's own transport (whose `writelines` joins before 3.12) `write_frame`
    writes multi-part frames with `os.writev` itself; a peer that does not read makes
    those writes partial, and what the kernel did not take must follow in order, with
    later frames queued behind it."""
    import asyncio
    import socket

    from dmq.protocol.codec import write_frame

    got = bytearray()
    done = asyncio.Event()
    total = 0
    frames = []
    for i in range(40):
        body = memoryview(bytes([i]) * (50_000 + 977 * i))
        frames.append([struct.pack(">I", len(body)), body, b"tail%d" % i])
        total += 4 + len(body) + len(frames[-1][2])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)  # let the sender's socket buffer fill first
        while len(got) < total:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            got.extend(chunk)
        done.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    for f in frames:
        write_frame(writer.transport, f, False)
    await asyncio.wait_for(done.wait(), 20)
    assert bytes(got) == b"".join(b"".join(bytes(p) for p in f) for f in frames)
    writer.close()
    server.close()


def test_a_frame_limit_that_would_reach_the_raw_flag_is_refused() -> None:
    with pytest.raises(ValueError, match="length word's top bit marks a raw-form frame"):
        FrameDecoder(RAW_FLAG)
    assert FrameDecoder(RAW_FLAG - 1).max_frame_bytes == RAW_FLAG - 1

"""One request's bytes to a node over a plain socket, for tests of what a real node
answers on the wire (and of what it does with bytes that are not a request)."""

from __future__ import annotations

import socket

from dmq.protocol.api import ApiKey
from dmq.protocol.codec import FrameDecoder, decode_response, encode_request


def roundtrip(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        s.settimeout(timeout)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                dec = FrameDecoder()
                if dec.feed(b"".join(chunks)):
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def api_versions_ok(port: int) -> bool:
    out = roundtrip(port, encode_request(ApiKey.API_VERSIONS, 0, 1, "t", {}))
    (frame,) = FrameDecoder().feed(out)
    cid, code, body = decode_response(frame)
    return cid == 1 and code == 0 and [int(ApiKey.API_VERSIONS), 0, 0] in body["apis"]

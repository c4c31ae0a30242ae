"""The wire protocol: frames, API table, error codes, server and client connection.

Sans-I/O parts (`codec`, `api`, `schema`, `errors`) never import asyncio; `server`
and `connection` are the asyncio shells around them.
"""

from dmq.protocol.api import API_VERSION_RANGE, REQUEST_SCHEMAS, ApiKey
from dmq.protocol.codec import (
                                FrameDecoder,
                                decode_request,
                                decode_response,
                                encode_request,
                                encode_response,
)
from dmq.protocol.errors import DmqError, ErrorCode, ProtocolViolation, error_for

__all__ = [
                                "API_VERSION_RANGE",
                                "REQUEST_SCHEMAS",
                                "ApiKey",
                                "DmqError",
                                "ErrorCode",
                                "FrameDecoder",
                                "ProtocolViolation",
                                "decode_request",
                                "decode_response",
                                "encode_request",
                                "encode_response",
                                "error_for",
]

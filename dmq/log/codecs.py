"""Compression codecs of the records payload.

Maps the 3 codec bits of a batch's `attributes` to compress/decompress functions.
The numbers are Kafka's, for both record formats: 1 gzip, 2 snappy, 3 lz4 (frame
format), 4 zstd. gzip is always there (zlib); zstd and lz4 are optional imports,
snappy decompression too (`cramjam` or `python-snappy`, for batches written by Kafka
clients; dmq's producer does not offer it): a build without one can still move
compressed batches, it only raises `UnsupportedCompressionError` when asked to build
or decode one.

Decompression is bounded: a payload that would inflate past
`MAX_UNCOMPRESSED_RECORDS_BYTES` (or whose frame header claims so) is a
`CorruptRecordError`, found before the memory is allocated where the frame says its
size (zstd) and after at most that many bytes otherwise (lz4 streams). The leader
validates a compressed batch by decompressing it with this same bound, so every batch
it stores decodes for every reader (bytes after the first frame are ignored by both).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from dmq.log.errors import CorruptRecordError, UnsupportedCompressionError

CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4
CODEC_NAMES = {CODEC_NONE: "none", CODEC_GZIP: "gzip", CODEC_SNAPPY: "snappy",
               CODEC_LZ4: "lz4", CODEC_ZSTD: "zstd"}
# The records of one batch, decompressed, may not exceed this (a decompression bomb
# must not take a leader or a consumer down). A batch is at most a producer's
# batch_size or one record, so 64 MiB leaves ample room.
MAX_UNCOMPRESSED_RECORDS_BYTES = 64 * 1024 * 1024

_Fn = Callable[[bytes], bytes]
_compressors: dict[int, _Fn] = {}
_decompressors: dict[int, Callable[[bytes, int], bytes]] = {}


def _gzip_compress(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _gzip_decompress(data: bytes, max_bytes: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, max_bytes + 1)
    if len(out) > max_bytes or d.unconsumed_tail:
        raise ValueError(f"stream inflates past {max_bytes} bytes")
    if not d.eof:
        raise ValueError("incomplete gzip stream")
    return out


_compressors[CODEC_GZIP] = _gzip_compress
_decompressors[CODEC_GZIP] = _gzip_decompress

_snappy_raw: Callable[[bytes], bytes] | None = None
try:  # optional: snappy batches come only from Kafka clients
    import cramjam  # type: ignore[import-not-found, unused-ignore]

    def _cramjam_snappy(data: bytes) -> bytes:
        return bytes(cramjam.snappy.decompress_raw(data))

    _snappy_raw = _cramjam_snappy
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import snappy as _snappy  # type: ignore[import-not-found]

        _snappy_raw = _snappy.decompress
    except ImportError:
        pass

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_BLOCK = struct.Struct(">i")

def _snappy_length(block: bytes) -> int:
    """The uncompressed length a raw snappy block declares (its leading uvarint)."""
    value = shift = 0
    for i in range(min(5, len(block))):
        value |= (block[i] & 0x7F) << shift
        if not block[i] & 0x80:
            return value
        shift += 7
    raise ValueError("bad snappy length prefix")


if _snappy_raw is not None:
    _inner = _snappy_raw

    def _raw(block: bytes, room: int) -> bytes:
        n = _snappy_length(block)
        if n > room:  # refused before the library allocates it
            raise ValueError(f"snappy block declares {n} bytes, over the bound")
        return _inner(block)

    def _snappy_decompress(data: bytes, max_bytes: int) -> bytes:
        """Raw snappy, or the xerial framing the Java client writes (magic, two
        versions, then blocks of [i32 length, raw snappy])."""
        pos = 0
        if data[:8] != _XERIAL_MAGIC:
            out = _raw(data, max_bytes)
        else:
            parts = []
            total = 0
            pos = 16
            while pos < len(data):
                if len(data) - pos < 4:
                    raise ValueError("truncated xerial block length")
                (n,) = _BLOCK.unpack_from(data, pos)
                if n < 0 or n > len(data) - pos - 4:
                    raise ValueError(f"xerial block of {n} bytes past the end")
                part = _raw(data[pos + 4:pos + 4 + n], max_bytes - total)
                total += len(part)
                parts.append(part)
                pos += 4 + n
            out = b"".join(parts)
        if len(out) > max_bytes:
            raise ValueError(f"stream inflates past {max_bytes} bytes")
        return out

    _decompressors[CODEC_SNAPPY] = _snappy_decompress

try:  # optional dependency (extra "compression")
    import zstandard as _zstd

    _zc = _zstd.ZstdCompressor(level=3)
    _zd = _zstd.ZstdDecompressor()
    _compressors[CODEC_ZSTD] = _zc.compress
    # The frame carries its content size (ZstdCompressor writes it by default).

    def _zstd_decompress(data: bytes, max_bytes: int) -> bytes:
        size = _zstd.frame_content_size(data)  # -1: not in the header
        if size > max_bytes:
            raise ValueError(f"frame declares {size} bytes")
        out: bytes = _zd.decompress(data, max_output_size=max_bytes if size < 0 else 0)
        return out

    _decompressors[CODEC_ZSTD] = _zstd_decompress
except ImportError:  # pragma: no cover - depends on the environment
    pass

try:  # optional dependency (extra "compression")
    import lz4.frame as _lz4f  # type: ignore[import-untyped]

    _compressors[CODEC_LZ4] = _lz4f.compress

    def _lz4_decompress(data: bytes, max_bytes: int) -> bytes:
        # The output buffer is sized by max_length: the frame's size when it says it
        # (our producers write it), else the bound. One byte more exposes a longer frame.
        size = _lz4f.get_frame_info(data)["content_size"]  # 0: not in the header
        if size > max_bytes:
            raise ValueError(f"frame declares {size} bytes")
        limit = size if size else max_bytes
        d = _lz4f.LZ4FrameDecompressor()
        out: bytes = d.decompress(data, max_length=limit + 1)
        if len(out) > limit or not d.eof or (size and len(out) != size):
            raise ValueError(f"frame does not end within {limit} bytes" if len(out) > limit
                             else "incomplete frame")
        return out

    _decompressors[CODEC_LZ4] = _lz4_decompress
except ImportError:  # pragma: no cover - depends on the environment
    pass


def codec_available(codec: int) -> bool:
    """True if this build can compress and decompress with `codec`."""
    return codec == CODEC_NONE or codec in _compressors


def compress(codec: int, data: bytes) -> bytes:
    if codec == CODEC_NONE:
        return data
    fn = _compressors.get(codec)
    if fn is None:
        raise UnsupportedCompressionError(f"compression codec {codec} is not available")
    return fn(data)


def decompress(codec: int, data: bytes | memoryview,
               max_bytes: int = MAX_UNCOMPRESSED_RECORDS_BYTES) -> bytes | memoryview:
    """The records payload of a batch, decompressed; at most `max_bytes` long."""
    if codec == CODEC_NONE:
        return data
    fn = _decompressors.get(codec)
    if fn is None:
        raise UnsupportedCompressionError(f"compression codec {codec} is not available")
    try:
        return fn(bytes(data), max_bytes)
    except MemoryError as exc:
        raise CorruptRecordError(f"cannot decompress {CODEC_NAMES.get(codec)}: out of memory "
                                 f"(limit {max_bytes} bytes)") from exc
    except Exception as exc:  # each library raises its own error type
        raise CorruptRecordError(f"cannot decompress {CODEC_NAMES.get(codec)} records "
                                 f"(at most {max_bytes} bytes): {exc}") from exc

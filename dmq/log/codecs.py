"""Compression codecs of the records payload.

Owns the mapping between the 3 codec bits of a batch's `attributes` and the
compress/decompress functions. zstd and lz4 are optional imports: a build without
them can still move compressed batches, it only raises `UnsupportedCompressionError`
when asked to build or decode one.

Decompression is bounded: a payload that would inflate past
`MAX_UNCOMPRESSED_RECORDS_BYTES` (or whose frame header claims so) is a
`CorruptRecordError`, found before the memory is allocated where the frame says its
size (zstd) and after at most that many bytes otherwise (lz4 streams). The leader
validates a compressed batch by decompressing it with this same bound, so every batch
it stores decodes for every reader (bytes after the first frame are ignored by both).
"""

from __future__ import annotations

from collections.abc import Callable

from dmq.log.errors import CorruptRecordError, UnsupportedCompressionError

CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_LZ4 = 2
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZSTD: "zstd", CODEC_LZ4: "lz4"}
# The records of one batch, decompressed, may not exceed this (a decompression bomb
# must not take a leader or a consumer down). A batch is at most a producer's
# batch_size or one record, so 64 MiB leaves ample room.
MAX_UNCOMPRESSED_RECORDS_BYTES = 64 * 1024 * 1024

_Fn = Callable[[bytes], bytes]
_compressors: dict[int, _Fn] = {}
_decompressors: dict[int, Callable[[bytes, int], bytes]] = {}

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

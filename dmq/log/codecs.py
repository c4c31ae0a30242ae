"""Compression codecs of the records payload.

Owns the mapping between the 3 codec bits of a batch's `attributes` and the
compress/decompress functions. zstd and lz4 are optional imports: a build without
them can still move compressed batches (the broker never decompresses), it only
raises `UnsupportedCompressionError` when asked to build or decode one.
"""

from __future__ import annotations

from collections.abc import Callable

from dmq.log.errors import CorruptRecordError, UnsupportedCompressionError

CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_LZ4 = 2
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZSTD: "zstd", CODEC_LZ4: "lz4"}

_Fn = Callable[[bytes], bytes]
_compressors: dict[int, _Fn] = {}
_decompressors: dict[int, _Fn] = {}

try:  # optional dependency (extra "compression")
    import zstandard as _zstd

    _zc = _zstd.ZstdCompressor(level=3)
    _zd = _zstd.ZstdDecompressor()
    _compressors[CODEC_ZSTD] = _zc.compress
    # The frame carries its content size (ZstdCompressor writes it by default).
    _decompressors[CODEC_ZSTD] = _zd.decompress
except ImportError:  # pragma: no cover - depends on the environment
    pass

try:  # optional dependency (extra "compression")
    import lz4.frame as _lz4f  # type: ignore[import-untyped]

    _compressors[CODEC_LZ4] = _lz4f.compress
    _decompressors[CODEC_LZ4] = _lz4f.decompress
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


def decompress(codec: int, data: bytes | memoryview) -> bytes | memoryview:
    if codec == CODEC_NONE:
        return data
    fn = _decompressors.get(codec)
    if fn is None:
        raise UnsupportedCompressionError(f"compression codec {codec} is not available")
    try:
        return fn(bytes(data))
    except Exception as exc:  # each library raises its own error type
        raise CorruptRecordError(f"cannot decompress {CODEC_NAMES.get(codec)}: {exc}") from exc

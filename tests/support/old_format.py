"""Log data in the format written before dmq-native batches carried their attribute
mark, for the migration tests: a batch built the old way, and a folder turned back
into that format."""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import Any

from crc32c import crc32c

from dmq.log.batch import (
    build_batch,
    iter_headers,
    read_header,
)
from dmq.log.codecs import CODEC_NONE
from dmq.log.migrate import (
    FORMAT_FILE,
    old_attributes,
)


def downgrade_batch(b: bytearray | memoryview, pos: int = 0) -> None:
    """Turn the dmq-native batch at `pos` into what record format 1 wrote: mark cleared,
    codec number mapped back (4 zstd -> 1, 3 lz4 -> 2), CRC recomputed."""
    h = read_header(b, pos)
    old = old_attributes(h.attributes)
    assert old is not None, f"not a dmq-native batch: attributes {h.attributes:#x}"
    struct.pack_into(">h", b, pos + 21, old)
    end = pos + h.batch_length + 12
    struct.pack_into(">I", b, pos + 17, crc32c(bytes(b[pos + 21:end])))


def downgrade_folder(directory: str | Path) -> int:
    """Rewrite a format-2 partition folder of dmq-native batches into the previous
    format (as the previous dmq left it: no `log-format` file); returns the batches."""
    n = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".log"):
            continue
        path = os.path.join(directory, name)
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            for h in list(iter_headers(data)):
                downgrade_batch(data, h.position)
                n += 1
            f.seek(0)
            f.write(data)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, FORMAT_FILE))
    return n


def old_batch(records: list[tuple[bytes | None, bytes | None]], codec: int = CODEC_NONE,
              **kw: Any) -> bytes:
    b = bytearray(build_batch(records, codec=codec, **kw))
    downgrade_batch(b)
    return bytes(b)

"""Small tmpfs mounts for full-disk tests (root only): whether they work here, mounting
one, and filling a file system up to a few free pages."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.procs import ProcessCluster


def mount_tmpfs(path: str, size: str, remount: bool = False) -> subprocess.CompletedProcess[str]:
    opts = f"remount,size={size}" if remount else f"size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path],
                          capture_output=True, text=True, check=False)


def tmpfs_skip_reason() -> str | None:
    """None when `mount -t tmpfs` works here, else why not (a test's skip reason)."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    d = tempfile.mkdtemp(prefix="dmq-tmpfs-probe-")
    try:
        r = mount_tmpfs(d, "1m")
        if r.returncode != 0:
            return f"mount -t tmpfs does not work here: {r.stderr.strip()}"
        subprocess.run(["umount", d], check=False)
        return None
    finally:
        os.rmdir(d)


@contextlib.contextmanager
def tmpfs_data_dir(pc: ProcessCluster, node_id: int, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` as a not yet started node's data folder; on the way out
    stop every node of `pc`, then unmount it (lazily: a file may still be open)."""
    data = pc.nodes[node_id].data_dir
    data.mkdir(parents=True)
    r = mount_tmpfs(str(data), size)
    assert r.returncode == 0, r.stderr
    try:
        yield data
    finally:
        pc.stop_all()
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(directory: str, leave_pages: int) -> None:
    """Write a filler file until the file system is full, then free `leave_pages` pages."""
    path = os.path.join(directory, "filler")
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    os.truncate(path, os.path.getsize(path) - 4096 * leave_pages)

"""Running the console tools (dmq-produce, dmq-consume) the way their scripts do, for
end-to-end tests."""

from __future__ import annotations

import subprocess
import sys


def run_tool(tool: str, *args: str | bytes, stdin: bytes = b"", timeout: float = 60
             ) -> subprocess.CompletedProcess[bytes]:
    """`dmq-<tool> ARGS` in a child Python (`dmq.cli.tools.<tool>_main`); args may be bytes,
    to pass what is not UTF-8."""
    code = f"import sys; from dmq.cli.tools import {tool}_main; {tool}_main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], input=stdin,
                          capture_output=True, timeout=timeout)

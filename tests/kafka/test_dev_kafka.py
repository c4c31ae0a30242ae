"""`dmq dev` turns Kafka listeners on at base port + 20 and prints a kcat command that
works as printed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kafka.support import free_block, needs_kcat, start_dev, stop_dev

pytestmark = pytest.mark.slow


@needs_kcat
def test_dev_prints_a_kcat_command_that_works(tmp_path: Path) -> None:
    base = free_block((0, 10, 11, 20, 21))
    proc, lines = start_dev(tmp_path, base, brokers=2)
    try:
        kafka = [x for x in lines if x.startswith("Kafka clients:")]
        assert kafka, "".join(lines)
        assert kafka[0].split()[2] == f"127.0.0.1:{base + 20},127.0.0.1:{base + 21}"
        command = re.search(r"\(e\.g\. (kcat .*)\)", kafka[0])
        assert command is not None
        out = subprocess.run(shlex.split(command.group(1)), capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert " 2 brokers:" in out
        assert f"broker 101 at 127.0.0.1:{base + 20}" in out
        assert f"broker 102 at 127.0.0.1:{base + 21}" in out
    finally:
        stop_dev(proc)


def _readme_kafka_blocks() -> tuple[list[str], str]:
    """The kcat lines and the Python example of README's "Kafka clients" section."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Kafka clients", 1)[1].split("\n## ", 1)[0]
    bash = section.split("```bash\n", 1)[1].split("```", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    return [line for line in bash.splitlines() if line.strip()], python


@needs_kcat
def test_readme_kafka_examples_work_as_printed(tmp_path: Path) -> None:
    """The README's examples, run against `dmq dev` with only its ports moved (the
    default layout 9111-9113 becomes base+20..base+22)."""
    kcat_lines, python = _readme_kafka_blocks()
    base = free_block((0, 10, 11, 12, 20, 21, 22))
    proc, lines = start_dev(tmp_path, base, brokers=3)

    def moved(text: str) -> str:
        for i in range(3):
            text = text.replace(f"127.0.0.1:{9111 + i}", f"127.0.0.1:{base + 20 + i}")
        return text

    try:
        assert any(x.startswith("Ctrl-C stops") for x in lines), "".join(lines)
        outputs = [subprocess.run(["bash", "-c", moved(line)], capture_output=True, text=True,
                                  timeout=30, check=True).stdout for line in kcat_lines]
        assert " 3 brokers:" in outputs[0]
        # (auto-created with 3 partitions: the two keys may land in different ones)
        got = sorted(line.rsplit(" (offset ", 1)[0] for line in outputs[2].splitlines())
        assert got == ["k1 hello source=kcat", "k2 world source=kcat"]
        out = subprocess.run([sys.executable, "-c", moved(python)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        assert out.strip() == "b'id-1' b'paid' [('region', b'eu')]"
    finally:
        stop_dev(proc)

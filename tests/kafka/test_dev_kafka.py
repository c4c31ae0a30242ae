"""`dmq dev` turns Kafka listeners on at base port + 20 and prints a kcat command that
works as printed; so do the README's Kafka examples."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kafka.support import free_block, needs_kcat, start_dev, stop_dev

pytestmark = pytest.mark.slow


def _readme_kafka_blocks() -> tuple[list[str], str]:
    """The kcat lines and the Python example of README's "Kafka clients" section."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Kafka clients", 1)[1].split("\n## ", 1)[0]
    bash = section.split("```bash\n", 1)[1].split("```", 1)[0]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    return [line for line in bash.splitlines() if line.strip()], python


@needs_kcat
def test_dev_kcat_hint_and_readme_examples_work_as_printed(tmp_path: Path) -> None:
    """One `dmq dev` (1 controller, 3 brokers): the kcat command it prints, then the
    README's examples with only their ports moved (the default layout's 9111-9113
    become base+20..base+22)."""
    kcat_lines, python = _readme_kafka_blocks()
    base = free_block((0, 10, 11, 12, 20, 21, 22))
    proc, lines = start_dev(tmp_path, base, brokers=3)

    def moved(text: str) -> str:
        for i in range(3):
            text = text.replace(f"127.0.0.1:{9111 + i}", f"127.0.0.1:{base + 20 + i}")
        return text

    try:
        kafka = [x for x in lines if x.startswith("Kafka clients:")]
        assert kafka, "".join(lines)
        assert kafka[0].split()[2] == ",".join(f"127.0.0.1:{base + 20 + i}" for i in range(3))
        command = re.search(r"\(e\.g\. (kcat .*)\)", kafka[0])
        assert command is not None
        out = subprocess.run(shlex.split(command.group(1)), capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert " 3 brokers:" in out
        for i in range(3):
            assert f"broker {101 + i} at 127.0.0.1:{base + 20 + i}" in out

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

"""The `dmq` command table of `dmq.cli` and what importing the console tools loads."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from dmq.cli import COMMANDS, main


def test_every_command_of_the_table_resolves_under_its_own_name() -> None:
    ctx = click.Context(main)
    assert isinstance(main, click.Group)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
    assert main.get_command(ctx, "no-such-command") is None
    out = CliRunner().invoke(main, ["--help"])
    assert out.exit_code == 0, out.output
    for name in COMMANDS:
        assert f"  {name} " in out.output, out.output
    cluster = CliRunner().invoke(main, ["cluster", "--help"])
    assert all(f"  {c} " in cluster.output for c in ("start", "status", "stop")), cluster.output


def test_the_console_tools_do_not_load_the_other_commands() -> None:
    """`dmq-produce` starts by importing `dmq.cli.tools`, which runs `dmq/cli/__init__`:
    that must not import the server, admin, dev... modules (they load the controller
    and node code the tool never uses)."""
    code = ("import json, sys; import dmq.cli.tools; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dmq.'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True, timeout=60).stdout)
    others = {m for m, _ in COMMANDS.values()}
    assert not others & set(loaded), sorted(others & set(loaded))
    assert not [m for m in loaded if m.startswith(("dmq.controller", "dmq.node", "dmq.broker"))]


def test_report_each_prints_every_result_then_fails_on_any_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    from dmq.cli.common import report_each

    report_each({"a": None}, lambda n: f"done {n}", lambda n, e: f"error {n}: {e}")
    assert capsys.readouterr().out == "done a\n"
    with pytest.raises(SystemExit) as exit_:
        report_each({"a": "boom", "b": None}, lambda n: f"done {n}",
                    lambda n, e: f"error {n}: {e}")
    out = capsys.readouterr()
    assert exit_.value.code == 1
    assert (out.out, out.err) == ("done b\n", "error a: boom\n")

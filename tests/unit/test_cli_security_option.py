"""`--command-config FILE` (default `$DMQ_COMMAND_CONFIG`) on every client command of
`dmq` and on the console tools, through the one shared option of dmq.cli.common; the
Python clients' `security=`; `dmq dev --secure` without the `cryptography` package;
and a client every node refuses is told at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dmq.cli import main
from dmq.cli.common import COMMAND_CONFIG_ENV, command_config_option
from dmq.cli.dev import free_base_port
from dmq.cli.tools import _consume_command, _produce_command
from dmq.client.admin import Admin
from dmq.client.admin_groups import GroupAdmin
from dmq.client.consumer import Consumer
from dmq.client.producer import Producer
from dmq.metadata.discovery import PLAINTEXT_REFUSED, find_controller
from dmq.protocol.connection import DEFAULT_SASL, DEFAULT_TLS
from dmq.protocol.errors import NetworkError
from dmq.security.client_config import ClientConfigError, ClientSecurity

# commands that are not clients of a running cluster: they start or stop node processes
NOT_CLIENTS = {("server",), ("dev",), ("cluster", "start"), ("cluster", "stop")}


def _leaves(group: click.Group, path: tuple[str, ...] = ()
            ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            yield from _leaves(cmd, (*path, name))
        else:
            yield (*path, name), cmd


CLIENT_COMMANDS = [p for p, _ in _leaves(main) if p not in NOT_CLIENTS]


def test_every_client_command_is_listed() -> None:
    """The walk reaches the commands of every module (a sample of each)."""
    for path in [("topics", "list"), ("topics", "create"), ("groups", "describe"),
                 ("partitions", "reassign"), ("brokers", "decommission"),
                 ("cluster", "status"), ("acls", "add"), ("roles", "grant"),
                 ("users", "create"), ("api-versions",)]:
        assert path in CLIENT_COMMANDS


@pytest.mark.parametrize("path", CLIENT_COMMANDS, ids=" ".join)
def test_client_command_help_shows_command_config(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "--command-config FILE" in result.output
    assert COMMAND_CONFIG_ENV in result.output  # the env var default is shown


@pytest.mark.parametrize("command", [_produce_command, _consume_command],
                         ids=["dmq-produce", "dmq-consume"])
def test_console_tools_take_the_same_option(command: click.Command) -> None:
    opts = [p for p in command.params if "--command-config" in getattr(p, "opts", [])]
    assert len(opts) == 1 and opts[0].envvar == COMMAND_CONFIG_ENV


def test_no_command_has_the_option_twice() -> None:
    for path, cmd in _leaves(main):
        names = [o for p in cmd.params for o in getattr(p, "opts", [])]
        assert names.count("--command-config") <= 1, path


def _properties(tmp_path: Path, **extra: str) -> Path:
    path = tmp_path / "client.properties"
    props = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
             "sasl.username": "alice", "sasl.password": "alice-secret", **extra}
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def _probe_command() -> click.Command:
    """A command with the shared option that reports the security it runs under, from
    inside `asyncio.run` as the real commands' clients would see it."""
    @click.command()
    @command_config_option
    def probe() -> None:
        async def seen() -> tuple[object, object]:
            return DEFAULT_SASL.get(), DEFAULT_TLS.get()

        sasl, tls = asyncio.run(seen())
        click.echo(f"user={getattr(sasl, 'username', None)} tls={tls is not None}")

    return probe


def test_option_applies_the_security_to_the_command(tmp_path: Path) -> None:
    path = _properties(tmp_path)
    result = CliRunner().invoke(_probe_command(), ["--command-config", str(path)], env={})
    assert result.output.strip() == "user=alice tls=False", result.output
    # and nothing leaks past the command
    assert DEFAULT_SASL.get() is None


def test_env_var_is_the_default(tmp_path: Path) -> None:
    path = _properties(tmp_path)
    result = CliRunner().invoke(_probe_command(), [], env={COMMAND_CONFIG_ENV: str(path)})
    assert result.output.strip() == "user=alice tls=False", result.output
    result = CliRunner().invoke(_probe_command(), [], env={COMMAND_CONFIG_ENV: ""})
    assert result.output.strip() == "user=None tls=False", result.output


def test_env_var_reaches_a_real_command(tmp_path: Path) -> None:
    """A bad file named by the env var is refused by `dmq topics list` before it
    connects anywhere, naming the file and the property."""
    path = _properties(tmp_path, **{"sasl.colour": "blue"})
    result = CliRunner().invoke(main, ["topics", "list", "--bootstrap", "127.0.0.1:1"],
                                env={COMMAND_CONFIG_ENV: str(path)})
    assert result.exit_code == 2
    assert str(path) in result.output and "sasl.colour" in result.output


def test_client_security_from_properties_and_file(tmp_path: Path) -> None:
    sec = ClientSecurity.from_file(_properties(tmp_path))
    assert sec.ssl is None and sec.sasl is not None and sec.sasl.username == "alice"
    sec = ClientSecurity.from_properties({"security.protocol": "SSL"})
    assert sec.ssl is not None and sec.sasl is None
    with pytest.raises(ClientConfigError, match="needs sasl.password"):
        ClientSecurity.from_properties({"security.protocol": "SASL_SSL",
                                        "sasl.mechanism": "PLAIN", "sasl.username": "a"})


def test_python_clients_take_security() -> None:
    sec = ClientSecurity.from_properties({"security.protocol": "SASL_PLAINTEXT",
                                          "sasl.mechanism": "PLAIN", "sasl.username": "a",
                                          "sasl.password": "b"})
    assert Producer("127.0.0.1:1", security=sec).cluster.security is sec
    assert Consumer("127.0.0.1:1", security=sec).cluster.security is sec
    admin = Admin("127.0.0.1:1", security=sec)
    assert admin.security is sec and admin._channel.security is sec
    assert GroupAdmin("127.0.0.1:1", security=sec).security is sec
    assert GroupAdmin(admin).security is sec  # on an Admin: its security


async def test_every_node_refusing_plaintext_is_reported_at_once() -> None:
    """Nodes that close every plaintext connection unanswered (TLS listeners): discovery
    gives up with that cause instead of retrying until its timeout."""
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(NetworkError) as info:
            await find_controller([("127.0.0.1", port)], timeout_ms=60_000)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.data == PLAINTEXT_REFUSED
    assert "does the listener require TLS?" in info.value.message


def test_dev_secure_without_cryptography_says_which_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['cryptography'] = None; from dmq.cli import main; "
            "main(sys.argv[1:])")
    base = free_base_port(1, 1, kafka=True)
    done = subprocess.run(
        [sys.executable, "-c", code, "dev", "--secure", "--controllers", "1", "--brokers",
         "1", "--base-port", str(base), "--data-dir", str(tmp_path / "dev")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cryptography" in lines[0] and "dmq[security]" in lines[0]
    assert not (tmp_path / "dev" / "node-1").exists()  # no node was started

"""The `dmq` command: its click group and the registration of every subcommand.

The commands live by subject: `server` (run a node, api-versions), `admin` (cluster
status, topics), `groups`, `acls` (ACLs and role grants), `partitions` (partitions and
brokers), `dev` (a local cluster as child processes), `launch` (cluster start/stop in
the background); `tools` holds the separate console tools `dmq-produce` and
`dmq-consume`; `common` the helpers they share. Each command parses, calls the library, prints.

A command's module is imported when that command is looked up, not here: importing
`dmq.cli.tools` (the console tools' entry points) runs this file, and must not load
every other command on the way.
"""

from __future__ import annotations

import importlib

import click

# command name -> (module, attribute) of its click command
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("dmq.cli.server", "server"),
    "api-versions": ("dmq.cli.server", "api_versions"),
    "cluster": ("dmq.cli.admin", "cluster"),
    "topics": ("dmq.cli.admin", "topics"),
    "groups": ("dmq.cli.groups", "groups"),
    "acls": ("dmq.cli.acls", "acls"),
    "roles": ("dmq.cli.acls", "roles"),
    "partitions": ("dmq.cli.partitions", "partitions"),
    "brokers": ("dmq.cli.partitions", "brokers"),
    "dev": ("dmq.cli.dev", "dev"),
    "users": ("dmq.cli.users", "users"),
    "quotas": ("dmq.cli.quotas", "quotas"),
}


class CommandTable(click.Group):
    """A click group whose subcommands come from `COMMANDS`, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        command = getattr(importlib.import_module(where[0]), where[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=CommandTable, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmq")
def main() -> None:
    """DistributedMQ: a replicated, persistent message log."""


__all__ = ["COMMANDS", "main"]

"""The `dmq` command: its click group and the registration of every subcommand.

The commands live by subject: `server` (run a node, api-versions), `admin` (cluster
status, topics), `groups`, `partitions` (partitions and brokers), `dev` (a local
cluster as child processes), `launch` (cluster start/stop in the background); `tools`
holds the separate console tools `dmq-produce` and `dmq-consume`; `common` the helpers
they share. Each command parses, calls the library, prints.
"""

from __future__ import annotations

import click

# Modules, not their commands: `dmq.cli.server` etc. must stay the submodules (a command
# imported here under the same name would hide its module from `from dmq.cli import x`).
from dmq.cli import admin, dev, groups, launch, partitions, server


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmq")
def main() -> None:
    """DistributedMQ: a replicated, persistent message log."""


for command in (server.server, server.api_versions, admin.cluster, admin.topics,
                groups.groups, partitions.partitions, partitions.brokers, dev.dev):
    main.add_command(command)
admin.cluster.add_command(launch.cluster_start)
admin.cluster.add_command(launch.cluster_stop)

__all__ = ["main"]

"""`dmq acls ...` and `dmq roles ...`: thin wrappers over the ACL methods of
`dmq.client.admin.Admin` (the rules they manage: `dmq.security.acl`).

    dmq acls add --principal User:alice --operation Read --topic orders
    dmq acls add --principal User:* --operation Describe --topic logs. --prefixed --deny
    dmq acls list [--principal User:alice] [--topic orders]
    dmq acls remove --principal User:alice --topic orders [--operation Read]
    dmq roles grant producer User:alice --topic orders
    dmq roles revoke consumer User:bob --topic orders --group billing

A role grant adds plain ACLs (listed by `dmq acls list`); a revoke removes exactly
those. Parse, call the library, print.
"""

from __future__ import annotations

from typing import Any

import click

from dmq.cli.common import admin_options, fail, run_admin, table
from dmq.security.acl import (
    ALLOW,
    CLUSTER,
    CLUSTER_NAME,
    DENY,
    GROUP,
    LITERAL,
    OPERATIONS,
    PREFIXED,
    ROLES,
    TOPIC,
    TRANSACTIONAL_ID,
    AccessControlEntry,
    AclError,
    AclFilter,
    make_entry,
)


def _resource(topic: str | None, group: str | None, cluster: bool,
              transactional_id: str | None, required: bool) -> tuple[str | None, str | None]:
    named = [(TOPIC, topic), (GROUP, group), (CLUSTER, CLUSTER_NAME if cluster else None),
             (TRANSACTIONAL_ID, transactional_id)]
    given = [(t, n) for t, n in named if n is not None]
    if len(given) > 1:
        raise click.UsageError("name one resource: --topic, --group, --cluster or "
                               "--transactional-id")
    if not given:
        if required:
            raise click.UsageError("name a resource: --topic, --group, --cluster or "
                                   "--transactional-id")
        return None, None
    return given[0]


def _resource_options(f: Any) -> Any:
    f = click.option("--prefixed", is_flag=True,
                     help="the name is a prefix (every resource starting with it)")(f)
    f = click.option("--transactional-id", default=None)(f)
    f = click.option("--cluster", is_flag=True, help="the cluster resource")(f)
    f = click.option("--group", default=None, help="a group name, or * for every group")(f)
    f = click.option("--topic", default=None, help="a topic name, or * for every topic")(f)
    return f


def _print(entries: list[AccessControlEntry]) -> None:
    table([["PERMISSION", "PRINCIPAL", "OPERATION", "RESOURCE", "PATTERN", "NAME"]] + [
        [e.permission, e.principal, e.operation, e.resource_type, e.pattern_type,
         e.resource_name] for e in entries])


@click.group()
def acls() -> None:
    """Add, list and remove ACLs (enforced with authorizer.enabled)."""


@acls.command("add")
@click.option("--principal", required=True, help="User:<name>, or User:* for everyone")
@click.option("--operation", "operations", required=True, multiple=True,
              type=click.Choice(OPERATIONS, case_sensitive=False))
@_resource_options
@click.option("--deny", is_flag=True, help="a deny ACL (default: allow); deny wins")
@admin_options
def acls_add(principal: str, operations: tuple[str, ...], topic: str | None,
             group: str | None, cluster: bool, transactional_id: str | None, prefixed: bool,
             deny: bool, bootstrap: str | None, config_path: str | None,
             timeout_ms: int) -> None:
    """Add an ACL per --operation."""
    rtype, name = _resource(topic, group, cluster, transactional_id, True)
    assert rtype is not None and name is not None
    try:
        entries = [make_entry(rtype, name, principal, op, DENY if deny else ALLOW,
                              PREFIXED if prefixed else LITERAL) for op in operations]
    except AclError as exc:
        raise click.UsageError(str(exc)) from None
    errors = run_admin(bootstrap, config_path, timeout_ms, lambda a: a.create_acls(entries))
    bad = [f"{e.operation}: {err}" for e, err in zip(entries, errors, strict=True) if err]
    if bad:
        fail("; ".join(bad))
    _print(entries)


@acls.command("list")
@click.option("--principal", default=None)
@_resource_options
@admin_options
def acls_list(principal: str | None, topic: str | None, group: str | None, cluster: bool,
              transactional_id: str | None, prefixed: bool, bootstrap: str | None,
              config_path: str | None, timeout_ms: int) -> None:
    """List ACLs (all, or those of a principal and/or resource)."""
    rtype, name = _resource(topic, group, cluster, transactional_id, False)
    f = AclFilter(rtype, name, (PREFIXED if prefixed else LITERAL) if name else None,
                  principal)
    _print(run_admin(bootstrap, config_path, timeout_ms, lambda a: a.describe_acls(f)))


@acls.command("remove")
@click.option("--principal", default=None)
@click.option("--operation", default=None, type=click.Choice(OPERATIONS, case_sensitive=False))
@_resource_options
@admin_options
def acls_remove(principal: str | None, operation: str | None, topic: str | None,
                group: str | None, cluster: bool, transactional_id: str | None,
                prefixed: bool, bootstrap: str | None, config_path: str | None,
                timeout_ms: int) -> None:
    """Remove the ACLs matching the options (give at least a principal or a resource)."""
    rtype, name = _resource(topic, group, cluster, transactional_id, False)
    if principal is None and rtype is None:
        raise click.UsageError("give --principal and/or a resource")
    try:
        f = AclFilter.of(rtype, name, (PREFIXED if prefixed else LITERAL) if name else None,
                         principal, None, operation)
    except AclError as exc:
        raise click.UsageError(str(exc)) from None
    removed = run_admin(bootstrap, config_path, timeout_ms, lambda a: a.delete_acls([f]))
    click.echo(f"removed {len(removed)} ACL(s)")
    _print(removed)


@click.group()
def roles() -> None:
    """Grant and revoke role bundles (admin, producer, consumer) as plain ACLs."""


def _role_command(name: str, revoke: bool) -> Any:
    @click.argument("role", type=click.Choice(ROLES, case_sensitive=False))
    @click.argument("principal")
    @click.option("--topic", default="*", show_default=True,
                  help="producer/consumer: the topic (or prefix with --prefixed)")
    @click.option("--group", default="*", show_default=True,
                  help="consumer: the group (or prefix with --prefixed)")
    @click.option("--prefixed", is_flag=True, help="--topic and --group are prefixes")
    @admin_options
    def command(role: str, principal: str, topic: str, group: str, prefixed: bool,
                bootstrap: str | None, config_path: str | None, timeout_ms: int) -> None:
        def call(a: Any) -> Any:
            method = a.revoke_role if revoke else a.grant_role
            return method(role, principal, topic, group, prefixed)

        entries = run_admin(bootstrap, config_path, timeout_ms, call)
        click.echo(f"{'revoked' if revoke else 'granted'} {role.lower()} for {principal}: "
                   f"{len(entries)} ACL(s)")
        _print(entries)

    command.__doc__ = ("Remove the ACLs of a role grant." if revoke else
                       "Add the ACLs a role stands for.")
    return roles.command(name)(command)


roles_grant = _role_command("grant", revoke=False)
roles_revoke = _role_command("revoke", revoke=True)

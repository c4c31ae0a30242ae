"""The controller's user and token APIs: DescribeUserScramCredentials,
AlterUserScramCredentials and RevokeToken (see dmq/protocol/api.py).

Reads are answered from this controller's applied state (plus its bootstrap file, see
`dmq.security.users`); writes by the active controller only, through its serialized
`mutate` (plan against the applied state, write, wait until applied). Every user
change is logged on `dmq.audit` with who asked.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dmq.metadata.records import Record, RevokeToken
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode, InvalidRequestError, PolicyViolationError
from dmq.security.users import UserDirectory, audit_alter, plan_alter

if TYPE_CHECKING:
    from dmq.protocol.server import RequestContext

audit = logging.getLogger("dmq.audit")

MAX_REVOKED_TOKENS = 100_000
TTL_SLACK_MS = 60_000


def _who(ctx: RequestContext) -> str:
    principal = getattr(ctx.connection, "principal", None)
    return f"{principal or 'anonymous'} from {ctx.peer}"


class UserApis:
    def __init__(self, controller: Any, directory: UserDirectory) -> None:
        """`controller`: the node's ControllerService (its state, clock, config,
        `mutate`, `is_active` and its route to the other controllers)."""
        self.controller = controller
        self.directory = directory
        self.max_ttl_ms = int(controller.config.get("http.token.ttl.ms"))

    def register(self, server: Any) -> None:
        server.register(ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS, self.handle_describe)
        server.register(ApiKey.ALTER_USER_SCRAM_CREDENTIALS, self.handle_alter)
        server.register(ApiKey.REVOKE_TOKEN, self.handle_revoke_token)

    async def handle_describe(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        users = self.directory.all_users()
        names = sorted(users) if body["users"] is None else list(dict.fromkeys(body["users"]))
        out: list[list[Any]] = []
        for name in names:
            creds = users.get(name)
            if creds is None:
                out.append([name, int(ErrorCode.RESOURCE_NOT_FOUND), f"no user {name!r}", []])
            else:
                out.append([name, 0, None, [[m, c.iterations] for m, c in sorted(creds.items())]])
        return {"results": out}

    async def handle_alter(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        deletions = [(u, m) for u, m in body["deletions"]]
        upsertions = [(u, m, int(i), bytes(s), bytes(p)) for u, m, i, s, p in body["upsertions"]]
        who = _who(ctx)

        def plan() -> tuple[list[Record], list[tuple[str, int, str | None]]]:
            return plan_alter(self.directory, deletions, upsertions)

        results = await self.controller.mutate(plan)
        audit_alter(deletions, upsertions, results, who)
        return {"results": [list(r) for r in results]}

    async def handle_revoke_token(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        await self.revoke(body["token_id"], body["expires_ms"], _who(ctx))
        return {}

    async def revoke(self, token_id: str, expires_ms: int, who: str) -> None:
        """Write the revocation (active controller only)."""
        now = self.controller.clock.wall_ms()
        if not token_id or len(token_id) > 64:
            raise InvalidRequestError("token id must be 1 to 64 characters")
        if expires_ms > now + self.max_ttl_ms + TTL_SLACK_MS:
            raise InvalidRequestError(f"token expiry {expires_ms} is beyond the longest "
                                      f"token lifetime (http.token.ttl.ms)")
        if expires_ms <= now:
            return  # expired already: refused anyway
        if len(self.controller.state.revoked_tokens) >= MAX_REVOKED_TOKENS:
            raise PolicyViolationError(f"{MAX_REVOKED_TOKENS} tokens are revoked and not yet "
                                       "expired: try again later")

        def plan() -> tuple[list[Record], None]:
            return [RevokeToken(token_id, expires_ms, now)], None

        await self.controller.mutate(plan)
        audit.info("HTTP token %s revoked by %s", token_id, who)

    async def revoke_anywhere(self, token_id: str, expires_ms: int, who: str) -> None:
        """Revoke from this node: here when this is the active controller, else through
        the active one."""
        c = self.controller
        if c.is_active or c._forward is None:
            await self.revoke(token_id, expires_ms, who)
            return
        await c._forward.request(ApiKey.REVOKE_TOKEN, {"token_id": token_id,
                                                       "expires_ms": expires_ms}, 10_000)


def register_user_handlers(server: Any, controller: Any,
                           directory: UserDirectory | None) -> UserApis:
    apis = UserApis(controller, directory if directory is not None else UserDirectory())
    if apis.directory.source is None:
        state = controller.state
        apis.directory.source = lambda: state
    apis.register(server)
    return apis


__all__ = ["UserApis", "register_user_handlers"]

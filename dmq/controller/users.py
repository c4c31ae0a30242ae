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
from dmq.security.tokens import TokenInvalid, TokenIssuer, TokenUnavailable
from dmq.security.users import UserDirectory, audit_alter, plan_alter

if TYPE_CHECKING:
    from dmq.protocol.server import RequestContext

audit = logging.getLogger("dmq.audit")

MAX_REVOKED_TOKENS = 100_000


def _who(ctx: RequestContext) -> str:
    principal = getattr(ctx.connection, "principal", None)
    return f"{principal or 'anonymous'} from {ctx.peer}"


class UserApis:
    def __init__(self, controller: Any, directory: UserDirectory) -> None:
        """`controller`: the node's ControllerService (its state, clock, config,
        `mutate`, `is_active` and its route to the other controllers)."""
        self.controller = controller
        self.directory = directory
        self.tokens = TokenIssuer.from_config(controller.config, directory)

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
        return {"token_id": await self.revoke(body["token"], _who(ctx))}

    async def revoke(self, token: str, who: str) -> str:
        """Verify the token and write its revocation (active controller only); its id."""
        self.controller._require_active()
        try:
            claims = self.tokens.verify(token)
        except (TokenInvalid, TokenUnavailable) as exc:
            raise InvalidRequestError(f"token not revoked: {exc}") from None
        token_id, expires_ms = claims.token_id, claims.expires_ms
        now = self.controller.clock.wall_ms()
        if expires_ms <= now:
            return token_id  # expired already: refused anyway
        if len(self.controller.state.revoked_tokens) >= MAX_REVOKED_TOKENS:
            raise PolicyViolationError(f"{MAX_REVOKED_TOKENS} tokens are revoked and not yet "
                                       "expired: try again later")

        def plan() -> tuple[list[Record], None]:
            return [RevokeToken(token_id, expires_ms, now)], None

        await self.controller.mutate(plan)
        audit.info("HTTP token %s of User:%s revoked by %s", token_id, claims.user, who)
        return token_id

    async def revoke_anywhere(self, token: str, who: str) -> None:
        """Revoke from this node: here when this is the active controller, else through
        the active one."""
        c = self.controller
        if c.is_active or c._forward is None:
            await self.revoke(token, who)
            return
        await c._forward.request(ApiKey.REVOKE_TOKEN, {"token": token}, 10_000)


def register_user_handlers(server: Any, controller: Any,
                           directory: UserDirectory | None) -> UserApis:
    apis = UserApis(controller, directory if directory is not None else UserDirectory())
    if apis.directory.source is None:
        state = controller.state
        apis.directory.source = lambda: state
    apis.register(server)
    return apis


__all__ = ["UserApis", "register_user_handlers"]

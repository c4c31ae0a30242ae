"""The controller's user and token APIs: DescribeUserScramCredentials,
AlterUserScramCredentials and RevokeToken (see dmq/protocol/api.py).

Reads are answered from this controller's applied state (plus its bootstrap file, see
`dmq.security.users`); writes by the active controller only, through its serialized
`mutate` (plan against the applied state, write, wait until applied). Every user
change is logged on `dmq.audit` with who asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dmq.metadata.records import Record, RevokeToken
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import (
    ErrorCode,
    InvalidRequestError,
    NotControllerError,
    PolicyViolationError,
)
from dmq.security.tokens import TokenInvalid, TokenIssuer, TokenUnavailable
from dmq.security.users import UserDirectory, audit_alter, plan_alter

if TYPE_CHECKING:
    from dmq.clock import Clock
    from dmq.config import ClusterConfig
    from dmq.metadata.discovery import ControllerChannel
    from dmq.metadata.state import MetadataState
    from dmq.protocol.server import RequestContext

audit = logging.getLogger("dmq.audit")
T = TypeVar("T")

MAX_REVOKED_TOKENS = 100_000


class UserHost(Protocol):
    """What these APIs use of the controller (a ControllerService)."""

    config: ClusterConfig
    clock: Clock
    state: MetadataState

    @property
    def is_active(self) -> bool: ...

    def leader_hint(self) -> tuple[int, str, int] | None: ...

    async def mutate(self, plan: Callable[[], tuple[list[Record], T]],
                     timeout_ms: int = ...) -> T:
        """Plan against the applied state, write, return the plan's result."""
        ...


def _who(ctx: RequestContext) -> str:
    return f"{ctx.connection.principal or 'anonymous'} from {ctx.peer}"


class UserApis:
    def __init__(self, controller: UserHost, directory: UserDirectory,
                 forward: ControllerChannel | None = None) -> None:
        """`forward`: the route to the other controllers (None: there are none)."""
        self.controller = controller
        self.forward = forward
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
        if not self.controller.is_active:
            raise NotControllerError("not the active controller",
                                     leader=self.controller.leader_hint())
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
        if self.controller.is_active or self.forward is None:
            await self.revoke(token, who)
            return
        await self.forward.request(ApiKey.REVOKE_TOKEN, {"token": token}, 10_000)


def register_user_handlers(server: Any, controller: UserHost, directory: UserDirectory | None,
                           forward: ControllerChannel | None) -> UserApis:
    apis = UserApis(controller, directory if directory is not None else UserDirectory(),
                    forward)
    if apis.directory.source is None:
        state = controller.state
        apis.directory.source = lambda: state
    apis.register(server)
    return apis


__all__ = ["UserApis", "register_user_handlers"]

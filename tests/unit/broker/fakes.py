"""Stand-ins shared by the broker unit tests."""

from __future__ import annotations

from typing import Any


class FakeFetchConn:
    """A follower's connection to its leader: records each FETCH body and answers it
    with `answer` (then with nothing), always in session 7."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answer: dict[str, Any] = {"topics": []}

    async def request(self, api: Any, body: dict[str, Any], timeout_ms: int) -> Any:
        self.bodies.append(body)
        answer, self.answer = self.answer, {"topics": []}
        return {"session_id": 7, **answer}

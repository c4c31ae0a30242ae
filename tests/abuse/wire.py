"""Raw-socket helpers for probes that speak as a cluster node or hold connections open:
`identify` sends NODE_HELLO so a probe can pose as a configured node; `call` (from
support.py) sends a request frame on an open socket and reads its answer.
"""

from __future__ import annotations

import socket

from dmq.protocol.api import ApiKey
from tests.abuse.support import call

__all__ = ["call", "identify"]


def identify(sock_or_port: socket.socket | int, node_id: int, *, host: str = "127.0.0.1",
             timeout_s: float = 5.0) -> socket.socket:
    """Pose as cluster node `node_id`: send NODE_HELLO on the socket (or on a new
    connection to the port) and return the socket, identified. Raises AssertionError
    with the node's answer when it refuses the identity."""
    if isinstance(sock_or_port, socket.socket):
        sock = sock_or_port
    else:
        sock = socket.create_connection((host, sock_or_port), timeout=timeout_s)
    answer = call(sock, [int(ApiKey.NODE_HELLO), 0, 0, "probe", {"node_id": node_id}])
    if answer is None or answer[1] != 0:
        if not isinstance(sock_or_port, socket.socket):
            sock.close()
        raise AssertionError(f"identity as node {node_id} refused: {answer}")
    return sock

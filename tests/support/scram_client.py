"""The client side of a SCRAM exchange, computed by hand, for tests that drive the
server with raw SASL messages."""

from __future__ import annotations

import base64
import hashlib
import hmac

from dmq.security import scram


def client_final(mechanism: str, password: str, client_first_bare: str, server_first: str
                 ) -> tuple[str, str]:
    """(client-final message, expected server signature) of a SCRAM client."""
    h = scram.SCRAM_HASHES[mechanism]
    attrs = dict(p.split("=", 1) for p in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(h, password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", h).digest()
    stored = hashlib.new(h, client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{client_first_bare},{server_first},{without_proof}".encode()
    proof = bytes(a ^ b for a, b in zip(client_key, hmac.new(stored, auth, h).digest(),
                                        strict=True))
    server_key = hmac.new(salted, b"Server Key", h).digest()
    return (f"{without_proof},p={base64.b64encode(proof).decode()}",
            "v=" + base64.b64encode(hmac.new(server_key, auth, h).digest()).decode())

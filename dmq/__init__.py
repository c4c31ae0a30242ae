"""DistributedMQ: a distributed, replicated, persistent message log.

The package is layered; imports only point downward (README "Architecture" has the
picture, tests/unit/test_layering.py checks it): `protocol` and `log` at the bottom,
`metadata` (records, state, image, controller discovery) above them, then `raft`,
`controller`, `broker`, `kafka` and `client` side by side (the client reaches none of
the server packages), `ops` (HTTP, metrics, console), and `node`/`roles` as the
composition root that wires services together; the CLI sits on top.
"""

__version__ = "0.1.0"

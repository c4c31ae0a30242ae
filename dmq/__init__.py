"""DistributedMQ: a distributed, replicated, persistent message log.

The package is layered; imports only point downward:
protocol -> log -> raft -> controller -> broker -> client -> cli.
"""

__version__ = "0.1.0"

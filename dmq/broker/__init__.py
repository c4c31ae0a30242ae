"""dmq.broker: partition replicas, produce/fetch, follower fetchers, ISR and HW.

Public names only; the logic lives in the modules:
`partition` (one replica's replication state), `replica_manager` (all replicas, driven
by metadata images), `fetcher` (follower pull replication), `fetch_session` (the
leader's incremental fetch sessions), `handlers` (the data-path requests), `service`
(the broker role of a node), `lifecycle` (registration with the controller, heartbeats
and the metadata the broker follows).
"""

from dmq.broker.handlers import DataPlane
from dmq.broker.partition import Partition, ProduceWaiter, ReplicaState
from dmq.broker.replica_manager import ReplicaManager, log_config_for

__all__ = [
    "DataPlane",
    "Partition",
    "ProduceWaiter",
    "ReplicaManager",
    "ReplicaState",
    "log_config_for",
]

"""The cluster id: 22 characters of URL-safe base64 (a UUID's 16 bytes), the shape
Kafka clients expect in Metadata and DescribeCluster answers.

The first active controller of a cluster writes it to the metadata log once (the
CLUSTER_ID record); every node then answers with the same id whatever happens to the
quorum later. A cluster that starts empty gets a random one. A cluster that already
holds topics or brokers when it first writes the id (its data was written by a version
that kept no id) gets the id it showed clients until then, derived from the controller
quorum, so Kafka clients see no change.
"""

from __future__ import annotations

import base64
import uuid

from dmq.config import ClusterConfig
from dmq.metadata.state import MetadataState


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def quorum_cluster_id(config: ClusterConfig) -> str:
    """The id derived from the controller quorum's ids and addresses: what every node
    answered before the id was kept, and still answers before the record is applied."""
    quorum = ",".join(f"{c.node_id}@{c.host}:{c.port}"
                      for c in sorted(config.controllers, key=lambda c: c.node_id))
    return _encode(uuid.uuid5(uuid.NAMESPACE_URL, "dmq:" + quorum).bytes)


def new_cluster_id(state: MetadataState, config: ClusterConfig) -> str:
    """The id the first active controller writes (see the module docstring)."""
    if not state.topics and not state.brokers:
        return _encode(uuid.uuid4().bytes)
    return quorum_cluster_id(config)


__all__ = ["new_cluster_id", "quorum_cluster_id"]

"""dmq.metadata: the cluster metadata every role shares.

The metadata records and their wire format (`records`), applying them to the state the
active controller writes from (`state`), the immutable image brokers, clients and the
Kafka listener read (`image`), and finding the active controller (`discovery`). It sits
below `dmq.controller`, `dmq.broker`, `dmq.kafka` and `dmq.client`, and imports only
`dmq.protocol`.
"""

from dmq.metadata.discovery import (
    ControllerAddress,
    ControllerChannel,
    find_controller,
    parse_bootstrap,
)
from dmq.metadata.image import (
    EMPTY_IMAGE,
    FENCED,
    NO_LEADER,
    ONLINE,
    SHUTTING_DOWN,
    BrokerInfo,
    MetadataImage,
    PartitionInfo,
    TopicInfo,
    image_from_metadata,
    metadata_body,
)
from dmq.metadata.state import MetadataState

__all__ = [
    "EMPTY_IMAGE",
    "FENCED",
    "NO_LEADER",
    "ONLINE",
    "SHUTTING_DOWN",
    "BrokerInfo",
    "ControllerAddress",
    "ControllerChannel",
    "MetadataImage",
    "MetadataState",
    "PartitionInfo",
    "TopicInfo",
    "find_controller",
    "image_from_metadata",
    "metadata_body",
    "parse_bootstrap",
]

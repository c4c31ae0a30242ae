"""dmq.controller: cluster metadata on Raft, broker lifecycle and partition leadership.

Public names for other layers; the service itself (`dmq.controller.service`) is wired by
`dmq.roles` and not imported here, so readers of the image do not load Raft.
"""

from dmq.controller.discovery import (
    ControllerAddress,
    ControllerChannel,
    find_controller,
    parse_bootstrap,
)
from dmq.controller.image import (
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
from dmq.controller.state import MetadataState

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

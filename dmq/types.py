"""Identifier types shared by every layer. Pure declarations, no logic."""

from typing import NewType

NodeId = NewType("NodeId", int)
Term = NewType("Term", int)
RaftIndex = NewType("RaftIndex", int)

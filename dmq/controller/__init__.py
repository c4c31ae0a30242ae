"""dmq.controller: cluster metadata on Raft, broker lifecycle and partition leadership.

The service itself (`dmq.controller.service`) is wired by `dmq.roles`. The metadata it
writes (records, state, image) and controller discovery live in `dmq.metadata`, below
this package, so brokers and clients read them without importing the controller.
"""

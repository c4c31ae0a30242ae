"""How a node wires its services (dmq.roles, dmq.services): a combined-mode node with
the Kafka listener on, in this process on free loopback ports.

What is checked is the wiring the node used to find by searching its services: the
controller hands CONTROLLER_CHANGED to the local broker's lifecycle, the Kafka listener
advertises its address through the broker's registration, the REST paths read the
broker's replicas, and every service uses the node's clock and random source.
"""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp

from dmq.broker.service import BrokerService
from dmq.clock import SystemClock
from dmq.config import parse_config
from dmq.controller.service import ControllerService
from dmq.kafka.service import KafkaService
from dmq.node import Node, resolve_node
from dmq.ops.console import Console
from dmq.ops.rest import RestApi
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from tests.support.procs import free_ports
from tests.support.waiting import until

SETTINGS = {"broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 200,
            "raft.tick.ms": 20, "auto.leader.rebalance.enable": False, "kafka.port": 0}


async def test_combined_node_wires_its_services(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    config = parse_config({"controllers": [{"id": 1, "host": "127.0.0.1", "port": port}],
                           "brokers": [], "settings": SETTINGS})
    clock, rng = SystemClock(), random.Random(7)
    node = Node(config, resolve_node(config, 1, ("controller", "broker"), tmp_path / "n1"),
                clock=clock, rng=rng)
    await node.start()
    try:
        ctl, kafka, broker, rest, console = node.services
        assert (type(ctl), type(kafka), type(broker), type(rest), type(console)) == (
            ControllerService, KafkaService, BrokerService, RestApi, Console)
        assert isinstance(ctl, ControllerService) and isinstance(broker, BrokerService)
        assert isinstance(kafka, KafkaService)
        lifecycle = broker.lifecycle

        # one clock and one random source for the whole node
        assert ctl.clock is clock and ctl.raft.raft.clock is clock
        assert broker.clock is clock and lifecycle.clock is clock
        assert broker.replicas.clock is clock
        assert ctl.rng is rng and ctl.raft.raft.rng is rng and lifecycle.rng is rng

        await until(lambda: node.readiness()[0], "the node ready")
        # the Kafka listener's address went into the broker's registration
        assert lifecycle.kafka_address == ("127.0.0.1", kafka.server.port)

        # CONTROLLER_CHANGED on a combined node is answered by the controller service
        # and reaches the local broker's lifecycle
        controller = lifecycle.controller
        assert controller is not None
        term = controller.term + 3
        await request_once("127.0.0.1", port, ApiKey.CONTROLLER_CHANGED, {
            "controller_id": 1, "term": term, "host": "127.0.0.1", "port": port}, node_id=1)
        assert lifecycle.controller is not None and lifecycle.controller.term == term

        # the REST paths read the local broker's replicas
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/api/v1/storage/replication/status") as resp:
            assert resp.status == 200
            assert await resp.json() == {"brokerId": 1, "partitions": []}
    finally:
        await node.stop()

"""The node record: one type, one parser, used by the scheduler's mirror and the fleet checks (no etcd)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from tasklease.errors import CorruptRecord
from tasklease.fleet import takes
from tasklease.keys import Keyspace
from tasklease.nodes import NodeRecord, parse_node
from tasklease.routing import Route
from tasklease.scheduler import ClusterView
from tasklease.store import KV

K = Keyspace("ns")
KEY = K.node("w1")

# What a worker writes (Worker.node_record), in its order.
WRITTEN: dict[str, Any] = {
    "id": "w1",
    "host": "box",
    "pid": 4242,
    "queues": ["default", "images"],
    "capacity": 4,
    "running": 1,
    "assigned": 2,
    "cpu": 12.5,
    "memory": 40.1,
    "weight": 2.0,
    "tags": {"zone": "eu", "gpu": "true"},
    "types": ["noop", "resize"],
    "version": "0.1.0",
    "started_at": 1700000000.25,
    "heartbeat_at": 1700000010.5,
    "lease": 7587869423413180000,
    "lease_ttl": 10,
    "draining": False,
    "completed": 17,
}


def record(**changes: Any) -> bytes:
    d = {**WRITTEN, **changes}
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


def test_a_written_record_reads_back_to_the_same_json_and_bytes():
    node = parse_node(KEY, orjson.dumps(WRITTEN))
    assert node.to_json() == WRITTEN
    assert list(node.to_json()) == list(WRITTEN), "same field order as the worker writes"
    assert node.encode() == orjson.dumps(WRITTEN)
    assert node.queues == ("default", "images")
    assert node.types == ("noop", "resize")
    assert node.tags == {"zone": "eu", "gpu": "true"}


def test_every_field_of_the_record_is_a_field_of_the_type():
    assert [f for f in NodeRecord.__dataclass_fields__] == list(WRITTEN)


def test_missing_optional_fields_take_the_defaults_of_the_readers():
    minimal = orjson.dumps({"queues": ["q"], "capacity": 3})
    node = parse_node(KEY, minimal)
    assert node.id == "w1", "the id of the key when the record has none"
    assert (node.cpu, node.memory, node.weight, node.lease_ttl) == (0.0, 0.0, 1.0, 10.0)
    assert node.tags == {} and node.types == () and node.draining is False
    assert (node.running, node.assigned, node.completed, node.pid, node.lease) == (0, 0, 0, 0, 0)
    assert node.heartbeat_at is None and node.started_at is None and node.host == ""


def test_tolerated_like_the_scheduler_did():
    # numbers as text, a TTL of 0 (default), empty tags and types, tag values read as text
    node = parse_node(
        KEY,
        record(capacity="3", cpu="5", lease_ttl=0, tags=None, types=None, draining=1),
    )
    assert (node.capacity, node.cpu, node.lease_ttl, node.tags, node.types) == (3, 5.0, 10.0, {}, ())
    assert node.draining is True
    assert parse_node(KEY, record(tags={"n": 1})).tags == {"n": "1"}
    # fields no reader checks fall back to their defaults
    assert parse_node(KEY, record(pid="x", host=3, heartbeat_at="soon")).to_json()["pid"] == 0


@pytest.mark.parametrize(
    "data",
    [
        b"\x00not json",
        b"[1, 2]",
        record(capacity=...),
        record(queues=...),
        record(queues="default"),
        record(queues=[1]),
        record(capacity=None),
        record(capacity="many"),
        record(cpu=None),
        record(weight="heavy"),
        record(tags=["zone=eu"]),
        record(lease_ttl="nan"),
        record(types=3),
    ],
)
def test_a_bad_record_is_corrupt(data):
    with pytest.raises(CorruptRecord, match="corrupt record at /ns/node/w1"):
        parse_node(KEY, data)


def test_the_fleet_takes_a_node_record():
    node = parse_node(KEY, orjson.dumps(WRITTEN))
    assert takes(node, "default", Route("noop"))
    assert takes(node, "images", Route("resize", (("zone", "eu"),)))
    assert not takes(node, "other", Route("noop"))
    assert not takes(node, "default", Route("sleep"))
    assert not takes(node, "default", Route("noop", (("zone", "us"),)))
    assert not takes(parse_node(KEY, record(draining=True)), "default", Route("noop"))


def test_the_scheduler_mirrors_a_node_through_the_parser(caplog):
    view = ClusterView(K)
    view.apply(KV(KEY, orjson.dumps(WRITTEN), 1, 1, 1, lease=5), deleted=False)
    node = view.nodes["w1"]
    assert (node.view.capacity, node.view.weight, node.ttl, node.lease) == (4, 2.0, 10.0, 5)
    assert node.queues == frozenset({"default", "images"}) and node.types == frozenset({"noop", "resize"})
    assert node.takes("default", Route("resize", (("gpu", "true"),)))

    # a bad record later: the worker is ignored, with the same log line as before
    with caplog.at_level(logging.ERROR, logger="tasklease.scheduler"):
        view.apply(KV(KEY, record(capacity=...), 1, 2, 2, lease=5), deleted=False)
    assert "w1" not in view.nodes
    assert "ignoring worker w1: bad node record (corrupt record at /ns/node/w1" in caplog.text

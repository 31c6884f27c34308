"""The etcd keyspace: queue order, parsing, name validation and prefix ranges."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasklease.errors import InvalidOption, InvalidQueueName
from tasklease.keys import SEQ_DIGITS, Keyspace, QueueKey, prefix_end

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

task_ids = st.text(alphabet=CROCKFORD, min_size=26, max_size=26)
priorities = st.integers(min_value=0, max_value=3)
seqs = st.integers(min_value=0, max_value=10**19)
entries = st.lists(st.tuples(priorities, seqs, task_ids), max_size=40)
queue_names = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(lambda n: n not in {".", ".."})


@given(entries)
def test_ascending_key_order_is_priority_descending_then_fifo(items):
    # Given queue entries with random priorities, sequences and ids
    keys = Keyspace()

    # When their keys are sorted as etcd sorts them (ascending bytes)
    by_key = sorted(items, key=lambda e: keys.queue_entry("q", *e).encode())

    # Then the order is highest priority first, then lowest sequence first
    by_rule = sorted(items, key=lambda e: (-e[0], e[1], e[2]))
    assert by_key == by_rule


def test_urgent_task_sorts_before_older_low_priority_task():
    # Given an old low-priority entry and a newer urgent one
    keys = Keyspace()
    old_low = keys.queue_entry("q", 0, 1, "A" * 26)
    new_urgent = keys.queue_entry("q", 3, 10**19, "B" * 26)

    # When / Then the urgent entry comes first in a range read
    assert new_urgent < old_low


@given(queue_names, priorities, seqs, task_ids)
def test_parse_queue_entry_round_trips(queue, priority, seq, task_id):
    # Given a queue key built from its parts
    keys = Keyspace("ns")
    key = keys.queue_entry(queue, priority, seq, task_id)

    # When it is parsed
    parsed = keys.parse_queue_entry(key)

    # Then the same parts come back, and the key sits under its queue and band
    assert parsed == QueueKey(queue, priority, seq, task_id)
    assert key.startswith(keys.queue_band(queue, priority))
    assert key.startswith(keys.queue(queue))


def test_sequence_is_zero_padded_to_fixed_width():
    # Given the smallest and the largest sequence
    keys = Keyspace()

    # When their keys are built
    small = keys.queue_entry("q", 1, 0, "X")
    large = keys.queue_entry("q", 1, 10**SEQ_DIGITS - 1, "X")

    # Then both keys have the same length (string order equals numeric order)
    assert len(small) == len(large)
    assert "/" + "0" * SEQ_DIGITS + "/" in small


def test_parse_queue_entry_rejects_a_key_of_another_prefix():
    # Given a task record key, not a queue key
    keys = Keyspace()

    # When / Then parsing it fails
    with pytest.raises(ValueError, match="not a queue key"):
        keys.parse_queue_entry(keys.task("A" * 26))


@pytest.mark.parametrize("priority", [-1, 4, 7])
def test_queue_entry_rejects_priority_out_of_range(priority):
    # Given / When / Then a priority outside 0..3 is refused
    with pytest.raises(InvalidOption):
        Keyspace().queue_entry("q", priority, 1, "X")


@pytest.mark.parametrize("seq", [-1, 10**SEQ_DIGITS])
def test_queue_entry_rejects_sequence_out_of_range(seq):
    # Given / When / Then a sequence that does not fit 20 digits is refused
    with pytest.raises(InvalidOption):
        Keyspace().queue_entry("q", 1, seq, "X")


@pytest.mark.parametrize(
    "name",
    ["a/b", "x" * 65, "x" * 200, "", ".", "..", "a b", "tab\t", "q\n", "é", "a:b", "a*"],
)
def test_bad_queue_names_raise_invalid_queue_name(name):
    # Given a queue name outside [A-Za-z0-9_.-]{1,64}
    keys = Keyspace()

    # When / Then every key builder that takes it refuses it
    with pytest.raises(InvalidQueueName):
        keys.queue(name)
    with pytest.raises(InvalidQueueName):
        keys.queue_entry(name, 1, 1, "X")


@pytest.mark.parametrize("name", ["a", "x" * 64, "A.b_c-9", ".hidden"])
def test_good_queue_names_are_accepted(name):
    # Given / When a valid queue name is used
    prefix = Keyspace().queue(name)

    # Then its prefix is the name between slashes
    assert prefix == f"/tasklease/queue/{name}/"


@pytest.mark.parametrize("namespace", ["", "a/b", "x" * 65, "..", "."])
def test_bad_namespace_raises_invalid_option(namespace):
    # Given / When / Then a bad namespace is refused as an option, not a queue name
    with pytest.raises(InvalidOption):
        Keyspace(namespace)


def test_namespaces_do_not_overlap():
    # Given two namespaces where one name is a prefix of the other
    a, ab = Keyspace("a"), Keyspace("ab")

    # When / Then no key of "ab" lies in the range of "a"
    key = ab.task("A" * 26)
    assert not a.root <= key < prefix_end(a.root)


def test_queue_prefix_does_not_contain_keys_of_a_longer_queue_name():
    # Given queues "a" and "a.b"
    keys = Keyspace()
    prefix = keys.queue("a")
    other = keys.queue_entry("a.b", 1, 1, "X")

    # When / Then the range of "a" does not hold the key of "a.b"
    assert not other.startswith(prefix)
    assert not prefix <= other < prefix_end(prefix)


@given(queue_names, queue_names, priorities, seqs, task_ids)
def test_a_queue_range_holds_only_its_own_keys(queue, other, priority, seq, task_id):
    # Given a key of some queue
    keys = Keyspace()
    key = keys.queue_entry(other, priority, seq, task_id)

    # When it is checked against the range read of another queue
    prefix = keys.queue(queue)
    inside = prefix <= key < prefix_end(prefix)

    # Then it is inside exactly when it is the same queue
    assert inside == (queue == other)


def test_prefix_end_bumps_the_last_character():
    # Given / When / Then the exclusive end follows the prefix in key order
    assert prefix_end("/tasklease/queue/") == "/tasklease/queue0"
    assert prefix_end("abc") == "abd"


@given(st.text(alphabet="abz/09", max_size=20))
def test_every_key_with_a_prefix_lies_in_its_range(suffix):
    # Given a prefix ending in "/" and any key that starts with it
    prefix = "/tasklease/task/"
    key = prefix + suffix

    # When / Then the key lies in [prefix, prefix_end(prefix))
    assert prefix <= key < prefix_end(prefix)


def test_other_key_builders_share_the_namespace_root():
    # Given a namespace
    keys = Keyspace("prod")

    # When the other keys are built
    built = [
        keys.task("T"),
        keys.node("w1"),
        keys.assignment("w1", "T"),
        keys.running_entry("T"),
    ]

    # Then all live under the root, and a task key gives back its id
    assert keys.root == "/prod/"
    assert all(k.startswith("/prod/") for k in built)
    assert keys.task_id_of(keys.task("T")) == "T"
    assert keys.assignment("w1", "T").startswith(keys.worker_assignments("w1"))


# parsers: every key kind built here is parsed here --------------------------------------
worker_ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(lambda n: n not in {".", ".."})


@given(task_ids)
def test_task_key_round_trips(task_id):
    keys = Keyspace("ns")
    assert keys.task_id_of(keys.task(task_id)) == task_id


@given(worker_ids)
def test_node_key_round_trips(worker):
    keys = Keyspace("ns")
    assert keys.parse_node(keys.node(worker)) == worker


@given(worker_ids, task_ids)
def test_assignment_key_round_trips(worker, task_id):
    keys = Keyspace("ns")
    assert keys.parse_assignment(keys.assignment(worker, task_id)) == (worker, task_id)


@given(task_ids)
def test_running_key_round_trips(task_id):
    keys = Keyspace("ns")
    assert keys.parse_running(keys.running_entry(task_id)) == task_id


@given(st.integers(min_value=0, max_value=10**19), task_ids)
def test_delayed_key_round_trips(due_us, task_id):
    # Given a delayed key built from a time in seconds
    keys = Keyspace("ns")
    key = keys.delayed_entry(due_us / 1_000_000, task_id)

    # When it is parsed
    parsed = keys.parse_delayed(key)

    # Then the id comes back, and the time to the microsecond the key holds
    assert parsed.task_id == task_id
    assert parsed.due_us == int(due_us / 1_000_000 * 1_000_000)
    assert parsed.not_before == parsed.due_us / 1_000_000


def test_delayed_key_keeps_a_time_in_microseconds():
    keys = Keyspace("ns")
    parsed = keys.parse_delayed(keys.delayed_entry(1_700_000_000.25, "T"))
    assert parsed == (1_700_000_000_250_000, "T")
    assert parsed.not_before == 1_700_000_000.25


@given(worker_ids)
def test_scheduler_key_round_trips(scheduler_id):
    keys = Keyspace("ns")
    assert keys.parse_scheduler(keys.scheduler(scheduler_id)) == scheduler_id


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**12))
def test_retention_key_round_trips(retention_s, bucket):
    keys = Keyspace("ns")
    key = keys.retention(retention_s, bucket)
    assert key.startswith(keys.retentions)
    assert keys.parse_retention(key) == (retention_s, bucket)


@given(queue_names, priorities, seqs, task_ids, st.sampled_from(["", "noop", "add&zone=eu"]))
def test_queue_group_is_the_queue_and_route_of_the_full_parse(queue, priority, seq, task_id, route):
    keys = Keyspace("ns")
    key = keys.queue_entry(queue, priority, seq, task_id, route)
    parsed = keys.parse_queue_entry(key)
    assert keys.parse_queue_group(key) == (parsed.queue, parsed.route or "") == (queue, route)


K = Keyspace("ns")
BAD_KEYS = {
    "task": (K.task_id_of, [K.node("w"), K.tasks, K.task("a/b"), "/other/task/T"]),
    "node": (K.parse_node, [K.task("T"), K.nodes, K.node("w") + "/x", "/other/node/w"]),
    "assignment": (
        K.parse_assignment,
        [
            K.node("w"),
            K.worker_assignments("w"),
            K.assignments + "w",
            K.assignment("w", "T") + "/x",
            K.assignments + "/T",
        ],
    ),
    "running": (K.parse_running, [K.task("T"), K.running, K.running_entry("T") + "/x"]),
    "delayed": (
        K.parse_delayed,
        [
            K.task("T"),
            K.delayed + "T",
            K.delayed + "12x/T",
            K.delayed + "+12/T",
            K.delayed + "12/",
            K.delayed + "1/T/x",
        ],
    ),
    "scheduler": (K.parse_scheduler, [K.node("w"), K.schedulers, K.schedulers + "a/b"]),
    "retention": (
        K.parse_retention,
        [K.task("T"), K.retentions + "60", K.retentions + "60/x", K.retentions + "-1/2"],
    ),
    "queue group": (
        K.parse_queue_group,
        [K.task("T"), K.queue("q") + "1/2", K.queue_entry("q", 1, 1, "T") + "/"],
    ),
    "queue": (K.parse_queue_entry, [K.task("T"), K.queue("q") + "1/2", K.queue("q") + "x/1/T/r"]),
    "deps": (K.parse_deps, [K.task("T"), K.deps, K.deps + "q", K.deps + "q/", K.deps + "a/b/c"]),
    "expiring": (
        K.parse_expiring,
        [K.task("T"), K.expiring + "T", K.expiring + "1x/T", K.expiring + "1/T/x"],
    ),
    "cron": (K.parse_cron, [K.task("T"), K.crons, K.crons + "a/b"]),
    "limit": (K.parse_limit, [K.task("T"), K.limits + "type", K.limits + "kind/x", K.limits + "type/a/b"]),
    "workflow": (K.parse_workflow, [K.task("T"), K.workflows, K.workflows + "a/b"]),
}


@pytest.mark.parametrize(
    ("parse", "key"),
    [(parse, key) for parse, bad in BAD_KEYS.values() for key in bad],
    ids=[f"{kind}:{key}" for kind, (_, bad) in BAD_KEYS.items() for key in bad],
)
def test_every_parser_raises_value_error_for_a_key_not_of_its_kind(parse, key):
    # Given a key of another kind, another namespace, or of the wrong shape
    # When / Then the parser refuses it with a ValueError
    with pytest.raises(ValueError, match="key"):
        parse(key)


# the scheduler's range --------------------------------------------------------------------
def test_the_scheduler_range_spans_exactly_its_prefixes_in_key_order():
    # Given the prefixes the scheduler mirrors
    keys = Keyspace("ns")
    prefixes = keys.scheduler_prefixes

    # When / Then they are sorted, and the one watched range runs from the first to the end of the last
    assert list(prefixes) == sorted(prefixes)
    assert set(prefixes) == {
        keys.assignments,
        keys.crons,
        keys.delayed,
        keys.deps,
        keys.expiring,
        keys.limits,
        keys.nodes,
        keys.pauses,
        keys.queues,
        keys.running,
    }
    assert keys.scheduler_range == (keys.assignments, prefix_end(keys.running))
    # the plain ones are scheduler prefixes, and the idempotency and workflow keys sort after the records
    assert set(keys.plain_prefixes) <= set(prefixes)
    assert keys.uniques > prefix_end(keys.tasks) and keys.workflows > prefix_end(keys.tasks)


def test_keys_the_scheduler_does_not_mirror_are_outside_its_prefixes():
    # Given keys of every other kind
    keys = Keyspace("ns")
    others = [
        keys.task("T"),
        keys.leader,
        keys.scheduler("s"),
        keys.quota,
        keys.retention(60, 1),
        keys.drain("w"),
        keys.unique("k"),
        keys.workflow("T"),
        f"{keys.root}later/x",
    ]

    # When / Then none is under a mirrored prefix (some lie inside the watched range)
    assert not any(k.startswith(keys.scheduler_prefixes) for k in others)
    start, end = keys.scheduler_range
    assert {k for k in others if start <= k < end} == {
        keys.leader,
        keys.retention(60, 1),
        keys.drain("w"),
        f"{keys.root}later/x",
    }


def test_workflow_keys_round_trip_through_their_parsers():
    # Given the keys of the workflow capabilities
    keys = Keyspace("ns")
    tid = "0" * 26

    # When / Then each parser returns what its builder took
    assert keys.parse_deps(keys.deps_entry("q", tid)) == ("q", tid)
    assert keys.parse_expiring(keys.expiring_entry(1.5, tid)) == (1_500_000, tid)
    assert keys.parse_cron(keys.cron("nightly")) == "nightly"
    assert keys.parse_limit(keys.limit("type", "email")) == ("type", "email")
    assert keys.parse_workflow(keys.workflow(tid)) == tid
    # an idempotency key of any text is one fixed-length key (its SHA-256)
    assert keys.unique("a/b c\u00e9") != keys.unique("a/b c")
    assert len(keys.unique("x" * 512)) == len(keys.uniques) + 64
    with pytest.raises(InvalidOption):
        keys.limit("worker", "w1")

"""Endpoint parsing, StoreConfig validation and the Compare helpers (no etcd needed)."""

import pytest

from tasklease.errors import InvalidOption
from tasklease.store import KV, Compare, Delete, Op, Put, StoreConfig, parse_endpoints, txn_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://127.0.0.1:2379,localhost:2380", ["127.0.0.1:2379", "localhost:2380"]),
        ("host", ["host:2379"]),
        ("http://host", ["host:2379"]),
        ("https://10.0.0.1:2379", ["10.0.0.1:2379"]),
        (" a:1 , ,b:2 ,", ["a:1", "b:2"]),
        ("127.0.0.1:65535", ["127.0.0.1:65535"]),
    ],
)
def test_parse_endpoints_gives_host_port_strings(text, expected):
    # Given / When an endpoint list is parsed
    # Then each entry is host:port, with etcd's default port when none is given
    assert parse_endpoints(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", ",,", "ftp://x", "unix:///run/etcd.sock", "http://:99", ":2379", "a:notaport", "a:99999"],
)
def test_parse_endpoints_rejects_bad_input(text):
    # Given / When / Then an empty list, another scheme, no host or a bad port is refused
    with pytest.raises(InvalidOption):
        parse_endpoints(text)


def test_parse_endpoints_rejects_port_zero():
    # Given / When / Then port 0 is refused instead of being replaced by 2379
    with pytest.raises(InvalidOption):
        parse_endpoints("127.0.0.1:0")


def test_from_text_builds_a_config_with_parsed_endpoints():
    # Given / When a config is built from text and options
    config = StoreConfig.from_text("http://a:1,b", timeout_s=2.0)

    # Then it holds the parsed endpoints and the options
    assert config.endpoints == ("a:1", "b:2379")
    assert config.timeout_s == 2.0


def test_default_config_is_valid():
    # Given / When / Then the default config points at a local etcd
    assert StoreConfig().endpoints == ("127.0.0.1:2379",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user": "root"},
        {"password": "secret"},
        {"cert_file": "c.pem", "ca_file": "ca.pem"},
        {"key_file": "k.pem", "ca_file": "ca.pem"},
        {"cert_file": "c.pem", "key_file": "k.pem"},
        {"endpoints": ()},
        {"timeout_s": 0},
        {"timeout_s": -1.0},
        {"timeout_s": float("nan")},
    ],
    ids=repr,
)
def test_inconsistent_config_raises_invalid_option(kwargs):
    # Given / When / Then a half-given credential or a bad option is refused
    with pytest.raises(InvalidOption):
        StoreConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user": "root", "password": "secret"},
        {"ca_file": "ca.pem"},
        {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem", "tls_server_name": "etcd"},
    ],
    ids=repr,
)
def test_consistent_credentials_are_accepted(kwargs):
    # Given / When a config with complete credentials is built
    config = StoreConfig(**kwargs)

    # Then it keeps them (files are read only on connect)
    assert all(getattr(config, name) == value for name, value in kwargs.items())


def test_compare_helpers_build_the_expected_guards():
    # Given a key as it was read
    kv = KV(key="/k", value=b"v", create_revision=5, mod_revision=9, version=3)

    # When / Then each helper compares the documented target
    assert Compare.absent("/k") == Compare("/k", "create", "=", 0)
    assert Compare.exists("/k") == Compare("/k", "create", ">", 0)
    assert Compare.unchanged(kv) == Compare("/k", "mod", "=", 9)
    assert Compare.created_at("/k", 5) == Compare("/k", "create", "=", 5)


def test_txn_size_counts_keys_and_put_values():
    # Given a put and a delete
    ops: list[Op] = [Put("/a", b"12345"), Delete("/bb")]

    # When / Then the size is the keys, the value and a fixed overhead per op
    assert txn_size(ops) == (2 + 24 + 5) + (3 + 24)


def test_txn_size_is_an_upper_bound_of_the_encoded_request():
    # Given a transaction like the scheduler's: compares, puts of big values, deletes, gets
    from etcd3aio import _protobuf as pb

    from tasklease.store import Get, Store

    compares = [
        Compare(f"/ns/queue/default/2/{i:020d}/01ARZ3NDEKTSV4RRFFQ69G5FAV", "mod", "=", 10**9)
        for i in range(20)
    ]
    success: list[Op] = [Put(f"/ns/task/{i:026d}", b"x" * 70_000, lease=2**62) for i in range(20)]
    success += [Delete(f"/ns/queue/default/2/{i:020d}/01ARZ3NDEKTSV4RRFFQ69G5FAV") for i in range(20)]
    failure = [Get(f"/ns/task/{i:026d}") for i in range(20)]
    store = Store()
    store._pb = pb

    # When it is encoded as etcd receives it
    request = pb.TxnRequest(
        compare=[store._compare(c) for c in compares],
        success=[store._op(o) for o in success],
        failure=[store._op(o) for o in failure],
    )

    # Then our estimate is never below the real size
    assert txn_size(compares) + txn_size(success) + txn_size(failure) >= request.ByteSize()


def test_https_endpoints_turn_tls_on_and_mixing_schemes_is_refused():
    assert StoreConfig.from_text("https://127.0.0.1:2379").tls is True
    assert StoreConfig.from_text("http://127.0.0.1:2379").tls is False
    with pytest.raises(InvalidOption, match="mix"):
        StoreConfig.from_text("http://a:1,https://b:2")
    with pytest.raises(InvalidOption, match="https://"):
        StoreConfig.from_text("http://127.0.0.1:2379", ca_file="/tmp/ca.pem")


def test_from_env_reads_the_cli_variables_and_names_a_bad_one():
    config = StoreConfig.from_env(
        {
            "TASKLEASE_ETCD": "http://127.0.0.1:1234,127.0.0.1:1235",
            "TASKLEASE_ETCD_TIMEOUT": "2.5",
            "TASKLEASE_ETCD_USER": "root",
            "TASKLEASE_ETCD_PASSWORD_FILE": "/nonexistent/pw",
        }
    )
    assert config.endpoints == ("127.0.0.1:1234", "127.0.0.1:1235")
    assert config.timeout_s == 2.5 and config.user == "root" and config.password_file == "/nonexistent/pw"
    assert StoreConfig.from_env({}).endpoints == ("127.0.0.1:2379",)
    with pytest.raises(InvalidOption, match="TASKLEASE_ETCD_TIMEOUT"):
        StoreConfig.from_env({"TASKLEASE_ETCD_TIMEOUT": "abc"})
    with pytest.raises(InvalidOption, match="finite"):
        StoreConfig.from_env({"TASKLEASE_ETCD_TIMEOUT": "nan"})

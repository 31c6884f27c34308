"""Which addresses ``http`` tasks may reach (executors/netpolicy.py): pure checks, no network.

The requests themselves (refused before connecting, each redirect hop checked)
are in test_worker_http.py.
"""

from __future__ import annotations

import pytest

from tasklease.errors import InvalidOption
from tasklease.executors.netpolicy import NetworkPolicy
from tasklease.worker import WorkerConfig

DENIED_BY_DEFAULT = [
    ("169.254.169.254", "169.254.0.0/16"),  # cloud metadata
    ("127.0.0.1", "127.0.0.0/8"),
    ("127.45.6.7", "127.0.0.0/8"),
    ("10.1.2.3", "10.0.0.0/8"),
    ("172.16.0.1", "172.16.0.0/12"),
    ("192.168.1.1", "192.168.0.0/16"),
    ("100.64.0.1", "100.64.0.0/10"),
    ("0.0.0.0", "0.0.0.0/8"),
    ("224.0.0.1", "224.0.0.0/4"),
    ("255.255.255.255", "240.0.0.0/4"),
    ("::1", "::1/128"),
    ("::", "::/128"),
    ("fc00::1", "fc00::/7"),
    ("fd12:3456::1", "fc00::/7"),
    ("fe80::1", "fe80::/10"),
    ("fe80::1%eth0", "fe80::/10"),
    ("ff02::1", "ff00::/8"),
    # IPv4 inside IPv6: mapped, NAT64, 6to4
    ("::ffff:127.0.0.1", "127.0.0.0/8"),
    ("::ffff:169.254.169.254", "169.254.0.0/16"),
    ("64:ff9b::a9fe:a9fe", "169.254.0.0/16"),
    ("2002:0a00:0001::1", "10.0.0.0/8"),
]


@pytest.mark.parametrize(("address", "network"), DENIED_BY_DEFAULT)
def test_internal_addresses_are_refused_by_default_naming_the_network(address: str, network: str) -> None:
    reason = NetworkPolicy().refusal(address)
    assert reason is not None, address
    assert f"is in {network} (" in reason and "denied by default" in reason, reason
    assert f"--http-allow-net {network}" in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_permitted(address: str) -> None:
    assert NetworkPolicy().refusal(address) is None


def test_allow_and_deny_lists() -> None:
    policy = NetworkPolicy.from_options(
        allow=["10.0.0.0/8", "127.0.0.1", "::1/128"], deny=["10.9.0.0/16", "93.184.216.0/24"]
    )
    assert policy.refusal("10.1.2.3") is None
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("::1") is None
    assert policy.refusal("::ffff:127.0.0.1") is None  # the same address, mapped
    assert "127.0.0.0/8" in (policy.refusal("127.0.0.2") or "")  # only the one host was allowed
    # An explicitly denied network wins over an allowed one, and over "permitted by default"
    assert "denied by --http-deny-net 10.9.0.0/16" in (policy.refusal("10.9.1.1") or "")
    assert "denied by --http-deny-net 93.184.216.0/24" in (policy.refusal("93.184.216.34") or "")
    assert policy.refusal("169.254.169.254") is not None
    everything = NetworkPolicy.from_options(allow=["0.0.0.0/0", "::/0"])
    assert everything.refusal("169.254.169.254") is None and everything.refusal("fe80::1") is None


@pytest.mark.parametrize("value", ["10.0.0.0/33", "localhost", "", "1.2.3.4/x"])
def test_a_bad_network_is_refused_with_its_option(value: str) -> None:
    with pytest.raises(InvalidOption, match="--http-allow-net"):
        WorkerConfig(worker_id="w", http_allow_nets=(value,))
    with pytest.raises(InvalidOption, match="--http-deny-net"):
        WorkerConfig(worker_id="w", http_deny_nets=(value,))

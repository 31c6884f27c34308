"""Which network addresses the ``http`` task type may connect to.

Whoever can submit a task chooses its URL, so without a guard an ``http`` task
could reach what only the worker's host can: the cloud metadata service
(169.254.169.254, which hands out credentials), etcd itself on 127.0.0.1,
databases and admin pages on private networks. The check is made on the
*resolved* address of every connection (each redirect hop included), so a
DNS name that points to a private address is refused too, and the connection
goes to the very address that was checked.

The rules, in this order:

1. an address in a network the worker denies (``--http-deny-net``) is refused;
2. one in a network it allows (``--http-allow-net``) is permitted;
3. one in a network of :data:`DEFAULT_DENIED` (loopback, private, link-local,
   carrier-grade NAT, multicast, reserved...) is refused;
4. any other address is permitted.

An IPv6 address that embeds an IPv4 one (``::ffff:127.0.0.1``, 6to4, NAT64
``64:ff9b::/96``, the deprecated ``::a.b.c.d``) is checked as both: refused if
either is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from tasklease.errors import InvalidOption

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Denied unless a worker allows them: (network, what it is).
DEFAULT_DENIED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), label)
    for net, label in (
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space, carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local, cloud metadata service 169.254.169.254"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved, broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique local, private"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPAT = ipaddress.ip_network("::/96")


def parse_networks(values: Iterable[str], option: str) -> tuple[IPNetwork, ...]:
    """Networks in CIDR notation (a bare address is one host).

    Raises:
        InvalidOption: Naming ``option`` and the bad value.
    """
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise InvalidOption(
                f"{option} {value!r}: not a network (CIDR, e.g. 10.0.0.0/8 or fd00::/8)"
            ) from None
    return tuple(networks)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip in _NAT64 or (ip in _COMPAT and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """The networks a worker allows or denies beyond :data:`DEFAULT_DENIED` (see the module docstring).

    Attributes:
        allow: Permitted even if denied by default (``--http-allow-net``).
        deny: Refused always (``--http-deny-net``).
    """

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_options(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> NetworkPolicy:
        """Parse ``--http-allow-net`` / ``--http-deny-net`` values.

        Raises:
            InvalidOption: A value that is not a network.
        """
        return cls(parse_networks(allow, "--http-allow-net"), parse_networks(deny, "--http-deny-net"))

    def refusal(self, address: str) -> str | None:
        """Why a connection to ``address`` (an IP address) is refused, or None if it is permitted."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            candidates += _embedded_ipv4(ip)
        for candidate in candidates:
            reason = self._refusal(candidate)
            if reason is not None:
                shown = str(ip) if candidate == ip else f"{ip} (that is {candidate})"
                return f"{shown} {reason}"
        return None

    def _refusal(self, ip: IPAddress) -> str | None:
        for net in self.deny:
            if ip.version == net.version and ip in net:
                return f"is in {net}, denied by --http-deny-net {net}"
        for net in self.allow:
            if ip.version == net.version and ip in net:
                return None
        for net, label in DEFAULT_DENIED:
            if ip.version == net.version and ip in net:
                return f"is in {net} ({label}), denied by default; allow it with --http-allow-net {net}"
        return None

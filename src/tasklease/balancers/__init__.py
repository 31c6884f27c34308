"""Load balancers, chosen by name through :func:`make_balancer`."""

from __future__ import annotations

from collections.abc import Callable

from tasklease.balancers.base import Balancer, NodeView
from tasklease.balancers.least_load import LeastLoad, load_score
from tasklease.balancers.random import RandomBalancer
from tasklease.balancers.round_robin import RoundRobin
from tasklease.balancers.weighted import Weighted
from tasklease.errors import InvalidOption

BALANCERS: dict[str, Callable[[], Balancer]] = {
    "round_robin": RoundRobin,
    "random": RandomBalancer,
    "least_load": LeastLoad,
    "weighted": Weighted,
}


def make_balancer(name: str) -> Balancer:
    """Build the balancer called ``name``.

    Raises:
        InvalidOption: For an unknown name (the message lists the known ones).
    """
    try:
        factory = BALANCERS[name]
    except KeyError:
        raise InvalidOption(f"unknown balancer {name!r}: use one of {', '.join(BALANCERS)}") from None
    return factory()


__all__ = [
    "BALANCERS",
    "Balancer",
    "LeastLoad",
    "NodeView",
    "RandomBalancer",
    "RoundRobin",
    "Weighted",
    "load_score",
    "make_balancer",
]

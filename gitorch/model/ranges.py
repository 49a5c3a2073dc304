"""Ranges to allocate from: stable offsets and linear probing for cluster IPs, node ports and CIDRs.

Purely computational, no side effects.
"""

from __future__ import annotations

import hashlib
import ipaddress

from gitorch.model.errors import GitorchError

NODE_PORT_RANGE = (30000, 32767)
"""Kubernetes' default --service-node-port-range."""


class RangeError(GitorchError):
    """An IP, CIDR or port cannot be allocated (range full, requested value taken or invalid)."""


def spread(key: str, size: int) -> int:
    """A stable offset for `key`: the same service tends to get the same IP or port again."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % size


def probe(first: int, last: int, used: set[int], key: str, what: str) -> int:
    """The first free value from `key`'s offset in [first, last], probing linearly."""
    size = last - first + 1
    if size <= 0 or sum(1 for u in used if first <= u <= last) >= size:
        raise RangeError(f"no free {what} left")
    start = spread(key, size)
    for step in range(size):
        candidate = first + (start + step) % size
        if candidate not in used:
            return candidate
    raise RangeError(f"no free {what} left")  # pragma: no cover - counted above


def service_range(cidr: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int, int]:
    """A service CIDR and its allocatable range: not the network, first or last address."""
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError as exc:
        raise RangeError(f"service CIDR {cidr!r} is invalid: {exc}") from exc
    # The first host is reserved, as Kubernetes reserves it for the `kubernetes` service.
    return network, int(network.network_address) + 2, int(network.broadcast_address) - 1

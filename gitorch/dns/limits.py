"""Who the cluster DNS trusts, and response-rate limiting (RRL) for everyone else.

Purely computational, no side effects: callers pass the clock in. `Clients` says whether
a source address may use recursion (BIND's `allow-recursion`); `RateLimiter` limits UDP
responses per client network as BIND's and Knot's RRL do: a token bucket per /24 (IPv4)
or /56 (IPv6), where every `slip`-th limited response goes out truncated (TC=1) so a real
client retries over TCP, which a spoofed source cannot, and the others are dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from enum import StrEnum

__all__ = ["Clients", "RateLimiter", "Verdict", "client_network"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

IPV4_PREFIX = 24
IPV6_PREFIX = 56
"""BIND's defaults for `ipv4-prefix-length` and `ipv6-prefix-length`."""


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A socket's peer address as an IP; an IPv4-mapped IPv6 address counts as IPv4."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_network(host: str) -> str:
    """The network RRL counts `host` in: its /24 (IPv4) or /56 (IPv6)."""
    if ":" not in host and host.count(".") == 3 and host.replace(".", "").isdigit():
        return host.rpartition(".")[0] + ".0/24"  # the common case, without ipaddress
    ip = _address(host)
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class Clients:
    """The networks allowed recursion, with a bounded memo of addresses already judged."""

    def __init__(self, networks: Iterable[str], memo: int = 65536) -> None:
        """`networks` are CIDRs or single addresses; raises ValueError naming a bad one."""
        nets: list[Network] = []
        for text in networks:
            try:
                nets.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(f"bad network {text!r}: expected a CIDR such as 10.0.0.0/8") from None
        self.networks = tuple(nets)
        self._memo: dict[str, bool] = {}
        self._memo_size = memo

    def allowed(self, host: str) -> bool:
        """Whether `host` (a socket peer address) is inside one of the networks."""
        verdict = self._memo.get(host)
        if verdict is None:
            try:
                ip = _address(host)
            except ValueError:
                return False
            verdict = any(ip in net for net in self.networks)
            if len(self._memo) >= self._memo_size:
                self._memo.clear()  # a spoofing flood must not grow memory
            self._memo[host] = verdict
        return verdict


class Verdict(StrEnum):
    """What to do with one response under RRL."""

    SEND = "send"
    SLIP = "slip"
    """Send a truncated (TC=1) empty reply instead, so a real client retries over TCP."""
    DROP = "drop"


class RateLimiter:
    """Token buckets per client network: `rate` responses per second, bursts of `rate`.

    The table holds at most `size` networks; when full, networks whose bucket has refilled
    are forgotten first, then the oldest, so memory stays bounded under spoofed floods.
    """

    def __init__(self, rate: float, slip: int, size: int) -> None:
        self.rate = rate
        self.slip = slip
        self.size = max(1, size)
        self._table: dict[str, list[float]] = {}  # network -> [tokens, stamp, limited count]

    def __len__(self) -> int:
        return len(self._table)

    def check(self, network: str, now: float) -> Verdict:
        """Count one response to `network` at time `now` (seconds, monotonic)."""
        if self.rate <= 0:
            return Verdict.SEND
        entry = self._table.get(network)
        if entry is None:
            if len(self._table) >= self.size:
                self._make_room(now)
            self._table[network] = [self.rate - 1, now, 0]
            return Verdict.SEND
        tokens = min(self.rate, entry[0] + (now - entry[1]) * self.rate)
        entry[1] = now
        if tokens >= 1:
            entry[0] = tokens - 1
            return Verdict.SEND
        entry[0] = tokens
        entry[2] += 1
        if self.slip > 0 and entry[2] % self.slip == 0:
            return Verdict.SLIP
        return Verdict.DROP

    def _make_room(self, now: float) -> None:
        table = self._table
        full = [k for k, (tokens, stamp, _) in table.items() if tokens + (now - stamp) * self.rate >= self.rate]
        for k in full:
            del table[k]
        if len(table) >= self.size:
            # Everyone is busy: forget the oldest eighth at once, so this stays amortised O(1).
            for k in list(table)[: max(1, self.size // 8)]:
                del table[k]

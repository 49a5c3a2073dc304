"""Asking a running cluster DNS server what it answers, to compare with what the store says.

Drift checks use this: the zone gitorch would serve now (`Zone(zone_data(...))`) against
the answers of the server pods actually query. Only in-zone records are compared (an
ExternalName's target, chased upstream, is not gitorch's to check).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gitorch.dns import wire
from gitorch.dns.zone import Rcode, RType, Zone
from gitorch.model.addresses import parse_hostport

__all__ = ["Answered", "Mismatch", "ProbeError", "compare", "lookup"]


class ProbeError(Exception):
    """The DNS server did not answer (its address is in the message)."""


@dataclass(frozen=True)
class Answered:
    """One answer record as compared: owner name, type mnemonic, data."""

    name: str
    rtype: str
    data: str


@dataclass(frozen=True)
class Mismatch:
    name: str
    want: str
    got: str


def _answers(reply: bytes, query: bytes) -> bool:
    """Whether `reply` is a response (QR set) with the query's ID."""
    return len(reply) >= 3 and reply[:2] == query[:2] and bool(reply[2] & 0x80)


def _exchange_udp(host: str, port: int, query: bytes, timeout: float) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        s.send(query)
        deadline = time.monotonic() + timeout
        while True:  # other datagrams (another ID, not a response) are not the answer
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            reply = s.recv(65535)
            if _answers(reply, query):
                return reply


def _exchange_tcp(host: str, port: int, query: bytes, timeout: float) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(len(query).to_bytes(2, "big") + query)
        head = b""
        while len(head) < 2:
            chunk = s.recv(2 - len(head))
            if not chunk:
                raise OSError("connection closed")
            head += chunk
        size, body = int.from_bytes(head, "big"), b""
        while len(body) < size:
            chunk = s.recv(size - len(body))
            if not chunk:
                raise OSError("connection closed")
            body += chunk
        if not _answers(body, query):
            raise ValueError("the TCP reply is not an answer to the query")
        return body


def lookup(address: str, name: str, qtype: int = RType.A, timeout: float = 2.0) -> tuple[int, frozenset[Answered]]:
    """The rcode and the address/CNAME answers the server gives for `name`, over TCP when
    the UDP reply is truncated. Raises ProbeError when it does not answer."""
    host, port = parse_hostport(address)
    query = wire.build_query(name, qtype, random.getrandbits(16))
    try:
        reply = _exchange_udp(host, port, query, timeout)
        if len(reply) >= 3 and reply[2] & 0x02:  # TC: ask again over TCP
            reply = _exchange_tcp(host, port, query, timeout)
        rcode, records = wire.upstream_records(reply)
    except (OSError, ValueError) as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
        raise ProbeError(f"DNS server {host}:{port}: {reason}") from None
    return rcode, frozenset(Answered(r.name, RType(r.rtype).name, str(r.data)) for r in records)


def _expected(zone: Zone, name: str, qtype: int) -> tuple[int | None, frozenset[Answered]]:
    """The rcode (None when an out-of-zone CNAME target decides it upstream) and records."""
    answer = zone.resolve(name, qtype)
    if answer is None:
        return Rcode.REFUSED, frozenset()
    return None if answer.chase else answer.rcode, frozenset(
        Answered(r.name, RType(r.rtype).name, str(r.data)) for r in answer.answer
        if r.rtype in (RType.A, RType.AAAA, RType.CNAME)
    )


def _show(rcode: int, records: Iterable[Answered]) -> str:
    if rcode != Rcode.NOERROR:
        return Rcode(rcode).name if rcode in set(Rcode) else f"rcode {rcode}"
    return ", ".join(sorted(f"{r.rtype} {r.data}" for r in records)) or "no records"


def compare(address: str, zone: Zone, names: Iterable[str], timeout: float = 2.0) -> list[Mismatch]:
    """Each of `names` (A queries) whose answer differs from `zone`'s. Only in-zone records
    count: what an ExternalName's target resolves to upstream is not gitorch's data."""
    out = []
    for name in names:
        want_rcode, want = _expected(zone, name, RType.A)
        got_rcode, got = lookup(address, name, RType.A, timeout)
        want = frozenset(r for r in want if zone.in_zone(r.name))
        got = frozenset(r for r in got if zone.in_zone(r.name))
        if want_rcode is None:  # the upstream's NXDOMAIN for an ExternalName's target is not ours
            want_rcode = got_rcode if got_rcode in (Rcode.NOERROR, Rcode.NXDOMAIN) else Rcode.NOERROR
        if (want_rcode, want) != (got_rcode, got):
            out.append(Mismatch(name, _show(want_rcode, want), _show(got_rcode, got)))
    return out

"""Kubernetes DNS-based service discovery records for one cluster domain.

Purely computational, no side effects: `ZoneData` in, `Answer`s of plain records out.
Follows the Kubernetes DNS specification the way CoreDNS's kubernetes plugin does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "Answer",
    "EndpointRecord",
    "PortRecord",
    "RType",
    "Rcode",
    "Record",
    "ServiceRecord",
    "Soa",
    "Srv",
    "Zone",
    "ZoneData",
]


# ---- input: what gitorch knows about services and pods --------------------------------------


@dataclass(frozen=True)
class EndpointRecord:
    """One address behind a service."""

    ip: str
    ready: bool
    hostname: str | None = None
    """Set for StatefulSet pods (`web-0`) behind a headless service."""
    pod: str = ""


@dataclass(frozen=True)
class PortRecord:
    """A service port; only named ports get an SRV record of their own."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServiceRecord:
    """A Service as DNS sees it."""

    name: str
    namespace: str
    cluster_ip: str | None
    """None means headless (`clusterIP: None`)."""
    ports: tuple[PortRecord, ...] = ()
    external_name: str | None = None
    """ExternalName services answer with a CNAME to this name."""
    endpoints: tuple[EndpointRecord, ...] = ()
    publish_not_ready: bool = False
    """Publish endpoints that are not ready too (`publishNotReadyAddresses`)."""


@dataclass(frozen=True)
class ZoneData:
    """Everything the cluster DNS answers from."""

    domain: str = "cluster.local"
    services: tuple[ServiceRecord, ...] = ()
    pod_ips: tuple[tuple[str, str], ...] = ()
    """(ip, namespace) of running pods, for `a-b-c-d.<ns>.pod.<domain>`."""
    namespaces: frozenset[str] = frozenset()
    """Existing namespaces: `<ns>.svc.<domain>` is NODATA for these, NXDOMAIN otherwise."""
    ttl: int = 5
    version: str = "1.1.0"
    """The schema version answered at `dns-version.<domain>` TXT."""


# ---- output: answers made of plain records ---------------------------------------------------


class RType(IntEnum):
    """The record types the zone holds (plus ANY)."""

    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    ANY = 255


class Rcode(IntEnum):
    """Response codes (BADVERS is an EDNS extended code)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16


@dataclass(frozen=True)
class Srv:
    """SRV record data (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class Soa:
    """SOA record data."""

    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True)
class Record:
    """One resource record; names are lower-case, absolute, without the trailing dot.

    `data` is an IP address (A, AAAA), a domain name (CNAME, PTR, NS), text (TXT),
    or `Srv` / `Soa`.
    """

    name: str
    rtype: int
    ttl: int
    data: str | Srv | Soa


@dataclass(frozen=True)
class Answer:
    """What to reply to one question."""

    rcode: int
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    authoritative: bool = True
    chase: str | None = None
    """An out-of-zone CNAME target the caller may resolve upstream and append."""


# ---- the zone --------------------------------------------------------------------------------

IN = 1
ANY_CLASS = 255
_MAX_CHAIN = 8
_REVERSE_SUFFIXES = (".in-addr.arpa", ".ip6.arpa")
_ADDRESS_TYPES = (RType.A, RType.AAAA)

Node = dict[int, tuple[Record, ...]]


def dashed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The IP-derived label CoreDNS uses for endpoints and pods: 10-0-0-1, fd00--1."""
    return str(ip).replace(".", "-").replace(":", "-")


def _address_type(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> RType:
    return RType.A if ip.version == 4 else RType.AAAA


def _ip(value: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an IP address") from None


def _name(value: str) -> str:
    return value.strip().rstrip(".").lower()


@dataclass
class _Builder:
    ttl: int
    nodes: dict[str, dict[int, list[Record]]] = field(default_factory=dict)

    def add(self, name: str, rtype: int, data: str | Srv | Soa) -> None:
        rrset = self.nodes.setdefault(name, {}).setdefault(rtype, [])
        record = Record(name, rtype, self.ttl, data)
        if record not in rrset:
            rrset.append(record)

    def add_address(self, name: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        self.add(name, _address_type(ip), str(ip))

    def add_srv(self, name: str, port: int, targets: list[str]) -> None:
        # CoreDNS splits a weight of 100 evenly over the records of one SRV name.
        weight = 100 // len(targets)
        for target in targets:
            self.add(name, RType.SRV, Srv(0, weight, port, target))


class Zone:
    """The compiled, read-only records of one `ZoneData`, answering questions about them."""

    def __init__(self, data: ZoneData, serial: int = 1) -> None:
        domain = _name(data.domain)
        if not domain:
            raise ValueError("DNS domain must not be empty")
        self.data = data
        self.domain = domain
        self.ttl = data.ttl
        self._suffix = "." + domain
        self._pod_suffix = ".pod." + domain
        self.soa = Record(
            domain,
            RType.SOA,
            data.ttl,
            Soa(f"ns.dns.{domain}", f"hostmaster.{domain}", serial, 7200, 1800, 86400, data.ttl),
        )
        self._pods = {(str(_ip(ip, f"pod in {ns}")), ns.lower()) for ip, ns in data.pod_ips}
        namespaces = {ns.lower() for ns in data.namespaces}
        namespaces.update(svc.namespace.lower() for svc in data.services)
        namespaces.update(ns for _, ns in self._pods)

        b = _Builder(data.ttl)
        b.add(domain, RType.SOA, self.soa.data)
        b.add(domain, RType.NS, f"ns.dns.{domain}")
        b.add(f"dns-version.{domain}", RType.TXT, data.version)
        for svc in data.services:
            self._add_service(b, svc)
        self._nodes: dict[str, Node] = {
            name: {rtype: tuple(rrset) for rtype, rrset in node.items()}
            for name, node in b.nodes.items()
        }

        # Names that exist only because something lives below them answer NODATA, not
        # NXDOMAIN (RFC 8020): svc.<domain>, <ns>.svc.<domain>, _tcp.<svc>..., and so on.
        ents = {f"svc.{domain}", f"pod.{domain}"}
        for ns in namespaces:
            ents.add(f"{ns}.svc.{domain}")
            ents.add(f"{ns}.pod.{domain}")
        for name in self._nodes:
            if name.endswith(self._suffix):
                parent = name
                while True:
                    parent = parent.partition(".")[2]
                    if parent == domain or not parent.endswith(self._suffix):
                        break
                    ents.add(parent)
        self._ents = frozenset(ents - self._nodes.keys())

    def _add_service(self, b: _Builder, svc: ServiceRecord) -> None:
        ns = svc.namespace.lower()
        base = f"{svc.name.lower()}.{ns}.svc.{self.domain}"
        what = f"service {svc.namespace}/{svc.name}"
        named = [p for p in svc.ports if p.name]

        def srv_name(p: PortRecord) -> str:
            return f"_{p.name.lower()}._{p.protocol.lower()}.{base}"

        if svc.external_name:
            target = _name(svc.external_name)
            b.add(base, RType.CNAME, target)
            for p in named:
                b.add_srv(srv_name(p), p.port, [target])
            return

        if svc.cluster_ip is not None:
            ip = _ip(svc.cluster_ip, what)
            b.add_address(base, ip)
            b.add(ip.reverse_pointer, RType.PTR, base)
            for p in named:
                b.add_srv(srv_name(p), p.port, [base])
            self._add_service_srv(b, base, svc.ports, [base])
            return

        # Headless: one name per published endpoint; none published means NXDOMAIN.
        targets: list[str] = []
        for ep in svc.endpoints:
            if not (ep.ready or svc.publish_not_ready):
                continue
            ip = _ip(ep.ip, f"{what} endpoint")
            host = f"{(ep.hostname or dashed(ip)).lower()}.{base}"
            b.add_address(base, ip)
            b.add_address(host, ip)
            b.add(ip.reverse_pointer, RType.PTR, host)
            if host not in targets:
                targets.append(host)
        if targets:
            for p in named:
                b.add_srv(srv_name(p), p.port, targets)
            self._add_service_srv(b, base, svc.ports, targets)

    @staticmethod
    def _add_service_srv(
        b: _Builder, base: str, ports: Iterable[PortRecord], targets: list[str]
    ) -> None:
        # CoreDNS extension: SRV at the service name itself lists every port, named or not.
        records = [(p.port, t) for p in ports for t in targets]
        if records:
            weight = 100 // len(records)
            for port, target in records:
                b.add(base, RType.SRV, Srv(0, weight, port, target))

    # ---- answering ---------------------------------------------------------------------------

    def in_zone(self, name: str) -> bool:
        """Whether `name` (lower-case, no trailing dot) is under the cluster domain."""
        return name == self.domain or name.endswith(self._suffix)

    def resolve(self, name: str, qtype: int, qclass: int = IN) -> Answer | None:
        """Answer a question, or None when the name is not ours (forward it).

        `name` is lower-case without the trailing dot. Reverse names are ours only for
        the addresses the zone knows; other reverse names fall through.
        """
        if not self.in_zone(name) and not (
            name.endswith(_REVERSE_SUFFIXES) and name in self._nodes
        ):
            return None
        if qclass not in (IN, ANY_CLASS):
            return Answer(Rcode.REFUSED, authoritative=False)
        return self._lookup(name, qtype, ())

    def _node(self, name: str) -> Node | None:
        node = self._nodes.get(name)
        if node is None and name.endswith(self._pod_suffix):
            node = self._pod_node(name)
        return node

    def _pod_node(self, name: str) -> Node | None:
        # "Pods verified" mode: a-b-c-d.<ns>.pod.<domain> exists only for a running pod.
        label, _, ns = name[: -len(self._pod_suffix)].partition(".")
        if not ns or "." in ns:
            return None
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
                label.replace("-", ".")
            )
        except ValueError:
            try:
                ip = ipaddress.IPv6Address(label.replace("-", ":"))
            except ValueError:
                return None
        if (str(ip), ns) not in self._pods:
            return None
        rtype = _address_type(ip)
        return {rtype: (Record(name, rtype, self.ttl, str(ip)),)}

    def _lookup(self, name: str, qtype: int, seen: tuple[str, ...]) -> Answer:
        node = self._node(name)
        if node is None:
            if name in self._ents:
                return Answer(Rcode.NOERROR, authority=(self.soa,))
            return Answer(Rcode.NXDOMAIN, authority=(self.soa,))
        if qtype == RType.ANY:
            records = tuple(r for rrset in node.values() for r in rrset)
        elif qtype in node:
            records = node[qtype]
        elif RType.CNAME in node:
            return self._follow(node[RType.CNAME], qtype, (*seen, name))
        else:
            return Answer(Rcode.NOERROR, authority=(self.soa,))
        return Answer(Rcode.NOERROR, records, additional=self._additional(records))

    def _follow(self, cname: tuple[Record, ...], qtype: int, seen: tuple[str, ...]) -> Answer:
        target = str(cname[0].data)
        if not self.in_zone(target):
            chase = target if qtype in _ADDRESS_TYPES else None
            return Answer(Rcode.NOERROR, cname, chase=chase)
        if len(seen) >= _MAX_CHAIN or target in seen:
            return Answer(Rcode.NOERROR, cname)  # a loop, or a chain too long to follow
        rest = self._lookup(target, qtype, seen)
        # RFC 6604: the rcode is that of the last name in the chain.
        return Answer(
            rest.rcode, cname + rest.answer, rest.authority, rest.additional, chase=rest.chase
        )

    def _additional(self, records: tuple[Record, ...]) -> tuple[Record, ...]:
        extra: dict[Record, None] = {}
        for r in records:
            if isinstance(r.data, Srv):
                node = self._nodes.get(r.data.target)
                if node is not None:
                    for rtype in _ADDRESS_TYPES:
                        extra.update(dict.fromkeys(node.get(rtype, ())))
        return tuple(extra)

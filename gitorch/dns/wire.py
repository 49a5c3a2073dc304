"""DNS wire format: a strict, fast query parser and dnslib-built replies.

The only module that imports dnslib. Parsing is hand-written because it runs on every
cache miss and must reject hostile input cheaply; every packet we send is built by dnslib.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    NS,
    PTR,
    QTYPE,
    RR,
    SOA,
    SRV,
    TXT,
    A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from gitorch.dns.zone import Answer, Record, RType, Soa, Srv

__all__ = [
    "Malformed",
    "Query",
    "build_query",
    "build_reply",
    "error_reply",
    "parse_query",
    "reply_rcode",
    "truncated_reply",
    "upstream_records",
]

HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RRHEAD = struct.Struct("!HHIH")
_MAX_NAME = 255
MIN_UDP = 512


class Malformed(Exception):
    """A packet that is not a usable query; `reply` is the FORMERR to send, or None to drop."""

    def __init__(self, reply: bytes | None) -> None:
        super().__init__("malformed DNS query")
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Query:
    """One parsed query."""

    id: int
    flags: int
    labels: tuple[bytes, ...]
    """The question name as asked (case preserved)."""
    name: str
    """Lower-case presentation form for lookups; a dot inside a label is escaped."""
    qtype: int
    qclass: int
    question_end: int
    """Offset just past the question section."""
    edns_size: int | None
    """The client's advertised UDP payload size; None without an OPT record."""
    edns_version: int = 0
    plain: bool = True
    """Only a question, and at most an OPT record without options (no padding, cookies,
    TSIG...): only such queries are cached, since their bytes bound the key's size."""

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def cd(self) -> bool:
        return bool(self.flags & 0x0010)

    def udp_limit(self, server_max: int) -> int:
        """Largest UDP reply this client accepts (RFC 6891: never below 512)."""
        if self.edns_size is None:
            return MIN_UDP
        return max(MIN_UDP, min(self.edns_size, server_max))


def _formerr(qid: int, flags: int) -> bytes:
    # Keep the opcode and RD bit of the query, as BIND does.
    header = DNSHeader(id=qid, qr=1, opcode=(flags >> 11) & 0xF, rd=(flags >> 8) & 1, rcode=1)
    return bytes(DNSRecord(header).pack())


def _skip_name(data: bytes, pos: int) -> int:
    """Offset past a (possibly compressed) name at `pos`; raises IndexError/ValueError."""
    start = pos
    total = 1
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            target = ((length & 0x3F) << 8) | data[pos + 1]
            # A pointer must point strictly backwards, so chains cannot loop.
            if target >= start:
                raise ValueError("forward compression pointer")
            return pos + 2
        if length & 0xC0:
            raise ValueError("unknown label type")
        total += length + 1
        if total > _MAX_NAME:
            raise ValueError("name too long")
        pos += length + 1


def parse_query(data: bytes) -> Query:
    """Parse a query strictly; raise `Malformed` for anything else.

    Responses (QR set) and packets shorter than a header are dropped (Malformed(None)):
    answering them could start a loop between two servers.
    """
    n = len(data)
    if n < 12:
        raise Malformed(None)
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & 0x8000:
        raise Malformed(None)
    if qdcount != 1:
        raise Malformed(_formerr(qid, flags))
    try:
        pos = 12
        labels: list[bytes] = []
        total = 1
        while True:
            length = data[pos]
            if length == 0:
                pos += 1
                break
            # Pointers have nothing to point at in a lone question; other types are unused.
            if length > 63:
                raise ValueError("bad label")
            end = pos + 1 + length
            if end > n:
                raise ValueError("label past end")
            labels.append(data[pos + 1 : end])
            total += length + 1
            if total > _MAX_NAME:
                raise ValueError("name too long")
            pos = end
        qtype, qclass = _QTAIL.unpack_from(data, pos)
        pos += 4
        question_end = pos
        edns_size: int | None = None
        edns_version = 0
        plain = ancount == nscount == 0 and arcount <= 1
        others = ancount + nscount
        for i in range(others + arcount):
            name_at = pos
            pos = _skip_name(data, pos)
            rtype, rclass, ttl, rdlength = _RRHEAD.unpack_from(data, pos)
            pos += 10 + rdlength
            if pos > n:
                raise ValueError("record past end")
            if rtype == RType.OPT:
                if i < others or edns_size is not None or pos - 10 - rdlength != name_at + 1:
                    raise ValueError("misplaced OPT")
                edns_size = rclass
                edns_version = (ttl >> 16) & 0xFF
                plain = plain and rdlength == 0
            else:
                plain = False
        if pos != n:
            raise ValueError("trailing data")
    except (IndexError, ValueError, struct.error):
        raise Malformed(_formerr(qid, flags)) from None
    raw = b".".join(labels)
    if raw.count(b".") != len(labels) - 1 and labels:
        # A dot inside a label must not make the name collide with a real one.
        raw = b".".join(label.replace(b".", b"\\.") for label in labels)
    return Query(
        id=qid,
        flags=flags,
        labels=tuple(labels),
        name=raw.lower().decode("latin-1"),
        qtype=qtype,
        qclass=qclass,
        question_end=question_end,
        edns_size=edns_size,
        edns_version=edns_version,
        plain=plain,
    )


# ---- building ----------------------------------------------------------------------------


def _label(name: str) -> DNSLabel:
    try:
        return DNSLabel(name.encode("ascii"))
    except UnicodeEncodeError:
        return DNSLabel(name)


def _rdata(r: Record) -> A | AAAA | CNAME | PTR | NS | TXT | SRV | SOA:
    d = r.data
    if isinstance(d, Srv):
        return SRV(d.priority, d.weight, d.port, _label(d.target))
    if isinstance(d, Soa):
        return SOA(
            _label(d.mname),
            _label(d.rname),
            (d.serial, d.refresh, d.retry, d.expire, d.minimum),
        )
    if r.rtype == RType.A:
        return A(d)
    if r.rtype == RType.AAAA:
        return AAAA(d)
    if r.rtype == RType.TXT:
        return TXT(d.encode())
    if r.rtype == RType.CNAME:
        return CNAME(_label(d))
    if r.rtype == RType.PTR:
        return PTR(_label(d))
    if r.rtype == RType.NS:
        return NS(_label(d))
    raise ValueError(f"cannot encode record type {r.rtype}")


def _rr(r: Record, q: Query) -> RR:
    # Records owned by the question name echo it as asked (case preserved).
    owner = DNSLabel(q.labels) if r.name == q.name else _label(r.name)
    return RR(owner, r.rtype, rdata=_rdata(r), ttl=r.ttl)


def _skeleton(q: Query, rcode: int, *, aa: bool, ra: bool) -> DNSRecord:
    header = DNSHeader(
        id=q.id,
        qr=1,
        opcode=q.opcode,
        aa=int(aa),
        rd=int(q.rd),
        ra=int(ra),
        cd=int(q.cd),
        rcode=rcode & 0xF,
    )
    return DNSRecord(header, q=DNSQuestion(DNSLabel(q.labels), q.qtype, q.qclass))


def _opt(q: Query, rcode: int, edns_size: int) -> EDNS0 | None:
    if q.edns_size is None:
        return None
    return EDNS0(udp_len=edns_size, ext_rcode=rcode >> 4)


def build_reply(q: Query, answer: Answer, *, limit: int, ra: bool, edns_size: int) -> bytes:
    """Pack `answer` for `q`, fitting it into `limit` bytes.

    Over the limit, the additional section goes first (no TC needed: RFC 2181 9);
    if the answer still does not fit, send the header and question with TC set.
    """
    reply = _skeleton(q, answer.rcode, aa=answer.authoritative, ra=ra)
    opt = _opt(q, answer.rcode, edns_size)
    for r in answer.answer:
        reply.add_answer(_rr(r, q))
    for r in answer.authority:
        reply.add_auth(_rr(r, q))
    for r in answer.additional:
        reply.add_ar(_rr(r, q))
    if opt is not None:
        reply.add_ar(opt)
    packed = reply.pack()
    if len(packed) <= limit:
        return bytes(packed)
    if answer.additional:
        reply.ar = [opt] if opt is not None else []
        packed = reply.pack()
        if len(packed) <= limit:
            return bytes(packed)
    reply.rr = []
    reply.auth = []
    reply.header.tc = 1
    packed = reply.pack()
    if len(packed) <= limit:
        return bytes(packed)
    reply.questions = []
    return bytes(reply.pack())


def truncated_reply(q: Query, rcode: int, *, aa: bool, ra: bool, edns_size: int) -> bytes:
    """The header and question with TC set (and an OPT if the query had one): never longer
    than the query, so it can go to anyone; the client retries over TCP."""
    reply = _skeleton(q, rcode, aa=aa, ra=ra)
    reply.header.tc = 1
    opt = _opt(q, rcode, edns_size)
    if opt is not None:
        reply.add_ar(opt)
    return bytes(reply.pack())


def reply_rcode(reply: bytes) -> int:
    """The 4-bit header rcode of a packed reply (12 bytes or more)."""
    return reply[3] & 0xF


def error_reply(q: Query, rcode: int, *, ra: bool, edns_size: int) -> bytes:
    """A reply with no records: REFUSED, SERVFAIL, NOTIMP, BADVERS..."""
    return build_reply(
        q, Answer(rcode, authoritative=False), limit=65535, ra=ra, edns_size=edns_size
    )


def build_query(name: str, qtype: int, qid: int) -> bytes:
    """A recursive query for `name`, for chasing a CNAME upstream."""
    query = DNSRecord(DNSHeader(id=qid, rd=1), q=DNSQuestion(_label(name), qtype, 1))
    return bytes(query.pack())


def upstream_records(reply: bytes) -> tuple[int, tuple[Record, ...]]:
    """The rcode and address/CNAME answers of an upstream reply (raises ValueError)."""
    try:
        parsed = DNSRecord.parse(reply)
    except Exception as exc:  # dnslib raises a variety of errors on bad input
        raise ValueError(f"unparsable upstream reply: {exc}") from None
    records = []
    for rr in parsed.rr:
        if rr.rtype in (RType.A, RType.AAAA, RType.CNAME) and rr.rclass == 1:
            name = str(rr.rname).rstrip(".").lower()
            records.append(Record(name, rr.rtype, rr.ttl, str(rr.rdata).rstrip(".").lower()))
    return parsed.header.rcode, tuple(records)


def qtype_name(qtype: int) -> str:
    """Mnemonic of a query type, for logs."""
    try:
        return str(QTYPE[qtype])
    except Exception:
        return f"TYPE{qtype}"

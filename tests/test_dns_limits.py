"""The cluster DNS under hostile clients (issue 18): a byte-bounded cache that padded
queries bypass, UDP replies truncated to what the client accepts (forwarded ones too),
forwarding only for allowed clients, response-rate limiting with slip, and TCP slots that
slow clients cannot hold. Real sockets on loopback addresses, asked with dnspython; a
client "outside" binds 127.0.0.2 while the server allows only 127.0.0.1."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from gitorch.dns.cluster import recursion_networks, settings_for
from gitorch.dns.limits import Clients, RateLimiter, Verdict, client_network
from gitorch.dns.server import DNSServer, DNSSettings
from gitorch.dns.zone import EndpointRecord, PortRecord, ServiceRecord, ZoneData
from tests.gitrepo import GitRepo

HOST = "127.0.0.1"
INSIDER = "127.0.0.1"
OUTSIDER = "127.0.0.2"
D = "cluster.local"
ONLY_INSIDER = ("127.0.0.1/32",)

ZONE = ZoneData(
    services=(
        ServiceRecord("web", "default", "10.96.0.10", (PortRecord("http", 80),)),
        ServiceRecord(
            "big", "default", None,
            endpoints=tuple(EndpointRecord(f"10.244.0.{i}", True) for i in range(1, 101)),
        ),
        ServiceRecord("ext", "default", None, external_name="www.example.test"),
    ),
    namespaces=frozenset({"default"}),
)


# ---- helpers -------------------------------------------------------------------------------


class BigUpstream:
    """An upstream resolver answering every A query with `count` addresses (about 16 bytes
    each), whatever size the client accepts, over UDP and TCP, as the one in issue 18 did."""

    def __init__(self, count: int = 240) -> None:
        self.count = count
        # One port number for UDP and TCP: the UDP one the kernel picks may be taken for TCP by
        # another process of the machine, so pick again until both bind.
        for _ in range(50):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((HOST, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((HOST, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        else:
            raise OSError("no port free for both UDP and TCP after 50 tries")
        self.tcp.listen(16)
        self.queries = 0
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    def reply(self, wire: bytes) -> bytes:
        self.queries += 1
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        rrset = r.find_rrset(r.answer, q.question[0].name, dns.rdataclass.IN, dns.rdatatype.A, create=True)
        for i in range(self.count):
            rrset.add(dns.rdata.from_text("IN", "A", f"198.18.{i // 250}.{i % 250 + 1}"), ttl=60)
        return r.to_wire(max_size=65535)

    def _serve_udp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                data, addr = self.udp.recvfrom(65535)
                self.udp.sendto(self.reply(data), addr)

    def _serve_tcp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.tcp.accept()
                with conn:
                    size = struct.unpack("!H", _recv_exact(conn, 2))[0]
                    out = self.reply(_recv_exact(conn, size))
                    conn.sendall(struct.pack("!H", len(out)) + out)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def upstream() -> Iterator[BigUpstream]:
    up = BigUpstream()
    yield up
    up.close()


@contextlib.contextmanager
def serving(**settings: object) -> Iterator[DNSServer]:
    with DNSServer(ZONE, DNSSettings(host=HOST, port=0, **settings)) as srv:  # type: ignore[arg-type]
        yield srv


def query(name: str, rdtype: str = "A", payload: int | None = None, padding: int = 0) -> bytes:
    """A query in wire form: no EDNS unless a payload size or padding is given."""
    if not payload and not padding:
        return dns.message.make_query(name, rdtype, use_edns=False).to_wire()
    options = [dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\0" * padding)] if padding else []
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=payload or 1232, options=options)
    return q.to_wire(max_size=65535)


def exchange(port: int, wire: bytes, source: str = INSIDER, timeout: float = 2.0) -> bytes | None:
    """One raw UDP exchange from `source`: the reply's bytes, or None if none came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(wire, (HOST, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def over_tcp(port: int, name: str, rdtype: str = "A", source: str = INSIDER) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.tcp(q, HOST, port=port, timeout=3, source=source)


def addresses(msg: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset}


# ---- truncation of every UDP reply ---------------------------------------------------------


def test_forwarded_reply_is_truncated_to_what_the_client_accepts(upstream: BigUpstream) -> None:
    with serving(upstreams=(f"{HOST}:{upstream.port}",)) as srv:
        # No EDNS: 512 bytes at most, TC set, so the client retries over TCP.
        wire = query("big.example.test")
        assert dns.message.from_wire(wire).edns == -1
        raw = exchange(srv.port, wire)
        assert raw is not None and len(raw) <= 512
        msg = dns.message.from_wire(raw)
        assert msg.edns == -1
        assert msg.flags & dns.flags.TC and msg.rcode() == dns.rcode.NOERROR
        assert msg.id == dns.message.from_wire(wire).id
        # EDNS 1232 gets at most 1232; 4096 fits the whole answer.
        raw = exchange(srv.port, query("big.example.test", payload=1232))
        assert raw is not None and len(raw) <= 1232
        assert dns.message.from_wire(raw).flags & dns.flags.TC
        raw = exchange(srv.port, query("big.example.test", payload=4096))
        assert raw is not None and len(raw) > 1232
        whole = dns.message.from_wire(raw)
        assert not whole.flags & dns.flags.TC and len(addresses(whole)) == upstream.count
        # Over TCP the whole answer, forwarded over TCP.
        assert len(addresses(over_tcp(srv.port, "big.example.test"))) == upstream.count


# ---- forwarding only for allowed clients ---------------------------------------------------


def test_outsiders_get_refused_for_outside_names(upstream: BigUpstream) -> None:
    with serving(upstreams=(f"{HOST}:{upstream.port}",), allow_recursion=ONLY_INSIDER, rate_limit=0) as srv:
        asked = upstream.queries
        raw = exchange(srv.port, query("www.example.test"), source=OUTSIDER)
        assert raw is not None
        refused = dns.message.from_wire(raw)
        assert refused.rcode() == dns.rcode.REFUSED and not refused.answer
        assert not refused.flags & dns.flags.RA
        assert over_tcp(srv.port, "www.example.test", source=OUTSIDER).rcode() == dns.rcode.REFUSED
        # An ExternalName is answered with its CNAME alone, not chased for an outsider.
        cname = over_tcp(srv.port, f"ext.default.svc.{D}", source=OUTSIDER)
        assert cname.rcode() == dns.rcode.NOERROR and not addresses(cname)
        assert upstream.queries == asked  # nothing went upstream for the outsider
        # Cluster names are answered for everyone (over TCP here: see the 1x test).
        assert addresses(over_tcp(srv.port, f"web.default.svc.{D}", source=OUTSIDER)) == {"10.96.0.10"}
        # The same names from the allowed client are forwarded.
        msg = dns.message.from_wire(exchange(srv.port, query("www.example.test", payload=4096)) or b"")
        assert msg.rcode() == dns.rcode.NOERROR and len(addresses(msg)) == upstream.count
        assert len(addresses(over_tcp(srv.port, f"ext.default.svc.{D}"))) == upstream.count
        # Allowing the outsider's network later (a Node added in Git) lets it recurse.
        srv.allow_recursion([*ONLY_INSIDER, f"{OUTSIDER}/32"])
        allowed = dns.message.from_wire(exchange(srv.port, query("www.example.test", payload=4096), OUTSIDER) or b"")
        assert allowed.rcode() == dns.rcode.NOERROR and len(addresses(allowed)) == upstream.count


def _hostile_mix() -> list[bytes]:
    """Queries an amplification attacker would send: big answers, forwarded names, ANY,
    additional sections, negative answers with SOA, padding, and broken packets."""
    header = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    mix = [
        query(f"web.default.svc.{D}"),
        query(f"web.default.svc.{D}", payload=4096),
        query(f"_http._tcp.web.default.svc.{D}", "SRV", payload=4096),
        query(f"big.default.svc.{D}"),
        query(f"big.default.svc.{D}", payload=4096),
        query(f"big.default.svc.{D}", "ANY", payload=4096),
        query(f"nope.default.svc.{D}", payload=4096),
        query(f"ext.default.svc.{D}", payload=4096),
        query(f"dns-version.{D}", "TXT"),
        query("10.0.96.10.in-addr.arpa", "PTR", payload=4096),
        query("www.example.test"),
        query("www.example.test", payload=4096),
        query("www.example.test", "ANY", payload=65535),
        query(f"big.default.svc.{D}", payload=4096, padding=64),
        header,  # the question is missing: FORMERR
    ]
    return mix


def test_amplification_is_at_most_1x_for_outsiders(upstream: BigUpstream) -> None:
    with serving(upstreams=(f"{HOST}:{upstream.port}",), allow_recursion=ONLY_INSIDER, rate_limit=0) as srv:
        sent = received = 0
        for wire in _hostile_mix():
            raw = exchange(srv.port, wire, source=OUTSIDER)
            assert raw is not None, "rate limiting is off: every query gets a reply"
            assert len(raw) <= len(wire), dns.message.from_wire(wire).question
            sent, received = sent + len(wire), received + len(raw)
        assert received / sent <= 1.0
        # The truncated answers are there in full over TCP, where the address is proven.
        assert len(addresses(over_tcp(srv.port, f"big.default.svc.{D}", source=OUTSIDER))) == 100
        # The same mix from an allowed client is amplified many times: the rule above bites.
        inside_sent = inside_received = 0
        for wire in _hostile_mix():
            raw = exchange(srv.port, wire)
            assert raw is not None
            inside_sent, inside_received = inside_sent + len(wire), inside_received + len(raw)
        assert inside_received / inside_sent > 5


# ---- the cache: plain queries only, bounded in bytes ---------------------------------------


def test_padded_queries_bypass_the_cache() -> None:
    with serving() as srv:
        name = f"web.default.svc.{D}"
        for i in range(300):
            raw = exchange(srv.port, query(name, padding=60_000 + i))  # each query distinct
            assert raw is not None and addresses(dns.message.from_wire(raw)) == {"10.96.0.10"}
            msg = dns.query.tcp(dns.message.from_wire(query(name, padding=30_000 + i)), HOST, port=srv.port, timeout=3)
            assert addresses(msg) == {"10.96.0.10"}
        entries, size = srv.cache_usage()
        assert entries == 0 and size == 0
        # A plain query (an OPT without options included) is cached.
        assert exchange(srv.port, query(name)) is not None
        assert exchange(srv.port, query(name, payload=1232)) is not None
        assert srv.cache_usage()[0] == 2


def test_cache_stays_within_its_byte_budget() -> None:
    budget = 64_000
    with serving(cache_bytes=budget) as srv:
        for i in range(2000):
            raw = exchange(srv.port, query(f"missing-{i}.default.svc.{D}"))
            assert raw is not None and dns.message.from_wire(raw).rcode() == dns.rcode.NXDOMAIN
            _, size = srv.cache_usage()
            assert size <= budget
        entries, _ = srv.cache_usage()
        assert 0 < entries < 2000
        # What is still cached, and what was evicted, answer as before.
        for name in (f"missing-1999.default.svc.{D}", f"missing-0.default.svc.{D}"):
            raw = exchange(srv.port, query(name))
            assert raw is not None and dns.message.from_wire(raw).rcode() == dns.rcode.NXDOMAIN


SERVE = """\
import sys
from gitorch.dns.server import DNSServer, DNSSettings
from gitorch.dns.zone import ServiceRecord, ZoneData
zone = ZoneData(services=(ServiceRecord("web", "default", "10.96.0.10"),))
with DNSServer(zone, DNSSettings(host="127.0.0.1", port=0)) as srv:
    print(srv.port, flush=True)
    for _ in sys.stdin:
        print(*srv.cache_usage(), flush=True)
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_under_a_padding_flood() -> None:
    """Issue 18: 1,500 queries padded with 60 KB grew the server by 88 MB. Now they are
    answered and forgotten: the process grows by a few MB at most."""
    proc = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline())

        def flood(start: int, count: int) -> None:
            for i in range(start, start + count):
                wire = query(f"q{i}.default.svc.{D}", padding=60_000 + i % 1000)
                raw = exchange(port, wire)
                assert raw is not None and dns.message.from_wire(raw).rcode() == dns.rcode.NXDOMAIN

        flood(0, 100)  # allocator warm-up
        before = _rss_kib(proc.pid)
        flood(100, 1500)
        grown_mib = (_rss_kib(proc.pid) - before) / 1024
        proc.stdin.write("usage\n")
        proc.stdin.flush()
        entries, size = (int(x) for x in proc.stdout.readline().split())
        assert (entries, size) == (0, 0)
        assert grown_mib < 16, f"grew {grown_mib:.1f} MiB under 1,500 padded queries (90 MB of padding)"
    finally:
        proc.kill()
        proc.wait()


# ---- response-rate limiting ----------------------------------------------------------------


def _burst(port: int, source: str, wire: bytes, count: int) -> list[dns.message.Message]:
    """Send `count` copies of a query at once from `source`; the replies that came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((source, 0))
        for _ in range(count):
            s.sendto(wire, (HOST, port))
        replies = []
        while select.select([s], [], [], 1.0)[0]:
            replies.append(dns.message.from_wire(s.recv(65535)))
    return replies


def test_rate_limit_slips_every_second_limited_reply() -> None:
    with serving(allow_recursion=ONLY_INSIDER, rate_limit=2, rate_limit_slip=2) as srv:
        wire = query("www.example.test")  # no upstreams: REFUSED, as long as the query
        replies = _burst(srv.port, OUTSIDER, wire, 100)
        full = [r for r in replies if not r.flags & dns.flags.TC]
        slipped = [r for r in replies if r.flags & dns.flags.TC]
        assert 1 <= len(full) < 20
        assert all(r.rcode() == dns.rcode.REFUSED for r in full)
        assert all(not r.answer and r.rcode() == dns.rcode.NOERROR for r in slipped)
        # Of the limited ones, every second slips (TC=1) and the others are dropped.
        limited = 100 - len(full)
        assert abs(len(slipped) - limited // 2) <= 1
        # A slipped client gets its answer over TCP, which is not limited.
        assert over_tcp(srv.port, f"web.default.svc.{D}", source=OUTSIDER).rcode() == dns.rcode.NOERROR
        # Other /24s are counted apart, and the allowed client (same /24) is never limited.
        assert len(_burst(srv.port, "127.0.1.2", wire, 1)) == 1
        assert len(_burst(srv.port, INSIDER, wire, 50)) == 50


def test_rate_limiter_table_is_bounded() -> None:
    rl = RateLimiter(rate=5, slip=2, size=1000)
    for i in range(100_000):  # a spoofed flood from 100,000 networks
        rl.check(f"10.{i // 256 % 256}.{i % 256}.0/24-{i}", now=i / 1000)
        assert len(rl) <= 1000
    verdicts = [rl.check("192.0.2.0/24", now=1000.0) for _ in range(11)]
    assert verdicts[:5] == [Verdict.SEND] * 5
    assert verdicts[5:] == [Verdict.DROP, Verdict.SLIP] * 3
    assert rl.check("192.0.2.0/24", now=1001.0) is Verdict.SEND  # refilled a second later


@pytest.mark.parametrize(
    ("host", "network"),
    [("10.1.2.3", "10.1.2.0/24"), ("::ffff:10.1.2.3", "10.1.2.0/24"), ("2001:db8:1:2::1", "2001:db8:1::/56")],
)
def test_client_network(host: str, network: str) -> None:
    assert client_network(host) == network


def test_clients_memo_is_bounded() -> None:
    clients = Clients(["10.0.0.0/8"], memo=100)
    assert clients.allowed("10.9.9.9") and not clients.allowed("192.0.2.1")
    for i in range(10_000):
        clients.allowed(f"192.0.{i // 256 % 256}.{i % 256}")
    assert len(clients._memo) <= 100
    with pytest.raises(ValueError, match="bad network 'nope'"):
        Clients(["nope"])


# ---- TCP: slow clients ---------------------------------------------------------------------


def _slow_clients(port: int, sources: list[str]) -> list[socket.socket]:
    """One connection per entry of `sources`, each sending one byte of a length prefix and
    then nothing (as a client sending a byte every few seconds would)."""
    conns = []
    for source in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(3)
        conns.append(s)
        with contextlib.suppress(OSError):  # the server may have closed it already
            s.connect((HOST, port))
            s.sendall(b"\x00")
    return conns


def _closed_by_server(conns: list[socket.socket], want: int, wait: float) -> int:
    """How many of `conns` the server has closed (EOF or reset), waiting up to `wait`
    seconds for `want` of them."""
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + wait
    while len(closed) < want and time.monotonic() < deadline:
        open_ = [c for c in conns if c not in closed]
        for c in select.select(open_, [], [], 0.2)[0]:
            try:
                if not c.recv(1):
                    closed.add(c)
            except OSError:
                closed.add(c)
    return len(closed)


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param(["127.0.0.3"] * 256, id="256-from-one-address"),
        pytest.param([f"127.0.0.{10 + i % 32}" for i in range(256)], id="256-from-32-addresses"),
    ],
)
def test_slow_tcp_clients_do_not_block_a_fresh_client(sources: list[str]) -> None:
    with serving(tcp_idle_timeout=60) as srv:  # long enough that idle timeouts play no part
        conns = _slow_clients(srv.port, sources)
        try:
            for attempt in range(3):
                msg = over_tcp(srv.port, f"web.default.svc.{D}", source=f"127.0.0.{100 + attempt}")
                assert addresses(msg) == {"10.96.0.10"}
            if len(set(sources)) == 1:
                # One address holds at most max_tcp_per_client (32) connections.
                assert _closed_by_server(conns, want=len(conns) - 32, wait=10) >= len(conns) - 32
        finally:
            for c in conns:
                c.close()


def test_tcp_idle_timeout_closes_a_trickling_client() -> None:
    """A client sending a byte at a time, each well within the timeout, is still closed once
    the timeout passes without a complete query."""
    with serving(tcp_idle_timeout=0.5) as srv:
        wire = query(f"web.default.svc.{D}")
        message = struct.pack("!H", len(wire)) + wire
        with socket.create_connection((HOST, srv.port), timeout=3) as s:
            sent = 0
            for byte in message:
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    break
                sent += 1
                if select.select([s], [], [], 0.2)[0]:
                    break  # the server closed it (EOF) before the query was complete
            assert sent < len(message)
            with contextlib.suppress(OSError):
                assert s.recv(1) == b""
        # A prompt client on a fresh connection is answered.
        assert addresses(over_tcp(srv.port, f"web.default.svc.{D}")) == {"10.96.0.10"}


# ---- who is allowed, from the desired state ------------------------------------------------

CLUSTER = """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: lab}
spec:
  podCIDR: 10.200.0.0/16
  serviceCIDR: 10.100.0.0/16
  dns: {upstreams: ["192.0.2.53:53"]}
---
apiVersion: gitorch.dev/v1
kind: Node
metadata: {name: node-1}
spec: {address: 10.231.21.11}
---
apiVersion: gitorch.dev/v1
kind: Node
metadata: {name: node-2}
spec: {address: node-2.lab.test}
"""


def test_settings_allow_loopback_nodes_pods_and_services(repo: GitRepo) -> None:
    from gitorch.source.desired import load
    from gitorch.source.git import open_repository

    repo.commit("cluster", {"cluster.yaml": CLUSTER})
    state = load(open_repository(repo.path), None)
    assert state.ok, state.diagnostics

    def resolve(name: str) -> list[str]:
        return {"node-2.lab.test": ["10.231.21.12"]}.get(name, [])

    settings = settings_for(state, "10.231.21.1:53", resolve)
    assert settings.upstreams == ("192.0.2.53:53",)
    assert set(settings.allow_recursion) == {
        "127.0.0.0/8", "::1/128", "10.231.21.1", "10.200.0.0/16", "10.100.0.0/16", "10.231.21.11", "10.231.21.12",
    }
    clients = Clients(settings.allow_recursion)
    assert clients.allowed("10.200.3.4") and clients.allowed("10.231.21.12") and clients.allowed("127.0.0.1")
    assert not clients.allowed("10.231.21.13") and not clients.allowed("192.0.2.1")
    # Without a Cluster or Nodes: loopback, the listen address (unless a wildcard), the defaults.
    assert recursion_networks(None, "0.0.0.0") == ("127.0.0.0/8", "::1/128")

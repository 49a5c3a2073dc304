"""The cluster DNS server: UDP and TCP, packed-reply cache, forwarding upstream.

Every distinct question is answered through the zone and dnslib once; the packed reply
is cached under the query bytes after the 2-byte ID (flags, question and EDNS included,
so the key fully determines the reply) and later served from a tight recvfrom/sendto
loop by patching the ID in. `update()` swaps zone and caches together in one
assignment, so no reply computed from old data can land in the new cache. Only plain
queries (a question, at most an OPT without options) are cached, within a byte budget.

Forwarded replies are not cached: the upstream resolver caches, and its TTLs stay exact.

Who gets what, decided as BIND's `allow-recursion` and CoreDNS's kubernetes plugin do:
cluster names are answered for anyone (they are not secret, and a node's resolver may
sit behind NAT), but names outside the zone are forwarded only for clients inside
`allow_recursion` (loopback, the nodes, the pod and service networks); others get
REFUSED. Over UDP, clients outside that set are also limited per /24 (RRL, as BIND and
Knot do it) and never get more bytes than they sent: a larger answer goes out truncated,
so the client retries over TCP, where its address is proven. The allowed set is exempt
(BIND's `exempt-clients`), which keeps every check off the cached hit path: one set
membership test per packet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from gitorch.dns import wire
from gitorch.dns.limits import Clients, RateLimiter, Verdict, client_network
from gitorch.dns.wire import Malformed, Query
from gitorch.dns.zone import Answer, Rcode, Zone, ZoneData
from gitorch.model.addresses import format_hostport, parse_hostport

__all__ = ["DNSServer", "DNSSettings", "format_hostport", "parse_hostport"]

log = logging.getLogger("gitorch.dns")

_RECV_SIZE = 65535
_MAX_PENDING = 4096
_MAX_PENDING_BYTES = 8 << 20
"""Bytes of queries waiting for an upstream: padded queries must not grow memory here."""
_TICK = 0.05
_ENTRY_COST = 200
"""Approximate bytes of one cache entry besides its key and reply: the two bytes objects'
headers, the dict slot, and its place in the eviction queue."""
_MEMO = 65536


@dataclass(frozen=True)
class DNSSettings:
    """How the DNS server listens and forwards."""

    host: str = "127.0.0.1"
    """Address to listen on, UDP and TCP (an IPv4 or IPv6 literal)."""
    port: int = 53
    """Port to listen on; 0 picks a free one (read it back from `DNSServer.port`)."""
    upstreams: tuple[str, ...] = ()
    """Resolvers for names outside the zone, "ip:port" or "[ipv6]:port", tried in order.
    Without any, such names are answered REFUSED."""
    upstream_timeout: float = 2.0
    """Seconds to wait for one upstream before trying the next."""
    udp_workers: int = 1
    """Threads serving the UDP socket. Replies are mostly kernel time, which threads can
    overlap despite the GIL; on 2 cores with the client on the same machine, 1 is as fast."""
    max_udp_payload: int = 4096
    """Largest UDP reply sent, whatever larger size a client advertises via EDNS."""
    edns_payload: int = 1232
    """UDP payload size advertised in our own OPT records (the DNS flag day 2020 value)."""
    cache_bytes: int = 32 << 20
    """Bytes the reply caches (both transports) may hold, keys and per-entry overhead
    included; the oldest replies go first when full."""
    allow_recursion: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Networks (CIDRs) whose clients may have names outside the zone forwarded upstream,
    and who are exempt from rate limiting; others get REFUSED for such names."""
    rate_limit: float = 20
    """UDP responses per second to one /24 (IPv4) or /56 (IPv6) outside `allow_recursion`
    (BIND's and Knot's RRL); 0 turns rate limiting off."""
    rate_limit_slip: int = 2
    """Every Nth rate-limited response goes out truncated (TC=1) instead of being dropped,
    so real clients retry over TCP; 0 drops them all (BIND's `slip`)."""
    rate_limit_table: int = 10_000
    """Client networks the rate limiter remembers at once."""
    tcp_idle_timeout: float = 10.0
    """Seconds a TCP connection may go without completing a query (counted from its
    start or its last answer) before it is closed, however slowly it trickles bytes."""
    max_tcp_connections: int = 256
    """Concurrent TCP connections. When all are taken, a new one replaces the connection
    idle the longest (RFC 7766 6.2.3), so slow clients cannot lock others out."""
    max_tcp_per_client: int = 32
    """Concurrent TCP connections from one address; further ones are closed at once."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


class _State:
    """A zone and the replies packed from it; replaced whole on update."""

    __slots__ = ("bytes", "order", "tcp", "udp", "zone")

    def __init__(self, zone: Zone | None) -> None:
        self.zone = zone
        self.udp: dict[bytes, bytes] = {}
        self.tcp: dict[bytes, bytes] = {}
        self.order: deque[tuple[bool, bytes]] = deque()
        """(tcp?, key) in insertion order, for evicting the oldest first."""
        self.bytes = 0


# ---- forwarding ----------------------------------------------------------------------------

Deliver = Callable[[bytes | None], None]


class _Pending:
    __slots__ = ("deadline", "deliver", "index", "qid", "question", "tail")

    def __init__(self, qid: int, tail: bytes, question: bytes, deliver: Deliver) -> None:
        self.qid = qid
        self.tail = tail
        self.question = question
        self.deliver = deliver
        self.index = 0
        self.deadline = 0.0


class _Forwarder:
    """Forwards UDP queries upstream asynchronously: one socket per family, one thread.

    Each query gets a fresh random ID; a reply is accepted only from the upstream it was
    sent to, with that ID and the same question bytes (case included).
    """

    def __init__(self, upstreams: Sequence[tuple[str, int]], timeout: float) -> None:
        self.upstreams = list(upstreams)
        self._families = [_family(host) for host, _ in self.upstreams]
        self.timeout = timeout
        self._pending: dict[int, _Pending] = {}
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._rng = random.SystemRandom()
        self._socks: dict[socket.AddressFamily, socket.socket] = {}
        for fam in self._families:
            if fam not in self._socks:
                s = socket.socket(fam, socket.SOCK_DGRAM)
                s.setblocking(False)
                self._socks[fam] = s
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="dns-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        for s in self._socks.values():
            s.close()
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            self._pending_bytes = 0
        for p in pending:
            self._deliver(p, None)

    def submit(self, query: bytes, question_end: int, deliver: Deliver) -> bool:
        """Send `query` upstream; `deliver` later gets the reply (or None). False if busy."""
        with self._lock:
            if (
                len(self._pending) >= _MAX_PENDING
                or self._pending_bytes + len(query) > _MAX_PENDING_BYTES
                or self._stopping
            ):
                return False
            qid = self._rng.getrandbits(16)
            while qid in self._pending:
                qid = self._rng.getrandbits(16)
            p = _Pending(qid, query[2:], query[12:question_end], deliver)
            self._pending[qid] = p
            self._pending_bytes += len(p.tail)
        self._send(p)
        return True

    def _send(self, p: _Pending) -> None:
        host, port = self.upstreams[p.index]
        p.deadline = time.monotonic() + self.timeout
        try:
            self._socks[self._families[p.index]].sendto(p.qid.to_bytes(2, "big") + p.tail, (host, port))
        except OSError as exc:
            log.debug("forward to %s:%d failed: %s", host, port, exc)
            p.deadline = 0.0  # try the next upstream at the next tick

    @staticmethod
    def _deliver(p: _Pending, reply: bytes | None) -> None:
        try:
            p.deliver(reply)
        except Exception:
            log.exception("delivering a forwarded reply failed")

    def _run(self) -> None:
        socks = list(self._socks.values())
        while not self._stopping:
            try:
                readable, _, _ = select.select(socks, [], [], _TICK)
            except (OSError, ValueError):
                if self._stopping:
                    return
                time.sleep(_TICK)
                continue
            for s in readable:
                self._drain(s)
            self._expire()

    def _drain(self, s: socket.socket) -> None:
        while True:
            try:
                data, addr = s.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on the socket
            if len(data) < 12 or not data[2] & 0x80:
                continue
            qid = int.from_bytes(data[:2], "big")
            with self._lock:
                p = self._pending.get(qid)
                if p is None:
                    continue
                host, port = self.upstreams[p.index]
                peer = (str(ipaddress.ip_address(addr[0].partition("%")[0])), addr[1])
                if peer != (host, port) or data[12 : 12 + len(p.question)] != p.question:
                    continue
                del self._pending[qid]
                self._pending_bytes -= len(p.tail)
            self._deliver(p, data)

    def _expire(self) -> None:
        now = time.monotonic()
        failed: list[_Pending] = []
        retry: list[_Pending] = []
        with self._lock:
            for p in list(self._pending.values()):
                if p.deadline <= now:
                    p.index += 1
                    if p.index < len(self.upstreams):
                        retry.append(p)
                    else:
                        del self._pending[p.qid]
                        self._pending_bytes -= len(p.tail)
                        failed.append(p)
        for p in retry:
            self._send(p)
        for p in failed:
            self._deliver(p, None)


def _relayed(client_id: bytes, reply: bytes) -> bytes:
    """An upstream reply for our client: its ID back, and RA set since we recursed for it."""
    return client_id + reply[2:3] + bytes([reply[3] | 0x80]) + reply[4:]


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = conn.recv(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _forward_tcp(upstreams: Sequence[tuple[str, int]], query: bytes, timeout: float) -> bytes | None:
    """Ask each upstream in turn over TCP; the first usable reply wins."""
    for host, port in upstreams:
        try:
            with socket.create_connection((host, port), timeout=timeout) as conn:
                conn.sendall(len(query).to_bytes(2, "big") + query)
                head = _recv_exact(conn, 2)
                if head is None:
                    continue
                reply = _recv_exact(conn, int.from_bytes(head, "big"))
        except OSError as exc:
            log.debug("TCP forward to %s:%d failed: %s", host, port, exc)
            continue
        if reply is not None and len(reply) >= 12 and reply[:2] == query[:2]:
            return reply
    return None


# ---- the server ----------------------------------------------------------------------------


class _TcpConn:
    """One accepted TCP connection, as the acceptor sees it when it needs a slot."""

    __slots__ = ("busy", "client", "idle_since", "sock")

    def __init__(self, sock: socket.socket, client: str, now: float) -> None:
        self.sock = sock
        self.client = client
        self.idle_since = now
        """When the connection last completed an answer (or was accepted)."""
        self.busy = False
        """Answering a query now (perhaps waiting for an upstream): not idle."""


def _read_exact(conn: socket.socket, n: int, deadline: float) -> bytes | None:
    """`n` bytes, or None if the peer closes or `deadline` passes first."""
    chunks = []
    while n:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        conn.settimeout(left)
        try:
            chunk = conn.recv(n)
        except TimeoutError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class DNSServer:
    """Cluster DNS over UDP and TCP. Thread-safe `update()`; all threads are daemons."""

    def __init__(self, zone: ZoneData | None = None, settings: DNSSettings | None = None) -> None:
        self.settings = settings or DNSSettings()
        s = self.settings
        self._upstreams = [parse_hostport(u) for u in s.upstreams]
        self._ra = bool(self._upstreams)
        self._serial = 0
        self._update_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._sockets: list[socket.socket] = []  # UDP first, then the TCP listener
        self._threads: list[threading.Thread] = []
        self._conns: set[_TcpConn] = set()
        self._per_client: dict[str, int] = {}
        self._conns_lock = threading.Lock()
        self._clients = Clients(s.allow_recursion)
        self._clients_lock = threading.Lock()
        self._trusted: set[str] = set()
        """Addresses already found inside `allow_recursion`: the hit path's only check."""
        self._rrl = RateLimiter(s.rate_limit, s.rate_limit_slip, s.rate_limit_table)
        self._rrl_lock = threading.Lock()
        self._forwarder: _Forwarder | None = None
        self._stopping = False
        self._started = False
        self._state = _State(None)
        self._counts = [0, 0]  # queries received over UDP, TCP (approximate across threads)
        self.update(zone or ZoneData())
        self.port = s.port
        """The bound port (the picked one when settings.port is 0)."""

    # ---- data --------------------------------------------------------------------------------

    @property
    def zone(self) -> Zone:
        """The zone being served."""
        zone = self._state.zone
        assert zone is not None
        return zone

    def update(self, data: ZoneData) -> None:
        """Serve `data` from now on; cached replies are dropped at the same instant.

        Raises ValueError (and keeps serving the old data) when `data` is invalid.
        """
        with self._update_lock:
            # CoreDNS-style serial: seconds of the last change, always increasing.
            self._serial = max(self._serial + 1, int(time.time()))
            self._state = _State(Zone(data, serial=self._serial & 0xFFFFFFFF))

    def allow_recursion(self, networks: Sequence[str]) -> None:
        """Forward for (and exempt from rate limits) these networks from now on.

        Raises ValueError naming a bad network, and keeps the old ones then.
        """
        clients = Clients(networks)
        with self._clients_lock:
            self._clients = clients
            self._trusted.clear()

    def stats(self) -> dict[str, int]:
        """Queries received so far, by transport."""
        return {"udp": self._counts[0], "tcp": self._counts[1]}

    def cache_usage(self) -> tuple[int, int]:
        """Replies cached now (both transports), and the bytes they are counted as."""
        st = self._state
        with self._cache_lock:
            return len(st.udp) + len(st.tcp), st.bytes

    # ---- life cycle --------------------------------------------------------------------------

    def start(self) -> DNSServer:
        """Bind and serve in daemon threads; returns self."""
        if self._started:
            return self
        s = self.settings
        family = _family(s.host)
        for attempt in range(20):
            try:
                self._bind(family, s.host, s.port)
                break
            except OSError:
                self._close_sockets()
                if s.port != 0 or attempt == 19:
                    raise
        self._started = True
        if self._upstreams:
            self._forwarder = _Forwarder(self._upstreams, s.upstream_timeout)
            self._forwarder.start()
        for i in range(max(1, s.udp_workers)):
            self._spawn(self._serve_udp, self._sockets[0], name=f"dns-udp-{i}")
        self._spawn(self._serve_tcp, self._sockets[1], name="dns-tcp")
        log.info("DNS serving %s on %s port %d", self.zone.domain, s.host, self.port)
        return self

    def _bind(self, family: socket.AddressFamily, host: str, port: int) -> None:
        udp = socket.socket(family, socket.SOCK_DGRAM)
        self._sockets.append(udp)
        with contextlib.suppress(OSError):
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        udp.bind((host, port))
        port = udp.getsockname()[1]
        tcp = socket.socket(family, socket.SOCK_STREAM)
        self._sockets.append(tcp)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((host, port))
        tcp.listen(128)
        self.port = port

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def stop(self) -> None:
        """Stop serving and release the port; idempotent."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        # An empty cache sends every packet down the slow path, which notices the stop.
        self._state = _State(self._state.zone)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes threads blocked in recv/accept
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=2)
        if self._forwarder is not None:
            self._forwarder.stop()
        self._close_sockets()
        self._threads = []

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- clients -----------------------------------------------------------------------------

    def _allowed(self, host: str) -> bool:
        """Whether `host` may recurse; remembered for the hit path when it may."""
        if host in self._trusted:
            return True
        with self._clients_lock:
            allowed = self._clients.allowed(host)
            if allowed:
                if len(self._trusted) >= _MEMO:
                    self._trusted.clear()
                self._trusted.add(host)
        return allowed

    def _limit(self, host: str) -> Verdict:
        try:
            network = client_network(host)
        except ValueError:
            return Verdict.DROP
        with self._rrl_lock:
            return self._rrl.check(network, time.monotonic())

    # ---- answering ---------------------------------------------------------------------------

    def _remember(self, st: _State, tcp: bool, key: bytes, reply: bytes) -> None:
        cost = len(key) + len(reply) + _ENTRY_COST
        budget = self.settings.cache_bytes
        if cost > budget:
            return
        cache = st.tcp if tcp else st.udp
        with self._cache_lock:
            if key in cache:
                return  # another thread answered the same query meanwhile
            order = st.order
            while st.bytes + cost > budget and order:
                old_tcp, old_key = order.popleft()
                old = (st.tcp if old_tcp else st.udp).pop(old_key, None)
                if old is not None:
                    st.bytes -= len(old_key) + len(old) + _ENTRY_COST
            cache[key] = reply
            order.append((tcp, key))
            st.bytes += cost

    def _answer(
        self, q: Query, data: bytes, st: _State, *, tcp: bool, recurse: bool
    ) -> Answer | bytes | None:
        """A packed reply, an Answer needing a chase, or None to forward (only when `recurse`).

        Replies that are the same for every client of plain queries are cached.
        """
        s = self.settings
        limit = 65535 if tcp else q.udp_limit(s.max_udp_payload)
        if q.opcode != 0:
            return wire.error_reply(q, Rcode.NOTIMP, ra=self._ra, edns_size=s.edns_payload)
        if q.edns_size is not None and q.edns_version > 0:
            return wire.error_reply(q, Rcode.BADVERS, ra=self._ra, edns_size=s.edns_payload)
        zone = st.zone
        assert zone is not None
        answer = zone.resolve(q.name, q.qtype, q.qclass)
        if answer is None:
            if self._forwarder is not None:
                if recurse:
                    return None
                return wire.error_reply(q, Rcode.REFUSED, ra=False, edns_size=s.edns_payload)
            answer = Answer(Rcode.REFUSED, authoritative=False)
        elif answer.chase is not None and self._forwarder is not None:
            if recurse:
                return answer
            # The CNAME alone: what lies behind it is the upstream's, not ours to give out.
            return wire.build_reply(q, answer, limit=limit, ra=False, edns_size=s.edns_payload)
        reply = wire.build_reply(q, answer, limit=limit, ra=self._ra, edns_size=s.edns_payload)
        if q.plain:
            self._remember(st, tcp, data[2:], reply[2:])
        return reply

    def _chased(self, q: Query, answer: Answer, upstream: bytes | None, limit: int) -> bytes:
        """The CNAME answer plus what the upstream said about its target."""
        combined = answer
        if upstream is not None:
            try:
                rcode, records = wire.upstream_records(upstream)
            except ValueError:
                pass
            else:
                if rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
                    rcode = Rcode.NOERROR
                combined = Answer(rcode, answer.answer + records)
        return wire.build_reply(
            q, combined, limit=limit, ra=self._ra, edns_size=self.settings.edns_payload
        )

    def _servfail(self, q: Query) -> bytes:
        return wire.error_reply(
            q, Rcode.SERVFAIL, ra=self._ra, edns_size=self.settings.edns_payload
        )

    def _fitted(self, q: Query, reply: bytes, limit: int) -> bytes:
        """`reply` (an upstream's, relayed) if it fits in `limit` bytes, else truncated."""
        if len(reply) <= limit:
            return _relayed(q.id.to_bytes(2, "big"), reply)
        return wire.truncated_reply(
            q, wire.reply_rcode(reply), aa=bool(reply[2] & 0x04), ra=True,
            edns_size=self.settings.edns_payload,
        )

    # ---- UDP -----------------------------------------------------------------------------

    def _serve_udp(self, sock: socket.socket) -> None:
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        miss = self._udp_miss
        counts = self._counts
        trusted = self._trusted
        while True:
            try:
                data, addr = recvfrom(_RECV_SIZE)
            except OSError:
                if self._stopping:
                    return
                continue
            counts[0] += 1
            st = self._state
            reply = st.udp.get(data[2:])
            if reply is not None and addr[0] in trusted:
                try:  # noqa: SIM105 -- contextlib.suppress costs a call per packet here
                    sendto(data[:2] + reply, addr)
                except OSError:
                    pass
                continue
            if self._stopping:
                return
            try:
                miss(sock, data, addr, st)
            except OSError:
                pass  # the reply could not be sent (client gone, buffers full)
            except Exception:
                log.exception("DNS: failed to answer a UDP query from %s", addr)

    def _udp_miss(
        self, sock: socket.socket, data: bytes, addr: tuple[str, int], st: _State
    ) -> None:
        if not self._allowed(addr[0]):
            self._udp_outsider(sock, data, addr, st)
            return
        cached = st.udp.get(data[2:])
        if cached is not None:  # this client's first query since it was judged
            sock.sendto(data[:2] + cached, addr)
            return
        try:
            q = wire.parse_query(data)
        except Malformed as bad:
            if bad.reply is not None:
                sock.sendto(bad.reply, addr)
            return
        result = self._answer(q, data, st, tcp=False, recurse=True)
        if isinstance(result, bytes):
            sock.sendto(result, addr)
            return

        def send(reply: bytes) -> None:
            with contextlib.suppress(OSError):
                sock.sendto(reply, addr)

        forwarder = self._forwarder
        assert forwarder is not None
        limit = q.udp_limit(self.settings.max_udp_payload)
        if result is None:

            def relay(reply: bytes | None) -> None:
                send(self._fitted(q, reply, limit) if reply is not None else self._servfail(q))

            if not forwarder.submit(data, q.question_end, relay):
                send(self._servfail(q))
            return
        answer = result
        assert answer.chase is not None
        sub = wire.build_query(answer.chase, q.qtype, 0)

        def chase(reply: bytes | None) -> None:
            send(self._chased(q, answer, reply, limit))

        if not forwarder.submit(sub, len(sub), chase):
            send(self._chased(q, answer, None, limit))

    def _udp_outsider(
        self, sock: socket.socket, data: bytes, addr: tuple[str, int], st: _State
    ) -> None:
        """Rate-limited, never forwarded, and never more bytes back than came in."""
        if len(data) < 12 or data[2] & 0x80:
            return  # not a query: nothing would be sent
        verdict = self._limit(addr[0])
        if verdict is Verdict.DROP:
            return
        try:
            q = wire.parse_query(data)
        except Malformed as bad:
            if bad.reply is not None and verdict is Verdict.SEND and len(bad.reply) <= len(data):
                sock.sendto(bad.reply, addr)
            return
        edns = self.settings.edns_payload
        if verdict is Verdict.SLIP:
            reply = wire.truncated_reply(q, Rcode.NOERROR, aa=False, ra=False, edns_size=edns)
        else:
            cached = st.udp.get(data[2:])
            if cached is not None:
                reply = data[:2] + cached
            else:
                result = self._answer(q, data, st, tcp=False, recurse=False)
                assert isinstance(result, bytes)
                reply = result
            if len(reply) > len(data):
                reply = wire.truncated_reply(
                    q, wire.reply_rcode(reply), aa=bool(reply[2] & 0x04), ra=False, edns_size=edns
                )
        if len(reply) <= len(data):
            sock.sendto(reply, addr)

    # ---- TCP -----------------------------------------------------------------------------

    def _serve_tcp(self, lsock: socket.socket) -> None:
        while not self._stopping:
            try:
                sock, addr = lsock.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(_TICK)  # e.g. out of file descriptors
                continue
            conn = self._admit(sock, addr[0])
            if conn is None:
                sock.close()
                continue
            t = threading.Thread(target=self._tcp_conn, args=(conn,), name="dns-tcp-conn")
            t.daemon = True
            t.start()

    def _admit(self, sock: socket.socket, client: str) -> _TcpConn | None:
        """A slot for a new connection: None when its client has too many, or when all
        slots are busy answering; otherwise the connection idle longest makes room."""
        s = self.settings
        with self._conns_lock:
            held = self._per_client.get(client, 0)
            if held >= s.max_tcp_per_client:
                return None
            if len(self._conns) >= s.max_tcp_connections:
                idle = [c for c in self._conns if not c.busy]
                if not idle:
                    return None
                victim = min(idle, key=lambda c: c.idle_since)
                self._release(victim)
                with contextlib.suppress(OSError):
                    victim.sock.shutdown(socket.SHUT_RDWR)  # its thread wakes and closes it
            conn = _TcpConn(sock, client, time.monotonic())
            self._conns.add(conn)
            self._per_client[client] = held + 1
            return conn

    def _release(self, conn: _TcpConn) -> None:
        """Give back `conn`'s slot (once); the caller holds `_conns_lock`."""
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        held = self._per_client.get(conn.client, 0) - 1
        if held > 0:
            self._per_client[conn.client] = held
        else:
            self._per_client.pop(conn.client, None)

    def _tcp_conn(self, conn: _TcpConn) -> None:
        sock = conn.sock
        timeout = self.settings.tcp_idle_timeout
        try:
            while not self._stopping:
                deadline = conn.idle_since + timeout
                head = _read_exact(sock, 2, deadline)
                if head is None:
                    return
                size = int.from_bytes(head, "big")
                data = _read_exact(sock, size, deadline) if size else None
                if data is None:
                    return
                conn.busy = True
                self._counts[1] += 1
                reply = self._tcp_reply(data, conn.client)
                if reply is None:
                    return
                sock.settimeout(timeout)  # a client that does not read its answer is dropped too
                sock.sendall(len(reply).to_bytes(2, "big") + reply)
                conn.idle_since = time.monotonic()
                conn.busy = False
        except OSError:
            pass
        except Exception:
            log.exception("DNS: failed to answer over TCP")
        finally:
            with self._conns_lock:
                self._release(conn)
            sock.close()

    def _tcp_reply(self, data: bytes, client: str) -> bytes | None:
        st = self._state
        cached = st.tcp.get(data[2:])
        if cached is not None:
            return data[:2] + cached
        try:
            q = wire.parse_query(data)
        except Malformed as bad:
            return bad.reply
        result = self._answer(q, data, st, tcp=True, recurse=self._allowed(client))
        if isinstance(result, bytes):
            return result
        timeout = self.settings.upstream_timeout
        if result is None:
            reply = _forward_tcp(self._upstreams, data, timeout)
            return _relayed(data[:2], reply) if reply is not None else self._servfail(q)
        assert result.chase is not None
        sub = wire.build_query(result.chase, q.qtype, random.getrandbits(16))
        return self._chased(q, result, _forward_tcp(self._upstreams, sub, timeout), 65535)

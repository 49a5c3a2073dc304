"""Cluster DNS (gitorch.dns): Kubernetes DNS records over real UDP/TCP, asked with
dnspython and dig; forwarding, truncation, EDNS, live updates, and fuzzing."""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from gitorch.dns import wire
from gitorch.dns.server import DNSServer, DNSSettings, parse_hostport
from gitorch.dns.zone import (
    EndpointRecord,
    PortRecord,
    Rcode,
    RType,
    ServiceRecord,
    Srv,
    Zone,
    ZoneData,
)

HOST = "127.0.0.1"
D = "cluster.local"

BIG = tuple(EndpointRecord(f"10.245.0.{i}", True) for i in range(1, 101))

ZONE = ZoneData(
    domain=D,
    services=(
        ServiceRecord(
            "web",
            "default",
            "10.96.0.10",
            (PortRecord("http", 80), PortRecord("dns", 53, "UDP"), PortRecord("", 8080)),
        ),
        ServiceRecord("web6", "default", "fd00::10", (PortRecord("http", 80),)),
        ServiceRecord(
            "db",
            "default",
            None,
            (PortRecord("pg", 5432),),
            endpoints=(
                EndpointRecord("10.244.1.5", True, "db-0", "db-0"),
                EndpointRecord("10.244.1.6", True, None, "db-x"),
                EndpointRecord("10.244.1.7", False, "db-2", "db-2"),
            ),
        ),
        ServiceRecord(
            "early",
            "default",
            None,
            endpoints=(EndpointRecord("10.244.2.5", False, "early-0"),),
            publish_not_ready=True,
        ),
        ServiceRecord(
            "idle", "default", None, endpoints=(EndpointRecord("10.244.3.5", False),)
        ),
        ServiceRecord("ext", "default", None, external_name="example.org."),
        ServiceRecord("alias", "default", None, external_name=f"web.default.svc.{D}"),
        ServiceRecord("big", "other", None, endpoints=BIG),
    ),
    pod_ips=(("10.244.1.5", "default"), ("fd00::1:5", "default")),
    namespaces=frozenset({"default", "other", "empty"}),
)

SOA_TEXT = f"ns.dns.{D}. hostmaster.{D}."


# ---- helpers -------------------------------------------------------------------------------


def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    payload: int | None = None,
) -> dns.message.Message:
    """One query with dnspython; EDNS only when a payload size is given."""
    q = dns.message.make_query(name, rdtype, use_edns=0 if payload else None, payload=payload)
    if tcp:
        return dns.query.tcp(q, HOST, port=port, timeout=3)
    return dns.query.udp(q, HOST, port=port, timeout=3)


def values(msg: dns.message.Message, rdtype: str = "A") -> set[str]:
    t = dns.rdatatype.from_text(rdtype)
    return {rd.to_text() for rrset in msg.answer if rrset.rdtype == t for rd in rrset}


def additional(msg: dns.message.Message) -> set[tuple[str, str]]:
    return {(str(r.name), rd.to_text()) for r in msg.additional for rd in r}


def soa(msg: dns.message.Message) -> str:
    [rrset] = msg.authority
    assert rrset.rdtype == dns.rdatatype.SOA
    return " ".join(rrset[0].to_text().split()[:2])


def dig(port: int, *args: str) -> str:
    if shutil.which("dig") is None:
        pytest.skip("dig (dnsutils) is not installed")
    out = subprocess.run(
        ["dig", f"@{HOST}", "-p", str(port), "+time=3", "+tries=1", *args],
        capture_output=True, text=True, timeout=20, check=False,
    )
    return out.stdout


def dig_short(port: int, *args: str) -> list[str]:
    return sorted(dig(port, "+short", *args).split())


def dig_status(port: int, *args: str) -> str:
    for line in dig(port, "+noall", "+comments", *args).splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    return "no answer"


@pytest.fixture(scope="module")
def server() -> Iterator[DNSServer]:
    with DNSServer(ZONE, DNSSettings(host=HOST, port=0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def port(server: DNSServer) -> int:
    return server.port


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The server swallows exceptions to stay up; a test still fails if one happened."""
    with caplog.at_level(logging.ERROR, logger="gitorch.dns"):
        yield
    errors = [r for r in caplog.records if r.name.startswith("gitorch.dns")]
    assert not errors, [r.getMessage() for r in errors]


# ---- records, spec section by section ------------------------------------------------------


def test_cluster_ip_a(port: int) -> None:
    msg = ask(port, f"web.default.svc.{D}")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA
    assert values(msg) == {"10.96.0.10"}
    assert msg.answer[0].ttl == 5
    assert dig_short(port, f"web.default.svc.{D}") == ["10.96.0.10"]


def test_cluster_ip_aaaa_for_ipv6_service(port: int) -> None:
    assert values(ask(port, f"web6.default.svc.{D}", "AAAA"), "AAAA") == {"fd00::10"}
    assert dig_short(port, f"web6.default.svc.{D}", "AAAA") == ["fd00::10"]


def test_aaaa_for_ipv4_service_is_nodata_with_soa(port: int) -> None:
    msg = ask(port, f"web.default.svc.{D}", "AAAA")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer
    assert soa(msg) == SOA_TEXT
    assert dig_status(port, f"web.default.svc.{D}", "AAAA") == "NOERROR"
    assert dig_short(port, f"web.default.svc.{D}", "AAAA") == []


def test_headless_a_lists_ready_endpoints_only(port: int) -> None:
    assert values(ask(port, f"db.default.svc.{D}")) == {"10.244.1.5", "10.244.1.6"}
    assert dig_short(port, f"db.default.svc.{D}") == ["10.244.1.5", "10.244.1.6"]


def test_headless_publish_not_ready(port: int) -> None:
    assert values(ask(port, f"early.default.svc.{D}")) == {"10.244.2.5"}
    assert values(ask(port, f"early-0.early.default.svc.{D}")) == {"10.244.2.5"}


def test_headless_without_ready_endpoints_is_nxdomain(port: int) -> None:
    msg = ask(port, f"idle.default.svc.{D}")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert soa(msg) == SOA_TEXT
    assert dig_status(port, f"idle.default.svc.{D}") == "NXDOMAIN"


def test_srv_cluster_ip_with_additional_a(port: int) -> None:
    msg = ask(port, f"_http._tcp.web.default.svc.{D}", "SRV")
    assert values(msg, "SRV") == {f"0 100 80 web.default.svc.{D}."}
    assert additional(msg) == {(f"web.default.svc.{D}.", "10.96.0.10")}
    assert values(ask(port, f"_dns._udp.web.default.svc.{D}", "SRV"), "SRV") == {
        f"0 100 53 web.default.svc.{D}."
    }
    # Protocols do not mix, and unnamed ports get no SRV name of their own.
    assert ask(port, f"_dns._tcp.web.default.svc.{D}", "SRV").rcode() == dns.rcode.NXDOMAIN
    assert dig(port, "+short", f"_http._tcp.web.default.svc.{D}", "SRV").split() == [
        "0", "100", "80", f"web.default.svc.{D}."
    ]


def test_srv_headless_one_per_ready_endpoint_with_additional_a(port: int) -> None:
    msg = ask(port, f"_pg._tcp.db.default.svc.{D}", "SRV")
    assert values(msg, "SRV") == {
        f"0 50 5432 db-0.db.default.svc.{D}.",
        f"0 50 5432 10-244-1-6.db.default.svc.{D}.",
    }
    assert additional(msg) == {
        (f"db-0.db.default.svc.{D}.", "10.244.1.5"),
        (f"10-244-1-6.db.default.svc.{D}.", "10.244.1.6"),
    }
    out = dig(port, "+noall", "+answer", "+additional", f"_pg._tcp.db.default.svc.{D}", "SRV")
    assert f"db-0.db.default.svc.{D}.\t5\tIN\tA\t10.244.1.5" in out.replace(" ", "\t")


def test_endpoint_hostname_records(port: int) -> None:
    assert values(ask(port, f"db-0.db.default.svc.{D}")) == {"10.244.1.5"}
    assert dig_short(port, f"db-0.db.default.svc.{D}") == ["10.244.1.5"]
    assert values(ask(port, f"10-244-1-6.db.default.svc.{D}")) == {"10.244.1.6"}
    # db-2 is not ready.
    assert ask(port, f"db-2.db.default.svc.{D}").rcode() == dns.rcode.NXDOMAIN


def test_ptr_for_cluster_ip_and_endpoints(port: int) -> None:
    assert values(ask(port, "10.0.96.10.in-addr.arpa", "PTR"), "PTR") == {
        f"web.default.svc.{D}."
    }
    assert values(ask(port, "5.1.244.10.in-addr.arpa", "PTR"), "PTR") == {
        f"db-0.db.default.svc.{D}."
    }
    assert dig_short(port, "-x", "10.244.1.6") == [f"10-244-1-6.db.default.svc.{D}."]
    assert dig_short(port, "-x", "fd00::10") == [f"web6.default.svc.{D}."]
    # Not-ready endpoints have no reverse record; unknown addresses are not ours.
    assert ask(port, "7.1.244.10.in-addr.arpa", "PTR").rcode() == dns.rcode.REFUSED


def test_external_name_cname(port: int) -> None:
    msg = ask(port, f"ext.default.svc.{D}")
    assert msg.rcode() == dns.rcode.NOERROR
    assert values(msg, "CNAME") == {"example.org."}
    assert dig_short(port, f"ext.default.svc.{D}") == ["example.org."]
    # An in-zone target is followed in the same answer.
    msg = ask(port, f"alias.default.svc.{D}")
    assert values(msg, "CNAME") == {f"web.default.svc.{D}."}
    assert values(msg) == {"10.96.0.10"}


def test_pod_records_verified(port: int) -> None:
    assert values(ask(port, f"10-244-1-5.default.pod.{D}")) == {"10.244.1.5"}
    assert dig_short(port, f"10-244-1-5.default.pod.{D}") == ["10.244.1.5"]
    assert values(ask(port, f"fd00--1-5.default.pod.{D}", "AAAA"), "AAAA") == {"fd00::1:5"}
    # No such pod in that namespace, or at all.
    assert ask(port, f"10-244-1-5.other.pod.{D}").rcode() == dns.rcode.NXDOMAIN
    assert ask(port, f"10-9-9-9.default.pod.{D}").rcode() == dns.rcode.NXDOMAIN


def test_dns_version_txt(port: int) -> None:
    assert values(ask(port, f"dns-version.{D}", "TXT"), "TXT") == {'"1.1.0"'}
    assert dig_short(port, f"dns-version.{D}", "TXT") == ['"1.1.0"']


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        (f"nope.default.svc.{D}", "A", "NXDOMAIN"),
        (f"web.nope.svc.{D}", "A", "NXDOMAIN"),
        (f"nope.{D}", "A", "NXDOMAIN"),
        (f"default.svc.{D}", "A", "NOERROR"),
        (f"empty.svc.{D}", "A", "NOERROR"),
        (f"nope.svc.{D}", "A", "NXDOMAIN"),
        (f"svc.{D}", "A", "NOERROR"),
        (f"pod.{D}", "A", "NOERROR"),
        (f"_tcp.web.default.svc.{D}", "SRV", "NOERROR"),
        (f"web.default.svc.{D}", "TXT", "NOERROR"),
        (D, "A", "NOERROR"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." not in v else None,
)
def test_nxdomain_vs_nodata(port: int, name: str, rdtype: str, rcode: str) -> None:
    msg = ask(port, name, rdtype)
    assert dns.rcode.to_text(msg.rcode()) == rcode
    assert not msg.answer
    assert msg.flags & dns.flags.AA
    assert soa(msg) == SOA_TEXT
    assert dig_status(port, name, rdtype) == rcode


def test_apex_soa_and_ns(port: int) -> None:
    msg = ask(port, D, "SOA")
    assert values(msg, "SOA") and next(iter(values(msg, "SOA"))).startswith(SOA_TEXT)
    assert values(ask(port, D, "NS"), "NS") == {f"ns.dns.{D}."}


# ---- transport -----------------------------------------------------------------------------


def test_tcp_queries(port: int) -> None:
    assert values(ask(port, f"web.default.svc.{D}", tcp=True)) == {"10.96.0.10"}
    assert dig_short(port, "+tcp", f"db.default.svc.{D}") == ["10.244.1.5", "10.244.1.6"]


def test_tcp_connection_answers_several_queries(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=3) as conn:
        for i, name in enumerate(["web", "db", "nope"]):
            q = dns.message.make_query(f"{name}.default.svc.{D}", "A", id=1000 + i)
            wire_q = q.to_wire()
            conn.sendall(struct.pack("!H", len(wire_q)) + wire_q)
            size = struct.unpack("!H", _recv_exact(conn, 2))[0]
            reply = dns.message.from_wire(_recv_exact(conn, size))
            assert reply.id == 1000 + i


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_udp_truncates_large_answers_and_tcp_does_not(port: int) -> None:
    name = f"big.other.svc.{D}"
    msg = ask(port, name)
    assert msg.flags & dns.flags.TC
    assert not msg.answer
    full = ask(port, name, tcp=True)
    assert not full.flags & dns.flags.TC
    assert len(values(full)) == 100
    assert "flags: qr aa tc rd" in dig(port, "+ignore", "+noedns", name)
    assert len(dig_short(port, name)) == 100  # dig retries over TCP by itself


def test_edns_payload_size_is_honoured(port: int) -> None:
    name = f"big.other.svc.{D}"
    small = ask(port, name, payload=1232)
    assert small.flags & dns.flags.TC
    assert small.edns == 0
    large = ask(port, name, payload=4096)
    assert not large.flags & dns.flags.TC
    assert len(values(large)) == 100
    assert large.edns == 0 and large.payload == 1232  # our own advertised size
    assert ask(port, f"web.default.svc.{D}").edns == -1  # no OPT unless asked with one


def test_edns_extras(port: int) -> None:
    q = dns.message.make_query(f"web.default.svc.{D}", "A", use_edns=1)
    reply = dns.query.udp(q, HOST, port=port, timeout=3)
    assert reply.rcode() == dns.rcode.BADVERS
    q = dns.message.make_query(f"web.default.svc.{D}", "A")
    q.set_opcode(dns.opcode.STATUS)
    assert dns.query.udp(q, HOST, port=port, timeout=3).rcode() == dns.rcode.NOTIMP


def test_question_case_is_preserved(port: int) -> None:
    for asked in (f"WeB.DeFault.svc.{D.upper()}", f"wEb.default.SVC.{D}"):
        q = dns.message.make_query(asked, "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(q.to_wire(), (HOST, port))
            raw = s.recv(4096)
        reply = dns.message.from_wire(raw)
        assert str(reply.question[0].name) == asked + "."
        assert str(reply.answer[0].name) == asked + "."
        assert values(reply) == {"10.96.0.10"}
    out = dig(port, "+noall", "+answer", f"DB-0.Db.default.svc.{D}")
    assert out.startswith(f"DB-0.Db.default.svc.{D}.")


# ---- forwarding ----------------------------------------------------------------------------

UPSTREAM_ZONE = ZoneData(
    domain="upstream.test",
    services=(ServiceRecord("www", "default", "192.0.2.80"),),
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[DNSServer]:
    with DNSServer(UPSTREAM_ZONE, DNSSettings(host=HOST, port=0)) as srv:
        yield srv


def test_out_of_zone_is_refused_without_upstreams(port: int) -> None:
    msg = ask(port, "www.default.svc.upstream.test")
    assert msg.rcode() == dns.rcode.REFUSED
    assert not msg.flags & dns.flags.AA
    assert ask(port, "example.com", tcp=True).rcode() == dns.rcode.REFUSED
    assert dig_status(port, "example.com") == "REFUSED"


def test_forwarding_upstream_with_fallback(upstream: DNSServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))  # a resolver that never answers: the first upstream times out
        dead = f"{HOST}:{silent.getsockname()[1]}"
        settings = DNSSettings(
            host=HOST, port=0, upstreams=(dead, f"{HOST}:{upstream.port}"),
            upstream_timeout=0.3,
        )
        zone = ZoneData(
            services=(
                ServiceRecord("web", "default", "10.96.0.10"),
                ServiceRecord("ext", "default", None, external_name="www.default.svc.upstream.test"),
            )
        )
        with DNSServer(zone, settings) as srv:
            name = "www.default.svc.upstream.test"
            msg = ask(srv.port, name)
            assert msg.rcode() == dns.rcode.NOERROR
            assert values(msg) == {"192.0.2.80"}
            assert msg.flags & dns.flags.RA
            assert dig_short(srv.port, name) == ["192.0.2.80"]
            assert values(ask(srv.port, name, tcp=True)) == {"192.0.2.80"}
            assert ask(srv.port, "nope.upstream.test").rcode() == dns.rcode.NXDOMAIN
            # In-zone names are still answered locally.
            assert values(ask(srv.port, f"web.default.svc.{D}")) == {"10.96.0.10"}
            # ExternalName targets are resolved through the upstream too.
            msg = ask(srv.port, f"ext.default.svc.{D}")
            assert values(msg, "CNAME") == {f"{name}."}
            assert values(msg) == {"192.0.2.80"}


def test_forwarding_servfail_when_no_upstream_answers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))
        settings = DNSSettings(
            host=HOST, port=0, upstreams=(f"{HOST}:{silent.getsockname()[1]}",),
            upstream_timeout=0.2,
        )
        with DNSServer(ZONE, settings) as srv:
            assert ask(srv.port, "example.com").rcode() == dns.rcode.SERVFAIL


def test_probe_ignores_what_the_upstream_says_of_an_external_name(upstream: DNSServer) -> None:
    """Drift checks compare in-zone data only: an ExternalName whose target does not exist
    upstream (NXDOMAIN) is answered as the store says, not drift."""
    from gitorch.dns import probe

    zone = ZoneData(services=(
        ServiceRecord("gone", "default", None, external_name="nope.upstream.test"),
        ServiceRecord("ext", "default", None, external_name="www.default.svc.upstream.test"),
    ))
    with DNSServer(zone, DNSSettings(host=HOST, port=0, upstreams=(f"{HOST}:{upstream.port}",))) as srv:
        assert ask(srv.port, f"gone.default.svc.{D}").rcode() == dns.rcode.NXDOMAIN  # the upstream's word
        names = [f"gone.default.svc.{D}", f"ext.default.svc.{D}"]
        assert probe.compare(f"{HOST}:{srv.port}", Zone(zone), names) == []


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda q: q[:2], id="shorter-than-a-header"),
        pytest.param(lambda q: q[:2] + b"\x81\x80" + b"\xff" * 9, id="garbage-after-the-header"),
        pytest.param(lambda q: bytes([q[0] ^ 1]) + q[1:3] + b"\x80" + q[4:], id="another-id"),
        pytest.param(lambda q: q, id="the-query-echoed"),
    ],
)
def test_probe_reports_a_server_that_does_not_answer_dns(reply: Any) -> None:
    """Whatever comes back, a lookup gives an answer or one ProbeError naming the server."""
    from gitorch.dns import probe

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind((HOST, 0))

        def answer() -> None:
            data, addr = fake.recvfrom(4096)
            fake.sendto(reply(data), addr)

        threading.Thread(target=answer, daemon=True).start()
        address = f"{HOST}:{fake.getsockname()[1]}"
        with pytest.raises(probe.ProbeError, match=f"DNS server {address}: "):
            probe.lookup(address, f"web.default.svc.{D}", timeout=0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:5353", ("10.0.0.1", 5353)),
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("[fd00::1]:54", ("fd00::1", 54)),
        ("fd00::1", ("fd00::1", 53)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


def test_parse_hostport_rejects_names() -> None:
    with pytest.raises(ValueError, match="IP literal"):
        parse_hostport("dns.example:53")


# ---- updates -------------------------------------------------------------------------------


def test_update_changes_answers_immediately_even_cached() -> None:
    zone = ZoneData(services=(ServiceRecord("web", "default", "10.96.0.10"),))
    with DNSServer(zone, DNSSettings(host=HOST, port=0)) as srv:
        name = f"web.default.svc.{D}"
        for _ in range(3):  # the second and third come from the packed-reply cache
            assert values(ask(srv.port, name)) == {"10.96.0.10"}
            assert values(ask(srv.port, name, tcp=True)) == {"10.96.0.10"}
        assert ask(srv.port, f"new.default.svc.{D}").rcode() == dns.rcode.NXDOMAIN
        srv.update(
            ZoneData(
                services=(
                    ServiceRecord("web", "default", "10.96.0.99"),
                    ServiceRecord("new", "default", "10.96.0.7"),
                )
            )
        )
        assert values(ask(srv.port, name)) == {"10.96.0.99"}
        assert values(ask(srv.port, name, tcp=True)) == {"10.96.0.99"}
        assert values(ask(srv.port, f"new.default.svc.{D}")) == {"10.96.0.7"}
        srv.update(ZoneData())
        assert ask(srv.port, name).rcode() == dns.rcode.NXDOMAIN


def test_update_with_bad_data_keeps_serving_the_old() -> None:
    zone = ZoneData(services=(ServiceRecord("web", "default", "10.96.0.10"),))
    with DNSServer(zone, DNSSettings(host=HOST, port=0)) as srv:
        with pytest.raises(ValueError, match="default/web"):
            srv.update(ZoneData(services=(ServiceRecord("web", "default", "10.96.0.300"),)))
        assert values(ask(srv.port, f"web.default.svc.{D}")) == {"10.96.0.10"}


def test_stop_releases_the_port() -> None:
    srv = DNSServer(ZONE, DNSSettings(host=HOST, port=0)).start()
    port = srv.port
    srv.stop()
    srv.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, port))


# ---- the zone alone (no sockets) -----------------------------------------------------------


def test_zone_srv_weights_split_100() -> None:
    zone = Zone(ZONE)
    answer = zone.resolve(f"big.other.svc.{D}", RType.SRV)
    assert answer is not None and answer.rcode == Rcode.NOERROR  # no ports: NODATA
    answer = zone.resolve(f"_pg._tcp.db.default.svc.{D}", RType.SRV)
    assert answer is not None
    assert {r.data.weight for r in answer.answer if isinstance(r.data, Srv)} == {50}
    assert zone.resolve("example.com", RType.A) is None
    assert zone.resolve(f"web.default.svc.{D}", RType.A, qclass=3) == zone.resolve(
        f"web.default.svc.{D}", RType.A, qclass=3
    )


def test_zone_cname_loops_end() -> None:
    zone = Zone(
        ZoneData(
            services=(
                ServiceRecord("a", "d", None, external_name=f"b.d.svc.{D}"),
                ServiceRecord("b", "d", None, external_name=f"a.d.svc.{D}"),
            )
        )
    )
    answer = zone.resolve(f"a.d.svc.{D}", RType.A)
    assert answer is not None
    assert [r.name for r in answer.answer] == [f"a.d.svc.{D}", f"b.d.svc.{D}"]


# ---- hostile input -------------------------------------------------------------------------


def _valid_queries() -> list[bytes]:
    names = [f"web.default.svc.{D}", f"_pg._tcp.db.default.svc.{D}", "example.com", D]
    out = []
    for i, name in enumerate(names):
        q = dns.message.make_query(name, "SRV" if "_" in name else "A", use_edns=i % 2 - 1)
        out.append(q.to_wire())
    return out


def _hostile(rng: random.Random, n: int) -> list[bytes]:
    """Random bytes, truncations, bit flips, bad label lengths, loops and wrong counts."""
    base = _valid_queries()
    header = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    crafted = [
        b"",
        b"\x00",
        header[:11],
        header,  # question missing
        header + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        header + b"\x03abc\xc0\x0c\x00\x01\x00\x01",  # pointer back into the question
        header + b"\x50" + b"a" * 80 + b"\x00\x00\x01\x00\x01",  # label length 0x50
        header + b"\x3f" + b"a" * 10,  # label runs past the end
        header + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name over 255
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 1) + base[0][12:],  # missing OPT
        struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0) + base[0][12:],  # qdcount 2
        struct.pack("!HHHHHH", 1, 0x0100, 1, 65535, 65535, 65535) + base[0][12:],
        struct.pack("!HHHHHH", 1, 0x0100, 0, 0, 0, 0),
        struct.pack("!HHHHHH", 1, 0x8100, 1, 0, 0, 0) + base[0][12:],  # a response
        base[1] + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\xff\xff",  # OPT rdlen past end
        base[0][:-4] + b"\xc0\x30\x00\x01",
    ]
    out = list(crafted)
    while len(out) < n:
        kind = rng.randrange(5)
        pkt = bytearray(rng.choice(base))
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 600)))
        elif kind == 1:
            out.append(bytes(pkt[: rng.randrange(len(pkt))]))
        elif kind == 2:
            for _ in range(rng.randrange(1, 6)):
                pkt[rng.randrange(len(pkt))] = rng.randrange(256)
            out.append(bytes(pkt))
        elif kind == 3:
            pkt[4:12] = rng.randbytes(8)  # counts
            out.append(bytes(pkt))
        else:
            at = rng.randrange(12, len(pkt))
            out.append(bytes(pkt[:at]) + rng.randbytes(rng.randrange(1, 40)) + bytes(pkt[at:]))
    return out


def test_parser_only_ever_raises_malformed() -> None:
    for pkt in _hostile(random.Random(7), 20000):
        try:
            q = wire.parse_query(pkt)
        except wire.Malformed as bad:
            assert bad.reply is None or bad.reply[:2] == pkt[:2]
            continue
        assert q.question_end <= len(pkt)


def test_malformed_query_gets_formerr(port: int) -> None:
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(header + b"\xc0\x0c\x00\x01\x00\x01", (HOST, port))
        reply = s.recv(512)
    rid, flags = struct.unpack("!HH", reply[:4])
    assert rid == 0x1234 and flags & 0x8000 and flags & 0xF == Rcode.FORMERR


def test_fuzz_then_still_answers(server: DNSServer, port: int) -> None:
    rng = random.Random(1234)
    packets = _hostile(rng, 4000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i, pkt in enumerate(packets):
            with contextlib.suppress(OSError):  # a datagram the kernel refuses
                s.sendto(pkt, (HOST, port))
            if i % 50 == 0:  # drain replies so our socket buffer never fills
                while True:
                    try:
                        s.recv(65535)
                    except BlockingIOError:
                        break
    for pkt in packets[:150]:
        with socket.create_connection((HOST, port), timeout=3) as conn:
            conn.sendall(struct.pack("!H", len(pkt)) + pkt)
            conn.settimeout(0.5)
            with contextlib.suppress(OSError):
                conn.recv(65535)
    for pkt in packets[150:200]:
        with socket.create_connection((HOST, port), timeout=3) as conn:
            conn.sendall(struct.pack("!H", len(pkt) + 100) + pkt)  # promises more than it sends
    assert values(ask(port, f"web.default.svc.{D}")) == {"10.96.0.10"}
    assert values(ask(port, f"web.default.svc.{D}", tcp=True)) == {"10.96.0.10"}
    assert dig_short(port, f"db-0.db.default.svc.{D}") == ["10.244.1.5"]

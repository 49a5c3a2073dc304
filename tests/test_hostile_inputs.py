"""Issue 18's cases that no other test file covers: a store written by a newer gitorch, the
`gitorch dns` command (not only its server class) under a padding flood, credentials in a
notification URL, and the README's Security section kept to the limits the code enforces."""

from __future__ import annotations

import contextlib
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dns.edns
import dns.message
import pytest

from gitorch.cli.commands import dns as dns_command
from gitorch.cli.commands import serve as serve_command
from gitorch.dns import server as dns_server
from gitorch.dns.limits import IPV4_PREFIX, IPV6_PREFIX
from gitorch.dns.wire import MIN_UDP
from gitorch.nodes.ssh import SSHOptions
from gitorch.server import notifications
from gitorch.server.http import MAX_BODY, Limits
from gitorch.source.desired import load
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.samples import NAMESPACE, gitorch

README = Path(__file__).resolve().parent.parent / "README.md"

# ---- a store of another schema version ------------------------------------------------------


def _schema(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def test_a_store_written_by_a_newer_gitorch_stops_every_command(repo: GitRepo, _state_dir: Path) -> None:
    """An older CLI (or controller) never writes to, nor "migrates", a newer schema: one line naming
    both versions, and the store is left as it was. (An older store: tests/test_service.py.)"""
    repo.commit("ns", {"ns.yaml": NAMESPACE})
    assert gitorch("events", cwd=repo.path).returncode == 0  # an empty store is created at head
    db = _state_dir / "gitorch.db"
    head = _schema(db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    for args in (["status"], ["events", "-o", "json"], ["get", "pods"], ["apply"], ["migrate"],
                 ["serve", "--listen", "off", "--interval", "3600"]):
        res = subprocess.run([sys.executable, "-m", "gitorch", *args], cwd=repo.path, text=True,
                             capture_output=True, timeout=60, check=False)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        [line] = [x for x in res.stderr.splitlines() if x.strip()]
        assert "version 9999" in line and f"(schema {head})" in line and "newer gitorch" in line, (args, line)
    assert _schema(db) == "9999"


# ---- `gitorch dns` under a padding flood ----------------------------------------------------


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _padded(name: str, padding: int) -> bytes:
    options: list[dns.edns.Option] = []
    if padding:
        options.append(dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\0" * padding))
    return dns.message.make_query(name, "A", use_edns=0, payload=1232, options=options).to_wire(max_size=65535)


def _ask(port: int, wire: bytes) -> dns.message.Message | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(wire, ("127.0.0.1", port))
        try:
            return dns.message.from_wire(s.recv(65535))
        except TimeoutError:
            return None


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_gitorch_dns_memory_stays_bounded_under_a_padding_flood(repo: GitRepo) -> None:
    """Issue 18's "Done means", through the command operators run: 1,500 queries padded with
    60 KB (88 MB of growth before) are answered and forgotten."""
    repo.commit("ns", {"ns.yaml": NAMESPACE})
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gitorch", "dns", "--listen", f"127.0.0.1:{port}"],
                            cwd=repo.path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while _ask(port, _padded("web.default.svc.cluster.local", 0)) is None:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "gitorch dns did not answer"

        def flood(start: int, count: int) -> None:
            for i in range(start, start + count):
                wire = _padded(f"q{i}.default.svc.cluster.local", 60_000 + i % 1000)
                reply = _ask(port, wire)
                assert reply is not None and reply.id == dns.message.from_wire(wire).id, i

        flood(0, 100)  # allocator warm-up
        before = _rss_kib(proc.pid)
        flood(100, 1500)
        grown_mib = (_rss_kib(proc.pid) - before) / 1024
        assert grown_mib < 16, f"gitorch dns grew {grown_mib:.1f} MiB under 1,500 padded queries"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- credentials in a notification URL ------------------------------------------------------


def test_credentials_in_a_notification_url_are_never_printed(repo: GitRepo) -> None:
    """A target is printed (in serve's log: notified, failed) by its name and host only: the
    URL's path often holds a token, and a user:password part is credentials."""
    cluster = (
        "apiVersion: gitorch.dev/v1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  notifications:\n"
        "    - name: chat\n      url: https://bot:pa55-canary@hooks.example.com:8443/T0KEN-canary/x\n"
        "    - name: plain\n      url: http://hooks.example.com/T0KEN-canary\n"
    )
    repo.commit("cluster", {"cluster.yaml": cluster})
    state = load(open_repository(repo.path), None)
    assert state.ok, state.diagnostics
    printed = [t.where for t in notifications.targets(state)]
    assert printed == ["chat (hooks.example.com:8443)", "plain (hooks.example.com)"]


# ---- the README's Security section states the limits the code enforces ----------------------


def _security_section() -> str:
    text = README.read_text()
    start = text.index("\n## Security\n")
    end = text.find("\n## ", start + 1)
    return " ".join(text[start : end if end > 0 else None].split())  # table cells and wrapped lines alike


def _ordinal(n: int) -> str:
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _default(command: object, name: str) -> str:
    return str(next(p.default for p in command.params if p.name == name))  # type: ignore[attr-defined]


def _stated_limits() -> list[str]:
    http, dnss, ssh = Limits(), dns_server.DNSSettings(), SSHOptions()
    return [
        # the HTTP listener
        f"| {_default(serve_command, 'listen')} |",
        f"{http.header_timeout:g} s to send a request's headers",
        f"{http.max_header_bytes // 1024} KiB of headers",
        f"{http.max_connections} connections (one more is closed at once)",
        f"{http.keep_alive} s keep-alive",
        f"at most {MAX_BODY // (1024 * 1024)} MB, within {http.body_timeout:g} s",
        # the cluster DNS
        f"{_default(dns_command, 'listen')} for `gitorch dns`",
        f"{MIN_UDP} bytes without EDNS, {dnss.max_udp_payload:,} at most",
        f"{dnss.rate_limit:g} replies/s per /{IPV4_PREFIX} (/{IPV6_PREFIX} for IPv6)",
        f"every {_ordinal(dnss.rate_limit_slip)} limited reply a TC slip",
        f"({dnss.rate_limit_table:,} networks tracked)",
        f"reply cache {dnss.cache_bytes >> 20} MiB",
        f"at most {dns_server._MAX_PENDING:,} queries or {dns_server._MAX_PENDING_BYTES >> 20} MiB waiting",
        f"TCP: {dnss.tcp_idle_timeout:g} s to complete each query, {dnss.max_tcp_connections} connections",
        f"{dnss.max_tcp_per_client} per client address",
        # SSH to nodes
        f"{ssh.connect_timeout:g} s to connect and log in, {ssh.retries} tries, {ssh.command_timeout:g} s per command, "
        f"{ssh.max_connecting} logins at once",
        f"at most {ssh.max_reply_bytes >> 20} MiB, else abandoned",
        # notifications
        f"only 307/308 redirects, {notifications._Redirects.max_redirections} at most",
    ]


@pytest.mark.parametrize("phrase", _stated_limits(), ids=lambda p: re.sub(r"\W+", "-", p)[:40].strip("-"))
def test_the_security_section_states_the_limits_in_force(phrase: str) -> None:
    """A default changed in the code without the README (or the other way round) fails here."""
    assert phrase in _security_section()

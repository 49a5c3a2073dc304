"""The rendered HAProxy config, run by a real HAProxy in front of real HTTP backends, answers
every request as gitorch.model.routes.choose says (Kubernetes' semantics), serves TLS by
SNI from a test CA's certificates, and redirects HTTP to HTTPS for hosts with TLS."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gitorch.model.routes import Backend, choose, default_backend, defaults, routes
from gitorch.reconcile.haproxy import Certificate, render
from tests.tls import certificate_pem, key_pem, make_ca, new_key
from tests.waiting import wait_until

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
pytestmark = pytest.mark.skipif(
    HAPROXY is None and not os.environ.get("CI"),
    reason="haproxy is not installed (scripts/bootstrap.sh installs it; CI always runs this)",
)

SERVICES = ["exact", "prefix", "api", "www", "wild", "fallback"]


def _backend(name: str, port: int | str = 80) -> dict:
    key = "number" if isinstance(port, int) else "name"
    return {"service": {"name": name, "port": {key: port}}}


SPEC = {
    "defaultBackend": _backend("fallback"),
    "tls": [{"hosts": ["www.shop.test"], "secretName": "www-tls"}],
    "rules": [
        {
            "host": "www.shop.test",
            "http": {
                "paths": [
                    {"path": "/", "pathType": "Prefix", "backend": _backend("www", "http")},
                    {"path": "/api", "pathType": "Prefix", "backend": _backend("api")},
                    {"path": "/api/login", "pathType": "Exact", "backend": _backend("exact")},
                ]
            },
        },
        {
            "host": "*.shop.test",
            "http": {
                "paths": [
                    {"path": "/", "pathType": "ImplementationSpecific", "backend": _backend("wild")},
                ]
            },
        },
        {
            "http": {
                "paths": [
                    {"path": "/aaa/bbb", "pathType": "Prefix", "backend": _backend("prefix")},
                    {"path": "/foo", "pathType": "Exact", "backend": _backend("exact")},
                ]
            }
        },
    ],
}

# A second Ingress with a host of its own and a defaultBackend: that host's unmatched paths go there
# (ingress-nginx's behaviour); every other unmatched request still goes to web's, the catch-all.
ADMIN = {
    "defaultBackend": _backend("api"),
    "rules": [{"host": "admin.shop.test",
               "http": {"paths": [{"path": "/login", "pathType": "Exact", "backend": _backend("exact")}]}}],
}
INGRESSES = [("shop", "web", SPEC), ("shop", "zz-admin", ADMIN)]

REQUESTS = [
    ("admin.shop.test", "/login"),
    ("admin.shop.test", "/other"),
    ("www.shop.test", "/"),
    ("www.shop.test", "/api"),
    ("www.shop.test", "/api/"),
    ("www.shop.test", "/apix"),
    ("www.shop.test", "/api/login"),
    ("www.shop.test", "/api/login/x"),
    ("WWW.shop.test:80", "/api/v1"),
    ("img.shop.test", "/x"),
    ("a.b.shop.test", "/x"),
    ("shop.test", "/aaa/bbb"),
    ("other.test", "/aaa/bbb"),
    ("other.test", "/aaa/bbb/"),
    ("other.test", "/aaa/bbb/ccc"),
    ("other.test", "/aaa/bbbxyz"),
    ("other.test", "/aaa"),
    ("other.test", "/foo"),
    ("other.test", "/foo/"),
    ("other.test", "/"),
]


class _Named(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pem_pair(tmp: Path) -> tuple[Path, str]:
    """A test CA (its certificate's file) and the www.shop.test certificate+key it signed (PEM)."""
    ca_pem, ca = make_ca()
    ca_file = tmp / "ca.pem"
    ca_file.write_bytes(ca_pem)
    key = new_key()
    return ca_file, (certificate_pem(key, ["www.shop.test"], ca) + key_pem(key)).decode()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    servers = []
    endpoints: dict[Backend, list[tuple[str, int]]] = {}
    for name in SERVICES:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        srv.name = name  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        for port in (80, "http"):
            endpoints[Backend("shop", name, port)] = [("127.0.0.1", srv.server_address[1])]
    ca_file, pem = _pem_pair(tmp_path)
    http_port, https_port = _free_port(), _free_port()
    chosen = defaults(INGRESSES)
    rendered = render(
        [r for ns, name, spec in INGRESSES for r in routes(ns, name, spec)],
        endpoints,
        chosen.catch_all,
        [Certificate("shop", "www-tls", pem, ("www.shop.test",))],
        http_port=http_port,
        https_port=https_port,
        directory=str(tmp_path),
        host_defaults=chosen.by_host,
    )
    assert "PRIVATE KEY" not in rendered.config and "PRIVATE" not in repr(rendered)
    (tmp_path / "certs").mkdir()
    for name, text in rendered.files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "haproxy.cfg").write_text(rendered.config)
    assert HAPROXY is not None
    check = subprocess.run([HAPROXY, "-c", "-f", "haproxy.cfg"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        [HAPROXY, "-W", "-db", "-f", "haproxy.cfg"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until("haproxy listening", lambda: _answers(http_port), timeout=20)
        yield http_port, https_port, ca_file
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def _answers(port: int) -> bool:
    try:
        _get(port, "other.test", "/")
    except OSError:
        return False
    return True


def _get(port: int, host: str, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("Location") or ""
    finally:
        conn.close()


def test_routes_as_kubernetes_says(proxy: tuple[int, int, Path]) -> None:
    http_port, _, _ = proxy
    rs = [r for ns, name, spec in INGRESSES for r in routes(ns, name, spec)]
    chosen = defaults(INGRESSES)
    assert chosen.catch_all == default_backend("shop", SPEC) and chosen.unused == ()
    got, want = {}, {}
    for host, path in REQUESTS:
        if host.lower().startswith("www.shop.test"):
            continue  # has TLS: checked over HTTPS below
        status, body, _ = _get(http_port, host, path)
        got[(host, path)] = body if status == 200 else status
        answer = choose(rs, host.split(":")[0], path, chosen.catch_all, chosen.by_host)
        want[(host, path)] = answer.service if answer else 404
    assert got == want
    assert set(want.values()) >= {"wild", "prefix", "exact", "fallback", "api"}
    assert want[("admin.shop.test", "/other")] == "api"


def test_tls_by_sni_and_redirect(proxy: tuple[int, int, Path]) -> None:
    http_port, https_port, ca_file = proxy
    status, _, location = _get(http_port, "www.shop.test", "/api/v1?q=1")
    assert (status, location) == (308, "https://www.shop.test/api/v1?q=1")
    ctx = ssl.create_default_context(cafile=str(ca_file))
    rs = routes("shop", "web", SPEC)
    for host, path in REQUESTS:
        if not host.lower().startswith("www.shop.test"):
            continue
        conn = http.client.HTTPSConnection("127.0.0.1", https_port, timeout=10, context=ctx)
        sock = socket.create_connection(("127.0.0.1", https_port), timeout=10)
        conn.sock = ctx.wrap_socket(sock, server_hostname="www.shop.test")  # verifies the chain and the name
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        answer = choose(rs, "www.shop.test", path)
        assert (resp.status, body) == (200, answer.service if answer else None), (host, path)

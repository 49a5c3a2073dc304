"""The webhook listener under hostile clients, over real sockets: idle and slowloris connections
are cut off, bodies are capped and read only after the path and headers pass, /hooks/wake asks
for the token, and connections do not cost a thread each."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gitorch.server.http import MAX_BODY, Endpoint, HttpServer, Limits, Reply, Site
from gitorch.server.webhooks import Handlers, endpoints
from tests.waiting import wait_until

SECRET = "webhook-secret-value"
TOKEN = "wake-token-0123456789abcdef"
LIMITS = Limits(header_timeout=1.0, body_timeout=1.0, keep_alive=1, max_connections=600)


class Listener:
    """The webhook endpoints on a real HttpServer, recording the wakes they ask for."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.wakes: list[str] = []
        self.results: list[tuple[str, str]] = []
        site = Site()
        handlers = Handlers(wake=self.wakes.append, webhook_result=lambda p, r: self.results.append((p, r)))
        site.add("webhooks", endpoints(handlers, secret=SECRET, branch="main", wake_token=TOKEN))
        site.add("metrics", [Endpoint("/metrics", lambda _: Reply(200, b"# metrics\n"))])
        self.server = HttpServer("127.0.0.1", 0, site, limits)
        self.server.start()
        self.port = self.server.address[1]

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.server.close()


def answer(sock: socket.socket, method: str = "GET") -> http.client.HTTPResponse:
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    resp.read()
    return resp


def request(listener: Listener, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (EOF or reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_are_released_and_the_server_still_answers(listener: Listener) -> None:
    threads_before = threading.active_count()
    idle = [listener.connect() for _ in range(500)]
    try:
        wait_until("500 connections accepted", lambda: listener.server.connections, timeout=30, interval=0.05,
                   accept=lambda got: got == 500)
        # An event loop, not a thread per connection.
        assert threading.active_count() <= threads_before + 1
        wait_until("the idle connections closed by the server", lambda: listener.server.connections, timeout=30,
                   interval=0.05, accept=lambda got: got == 0)
        assert all(closed_by_server(s) for s in idle)
    finally:
        for s in idle:
            s.close()
    assert request(listener, "GET", "/healthz", {}) == (200, "ok\n")
    assert threading.active_count() <= threads_before + 1


def test_connections_past_the_cap_are_closed_at_once() -> None:
    capped = Listener(Limits(header_timeout=30.0, max_connections=10))
    held = [capped.connect() for _ in range(10)]
    try:
        wait_until("10 connections accepted", lambda: capped.server.connections, timeout=30, interval=0.05,
                   accept=lambda got: got == 10)
        extra = capped.connect()
        assert closed_by_server(extra)  # at once: the header timeout is 30 s and recv waits 10 s at most
        extra.close()
        assert capped.server.connections == 10
    finally:
        for s in held:
            s.close()
        capped.server.close()


def test_a_body_over_25_mb_is_refused_before_it_is_read(listener: Listener) -> None:
    sock = listener.connect()
    head = (
        "POST /hooks/git HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\n"
        f"Content-Length: {26 * 1024 * 1024}\r\n\r\n"
    )
    sock.sendall(head.encode())  # and not one byte of the body
    resp = answer(sock, "POST")
    assert resp.status == 413
    assert resp.getheader("connection") == "close" and closed_by_server(sock)
    sock.close()
    assert MAX_BODY == 25 * 1024 * 1024
    assert listener.wakes == []


def test_an_unknown_path_or_method_is_answered_before_any_body(listener: Listener) -> None:
    for line, status in (("POST /nope", 404), ("PUT /hooks/git", 405), ("GET /hooks/wake", 405)):
        sock = listener.connect()
        sock.sendall(f"{line} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode())
        resp = answer(sock, "POST")
        assert resp.status == status, line
        # The body was never read, so the connection is closed rather than drained.
        assert resp.getheader("connection") == "close" and closed_by_server(sock)
        sock.close()


def test_an_unsigned_webhook_is_refused_before_its_body(listener: Listener) -> None:
    for headers, provider in (("", "unknown"), ("X-GitHub-Event: push\r\n", "github"),
                              ("X-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: wrong\r\n", "gitlab")):
        sock = listener.connect()
        sock.sendall(f"POST /hooks/git HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 1000\r\n\r\n".encode())
        resp = answer(sock, "POST")
        assert resp.status == 401
        assert closed_by_server(sock)
        sock.close()
        assert listener.results[-1] == (provider, "unauthorized")
    assert listener.wakes == []


def test_wake_needs_the_token(listener: Listener) -> None:
    assert request(listener, "POST", "/hooks/wake", {})[0] == 401
    assert request(listener, "POST", "/hooks/wake", {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    assert request(listener, "POST", "/hooks/wake", {"Authorization": TOKEN})[0] == 401  # no scheme
    assert listener.wakes == []
    assert request(listener, "POST", "/hooks/wake", {"Authorization": f"Bearer {TOKEN}"}) == (202, "reconciling\n")
    assert listener.wakes == ["post-receive hook"]


def test_a_slowloris_client_is_cut_off(listener: Listener) -> None:
    sock = listener.connect()
    sock.sendall(b"POST /hooks/git HTTP/1.1\r\nHost: x\r\n")
    sent = 0
    try:
        for _ in range(100):  # a header byte every 0.2 s: 20 s, far past the 1 s header deadline
            sock.sendall(b"X")
            sent += 1
            time.sleep(0.2)
        cut = False
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    cut = cut or closed_by_server(sock)
    sock.close()
    assert cut and sent < 100
    assert listener.server.connections == 0


def test_a_kept_alive_connection_dribbling_its_next_request_is_cut_off(listener: Listener) -> None:
    sock = listener.connect()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer(sock).status == 200
    try:
        for _ in range(100):
            sock.sendall(b"G")
            time.sleep(0.2)
        cut = False
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    assert cut or closed_by_server(sock)
    sock.close()


def test_a_slow_body_gets_408(listener: Listener) -> None:
    sock = listener.connect()
    sock.sendall(b"POST /hooks/git HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
                 b"X-Hub-Signature-256: sha256=00\r\nContent-Length: 100\r\n\r\n")
    done = threading.Event()

    def dribble() -> None:
        try:
            for _ in range(100):  # 20 s of body, far past the 1 s body deadline
                if done.wait(0.2):
                    return
                sock.sendall(b"{")
        except OSError:
            pass

    feeder = threading.Thread(target=dribble)
    feeder.start()
    try:
        resp = answer(sock, "POST")
    finally:
        done.set()
        feeder.join()
    assert resp.status == 408
    sock.close()
    assert listener.wakes == []


def test_oversized_headers_are_refused(listener: Listener) -> None:
    sock = listener.connect()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (LIMITS.max_header_bytes + 1024))
    # h11 measures what it holds of an unfinished request: the rest never needs to come.
    assert answer(sock).status == 400
    sock.close()


def test_a_signed_push_wakes_and_other_routes_still_answer(listener: Listener) -> None:
    import hashlib
    import hmac
    import json

    body = json.dumps({"ref": "refs/heads/main"}).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sig, "Content-Type": "application/json"}
    assert request(listener, "POST", "/hooks/git", headers, body) == (202, "reconciling\n")
    assert listener.wakes == ["github webhook"]
    assert request(listener, "GET", "/metrics", {}) == (200, "# metrics\n")

"""Endpoint changes through HAProxy's runtime API: the slot commands are right (pure), and a
real HAProxy under a steady request stream rolls every endpoint of a backend with 0 failed
requests and no reload."""

from __future__ import annotations

import socket
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from gitorch.model.routes import Backend, routes
from gitorch.reconcile.haproxy import RUNTIME_SOCKET, initial_slots, render, runtime_commands
from tests.test_haproxy_rendering import HAPROXY, _free_port, _get, _Named, pytestmark  # noqa: F401
from tests.waiting import wait_until

B = Backend("shop", "web", 80)
A1, A2, A3 = ("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 8080)


def test_added_endpoints_take_free_slots_before_old_ones_leave() -> None:
    current = initial_slots([A2, A1])
    assert current[:3] == (A1, A2, None)
    commands, table = runtime_commands(B, current, [A2, A3]) or ([], ())
    assert commands == [
        "set server be_shop_web_80/s3 addr 10.0.0.3 port 8080",
        "set server be_shop_web_80/s3 state ready",
        "set server be_shop_web_80/s1 state maint",
    ]
    assert table[:3] == (None, A2, A3)
    assert runtime_commands(B, table, [A2, A3]) == ([], table)


def test_too_many_endpoints_need_a_reload() -> None:
    current = initial_slots([A1])
    many = [(f"10.0.1.{i}", 80) for i in range(len(current))]
    assert runtime_commands(B, current, many) is None


def _serve(name: str) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
    srv.name = name  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _runtime(sock_path: Path, commands: list[str]) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall((";".join(commands) + "\n").encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def test_rolling_every_endpoint_without_a_failed_request(tmp_path: Path) -> None:
    old = [_serve("v1") for _ in range(3)]
    spec = {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}
    eps = [("127.0.0.1", s.server_address[1]) for s in old]
    port = _free_port()
    rendered = render(routes("shop", "web", spec), {B: eps}, B, http_port=port, directory=str(tmp_path))
    (tmp_path / "haproxy.cfg").write_text(rendered.config)
    assert HAPROXY is not None
    proc = subprocess.Popen(
        [HAPROXY, "-W", "-db", "-f", "haproxy.cfg"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    new: list[ThreadingHTTPServer] = []
    stop = threading.Event()
    results: list[tuple[int, str] | str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                status, body, _ = _get(port, "shop.test", "/")
                results.append((status, body))
            except OSError as e:
                results.append(repr(e))

    try:
        wait_until(
            "haproxy answering",
            lambda: (tmp_path / RUNTIME_SOCKET).exists() and _get(port, "h", "/")[0] == 200,
            timeout=20,
        )
        pid_before = _runtime(tmp_path / RUNTIME_SOCKET, ["show info"])
        thread = threading.Thread(target=client)
        thread.start()
        table = initial_slots(eps)
        for srv in list(old):  # one at a time, as a Deployment's rolling update does
            wait_until("requests flowing", lambda: len(results), timeout=10)
            replacement = _serve("v2")
            new.append(replacement)
            wanted = [("127.0.0.1", s.server_address[1]) for s in old if s is not srv] + [
                ("127.0.0.1", s.server_address[1]) for s in new
            ]
            change = runtime_commands(B, table, wanted)
            assert change is not None
            commands, table = change
            reply = _runtime(tmp_path / RUNTIME_SOCKET, commands)
            assert "No such" not in reply and "Require" not in reply, reply
            old.remove(srv)
            seen = len(results)
            wait_until("more requests after the change", lambda seen=seen: len(results) > seen + 20, timeout=20)
            srv.shutdown()
            srv.server_close()
        seen = len(results)
        wait_until("requests after the roll", lambda: len(results) > seen + 50, timeout=20)
        stop.set()
        thread.join(timeout=20)
        failed = [r for r in results if not (isinstance(r, tuple) and r[0] == 200)]
        assert failed == [] and len(results) > 100
        assert {r[1] for r in results[-20:] if isinstance(r, tuple)} == {"v2"}
        assert (
            _runtime(tmp_path / RUNTIME_SOCKET, ["show info"]).split("Pid:")[1].split()[0]
            == pid_before.split("Pid:")[1].split()[0]
        ), "the worker was replaced: a reload happened"
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=20)
        for s in old + new:
            s.shutdown()
            s.server_close()

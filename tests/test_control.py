"""The control socket (server/control.py): bounded, owner-only, and never in the way: a command
that cannot use it does the work itself."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.server import control
from gitorch.server.control import ControlSocket


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    gate = threading.Event()

    def echo(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        if request.get("hold"):
            gate.wait(10)
        return {"ok": True, "echo": request.get("n")}

    def boom(request: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("handler failed")

    sock = ControlSocket(control.socket_path(tmp_path), {"echo": echo, "boom": boom}).start()
    try:
        yield tmp_path, seen
    finally:
        gate.set()
        sock.close()


def raw(path: Path, data: bytes, timeout: float = 10) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        out = b""
        try:
            conn.sendall(data)
            while chunk := conn.recv(65536):
                out += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed by the server without reading it all: the answer is what came
        return out


def test_a_request_is_answered_and_the_socket_is_the_owners_only(served: tuple[Path, list[dict[str, Any]]]) -> None:
    state_dir, seen = served
    path = control.socket_path(state_dir)
    assert stat.S_ISSOCK(os.lstat(path).st_mode) and os.lstat(path).st_mode & 0o777 == 0o600
    assert control.ask(state_dir, {"verb": "echo", "n": 7}, timeout=5) == {"ok": True, "echo": 7}
    assert seen == [{"verb": "echo", "n": 7}]


def test_bad_requests_get_an_error_and_the_socket_keeps_serving(served: tuple[Path, list[dict[str, Any]]]) -> None:
    state_dir, _ = served
    path = control.socket_path(state_dir)
    assert json.loads(raw(path, b"not json\n"))["ok"] is False
    assert json.loads(raw(path, b'["a list"]\n'))["ok"] is False
    assert "unknown verb" in json.loads(raw(path, b'{"verb": "rm -rf"}\n'))["error"]
    assert "handler failed" in json.loads(raw(path, b'{"verb": "boom"}\n'))["error"]
    assert control.ask(state_dir, {"verb": "boom"}, timeout=5) is None  # not ok: the caller does it itself
    # Over MAX_REQUEST bytes without a newline: closed without an answer.
    assert raw(path, b"x" * (control.MAX_REQUEST + 10)) == b""
    assert control.ask(state_dir, {"verb": "echo", "n": 1}, timeout=5) == {"ok": True, "echo": 1}


def test_connections_beyond_the_limit_are_closed_at_once(served: tuple[Path, list[dict[str, Any]]]) -> None:
    state_dir, seen = served
    path = control.socket_path(state_dir)
    held = []
    for _ in range(control.MAX_CONNECTIONS):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(path))
        conn.sendall(b'{"verb": "echo", "hold": true}\n')
        held.append(conn)
    try:
        from tests.waiting import wait_until

        wait_until("every slot busy", lambda: len(seen), timeout=10, accept=lambda n: n == control.MAX_CONNECTIONS)
        assert raw(path, b'{"verb": "echo", "n": 2}\n', timeout=5) == b""  # no slot: closed, no answer
    finally:
        for conn in held:
            conn.close()


def test_no_socket_or_nobody_on_it_means_no_answer(tmp_path: Path) -> None:
    assert control.ask(tmp_path, {"verb": "echo"}, timeout=2) is None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(control.socket_path(tmp_path)))
    stale.close()  # a socket file a killed serve left behind
    assert control.ask(tmp_path, {"verb": "echo"}, timeout=2) is None
    taken = ControlSocket(control.socket_path(tmp_path), {}).start()  # taken over
    try:
        with pytest.raises(OSError, match="another serve"):
            ControlSocket(control.socket_path(tmp_path), {}).start()
    finally:
        taken.close()

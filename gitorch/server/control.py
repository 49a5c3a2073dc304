"""The control socket: a running `serve` answers commands run on the same machine.

`serve` already holds an SSH connection (and a long-lived agent process) to every node it
leads, so `gitorch nodes` asks it instead of connecting to every node again: one round trip
per node over open connections instead of a key exchange each. The socket is a Unix socket in
the state folder (mode 0600: only its owner, who could read the store anyway), one JSON
request line and one JSON answer line per connection. Bounded like every listener: a
request of at most MAX_REQUEST bytes, read within READ_TIMEOUT seconds, at most
MAX_CONNECTIONS at once (more are closed at once).

A command that finds no socket, or no serve behind it, or one that cannot answer (standing
by: it holds no connections), does the work itself: the socket only ever makes it faster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
MAX_ANSWER = 16 * 1024 * 1024
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 8

Handler = Callable[[dict[str, Any]], dict[str, Any]]

log = logging.getLogger(__name__)


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class ControlSocket:
    """Serves `handlers` (verb -> function of the request) on a Unix socket until closed."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._sock: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> ControlSocket:
        """Bind (taking over a socket file no process answers on), or raise OSError."""
        if _answers(self.path):
            raise OSError(f"{self.path}: another serve already answers on it")
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # left by a serve that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600: no window in which others may connect
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(MAX_CONNECTIONS)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="gitorch-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                conn.close()  # too many at once: the command does the work itself
                continue
            threading.Thread(target=self._serve, args=(conn,), name="gitorch-control-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(READ_TIMEOUT)
                answer = self._answer(_read_line(conn, MAX_REQUEST))
                conn.sendall(json.dumps(answer).encode() + b"\n")
        except (OSError, ValueError) as exc:
            log.debug("control socket: %s", exc)
        finally:
            self._slots.release()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not a JSON request"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "not a JSON object"}
        handler = self.handlers.get(str(request.get("verb")))
        if handler is None:
            return {"ok": False, "error": f"unknown verb {str(request.get('verb'))[:40]!r}"}
        try:
            return handler(request)
        except Exception as exc:  # one bad request never takes the socket down
            log.warning("control socket: %s failed: %s", request.get("verb"), exc)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _read_line(conn: socket.socket, limit: int) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError(f"request over {limit} bytes")
    return data.split(b"\n", 1)[0]


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def ask(state_dir: Path, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """The running serve's answer, or None: no socket, nobody on it, no answer in time, or
    an answer that is not ok (the caller then does the work itself)."""
    path = socket_path(state_dir)
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(_read_line(conn, MAX_ANSWER))
    except (OSError, ValueError) as exc:
        log.debug("control socket %s: %s", path, exc)
        return None
    return answer if isinstance(answer, dict) and answer.get("ok") else None

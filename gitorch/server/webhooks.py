"""The HTTP listener of `gitorch serve`: Git push webhooks (GitHub, GitLab, Gitea), a local
wake-up for the post-receive hook, and `/metrics`. Standard library only."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
LOCAL = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


@dataclass(frozen=True)
class Verdict:
    """What a webhook request is: `status` is the HTTP answer, `wake` whether to run a pass."""

    status: int
    result: str  # accepted | ignored | unauthorized | bad_request
    provider: str
    message: str

    @property
    def wake(self) -> bool:
        return self.result == "accepted"


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def verify(headers: Mapping[str, str], body: bytes, secret: str | None, branch: str | None) -> Verdict:
    """Check a push webhook's signature and say what to do with it (pure)."""
    h = _headers(headers)
    if "x-gitlab-token" in h or "x-gitlab-event" in h:
        provider, event = "gitlab", h.get("x-gitlab-event", "")
        given = h.get("x-gitlab-token", "")
        ok = bool(secret) and hmac.compare_digest(given.encode(), (secret or "").encode())
        is_push = event in ("Push Hook", "System Hook")
    elif "x-gitea-signature" in h or "x-gitea-event" in h:
        provider, event = "gitea", h.get("x-gitea-event", "")
        given = h.get("x-gitea-signature", "")
        ok = bool(secret) and hmac.compare_digest(given.lower().encode(), _hmac_hex(secret or "", body).encode())
        is_push = event == "push"
    elif "x-hub-signature-256" in h or "x-github-event" in h:
        provider, event = "github", h.get("x-github-event", "")
        given = h.get("x-hub-signature-256", "")
        expected = "sha256=" + _hmac_hex(secret or "", body)
        ok = bool(secret) and hmac.compare_digest(given.lower().encode(), expected.encode())
        is_push = event == "push"
    else:
        return Verdict(401, "unauthorized", "unknown", "no GitHub, GitLab or Gitea signature header")
    if not secret:
        return Verdict(401, "unauthorized", provider, "no webhook secret is configured on this controller")
    if not ok:
        return Verdict(401, "unauthorized", provider, "bad or missing signature")
    if not is_push:
        return Verdict(200, "ignored", provider, f"event {event!r} ignored (only push events deploy)")
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return Verdict(400, "bad_request", provider, "the body is not JSON")
    ref = payload.get("ref") if isinstance(payload, dict) else None
    if branch and isinstance(ref, str) and ref != f"refs/heads/{branch}":
        return Verdict(202, "ignored", provider, f"push to {ref} ignored (watching {branch})")
    return Verdict(202, "accepted", provider, "reconciling")


@dataclass
class Handlers:
    """What the listener calls; each runs in the request's thread and must be quick."""

    wake: Callable[[str], None]
    """Run a reconcile pass now; the argument says why (for the log)."""
    metrics: Callable[[], tuple[bytes, str]] | None = None
    """The `/metrics` body and its content type."""
    webhook_result: Callable[[str, str], None] | None = None
    """Called with (provider, result) for every /hooks/git request."""


class Listener:
    """A small threaded HTTP server; `close()` stops it."""

    def __init__(
        self, host: str, port: int, handlers: Handlers, *, secret: str | None, branch: str | None
    ) -> None:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "gitorch"

            def log_message(self, format: str, *args: object) -> None:
                pass  # requests are counted in metrics; headers (signatures) are never logged

            def _answer(self, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
                data = text.encode() if isinstance(text, str) else text
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes | None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    return None
                if length < 0 or length > MAX_BODY:
                    return None
                return self.rfile.read(length) if length else b""

            def do_POST(self) -> None:
                path = self.path.split("?", 1)[0]
                body = self._body()
                if body is None:
                    self._answer(413, "body missing or too large\n")
                    return
                if path == "/hooks/git":
                    verdict = verify(dict(self.headers.items()), body, listener.secret, listener.branch)
                    if listener.handlers.webhook_result is not None:
                        listener.handlers.webhook_result(verdict.provider, verdict.result)
                    if verdict.wake:
                        listener.handlers.wake(f"{verdict.provider} webhook")
                    self._answer(verdict.status, verdict.message + "\n")
                elif path == "/hooks/wake":
                    if self.client_address[0] not in LOCAL:
                        self._answer(403, "/hooks/wake only answers 127.0.0.1\n")
                        return
                    listener.handlers.wake("post-receive hook")
                    self._answer(202, "reconciling\n")
                else:
                    self._answer(404, "not found\n")

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and listener.handlers.metrics is not None:
                    data, ctype = listener.handlers.metrics()
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif path == "/healthz":
                    self._answer(200, "ok\n")
                else:
                    self._answer(404, "not found\n")

        self.handlers = handlers
        self.secret = secret
        self.branch = branch
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="gitorch-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def parse_listen(value: str) -> tuple[str, int] | None:
    """`HOST:PORT` (or `[v6]:PORT`) to a pair; `off` or an empty string disables the listener."""
    if value.strip().lower() in ("", "off", "none"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8090 (or 'off')")
    return host.strip("[]") or "127.0.0.1", int(port)

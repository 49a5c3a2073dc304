"""Notifications and redirects, between two real HTTP servers on two loopback addresses: a
target's headers (tokens) reach only the host they were configured for."""

from __future__ import annotations

import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gitorch.server.notifications import Notification, Target, send

TOKEN = "Bearer notification-token-value"
CUSTOM = "custom-secret-header-value"


class Receiver:
    """Records what reaches /final; other paths answer with a redirect given by `redirects`."""

    def __init__(self, host: str) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.redirects: dict[str, tuple[int, str]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path in outer.redirects:
                    code, location = outer.redirects[self.path]
                    self.send_response(code)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.received.append((self.command, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hosts() -> Iterator[tuple[Receiver, Receiver]]:
    here, elsewhere = Receiver("127.0.0.1"), Receiver("127.0.0.2")
    yield here, elsewhere
    here.close()
    elsewhere.close()


def target(url: str) -> Target:
    return Target("chat", url, frozenset({"deployed"}), headers=(("Authorization", TOKEN), ("X-Chat-Key", CUSTOM)))


NOTE = Notification("deployed", "gitorch: deployed abc1234", "abc1234")


def test_a_redirect_on_the_same_host_keeps_the_headers_and_the_post(hosts: tuple[Receiver, Receiver]) -> None:
    here, _ = hosts
    here.redirects["/hook"] = (307, f"{here.url}/final")
    send(target(f"{here.url}/hook"), NOTE)
    [(method, headers, body)] = here.received
    assert method == "POST" and json.loads(body)["event"] == "deployed"
    assert headers["authorization"] == TOKEN and headers["x-chat-key"] == CUSTOM


@pytest.mark.parametrize("code", [307, 308])
def test_a_redirect_to_another_host_drops_every_credential(hosts: tuple[Receiver, Receiver], code: int) -> None:
    here, elsewhere = hosts
    here.redirects["/hook"] = (code, f"{elsewhere.url}/final")
    send(target(f"{here.url}/hook"), NOTE)
    assert here.received == []
    [(method, headers, body)] = elsewhere.received
    assert method == "POST" and json.loads(body)["revision"] == "abc1234"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers and "x-chat-key" not in headers
    assert TOKEN not in str(headers) and CUSTOM not in str(headers)


def test_a_redirect_that_drops_the_post_is_refused(hosts: tuple[Receiver, Receiver]) -> None:
    here, elsewhere = hosts
    here.redirects["/hook"] = (302, f"{elsewhere.url}/final?token=in-the-path")
    with pytest.raises(urllib.error.HTTPError) as err:
        send(target(f"{here.url}/hook"), NOTE)
    assert err.value.code == 302
    assert f"redirected to {elsewhere.url}:" in str(err.value.reason)
    assert "in-the-path" not in str(err.value.reason)
    assert elsewhere.received == [] and here.received == []

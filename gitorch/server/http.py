"""The HTTP listener of `gitorch serve`: one Starlette app on uvicorn, run in a thread of the
controller process. Features (webhooks, metrics; later the dashboard and a read-only API)
register their endpoints on a `Site`; this module bounds every connection for all of them:
a deadline for each request's headers, a body read only on demand with a size cap and a
deadline, a cap on connections and requests in flight, and a cap on header bytes.

The only module that imports uvicorn and starlette."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_BODY = 25 * 1024 * 1024  # GitHub caps webhook payloads at 25 MB

# uvicorn logs a warning per malformed or refused request: under a flood of them that is a
# flood of log lines, written by whoever reaches the port. Errors (a handler's bug) still show.
logging.getLogger("uvicorn").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Limits:
    """Bounds on every connection of the listener, shared by all features."""

    header_timeout: float = 10.0
    """Seconds a connection has to send a request's line and headers, counted from its opening
    (or from the first byte after a keep-alive pause): idle and slowloris clients are cut off."""
    body_timeout: float = 60.0
    """Seconds an endpoint waits for a request's whole body before answering 408."""
    keep_alive: int = 5
    """Seconds an idle keep-alive connection stays open between requests."""
    max_connections: int = 256
    """Open connections; one more is closed at once, and requests in flight are capped to this
    many (503 beyond it)."""
    max_header_bytes: int = 32 * 1024
    """The largest request line plus headers (400 beyond it)."""
    shutdown_timeout: int = 3
    """Seconds `close()` lets requests in flight finish."""


@dataclass(frozen=True)
class Reply:
    """An endpoint's answer."""

    status: int
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    stream: AsyncIterator[bytes] | Iterator[bytes] | None = None
    """Sent after `body`, chunk by chunk as it yields (a watch, Server-Sent Events, logs that
    follow); cancelled (and closed) when the client goes away, so it must bound its own
    lifetime. A plain iterator runs in the bounded worker pool: long streams should be async."""


class Refused(Exception):
    """Raised to answer at once (e.g. a body too large or too slow)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Incoming:
    """A request as an endpoint sees it. Its body is read only when asked for, capped at the
    endpoint's `max_body` and within the listener's body deadline."""

    def __init__(self, request: Request, max_body: int, body_timeout: float) -> None:
        self._request = request
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._body: bytes | None = None

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def path(self) -> str:
        return self._request.url.path

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""
        return self._request.headers

    @property
    def query(self) -> Mapping[str, str]:
        """The query string's parameters (the last value of a repeated one)."""
        return self._request.query_params

    @property
    def params(self) -> Mapping[str, str]:
        """The path's parameters (`/pods/{name}`)."""
        return self._request.path_params

    @property
    def cookies(self) -> Mapping[str, str]:
        return self._request.cookies

    @property
    def client(self) -> str:
        """The peer's address (empty when unknown)."""
        return self._request.client.host if self._request.client else ""

    async def body(self) -> bytes:
        """The whole body; `Refused` with 413 past the cap, 408 past the deadline."""
        if self._body is not None:
            return self._body
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout):
                async for chunk in self._request.stream():
                    size += len(chunk)
                    if size > self._max_body:
                        raise Refused(Reply(413, f"request body over {self._max_body} bytes\n"))
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(Reply(408, f"request body not received within {self._body_timeout:g} s\n")) from None
        except ClientDisconnect:
            raise Refused(Reply(400, "client disconnected\n")) from None
        self._body = b"".join(chunks)
        return self._body


Handler = Callable[[Incoming], Awaitable[Reply]] | Callable[[Incoming], Reply]


@dataclass(frozen=True)
class Endpoint:
    """One path of the listener. An async handler may read the body; a plain function runs in
    a worker thread (the pool is bounded) and sees only the headers."""

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)
    max_body: int = 0
    """The largest body this endpoint reads: a larger Content-Length gets 413 before the handler runs."""


class Site:
    """The endpoints of one listener, registered feature by feature."""

    def __init__(self) -> None:
        self._features: dict[str, tuple[Endpoint, ...]] = {}
        self.add("health", [Endpoint("/healthz", lambda _: Reply(200, "ok\n"))])

    def add(self, feature: str, endpoints: Iterable[Endpoint]) -> None:
        taken = {e.path for group in self._features.values() for e in group}
        new = tuple(endpoints)
        clash = sorted(taken & {e.path for e in new})
        if feature in self._features or clash:
            raise ValueError(f"feature {feature!r}: {', '.join(clash) or 'already added'}")
        self._features[feature] = new

    @property
    def paths(self) -> list[str]:
        return [e.path for group in self._features.values() for e in group]

    def app(self, limits: Limits) -> ASGIApp:
        routes = [_route(e, limits) for group in self._features.values() for e in group]
        return Starlette(routes=routes, middleware=[Middleware(_CloseUnread)])


def _route(endpoint: Endpoint, limits: Limits) -> Route:
    handler = endpoint.handler
    is_async = inspect.iscoroutinefunction(handler)

    async def run(request: Request) -> Response:
        reply: Reply | None = None
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > endpoint.max_body):
            reply = Reply(413, f"request body over {endpoint.max_body} bytes\n")
        else:
            incoming = Incoming(request, endpoint.max_body, limits.body_timeout)
            try:
                if is_async:
                    reply = await handler(incoming)  # type: ignore[misc]
                else:
                    reply = await run_in_threadpool(handler, incoming)  # type: ignore[arg-type]
            except Refused as exc:
                reply = exc.reply
        assert isinstance(reply, Reply)
        if reply.stream is not None:
            return StreamingResponse(_chained(reply.body, reply.stream), status_code=reply.status,
                                     media_type=reply.content_type, headers=dict(reply.headers))
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type,
                        headers=dict(reply.headers))

    return Route(endpoint.path, run, methods=list(endpoint.methods))


async def _chained(first: bytes | str, rest: AsyncIterator[bytes] | Iterator[bytes]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first.encode() if isinstance(first, str) else first
        if isinstance(rest, Iterator):
            while True:
                chunk = await run_in_threadpool(next, rest, None)
                if chunk is None:
                    return
                yield chunk
        else:
            async for chunk in rest:
                yield chunk
    finally:  # the client went, or the stream ended: let it free what it holds
        close = getattr(rest, "aclose", None) or getattr(rest, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                done = close()
                if inspect.isawaitable(done):
                    await done


class _CloseUnread:
    """Answers sent before a request's body was read close the connection: otherwise the server
    would go on reading (and discarding) whatever body the client still sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        read = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers

        async def receiving() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                read = True
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not read:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receiving, sending)


def _protocol(limits: Limits) -> type[H11Protocol]:
    class Protocol(H11Protocol):
        """uvicorn's h11 protocol with a deadline on each request's headers and a connection cap:
        uvicorn times out an idle connection only after a response, so one that never sends (or
        dribbles) a request would otherwise be held for ever."""

        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.abort()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request's headers are in: its body has its own deadline
                self._disarm()
            elif (self.cycle is None or self.cycle.response_complete) and self._deadline is None:
                self._arm()  # the first bytes of the next request on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

    return Protocol


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


class HttpServer:
    """A listener serving a `Site` from its own thread. The port is bound here, so a port in use
    is an OSError from the constructor; `start()` serves, `close()` stops."""

    def __init__(self, host: str, port: int, site: Site, limits: Limits | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (certificate chain file, private key file) to serve HTTPS."""
        self.limits = limits or Limits()
        self.site = site
        self._socket = _bind(host, port)
        config = uvicorn.Config(
            site.app(self.limits),
            http=_protocol(self.limits),
            loop="asyncio",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            # Connections are capped as they open (see _protocol); this caps requests in flight.
            limit_concurrency=self.limits.max_connections + 1,
            timeout_keep_alive=self.limits.keep_alive,
            timeout_graceful_shutdown=self.limits.shutdown_timeout,
            h11_max_incomplete_event_size=self.limits.max_header_bytes,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="gitorch-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def connections(self) -> int:
        """Connections open now (for tests and metrics)."""
        return len(self._server.server_state.connections)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            raise OSError(f"the HTTP listener on {self.address[0]}:{self.address[1]} did not start")

    def close(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(self.limits.shutdown_timeout + 5)
        self._socket.close()


def parse_listen(value: str) -> tuple[str, int] | None:
    """`HOST:PORT` (or `[v6]:PORT`) to a pair; `off` or an empty string disables the listener."""
    if value.strip().lower() in ("", "off", "none"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8090 (or 'off')")
    return host.strip("[]") or "127.0.0.1", int(port)

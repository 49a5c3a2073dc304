"""A real HTTPS Git server for tests: `git http-backend` as CGI behind TLS and HTTP Basic auth.

The certificate is self-signed for 127.0.0.1 and made fresh for each server, so a client that
trusts one server's certificate still refuses another's.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class SeenRequest:
    """One request the server answered: who asked, with which password, and the status sent."""

    method: str
    path: str
    user: str | None
    password: str | None
    status: int


def http_backend() -> str:
    """The path of `git http-backend` (it lives in git's exec path, not on PATH)."""
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    backend = Path(exec_path) / "git-http-backend"
    if not backend.exists():
        raise RuntimeError(f"{backend}: git http-backend is not installed")
    return str(backend)


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate and key for `host` (CN and IP SAN), made with the openssl command line."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=IP:{host}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
        git: HttpsGitServer,
    ) -> None:
        super().__init__(address, handler)
        self.context = context
        self.git = git

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        # The handshake happens in the request's thread: a client that refuses the certificate
        # must not hold up the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return  # e.g. the client does not trust the certificate
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer
    _status = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _credentials(self) -> tuple[str | None, str | None]:
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return user, password

    def _serve(self) -> None:
        git = self.server.git
        body = self._body()  # read in full, so the connection can be kept alive after a 401
        parts = urlsplit(self.path)
        user, password = self._credentials()
        if password != git.token:
            self._send(401, {"WWW-Authenticate": 'Basic realm="git"', "Content-Type": "text/plain"}, b"unauthorized\n")
        else:
            status, headers, payload = git.run_backend(
                self.command, parts.path, parts.query, user or "", self.headers, body
            )
            self._send(status, headers, payload)
        git.record(SeenRequest(self.command, parts.path, user, password, self._status))

    def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self._status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class HttpsGitServer:
    """Serves the bare repositories under `root` at https://127.0.0.1:PORT/NAME.git to a client
    whose HTTP Basic password is `token` (any user name)."""

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.token = token
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._backend = http_backend()
        self._folder = Path(tempfile.mkdtemp(prefix="gitorch-https-"))
        self.ca_file, key = self_signed_certificate(self._folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key)
        self._server = _TLSServer(("127.0.0.1", 0), _Handler, context, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="https-git", daemon=True)

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def seen(self) -> list[SeenRequest]:
        with self._lock:
            return list(self.requests)

    def run_backend(
        self, method: str, path: str, query: str, user: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Run `git http-backend` for one request and split its CGI answer into status, headers, body."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user,
            "REMOTE_ADDR": "127.0.0.1",
        }
        for name in ("Content-Encoding", "Git-Protocol"):
            if headers.get(name):
                env["HTTP_" + name.upper().replace("-", "_")] = headers[name]
        proc = subprocess.run([self._backend], input=body, env=env, capture_output=True, check=False)
        head, sep, payload = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = proc.stdout.partition(b"\n\n")
        status, out = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                out[name.strip()] = value.strip()
        if proc.returncode != 0 and not sep:
            return 500, {"Content-Type": "text/plain"}, proc.stderr
        return status, out, payload

    def __enter__(self) -> HttpsGitServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        shutil.rmtree(self._folder, ignore_errors=True)

"""SSH: one persistent, pinned, authenticated transport per node. The only module importing paramiko.

Every error names the node and host. Transports are reused (a new connection costs ~67 ms,
a command on an open one ~3 ms with TCP_NODELAY) and re-opened with jittered back-off
when they drop.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitorch.model.backoff import Backoff
from gitorch.model.errors import GitorchError

# paramiko.config imports invoke, for `Match exec` in ssh_config files, which gitorch never
# reads: a tenth of a second of CPU of every command that reaches nodes (`gitorch nodes`).
# Kept out while paramiko loads (it then raises its ImportError only for `Match exec`).
_INVOKE_KEPT_OUT = "invoke" not in sys.modules
if _INVOKE_KEPT_OUT:
    sys.modules["invoke"] = None  # type: ignore[assignment]
try:
    import paramiko
finally:
    if _INVOKE_KEPT_OUT:
        del sys.modules["invoke"]

log = logging.getLogger(__name__)
logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # its tracebacks are not for users
CONNECT_BACKOFF = Backoff(base=0.1, cap=2.0, jitter=0.5)  # between connection attempts to one node
_jitter = random.Random()


class NodeError(GitorchError):
    """A node could not be reached or did not answer; the message names it."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node


class NodeUnreachable(NodeError):
    pass


class HostKeyMismatch(NodeError):
    pass


class CommandTimeout(NodeError):
    pass


class ReplyTooLarge(NodeError):
    """A node answered with more than SSHOptions.max_reply_bytes: abandoned, never retried."""


MiB = 1024 * 1024
STDERR_KEEP = 64 * 1024  # the end of a command's stderr kept for error messages


@dataclass(frozen=True)
class Endpoint:
    """How to reach one node."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    host_key: str | None = None  # "ssh-ed25519 AAAA..." pinned from the Node manifest

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Result:
    exit_status: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class SSHOptions:
    connect_timeout: float = 5.0
    """Seconds to open TCP, exchange keys and authenticate."""
    command_timeout: float = 30.0
    """Default seconds a command may take before it is abandoned."""
    keepalive: int = 15
    """Seconds between SSH keepalives on idle transports."""
    retries: int = 3
    """Connection attempts before a node is reported unreachable."""
    max_connecting: int = 16
    """Connections being opened at once (key exchange is CPU-bound)."""
    known_hosts: Path | None = None
    """Where keys trusted on first use are recorded (nodes without a pinned hostKey)."""
    max_reply_bytes: int = 64 * MiB
    """The most a node's answer (a command's output, or one line of a stream) may hold."""


class KnownHosts:
    """Host keys trusted on first use, one `[host]:port type base64` line each."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        if self.path is None or not self.path.exists():
            return {}
        out = {}
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                out[parts[0]] = f"{parts[1]} {parts[2]}"
        return out

    def get(self, host: str, port: int) -> str | None:
        with self._lock:
            return self._load().get(f"[{host}]:{port}")

    def add(self, host: str, port: int, key: str) -> None:
        if self.path is None:
            return
        with self._lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as f:
                f.write(f"[{host}]:{port} {key}\n")


def _key_text(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def _normalise(key_line: str) -> str:
    parts = key_line.split()
    return " ".join(parts[:2])


class Connection:
    """A persistent SSH transport to one node; thread-safe; reconnects on demand."""

    def __init__(self, endpoint: Endpoint, options: SSHOptions, known: KnownHosts, gate: threading.Semaphore) -> None:
        self.endpoint = endpoint
        self.options = options
        self._known = known
        self._gate = gate
        self._lock = threading.Lock()
        self._transport: paramiko.Transport | None = None
        self._pkey: paramiko.PKey | None = None

    # -- connecting --------------------------------------------------------------------

    def _load_key(self) -> paramiko.PKey | None:
        if self._pkey is None and not self.endpoint.identity_file:
            # Like ssh(1): the usual key files when no identity file is named.
            for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
                candidate = Path.home() / ".ssh" / name
                if candidate.is_file():
                    try:
                        self._pkey = paramiko.PKey.from_path(candidate)
                        break
                    except (paramiko.SSHException, ValueError):
                        continue
        if self._pkey is None and self.endpoint.identity_file:
            path = Path(self.endpoint.identity_file).expanduser()
            try:
                self._pkey = paramiko.PKey.from_path(path)
            except FileNotFoundError as exc:
                raise NodeError(self.endpoint.name, f"identity file {path} does not exist") from exc
            except (paramiko.SSHException, ValueError) as exc:
                raise NodeError(self.endpoint.name, f"cannot read identity file {path}: {exc}") from exc
        return self._pkey

    def _open(self) -> paramiko.Transport:
        ep = self.endpoint
        sock = socket.create_connection((ep.host, ep.port), timeout=self.options.connect_timeout)
        # Without TCP_NODELAY every request waits on Nagle + delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        try:
            pinned = _normalise(ep.host_key) if ep.host_key else self._known.get(ep.host, ep.port)
            if pinned:
                # Ask for the pinned key's type, so a node with several host keys shows that one.
                transport.get_security_options().key_types = [pinned.split()[0]]
            transport.start_client(timeout=self.options.connect_timeout)
            presented = _key_text(transport.get_remote_server_key())
            if pinned and presented != pinned:
                raise HostKeyMismatch(
                    ep.name,
                    f"host key of {ep.host}:{ep.port} changed: expected {pinned[:40]}..., "
                    f"got {presented[:40]}...; refusing to connect (if the server was "
                    "reinstalled, update spec.hostKey in its Node manifest)",
                )
            if not pinned:
                self._known.add(ep.host, ep.port, presented)
            key = self._load_key()
            if key is None:
                raise NodeError(
                    ep.name, "no SSH key: set spec.identityFile on the Node or spec.ssh.identityFile on the Cluster"
                )
            transport.auth_publickey(ep.user, key)
            if not transport.is_authenticated():
                raise NodeError(ep.name, f"authentication as {ep.user} failed")
            transport.set_keepalive(self.options.keepalive)
            return transport
        except BaseException:
            transport.close()
            raise

    def transport(self) -> paramiko.Transport:
        """The open transport, connecting (with jittered back-off) if needed."""
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            last: Exception | None = None
            for attempt in range(self.options.retries):
                try:
                    with self._gate:
                        self._transport = self._open()
                    return self._transport
                except NodeError:
                    raise  # a wrong key or host key will not get better by retrying
                except paramiko.AuthenticationException as exc:
                    raise NodeError(
                        self.endpoint.name, f"{self.endpoint.where}: authentication failed ({exc})"
                    ) from exc
                except (OSError, paramiko.SSHException, EOFError) as exc:
                    last = exc
                    if attempt + 1 < self.options.retries:
                        time.sleep(CONNECT_BACKOFF.delay(attempt + 1, _jitter))
            reason = _reason(last)
            raise NodeUnreachable(
                self.endpoint.name, f"{self.endpoint.where}: {reason} after {self.options.retries} tries"
            )

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    # -- commands ----------------------------------------------------------------------

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result:
        """Run one command; its stdin is `stdin`; raises CommandTimeout past `timeout`."""
        timeout = timeout or self.options.command_timeout
        deadline = time.monotonic() + timeout
        chan = self._session()
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = io.BytesIO(), _Tail(STDERR_KEEP)
            limit = self.options.max_reply_bytes
            while True:
                if chan.recv_ready():
                    out.write(chan.recv(65536))
                    if out.tell() > limit:
                        raise ReplyTooLarge(self.endpoint.name, f"{self.endpoint.where}: {_too_large(limit)}")
                elif chan.recv_stderr_ready():
                    err.add(chan.recv_stderr(65536))
                elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                else:
                    if time.monotonic() > deadline:
                        raise CommandTimeout(self.endpoint.name, f"command timed out after {timeout:g} s")
                    chan.status_event.wait(0.005)
            # Drain what arrived with the exit status.
            while chan.recv_ready():
                out.write(chan.recv(65536))
                if out.tell() > limit:
                    raise ReplyTooLarge(self.endpoint.name, f"{self.endpoint.where}: {_too_large(limit)}")
            while chan.recv_stderr_ready():
                err.add(chan.recv_stderr(65536))
            return Result(chan.recv_exit_status(), out.getvalue(), err.value())
        except TimeoutError as exc:
            raise CommandTimeout(self.endpoint.name, f"command timed out after {timeout:g} s") from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise NodeUnreachable(
                self.endpoint.name, f"{self.endpoint.where}: connection lost ({_reason(exc)})"
            ) from exc
        finally:
            chan.close()

    def _session(self) -> paramiko.Channel:
        for attempt in (0, 1):
            transport = self.transport()
            try:
                return transport.open_session(timeout=self.options.connect_timeout)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                self.close()  # a stale transport: reconnect once
                if attempt:
                    raise NodeUnreachable(self.endpoint.name, f"{self.endpoint.where}: {_reason(exc)}") from exc
        raise AssertionError("unreachable")

    def open_stream(self, command: str) -> Stream:
        """Start a long-lived command (the agent's `serve` loop) and talk to it line by line."""
        chan = self._session()
        try:
            chan.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            chan.close()
            self.close()
            raise NodeUnreachable(
                self.endpoint.name, f"{self.endpoint.where}: cannot start the agent ({_reason(exc)})"
            ) from exc
        return Stream(self.endpoint.name, chan, self.options.max_reply_bytes, self.endpoint.where)

    def put(self, data: bytes, path: str, mode: int = 0o755) -> None:
        """Write a file atomically over SFTP (written beside, then renamed into place)."""
        try:
            sftp = paramiko.SFTPClient.from_transport(self.transport())
            if sftp is None:
                raise NodeError(self.endpoint.name, "SFTP is not available")
            with contextlib.closing(sftp):
                parent = path.rsplit("/", 1)[0]
                _makedirs(sftp, parent)
                tmp = f"{path}.tmp-{random.randrange(1 << 30)}"
                with sftp.open(tmp, "wb") as f:
                    f.set_pipelined(True)
                    f.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            if isinstance(exc, NodeError):
                raise
            raise NodeError(self.endpoint.name, f"cannot upload {path}: {_reason(exc)}") from exc


class _Tail:
    """The last `keep` bytes of what was added (a command's stderr, for error messages)."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._data = bytearray()

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > 2 * self._keep:
            del self._data[: len(self._data) - self._keep]

    def value(self) -> bytes:
        return bytes(self._data[-self._keep :])


def _too_large(limit: int) -> str:
    return f"answer larger than {limit / MiB:g} MiB; abandoned"


class Stream:
    """A command with a channel kept open: write a line, read a line (of at most `max_line`
    bytes: a longer one closes the stream)."""

    def __init__(self, node: str, chan: paramiko.Channel, max_line: int = 64 * MiB, where: str = "") -> None:
        self.node = node
        self._chan = chan
        self._buf = bytearray()
        self._max_line = max_line
        self._where = where or node

    @property
    def alive(self) -> bool:
        return not self._chan.closed and not self._chan.exit_status_ready()

    def request(self, line: bytes | Sequence[bytes], timeout: float) -> bytes:
        """Send one line (given whole, or in pieces that make it) and return the one answering it."""
        parts = [line] if isinstance(line, bytes) else list(line)
        try:
            for part in parts[:-1]:
                self._chan.sendall(part)
            self._chan.sendall(parts[-1].rstrip(b"\n") + b"\n")
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise NodeUnreachable(self.node, f"connection lost ({_reason(exc)})") from exc
        answer = self.readline(timeout)
        if answer is None:
            self.close()  # a late answer would be taken for the next request's
            raise CommandTimeout(self.node, f"no answer after {timeout:g} s")
        return answer

    def readline(self, timeout: float) -> bytes | None:
        """The next line of output, or None if none came within `timeout`; raises NodeError
        once the command has ended (with the last line it wrote to stderr)."""
        deadline = time.monotonic() + timeout
        # Only what arrived since the last look is searched, and appended in place: a long
        # line costs linear time, not quadratic.
        scanned = 0
        try:
            while (end := self._buf.find(b"\n", scanned)) < 0:
                scanned = len(self._buf)
                if scanned > self._max_line:
                    self.close()  # the rest of that line would be taken for the next answer
                    raise ReplyTooLarge(self.node, f"{self._where}: {_too_large(self._max_line)}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._chan.settimeout(remaining)
                try:
                    chunk = self._chan.recv(65536)
                except TimeoutError:
                    return None
                if not chunk:
                    err = _Tail(STDERR_KEEP)
                    while self._chan.recv_stderr_ready() and len(err.value()) < STDERR_KEEP:
                        err.add(self._chan.recv_stderr(65536))
                    detail = err.value().decode(errors="replace").strip().splitlines()[-1:] or ["it exited"]
                    raise NodeError(self.node, f"agent stopped answering: {detail[0]}")
                self._buf += chunk
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise NodeUnreachable(self.node, f"connection lost ({_reason(exc)})") from exc
        if end > self._max_line:
            self.close()
            raise ReplyTooLarge(self.node, f"{self._where}: {_too_large(self._max_line)}")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def write(self, data: bytes) -> None:
        self._chan.sendall(data)

    def chunks(self) -> Iterator[bytes]:
        """Output as it arrives, until the command ends (for `logs --follow`)."""
        self._chan.settimeout(None)
        if self._buf:
            yield bytes(self._buf)
            self._buf.clear()
        while True:
            chunk = self._chan.recv(65536)
            if not chunk:
                return
            yield chunk

    def exit_status(self) -> int | None:
        """The command's exit status once it has ended (briefly waiting for it), else None."""
        if self._chan.status_event.wait(1.0) and self._chan.exit_status_ready():
            return int(self._chan.recv_exit_status())
        return None

    def close(self) -> None:
        self._chan.close()


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = [p for p in path.split("/") if p]
    current = ""
    for p in parts:
        current += "/" + p
        try:
            sftp.stat(current)
        except OSError:
            sftp.mkdir(current, 0o755)


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


class Pool:
    """One Connection per node, sharing a bound on connections being opened at once."""

    def __init__(self, options: SSHOptions | None = None) -> None:
        self.options = options or SSHOptions()
        self._known = KnownHosts(self.options.known_hosts)
        self._gate = threading.Semaphore(self.options.max_connecting)
        self._conns: dict[str, Connection] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: Endpoint) -> Connection:
        with self._lock:
            conn = self._conns.get(endpoint.name)
            if conn is None or conn.endpoint != endpoint:
                if conn is not None:
                    conn.close()
                conn = Connection(endpoint, self.options, self._known, self._gate)
                self._conns[endpoint.name] = conn
            return conn

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            c.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_remote_host(host: str, port: int, presented: str, pinned: str | None, known_hosts: str | None) -> None:
    """A Git SSH remote's host key, as presented on the connection that fetches (source.git's
    certificate check): the pinned key, else the known-hosts entry, else trusted on first use."""
    name = f"{host}:{port}"
    known = KnownHosts(Path(known_hosts) if known_hosts else None)
    expected = _normalise(pinned) if pinned else known.get(host, port)
    presented = _normalise(presented)
    if not expected:
        known.add(host, port, presented)
        return
    if presented == expected:
        return
    got, want = presented.split()[0], expected.split()[0]
    if got != want:
        # libgit2 (libssh2) picks the key type (ECDSA before Ed25519), and cannot be asked for another.
        where = "pinned" if pinned else f"recorded in {known_hosts}"
        raise HostKeyMismatch(
            name, f"host key changed: the server presented a {got} key, the one {where} is {want}; refusing "
            f"(pin its {got} key: ssh-keyscan -p {port} {host} | grep {got})"
        )
    raise HostKeyMismatch(name, f"host key changed: expected {expected[:40]}..., got {presented[:40]}...; refusing")

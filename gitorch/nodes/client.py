"""Node clients: talk to the agent on each node, and fan out to many nodes in parallel.

The agent is one stdlib-only file shipped over SFTP to a path named by its content hash, so
a changed agent is uploaded by itself on next contact. Requests go to a long-lived
`agent serve` process over one SSH channel per node (a request costs a round trip, not a
Python start-up); `run_once` runs a single verb in its own process when that is preferable;
`watch` follows a node's pod status on a channel of its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from gitorch.nodes.ssh import CommandTimeout, Connection, Endpoint, NodeError, Pool, ReplyTooLarge, Stream

log = logging.getLogger(__name__)

AGENT_FILE = Path(__file__).with_name("agent.py")
AGENT_ROOT = "/var/lib/gitorch"
"""The agent's state folder on a node unless a client names another root (agent.py DEFAULT_ROOT)."""
AGENT_DIR = f"{AGENT_ROOT}/agent"
FACTS_MAX_AGE_SECONDS = 10.0
"""A supervisor refreshes facts.json every 2 s: an older copy means none runs (or it is stuck)."""
PYTHON = "/usr/bin/python3"
_MISSING = 97  # exit status of the launcher when the agent file is not there yet
_RUN_FLAGS = "-I -S -u"
"""Isolated (no PYTHON* variables, no user site, no current folder on the path), no site
packages (the agent is stdlib-only; `site` costs a start-up ~2 ms), unbuffered (answers are lines)."""

T = TypeVar("T")


@dataclass(frozen=True)
class AgentFile:
    data: bytes
    digest: str

    @property
    def path(self) -> str:
        return f"{AGENT_DIR}/agent-{self.digest}.py"

    @property
    def run_code(self) -> str:
        """The agent imported as a module rather than run as a script: Python keeps an imported
        module's bytecode (`__pycache__/` beside the file, written on first use, a new file per
        agent version) but compiles a script's 6,000 lines anew at every start, which cost each
        node ~100 ms of CPU per agent process (measured on lab nodes: 180 ms a `facts` call,
        80 ms from the cached bytecode). sys.argv stays VERB [--root DIR]."""
        return f"import sys; sys.path.append({AGENT_DIR!r}); sys.exit(__import__('agent-{self.digest}').main())"

    @classmethod
    def load(cls, path: Path = AGENT_FILE) -> AgentFile:
        data = path.read_bytes()
        return cls(data, hashlib.sha256(data).hexdigest()[:12])


class AgentError(NodeError):
    """The agent answered, with an error."""


class StaleTerm(AgentError):
    """The node refused a sync: it has seen a newer controller term than the one sent (a
    fencing token). The controller sending it is no longer the leader and should stop."""

    def __init__(self, node: str, message: str, term: int, seen: int, holder: str) -> None:
        super().__init__(node, message)
        self.term = term
        self.seen = seen
        self.holder = holder


class Encoded:
    """A payload value already encoded as JSON: a request that many nodes get alike (the service
    table) is encoded once per pass, not once per node."""

    __slots__ = ("data",)

    def __init__(self, value: Any) -> None:
        self.data = json.dumps(value).encode()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Encoded) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]


def table_digest(entries: list[Any]) -> str:
    """The digest of a service table by which the agent knows it (the agent's own table_digest
    computes the same from what it was sent): what a `servicesDelta` starts from."""
    ordered = sorted(entries, key=lambda e: str(e.get("name")) if isinstance(e, dict) else "")
    return hashlib.sha256(json.dumps(ordered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def table_delta(base: Mapping[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What turns the table `base` (entries by name) into `entries`: set and remove, by name."""
    names = {str(e["name"]) for e in entries}
    return {
        "set": [e for e in entries if base.get(str(e["name"])) != e],
        "remove": sorted(n for n in base if n not in names),
    }


def encode_request(verb: str, payload: dict[str, Any] | None) -> bytes:
    """The request line: `Encoded` values are spliced in as they are."""
    return b"".join(request_parts(verb, payload))


def request_parts(verb: str, payload: dict[str, Any] | None) -> list[bytes]:
    """The request line in pieces that make it when joined: an `Encoded` value is its own piece,
    the very bytes it was encoded to. The fan-out sends as many requests at once as it has
    threads; sent piece by piece, a service table every node gets is held once, not once per
    request in flight."""
    doc = {"verb": verb, **(payload or {})}
    if not any(isinstance(v, Encoded) for v in doc.values()):
        return [json.dumps(doc).encode()]
    parts: list[bytes] = []
    head = b"{"
    for k, v in doc.items():
        if isinstance(v, Encoded):
            parts.extend((head + json.dumps(k).encode() + b": ", v.data))
        else:
            parts.append(head + json.dumps(k).encode() + b": " + json.dumps(v).encode())
        head = b", "
    parts.append(b"}")
    return parts


class NodeClient:
    """The agent on one node. What it answers is checked before anyone uses it (see
    checked_pods): a node is not trusted with other nodes' NAT rules or the cluster DNS."""

    def __init__(self, conn: Connection, agent: AgentFile, *, root: str | None = None) -> None:
        self.conn = conn
        self.agent = agent
        self.root = root
        self._stream: Stream | None = None
        self._lock = threading.Lock()
        self.pod_cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
        """The node's pod CIDR, as the last `sync` sent it (None: none sent, or none yet)."""
        self._warned: set[tuple[str, ...]] = set()

    @property
    def name(self) -> str:
        return self.conn.endpoint.name

    def _launcher(self, verb: str) -> str:
        root = f" --root {shlex.quote(self.root)}" if self.root else ""
        path, code = shlex.quote(self.agent.path), shlex.quote(self.agent.run_code)
        return f"[ -f {path} ] || exit {_MISSING}; exec {PYTHON} {_RUN_FLAGS} -c {code} {verb}{root}"

    def upload_agent(self) -> None:
        self.conn.put(self.agent.data, self.agent.path, mode=0o755)

    def run_once(self, verb: str, payload: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Run one verb in its own agent process (uploading the agent first if needed)."""
        body = json.dumps(payload or {}).encode()
        self._learn(verb, payload)
        result = self.conn.run(self._launcher(verb), body, timeout)
        if result.exit_status == _MISSING:
            self.upload_agent()
            result = self.conn.run(self._launcher(verb), body, timeout)
        return self._checked(self._decode(result.stdout, result.stderr, result.exit_status))

    def published_facts(self, timeout: float = 30.0, max_age: float = FACTS_MAX_AGE_SECONDS) -> dict[str, Any] | None:
        """The `facts` answer the node's supervisor published (agent.py publish_facts), read with
        one `cat` and no Python start on the node; None when it is missing, unreadable, older
        than `max_age` or from another agent version: then ask the agent (`call("facts")`)."""
        facts = f"{self.root or AGENT_ROOT}/facts.json"
        result = self.conn.run(f"exec cat {shlex.quote(facts)} /proc/uptime /proc/sys/kernel/random/boot_id",
                               b"", timeout)
        return fresh_facts(result.stdout, self.agent.digest, max_age)

    def call(self, verb: str, payload: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """One request to the node's long-lived agent process (started on first use)."""
        request = request_parts(verb, payload)
        self._learn(verb, payload)
        with self._lock:
            for attempt in range(3):
                if self._stream is None or not self._stream.alive:
                    self._stream = self.conn.open_stream(self._launcher("serve"))
                stream = self._stream
                try:
                    line = stream.request(request, timeout)
                except (CommandTimeout, ReplyTooLarge):
                    self._drop_stream()
                    raise  # retrying would only wait, or read as much, again
                except NodeError:
                    missing = stream.exit_status() == _MISSING
                    self._drop_stream()
                    if missing:
                        self.upload_agent()  # first contact, or a new agent version
                    elif attempt:
                        raise
                else:
                    # An answer, even `ok: false`, ends the request: never sent twice.
                    return self._checked(self._decode(line, b"", 0))
        raise AgentError(self.name, "agent could not be started")

    def watch(self, timeout: float = 15.0) -> Watch:
        """Open the agent's `watch` stream (uploading the agent first if needed); its first
        event, the pods' status now, has arrived when this returns."""
        for attempt in (0, 1):
            stream = self.conn.open_stream(self._launcher("watch"))
            try:
                first = stream.readline(timeout)
                if first is None:
                    raise CommandTimeout(self.name, f"watch: no first event after {timeout:g} s")
                return Watch(self.name, stream, self._checked(self._decode(first, b"", 0)), self._checked)
            except NodeError:
                missing = stream.exit_status() == _MISSING
                stream.close()
                if not missing or attempt:
                    raise
                self.upload_agent()
        raise AssertionError("unreachable")

    def follow_logs(self, request: Mapping[str, Any]) -> Stream:
        """Open the agent's `logs` verb in follow mode (`request`: pod, namespace, tail, and an
        optional container); read it with `chunks()`, stop it with `close()`."""
        stream = self.conn.open_stream(self._launcher("logs"))
        stream.write(json.dumps({**request, "follow": True}).encode() + b"\n")
        return stream

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _decode(self, stdout: bytes, stderr: bytes, status: int) -> dict[str, Any]:
        return decode(self.name, stdout, stderr, status)

    def _learn(self, verb: str, payload: Mapping[str, Any] | None) -> None:
        """Remember the pod CIDR a sync sends: the only addresses this node's pods may have."""
        if verb != "sync" or payload is None:
            return
        network = payload.get("network")
        cidr = network.get("podCIDR") if isinstance(network, Mapping) else None
        try:
            self.pod_cidr = ipaddress.ip_network(str(cidr)) if cidr else None
        except ValueError:
            self.pod_cidr = None  # the agent refuses the sync anyway

    def _checked(self, answer: dict[str, Any]) -> dict[str, Any]:
        """The answer with its pod reports checked (`status`, `sync`, `watch` events; the
        pods of `facts` are counts by name, used for nothing else)."""
        if isinstance(answer.get("pods"), list):
            answer["pods"] = checked_pods(self.name, answer["pods"], self.pod_cidr, self._warn)
        return answer

    def _warn(self, key: tuple[str, ...], message: str) -> None:
        """Warn once per distinct problem (a node repeating itself every pass is one warning)."""
        if key in self._warned:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned.add(key)
        log.warning("%s", message)

    def close(self) -> None:
        with self._lock:
            self._drop_stream()


def fresh_facts(output: bytes, digest: str, max_age: float = FACTS_MAX_AGE_SECONDS) -> dict[str, Any] | None:
    """The facts in `cat facts.json /proc/uptime /proc/sys/kernel/random/boot_id`'s output when
    they were published by agent `digest`, in this boot, at most `max_age` seconds ago by the
    node's own clock (no skew between this machine and the node); None otherwise."""
    lines = output.decode(errors="replace").splitlines()
    if len(lines) != 3:
        return None  # no facts.json (cat still prints the other two), or a torn read
    try:
        doc = json.loads(lines[0])
        now = float(lines[1].split()[0])
    except (ValueError, IndexError):
        return None
    if not isinstance(doc, dict) or doc.get("sha") != digest or doc.get("bootId") != lines[2].strip():
        return None
    at, facts = doc.get("at"), doc.get("facts")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not -1.0 <= now - at <= max_age:
        return None  # the supervisor stopped or is stuck (or the clock is not the one it used)
    if not isinstance(facts, dict) or facts.get("ok") is not True:
        return None
    return facts


def decode(node: str, stdout: bytes, stderr: bytes = b"", status: int = 0) -> dict[str, Any]:
    """The agent's JSON answer (its last line of output); AgentError when it is none or says
    `ok: false`."""
    text = stdout.decode(errors="replace").strip()
    try:
        data = json.loads(text.splitlines()[-1]) if text else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        detail = (stderr or stdout).decode(errors="replace").strip().splitlines()[-1:] or [f"exit {status}"]
        raise AgentError(node, f"agent gave no answer: {detail[0]}")
    if not data.get("ok", False):
        message = str(data.get("error") or "agent reported an error")
        if data.get("reason") == "StaleTerm":
            raise StaleTerm(node, message, _int(data.get("term")), _int(data.get("seenTerm")),
                            str(data.get("holder") or ""))
        raise AgentError(node, message)
    return data


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


_POD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_NAMESPACE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _inside(ip: str, family: int, base: int, mask: int) -> bool:
    """Whether `ip`, written as `family`'s canonical text, is in the network `base`/`mask` (a
    pass checks every pod's address: inet_pton, strict as ipaddress, costs a fifth, and there
    is no cache to hold an entry per pod)."""
    try:
        return int.from_bytes(socket.inet_pton(family, ip), "big") & mask == base
    except (OSError, ValueError):
        return False


def checked_pods(
    node: str,
    pods: list[Any],
    pod_cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
    warn: Callable[[tuple[str, ...], str], None],
) -> list[dict[str, Any]]:
    """A node's pod reports fit to use: entries without a valid name or namespace dropped,
    and a podIP outside the node's pod CIDR (or any, while none is known) set to None, so it
    never reaches another node's NAT rules or the cluster DNS."""
    out: list[dict[str, Any]] = []
    if pod_cidr is not None:
        family = socket.AF_INET if pod_cidr.version == 4 else socket.AF_INET6
        base, mask = int(pod_cidr.network_address), int(pod_cidr.netmask)
    for p in pods:
        name = p.get("name") if isinstance(p, dict) else None
        namespace = p.get("namespace", "default") if isinstance(p, dict) else None
        if not (isinstance(name, str) and _POD_NAME.fullmatch(name)) or not (
            namespace is None or (isinstance(namespace, str) and _NAMESPACE.fullmatch(namespace))
        ):
            warn((node, "pod", repr(p)[:200]), f"{node}: ignoring a malformed pod report {repr(p)[:200]}")
            continue
        assert isinstance(p, dict)
        ip = p.get("podIP")
        if ip is not None:
            inside = pod_cidr is not None and _inside(str(ip), family, base, mask)
            if not inside:
                if pod_cidr is not None:  # unknown: this client has not synced the node yet
                    warn(
                        (node, str(namespace), name, str(ip)[:64]),
                        f"{node}: pod {namespace or 'default'}/{name} reports IP {str(ip)[:64]!r}, "
                        f"outside the node's pod CIDR {pod_cidr}; ignored",
                    )
                p = {**p, "podIP": None}
        out.append(p)
    return out


PodKey = tuple[str, str]
"""(namespace, name): one pod on a node; one name may run in several namespaces."""


def pod_reports(answer: Mapping[str, Any]) -> dict[PodKey, dict[str, Any]]:
    """The pods of a `status` or `sync` answer, by (namespace, name)."""
    return {
        (str(p.get("namespace") or "default"), p["name"]): p
        for p in answer.get("pods") or []
        if isinstance(p, dict) and isinstance(p.get("name"), str)
    }


class Watch:
    """One node's pod status stream (the agent's `watch` verb): one event per line, a
    `status` event when the pods' endpoints change and a `heartbeat` every 10 s."""

    def __init__(
        self,
        node: str,
        stream: Stream,
        first: dict[str, Any],
        check: Callable[[dict[str, Any]], dict[str, Any]] = lambda event: event,
    ) -> None:
        self.node = node
        self._stream = stream
        self._pending: dict[str, Any] | None = first
        self._check = check

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none came within `timeout`; NodeError once the stream ended."""
        if self._pending is not None:
            event, self._pending = self._pending, None
            return event
        line = self._stream.readline(timeout)
        return None if line is None else self._check(decode(self.node, line))

    def close(self) -> None:
        self._stream.close()


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one node answered in a fan-out: a value, or an error naming the node."""

    node: str
    value: T | None = None
    error: str = ""
    seconds: float = 0.0
    failure: NodeError | None = None
    """The error itself, for callers that act on its kind (StaleTerm: stop the pass)."""

    @property
    def ok(self) -> bool:
        return not self.error


class Fleet:
    """Clients for many nodes, sharing one SSH pool, with parallel fan-out."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        pool: Pool | None = None,
        agent: AgentFile | None = None,
        *,
        root: str | None = None,
        max_workers: int = 64,
    ) -> None:
        self.pool = pool or Pool()
        self.agent = agent or AgentFile.load()
        self.clients = {e.name: NodeClient(self.pool.get(e), self.agent, root=root) for e in endpoints}
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, min(max_workers, len(self.clients) or 1)), thread_name_prefix="gitorch-node"
        )

    def fan_out(
        self,
        fn: Callable[[NodeClient], T],
        *,
        timeout: float = 30.0,
        progress: Callable[[int], None] | None = None,
        nodes: Iterable[str] | None = None,
    ) -> dict[str, Outcome[T]]:
        """Run `fn` on every node at once; a slow or dead node never holds up the others
        beyond `timeout`, and its error names it."""
        names = list(nodes) if nodes is not None else list(self.clients)
        started = time.monotonic()
        futures: dict[Future[T], str] = {}
        for name in names:
            futures[self._executor.submit(fn, self.clients[name])] = name
        results: dict[str, Outcome[T]] = {}
        pending = set(futures)
        deadline = started + timeout
        while pending:
            done, pending = wait(pending, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
            if not done:
                break
            for fut in done:
                name = futures[fut]
                took = time.monotonic() - started
                try:
                    results[name] = Outcome(name, fut.result(), seconds=took)
                except NodeError as exc:
                    results[name] = Outcome(name, error=str(exc), seconds=took, failure=exc)
                except Exception as exc:  # a bug must not hide the other nodes' answers
                    results[name] = Outcome(name, error=f"{name}: {type(exc).__name__}: {exc}", seconds=took)
                if progress:
                    progress(1)
        for fut in pending:
            name = futures[fut]
            results[name] = Outcome(name, error=f"{name}: no answer within {timeout:g} s", seconds=timeout)
            if progress:
                progress(1)
        return {n: results[n] for n in names}

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Fake node agents that speak the agent protocol, to measure the controller's own cost.

For bench/scale.py only, never for tests of behaviour (tests use real lab nodes). The seam
is below gitorch.nodes.client: a fake `Pool` hands out fake connections whose `serve`
stream answers `status`, `facts` and `sync` as an agent whose pods all start at once
would, so the real NodeClient (JSON encoding, decoding, pod report checks) and the real
Fleet fan-out run unchanged. A fake agent does as little as it can: an unchanged sync is
recognised by its bytes, and answers are serialised once per change, so nearly all the
time a pass spends is the controller's; `FakeAgent.seconds` adds up the CPU time they do spend.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gitorch.nodes.client import Fleet, table_digest
from gitorch.nodes.ssh import Endpoint, NodeError, Result

AGENT_VERSION = "fake-1"


class FakeAgent:
    """One node's agent: the desired pod set from the last sync, every pod Running and
    Ready at once (unless made unready), a podIP from the node's pod CIDR."""

    seconds = 0.0  # CPU time spent answering (thread time), all agents together
    _total_lock = threading.Lock()

    def __init__(self, name: str, cpus: int = 8, memory: int = 32 << 30) -> None:
        self.name = name
        self.cpus = cpus
        self.memory = memory
        self.generation = 0
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last_sync = b""  # the digest of the last sync request's bytes
        self._last_pods = b""  # ... and of its part before the service table
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> PodStatus
        self._ips: dict[tuple[str, str], str] = {}
        self._cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
        self._free: list[str] = []
        self._unready: set[tuple[str, str]] = set()
        self._status: bytes | None = None  # the serialised `status` answer, until a change
        self._version = 0
        self._etag = ""
        self._services_hash = ""
        self._table_digest = ""  # the service table this agent holds

    # -- the protocol ----------------------------------------------------------------------

    def answer(self, line: bytes | Sequence[bytes]) -> bytes:
        started = time.thread_time()
        try:
            with self._lock:
                return self._answer([line] if isinstance(line, bytes) else list(line))
        finally:
            took = time.thread_time() - started
            with FakeAgent._total_lock:
                FakeAgent.seconds += took

    def _answer(self, parts: list[bytes]) -> bytes:
        # The verb is the request's first key (NodeClient.call writes it first): read it
        # without parsing a sync's megabytes when the sync is the one seen last.
        head = parts[0][:40]
        if head.startswith(b'{"verb": "status"'):
            self._count("status")
            body = self._status_bytes()
            if self._etag and b'"since": "' + self._etag.encode() + b'"' in b"".join(parts):
                return json.dumps({"ok": True, "unchanged": True, "etag": self._etag}).encode()
            return body
        if head.startswith(b'{"verb": "facts"'):
            self._count("facts")
            return json.dumps(self._facts()).encode()
        if head.startswith(b'{"verb": "sync"'):
            self._count("sync")
            hashed = hashlib.sha256()
            for part in parts:
                hashed.update(part)
            digest = hashed.digest()
            if digest == self._last_sync:
                return self._sync_answer(changed=False, services_changed=False)
            self._last_sync = digest
            # NodeClient writes the pods and network before the service table, and the table
            # (an encoded value) as a piece of its own (client.request_parts): when the pieces
            # before it are the ones seen last, only the table changed, and nothing needs parsing.
            at = next((i for i, p in enumerate(parts) if p in (b', "services": ', b', "servicesDelta": ')), -1)
            if at < 0:  # no table: as one line
                line = b"".join(parts)
                self._last_pods = b""
                changed = self._sync(json.loads(line))
                self._services_hash = digest.hex()[:16]
                return self._sync_answer(changed, services_changed=True)
            before = hashlib.sha256()
            for part in parts[:at]:
                before.update(part)
            pods_part = before.digest()
            table = self._table_after(parts[at + 1], parts[at] == b', "services": ')
            if table is None:
                self._last_sync = b""
                return self._sync_answer(changed=False, services_changed=False, mismatch=True)
            self._table_digest = table
            if pods_part == self._last_pods:
                self._services_hash = digest.hex()[:16]
                return self._sync_answer(changed=False, services_changed=True)
            self._last_pods = pods_part
            changed = self._sync(json.loads(b"".join(parts[:at]) + b"}"))  # the table left out
            self._services_hash = digest.hex()[:16]
            return self._sync_answer(changed, services_changed=True)
        return json.dumps({"ok": False, "error": f"serve: unknown verb in {head!r}"}).encode()

    def _count(self, verb: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1

    def _facts(self) -> dict[str, Any]:
        return {
            "ok": True, "hostname": self.name, "os": "Fake Linux", "kernel": "6.1.0-fake", "arch": "x86_64",
            "bootId": hashlib.sha256(self.name.encode()).hexdigest()[:32], "cpus": self.cpus,
            "cpuMillis": self.cpus * 1000, "cpusOnline": self.cpus,
            "memory": {"totalBytes": self.memory, "availableBytes": self.memory // 2, "limitBytes": None},
            "disk": {"path": "/", "totalBytes": 100 << 30, "freeBytes": 50 << 30},
            "stateDisk": {"path": "/var/lib/gitorch", "totalBytes": 100 << 30, "freeBytes": 50 << 30},
            "python": "3.11.2", "runtimes": ["process"], "runtimeDetails": {},
            "cgroup": {"version": "v1", "memory": True, "cpu": True, "message": ""}, "limits": "supported",
            "volumeMounts": "bind", "podNetwork": "bridge", "services": "nftables",
            "agentVersion": AGENT_VERSION, "agentSha": "fake",
            "supervisor": {"running": True, "pid": 1, "version": AGENT_VERSION, "sha": "fake"},
            "pods": {f"{ns}/{n}": {"phase": p["phase"], "ready": p["ready"], "restarts": 0}
                     for (ns, n), p in self._pods.items()},
        }

    def _sync(self, request: dict[str, Any]) -> bool:
        network = request.get("network") or {}
        if network.get("podCIDR") and (self._cidr is None or str(self._cidr) != network["podCIDR"]):
            self._cidr = ipaddress.ip_network(network["podCIDR"])
            hosts = self._cidr.hosts()
            next(hosts)  # the gateway
            self._free = [str(h) for h in hosts][::-1]
            self._ips.clear()
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for spec in request.get("pods") or []:
            key = (str(spec.get("namespace") or "default"), str(spec["name"]))
            wanted[key] = spec
        changed = False
        for key in list(self._pods):
            if key not in wanted:
                del self._pods[key]
                ip = self._ips.pop(key, None)
                if ip is not None:
                    self._free.append(ip)
                changed = True
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for key, spec in wanted.items():
            current = self._pods.get(key)
            digest = str(spec.get("hash") or "") if not spec.get("keep") else (current or {}).get("hash", "")
            if current is not None and current["hash"] == digest:
                continue
            if key not in self._ips and self._free:
                self._ips[key] = self._free.pop()
            self._pods[key] = self._pod_status(key, digest, now)
            changed = True
        if changed:
            self.generation += 1
            self._status = None
        return changed

    def _pod_status(self, key: tuple[str, str], digest: str, started: str) -> dict[str, Any]:
        ready = key not in self._unready
        return {
            "name": key[1], "namespace": key[0], "hash": digest, "desiredHash": digest,
            "phase": "Running", "reason": "", "message": "", "ready": ready, "restarts": 0,
            "startedAt": started, "podIP": self._ips.get(key), "terminating": False,
            "containers": [{
                "name": "main", "state": "running", "reason": "", "message": "", "ready": ready,
                "started": True, "restartCount": 0, "pid": 1000 + len(self._ips), "startedAt": started,
                "finishedAt": None, "exitCode": None, "signal": None, "lastExitCode": None,
                "lastState": None, "limits": "applied", "runtime": "process", "image": None,
            }],
            "initContainers": [],
        }

    def _doc(self) -> dict[str, Any]:
        return {
            "ok": True, "generation": self.generation, "observedGeneration": self.generation, "stale": False,
            "supervisor": {"running": True, "pid": 1, "version": AGENT_VERSION, "sha": "fake"},
            "fence": None, "pods": [self._pods[k] for k in sorted(self._pods)],
        }

    def _status_bytes(self) -> bytes:
        if self._status is None:
            self._version += 1
            self._etag = f"{self.name}-{self._version}"  # as the agent's: new whenever the document changes
            self._status = json.dumps({**self._doc(), "etag": self._etag}).encode()
        return self._status

    # Tables by digest, and what each whole table or delta (by its bytes) makes: every node
    # is sent the same bytes, so only the first fake agent to get them parses them.
    _tables: dict[str, dict[str, Any]] = {}
    _made: dict[bytes, str | None] = {}

    def _table_after(self, payload: bytes, whole: bool) -> str | None:
        """The digest of the table a `services` or `servicesDelta` payload leaves this node
        holding, as the agent computes it; None when a delta does not start from its table."""
        key = hashlib.sha256(payload).digest() + (b"w" if whole else self._table_digest.encode())
        with FakeAgent._total_lock:
            if key in FakeAgent._made:
                return FakeAgent._made[key]
            value = json.loads(payload)
            made: str | None
            if whole:
                made = table_digest(value)
                FakeAgent._tables[made] = {str(e["name"]): e for e in value}
            elif value.get("base") != self._table_digest or value["base"] not in FakeAgent._tables:
                made = None
            else:
                table = dict(FakeAgent._tables[value["base"]])
                for name in value.get("remove") or []:
                    table.pop(name, None)
                for e in value.get("set") or []:
                    table[str(e["name"])] = e
                made = table_digest([table[n] for n in sorted(table)])
                made = made if made == value.get("digest") else None
                if made is not None:
                    FakeAgent._tables[made] = table
            FakeAgent._made[key] = made
            return made

    def _sync_answer(self, changed: bool, services_changed: bool, mismatch: bool = False) -> bytes:
        # The status document plus the sync's own keys, spliced as bytes: no re-serialising.
        proxy: dict[str, Any] = {"ok": True, "changed": services_changed, "message": "", "count": 0,
                                 "hash": self._services_hash, "repaired": "", "tableDigest": self._table_digest}
        if mismatch:
            proxy.update(ok=False, reason="ServicesBaseMismatch", message="not the delta's base")
        extra = json.dumps({"changed": changed, "acked": True, "services": proxy}).encode()
        return self._status_bytes()[:-1] + b", " + extra[1:]

    # -- what a bench changes ----------------------------------------------------------

    def set_ready(self, namespace: str, name: str, ready: bool) -> bool:
        """Flip one pod's readiness, as a failing or recovering probe would; False if absent."""
        with self._lock:
            key = (namespace, name)
            if ready:
                self._unready.discard(key)
            else:
                self._unready.add(key)
            pod = self._pods.get(key)
            if pod is None:
                return False
            pod["ready"] = ready
            pod["containers"][0]["ready"] = ready
            self._status = None
            return True

    def pods(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._pods)


class FakeStream:
    """What `Connection.open_stream` returns, for the agent's `serve` loop."""

    def __init__(self, agent: FakeAgent) -> None:
        self._agent = agent
        self._open = True

    @property
    def alive(self) -> bool:
        return self._open

    def request(self, line: bytes | Sequence[bytes], timeout: float) -> bytes:
        if not self._open:
            raise NodeError(self._agent.name, "stream closed")
        return self._agent.answer(line)

    def readline(self, timeout: float) -> bytes | None:
        time.sleep(min(timeout, 0.05))  # `watch` is not simulated: nothing ever comes
        return None

    def exit_status(self) -> int | None:
        return None if self._open else 0

    def close(self) -> None:
        self._open = False


class FakeConnection:
    """Stands in for gitorch.nodes.ssh.Connection: streams to a fake agent, nothing else."""

    def __init__(self, endpoint: Endpoint, agent: FakeAgent) -> None:
        self.endpoint = endpoint
        self.agent = agent

    def open_stream(self, command: str) -> FakeStream:
        return FakeStream(self.agent)

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> Result:
        verb = command.split()[-1] if command.split() else ""
        line = json.dumps({"verb": verb, **(json.loads(stdin) if stdin else {})}).encode()
        return Result(0, self.agent.answer(line), b"")

    def put(self, data: bytes, path: str, mode: int = 0o755) -> None:
        pass  # the agent file is "uploaded"

    def close(self) -> None:
        pass


class FakePool:
    """Stands in for gitorch.nodes.ssh.Pool: one fake agent per node name."""

    def __init__(self, agents: dict[str, FakeAgent]) -> None:
        self.agents = agents

    def get(self, endpoint: Endpoint) -> FakeConnection:
        agent = self.agents.setdefault(endpoint.name, FakeAgent(endpoint.name))
        return FakeConnection(endpoint, agent)

    def close(self) -> None:
        pass


def fake_fleet(endpoints: Iterable[Endpoint], agents: dict[str, FakeAgent], max_workers: int = 64) -> Fleet:
    """A real Fleet (real NodeClients, real fan-out) whose nodes are fake agents."""
    return Fleet(list(endpoints), FakePool(agents), max_workers=max_workers)  # type: ignore[arg-type]

"""Resource usage: the samples node agents report (metrics-server's job) and the bounded window
the controller keeps of them.

Purely computational, no side effects: the window is given the time with every sample.
Retention: per pod at most `samples` samples no older than `max_age` seconds; a pod or node
not reported for `max_age` seconds is forgotten; at most `max_pods` pods (the stalest go first).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PodKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class ContainerUsage:
    name: str
    cpu_millis: int | None
    memory_bytes: int | None
    last_oom: float | None = None  # when the container's previous instance was OOM-killed (unix time)


@dataclass(frozen=True)
class PodUsage:
    """One sample of one pod: the sum of its containers (a value is None when a container lacks it)."""

    namespace: str
    name: str
    node: str
    timestamp: float
    window: float  # seconds the CPU figure covers
    containers: tuple[ContainerUsage, ...]

    @property
    def cpu_millis(self) -> int | None:
        values = [c.cpu_millis for c in self.containers]
        return None if not values or any(v is None for v in values) else sum(v for v in values if v is not None)

    @property
    def memory_bytes(self) -> int | None:
        values = [c.memory_bytes for c in self.containers]
        return None if not values or any(v is None for v in values) else sum(v for v in values if v is not None)

    def value(self, resource: str) -> int | None:
        return self.cpu_millis if resource == "cpu" else self.memory_bytes if resource == "memory" else None


@dataclass(frozen=True)
class NodeUsage:
    node: str
    timestamp: float
    cpu_millis: int | None
    memory_bytes: int | None
    cgroup: str  # the node's cgroup version: v1, v2 or none


def parse_report(node: str, raw: Any) -> tuple[NodeUsage | None, list[PodUsage]]:
    """An agent's `metrics` document as typed samples; anything malformed is left out."""
    if not isinstance(raw, dict) or not isinstance(raw.get("timestamp"), (int, float)):
        return None, []
    ts = float(raw["timestamp"])
    interval = raw.get("intervalSeconds")
    window = float(interval) if isinstance(interval, (int, float)) and not isinstance(interval, bool) else 15.0
    n: dict[str, Any] = raw["node"] if isinstance(raw.get("node"), dict) else {}
    node_usage = NodeUsage(node, ts, _int(n.get("cpuMillis")), _int(n.get("memoryBytes")), str(raw.get("cgroup") or ""))
    pods: list[PodUsage] = []
    for p in raw.get("pods") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            continue
        containers = tuple(
            ContainerUsage(str(c.get("name")), _int(c.get("cpuMillis")), _int(c.get("memoryBytes")),
                           _when(c.get("lastOOMKilledAt")))
            for c in p.get("containers") or [] if isinstance(c, dict)
        )
        if containers:
            pods.append(PodUsage(str(p.get("namespace") or "default"), p["name"], node, ts, window, containers))
    return node_usage, pods


def _when(value: Any) -> float | None:
    """An agent's ISO time (UTC) as unix seconds; None when absent or not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


class UsageWindow:
    """The last samples of every pod and node, bounded in count and age (see the module docstring)."""

    def __init__(self, *, max_age: float = 600.0, samples: int = 40, max_pods: int = 100_000) -> None:
        self.max_age = max_age
        self.samples = samples
        self.max_pods = max_pods
        self._pods: dict[PodKey, deque[PodUsage]] = {}
        self._nodes: dict[str, NodeUsage] = {}

    def add(self, node: NodeUsage | None, pods: Iterable[PodUsage], now: float) -> None:
        """Record one report (a sample already held, by timestamp, is not added twice)."""
        if node is not None:
            self._nodes[node.node] = node
        for p in pods:
            kept = self._pods.get((p.namespace, p.name))
            if kept is None:
                kept = self._pods[(p.namespace, p.name)] = deque(maxlen=self.samples)
            if kept and kept[-1].timestamp >= p.timestamp and kept[-1].node == p.node:
                continue
            kept.append(p)
        self.prune(now)

    def prune(self, now: float) -> None:
        cutoff = now - self.max_age
        for key in list(self._pods):
            kept = self._pods[key]
            while kept and kept[0].timestamp < cutoff:
                kept.popleft()
            if not kept:
                del self._pods[key]
        for name in [n for n, u in self._nodes.items() if u.timestamp < cutoff]:
            del self._nodes[name]
        if len(self._pods) > self.max_pods:
            stalest = sorted(self._pods, key=lambda k: self._pods[k][-1].timestamp)
            for key in stalest[: len(self._pods) - self.max_pods]:
                del self._pods[key]

    def latest(self, fresh_after: float | None = None) -> dict[PodKey, PodUsage]:
        """Each pod's newest sample (taken after `fresh_after`, when given)."""
        return {k: v[-1] for k, v in self._pods.items() if fresh_after is None or v[-1].timestamp > fresh_after}

    def history(self, key: PodKey) -> list[PodUsage]:
        return list(self._pods.get(key, ()))

    def nodes(self) -> dict[str, NodeUsage]:
        return dict(self._nodes)

    def __len__(self) -> int:
        return sum(len(v) for v in self._pods.values())


def pod_row(u: PodUsage) -> dict[str, Any]:
    """A pod sample as `top pods -o json` and the control socket show it (stable keys)."""
    return {"namespace": u.namespace, "name": u.name, "node": u.node, "timestamp": u.timestamp,
            "window": u.window, "cpuMillis": u.cpu_millis, "memoryBytes": u.memory_bytes,
            "containers": [{"name": c.name, "cpuMillis": c.cpu_millis, "memoryBytes": c.memory_bytes}
                           for c in u.containers]}


def node_row(u: NodeUsage, capacity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cap = capacity or {}
    cpu_cap, mem_cap = _int(cap.get("cpuMillis")), _int(cap.get("memoryBytes"))
    return {"name": u.node, "timestamp": u.timestamp, "cpuMillis": u.cpu_millis, "memoryBytes": u.memory_bytes,
            "cgroup": u.cgroup,
            "cpuPercent": round(100 * u.cpu_millis / cpu_cap) if u.cpu_millis is not None and cpu_cap else None,
            "memoryPercent": round(100 * u.memory_bytes / mem_cap) if u.memory_bytes is not None and mem_cap else None}

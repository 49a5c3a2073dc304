"""Cluster autoscaling over standby servers, as Kubernetes' Cluster Autoscaler does for node groups.

Purely computational, no side effects: every function takes the time it needs. A Node with
`spec.standby: true` is a machine that exists (its agent answers and reports facts) but runs
no pods until the controller activates it. Following cluster-autoscaler/FAQ.md:

- scale-up: pods the scheduler could not place on the active nodes are simulated with gitorch's
  own scheduler on active + standby nodes; the fewest standby nodes that let as many of them run
  as all standby nodes together would are activated (expander least-nodes, ties by least-waste,
  CA's default expander, then by name). A pod no standby node could take (a nodeSelector none
  matches, a taint, a claim bound elsewhere) triggers nothing. Pods with a priority below -10
  (`--expendable-pods-priority-cutoff`) never trigger one.
- scale-down: an active standby node whose pods request less than `scaleDownUtilizationThreshold`
  (the larger of the cpu and memory ratios, DaemonSet pods included) of its allocatable, whose
  pods all may move and fit on the other active nodes (simulated), is unneeded; unneeded for
  `scaleDownUnneededTime` it is drained (the Node drain path: evictions within
  PodDisruptionBudgets, tainted ToBeDeletedByClusterAutoscaler) and, once only DaemonSet pods are
  left, returned to standby. One node drains at a time (`--max-drain-parallelism` 1). Never a
  node annotated `cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"`, nor one running
  a StatefulSet pod, a bare Pod, a pod with a claim (gitorch volumes are node-local), a pod with
  local storage (hostPath, emptyDir not in memory) unless annotated safe-to-evict "true" or
  listing those volumes in safe-to-evict-local-volumes, or a pod annotated safe-to-evict "false".
- DaemonSet pods: a standby node runs no pods at all, so its DaemonSet pods start once it is
  activated and stop once it is back on standby (a CA node group at zero has no node to run them).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gitorch.model.selectors import matches
from gitorch.reconcile.scheduler import Decision, NodeInfo, PodInfo, Resources, schedule

STANDBY = "Standby"
ACTIVE = "Active"
SCALING_DOWN = "ScalingDown"

SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
SAFE_TO_EVICT_LOCAL_VOLUMES = "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"
SCALE_DOWN_DISABLED = "cluster-autoscaler.kubernetes.io/scale-down-disabled"
TO_BE_DELETED = "ToBeDeletedByClusterAutoscaler"
DELETION_CANDIDATE = "DeletionCandidateOfClusterAutoscaler"
EXPENDABLE_PRIORITY_CUTOFF = -10
"""Pods below this priority neither trigger a scale-up nor hold a node (CA's default cutoff)."""
DRAIN_TIMEOUT = 600.0
"""Seconds a scale-down may take to drain its node; then it fails (ScaleDownFailed) and the node
stays active (CA's --max-graceful-termination-sec)."""
MAX_SIMULATIONS = 256
"""Scheduler runs one scale-up may spend on an exact search for the fewest nodes; past it, the
nodes are added greedily (the one that lets the most pods run first)."""


@dataclass(frozen=True)
class Settings:
    """The Cluster's spec.autoscaling, in Cluster Autoscaler's flag names."""

    utilization_threshold: float = 0.5
    """--scale-down-utilization-threshold: below it, a node's requests make it a candidate."""
    unneeded_time: float = 600.0
    """--scale-down-unneeded-time, in seconds: how long a node stays unneeded before it drains."""
    scale_down_enabled: bool = True
    """--scale-down-enabled: false keeps every activated node active."""


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def duration_seconds(text: str) -> float:
    """A Go duration as CA's flags take it ("10m", "1m30s", "90s"), in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 10m, 90s or 1m30s")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def settings(cluster_spec: Mapping[str, Any] | None) -> Settings:
    """The Cluster's spec.autoscaling (validated by its schema; defaults where it is silent)."""
    raw = (cluster_spec or {}).get("autoscaling") or {}
    out = Settings()
    if "scaleDownUtilizationThreshold" in raw:
        out = replace(out, utilization_threshold=float(raw["scaleDownUtilizationThreshold"]))
    if "scaleDownUnneededTime" in raw:
        out = replace(out, unneeded_time=duration_seconds(str(raw["scaleDownUnneededTime"])))
    if "scaleDownEnabled" in raw:
        out = replace(out, scale_down_enabled=bool(raw["scaleDownEnabled"]))
    return out


@dataclass(frozen=True)
class NodeScaling:
    """A standby node's activation state, kept in its Node's status in the store (never in Git)."""

    state: str  # Standby | Active | ScalingDown
    since: float
    reason: str = ""
    unneeded_since: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "since": self.since, "reason": self.reason}
        if self.unneeded_since is not None:
            out["unneededSince"] = self.unneeded_since
        return out

    @staticmethod
    def from_json(raw: Any) -> NodeScaling | None:
        if not isinstance(raw, Mapping) or raw.get("state") not in (STANDBY, ACTIVE, SCALING_DOWN):
            return None
        unneeded = raw.get("unneededSince")
        return NodeScaling(str(raw["state"]), float(raw.get("since") or 0.0), str(raw.get("reason") or ""),
                           float(unneeded) if isinstance(unneeded, int | float) else None)

    def describe(self) -> str:
        """One line for status messages, `get nodes` and `describe node`."""
        if self.state == STANDBY:
            text = "Standby (runs no pods; activated when pending pods need it)"
        elif self.state == SCALING_DOWN:
            text = "ScalingDown (draining, then back to standby)"
        else:
            text = "Active"
        if self.reason:
            text += f": {self.reason}"
        return text


def initial(occupied: bool, now: float) -> NodeScaling:
    """The state of a node first seen with spec.standby: an idle one is on standby at once; one
    running pods stays active until the scale-down finds it unneeded (its pods are never evicted
    just because a field changed)."""
    if occupied:
        return NodeScaling(ACTIVE, now, "running pods when it became a standby node")
    return NodeScaling(STANDBY, now)


# --- scale-up -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleUp:
    """Standby nodes to activate, and the pods the simulation placed on them (or elsewhere)."""

    nodes: tuple[str, ...]
    decisions: tuple[Decision, ...]

    @property
    def helped(self) -> tuple[PodInfo, ...]:
        return tuple(d.pod for d in self.decisions if d.node is not None)


def choose(
    pending: Sequence[PodInfo],
    active: Sequence[NodeInfo],
    candidates: Sequence[NodeInfo],
    bound: Sequence[tuple[PodInfo, str]] = (),
    *,
    preferred: Iterable[str] = (),
    max_simulations: int = MAX_SIMULATIONS,
) -> ScaleUp | None:
    """The fewest `candidates` (standby nodes, as they would be once active) that let as many of
    the `pending` pods run as all candidates together would, on top of the `active` nodes
    running `bound`; None when no candidate helps any of them. Among sets of the same size:
    nodes in `preferred` first (a scale-down to cancel), then least waste (idle cpu and memory
    on the chosen nodes once the pods are on them), then names."""
    pending = [p for p in pending if p.priority >= EXPENDABLE_PRIORITY_CUTOFF]
    if not pending or not candidates:
        return None
    favoured = set(preferred)
    ordered = sorted(candidates, key=lambda n: (n.name not in favoured, n.name))
    runs = 0
    # The pending pods fit on no active node, and adding nodes makes no room there: the active nodes
    # take part with no room at all, and only with the pods that can constrain the pending ones
    # (those their affinity or spread selects, those with anti-affinity of their own). A simulation
    # then costs the pending pods, not the cluster's every pod.
    full = {n.name for n in ordered}
    active = [replace(n, allocatable=Resources()) for n in active]
    bound = _constraining(pending, bound, full)

    def simulate(chosen: Sequence[NodeInfo]) -> tuple[int, tuple[Decision, ...]]:
        nonlocal runs
        runs += 1
        decisions = tuple(schedule(pending, [*active, *chosen], bound))
        return sum(1 for d in decisions if d.node is not None), decisions

    most, _ = simulate(ordered)
    if most == 0:
        return None

    def rank(chosen: Sequence[NodeInfo], decisions: Sequence[Decision]) -> tuple[Any, ...]:
        return (sum(1 for n in chosen if n.name not in favoured), _waste(chosen, decisions, bound),
                tuple(n.name for n in chosen))

    # Exact: the sets of 1, 2, ... nodes, while the budget lasts.
    budget = max_simulations - runs
    for size in range(1, len(ordered) + 1):
        combos = list(itertools.combinations(ordered, size))
        if len(combos) > budget:
            break
        budget -= len(combos)
        best: tuple[tuple[Any, ...], tuple[NodeInfo, ...], tuple[Decision, ...]] | None = None
        for combo in combos:
            placed, decisions = simulate(combo)
            if placed == most:
                key = rank(combo, decisions)
                if best is None or key < best[0]:
                    best = (key, combo, decisions)
        if best is not None:
            return ScaleUp(tuple(n.name for n in best[1]), best[2])
    # Greedy past the budget: add the node that lets the most pods run, until all that can do.
    chosen: list[NodeInfo] = []
    made_last: tuple[Decision, ...] = ()
    placed = 0
    while placed < most:
        step = None
        for n in ordered:
            if n in chosen:
                continue
            got, made = simulate([*chosen, n])
            key = (-got, *rank([*chosen, n], made))
            if step is None or key < step[0]:
                step = (key, n, got, made)
        if step is None or step[2] <= placed:
            break
        chosen.append(step[1])
        placed, made_last = step[2], step[3]
    return ScaleUp(tuple(n.name for n in chosen), made_last) if chosen else None


def _constraining(pending: Sequence[PodInfo], bound: Sequence[tuple[PodInfo, str]],
                  keep_on: set[str]) -> list[tuple[PodInfo, str]]:
    """The placed pods that can decide where `pending` pods may go: all on the nodes `keep_on`, and
    elsewhere those a pending pod's pod (anti-)affinity or topology spread selects (by labels: a
    superset of what namespaces narrow) and those carrying a required anti-affinity."""
    selectors: list[Mapping[str, Any]] = []
    for p in pending:
        for section in ("podAffinity", "podAntiAffinity"):
            terms = p.affinity.get(section) or {}
            for term in terms.get("requiredDuringSchedulingIgnoredDuringExecution") or []:
                selectors.append(term.get("labelSelector") or {})
            for weighted in terms.get("preferredDuringSchedulingIgnoredDuringExecution") or []:
                selectors.append((weighted.get("podAffinityTerm") or {}).get("labelSelector") or {})
        selectors.extend(c.get("labelSelector") or {} for c in p.topology_spread)
    out = []
    for pod, node in bound:
        anti = (pod.affinity.get("podAntiAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
        if node in keep_on or anti or any(matches(sel, pod.labels) for sel in selectors if sel):
            out.append((pod, node))
    return out


def _waste(chosen: Sequence[NodeInfo], decisions: Sequence[Decision], bound: Sequence[tuple[PodInfo, str]]) -> float:
    """least-waste's score: the idle share of cpu and of memory on the chosen nodes, averaged."""
    names = {n.name for n in chosen}
    cpu = sum(n.allocatable.cpu_millis for n in chosen)
    mem = sum(n.allocatable.memory_bytes for n in chosen)
    used = [p.requests for p, node in bound if node in names]
    used += [d.pod.requests for d in decisions if d.node in names]
    idle_cpu = (cpu - sum(r.cpu_millis for r in used)) / cpu if cpu else 0.0
    idle_mem = (mem - sum(r.memory_bytes for r in used)) / mem if mem else 0.0
    return (idle_cpu + idle_mem) / 2


# --- scale-down -----------------------------------------------------------------------------


def utilization(requests: Iterable[Resources], node: NodeInfo) -> float:
    """CA's node utilization: the larger of requested cpu / allocatable and memory / allocatable."""
    cpu = mem = 0
    for r in requests:
        cpu += r.cpu_millis
        mem += r.memory_bytes
    alloc = node.allocatable
    return max(cpu / alloc.cpu_millis if alloc.cpu_millis else 0.0,
               mem / alloc.memory_bytes if alloc.memory_bytes else 0.0)


def blocker(name: str, owner_kind: str, template: Mapping[str, Any]) -> str:
    """Why this pod keeps its node from scaling down ("" when it may move), as CA decides for the
    pods of a node it drains (DaemonSet pods are not asked: they go with the node)."""
    meta = template.get("metadata") or {}
    notes = meta.get("annotations") or {}
    spec = template.get("spec") or {}
    safe = str(notes.get(SAFE_TO_EVICT, "")).lower()
    if safe == "false":
        return f'pod {name} is annotated {SAFE_TO_EVICT}: "false"'
    if owner_kind == "StatefulSet":
        return f"pod {name} belongs to a StatefulSet (its volumes stay on its node)"
    if owner_kind == "Pod" and safe != "true":
        return f"pod {name} is not backed by a controller"
    listed = {v.strip() for v in str(notes.get(SAFE_TO_EVICT_LOCAL_VOLUMES, "")).split(",") if v.strip()}
    for v in spec.get("volumes") or []:
        if not isinstance(v, Mapping):
            continue
        claim = v.get("persistentVolumeClaim")
        if isinstance(claim, Mapping):
            return f"pod {name} has a local volume (claim {claim.get('claimName')}, bound to its node)"
        empty = v.get("emptyDir")
        local = "hostPath" in v or (isinstance(empty, Mapping) and empty.get("medium") != "Memory") or (
            "emptyDir" in v and not isinstance(empty, Mapping))
        if local and safe != "true" and v.get("name") not in listed:
            return f"pod {name} has local storage (volume {v.get('name')})"
    return ""


def fit_elsewhere(pods: Sequence[PodInfo], others: Sequence[NodeInfo], bound: Sequence[tuple[PodInfo, str]]) -> str:
    """"" when every pod fits on the `others` (running `bound`) together, else why the first does not."""
    if not pods:
        return ""
    for d in schedule(pods, others, bound):
        if d.node is None:
            return f"pod {d.pod.namespace}/{d.pod.name} would fit nowhere else: {d.message}"
    return ""

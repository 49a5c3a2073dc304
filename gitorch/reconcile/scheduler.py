"""The scheduler: place pending pods on nodes, filter then score, as kube-scheduler does.

Purely computational, no side effects: no I/O, no clock, no randomness. The same inputs
give the same decisions, in the same order, whatever order the inputs come in.

Filters run in kube-scheduler's plugin order, after gitorch's own (container runtime, node
pressure): NodeUnschedulable, TaintToleration (a node that is not ready carries
node.kubernetes.io/unreachable), NodeAffinity, NodePorts, NodeResourcesFit,
PodTopologySpread, InterPodAffinity. A node reports the reasons of the first filter it
fails, and an unschedulable pod gets kube-scheduler's FitError message. Scores are
kube-scheduler's defaults and weights, plus OwnerSpread (SelectorSpread's formula over
pods of the same owner). Ties go to the node with the lowest crc32(node name) XOR
crc32("namespace/pod name"): stable, and different for each pod, so equal replicas do not
all pick the same first node.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import compress, repeat
from operator import add, xor
from typing import Any

from gitorch.model.quantities import cpu_millis, to_bytes
from gitorch.model.selectors import expression_matches, matches

HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
REGION = "topology.kubernetes.io/region"
NAMESPACE_NAME = "kubernetes.io/metadata.name"  # the label every namespace carries

# Taints the node lifecycle controller would put on a node for its conditions.
UNREACHABLE = "node.kubernetes.io/unreachable"
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
MEMORY_PRESSURE = "node.kubernetes.io/memory-pressure"
DISK_PRESSURE = "node.kubernetes.io/disk-pressure"
PID_PRESSURE = "node.kubernetes.io/pid-pressure"

MAX_NODE_SCORE = 100
# kube-scheduler's defaults; OwnerSpread stands in for its (removed) SelectorSpread / the
# system-default topology spreading, at the latter's weight.
WEIGHTS: Mapping[str, int] = {
    "TaintToleration": 3,
    "NodeAffinity": 2,
    "NodeResourcesFit": 1,
    "PodTopologySpread": 2,
    "InterPodAffinity": 2,
    "NodeResourcesBalancedAllocation": 1,
    "OwnerSpread": 2,
}
# What a container without requests counts as when scoring (k8s: DefaultMilliCPURequest...).
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024
MIN_FEASIBLE_NODES_TO_FIND = 100
MIN_FEASIBLE_NODES_PERCENTAGE = 5
_ZONE_WEIGHTING = 2.0 / 3.0
_HARD_POD_AFFINITY_WEIGHT = 1

NO_NODES = "no nodes available to schedule pods"
R_RUNTIME = "node(s) had no container runtime"
R_MEMORY_PRESSURE = "node(s) had memory pressure"
R_DISK_PRESSURE = "node(s) had disk pressure"
R_PID_PRESSURE = "node(s) had pid pressure"
R_UNSCHEDULABLE = "node(s) were unschedulable"
R_NODE_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
R_PORTS = "node(s) didn't have free ports for the requested pod ports"
R_TOO_MANY_PODS = "Too many pods"
R_CPU = "Insufficient cpu"
R_MEMORY = "Insufficient memory"
R_EPHEMERAL = "Insufficient ephemeral-storage"
R_SPREAD = "node(s) didn't match pod topology spread constraints"
R_SPREAD_LABEL = R_SPREAD + " (missing required label)"
R_POD_AFFINITY = "node(s) didn't match pod affinity rules"
R_POD_ANTI_AFFINITY = "node(s) didn't match pod anti-affinity rules"
R_EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"


@dataclass(frozen=True)
class Resources:
    """Amounts the scheduler accounts: a pod's requests or a node's allocatable.

    A node's `pods` is how many pods it takes (the kubelet's default is 110); a pod always
    counts as one, whatever its `pods`.
    """

    cpu_millis: int = 0
    memory_bytes: int = 0
    pods: int = 0
    ephemeral_bytes: int = 0


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # NoSchedule | PreferNoSchedule | NoExecute


@dataclass(frozen=True)
class NodeInfo:
    """A node as the scheduler sees it; `kubernetes.io/hostname` defaults to the name."""

    name: str
    labels: Mapping[str, str]
    allocatable: Resources
    taints: tuple[Taint, ...] = ()
    ready: bool = True  # False: NotReady or unreachable, tainted node.kubernetes.io/unreachable
    unschedulable: bool = False
    memory_pressure: bool = False
    disk_pressure: bool = False
    pid_pressure: bool = False
    runtimes: frozenset[str] = frozenset({"process"})  # plus "podman"/"docker" when present


@dataclass(frozen=True)
class PodInfo:
    """A pod to place or already placed; the fields are the pod spec's, in Kubernetes' shape."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    requests: Resources
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity: Mapping[str, Any] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    topology_spread: tuple[Mapping[str, Any], ...] = ()
    host_ports: tuple[tuple[int, str], ...] = ()
    needs_container_runtime: bool = False
    owner: str = ""  # e.g. "Deployment/shop/web": replicas of one owner are spread
    priority: int = 0


@dataclass(frozen=True)
class Decision:
    """Where a pod goes (`node`), or why it cannot go anywhere (`message`).

    `scores` holds the chosen node's weighted score per score plugin that ran; their sum
    is the node's total.
    """

    pod: PodInfo
    node: str | None
    message: str = ""
    scores: Mapping[str, int] = field(default_factory=dict)


def schedule(
    pending: Sequence[PodInfo],
    nodes: Sequence[NodeInfo],
    bound: Sequence[tuple[PodInfo, str]] = (),
    *,
    percentage_of_nodes_to_score: int = 0,
) -> list[Decision]:
    """Place `pending` pods one at a time, by priority then namespace/name, on `nodes`
    already running `bound`; each decision sees the pods placed before it.

    Each search stops once it has found `percentage_of_nodes_to_score` percent of the nodes
    feasible, kube-scheduler's setting: 0 is adaptive (max(5, 50 - nodes/125)%, at least
    100 nodes), 100 scores every feasible node. Searches walk the nodes round robin, zones
    interleaved, so a pod that fits anywhere is placed. Pods bound to a node not in `nodes`
    are ignored. Decisions come back in scheduling order.
    """
    order = sorted(pending, key=lambda p: (-p.priority, p.namespace, p.name))
    if not nodes:
        return [Decision(p, None, NO_NODES) for p in order]
    cluster = _Cluster(nodes, percentage_of_nodes_to_score)
    for pod, node_name in bound:
        i = cluster.index.get(node_name)
        if i is not None:
            cluster.bind(pod, i)
    return [cluster.place(pod) for pod in order]


def pod_requests(pod_template_spec: Mapping[str, Any]) -> Resources:
    """What a pod requests, from a pod template (`{metadata, spec}`) or a pod spec.

    As Kubernetes: containers add up, init containers take the max (sidecars, the init
    containers with `restartPolicy: Always`, add up too), plus `overhead`; a request left
    out defaults to the limit.
    """
    spec = _spec_of(pod_template_spec)
    names = ("cpu", "memory", "ephemeral-storage")
    total = [0, 0, 0]
    for c in spec.get("containers") or []:
        for k, v in enumerate(_container_requests(c)):
            total[k] += v
    sidecars = [0, 0, 0]
    init_peak = [0, 0, 0]
    for c in spec.get("initContainers") or []:
        req = _container_requests(c)
        for k in range(len(names)):
            if c.get("restartPolicy") == "Always":
                sidecars[k] += req[k]
                init_peak[k] = max(init_peak[k], sidecars[k])
            else:
                init_peak[k] = max(init_peak[k], sidecars[k] + req[k])
    overhead = spec.get("overhead") or {}
    result = [
        max(total[k] + sidecars[k], init_peak[k]) + _amount(names[k], overhead.get(names[k])) for k in range(len(names))
    ]
    return Resources(cpu_millis=result[0], memory_bytes=result[1], pods=1, ephemeral_bytes=result[2])


def pod_info_from_template(name: str, namespace: str, template: Mapping[str, Any], owner: str = "") -> PodInfo:
    """A PodInfo for one pod of a workload, from its pod template (`{metadata, spec}`)."""
    spec = _spec_of(template)
    metadata = template.get("metadata") or {}
    containers = list(spec.get("containers") or [])
    inits = list(spec.get("initContainers") or [])
    ports: list[tuple[int, str]] = []
    for c in containers + [i for i in inits if i.get("restartPolicy") == "Always"]:
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                ports.append((int(p["hostPort"]), str(p.get("protocol") or "TCP")))
    return PodInfo(
        name=name,
        namespace=namespace,
        labels=dict(metadata.get("labels") or {}),
        requests=pod_requests(spec),
        node_selector=dict(spec.get("nodeSelector") or {}),
        affinity=dict(spec.get("affinity") or {}),
        tolerations=tuple(spec.get("tolerations") or ()),
        topology_spread=tuple(spec.get("topologySpreadConstraints") or ()),
        host_ports=tuple(ports),
        needs_container_runtime=any("image" in c for c in containers + inits),
        owner=owner,
        priority=int(spec.get("priority") or 0),
    )


def unschedulable_message(num_nodes: int, reasons: Mapping[str, int]) -> str:
    """kube-scheduler's FitError text: reason histogram entries sorted as strings."""
    if num_nodes == 0:
        return NO_NODES
    entries = sorted(f"{count} {reason}" for reason, count in reasons.items())
    return f"0/{num_nodes} nodes are available: {', '.join(entries)}."


# ---- pod spec helpers ---------------------------------------------------------------------


def _spec_of(template: Mapping[str, Any]) -> Mapping[str, Any]:
    if "containers" not in template and isinstance(template.get("spec"), Mapping):
        spec: Mapping[str, Any] = template["spec"]
        return spec
    return template


def _amount(resource: str, value: Any) -> int:
    if value is None:
        return 0
    return cpu_millis(value) if resource == "cpu" else to_bytes(value)


def _container_requests(container: Mapping[str, Any]) -> tuple[int, int, int]:
    res = container.get("resources") or {}
    requests = res.get("requests") or {}
    limits = res.get("limits") or {}
    out = []
    for r in ("cpu", "memory", "ephemeral-storage"):
        value = requests.get(r)
        out.append(_amount(r, limits.get(r) if value is None else value))
    return out[0], out[1], out[2]


def _freeze(value: Any) -> Any:
    """A hashable, order-independent image of plain data, to key caches."""
    if isinstance(value, Mapping):
        return ("m", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("l", tuple(_freeze(v) for v in value))
    return value


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Taint) -> bool:
    for t in tolerations:
        effect = t.get("effect") or ""
        if effect and effect != taint.effect:
            continue
        key = t.get("key") or ""
        if key and key != taint.key:
            continue
        op = t.get("operator") or "Equal"
        if op == "Exists" or (op == "Equal" and str(t.get("value") or "") == taint.value):
            return True
    return False


def _node_term_matches(term: Mapping[str, Any], labels: Mapping[str, str], name: str) -> bool:
    """One NodeSelectorTerm: its requirements are ANDed; an empty term matches nothing."""
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False
    if not all(expression_matches(e, labels) for e in exprs):
        return False
    for f in fields:
        if f.get("key") != "metadata.name" or f.get("operator") not in ("In", "NotIn"):
            return False
        if not expression_matches({**f, "key": "n"}, {"n": name}):
            return False
    return True


# ---- the state of one schedule() call -----------------------------------------------------


class _Matcher:
    """Which pods a pod-affinity term or spread constraint selects: namespaces and labels."""

    __slots__ = ("key", "ns_names", "ns_selector", "selector")

    def __init__(
        self,
        ns_names: frozenset[str],
        ns_selector: Mapping[str, Any] | None,
        selector: Mapping[str, Any] | None,
    ) -> None:
        self.ns_names = ns_names
        self.ns_selector = ns_selector
        self.selector = selector
        self.key = (ns_names, _freeze(ns_selector), _freeze(selector))

    def matches(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if self.selector is None:  # a null selector selects no pods
            return False
        if namespace not in self.ns_names and (
            self.ns_selector is None or not matches(self.ns_selector, {NAMESPACE_NAME: namespace})
        ):
            return False
        return matches(self.selector, labels)


class _Group:
    """The placed pods one matcher selects: counts per node and per topology domain."""

    __slots__ = ("domains", "matcher", "per_node")

    def __init__(self, matcher: _Matcher) -> None:
        self.matcher = matcher
        self.per_node: dict[int, int] = {}
        self.domains: dict[str, dict[str, int]] = {}


class _Held:
    """Pod-affinity terms carried by placed pods, which constrain or attract later pods."""

    __slots__ = ("domains", "kind", "matcher", "topology_key", "weight")

    def __init__(self, kind: str, weight: int, topology_key: str, matcher: _Matcher) -> None:
        self.kind = kind  # "anti" (required anti-affinity) or "score" (weight signed)
        self.weight = weight
        self.topology_key = topology_key
        self.matcher = matcher
        self.domains: dict[str, int] = {}  # topology value -> number of holders there


@dataclass
class _Static:
    """What depends only on the pod's node-side constraints and the nodes: cached per shape."""

    feasible: list[int]  # node indices passing every static filter, in walk order
    reasons: Counter[str]  # failure reasons of the others
    affinity_ok: bytearray  # nodeSelector + required node affinity
    taints_ok: bytearray  # NoSchedule/NoExecute taints tolerated
    taint_raw: list[int] | None  # untolerated PreferNoSchedule taints per node
    affinity_raw: list[int] | None  # preferred node affinity weight per node
    eligible: dict[Any, bytearray] = field(default_factory=dict)
    domains: dict[Any, set[str]] = field(default_factory=dict)


@dataclass
class _Fit:
    """For pods of one size: which nodes have room, and their resource scores (summed)."""

    mask: bytearray
    score: list[int]
    seen: int  # how much of the bind log is reflected


@dataclass
class _Spread:
    max_skew: int
    topology_key: str
    hard: bool
    group: _Group
    min_domains: int
    honor_affinity: bool
    honor_taints: bool
    self_match: bool


@dataclass
class _Shape:
    """A pod's pod-side constraints, compiled against the call's groups; cached per shape."""

    cls: int
    required_affinity: list[tuple[_Group, str]]
    matches_own_affinity: bool
    required_anti: list[tuple[_Group, str]]
    preferred: list[tuple[_Group, str, int]]  # weight negative for anti-affinity
    spreads: list[_Spread]
    held: list[tuple[str, int, str, _Matcher]]  # terms this pod carries once placed


@dataclass
class _Checks:
    """The dynamic filters beyond resources for one pod, evaluated against current counts."""

    ports: frozenset[tuple[int, str]]
    spread: list[tuple[str, set[str]]]  # (topology key, domains too skewed)
    affinity: list[tuple[str, set[str]]] | None  # (key, domains with matching pods)
    affinity_fails: bool  # no term can be satisfied at all
    anti: list[tuple[str, set[str]]]
    existing_anti: list[tuple[str, set[str]]]

    @property
    def trivial(self) -> bool:
        return not (
            self.ports
            or self.spread
            or self.affinity is not None
            or self.affinity_fails
            or self.anti
            or self.existing_anti
        )


def _walk_order(nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
    """Nodes by name, zones interleaved (kube-scheduler's node tree), so that a sample of
    consecutive nodes spans zones."""
    by_zone: dict[tuple[str, str], list[NodeInfo]] = {}
    seen: set[str] = set()
    for n in sorted(nodes, key=lambda n: n.name):
        if n.name in seen:
            continue
        seen.add(n.name)
        by_zone.setdefault((n.labels.get(REGION, ""), n.labels.get(ZONE, "")), []).append(n)
    lists = [by_zone[z] for z in sorted(by_zone)]
    out: list[NodeInfo] = []
    for k in range(max(len(v) for v in lists)):
        out.extend(v[k] for v in lists if k < len(v))
    return out


class _Cluster:
    def __init__(self, nodes: Sequence[NodeInfo], percentage: int) -> None:
        self.nodes = _walk_order(nodes)
        n = len(self.nodes)
        self.n = n
        self.index = {node.name: i for i, node in enumerate(self.nodes)}
        self.names = [node.name for node in self.nodes]
        self.labels: list[Mapping[str, str]] = [
            node.labels if HOSTNAME in node.labels else {**node.labels, HOSTNAME: node.name} for node in self.nodes
        ]
        self.zone = [
            "\0".join((lab.get(REGION, ""), lab.get(ZONE, ""))) if (REGION in lab or ZONE in lab) else ""
            for lab in self.labels
        ]
        self.alloc_cpu = [node.allocatable.cpu_millis for node in self.nodes]
        self.alloc_mem = [node.allocatable.memory_bytes for node in self.nodes]
        self.alloc_eph = [node.allocatable.ephemeral_bytes for node in self.nodes]
        self.free_cpu = list(self.alloc_cpu)
        self.free_mem = list(self.alloc_mem)
        self.free_eph = list(self.alloc_eph)
        self.free_pods = [node.allocatable.pods for node in self.nodes]
        self.nz_cpu = [0] * n  # requests with defaults for empty ones, for scoring
        self.nz_mem = [0] * n
        self.ports: list[set[tuple[int, str]] | None] = [None] * n
        self.node_hash = [zlib.crc32(name.encode()) for name in self.names]
        self.taints: list[tuple[Taint, ...]] = [
            node.taints
            if node.ready or any(t.key == UNREACHABLE for t in node.taints)
            else (Taint(UNREACHABLE, "", "NoSchedule"), Taint(UNREACHABLE, "", "NoExecute"), *node.taints)
            for node in self.nodes
        ]
        if percentage <= 0:
            percentage = max(MIN_FEASIBLE_NODES_PERCENTAGE, 50 - n // 125)
        self.to_find = n if n < MIN_FEASIBLE_NODES_TO_FIND else n * min(percentage, 100) // 100
        self.to_find = min(n, max(self.to_find, MIN_FEASIBLE_NODES_TO_FIND))
        self.next_start = 0

        # pods by class: a class is (namespace, labels); matchers are evaluated per class
        self.classes: dict[tuple[str, Any], int] = {}
        self.class_pod: list[tuple[str, Mapping[str, str]]] = []
        self.class_nodes: list[dict[int, int]] = []
        self.class_groups: list[list[_Group]] = []
        self.class_held: list[list[_Held]] = []
        self.groups: dict[Any, _Group] = {}
        self.held: dict[Any, _Held] = {}
        self.owner_nodes: dict[str, dict[int, int]] = {}
        self.owner_zones: dict[str, dict[str, int]] = {}

        self.fits: dict[tuple[int, int, int], _Fit] = {}
        self.columns: dict[str, list[str | None]] = {}
        self.log: list[int] = []  # nodes in the order pods were bound to them
        self.failures: dict[Any, tuple[int, str]] = {}  # pod likeness -> (log length, message)
        self.statics: dict[Any, _Static] = {}
        self.shapes: dict[Any, _Shape] = {}
        self.frozen: dict[int, tuple[Any, Any]] = {}
        self.taint_verdicts: dict[tuple[Any, tuple[Taint, ...]], tuple[Taint | None, int]] = {}

    # -- caching helpers --

    def _fz(self, value: Any) -> Any:
        """_freeze memoised by identity: replicas usually share their spec's objects."""
        hit = self.frozen.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        frozen = _freeze(value)
        self.frozen[id(value)] = (value, frozen)
        return frozen

    def _class(self, namespace: str, labels: Mapping[str, str]) -> int:
        key = (namespace, self._fz(labels))
        cls = self.classes.get(key)
        if cls is None:
            cls = len(self.class_pod)
            self.classes[key] = cls
            self.class_pod.append((namespace, labels))
            self.class_nodes.append({})
            self.class_groups.append([g for g in self.groups.values() if g.matcher.matches(namespace, labels)])
            self.class_held.append([h for h in self.held.values() if h.matcher.matches(namespace, labels)])
        return cls

    def _group(self, matcher: _Matcher) -> _Group:
        group = self.groups.get(matcher.key)
        if group is None:
            group = _Group(matcher)
            self.groups[matcher.key] = group
            per_node = group.per_node
            for cls, (ns, labels) in enumerate(self.class_pod):
                if matcher.matches(ns, labels):
                    self.class_groups[cls].append(group)
                    for i, count in self.class_nodes[cls].items():
                        per_node[i] = per_node.get(i, 0) + count
        return group

    def _domains(self, group: _Group, key: str) -> dict[str, int]:
        """Matching pods per value of topology `key` (nodes without the label left out)."""
        counts = group.domains.get(key)
        if counts is None:
            counts = {}
            labels = self.labels
            for i, count in group.per_node.items():
                value = labels[i].get(key)
                if value is not None:
                    counts[value] = counts.get(value, 0) + count
            group.domains[key] = counts
        return counts

    def _add_held(self, kind: str, weight: int, key: str, matcher: _Matcher, i: int) -> None:
        hkey = (kind, weight, key, matcher.key)
        held = self.held.get(hkey)
        if held is None:
            held = self.held[hkey] = _Held(kind, weight, key, matcher)
            for cls, (ns, labels) in enumerate(self.class_pod):
                if matcher.matches(ns, labels):
                    self.class_held[cls].append(held)
        value = self.labels[i].get(key)
        if value is not None:
            held.domains[value] = held.domains.get(value, 0) + 1

    # -- binding --

    def bind(self, pod: PodInfo, i: int, shape: _Shape | None = None) -> None:
        """Account `pod` on node `i`: resources, ports, and every count that sees it."""
        req = pod.requests
        self.log.append(i)
        self.free_cpu[i] -= req.cpu_millis
        self.free_mem[i] -= req.memory_bytes
        self.free_eph[i] -= req.ephemeral_bytes
        self.free_pods[i] -= 1
        self.nz_cpu[i] += req.cpu_millis or DEFAULT_MILLI_CPU
        self.nz_mem[i] += req.memory_bytes or DEFAULT_MEMORY
        if pod.host_ports:
            used = self.ports[i]
            if used is None:
                used = self.ports[i] = set()
            used.update(_port_set(pod.host_ports))
        if shape is None:
            shape = self._shape(pod)
        cls = shape.cls
        on = self.class_nodes[cls]
        on[i] = on.get(i, 0) + 1
        labels = self.labels[i]
        for group in self.class_groups[cls]:
            group.per_node[i] = group.per_node.get(i, 0) + 1
            for key, counts in group.domains.items():
                value = labels.get(key)
                if value is not None:
                    counts[value] = counts.get(value, 0) + 1
        for kind, weight, key, matcher in shape.held:
            self._add_held(kind, weight, key, matcher, i)
        if pod.owner:
            nodes = self.owner_nodes.setdefault(pod.owner, {})
            nodes[i] = nodes.get(i, 0) + 1
            zone = self.zone[i]
            if zone:
                zones = self.owner_zones.setdefault(pod.owner, {})
                zones[zone] = zones.get(zone, 0) + 1

    # -- compiling a pod --

    def _static(self, pod: PodInfo) -> _Static:
        node_affinity = pod.affinity.get("nodeAffinity") or {}
        key = (
            pod.needs_container_runtime,
            self._fz(pod.tolerations),
            self._fz(pod.node_selector),
            self._fz(node_affinity),
        )
        static = self.statics.get(key)
        if static is not None:
            return static
        tolerations = pod.tolerations
        required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
        terms = None if required is None else list(required.get("nodeSelectorTerms") or [])
        preferred = [
            (int(p.get("weight") or 0), p.get("preference") or {})
            for p in node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        ]
        pressure = [
            (attr, reason)
            for attr, taint_key, reason in (
                ("memory_pressure", MEMORY_PRESSURE, R_MEMORY_PRESSURE),
                ("disk_pressure", DISK_PRESSURE, R_DISK_PRESSURE),
                ("pid_pressure", PID_PRESSURE, R_PID_PRESSURE),
            )
            if not tolerates(tolerations, Taint(taint_key, "", "NoSchedule"))
        ]
        unschedulable_ok = tolerates(tolerations, Taint(UNSCHEDULABLE, "", "NoSchedule"))
        tol_key = self._fz(tolerations)
        selector = pod.node_selector

        feasible: list[int] = []
        reasons: Counter[str] = Counter()
        affinity_ok = bytearray(self.n)
        taints_ok = bytearray(self.n)
        taint_raw = [0] * self.n
        affinity_raw = [0] * self.n
        for i, node in enumerate(self.nodes):
            labels = self.labels[i]
            verdict = self.taint_verdicts.get((tol_key, self.taints[i]))
            if verdict is None:
                verdict = _taint_verdict(tolerations, self.taints[i])
                self.taint_verdicts[(tol_key, self.taints[i])] = verdict
            untolerated, prefer_count = verdict
            taints_ok[i] = untolerated is None
            taint_raw[i] = prefer_count
            node_ok = all(labels.get(k) == v for k, v in selector.items()) and (
                terms is None or any(_node_term_matches(t, labels, node.name) for t in terms)
            )
            affinity_ok[i] = node_ok
            if preferred:
                affinity_raw[i] = sum(w for w, term in preferred if _node_term_matches(term, labels, node.name))
            # the first failing filter, in plugin order, gives the node's reasons
            if pod.needs_container_runtime and not (node.runtimes - {"process"}):
                reasons[R_RUNTIME] += 1
            elif any(getattr(node, attr) for attr, _ in pressure):
                reasons.update(reason for attr, reason in pressure if getattr(node, attr))
            elif node.unschedulable and not unschedulable_ok:
                reasons[R_UNSCHEDULABLE] += 1
            elif untolerated is not None:
                reasons[f"node(s) had untolerated taint {{{untolerated.key}: {untolerated.value}}}"] += 1
            elif not node_ok:
                reasons[R_NODE_AFFINITY] += 1
            else:
                feasible.append(i)
        static = _Static(
            feasible=feasible,
            reasons=reasons,
            affinity_ok=affinity_ok,
            taints_ok=taints_ok,
            taint_raw=taint_raw if any(taint_raw) else None,
            affinity_raw=affinity_raw if any(affinity_raw) else None,
        )
        self.statics[key] = static
        return static

    def _shape(self, pod: PodInfo) -> _Shape:
        cls = self._class(pod.namespace, pod.labels)
        pod_aff = pod.affinity.get("podAffinity") or {}
        pod_anti = pod.affinity.get("podAntiAffinity") or {}
        key = (cls, self._fz(pod_aff), self._fz(pod_anti), self._fz(pod.topology_spread))
        shape = self.shapes.get(key)
        if shape is not None:
            return shape
        ns = pod.namespace

        def matcher(term: Mapping[str, Any]) -> _Matcher:
            names = frozenset(term.get("namespaces") or ())
            ns_selector = term.get("namespaceSelector")
            if not names and ns_selector is None:
                names = frozenset((ns,))
            return _Matcher(names, ns_selector, _with_label_keys(term, pod.labels))

        required_affinity: list[tuple[_Group, str]] = []
        matches_own = True
        held: list[tuple[str, int, str, _Matcher]] = []
        for term in pod_aff.get("requiredDuringSchedulingIgnoredDuringExecution") or []:
            m = matcher(term)
            required_affinity.append((self._group(m), term.get("topologyKey") or ""))
            matches_own = matches_own and m.matches(ns, pod.labels)
            held.append(("score", _HARD_POD_AFFINITY_WEIGHT, term.get("topologyKey") or "", m))
        required_anti: list[tuple[_Group, str]] = []
        for term in pod_anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []:
            m = matcher(term)
            required_anti.append((self._group(m), term.get("topologyKey") or ""))
            held.append(("anti", 0, term.get("topologyKey") or "", m))
        preferred: list[tuple[_Group, str, int]] = []
        for sign, section in ((1, pod_aff), (-1, pod_anti)):
            for weighted in section.get("preferredDuringSchedulingIgnoredDuringExecution") or []:
                term = weighted.get("podAffinityTerm") or {}
                weight = sign * int(weighted.get("weight") or 0)
                if weight:
                    m = matcher(term)
                    preferred.append((self._group(m), term.get("topologyKey") or "", weight))
                    held.append(("score", weight, term.get("topologyKey") or "", m))
        spreads: list[_Spread] = []
        for c in pod.topology_spread:
            m = _Matcher(frozenset((ns,)), None, _with_label_keys(c, pod.labels))
            hard = (c.get("whenUnsatisfiable") or "DoNotSchedule") == "DoNotSchedule"
            spreads.append(
                _Spread(
                    max_skew=int(c.get("maxSkew") or 1),
                    topology_key=str(c.get("topologyKey") or ""),
                    hard=hard,
                    group=self._group(m),
                    min_domains=int(c.get("minDomains") or 1) if hard else 1,
                    honor_affinity=(c.get("nodeAffinityPolicy") or "Honor") == "Honor",
                    honor_taints=(c.get("nodeTaintsPolicy") or "Ignore") == "Honor",
                    self_match=m.matches(ns, pod.labels),
                )
            )
        shape = _Shape(cls, required_affinity, matches_own, required_anti, preferred, spreads, held)
        self.shapes[key] = shape
        return shape

    def _eligible(self, static: _Static, spread: _Spread, keys: tuple[str, ...]) -> bytearray:
        """Nodes whose pods count for a constraint: they pass its node inclusion policies
        and carry every topology key of the pod's constraints of that kind."""
        ekey = (keys, spread.honor_affinity, spread.honor_taints)
        mask = static.eligible.get(ekey)
        if mask is None:
            affinity_ok = static.affinity_ok if spread.honor_affinity else None
            taints_ok = static.taints_ok if spread.honor_taints else None
            mask = bytearray(
                (affinity_ok is None or affinity_ok[i])
                and (taints_ok is None or taints_ok[i])
                and all(k in labels for k in keys)
                for i, labels in enumerate(self.labels)
            )
            static.eligible[ekey] = mask
        return mask

    def _domain_values(self, mask: bytearray, key: str) -> set[str]:
        return {self.labels[i][key] for i in range(self.n) if mask[i]}

    def _counts(self, spread: _Spread, mask: bytearray) -> dict[str, int]:
        """Matching pods per domain, counting only pods on eligible nodes."""
        counts: dict[str, int] = {}
        labels = self.labels
        key = spread.topology_key
        for i, count in spread.group.per_node.items():
            if mask[i]:
                value = labels[i][key]
                counts[value] = counts.get(value, 0) + count
        return counts

    def _checks(self, pod: PodInfo, static: _Static, shape: _Shape) -> _Checks:
        spread_checks: list[tuple[str, set[str]]] = []
        hard = [s for s in shape.spreads if s.hard]
        keys = tuple(sorted({s.topology_key for s in hard}))
        for s in hard:
            mask = self._eligible(static, s, keys)
            vkey = (keys, s.honor_affinity, s.honor_taints, s.topology_key)
            values = static.domains.get(vkey)
            if values is None:
                values = static.domains[vkey] = self._domain_values(mask, s.topology_key)
            counts = self._counts(s, mask)
            # the least-loaded domain; domains without matching pods count as 0
            if len(values) < s.min_domains or sum(1 for v in counts if v in values) < len(values):
                lowest = 0
            else:
                lowest = min(counts[v] for v in values)
            bad = {v for v, c in counts.items() if c + s.self_match - lowest > s.max_skew}
            spread_checks.append((s.topology_key, bad))
        affinity: list[tuple[str, set[str]]] | None = None
        affinity_fails = False
        if shape.required_affinity:
            affinity = []
            for group, key in shape.required_affinity:
                counts = self._domains(group, key)
                affinity.append((key, {v for v, c in counts.items() if c > 0}))
            if not any(allowed for _, allowed in affinity):
                # the first of a group of pods that attract each other goes anywhere
                if shape.matches_own_affinity:
                    affinity = [(key, set()) for key, _ in affinity]
                else:
                    affinity_fails = True
            elif not all(allowed for _, allowed in affinity):
                affinity_fails = True
        anti = [(key, {v for v, c in self._domains(group, key).items() if c > 0}) for group, key in shape.required_anti]
        existing = [
            (h.topology_key, {v for v, c in h.domains.items() if c > 0})
            for h in self.class_held[shape.cls]
            if h.kind == "anti" and h.domains
        ]
        return _Checks(
            ports=_port_set(pod.host_ports),
            spread=spread_checks,
            affinity=affinity,
            affinity_fails=affinity_fails,
            anti=[(k, v) for k, v in anti if v],
            existing_anti=existing,
        )

    # -- filtering --

    def _fit(self, req: Resources) -> _Fit:
        """The fit mask and resource scores for pods of this size, brought up to date."""
        key = (req.cpu_millis, req.memory_bytes, req.ephemeral_bytes)
        fit = self.fits.get(key)
        log = self.log
        if fit is None:
            fit = self.fits[key] = _Fit(bytearray(self.n), [0] * self.n, len(log))
            stale: Iterable[int] = range(self.n)
        elif fit.seen < len(log):
            stale = set(log[fit.seen :])
            fit.seen = len(log)
        else:
            return fit
        cpu, mem, eph = key
        mask, score = fit.mask, fit.score
        free_cpu, free_mem, free_eph, free_pods = self.free_cpu, self.free_mem, self.free_eph, self.free_pods
        for i in stale:
            mask[i] = (
                free_pods[i] >= 1
                and (cpu <= free_cpu[i] or not cpu)
                and (mem <= free_mem[i] or not mem)
                and (eph <= free_eph[i] or not eph)
            )
            least, balanced = self._resource_scores(i, cpu, mem)
            score[i] = least + balanced
        return fit

    def _dynamic_reasons(self, pod: PodInfo, checks: _Checks, i: int) -> tuple[str, ...]:
        """Reasons of the first dynamic filter that node `i` fails, () if it passes."""
        used = self.ports[i]
        if checks.ports and used is not None and not checks.ports.isdisjoint(used):
            return (R_PORTS,)
        req = pod.requests
        fit: list[str] = []
        if self.free_pods[i] < 1:
            fit.append(R_TOO_MANY_PODS)
        if req.cpu_millis > self.free_cpu[i] and req.cpu_millis > 0:
            fit.append(R_CPU)
        if req.memory_bytes > self.free_mem[i] and req.memory_bytes > 0:
            fit.append(R_MEMORY)
        if req.ephemeral_bytes > self.free_eph[i] and req.ephemeral_bytes > 0:
            fit.append(R_EPHEMERAL)
        if fit:
            return tuple(fit)
        return self._constraint_reasons(checks, i)

    def _constraint_reasons(self, checks: _Checks, i: int) -> tuple[str, ...]:
        """PodTopologySpread and InterPodAffinity, which follow NodeResourcesFit."""
        labels = self.labels[i]
        for key, bad in checks.spread:
            value = labels.get(key)
            if value is None:
                return (R_SPREAD_LABEL,)
            if value in bad:
                return (R_SPREAD,)
        if checks.affinity_fails:
            return (R_POD_AFFINITY,)
        if checks.affinity is not None:
            for key, allowed in checks.affinity:
                value = labels.get(key)
                if value is None or (allowed and value not in allowed):
                    return (R_POD_AFFINITY,)
        for key, forbidden in checks.anti:
            if labels.get(key) in forbidden:
                return (R_POD_ANTI_AFFINITY,)
        for key, forbidden in checks.existing_anti:
            if labels.get(key) in forbidden:
                return (R_EXISTING_ANTI_AFFINITY,)
        return ()

    def _column(self, key: str) -> list[str | None]:
        """Every node's value of label `key`, None where the node lacks it."""
        column = self.columns.get(key)
        if column is None:
            column = self.columns[key] = [labels.get(key) for labels in self.labels]
        return column

    def _keep_passing(self, checks: _Checks, nodes: list[int]) -> list[int]:
        """The `nodes` passing the filters beyond resources; as _constraint_reasons (and the
        ports check), one topology key at a time."""
        if checks.ports:
            ports, wanted = self.ports, checks.ports
            nodes = [i for i in nodes if (used := ports[i]) is None or wanted.isdisjoint(used)]
        for key, bad in checks.spread:
            column = self._column(key)
            nodes = [i for i in nodes if column[i] is not None and column[i] not in bad]
        if checks.affinity_fails:
            return []
        for key, allowed in checks.affinity or ():
            column = self._column(key)
            if allowed:
                nodes = [i for i in nodes if column[i] in allowed]
            else:
                nodes = [i for i in nodes if column[i] is not None]
        for key, forbidden in checks.anti + checks.existing_anti:
            column = self._column(key)
            nodes = [i for i in nodes if column[i] not in forbidden]
        return nodes

    def _find(self, static: _Static, checks: _Checks, fit: _Fit) -> list[int]:
        """Feasible nodes, walking from where the last search stopped until enough are found
        (kube-scheduler's percentageOfNodesToScore and round robin)."""
        order = static.feasible
        start = self.next_start
        to_find = self.to_find
        found: list[int] = []
        last = -1
        mask = fit.mask
        p = bisect_left(order, start)
        for lo, hi in ((p, len(order)), (0, p)):
            k = lo
            while k < hi:
                # a chunk as long as what is still missing: if all of it passes, we are done
                chunk = order[k : min(hi, k + to_find - len(found))]
                k += len(chunk)
                good = list(compress(chunk, map(mask.__getitem__, chunk)))
                if not checks.trivial:
                    good = self._keep_passing(checks, good)
                found.extend(good)
                if len(found) >= to_find:
                    last = chunk[-1]
                    break
            if last >= 0:
                break
        processed = self.n if last < 0 else (last - start) % self.n + 1
        self.next_start = (start + processed) % self.n
        return found

    def _explain(self, pod: PodInfo, static: _Static, checks: _Checks) -> str:
        reasons = Counter(static.reasons)
        per_node = Counter(map(partial(self._dynamic_reasons, pod, checks), static.feasible))
        for node_reasons, count in per_node.items():
            for reason in node_reasons:
                reasons[reason] += count
        return unschedulable_message(self.n, reasons)

    # -- scoring --

    def _score(
        self, pod: PodInfo, static: _Static, shape: _Shape, fit: _Fit, nodes: list[int]
    ) -> tuple[int, dict[str, int]]:
        """The best of the feasible `nodes` and its weighted score per plugin."""
        # each plugin: weighted scores per node, or one weighted score for all of them
        plugins: list[tuple[str, list[int] | int]] = []
        raw = static.taint_raw
        if raw is None:
            plugins.append(("TaintToleration", WEIGHTS["TaintToleration"] * MAX_NODE_SCORE))
        else:
            scores = _normalize(list(map(raw.__getitem__, nodes)), WEIGHTS["TaintToleration"], reverse=True)
            plugins.append(("TaintToleration", scores))
        raw = static.affinity_raw
        if raw is None:
            plugins.append(("NodeAffinity", 0))
        else:
            scores = _normalize(list(map(raw.__getitem__, nodes)), WEIGHTS["NodeAffinity"], reverse=False)
            plugins.append(("NodeAffinity", scores))
        soft = [s for s in shape.spreads if not s.hard]
        if soft:
            weight = WEIGHTS["PodTopologySpread"]
            plugins.append(("PodTopologySpread", [weight * s for s in self._spread_scores(static, soft, nodes)]))
        interpod = self._interpod_scores(shape, nodes)
        if interpod is not None:
            weight = WEIGHTS["InterPodAffinity"]
            plugins.append(("InterPodAffinity", [weight * s for s in interpod]))
        if pod.owner and not pod.topology_spread:
            plugins.append(("OwnerSpread", self._owner_scores(pod.owner, nodes, WEIGHTS["OwnerSpread"])))

        # NodeResourcesFit + NodeResourcesBalancedAllocation, both weight 1, from the cache
        totals = list(map(fit.score.__getitem__, nodes))
        for _, weighted in plugins:
            if not isinstance(weighted, int):
                totals = list(map(add, totals, weighted))
        best_total = max(totals)
        if totals.count(best_total) == 1:
            best_j = totals.index(best_total)
        else:
            ties = list(compress(nodes, map(best_total.__eq__, totals)))
            pod_hash = zlib.crc32(f"{pod.namespace}/{pod.name}".encode())
            keys = list(map(xor, map(self.node_hash.__getitem__, ties), repeat(pod_hash)))
            best_j = nodes.index(ties[keys.index(min(keys))])
        best = nodes[best_j]
        req = pod.requests
        least, balanced = self._resource_scores(best, req.cpu_millis, req.memory_bytes)
        breakdown = {"NodeResourcesFit": least, "NodeResourcesBalancedAllocation": balanced}
        for name, weighted in plugins:
            breakdown[name] = weighted if isinstance(weighted, int) else weighted[best_j]
        return best, {name: breakdown[name] for name in WEIGHTS if name in breakdown}

    def _resource_scores(self, i: int, cpu: int, mem: int) -> tuple[int, int]:
        """Least-allocated (with default requests for empty ones) and balanced-allocation
        scores of node `i` once a pod requesting `cpu` and `mem` is on it."""
        ac = self.alloc_cpu[i]
        am = self.alloc_mem[i]
        if ac > 0 and am > 0:
            used = self.nz_cpu[i] + (cpu or DEFAULT_MILLI_CPU)
            total = (ac - used) * MAX_NODE_SCORE // ac if used <= ac else 0
            used = self.nz_mem[i] + (mem or DEFAULT_MEMORY)
            total += (am - used) * MAX_NODE_SCORE // am if used <= am else 0
            fc = (ac - self.free_cpu[i] + cpu) / ac
            fm = (am - self.free_mem[i] + mem) / am
            std = abs((fc if fc < 1.0 else 1.0) - (fm if fm < 1.0 else 1.0)) / 2
            return total // 2, int((1 - std) * MAX_NODE_SCORE)
        # a resource the node does not report is left out of both, as kube-scheduler does
        if ac > 0:
            used = self.nz_cpu[i] + (cpu or DEFAULT_MILLI_CPU)
            return ((ac - used) * MAX_NODE_SCORE // ac if used <= ac else 0), MAX_NODE_SCORE
        if am > 0:
            used = self.nz_mem[i] + (mem or DEFAULT_MEMORY)
            return ((am - used) * MAX_NODE_SCORE // am if used <= am else 0), MAX_NODE_SCORE
        return 0, MAX_NODE_SCORE

    def _spread_scores(self, static: _Static, soft: list[_Spread], nodes: list[int]) -> list[int]:
        labels = self.labels
        keys = tuple(sorted({s.topology_key for s in soft}))
        ignored = [not all(k in labels[i] for k in keys) for i in nodes]
        raw = [0.0] * len(nodes)
        for s in soft:
            counts = self._counts(s, self._eligible(static, s, keys))
            key = s.topology_key
            if key == HOSTNAME:
                size = sum(1 for x in ignored if not x)
            else:
                size = len({labels[i][key] for i, x in zip(nodes, ignored, strict=True) if not x})
            weight = math.log(size + 2)
            for j, i in enumerate(nodes):
                value = labels[i].get(key)
                if value is not None:
                    raw[j] += counts.get(value, 0) * weight + (s.max_skew - 1)
        scores = [math.floor(r + 0.5) for r in raw]  # Go's math.Round, not banker's rounding
        valid = [s for s, x in zip(scores, ignored, strict=True) if not x]
        if not valid:
            return [0] * len(nodes)
        lo, hi = min(valid), max(valid)
        return [
            0 if x else (MAX_NODE_SCORE if hi == 0 else MAX_NODE_SCORE * (hi + lo - s) // hi)
            for s, x in zip(scores, ignored, strict=True)
        ]

    def _interpod_scores(self, shape: _Shape, nodes: list[int]) -> list[int] | None:
        by_key: dict[str, dict[str, int]] = {}
        for group, key, weight in shape.preferred:
            target = by_key.setdefault(key, {})
            for value, count in self._domains(group, key).items():
                target[value] = target.get(value, 0) + weight * count
        for held in self.class_held[shape.cls]:
            if held.kind == "score" and held.domains:
                target = by_key.setdefault(held.topology_key, {})
                for value, count in held.domains.items():
                    target[value] = target.get(value, 0) + held.weight * count
        if not shape.preferred and not by_key:
            return None
        labels = self.labels
        raw = [sum(scores.get(labels[i].get(key, "\0"), 0) for key, scores in by_key.items()) for i in nodes]
        hi = max(raw)
        lo = min(raw)
        if hi == lo:
            return [0] * len(nodes)
        return [int(MAX_NODE_SCORE * (r - lo) / (hi - lo)) for r in raw]

    def _owner_scores(self, owner: str, nodes: list[int], weight: int) -> list[int]:
        """SelectorSpread's formula, times `weight`: fewer pods of the owner on the node,
        and in its zone, is better."""
        on_nodes = self.owner_nodes.get(owner) or {}
        present = set(nodes).intersection(on_nodes) if on_nodes else set()
        most = max((on_nodes[i] for i in present), default=0)
        zone_of = self.zone
        zones = set(map(zone_of.__getitem__, nodes))
        zone_counts = self.owner_zones.get(owner) or {}
        most_zone = max((zone_counts.get(z, 0) for z in zones if z), default=0)
        have_zones = any(zones)

        def score(count: int, zone: str) -> int:
            value = float(MAX_NODE_SCORE)
            if most > 0:
                value = MAX_NODE_SCORE * (most - count) / most
            if have_zones and zone:
                zone_score = float(MAX_NODE_SCORE)
                if most_zone > 0:
                    zone_score = MAX_NODE_SCORE * (most_zone - zone_counts.get(zone, 0)) / most_zone
                value = value * (1 - _ZONE_WEIGHTING) + _ZONE_WEIGHTING * zone_score
            return weight * int(value)

        # most nodes have none of the owner's pods: their score depends on the zone alone
        by_zone = {z: score(0, z) for z in zones}
        out = list(map(by_zone.__getitem__, map(zone_of.__getitem__, nodes)))
        for i in present:
            out[nodes.index(i)] = score(on_nodes[i], zone_of[i])
        return out

    # -- one pod --

    def place(self, pod: PodInfo) -> Decision:
        static = self._static(pod)
        shape = self._shape(pod)
        # a pod like one that found no node, with nothing bound since, finds none either
        same = (id(static), id(shape), pod.requests, pod.host_ports)
        failed = self.failures.get(same)
        if failed is not None and failed[0] == len(self.log):
            return Decision(pod, None, failed[1])
        checks = self._checks(pod, static, shape)
        fit = self._fit(pod.requests)
        feasible = self._find(static, checks, fit)
        if not feasible:
            message = self._explain(pod, static, checks)
            self.failures[same] = (len(self.log), message)
            return Decision(pod, None, message)
        best, scores = self._score(pod, static, shape, fit, feasible)
        self.bind(pod, best, shape)
        return Decision(pod, self.names[best], "", scores)


def _port_set(ports: Iterable[tuple[int, str]]) -> frozenset[tuple[int, str]]:
    return frozenset((int(port), (proto or "TCP").upper()) for port, proto in ports if port)


def _with_label_keys(term: Mapping[str, Any], labels: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The term's labelSelector with `matchLabelKeys` resolved against the pod's labels."""
    selector: Mapping[str, Any] | None = term.get("labelSelector")
    keys = [k for k in term.get("matchLabelKeys") or [] if k in labels]
    if selector is None or not keys:
        return selector
    exprs = list(selector.get("matchExpressions") or [])
    exprs += [{"key": k, "operator": "In", "values": [labels[k]]} for k in keys]
    return {**selector, "matchExpressions": exprs}


def _taint_verdict(tolerations: Sequence[Mapping[str, Any]], taints: tuple[Taint, ...]) -> tuple[Taint | None, int]:
    """The first untolerated NoSchedule/NoExecute taint, and how many PreferNoSchedule
    taints are not tolerated (by tolerations with that effect or none)."""
    untolerated = next(
        (t for t in taints if t.effect in ("NoSchedule", "NoExecute") and not tolerates(tolerations, t)),
        None,
    )
    prefer = [t for t in tolerations if (t.get("effect") or "") in ("", "PreferNoSchedule")]
    count = sum(1 for t in taints if t.effect == "PreferNoSchedule" and not tolerates(prefer, t))
    return untolerated, count


def _normalize(raw: list[int], weight: int, *, reverse: bool) -> list[int]:
    """kube-scheduler's DefaultNormalizeScore of non-negative `raw` scores, times `weight`."""
    most = max(raw)
    if most == 0:
        return [weight * MAX_NODE_SCORE if reverse else 0] * len(raw)
    # raw scores are small integers (taint counts, summed term weights): map through a table
    table = [MAX_NODE_SCORE * r // most for r in range(most + 1)]
    table = [weight * (MAX_NODE_SCORE - t if reverse else t) for t in table]
    return list(map(table.__getitem__, raw))

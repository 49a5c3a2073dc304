"""Planning: from the desired state and what is observed, the pods that should exist now.

Purely computational, no side effects: `plan(desired, observed)` reads no clock (the time
is part of `Observed`), touches no network or disk, and gives the same plan for the same
inputs. Each workload controller is level-triggered: it looks at the pods that exist and
decides the next step (create, keep, replace, remove) within its rollout budget; the
executor sends each node its complete pod set, so repeating a pass changes nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from gitorch.model import admission, selectors, volumes
from gitorch.model.objects import KINDS, DesiredState, Object, ObjectKey, cronjob_run
from gitorch.model.quantities import QuantityError, cpu_millis, to_bytes
from gitorch.model.usage import PodUsage
from gitorch.reconcile import autoscaling, nodescaling, podspecs
from gitorch.reconcile.nodescaling import ACTIVE, SCALING_DOWN, STANDBY, NodeScaling
from gitorch.reconcile.scheduler import (
    UNREACHABLE,
    Decision,
    NodeInfo,
    PodInfo,
    Taint,
    pod_info_from_template,
    schedule,
    tolerates,
)

RUNNING_PHASES = ("Pending", "Running", "Unknown")


@dataclass(frozen=True)
class PodState:
    """A pod gitorch made, as last recorded and reported by its node."""

    name: str
    namespace: str
    owner_kind: str
    owner_name: str
    node: str | None
    revision: str
    phase: str = "Pending"
    ready: bool = False
    restarts: int = 0
    reason: str = ""
    message: str = ""
    created: float = 0.0
    ready_since: float | None = None
    ordinal: int | None = None

    @property
    def owner(self) -> ObjectKey:
        return ObjectKey(self.owner_kind, self.namespace, self.owner_name)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class NodeState:
    """A Node of the desired state as observed: reachable, or lost for longer than allowed."""

    info: NodeInfo
    reachable: bool = True
    lost: bool = False  # NotReady past the node timeout: its pods are replaced elsewhere
    lost_since: float | None = None
    """When it was found lost: the node.kubernetes.io/unreachable NoExecute taint's timeAdded."""
    noexecute_since: tuple[tuple[Taint, float], ...] = ()
    """Its NoExecute taints from Git, each with when the controller first saw it."""
    draining: bool = False  # spec.drain: its pods are evicted within their disruption budgets
    leaving: bool = False
    """Gone from Git with pods still on it: it drains as with spec.drain (every pod, within its
    budgets) while it answers; when it does not, its pods are deleted at once, as Kubernetes' pod
    garbage collector deletes the pods of a deleted Node. Retention forgets it once empty."""
    standby: bool = False  # spec.standby: the cluster autoscaler activates it (see nodescaling.py)
    scale_down_disabled: bool = False  # annotated cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(frozen=True)
class Observed:
    now: float
    pods: tuple[PodState, ...] = ()
    nodes: tuple[NodeState, ...] = ()
    rollout_started: Mapping[ObjectKey, tuple[str, float]] = field(default_factory=dict)
    """Per workload: the revision being rolled out and when that began (progress deadlines, Jobs)."""
    last_schedule: Mapping[ObjectKey, float] = field(default_factory=dict)
    """Per CronJob: the last schedule time it acted on (started, skipped or missed)."""
    finished: Mapping[ObjectKey, Finished] = field(default_factory=dict)
    """Per Job: how and when the revision it runs finished (ttlSecondsAfterFinished counts from it)."""
    claims: Mapping[ObjectKey, volumes.Binding] = field(default_factory=dict)
    """Per PersistentVolumeClaim provisioned on a node: where its directory is (kept with its status)."""
    autoscalers: Mapping[ObjectKey, Mapping[str, Any]] = field(default_factory=dict)
    """Per HorizontalPodAutoscaler: its recorded status (replica count, history, last sync)."""
    usage: Mapping[tuple[str, str], PodUsage] = field(default_factory=dict)
    """Per pod (namespace, name): its newest resource sample."""
    autoscaler_sync: float = 15.0
    """Seconds between two syncs of an autoscaler (--horizontal-pod-autoscaler-sync-period)."""
    node_scaling: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per standby Node: its recorded activation state (nodescaling.NodeScaling, kept in its status)."""
    recommendations: Mapping[ObjectKey, Mapping[str, Any]] = field(default_factory=dict)
    """Per VerticalPodAutoscaler: its status as the recommender computed it (reconcile/recommending.py)."""
    recommender_sync: float = 60.0
    """Seconds between two passes while a VerticalPodAutoscaler exists (VPA's recommender loop: 1 min)."""


@dataclass(frozen=True)
class Finished:
    """A Job revision's end, kept in its status: it outlives the pods ttlSecondsAfterFinished removes."""

    revision: str
    at: float
    complete: bool  # Complete, else Failed
    message: str


@dataclass(frozen=True)
class DesiredPod:
    name: str
    owner: ObjectKey
    node: str | None
    revision: str
    spec: Mapping[str, Any] = field(repr=False)
    ordinal: int | None = None
    message: str = ""  # why it is Pending (the scheduler's message)


@dataclass(frozen=True)
class Status:
    """A workload's health as Argo CD shows it, with Kubernetes-style counts."""

    health: str  # Healthy | Progressing | Degraded | Suspended
    message: str
    desired: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    revision: str = ""
    conditions: tuple[Mapping[str, str], ...] = ()
    last_schedule: float | None = None  # CronJobs
    finished: Finished | None = None  # Jobs
    binding: volumes.Binding | None = None  # PersistentVolumeClaims
    autoscaling: Mapping[str, Any] | None = None  # HorizontalPodAutoscalers: their status, kept in the store
    scaling: Mapping[str, Any] | None = None  # standby Nodes: their activation state, kept in the store
    recommendation: Mapping[str, Any] | None = None  # VerticalPodAutoscalers: their status, kept in the store


@dataclass(frozen=True)
class PlannedEvent:
    key: ObjectKey
    type: str
    reason: str
    message: str


@dataclass
class Plan:
    pods: list[DesiredPod] = field(default_factory=list)
    removed: list[PodState] = field(default_factory=list)
    statuses: dict[ObjectKey, Status] = field(default_factory=dict)
    events: list[PlannedEvent] = field(default_factory=list)
    requeue_after: float | None = None
    """Seconds until a pass is due whatever else happens (an autoscaler's next sync)."""
    standby: frozenset[str] = frozenset()
    """Nodes on standby after this pass: they run no pods, announce no address, proxy no Ingress."""

    def node_sets(self, nodes: Iterable[str]) -> dict[str, list[Mapping[str, Any]]]:
        """Each node's complete pod set (an empty set stops whatever it still runs)."""
        out: dict[str, list[Mapping[str, Any]]] = {n: [] for n in nodes}
        for p in self.pods:
            if p.node is not None and p.node in out:
                out[p.node].append(p.spec)
        return out

    @property
    def converged(self) -> bool:
        return not self.removed and all(s.health in ("Healthy", "Suspended") for s in self.statuses.values())


# --- helpers ---------------------------------------------------------------------------


def toleration_seconds(tolerations: Iterable[Mapping[str, Any]], taint: Taint) -> float | None:
    """How long a pod with `tolerations` stays on a node once `taint` (NoExecute) is on it, as
    Kubernetes' taint manager decides: 0 when no toleration matches, the least tolerationSeconds
    of those that match, None (forever) when one that matches gives none."""
    seconds: list[float] = []
    for t in tolerations:
        if not tolerates([t], taint):
            continue
        value = t.get("tolerationSeconds")
        if value is None:
            return None
        seconds.append(max(0.0, float(value)))
    return min(seconds) if seconds else 0.0


def evicted(node: NodeState | None, tolerations: Iterable[Mapping[str, Any]], now: float) -> bool:
    """Whether a pod on `node` is evicted: the node is gone from Git (and, if it is still
    known, leaving, no longer answers), or a NoExecute taint on
    it (node.kubernetes.io/unreachable once it is lost, or one from its manifest) is not
    tolerated, or was tolerated for tolerationSeconds that have passed. gitorch adds no
    default tolerations: where Kubernetes' admission gives every pod 300 s for an unreachable
    node, a gitorch pod without one is replaced once its node is lost (GITORCH_NODE_TIMEOUT)."""
    if node is None or (node.leaving and not node.reachable):
        return True
    tolerations = list(tolerations)
    taints = list(node.noexecute_since)
    if node.lost:
        taints.append((Taint(UNREACHABLE, "", "NoExecute"), node.lost_since if node.lost_since is not None else now))
    for taint, since in taints:
        seconds = toleration_seconds(tolerations, taint)
        if seconds is not None and now - since >= seconds:
            return True
    return False


def node_evicted(p: PodState) -> bool:
    """A pod its node's agent evicted (as the kubelet's eviction manager): Failed, for good."""
    return p.phase == "Failed" and p.reason == "Evicted"


def _scaled(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        frac = int(value[:-1]) * total / 100
        return math.ceil(frac) if round_up else math.floor(frac)
    return int(value)


def _ready(p: PodState, now: float, min_ready: float) -> bool:
    return p.ready and p.phase == "Running" and (p.ready_since is None or now - p.ready_since >= min_ready)


def _index(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _removal_order(pods: Iterable[PodState]) -> list[PodState]:
    """Which pods go first when scaling down: unplaced, then not ready, then the newest."""
    return sorted(pods, key=lambda p: (p.node is not None, p.ready, -p.created, -_index(p.name)))


class _Pass:
    """One planning pass: collects pods to place, then schedules them together."""

    def __init__(self, desired: DesiredState, observed: Observed) -> None:
        self.desired = desired
        self.observed = observed
        self.now = observed.now
        self.plan = Plan()
        self.observed_nodes = {n.name: n for n in observed.nodes}
        self.autoscaling = nodescaling.settings(_cluster_spec(desired))
        occupied = {p.node for p in observed.pods if p.node and not p.finished and p.owner_kind != "DaemonSet"}
        self.scaling: dict[str, NodeScaling] = {}  # standby Nodes' activation states (the cluster autoscaler)
        for n in observed.nodes:
            if n.standby:
                kept = NodeScaling.from_json(observed.node_scaling.get(n.name))
                self.scaling[n.name] = kept if kept is not None else nodescaling.initial(n.name in occupied, self.now)
        self.scaled_up = False
        self.nodes: dict[str, NodeState] = {}
        self.node_list: list[NodeState] = []  # the nodes that may run pods (not on standby)
        self.usable: list[NodeInfo] = []
        self._node_views()
        self.by_owner: dict[ObjectKey, list[PodState]] = {}
        for p in observed.pods:
            self.by_owner.setdefault(p.owner, []).append(p)
        self.to_place: list[tuple[PodInfo, DesiredPod]] = []
        self.respecs: dict[tuple[str, str], Callable[[str], Mapping[str, Any]]] = {}
        self.runs: dict[ObjectKey, Object] = {}  # Jobs a CronJob started: owners that are not in Git
        self.protected: set[ObjectKey] = set()  # owners whose controller failed: their pods stay as they are
        self.started_at = 0  # where the running object controller's pods begin in plan.pods
        self._budgets: list[_Budget] | None = None
        self.claimed: dict[tuple[str, str], tuple[str, ...]] = {}  # pods to place -> the claims they use
        self.volumes = _Volumes(self)
        self.scales: dict[ObjectKey, int] = {}  # workloads' replica counts set by their autoscaler

    def _node_views(self) -> None:
        """The nodes as this pass plans with them: one on standby or scaling down is unschedulable
        and drains (the Node drain path); one scaling down carries CA's ToBeDeleted taint."""
        self.nodes = {}
        for n in self.observed.nodes:
            rec = self.scaling.get(n.name)
            if n.leaving:  # gone from Git: drained like spec.drain, every pod included
                n = replace(n, info=replace(n.info, unschedulable=True), draining=True)
            elif rec is not None and rec.state != ACTIVE:
                taints = n.info.taints
                if rec.state == SCALING_DOWN:
                    taints = (*taints, Taint(nodescaling.TO_BE_DELETED, str(int(rec.since)), "NoSchedule"))
                n = replace(n, info=replace(n.info, unschedulable=True, taints=taints), draining=True)
            self.nodes[n.name] = n
        self.node_list = [n for n in self.nodes.values() if not n.leaving  # its DaemonSet pods go too
                          and ((rec := self.scaling.get(n.name)) is None or rec.state != STANDBY)]
        self.usable = [n.info for n in self.node_list if not n.lost]

    def replicas(self, obj: Object) -> int:
        """A workload's replicas: its autoscaler's count, else Git's (with an autoscaler, Git's
        is only the count it starts from)."""
        return self.scales.get(obj.key, int(obj.spec.get("replicas", 1)))

    # Pods evicted from their node (lost, or tainted NoExecute) are gone as far as replica
    # counts go, as the taint manager deletes them in Kubernetes; so are pods the node's
    # agent evicted (Failed, reason Evicted: an emptyDir past its sizeLimit), whose
    # ReplicaSet replaces them.
    def live(self, obj: Object) -> tuple[list[PodState], list[PodState]]:
        live: list[PodState] = []
        lost: list[PodState] = []
        template = self.template(obj) or {}
        tolerations = (template.get("spec") or {}).get("tolerations") or ()
        replaced = obj.key.kind in ("Deployment", "ReplicaSet")
        for p in self.by_owner.get(obj.key, []):
            node = self.nodes.get(p.node) if p.node else None
            gone = (p.node is not None and evicted(node, tolerations, self.now)) or (replaced and node_evicted(p))
            drained = not gone and node is not None and node.draining and not p.finished
            (lost if gone or (drained and self.may_evict(obj, template, p)) else live).append(p)
        return live, lost

    def budgets(self) -> list[_Budget]:
        """This pass's PodDisruptionBudgets, each with the pods it covers counted once."""
        if self._budgets is None:
            self._budgets = []
            for pdb in self.desired.of_kind("PodDisruptionBudget"):
                try:
                    self._budgets.append(_budget(self, pdb))
                except Exception as exc:  # one budget's failure is its status, never the pass's
                    message = f"cannot compute {pdb.key}: {type(exc).__name__}: {exc}"[:1000]
                    self.plan.statuses[pdb.key] = Status("Degraded", message)
                    continue
                self.plan.statuses[pdb.key] = self._budgets[-1].status()
        return self._budgets

    def may_evict(self, obj: Object, template: Mapping[str, Any], p: PodState) -> bool:
        """Whether a pod on a draining node may go now, as the eviction API decides: every
        budget selecting it allows a disruption (a pod that is not ready needs only the budget
        to hold, or AlwaysAllow). An eviction uses up the disruption it was allowed."""
        labels = (template.get("metadata") or {}).get("labels") or {}
        mine = [b for b in self.budgets() if b.namespace == p.namespace and b.covers(labels)]
        healthy = _ready(p, self.now, 0)
        for b in mine:
            if healthy and b.allowed <= 0:
                self.plan.events.append(PlannedEvent(
                    obj.key, "Warning", "EvictionBlocked",
                    f"{p.name} on draining node {p.node}: Cannot evict pod as it would violate the pod's "
                    f"disruption budget {b.name} ({b.healthy} healthy, {b.desired} needed)"))
                return False
            if not healthy and not b.always_allow and b.healthy < b.desired:
                return False
        for b in mine:
            if healthy:
                b.allowed -= 1
                b.healthy -= 1
        self.plan.events.append(
            PlannedEvent(obj.key, "Normal", "Evicted", f"{p.name}: evicted from draining node {p.node}"))
        return True

    def template(self, obj: Object | None) -> Mapping[str, Any] | None:
        """The object's pod template as its pods get it: with its namespace's LimitRange
        defaults (see model/admission.py), kept with the state like the specs built from it."""
        template = _template(obj)
        if template is None or obj is None:
            return template
        items = self.limit_items(obj.key.namespace)
        if not items:
            return template
        if self.desired.objects.get(obj.key) is not obj:
            return admission.defaulted_template(template, items)
        key = ("defaulted", obj.key, id(template))
        found = self.desired.memo.get(key)
        if found is None:
            found = self.desired.memo[key] = admission.defaulted_template(template, items)
        return found

    def limit_items(self, namespace: str) -> tuple[admission.LimitItem, ...]:
        key = ("limit_items", namespace)
        found = self.desired.memo.get(key)
        if found is None:
            ranges = [(o.key.name, o.spec) for o in self.desired.of_kind("LimitRange") if o.key.namespace == namespace]
            found = self.desired.memo[key] = admission.limit_items(ranges)
        return found

    def quotas(self) -> dict[str, list[admission.Quota]]:
        found = self.desired.memo.get("quotas")
        if found is None:
            found = {}
            for o in self.desired.of_kind("ResourceQuota"):
                found.setdefault(o.key.namespace, []).append(admission.quota(o.key.name, o.spec))
            self.desired.memo["quotas"] = found
        return found

    def admit(self) -> None:
        """ResourceQuota at pod creation, as Kubernetes' admission: the pods of this pass to be
        placed, in order, while their namespace's use stays within its quotas; the others stay
        Pending with Kubernetes' message (a rollout's surge waits, as its ReplicaSet would)."""
        quotas = self.quotas()
        if not quotas or not any(d.owner.namespace in quotas for _, d in self.to_place):
            return
        finished = {(p.namespace, p.name) for p in self.observed.pods if p.finished}
        placing = {(d.owner.namespace, d.name) for _, d in self.to_place}
        used: dict[str, dict[str, Any]] = {}
        for p in self.plan.pods:
            ns = p.owner.namespace
            if ns in quotas and (ns, p.name) not in finished and (ns, p.name) not in placing:
                owner = self.desired.objects.get(p.owner) or self.runs.get(p.owner)
                tmpl = self.template(owner)
                if tmpl is not None:
                    admission.add(used.setdefault(ns, {}), admission.pod_usage(tmpl))
        admitted = []
        for info, pod in self.to_place:
            ns = pod.owner.namespace
            if ns not in quotas:
                admitted.append((info, pod))
                continue
            owner = self.desired.objects.get(pod.owner) or self.runs.get(pod.owner)
            tmpl = self.template(owner)
            usage = admission.pod_usage(tmpl) if tmpl is not None else {"pods": Fraction(1)}
            mine = used.setdefault(ns, {})
            refusal = next((m for q in quotas[ns] if (m := admission.exceeded(q, mine, usage))), None)
            if refusal is None:
                admission.add(mine, usage)
                admitted.append((info, pod))
                continue
            message = f'pods "{pod.name}" is forbidden: {refusal}'
            self.plan.pods.append(DesiredPod(pod.name, pod.owner, None, pod.revision, pod.spec, pod.ordinal, message))
            self.plan.events.append(PlannedEvent(pod.owner, "Warning", "FailedCreate", message))
        self.to_place = admitted

    def keep(self, obj: Object, p: PodState, spec: Mapping[str, Any]) -> None:
        self.plan.pods.append(DesiredPod(p.name, obj.key, p.node, p.revision, spec, p.ordinal, p.message))

    def remove(self, p: PodState) -> None:
        self.plan.removed.append(p)

    def create(
        self,
        obj: Object,
        template: Mapping[str, Any],
        name: str,
        revision: str,
        spec: Mapping[str, Any],
        ordinal: int | None = None,
        node: str | None = None,
        respec: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> None:
        """A new pod; one to be placed is given `respec`, its spec for the node it is placed on
        (the downward API's spec.nodeName is part of it: the spec a node runs names that node)."""
        pod = DesiredPod(name, obj.key, node, revision, spec, ordinal)
        if respec is not None:
            self.respecs[(obj.key.namespace, name)] = respec
        if node is not None:
            self.plan.pods.append(pod)
            return
        info = pod_info_from_template(
            name, obj.key.namespace, template, owner=f"{obj.key.kind}/{obj.key.namespace}/{obj.key.name}"
        )
        claims = _claim_names(template)
        if claims:
            # The volume binder: a bound claim pins its pods to its node; an unbound one waits
            # for the first pod's node (WaitForFirstConsumer), or for a volume that fits.
            problem, pinned = self.volumes.pin(obj.key.namespace, claims, name)
            if problem:
                self.plan.pods.append(DesiredPod(name, obj.key, None, revision, spec, ordinal, problem))
                self.plan.events.append(PlannedEvent(obj.key, "Warning", "FailedScheduling", f"{name}: {problem}"))
                return
            if pinned is not None:
                info = replace(info, node_selector={**info.node_selector, "kubernetes.io/hostname": pinned})
            self.claimed[(obj.key.namespace, name)] = claims
        self.to_place.append((info, pod))

    def place_all(self) -> None:
        """Schedule every new or unplaced pod of this pass together (those its namespace's
        quota admits)."""
        self.admit()
        if not self.to_place:
            return
        pending_names = {(d.owner.namespace, d.name) for _, d in self.to_place}
        bound: list[tuple[PodInfo, str]] = []
        for p in self.plan.pods:
            if p.node is not None and (p.owner.namespace, p.name) not in pending_names:
                owner = self.desired.objects.get(p.owner) or self.runs.get(p.owner)
                found = self.template(owner) if owner else None
                if found is not None:
                    bound.append(
                        (pod_info_from_template(p.name, p.owner.namespace, found, owner=_owner_id(p.owner)), p.node)
                    )
        by_name = {(i.namespace, i.name): (i, d) for i, d in self.to_place}
        decisions: list[Decision] = schedule([i for i, _ in self.to_place], self.usable, bound)
        decisions = self.scale_up(decisions, bound, by_name)
        for decision in decisions:
            _, pod = by_name[(decision.pod.namespace, decision.pod.name)]
            if decision.node is None:
                self.plan.pods.append(
                    DesiredPod(pod.name, pod.owner, None, pod.revision, pod.spec, pod.ordinal, decision.message)
                )
                self.plan.events.append(
                    PlannedEvent(pod.owner, "Warning", "FailedScheduling", f"{pod.name}: {decision.message}")
                )
            else:
                clash = self.volumes.bind(pod.owner.namespace, self.claimed.get((pod.owner.namespace, pod.name), ()),
                                          decision.node, pod.name)
                if clash:  # a claim this pass bound to another node first: next pass pins it
                    self.plan.pods.append(
                        DesiredPod(pod.name, pod.owner, None, pod.revision, pod.spec, pod.ordinal, clash))
                    continue
                respec = self.respecs.get((pod.owner.namespace, pod.name))
                spec = respec(decision.node) if respec is not None else dict(pod.spec)
                self.plan.pods.append(DesiredPod(pod.name, pod.owner, decision.node, pod.revision, spec, pod.ordinal))

    def scale_up(self, decisions: list[Decision], bound: list[tuple[PodInfo, str]],
                 by_name: Mapping[tuple[str, str], tuple[PodInfo, DesiredPod]]) -> list[Decision]:
        """The cluster autoscaler's scale-up: when pods fit on no active node, activate the fewest
        standby nodes (or cancel a scale-down) that let them run, and place them there now."""
        unplaced = [d.pod for d in decisions if d.node is None]
        if not unplaced or not self.scaling:
            return decisions
        waking = {n for n, rec in self.scaling.items() if rec.state != ACTIVE}
        candidates = [n.info for name in sorted(waking)
                      if (n := self.observed_nodes[name]).reachable and not n.lost]
        if not candidates:
            return decisions
        placed = [*bound, *((d.pod, d.node) for d in decisions if d.node is not None)]
        preferred = [n for n in waking if self.scaling[n].state == SCALING_DOWN]
        active = [n for n in self.usable if n.name not in waking]  # a node scaling down is a candidate instead
        up = nodescaling.choose(unplaced, active, candidates, placed, preferred=preferred)
        owners: dict[ObjectKey, list[str]] = {}
        if up is None:
            for pod in unplaced:
                owners.setdefault(by_name[(pod.namespace, pod.name)][1].owner, []).append(pod.name)
            for owner, names in sorted(owners.items()):
                self.plan.events.append(PlannedEvent(
                    owner, "Normal", "NotTriggerScaleUp",
                    f"{', '.join(sorted(names))}: pod didn't trigger scale-up: it wouldn't fit on any of the "
                    f"{len(candidates)} standby node(s)"))
            return decisions
        for name in up.nodes:
            mine = sorted(f"{d.pod.namespace}/{d.pod.name}" for d in up.decisions if d.node == name)
            was = self.scaling[name]
            reason = f"scaled up for pod {mine[0]}" + (f" and {len(mine) - 1} more" if len(mine) > 1 else "") \
                if mine else "scaled up for pending pods"
            self.scaling[name] = NodeScaling(ACTIVE, self.now, reason)
            cancelled = " (its scale-down cancelled)" if was.state == SCALING_DOWN else ""
            self.plan.events.append(PlannedEvent(
                ObjectKey("Node", "", name), "Normal", "TriggeredScaleUp",
                f"activated from standby{cancelled} for {len(mine)} pending pod(s): {', '.join(mine[:10])}"))
        for pod in up.helped:
            owners.setdefault(by_name[(pod.namespace, pod.name)][1].owner, []).append(pod.name)
        for owner, names in sorted(owners.items()):
            self.plan.events.append(PlannedEvent(
                owner, "Normal", "TriggeredScaleUp",
                f"{', '.join(sorted(names))}: pod triggered scale-up: standby node(s) {', '.join(up.nodes)} activated"))
        self.scaled_up = True
        self._node_views()
        again = schedule(unplaced, self.usable, placed)
        return [d for d in decisions if d.node is not None] + again

    def scale_down(self) -> None:
        """The cluster autoscaler's scale-down, after this pass's placements: a draining node
        with only DaemonSet pods left goes back to standby; an active standby node unneeded for
        the unneeded time starts draining (one at a time)."""
        if not self.scaling:
            return
        now, cfg = self.now, self.autoscaling
        finished = {(p.namespace, p.name) for p in self.observed.pods if p.finished}
        on: dict[str, list[DesiredPod]] = {}
        for d in self.plan.pods:
            if d.node is not None and (d.owner.namespace, d.name) not in finished:
                on.setdefault(d.node, []).append(d)
        for name in sorted(n for n, rec in self.scaling.items() if rec.state == SCALING_DOWN):
            rec = self.scaling[name]
            left = sorted(d.name for d in on.get(name, []) if d.owner.kind != "DaemonSet")
            key = ObjectKey("Node", "", name)
            if not left:
                self.scaling[name] = NodeScaling(STANDBY, now, "scaled down: drained")
                self.plan.events.append(PlannedEvent(key, "Normal", "ScaleDown", "node drained: back to standby"))
            elif now - rec.since >= nodescaling.DRAIN_TIMEOUT:
                self.scaling[name] = NodeScaling(ACTIVE, now, "scale-down failed: pods would not leave")
                self.plan.events.append(PlannedEvent(
                    key, "Warning", "ScaleDownFailed",
                    f"pods still on the node after {nodescaling.DRAIN_TIMEOUT:g} s: {', '.join(left[:10])}; "
                    "it stays active"))
            else:
                _requeue(self, rec.since + nodescaling.DRAIN_TIMEOUT - now)
        active = sorted(n for n, rec in self.scaling.items() if rec.state == ACTIVE)
        if self.scaled_up or not cfg.scale_down_enabled:  # CA: no scale-down in a loop that scaled up
            if not cfg.scale_down_enabled:
                for name in active:
                    self.scaling[name] = replace(self.scaling[name], unneeded_since=None)
            return
        busy = any(rec.state == SCALING_DOWN for rec in self.scaling.values())
        memo = self.desired.memo

        def info(d: DesiredPod) -> tuple[PodInfo, Mapping[str, Any]]:
            owner = self.desired.objects.get(d.owner) or self.runs.get(d.owner)
            template = self.template(owner) or {}
            kept = memo.get(("scaling-info", d.owner))  # kept with the state, like the pods' specs
            if kept is None or kept[0] is not template:
                kept = memo[("scaling-info", d.owner)] = (template, pod_info_from_template(
                    d.name, d.owner.namespace, template, owner=_owner_id(d.owner)))
            return replace(kept[1], name=d.name), template

        gone: set[str] = set()
        for name in active:
            rec = self.scaling[name]
            why, movable = self._needed(name, on, info, gone)
            if why:
                if rec.unneeded_since is not None:
                    self.scaling[name] = replace(rec, unneeded_since=None)
                continue
            since = rec.unneeded_since if rec.unneeded_since is not None else now
            if now - since < cfg.unneeded_time or (busy and movable):
                self.scaling[name] = replace(rec, unneeded_since=since)
                if not busy:
                    _requeue(self, since + cfg.unneeded_time - now)
                continue
            key = ObjectKey("Node", "", name)
            gone.add(name)
            if movable:
                busy = True
                self.scaling[name] = NodeScaling(SCALING_DOWN, now, f"unneeded for {now - since:.0f} s")
                self.plan.events.append(PlannedEvent(
                    key, "Normal", "ScaleDown",
                    f"marked the node as toBeDeleted/unschedulable: evicting pods {', '.join(sorted(movable)[:10])}"))
                _requeue(self, 0.0)
            else:
                self.scaling[name] = NodeScaling(STANDBY, now, "scaled down: empty")
                self.plan.events.append(PlannedEvent(key, "Normal", "ScaleDown", "empty node back to standby"))

    def _needed(self, name: str, on: Mapping[str, list[DesiredPod]],
                info: Callable[[DesiredPod], tuple[PodInfo, Mapping[str, Any]]],
                gone: set[str]) -> tuple[str, list[str]]:
        """Why an active standby node is still needed ("" when it is unneeded), and the pods a
        scale-down would move (not its DaemonSet pods, nor expendable ones)."""
        node = self.observed_nodes[name]
        if not node.reachable or node.lost:
            return "not ready", []
        if node.scale_down_disabled:
            return f"annotated {nodescaling.SCALE_DOWN_DISABLED}", []
        if node.draining:
            return "drained in Git", []
        pods = [(d, *info(d)) for d in on.get(name, [])]
        movable = [(d, i, t) for d, i, t in pods
                   if d.owner.kind != "DaemonSet" and i.priority >= nodescaling.EXPENDABLE_PRIORITY_CUTOFF]
        used = nodescaling.utilization((i.requests for _, i, _ in pods), node.info)
        if movable and used >= self.autoscaling.utilization_threshold:
            return f"{used:.0%} of its allocatable requested", []
        for d, _, template in movable:
            why = nodescaling.blocker(d.name, d.owner.kind, template)
            if why:
                return why, []
        if not movable:
            return "", []
        # The other active nodes, as they are after this pass (not those scaling down or chosen now).
        others = [n for n in self.usable if n.name != name and n.name not in gone
                  and ((rec := self.scaling.get(n.name)) is None or rec.state == ACTIVE)]
        # The simulation is kept with the state while its inputs stay the same (the pods on every node,
        # the nodes as the scheduler sees them): an unneeded node costs a pass no scheduler run.
        inputs = (tuple(d.name for d, _, _ in movable),  # in plan order: the same for the same inputs
                  tuple((d.owner.namespace, d.name, n.name) for n in others for d in on.get(n.name, [])),
                  tuple((n.name, n.allocatable, n.taints, n.unschedulable, n.ready, tuple(sorted(n.labels.items())))
                        for n in others))
        kept = self.desired.memo.get(("fit-elsewhere", name))
        if kept is not None and kept[0] == inputs:
            why = str(kept[1])
        else:
            placed = [(info(d)[0], n.name) for n in others for d in on.get(n.name, [])]
            why = nodescaling.fit_elsewhere([i for _, i, _ in movable], others, placed)
            self.desired.memo[("fit-elsewhere", name)] = (inputs, why)
        return why, [d.name for d, _, _ in movable]


@dataclass
class _Budget:
    """A PodDisruptionBudget as the disruption controller computes it for this pass."""

    name: str
    namespace: str
    selector: Mapping[str, Any] | None
    expected: int
    healthy: int
    desired: int
    allowed: int
    always_allow: bool

    def covers(self, labels: Mapping[str, str]) -> bool:
        return self.selector is not None and selectors.matches(self.selector, labels)

    def status(self) -> Status:
        message = (f"{self.healthy}/{self.expected} pods healthy, {self.desired} needed: "
                   f"{self.allowed} disruption(s) allowed")
        health = "Healthy" if self.healthy >= self.desired else "Degraded"
        return Status(health, message, self.expected, self.healthy, available=self.healthy, conditions=(
            {"type": "DisruptionAllowed", "status": "True" if self.allowed > 0 else "False",
             "reason": "SufficientPods" if self.allowed > 0 else "InsufficientPods"},))


def _budget(ps: _Pass, pdb: Object) -> _Budget:
    spec = pdb.spec
    selector = spec.get("selector")
    covered: list[PodState] = []
    expected = 0
    for key, pods in ps.by_owner.items():
        owner = ps.desired.objects.get(key) or ps.runs.get(key)
        template = _template(owner)
        if key.namespace != pdb.key.namespace or template is None or selector is None:
            continue
        if not selectors.matches(selector, (template.get("metadata") or {}).get("labels") or {}):
            continue
        mine = [p for p in pods if not p.finished]
        covered.extend(mine)
        replicas = ps.scales.get(key, owner.spec.get("replicas")) if owner is not None and key.kind in (
            "Deployment", "ReplicaSet", "StatefulSet") else None  # an autoscaler's count is the scale
        expected += int(replicas) if isinstance(replicas, int) and not isinstance(replicas, bool) else len(mine)
    healthy = sum(1 for p in covered if _ready(p, ps.now, 0) and not (
        p.node and (n := ps.nodes.get(p.node)) is not None and n.lost))
    if "minAvailable" in spec:
        desired = _scaled(spec["minAvailable"], expected, round_up=True)
    elif "maxUnavailable" in spec:
        desired = max(0, expected - _scaled(spec["maxUnavailable"], expected, round_up=True))
    else:
        desired = expected  # Kubernetes' default: maxUnavailable 0 (nothing is evicted)
    return _Budget(pdb.key.name, pdb.key.namespace, selector, expected, healthy, desired,
                   max(0, healthy - desired), spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow")


def _claim_names(template: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for v in (template.get("spec") or {}).get("volumes") or []:
        pvc = v.get("persistentVolumeClaim") if isinstance(v, dict) else None
        if isinstance(pvc, dict) and pvc.get("claimName"):
            out.append(str(pvc["claimName"]))
    return tuple(out)


class _Volumes:
    """The pass's claim bindings: static ones (PersistentVolumes in Git), those recorded, and
    those made now for a claim's first pod; with who uses each claim (ReadWriteOncePod)."""

    def __init__(self, ps: _Pass) -> None:
        self.ps = ps
        desired = ps.desired
        self.classes = {o.key.name: o for o in desired.of_kind("StorageClass")}
        self.static = podspecs.static_bindings(desired)
        self.bound: dict[ObjectKey, volumes.Binding] = dict(self.static)
        self.users: dict[ObjectKey, list[str]] = {}
        for key, binding in ps.observed.claims.items():
            claim = desired.objects.get(key)
            if claim is not None and key not in self.bound and volumes.provisioned(claim, self.classes)[0]:
                self.bound[key] = binding
        # Claims in use by pods already placed: counted, and adopted where not bound yet (a
        # claim from before bindings were recorded stays on the node its pods run on).
        for owner_key, pods in sorted(ps.by_owner.items()):
            template = _template(desired.objects.get(owner_key))
            names = _claim_names(template) if template is not None else ()
            for name in names:
                key = ObjectKey("PersistentVolumeClaim", owner_key.namespace, name)
                for p in sorted(pods, key=lambda p: p.name):
                    if p.node is None or p.finished:
                        continue
                    self.users.setdefault(key, []).append(p.name)
                    claim = desired.objects.get(key)
                    if key not in self.bound and claim is not None:
                        provisioned, reclaim = volumes.provisioned(claim, self.classes)
                        if provisioned:
                            self.bound[key] = volumes.Binding(
                                p.node, volumes.provisioned_path(key.namespace, name), reclaim)

    def pin(self, namespace: str, claims: tuple[str, ...], pod: str) -> tuple[str, str | None]:
        """(why the pod cannot be placed, "" if it can; the node its bound claims pin it to)."""
        node: str | None = None
        for name in claims:
            key = ObjectKey("PersistentVolumeClaim", namespace, name)
            claim = self.ps.desired.objects.get(key)
            if claim is None:
                return f'persistentvolumeclaim "{name}" not found', None
            modes = claim.spec.get("accessModes") or []
            others = [u for u in self.users.get(key, []) if u != pod]
            if "ReadWriteOncePod" in modes and others:
                return (f'persistentvolumeclaim "{name}" is ReadWriteOncePod and used by pod "{others[0]}"', None)
            binding = self.bound.get(key)
            if binding is None:
                if not volumes.provisioned(claim, self.classes)[0]:
                    return (f'persistentvolumeclaim "{name}" is not bound: no PersistentVolume of its class '
                            "with enough capacity and its access modes is available"), None
                continue
            if node is not None and binding.node != node:
                return f"its claims are on different nodes ({node}, {binding.node}): volume node affinity " \
                    "conflict", None
            node = binding.node
        return "", node

    def bind(self, namespace: str, claims: tuple[str, ...], node: str, pod: str) -> str:
        """Bind the still unbound claims of a pod placed on `node`; a claim bound elsewhere in
        this very pass makes it wait ("" when it may go)."""
        for name in claims:
            key = ObjectKey("PersistentVolumeClaim", namespace, name)
            binding = self.bound.get(key)
            if binding is not None and binding.node != node:
                return f'waiting for persistentvolumeclaim "{name}", just bound to node {binding.node}'
        for name in claims:
            key = ObjectKey("PersistentVolumeClaim", namespace, name)
            claim = self.ps.desired.objects.get(key)
            if key not in self.bound and claim is not None:
                reclaim = volumes.provisioned(claim, self.classes)[1]
                self.bound[key] = volumes.Binding(node, volumes.provisioned_path(namespace, name), reclaim)
            self.users.setdefault(key, []).append(pod)
        return ""

    def statuses(self) -> None:
        """Each claim's and volume's status: where it is bound, or why it waits."""
        ps = self.ps
        for claim in ps.desired.of_kind("PersistentVolumeClaim"):
            binding = self.bound.get(claim.key)
            if binding is not None:
                where = f"volume {binding.volume}" if binding.volume else binding.path
                ps.plan.statuses[claim.key] = Status(
                    "Healthy", f"Bound on node {binding.node} ({where}; reclaim {binding.reclaim})", binding=binding)
            elif volumes.provisioned(claim, self.classes)[0]:
                cls = self.classes.get(volumes.claim_class(claim, self.classes) or "")
                mode = str((cls.body if cls else {}).get("volumeBindingMode") or "WaitForFirstConsumer")
                ps.plan.statuses[claim.key] = Status(
                    "Healthy", f"Pending: {mode} (bound where its first pod is placed)")
            else:
                ps.plan.statuses[claim.key] = Status(
                    "Degraded", "Pending: no PersistentVolume of its class with enough capacity and its access modes")
        bound_to = {b.volume: key for key, b in self.static.items()}
        for pv in ps.desired.of_kind("PersistentVolume"):
            owner = bound_to.get(pv.key.name)
            if owner is not None:
                ps.plan.statuses[pv.key] = Status("Healthy", f"Bound to {owner.namespace}/{owner.name}")
            else:
                ps.plan.statuses[pv.key] = Status("Healthy", "Available")


def _cluster_spec(desired: DesiredState) -> Mapping[str, Any] | None:
    clusters = desired.of_kind("Cluster")
    return clusters[0].spec if clusters else None


def _owner_id(key: ObjectKey) -> str:
    return f"{key.kind}/{key.namespace}/{key.name}"


def _template(obj: Object | None) -> Mapping[str, Any] | None:
    if obj is None:
        return None
    if obj.key.kind == "CronJob":
        return None
    if obj.key.kind == "Pod":
        return obj.pod_as_template
    tmpl = obj.spec.get("template")
    return tmpl if isinstance(tmpl, dict) else None


# --- controllers -------------------------------------------------------------------------


def _deployment(ps: _Pass, obj: Object) -> None:
    template = ps.template(obj)
    if template is None:
        return
    spec = obj.spec
    replicas = ps.replicas(obj)
    rev = _revision(ps, obj, template)
    min_ready = float(spec.get("minReadySeconds", 0))
    live, lost = ps.live(obj)
    for p in lost:
        ps.remove(p)
    new = sorted((p for p in live if p.revision == rev), key=lambda p: _index(p.name))
    old = [p for p in live if p.revision != rev]
    if spec.get("paused") is True:
        _paused_deployment(ps, obj, template, rev, replicas, new, old, min_ready)
        return
    strategy = spec.get("strategy") or {}
    recreate = strategy.get("type") == "Recreate"
    ru = strategy.get("rollingUpdate") or {}
    surge = _scaled(ru.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _scaled(ru.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1

    keep_new = (
        new[:replicas]
        if len(new) <= replicas
        else sorted(_removal_order(new)[len(new) - replicas :], key=lambda p: _index(p.name))
    )
    kept_ids = {id(p) for p in keep_new}  # identity: equal-looking PodStates are still two pods
    for p in new:
        if id(p) in kept_ids:
            _keep(ps, obj, template, p)
        else:
            ps.remove(p)

    removed_old: list[PodState] = []
    if recreate:
        removed_old = list(old)
    else:
        available = sum(1 for p in keep_new + old if _ready(p, ps.now, min_ready))
        budget = available - (replicas - unavailable)
        for p in _removal_order(old):
            if not _ready(p, ps.now, min_ready):
                removed_old.append(p)  # an unavailable old pod costs no availability
            elif budget > 0:
                removed_old.append(p)
                budget -= 1
    removed_ids = {id(p) for p in removed_old}
    for p in old:
        if id(p) in removed_ids:
            ps.remove(p)
        else:
            ps.keep(obj, p, _spec_for_record(ps, obj, p))
    remaining_old = len(old) - len(removed_old)

    missing = replicas - len(keep_new)
    if recreate:
        allowed = missing if not old else 0  # only once every old pod is gone
    else:
        allowed = max(0, min(missing, replicas + surge - len(keep_new) - remaining_old))
    # An evicted pod's name stays taken while its node still holds it (Failed, being removed).
    used = {_index(p.name) for p in keep_new} | {_index(p.name) for p in lost if node_evicted(p)}
    index = 0
    for _ in range(allowed):
        while index in used:
            index += 1
        used.add(index)
        name = f"{obj.key.name}-{rev[:10]}-{index}"
        _create(ps, obj, template, name, rev)

    ready_new = sum(1 for p in keep_new if _ready(p, ps.now, min_ready))
    ready_all = ready_new + sum(1 for p in old if id(p) not in removed_ids and _ready(p, ps.now, min_ready))
    ps.plan.statuses[obj.key] = _rollout_status(
        ps, obj, rev, replicas, ready_new, len(keep_new), ready_all, bool(old), replicas - unavailable
    )


def _pod(ps: _Pass, obj: Object) -> None:
    """A bare Pod: placed once by the scheduler and never moved, as in Kubernetes: on a lost
    node it waits for that node. A changed spec replaces it where it runs (Kubernetes refuses
    most changes to a Pod; Git is the truth here)."""
    template = ps.template(obj)
    if template is None:
        return
    rev = _revision(ps, obj, template)
    pods = ps.by_owner.get(obj.key, [])
    mine = next((p for p in pods if p.name == obj.key.name), None)
    for p in pods:
        if p is not mine:
            ps.remove(p)
    if mine is None:
        _create(ps, obj, template, obj.key.name, rev)
        ps.plan.statuses[obj.key] = Status("Progressing", "being placed", 1, 0, revision=rev)
        return
    node = ps.nodes.get(mine.node) if mine.node else None
    if mine.node is None:  # not placed yet: the scheduler tries again (its row is updated, not replaced)
        _create(ps, obj, template, obj.key.name, rev)
        ps.plan.statuses[obj.key] = Status("Progressing", mine.message or "being placed", 1, 0, revision=rev)
        return
    if node is not None and node.leaving and (not node.reachable or ps.may_evict(obj, template, mine)):
        ps.remove(mine)  # its node left Git: placed again, elsewhere, once it is gone
        ps.plan.statuses[obj.key] = Status("Progressing", f"evicted from node {mine.node}, which left Git",
                                           1, 0, revision=rev)
        return
    if mine.revision == rev:
        ps.keep(obj, mine, _spec(ps, obj, template, mine.name, mine.node))
    else:  # the agent replaces it in place: same name, new spec
        spec = _spec(ps, obj, template, mine.name, mine.node)
        ps.plan.pods.append(DesiredPod(mine.name, obj.key, mine.node, rev, spec, None))
    if node is None or node.lost:
        health, message = "Degraded", f"node {mine.node} is lost; a bare Pod is not moved to another node"
    elif mine.phase == "Succeeded":
        health, message = "Healthy", "Succeeded"
    elif mine.phase == "Failed":
        health, message = "Degraded", f"Failed: {mine.reason or mine.message}".rstrip(": ")
    elif mine.revision == rev and _ready(mine, ps.now, 0):
        health, message = "Healthy", f"Running on {mine.node}"
    else:
        health, message = "Progressing", f"{mine.phase} on {mine.node}" + (f": {mine.reason}" if mine.reason else "")
    ready = 1 if health == "Healthy" and mine.phase == "Running" else 0
    ps.plan.statuses[obj.key] = Status(health, message, 1, ready, 1 if mine.revision == rev else 0, ready, rev)


def _replicaset(ps: _Pass, obj: Object) -> None:
    """Kubernetes' ReplicaSet: `replicas` pods, scaled up with the current template and down
    by the removal order; a changed template applies only to pods made after it (no rollout:
    that is a Deployment's job), so a pod of an earlier template keeps running as it is."""
    template = ps.template(obj)
    if template is None:
        return
    replicas = int(obj.spec.get("replicas", 1))
    rev = _revision(ps, obj, template)
    min_ready = float(obj.spec.get("minReadySeconds", 0))
    live, lost = ps.live(obj)
    for p in lost:
        ps.remove(p)
    keep = live if len(live) <= replicas else _removal_order(live)[len(live) - replicas :]
    kept_ids = {id(p) for p in keep}
    for p in live:
        if id(p) not in kept_ids:
            ps.remove(p)
        elif p.revision == rev:
            _keep(ps, obj, template, p)
        else:
            ps.keep(obj, p, _spec_for_record(ps, obj, p))
    used = {_index(p.name) for p in keep} | {_index(p.name) for p in lost if node_evicted(p)}
    index = 0
    for _ in range(replicas - len(keep)):
        while index in used:
            index += 1
        used.add(index)
        _create(ps, obj, template, f"{obj.key.name}-{index}", rev)
    ready = sum(1 for p in keep if _ready(p, ps.now, min_ready))
    current = sum(1 for p in keep if p.revision == rev)
    health = "Healthy" if ready >= replicas and len(keep) == replicas else "Progressing"
    message = f"{ready}/{replicas} ready"
    if current < len(keep):
        message += f"; {len(keep) - current} of an earlier template"
    ps.plan.statuses[obj.key] = Status(health, message, replicas, ready, current, ready, rev)


def _paused_deployment(
    ps: _Pass,
    obj: Object,
    template: Mapping[str, Any],
    rev: str,
    replicas: int,
    new: list[PodState],
    old: list[PodState],
    min_ready: float,
) -> None:
    """`spec.paused`, as `kubectl rollout pause`: the rollout stops where it is. Pods of every
    revision keep running; no old pod is replaced for a template change. Scaling still
    applies: extra pods go (old revisions first), and missing ones (scaled up, or lost with
    a node) come from the current template, the only one gitorch still has."""
    strategy = obj.spec.get("strategy") or {}
    rolling = strategy.get("type") != "Recreate"
    ru = strategy.get("rollingUpdate") or {}
    surge = _scaled(ru.get("maxSurge", "25%"), replicas, round_up=True) if rolling else 0
    unavailable = _scaled(ru.get("maxUnavailable", "25%"), replicas, round_up=False) if rolling else 0
    if rolling and surge == 0 and unavailable == 0:
        unavailable = 1
    # A rollout paused midway keeps its surge; beyond it (scaled down), old revisions go first.
    excess = max(0, len(new) + len(old) - replicas - (surge if old else 0))
    gone = set((_removal_order(old) + _removal_order(new))[:excess])
    for p in old:
        if p in gone:
            ps.remove(p)
        else:
            ps.keep(obj, p, _spec_for_record(ps, obj, p))
    kept_new = [p for p in new if p not in gone]
    for p in new:
        if p in gone:
            ps.remove(p)
        else:
            _keep(ps, obj, template, p)
    used = {_index(p.name) for p in kept_new} | {  # an evicted pod's name stays taken while it is removed
        _index(p.name) for p in ps.by_owner.get(obj.key, []) if node_evicted(p)}
    index = 0
    for _ in range(max(0, replicas - (len(new) + len(old) - excess))):
        while index in used:
            index += 1
        used.add(index)
        name = f"{obj.key.name}-{rev[:10]}-{index}"
        _create(ps, obj, template, name, rev)
    ready_new = sum(1 for p in kept_new if _ready(p, ps.now, min_ready))
    available = ready_new + sum(1 for p in old if p not in gone and _ready(p, ps.now, min_ready))
    stale = sum(1 for p in old if p not in gone)
    min_available = replicas - unavailable
    message = f"Paused: {ready_new}/{replicas} pods of the current template ready"
    if stale:
        message += f", {stale} of a previous one kept"
    conditions = (
        {"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused"},
        {
            "type": "Available",
            "status": "True" if available >= min_available else "False",
            "reason": "MinimumReplicasAvailable" if available >= min_available else "MinimumReplicasUnavailable",
        },
    )
    ps.plan.statuses[obj.key] = Status(
        "Suspended", message, replicas, ready_new, len(kept_new), available, rev, conditions
    )


def _rollout_status(
    ps: _Pass,
    obj: Object,
    rev: str,
    replicas: int,
    ready_new: int,
    updated: int,
    available: int,
    has_old: bool,
    min_available: int,
) -> Status:
    complete = ready_new >= replicas and updated == replicas and not has_old
    conditions: list[dict[str, str]] = [
        {
            "type": "Available",
            "status": "True" if available >= min_available else "False",
            "reason": "MinimumReplicasAvailable" if available >= min_available else "MinimumReplicasUnavailable",
        },
    ]
    started = ps.observed.rollout_started.get(obj.key)
    deadline = float(obj.spec.get("progressDeadlineSeconds", 600))
    since = started[1] if started and started[0] == rev else ps.now
    if complete:
        conditions.append({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"})
        health, message = "Healthy", f"{ready_new}/{replicas} ready"
    elif ps.now - since > deadline:
        conditions.append({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"})
        health = "Degraded"
        message = (
            f"rollout of {rev[:10]} made no progress within {deadline:g} s: {ready_new}/{replicas} "
            f"new pods ready; the previous pods keep serving"
        )
    else:
        conditions.append({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"})
        health, message = "Progressing", f"{ready_new}/{replicas} new pods ready ({available} available)"
    # Only this object's own pods (planned since its controller began): not a scan of every pod.
    pending = [p for p in ps.plan.pods[ps.started_at:] if p.owner == obj.key and p.node is None and p.message]
    if pending and not complete:
        message += f"; {len(pending)} pending: {pending[0].message}"
    return Status(health, message, replicas, ready_new, updated, available, rev, tuple(conditions))


def _spec(
    ps: _Pass,
    obj: Object,
    template: Mapping[str, Any],
    name: str,
    node: str | None,
    claims: Mapping[str, str] | None = None,
    hostname: str | None = None,
    index: int | None = None,
) -> dict[str, Any]:
    # Pure in (desired state, arguments): kept with the state, so passes on an unchanged commit
    # do not rebuild every pod's spec. Specs are never changed after they are built.
    if ps.desired.objects.get(obj.key) is not obj or node is None:
        # Made during this pass (a CronJob's Job), or a pod not placed yet (built once, at its
        # creation; the spec it runs with names its node): not kept.
        return podspecs.pod_spec(
            ps.desired, obj, template, name, node=node or "", claims=claims, hostname=hostname, index=index
        )
    key = ("pod_spec", obj.key, id(template), name, node or "", tuple(sorted((claims or {}).items())), hostname, index)
    spec = ps.desired.memo.get(key)
    if spec is None:
        spec = ps.desired.memo[key] = podspecs.pod_spec(
            ps.desired, obj, template, name, node=node or "", claims=claims, hostname=hostname, index=index
        )
    return spec


def _create(
    ps: _Pass,
    obj: Object,
    template: Mapping[str, Any],
    name: str,
    rev: str,
    ordinal: int | None = None,
    claims: Mapping[str, str] | None = None,
    hostname: str | None = None,
    index: int | None = None,
) -> None:
    """A new pod to be placed, with how to build its spec once its node is known."""
    build = functools.partial(_spec, ps, obj, template, name, claims=claims, hostname=hostname, index=index)
    ps.create(obj, template, name, rev, build(None), ordinal, respec=build)


def _keep(
    ps: _Pass,
    obj: Object,
    template: Mapping[str, Any],
    p: PodState,
    claims: Mapping[str, str] | None = None,
    hostname: str | None = None,
    index: int | None = None,
) -> None:
    """Keep a pod as it is. One never placed goes back to the scheduler (its row is updated,
    not replaced): a pod Pending for want of room, or of its claim's node, gets a node once
    there is one."""
    if p.node is None and not p.finished:
        _create(ps, obj, template, p.name, p.revision, p.ordinal, claims, hostname, index)
    else:
        ps.keep(obj, p, _spec(ps, obj, template, p.name, p.node, claims, hostname, index))


def _revision(ps: _Pass, obj: Object, template: Mapping[str, Any]) -> str:
    """podspecs.revision, kept with the state like _spec (pure in the state and the template)."""
    if ps.desired.objects.get(obj.key) is not obj:
        return podspecs.revision(ps.desired, obj, template)
    key = ("revision", obj.key, id(template))
    rev = ps.desired.memo.get(key)
    if rev is None:
        rev = ps.desired.memo[key] = podspecs.revision(ps.desired, obj, template)
    return str(rev)


def _spec_for_record(ps: _Pass, obj: Object, p: PodState) -> dict[str, Any]:
    """An old-revision pod keeps running as it is: the node agent matches it by name and
    hash, so resend a spec with the hash it has (its body is no longer in Git)."""
    return {"name": p.name, "namespace": p.namespace, "keep": True, "revision": p.revision}


def _statefulset(ps: _Pass, obj: Object) -> None:
    template = ps.template(obj)
    if template is None:
        return
    spec = obj.spec
    replicas = ps.replicas(obj)
    ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
    rev = _revision(ps, obj, template)
    pods: dict[int, PodState] = {}
    evicted_now: set[int] = set()
    for p in ps.by_owner.get(obj.key, []):
        i = p.ordinal if p.ordinal is not None else _index(p.name)
        if node_evicted(p):  # deleted, as the StatefulSet controller deletes a failed pod; made again next pass
            ps.remove(p)
            evicted_now.add(i)
        else:
            pods[i] = p
    name = obj.key.name
    ns = obj.key.namespace
    claim_names = [str((t.get("metadata") or {}).get("name")) for t in spec.get("volumeClaimTemplates") or []]

    def claims(i: int) -> dict[str, str]:
        return {c: f"{podspecs.VOLUME_ROOT}/{ns}/{c}-{name}-{i}" for c in claim_names}

    # Available: ready for minReadySeconds. Ordered creation and updates wait for it, as the
    # StatefulSet controller waits for each predecessor to be running and available.
    min_ready = float(spec.get("minReadySeconds", 0))
    ready = {i: _ready(p, ps.now, min_ready) for i, p in pods.items()}
    # Scale down from the highest ordinal, one at a time when ordered.
    extra = sorted((i for i in pods if i >= replicas), reverse=True)
    for n, i in enumerate(extra):
        if ordered and n > 0:
            _keep(ps, obj, template, pods[i], claims=claims(i), hostname=pods[i].name)
        else:
            ps.remove(pods[i])
    # Update in place from the highest ordinal, one at a time, when the others are ready;
    # ordinals below rollingUpdate.partition keep their revision (a staged or canary rollout).
    partition = int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition", 0))
    stale = sorted((i for i in pods if partition <= i < replicas and pods[i].revision != rev), reverse=True)
    all_ready = all(ready.get(i, False) for i in range(replicas) if i in pods)
    update_now = stale[:1] if (all_ready or not ordered) else []
    if spec.get("updateStrategy", {}).get("type") == "OnDelete":
        update_now = []
    blocked = False
    for i in range(replicas):
        pod_name = f"{name}-{i}"
        existing = pods.get(i)
        if existing is not None:
            if existing.revision != rev and i not in update_now:
                ps.keep(obj, existing, _spec_for_record(ps, obj, existing))
            else:
                # The pod keeps its node (its volumes live there) even while the node is away.
                ps.plan.pods.append(
                    DesiredPod(
                        pod_name,
                        obj.key,
                        existing.node,
                        rev,
                        _spec(ps, obj, template, pod_name, existing.node, claims(i), pod_name),
                        i,
                        existing.message,
                    )
                )
                if existing.node is None:
                    ps.plan.pods.pop()
                    _create(ps, obj, template, pod_name, rev, i, claims(i), pod_name)
            if ordered and not ready.get(i, False):
                blocked = True
            continue
        if blocked or i in evicted_now:
            blocked = blocked or ordered
            continue
        _create(ps, obj, template, pod_name, rev, i, claims(i), pod_name)
        if ordered:
            blocked = True
    # Below the partition a pod of the previous revision is where it should be.
    n_ready = sum(
        1 for i in range(replicas) if ready.get(i, False) and (pods[i].revision == rev or i < partition)
    )
    updated = sum(1 for i in range(replicas) if i in pods and pods[i].revision == rev)
    complete = n_ready == replicas and not extra
    health = "Healthy" if complete else "Progressing"
    message = f"{n_ready}/{replicas} ready" + (f" for {min_ready:g} s (minReadySeconds)" if min_ready else "")
    held = sum(1 for i in range(min(partition, replicas)) if i in pods and pods[i].revision != rev)
    if held:
        message += f"; partition {partition}: {held} pods below it keep their previous revision"
    n_running_ready = sum(  # readyReplicas: ready, minReadySeconds or not
        1 for i in range(replicas)
        if i in pods and _ready(pods[i], ps.now, 0) and (pods[i].revision == rev or i < partition)
    )
    ps.plan.statuses[obj.key] = Status(health, message, replicas, n_running_ready, updated, sum(ready.values()), rev)


def _daemonset(ps: _Pass, obj: Object) -> None:
    """One pod per eligible node, updated as Kubernetes' DaemonSet controller does: RollingUpdate
    replaces at most maxUnavailable nodes' pods at a time, or with maxSurge starts the new pod
    beside the old one and removes the old one once the new one is available (ready for
    minReadySeconds); OnDelete gives the new template only to pods made after a pod is gone."""
    template = ps.template(obj)
    if template is None:
        return
    rev = _revision(ps, obj, template)
    strategy = obj.spec.get("updateStrategy") or {}
    on_delete = strategy.get("type") == "OnDelete"
    ru = strategy.get("rollingUpdate") or {}
    min_ready = float(obj.spec.get("minReadySeconds", 0))
    existing: dict[str, list[PodState]] = {}
    evicted_on: set[str] = set()
    for p in ps.by_owner.get(obj.key, []):
        if p.node and node_evicted(p):  # deleted; the node gets a new pod on the next pass
            ps.remove(p)
            evicted_on.add(p.node)
        elif p.node:
            existing.setdefault(p.node, []).append(p)
    eligible: list[str] = []
    for node in ps.node_list:  # a node on standby runs no pods, DaemonSet pods included
        if node.lost:
            continue
        info = pod_info_from_template(f"{obj.key.name}-probe", obj.key.namespace, template)
        # Like the DaemonSet controller: only the node's own filters matter, not the others' pods.
        decision = schedule([info], [node.info])[0]
        tolerations = (template.get("spec") or {}).get("tolerations") or ()
        if decision.node == node.name or (node.name in existing and not evicted(node, tolerations, ps.now)):
            eligible.append(node.name)
    for n, gone in existing.items():
        if n not in eligible:
            for p in gone:
                ps.remove(p)
    # Both round up, as the controller scales them; they may not both be 0 (validation).
    surge = _scaled(ru.get("maxSurge", 0), len(eligible), round_up=True)
    unavailable_budget = _scaled(ru.get("maxUnavailable", 1), len(eligible), round_up=True)
    if surge == 0 and unavailable_budget == 0:
        unavailable_budget = 1

    def available(p: PodState) -> bool:
        return _ready(p, ps.now, min_ready)

    def current(n: str) -> tuple[PodState | None, list[PodState]]:
        pods = existing.get(n, [])
        new = [p for p in pods if p.revision == rev]
        for extra in new[1:]:
            ps.remove(extra)
        return (new[0] if new else None), [p for p in pods if p.revision != rev]

    # As the controller counts: a node missing its pod, or whose new pod is not available yet, is
    # unavailable; an old pod that is not available is replaced whatever the budget.
    def unavailable_node(n: str) -> bool:
        pods = existing.get(n, [])
        return not pods or any(p.revision == rev and not available(p) for p in pods)

    unavailable = sum(1 for n in eligible if unavailable_node(n))
    surging = sum(1 for n in eligible if len({p.revision == rev for p in existing.get(n, [])}) > 1)
    ready_count = available_count = updated = 0
    for n in eligible:
        base = f"{obj.key.name}-{podspecs.short_hash(n, 5)}"
        new, old = current(n)
        if new is not None:
            updated += 1
            ready_count += _ready(new, ps.now, 0)
            available_count += available(new)
            ps.plan.pods.append(DesiredPod(new.name, obj.key, n, rev, _spec(ps, obj, template, new.name, n)))
            for p in old:  # a surge pod's predecessor goes once the new one is available
                if available(new):
                    ps.remove(p)
                else:
                    ps.keep(obj, p, _spec_for_record(ps, obj, p))
            continue
        if not old:
            if n not in evicted_on:
                ps.plan.pods.append(DesiredPod(base, obj.key, n, rev, _spec(ps, obj, template, base, n)))
            continue
        keep, extra = old[0], old[1:]
        for p in extra:
            ps.remove(p)
        ready_count += _ready(keep, ps.now, 0)
        available_count += available(keep)
        if on_delete:
            ps.keep(obj, keep, _spec_for_record(ps, obj, keep))
        elif surge:
            # An unavailable old pod gets its replacement beside it at once; an available one
            # within maxSurge.
            if not available(keep) or surging < surge:
                surging += available(keep)
                name = base if keep.name != base else f"{base}-{rev[:5]}"
                ps.plan.pods.append(DesiredPod(name, obj.key, n, rev, _spec(ps, obj, template, name, n)))
            ps.keep(obj, keep, _spec_for_record(ps, obj, keep))
        elif not available(keep) or unavailable < unavailable_budget:
            # Replaced in place (same name, new spec): an unavailable pod costs no availability.
            unavailable += available(keep)
            ps.plan.pods.append(DesiredPod(keep.name, obj.key, n, rev, _spec(ps, obj, template, keep.name, n)))
        else:
            ps.keep(obj, keep, _spec_for_record(ps, obj, keep))
    complete = available_count == len(eligible) and updated == len(eligible)
    message = f"{available_count}/{len(eligible)} nodes available"
    if on_delete and updated < len(eligible):
        message += f"; OnDelete: {len(eligible) - updated} keep their earlier template until deleted"
    ps.plan.statuses[obj.key] = Status(
        "Healthy" if complete else "Progressing", message, len(eligible), ready_count, updated, available_count, rev
    )


def _job(ps: _Pass, obj: Object) -> None:
    template = ps.template(obj)
    if template is None:
        return
    spec = obj.spec
    completions = int(spec.get("completions", 1))
    parallelism = int(spec.get("parallelism", 1))
    backoff_limit = int(spec.get("backoffLimit", 6))
    deadline = spec.get("activeDeadlineSeconds")
    indexed = spec.get("completionMode") == "Indexed"
    rev = _revision(ps, obj, template)
    live, lost = ps.live(obj)
    for p in lost:
        ps.remove(p)
    succeeded = [p for p in live if p.phase == "Succeeded"]
    failed = [p for p in live if p.phase == "Failed"]
    active = [p for p in live if not p.finished]
    started = ps.observed.rollout_started.get(obj.key)
    since = started[1] if started else ps.now
    restarts = sum(p.restarts for p in live)
    ended = ps.observed.finished.get(obj.key)
    if ended is not None and ended.revision == rev:
        _finished_job(ps, obj, rev, completions, ended, live)  # it ran: never again, whatever its pods
        return
    for p in succeeded + failed:
        _keep(ps, obj, template, p, index=_completion_index(obj, p.name))
    if indexed:
        # Each index must succeed once: one succeeded pod per index counts.
        by_index = {i: p for p in succeeded if (i := _completion_index(obj, p.name)) is not None and i < completions}
        succeeded = list(by_index.values())
    if len(succeeded) >= completions:
        for p in active:
            ps.remove(p)
        ps.plan.statuses[obj.key] = Status(
            "Healthy",
            f"Complete: {len(succeeded)}/{completions} succeeded",
            completions,
            len(succeeded),
            revision=rev,
            conditions=({"type": "Complete", "status": "True", "reason": ""},),
            finished=Finished(rev, ps.now, True, f"Complete: {len(succeeded)}/{completions} succeeded"),
        )
        return
    reason = ""
    if len(failed) + restarts > backoff_limit:
        reason = f"BackoffLimitExceeded: {len(failed)} failed pod(s), {restarts} restart(s), limit {backoff_limit}"
    elif deadline is not None and ps.now - since > float(deadline):
        reason = f"DeadlineExceeded: active longer than {deadline} s"
    if reason:
        for p in active:
            ps.remove(p)
        ps.plan.statuses[obj.key] = Status(
            "Degraded",
            f"Failed: {reason}",
            completions,
            len(succeeded),
            revision=rev,
            conditions=({"type": "Failed", "status": "True", "reason": reason.split(":")[0]},),
            finished=Finished(rev, ps.now, False, f"Failed: {reason}"),
        )
        return
    for p in active:
        _keep(ps, obj, template, p, index=_completion_index(obj, p.name))
    want = min(parallelism, completions - len(succeeded)) - len(active)
    if indexed:
        _indexed_pods(ps, obj, template, rev, completions, max(0, want), live)
        want = 0
    used = {_index(p.name) for p in live}
    index = 0
    for _ in range(max(0, want)):
        while index in used:
            index += 1
        used.add(index)
        name = f"{obj.key.name}-{index}"
        _create(ps, obj, template, name, rev)
    ps.plan.statuses[obj.key] = Status(
        "Progressing",
        f"{len(succeeded)}/{completions} succeeded, {len(active)} active",
        completions,
        len(succeeded),
        revision=rev,
    )


def _completion_index(obj: Object, pod: str) -> int | None:
    """An Indexed Job pod's completion index, from its name: `<job>-<index>` for the first
    try, `<job>-<index>-<try>` for the next ones; None for a NonIndexed Job's pods."""
    if obj.spec.get("completionMode") != "Indexed" or not pod.startswith(f"{obj.key.name}-"):
        return None
    head = pod[len(obj.key.name) + 1 :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _indexed_pods(
    ps: _Pass, obj: Object, template: Mapping[str, Any], rev: str, completions: int, want: int,
    live: list[PodState],
) -> None:
    """Start up to `want` pods for the lowest indexes that neither succeeded nor run now, as
    Kubernetes' completionMode Indexed: each pod gets JOB_COMPLETION_INDEX and its index's
    annotation, and a failed index is retried under a new name with the same index."""
    names = {p.name for p in live}
    busy = {_completion_index(obj, p.name) for p in live if p.phase == "Succeeded" or not p.finished}
    for index in range(completions):
        if want <= 0:
            break
        if index in busy:
            continue
        name, tries = f"{obj.key.name}-{index}", 1
        while name in names:
            name, tries = f"{obj.key.name}-{index}-{tries}", tries + 1
        _create(ps, obj, template, name, rev, index=index)
        want -= 1


def _finished_job(
    ps: _Pass, obj: Object, rev: str, completions: int, ended: Finished, live: list[PodState]
) -> None:
    """A Job whose revision already finished keeps its status; its pods stay until
    ttlSecondsAfterFinished has passed since it finished (then they are removed, as Kubernetes
    deletes the Job), and it never runs again while its revision stays the same."""
    ttl = obj.spec.get("ttlSecondsAfterFinished")
    expired = isinstance(ttl, int) and not isinstance(ttl, bool) and ps.now - ended.at >= ttl
    template = ps.template(obj)
    for p in live:
        if expired or not p.finished or template is None:
            ps.remove(p)
        else:
            _keep(ps, obj, template, p, index=_completion_index(obj, p.name))
    message = ended.message + (f"; pods removed {ttl} s after it finished (ttlSecondsAfterFinished)"
                               if expired else "")
    condition = {"type": "Complete" if ended.complete else "Failed", "status": "True",
                 "reason": "" if ended.complete else ended.message.removeprefix("Failed: ").split(":")[0]}
    ps.plan.statuses[obj.key] = Status(
        "Healthy" if ended.complete else "Degraded",
        message,
        completions,
        sum(1 for p in live if p.phase == "Succeeded") if not expired else 0,
        revision=rev,
        conditions=(condition,),
        finished=ended,
    )


def _cronjob(ps: _Pass, obj: Object) -> None:
    from gitorch.model.timers import fire_times

    spec = obj.spec
    name, ns = obj.key.name, obj.key.namespace
    job_template = spec.get("jobTemplate") or {}
    runs: dict[str, list[PodState]] = {}
    for key, pods in ps.by_owner.items():
        if (
            key.kind == "Job"
            and key.namespace == ns
            and cronjob_run(name, key.name)
            and ObjectKey("Job", ns, key.name) not in ps.desired.objects
        ):
            runs[key.name] = pods

    def run_object(job_name: str) -> Object:
        body = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job_name, "namespace": ns, **(job_template.get("metadata") or {})},
            "spec": job_template.get("spec") or {},
        }
        return Object(ObjectKey("Job", ns, job_name), body, obj.document)

    last = ps.observed.last_schedule.get(obj.key, ps.now)  # first sight: start counting from now
    due = fire_times(str(spec.get("schedule")), last, ps.now, time_zone=spec.get("timeZone"))
    new_last = due[-1] if due else last
    active = {j for j, pods in runs.items() if any(not p.finished for p in pods)}
    if due and not spec.get("suspend"):
        scheduled = due[-1]
        deadline = spec.get("startingDeadlineSeconds")
        policy = spec.get("concurrencyPolicy", "Allow")
        if deadline is not None and ps.now - scheduled > float(deadline):
            ps.plan.events.append(
                PlannedEvent(
                    obj.key,
                    "Warning",
                    "MissedSchedule",
                    f"missed the run of {int(scheduled)}: past startingDeadlineSeconds",
                )
            )
        elif policy == "Forbid" and active:
            ps.plan.events.append(
                PlannedEvent(
                    obj.key,
                    "Normal",
                    "JobAlreadyActive",
                    f"not starting a run: {sorted(active)[0]} is still active (Forbid)",
                )
            )
        else:
            if policy == "Replace":
                for j in sorted(active):
                    for p in runs.pop(j):
                        ps.remove(p)
                active = set()
            job_name = f"{name}-{int(scheduled) // 60}"
            if job_name not in runs:
                runs[job_name] = []
                ps.plan.events.append(PlannedEvent(obj.key, "Normal", "SuccessfulCreate", f"created Job {job_name}"))
    # Keep the newest finished runs within the history limits; older ones go.
    finished_ok = sorted(j for j, pods in runs.items() if pods and all(p.phase == "Succeeded" for p in pods))
    finished_bad = sorted(
        j
        for j, pods in runs.items()
        if j not in active and j not in finished_ok and pods and all(p.finished for p in pods)
    )
    drop = finished_ok[: max(0, len(finished_ok) - int(spec.get("successfulJobsHistoryLimit", 3)))]
    drop += finished_bad[: max(0, len(finished_bad) - int(spec.get("failedJobsHistoryLimit", 1)))]
    for j in sorted(runs):
        run = run_object(j)
        ps.runs[run.key] = run
        if j in drop:
            for p in runs[j]:
                ps.remove(p)
            continue
        _job(ps, run)
        ps.plan.statuses.pop(run.key, None)  # a run's health is the CronJob's, not a workload of its own
    health = "Suspended" if spec.get("suspend") else "Healthy"
    message = f"{len(active)} active, {len(runs) - len(drop)} run(s) kept; schedule {spec.get('schedule')}"
    ps.plan.statuses[obj.key] = Status(health, message, last_schedule=new_last)


def _autoscaler(ps: _Pass, obj: Object) -> None:
    """A HorizontalPodAutoscaler's sync (every `autoscaler_sync` seconds; in between, the count
    it set last): the count its target runs, its status and a SuccessfulRescale event."""
    spec = autoscaling.parse_spec(obj.spec)
    key = ObjectKey(spec.target_kind, obj.key.namespace, spec.target_name)
    target = ps.desired.objects.get(key)
    stored = ps.observed.autoscalers.get(obj.key) or {}
    if target is None:
        message = (f"the HPA controller was unable to get the target's current scale: {key.kind.lower()}s "
                   f"{key.name!r} not found")
        ps.plan.statuses[obj.key] = Status("Degraded", message, conditions=(
            {"type": "AbleToScale", "status": "False", "reason": "FailedGetScale", "message": message},))
        return
    same_target = stored.get("target") == [key.kind, key.name]
    kept = stored.get("desiredReplicas")
    current = int(kept) if same_target and isinstance(kept, int) else int(target.spec.get("replicas", 1))
    last = stored.get("lastSync")
    live, _ = ps.live(target)
    period = ps.observed.autoscaler_sync
    newest = max((u.timestamp for p in live if (u := ps.observed.usage.get((p.namespace, p.name))) is not None),
                 default=None)
    if same_target and isinstance(last, (int, float)):
        early = ps.now - last < period - SYNC_SLACK
        # Due, but the sample it is due for is not in yet (a node a moment late): wait a little for it
        # rather than sync on what the last sync saw and wait a whole period.
        stale = newest is not None and newest == stored.get("sampleTime") and ps.now - last < period + SAMPLE_WAIT
        if early or stale:
            ps.scales[key] = current  # between syncs: the count it set last
            ps.plan.statuses[obj.key] = _autoscaler_status(dict(stored), spec)
            _requeue(ps, 0.5 if stale and not early else _next_sync(ps, live, float(last)) - ps.now)
            return
    template = _template(target) or {}
    samples = []
    for p in live:
        u = ps.observed.usage.get((p.namespace, p.name))
        values: dict[str, int] = {}
        if u is not None:
            for m in spec.metrics:
                got = _usage_of(u, m)
                if got is not None:
                    values[m.id] = got
        samples.append(autoscaling.PodSample(p.name, p.phase, p.ready, p.created, p.ready_since, values,
                                             u.timestamp if u else 0.0, u.window if u else 0.0))
    requests = {m.id: _request_of(template, m) for m in spec.metrics}
    history = autoscaling.History.from_json(stored.get("history") if same_target else None)
    decision = autoscaling.evaluate(spec, current, samples, requests, history, ps.now)
    ps.scales[key] = decision.desired
    if decision.rescaled:
        ps.plan.events.append(PlannedEvent(obj.key, "Normal", "SuccessfulRescale",
                                           f"New size: {decision.desired}; reason: {decision.rescale_reason}"))
    body: dict[str, Any] = {
        "target": [key.kind, key.name], "currentReplicas": len(live), "desiredReplicas": decision.desired,
        "currentMetrics": list(decision.metrics), "conditions": list(decision.conditions),
        "history": decision.history.to_json(), "lastSync": ps.now, "sampleTime": newest,
        "lastScaleTime": decision.history.last_scale,
    }
    ps.plan.statuses[obj.key] = _autoscaler_status(body, spec)
    _requeue(ps, _next_sync(ps, live, ps.now) - ps.now)


SYNC_SLACK = 1.0
"""Seconds a sync may come early, so the one due with a sample does not wait a whole period."""
SAMPLE_LAG = 0.25
"""Seconds after a pod's next sample is due that its node has written it."""
SAMPLE_WAIT = 3.0
"""Seconds past its period a sync waits for a sample newer than the one the last sync read."""


def _next_sync(ps: _Pass, pods: Sequence[PodState], last: float) -> float:
    """When the next sync is due: a period after the last one, and just after the target's pods'
    next sample (each sample carries its time and interval), so a sync reads fresh metrics
    instead of ones up to a period old."""
    due = last + ps.observed.autoscaler_sync - SYNC_SLACK
    samples = [u for p in pods if (u := ps.observed.usage.get((p.namespace, p.name))) is not None]
    if samples:
        newest = max(samples, key=lambda u: u.timestamp)
        upcoming = newest.timestamp + newest.window + SAMPLE_LAG
        while upcoming < due:
            upcoming += newest.window
        due = upcoming
    return due


def _requeue(ps: _Pass, after: float) -> None:
    after = max(0.0, after)
    ps.plan.requeue_after = after if ps.plan.requeue_after is None else min(ps.plan.requeue_after, after)


def _autoscaler_status(body: dict[str, Any], spec: autoscaling.Spec) -> Status:
    conditions = tuple(c for c in body.get("conditions") or [] if isinstance(c, dict))
    active = next((c for c in conditions if c.get("type") == "ScalingActive"), {})
    metrics = body.get("currentMetrics") or []
    shown = ", ".join(
        f"{autoscaling.current_text(m, _current_of(metrics, m))}/{autoscaling.target_text(m)}" for m in spec.metrics)
    message = f"{body.get('desiredReplicas')} replicas (min {spec.min_replicas}, max {spec.max_replicas}); {shown}"
    if active.get("status") == "False":
        message += f"; {active.get('message')}"
    desired = int(body.get("desiredReplicas") or 0)
    return Status("Healthy", message, desired, int(body.get("currentReplicas") or 0), conditions=conditions,
                  autoscaling=body)


def _current_of(metrics: Sequence[Any], m: autoscaling.Metric) -> Mapping[str, Any] | None:
    for got in metrics:
        src = (got or {}).get("containerResource" if m.container else "resource") or {}
        if src.get("name") == m.resource and src.get("container") == m.container:
            current = src.get("current")
            return current if isinstance(current, Mapping) else None
    return None


def _usage_of(u: PodUsage, m: autoscaling.Metric) -> int | None:
    if m.container is None:
        return u.value(m.resource)
    c = next((c for c in u.containers if c.name == m.container), None)
    if c is None:
        return None
    return c.cpu_millis if m.resource == "cpu" else c.memory_bytes


def _request_of(template: Mapping[str, Any], m: autoscaling.Metric) -> int | None:
    """A pod's request of the metric's resource (a container's, for ContainerResource); None when
    a container has none (the API server defaults a request to the limit, so that counts)."""
    total = 0
    for c in (template.get("spec") or {}).get("containers") or []:
        if m.container is not None and c.get("name") != m.container:
            continue
        res = c.get("resources") or {}
        raw = (res.get("requests") or {}).get(m.resource, (res.get("limits") or {}).get(m.resource))
        if raw is None:
            return None
        try:
            total += cpu_millis(raw) if m.resource == "cpu" else to_bytes(raw)
        except QuantityError:
            return None
    return total or None


def _vertical(ps: _Pass, obj: Object) -> None:
    """A VerticalPodAutoscaler (updateMode "Off"): the status the recommender computed; it changes
    nothing that runs. A pass comes every `recommender_sync` seconds to take in new samples."""
    body = dict(ps.observed.recommendations.get(obj.key) or {})
    conditions = tuple(c for c in body.get("conditions") or [] if isinstance(c, Mapping))
    containers = (body.get("recommendation") or {}).get("containerRecommendations") or []
    if containers:
        message = "; ".join(f"{c.get('containerName')}: " + ", ".join(
            f"{k} {v}" for k, v in sorted((c.get("target") or {}).items())) for c in containers)
    else:
        message = next((str(c.get("message")) for c in conditions if c.get("type") == "RecommendationProvided"),
                       "no recommendation yet")
    ps.plan.statuses[obj.key] = Status("Healthy", message, conditions=conditions, recommendation=body or None)
    _requeue(ps, ps.observed.recommender_sync)


_CONTROLLERS = {
    "VerticalPodAutoscaler": _vertical,
    "Pod": _pod,
    "CronJob": _cronjob,
    "Deployment": _deployment,
    "ReplicaSet": _replicaset,
    "StatefulSet": _statefulset,
    "DaemonSet": _daemonset,
    "Job": _job,
}


def plan(desired: DesiredState, observed: Observed) -> Plan:
    """The pods every node should run after this pass, what stops, and each workload's status."""
    ps = _Pass(desired, observed)
    for hpa in desired.of_kind("HorizontalPodAutoscaler"):  # before the workloads they scale
        _isolated(ps, hpa, _autoscaler)
    for obj in desired.sorted():
        controller = _CONTROLLERS.get(obj.key.kind)
        if controller is not None:
            _isolated(ps, obj, controller)
    ps.place_all()
    ps.scale_down()
    for name, rec in sorted(ps.scaling.items()):
        ps.plan.statuses[ObjectKey("Node", "", name)] = Status("Healthy", rec.describe(), scaling=rec.to_json())
    ps.plan.standby = frozenset(n for n, rec in ps.scaling.items() if rec.state == STANDBY)
    ps.budgets()  # every PodDisruptionBudget's status, whether or not a node drains
    ps.volumes.statuses()
    # Pods whose owner left Git are pruned.
    for key, pods in sorted(ps.by_owner.items()):
        if key in ps.runs or key in ps.protected:
            continue
        if key not in desired.objects or not KINDS.get(key.kind, KINDS["Namespace"]).workload:
            ps.plan.removed.extend(sorted(pods, key=lambda p: p.name))
            ps.plan.events.append(PlannedEvent(key, "Normal", "Pruned", f"{key} left Git: stopping {len(pods)} pod(s)"))
    ps.plan.pods.sort(key=lambda p: (p.owner.namespace, p.name))
    ps.plan.removed.sort(key=lambda p: (p.namespace, p.name))
    return ps.plan


def _isolated(ps: _Pass, obj: Object, controller: Callable[[_Pass, Object], None]) -> None:
    """Run one object's controller; if it raises, undo what it planned and make the failure that
    object's status (Stalled), keeping its pods as they are: one object never stops a pass."""
    mark = (len(ps.plan.pods), len(ps.plan.removed), len(ps.plan.events), len(ps.to_place), set(ps.runs))
    ps.started_at = mark[0]
    try:
        controller(ps, obj)
    except Exception as exc:  # one object's failure is that object's status, never the pass's
        del ps.plan.pods[mark[0]:], ps.plan.removed[mark[1]:], ps.plan.events[mark[2]:], ps.to_place[mark[3]:]
        for key in set(ps.runs) - mark[4]:
            del ps.runs[key]
        owned = [
            key for key in ps.by_owner
            if key == obj.key
            or (obj.key.kind == "CronJob" and key.kind == "Job" and key.namespace == obj.key.namespace
                and key.name.startswith(f"{obj.key.name}-") and key not in ps.desired.objects)
        ]
        for key in owned:
            ps.protected.add(key)
            for p in ps.by_owner[key]:
                if p.node is not None:
                    ps.plan.pods.append(
                        DesiredPod(p.name, key, p.node, p.revision, _spec_for_record(ps, obj, p), p.ordinal, p.message)
                    )
        message = f"cannot reconcile {obj.key}: {type(exc).__name__}: {exc}"[:1000]
        ps.plan.statuses[obj.key] = Status(
            "Degraded",
            message,
            conditions=({"type": "Stalled", "status": "True", "reason": "ReconcileError", "message": message},),
        )
        ps.plan.events.append(PlannedEvent(obj.key, "Warning", "ReconcileError", message))


def workload_keys(desired: DesiredState) -> Sequence[ObjectKey]:
    return [o.key for o in desired.sorted() if o.key.kind in _CONTROLLERS]

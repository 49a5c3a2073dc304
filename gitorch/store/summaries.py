"""Summaries: what the store knows as plain dicts with stable keys (the `-o json` shapes of
status, get and events) and the tree from each workload to its pods that describe prints,
shared by the CLI's views and the dashboard so both say the same thing. Reads only.

Nothing here reads a Secret's data or a pod's spec: pods are read without their specs, and
objects' bodies are looked at only for their revision history and rollout."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gitorch.model.objects import cronjob_run
from gitorch.store.database import Event, NodeRecord, ObjectRecord, PodRecord, Revision, Store

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet")
"""Kinds that own pods, shown with their pods under them."""


def age(when: datetime | None, now: datetime | None = None) -> str:
    """kubectl's AGE column: 5s, 3m, 2h, 4d."""
    if when is None:
        return ""
    secs = int(((now or datetime.now(UTC)) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def ready_condition(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def object_summary(o: ObjectRecord) -> dict[str, Any]:
    return {
        "kind": o.kind,
        "namespace": o.namespace,
        "name": o.name,
        "sync": o.sync,
        "health": o.health,
        "message": ready_condition(o.conditions).get("message", ""),
        "revision": o.last_applied_revision,
        "lastAppliedRevision": o.last_applied_revision,
        "lastAttemptedRevision": o.last_attempted_revision,
        "conditions": o.conditions,
    }


def status(store: Store) -> dict[str, Any]:
    """`gitorch status -o json`: the applied and the latest revision, and every object."""
    last = store.last_applied_revision()
    latest = store.revisions(limit=1)
    return {
        "appliedRevision": last.commit if last else None,
        "latestRevision": latest[0].commit if latest else None,
        "latestOutcome": latest[0].outcome if latest else None,
        "latestError": latest[0].error if latest else None,
        "objects": [object_summary(o) for o in store.objects()],
    }


def pod_summary(p: PodRecord) -> dict[str, Any]:
    return {
        "namespace": p.namespace,
        "name": p.name,
        "ready": p.ready,
        "phase": p.phase,
        "restarts": p.restarts,
        "node": p.node,
        "ip": p.ip,
        "owner": f"{p.owner_kind}/{p.owner_name}",
        "revision": p.template_hash,
        "reason": p.reason,
        "message": p.message,
        "created": p.created_at,
    }


def pod_status(p: PodRecord) -> str:
    """The STATUS column of `get pods`: the reason when there is one, else the phase."""
    return p.reason or p.phase


def node_summary(n: NodeRecord, obj: ObjectRecord | None = None) -> dict[str, Any]:
    """A node's row; `obj` is its Node object's status row (its cluster autoscaler state, if standby)."""
    out = {
        "name": n.name,
        "ready": n.ready,
        "status": node_status(n, obj),
        "agentVersion": n.agent_version,
        "lastHeartbeat": n.last_heartbeat,
        "podCIDR": n.pod_cidr,
        "facts": n.facts,
    }
    scaling = node_scaling(obj)
    if scaling is not None:
        out["autoscaling"] = scaling
    return out


def node_scaling(obj: ObjectRecord | None) -> dict[str, Any] | None:
    """A standby Node's state as the cluster autoscaler keeps it in its status (state, since, reason,
    unneededSince); None for a node that is not a standby node."""
    raw = (obj.body or {}).get("scaling") if obj is not None else None
    return dict(raw) if isinstance(raw, dict) else None


def node_status(n: NodeRecord, obj: ObjectRecord | None) -> str:
    """kubectl's STATUS of a node: Ready or NotReady, then Standby (a standby node not in use) or
    SchedulingDisabled (cordoned, drained, or being scaled down to standby)."""
    parts = ["Ready" if n.ready else "NotReady"]
    spec = ((obj.body or {}).get("manifest") or {}).get("spec") or {} if obj is not None else {}
    state = (node_scaling(obj) or {}).get("state")
    if state == "Standby":
        parts.append("Standby")
    elif state == "ScalingDown" or spec.get("unschedulable") or spec.get("drain"):
        parts.append("SchedulingDisabled")
    return ",".join(parts)


def node_autoscaling_text(obj: ObjectRecord | None, now: datetime | None = None) -> str:
    """The cluster autoscaler's word on a node: `Active (scaled up for pod shop/web-1)`, `Standby`."""
    scaling = node_scaling(obj)
    if scaling is None:
        return "<none>"
    text = str(scaling.get("state") or "")
    if scaling.get("reason"):
        text += f" ({scaling['reason']})"
    unneeded = scaling.get("unneededSince")
    if isinstance(unneeded, int | float):
        text += f", unneeded for {age(datetime.fromtimestamp(unneeded, tz=UTC), now)}"
    return text


def revision_summary(r: Revision) -> dict[str, Any]:
    return {
        "commit": r.commit,
        "outcome": r.outcome,
        "author": r.author,
        "message": r.message,
        "appliedAt": r.applied_at,
        "error": r.error,
    }


def event_summary(e: Event) -> dict[str, Any]:
    return {
        "time": e.last_time,
        "type": e.type,
        "reason": e.reason,
        "object": f"{e.kind}/{e.name}",
        "namespace": e.namespace,
        "message": e.message,
        "count": e.count,
    }


def history(o: ObjectRecord) -> list[dict[str, Any]]:
    """A workload's revisions, oldest first: its template hash, the commit that made it, when."""
    out = []
    for h in (o.body or {}).get("history") or []:
        out.append({
            "revision": str(h.get("revision", "")),
            "commit": str(h.get("commit", "")),
            "subject": str(h.get("subject", "")),
            "since": datetime.fromtimestamp(float(h.get("since", 0)), tz=UTC),
        })
    return out


@dataclass
class RevisionGroup:
    """The pods of one template revision of a workload (a ReplicaSet, in Kubernetes' words)."""

    revision: str
    current: bool
    commit: str = ""
    pods: list[PodRecord] = field(default_factory=list)
    run: str = ""
    """For a CronJob: the Job of this run (its pods' owner)."""

    @property
    def ready(self) -> int:
        return sum(1 for p in self.pods if p.ready)

    @property
    def succeeded(self) -> int:
        return sum(1 for p in self.pods if p.phase == "Succeeded")


@dataclass
class Workload:
    """A desired object and, for a workload, its pods grouped by revision (current first)."""

    object: ObjectRecord
    groups: list[RevisionGroup] = field(default_factory=list)

    @property
    def pods(self) -> list[PodRecord]:
        return [p for g in self.groups for p in g.pods]

    @property
    def message(self) -> str:
        return str(ready_condition(self.object.conditions).get("message", ""))


@dataclass
class Namespace:
    """A branch of the tree: a namespace, or an application folder of the repository."""

    name: str
    workloads: list[Workload] = field(default_factory=list)
    others: list[ObjectRecord] = field(default_factory=list)
    orphans: list[PodRecord] = field(default_factory=list)
    """Pods whose owner is not in the store (being pruned)."""


def tree(
    store: Store, namespace: str | None = None, group: Callable[[ObjectRecord], str] | None = None
) -> list[Namespace]:
    """Per namespace (or per `group(object)`, say its folder in the repository), each workload
    down to its pods (by revision), then the other objects: what `describe` shows for one
    workload, for all of them. Cluster-scoped objects come under the namespace ""."""
    branch = group or (lambda o: o.namespace)
    objects = store.objects(namespace=namespace)
    pods = store.pods(namespace=namespace, spec=False)
    owned: dict[tuple[str, str, str], list[PodRecord]] = defaultdict(list)
    for p in pods:
        owned[(p.namespace, p.owner_kind, p.owner_name)].append(p)
    # A CronJob's runs are Jobs that only its pods name (`<cronjob>-<minute>`, as planning names them).
    crons: dict[str, list[str]] = defaultdict(list)
    declared = set()
    for o in objects:
        if o.kind == "CronJob":
            crons[o.namespace].append(o.name)
        elif o.kind == "Job":
            declared.add((o.namespace, o.name))
    runs: dict[tuple[str, str], dict[str, list[PodRecord]]] = defaultdict(dict)  # (ns, cronjob) -> job -> pods
    for (ns, kind, owner), members in owned.items():
        if kind == "Job" and (ns, owner) not in declared:
            cron = next((c for c in crons.get(ns, ()) if cronjob_run(c, owner)), None)
            if cron is not None:
                runs[(ns, cron)][owner] = members
    spaces: dict[str, Namespace] = {}
    seen: set[tuple[str, str, str]] = set()
    for o in objects:
        name = branch(o)
        space = spaces.setdefault(name, Namespace(name))
        if o.kind not in WORKLOADS:
            space.others.append(o)
            continue
        key = (o.namespace, o.kind, o.name)
        seen.add(key)
        if o.kind == "CronJob":
            found = runs.get((o.namespace, o.name), {})
            seen.update((o.namespace, "Job", job) for job in found)
            space.workloads.append(Workload(o, _run_groups(o, found)))
            continue
        space.workloads.append(Workload(o, _groups(o, owned.get(key, []))))
    for key, members in owned.items():
        if key not in seen:
            spaces.setdefault(key[0], Namespace(key[0])).orphans.extend(members)
    return [spaces[k] for k in sorted(spaces)]


def _run_groups(o: ObjectRecord, runs: dict[str, list[PodRecord]]) -> list[RevisionGroup]:
    """A CronJob's pods, one group per run (its Job), the newest run first."""
    current = str(((o.body or {}).get("rollout") or {}).get("revision") or "")
    commits = {h["revision"]: h["commit"] for h in history(o)}
    out = []
    for job in sorted(runs, key=lambda j: int(j.rsplit("-", 1)[1]), reverse=True):
        rev = runs[job][0].template_hash if runs[job] else ""
        out.append(RevisionGroup(rev, bool(current) and rev == current, commits.get(rev, ""), runs[job], run=job))
    return out


def _groups(o: ObjectRecord, pods: list[PodRecord]) -> list[RevisionGroup]:
    current = str(((o.body or {}).get("rollout") or {}).get("revision") or "")
    commits = {h["revision"]: h["commit"] for h in history(o)}
    by_rev: dict[str, RevisionGroup] = {}
    for p in pods:
        rev = p.template_hash
        if rev not in by_rev:
            by_rev[rev] = RevisionGroup(rev, rev == current, commits.get(rev, ""))
        by_rev[rev].pods.append(p)
    if current and current not in by_rev:
        by_rev[current] = RevisionGroup(current, True, commits.get(current, ""))
    return sorted(by_rev.values(), key=lambda g: (not g.current, g.revision))


def counts(store: Store) -> dict[str, Any]:
    """The overview's tallies: objects by health and by sync, pods by status, nodes by readiness."""
    objects = store.objects()
    health: dict[str, int] = defaultdict(int)
    sync: dict[str, int] = defaultdict(int)
    for o in objects:
        health[o.health] += 1
        sync[o.sync] += 1
    phases: dict[str, int] = defaultdict(int)
    for p in store.pods(spec=False):
        phases[pod_status(p)] += 1
    nodes = store.nodes()
    return {
        "objects": len(objects),
        "health": dict(sorted(health.items())),
        "sync": dict(sorted(sync.items())),
        "pods": dict(sorted(phases.items())),
        "nodesReady": sum(1 for n in nodes if n.ready),
        "nodesNotReady": sum(1 for n in nodes if not n.ready),
    }


MEMORY_AVAILABLE_MIN = 100 * 1024 * 1024
"""The kubelet's default hard eviction threshold: memory.available < 100Mi is memory pressure."""
DISK_FREE_MIN = 0.10
"""The kubelet's default nodefs.available < 10% is disk pressure."""


def node_pressure(facts: dict[str, Any]) -> dict[str, Any]:
    """Memory and disk use from a node's facts, and whether either is under the kubelet's
    default eviction thresholds (pure)."""
    memory = facts.get("memory") or {}
    disk = facts.get("disk") or {}
    total, available = _number(memory.get("totalBytes")), _number(memory.get("availableBytes"))
    size, free = _number(disk.get("totalBytes")), _number(disk.get("freeBytes"))
    return {
        "memoryUsed": 1 - available / total if total and available is not None else None,
        "diskUsed": 1 - free / size if size and free is not None else None,
        "memoryPressure": available is not None and available < MEMORY_AVAILABLE_MIN,
        "diskPressure": size is not None and size > 0 and free is not None and free / size < DISK_FREE_MIN,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

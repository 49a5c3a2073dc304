"""The controller: one reconcile pass is observe -> plan (pure) -> execute -> save status.

Level-triggered: a pass reads everything it needs from Git, the store and the nodes, so a
controller killed at any moment converges on its next pass. An invalid commit is recorded
and reported, and the last good revision keeps running.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gitorch.model.diagnostics import errors
from gitorch.model.objects import KINDS, DesiredState, ObjectKey
from gitorch.model.quantities import QuantityError, cpu_millis, to_bytes
from gitorch.model.revisions import Revision
from gitorch.nodes.client import Fleet, NodeClient, PodKey, pod_reports
from gitorch.nodes.endpoints import endpoints, ssh_options
from gitorch.nodes.ssh import Endpoint, Pool
from gitorch.reconcile import networking, podspecs, services
from gitorch.reconcile.planning import NodeState, Observed, Plan, PodState, plan
from gitorch.reconcile.scheduler import NodeInfo, Resources, Taint
from gitorch.source import desired as desired_mod
from gitorch.source.diffs import masked_body
from gitorch.source.git import Repository
from gitorch.store.database import PodRecord, Store, StoreError

log = logging.getLogger(__name__)

FACTS_EVERY = 30.0  # seconds between fact refreshes of a reachable node


@dataclass(frozen=True)
class ControllerSettings:
    node_timeout: float = 40.0
    """Seconds without a heartbeat before a node is NotReady and its replaceable pods move."""
    node_call_timeout: float = 15.0
    """Seconds one agent call may take before that node is skipped for this pass."""
    agent_root: str | None = None
    """The agent's state folder on nodes (default /var/lib/gitorch)."""
    cluster_dns: str | None = None
    """ADDR[:PORT] of the cluster DNS that pods' resolv.conf names (port 53 for pods)."""

    @classmethod
    def from_env(cls) -> ControllerSettings:
        """Defaults, with `GITORCH_NODE_TIMEOUT` (seconds) overriding the node timeout and
        `GITORCH_CLUSTER_DNS` (ADDR[:PORT]) naming the cluster DNS for pods."""
        raw = os.environ.get("GITORCH_NODE_TIMEOUT")
        dns = os.environ.get("GITORCH_CLUSTER_DNS") or None
        return cls(node_timeout=float(raw), cluster_dns=dns) if raw else cls(cluster_dns=dns)


@dataclass
class PassResult:
    revision: Revision
    valid: bool
    plan: Plan | None = None
    node_errors: dict[str, str] = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)
    lost_nodes: frozenset[str] = frozenset()
    state: DesiredState | None = None  # what the pass reconciled (the head, or the last good one)

    @property
    def converged(self) -> bool:
        """Every workload healthy and every node that should be reachable answered; a lost
        node (NotReady past the timeout, its pods replaced) does not hold a rollout back."""
        pending_nodes = set(self.node_errors) - self.lost_nodes
        return self.valid and self.plan is not None and self.plan.converged and not pending_nodes


def _ts(d: datetime | None) -> float | None:
    return d.timestamp() if d is not None else None


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def node_info(manifest: Any, facts: dict[str, Any], reachable: bool) -> NodeInfo:
    """What the scheduler knows of a node: its manifest (labels, taints, capacity
    overrides) over what its agent reports (CPUs, memory, runtimes)."""
    spec = manifest.spec
    capacity = spec.get("capacity") or {}
    memory = (facts.get("memory") or {}).get("totalBytes") or 0
    disk = (facts.get("stateDisk") or facts.get("disk") or {}).get("totalBytes") or 0
    try:
        cpu = cpu_millis(capacity["cpu"]) if "cpu" in capacity else int(facts.get("cpus") or 0) * 1000
        mem = to_bytes(capacity["memory"]) if "memory" in capacity else int(memory)
        eph = to_bytes(capacity["ephemeral-storage"]) if "ephemeral-storage" in capacity else int(disk)
    except QuantityError:
        cpu, mem, eph = 0, 0, 0
    labels = {"kubernetes.io/hostname": manifest.key.name, **manifest.labels}
    return NodeInfo(
        name=manifest.key.name,
        labels=labels,
        allocatable=Resources(
            cpu_millis=cpu, memory_bytes=mem, pods=int(capacity.get("pods", 110)), ephemeral_bytes=eph
        ),
        taints=tuple(
            Taint(str(t.get("key")), str(t.get("value", "")), str(t.get("effect"))) for t in spec.get("taints") or []
        ),
        ready=reachable,
        unschedulable=bool(spec.get("unschedulable")),
        runtimes=frozenset(facts.get("runtimes") or ["process"]),
    )


class Controller:
    """Reconciles one repository's desired state onto its nodes, through one store."""

    def __init__(
        self, repo: Repository, store: Store, state_dir: Path, settings: ControllerSettings | None = None
    ) -> None:
        self.repo = repo
        self.store = store
        self.state_dir = state_dir
        self.settings = settings or ControllerSettings()
        self._fleet: Fleet | None = None
        self._endpoints: tuple[Endpoint, ...] = ()
        self._facts_at: dict[str, float] = {}

    def close(self) -> None:
        if self._fleet is not None:
            self._fleet.close()
            self._fleet = None

    def fleet(self, state: DesiredState) -> Fleet:
        eps = tuple(endpoints(state))
        if self._fleet is None or eps != self._endpoints:
            self.close()
            self._fleet = Fleet(
                eps, Pool(ssh_options(state, self.state_dir / "known_hosts")), root=self.settings.agent_root
            )
            self._endpoints = eps
        return self._fleet

    # -- one pass ----------------------------------------------------------------------

    def load(self, rev: str | None) -> tuple[DesiredState, DesiredState, bool]:
        """The head commit's state, the state to reconcile (the head when valid, else the
        last applied revision), and whether the head is valid."""
        head = desired_mod.load(self.repo, rev)
        r = head.revision
        self.store.record_revision(
            r.oid,
            author=r.author,
            message=r.message,
            committed_at=datetime.fromisoformat(r.time.replace("Z", "+00:00")),
        )
        errs = errors(head.diagnostics)
        if not errs:
            return head, head, True
        first = errs[0].format()
        self.store.set_revision_outcome(r.oid, "invalid", f"{len(errs)} error(s); first: {first}")
        self.store.record_event(
            "Revision",
            "",
            r.short,
            reason="InvalidRevision",
            type="Warning",
            message=f"{r.short} not applied: {first}",
            revision=r.oid,
        )
        last = self.store.last_applied_revision()
        if last is None:
            return head, head, False
        return head, desired_mod.load(self.repo, last.commit), False

    def reconcile(self, rev: str | None = None, now: float | None = None) -> PassResult:
        """One pass; `now` is the wall clock unless a test fixes it."""
        now = now if now is not None else datetime.now(UTC).timestamp()
        head, state, valid = self.load(rev)
        result = PassResult(head.revision, valid, diagnostics=[d.format() for d in errors(head.diagnostics)])
        result.state = state if state.ok else None
        if not valid and not state.ok:
            return result  # nothing valid was ever applied: touch nothing
        fleet = self.fleet(state)
        observed, reports, node_errors = self.observe(state, fleet, now)
        result.node_errors.update(node_errors)
        the_plan = plan(state, observed)
        result.plan = the_plan
        result.lost_nodes = frozenset(n.name for n in observed.nodes if n.lost)
        result.node_errors.update(self.execute(state, the_plan, fleet, observed, reports, now))
        self.save(state, the_plan, observed, now, valid)
        return result

    def observe(
        self, state: DesiredState, fleet: Fleet, now: float
    ) -> tuple[Observed, dict[str, dict[PodKey, dict[str, Any]]], dict[str, str]]:
        """What the store recorded, updated with what every node reports now."""

        def ask(client: NodeClient) -> dict[str, Any]:
            out = {"status": client.call("status", timeout=self.settings.node_call_timeout)}
            if now - self._facts_at.get(client.name, 0.0) > FACTS_EVERY:
                out["facts"] = client.call("facts", timeout=self.settings.node_call_timeout)
            return out

        results = fleet.fan_out(ask, timeout=self.settings.node_call_timeout + 5)
        records = {n.name: n for n in self.store.nodes()}
        nodes: list[NodeState] = []
        reports: dict[str, dict[PodKey, dict[str, Any]]] = {}
        node_errors: dict[str, str] = {}
        for manifest in state.of_kind("Node"):
            name = manifest.key.name
            outcome = results.get(name)
            record = records.get(name)
            if record is None or record.address != manifest.spec.get("address"):
                spec = manifest.spec
                record = self.store.upsert_node(
                    name,
                    address=str(spec.get("address")),
                    port=int(spec.get("port", 22)),
                    user=str(spec.get("user", "root")),
                    host_key=spec.get("hostKey"),
                    labels=dict(manifest.labels),
                    taints=list(spec.get("taints") or []),
                )
            facts = dict(record.facts) if record is not None else {}
            reachable = outcome is not None and outcome.ok
            if reachable and outcome is not None and outcome.value is not None:
                if "facts" in outcome.value:
                    facts = outcome.value["facts"]
                    self._facts_at[name] = now
                self.store.heartbeat(
                    name,
                    _dt(now),
                    facts,
                    conditions=[{"type": "Ready", "status": "True", "reason": "AgentAnswered"}],
                    agent_version=str(facts.get("agentVersion", "")),
                )
                reports[name] = pod_reports(outcome.value["status"])
                last_seen: float | None = now
            else:
                node_errors[name] = outcome.error if outcome is not None else f"{name}: not asked"
                last_seen = _ts(record.last_heartbeat) if record is not None else None
                self.store.upsert_node(
                    name,
                    ready=False,
                    conditions=[
                        {"type": "Ready", "status": "False", "reason": "NodeUnreachable", "message": node_errors[name]}
                    ],
                )
            lost = not reachable and (last_seen is None or now - last_seen > self.settings.node_timeout)
            nodes.append(NodeState(node_info(manifest, facts, reachable), reachable=reachable, lost=lost))
        pods: list[PodState] = []
        for r in self.store.pods():
            report = reports.get(r.node or "", {}).get((r.namespace, r.name)) if r.node else None
            phase, ready, restarts, reason, message = r.phase, r.ready, r.restarts, r.reason, r.message
            if report is not None:
                phase = report.get("phase", phase)
                ready = bool(report.get("ready"))
                restarts = int(report.get("restarts") or 0)
                reason = str(report.get("reason") or "")
                message = str(report.get("message") or "")
            elif r.node and r.node in reports:
                phase, ready = "Pending", False  # its node does not run it (yet): the next sync starts it
            ready_since = _ts(r.ready_at) if ready and r.ready_at else (now if ready else None)
            pods.append(
                PodState(
                    r.name,
                    r.namespace,
                    r.owner_kind,
                    r.owner_name,
                    r.node,
                    r.template_hash,
                    phase,
                    ready,
                    restarts,
                    reason,
                    message,
                    _ts(r.created_at) or now,
                    ready_since,
                    r.ordinal,
                )
            )
        started: dict[ObjectKey, tuple[str, float]] = {}
        last_schedule: dict[ObjectKey, float] = {}
        for o in self.store.objects():
            key = ObjectKey(o.kind, o.namespace, o.name)
            rollout = (o.body or {}).get("rollout") or {}
            if rollout.get("revision"):
                started[key] = (str(rollout["revision"]), float(rollout["started"]))
            if (o.body or {}).get("lastScheduleTime") is not None:
                last_schedule[key] = float(o.body["lastScheduleTime"])
        return Observed(now, tuple(pods), tuple(nodes), started, last_schedule), reports, node_errors

    def execute(
        self,
        state: DesiredState,
        the_plan: Plan,
        fleet: Fleet,
        observed: Observed,
        reports: dict[str, dict[PodKey, dict[str, Any]]],
        now: float,
    ) -> dict[str, str]:
        """Send each reachable node its complete pod set, in parallel; record the pods."""
        reachable = [n.name for n in observed.nodes if n.reachable]
        sets = the_plan.node_sets(reachable)
        networks = self.pod_networks(state)
        table = self.service_table(state, the_plan, reports)
        dns = podspecs.cluster_dns(state, self.settings.cluster_dns)
        cluster_cidr = networking.cluster_pod_cidr(state)

        def sync(client: NodeClient) -> dict[str, Any]:
            request: dict[str, Any] = {"pods": sets[client.name]}
            if client.name in networks:
                request["network"] = {**networks[client.name], "clusterCIDR": cluster_cidr}
            if dns is not None:
                request["dns"] = dns
            if table is not None:
                request["services"] = table
                request["serviceCIDR"] = services.service_cidr(state)
            return client.call("sync", request, timeout=self.settings.node_call_timeout)

        results = fleet.fan_out(sync, timeout=self.settings.node_call_timeout + 5, nodes=sets)
        synced = {n for n, o in results.items() if o.ok}
        for n, o in results.items():
            if o.ok and o.value is not None:
                reports[n] = pod_reports(o.value)
                proxy = o.value.get("services") or {}
                if proxy and not proxy.get("ok"):
                    log.warning("%s: service table not programmed: %s", n, proxy.get("message"),
                                extra={"event": "service-table-failed", "node": n})
                elif proxy.get("repaired"):
                    # Someone changed the node's NAT rules by hand: rebuilt, and said so.
                    self.store.record_event("Node", "", n, reason="ServiceTableRepaired", type="Warning",
                                            message=f"nftables {proxy['repaired']}; rebuilt from the service table",
                                            revision=state.revision.oid)
        node_errors = {n: o.error for n, o in results.items() if not o.ok}
        lost = {n.name for n in observed.nodes if n.lost}
        previous = {(p.namespace, p.name): p for p in observed.pods}
        known_ips = {(r.namespace, r.name): r.ip for r in self.store.pods()}
        records: list[PodRecord] = []
        for p in the_plan.pods:
            before = previous.get((p.owner.namespace, p.name))
            report = reports.get(p.node or "", {}).get((p.owner.namespace, p.name)) if p.node in synced else None
            phase = report.get("phase", "Pending") if report else (before.phase if before else "Pending")
            ready = bool(report.get("ready")) if report else False
            reason = str(report.get("reason") or "") if report else ("Unschedulable" if p.message else "")
            message = str(report.get("message") or "") if report else p.message
            ready_at = None
            if ready:
                ready_at = _dt(before.ready_since) if before and before.ready and before.ready_since else _dt(now)
            spec = podspecs.masked(p.spec) if not p.spec.get("keep") else {}
            ip = known_ips.get((p.owner.namespace, p.name))
            if report and report.get("podIP"):
                ip = str(report["podIP"])
            elif before is not None and before.node != p.node:
                ip = None  # moved to another node: its old address is gone
            records.append(
                PodRecord(
                    namespace=p.owner.namespace,
                    name=p.name,
                    owner_kind=p.owner.kind,
                    owner_name=p.owner.name,
                    node=p.node,
                    template_hash=p.revision,
                    phase=phase if phase in ("Pending", "Running", "Succeeded", "Failed", "Unknown") else "Unknown",
                    restarts=int(report.get("restarts") or 0) if report else (before.restarts if before else 0),
                    ready=ready,
                    reason=reason,
                    message=message,
                    spec=spec,
                    ordinal=p.ordinal,
                    ip=ip,
                    created_at=_dt(before.created) if before else _dt(now),
                    ready_at=ready_at,
                )
            )
        gone = [
            p
            for p in the_plan.removed
            if p.node is None or p.node in synced or p.node in lost or p.node not in {n.name for n in observed.nodes}
        ]
        with self.store.transaction():
            self.store.upsert_pods(records, now=_dt(now))
            by_ns: dict[str, list[str]] = {}
            for g in gone:
                by_ns.setdefault(g.namespace, []).append(g.name)
            for ns, names in by_ns.items():
                self.store.delete_pods(ns, names)
        return node_errors

    def save(self, state: DesiredState, the_plan: Plan, observed: Observed, now: float, valid: bool) -> None:
        """Status of every object, events, inventory and the revision's outcome (always saved)."""
        r = state.revision
        with self.store.transaction():
            for e in the_plan.events:
                self.store.record_event(
                    e.key.kind,
                    e.key.namespace,
                    e.key.name,
                    reason=e.reason,
                    type=e.type,
                    message=e.message,
                    when=_dt(now),
                    revision=r.oid,
                )
            stored = {ObjectKey(o.kind, o.namespace, o.name): o for o in self.store.objects()}
            for key, obj in state.objects.items():
                status = the_plan.statuses.get(key)
                previous = observed.rollout_started.get(key)
                body: dict[str, Any] = {"manifest": masked_body(key.kind, obj.body)}
                if status is not None and status.revision:
                    old = stored.get(key)
                    limit = int(obj.spec.get("revisionHistoryLimit", 10))
                    body["history"] = _history(
                        old.body.get("history", []) if old else [], status.revision, r, now, limit
                    )
                if status is not None and status.last_schedule is not None:
                    body["lastScheduleTime"] = status.last_schedule
                if status is not None and status.revision:
                    started = previous[1] if previous and previous[0] == status.revision else now
                    body["rollout"] = {"revision": status.revision, "started": started}
                health = status.health if status else "Healthy"
                conditions = [
                    {
                        "type": "Ready",
                        "status": "True" if health == "Healthy" else "False",
                        "reason": health,
                        "message": status.message if status else "",
                    },
                    *[dict(c) for c in (status.conditions if status else ())],
                ]
                self.store.upsert_object_status(
                    key.kind,
                    key.namespace,
                    key.name,
                    now=_dt(now),
                    spec_hash=podspecs.short_hash(obj.body),
                    last_applied_revision=r.oid,
                    last_attempted_revision=r.oid,
                    sync="Synced",
                    health=health,
                    conditions=conditions,
                    body=body,
                )
            for rec in self.store.objects():
                if ObjectKey(rec.kind, rec.namespace, rec.name) not in state.objects:
                    self.store.delete_object(rec.kind, rec.namespace, rec.name)
                    self.store.record_event(
                        rec.kind,
                        rec.namespace,
                        rec.name,
                        reason="Pruned",
                        when=_dt(now),
                        message="removed from Git",
                        revision=r.oid,
                    )
            if valid:
                self.store.set_revision_outcome(r.oid, "applied", when=_dt(now))
            self._allocate_services(state)

    def pod_networks(self, state: DesiredState) -> dict[str, dict[str, Any]]:
        """Each node's `network` block for `sync`: its pod CIDR (kept once allocated, or
        pinned by the Node's `spec.podCIDR`) and routes to the other nodes' pods."""
        cluster_cidr = networking.cluster_pod_cidr(state)
        cidrs: dict[str, str] = {}
        addresses: dict[str, str] = {}
        # A read first: allocating takes the store's write lock, which a pass should not
        # need for nodes that already have their CIDR.
        recorded = {n.name: n.pod_cidr for n in self.store.nodes() if n.pod_cidr}
        for manifest in state.of_kind("Node"):
            name = manifest.key.name
            addresses[name] = str(manifest.spec.get("address") or "")
            pinned = manifest.spec.get("podCIDR") or recorded.get(name)
            try:
                cidrs[name] = (
                    str(pinned) if pinned else self.store.allocate_pod_cidr(name, cluster_cidr, networking.NODE_PREFIX)
                )
            except StoreError as exc:
                log.warning("%s: no pod CIDR, its pods use the host network: %s", name, exc)
        return networking.network_blocks(cidrs, addresses)

    def service_table(
        self, state: DesiredState, the_plan: Plan, reports: dict[str, dict[PodKey, dict[str, Any]]]
    ) -> list[dict[str, Any]] | None:
        """The service table every node gets with `sync`, from the pods' readiness and IPs
        as their nodes report them now (the store's rows otherwise); pods being removed are
        left out. None (nodes keep their table) when the store cannot be read."""
        try:
            services.allocate_node_ports(state, self.store)
            removed = {(p.namespace, p.name) for p in the_plan.removed}
            pods: list[PodRecord] = []
            for r in self.store.pods():
                if (r.namespace, r.name) in removed:
                    continue
                report = reports.get(r.node or "", {}).get((r.namespace, r.name)) if r.node else None
                if report is not None:
                    r = r.model_copy(
                        update={
                            "phase": str(report.get("phase") or r.phase),
                            "ready": bool(report.get("ready")) and not report.get("terminating"),
                            "ip": report.get("podIP") or r.ip,
                        }
                    )
                pods.append(r)
            return services.service_table(state, pods, self.store.cluster_ips(), self.store.node_ports())
        except StoreError as exc:
            log.warning("service table not computed: %s", exc)
            return None

    def _allocate_services(self, state: DesiredState) -> None:
        clusters = state.of_kind("Cluster")
        cidr = str((clusters[0].spec.get("serviceCIDR") if clusters else None) or "10.96.0.0/12")
        for svc in state.of_kind("Service"):
            spec = svc.spec
            if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
                continue
            self.store.allocate_cluster_ip(svc.key.namespace, svc.key.name, cidr, spec.get("clusterIP"))


def _history(
    history: list[dict[str, Any]], revision: str, commit: Revision, now: float, limit: int
) -> list[dict[str, Any]]:
    """A workload's rollout history, newest last: the current revision plus `limit` older
    ones (revisionHistoryLimit), each with the commit that introduced it."""
    if history and history[-1].get("revision") == revision:
        return history
    entry = {"revision": revision, "commit": commit.oid, "subject": commit.subject, "since": now}
    return [*[h for h in history if h.get("revision") != revision], entry][-(limit + 1) :]


def workload_kinds() -> list[str]:
    return [k for k, info in KINDS.items() if info.workload]

"""The controller: one reconcile pass is observe -> plan (pure) -> execute -> save status.

Level-triggered: a pass reads everything it needs from Git, the store and the nodes, so a
controller killed at any moment converges on its next pass. An invalid commit is recorded
and reported, and the last good revision keeps running.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from gitorch.model import usage as usage_mod
from gitorch.model import volumes
from gitorch.model.backoff import Backoff
from gitorch.model.diagnostics import Diagnostic, errors
from gitorch.model.errors import GitorchError
from gitorch.model.objects import KINDS, DesiredState, Object, ObjectKey
from gitorch.model.quantities import QuantityError, cpu_millis, to_bytes
from gitorch.model.recommendations import RecommenderSettings
from gitorch.model.revisions import Revision
from gitorch.model.usage import UsageWindow
from gitorch.nodes.client import Encoded, Fleet, NodeClient, Outcome, PodKey, pod_reports, table_delta, table_digest
from gitorch.nodes.endpoints import endpoints, ssh_defaults, ssh_options
from gitorch.nodes.ssh import Endpoint, Pool
from gitorch.reconcile import allocations, autoscaling, ingress, networking, nodescaling, podspecs, policies, services
from gitorch.reconcile.planning import Finished, NodeState, Observed, Plan, PodState, Status, plan
from gitorch.reconcile.recommending import Recommender
from gitorch.reconcile.scheduler import NodeInfo, Resources, Taint
from gitorch.source import desired as desired_mod
from gitorch.source import signatures, sops
from gitorch.source.diffs import masked_body
from gitorch.source.git import Repository
from gitorch.store.database import (
    Fence,
    NodeRecord,
    ObjectRecord,
    PodRecord,
    PodRow,
    Store,
    StoreError,
    merge_conditions,
)

log = logging.getLogger(__name__)
RECLAIM_FOR = 3600  # seconds a gone claim's directory is asked after, then left on its node

FACTS_EVERY = 30.0  # seconds between fact refreshes of a reachable node
PRUNE_EVERY = 60.0  # seconds between applications of the store's retention rules
NODE_BACKOFF = Backoff(base=2.0, cap=10.0)  # seconds before asking a failing node again
HEARTBEAT_EVERY = 10.0  # seconds between heartbeat writes of a node that keeps answering
STATES_KEPT = 3  # parsed commits kept in memory (the head, the last good one, one more)
TABLES_KEPT = 4  # service tables kept by digest: a node holding one of them is sent a delta


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
    event_ttl: float = 3600.0
    """Seconds an event is kept after it was last seen (Kubernetes' --event-ttl default: 1 h)."""
    max_events: int = 10_000
    """Events kept at most, the newest first."""
    revision_history: int = 100
    """Revisions kept (the last applied one always)."""
    drift_history: int = 100
    """Drift reports kept."""
    resync: float = 300.0
    """Seconds after which a node is sent its whole state even when nothing changed for it
    (controller-runtime's periodic resync: repairs anything a missed change left behind)."""
    metrics_interval: float = 15.0
    """Seconds between the agents' resource samples (metrics-server's resolution)."""
    metrics_window: float = 600.0
    """Seconds of resource samples kept in memory per pod (`top`, autoscalers)."""
    autoscaler_sync: float = 15.0
    """Seconds between two syncs of a HorizontalPodAutoscaler (Kubernetes' default: 15)."""
    checkpoint_interval: float = 60.0
    """Seconds between two writes of the VerticalPodAutoscalers' histories to the store (VPA
    writes its checkpoints once per recommender loop: 1 min)."""
    recommender: RecommenderSettings = field(default_factory=RecommenderSettings)
    """The VerticalPodAutoscaler recommender's parameters (VPA's defaults)."""
    trust_keys: tuple[str, ...] = ()
    """Keys trusted to sign the first revision under the Cluster's git.verifyCommits (`--trust-key`,
    see signatures.trust_keys); later ones are checked against the last applied revision's bindings."""

    @classmethod
    def from_env(cls) -> ControllerSettings:
        """Defaults, overridden by `GITORCH_NODE_TIMEOUT` (seconds), `GITORCH_CLUSTER_DNS`
        (ADDR[:PORT] of the cluster DNS for pods), `GITORCH_EVENT_TTL` (seconds),
        `GITORCH_MAX_EVENTS`, `GITORCH_REVISION_HISTORY`, `GITORCH_DRIFT_HISTORY`,
        `GITORCH_METRICS_INTERVAL`, `GITORCH_METRICS_WINDOW`, `GITORCH_HPA_SYNC_PERIOD`,
        `GITORCH_VPA_CHECKPOINT_INTERVAL` (seconds), and the recommender's `GITORCH_VPA_MARGIN`
        (fraction), `GITORCH_VPA_MIN_CPU` (millicores per pod) and `GITORCH_VPA_MIN_MEMORY` (MiB per pod)."""
        env = os.environ
        out = cls(cluster_dns=env.get("GITORCH_CLUSTER_DNS") or None)
        numbers = {"node_timeout": ("GITORCH_NODE_TIMEOUT", float), "event_ttl": ("GITORCH_EVENT_TTL", float),
                   "max_events": ("GITORCH_MAX_EVENTS", int), "revision_history": ("GITORCH_REVISION_HISTORY", int),
                   "drift_history": ("GITORCH_DRIFT_HISTORY", int), "resync": ("GITORCH_RESYNC", float),
                   "metrics_interval": ("GITORCH_METRICS_INTERVAL", float),
                   "metrics_window": ("GITORCH_METRICS_WINDOW", float),
                   "autoscaler_sync": ("GITORCH_HPA_SYNC_PERIOD", float),
                   "checkpoint_interval": ("GITORCH_VPA_CHECKPOINT_INTERVAL", float)}
        for name, (var, kind) in numbers.items():
            if env.get(var):
                try:
                    out = dataclasses.replace(out, **{name: kind(env[var])})
                except ValueError as exc:
                    raise GitorchError(f"{var}={env[var]!r}: expected a number") from exc
        recommender = out.recommender
        for name, var, scale in (("margin", "GITORCH_VPA_MARGIN", 1.0),
                                 ("pod_min_cpu_millis", "GITORCH_VPA_MIN_CPU", 1.0),
                                 ("pod_min_memory_bytes", "GITORCH_VPA_MIN_MEMORY", float(2**20))):
            if env.get(var):
                try:
                    value = float(env[var]) * scale
                except ValueError as exc:
                    raise GitorchError(f"{var}={env[var]!r}: expected a number") from exc
                if value < 0:
                    raise GitorchError(f"{var}={env[var]!r}: expected a number of at least 0")
                recommender = dataclasses.replace(recommender, **{name: value})  # type: ignore[arg-type]
        return dataclasses.replace(out, recommender=recommender)


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


_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386",
           "i386": "386", "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64"}
"""uname's machine names as Go's GOARCH, which Kubernetes' kubernetes.io/arch label uses
(for agents older than the `goarch` fact)."""


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
    labels = {"kubernetes.io/hostname": manifest.key.name, "kubernetes.io/os": str(facts.get("goos") or "linux")}
    arch = facts.get("goarch") or _GOARCH.get(str(facts.get("arch")))
    if arch:
        labels["kubernetes.io/arch"] = str(arch)
    labels.update(manifest.labels)
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
        unschedulable=bool(spec.get("unschedulable") or spec.get("drain")),
        runtimes=frozenset(facts.get("runtimes") or ["process"]),
    )


class Controller:
    """Reconciles one repository's desired state onto its nodes, through one store."""

    def __init__(
        self,
        repo: Repository,
        store: Store,
        state_dir: Path,
        settings: ControllerSettings | None = None,
        *,
        fleet_factory: Callable[[tuple[Endpoint, ...], DesiredState], Fleet] | None = None,
    ) -> None:
        self.repo = repo
        self.store = store
        self.fleet_factory = fleet_factory
        """How the nodes are reached; default: SSH (a Pool). bench/scale.py measures the controller alone
        with fake agents here; tests never do."""
        self.state_dir = state_dir
        self.settings = settings or ControllerSettings()
        try:  # its age key decrypts SOPS-encrypted Secrets; without one they make a revision invalid
            self.keyring = sops.keyring_from_state(state_dir, required=True)
        except sops.SopsError as exc:
            raise GitorchError(str(exc)) from exc
        # The commits of a range are parsed once each, outside the cache of recent states.
        self.signatures = signatures.RangeCheck(repo, lambda oid: desired_mod.load(repo, oid, self.keyring),
                                                signatures.trust_keys(self.settings.trust_keys))
        self._verified: tuple[tuple[str, str], list[Diagnostic]] | None = None  # (last applied, head) -> refusals
        self._fleet: Fleet | None = None
        self._endpoints: tuple[Endpoint, ...] = ()
        self._facts_at: dict[str, float] = {}
        self._pruned_at = float("-inf")
        self._pod_rows: list[RowView] = []  # the store's pod rows, as plain tuples (see RowView)
        self._leaving: list[_Leaving] = []  # Nodes gone from Git that still have pods (see _leaving_nodes)
        self._object_rows: list[ObjectRecord] = []
        self._written_objects: dict[ObjectKey, ObjectRecord | None] = {}
        self._cached = False  # this pass uses the kept rows instead of reading them
        self._cache_term: tuple[str, int] | None = None  # the term whose writes the kept rows hold
        self._cache_at = float("-inf")
        self._node_failures: dict[str, tuple[int, float, str]] = {}  # failures in a row, next ask, last error
        # When each NoExecute taint of a Node's manifest was first seen (tolerationSeconds count
        # from it). Kept in memory: a restarted controller starts the count again, later, never sooner.
        self._noexecute_seen: dict[tuple[str, Taint], float] = {}
        # Directories of claims gone from Git with reclaimPolicy Delete, still to remove on their
        # node: (node, path) -> since. Kept until done, at most RECLAIM_FOR (then left, logged).
        self._reclaims: dict[tuple[str, str], float] = {}
        self._states: dict[str, DesiredState] = {}
        self._networks: tuple[Any, dict[str, dict[str, Any]]] | None = None
        # Per node: what it was last sent (a digest), the agent generation that produced, and when.
        self._sent: dict[str, tuple[str, int, float]] = {}
        self._generations: dict[str, int] = {}  # per node: the agent's desired generation, as last reported
        # Per node: the etag of its last status answer, the pod CIDR its reports were checked against,
        # the answer and its pod reports (read-only: never changed in place).
        self._statuses: dict[str, tuple[str, Any, dict[str, Any], dict[PodKey, dict[str, Any]]]] = {}
        # Per pod: the row and report its observed state was made from last pass, and that state.
        self._pod_states: dict[PodKey, tuple[RowView, dict[str, Any] | None, bool, PodState]] = {}
        self._node_rows: list[NodeRecord] = []
        self._table_pods: list[RowView] = []  # the pods the last service table was made from
        self._announcers: dict[str, str | None] = {}  # LoadBalancer address -> the node announcing it, as stored
        self._announced: set[str] = set()  # nodes that announce an address (they are told when they stop)
        self._proxied: set[str] = set()  # nodes running the ingress proxy (they are told when they stop)
        self._ingress: tuple[DesiredState, Any, tuple[dict[str, Any], str]] | None = None
        self._ingress_addresses: list[str] = []  # where the served Ingresses answer (their status)
        self._unfit: set[str] = set()  # nodes that said they cannot announce: passed over next pass
        # Service tables by digest (the last few sent), the one each node holds and when it was last sent whole.
        self._tables: dict[str, dict[str, dict[str, Any]]] = {}
        self._table_digest: tuple[list[dict[str, Any]], str] | None = None
        self._held_tables: dict[str, tuple[str, float]] = {}
        self._node_digests: dict[str, tuple[tuple[Mapping[str, Any], ...], Any, str, Encoded]] = {}
        # The service table with what it was computed from: the state, allocations and pods' endpoint fields.
        self._table: tuple[Any, ...] | None = None
        self._policies: tuple[Any, ...] | None = None  # (state, pods' addresses, per-node policy entries)
        self.usage = UsageWindow(max_age=self.settings.metrics_window)
        """The agents' resource samples (see model/usage.py for its retention)."""
        self.recommender = Recommender(self.settings.recommender, self.settings.checkpoint_interval)
        """The VerticalPodAutoscalers' usage histories (see reconcile/recommending.py for their retention)."""
        self._checkpoints_stored = False
        self._recommender_term: tuple[Any, ...] | None = None  # the leadership term it was restored in

    def close(self) -> None:
        if self._fleet is not None:
            self._fleet.close()
            self._fleet = None

    def fleet(self, state: DesiredState) -> Fleet:
        # A Node gone from Git is reached as it was (its manifest's key), else as its row says.
        identity = ssh_defaults(state).identity_file
        before = {e.name: e for e in self._endpoints}
        eps = tuple(endpoints(state)) + tuple(
            before.get(n.key.name) or Endpoint(
                n.key.name, str(n.spec["address"]), int(n.spec["port"]), str(n.spec["user"]),
                str(Path(identity).expanduser()) if identity else None, n.spec.get("hostKey"))
            for n in self._leaving)
        if self._fleet is None or eps != self._endpoints:
            self.close()
            self._fleet = self.fleet_factory(eps, state) if self.fleet_factory is not None else Fleet(
                eps, Pool(ssh_options(state, self.state_dir / "known_hosts")), root=self.settings.agent_root
            )
            self._endpoints = eps
        return self._fleet

    def client(self, node: str) -> NodeClient | None:
        """The open client of `node` (for the dashboard's pod logs); None before the first pass
        reached it or when the node is not in the applied revision."""
        fleet = self._fleet
        return fleet.clients.get(node) if fleet is not None else None

    def ask_nodes(
        self, wanted: Mapping[str, str], fn: Callable[[NodeClient], Any], timeout: float
    ) -> dict[str, Outcome[Any]]:
        """`fn` on the nodes this controller is connected to, over its open connections, for
        another command (`gitorch nodes` through serve's control socket): only nodes whose
        name and `user@host:port` (`wanted`) are what this controller reaches. Empty when it has
        no connections yet."""
        fleet, eps = self._fleet, self._endpoints
        if fleet is None:
            return {}
        names = [e.name for e in eps if wanted.get(e.name) == e.where and e.name in fleet.clients]
        return fleet.fan_out(fn, timeout=timeout, nodes=names) if names else {}

    # -- one pass ----------------------------------------------------------------------

    def load(self, rev: str | None) -> tuple[DesiredState, DesiredState, bool]:
        """The head commit's state, the state to reconcile (the head when valid, else the
        last applied revision), and whether the head is valid. Reads only."""
        try:
            head = self._load(rev)
        except GitorchError:
            raise  # the repository cannot be read: this pass fails, the cluster keeps running
        except Exception as exc:  # validation must never raise; if it does, the commit is invalid
            log.error("validating %s raised", rev or "HEAD", exc_info=True)
            revision = self.repo.resolve(rev)
            problem = Diagnostic("", 0, 0, "", f"internal error validating this commit: {type(exc).__name__}: {exc}",
                                 hint="please report it; the last applied revision keeps running")
            head = DesiredState(revision, {}, [problem])
        last = self.store.last_applied_revision()
        if not errors(head.diagnostics):
            refusals = self._verify(last.commit if last is not None else "", head)
            if not refusals:
                return head, head, True
            head = DesiredState(head.revision, head.objects, [*head.diagnostics, *refusals], head.files)
        if last is None:
            return head, head, False
        try:
            return head, self._load(last.commit), False
        except GitorchError:  # the last applied revision is gone from the repository: touch nothing
            return head, head, False

    def _verify(self, last: str, head: DesiredState) -> list[Diagnostic]:
        """Why the commits after the last applied revision up to `head` may not be applied, under
        that revision's git.verifyCommits and grants (signatures.RangeCheck); once per pair."""
        pair = (last, head.revision.oid)
        if self._verified is not None and self._verified[0] == pair:
            return self._verified[1]
        trusted = None
        if last:
            try:
                trusted = self._load(last)
            except GitorchError as exc:  # gone from the repository: only --trust-key can vouch for the head
                log.warning("the last applied revision %s cannot be read (%s); signatures are checked as for a "
                            "first revision", last[:7], exc)
                if not self.settings.trust_keys and self._applied_verify_commits():
                    # History rewritten under a cluster that required signatures: never fail open.
                    found = [Diagnostic("", 0, 0, "", f"the last applied revision {last[:7]} is gone from the "
                                        "repository, and it required signed commits (git.verifyCommits)",
                                        hint="restore it, or vouch for the head with serve --trust-key")]
                    self._verified = (pair, found)
                    return found
        try:
            found = [r.diagnostic() for r in self.signatures.check(trusted, head)]
        except GitorchError as exc:  # gpg or ssh-keygen missing or stuck, a commit unreadable
            found = [Diagnostic("", 0, 0, "", f"cannot check the signatures of {head.revision.short}: {exc}")]
        self._verified = (pair, found)
        return found

    def _applied_verify_commits(self) -> bool:
        """Whether the Cluster as last applied (its manifest, kept in the store) set git.verifyCommits."""
        for row in self.store.objects():
            if row.kind == "Cluster":
                spec = ((row.body or {}).get("manifest") or {}).get("spec") or {}
                if (spec.get("git") or {}).get("verifyCommits") is True:
                    return True
        return False

    def _load(self, rev: str | None) -> DesiredState:
        """A commit's desired state, parsed and validated once: commits are immutable, so a pass
        on an unchanged head costs no parsing (a few are kept: the head and the last good one)."""
        oid = self.repo.resolve(rev).oid
        state = self._states.pop(oid, None)
        if state is None:
            state = desired_mod.load(self.repo, oid, self.keyring)
        self._states[oid] = state  # most recently used last
        while len(self._states) > STATES_KEPT:
            del self._states[next(iter(self._states))]
        return state

    def reconcile(
        self, rev: str | None = None, now: float | None = None, fence: Fence | None = None, *, full: bool = False
    ) -> PassResult:
        """One pass: observe, plan (pure, allocations included), execute, then record it all
        in one transaction. With a `fence` (serve's leadership term) nodes refuse the pass's
        syncs and the store its writes once a newer term exists. A node whose pod set, network
        and service table did not change since it was last sent them is not called, unless
        `full` or its resync is due. `now` is the wall clock unless a test fixes it."""
        now = now if now is not None else datetime.now(UTC).timestamp()
        head, state, valid = self.load(rev)
        result = PassResult(head.revision, valid, diagnostics=[d.format() for d in errors(head.diagnostics)])
        result.state = state if state.ok else None
        if not valid and not state.ok:
            with self.store.transaction(fence):
                self._record_revision(head, valid, now)
            return result  # nothing valid was ever applied: touch nothing
        self._leaving = self._leaving_nodes(state)
        fleet = self.fleet(state)
        # The rows of pods and objects this controller wrote stand in for reading them back, while
        # one fenced term lasts (no one else writes them) and until the resync re-reads them.
        term = (fence.epoch, fence.term) if fence is not None else None
        self._cached = term is not None and self._cache_term == term and now - self._cache_at < self.settings.resync
        if not self._cached:
            self._cache_at = now
        self._cache_term = None  # until this pass's writes are committed
        observed, reports, nodes = self.observe(state, fleet, now)
        result.node_errors.update({n.name: n.error for n in nodes if n.error})
        if term != self._recommender_term:  # another leader may have fed and checkpointed meanwhile
            self.recommender = Recommender(self.settings.recommender, self.settings.checkpoint_interval)
            self._recommender_term = term
        observed = self._recommend(state, observed, now)
        held = (
            {(c.namespace, c.service): c.ip for c in self.store.cluster_ips()},
            {(n.namespace, n.service, n.port_name): n.port for n in self.store.node_ports()},
            {n.name: n.pod_cidr for n in self._node_rows if n.pod_cidr},
        )
        balanced_rows = self.store.load_balancer_ips()
        held_lb = {(r.namespace, r.service): r.ip for r in balanced_rows}
        self._announcers = {r.ip: r.node for r in balanced_rows}
        held_accounts = {(r.namespace, r.name): r.uid for r in self.store.account_ids()}
        # A released account's uid stays while its namespace has recorded pods (one may run as it).
        occupied = {r.namespace for r in self._pod_rows}
        next_account = self.store.allocation_mark(allocations.ACCOUNT_MARK)
        allocs = allocations.allocate(state, *held, held_lb, held_accounts,
                                      [k for k in held_accounts if k[0] in occupied], next_account)
        the_plan = plan(state, observed)
        _allocation_statuses(the_plan, allocs)
        self._ingress_addresses = ingress.addresses(state, allocs.lb_ips) if ingress.settings(state) else []
        result.plan = the_plan
        result.lost_nodes = frozenset(n.name for n in observed.nodes if n.lost or (n.leaving and not n.reachable))
        if fence is not None:
            self.store.check_fence(fence)  # a deposed leader stops before touching any node
        execution = self.execute(state, the_plan, fleet, observed, reports, allocs, now, fence, full=full)
        result.node_errors.update(execution.node_errors)
        with self.store.transaction(fence):
            self._record_revision(head, valid, now)
            self._record_nodes(nodes, now)
            if (allocs.cluster_ips, allocs.node_ports, allocs.pod_cidrs) != held:  # else nothing to write
                self.store.save_allocations(allocs.cluster_ips, allocs.node_ports, allocs.pod_cidrs, now=_dt(now))
            if allocs.account_ids != held_accounts:
                self.store.save_account_ids(allocs.account_ids, now=_dt(now))
            if allocs.next_account_id != next_account:
                self.store.save_allocation_mark(allocations.ACCOUNT_MARK, allocs.next_account_id, now=_dt(now))
            if allocs.lb_ips != held_lb or execution.announcers != {r.ip: r.node for r in balanced_rows}:
                self.store.save_load_balancer_ips(allocs.lb_ips, execution.announcers, now=_dt(now))
            self._record_pods(execution.pods, execution.gone)
            for event in execution.events:
                self.store.record_event(**event)
            self.save(state, the_plan, observed, now, valid, attempted=head.revision.oid)
            self._retain(state, now)
            if self.recommender.checkpoint_due(now) and (self.recommender.aggregates or self._checkpoints_stored):
                kept = self.recommender.checkpoints()
                self.store.save_checkpoints(kept, now=_dt(now))
                self.recommender.saved_at = now
                self._checkpoints_stored = bool(kept)
        if term is not None:
            self._remember(execution)
            self._cache_term = term
        if self._reclaims:
            self._reclaim(fleet, now)
        return result

    def _leaving_nodes(self, state: DesiredState) -> list[_Leaving]:
        """Nodes gone from Git whose pods the store still has: reached as their row registered
        them, they drain within their disruption budgets (see planning.NodeState.leaving) and
        retention forgets them once empty (store.prune)."""
        in_git = {n.key.name for n in state.of_kind("Node")}
        rows = self._node_rows or self.store.nodes()
        pod_rows = self._pod_rows or [RowView.of(r) for r in self.store.pods(spec=False)]
        occupied = {r.node for r in pod_rows if r.node}
        return [_Leaving(ObjectKey("Node", "", r.name),
                         {"address": r.address, "port": r.port, "user": r.user, "hostKey": r.host_key,
                          "taints": list(r.taints or []), "drain": True}, dict(r.labels or {}))
                for r in rows if r.name not in in_git and r.name in occupied and r.address]

    def _recommend(self, state: DesiredState, observed: Observed, now: float) -> Observed:
        """The VerticalPodAutoscalers' histories take in the samples not yet counted (restored from
        the store's checkpoints on the first pass), and their statuses go into the plan."""
        if not self.recommender.restored:
            rows = self.store.checkpoints()
            self._checkpoints_stored = bool(rows)
            if self.recommender.restore(rows):
                log.info("recommender: %d container histories restored", len(self.recommender.aggregates))
        if not state.of_kind("VerticalPodAutoscaler") and not self.recommender.aggregates:
            return observed
        self.recommender.feed(state, observed.pods, self.usage.history, now)
        return dataclasses.replace(observed, recommendations=self.recommender.statuses(state, observed.pods),
                                   recommender_sync=self.settings.checkpoint_interval)

    def _reclaim(self, fleet: Fleet, now: float) -> None:
        """Ask nodes to remove the directories of claims gone from Git with reclaimPolicy Delete.
        A node says which it removed; one still mounted is asked again next pass, for at most
        RECLAIM_FOR, then left on the node (logged)."""
        by_node: dict[str, list[str]] = {}
        for (node, path), since in list(self._reclaims.items()):
            if now - since > RECLAIM_FOR:
                del self._reclaims[(node, path)]
                log.warning("claim directory %s on node %s not reclaimed within %ds: left in place",
                            path, node, RECLAIM_FOR)
            elif node in fleet.clients:
                by_node.setdefault(node, []).append(path)
        if not by_node:
            return

        def reclaim(client: NodeClient) -> dict[str, Any]:
            return client.call("reclaim", {"paths": by_node[client.name]}, timeout=self.settings.node_call_timeout)

        for node, outcome in fleet.fan_out(reclaim, timeout=self.settings.node_call_timeout + 5,
                                           nodes=list(by_node)).items():
            answer = outcome.value if outcome.ok else None
            if not isinstance(answer, dict):
                continue
            for path in [*(answer.get("removed") or []), *(answer.get("refused") or [])]:
                self._reclaims.pop((node, str(path)), None)
            for path in answer.get("removed") or []:
                log.info("reclaimed claim directory %s on node %s", path, node)

    def _remember(self, execution: Execution) -> None:
        """Fold what the pass just committed into the rows kept for the next pass."""
        if not execution.pods and not execution.gone and not self._written_objects:
            return  # the pass wrote no pod or object row
        pods = {(r.namespace, r.name): r for r in self._pod_rows}
        for g in execution.gone:
            pods.pop((g.namespace, g.name), None)
        for r in execution.pods:
            old = pods.get((r.namespace, r.name))
            view = RowView.of(r)
            # the store keeps a pod's first created_at
            pods[(r.namespace, r.name)] = view._replace(created_at=old.created_at) if old is not None else view
        self._pod_rows = sorted(pods.values(), key=lambda r: (r.namespace, r.name))
        objects = {ObjectKey(o.kind, o.namespace, o.name): o for o in self._object_rows}
        for key, row in self._written_objects.items():
            if row is None:
                objects.pop(key, None)
            else:
                objects[key] = row
        self._object_rows = sorted(objects.values(), key=lambda o: (o.kind, o.namespace, o.name))

    def _retain(self, state: DesiredState, now: float) -> None:
        """The store's retention rules, applied at most once a minute, within the pass."""
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        s = self.settings
        gone = self.store.prune(
            events_before=_dt(now - s.event_ttl),
            max_events=s.max_events,
            revisions=s.revision_history,
            drift_reports=s.drift_history,
            nodes=[n.key.name for n in state.of_kind("Node")],
        )
        if any(gone.values()):
            log.debug("retention: removed %s", ", ".join(f"{n} {k}" for k, n in gone.items() if n))

    def _record_revision(self, head: DesiredState, valid: bool, now: float) -> None:
        """The head commit, and when it is invalid its first error, an event and its outcome."""
        r = head.revision
        self.store.record_revision(
            r.oid,
            author=r.author,
            message=r.message,
            committed_at=datetime.fromisoformat(r.time.replace("Z", "+00:00")),
        )
        if valid:
            return
        errs = errors(head.diagnostics)
        first = errs[0].format() if errs else "invalid"
        stored = self.store.revision(r.oid)
        if stored is not None and stored.outcome == "invalid":
            return  # recorded and announced on an earlier pass
        self.store.set_revision_outcome(r.oid, "invalid", f"{len(errs)} error(s); first: {first}")
        self.store.record_event(
            "Revision", "", r.short, reason="InvalidRevision", type="Warning",
            message=f"{r.short} not applied: {first}", revision=r.oid, when=_dt(now),
        )

    def observe(
        self, state: DesiredState, fleet: Fleet, now: float
    ) -> tuple[Observed, dict[str, dict[PodKey, dict[str, Any]]], list[NodeObservation]]:
        """What the store recorded, updated with what every node reports now. Reads only:
        what the nodes said is recorded with the rest of the pass."""

        def ask(client: NodeClient) -> dict[str, Any]:
            # A node whose status did not change since the last pass says so in a few bytes; its
            # parsed reports are reused (the same objects: what is derived from them is kept too).
            kept = self._statuses.get(client.name)
            if kept is not None and kept[1] == client.pod_cidr:
                answer = client.call("status", {"since": kept[0]}, timeout=self.settings.node_call_timeout)
                if answer.get("unchanged") and answer.get("etag") == kept[0]:
                    answer = kept[2]
            else:
                answer = client.call("status", timeout=self.settings.node_call_timeout)
            if isinstance(answer.get("etag"), str):
                if kept is None or answer is not kept[2]:
                    answer = _slim_status(answer)  # kept until it changes: only what a pass reads
                self._statuses[client.name] = (answer["etag"], client.pod_cidr, answer, pod_reports(answer))
            else:
                self._statuses.pop(client.name, None)  # an agent that does not know etags
            out = {"status": answer}
            if now - self._facts_at.get(client.name, 0.0) > FACTS_EVERY:
                out["facts"] = client.call("facts", timeout=self.settings.node_call_timeout)
            return out

        # A node that keeps failing (down, or accepting TCP and never answering) is asked again
        # only after a back-off, so it does not hold every pass for the call timeout.
        due = [n for n in fleet.clients if now >= self._node_failures.get(n, (0, 0.0, ""))[1]]
        results = fleet.fan_out(ask, timeout=self.settings.node_call_timeout + 5, nodes=due)
        for name, answer in results.items():
            if answer.ok:
                self._node_failures.pop(name, None)
            else:
                count = self._node_failures.get(name, (0, 0.0, ""))[0] + 1
                self._node_failures[name] = (count, now + NODE_BACKOFF.nominal(count), answer.error)
        self._node_rows = self.store.nodes()  # allocations read the pod CIDRs from these too
        records = {n.name: n for n in self._node_rows}
        nodes: list[NodeState] = []
        observations: list[NodeObservation] = []
        reports: dict[str, dict[PodKey, dict[str, Any]]] = {}
        manifests: list[Object | _Leaving] = [*state.of_kind("Node"), *self._leaving]
        for manifest in manifests:
            name = manifest.key.name
            outcome = results.get(name)
            record = records.get(name)
            facts = dict(record.facts) if record is not None else {}
            reachable = outcome is not None and outcome.ok
            error = ""
            fresh_facts = False
            if reachable and outcome is not None and outcome.value is not None:
                if "facts" in outcome.value:
                    # Not its pods: they are in the status, and the store would rewrite them with every heartbeat.
                    facts = {k: v for k, v in outcome.value["facts"].items() if k not in ("pods", "ok")}
                    fresh_facts = True
                status = outcome.value["status"]
                self.usage.add(*usage_mod.parse_report(name, status.get("metrics")), now=now)
                if status.get("ingress"):  # it runs the proxy (told by an earlier controller, maybe): told to stop
                    self._proxied.add(name)
                kept = self._statuses.get(name)
                reports[name] = kept[3] if kept is not None and kept[2] is status else pod_reports(status)
                # No supervisor running ("stale": killed, or the node rebooted): only a sync starts
                # one, so such a node never counts as unchanged (see _unchanged).
                self._generations[name] = -1 if status.get("stale") else int(status.get("generation") or 0)
                last_seen: float | None = now
            else:
                failing = self._node_failures.get(name)
                if outcome is not None:
                    error = outcome.error
                elif failing is not None:
                    error = f"{failing[2]} (not asked again until a back-off passes)"
                else:
                    error = f"{name}: not asked"
                last_seen = _ts(record.last_heartbeat) if record is not None else None
            observations.append(NodeObservation(name, manifest.spec, dict(manifest.labels), reachable, facts,
                                                fresh_facts, error, record))
            lost = not reachable and (last_seen is None or now - last_seen > self.settings.node_timeout)
            info = node_info(manifest, facts, reachable)
            noexecute = tuple(
                (t, self._noexecute_seen.setdefault((name, t), now)) for t in info.taints if t.effect == "NoExecute"
            )
            lost_since = (0.0 if last_seen is None else last_seen + self.settings.node_timeout) if lost else None
            standby, scale_down_disabled = standby_fields(manifest)
            nodes.append(NodeState(info, reachable=reachable, lost=lost, lost_since=lost_since,
                                   noexecute_since=noexecute, draining=bool(manifest.spec.get("drain")),
                                   leaving=isinstance(manifest, _Leaving),
                                   standby=standby,
                                   scale_down_disabled=scale_down_disabled))
        # Retention: a taint gone from its Node's manifest (or the Node gone) is forgotten.
        current = {(n.name, t) for n in nodes for t, _ in n.noexecute_since}
        for forgotten in [k for k in self._noexecute_seen if k not in current]:
            del self._noexecute_seen[forgotten]
        pods: list[PodState] = []
        # Read once a pass (execute and the service table use it too), without the specs it never
        # reads; while this controller's term lasts, what it wrote itself stands in for a read.
        if not self._cached:
            self._pod_rows = [RowView.of(r) for r in self.store.pods(spec=False)]
        states: dict[PodKey, tuple[RowView, dict[str, Any] | None, bool, PodState]] = {}
        for r in self._pod_rows:
            key = (r.namespace, r.name)
            report = reports.get(r.node or "", {}).get(key) if r.node else None
            # The same row and the same report (a kept row, an unchanged node) make the same state.
            seen = self._pod_states.get(key)
            listed = bool(r.node and r.node in reports)
            if seen is not None and seen[0] is r and seen[1] is report and seen[2] == listed:
                states[key] = seen
                pods.append(seen[3])
                continue
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
            pod = PodState(
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
            pods.append(pod)
            if r.created_at is not None and not (ready and not r.ready_at):  # not one that reads `now`
                states[(r.namespace, r.name)] = (r, report, listed, pod)
        self._pod_states = states
        if not self._cached:
            self._object_rows = self.store.objects()  # read once a pass: save compares with it too
        # Samples older than a few intervals are of pods that stopped reporting: missing, as Kubernetes has it.
        usage = self.usage.latest(fresh_after=now - 4 * self.settings.metrics_interval)
        observed = Observed(now, tuple(pods), tuple(nodes), *remembered(self._object_rows, now), usage=usage,
                            autoscaler_sync=self.settings.autoscaler_sync,
                            node_scaling=node_scaling(self._object_rows))
        return observed, reports, observations

    def _record_nodes(self, nodes: list[NodeObservation], now: float) -> None:
        """Register Nodes, and record heartbeats (at most every HEARTBEAT_EVERY seconds while
        nothing else changes) and reachability changes: rows that did not change are not written."""
        for n in nodes:
            spec, row = n.spec, n.record
            registration: dict[str, Any] = dict(
                address=str(spec.get("address")),
                port=int(spec.get("port", 22)),
                user=str(spec.get("user", "root")),
                host_key=spec.get("hostKey"),
                labels=n.labels,
                taints=list(spec.get("taints") or []),
            )
            if row is None or any(getattr(row, k) != v for k, v in registration.items()):
                self.store.upsert_node(n.name, **registration)
            if n.reachable:
                if n.fresh_facts:
                    self._facts_at[n.name] = now
                beat = _ts(row.last_heartbeat) if row is not None else None
                if (row is None or not row.ready or (n.fresh_facts and n.facts != row.facts)
                        or beat is None or now - beat >= HEARTBEAT_EVERY):
                    self.store.heartbeat(
                        n.name,
                        _dt(now),
                        n.facts,
                        conditions=[{"type": "Ready", "status": "True", "reason": "AgentAnswered"}],
                        agent_version=str(n.facts.get("agentVersion", "")),
                    )
            else:
                conditions = row.conditions if row else []
                said = next((c.get("message") for c in conditions if c.get("type") == "Ready"), None)
                if row is None or row.ready or said != n.error:
                    self.store.upsert_node(
                        n.name,
                        ready=False,
                        conditions=[{"type": "Ready", "status": "False", "reason": "NodeUnreachable",
                                     "message": n.error}],
                    )

    def execute(
        self,
        state: DesiredState,
        the_plan: Plan,
        fleet: Fleet,
        observed: Observed,
        reports: dict[str, dict[PodKey, dict[str, Any]]],
        allocs: allocations.Allocations,
        now: float,
        fence: Fence | None = None,
        *,
        full: bool = False,
    ) -> Execution:
        """Send each reachable node whose state changed its complete pod set, in parallel;
        return what to record."""
        reachable = [n.name for n in observed.nodes if n.reachable]
        sets = the_plan.node_sets(reachable)
        addresses = {m.key.name: str(m.spec.get("address") or "") for m in state.of_kind("Node")}
        networks = self._network_blocks(allocs.pod_cidrs, addresses)
        table = self.service_table(state, the_plan, reports, allocs)
        policy = self.policy_table(state, the_plan) if table is not None else None
        policy_json = {n: json.dumps(policy.get(n, []), sort_keys=True) for n in sets} if policy is not None else {}
        # A node on standby (or gone from Git) announces no LoadBalancer address and proxies no
        # Ingress: it is not in use.
        eligible = {n.name: dict(n.info.labels) for n in observed.nodes
                    if n.reachable and not n.lost and not n.leaving and n.name not in the_plan.standby}
        local = {(svc.key.namespace, svc.key.name): services.ready_nodes(state, self._table_pods, svc)
                 for svc in state.of_kind("Service")
                 if allocs.lb_ips.get((svc.key.namespace, svc.key.name))
                 and svc.spec.get("externalTrafficPolicy") == "Local"}
        chosen = allocations.announcers(state, allocs.lb_ips, eligible, self._announcers, local, self._unfit)
        announcing = bool(allocations.pools(state)) or bool(self._announced)
        addresses = {m.key.name: str(m.spec.get("address") or "") for m in state.of_kind("Node")}

        def announce(node: str) -> dict[str, Any]:
            mine = sorted(ip for ip, n in chosen.items() if n == node)
            return {"addresses": mine, "nodeAddress": addresses.get(node, "")}
        dns = podspecs.cluster_dns(state, self.settings.cluster_dns)
        cluster_cidr = networking.cluster_pod_cidr(state)
        service_cidr = services.service_cidr(state)
        # What every node gets alike is hashed once; each node's digest adds only its own parts.
        accounts = {f"{ns}/{name}": uid for (ns, name), uid in sorted(allocs.account_ids.items())}
        shared = self._digest({"dns": dns, "services": table, "serviceCIDR": service_cidr, "clusterCIDR": cluster_cidr,
                               "fence": fence.token() if fence is not None else None, "accounts": accounts})

        encoded_table = Encoded(table) if table is not None else None  # encoded once for every node
        current = self._remember_table(table)
        deltas: dict[str, Encoded] = {}  # by the table a node holds: encoded once for all nodes holding it
        whole: set[str] = set()  # nodes sent the whole table this pass

        def services_payload(node: str) -> dict[str, Any]:
            """The whole table, or only what changed since the table the node holds (one readiness
            flip is one entry, not every Service of the cluster, for every node)."""
            held = self._held_tables.get(node)
            if (full or current is None or held is None or held[0] not in self._tables
                    or now - held[1] >= self.settings.resync):
                whole.add(node)
                return {"services": encoded_table}
            base = held[0]
            if base not in deltas:
                assert table is not None
                deltas[base] = Encoded({"base": base, "digest": current, **table_delta(self._tables[base], table)})
            return {"servicesDelta": deltas[base]}

        proxies = set(ingress.ingress_nodes(state)) - the_plan.standby
        proxy_spec = None
        if proxies and table is not None:
            try:
                proxy_spec = self._ingress_payload(state, table)
            except Exception as exc:  # the ingress nodes keep their config; the rest of the pass goes on
                log.error("ingress config not rendered: %s: %s", type(exc).__name__, exc,
                          extra={"event": "ingress-failed"})
        has_ingress = ingress.settings(state) is not None

        def ingress_for(node: str) -> dict[str, Any] | None:
            """The proxy's config for an ingress node, {} to stop one that is no longer, None: keep."""
            if node in proxies:
                return proxy_spec[0] if proxy_spec is not None else None
            return {} if has_ingress or node in self._proxied else None

        def sync_request(node: str) -> dict[str, Any]:
            kept = self._node_digests.get(node)
            # The node's pod set encoded once while it stays the same (see _node_digest).
            request: dict[str, Any] = {"pods": kept[3] if kept is not None and len(kept[0]) == len(sets[node])
                                       and all(a is b for a, b in zip(kept[0], sets[node], strict=True))
                                       else sets[node]}
            if node in networks:
                request["network"] = {**networks[node], "clusterCIDR": cluster_cidr}
            if dns is not None:
                request["dns"] = dns
            request["accounts"] = accounts
            if announcing:
                request["announce"] = announce(node)
            if encoded_table is not None:
                request.update(services_payload(node))
                request["serviceCIDR"] = service_cidr
            if policy is not None:
                request["policies"] = policy.get(node, [])
            request["metrics"] = {"intervalSeconds": self.settings.metrics_interval}
            proxy = ingress_for(node)
            if proxy is not None:
                request["ingress"] = proxy
            if fence is not None:
                request["fence"] = fence.token()
            return request

        def sync(client: NodeClient) -> dict[str, Any]:
            answer = client.call("sync", sync_request(client.name), timeout=self.settings.node_call_timeout)
            # Only what a pass reads of its pod reports, in the calling thread: the whole documents
            # of every node (containers, probes, times) would otherwise be held at once.
            if isinstance(answer.get("pods"), list):
                answer["pods"] = _slim_pods(answer["pods"])
            return answer

        # A node's policy rules are part of its digest: a node whose rules did not change is not re-synced.
        digests = {n: self._node_digest(n, shared, sets[n], networks.get(n),
                                        (json.dumps(announce(n), sort_keys=True) if announcing else "")
                                        + policy_json.get(n, "")
                                        + (("ingress:" + proxy_spec[1] if n in proxies and proxy_spec else "-")
                                           if ingress_for(n) is not None else "")) for n in sets}
        due = {n for n in sets if full or not self._unchanged(n, digests[n], now)}
        # Pods going away: the ingress nodes first, so the proxy has stopped sending to them before
        # their nodes stop them (a connection to a pod address that is gone waits for its timeout).
        first = due & proxies if proxy_spec is not None and the_plan.removed else set()
        results = fleet.fan_out(sync, timeout=self.settings.node_call_timeout + 5, nodes=first) if first else {}
        results.update(fleet.fan_out(sync, timeout=self.settings.node_call_timeout + 5, nodes=due - first))
        synced = {n for n, o in results.items() if o.ok} | (set(sets) - due)
        for n, o in results.items():
            proxy = (o.value.get("services") or {}) if o.ok and o.value is not None else {}
            if proxy.get("reason") == "ServicesBaseMismatch":
                # It does not hold the table the delta started from: the next pass sends it whole.
                log.debug("%s: %s", n, proxy.get("message"))
                self._held_tables.pop(n, None)
                self._sent.pop(n, None)
                continue
            if o.ok and o.value is not None:
                self._sent[n] = (digests[n], int(o.value.get("generation") or 0), now)
                if proxy.get("tableDigest"):
                    at = now if n in whole else self._held_tables.get(n, ("", now))[1]
                    self._held_tables[n] = (str(proxy["tableDigest"]), at)
            else:
                self._sent.pop(n, None)
                self._held_tables.pop(n, None)
        events: list[dict[str, Any]] = []
        for n, o in results.items():
            if o.ok and o.value is not None:
                reports[n] = pod_reports(o.value)
                policed = o.value.get("policies") or {}
                if policed and not policed.get("ok"):
                    log.warning("%s: NetworkPolicy not enforced: %s", n, policed.get("message"),
                                extra={"event": "policy-table-failed", "node": n})
                    events.append(dict(kind="Node", namespace="", name=n, reason="NetworkPolicyNotEnforced",
                                       type="Warning", when=_dt(now), revision=state.revision.oid,
                                       message=str(policed.get("message") or "")[:500]))
                elif policed.get("repaired"):
                    events.append(dict(kind="Node", namespace="", name=n, reason="PolicyTableRepaired",
                                       type="Warning", when=_dt(now), revision=state.revision.oid,
                                       message=f"nftables {policed['repaired']}; rebuilt from the policies"))
                proxy = o.value.get("services") or {}
                if proxy.get("reason") == "ServicesBaseMismatch":
                    continue
                if proxy and not proxy.get("ok"):
                    log.warning("%s: service table not programmed: %s", n, proxy.get("message"),
                                extra={"event": "service-table-failed", "node": n})
                elif proxy.get("repaired"):
                    # Someone changed the node's NAT rules by hand: rebuilt, and said so.
                    events.append(dict(kind="Node", namespace="", name=n, reason="ServiceTableRepaired",
                                       type="Warning", when=_dt(now), revision=state.revision.oid,
                                       message=f"nftables {proxy['repaired']}; rebuilt from the service table"))
        node_errors = {n: o.error for n, o in results.items() if not o.ok}
        lost = {n.name for n in observed.nodes if n.lost or (n.leaving and not n.reachable)}
        previous = {(p.namespace, p.name): p for p in observed.pods}
        records: list[PodRow] = []
        rows = {(r.namespace, r.name): r for r in self._pod_rows}
        for p in the_plan.pods:
            key = (p.owner.namespace, p.name)
            before = previous.get(key)
            report = reports.get(p.node or "", {}).get(key) if p.node in synced else None
            phase = report.get("phase", "Pending") if report else (before.phase if before else "Pending")
            phase = phase if phase in ("Pending", "Running", "Succeeded", "Failed", "Unknown") else "Unknown"
            ready = bool(report.get("ready")) if report else False
            reason = str(report.get("reason") or "") if report else ("Unschedulable" if p.message else "")
            message = str(report.get("message") or "") if report else p.message
            restarts = int(report.get("restarts") or 0) if report else (before.restarts if before else 0)
            ready_at = None
            if ready:
                ready_at = _dt(before.ready_since) if before and before.ready and before.ready_since else _dt(now)
            row = rows.get(key)
            ip = row.ip if row is not None else None
            if report and report.get("podIP"):
                ip = str(report["podIP"])
            elif before is not None and before.node != p.node:
                ip = None  # moved to another node: its old address is gone
            fields = (p.owner.kind, p.owner.name, p.node, p.revision, phase, restarts, ready, reason, message,
                      p.ordinal, ip, ready_at)
            if row is not None and fields == row[2:14]:
                continue  # unchanged: not written (a pass writes only what changed)
            spec = podspecs.masked(p.spec) if not p.spec.get("keep") else {}
            records.append(
                PodRow(
                    namespace=p.owner.namespace,
                    name=p.name,
                    owner_kind=p.owner.kind,
                    owner_name=p.owner.name,
                    node=p.node,
                    template_hash=p.revision,
                    phase=phase,
                    restarts=restarts,
                    ready=ready,
                    reason=reason,
                    message=message,
                    spec=spec,
                    ordinal=p.ordinal,
                    ip=ip,
                    created_at=_dt(before.created) if before else _dt(now),
                    ready_at=ready_at,
                    updated_at=_dt(now),
                )
            )
        gone = [
            p
            for p in the_plan.removed
            if p.node is None or p.node in synced or p.node in lost or p.node not in {n.name for n in observed.nodes}
        ]
        self._unfit = allocations.unhealthy_announcers(
            self._unfit & set(sets), {n: o.value if o.ok else None for n, o in results.items()})
        for n, o in results.items():
            if o.ok and o.value is not None and isinstance(o.value.get("announce"), dict):
                said = o.value["announce"]
                if said.get("addresses"):
                    self._announced.add(n)
                else:
                    self._announced.discard(n)
                if not said.get("ok", True):
                    log.warning("%s: LoadBalancer addresses not announced: %s", n, said.get("message"),
                                extra={"event": "announce-failed", "node": n})
        for n, o in results.items():
            said = o.value.get("ingressConfig") if o.ok and o.value is not None else None
            if isinstance(said, dict):
                if n in proxies:
                    self._proxied.add(n)
                else:
                    self._proxied.discard(n)
                if not said.get("ok", True):
                    log.warning("%s: ingress proxy not configured: %s", n, said.get("message"),
                                extra={"event": "ingress-failed", "node": n})
                    events.append(dict(kind="Node", namespace="", name=n, reason="IngressConfigFailed",
                                       type="Warning", when=_dt(now), revision=state.revision.oid,
                                       message=f"the ingress proxy keeps its last config: {said.get('message')}"))
        return Execution(node_errors, records, gone, events, chosen)

    def _ingress_payload(self, state: DesiredState, table: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
        """The ingress nodes' proxy config and its digest, kept while the state and table are the same."""
        if self._ingress is not None and self._ingress[0] is state and self._ingress[1] is table:
            return self._ingress[2]
        spec = ingress.payload(state, table)
        made = (spec, self._digest(spec))
        self._ingress = (state, table, made)
        return made

    def _remember_table(self, table: list[dict[str, Any]] | None) -> str | None:
        """The digest of this pass's service table, kept (with the last few) so that a node
        holding one of them can be sent a delta; None when deltas cannot be used (no table,
        or two entries with one name)."""
        if table is None:
            return None
        if self._table_digest is not None and self._table_digest[0] is table:
            return self._table_digest[1]
        by_name = {str(e["name"]): e for e in table}
        if len(by_name) != len(table):
            return None
        digest = table_digest(table)
        self._table_digest = (table, digest)
        self._tables.pop(digest, None)
        self._tables[digest] = by_name
        while len(self._tables) > TABLES_KEPT:
            del self._tables[next(iter(self._tables))]
        return digest

    def _network_blocks(self, cidrs: Mapping[str, str], addresses: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """networking.network_blocks, kept while the Nodes' CIDRs and addresses stay the same
        (its output grows with the square of the nodes: every node routes to every other)."""
        key = (tuple(sorted(cidrs.items())), tuple(sorted(addresses.items())))
        if self._networks is None or self._networks[0] != key:
            self._networks = (key, networking.network_blocks(cidrs, addresses))
        return self._networks[1]

    @staticmethod
    def _digest(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()

    def _node_digest(
        self, node: str, shared: str, pods: Sequence[Mapping[str, Any]], network: Any, extra: str = ""
    ) -> str:
        """The digest of what `node` is sent. Pod specs are kept with the desired state and
        never changed once built, so the very same spec objects as last time (held here, so
        that identity stays meaningful) make the same digest without serialising them again."""
        kept = self._node_digests.get(node)
        if (
            kept is not None
            and kept[1] is network
            and len(kept[0]) == len(pods)
            and all(a is b for a, b in zip(kept[0], pods, strict=True))
        ):
            own = kept[2]
        else:
            own = self._digest({"pods": pods, "network": network})
            self._node_digests[node] = (tuple(pods), network, own, Encoded(list(pods)))
        # A change every node shares (a Service's endpoints) costs one small hash per node.
        return hashlib.sha256(f"{shared}:{own}:{extra}".encode()).hexdigest()

    def _unchanged(self, node: str, digest: str, now: float) -> bool:
        """The node was sent exactly this, its agent still has what that produced (nobody else
        synced it since, and it did not lose its state), and its resync is not due."""
        sent = self._sent.get(node)
        if sent is None:
            return False
        last_digest, generation, at = sent
        return last_digest == digest and self._generations.get(node) == generation and now - at < self.settings.resync

    def _record_pods(self, records: list[PodRow], gone: list[PodState]) -> None:
        if records:
            self.store.upsert_pods(records, now=records[0].updated_at)
        by_ns: dict[str, list[str]] = {}
        for g in gone:
            by_ns.setdefault(g.namespace, []).append(g.name)
        for ns, names in by_ns.items():
            self.store.delete_pods(ns, names)

    def save(
        self, state: DesiredState, the_plan: Plan, observed: Observed, now: float, valid: bool, attempted: str = ""
    ) -> None:
        """Status of every object, events, inventory and the revision's outcome; called inside
        the pass's transaction. `attempted` is the head commit (it differs from the applied
        one while the head is invalid: Flux's lastAttemptedRevision)."""
        r = state.revision
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
        stored = {ObjectKey(o.kind, o.namespace, o.name): o for o in self._object_rows}
        written: dict[ObjectKey, ObjectRecord | None] = {}  # what this pass wrote (None: deleted)
        self._written_objects = written
        for key, obj in state.objects.items():
            status = the_plan.statuses.get(key)
            previous = observed.rollout_started.get(key)
            body: dict[str, Any] = {"manifest": masked_body(key.kind, obj.body)}
            if status is not None and status.revision:
                old = stored.get(key)
                limit = int(obj.spec.get("revisionHistoryLimit", 10))
                body["history"] = _history(old.body.get("history", []) if old else [], status.revision, r, now, limit)
            if status is not None and status.last_schedule is not None:
                body["lastScheduleTime"] = status.last_schedule
            if status is not None and status.finished is not None:
                f = status.finished
                body["finished"] = {"revision": f.revision, "at": f.at, "complete": f.complete, "message": f.message}
            if key.kind == "Ingress" and self._ingress_addresses:  # Kubernetes' status.loadBalancer.ingress
                body["loadBalancer"] = {"ingress": [{"ip": a} for a in self._ingress_addresses]}
            if status is not None and status.binding is not None:
                body["binding"] = status.binding.record()
            if status is not None and status.revision:
                started = previous[1] if previous and previous[0] == status.revision else now
                body["rollout"] = {"revision": status.revision, "started": started}
            if status is not None and status.autoscaling is not None:
                body["autoscaling"] = dict(status.autoscaling)
            if status is not None and status.scaling is not None:
                body["scaling"] = dict(status.scaling)
            if status is not None and status.recommendation is not None:
                body["recommendation"] = dict(status.recommendation)
            health = status.health if status else "Healthy"
            conditions = _conditions(health, status)
            fields: dict[str, Any] = dict(
                spec_hash=autoscaling.applied_hash(state, obj),
                last_applied_revision=r.oid,
                last_attempted_revision=attempted or r.oid,
                sync="Synced" if valid else "OutOfSync",
                health=health,
                body=body,
            )
            old = stored.get(key)
            if old is not None and all(getattr(old, k) == v for k, v in fields.items()) and (
                merge_conditions(old.conditions or [], conditions, _dt(now)) == old.conditions
            ):
                continue  # unchanged: not written
            written[key] = self.store.upsert_object_status(
                key.kind, key.namespace, key.name, now=_dt(now), conditions=conditions, **fields
            )
        for key, rec in stored.items():
            if key not in state.objects:
                written[key] = None
                gone = volumes.Binding.from_record((rec.body or {}).get("binding")) if rec.kind == \
                    "PersistentVolumeClaim" else None
                if gone is not None and gone.reclaim == "Delete" and valid:
                    self._reclaims[(gone.node, gone.path)] = now  # its directory goes once no pod uses it
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

    def policy_table(self, state: DesiredState, the_plan: Plan) -> dict[str, list[dict[str, Any]]]:
        """Per node, the NetworkPolicy entries of the pods the plan places on it, addresses known
        or not (reconcile/policies.py), with the pods the service table was made from as peers;
        kept while the state, the placements and the pods' addresses stay."""
        known = {(r.namespace, r.name): r for r in self._table_pods}
        targets = []
        for p in the_plan.pods:
            if p.node is None:
                continue
            row = known.get((p.owner.namespace, p.name))
            targets.append(policies.Target(p.owner.namespace, p.name, p.owner.kind, p.owner.name, p.node,
                                           row.ip if row is not None and row.node == p.node else None))
        addresses = (tuple((r.namespace, r.name, r.node, r.ip) for r in self._table_pods), tuple(targets))
        if self._policies is not None and self._policies[0] is state and self._policies[1] == addresses:
            return dict(self._policies[2])
        table = policies.policy_table(state, self._table_pods, targets)
        self._policies = (state, addresses, table)
        return table

    def _proxy_ready(self, node: str) -> bool:
        kept = self._statuses.get(node)
        proxy = kept[2].get("ingress") if kept is not None else None
        return isinstance(proxy, dict) and proxy.get("phase") == "Running" and bool(proxy.get("ready"))

    def service_table(
        self,
        state: DesiredState,
        the_plan: Plan,
        reports: dict[str, dict[PodKey, dict[str, Any]]],
        allocs: allocations.Allocations,
    ) -> list[dict[str, Any]] | None:
        """The service table every node gets with `sync`, from the pods' readiness and IPs
        as their nodes report them now (the store's rows otherwise); pods being removed are
        left out. None (nodes keep their table) when the store cannot be read."""
        try:
            removed = {(p.namespace, p.name) for p in the_plan.removed}
            pods: list[RowView] = []
            endpoints: list[tuple[Any, ...]] = []
            for r in self._pod_rows:
                key = (r.namespace, r.name)
                if key in removed:
                    continue
                report = reports.get(r.node or "", {}).get(key) if r.node else None
                phase, ready, ip = r.phase, r.ready, r.ip
                if report is not None:
                    phase = str(report.get("phase") or r.phase)
                    ready = bool(report.get("ready")) and not report.get("terminating")
                    ip = report.get("podIP") or r.ip
                    if (r.phase, r.ready, r.ip) != (phase, ready, ip):
                        r = r._replace(phase=phase, ready=ready, ip=ip)  # only pods whose report differs
                pods.append(r)
                endpoints.append((r.namespace, r.name, r.owner_kind, r.owner_name, r.template_hash, phase, ready, ip))
            self._table_pods = pods
            # The ingress nodes whose proxy runs and is ready (not merely answering): a proxy
            # that crashes or cannot load its config stops taking the proxy Service's traffic.
            proxies_up = {n for n in reports if self._proxy_ready(n)}
            inputs = (
                state,
                tuple(sorted(allocs.cluster_ips.items())),
                tuple(sorted(allocs.node_ports.items())),
                tuple(sorted(allocs.lb_ips.items())),
                tuple(sorted(proxies_up)),  # the ingress proxy's endpoints
                tuple(endpoints),
            )
            if self._table is not None and self._table[0] is state and self._table[1:-1] == inputs[1:]:
                return self._table[-1]
            table = services.service_table(state, pods, allocs.cluster_ips, allocs.node_ports, allocs.lb_ips,
                                           proxies_up)
            self._table = (*inputs, table)
            return table
        except StoreError as exc:
            log.warning("service table not computed: %s", exc)
            return None


# What a pass reads of a pod's report (the rest of an agent's status is for `describe` and drift).
_REPORTED = ("name", "namespace", "phase", "ready", "restarts", "reason", "message", "podIP", "terminating")


def _slim_pods(pods: list[Any]) -> list[dict[str, Any]]:
    """Pod reports with only what a pass reads (_REPORTED)."""
    return [{k: p[k] for k in _REPORTED if k in p} for p in pods if isinstance(p, dict)]


def _slim_status(answer: dict[str, Any]) -> dict[str, Any]:
    """A status answer with only what a pass reads: kept for every node between passes, the
    whole document (containers, probes, times) would cost kilobytes per pod."""
    pods = _slim_pods(answer.get("pods") or [])
    return {"etag": answer.get("etag"), "generation": answer.get("generation"), "stale": answer.get("stale"),
            "pods": pods, "ingress": answer.get("ingress"), "metrics": answer.get("metrics")}


def remembered(
    rows: list[ObjectRecord], now: float
) -> tuple[dict[ObjectKey, tuple[str, float]], dict[ObjectKey, float], dict[ObjectKey, Finished],
           dict[ObjectKey, volumes.Binding], dict[ObjectKey, dict[str, Any]]]:
    """What the objects' recorded statuses carry into the next plan: when each rollout began,
    each CronJob's last schedule time, how each Job's revision finished, where each
    provisioned claim is, and each autoscaler's status (its replica count and history)."""
    started: dict[ObjectKey, tuple[str, float]] = {}
    last_schedule: dict[ObjectKey, float] = {}
    finished: dict[ObjectKey, Finished] = {}
    claims: dict[ObjectKey, volumes.Binding] = {}
    autoscalers: dict[ObjectKey, dict[str, Any]] = {}
    for o in rows:
        key = ObjectKey(o.kind, o.namespace, o.name)
        body = o.body or {}
        rollout = body.get("rollout") or {}
        if rollout.get("revision"):
            started[key] = (str(rollout["revision"]), float(rollout["started"]))
        if body.get("lastScheduleTime") is not None:
            last_schedule[key] = float(body["lastScheduleTime"])
        ended = body.get("finished")
        if isinstance(ended, dict) and ended.get("revision"):
            finished[key] = Finished(str(ended["revision"]), float(ended.get("at") or now),
                                     bool(ended.get("complete")), str(ended.get("message") or ""))
        binding = volumes.Binding.from_record(body.get("binding")) if o.kind == "PersistentVolumeClaim" else None
        if binding is not None:
            claims[key] = binding
        if isinstance(body.get("autoscaling"), dict):
            autoscalers[key] = body["autoscaling"]
    return started, last_schedule, finished, claims, autoscalers


def node_scaling(rows: list[ObjectRecord]) -> dict[str, dict[str, Any]]:
    """Each standby Node's activation state as its status keeps it (see nodescaling.py)."""
    return {o.name: o.body["scaling"] for o in rows
            if o.kind == "Node" and isinstance((o.body or {}).get("scaling"), dict)}


def standby_fields(manifest: Any) -> tuple[bool, bool]:
    """A Node manifest's part in the cluster autoscaler: spec.standby, and whether it is annotated
    scale-down-disabled."""
    disabled = str(manifest.annotations.get(nodescaling.SCALE_DOWN_DISABLED, "")).lower() == "true"
    return manifest.spec.get("standby") is True, disabled


class RowView(NamedTuple):
    """A pod's store row as the controller keeps it between passes: a plain tuple (an ORM row
    costs a kilobyte or more, and a descriptor call per attribute read). Fields 2 to 13 are
    what execute compares, in that order."""

    namespace: str
    name: str
    owner_kind: str
    owner_name: str
    node: str | None
    template_hash: str
    phase: str
    restarts: int
    ready: bool
    reason: str
    message: str
    ordinal: int | None
    ip: str | None
    ready_at: datetime | None
    created_at: datetime | None

    @classmethod
    def of(cls, r: PodRecord | PodRow) -> RowView:
        return cls(r.namespace, r.name, r.owner_kind, r.owner_name, r.node, r.template_hash, r.phase, r.restarts,
                   r.ready, r.reason, r.message, r.ordinal, r.ip, r.ready_at, r.created_at)


@dataclass(frozen=True)
class _Leaving:
    """A Node gone from Git, as its store row registered it: what observe reads of a manifest."""

    key: ObjectKey
    spec: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeObservation:
    """What one Node's agent said this pass (or why it said nothing), recorded with the pass."""

    name: str
    spec: dict[str, Any]
    labels: dict[str, str]
    reachable: bool
    facts: dict[str, Any]
    fresh_facts: bool
    error: str
    record: NodeRecord | None
    """The node's row as the pass found it: only what changed is written."""


@dataclass(frozen=True)
class Execution:
    """What executing a plan did: nodes that failed, pod rows to write, pods gone, events."""

    node_errors: dict[str, str]
    pods: list[PodRow]
    gone: list[PodState]
    events: list[dict[str, Any]]
    announcers: dict[str, str | None] = field(default_factory=dict)
    """Per LoadBalancer address: the node announcing it (None: none can)."""


def _conditions(health: str, status: Status | None) -> list[dict[str, Any]]:
    """Flux's status contract: Ready, plus Reconciling while it progresses and Stalled when it
    cannot progress, each with a reason and a message."""
    message = status.message if status else ""
    extra = [dict(c) for c in (status.conditions if status else ())]
    out: list[dict[str, Any]] = [
        {"type": "Ready", "status": "True" if health in ("Healthy", "Suspended") else "False",
         "reason": health, "message": message},
    ]
    types = {c.get("type") for c in extra}
    if "Reconciling" not in types:
        out.append({"type": "Reconciling", "status": "True" if health == "Progressing" else "False",
                    "reason": "Progressing" if health == "Progressing" else health, "message": ""})
    if "Stalled" not in types:
        out.append({"type": "Stalled", "status": "False", "reason": health, "message": ""})
    return out + extra


def _allocation_statuses(the_plan: Plan, allocs: allocations.Allocations) -> None:
    """An object that got no address is Degraded and Stalled, with the reason."""
    for key, problem in allocs.problems.items():
        the_plan.statuses[key] = Status(
            "Degraded", problem,
            conditions=({"type": "Stalled", "status": "True", "reason": "AllocationFailed", "message": problem},),
        )


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

"""Reviewing: what a commit would do to the running cluster, saved so the reviewed plan is
what gets applied.

`cluster_preview` is purely computational: from the desired state and what the store last
observed it simulates reconcile passes (new pods become Ready, removed ones go) and lists
the steps: placements, removals, unschedulable pods, Services and DNS names. A saved plan
carries the head commit and a fingerprint of the observed state; `gitorch apply --plan`
refuses when either moved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gitorch.model.errors import GitorchError
from gitorch.model.objects import DesiredState
from gitorch.model.routes import routes
from gitorch.reconcile import ingress
from gitorch.reconcile.allocations import allocate
from gitorch.reconcile.controller import node_info, node_scaling, remembered, standby_fields
from gitorch.reconcile.planning import NodeState, Observed, PodState, plan
from gitorch.source.diffs import Action, ChangeSet
from gitorch.store.database import Store

PLAN_FORMAT = "gitorch.dev/plan/v1"
MAX_STEPS = 60


@dataclass(frozen=True)
class Step:
    """One reconcile pass of the preview: pods started (with their node) and stopped."""

    started: tuple[tuple[str, str], ...] = ()  # (namespace/name, node)
    stopped: tuple[tuple[str, str], ...] = ()
    pending: tuple[tuple[str, str], ...] = ()  # (namespace/name, scheduler message)
    nodes: tuple[tuple[str, str], ...] = ()  # (standby node, what the cluster autoscaler does with it)


@dataclass
class ClusterPreview:
    steps: list[Step] = field(default_factory=list)
    converges: bool = True
    services_added: list[str] = field(default_factory=list)  # DNS names that appear
    services_removed: list[str] = field(default_factory=list)
    cluster_ips: dict[str, str] = field(default_factory=dict)  # every Service's address after the plan: name -> IP
    node_ports: dict[str, int] = field(default_factory=dict)  # "ns/service:port" -> node port
    pod_cidrs: dict[str, str] = field(default_factory=dict)  # node -> pod CIDR
    lb_ips: dict[str, str] = field(default_factory=dict)  # namespace/service -> LoadBalancer address
    allocated: list[str] = field(default_factory=list)  # what this plan allocates that nothing held before
    problems: list[str] = field(default_factory=list)  # objects that get no address, and why
    ingress: list[str] = field(default_factory=list)  # routes of the Ingresses this plan creates or changes
    observed_hash: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "converges": self.converges,
            "steps": [
                {
                    "started": [{"pod": p, "node": n} for p, n in s.started],
                    "stopped": [{"pod": p, "node": n} for p, n in s.stopped],
                    "pending": [{"pod": p, "reason": m} for p, m in s.pending],
                    "nodes": [{"node": n, "action": a} for n, a in s.nodes],
                }
                for s in self.steps
            ],
            "dnsNamesAdded": self.services_added,
            "dnsNamesRemoved": self.services_removed,
            "clusterIPs": self.cluster_ips,
            "nodePorts": self.node_ports,
            "podCIDRs": self.pod_cidrs,
            "loadBalancerIPs": self.lb_ips,
            "allocated": self.allocated,
            "allocationProblems": self.problems,
            "ingressRoutes": self.ingress,
            "observedHash": self.observed_hash,
        }


def observed_from_store(state: DesiredState, store: Store, now: float) -> Observed:
    """What the store last observed (the controller records it every pass), read-only."""
    records = {n.name: n for n in store.nodes()}
    nodes = []
    for manifest in state.of_kind("Node"):
        rec = records.get(manifest.key.name)
        facts = dict(rec.facts) if rec is not None else {}
        reachable = bool(rec.ready) if rec is not None else False
        standby, scale_down_disabled = standby_fields(manifest)
        nodes.append(NodeState(node_info(manifest, facts, reachable), reachable=reachable, lost=not reachable,
                               draining=bool(manifest.spec.get("drain")), standby=standby,
                               scale_down_disabled=scale_down_disabled))
    pods = tuple(
        PodState(
            r.name,
            r.namespace,
            r.owner_kind,
            r.owner_name,
            r.node,
            r.template_hash,
            r.phase,
            r.ready,
            r.restarts,
            r.reason,
            r.message,
            r.created_at.timestamp(),
            r.ready_at.timestamp() if r.ready_at else None,
            r.ordinal,
        )
        for r in store.pods()
    )
    objects = store.objects()
    return Observed(now, pods, tuple(nodes), *remembered(objects, now), node_scaling=node_scaling(objects))


@dataclass(frozen=True)
class Holdings:
    """What the store holds before a pass: the input of the pass's allocations."""

    cluster_ips: dict[tuple[str, str], str] = field(default_factory=dict)
    node_ports: dict[tuple[str, str, str], int] = field(default_factory=dict)
    pod_cidrs: dict[str, str] = field(default_factory=dict)
    lb_ips: dict[tuple[str, str], str] = field(default_factory=dict)


def holdings_from_store(store: Store) -> Holdings:
    return Holdings(
        {(c.namespace, c.service): c.ip for c in store.cluster_ips()},
        {(n.namespace, n.service, n.port_name): n.port for n in store.node_ports()},
        {n.name: n.pod_cidr for n in store.nodes() if n.pod_cidr},
        {(b.namespace, b.service): b.ip for b in store.load_balancer_ips()},
    )


def observed_hash(observed: Observed, holdings: Holdings | None = None) -> str:
    """A fingerprint of what the plan depends on: pods (node, revision, phase), nodes, the
    allocations held (a plan's new addresses follow from them), autoscalers' counts and standby
    nodes' states."""
    held = holdings or Holdings()
    data = {
        "pods": sorted((p.namespace, p.name, p.node or "", p.revision, p.phase) for p in observed.pods),
        "nodes": sorted((n.name, n.reachable) for n in observed.nodes),
        "allocations": [sorted(map(list, held.cluster_ips.items())), sorted(map(list, held.node_ports.items())),
                        sorted(held.pod_cidrs.items()), *([sorted(map(list, held.lb_ips.items()))] if held.lb_ips
                                                          else [])],
    }
    if observed.autoscalers:  # the counts autoscalers set are part of what a plan starts from
        data["scales"] = sorted((str(k), str(v.get("desiredReplicas"))) for k, v in observed.autoscalers.items())
    if observed.node_scaling:  # which standby nodes are in use is too
        data["standby"] = sorted((k, str(v.get("state"))) for k, v in observed.node_scaling.items())
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _domain(state: DesiredState) -> str:
    clusters = state.of_kind("Cluster")
    return str((clusters[0].spec.get("domain") if clusters else None) or "cluster.local")


def cluster_preview(
    state: DesiredState, observed: Observed, changes: ChangeSet, holdings: Holdings
) -> ClusterPreview:
    """Simulate passes until the plan converges (pods start Ready, stopped pods vanish), with
    the addresses the first pass allocates: the same ones `apply --plan` then uses."""
    preview = ClusterPreview(observed_hash=observed_hash(observed, holdings))
    allocs = allocate(state, holdings.cluster_ips, holdings.node_ports, holdings.pod_cidrs, holdings.lb_ips)
    domain = _domain(state)
    for (ns, svc), ip in sorted(allocs.cluster_ips.items()):
        preview.cluster_ips[f"{svc}.{ns}.svc.{domain}"] = ip
        if holdings.cluster_ips.get((ns, svc)) != ip:
            preview.allocated.append(f"cluster IP {ip} for Service {ns}/{svc}")
    for (ns, svc, port), number in sorted(allocs.node_ports.items()):
        preview.node_ports[f"{ns}/{svc}:{port}"] = number
        if holdings.node_ports.get((ns, svc, port)) != number:
            preview.allocated.append(f"node port {number} for Service {ns}/{svc} port {port or '(unnamed)'}")
    for (ns, svc), ip in sorted(allocs.lb_ips.items()):
        preview.lb_ips[f"{ns}/{svc}"] = ip
        if holdings.lb_ips.get((ns, svc)) != ip:
            preview.allocated.append(f"LoadBalancer address {ip} for Service {ns}/{svc}")
    for node, cidr in sorted(allocs.pod_cidrs.items()):
        preview.pod_cidrs[node] = cidr
        if holdings.pod_cidrs.get(node) != cidr:
            preview.allocated.append(f"pod CIDR {cidr} for Node {node}")
    preview.problems = [f"{key}: {why}" for key, why in sorted(allocs.problems.items())]
    preview.ingress = _ingress_routes(state, changes, allocs.lb_ips)
    current = observed
    for _ in range(MAX_STEPS):
        p = plan(state, current)
        before = {(x.namespace, x.name): x for x in current.pods}
        started = tuple(
            sorted(
                (f"{d.owner.namespace}/{d.name}", d.node)
                for d in p.pods
                if d.node
                and ((d.owner.namespace, d.name) not in before or before[(d.owner.namespace, d.name)].node is None)
            )
        )
        stopped = tuple(sorted((f"{x.namespace}/{x.name}", x.node or "-") for x in p.removed))
        pending = tuple(sorted((f"{d.owner.namespace}/{d.name}", d.message) for d in p.pods if d.node is None))
        scaled = tuple((e.key.name, f"{e.reason}: {e.message}") for e in p.events
                       if e.key.kind == "Node" and e.reason in ("TriggeredScaleUp", "ScaleDown"))
        if not started and not stopped and not scaled:
            if pending:
                preview.steps.append(Step(pending=pending))
                preview.converges = False
            break
        preview.steps.append(Step(started, stopped, pending, scaled))
        # The next observation: what this pass asked for, every pod Running and Ready.
        pods = []
        for d in p.pods:
            old = before.get((d.owner.namespace, d.name))
            ready = d.node is not None
            base = old or PodState(
                d.name,
                d.owner.namespace,
                d.owner.kind,
                d.owner.name,
                d.node,
                d.revision,
                created=current.now,
                ordinal=d.ordinal,
            )
            pods.append(
                replace(
                    base,
                    node=d.node,
                    revision=d.revision,
                    phase="Running" if ready else "Pending",
                    ready=ready,
                    ready_since=current.now if ready else None,
                    message=d.message,
                )
            )
        scaling = {k.name: dict(st.scaling) for k, st in p.statuses.items() if k.kind == "Node" and st.scaling}
        current = replace(current, pods=tuple(pods), now=current.now + 1, node_scaling=scaling)
    else:
        preview.converges = False
    for c in changes.changes:
        if c.key.kind != "Service":
            continue
        name = f"{c.key.name}.{c.key.namespace}.svc.{domain}"
        if c.action is Action.CREATE:
            preview.services_added.append(name)
        elif c.action is Action.DELETE:
            preview.services_removed.append(name)
    return preview


def _ingress_routes(state: DesiredState, changes: ChangeSet, lb_ips: Mapping[tuple[str, str], str]) -> list[str]:
    """What the Ingresses this plan creates or configures route, and where they answer."""
    touched = {c.key for c in changes.changes if c.key.kind == "Ingress" and c.action in (Action.CREATE, Action.UPDATE)}
    served = [o for o in ingress.served(state) if o.key in touched]
    if not served or ingress.settings(state) is None:
        return []
    where = ", ".join(ingress.addresses(state, lb_ips)) or "no ingress node yet"
    out = []
    for o in served:
        tls = {h for t in o.spec.get("tls") or () for h in t.get("hosts") or ()}
        for r in routes(o.key.namespace, o.key.name, o.spec):
            scheme = "https" if r.host in tls else "http"
            out.append(f"Ingress {o.key.namespace}/{o.key.name}: {scheme}://{r.host or '*'}{r.path} ({r.path_type}) "
                       f"-> Service {r.backend.service}:{r.backend.port}, on {where}")
    return out


def preview_text(preview: ClusterPreview) -> str:
    lines = ["", "What the cluster would do (from the state the store last observed):"]
    if not preview.steps:
        lines.append("  nothing: every pod is already where it should be")
    for i, s in enumerate(preview.steps, 1):
        lines.append(f"  step {i}:")
        lines += [f"    + pod {pod} -> {node}" for pod, node in s.started]
        lines += [f"    - pod {pod} on {node}" for pod, node in s.stopped]
        lines += [f"    ! pod {pod} stays Pending: {why}" for pod, why in s.pending]
        lines += [f"    ^ node {node}: {what}" for node, what in s.nodes]
    if not preview.converges:
        lines.append("  does not converge: some pods cannot be placed")
    lines += [f"  + DNS {n}" + (f" -> {preview.cluster_ips[n]}" if n in preview.cluster_ips else "")
              for n in preview.services_added]
    lines += [f"  - DNS {n}" for n in preview.services_removed]
    lines += [f"  + {what}" for what in preview.allocated]
    lines += [f"  ! {why}" for why in preview.problems]
    lines += [f"  ~ {route}" for route in preview.ingress]
    return "\n".join(lines) + "\n"


def preview_markdown(preview: ClusterPreview) -> str:
    started = sum(len(s.started) for s in preview.steps)
    stopped = sum(len(s.stopped) for s in preview.steps)
    head = (
        f"**Cluster:** {started} pod(s) start, {stopped} stop, in {len(preview.steps)} step(s)"
        + ("" if preview.converges else " — **does not converge**")
        + "."
    )
    steps = preview_text(preview).strip()
    return f"\n{head}\n\n<details><summary>rollout steps</summary>\n\n```diff\n{steps}\n```\n\n</details>\n"


def save(path: str, report_json: dict[str, Any], preview: ClusterPreview, head: str) -> None:
    doc = {
        "format": PLAN_FORMAT,
        "head": head,
        "observedHash": preview.observed_hash,
        "plan": report_json,
        "cluster": preview.to_json(),
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def load_saved(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as exc:
        raise GitorchError(f"{path}: cannot read the plan ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise GitorchError(f"{path}: not a saved gitorch plan ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise GitorchError(f"{path}: not a saved gitorch plan (made by `gitorch plan --against-cluster --out FILE`)")
    return doc


def check_saved(doc: dict[str, Any], head: str, current_hash: str) -> None:
    """Refuse a plan made for another commit or against a cluster that changed since."""
    if doc["head"] != head:
        raise GitorchError(
            f"the branch moved since the plan was made: planned {doc['head'][:7]}, the head is now {head[:7]}; "
            "review a new plan (`gitorch plan --against-cluster --out ...`)"
        )
    if doc["observedHash"] != current_hash:
        raise GitorchError(
            "the cluster changed since the plan was made (pods or nodes are not where they were); "
            "review a new plan (`gitorch plan --against-cluster --out ...`)"
        )

"""Drift reports: compare Git, the store and what every node runs now; list the differences
and, in heal mode, repair them with one reconcile pass.

`detect` is purely computational; `run` observes (read-only `status` calls that also
compare each node's live nftables table with the one its agent programmed, and A queries
to the cluster DNS compared with the zone the store gives), heals when asked and saves the
report. A heal is one reconcile pass: agents rebuild a service table edited by hand.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from gitorch.dns import probe
from gitorch.dns.records import zone_data
from gitorch.dns.zone import Zone, ZoneData
from gitorch.model.addresses import format_hostport, parse_hostport
from gitorch.model.diagnostics import errors
from gitorch.model.objects import DesiredState, Object, ObjectKey
from gitorch.nodes.client import PodKey, pod_reports
from gitorch.reconcile import autoscaling, podspecs
from gitorch.reconcile.controller import Controller
from gitorch.source import desired as desired_mod
from gitorch.store.database import DriftReport, Fence, ObjectRecord, PodRecord, Store

ANNOTATION = "gitorch.dev/drift"
MODES = ("report", "heal", "ignore")
TEMPLATED = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet")


class FindingKind(StrEnum):
    POD_MISSING = "PodMissing"
    EXTRA_POD = "ExtraPod"
    POD_NOT_READY = "PodNotReady"
    POD_CRASH_LOOPING = "PodCrashLooping"
    OLD_REVISION = "OldRevision"
    NODE_UNREACHABLE = "NodeUnreachable"
    NOT_APPLIED = "NotApplied"
    NOT_PRUNED = "NotPruned"
    NAT_RULES = "NatRulesDrift"
    POLICY_RULES = "PolicyRulesDrift"
    DNS_RECORDS = "DnsRecordDrift"
    DNS_UNREACHABLE = "DnsUnreachable"


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    object: str
    node: str
    detail: str
    mode: str = "report"  # report | heal: what this finding's object asks for

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind.value, "object": self.object, "node": self.node, "detail": self.detail,
                "mode": self.mode}


def _mode_of(annotations: Mapping[str, Any] | None, default: str) -> str:
    value = str((annotations or {}).get(ANNOTATION) or "").strip().lower()
    return value if value in MODES else default


def cluster_mode(state: DesiredState) -> str:
    """The Cluster manifest's `spec.drift.mode` (default report)."""
    for cluster in state.of_kind("Cluster"):
        mode = (cluster.spec.get("drift") or {}).get("mode")
        if mode in ("report", "heal"):
            return str(mode)
    return "report"


def cluster_schedule(state: DesiredState | None) -> str | None:
    """The Cluster manifest's `spec.drift.schedule`, when it sets one."""
    for cluster in state.of_kind("Cluster") if state is not None else ():
        schedule = (cluster.spec.get("drift") or {}).get("schedule")
        if schedule:
            return str(schedule)
    return None


def _current_revision(state: DesiredState, obj: Object) -> str | None:
    template = obj.spec.get("template")
    if obj.key.kind not in TEMPLATED or not isinstance(template, Mapping):
        return None
    try:
        return podspecs.revision(state, obj, template)
    except Exception:  # a template the planner would refuse: no revision to compare with
        return None


def _crash_looping(report: Mapping[str, Any]) -> bool:
    if report.get("reason") == "CrashLoopBackOff":
        return True
    for c in [*(report.get("containers") or []), *(report.get("initContainers") or [])]:
        if isinstance(c, Mapping) and (c.get("reason") == "CrashLoopBackOff" or c.get("state") == "CrashLoopBackOff"):
            return True
    return False


def detect(
    state: DesiredState,
    objects: Sequence[ObjectRecord],
    pods: Sequence[PodRecord],
    reports: Mapping[str, Mapping[PodKey, Mapping[str, Any]]],
    node_errors: Mapping[str, str],
    default_mode: str = "report",
    nat: Mapping[str, Mapping[str, Any]] | None = None,
    dns: DNSCheck | None = None,
    policy: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Finding]:
    """Every difference between Git (`state`), the store (`objects`, `pods`) and the nodes
    (`reports`: node -> (namespace, pod name) -> the agent's pod status; `nat`: node -> the agent's
    servicesDrift; `policy`: node -> its policiesDrift), and the cluster DNS (`dns`), in a stable
    order (pure)."""
    out: list[Finding] = []
    stored = {ObjectKey(o.kind, o.namespace, o.name): o for o in objects}
    modes: dict[ObjectKey, str] = {k: _mode_of(o.annotations, default_mode) for k, o in state.objects.items()}
    for key, rec in stored.items():
        if key not in modes:
            manifest = (rec.body or {}).get("manifest") or {}
            modes[key] = _mode_of((manifest.get("metadata") or {}).get("annotations"), default_mode)

    def add(kind: FindingKind, key: ObjectKey | None, what: str, node: str, detail: str) -> None:
        mode = modes.get(key, default_mode) if key is not None else default_mode
        if mode != "ignore":
            out.append(Finding(kind, what, node, detail, mode))

    for key in state.objects:
        if key not in stored:
            add(FindingKind.NOT_APPLIED, key, str(key), "", "in Git, never applied (not in the store)")
        elif stored[key].spec_hash and stored[key].spec_hash != autoscaling.applied_hash(state, state.objects[key]):
            add(FindingKind.NOT_APPLIED, key, str(key), "", "changed in Git since it was applied")
    for key in stored:
        if key not in state.objects:
            add(FindingKind.NOT_PRUNED, key, str(key), "", "in the store, no longer in Git (not pruned)")

    for node in sorted(node_errors):
        add(FindingKind.NODE_UNREACHABLE, None, f"Node {node}", node, node_errors[node])

    revisions = {k: _current_revision(state, o) for k, o in state.objects.items()}
    recorded: dict[tuple[str, str, str], PodRecord] = {}
    for p in pods:
        if p.node:
            recorded[(p.node, p.namespace, p.name)] = p
    for p in sorted(pods, key=lambda r: (r.namespace, r.name)):
        owner = ObjectKey(p.owner_kind, p.namespace, p.owner_name)
        what = f"Pod {p.namespace}/{p.name}"
        if not p.node or p.node in node_errors or p.node not in reports:
            continue  # Pending, or its node is unreachable (reported once, above)
        report = reports[p.node].get((p.namespace, p.name))
        if report is None:
            if p.phase not in ("Succeeded", "Failed"):
                add(FindingKind.POD_MISSING, owner, what, p.node, f"recorded on {p.node}, not running there")
            continue
        if report.get("terminating"):
            add(FindingKind.POD_MISSING, owner, what, p.node, f"recorded on {p.node}, being stopped there")
            continue
        phase = str(report.get("phase") or "")
        if _crash_looping(report):
            add(FindingKind.POD_CRASH_LOOPING, owner, what, p.node,
                f"CrashLoopBackOff, {report.get('restarts', 0)} restart(s)")
        elif int(report.get("restarts") or 0) > p.restarts:
            add(FindingKind.POD_CRASH_LOOPING, owner, what, p.node,
                f"restarts grew from {p.restarts} to {report.get('restarts')}")
        if phase not in ("Succeeded", "Failed") and not report.get("ready"):
            reason = report.get("reason") or phase or "unknown"
            add(FindingKind.POD_NOT_READY, owner, what, p.node, f"not ready ({reason})")
        # A pod's own hash differs per pod (field refs): compare it with the spec gitorch
        # sent, and the pod's template revision with the one Git asks for.
        wanted = revisions.get(owner)
        running, sent = str(report.get("hash") or ""), str((p.spec or {}).get("hash") or "")
        if wanted and p.template_hash and p.template_hash != wanted:
            add(FindingKind.OLD_REVISION, owner, what, p.node,
                f"runs revision {p.template_hash[:10]}, Git has {wanted[:10]}")
        elif running and sent and running != sent:
            add(FindingKind.OLD_REVISION, owner, what, p.node,
                f"runs spec {running[:10]}, gitorch sent {sent[:10]}")
    for node in sorted(reports):
        if node in node_errors:
            continue
        for (ns, name), report in sorted(reports[node].items()):
            if (node, ns, name) in recorded or report.get("terminating"):
                continue
            elsewhere = [p.node for p in pods if p.name == name and p.namespace == ns and p.node]
            detail = f"running on {node}, " + (
                f"recorded on {elsewhere[0]}" if elsewhere else "not recorded by gitorch"
            )
            pod_rec = next((p for p in pods if p.name == name and p.namespace == ns), None)
            extra_owner = ObjectKey(pod_rec.owner_kind, ns, pod_rec.owner_name) if pod_rec else None
            add(FindingKind.EXTRA_POD, extra_owner, f"Pod {ns}/{name}", node, detail)
    for node in sorted(nat or {}):
        if node in node_errors:
            continue
        for svc_key, what, detail in _nat_findings(state, (nat or {})[node]):
            add(FindingKind.NAT_RULES, svc_key, what, node, detail)
    for node in sorted(policy or {}):
        if node in node_errors:
            continue
        for what, detail in _policy_findings((policy or {})[node]):
            add(FindingKind.POLICY_RULES, None, what, node, detail)
    if dns is not None:
        if dns.error:
            add(FindingKind.DNS_UNREACHABLE, None, "Cluster DNS", "", dns.error)
        for dns_key, m in dns.mismatches:
            add(FindingKind.DNS_RECORDS, dns_key, str(dns_key), "",
                f"{m.name} A: {dns.address} answers {m.got}, the store says {m.want}")
    return out


_COMMENT = re.compile(r'comment "([^"/]+)/([^":]+)[:"]')


def _nat_findings(state: DesiredState, doc: Mapping[str, Any]) -> list[tuple[ObjectKey | None, str, str]]:
    """One finding per Service whose rules were removed or added by hand (rules carry the
    Service in their comment); rules of no Service make one finding for the table."""
    if not doc.get("checked") or not doc.get("message"):
        return []
    if doc.get("tableMissing"):  # one finding, not one per rule of the table
        return [(None, "Service table", str(doc["message"]))]
    groups: dict[ObjectKey | None, list[str]] = {}
    for label, rules in (("missing", doc.get("missing") or []), ("not programmed by gitorch", doc.get("extra") or [])):
        for rule in rules:
            m = _COMMENT.search(str(rule))
            key: ObjectKey | None = ObjectKey("Service", m.group(1), m.group(2)) if m else None
            if key not in state.objects:
                key = None
            groups.setdefault(key, []).append(f"{label}: {rule}")
    if not groups:  # the whole table is gone
        return [(None, "Service table", str(doc["message"]))]
    out = []
    for key, lines in sorted(groups.items(), key=lambda kv: str(kv[0] or "")):
        shown = "; ".join(lines[:2]) + (f"; and {len(lines) - 2} more" if len(lines) > 2 else "")
        out.append((key, str(key) if key is not None else "Service table", f"nftables rule {shown}"))
    return out


_POD_COMMENT = re.compile(r'comment "([^"/]+)/([^"]+)"')


def _policy_findings(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One finding per pod whose NetworkPolicy rules were removed or added by hand (each rule
    names its pod in its comment); other rules make one finding for the table."""
    if not doc.get("checked") or not doc.get("message"):
        return []
    groups: dict[str, list[str]] = {}
    for label, rules in (("missing", doc.get("missing") or []), ("not programmed by gitorch", doc.get("extra") or [])):
        for rule in rules:
            m = _POD_COMMENT.search(str(rule))
            groups.setdefault(f"Pod {m.group(1)}/{m.group(2)}" if m else "NetworkPolicy table", []).append(
                f"{label}: {rule}")
    if not groups:
        return [("NetworkPolicy table", str(doc["message"]))]
    return [(what, "nftables rule " + "; ".join(lines[:2]) + (f"; and {len(lines) - 2} more" if len(lines) > 2
                                                              else ""))
            for what, lines in sorted(groups.items())]


@dataclass(frozen=True)
class DNSCheck:
    """What the cluster DNS answered, compared with the zone the store gives."""

    address: str
    mismatches: tuple[tuple[ObjectKey, probe.Mismatch], ...] = ()
    error: str = ""


def dns_names(data: ZoneData) -> dict[str, ObjectKey]:
    """The names to ask the cluster DNS about: every Service, and each headless Service's
    StatefulSet hostnames, with the Service they belong to."""
    out: dict[str, ObjectKey] = {}
    for svc in data.services:
        key = ObjectKey("Service", svc.namespace, svc.name)
        base = f"{svc.name}.{svc.namespace}.svc.{data.domain}"
        out[base] = key
        for ep in svc.endpoints:
            if ep.hostname:
                out[f"{ep.hostname}.{base}"] = key
    return out


def check_dns(address: str, state: DesiredState, store: Store) -> DNSCheck:
    """Ask the cluster DNS at `address` for every Service name; a name that differs is asked
    again against a fresh zone, so a store change between the two reads is not drift."""
    def zone() -> tuple[Zone, dict[str, ObjectKey]]:
        data = zone_data(state, store.pods(), store.cluster_ips())
        return Zone(data), dns_names(data)

    try:
        current, names = zone()
        differ = probe.compare(address, current, sorted(names))
        if differ:
            current, names = zone()
            differ = probe.compare(address, current, sorted({m.name for m in differ} & set(names)))
    except probe.ProbeError as exc:
        return DNSCheck(address, error=str(exc))
    return DNSCheck(address, tuple((names[m.name], m) for m in differ))


def dns_address(controller: Controller, state: DesiredState, given: str | None = None) -> str | None:
    """The cluster DNS to check: `given`, else the one pods are told to use."""
    if given:
        return given
    configured = podspecs.cluster_dns(state, controller.settings.cluster_dns)
    if configured is None:
        return None
    nameserver = str(configured["nameservers"][0])
    # resolv.conf has no port; GITORCH_CLUSTER_DNS may name one for that same address.
    with contextlib.suppress(ValueError):
        host, port = parse_hostport(controller.settings.cluster_dns or "")
        if host == nameserver:
            return format_hostport(host, port)
    return format_hostport(nameserver, 53)


def counts(findings: Iterable[Finding | Mapping[str, Any]]) -> dict[str, int]:
    c: Counter[str] = Counter()
    for f in findings:
        c[f.kind.value if isinstance(f, Finding) else str(f.get("kind"))] += 1
    return dict(sorted(c.items()))


# ---- running a check ------------------------------------------------------------------


def _state(controller: Controller, rev: str | None) -> DesiredState:
    """The head's desired state, or the last applied one when the head does not validate."""
    head = desired_mod.load(controller.repo, rev, controller.keyring)
    if not errors(head.diagnostics):
        return head
    last = controller.store.last_applied_revision()
    return desired_mod.load(controller.repo, last.commit, controller.keyring) if last is not None else head


@dataclass
class Observation:
    """What the nodes and the cluster DNS said during one drift check."""

    reports: dict[str, dict[PodKey, dict[str, Any]]]
    node_errors: dict[str, str]
    nat: dict[str, dict[str, Any]]
    policy: dict[str, dict[str, Any]]


def observe(controller: Controller, state: DesiredState) -> Observation:
    """Each node's pods as its agent reports them and its service table checked against the
    one programmed (read-only `status` with verify), and unreachable nodes."""
    fleet = controller.fleet(state)
    timeout = controller.settings.node_call_timeout
    results = fleet.fan_out(lambda c: c.call("status", {"verify": True}, timeout=timeout), timeout=timeout + 5)
    seen = Observation({}, {}, {}, {})
    for manifest in state.of_kind("Node"):
        name = manifest.key.name
        outcome = results.get(name)
        if outcome is not None and outcome.ok and outcome.value is not None:
            seen.reports[name] = pod_reports(outcome.value)
            if isinstance(outcome.value.get("servicesDrift"), dict):
                seen.nat[name] = outcome.value["servicesDrift"]
            if isinstance(outcome.value.get("policiesDrift"), dict):
                seen.policy[name] = outcome.value["policiesDrift"]
        else:
            seen.node_errors[name] = outcome.error if outcome is not None else f"{name}: not asked"
    return seen


def _applied(controller: Controller, state: DesiredState) -> DesiredState:
    """The state the cluster DNS answers from: the last applied revision's (a head not yet
    reconciled is NotApplied drift already, not DNS drift)."""
    last = controller.store.last_applied_revision()
    if last is None or last.commit == state.revision.oid:
        return state
    try:
        return desired_mod.load(controller.repo, last.commit, controller.keyring)
    except Exception:  # the commit is gone from the repository (a force push): use the head
        return state


def check(controller: Controller, state: DesiredState, default_mode: str, dns: str | None = None) -> list[Finding]:
    seen = observe(controller, state)
    store = controller.store
    dns_check = check_dns(dns, _applied(controller, state), store) if dns else None
    return detect(state, store.objects(), store.pods(), seen.reports, seen.node_errors, default_mode,
                  nat=seen.nat, dns=dns_check, policy=seen.policy)


def run(controller: Controller, *, rev: str | None = None, heal: bool = False,
        dns: str | None = None, fence: Fence | None = None, report_only: bool = False) -> DriftReport:
    """One drift check, saved. Heals (one reconcile pass, fenced by `fence`) when `heal` or the
    Cluster's mode says so and a finding's object does not ask for report only; never with
    `report_only` (another controller leads). The cluster DNS checked is `dns` (ADDR:PORT),
    else the one pods are told to use, else none."""
    started = datetime.now(UTC)
    state = _state(controller, rev)
    default_mode = "report" if report_only else "heal" if heal else cluster_mode(state)
    dns = dns_address(controller, state, dns)
    found = check(controller, state, default_mode, dns)
    healed: list[dict[str, Any]] = []
    if not report_only and any(f.mode == "heal" for f in found):
        result = controller.reconcile(rev, fence=fence, full=True)  # every node re-sent: repairs hand edits
        after = check(controller, state, default_mode, dns)
        healed.append({
            "action": "reconcile",
            "revision": result.revision.oid,
            "nodeErrors": dict(result.node_errors),
            "before": counts(found),
            "after": [f.to_json() for f in after],
        })
    return controller.store.save_drift_report(
        started_at=started,
        finished_at=datetime.now(UTC),
        mode="heal" if healed or default_mode == "heal" else "report",
        revision=state.revision.oid,
        findings=[f.to_json() for f in found],
        counts=counts(found),
        healed=healed,
    )


# ---- showing reports -------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `1d` ago, or an ISO date/time (UTC unless it names a zone)."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text.strip())
    if m:
        return now - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (30m, 2h, 1d) or an ISO time (2026-01-31T10:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def remaining(report: DriftReport) -> list[dict[str, Any]]:
    """The findings left after the report's heal (all of them when it did not heal)."""
    return list(report.healed[-1].get("after") or []) if report.healed else list(report.findings)


def healed_mask(report: DriftReport) -> list[bool]:
    """Per finding, whether the report's heal fixed it: the check after the heal no longer found
    it (the same kind, object and node). All False when it did not heal. Pure."""
    if not report.healed or not isinstance(report.healed[-1], dict):
        return [False] * len(report.findings)
    left = {(f.get("kind"), f.get("object"), f.get("node")) for f in report.healed[-1].get("after") or []
            if isinstance(f, dict)}
    return [(f.get("kind"), f.get("object"), f.get("node")) not in left for f in report.findings]


def report_json(report: DriftReport, previous: DriftReport | None) -> dict[str, Any]:
    total = len(report.findings)
    return {
        "id": report.id,
        "startedAt": report.started_at.isoformat(),
        "finishedAt": report.finished_at.isoformat() if report.finished_at else None,
        "mode": report.mode,
        "revision": report.revision,
        "total": total,
        "counts": dict(report.counts),
        "findings": list(report.findings),
        "healed": list(report.healed),
        "healedFindings": [f for f, fixed in zip(report.findings, healed_mask(report), strict=True) if fixed],
        "remaining": len(remaining(report)),
        "previous": None if previous is None else {
            "id": previous.id, "startedAt": previous.started_at.isoformat(), "total": len(previous.findings),
        },
        "delta": None if previous is None else total - len(previous.findings),
    }


def _summary(doc: Mapping[str, Any]) -> str:
    total = doc["total"]
    line = f"{total} finding{'s' if total != 1 else ''}"
    prev = doc["previous"]
    if prev is not None:
        at = datetime.fromisoformat(prev["startedAt"]).astimezone(UTC).strftime("%H:%M")
        line += f" ({doc['delta']:+d} since {at})"
    if doc["healed"]:
        line += f"; healed by one reconcile pass, {doc['remaining']} remain"
    return line


def _title(doc: Mapping[str, Any]) -> str:
    started = datetime.fromisoformat(doc["startedAt"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    rev = (doc["revision"] or "")[:7]
    return f"drift report #{doc['id']} at {started} ({doc['mode']} mode, revision {rev})"


def render_text(docs: Sequence[Mapping[str, Any]]) -> str:
    blocks = []
    for doc in docs:
        lines = [_title(doc), "  " + _summary(doc)]
        for f in doc["findings"]:
            where = f" on {f['node']}" if f.get("node") else ""
            lines.append(f"  {f['kind']:<16} {f['object']}{where}: {f['detail']}")
        for h in doc["healed"]:
            for f in h.get("after") or []:
                lines.append(f"  still after heal: {f['kind']} {f['object']}: {f['detail']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "no drift reports yet (run `gitorch drift --run`)"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(docs: Sequence[Mapping[str, Any]]) -> str:
    if not docs:
        return "_No drift reports yet._"
    blocks = []
    for doc in docs:
        lines = [f"### {_title(doc)}", "", f"**{_summary(doc)}**", ""]
        if doc["findings"]:
            lines += ["| kind | object | node | detail | mode |", "| --- | --- | --- | --- | --- |"]
            lines += [
                f"| {_cell(f['kind'])} | {_cell(f['object'])} | {_cell(f.get('node') or '')} | "
                f"{_cell(f['detail'])} | {_cell(f.get('mode', ''))} |"
                for f in doc["findings"]
            ]
        else:
            lines.append("No drift: Git, the store and the nodes agree.")
        for h in doc["healed"]:
            after = h.get("after") or []
            lines += ["", f"Healed with one reconcile pass of `{str(h.get('revision'))[:7]}`: "
                      f"{len(after)} finding(s) remain."]
            lines += [f"- {_cell(f['kind'])} {_cell(f['object'])}: {_cell(f['detail'])}" for f in after]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render(docs: Sequence[Mapping[str, Any]], fmt: str, *, many: bool) -> str:
    if fmt == "json":
        return json.dumps({"reports": list(docs)} if many else (docs[0] if docs else None), indent=2)
    return render_markdown(docs) if fmt == "markdown" else render_text(docs)


def documents(reports: Sequence[DriftReport], previous: DriftReport | None) -> list[dict[str, Any]]:
    """`reports` newest first, each with its predecessor for the count delta; `previous` is
    the report before the oldest one."""
    out = []
    for i, r in enumerate(reports):
        before = reports[i + 1] if i + 1 < len(reports) else previous
        out.append(report_json(r, before))
    return out


def found_text(report: DriftReport) -> str:
    """The driftFound notification's text."""
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items()))
    rest = f"; {len(remaining(report))} remain after healing" if report.healed else ""
    return f"gitorch: drift found at {(report.revision or '')[:7]}: {len(report.findings)} finding(s) ({kinds}){rest}"


def history(reports: Sequence[DriftReport], since: datetime | None) -> list[dict[str, Any]]:
    """The latest report (or every report since `since`), newest first, as documents with
    the count delta against the report before each."""
    if since is None:
        return documents(reports[:1], reports[1] if len(reports) > 1 else None)
    chosen = [r for r in reports if r.started_at >= since]
    older = reports[len(chosen)] if len(chosen) < len(reports) else None
    return documents(chosen, older)

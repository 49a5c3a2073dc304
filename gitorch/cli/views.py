"""Views: what the store knows, as tables for people and JSON for scripts (status, get, describe, events, logs)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gitorch.cli import console
from gitorch.model.errors import GitorchError
from gitorch.nodes.client import Fleet
from gitorch.nodes.endpoints import endpoints, ssh_options
from gitorch.nodes.ssh import Pool
from gitorch.source import desired
from gitorch.source.git import Repository
from gitorch.store import summaries
from gitorch.store.database import Store

KIND_OF = {
    "deployments": "Deployment",
    "replicasets": "ReplicaSet",
    "statefulsets": "StatefulSet",
    "daemonsets": "DaemonSet",
    "services": "Service",
    "ingresses": "Ingress",
    "jobs": "Job",
    "cronjobs": "CronJob",
    "hpa": "HorizontalPodAutoscaler",
    "horizontalpodautoscalers": "HorizontalPodAutoscaler",
    "vpa": "VerticalPodAutoscaler",
    "verticalpodautoscalers": "VerticalPodAutoscaler",
}


_age = summaries.age


def _emit(output: str, columns: list[str], rows: list[list[Any]], data: list[dict[str, Any]]) -> None:
    if output == "json":
        console.write(json.dumps(data, indent=2, default=str))
    else:
        console.table(columns, rows)


_ready_condition = summaries.ready_condition


def status(store: Store, output: str) -> None:
    data = summaries.status(store)
    last = store.last_applied_revision()
    latest = store.revisions(limit=1)
    objs = store.objects()
    if output == "json":
        console.write(json.dumps(data, indent=2))
        return
    if last is None and not latest:
        console.write("nothing applied yet (run `gitorch apply`)")
        return
    console.write(f"Applied revision: {last.commit[:7] + ' ' + last.message.splitlines()[0] if last else '(none)'}")
    if latest and (last is None or latest[0].commit != last.commit):
        console.write(f"Latest revision:  {latest[0].commit[:7]} {latest[0].outcome}: {latest[0].error}")
    healthy = sum(1 for o in objs if o.health == "Healthy")
    console.write(f"Objects: {len(objs)} ({healthy} healthy)\n")
    console.table(
        ["KIND", "NAMESPACE", "NAME", "SYNC", "HEALTH", "MESSAGE"],
        [[o["kind"], o["namespace"], o["name"], o["sync"], o["health"], o["message"]] for o in data["objects"]],
    )


def get(store: Store, what: str, namespace: str | None, output: str) -> None:
    data: list[dict[str, Any]]
    if what == "pods":
        pods = store.pods(namespace=namespace)
        data = [summaries.pod_summary(p) for p in pods]
        rows = [
            [
                p.namespace,
                p.name,
                "1/1" if p.ready else "0/1",
                summaries.pod_status(p),
                p.restarts,
                p.ip or "<none>",
                p.node or "<none>",
                _age(p.created_at),
                p.message[:80],
            ]
            for p in pods
        ]
        _emit(output, ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP", "NODE", "AGE", "MESSAGE"], rows, data)
    elif what == "nodes":
        nodes = store.nodes()
        rows_of = {o.name: o for o in store.objects(kind="Node")}
        data = [summaries.node_summary(n, rows_of.get(n.name)) for n in nodes]
        rows = [
            [
                n.name,
                summaries.node_status(n, rows_of.get(n.name)),
                n.agent_version,
                _age(n.last_heartbeat),
                len(store.pods(node=n.name)),
                summaries.node_autoscaling_text(rows_of.get(n.name)),
            ]
            for n in nodes
        ]
        _emit(output, ["NAME", "STATUS", "AGENT", "HEARTBEAT", "PODS", "AUTOSCALING"], rows, data)
    elif what == "serviceaccounts":
        # Every account holding a uid: those in Git, each namespace's `default`, and released ones
        # kept while a pod may still run as them.
        accounts = [a for a in store.account_ids() if namespace is None or a.namespace == namespace]
        data = [{"namespace": a.namespace, "name": a.name, "uid": a.uid, "gid": a.uid, "allocated": a.allocated_at}
                for a in accounts]
        rows = [[a.namespace, a.name, a.uid, a.uid, _age(a.allocated_at)] for a in accounts]
        _emit(output, ["NAMESPACE", "NAME", "UID", "GID", "AGE"], rows, data)
    elif what == "revisions":
        revs = store.revisions(limit=50)
        data = [summaries.revision_summary(r) for r in revs]
        rows = [
            [
                r.commit[:7],
                r.outcome,
                _age(r.applied_at or r.first_seen_at),
                r.author,
                r.message.splitlines()[0] if r.message else "",
                r.error[:80],
            ]
            for r in revs
        ]
        _emit(output, ["COMMIT", "OUTCOME", "AGE", "AUTHOR", "MESSAGE", "ERROR"], rows, data)
    else:
        kind = KIND_OF[what]
        objs = store.objects(kind=kind, namespace=namespace)
        ips = {(c.namespace, c.service): c.ip for c in store.cluster_ips()}
        external = {(b.namespace, b.service): b for b in store.load_balancer_ips()} if kind == "Service" else {}
        data = []
        rows = []
        for o in objs:
            cond = _ready_condition(o.conditions)
            item = {"namespace": o.namespace, "name": o.name, "health": o.health, "message": cond.get("message", "")}
            if kind == "Service":
                spec = (o.body.get("manifest") or {}).get("spec") or {}
                ip = "None" if spec.get("clusterIP") == "None" else ips.get((o.namespace, o.name), "")
                ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
                item.update({"type": spec.get("type", "ClusterIP"), "clusterIP": ip, "ports": ports})
                lb = external.get((o.namespace, o.name))
                if lb is not None:  # Kubernetes' status.loadBalancer.ingress, and who announces it
                    item["status"] = {"loadBalancer": {"ingress": [{"ip": lb.ip}]}}
                    item["announcedBy"] = lb.node
                shown = lb.ip if lb is not None else ("<pending>" if item["type"] == "LoadBalancer" else "<none>")
                rows.append([o.namespace, o.name, item["type"], ip or spec.get("externalName", ""), shown, ports])
            elif kind == "VerticalPodAutoscaler":
                vpa = _vpa_view(o.body or {})
                item.update(vpa)
                rows.append([o.namespace, o.name, vpa["mode"], vpa["cpu"], vpa["memory"], vpa["provided"],
                             _age(o.updated_at)])
            elif kind == "HorizontalPodAutoscaler":
                hpa = _hpa_view(o.body or {})
                item.update(hpa)
                rows.append([o.namespace, o.name, hpa["reference"], hpa["targets"], hpa["minReplicas"],
                             hpa["maxReplicas"], hpa["replicas"], _age(o.updated_at)])
            elif kind == "Ingress":
                spec = (o.body.get("manifest") or {}).get("spec") or {}
                hosts = ",".join(str(r.get("host") or "*") for r in spec.get("rules") or []) or "*"
                status = o.body.get("loadBalancer")
                shown = ",".join(str(a.get("ip")) for a in (status or {}).get("ingress") or [])
                tls = any(spec.get("tls") or [])
                item.update({"class": spec.get("ingressClassName") or "", "hosts": hosts})
                if status:  # Kubernetes' status.loadBalancer.ingress: where it answers
                    item["status"] = {"loadBalancer": status}
                rows.append([o.namespace, o.name, item["class"] or "<default>", hosts, shown or "<pending>",
                             "80, 443" if tls else "80"])
            else:
                rows.append([o.namespace, o.name, o.health, cond.get("message", ""), _age(o.updated_at)])
            data.append(item)
        columns = (
            ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORTS"]
            if kind == "Service"
            else ["NAMESPACE", "NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "UPDATED"]
            if kind == "HorizontalPodAutoscaler"
            else ["NAMESPACE", "NAME", "MODE", "CPU", "MEM", "PROVIDED", "UPDATED"]
            if kind == "VerticalPodAutoscaler"
            else ["NAMESPACE", "NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS"]
            if kind == "Ingress"
            else ["NAMESPACE", "NAME", "HEALTH", "STATUS", "UPDATED"]
        )
        _emit(output, columns, rows, data)


def describe(store: Store, ref: str, namespace: str) -> None:
    if "/" not in ref:
        raise GitorchError(f"{ref!r}: use KIND/NAME, e.g. deployment/web or pod/web-abc-0")
    kind_text, name = ref.split("/", 1)
    kind_text = kind_text.lower()
    if kind_text in ("pod", "pods", "po"):
        pod = next((p for p in store.pods(namespace=namespace) if p.name == name), None)
        if pod is None:
            raise GitorchError(f"pod {namespace}/{name} not found (see `gitorch get pods`)")
        for k, v in [
            ("Name", pod.name),
            ("Namespace", pod.namespace),
            ("Node", pod.node or "<none>"),
            ("Owner", f"{pod.owner_kind}/{pod.owner_name}"),
            ("Phase", pod.phase),
            ("Ready", pod.ready),
            ("Restarts", pod.restarts),
            ("Revision", pod.template_hash),
            ("Reason", pod.reason),
            ("Message", pod.message),
            ("Created", pod.created_at),
        ]:
            console.write(f"{k + ':':<12}{v}")
        _events(store, (pod.owner_kind, pod.namespace, pod.owner_name))
        return
    kinds = {
        k.lower(): k
        for k in (
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "CronJob",
            "Service",
            "Ingress",
            "IngressClass",
            "ConfigMap",
            "Secret",
            "Namespace",
            "Node",
            "Cluster",
            "PersistentVolumeClaim",
            "HorizontalPodAutoscaler",
            "VerticalPodAutoscaler",
        )
    }
    kinds["hpa"] = "HorizontalPodAutoscaler"
    kinds["vpa"] = "VerticalPodAutoscaler"
    kinds.update({k + "s": v for k, v in list(kinds.items())})
    kind = kinds.get(kind_text)
    if kind is None:
        raise GitorchError(f"unknown kind {kind_text!r} (one of: {', '.join(sorted(set(kinds.values())))})")
    ns = "" if kind in ("Namespace", "Node", "Cluster", "IngressClass") else namespace
    obj = store.object_status(kind, ns, name)
    if obj is None:
        raise GitorchError(f"{kind} {ns + '/' if ns else ''}{name} not found in the store (applied yet?)")
    console.write(
        f"Name:       {obj.name}\nNamespace:  {obj.namespace}\nKind:       {obj.kind}\n"
        f"Sync:       {obj.sync}\nHealth:     {obj.health}\nRevision:   {obj.last_applied_revision}"
    )
    if kind == "Service":
        _describe_load_balancer(store, ns, name)
    if kind == "HorizontalPodAutoscaler":
        _describe_hpa(obj.body or {})
    if kind == "VerticalPodAutoscaler":
        _describe_vpa(obj.body or {})
    if kind == "Ingress":
        _describe_ingress(obj.body or {})
    if kind == "Node" and summaries.node_scaling(obj) is not None:
        console.write(f"Autoscaling: {summaries.node_autoscaling_text(obj)}")
    console.write("Conditions:")
    for c in obj.conditions:
        console.write(f"  {c.get('type'):<12} {c.get('status'):<6} {c.get('reason', '')}  {c.get('message', '')}")
    history = (obj.body or {}).get("history") or []
    if history:
        console.write("Revisions (oldest first; roll back through Git: `gitorch rollback COMMIT`):")
        for h in history:
            when = datetime.fromtimestamp(float(h.get("since", 0)), tz=UTC)
            console.write(
                f"  {h.get('revision', '')[:10]}  from {str(h.get('commit', ''))[:7]} "
                f"{h.get('subject', '')}  ({_age(when)} ago)"
            )
    pods = [p for p in store.pods(namespace=ns) if p.owner_kind == kind and p.owner_name == name]
    if pods:
        console.write("Pods:")
        for p in pods:
            console.write(
                f"  {p.name}  {p.phase}{' ready' if p.ready else ''}  on {p.node or '<none>'}"
                f"{'  ' + p.message if p.message else ''}"
            )
    _events(store, (kind, ns, name))


def _hpa_view(body: dict[str, Any]) -> dict[str, Any]:
    """An autoscaler's row, as `kubectl get hpa` shows it: targets as current/target per metric."""
    from gitorch.reconcile import autoscaling

    manifest = body.get("manifest") or {}
    status = body.get("autoscaling") or {}
    try:
        spec = autoscaling.parse_spec(manifest.get("spec") or {})
    except (autoscaling.MetricError, KeyError, TypeError, ValueError):
        return {"reference": "", "targets": "", "minReplicas": None, "maxReplicas": None, "replicas": None,
                "metrics": []}
    current = status.get("currentMetrics") or []
    metrics = [{"resource": m.resource, "container": m.container, "target": autoscaling.target_text(m),
                "current": autoscaling.current_text(m, _hpa_current(current, m))} for m in spec.metrics]
    return {
        "reference": f"{spec.target_kind}/{spec.target_name}",
        "targets": ", ".join(f"{m['resource']}: {m['current']}/{m['target']}" for m in metrics),
        "minReplicas": spec.min_replicas, "maxReplicas": spec.max_replicas,
        "replicas": status.get("currentReplicas"), "desiredReplicas": status.get("desiredReplicas"),
        "lastScaleTime": status.get("lastScaleTime"), "metrics": metrics,
    }


def _hpa_current(current: list[Any], m: Any) -> dict[str, Any] | None:
    for got in current:
        src = (got or {}).get("containerResource" if m.container else "resource") or {}
        if src.get("name") == m.resource and src.get("container") == m.container:
            value = src.get("current")
            return value if isinstance(value, dict) else None
    return None


def _describe_hpa(body: dict[str, Any]) -> None:
    """kubectl describe hpa's middle part: the target, each metric current/target, the bounds."""
    hpa = _hpa_view(body)
    console.write(f"Reference:  {hpa['reference']}")
    console.write("Metrics:    ( current / target )")
    for m in hpa["metrics"]:
        of = f" of container {m['container']}" if m["container"] else ""
        what = "(as a percentage of request)" if m["target"].endswith("%") else "(average per pod)"
        console.write(f"  resource {m['resource']}{of} on pods {what}:  {m['current']} / {m['target']}")
    console.write(f"Min replicas:  {hpa['minReplicas']}\nMax replicas:  {hpa['maxReplicas']}")
    console.write(f"{hpa['reference']} pods:  {hpa['replicas']} current / {hpa['desiredReplicas']} desired")
    if hpa.get("lastScaleTime"):
        when = datetime.fromtimestamp(float(hpa["lastScaleTime"]), tz=UTC)
        console.write(f"Last scale:  {_age(when)} ago")


def _vpa_view(body: dict[str, Any]) -> dict[str, Any]:
    """A VerticalPodAutoscaler's row, as `kubectl get vpa` shows it (one container's target: the
    first; all of them with -o json)."""
    spec = (body.get("manifest") or {}).get("spec") or {}
    kept = body.get("recommendation") or {}
    containers = (kept.get("recommendation") or {}).get("containerRecommendations") or []
    first = (containers[0].get("target") or {}) if containers else {}
    provided = next((c.get("status") for c in kept.get("conditions") or []
                     if c.get("type") == "RecommendationProvided"), "False")
    ref = spec.get("targetRef") or {}
    return {"mode": (spec.get("updatePolicy") or {}).get("updateMode", ""),
            "reference": f"{ref.get('kind')}/{ref.get('name')}", "cpu": first.get("cpu", ""),
            "memory": first.get("memory", ""), "provided": provided, "containerRecommendations": containers,
            "conditions": kept.get("conditions") or [], "history": kept.get("history") or {}}


def _describe_vpa(body: dict[str, Any]) -> None:
    """kubectl describe vpa's status part: each container's target, bounds and uncapped target."""
    vpa = _vpa_view(body)
    console.write(f"Target:       {vpa['reference']}\nUpdate mode:  {vpa['mode']}")
    if not vpa["containerRecommendations"]:
        console.write("Recommendation:  none yet")
    else:
        console.write("Recommendation:")
    for c in vpa["containerRecommendations"]:
        console.write(f"  Container Name:  {c.get('containerName')}")
        for label, field in (("Target", "target"), ("Lower Bound", "lowerBound"), ("Upper Bound", "upperBound"),
                             ("Uncapped Target", "uncappedTarget")):
            values = ", ".join(f"{k} {v}" for k, v in sorted((c.get(field) or {}).items()))
            console.write(f"    {label + ':':<17}{values}")
        h = vpa["history"].get(c.get("containerName")) or {}
        if h:
            console.write(f"    {'History:':<17}{h.get('samples')} samples, confidence {h.get('confidence')}")


def _describe_load_balancer(store: Store, namespace: str, name: str) -> None:
    """A LoadBalancer Service's address and the node announcing it, as kubectl's `LoadBalancer Ingress`."""
    held = next((b for b in store.load_balancer_ips() if (b.namespace, b.service) == (namespace, name)), None)
    if held is not None:
        console.write(f"LoadBalancer Ingress:  {held.ip} (announced by {held.node or '<none: no eligible node>'})")


def _describe_ingress(body: dict[str, Any]) -> None:
    """An Ingress's addresses, TLS and rules, as kubectl describe shows them."""
    spec = (body.get("manifest") or {}).get("spec") or {}
    shown = ",".join(str(a.get("ip")) for a in (body.get("loadBalancer") or {}).get("ingress") or [])
    console.write(f"Address:    {shown or '<pending>'}")
    default = ((spec.get("defaultBackend") or {}).get("service") or {})
    if default:
        port = default.get("port") or {}
        console.write(f"Default backend:  {default.get('name')}:{port.get('number') or port.get('name')}")
    for t in spec.get("tls") or []:
        console.write(f"TLS:        {t.get('secretName')} terminates {', '.join(t.get('hosts') or ['(its hosts)'])}")
    console.write("Rules:\n  Host  Path  Backends")
    for r in spec.get("rules") or []:
        for p in (r.get("http") or {}).get("paths") or []:
            svc = (p.get("backend") or {}).get("service") or {}
            port = svc.get("port") or {}
            console.write(f"  {r.get('host') or '*'}  {p.get('path') or '/'} ({p.get('pathType')})  "
                          f"{svc.get('name')}:{port.get('number') or port.get('name')}")


def _events(store: Store, obj: tuple[str, str, str]) -> None:
    evs = store.events(object=obj, limit=20)
    console.write("Events:" if evs else "Events:  <none>")
    for e in evs:
        count = f" (x{e.count})" if e.count > 1 else ""
        console.write(f"  {_age(e.last_time):>5} {e.type:<8} {e.reason:<18} {e.message}{count}")


def events(store: Store, namespace: str | None, limit: int, output: str) -> None:
    evs = [e for e in store.events(limit=limit) if namespace is None or e.namespace == namespace]
    data = [summaries.event_summary(e) for e in evs]
    rows = [[_age(e.last_time), e.type, e.reason, f"{e.kind.lower()}/{e.name}", e.message, e.count] for e in evs]
    _emit(output, ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE", "COUNT"], rows, data)


PROXY_POD = "ingress"  # the agent's system pod running HAProxy (nodes/agent.py INGRESS_POD)
SYSTEM_NAMESPACE = "gitorch-system"


def logs(
    store: Store,
    repo: Repository,
    state_dir: Path,
    pod: str,
    namespace: str,
    container: str | None,
    tail: int,
    follow: bool,
    previous: bool,
    node: str | None = None,
    timestamps: bool = False,
    since: float | None = None,
) -> None:
    if node is not None and pod == PROXY_POD:  # the ingress proxy: a system pod, not in the store
        namespace = SYSTEM_NAMESPACE
    else:
        record = next((p for p in store.pods(namespace=namespace) if p.name == pod), None)
        if record is None:
            proxy = f"; the ingress proxy's log: `gitorch logs {PROXY_POD} --node NODE`" if pod == PROXY_POD else ""
            raise GitorchError(f"pod {namespace}/{pod} not found (see `gitorch get pods -n {namespace}`){proxy}")
        if not record.node:
            raise GitorchError(f"pod {namespace}/{pod} is not running on any node: {record.message or record.phase}")
        if node is not None and node != record.node:
            raise GitorchError(f"pod {namespace}/{pod} runs on {record.node}, not {node}")
        node = record.node
    last = store.last_applied_revision()
    state = desired.load(repo, last.commit if last else None)
    eps = [e for e in endpoints(state) if e.name == node]
    if not eps:
        raise GitorchError(f"node {node} is not in the applied revision's Node manifests")
    with Fleet(eps, Pool(ssh_options(state, state_dir / "known_hosts"))) as fleet:
        client = fleet.clients[node]
        request: dict[str, Any] = {"pod": pod, "namespace": namespace, "tail": tail, "previous": previous}
        if container:
            request["container"] = container
        if timestamps:
            request["timestamps"] = True
        if since is not None:
            request["since"] = since
        if follow:
            stream = client.follow_logs(request)
            for chunk in stream.chunks():
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            return
        answer = client.run_once("logs", request)
        if since is not None and not answer.get("since"):
            raise GitorchError(f"the agent on node {node} is too old to select lines by time; its next sync "
                               "updates it")
        sys.stdout.write(str(answer.get("log", "")))


def _cpu(millis: Any) -> str:
    return f"{millis}m" if isinstance(millis, int) else "<unknown>"


def _mem(size: Any) -> str:
    return f"{size // (1024 * 1024)}Mi" if isinstance(size, int) else "<unknown>"


def top(reply: dict[str, Any], what: str, namespace: str | None, output: str, containers: bool) -> None:
    """`gitorch top pods|nodes`, from serve's answer over the control socket (kubectl top's columns)."""
    if reply.get("leftOut") and output != "json":
        console.warn(f"{reply['leftOut']} row(s) left out: narrow with -n NAMESPACE")
    if what == "nodes":
        nodes = [n for n in reply.get("nodes") or [] if isinstance(n, dict)]
        rows = [[n.get("name"), _cpu(n.get("cpuMillis")),
                 f"{n['cpuPercent']}%" if n.get("cpuPercent") is not None else "<unknown>",
                 _mem(n.get("memoryBytes")),
                 f"{n['memoryPercent']}%" if n.get("memoryPercent") is not None else "<unknown>"] for n in nodes]
        if output != "json" and not rows:
            console.warn("no node metrics yet: agents report every "
                         f"{reply.get('intervalSeconds', 15):g} s once serve has synced them")
        _emit(output, ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"], rows, nodes)
        return
    pods = [p for p in reply.get("pods") or [] if isinstance(p, dict)
            and (namespace is None or p.get("namespace") == namespace)]
    if output != "json" and not pods:
        console.warn("no pod metrics yet (only containers run by the process runtime in a cgroup are measured)")
    if containers:
        rows = [[p.get("namespace"), p.get("name"), c.get("name"), _cpu(c.get("cpuMillis")), _mem(c.get("memoryBytes"))]
                for p in pods for c in p.get("containers") or []]
        _emit(output, ["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"], rows, pods)
        return
    rows = [[p.get("namespace"), p.get("name"), _cpu(p.get("cpuMillis")), _mem(p.get("memoryBytes"))] for p in pods]
    _emit(output, ["NAMESPACE", "NAME", "CPU(cores)", "MEMORY(bytes)"], rows, pods)


def parse_since(text: str) -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or an age such as 30m, 12h or 7d."""
    import re
    from datetime import timedelta

    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if m:
        size = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return datetime.now(UTC) - timedelta(seconds=int(m.group(1)) * size)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an ISO date or time (2026-05-01, 2026-05-01T12:00Z) "
                         "or an age (30m, 12h, 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def audit(entries: list[Any], output: str) -> None:
    """`gitorch audit`: one row per object a commit changed, newest first."""
    from gitorch.reconcile.auditing import rows

    if output == "json":
        console.write(json.dumps([e.to_json() for e in entries], indent=2))
        return
    if not entries:
        console.write("no changes in the commits read (see --since, --object, --limit)")
        return
    console.table(["TIME", "COMMIT", "SIGNER", "SIGNATURE", "CHANGE", "OBJECT", "SUMMARY", "CONTROLLER"],
                  rows(entries))


def recommend(store: Store, repo: Any, state: Any, names: tuple[str, ...], namespace: str | None, fmt: str) -> int:
    """`gitorch recommend`: the VerticalPodAutoscalers' targets as a patch of the workloads'
    requests in their Git files at the loaded revision (a round-trip YAML edit, so `git apply`
    takes it), or as markdown for a pull-request comment. Returns the exit code."""
    import difflib

    from gitorch.model.objects import ObjectKey
    from gitorch.model.quantities import QuantityError, cpu_millis, to_bytes
    from gitorch.reconcile import recommending
    from gitorch.source.manifests import edit_requests

    rows = [r for r in store.objects(kind="VerticalPodAutoscaler", namespace=namespace)
            if not names or r.name in names]
    missing = sorted(set(names) - {r.name for r in rows})
    if missing:
        raise GitorchError(f"no VerticalPodAutoscaler {', '.join(missing)} in the store"
                           f"{' in namespace ' + namespace if namespace else ''} (applied yet?)")
    if not rows:
        raise GitorchError("no VerticalPodAutoscaler in the store: add one with updateMode \"Off\" and apply it")

    def amount(resource: str, raw: Any) -> int:
        return cpu_millis(raw) if resource == "cpu" else to_bytes(raw)

    def text(resource: str, value: int) -> str:
        return recommending.cpu_text(value) if resource == "cpu" else recommending.memory_text(value)

    edits: dict[str, list[tuple[int, dict[str, dict[str, str]], dict[str, dict[str, str]]]]] = {}
    tables: list[str] = []
    provided = 0
    for r in sorted(rows, key=lambda r: (r.namespace, r.name)):
        view = _vpa_view(r.body or {})
        vpa = state.objects.get(ObjectKey("VerticalPodAutoscaler", r.namespace, r.name))
        if not view["containerRecommendations"] or vpa is None:
            why = next((c.get("message") for c in view["conditions"] if c.get("type") == "RecommendationProvided"),
                       "" if vpa is not None else f"not in revision {state.revision.short}")
            console.warn(f"VerticalPodAutoscaler {r.namespace}/{r.name}: no recommendation yet"
                         f"{': ' + why if why else ''} (serve computes one once its pods' usage is sampled)")
            continue
        provided += 1
        target = recommending.target_of(state, vpa)
        if target is None:
            console.warn(f"VerticalPodAutoscaler {r.namespace}/{r.name}: its target {view['reference']} is not in "
                         f"revision {state.revision.short}")
            continue
        workload = state.objects[ObjectKey(target.kind, r.namespace, target.name)]
        found = recommending.policies(vpa.spec)
        template = ((workload.spec.get("template") or {}).get("spec") or {}).get("containers") or []
        current = {c.get("name"): c.get("resources") or {} for c in template if isinstance(c, dict)}
        requests: dict[str, dict[str, str]] = {}
        limits: dict[str, dict[str, str]] = {}
        lines = [f"**VerticalPodAutoscaler {r.namespace}/{r.name}** → {target.kind} {target.name} "
                 f"(`{workload.path}`)", "", "| container | resource | request now | target | lower bound | "
                 "upper bound |", "| --- | --- | --- | --- | --- | --- |"]
        for c in view["containerRecommendations"]:
            name = str(c.get("containerName"))
            res = current.get(name)
            if res is None:
                continue
            policy = recommending.policy_for(found, name)
            for resource, wanted in sorted((c.get("target") or {}).items()):
                now_raw = (res.get("requests") or {}).get(resource, (res.get("limits") or {}).get(resource))
                try:
                    new = amount(resource, wanted)
                    old = amount(resource, now_raw) if now_raw is not None else None
                    limit_raw = (res.get("limits") or {}).get(resource)
                    limit = amount(resource, limit_raw) if limit_raw is not None else None
                except QuantityError:
                    continue
                lines.append(f"| {name} | {resource} | {now_raw if now_raw is not None else '—'} | {wanted} | "
                             f"{(c.get('lowerBound') or {}).get(resource, '')} | "
                             f"{(c.get('upperBound') or {}).get(resource, '')} |")
                if limit is not None and policy.controlled_values == "RequestsOnly" and new > limit:
                    new, wanted = limit, text(resource, limit)  # a request above its limit is invalid
                    console.warn(f"{r.namespace}/{r.name}: {name}'s {resource} target {c['target'][resource]} is "
                                 f"above its limit {limit_raw} (RequestsOnly): the request is the limit; raise "
                                 "the limit in the same commit to give it more")
                if old == new:
                    continue
                requests.setdefault(name, {})[resource] = wanted
                if limit is not None and policy.controlled_values == "RequestsAndLimits":
                    # VPA keeps the limit's proportion to the request.
                    scaled = -(-limit * new // old) if old else new
                    limits.setdefault(name, {})[resource] = text(resource, scaled)
        tables.append("\n".join(lines))
        if requests:
            edits.setdefault(workload.path, []).append((workload.document.index, requests, limits))
    patches: list[str] = []
    if edits:
        files = {f.path: f for f in repo.snapshot(state.revision.oid).files}
        for path, changes in sorted(edits.items()):
            before = files[path].data.decode()
            after = before
            for index, requests, limits in changes:
                try:
                    after = edit_requests(after, index, requests, limits)
                except ValueError as exc:
                    raise GitorchError(f"{path}: {exc}") from exc
            patches.append("".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                                        f"a/{path}", f"b/{path}")))
    patch = "".join(patches)
    if fmt == "markdown":
        body = "\n\n".join(tables) if tables else "No recommendation yet."
        if patch:
            body += f"\n\nTo apply (`git apply`):\n\n```diff\n{patch}```"
        elif tables:
            body += "\n\nThe requests in Git already match the recommendations."
        console.write(body)
    elif patch:
        sys.stdout.write(patch)
    elif provided:
        console.warn("the requests in Git already match the recommendations: nothing to change")
    return 0 if provided else 1

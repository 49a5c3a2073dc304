"""HorizontalPodAutoscalers in the pure planner and in GitOps: the count they set is what the
workload runs (Git's replicas only starts it), a rollout keeps it, plan says who manages
replicas, drift leaves the difference alone, and validation catches what the schema cannot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.model.objects import ObjectKey
from gitorch.model.usage import ContainerUsage, PodUsage
from gitorch.reconcile import autoscaling
from gitorch.reconcile.drift import detect
from gitorch.reconcile.planning import Observed, Plan, PodState, plan
from gitorch.source import desired
from gitorch.source.diffs import diff_states
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.test_planning import NODES, state

HPA_KEY = ObjectKey("HorizontalPodAutoscaler", "shop", "web")
WEB = ObjectKey("Deployment", "shop", "web")


def web(replicas: int = 1, version: str = "v1", cpu: str = "100m") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          command: [python3, -m, http.server]
          env: [{{name: V, value: "{version}"}}]
          resources: {{requests: {{cpu: {cpu}}}}}
"""


def hpa(max_replicas: int = 4, down_window: int = 0, target: str = "web", extra: str = "") -> str:
    return f"""\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: web, namespace: shop}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}
  minReplicas: 1
  maxReplicas: {max_replicas}
  metrics:
    - type: Resource
      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: {down_window}}}
{extra}"""


def running(p: Plan, now: float, cpu: int | None,
            since: float) -> tuple[tuple[PodState, ...], dict[tuple[str, str], PodUsage]]:
    """Every planned pod Running and Ready since `since`, each using `cpu` millicores (sampled at `now`)."""
    pods = tuple(PodState(d.name, d.owner.namespace, d.owner.kind, d.owner.name, d.node, d.revision, "Running", True,
                          created=since, ready_since=since, ordinal=d.ordinal) for d in p.pods)
    usage = {} if cpu is None else {
        (x.namespace, x.name): PodUsage(x.namespace, x.name, x.node or "", now, 15.0, (ContainerUsage("web", cpu, 1),))
        for x in pods}
    return pods, usage


def recorded(p: Plan) -> dict[ObjectKey, dict[str, object]]:
    """What the store keeps of the autoscaler's status for the next pass."""
    status = p.statuses[HPA_KEY].autoscaling
    assert status is not None
    return {HPA_KEY: dict(status)}


def test_the_autoscaler_sets_the_count_and_a_rollout_keeps_it(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(replicas=1), "hpa.yaml": hpa()})
    first = plan(s, Observed(1000.0, (), NODES))
    assert len(first.pods) == 1 and first.requeue_after == 14.0  # a period, less the slack
    # The pod burns 100% of its 100m request (target 50%): 2 pods, then 4 (the max).
    pods, usage = running(first, 1000.0, 100, since=0.0)
    second = plan(s, Observed(1020.0, pods, NODES, autoscalers=recorded(first), usage=usage))
    assert second.statuses[HPA_KEY].autoscaling["desiredReplicas"] == 2  # type: ignore[index]
    assert [e.reason for e in second.events if e.key == HPA_KEY] == ["SuccessfulRescale"]
    assert any(e.message == "New size: 2; reason: cpu resource utilization (percentage of request) above target"
               for e in second.events)
    assert len([d for d in second.pods if d.owner == WEB]) == 2
    assert second.statuses[WEB].desired == 2
    # Between two syncs the count stands, whatever the metrics say.
    between = plan(s, Observed(1025.0, pods, NODES, autoscalers=recorded(second), usage={}))
    assert len([d for d in between.pods if d.owner == WEB]) == 2 and not between.events
    assert between.requeue_after == pytest.approx(9.0)
    # With samples: the next sync comes just after the next one is due (sampled at 1024, every 15 s).
    fresh = {k: replace(u, timestamp=1024.0) for k, u in usage.items()}
    aligned = plan(s, Observed(1025.0, pods, NODES, autoscalers=recorded(second), usage=fresh))
    assert aligned.requeue_after == pytest.approx(1024.0 + 15.0 + 0.25 - 1025.0)

    # A new template (and a replicas change in Git): the rollout keeps the autoscaler's count.
    s2 = state(repo, {"web.yaml": web(replicas=7, version="v2"), "hpa.yaml": hpa()})
    pods2, _ = running(second, 1025.0, None, since=0.0)
    rolled = plan(s2, Observed(1026.0, pods2, NODES, autoscalers=recorded(second)))
    assert rolled.statuses[WEB].desired == 2
    assert len([d for d in rolled.pods if d.owner == WEB]) == 3  # 2 + maxSurge 1, never Git's 7


def test_idle_pods_scale_down_after_the_window(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(replicas=3), "hpa.yaml": hpa(down_window=60)})
    first = plan(s, Observed(1000.0, (), NODES))
    pods, idle = running(first, 1000.0, 1, since=0.0)
    kept = plan(s, Observed(1000.0, pods, NODES, autoscalers={}, usage=idle))
    status = kept.statuses[HPA_KEY]
    assert status.autoscaling["desiredReplicas"] == 3  # type: ignore[index]
    assert ("AbleToScale", "ScaleDownStabilized") in {(c["type"], c["reason"]) for c in status.conditions}
    pods, idle = running(first, 1061.0, 1, since=0.0)
    down = plan(s, Observed(1061.0, pods, NODES, autoscalers=recorded(kept), usage=idle))
    assert down.statuses[HPA_KEY].autoscaling["desiredReplicas"] == 1  # type: ignore[index]
    assert len([d for d in down.pods if d.owner == WEB]) == 1 and len(down.removed) == 2


def test_without_metrics_the_count_stays_and_says_why(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(replicas=2), "hpa.yaml": hpa()})
    first = plan(s, Observed(1000.0, (), NODES))
    status = first.statuses[HPA_KEY]
    assert status.autoscaling["desiredReplicas"] == 2  # type: ignore[index]
    active = next(c for c in status.conditions if c["type"] == "ScalingActive")
    assert (active["status"], active["reason"]) == ("False", "FailedGetResourceMetric")
    assert "unable to compute the replica count" in status.message
    gone = state(repo, {"web.yaml": web(replicas=2), "hpa.yaml": hpa(target="nope")})
    missing = plan(gone, Observed(1000.0, (), NODES)).statuses[ObjectKey("HorizontalPodAutoscaler", "shop", "web")]
    assert missing.health == "Degraded" and "not found" in missing.message


def test_plan_names_the_autoscaler_and_drift_ignores_replicas(repo: GitRepo) -> None:
    base = state(repo, {"web.yaml": web(replicas=1), "hpa.yaml": hpa()})
    head = state(repo, {"web.yaml": web(replicas=5), "hpa.yaml": hpa()})
    change = next(c for c in diff_states(base, head).changes if c.key == WEB)
    assert change.note == "replicas managed by HorizontalPodAutoscaler web"
    plain = state(repo, {"web.yaml": web(replicas=9), "hpa.yaml": ""})  # the autoscaler removed
    assert next(c for c in diff_states(head, plain).changes if c.key == WEB).note == ""
    # A replicas-only change in Git is nothing to apply while the autoscaler decides.
    obj = base.objects[WEB]
    assert autoscaling.applied_hash(base, obj) == autoscaling.applied_hash(head, head.objects[WEB])
    assert autoscaling.applied_hash(plain, plain.objects[WEB]) != autoscaling.applied_hash(
        state(repo, {"web.yaml": web(replicas=1), "hpa.yaml": ""}), obj)

    class Row:  # a stored object row, as detect reads it
        def __init__(self, key: ObjectKey, spec_hash: str) -> None:
            self.kind, self.namespace, self.name = key.kind, key.namespace, key.name
            self.spec_hash, self.body, self.annotations = spec_hash, {}, {}

    rows = [Row(k, autoscaling.applied_hash(base, o)) for k, o in base.objects.items()]
    assert detect(head, rows, [], {}, {}) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("files", "where", "message", "severity"),
    [
        pytest.param({"hpa.yaml": hpa(target="wbe")}, "/spec/scaleTargetRef/name", "is not in this revision",
                     Severity.WARNING, id="missing-target"),
        pytest.param({"hpa.yaml": hpa().replace("minReplicas: 1", "minReplicas: 9")}, "/spec/minReplicas",
                     "minReplicas 9 is above maxReplicas 4", Severity.ERROR, id="bounds"),
        pytest.param({"hpa.yaml": hpa(), "hpa2.yaml": hpa().replace("name: web, namespace", "name: two, namespace")},
                     "/spec/scaleTargetRef", "is also scaled by HorizontalPodAutoscaler", Severity.ERROR, id="two"),
        pytest.param({"hpa.yaml": hpa().replace("averageUtilization: 50", "averageValue: 100m")},
                     "/spec/metrics/0/resource/target", "a Utilization target needs `averageUtilization`",
                     Severity.ERROR, id="no-value"),
        pytest.param({"hpa.yaml": hpa().replace("name: cpu,", "name: memory,")},
                     "/spec/metrics/0/resource/target", "request no memory", Severity.ERROR, id="no-request"),
    ],
)
def test_validation_catches_what_the_schema_cannot(repo: GitRepo, files: dict[str, str], where: str, message: str,
                                                   severity: Severity) -> None:
    repo.commit("x", {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n", "web.yaml": web(),
                      **files})
    s = desired.load(open_repository(repo.path), None)
    found = [d for d in s.diagnostics if message in d.message]
    assert found, [d.format() for d in s.diagnostics]
    assert found[0].pointer == where and found[0].severity == severity and found[0].line > 0


def test_the_schema_refuses_metrics_gitorch_lacks(repo: GitRepo) -> None:
    bad = hpa().replace("- type: Resource", "- type: External")
    repo.commit("x", {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n", "web.yaml": web(),
                      "hpa.yaml": bad})
    s = desired.load(open_repository(repo.path), None)
    assert not s.ok and any("/spec/metrics/0/type" in d.format() for d in s.diagnostics)


DB = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - {name: db, command: [sleep, "1000"], resources: {requests: {memory: 100Mi}}}
"""

DB_HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: db, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: StatefulSet, name: db}
  maxReplicas: 5
  metrics:
    - type: ContainerResource
      containerResource: {name: memory, container: db, target: {type: AverageValue, averageValue: 100Mi}}
"""


def test_a_statefulset_scales_on_a_containers_memory(repo: GitRepo) -> None:
    s = state(repo, {"db.yaml": DB, "hpa.yaml": DB_HPA})
    first = plan(s, Observed(1000.0, (), NODES))
    assert [d.name for d in first.pods if d.owner.kind == "StatefulSet"] == ["db-0"]  # ordered: one at a time
    pods = tuple(PodState(d.name, "shop", "StatefulSet", "db", d.node, d.revision, "Running", True, created=0.0,
                          ready_since=0.0, ordinal=d.ordinal) for d in first.pods)
    pods = (*pods, replace(pods[0], name="db-1", ordinal=1))
    mib = 2**20
    usage = {("shop", p.name): PodUsage("shop", p.name, "n1", 1000.0, 15.0, (ContainerUsage("db", 0, 250 * mib),))
             for p in pods}
    key = ObjectKey("HorizontalPodAutoscaler", "shop", "db")
    second = plan(s, Observed(1015.0, pods, NODES, usage=usage))
    status = second.statuses[key]
    assert status.autoscaling["desiredReplicas"] == 5  # type: ignore[index]  # ceil(2 x 250/100) = 5
    assert status.autoscaling["currentMetrics"] == [{"type": "ContainerResource", "containerResource": {  # type: ignore[index]
        "name": "memory", "container": "db", "current": {"averageValue": 250 * mib}}}]
    assert "250Mi/100Mi" in status.message
    assert second.statuses[ObjectKey("StatefulSet", "shop", "db")].desired == 5
    assert [d.name for d in second.pods if d.owner.kind == "StatefulSet"] == ["db-0", "db-1", "db-2"]


def test_a_reviewed_plan_depends_on_the_autoscalers_counts() -> None:
    from gitorch.reconcile.reviewing import observed_hash

    plain = Observed(1.0, (), NODES)
    three = Observed(1.0, (), NODES, autoscalers={HPA_KEY: {"desiredReplicas": 3}})
    four = Observed(1.0, (), NODES, autoscalers={HPA_KEY: {"desiredReplicas": 4}})
    assert len({observed_hash(plain), observed_hash(three), observed_hash(four)}) == 3
    assert observed_hash(three) == observed_hash(replace(three, now=99.0))


def test_a_due_sync_waits_briefly_for_the_sample_it_is_due_for(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(replicas=1), "hpa.yaml": hpa()})
    first = plan(s, Observed(1000.0, (), NODES))
    pods, usage = running(first, 1014.0, 20, since=0.0)  # idle: 40% of the target, nothing to do
    synced = plan(s, Observed(1015.0, pods, NODES, autoscalers=recorded(first), usage=usage))
    assert synced.statuses[HPA_KEY].autoscaling["sampleTime"] == 1014.0  # type: ignore[index]
    hot = {k: replace(u, timestamp=1029.5, containers=(ContainerUsage("web", 100, 1),)) for k, u in usage.items()}
    # Due (a period on, less the slack) but no newer sample yet: wait for it, a pass in half a second.
    waiting = plan(s, Observed(1029.5, pods, NODES, autoscalers=recorded(synced), usage=usage))
    assert waiting.requeue_after == 0.5 and not waiting.events
    # It came: the sync reads it and scales at once.
    got = plan(s, Observed(1030.0, pods, NODES, autoscalers=recorded(synced), usage=hot))
    assert [e.reason for e in got.events] == ["SuccessfulRescale"]
    # A node that stays silent does not hold the autoscaler up more than a few seconds.
    late = plan(s, Observed(1034.0, pods, NODES, autoscalers=recorded(synced), usage=usage))
    assert late.statuses[HPA_KEY].autoscaling["lastSync"] == 1034.0  # type: ignore[index]

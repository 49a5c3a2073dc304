"""VerticalPodAutoscalers (updateMode "Off"): validation, the recommender fed from samples with its
statuses in the plan, checkpoints in the store with their retention, and `gitorch recommend`
making a patch that `git apply` takes and that validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.model.objects import ObjectKey
from gitorch.model.quantities import to_bytes
from gitorch.model.recommendations import DAY
from gitorch.model.usage import ContainerUsage, PodUsage
from gitorch.reconcile.planning import Observed, PodState, plan
from gitorch.reconcile.recommending import Recommender
from gitorch.source import desired
from gitorch.source.git import open_repository
from gitorch.store.database import Store
from tests.gitrepo import GitRepo, git
from tests.samples import gitorch

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
VPA_KEY = ObjectKey("VerticalPodAutoscaler", "shop", "web")
T0 = 20833 * DAY

WEB = """\
# The shop's web server.
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web  # serves the shop
          command: [python3, -m, http.server]
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: 200m}
        - name: log
          command: [sleep, infinity]
"""


def vpa(extra: str = "", mode: str = 'updatePolicy: {updateMode: "Off"}', target: str = "web") -> str:
    return f"""\
apiVersion: autoscaling.k8s.io/v1
kind: VerticalPodAutoscaler
metadata: {{name: web, namespace: shop}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}
  {mode}
{extra}"""


HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: shop}
spec:
  scaleTargetRef: {kind: Deployment, name: web}
  maxReplicas: 3
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 60}}
"""

POLICY = """\
  resourcePolicy:
    containerPolicies:
      - containerName: log
        mode: "Off"
      - containerName: "*"
        minAllowed: {cpu: 50m}
        controlledValues: RequestsAndLimits
"""


def load(repo: GitRepo, files: dict[str, str]) -> desired.DesiredState:
    repo.commit("x", {"ns.yaml": NS, "web.yaml": WEB, **files})
    return desired.load(open_repository(repo.path), None)


@pytest.mark.parametrize(
    ("files", "where", "message", "severity"),
    [
        pytest.param({"vpa.yaml": vpa(mode='updatePolicy: {updateMode: "Auto"}')}, "/spec/updatePolicy/updateMode",
                     "gitorch only recommends", Severity.ERROR, id="auto"),
        pytest.param({"vpa.yaml": vpa(mode="")}, "/spec", "Kubernetes' default is \"Auto\"", Severity.ERROR,
                     id="no-mode"),
        pytest.param({"vpa.yaml": vpa(target="wbe")}, "/spec/targetRef/name", "is not in this revision",
                     Severity.WARNING, id="missing-target"),
        pytest.param({"vpa.yaml": vpa(POLICY.replace("containerName: log", "containerName: lgo"))},
                     "/spec/resourcePolicy/containerPolicies/0/containerName", "has no container 'lgo'",
                     Severity.ERROR, id="unknown-container"),
        pytest.param({"vpa.yaml": vpa(POLICY.replace("minAllowed: {cpu: 50m}",
                                                     "minAllowed: {cpu: 2}\n        maxAllowed: {cpu: 1}"))},
                     "/spec/resourcePolicy/containerPolicies/1/minAllowed/cpu", "is above maxAllowed",
                     Severity.ERROR, id="min-above-max"),
        pytest.param({"vpa.yaml": vpa(), "vpa2.yaml": vpa().replace("name: web, namespace", "name: two, namespace")},
                     "/spec/targetRef", "also has VerticalPodAutoscaler", Severity.ERROR, id="two"),
        pytest.param({"vpa.yaml": vpa(), "hpa.yaml": HPA}, "/spec/targetRef",
                     "is also scaled by HorizontalPodAutoscaler web", Severity.WARNING, id="with-an-hpa"),
        pytest.param({"vpa.yaml": vpa("  recommenders: [{name: custom}]\n")}, "/spec/recommenders",
                     "no effect", Severity.WARNING, id="recommenders"),
    ],
)
def test_validation(repo: GitRepo, files: dict[str, str], where: str, message: str, severity: Severity) -> None:
    s = load(repo, files)
    found = [d for d in s.diagnostics if message in d.message]
    assert found, [d.format() for d in s.diagnostics]
    assert found[0].pointer == where and found[0].severity == severity and found[0].line > 0


def _pods(n: int = 2) -> list[PodState]:
    return [PodState(f"web-{i}", "shop", "Deployment", "web", "n1", "r1", "Running", True) for i in range(n)]


def _samples(pod: str, count: int, cpu: int = 500, memory: int = 400_000_000, start: float = T0) -> list[PodUsage]:
    return [PodUsage("shop", pod, "n1", start + 60 * i, 60.0,
                     (ContainerUsage("web", cpu, memory), ContainerUsage("log", 1, 1_000_000)))
            for i in range(count)]


def test_recommender_feeds_statuses_into_the_plan(repo: GitRepo) -> None:
    state = load(repo, {"vpa.yaml": vpa(POLICY)})
    assert state.ok, [d.format() for d in state.diagnostics]
    r = Recommender()
    history = {("shop", "web-0"): _samples("web-0", 30), ("shop", "web-1"): _samples("web-1", 30)}
    r.feed(state, _pods(), lambda k: history.get(k, []), T0 + 1800)
    r.feed(state, _pods(), lambda k: history.get(k, []), T0 + 1800)  # samples already counted are not again
    assert list(r.aggregates) == [("shop", "web", "web")]  # the log container's mode is Off
    assert r.aggregates[("shop", "web", "web")].samples == 60
    statuses = r.statuses(state, _pods())
    p = plan(state, Observed(T0 + 1800, (), (), recommendations=statuses))
    status = p.statuses[VPA_KEY]
    body = status.recommendation
    assert body is not None
    [web] = body["recommendation"]["containerRecommendations"]
    # 0.5 cores -> 580m and 400e6 bytes -> 455Mi (tests/test_recommendations.py works these out); the
    # pod minimum is shared by the two containers, and minAllowed 50m is below the target.
    assert web["containerName"] == "web" and web["target"] == {"cpu": "580m", "memory": "455Mi"}
    assert web["uncappedTarget"] == web["target"]
    types = {c["type"]: c["status"] for c in status.conditions}
    assert types == {"RecommendationProvided": "True", "LowConfidence": "True"}
    assert "web: cpu 580m, memory 455Mi" in status.message
    assert p.requeue_after is not None


def test_an_oom_kill_raises_the_memory_recommendation(repo: GitRepo) -> None:
    """A sample that says the container's previous instance was OOM-killed adds VPA's bumped peak:
    the request (64Mi) or the interval's peak, whichever is more, plus 100Mi."""
    state = load(repo, {"vpa.yaml": vpa(POLICY)})
    quiet = {("shop", "web-0"): _samples("web-0", 30, memory=50 * 2**20)}
    r = Recommender()
    r.feed(state, _pods(1), lambda k: quiet.get(k, []), T0 + 1800)
    before = r.statuses(state, _pods(1))[VPA_KEY]["recommendation"]["containerRecommendations"][0]["target"]
    killed = PodUsage("shop", "web-0", "n1", T0 + 1860, 60.0,
                      (ContainerUsage("web", 500, 50 * 2**20, last_oom=T0 + 1830), ContainerUsage("log", 1, 1)))
    again = {("shop", "web-0"): [*quiet[("shop", "web-0")], killed]}
    r.feed(state, _pods(1), lambda k: again.get(k, []), T0 + 1860)
    r.feed(state, _pods(1), lambda k: again.get(k, []), T0 + 1860)  # the same kill is counted once
    after = r.statuses(state, _pods(1))[VPA_KEY]["recommendation"]["containerRecommendations"][0]["target"]
    # max(64Mi, 50Mi) + 100Mi = 164Mi, plus the 15% margin
    assert to_bytes(after["memory"]) >= int(164 * 2**20 * 1.15) > to_bytes(before["memory"]), (before, after)
    assert after["cpu"] == before["cpu"]



    state = load(repo, {"vpa.yaml": vpa()})
    statuses = Recommender().statuses(state, [])
    conditions = {c["type"]: c for c in statuses[VPA_KEY]["conditions"]}
    assert conditions["RecommendationProvided"]["status"] == "False"
    assert "no usage samples yet" in conditions["RecommendationProvided"]["message"]
    assert conditions["NoPodsMatched"]["status"] == "True"
    assert "recommendation" not in statuses[VPA_KEY]


def test_checkpoints_survive_a_restart_and_follow_retention(repo: GitRepo, tmp_path: Path) -> None:
    state = load(repo, {"vpa.yaml": vpa()})
    r = Recommender()
    r.feed(state, _pods(1), lambda k: _samples("web-0", 30), T0 + 1800)
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    store.save_checkpoints(r.checkpoints())
    rows = store.checkpoints()
    assert [k for k, _ in rows] == [("shop", "web", "log"), ("shop", "web", "web")]
    again = Recommender()
    assert again.restore([*rows, (("shop", "web", "x"), {"version": "v0"})]) == 2  # a bad one is dropped
    assert again.statuses(state, _pods(1)) == r.statuses(state, _pods(1))
    # The container leaves Git: its history goes; the autoscaler leaves: all of it goes.
    one = load(repo, {"vpa.yaml": vpa(), "web.yaml": WEB.split("        - name: log")[0]})
    again.retain(one, T0 + 1800)
    assert list(again.checkpoints()) == [("shop", "web", "web")]
    again.retain(load(repo, {"vpa.yaml": vpa(target="other")}), T0 + 1800)
    assert again.checkpoints() == {}
    # No sample for 8 days: forgotten.
    r.retain(state, T0 + 1800 + 8 * DAY)
    assert r.checkpoints() == {}
    store.save_checkpoints({})
    assert store.checkpoints() == []
    store.close()


def test_recommend_prints_a_patch_git_applies(repo: GitRepo) -> None:
    state = load(repo, {"vpa.yaml": vpa(POLICY)})
    r = Recommender()
    history = {("shop", "web-0"): _samples("web-0", 30)}
    r.feed(state, _pods(1), lambda k: history.get(k, []), T0 + 1800)
    body = r.statuses(state, _pods(1))[VPA_KEY]
    out = gitorch("recommend", cwd=repo.path)
    assert out.returncode == 1 and "no VerticalPodAutoscaler in the store" in out.stderr
    import os

    store = Store.open(f"sqlite:///{Path(os.environ['GITORCH_STATE_DIR']) / 'gitorch.db'}")
    store.upsert_object_status("VerticalPodAutoscaler", "shop", "web", body={"manifest": {}})
    store.close()
    out = gitorch("recommend", cwd=repo.path)
    assert out.returncode == 1 and "no recommendation yet" in out.stderr
    store = Store.open(f"sqlite:///{Path(os.environ['GITORCH_STATE_DIR']) / 'gitorch.db'}")
    store.upsert_object_status("VerticalPodAutoscaler", "shop", "web", body={"recommendation": body})
    store.close()
    out = gitorch("recommend", cwd=repo.path)
    assert out.returncode == 0, out.stderr
    patch = out.stdout
    assert "-            requests: {cpu: 100m, memory: 64Mi}" in patch
    assert "+            requests: {cpu: 580m, memory: 455Mi}" in patch
    assert "+            limits: {cpu: 1160m}" in patch  # RequestsAndLimits: the limit keeps its ratio (2x)
    git("apply", "--check", "-", cwd=repo.path, input=patch)
    git("apply", "-", cwd=repo.path, input=patch)
    text = (repo.path / "web.yaml").read_text()
    assert "# The shop's web server." in text and "# serves the shop" in text  # comments kept
    repo.commit("resize web", {})
    assert gitorch("validate", cwd=repo.path).returncode == 0
    md = gitorch("recommend", "--format", "markdown", cwd=repo.path)
    assert md.returncode == 0 and "| web | cpu | 580m | 580m |" in md.stdout
    assert "already match" in md.stdout
    assert json.loads(gitorch("get", "vpa", "-o", "json", cwd=repo.path).stdout)[0]["cpu"] == "580m"
    described = gitorch("describe", "vpa/web", "-n", "shop", cwd=repo.path).stdout
    assert "Uncapped Target:" in described and "cpu 580m, memory 455Mi" in described

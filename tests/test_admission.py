"""LimitRange and ResourceQuota, as Kubernetes' admission plugins: defaults reach the pods,
bounds and caps are validation errors at file:line in Kubernetes' words, and pods beyond a
quota stay Pending with Kubernetes' message."""

from __future__ import annotations

from fractions import Fraction

from gitorch.model import admission
from gitorch.model.diagnostics import Severity
from gitorch.reconcile.planning import Observed, plan
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.test_planning import NODES, NS, as_observed, deployment

LIMITS = """\
apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: shop}
spec:
  limits:
    - type: Container
      default: {cpu: 500m, memory: 256Mi}
      defaultRequest: {cpu: 100m}
      max: {cpu: "1"}
"""

QUOTA = """\
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: shop}
spec:
  hard: {requests.cpu: "1", pods: "4"}
"""


def web(replicas: int, version: str = "v1", resources: str = "", surge: int = 1, unavailable: int = 0) -> str:
    """test_planning's Deployment (flow style), with `resources` given as a flow mapping."""
    return deployment(replicas, version, surge, unavailable, resources)


def load(repo: GitRepo, files: dict[str, str]) -> desired.DesiredState:
    repo.commit("x", {"ns.yaml": NS, **files})
    return desired.load(open_repository(repo.path), None)


def errors(state: desired.DesiredState) -> list[str]:
    return [d.format() for d in state.diagnostics if d.severity is Severity.ERROR]


# --- the model ----------------------------------------------------------------------------


def test_defaults_fill_what_a_container_leaves_out_as_the_limitranger_does() -> None:
    item = {"type": "Container", "max": {"memory": "1Gi"}, "default": {"cpu": "500m"},
            "defaultRequest": {"cpu": "100m"}}
    items = admission.limit_items([("d", {"limits": [item]})])
    bare = {"spec": {"containers": [{"name": "a"}]}}
    got = admission.defaulted_template(bare, items)["spec"]["containers"][0]["resources"]
    # memory: default from max, request from that default; cpu: both given.
    assert got == {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "1Gi"}}
    # A limit given and no request: the API server made the limit the request; no default request.
    given = {"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "2"}}}]}}
    got = admission.defaulted_template(given, items)["spec"]["containers"][0]["resources"]
    assert got == {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"memory": "1Gi"}}
    # Nothing to fill: the very same template.
    full = {"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                                                                 "requests": {"cpu": "1", "memory": "1Gi"}}}]}}
    assert admission.defaulted_template(full, items) is full


def test_violations_use_kubernetes_words() -> None:
    items = admission.limit_items([("r", {"limits": [
        {"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}, "maxLimitRequestRatio": {"cpu": "2"}},
        {"type": "Pod", "max": {"cpu": "1500m"}},
    ]})])
    tmpl = {"spec": {"containers": [
        {"name": "a", "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "500m", "memory": "32Mi"}}},
        {"name": "b", "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "64Mi"}}},
    ]}}
    got = [(v.pointer, v.message) for v in admission.limit_violations(tmpl, items)]
    assert ("/containers/0/resources/limits/cpu", "maximum cpu usage per Container is 1, but limit is 2") in got
    assert ("/containers/0/resources/requests/memory",
            "minimum memory usage per Container is 64Mi, but request is 32Mi") in got
    assert ("/containers/0/resources/limits/cpu",
            "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000") in got
    assert ("/containers", "maximum cpu usage per Pod is 1500m, but limit is 3") in got
    assert len(got) == 4, got


def test_quota_usage_and_the_exceeded_message() -> None:
    tmpl = {"spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always",
                                         "resources": {"requests": {"cpu": "100m"}}},
                                        {"name": "setup", "resources": {"requests": {"cpu": "2"}}}],
                     "containers": [{"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}}]}}
    usage = admission.pod_usage(tmpl)
    # The sidecar adds to the container; setup runs beside the sidecar only: max(600m, 2100m).
    assert usage["requests.cpu"] == Fraction(21, 10) and usage["limits.memory"] == 1 << 30 and usage["pods"] == 1
    q = admission.quota("compute", {"hard": {"cpu": "4", "limits.memory": "2Gi"}})
    used = {"requests.cpu": Fraction(3), "limits.memory": Fraction(1 << 30)}
    assert admission.exceeded(q, used, usage) == (
        "exceeded quota: compute, requested: cpu=2100m, used: cpu=3, limited: cpu=4"
    )
    assert admission.exceeded(q, {}, usage) is None
    assert admission.must_specify(q, {"spec": {"containers": [{"name": "x"}]}}) == [
        ("x", "requests.cpu"), ("x", "limits.memory")
    ]


# --- validation ---------------------------------------------------------------------------


def test_a_container_beyond_a_limitrange_is_an_error_at_its_line(repo: GitRepo) -> None:
    big = web(1, resources="{limits: {cpu: '2'}}")
    got = errors(load(repo, {"limits.yaml": LIMITS, "web.yaml": big}))
    assert got == [
        "web.yaml:12:117: /spec/template/spec/containers/0/resources/limits/cpu: pods of Deployment web are "
        "forbidden: maximum cpu usage per Container is 1, but limit is 2 (hint: keep within LimitRange defaults "
        "of namespace shop, or change it)"
    ]
    assert errors(load(repo, {"limits.yaml": LIMITS, "web.yaml": web(3)})) == []


def test_a_desired_state_beyond_its_quota_is_an_error_on_the_quota(repo: GitRepo) -> None:
    # With the LimitRange each pod requests 100m: 10 pods need 1 cpu, within; 5 pods pass pods: 4.
    assert errors(load(repo, {"limits.yaml": LIMITS, "q.yaml": QUOTA.replace('pods: "4"', 'pods: "10"'),
                              "web.yaml": web(10)})) == []
    got = errors(load(repo, {"limits.yaml": LIMITS, "q.yaml": QUOTA, "web.yaml": web(5)}))
    assert len(got) == 1 and got[0].startswith("q.yaml:5:35: /spec/hard/pods: namespace shop needs pods=5 once "
                                               "rolled out, over this quota's 4"), got
    # Without the LimitRange the quota on requests.cpu needs every container to say its request.
    got = errors(load(repo, {"limits.yaml": "", "q.yaml": QUOTA, "web.yaml": web(1)}))
    assert len(got) == 1 and "failed quota: compute: must specify requests.cpu for: web" in got[0], got


# --- planning: defaults reach the pods, and a rollout waits for the quota -----------------


def test_limitrange_defaults_reach_the_pod_spec_the_node_runs(repo: GitRepo) -> None:
    state = load(repo, {"limits.yaml": LIMITS, "web.yaml": web(1)})
    assert errors(state) == []
    p = plan(state, Observed(1000.0, (), NODES))
    (pod,) = p.pods
    assert pod.spec["containers"][0]["resources"] == {"cpuMillis": 500, "memoryBytes": 256 << 20}


def test_a_surge_pod_beyond_the_quota_stays_pending_with_kubernetes_message(repo: GitRepo) -> None:
    now = 1000.0
    res = "{requests: {cpu: 500m}}"
    quota = QUOTA.replace('pods: "4"', 'pods: "10"')
    v1 = load(repo, {"q.yaml": quota, "web.yaml": web(2, "v1", res)})
    assert errors(v1) == []
    pods = as_observed(plan(v1, Observed(now, (), NODES)), now)
    assert len(pods) == 2 and all(p.node for p in pods)
    # v2 with maxSurge 1: a third pod would need 1500m of the 1 cpu; it waits, Pending, and the
    # old pods keep running.
    v2 = load(repo, {"q.yaml": quota, "web.yaml": web(2, "v2", res)})
    p = plan(v2, Observed(now, pods, NODES))
    waiting = [d for d in p.pods if d.node is None]
    assert len(waiting) == 1 and p.removed == []
    assert waiting[0].message == (
        f'pods "{waiting[0].name}" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, '
        "used: requests.cpu=1, limited: requests.cpu=1"
    )
    assert any(e.reason == "FailedCreate" for e in p.events)
    # With maxUnavailable 1 instead, an old pod goes first and the new one fits.
    v2b = load(repo, {"q.yaml": quota, "web.yaml": web(2, "v2", res, surge=0, unavailable=1)})
    first = plan(v2b, Observed(now, pods, NODES))
    assert len(first.removed) == 1
    after = tuple(p for p in pods if p.name != first.removed[0].name)
    second = plan(v2b, Observed(now, after, NODES))
    assert all(d.node for d in second.pods) and len(second.pods) == 2

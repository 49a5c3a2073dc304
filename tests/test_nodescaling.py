"""The cluster autoscaler over standby Nodes (reconcile/nodescaling.py and its part of planning):
which standby nodes a scale-up activates (the fewest, simulated with the scheduler), which pods
trigger one, and when an activated node goes back to standby (the clock is the plan's `now`)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gitorch.model.objects import ObjectKey
from gitorch.reconcile import nodescaling
from gitorch.reconcile.nodescaling import ACTIVE, SCALING_DOWN, STANDBY, NodeScaling
from gitorch.reconcile.planning import NodeState, Observed, Plan, PodState, plan
from gitorch.reconcile.scheduler import NodeInfo, PodInfo, Resources
from gitorch.source import desired
from tests.gitrepo import GitRepo
from tests.test_planning import as_observed, state

GI = 1 << 30


def node(name: str, cpu: int, *, labels: dict[str, str] | None = None, standby: bool = False,
         disabled: bool = False) -> NodeState:
    return NodeState(NodeInfo(name, labels or {}, Resources(cpu, 8 * GI, 110, 100 * GI)), standby=standby,
                     scale_down_disabled=disabled)


def pod(name: str, cpu: int, selector: dict[str, str] | None = None, priority: int = 0) -> PodInfo:
    return PodInfo(name, "shop", {"app": "web"}, Resources(cpu, 0, 1, 0), node_selector=selector or {},
                   owner="Deployment/shop/web", priority=priority)


# --- choose: the simulation ------------------------------------------------------------------


def test_the_fewest_standby_nodes_that_fit_every_pending_pod_are_chosen() -> None:
    active = [node("n1", 1000).info]
    small = [node(f"s{i}", 1000).info for i in (1, 3, 4)]
    big = node("s2", 4000).info
    pending = [pod(f"web-{i}", 800) for i in range(3)]
    up = nodescaling.choose(pending, active, [*small, big], [(pod("busy", 1000), "n1")])
    assert up is not None and up.nodes == ("s2",)  # one big node instead of three small ones
    assert {d.node for d in up.decisions} == {"s2"} and len(up.helped) == 3


def test_a_tie_goes_to_the_least_waste_then_to_the_name() -> None:
    pending = [pod("web-0", 900)]
    up = nodescaling.choose(pending, [], [node("a", 2000).info, node("b", 1000).info])
    assert up is not None and up.nodes == ("b",)  # 10% idle beats 55%
    up = nodescaling.choose(pending, [], [node("d", 1000).info, node("c", 1000).info])
    assert up is not None and up.nodes == ("c",)


def test_when_not_all_pods_can_run_the_fewest_nodes_for_as_many_as_can() -> None:
    pending = [pod("web-0", 900), pod("web-1", 900), pod("huge", 9000)]
    up = nodescaling.choose(pending, [], [node("s1", 1000).info, node("s2", 1000).info, node("s3", 1000).info])
    assert up is not None and up.nodes == ("s1", "s2") and len(up.helped) == 2


def test_past_the_simulation_budget_nodes_are_added_greedily() -> None:
    pending = [pod(f"web-{i}", 900) for i in range(3)]
    candidates = [node(f"s{i}", 1000).info for i in range(6)] + [node("big", 3000).info]
    up = nodescaling.choose(pending, [], candidates, max_simulations=3)
    assert up is not None and up.nodes == ("big",)


def test_pods_on_active_nodes_still_constrain_where_pending_pods_may_go() -> None:
    zone = "topology.kubernetes.io/zone"
    active = [node("n1", 1000, labels={zone: "a"}).info]
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": zone}]}}
    pending = [replace(pod("web-1", 500), affinity=anti)]
    bound = [(pod("web-0", 900), "n1"), *((replace(pod(f"other-{i}", 1), labels={"app": "x"}), "n1")
                                          for i in range(50))]
    candidates = [node("s1", 1000, labels={zone: "a"}).info, node("s2", 4000, labels={zone: "b"}).info]
    up = nodescaling.choose(pending, active, candidates, bound)
    assert up is not None and up.nodes == ("s2",)  # s1 would waste less, but zone a already has a web pod
    assert nodescaling._constraining(pending, bound, set()) == [bound[0]]  # the 50 others take no part


@pytest.mark.parametrize(
    ("pending", "why"),
    [
        pytest.param([pod("web-0", 900, {"disk": "ssd"})], "no standby node has the label", id="node-selector"),
        pytest.param([pod("web-0", 5000)], "larger than any standby node", id="too-big"),
        pytest.param([pod("web-0", 900, priority=-11)], "expendable: below the priority cutoff", id="expendable"),
    ],
)
def test_a_pod_no_standby_node_would_take_triggers_nothing(pending: list[PodInfo], why: str) -> None:
    active = [node("n1", 1000, labels={"disk": "ssd"}).info]
    bound = [(pod("busy", 1000), "n1")]
    assert nodescaling.choose(pending, active, [node("s1", 1000).info], bound) is None, why


# --- planning: scale-up in a pass -------------------------------------------------------------


def web(replicas: int, cpu: str = "800m", extra: str = "", selector: str = "", kind: str = "Deployment") -> str:
    more = "\n  serviceName: web" if kind == "StatefulSet" else ""
    return f"""\
apiVersion: apps/v1
kind: {kind}
metadata: {{name: web, namespace: shop}}
spec:
  replicas: {replicas}{more}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}{extra}}}
    spec:{selector}
      containers:
        - {{name: web, command: [sleep, "1000"], resources: {{requests: {{cpu: {cpu}, memory: 64Mi}}}}}}
"""


DAEMON = """\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
        - {name: agent, command: [sleep, "1000"], resources: {requests: {cpu: 10m, memory: 8Mi}}}
"""

CLUSTER = """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: lab}
spec:
  autoscaling: {scaleDownUnneededTime: 2m, scaleDownUtilizationThreshold: 0.5}
"""

NODES = (node("n1", 1000), node("s1", 1000, standby=True), node("s2", 2000, standby=True))
NODE_KEY = ObjectKey("Node", "", "s1")


def scaling(p: Plan) -> dict[str, NodeScaling]:
    out = {}
    for key, status in p.statuses.items():
        if key.kind == "Node" and status.scaling is not None:
            rec = NodeScaling.from_json(status.scaling)
            assert rec is not None
            out[key.name] = rec
    return out


def observed(now: float, pods: tuple[PodState, ...], nodes: tuple[NodeState, ...], p: Plan | None) -> Observed:
    kept = {name: rec.to_json() for name, rec in scaling(p).items()} if p is not None else {}
    return Observed(now, pods, nodes, node_scaling=kept)


def test_standby_nodes_run_no_pods_not_even_daemonset_pods(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(1), "ds.yaml": DAEMON})
    p = plan(s, observed(1000.0, (), NODES, None))
    assert {d.node for d in p.pods} == {"n1"}  # web-0 and n1's agent
    assert {n: r.state for n, r in scaling(p).items()} == {"s1": STANDBY, "s2": STANDBY}
    assert p.standby == {"s1", "s2"}
    assert p.statuses[NODE_KEY].message.startswith("Standby")


def test_pods_pending_for_lack_of_room_activate_the_fewest_standby_nodes_in_the_same_pass(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(3), "ds.yaml": DAEMON})
    p = plan(s, observed(1000.0, (), NODES, None))
    # n1 takes one 800m pod; the two others fit on s2 (2000m) alone: one node, not s1 and s2.
    assert sorted(d.node or "" for d in p.pods if d.owner.kind == "Deployment") == ["n1", "s2", "s2"]
    states = scaling(p)
    assert states["s2"].state == ACTIVE and states["s2"].reason.startswith("scaled up for pod shop/web-")
    assert states["s1"].state == STANDBY and p.standby == {"s1"}
    assert any(e.key == ObjectKey("Node", "", "s2") and e.reason == "TriggeredScaleUp" for e in p.events)
    assert any(e.key.kind == "Deployment" and e.reason == "TriggeredScaleUp" for e in p.events)
    assert not any(e.reason == "FailedScheduling" for e in p.events)
    # Activated: its DaemonSet pod starts with the next pass.
    nxt = plan(s, observed(1001.0, as_observed(p, 1001.0), NODES, p))
    assert {d.node for d in nxt.pods if d.owner.kind == "DaemonSet"} == {"n1", "s2"}


def test_a_pod_pending_on_a_node_selector_no_standby_node_matches_activates_nothing(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(1, selector="\n      nodeSelector: {disk: ssd}")})
    p = plan(s, observed(1000.0, (), NODES, None))
    assert [d.node for d in p.pods] == [None]
    assert {r.state for r in scaling(p).values()} == {STANDBY}
    assert any(e.reason == "NotTriggerScaleUp" and "wouldn't fit on any of the 2 standby node(s)" in e.message
               for e in p.events)


def test_a_standby_node_that_does_not_answer_is_not_activated(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(2)})
    nodes = (NODES[0], replace(NODES[1], reachable=False), replace(NODES[2], reachable=False, lost=True))
    p = plan(s, observed(1000.0, (), nodes, None))
    assert sorted(d.node or "-" for d in p.pods) == ["-", "n1"]
    assert {r.state for r in scaling(p).values()} == {STANDBY}


def test_a_standby_node_already_running_pods_starts_active(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(1)})
    first = plan(s, Observed(1000.0, (), (node("n1", 1000), node("s1", 1000))))
    on_s1 = tuple(replace(p, node="s1") for p in as_observed(first, 1000.0))
    p = plan(s, observed(1001.0, on_s1, (node("n1", 1000), node("s1", 1000, standby=True)), None))
    assert scaling(p)["s1"].state == ACTIVE and [d.node for d in p.pods] == ["s1"]


# --- planning: scale-down, with an injected clock ------------------------------------------


def activated(repo: GitRepo, files: dict[str, str], replicas: int = 3) -> tuple[desired.DesiredState, Plan]:
    """A pass that activated s2 for `replicas` 800m pods, then the pods as running."""
    s = state(repo, {"cluster.yaml": CLUSTER, "web.yaml": web(replicas), **files})
    p = plan(s, observed(1000.0, (), NODES, None))
    assert scaling(p)["s2"].state == ACTIVE
    return s, p


def scale_to(repo: GitRepo, replicas: int, files: dict[str, str] | None = None, **web_args: str) -> (
        desired.DesiredState):
    return state(repo, {"cluster.yaml": CLUSTER, "web.yaml": web(replicas, **web_args), **(files or {})})


def test_an_unneeded_node_drains_after_the_unneeded_time_then_returns_to_standby(repo: GitRepo) -> None:
    _, p = activated(repo, {})
    # Scaled down in Git to 2 pods of 200m: s2's one pod fits on n1, and s2 is 10% used.
    s = scale_to(repo, 2, cpu="200m")
    pods = tuple(replace(x, revision=x.revision) for x in as_observed(p, 1000.0))
    t0 = 1100.0
    p1 = plan(s, observed(t0, pods, NODES, p))
    pods = as_observed(p1, t0)
    on_s2 = [x.name for x in pods if x.node == "s2"]
    assert on_s2, "a pod of the new revision stays on s2"
    rec = scaling(p1)["s2"]
    assert rec.state == ACTIVE and rec.unneeded_since == t0
    assert p1.requeue_after == pytest.approx(120.0)  # the Cluster's 2m
    # Just short of the unneeded time: still active, still counting from t0.
    p2 = plan(s, observed(t0 + 119, pods, NODES, p1))
    assert scaling(p2)["s2"] == rec
    assert p2.statuses[ObjectKey("Node", "", "s2")].message == p1.statuses[ObjectKey("Node", "", "s2")].message
    # Past it: drained (tainted, unschedulable), its pod evicted and replaced on n1.
    p3 = plan(s, observed(t0 + 120, pods, NODES, p2))
    assert scaling(p3)["s2"].state == SCALING_DOWN
    assert any(e.reason == "ScaleDown" and "toBeDeleted" in e.message for e in p3.events)
    p4 = plan(s, observed(t0 + 121, pods, NODES, p3))
    assert {x.name for x in p4.removed} == set(on_s2)
    assert {d.node for d in p4.pods} == {"n1"}
    assert scaling(p4)["s2"].state == STANDBY and "s2" in p4.standby
    assert any(e.reason == "ScaleDown" and "back to standby" in e.message for e in p4.events)


def test_a_node_used_again_before_the_unneeded_time_starts_counting_anew(repo: GitRepo) -> None:
    _, p = activated(repo, {})
    s = scale_to(repo, 2, cpu="200m")
    p1 = plan(s, observed(1100.0, as_observed(p, 1100.0), NODES, p))
    assert scaling(p1)["s2"].unneeded_since == 1100.0
    busy = scale_to(repo, 3)  # back to 3 x 800m: s2 holds two of them
    p2 = plan(busy, observed(1150.0, as_observed(p1, 1150.0), NODES, p1))
    assert scaling(p2)["s2"].state == ACTIVE and scaling(p2)["s2"].unneeded_since is None


def test_a_node_whose_pods_fit_nowhere_else_is_needed(repo: GitRepo) -> None:
    _, p = activated(repo, {})
    s = scale_to(repo, 2, cpu="900m")  # 45% of s2 but n1 has no room for a second 900m pod
    p1 = plan(s, observed(1100.0, as_observed(p, 1100.0), NODES, p))
    p2 = plan(s, observed(5000.0, as_observed(p1, 5000.0), NODES, p1))
    assert scaling(p2)["s2"].state == ACTIVE and scaling(p2)["s2"].unneeded_since is None


SAFE = "cluster-autoscaler.kubernetes.io/safe-to-evict"


@pytest.mark.parametrize(
    ("web_args", "nodes_disabled"),
    [
        pytest.param({"extra": f', annotations: {{"{SAFE}": "false"}}'}, False, id="safe-to-evict-false"),
        pytest.param({}, True, id="scale-down-disabled-annotation"),
    ],
)
def test_what_keeps_a_node_from_scaling_down(repo: GitRepo, web_args: dict[str, str], nodes_disabled: bool) -> None:
    _, p = activated(repo, {})
    nodes = (NODES[0], NODES[1], replace(NODES[2], scale_down_disabled=nodes_disabled))
    s = scale_to(repo, 2, cpu="200m", **web_args)
    p1 = plan(s, observed(1100.0, as_observed(p, 1100.0), nodes, p))
    p2 = plan(s, observed(9000.0, as_observed(p1, 9000.0), nodes, p1))
    assert scaling(p2)["s2"].state == ACTIVE and scaling(p2)["s2"].unneeded_since is None


def test_a_statefulset_pod_keeps_its_node(repo: GitRepo) -> None:
    s = state(repo, {"cluster.yaml": CLUSTER, "web.yaml": web(2, kind="StatefulSet")})
    p = plan(s, observed(1000.0, (), NODES, None))
    p = plan(s, observed(1001.0, as_observed(p, 1001.0), NODES, p))  # OrderedReady: one at a time
    assert sorted(d.node or "" for d in p.pods) == ["n1", "s1"]  # least waste: s1 (1000m) for 800m
    small = state(repo, {"cluster.yaml": CLUSTER, "web.yaml": web(2, cpu="200m", kind="StatefulSet")})
    p1 = plan(small, observed(1100.0, as_observed(p, 1100.0), NODES, p))
    p2 = plan(small, observed(9000.0, as_observed(p1, 9000.0), NODES, p1))
    assert scaling(p2)["s1"].state == ACTIVE and scaling(p2)["s1"].unneeded_since is None


@pytest.mark.parametrize(
    ("volume", "annotations", "blocks"),
    [
        pytest.param('{"name": "scratch", "emptyDir": {}}', {}, True, id="emptyDir"),
        pytest.param('{"name": "scratch", "emptyDir": {"medium": "Memory"}}', {}, False, id="emptyDir-in-memory"),
        pytest.param('{"name": "scratch", "emptyDir": {}}', {SAFE: "true"}, False, id="safe-to-evict-true"),
        pytest.param('{"name": "scratch", "hostPath": {"path": "/srv"}}',
                     {"cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes": "scratch"}, False,
                     id="local-volume-listed"),
        pytest.param('{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}', {SAFE: "true"}, True,
                     id="claim"),
    ],
)
def test_local_volumes_as_cluster_autoscaler_reads_them(volume: str, annotations: dict[str, str],
                                                          blocks: bool) -> None:
    template = {"metadata": {"annotations": annotations}, "spec": {"volumes": [json.loads(volume)]}}
    assert bool(nodescaling.blocker("web-0", "Deployment", template)) is blocks


def test_bare_pods_block_and_daemonset_owners_are_not_asked() -> None:
    assert "not backed by a controller" in nodescaling.blocker("p", "Pod", {})
    assert nodescaling.blocker("p", "Job", {}) == ""


# --- settings and state --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600.0), ("90s", 90.0), ("1m30s", 90.0), ("1h", 3600.0),
                                               ("1.5m", 90.0), ("500ms", 0.5)])
def test_durations_in_cluster_autoscalers_flag_format(text: str, seconds: float) -> None:
    assert nodescaling.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["10", "m", "10 m", "1d"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError):
        nodescaling.duration_seconds(text)


def test_settings_default_as_cluster_autoscaler() -> None:
    assert nodescaling.settings(None) == nodescaling.Settings(0.5, 600.0, True)
    got = nodescaling.settings({"autoscaling": {"scaleDownUtilizationThreshold": 0.3, "scaleDownUnneededTime": "30s",
                                                "scaleDownEnabled": False}})
    assert got == nodescaling.Settings(0.3, 30.0, False)


def test_the_kept_state_reads_back_and_refuses_garbage() -> None:
    rec = NodeScaling(ACTIVE, 10.0, "scaled up for pod shop/web-1", 20.0)
    assert NodeScaling.from_json(rec.to_json()) == rec
    assert NodeScaling.from_json({"state": "Sleeping"}) is None
    assert NodeScaling.from_json("Active") is None


# --- how the state shows: get nodes, the Kubernetes API ------------------------------------


def rows(state: str | None, **spec: object) -> tuple[object, object]:
    from types import SimpleNamespace

    record = SimpleNamespace(name="s1", facts={}, labels={}, capacity={}, allocatable={}, address="10.0.0.2",
                             conditions=[], ready=True, last_heartbeat=None, pod_cidr=None, taints=[],
                             agent_version="1")
    body: dict[str, object] = {"manifest": {"spec": spec}}
    if state is not None:
        body["scaling"] = {"state": state, "since": 1000.0, "reason": "scaled up for pod shop/web-1",
                           **({"unneededSince": 1500.0} if state == ACTIVE else {})}
    return record, SimpleNamespace(kind="Node", name="s1", body=body)


@pytest.mark.parametrize(
    ("state", "spec", "status", "taints"),
    [
        pytest.param(STANDBY, {}, "Ready,Standby", ["node.kubernetes.io/unschedulable"], id="standby"),
        pytest.param(SCALING_DOWN, {}, "Ready,SchedulingDisabled",
                     ["node.kubernetes.io/unschedulable", "ToBeDeletedByClusterAutoscaler"], id="scaling-down"),
        pytest.param(ACTIVE, {}, "Ready", ["DeletionCandidateOfClusterAutoscaler"], id="active-unneeded"),
        pytest.param(None, {"drain": True}, "Ready,SchedulingDisabled", ["node.kubernetes.io/unschedulable"],
                     id="drained-in-git"),
        pytest.param(None, {}, "Ready", [], id="plain"),
    ],
)
def test_nodes_show_the_autoscaler_in_get_nodes_and_the_kubernetes_api(
        state: str | None, spec: dict[str, object], status: str, taints: list[str]) -> None:
    from gitorch.server import kubeobjects
    from gitorch.store import summaries

    record, row = rows(state, **spec)
    assert summaries.node_status(record, row) == status  # type: ignore[arg-type]
    obj = kubeobjects.node(record, kubeobjects.Sources(), row)
    assert [t["key"] for t in obj["spec"].get("taints", [])] == taints
    assert obj["spec"].get("unschedulable", False) is ("SchedulingDisabled" in status or "Standby" in status)
    res = next(r for r in kubeobjects.RESOURCES if r.kind == "Node" and r.group == "")
    assert kubeobjects.table_cells(res, obj, None)[1] == status
    if state == ACTIVE:
        assert summaries.node_autoscaling_text(row).startswith(  # type: ignore[arg-type]
            "Active (scaled up for pod shop/web-1), unneeded for ")


# --- what plan says ----------------------------------------------------------------------------

NODE_YAML = """\
apiVersion: gitorch.dev/v1
kind: Node
metadata: {{name: {name}}}
spec: {{address: 10.0.0.{n}, capacity: {{cpu: "1"}}{extra}}}
"""


def test_plan_lists_the_standby_nodes_and_marks_the_change(repo: GitRepo) -> None:
    from gitorch.source.diffs import diff_states
    from gitorch.source.rendering import PlanReport, plan_markdown, plan_text

    base = state(repo, {"n1.yaml": NODE_YAML.format(name="n1", n=1, extra=""),
                        "s1.yaml": NODE_YAML.format(name="s1", n=2, extra="")})
    head = state(repo, {"s1.yaml": NODE_YAML.format(name="s1", n=2, extra=", standby: true")})
    changes = diff_states(base, head)
    s1 = next(c for c in changes.changes if c.key.name == "s1")
    assert "standby: runs no pods until the cluster autoscaler activates it" in s1.note
    report = PlanReport(base.revision, head.revision, changes, standby=("s1",))
    assert "Standby nodes: s1 (run no pods until pods fit on no active node" in plan_text(report)
    assert "Standby nodes: s1" in plan_markdown(report) and report.to_json()["standbyNodes"] == ["s1"]


def test_plan_against_the_cluster_shows_the_node_a_change_activates(repo: GitRepo) -> None:
    from gitorch.reconcile import reviewing
    from gitorch.source.diffs import diff_states

    s = state(repo, {"web.yaml": web(3)})
    preview = reviewing.cluster_preview(s, observed(1000.0, (), NODES, None), diff_states(None, s),
                                        reviewing.Holdings())
    first = preview.steps[0]
    assert [n for n, _ in first.nodes] == ["s2"] and first.nodes[0][1].startswith("TriggeredScaleUp: activated")
    assert sorted(node for _, node in first.started) == ["n1", "s2", "s2"]
    assert "    ^ node s2: TriggeredScaleUp: activated from standby" in reviewing.preview_text(preview)
    assert preview.converges


PDB_NONE = """\
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, maxUnavailable: 0}
"""


def test_a_drain_a_budget_blocks_fails_after_the_drain_timeout_and_the_node_stays_active(repo: GitRepo) -> None:
    s = state(repo, {"cluster.yaml": CLUSTER, "web.yaml": web(3), "pdb.yaml": PDB_NONE})
    p = plan(s, observed(1000.0, (), NODES, None))
    pods = as_observed(p, 1000.0)
    draining = {"s2": NodeScaling(SCALING_DOWN, 2000.0).to_json()}
    held = plan(s, Observed(2000.0 + nodescaling.DRAIN_TIMEOUT - 1, pods, NODES, node_scaling=draining))
    assert held.removed == [] and scaling(held)["s2"].state == SCALING_DOWN
    assert any(e.reason == "EvictionBlocked" for e in held.events)
    failed = plan(s, Observed(2000.0 + nodescaling.DRAIN_TIMEOUT, pods, NODES, node_scaling=draining))
    assert scaling(failed)["s2"].state == ACTIVE
    assert any(e.reason == "ScaleDownFailed" and e.type == "Warning" and "stays active" in e.message
               for e in failed.events)


def test_pods_that_need_a_node_being_scaled_down_cancel_its_scale_down(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(1)})
    p = plan(s, Observed(1000.0, (), NODES))
    draining = {"s1": NodeScaling(SCALING_DOWN, 1000.0).to_json(), "s2": NodeScaling(STANDBY, 900.0).to_json()}
    more = state(repo, {"web.yaml": web(2)})
    got = plan(more, Observed(1001.0, as_observed(p, 1001.0), NODES, node_scaling=draining))
    assert scaling(got)["s1"].state == ACTIVE and scaling(got)["s2"].state == STANDBY
    assert any(e.reason == "TriggeredScaleUp" and "its scale-down cancelled" in e.message for e in got.events)


def test_a_node_manifest_says_standby_and_scale_down_disabled(repo: GitRepo) -> None:
    from gitorch.reconcile.controller import standby_fields

    extra = ", standby: true"
    s = state(repo, {"s1.yaml": NODE_YAML.format(name="s1", n=2, extra=extra).replace(
        "metadata: {name: s1}",
        'metadata: {name: s1, annotations: {cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"}}'),
        "s2.yaml": NODE_YAML.format(name="s2", n=3, extra="")})
    assert standby_fields(s.get("Node", "", "s1")) == (True, True)
    assert standby_fields(s.get("Node", "", "s2")) == (False, False)


def test_a_bad_unneeded_time_is_a_validation_error_with_the_fix(repo: GitRepo) -> None:
    from gitorch.source.git import open_repository

    repo.commit("x", {"cluster.yaml": CLUSTER.replace("scaleDownUnneededTime: 2m", "scaleDownUnneededTime: 2 min")})
    s = desired.load(open_repository(repo.path), None)
    shown = [d.format() for d in s.diagnostics]
    assert any(d.startswith("cluster.yaml:5:") and "/spec/autoscaling/scaleDownUnneededTime" in d
               and "10m, 90s or 1m30s" in d for d in shown), shown


def test_a_lost_active_node_s_pods_bring_a_standby_node_into_use(repo: GitRepo) -> None:
    s = state(repo, {"web.yaml": web(1)})
    p = plan(s, observed(1000.0, (), NODES, None))
    assert [d.node for d in p.pods] == ["n1"]
    gone = (replace(NODES[0], reachable=False, lost=True, lost_since=1000.0), *NODES[1:])
    after = plan(s, observed(2000.0, as_observed(p, 1000.0), gone, p))
    assert [d.node for d in after.pods] == ["s1"] and scaling(after)["s1"].state == ACTIVE

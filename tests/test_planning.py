"""The pure planner: rollout budgets, scaling, pruning, lost nodes and CronJob runs, without any node."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gitorch.model.objects import HIDDEN
from gitorch.reconcile import podspecs
from gitorch.reconcile.planning import NodeState, Observed, Plan, PodState, plan
from gitorch.reconcile.scheduler import NodeInfo, Resources
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"


def deployment(replicas: int, version: str, surge: int = 1, unavailable: int = 0, resources: str = "") -> str:
    extra = f", resources: {resources}" if resources else ""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: {surge}, maxUnavailable: {unavailable}}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - {{name: web, command: [python3, -m, http.server], env: [{{name: V, value: "{version}"}}]{extra}}}
"""


CRON = """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "*/5 * * * *"
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - {name: report, command: [python3, -c, "print(1)"]}
"""

NODES = tuple(NodeState(NodeInfo(f"n{i}", {}, Resources(4000, 8 << 30, 110, 100 << 30))) for i in range(1, 4))


def state(repo: GitRepo, files: dict[str, str]) -> desired.DesiredState:
    repo.commit("x", {"ns.yaml": NS, **files})
    s = desired.load(open_repository(repo.path), None)
    assert s.ok, [d.format() for d in s.diagnostics]
    return s


def as_observed(p: Plan, now: float, ready: bool = True, phase: str = "Running") -> tuple[PodState, ...]:
    return tuple(
        PodState(
            d.name,
            d.owner.namespace,
            d.owner.kind,
            d.owner.name,
            d.node,
            d.revision,
            phase=phase,
            ready=ready,
            created=now,
            ordinal=d.ordinal,
        )
        for d in p.pods
    )


def test_first_pass_creates_and_spreads_replicas(repo: GitRepo) -> None:
    p = plan(state(repo, {"web.yaml": deployment(3, "v1")}), Observed(1000.0, (), NODES))
    assert len(p.pods) == 3
    assert len({d.node for d in p.pods}) == 3
    assert p.statuses[next(iter(p.statuses))].health == "Progressing"


def test_rollout_never_drops_below_the_budget(repo: GitRepo) -> None:
    now = 1000.0
    v1 = plan(state(repo, {"web.yaml": deployment(3, "v1")}), Observed(now, (), NODES))
    pods = as_observed(v1, now)
    s2 = state(repo, {"web.yaml": deployment(3, "v2", surge=1, unavailable=0)})
    for _ in range(10):
        p = plan(s2, Observed(now, pods, NODES))
        running = [d for d in p.pods if d.node]
        removed = {r.name for r in p.removed}
        ready_after = [x for x in pods if x.ready and x.name not in removed]
        assert len(ready_after) >= 3  # maxUnavailable 0
        assert len(running) <= 4  # maxSurge 1
        # Next observation: what this pass asked for, new pods ready.
        pods = as_observed(p, now)
        if p.converged or (all(d.revision == running[0].revision for d in running) and len(running) == 3):
            break
    final = plan(s2, Observed(now, pods, NODES))
    assert len(final.pods) == 3 and len({d.revision for d in final.pods}) == 1
    assert final.converged


def test_scale_down_removes_the_highest_indexes_and_pruning(repo: GitRepo) -> None:
    now = 1000.0
    p = plan(state(repo, {"web.yaml": deployment(4, "v1")}), Observed(now, (), NODES))
    pods = as_observed(p, now)
    down = plan(state(repo, {"web.yaml": deployment(2, "v1")}), Observed(now, pods, NODES))
    assert sorted(d.name[-1] for d in down.pods) == ["0", "1"]
    gone = plan(state(repo, {"web.yaml": ""}), Observed(now, pods, NODES))
    assert gone.pods == [] and len(gone.removed) == 4
    assert any(e.reason == "Pruned" for e in gone.events)


def test_pods_of_a_lost_node_are_replaced_elsewhere(repo: GitRepo) -> None:
    now = 1000.0
    s = state(repo, {"web.yaml": deployment(3, "v1")})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    lost = (NodeState(NODES[0].info, reachable=False, lost=True), *NODES[1:])
    p = plan(s, Observed(now, pods, lost))
    assert {r.node for r in p.removed} == {"n1"}
    assert len(p.pods) == 3 and "n1" not in {d.node for d in p.pods}


def test_a_pod_pending_for_want_of_room_is_placed_once_there_is_room(repo: GitRepo) -> None:
    """It stays the same pod (its row is updated), and gets a node on the pass that has one."""
    now = 1000.0
    s = state(repo, {"web.yaml": deployment(3, "v1")})
    tiny = tuple(NodeState(NodeInfo(f"n{i}", {}, Resources(4000, 8 << 30, 1, 100 << 30))) for i in (1, 2))
    first = plan(s, Observed(now, (), tiny))
    pending = [d for d in first.pods if d.node is None]
    assert len(pending) == 1 and "Too many pods" in pending[0].message
    pods = tuple(
        PodState(d.name, d.owner.namespace, d.owner.kind, d.owner.name, d.node, d.revision,
                 phase="Running" if d.node else "Pending", ready=d.node is not None, created=now, message=d.message)
        for d in first.pods
    )
    assert [d for d in plan(s, Observed(now, pods, tiny)).pods if d.node is None]  # still no room
    roomy = plan(s, Observed(now, pods, NODES))
    assert all(d.node for d in roomy.pods) and {d.name for d in roomy.pods} == {d.name for d in first.pods}
    assert roomy.removed == []


def tolerating(text: str, toleration: str) -> str:
    spec = "    spec:\n      containers:"
    return text.replace(spec, f"    spec:\n      tolerations: [{toleration}]\n      containers:", 1)


def test_toleration_seconds_keep_pods_on_a_lost_node_until_they_pass(repo: GitRepo) -> None:
    now = 1000.0
    unreachable = "{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 60}"
    s = state(repo, {"web.yaml": tolerating(deployment(3, "v1"), unreachable)})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    on_n1 = {p.name for p in pods if p.node == "n1"}
    assert on_n1
    lost = (NodeState(NODES[0].info, reachable=False, lost=True, lost_since=now), *NODES[1:])
    # 30 s after the node was found lost: the pods stay bound to it, nothing replaces them.
    kept = plan(s, Observed(now + 30, pods, lost))
    assert kept.removed == [] and {d.name for d in kept.pods if d.node == "n1"} == on_n1
    # Once the 60 s have passed they are evicted and replaced elsewhere.
    gone = plan(s, Observed(now + 61, pods, lost))
    assert {r.name for r in gone.removed} == on_n1
    assert len(gone.pods) == 3 and "n1" not in {d.node for d in gone.pods}
    # A toleration without seconds tolerates forever (as DaemonSet pods do in Kubernetes).
    always = unreachable.replace(", tolerationSeconds: 60", "")
    forever = state(repo, {"web.yaml": tolerating(deployment(3, "v1"), always)})
    assert plan(forever, Observed(now + 10_000, pods, lost)).removed == []


def test_a_noexecute_taint_in_git_evicts_pods_that_do_not_tolerate_it(repo: GitRepo) -> None:
    from gitorch.reconcile.scheduler import Taint

    now = 1000.0
    maintenance = Taint("maintenance", "", "NoExecute")
    s = state(repo, {"web.yaml": deployment(3, "v1")})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    on_n1 = {p.name for p in pods if p.node == "n1"}
    tainted_info = replace(NODES[0].info, taints=(maintenance,))
    tainted = (NodeState(tainted_info, noexecute_since=((maintenance, now),)), *NODES[1:])
    p = plan(s, Observed(now, pods, tainted))
    assert {r.name for r in p.removed} == on_n1 and "n1" not in {d.node for d in p.pods}
    # Tolerated for 120 s: kept until then, counted from when the taint was first seen.
    tol = "{key: maintenance, operator: Exists, effect: NoExecute, tolerationSeconds: 120}"
    s2 = state(repo, {"web.yaml": tolerating(deployment(3, "v1"), tol)})
    assert plan(s2, Observed(now + 100, pods, tainted)).removed == []
    assert {r.name for r in plan(s2, Observed(now + 121, pods, tainted)).removed} == on_n1


def test_toleration_seconds_is_the_least_of_the_matching_tolerations() -> None:
    from gitorch.reconcile.planning import toleration_seconds
    from gitorch.reconcile.scheduler import Taint

    taint = Taint("k", "v", "NoExecute")
    assert toleration_seconds([], taint) == 0.0
    assert toleration_seconds([{"key": "other", "operator": "Exists"}], taint) == 0.0
    both = [{"key": "k", "operator": "Exists", "tolerationSeconds": 90},
            {"operator": "Exists", "tolerationSeconds": 30}]
    assert toleration_seconds(both, taint) == 30
    assert toleration_seconds([{"key": "k", "value": "v", "effect": "NoExecute"}], taint) is None
    assert toleration_seconds([{"key": "k", "operator": "Exists", "tolerationSeconds": -5}], taint) == 0.0


def test_cronjob_runs_on_schedule_and_forbids_overlap(repo: GitRepo) -> None:
    s = state(repo, {"cron.yaml": CRON})
    t0 = datetime(2026, 11, 22, 4, 1, tzinfo=UTC).timestamp()
    first = plan(s, Observed(t0, (), NODES))
    assert first.pods == []  # nothing due yet; the next run is at 04:05
    key = next(iter(first.statuses))
    last = first.statuses[key].last_schedule
    assert last == t0
    t1 = datetime(2026, 11, 22, 4, 5, 30, tzinfo=UTC).timestamp()
    run = plan(s, Observed(t1, (), NODES, last_schedule={key: t0}))
    assert [d.owner.name for d in run.pods] == [f"report-{int(t1 - 30) // 60}"]
    assert run.statuses[key].last_schedule == t1 - 30
    # Still running at the next time: Forbid skips it.
    active = as_observed(run, t1, ready=False, phase="Running")
    t2 = datetime(2026, 11, 22, 4, 10, 5, tzinfo=UTC).timestamp()
    skipped = plan(s, Observed(t2, active, NODES, last_schedule={key: t1 - 30}))
    assert len(skipped.pods) == 1 and any(e.reason == "JobAlreadyActive" for e in skipped.events)
    # Finished: the next run starts and the history limit (1) keeps only the newest finished run.
    done = as_observed(run, t1, ready=False, phase="Succeeded")
    nxt = plan(s, Observed(t2, done, NODES, last_schedule={key: t1 - 30}))
    owners = sorted({d.owner.name for d in nxt.pods})
    assert len(owners) == 2 and not nxt.removed


def test_recreate_stops_every_old_pod_before_starting_new_ones(repo: GitRepo) -> None:
    now = 1000.0
    recreate = deployment(3, "v1").replace(
        "strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}", "strategy: {type: Recreate}"
    )
    pods = as_observed(plan(state(repo, {"web.yaml": recreate}), Observed(now, (), NODES)), now)
    s2 = state(repo, {"web.yaml": recreate.replace('value: "v1"', 'value: "v2"')})
    first = plan(s2, Observed(now, pods, NODES))
    assert len(first.removed) == 3 and first.pods == []  # all old pods go, nothing new yet
    second = plan(s2, Observed(now, (), NODES))
    assert len(second.pods) == 3 and {d.revision for d in second.pods} != {p.revision for p in pods}


def test_a_stuck_rollout_turns_degraded_after_its_deadline_and_keeps_old_pods(repo: GitRepo) -> None:
    now = 1000.0
    pods = as_observed(plan(state(repo, {"web.yaml": deployment(2, "v1")}), Observed(now, (), NODES)), now)
    stuck = (
        deployment(2, "v2").replace(
            "    spec:\n      containers:", "    spec:\n      nodeSelector: {disk: none}\n      containers:"
        )
        + "  progressDeadlineSeconds: 30\n"
    )
    s2 = state(repo, {"web.yaml": stuck})
    first = plan(s2, Observed(now, pods, NODES))
    key = next(k for k in first.statuses if k.kind == "Deployment")
    assert first.statuses[key].health == "Progressing"
    rev = first.statuses[key].revision
    later = plan(s2, Observed(now + 60, pods, NODES, rollout_started={key: (rev, now)}))
    status = later.statuses[key]
    assert status.health == "Degraded" and "made no progress" in status.message
    assert {c["reason"] for c in status.conditions} >= {"ProgressDeadlineExceeded"}
    assert not later.removed  # the old pods keep serving
    assert any(d.node is None and "node affinity/selector" in d.message for d in later.pods)


STS = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: kv, namespace: shop}
spec:
  serviceName: kv
  replicas: 3
  selector: {matchLabels: {app: kv}}
  template:
    metadata: {labels: {app: kv}}
    spec:
      containers:
        - {name: kv, command: [python3, -m, http.server]}
---
apiVersion: v1
kind: Service
metadata: {name: kv, namespace: shop}
spec: {clusterIP: None, selector: {app: kv}, ports: [{name: kv, port: 80}]}
"""


def test_statefulset_starts_in_order_and_keeps_a_pod_on_its_node(repo: GitRepo) -> None:
    now = 1000.0
    s = state(repo, {"kv.yaml": STS})
    first = plan(s, Observed(now, (), NODES))
    assert [d.name for d in first.pods] == ["kv-0"]  # kv-1 waits for kv-0 to be Ready
    not_ready = as_observed(first, now, ready=False)
    assert [d.name for d in plan(s, Observed(now, not_ready, NODES)).pods] == ["kv-0"]
    ready = as_observed(first, now)
    second = plan(s, Observed(now, ready, NODES))
    assert [d.name for d in second.pods] == ["kv-0", "kv-1"]
    # kv-0's node is lost: the pod is not started elsewhere (its volume lives there).
    node0 = first.pods[0].node
    lost = tuple(NodeState(n.info, reachable=n.name != node0, lost=n.name == node0) for n in NODES)
    after = plan(s, Observed(now, as_observed(second, now), lost))
    kv0 = next(d for d in after.pods if d.name == "kv-0")
    assert kv0.node == node0 and not any(r.name == "kv-0" for r in after.removed)


DS = """\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
        - {name: agent, command: [sleep, "1000"]}
"""


def test_daemonset_follows_nodes_and_taints(repo: GitRepo) -> None:
    from gitorch.reconcile.scheduler import Taint

    now = 1000.0
    s = state(repo, {"ds.yaml": DS})
    two = NODES[:2]
    assert sorted(d.node for d in plan(s, Observed(now, (), two)).pods) == ["n1", "n2"]
    assert sorted(d.node for d in plan(s, Observed(now, (), NODES)).pods) == ["n1", "n2", "n3"]  # a new node
    tainted = NodeState(
        NodeInfo("n3", {}, Resources(4000, 8 << 30, 110, 100 << 30), taints=(Taint("dedicated", "db", "NoSchedule"),))
    )
    assert sorted(d.node for d in plan(s, Observed(now, (), (*two, tainted))).pods) == ["n1", "n2"]
    # A NoSchedule taint added later keeps the pod already there; a NoExecute one evicts it.
    running = as_observed(plan(s, Observed(now, (), NODES)), now)
    assert sorted(d.node for d in plan(s, Observed(now, running, (*two, tainted))).pods) == ["n1", "n2", "n3"]
    evicting = Taint("dedicated", "db", "NoExecute")
    noexec = NodeState(replace(tainted.info, taints=(evicting,)), noexecute_since=((evicting, now),))
    p = plan(s, Observed(now, running, (*two, noexec)))
    assert sorted(d.node for d in p.pods) == ["n1", "n2"] and [r.node for r in p.removed] == ["n3"]


def paused(text: str) -> str:
    return text.replace("spec:\n  replicas:", "spec:\n  paused: true\n  replicas:", 1)


def test_a_paused_deployment_stops_its_rollout_and_still_scales(repo: GitRepo) -> None:
    now = 1000.0
    v1 = plan(state(repo, {"web.yaml": deployment(3, "v1")}), Observed(now, (), NODES))
    pods = as_observed(v1, now)
    # A template change while paused: nothing is replaced, the status says Paused.
    p = plan(state(repo, {"web.yaml": paused(deployment(3, "v2"))}), Observed(now, pods, NODES))
    assert p.removed == [] and sorted(d.name for d in p.pods) == sorted(x.name for x in pods)
    status = next(iter(p.statuses.values()))
    assert status.health == "Suspended" and status.message.startswith("Paused: 0/3")
    assert {"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused"} in status.conditions
    assert p.converged
    # Scaled up while paused: the missing pod comes from the current template; scaled down,
    # the previous template's pods go first.
    up = plan(state(repo, {"web.yaml": paused(deployment(4, "v2"))}), Observed(now, pods, NODES))
    assert up.removed == [] and len(up.pods) == 4
    assert len({d.revision for d in up.pods}) == 2
    grown = as_observed(up, now)
    down = plan(
        state(repo, {"web.yaml": paused(deployment(2, "v2", surge=0, unavailable=1))}), Observed(now, grown, NODES)
    )
    new_rev = next(d.revision for d in up.pods if d.name not in {x.name for x in pods})
    assert len(down.pods) == 2 and len(down.removed) == 2
    assert new_rev in {d.revision for d in down.pods}
    # Resumed: the rollout goes on.
    resumed = plan(state(repo, {"web.yaml": deployment(3, "v2")}), Observed(now, pods, NODES))
    assert next(iter(resumed.statuses.values())).health == "Progressing"
    assert len(resumed.pods) == 4  # one surge pod of v2 started


def test_a_rollout_paused_midway_keeps_both_revisions(repo: GitRepo) -> None:
    now = 1000.0
    v1 = plan(state(repo, {"web.yaml": deployment(3, "v1")}), Observed(now, (), NODES))
    pods = as_observed(v1, now)
    step = plan(state(repo, {"web.yaml": deployment(3, "v2")}), Observed(now, pods, NODES))
    midway = as_observed(step, now)
    assert len(midway) == 4 and len({x.revision for x in midway}) == 2
    held = plan(state(repo, {"web.yaml": paused(deployment(3, "v2"))}), Observed(now, midway, NODES))
    assert held.removed == [] and sorted(d.name for d in held.pods) == sorted(x.name for x in midway)
    status = next(iter(held.statuses.values()))
    assert status.message == "Paused: 1/3 pods of the current template ready, 3 of a previous one kept"
    assert status.updated == 1 and status.available == 4


def sts(version: str, partition: int) -> str:
    strategy = f"  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{partition: {partition}}}}}\n"
    return STS.replace("  replicas: 3\n", "  replicas: 3\n" + strategy).replace(
        "http.server]}", f'http.server], env: [{{name: V, value: "{version}"}}]}}'
    )


def test_statefulset_partition_updates_only_ordinals_at_or_above_it(repo: GitRepo) -> None:
    now = 1000.0
    s1 = state(repo, {"kv.yaml": sts("v1", 1)})
    pods: tuple[PodState, ...] = ()
    for _ in range(4):
        pods = as_observed(plan(s1, Observed(now, pods, NODES)), now)
    assert sorted(x.name for x in pods) == ["kv-0", "kv-1", "kv-2"]
    v1 = pods[0].revision

    def roll(s: desired.DesiredState, pods: tuple[PodState, ...]) -> tuple[Plan, tuple[PodState, ...]]:
        for _ in range(5):
            p = plan(s, Observed(now, pods, NODES))
            pods = as_observed(p, now)
        return p, pods

    p, pods = roll(state(repo, {"kv.yaml": sts("v2", 1)}), pods)
    revs = {x.name: x.revision for x in pods}
    assert revs["kv-0"] == v1 and revs["kv-1"] != v1 and revs["kv-2"] == revs["kv-1"]
    status = next(s for k, s in p.statuses.items() if k.kind == "StatefulSet")
    assert status.health == "Healthy" and status.updated == 2
    assert status.message == "3/3 ready; partition 1: 1 pods below it keep their previous revision"
    # Lowering the partition to 0 finishes the rollout.
    p, pods = roll(state(repo, {"kv.yaml": sts("v2", 0)}), pods)
    assert len({x.revision for x in pods}) == 1 and pods[0].revision != v1
    status = next(s for k, s in p.statuses.items() if k.kind == "StatefulSet")
    assert status.health == "Healthy" and status.updated == 3 and status.message == "3/3 ready"


def test_a_placed_pod_runs_the_spec_of_its_node_from_its_first_sync(repo: GitRepo) -> None:
    """The downward API's spec.nodeName is part of a pod's spec: the pod a node is first sent must
    already name that node, or the next pass's spec (which does) is a new hash and restarts it."""
    text = deployment(2, "v1").replace(
        'env: [{name: V, value: "v1"}]',
        "env: [{name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]",
    )
    s = state(repo, {"web.yaml": text})
    first = plan(s, Observed(1000.0, (), NODES))
    assert len(first.pods) == 2 and all(d.node for d in first.pods)
    for d in first.pods:
        env = {e["name"]: e["value"] for e in d.spec["containers"][0]["env"]}
        assert env["NODE"] == d.node, env
    second = plan(s, Observed(1001.0, as_observed(first, 1000.0), NODES))
    assert {d.name: d.spec["hash"] for d in second.pods} == {d.name: d.spec["hash"] for d in first.pods}
    # Kept with the state: the same spec object each pass, so a node's digest needs no re-encoding.
    third = plan(s, Observed(1002.0, as_observed(first, 1000.0), NODES))
    assert all(a.spec is b.spec for a, b in zip(second.pods, third.pods, strict=True))


def replicaset(replicas: int, version: str) -> str:
    return deployment(replicas, version).replace("kind: Deployment", "kind: ReplicaSet").replace(
        "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n", "")


def test_a_replicaset_scales_and_leaves_running_pods_of_an_earlier_template_alone(repo: GitRepo) -> None:
    """Kubernetes' ReplicaSet (issue 10): a changed template is for pods made after it, not a rollout."""
    first = plan(state(repo, {"web.yaml": replicaset(2, "v1")}), Observed(1000.0, (), NODES))
    assert sorted(d.name for d in first.pods) == ["web-0", "web-1"]
    pods = as_observed(first, 1000.0)
    assert first.statuses[next(iter(first.statuses))].health == "Progressing"
    # A new template and one more replica: the two v1 pods stay, the third is v2.
    s = state(repo, {"web.yaml": replicaset(3, "v2")})
    second = plan(s, Observed(1001.0, pods, NODES))
    assert not second.removed
    revisions = {d.name: d.revision for d in second.pods}
    assert revisions["web-0"] == revisions["web-1"] != revisions["web-2"]
    status = next(v for k, v in second.statuses.items() if k.kind == "ReplicaSet")
    assert status.health == "Progressing" and "2 of an earlier template" in status.message
    # Down to one: the newest go first.
    third = plan(state(repo, {"web.yaml": replicaset(1, "v2")}), Observed(1002.0, as_observed(second, 1001.0), NODES))
    assert [p.name for p in third.removed] == ["web-1", "web-2"] and [d.name for d in third.pods] == ["web-0"]


POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: solo, namespace: shop, labels: {{app: solo}}}}
spec:
  containers:
    - {{name: solo, command: [python3, -m, http.server], env: [{{name: V, value: "{version}"}}]}}
"""


def test_a_bare_pod_is_placed_once_replaced_in_place_and_never_moved(repo: GitRepo) -> None:
    """Pod (issue 10): named as written, placed by the scheduler, updated where it runs, and left
    on its node when that node is lost, as in Kubernetes."""
    s1 = state(repo, {"solo.yaml": POD.format(version="v1")})
    first = plan(s1, Observed(1000.0, (), NODES))
    assert [(d.name, d.owner.kind) for d in first.pods] == [("solo", "Pod")] and first.pods[0].node
    node = first.pods[0].node
    running = as_observed(first, 1000.0)
    assert plan(s1, Observed(1001.0, running, NODES)).statuses[first.pods[0].owner].health == "Healthy"
    # A new spec: the same pod on the same node, with the new revision; nothing removed.
    second = plan(state(repo, {"solo.yaml": POD.format(version="v2")}), Observed(1002.0, running, NODES))
    assert [(d.name, d.node) for d in second.pods] == [("solo", node)] and not second.removed
    assert second.pods[0].revision != first.pods[0].revision
    # Its node lost: not moved, Degraded, saying why.
    lost = tuple(NodeState(n.info, reachable=n.info.name != node, lost=n.info.name == node) for n in NODES)
    third = plan(s1, Observed(1003.0, running, lost))
    assert [(d.name, d.node) for d in third.pods] == [("solo", node)]
    status = third.statuses[first.pods[0].owner]
    assert status.health == "Degraded" and "not moved" in status.message


INDEXED = """\
apiVersion: batch/v1
kind: Job
metadata: {name: shard, namespace: shop}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: work
          command: [sh, -c, "echo $JOB_COMPLETION_INDEX"]
          env:
            - name: SHARD
              valueFrom: {fieldRef: {fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
"""


def _env(d: object) -> dict[str, str]:
    spec = d.spec  # type: ignore[attr-defined]
    return {e["name"]: e["value"] for e in spec["containers"][0]["env"]}


def test_indexed_job_runs_each_index_once_and_retries_a_failed_index_with_it(repo: GitRepo) -> None:
    """completionMode Indexed (issue 10): pods for the lowest open indexes, up to parallelism,
    each with JOB_COMPLETION_INDEX and its index's annotation; a failed index runs again with
    the same index under a new name; Complete once every index succeeded once."""
    s = state(repo, {"job.yaml": INDEXED})
    now = 1000.0
    first = plan(s, Observed(now, (), NODES))
    assert [(d.name, _env(d)) for d in first.pods] == [
        ("shard-0", {"JOB_COMPLETION_INDEX": "0", "SHARD": "0"}),
        ("shard-1", {"JOB_COMPLETION_INDEX": "1", "SHARD": "1"}),
    ]
    assert len({d.revision for d in first.pods}) == 1  # one revision, whatever the index
    pods = as_observed(first, now, ready=False)
    failed = (pods[0], replace(pods[1], phase="Failed"))
    second = plan(s, Observed(now, failed, NODES))
    new = [d for d in second.pods if d.name not in {"shard-0", "shard-1"}]
    assert [(d.name, _env(d)["JOB_COMPLETION_INDEX"]) for d in new] == [("shard-1-1", "1")]
    running = {d.name: d for d in second.pods}
    assert _env(running["shard-0"])["JOB_COMPLETION_INDEX"] == "0"  # kept with the same spec
    done = tuple(replace(p, phase="Succeeded") for p in as_observed(second, now, ready=False)
                 if p.name != "shard-1")
    third = plan(s, Observed(now, (*done, failed[1]), NODES))
    assert [d.name for d in third.pods if d.name not in {"shard-0", "shard-1", "shard-1-1"}] == ["shard-2"]
    last = tuple(replace(p, phase="Succeeded") for p in as_observed(third, now, ready=False)
                 if p.name != "shard-1")
    key = next(k for k in third.statuses if k.kind == "Job")
    end = plan(s, Observed(now, (*last, failed[1]), NODES))
    assert end.statuses[key].message == "Complete: 3/3 succeeded"


def test_indexed_job_needs_completions(repo: GitRepo) -> None:
    repo.commit("x", {"ns.yaml": NS, "job.yaml": INDEXED.replace("  completions: 3\n", "")})
    s = desired.load(open_repository(repo.path), None)
    assert not s.ok
    assert any("/spec" in d.format() and "Indexed Job needs completions" in d.format() for d in s.diagnostics), [
        d.format() for d in s.diagnostics
    ]


def test_lifecycle_hooks_reach_the_agent_with_named_ports_resolved(repo: GitRepo) -> None:
    """lifecycle hooks (issue 10) are in the agent's spec, its httpGet port by number; a
    container without one keeps its spec (and hash) as before."""
    plain = deployment(1, "v1")
    hooked = plain.replace(
        "env: [{name: V, value: \"v1\"}]}",
        "env: [{name: V, value: \"v1\"}], ports: [{name: http, containerPort: 8000}],"
        " lifecycle: {postStart: {exec: {command: [warm]}}, preStop: {httpGet: {path: /drain, port: http}}}}",
    )
    assert hooked != plain
    [pod] = plan(state(repo, {"web.yaml": hooked}), Observed(1000.0, (), NODES)).pods
    assert pod.spec["containers"][0]["preStop"] == {"httpGet": {"path": "/drain", "port": 8000}}
    assert pod.spec["containers"][0]["postStart"] == {"exec": {"command": ["warm"]}}
    [before] = plan(state(repo, {"web.yaml": plain}), Observed(1000.0, (), NODES)).pods
    assert not {"preStop", "postStart"} & set(before.spec["containers"][0])


def daemonset(version: str, strategy: str = "", min_ready: int = 0) -> str:
    return DS.replace("spec:\n  selector:", f"spec:\n  minReadySeconds: {min_ready}\n{strategy}  selector:").replace(
        'command: [sleep, "1000"]', f'command: [sleep, "1000"], env: [{{name: V, value: "{version}"}}]'
    )


def _on(p: Plan, node: str) -> list[tuple[str, str]]:
    return sorted((d.name, d.revision) for d in p.pods if d.node == node)


def test_daemonset_min_ready_seconds_holds_the_rollout_and_availability(repo: GitRepo) -> None:
    now = 1000.0
    s = state(repo, {"ds.yaml": daemonset("1", min_ready=30)})
    running = tuple(replace(p, ready_since=now) for p in as_observed(plan(s, Observed(now, (), NODES)), now))
    early = plan(s, Observed(now + 10, running, NODES))
    status = early.statuses[next(iter(early.statuses))]
    assert (status.health, status.ready, status.available) == ("Progressing", 3, 0)
    late = plan(s, Observed(now + 31, running, NODES))
    assert next(iter(late.statuses.values())).health == "Healthy"
    # A new template: one node at a time (maxUnavailable 1), the next once the first new pod
    # has been ready for 30 s, not merely ready.
    s2 = state(repo, {"ds.yaml": daemonset("2", min_ready=30)})
    p = plan(s2, Observed(now + 40, running, NODES))
    new_rev = next(d.revision for d in p.pods if d.revision != running[0].revision)
    assert sum(d.revision == new_rev for d in p.pods) == 1
    updated = tuple(
        replace(o, revision=d.revision, ready_since=now + 50) if d.revision == new_rev else o
        for o, d in zip(running, p.pods, strict=True)
    )
    held = plan(s2, Observed(now + 60, updated, NODES))
    assert sum(d.revision == new_rev for d in held.pods) == 1
    moved = plan(s2, Observed(now + 81, updated, NODES))
    assert sum(d.revision == new_rev for d in moved.pods) == 2


def test_daemonset_max_surge_starts_the_new_pod_beside_the_old_one(repo: GitRepo) -> None:
    now = 1000.0
    surge = "  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n"
    s = state(repo, {"ds.yaml": daemonset("1", surge)})
    running = as_observed(plan(s, Observed(now, (), NODES)), now)
    old_rev = running[0].revision
    s2 = state(repo, {"ds.yaml": daemonset("2", surge)})
    p = plan(s2, Observed(now, running, NODES))
    assert not p.removed
    doubled = [n.name for n in NODES if len(_on(p, n.name)) == 2]
    assert len(doubled) == 1  # maxSurge 1: one node has both pods, the old one still running
    node = doubled[0]
    (a, ra), (b, rb) = _on(p, node)
    assert {ra, rb} - {old_rev} and old_rev in {ra, rb} and a != b
    # The new pod not ready yet: both stay. Ready: the old one goes, and the next node surges.
    mixed = tuple(o if o.revision == old_rev else replace(o, ready=False) for o in as_observed(p, now))
    assert len(_on(plan(s2, Observed(now, mixed, NODES)), node)) == 2
    ready = as_observed(p, now)
    q = plan(s2, Observed(now, ready, NODES))
    assert [r.node for r in q.removed] == [node] and q.removed[0].revision == old_rev
    assert len(_on(q, node)) == 1
    r = plan(s2, Observed(now, as_observed(q, now), NODES))  # the old pod gone: the next node surges
    assert not r.removed and sum(len(_on(r, n.name)) == 2 for n in NODES) == 1


def test_daemonset_on_delete_updates_only_pods_that_are_gone(repo: GitRepo) -> None:
    now = 1000.0
    on_delete = "  updateStrategy: {type: OnDelete}\n"
    s = state(repo, {"ds.yaml": daemonset("1", on_delete)})
    running = as_observed(plan(s, Observed(now, (), NODES)), now)
    old_rev = running[0].revision
    s2 = state(repo, {"ds.yaml": daemonset("2", on_delete)})
    p = plan(s2, Observed(now, running, NODES))
    assert {d.revision for d in p.pods} == {old_rev} and not p.removed
    assert "OnDelete: 3 keep their earlier template" in next(iter(p.statuses.values())).message
    # n2's pod was deleted: only its replacement gets the new template.
    q = plan(s2, Observed(now, tuple(o for o in running if o.node != "n2"), NODES))
    assert [d.node for d in q.pods if d.revision != old_rev] == ["n2"]


STS_MIN_READY = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: kv, namespace: shop}
spec:
  serviceName: kv
  replicas: 2
  minReadySeconds: 20
  selector: {matchLabels: {app: kv}}
  template:
    metadata: {labels: {app: kv}}
    spec:
      containers:
        - {name: kv, command: [sleep, "1000"]}
"""


def test_statefulset_min_ready_seconds_orders_on_availability(repo: GitRepo) -> None:
    now = 1000.0
    s = state(repo, {"kv.yaml": STS_MIN_READY})
    first = plan(s, Observed(now, (), NODES))
    ready = tuple(replace(p, ready_since=now) for p in as_observed(first, now))
    held = plan(s, Observed(now + 5, ready, NODES))
    assert [d.name for d in held.pods] == ["kv-0"]  # ready, but not yet for 20 s: kv-1 waits
    status = held.statuses[next(iter(held.statuses))]
    assert (status.ready, status.available, status.health) == (1, 0, "Progressing")
    assert [d.name for d in plan(s, Observed(now + 21, ready, NODES)).pods] == ["kv-0", "kv-1"]


def test_a_rollout_that_can_neither_surge_nor_drop_a_pod_is_refused(repo: GitRepo) -> None:
    from gitorch.model.diagnostics import Severity

    for files, ptr in (
        ({"web.yaml": deployment(3, "v1", surge=0, unavailable=0)}, "/spec/strategy/rollingUpdate/maxUnavailable"),
        ({"web.yaml": deployment(3, "v1"),
          "ds.yaml": daemonset("1", "  updateStrategy: {rollingUpdate: {maxUnavailable: 0%}}\n")},
         "/spec/updateStrategy/rollingUpdate/maxUnavailable"),
    ):
        repo.commit("x", {"ns.yaml": NS, **files})
        s = desired.load(open_repository(repo.path), None)
        errors = [d for d in s.diagnostics if d.severity is Severity.ERROR]
        assert [(d.pointer, d.message) for d in errors] == [(ptr, "may not be 0 when `maxSurge` is 0")], errors
    # The DaemonSet default (maxUnavailable 1, maxSurge 0) and a surge alone are fine.
    surge = "  updateStrategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n"
    state(repo, {"ds.yaml": daemonset("1", surge)})
    state(repo, {"ds.yaml": daemonset("1")})


def test_replicas_share_their_equal_spec_parts_and_only_those(repo: GitRepo) -> None:
    """Specs are never changed once built: replicas whose containers come out equal keep one
    copy of them (memory per pod), a container that names its pod keeps its own, and the
    stored copy hides secret values while a spec without any is stored as it is."""
    named = deployment(3, "v1").replace('env: [{name: V, value: "v1"}]',
                                        "env: [{name: ME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]")
    named = named.replace("name: web,", "name: named,").replace("app: web", "app: named")
    secret = ("apiVersion: v1\nkind: Secret\nmetadata: {name: pw, namespace: shop}\nstringData: {pw: hunter2}\n")
    with_secret = deployment(2, "v1").replace('env: [{name: V, value: "v1"}]',
                                              "env: [{name: PW, valueFrom: {secretKeyRef: {name: pw, key: pw}}}]")
    with_secret = with_secret.replace("name: web,", "name: sec,").replace("app: web", "app: sec")
    s = state(repo, {"web.yaml": deployment(3, "v1"), "named.yaml": named, "sec.yaml": with_secret + "---\n" + secret})
    p = plan(s, Observed(now=1000.0, pods=(), nodes=NODES))
    by_owner: dict[str, list[Any]] = {}
    for d in p.pods:
        by_owner.setdefault(d.owner.name, []).append(d.spec)
    web, mine, sec = by_owner["web"], by_owner["named"], by_owner["sec"]
    assert len(web) == 3 and all(w["containers"] is web[0]["containers"] for w in web)
    assert len({w["name"] for w in web}) == 3  # each pod still its own name
    envs = [m["containers"][0]["env"] for m in mine]
    assert len({id(m["containers"]) for m in mine}) == 3 and {e[0]["value"] for e in envs} == {m["name"] for m in mine}
    assert podspecs.masked(web[0]) is web[0]
    hidden = podspecs.masked(sec[0])
    assert hidden is not sec[0] and hidden["containers"][0]["env"][0]["value"] == HIDDEN
    assert sec[0]["containers"][0]["env"][0]["value"] == "hunter2"  # the spec sent to the node keeps it

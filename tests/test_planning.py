"""The pure planner: rollout budgets, scaling, pruning, lost nodes and CronJob runs, without any node."""

from __future__ import annotations

from datetime import UTC, datetime

from gitorch import desired
from gitorch.reconcile.planning import NodeState, Observed, Plan, PodState, plan
from gitorch.reconcile.scheduler import NodeInfo, Resources
from gitorch.source import open_repository
from tests.gitrepo import GitRepo

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"


def deployment(replicas: int, version: str, surge: int = 1, unavailable: int = 0) -> str:
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
        - {{name: web, command: [python3, -m, http.server], env: [{{name: V, value: "{version}"}}]}}
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

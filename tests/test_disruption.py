"""Draining a node (a Node's spec.drain) evicts its pods within their PodDisruptionBudgets, as
the eviction API does for kubectl drain; their controllers place replacements elsewhere."""

from __future__ import annotations

from dataclasses import replace

from gitorch.model.diagnostics import Severity
from gitorch.reconcile.planning import NodeState, Observed, plan
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.test_planning import NODES, NS, as_observed, deployment

PDB = """\
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
"""


def load(repo: GitRepo, files: dict[str, str]) -> desired.DesiredState:
    repo.commit("x", {"ns.yaml": NS, **files})
    state = desired.load(open_repository(repo.path), None)
    assert not [d for d in state.diagnostics if d.severity is Severity.ERROR], [d.format() for d in state.diagnostics]
    return state


def drained(name: str) -> tuple[NodeState, ...]:
    return tuple(
        NodeState(replace(n.info, unschedulable=True), draining=True) if n.name == name else n for n in NODES
    )


def test_a_drain_without_a_budget_evicts_every_pod_of_the_node_at_once(repo: GitRepo) -> None:
    now = 1000.0
    s = load(repo, {"web.yaml": deployment(6, "v1")})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    on_n1 = {p.name for p in pods if p.node == "n1"}
    assert len(on_n1) >= 2
    p = plan(s, Observed(now, pods, drained("n1")))
    assert {r.name for r in p.removed} == on_n1
    assert len(p.pods) == 6 and "n1" not in {d.node for d in p.pods}
    assert sum(1 for e in p.events if e.reason == "Evicted") == len(on_n1)


def test_a_budget_lets_a_drain_evict_one_pod_at_a_time_as_replacements_get_ready(repo: GitRepo) -> None:
    now = 1000.0
    s = load(repo, {"web.yaml": deployment(6, "v1"), "pdb.yaml": PDB + "  minAvailable: 5\n"})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    on_n1 = {p.name for p in pods if p.node == "n1"}
    assert len(on_n1) >= 2
    first = plan(s, Observed(now, pods, drained("n1")))
    # 6 healthy, 5 needed: one disruption allowed, so one pod goes; the others wait, reported.
    assert len(first.removed) == 1 and first.removed[0].name in on_n1
    assert any(e.reason == "EvictionBlocked" and "disruption budget web" in e.message for e in first.events)
    key = next(k for k in first.statuses if k.kind == "PodDisruptionBudget")
    assert first.statuses[key].message == "6/6 pods healthy, 5 needed: 1 disruption(s) allowed"
    # The replacement is placed elsewhere but not ready yet: nothing more may go.
    gone = first.removed[0].name
    replacement = [d for d in first.pods if (d.name, d.node) not in {(p.name, p.node) for p in pods}]
    assert len(replacement) == 1 and replacement[0].node not in (None, "n1")
    waiting = tuple(p for p in pods if p.name != gone) + as_observed(
        replace(first, pods=replacement), now, ready=False)
    assert plan(s, Observed(now, waiting, drained("n1"))).removed == []
    # Ready now: the next pod of n1 goes.
    ready = tuple(p for p in pods if p.name != gone) + as_observed(replace(first, pods=replacement), now)
    second = plan(s, Observed(now, ready, drained("n1")))
    assert len(second.removed) == 1 and second.removed[0].name in on_n1 - {gone}


def test_max_unavailable_zero_blocks_a_drain_and_says_so(repo: GitRepo) -> None:
    now = 1000.0
    s = load(repo, {"web.yaml": deployment(3, "v1"), "pdb.yaml": PDB + "  maxUnavailable: 0\n"})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    p = plan(s, Observed(now, pods, drained("n1")))
    assert p.removed == []
    key = next(k for k in p.statuses if k.kind == "PodDisruptionBudget")
    assert p.statuses[key].conditions[0]["status"] == "False"


def test_a_budget_that_cannot_be_computed_is_its_own_status_not_the_passs(repo: GitRepo, monkeypatch) -> None:
    from gitorch.reconcile import planning

    def broken(ps: object, pdb: object) -> None:
        raise ValueError("odd budget")

    monkeypatch.setattr(planning, "_budget", broken)
    s = load(repo, {"web.yaml": deployment(3, "v1"), "pdb.yaml": PDB + "  minAvailable: 1\n"})
    p = plan(s, Observed(1000.0, (), NODES))
    key = next(k for k in p.statuses if k.kind == "PodDisruptionBudget")
    assert p.statuses[key].health == "Degraded" and "odd budget" in p.statuses[key].message
    assert len([d for d in p.pods if d.node]) == 3


def leaving(name: str, *, reachable: bool = True) -> tuple[NodeState, ...]:
    """`name` gone from Git, its pods still on it (the controller keeps it from the store)."""
    return tuple(replace(n, leaving=True, reachable=reachable) if n.name == name else n for n in NODES)


BARE = "apiVersion: v1\nkind: Pod\nmetadata: {name: solo, namespace: shop, labels: {app: web}}\n" \
       "spec:\n  containers: [{name: c, command: [sleep, '600']}]\n"
AGENT = """\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: c, command: [sleep, '600']}]
"""


def test_a_node_removed_from_git_drains_within_the_budgets_as_a_drain_does(repo: GitRepo) -> None:
    """Not every pod at once (as when a node was simply unknown): one eviction per disruption the
    budget allows, the next once the replacement is ready; DaemonSet pods go (its node is gone)."""
    now = 1000.0
    s = load(repo, {"web.yaml": deployment(6, "v1"), "pdb.yaml": PDB + "  minAvailable: 5\n", "ds.yaml": AGENT})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    on_n1 = {p.name for p in pods if p.node == "n1" and p.owner.kind == "Deployment"}
    assert len(on_n1) >= 2
    first = plan(s, Observed(now, pods, leaving("n1")))
    removed = {r.name: r.owner.kind for r in first.removed}
    assert sorted(removed.values()) == ["DaemonSet", "Deployment"], removed
    assert any(e.reason == "EvictionBlocked" and "disruption budget web" in e.message for e in first.events)
    assert "n1" not in {d.node for d in first.pods if d.name not in {p.name for p in pods}}  # no new pod on it
    # Without a budget, a drain's pace is every pod at once: the same as before for such pods.
    free = load(repo, {"pdb.yaml": PDB.replace("name: web, namespace", "name: other, namespace")
                       .replace("app: web", "app: other") + "  minAvailable: 5\n"})
    assert {r.name for r in plan(free, Observed(now, pods, leaving("n1"))).removed} >= on_n1


def test_an_unreachable_node_removed_from_git_loses_its_pods_at_once_whatever_the_budget(repo: GitRepo) -> None:
    """Kubernetes' pod garbage collector deletes the pods of a deleted Node, budgets or
    tolerations notwithstanding: gitorch cannot evict on a node it cannot reach either."""
    now = 1000.0
    s = load(repo, {"web.yaml": deployment(6, "v1"), "pdb.yaml": PDB + "  maxUnavailable: 0\n"})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    on_n1 = {p.name for p in pods if p.node == "n1"}
    p = plan(s, Observed(now, pods, leaving("n1", reachable=False)))
    assert {r.name for r in p.removed} == on_n1
    assert len(p.pods) == 6 and "n1" not in {d.node for d in p.pods}
    # Reachable, the same budget holds every pod where it is.
    assert plan(s, Observed(now, pods, leaving("n1"))).removed == []


def test_a_bare_pod_on_a_node_removed_from_git_is_evicted_within_its_budget_then_placed_again(
    repo: GitRepo,
) -> None:
    now = 1000.0
    s = load(repo, {"solo.yaml": BARE})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    node = pods[0].node
    assert node is not None
    p = plan(s, Observed(now, pods, leaving(node)))
    assert [r.name for r in p.removed] == ["solo"]
    status = next(v for k, v in p.statuses.items() if k.kind == "Pod")
    assert status.message == f"evicted from node {node}, which left Git"
    held = load(repo, {"pdb.yaml": PDB + "  minAvailable: 1\n"})
    assert plan(held, Observed(now, pods, leaving(node))).removed == []
    again = plan(s, Observed(now, (), leaving(node)))  # once gone from the node: placed elsewhere
    assert [d.node for d in again.pods if d.name == "solo"] not in ([node], [None])


def test_unhealthy_pod_eviction_policy_as_the_eviction_api_reads_it(repo: GitRepo) -> None:
    """A pod that is not ready may be evicted under IfHealthyBudget (the default) only while the
    budget holds, under AlwaysAllow always; a ready pod needs an allowed disruption either way."""
    now = 1000.0
    s = load(repo, {"web.yaml": deployment(6, "v1"), "pdb.yaml": PDB + "  minAvailable: 5\n"})
    pods = as_observed(plan(s, Observed(now, (), NODES)), now)
    sick_n1 = next(p for p in pods if p.node == "n1")
    sick_other = next(p for p in pods if p.node != "n1")
    sick = {sick_n1.name, sick_other.name}
    observed = tuple(replace(p, ready=False) if p.name in sick else p for p in pods)  # 4 healthy, 5 needed
    for policy, evicted in (("", set()), ("IfHealthyBudget", set()), ("AlwaysAllow", {sick_n1.name})):
        line = f"  unhealthyPodEvictionPolicy: {policy}\n" if policy else ""
        state = load(repo, {"pdb.yaml": PDB + "  minAvailable: 5\n" + line})
        p = plan(state, Observed(now, observed, drained("n1")))
        assert {r.name for r in p.removed} == evicted, policy
        # The ready pods of n1 wait in every case: the budget allows no disruption.
        assert any(e.reason == "EvictionBlocked" for e in p.events), policy
    # With the budget holding (only n1's pod sick: 5 healthy), IfHealthyBudget lets it go too.
    one_sick = tuple(replace(p, ready=False) if p.name == sick_n1.name else p for p in pods)
    p = plan(load(repo, {"pdb.yaml": PDB + "  minAvailable: 5\n"}), Observed(now, one_sick, drained("n1")))
    assert sick_n1.name in {r.name for r in p.removed}

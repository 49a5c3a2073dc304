"""Planned allocations: cluster IPs, node ports and pod CIDRs as a pure function of Git and the store."""

from __future__ import annotations

from gitorch.model.objects import ObjectKey
from gitorch.reconcile.allocations import allocate
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo

CLUSTER = """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: lab}
spec: {serviceCIDR: 10.96.0.0/28, podCIDR: 10.244.0.0/23}
"""


def node(name: str, address: str) -> str:
    return f"""\
---
apiVersion: gitorch.dev/v1
kind: Node
metadata: {{name: {name}}}
spec: {{address: {address}}}
"""


def service(name: str, extra: str = "", kind: str = "ClusterIP") -> str:
    return f"""\
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: {kind}
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80{extra}}}]
"""


def load(repo: GitRepo, text: str) -> desired.DesiredState:
    repo.commit("x", {"all.yaml": text})
    state = desired.load(open_repository(repo.path), None)
    assert state.ok, [d.format() for d in state.diagnostics]
    return state


def test_new_services_get_addresses_kept_ones_keep_theirs_deleted_ones_release(repo: GitRepo) -> None:
    state = load(repo, CLUSTER + service("web") + service("api") + service("np", ", nodePort: 30080", "NodePort"))
    first = allocate(state, {}, {}, {})
    assert set(first.cluster_ips) == {("default", "web"), ("default", "api"), ("default", "np")}
    assert first.node_ports == {("default", "np", "http"): 30080}
    assert allocate(state, {}, {}, {}) == first  # deterministic
    # Already held addresses stay, whatever a fresh allocation would pick.
    held = {("default", "web"): "10.96.0.13"}
    assert allocate(state, held, {}, {}).cluster_ips[("default", "web")] == "10.96.0.13"
    # api leaves Git: its address is not in the result, so the pass releases it.
    later = allocate(load(repo, CLUSTER + service("web")), dict(first.cluster_ips), dict(first.node_ports), {})
    assert set(later.cluster_ips) == {("default", "web")} and later.node_ports == {}
    assert later.cluster_ips[("default", "web")] == first.cluster_ips[("default", "web")]


def test_allocation_problems_are_the_services_status(repo: GitRepo) -> None:
    text = CLUSTER + service("a").replace("type: ClusterIP", "type: ClusterIP\n  clusterIP: 10.96.0.5")
    text += service("b").replace("type: ClusterIP", "type: ClusterIP\n  clusterIP: 10.96.0.5")
    text += "".join(service(f"s{i}") for i in range(14))  # the /28 has 13 allocatable addresses (.2-.14)
    result = allocate(load(repo, text), {}, {}, {})
    assert result.cluster_ips[("default", "a")] == "10.96.0.5"
    assert "already allocated to default/a" in result.problems[ObjectKey("Service", "default", "b")]
    full = [k for k, v in result.problems.items() if "no free cluster IP" in v]
    assert len(full) == 2  # a plus 12 of the 14 others fit
    assert len(result.cluster_ips) == 13


def test_pod_cidrs_pinned_kept_then_lowest_free(repo: GitRepo) -> None:
    text = CLUSTER + node("n1", "10.0.0.1") + node("n2", "10.0.0.2") + node("n3", "10.0.0.3")
    text = text.replace("spec: {address: 10.0.0.3}", "spec: {address: 10.0.0.3, podCIDR: 10.244.0.0/24}")
    result = allocate(load(repo, text), {}, {}, {"n2": "10.244.7.0/24"})
    # n2's old CIDR is outside the Cluster's /23: re-allocated; n3 pinned; n1 gets what is left.
    assert result.pod_cidrs == {"n3": "10.244.0.0/24", "n1": "10.244.1.0/24"}
    assert "no free /24" in result.problems[ObjectKey("Node", "", "n2")]


def test_a_requested_node_port_held_by_another_service_is_that_services_problem(repo: GitRepo) -> None:
    # Malformed and out-of-range requests never get here: validation refuses them (test_validation).
    text = CLUSTER + service("np2", ", nodePort: 30080", "NodePort") + service("np3", ", nodePort: 30080", "NodePort")
    result = allocate(load(repo, text), {}, {}, {})
    assert result.node_ports == {("default", "np2", "http"): 30080}
    problems = {k.name: v for k, v in result.problems.items()}
    assert problems == {"np3": "node port 30080 is already allocated to default/np2 port 'http'"}
    assert {k[1] for k in result.cluster_ips} == {"np2", "np3"}


def test_a_released_address_is_given_again_and_a_new_service_keeps_clear_of_held_ones(repo: GitRepo) -> None:
    state = load(repo, CLUSTER + "".join(service(f"s{i}") for i in range(5)))
    first = allocate(state, {}, {}, {})
    # s3 leaves Git: its address goes back to the range, and a new service may get it.
    without = {k: v for k, v in first.cluster_ips.items() if k != ("default", "s3")}
    state = load(repo, CLUSTER + "".join(service(f"s{i}") for i in (0, 1, 2, 4, 5)))
    again = allocate(state, without, {}, {})
    assert {k: v for k, v in again.cluster_ips.items() if k != ("default", "s5")} == without
    assert again.cluster_ips[("default", "s5")] not in without.values()

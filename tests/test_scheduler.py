"""The scheduler, driven by data files: one case per file in tests/data/scheduler/.

A case holds `nodes`, `bound` (pods already running, each with its `node`), `pods`
(pending) and `expect`: pod name -> node name, or `{unschedulable: "<exact message>"}`.
Optional `expect_per_node` / `expect_per_domain` count where the pending pods went.
Shorthands keep the files short: a node's allocatable defaults to 4 cpu, 8Gi, 110 pods,
100Gi ephemeral storage; a pod's `requests` become one container; `replicas: N` makes
pods `<name>-0`.. owned by `Deployment/<namespace>/<name>`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gitorch.model.quantities import cpu_millis, to_bytes
from gitorch.reconcile.scheduler import (
    Decision,
    NodeInfo,
    PodInfo,
    Resources,
    Taint,
    pod_info_from_template,
    pod_requests,
    schedule,
    unschedulable_message,
)
from gitorch.source.manifests import load_plain

CASES = sorted((Path(__file__).parent / "data" / "scheduler").glob("*.yaml"))
DEFAULT_ALLOCATABLE = {"cpu": "4", "memory": "8Gi", "pods": 110, "ephemeral-storage": "100Gi"}


def _node(spec: dict[str, Any]) -> NodeInfo:
    alloc = {**DEFAULT_ALLOCATABLE, **(spec.get("allocatable") or {})}
    pressure = set(spec.get("pressure") or ())
    return NodeInfo(
        name=spec["name"],
        labels=dict(spec.get("labels") or {}),
        allocatable=Resources(
            cpu_millis=cpu_millis(alloc["cpu"]),
            memory_bytes=to_bytes(alloc["memory"]),
            pods=int(alloc["pods"]),
            ephemeral_bytes=to_bytes(alloc["ephemeral-storage"]),
        ),
        taints=tuple(Taint(t["key"], str(t.get("value") or ""), t["effect"]) for t in spec.get("taints") or ()),
        ready=bool(spec.get("ready", True)),
        unschedulable=bool(spec.get("unschedulable", False)),
        memory_pressure="memory" in pressure,
        disk_pressure="disk" in pressure,
        pid_pressure="pid" in pressure,
        runtimes=frozenset(spec.get("runtimes") or ("process",)),
    )


def _pods(spec: dict[str, Any]) -> list[PodInfo]:
    namespace = spec.get("namespace", "default")
    pod_spec = dict(spec.get("spec") or {})
    if "containers" not in pod_spec:
        container: dict[str, Any] = {"name": "main"}
        if spec.get("image"):
            container["image"] = spec["image"]
        else:
            container["command"] = ["sleep", "infinity"]
        if spec.get("requests"):
            container["resources"] = {"requests": spec["requests"]}
        pod_spec["containers"] = [container]
    template = {"metadata": {"labels": spec.get("labels") or {}}, "spec": pod_spec}
    if "replicas" not in spec:
        return [pod_info_from_template(spec["name"], namespace, template, spec.get("owner", ""))]
    owner = spec.get("owner", f"Deployment/{namespace}/{spec['name']}")
    return [
        pod_info_from_template(f"{spec['name']}-{k}", namespace, template, owner) for k in range(int(spec["replicas"]))
    ]


def _load(path: Path) -> tuple[list[NodeInfo], list[tuple[PodInfo, str]], list[PodInfo], dict[str, Any]]:
    case = load_plain(path.read_text())
    nodes = [_node(n) for n in case.get("nodes") or []]
    bound = [(pod, b["node"]) for b in case.get("bound") or [] for pod in _pods(b)]
    pending = [pod for p in case.get("pods") or [] for pod in _pods(p)]
    return nodes, bound, pending, case


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    nodes, bound, pending, case = _load(path)
    decisions = schedule(pending, nodes, bound)
    got = {d.pod.name: d for d in decisions}
    assert len(got) == len(pending)
    for name, want in (case.get("expect") or {}).items():
        d = got[name]
        if isinstance(want, dict):
            assert (d.node, d.message) == (None, want["unschedulable"]), name
        else:
            assert (d.node, d.message) == (want, ""), name
    if "expect_per_node" in case:
        per_node = Counter(d.node for d in decisions if d.node)
        assert dict(per_node) == case["expect_per_node"]
    for key, want in (case.get("expect_per_domain") or {}).items():
        labels = {n.name: n.labels.get(key, "") for n in nodes}
        per_domain = Counter(labels[d.node] for d in decisions if d.node)
        assert dict(per_domain) == want, key
    assert case.get("expect") or case.get("expect_per_node") or case.get("expect_per_domain")


def test_cases_exist() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_decisions_do_not_depend_on_input_order(path: Path) -> None:
    nodes, bound, pending, _ = _load(path)
    first = _summary(schedule(pending, nodes, bound))
    again = _summary(schedule(pending[::-1], nodes[::-1], bound[::-1]))
    assert first == again


def _summary(decisions: list[Decision]) -> list[tuple[str, str | None, str, dict[str, int]]]:
    return [(d.pod.name, d.node, d.message, dict(d.scores)) for d in decisions]


def test_scores_add_up_and_name_the_plugins() -> None:
    nodes = [NodeInfo(f"n{i}", {}, Resources(4000, 8 << 30, 110)) for i in range(3)]
    pod = PodInfo("p", "default", {}, Resources(1000, 1 << 30, 1), owner="Deployment/default/p")
    [d] = schedule([pod], nodes)
    assert set(d.scores) == {
        "TaintToleration",
        "NodeAffinity",
        "NodeResourcesFit",
        "NodeResourcesBalancedAllocation",
        "OwnerSpread",
    }
    # an empty 4-cpu/8Gi node after a 1-cpu/1Gi pod: (75 + 87) // 2 least allocated
    assert d.scores["NodeResourcesFit"] == 81
    assert d.scores["TaintToleration"] == 300


def test_message_sorts_histogram_entries_as_strings() -> None:
    # kube-scheduler sorts "<count> <reason>" strings: "10 ..." comes before "2 ..."
    msg = unschedulable_message(12, {"Insufficient memory": 2, "Insufficient cpu": 10})
    assert msg == "0/12 nodes are available: 10 Insufficient cpu, 2 Insufficient memory."
    assert unschedulable_message(0, {}) == "no nodes available to schedule pods"


def test_pod_requests_follow_kubernetes_rules() -> None:
    spec = {
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            # requests default to limits
            {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "128Mi"}}},
            {"name": "c", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "2", "memory": "1Gi"}}},
        ],
        "initContainers": [
            {"name": "migrate", "resources": {"requests": {"cpu": "3", "memory": "10Mi"}}},
        ],
        "overhead": {"memory": "1Mi"},
    }
    assert pod_requests({"spec": spec}) == Resources(
        cpu_millis=3000, memory_bytes=(64 + 128 + 1024 + 1) << 20, pods=1, ephemeral_bytes=0
    )


def test_pod_requests_count_sidecars_with_the_containers() -> None:
    spec = {
        "containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}],
        "initContainers": [
            {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
            {"name": "setup", "resources": {"requests": {"cpu": "1200m"}}},
        ],
    }
    # max(1 + 0.5 app with sidecar, 0.5 + 1.2 while setup runs next to the sidecar)
    assert pod_requests(spec).cpu_millis == 1700


def test_pod_info_from_template_reads_the_spec() -> None:
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "priority": 10,
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [
                        {"containerPort": 80, "hostPort": 8080},
                        {"containerPort": 53, "hostPort": 53, "protocol": "UDP"},
                    ],
                }
            ],
        },
    }
    pod = pod_info_from_template("web-0", "shop", template, "Deployment/shop/web")
    assert pod.labels == {"app": "web"}
    assert pod.priority == 10
    assert pod.node_selector == {"disk": "ssd"}
    assert pod.host_ports == ((8080, "TCP"), (53, "UDP"))
    assert pod.needs_container_runtime
    assert pod.owner == "Deployment/shop/web"
    process = pod_info_from_template("w", "shop", {"spec": {"containers": [{"name": "w", "command": ["w"]}]}})
    assert not process.needs_container_runtime


def _cluster(count: int) -> list[NodeInfo]:
    return [
        NodeInfo(f"node-{i:04d}", {"topology.kubernetes.io/zone": f"z{i % 3}"}, Resources(8000, 16 << 30, 110))
        for i in range(count)
    ]


def test_sampling_still_finds_the_only_node_that_fits() -> None:
    nodes = _cluster(600)
    nodes[417] = NodeInfo("node-0417", {"gpu": "yes"}, Resources(8000, 16 << 30, 110))
    pods = [PodInfo(f"p{i}", "default", {}, Resources(100, 1 << 20, 1)) for i in range(50)]
    pods.append(PodInfo("gpu", "default", {}, Resources(100, 1, 1), node_selector={"gpu": "yes"}))
    decisions = {d.pod.name: d.node for d in schedule(pods, nodes)}
    assert decisions["gpu"] == "node-0417"


def test_sampling_spreads_one_owner_over_many_nodes() -> None:
    nodes = _cluster(1000)
    pods = [
        PodInfo(f"web-{i}", "default", {"app": "web"}, Resources(100, 64 << 20, 1), owner="Deployment/default/web")
        for i in range(300)
    ]
    decisions = schedule(pods, nodes)
    placed = Counter(d.node for d in decisions)
    assert None not in placed
    assert max(placed.values()) == 1
    zones = Counter(d.node and int(d.node.split("-")[1]) % 3 for d in decisions)
    assert sorted(zones.values()) == [100, 100, 100]


def test_full_scan_and_sampling_agree_when_every_node_is_scored() -> None:
    nodes = _cluster(50)  # under 100 nodes every feasible node is scored either way
    pods = [
        PodInfo(
            f"p{i}", "default", {"app": f"a{i % 7}"}, Resources(300 + 10 * i, (100 + i) << 20, 1), owner=f"o{i % 7}"
        )
        for i in range(200)
    ]
    assert _summary(schedule(pods, nodes)) == _summary(schedule(pods, nodes, percentage_of_nodes_to_score=100))


def test_a_full_cluster_reports_every_pod_that_does_not_fit() -> None:
    nodes = _cluster(5)
    pods = [PodInfo(f"p{i:02d}", "default", {}, Resources(3000, 1 << 30, 1)) for i in range(12)]
    decisions = schedule(pods, nodes)
    assert sum(1 for d in decisions if d.node) == 10
    assert [d.message for d in decisions if not d.node] == ["0/5 nodes are available: 5 Insufficient cpu."] * 2


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3)))[:3], ids=str)
def test_bound_pods_count_wherever_they_are_listed(perm: tuple[int, ...]) -> None:
    nodes = _cluster(3)
    bound = [(PodInfo(f"b{i}", "default", {}, Resources(7000, 0, 1)), f"node-000{i}") for i in range(2)]
    bound = [bound[i] for i in perm if i < len(bound)]
    [d] = schedule([PodInfo("p", "default", {}, Resources(2000, 0, 1))], nodes, bound)
    assert d.node == "node-0002"

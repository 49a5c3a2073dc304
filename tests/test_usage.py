"""Resource metrics: the agent's cgroup and /proc readers (on captured files of both cgroup
versions), and the controller's bounded usage window (model/usage.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitorch.model.usage import ContainerUsage, NodeUsage, PodUsage, UsageWindow, node_row, parse_report, pod_row
from gitorch.nodes import agent

# What the kernel writes, captured from a v2 and a v1 container cgroup.
V2_CPU_STAT = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\n"
V2_MEMORY_STAT = "anon 4096000\nfile 2048000\nactive_file 1048000\ninactive_file 1000000\n"
V1_MEMORY_STAT = "cache 2048000\nrss 4096000\ninactive_file 700000\ntotal_inactive_file 1000000\n"


def cgroup(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return str(path)


def test_cgroup_v2_cpu_and_working_set(tmp_path: Path) -> None:
    d = cgroup(tmp_path / "v2", {"cpu.stat": V2_CPU_STAT, "memory.current": "6144000\n", "memory.stat": V2_MEMORY_STAT})
    assert agent.cgroup_cpu_usec([d]) == 2_500_000
    assert agent.cgroup_working_set([d]) == 6_144_000 - 1_000_000


def test_cgroup_v1_reads_cpuacct_and_the_memory_hierarchy(tmp_path: Path) -> None:
    # v1: one dir per hierarchy; cpu.stat there has no usage_usec (throttling counts only).
    mem = cgroup(tmp_path / "memory", {"memory.usage_in_bytes": "6144000\n", "memory.stat": V1_MEMORY_STAT})
    cpu = cgroup(tmp_path / "cpu", {"cpu.stat": "nr_periods 3\nnr_throttled 1\nthrottled_time 5\n"})
    acct = cgroup(tmp_path / "cpuacct", {"cpuacct.usage": "2500000000\n"})
    assert agent.cgroup_cpu_usec([mem, cpu, acct]) == 2_500_000
    # total_inactive_file (this cgroup and its children), not inactive_file, as the kubelet does on v1
    assert agent.cgroup_working_set([mem, cpu, acct]) == 6_144_000 - 1_000_000


def test_no_cgroup_no_figures(tmp_path: Path) -> None:
    d = cgroup(tmp_path / "empty", {})
    assert agent.cgroup_cpu_usec([d]) is None and agent.cgroup_working_set([d]) is None
    # inactive file cache larger than the usage (racy reads) never gives a negative working set
    d2 = cgroup(tmp_path / "racy", {"memory.current": "10\n", "memory.stat": "inactive_file 99\n"})
    assert agent.cgroup_working_set([d2]) == 0


@pytest.mark.parametrize(
    ("before", "after", "per_second", "expected"),
    [
        ((0.0, 0), (15.0, 7_500_000), 1e6, 500),  # half a CPU for 15 s
        ((10.0, 100), (12.0, 500), 100.0, 2000),  # clock ticks: 2 CPUs busy
        (None, (15.0, 7_500_000), 1e6, None),  # no earlier sample
        ((0.0, 900), (15.0, 100), 1e6, None),  # a counter that went back (a new cgroup)
        ((15.0, 0), (15.0, 100), 1e6, None),  # no time passed
    ],
    ids=["half-cpu", "ticks", "first-sample", "counter-reset", "same-time"],
)
def test_rate_millis(before: tuple[float, int] | None, after: tuple[float, int], per_second: float,
                     expected: int | None) -> None:
    assert agent.rate_millis(before, after, per_second) == expected


def test_node_figures_from_proc() -> None:
    ticks = agent.node_cpu_ticks()
    assert ticks is not None and 0 <= ticks[0] <= ticks[1]
    assert agent.metrics_interval(5) == 5.0
    assert agent.metrics_interval(True) == agent.metrics_interval("x") == agent.metrics_interval(0) == 15.0


def sample(name: str, ts: float, cpu: int | None = 100, mem: int | None = 1000, node: str = "n1") -> PodUsage:
    return PodUsage("default", name, node, ts, 15.0, (ContainerUsage("c", cpu, mem),))


def test_parse_report_keeps_what_is_well_formed() -> None:
    raw = {"timestamp": 100.0, "intervalSeconds": 5, "cgroup": "v1", "node": {"cpuMillis": 250, "memoryBytes": -1},
           "pods": [{"namespace": "shop", "name": "web-1", "containers": [
               {"name": "a", "cpuMillis": 10, "memoryBytes": 100}, {"name": "b", "cpuMillis": 5, "memoryBytes": 50}]},
               {"name": 3}, "junk", {"name": "no-containers", "containers": []}]}
    node, pods = parse_report("n1", raw)
    assert node == NodeUsage("n1", 100.0, 250, None, "v1")
    assert [(p.namespace, p.name, p.cpu_millis, p.memory_bytes, p.window) for p in pods] == [
        ("shop", "web-1", 15, 150, 5.0)]
    assert parse_report("n1", None) == (None, []) and parse_report("n1", {"timestamp": "x"}) == (None, [])
    # one container without a CPU figure: the pod has none (a partial sum would understate it)
    partial = PodUsage("d", "p", "n", 1.0, 15.0, (ContainerUsage("a", 10, 1), ContainerUsage("b", None, 1)))
    assert partial.cpu_millis is None and partial.memory_bytes == 2
    assert pod_row(partial)["containers"][1] == {"name": "b", "cpuMillis": None, "memoryBytes": 1}
    assert node_row(NodeUsage("n", 1.0, 500, 1024, "v2"), {"cpuMillis": 2000, "memoryBytes": 4096}) == {
        "name": "n", "timestamp": 1.0, "cpuMillis": 500, "memoryBytes": 1024, "cgroup": "v2",
        "cpuPercent": 25, "memoryPercent": 25}


def test_window_is_bounded_by_count_age_and_pods() -> None:
    w = UsageWindow(max_age=60.0, samples=3, max_pods=2)
    for t in range(5):
        w.add(None, [sample("a", float(t))], now=float(t))
    assert [s.timestamp for s in w.history(("default", "a"))] == [2.0, 3.0, 4.0]  # count
    w.add(None, [sample("a", 4.0, cpu=999)], now=4.0)
    assert w.history(("default", "a"))[-1].cpu_millis == 100  # the same sample is not added twice
    w.add(NodeUsage("n1", 30.0, 1, 1, "v1"), [sample("b", 30.0), sample("c", 31.0)], now=31.0)
    assert set(w.latest()) == {("default", "b"), ("default", "c")}  # max_pods: the stalest went
    assert set(w.latest(fresh_after=30.5)) == {("default", "c")}
    w.prune(now=91.0)  # age: b (30) and the node (30) are older than 60 s, c (31) is not
    assert set(w.latest()) == {("default", "c")} and w.nodes() == {}
    w.prune(now=200.0)
    assert len(w) == 0 and w.latest() == {}

"""A node agent's supervisor killed under `serve` (issue 19's chaos, one fault at a time): pods keep
running, the next pass starts a new supervisor (not the 5-minute resync) and it adopts them
without a restart; a Job's pod adopted that way must still end Succeeded."""

from __future__ import annotations

from functools import partial

import pytest

from gitorch.store.database import PodRecord
from tests.chaos.harness import AGENT_ROOT, ChaosCluster, node_run
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

KILL = (
    f"pid=$(python3 -c 'import json; print(json.load(open(\"{AGENT_ROOT}/supervisor.pid\"))[\"pid\"])') "
    '&& kill -KILL "$pid" && echo "$pid"'
)


def _running(cluster: ChaosCluster) -> dict[str, int]:
    """The workload's processes on the nodes: identity -> pid."""
    views, errors = cluster.views()
    assert not errors, errors
    return {f"{ns}/{name}": pid for v in views.values() for pid, ns, name in v.processes}


def _supervisors(cluster: ChaosCluster) -> dict[str, int | None]:
    views, errors = cluster.views()
    assert not errors, errors
    return {n: v.supervisor.get("pid") if v.supervisor.get("running") else None for n, v in views.items()}


def test_killed_supervisors_are_replaced_and_adopt_their_pods_without_a_restart(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    c.commit("web and db")
    c.start_serve()
    snap, _ = c.converge(timeout=90)
    assert not snap.problems, snap.problems
    before, killed = _running(c), _supervisors(c)
    assert len(before) == 5 and all(killed.values()), (before, killed)
    for node in killed:
        done = node_run(c.lab, node, KILL)
        assert done.returncode == 0, done.stderr
    # Each node gets a new supervisor from the next pass (GITORCH_RESYNC is 300 s: far beyond this wait).
    wait_until("a new supervisor on every node", lambda: _supervisors(c), timeout=60,
               accept=lambda now: all(now[n] not in (None, killed[n]) for n in killed))
    snap, _ = c.converge(timeout=60)
    assert not snap.problems and not snap.duplicates, (snap.problems, snap.duplicates)
    assert _running(c) == before  # the same processes: adopted, not restarted


def test_a_job_pod_adopted_by_a_new_supervisor_still_succeeds(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    c.workload.job, c.workload.job_seconds = 1, 8.0
    c.commit("a job")
    c.start_serve()
    started = wait_until("the Job's pod started", c.job_starts, timeout=60,
                         accept=lambda starts: "chaos/once-1-0" in starts)
    done = node_run(c.lab, started["chaos/once-1-0"][0], KILL)
    assert done.returncode == 0, done.stderr
    pod = wait_until("the Job's pod finished", partial(_job_pod, c), timeout=60,
                     accept=lambda p: p is not None and p.phase in ("Succeeded", "Failed"))
    assert pod is not None and pod.phase == "Succeeded", (pod and pod.reason, pod and pod.message)
    assert len(c.job_starts()["chaos/once-1-0"]) == 1


def _job_pod(cluster: ChaosCluster) -> PodRecord | None:
    return next((p for p in cluster.store.pods() if p.name == "once-1-0"), None)

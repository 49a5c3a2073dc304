"""An emptyDir on disk past its sizeLimit evicts its pod, as the kubelet's eviction manager does:
the node's agent measures the folder, kills the containers, and reports the pod Failed with
reason Evicted in Kubernetes' words; the pod's controller replaces it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.nodes.agent import disk_usage
from gitorch.reconcile.planning import Observed, plan
from tests.gitrepo import GitRepo
from tests.test_agent import PY, Node, ctr, pod
from tests.test_planning import DS, NODES, as_observed, deployment, state


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "root", GITORCH_LOCAL_STORAGE_SECONDS="0.2")  # measured often: the test is short
    try:
        yield n
    finally:
        n.teardown()


def test_disk_usage_counts_allocated_blocks_and_stops_past_the_limit(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 300_000)
    (tmp_path / "g").write_bytes(b"y" * 200_000)
    (tmp_path / "link").symlink_to("/usr")  # not followed
    used = disk_usage(str(tmp_path), 10 << 20)
    assert 500_000 <= used < 700_000
    assert disk_usage(str(tmp_path / "missing"), 1) == 0


def test_a_pod_filling_its_emptydir_past_its_size_limit_is_evicted(node: Node, tmp_path: Path) -> None:
    script = (
        "import os, time\n"
        "d = os.environ['GITORCH_VOLUME_SCRATCH']\n"
        "open(os.path.join(d, 'small'), 'wb').write(os.urandom(100_000))\n"
        "open(os.path.join(d, 'under'), 'w').close()\n"
        "time.sleep(2)\n"  # under the limit for a while: nothing happens
        "open(os.path.join(d, 'big'), 'wb').write(os.urandom(2 * 1024 * 1024))\n"
        "time.sleep(300)\n"
    )
    spec = pod("fill-1", ctr("main", [PY, "-c", script]), volumes=[
        {"name": "scratch", "emptyDir": True, "sizeLimit": 1024 * 1024, "sizeLimitText": "1Mi"}])
    node.sync(spec)
    folder = node.root / "pods" / "test_fill-1" / "volumes" / "scratch"
    node.wait_pod("fill-1", lambda p: (folder / "under").exists(), "some data, under the limit", timeout=20)
    assert node.pods()["fill-1"]["phase"] == "Running"
    p = node.wait_pod("fill-1", lambda p: p["phase"] == "Failed", "Evicted", timeout=20)
    assert p["reason"] == "Evicted", p
    assert p["message"] == 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". ', p
    main = p["containers"][0]
    assert main["state"] == "terminated" and main["restartCount"] == 0, main
    assert 'Evicted: Usage of EmptyDir volume "scratch"' in (node.root / "supervisor.log").read_text()


def test_controllers_replace_an_evicted_pod(repo: GitRepo) -> None:
    from dataclasses import replace

    now = 1000.0
    s = state(repo, {"web.yaml": deployment(2, "v1"), "ds.yaml": DS})
    running = as_observed(plan(s, Observed(now, (), NODES)), now)
    web = next(p for p in running if p.owner_kind == "Deployment")
    agent = next(p for p in running if p.owner_kind == "DaemonSet")
    evict = {web.name, agent.name}
    observed = tuple(replace(p, phase="Failed", ready=False, reason="Evicted") if p.name in evict else p
                     for p in running)
    p = plan(s, Observed(now, observed, NODES))
    assert {r.name for r in p.removed} == evict
    web_pods = [d.name for d in p.pods if d.owner.kind == "Deployment"]
    assert len(web_pods) == 2 and web.name not in web_pods  # a replacement, under a name of its own
    assert agent.name not in {d.name for d in p.pods}  # the DaemonSet's node gets its pod back next pass
    after = tuple(o for o in observed if o.name not in evict)
    again = plan(s, Observed(now, after, NODES))
    assert agent.name in {d.name for d in again.pods if d.node == agent.node}
    # A bare failure (not an eviction) stays as it is: nothing replaces it.
    failed = tuple(replace(p, phase="Failed", reason="Error") if p.name == web.name else p for p in running)
    assert web.name in {d.name for d in plan(s, Observed(now, failed, NODES)).pods}

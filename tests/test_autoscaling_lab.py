"""Resource metrics and the HorizontalPodAutoscaler on real lab nodes (two of them): agents sample
pods' cgroups, the controller keeps the samples, `gitorch top` shows them through serve, and a
CPU-burning Deployment scales up under its HPA and back down after its stabilization window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab, down, up
from gitorch.reconcile.controller import Controller, ControllerSettings
from gitorch.source.git import open_repository
from gitorch.store.database import Store
from tests.gitrepo import GitRepo
from tests.lab import LAB_SUBNET, converge, require_lab, ssh_run
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"


def burner(stop: str, replicas: int = 1, cpu: str = "100m", hpa: str = "") -> str:
    """A Deployment whose pods each burn CPU (capped by their limit) until the file `stop` exists on
    their node (a lab node's /tmp is its own), then idle."""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      containers:
        - name: burn
          command: [sh, -c, "while [ ! -e {stop} ]; do :; done; exec sleep 100000"]
          resources:
            requests: {{cpu: {cpu}, memory: 16Mi}}
            limits: {{cpu: {cpu}, memory: 64Mi}}
          readinessProbe:
            exec: {{command: ["true"]}}
            periodSeconds: 1
""" + hpa


def stop_load(lab: Lab, stop: str) -> None:
    for n in lab.nodes:
        ssh_run(lab, n.name, f"touch {stop}")


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two nodes: enough to spread a scaled-up Deployment, light on this machine."""
    require_lab()
    state_dir = tmp_path_factory.mktemp("lab")
    try:
        yield up(2, state_dir=state_dir, subnet=LAB_SUBNET, nodes_file=state_dir / "nodes.yaml")
    finally:
        down(state_dir)


@pytest.fixture
def cluster(small_lab: Lab, repo: GitRepo, tmp_path: Path) -> Iterator[tuple[GitRepo, Controller]]:
    repo.write({"nodes.yaml": (small_lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE})
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    settings = ControllerSettings(metrics_interval=2.0)
    controller = Controller(open_repository(repo.path), store, tmp_path / "state", settings)
    try:
        yield repo, controller
    finally:
        repo.commit("empty", {"apps.yaml": ""})
        for _ in range(20):
            if controller.reconcile().converged and not store.pods():
                break
        controller.close()
        store.close()


def test_agents_report_pod_and_node_usage_from_cgroups(small_lab: Lab, cluster: tuple[GitRepo, Controller],
                                                       tmp_path: Path) -> None:
    repo, controller = cluster
    stop = f"/tmp/stop-{tmp_path.name}"
    repo.commit("burn", {"apps.yaml": burner(stop, replicas=1, cpu="100m")})
    converge(controller)
    pod = next(p.name for p in controller.store.pods() if p.owner_name == "burn")

    def burning() -> object:
        controller.reconcile()
        return controller.usage.latest().get(("shop", pod))

    # The limit caps it at 100m; a busy machine may give it less, but never nothing.
    sample = wait_until("a CPU sample of the burning pod", burning, timeout=60, interval=0.5,
                        accept=lambda s: s is not None and (s.cpu_millis or 0) >= 20)
    assert sample is not None and sample.cpu_millis is not None and sample.cpu_millis <= 150
    assert sample.memory_bytes is not None and 0 < sample.memory_bytes < 64 * 1024 * 1024
    nodes = controller.usage.nodes()
    assert set(nodes) == {n.name for n in cluster_nodes(controller)}
    # This machine's cgroups are v1 (hybrid): the lab nodes mount the same hierarchies.
    assert {n.cgroup for n in nodes.values()} == {"v1" if Path("/sys/fs/cgroup/cpuacct").is_dir() else "v2"}
    assert all((n.memory_bytes or 0) > 0 for n in nodes.values())

    stop_load(small_lab, stop)  # the load ends: the pod idles
    idle = wait_until("the pod's CPU to fall", burning, timeout=60, interval=0.5,
                      accept=lambda s: s is not None and s.cpu_millis is not None and s.cpu_millis < 10)
    assert idle is not None


def cluster_nodes(controller: Controller) -> list[object]:
    return list(controller.store.nodes())


def test_top_says_when_no_serve_runs(repo: GitRepo, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gitorch", "top", "pods"], capture_output=True, text=True,
                          env={**os.environ, "GITORCH_STATE_DIR": str(tmp_path / "nothing")}, check=False)
    assert proc.returncode == 1
    assert "no `gitorch serve` answers" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def top(state_dir: Path, what: str) -> list[dict[str, object]]:
    proc = subprocess.run([sys.executable, "-m", "gitorch", "top", what, "-o", "json"], capture_output=True,
                          text=True, env={**os.environ, "GITORCH_STATE_DIR": str(state_dir)}, check=False)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, object]] = json.loads(proc.stdout)
    return rows

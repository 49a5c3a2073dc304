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
from tests.lab import converge, require_lab, ssh_run
from tests.test_gitops import free_port
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


# Its own subnet: the session's lab (tests/conftest.py) holds GITORCH_TEST_SUBNET while it is up.
AUTOSCALE_SUBNET = os.environ.get("GITORCH_TEST_AUTOSCALE_SUBNET", "10.231.38.0/24")


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two nodes: enough to spread a scaled-up Deployment, light on this machine."""
    require_lab()
    state_dir = tmp_path_factory.mktemp("lab")
    try:
        yield up(2, state_dir=state_dir, subnet=AUTOSCALE_SUBNET, nodes_file=state_dir / "nodes.yaml")
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


def hpa_manifest(down_window: int) -> str:
    return f"""---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: burn, namespace: shop}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: burn}}
  minReplicas: 1
  maxReplicas: 3
  metrics:
    - type: Resource
      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 60}}}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: {down_window}}}
"""


def gitorch_cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitorch", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "GITORCH_STATE_DIR": str(state_dir)}, timeout=60)


def test_a_cpu_burning_deployment_scales_up_and_back_down(small_lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    from gitorch.store.database import Store

    state_dir = tmp_path / "state"
    stop = f"/tmp/stop-{tmp_path.name}"
    repo.commit("burn with an autoscaler", {
        "nodes.yaml": (small_lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE,
        "apps.yaml": burner(stop, replicas=1, hpa=hpa_manifest(down_window=5)),
    })
    env = {**os.environ, "GITORCH_STATE_DIR": str(state_dir), "GITORCH_METRICS_INTERVAL": "2",
           "GITORCH_HPA_SYNC_PERIOD": "2", "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "serve.log").open("w")
    argv = [sys.executable, "-m", "gitorch", "serve", "--interval", "1", "--listen", f"127.0.0.1:{free_port()}"]
    serve = subprocess.Popen(argv, cwd=repo.path, env=env, stdout=log, stderr=subprocess.STDOUT)
    store: Store | None = None

    def burners() -> list[object]:
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        nonlocal store
        if store is None:
            if not (state_dir / "gitorch.db").exists():
                return []
            store = Store.open(f"sqlite:///{state_dir / 'gitorch.db'}")
        return [p for p in store.pods(namespace="shop") if p.owner_name == "burn" and p.ready]

    def describe() -> str:
        return (tmp_path / "serve.log").read_text()[-3000:]

    try:
        # ~100% of a 100m request against a 60% target: 2 pods (ceil(1 x 100/60); with 50% a sample of
        # 101m would ask for ceil(2.02) = 3 at once), then, still burning, 4: capped at 3, the maximum.
        wait_until("3 ready burning pods", burners, timeout=120, interval=0.5, accept=lambda ps: len(ps) == 3,
                   show=lambda ps: str(len(ps)), describe=describe)
        assert store is not None
        events = [e for e in store.events() if e.reason == "SuccessfulRescale"]
        shown = [(e.first_time, e.kind, e.name, e.reason, e.message) for e in store.events()]
        assert [e.message.split(";")[0] for e in events][:2] == ["New size: 2", "New size: 3"], (shown, describe())
        hpa = store.object_status("HorizontalPodAutoscaler", "shop", "burn")
        assert hpa is not None and hpa.body["autoscaling"]["desiredReplicas"] == 3
        assert {c["type"] for c in hpa.conditions} >= {"AbleToScale", "ScalingActive", "ScalingLimited"}

        # `top` asks the running serve; `get hpa` and `describe hpa` read the store.
        # A pod just started has no CPU figure yet (a window under half an interval is skipped, its
        # memory is shown):
        # wait for the next samples rather than race them.
        names = {p.name for p in burners()}  # type: ignore[attr-defined]
        pods = wait_until("top to show every burning pod", lambda: top(state_dir, "pods"), timeout=30,
                          interval=0.5, accept=lambda got: {p["name"] for p in got
                                                            if isinstance(p["cpuMillis"], int)} >= names)
        assert all(isinstance(p["cpuMillis"], int) for p in pods if p["name"] in names)
        assert {n["name"] for n in top(state_dir, "nodes")} == {n.name for n in small_lab.nodes}
        got = gitorch_cli(state_dir, "get", "hpa", "-o", "json")
        assert got.returncode == 0, got.stderr
        row = json.loads(got.stdout)[0]
        assert (row["reference"], row["minReplicas"], row["maxReplicas"]) == ("Deployment/burn", 1, 3)
        assert row["targets"].startswith("cpu: ") and row["targets"].endswith("/60%")
        text = gitorch_cli(state_dir, "describe", "hpa/burn", "-n", "shop").stdout
        assert "Deployment/burn pods:" in text and "SuccessfulRescale" in text

        # A rollout (new template, Git still says 1) keeps the autoscaler's count.
        repo.commit("burn v2", {"apps.yaml": burner(stop, replicas=1, hpa=hpa_manifest(down_window=5))
                                .replace("periodSeconds: 1", "periodSeconds: 2")})
        hashes = {p.template_hash for p in burners()}  # type: ignore[attr-defined]

        def rolled() -> list[object]:
            ps = burners()
            return ps if hashes.isdisjoint({p.template_hash for p in ps}) else []  # type: ignore[attr-defined]

        wait_until("the rollout to finish", rolled, timeout=120, interval=0.5, accept=lambda ps: len(ps) == 3,
                   show=lambda ps: str(len(ps)), describe=describe)

        # The load ends: after the (shortened) 5 s window, back to 1.
        stop_load(small_lab, stop)
        wait_until("a scale-down to 1", burners, timeout=120, interval=0.5, accept=lambda ps: len(ps) == 1,
                   show=lambda ps: str(len(ps)), describe=describe)
        assert any(e.message.startswith("New size: 1; reason: All metrics below target")
                   for e in store.events() if e.reason == "SuccessfulRescale")
    finally:
        repo.commit("empty", {"apps.yaml": ""})
        try:
            wait_until("the pods to go", lambda: [p for p in (store.pods() if store else []) if p.namespace == "shop"],
                       timeout=60, interval=0.5, accept=lambda ps: not ps)
        finally:
            serve.terminate()
            serve.wait(timeout=60)
            log.close()
            if store is not None:
                store.close()

"""The VerticalPodAutoscaler on a real lab node: serve samples a CPU-burning container every 2 s,
its VPA gets a recommendation above the container's request, `gitorch recommend --format patch`
applies with `git apply` and the result validates, and after a restart of serve the history
comes back from the store's checkpoint instead of starting over."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gitorch.model.quantities import cpu_millis
from gitorch.nodes.lab import Lab, down, up
from gitorch.store.database import Store
from tests.gitrepo import GitRepo, git
from tests.lab import require_lab, ssh_run
from tests.test_gitops import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

# Its own subnet: the session's lab (tests/conftest.py) holds GITORCH_TEST_SUBNET while it is up.
VPA_SUBNET = os.environ.get("GITORCH_TEST_VPA_SUBNET", "10.231.39.0/24")

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"


def app(stop: str) -> str:
    """A container burning CPU up to its 150m limit (until `stop` exists on its node), asking 50m,
    with a VerticalPodAutoscaler that only recommends."""
    return f"""\
# The burner: requests to be resized through `gitorch recommend`.
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn, namespace: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      containers:
        - name: burn  # the busy one
          command: [sh, -c, "while [ ! -e {stop} ]; do :; done; exec sleep 100000"]
          resources:
            requests:
              cpu: 50m
              memory: 16Mi
            limits:
              cpu: 150m
---
apiVersion: autoscaling.k8s.io/v1
kind: VerticalPodAutoscaler
metadata: {{name: burn, namespace: shop}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: burn}}
  updatePolicy: {{updateMode: "Off"}}
  resourcePolicy:
    containerPolicies:
      - containerName: burn
        controlledValues: RequestsOnly
"""


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    state_dir = tmp_path_factory.mktemp("lab")
    try:
        yield up(1, state_dir=state_dir, subnet=VPA_SUBNET, nodes_file=state_dir / "nodes.yaml")
    finally:
        down(state_dir)


def cli(repo: GitRepo, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitorch", *args], cwd=repo.path, env=env, capture_output=True,
                          text=True, check=False, timeout=120)


def test_a_burning_container_gets_a_recommendation_that_survives_a_restart(one_node: Lab, repo: GitRepo,
                                                                          tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    stop = f"/tmp/stop-{tmp_path.name}"
    repo.commit("burn with a VPA", {"nodes.yaml": (one_node.state_dir / "nodes.yaml").read_text(),
                                    "ns.yaml": NAMESPACE, "apps.yaml": app(stop)})
    env = {**os.environ, "GITORCH_STATE_DIR": str(state_dir), "GITORCH_METRICS_INTERVAL": "2",
           "GITORCH_VPA_CHECKPOINT_INTERVAL": "2", "PYTHONUNBUFFERED": "1"}
    logs: list[Path] = []
    serves: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        logs.append(tmp_path / f"serve-{len(logs)}.log")
        argv = [sys.executable, "-m", "gitorch", "serve", "--interval", "1", "--listen", f"127.0.0.1:{free_port()}"]
        serves.append(subprocess.Popen(argv, cwd=repo.path, env=env, stdout=logs[-1].open("w"),
                                       stderr=subprocess.STDOUT))

    def describe() -> str:
        return logs[-1].read_text()[-3000:]

    store: Store | None = None

    def vpa() -> dict[str, Any]:
        assert serves[-1].poll() is None, describe()
        nonlocal store
        if store is None:
            if not (state_dir / "gitorch.db").exists():
                return {}
            store = Store.open(f"sqlite:///{state_dir / 'gitorch.db'}")
        row = store.object_status("VerticalPodAutoscaler", "shop", "burn")
        return {"body": (row.body or {}).get("recommendation") or {}, "updated": row.updated_at} if row else {}

    def target(got: dict[str, Any]) -> dict[str, str]:
        recs = ((got.get("body") or {}).get("recommendation") or {}).get("containerRecommendations") or []
        return dict(recs[0]["target"]) if recs else {}

    start()
    try:
        # Burning up to 150m against a 50m request: the target is above the request (how far depends on
        # how much CPU this machine gives the container; the VPA minimum alone would be 25m).
        got = wait_until("a recommendation above the request", vpa, timeout=180, interval=0.5,
                         accept=lambda g: cpu_millis(target(g).get("cpu", "0")) > 60, show=lambda g: str(target(g)),
                         describe=describe)
        assert store is not None
        assert set(target(got)) == {"cpu", "memory"}
        conditions = {c["type"]: c["status"] for c in got["body"]["conditions"]}
        assert conditions["RecommendationProvided"] == "True" and "NoPodsMatched" not in conditions

        described = cli(repo, env, "describe", "vpa/burn", "-n", "shop")
        assert described.returncode == 0 and "Uncapped Target:" in described.stdout, described.stderr
        patch = cli(repo, env, "recommend", "--format", "patch")
        assert patch.returncode == 0, patch.stderr
        added = [ln for ln in patch.stdout.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
        assert "-              cpu: 50m" in patch.stdout and len(added) == 2, patch.stdout  # RequestsOnly: no limits
        # A target above the 150m limit makes the request the limit (a request above it is invalid).
        new_cpu = next(ln.split(":")[1].strip() for ln in added if "cpu:" in ln)
        assert 60 < cpu_millis(new_cpu) <= 150

        # The history is checkpointed in the store at a bounded rate; a restart takes it back.
        saved = wait_until("a checkpoint", store.checkpoints, timeout=60, interval=0.5,
                           accept=lambda rows: bool(rows) and rows[0][1]["totalSamplesCount"] >= 5,
                           show=lambda rows: str([(k, v["totalSamplesCount"]) for k, v in rows]))
        assert [k for k, _ in saved] == [("shop", "burn", "burn")]
        serves[-1].terminate()
        serves[-1].wait(timeout=60)
        kept = store.checkpoints()
        samples = kept[0][1]["totalSamplesCount"]
        restarted = datetime.now(UTC)
        start()
        again = wait_until("the status after the restart", vpa, timeout=120, interval=0.5,
                           accept=lambda g: g and g["updated"] > restarted and target(g), describe=describe)
        # Had the history started over, the first status would count a sample or two, not the checkpoint's.
        history = again["body"]["history"]["burn"]
        assert history["samples"] >= samples, (history, samples)
        assert "container histories restored" in logs[-1].read_text()

        # The patch applies to the work tree, and the commit it makes validates.
        git("apply", "--check", "-", cwd=repo.path, input=patch.stdout)
        git("apply", "-", cwd=repo.path, input=patch.stdout)
        assert "# the busy one" in (repo.path / "apps.yaml").read_text()
        repo.commit("resize burn as recommended", {})
        checked = cli(repo, env, "validate")
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        ssh_run(one_node, one_node.nodes[0].name, f"touch {stop}", check=False)
        repo.commit("empty", {"apps.yaml": ""})
        try:
            if serves and serves[-1].poll() is None:
                wait_until("the pods to go", lambda: [p for p in (store.pods() if store else [])
                                                      if p.namespace == "shop"],
                           timeout=60, interval=0.5, accept=lambda ps: not ps)
        finally:
            for s in serves:
                if s.poll() is None:
                    s.terminate()
                    s.wait(timeout=60)
            if store is not None:
                store.close()

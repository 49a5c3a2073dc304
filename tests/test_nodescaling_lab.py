"""The cluster autoscaler on real lab nodes: a small active node and a standby one (the session lab,
GITORCH_TEST_SUBNET). A Deployment scaled past the active node's room in Git brings the standby node
into use (its pods Running there), and scaled back down in Git the node drains back to standby after
the Cluster's (shortened) scaleDownUnneededTime; a controller restarted in between carries on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes.lab import Lab, node_manifests
from gitorch.reconcile.controller import Controller
from gitorch.source.git import open_repository
from gitorch.store.database import Store
from tests.gitrepo import GitRepo
from tests.lab import converge
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

CLUSTER = """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: lab}
spec:
  autoscaling: {scaleDownUnneededTime: 3s, scaleDownUtilizationThreshold: 0.5}
"""


def nodes_yaml(lab: Lab) -> str:
    """lab-1 active with 1 CPU to give, lab-2 a standby node of the same size; lab-3 stays out of Git."""
    docs = []
    for body in node_manifests(lab)[:2]:
        body["spec"]["capacity"] = {"cpu": "1"}
        if body["metadata"]["name"] == "lab-2":
            body["spec"]["standby"] = True
        docs.append("---\n" + json.dumps(body) + "\n")
    return "".join(docs)


def deployment(name: str, replicas: int, cpu: str) -> str:
    return f"""\
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: scale}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: main
          command: [sleep, "100000"]
          resources: {{requests: {{cpu: {cpu}, memory: 16Mi}}}}
          readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
"""


def apps(web: int, batch: int) -> str:
    """web's 400m pods and batch's 300m ones, and a DaemonSet's 10m pod on every active node."""
    return """\
apiVersion: v1
kind: Namespace
metadata: {name: scale}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: scale}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
        - {name: agent, command: [sleep, "100000"], resources: {requests: {cpu: 10m, memory: 8Mi}}}
""" + deployment("web", web, "400m") + deployment("batch", batch, "300m")


def scaling(store: Store, node: str) -> dict[str, Any]:
    row = store.object_status("Node", "", node)
    assert row is not None
    found: dict[str, Any] = (row.body or {}).get("scaling") or {}
    return found


def on_node(store: Store, node: str, owner: str) -> list[Any]:
    return [p for p in store.pods(namespace="scale") if p.node == node and p.owner_name == owner]


def passing(controller: Controller, store: Store, node: str, owner: str) -> list[Any]:
    """One pass, then `owner`'s pods on `node`."""
    controller.reconcile()
    return on_node(store, node, owner)


def get_nodes(state_dir: Path) -> dict[str, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "gitorch", "get", "nodes", "-o", "json"], capture_output=True,
                          text=True, check=False, timeout=60, env={**os.environ, "GITORCH_STATE_DIR": str(state_dir)})
    assert proc.returncode == 0, proc.stderr
    return {n["name"]: n for n in json.loads(proc.stdout)}


def test_a_standby_node_is_activated_for_pending_pods_and_returns_to_standby_when_unneeded(
        lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(exist_ok=True)
    store = Store.open(f"sqlite:///{state_dir / 'gitorch.db'}")
    controller = Controller(open_repository(repo.path), store, state_dir)
    try:
        repo.commit("a small node and a standby one", {"cluster.yaml": CLUSTER, "nodes.yaml": nodes_yaml(lab),
                                                        "apps.yaml": apps(2, 0)})
        converge(controller)
        # Two 400m pods fit on lab-1: lab-2 stays on standby, running nothing, not even the DaemonSet's pod.
        assert {p.node for p in store.pods(namespace="scale")} == {"lab-1"}
        assert scaling(store, "lab-2")["state"] == "Standby"
        shown = get_nodes(state_dir)
        assert shown["lab-2"]["status"] == "Ready,Standby" and shown["lab-1"]["status"] == "Ready"

        # batch's pod fits on no active node (lab-1: 810m of 1000m asked): lab-2 is activated and runs
        # it, then its DaemonSet pod.
        repo.commit("scale batch to 1", {"apps.yaml": apps(2, 1)})
        converge(controller)
        wait_until("batch's pod Running on lab-2", lambda: passing(controller, store, "lab-2", "batch"),
                   timeout=60, interval=0.3,
                   accept=lambda ps: len(ps) == 1 and ps[0].phase == "Running" and ps[0].ready)
        state = scaling(store, "lab-2")
        assert state["state"] == "Active" and state["reason"].startswith("scaled up for pod scale/batch-")
        assert any(e.reason == "TriggeredScaleUp" and e.kind == "Node" and e.name == "lab-2" for e in store.events())
        wait_until("the DaemonSet's pod on lab-2", lambda: passing(controller, store, "lab-2", "agent"),
                   timeout=60, interval=0.3, accept=lambda ps: len(ps) == 1 and ps[0].phase == "Running")
        assert get_nodes(state_dir)["lab-2"]["autoscaling"]["state"] == "Active"

        # A new controller on the same store (a restart, or another leader) reads the state back.
        controller.close()
        controller = Controller(open_repository(repo.path), store, state_dir)
        controller.reconcile()
        assert scaling(store, "lab-2") == state

        # web scaled down in Git: batch's pod fits on lab-1 now, lab-2 (31% asked) is unneeded for 3 s,
        # drains (batch's pod evicted, replaced on lab-1) and goes back to standby.
        last = repo.commit("scale web to 1", {"apps.yaml": apps(1, 1)})
        def after_a_pass() -> dict[str, Any]:
            controller.reconcile()
            return scaling(store, "lab-2")

        wait_until("lab-2 back on standby", after_a_pass,
                   timeout=90, interval=0.3, accept=lambda s: s.get("state") == "Standby",
                   describe=lambda: str([(e.reason, e.message) for e in store.events() if e.kind == "Node"]))
        converge(controller)
        wait_until("lab-2 running nothing", lambda: passing(controller, store, "lab-2", "agent"),
                   timeout=60, interval=0.3, accept=lambda ps: not ps)
        assert not [p for p in store.pods(namespace="scale") if p.node == "lab-2"]
        running = sorted((p.owner_name, p.node, p.ready) for p in store.pods(namespace="scale"))
        assert running == [("agent", "lab-1", True), ("batch", "lab-1", True), ("web", "lab-1", True)]
        said = [e.message for e in store.events() if e.kind == "Node" and e.name == "lab-2" and e.reason == "ScaleDown"]
        assert any("toBeDeleted" in m for m in said) and any("back to standby" in m for m in said), said
        assert any(e.reason == "Evicted" and e.name == "batch" for e in store.events())
        assert get_nodes(state_dir)["lab-2"]["status"] == "Ready,Standby"
        described = subprocess.run([sys.executable, "-m", "gitorch", "describe", "node/lab-2"], capture_output=True,
                                   text=True, check=False, timeout=60,
                                   env={**os.environ, "GITORCH_STATE_DIR": str(state_dir)})
        assert "Autoscaling: Standby (scaled down: drained)" in described.stdout, described.stdout + described.stderr
        assert "ScaleDown" in described.stdout and "TriggeredScaleUp" in described.stdout
        from gitorch.server.dashboard import Dashboard

        for page in ("/nodes", "/nodes/lab-2"):
            assert "Standby (scaled down: drained)" in Dashboard(store).render(page), page
        # Git is never rewritten: the branch is still this test's last commit.
        assert subprocess.run(["git", "-C", str(repo.path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() == last
    finally:
        repo.commit("empty", {"apps.yaml": ""})
        for _ in range(20):
            if controller.reconcile().converged and not store.pods():
                break
        controller.close()
        store.close()


def test_through_serve_the_unneeded_time_outlives_a_restart(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    """`gitorch serve` as users run it: the node goes unneeded, serve is stopped and another one started,
    and the new one carries on from the unneeded time the first one recorded (not from its own start)."""
    from tests.test_gitops import free_port

    state_dir = tmp_path / "served"
    env = {**os.environ, "GITORCH_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1"}
    logs: list[Any] = []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"serve-{len(logs)}.log").open("w")
        logs.append(log)
        argv = [sys.executable, "-m", "gitorch", "serve", "--interval", "1", "--listen", f"127.0.0.1:{free_port()}"]
        return subprocess.Popen(argv, cwd=repo.path, env=env, stdout=log, stderr=subprocess.STDOUT)

    cluster = CLUSTER.replace("scaleDownUnneededTime: 3s", "scaleDownUnneededTime: 8s")
    repo.commit("a small node and a standby one", {"cluster.yaml": cluster, "nodes.yaml": nodes_yaml(lab),
                                                    "apps.yaml": apps(2, 1)})
    serve = start()
    store: Store | None = None

    def lab2() -> dict[str, Any]:
        nonlocal store
        assert serve.poll() is None, (tmp_path / f"serve-{len(logs) - 1}.log").read_text()[-3000:]
        if store is None:
            if not (state_dir / "gitorch.db").exists():
                return {}
            store = Store.open(f"sqlite:///{state_dir / 'gitorch.db'}")
        try:
            return scaling(store, "lab-2")
        except AssertionError:  # the Node's row is not written yet
            return {}

    try:
        wait_until("lab-2 activated", lab2, timeout=90, interval=0.3, accept=lambda s: s.get("state") == "Active")
        repo.commit("scale web to 1", {"apps.yaml": apps(1, 1)})
        unneeded = wait_until("lab-2 unneeded", lab2, timeout=60, interval=0.2,
                              accept=lambda s: s.get("unneededSince") is not None)
        serve.terminate()
        serve.wait(timeout=60)
        serve = start()
        # The new serve keeps the recorded start of the unneeded time, then drains lab-2 back to standby.
        since = unneeded["unneededSince"]
        done = wait_until("lab-2 to move on", lab2, timeout=90, interval=0.2,
                          accept=lambda s: s.get("state") != "Active" or s.get("unneededSince") != since)
        assert done.get("state") in ("ScalingDown", "Standby"), (done, unneeded)  # not counting anew
        wait_until("lab-2 back on standby", lab2, timeout=90, interval=0.3,
                   accept=lambda s: s.get("state") == "Standby")
    finally:
        repo.commit("empty", {"apps.yaml": ""})
        try:
            wait_until("the pods to go", lambda: [p for p in (store.pods() if store else []) if p.namespace == "scale"],
                       timeout=60, interval=0.5, accept=lambda ps: not ps)
        finally:
            serve.terminate()
            serve.wait(timeout=60)
            for log in logs:
                log.close()
            if store is not None:
                store.close()

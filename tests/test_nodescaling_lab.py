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


def apps(replicas: int) -> str:
    return f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: scale}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: scale}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          command: [sleep, "100000"]
          resources: {{requests: {{cpu: 400m, memory: 16Mi}}}}
          readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: scale}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      containers:
        - {{name: agent, command: [sleep, "100000"], resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}}}
"""


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
                                                        "apps.yaml": apps(2)})
        converge(controller)
        # Two 400m pods fit on lab-1: lab-2 stays on standby, running nothing, not even the DaemonSet's pod.
        assert {p.node for p in store.pods(namespace="scale")} == {"lab-1"}
        assert scaling(store, "lab-2")["state"] == "Standby"
        shown = get_nodes(state_dir)
        assert shown["lab-2"]["status"] == "Ready,Standby" and shown["lab-1"]["status"] == "Ready"

        # A third pod fits on no active node: lab-2 is activated and runs it, and then its DaemonSet pod.
        repo.commit("scale web to 3", {"apps.yaml": apps(3)})
        converge(controller)
        wait_until("web's third pod Running on lab-2", lambda: passing(controller, store, "lab-2", "web"),
                   timeout=60, interval=0.3,
                   accept=lambda ps: len(ps) == 1 and ps[0].phase == "Running" and ps[0].ready)
        state = scaling(store, "lab-2")
        assert state["state"] == "Active" and state["reason"].startswith("scaled up for pod scale/web-")
        assert any(e.reason == "TriggeredScaleUp" and e.kind == "Node" and e.name == "lab-2" for e in store.events())
        wait_until("the DaemonSet's pod on lab-2", lambda: passing(controller, store, "lab-2", "agent"),
                   timeout=60, interval=0.3, accept=lambda ps: len(ps) == 1 and ps[0].phase == "Running")
        assert get_nodes(state_dir)["lab-2"]["autoscaling"]["state"] == "Active"

        # A new controller on the same store (a restart, or another leader) reads the state back.
        controller.close()
        controller = Controller(open_repository(repo.path), store, state_dir)
        controller.reconcile()
        assert scaling(store, "lab-2") == state

        # Scaled back down in Git: what is left fits on lab-1, lab-2 is unneeded for 3 s, drains, and
        # goes back to standby; the web pod that was there (if any) is Running on lab-1.
        last = repo.commit("scale web to 1", {"apps.yaml": apps(1)})
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
        web = [p for p in store.pods(namespace="scale") if p.owner_name == "web"]
        assert len(web) == 1 and web[0].node == "lab-1" and web[0].ready
        reasons = [e.reason for e in store.events() if e.kind == "Node" and e.name == "lab-2"]
        assert "ScaleDown" in reasons, reasons
        assert get_nodes(state_dir)["lab-2"]["status"] == "Ready,Standby"
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

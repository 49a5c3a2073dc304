"""A plan reviewed against the cluster is what gets applied; a stale one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab
from gitorch.store.database import Store
from tests.gitrepo import GitRepo
from tests.samples import gitorch
from tests.test_reconcile import NAMESPACE, _fix_port, node_pods, web

pytestmark = pytest.mark.lab

SERVICE = """\
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""


def test_saved_plan_applies_and_a_stale_one_is_refused(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    v1 = repo.commit(
        "v1",
        {
            "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
            "ns.yaml": NAMESPACE,
            "apps.yaml": _fix_port(web(replicas=2)),
        },
    )
    assert gitorch("apply", "--wait", "--timeout", "60", cwd=repo.path).returncode == 0
    try:
        repo.commit("v2", {"apps.yaml": _fix_port(web(replicas=3, version="v2")) + SERVICE})
        saved = tmp_path / "plan.json"
        shown = gitorch("plan", "--base", v1, "--against-cluster", "--out", str(saved), cwd=repo.path)
        assert shown.returncode == 0, shown.stderr
        assert "What the cluster would do" in shown.stdout and "+ pod shop/web-" in shown.stdout
        assert "- pod shop/web-" in shown.stdout  # the old revision's pods stop during the rollout
        doc = json.loads(saved.read_text())
        started = [s for step in doc["cluster"]["steps"] for s in step["started"]]
        assert len(started) == 3 and all(s["node"].startswith("lab-") for s in started)
        # The new Service's address and node port are planned, shown, and then exactly what apply uses.
        vip = doc["cluster"]["clusterIPs"]["web.shop.svc.cluster.local"]
        port = doc["cluster"]["nodePorts"]["shop/web:http"]
        assert f"+ DNS web.shop.svc.cluster.local -> {vip}" in shown.stdout
        assert f"+ node port {port} for Service shop/web port http" in shown.stdout
        md = gitorch("plan", "--base", v1, "--against-cluster", "--format", "markdown", cwd=repo.path).stdout
        assert "**Cluster:** 3 pod(s) start, 2 stop" in md

        applied = gitorch("apply", "--plan", str(saved), cwd=repo.path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "applying the reviewed plan" in applied.stdout
        running = [p for ps in node_pods(lab, "web-").values() for p in ps]
        assert len(running) == 3
        state = tmp_path / "state"
        with Store.open(f"sqlite:///{state / 'gitorch.db'}") as store:
            assert [(c.service, c.ip) for c in store.cluster_ips()] == [("web", vip)]
            assert [(n.service, n.port) for n in store.node_ports()] == [("web", port)]
        # The same plan again: the cluster has changed since it was made.
        again = gitorch("apply", "--plan", str(saved), cwd=repo.path)
        assert again.returncode == 1 and "the cluster changed since the plan was made" in again.stderr
        # A plan for a head the branch has since left.
        gitorch("plan", "--against-cluster", "--out", str(saved), cwd=repo.path)
        repo.commit("v3", {"apps.yaml": _fix_port(web(replicas=1, version="v3"))})
        moved = gitorch("apply", "--plan", str(saved), cwd=repo.path)
        assert moved.returncode == 1 and "the branch moved since the plan was made" in moved.stderr
        assert "Traceback" not in moved.stderr
        assert len([p for ps in node_pods(lab, "web-").values() for p in ps]) == 3  # untouched
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        assert "not a saved gitorch plan" in gitorch("apply", "--plan", str(bad), cwd=repo.path).stderr
    finally:
        repo.commit("empty", {"apps.yaml": ""})
        assert gitorch("apply", "--wait", "--timeout", "60", cwd=repo.path).returncode == 0

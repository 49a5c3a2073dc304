"""A pod's identity on a node is (namespace, name): on real lab nodes, through a real apply."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gitorch.nodes.lab import Lab
from tests.gitrepo import GitRepo
from tests.lab import ssh_run
from tests.samples import gitorch

pytestmark = pytest.mark.lab


def namespace(name: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"


def agent_daemonset(ns: str, node: str) -> str:
    """A DaemonSet named `agent` in `ns`, pinned to one node; its pod says who it is."""
    return f"""\
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      containers:
        - name: agent
          command: [sh, -c, 'echo "I am $POD_NAMESPACE/$POD_NAME"; exec sleep 600']
          readinessProbe:
            exec: {{command: ["true"]}}
            periodSeconds: 1
"""


def node_status(lab: Lab, node: str) -> dict[str, Any]:
    script = "python3 \"$(ls -t /var/lib/gitorch/agent/agent-*.py | head -1)\" status"
    return dict(json.loads(ssh_run(lab, node, script).stdout))


def test_two_daemonsets_of_one_name_in_two_namespaces_share_a_node(lab: Lab, repo: GitRepo) -> None:
    node = lab.nodes[0].name
    repo.commit(
        "one DaemonSet name, two namespaces",
        {
            "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
            "ns.yaml": namespace("team-a") + "---\n" + namespace("team-b"),
            "apps.yaml": agent_daemonset("team-a", node) + "---\n" + agent_daemonset("team-b", node),
        },
    )
    try:
        applied = gitorch("apply", "--wait", "--timeout", "90", cwd=repo.path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        names = {}
        for ns in ("team-a", "team-b"):
            pods = json.loads(gitorch("get", "pods", "-n", ns, "-o", "json", cwd=repo.path).stdout)
            assert len(pods) == 1 and pods[0]["node"] == node and pods[0]["ready"], pods
            assert pods[0]["phase"] == "Running"
            names[ns] = pods[0]["name"]
        # One pod name in both namespaces (the DaemonSet's name and the node's hash) ...
        assert names["team-a"] == names["team-b"]
        # ... and the node runs both, each in its own folder and network namespace.
        on_node = [p for p in node_status(lab, node)["pods"] if p["name"] == names["team-a"]]
        assert sorted(p["namespace"] for p in on_node) == ["team-a", "team-b"]
        assert all(p["phase"] == "Running" and p["ready"] for p in on_node), on_node
        assert len({p["podIP"] for p in on_node}) == 2 and all(p["podIP"] for p in on_node)
        pids = {p["containers"][0]["pid"] for p in on_node}
        assert len(pids) == 2
        folders = ssh_run(lab, node, "ls /var/lib/gitorch/pods").stdout.split()
        assert {f"team-a_{names['team-a']}", f"team-b_{names['team-b']}"} <= set(folders)
        for ns in ("team-a", "team-b"):
            logs = gitorch("logs", names[ns], "-n", ns, cwd=repo.path)
            assert logs.returncode == 0, logs.stderr
            assert logs.stdout == f"I am {ns}/{names[ns]}\n"
    finally:
        repo.commit("empty", {"apps.yaml": ""})
        emptied = gitorch("apply", "--wait", "--timeout", "60", cwd=repo.path)
        assert emptied.returncode == 0, emptied.stdout + emptied.stderr

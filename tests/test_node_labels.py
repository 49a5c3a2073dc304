"""The labels every Kubernetes node has (kubernetes.io/hostname, os, arch), from the agent's facts:
a Deployment selecting `kubernetes.io/os: linux` schedules, and validation does not warn about it."""

from __future__ import annotations

import json
import platform
import textwrap
from types import SimpleNamespace

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.nodes.lab import Lab
from gitorch.reconcile.controller import node_info
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.samples import gitorch


def manifest(name: str, labels: dict[str, str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(spec={}, key=SimpleNamespace(name=name), labels=labels or {})


def test_node_info_labels_from_facts() -> None:
    info = node_info(manifest("n1"), {"goos": "linux", "goarch": "arm64", "arch": "aarch64"}, True)
    assert info.labels == {"kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}


def test_node_info_maps_uname_machine_for_older_agents() -> None:
    assert node_info(manifest("n1"), {"arch": "x86_64"}, True).labels["kubernetes.io/arch"] == "amd64"
    assert node_info(manifest("n1"), {"arch": "aarch64"}, True).labels["kubernetes.io/arch"] == "arm64"
    # No facts (an unreachable node): the OS is known (agents run on Linux), the architecture is not.
    labels = node_info(manifest("n1"), {}, False).labels
    assert labels == {"kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux"}


def test_node_manifest_labels_win() -> None:
    info = node_info(manifest("n1", {"kubernetes.io/arch": "riscv64", "zone": "a"}), {"goarch": "amd64"}, True)
    assert info.labels["kubernetes.io/arch"] == "riscv64" and info.labels["zone"] == "a"


def deployment(selector: dict[str, str]) -> str:
    return textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web}}
        spec:
          replicas: 1
          selector: {{matchLabels: {{app: web}}}}
          template:
            metadata: {{labels: {{app: web}}}}
            spec:
              nodeSelector: {json.dumps(selector)}
              containers:
                - name: web
                  command: [sleep, "600"]
        """)


NODES = "apiVersion: gitorch.dev/v1\nkind: Node\nmetadata: {name: n1}\nspec: {address: 10.0.0.1}\n"


@pytest.mark.parametrize(
    ("selector", "warned"),
    [
        ({"kubernetes.io/os": "linux"}, False),
        ({"kubernetes.io/arch": "amd64"}, False),
        ({"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}, False),
        ({"kubernetes.io/hostname": "n1"}, False),
        ({"kubernetes.io/os": "windows"}, True),
        ({"kubernetes.io/arch": "vax"}, True),
        ({"kubernetes.io/hostname": "n2"}, True),
    ],
)
def test_validate_takes_well_known_node_labels_as_present(
    repo: GitRepo, selector: dict[str, str], warned: bool
) -> None:
    repo.commit("nodeSelector", {"nodes.yaml": NODES, "app.yaml": deployment(selector)})
    state = desired.load(open_repository(repo.path), None)
    got = [d.format() for d in state.diagnostics]
    assert not [d for d in state.diagnostics if d.severity is Severity.ERROR], got
    assert any("no Node has the labels" in g for g in got) is warned, got


@pytest.mark.lab
def test_deployment_selecting_linux_and_arch_runs(lab: Lab, repo: GitRepo) -> None:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    repo.commit(
        "a Deployment selecting the well-known node labels",
        {
            "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
            "app.yaml": deployment({"kubernetes.io/os": "linux", "kubernetes.io/arch": arch}),
        },
    )
    try:
        applied = gitorch("apply", "--wait", "--timeout", "90", cwd=repo.path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        pods = json.loads(gitorch("get", "pods", "-o", "json", cwd=repo.path).stdout)
        assert len(pods) == 1 and pods[0]["phase"] == "Running", pods
        assert pods[0]["node"] in {n.name for n in lab.nodes}
    finally:
        repo.commit("empty", {"app.yaml": ""})
        emptied = gitorch("apply", "--wait", "--timeout", "60", cwd=repo.path)
        assert emptied.returncode == 0, emptied.stdout + emptied.stderr

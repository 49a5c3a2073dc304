"""Every example in examples/ validates, and plans cleanly from an empty cluster."""

from __future__ import annotations

from gitorch.model.diagnostics import Severity
from gitorch.source import desired
from gitorch.source.diffs import Action, diff_states
from gitorch.source.git import open_repository
from tests.conftest import EXAMPLES
from tests.gitrepo import GitRepo
from tests.samples import gitorch


def test_example_repo_validates_without_errors_or_warnings(repo: GitRepo) -> None:
    repo.copy_tree(EXAMPLES)
    repo.commit("example")
    state = desired.load(open_repository(repo.path), None)
    assert [d.format() for d in state.diagnostics] == []
    kinds = {k.kind for k in state.objects}
    assert kinds >= {
        "Cluster",
        "Node",
        "Namespace",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "CronJob",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
    }
    assert len([k for k in state.objects if k.kind == "Node"]) == 3


def test_example_plan_from_empty(repo: GitRepo) -> None:
    repo.copy_tree(EXAMPLES)
    repo.commit("example")
    r = open_repository(repo.path)
    changes = diff_states(desired.load(r, ""), desired.load(r, None))
    assert {c.action for c in changes.changes} == {Action.CREATE}
    res = gitorch("plan", cwd=repo.path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip().endswith(f"Plan: {len(changes.changes)} to add, 0 to change, 0 to destroy.")


def test_example_repo_as_a_folder_of_a_larger_repository(repo: GitRepo) -> None:
    repo.copy_tree(EXAMPLES, "deploy/cluster")
    repo.write({"ci/workflow.yml": "on: push\n"})
    repo.commit("monorepo")
    res = gitorch("validate", "--repo", "deploy/cluster", cwd=repo.path)
    assert res.returncode == 0, res.stderr
    assert "are valid" in res.stdout
    assert not [
        d
        for d in desired.load(open_repository(repo.path / "deploy" / "cluster"), None).diagnostics
        if d.severity is Severity.ERROR
    ]

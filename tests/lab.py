"""Helpers for tests that run on real lab nodes (see gitorch.nodes.lab)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab, LabError, preflight, ssh_command
from gitorch.reconcile.controller import Controller, PassResult
from gitorch.source.git import open_repository
from gitorch.store.database import Store
from tests.gitrepo import GitRepo
from tests.waiting import wait_until

SSH_TIMEOUT = 30.0
# The session lab's subnet: not the default 10.231.0.0/24, so a user's own lab is left alone.
LAB_SUBNET = os.environ.get("GITORCH_TEST_SUBNET", "10.231.7.0/24")


def require_lab() -> None:
    """Skip the calling test when this machine cannot run a lab; in CI, fail instead."""
    try:
        preflight()
    except LabError as exc:
        reason = f"lab nodes unavailable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must not skip lab tests)", pytrace=False)
        pytest.skip(reason)


def ssh_run(lab: Lab, node: str, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a shell script on a node with the OpenSSH client; fail the test on error."""
    proc = subprocess.run(
        ssh_command(lab, node, ["sh", "-c", script]),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{node}: {script!r} exited {proc.returncode}: {proc.stderr.strip()}", pytrace=False)
    return proc


@contextlib.contextmanager
def controlled(lab: Lab, repo: GitRepo, tmp_path: Path, namespace: str) -> Iterator[tuple[GitRepo, Controller]]:
    """A repository holding the lab's Nodes and `namespace`, and a Controller (own store) for it;
    the nodes are left empty afterwards for the next test."""
    repo.write(
        {
            "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
            "ns.yaml": f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n",
        }
    )
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    controller = Controller(open_repository(repo.path), store, tmp_path / "state")
    try:
        yield repo, controller
    finally:
        repo.commit("empty", {"apps.yaml": ""})
        for _ in range(20):
            if controller.reconcile().converged and not store.pods():
                break
        controller.close()
        store.close()


def converge(
    controller: Controller, timeout: float = 60.0, each: Callable[[PassResult], None] | None = None
) -> PassResult:
    """Reconcile passes until the controller reports convergence (fails the test at `timeout`)."""

    def one_pass() -> PassResult:
        result = controller.reconcile()
        if each is not None:
            each(result)
        return result

    return wait_until("convergence", one_pass, timeout=timeout, interval=0.3, accept=lambda r: r.converged,
                      show=lambda r: f"{r.plan and r.plan.statuses}, node errors {r.node_errors}")

"""Fenced leadership (issue 19): one controller acts at a time, a deposed one is refused by the
store and the nodes, one-shot commands take the lease or name the leader, and a follower takes
over when the leader dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab
from gitorch.reconcile.leadership import LEASE
from gitorch.store.database import StaleLeader, Store
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge
from tests.waiting import wait_until

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: lead}\n"

WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: lead}
spec:
  replicas: REPLICAS
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - {name: web, command: [sleep, "3600"]}
"""


class Serve:
    """A `gitorch serve` process whose merged output is collected as it runs."""

    def __init__(self, repo: Path, env: dict[str, str], listen: str) -> None:
        cmd = [sys.executable, "-m", "gitorch", "serve", "--interval", "1", "--listen", listen]
        self.proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        def search() -> re.Match[str] | None:
            found = re.search(pattern, self.output())
            assert found or self.proc.poll() is None, f"serve exited:\n{self.output()}"
            return found

        return wait_until(f"{pattern!r} in serve's output", search, timeout=timeout, interval=0.1,
                          show=lambda _: "no match", describe=self.output)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)


def test_apply_and_heal_refuse_while_serve_leads_naming_it(repo: GitRepo, tmp_path: Path) -> None:
    repo.commit("ns", {"ns.yaml": NS})
    env = {**os.environ, "GITORCH_STATE_DIR": str(tmp_path / "state")}
    serve = Serve(repo.path, env, "127.0.0.1:0")
    try:
        serve.wait_for(r"leading \(.*term 1\)")
        for args in (["apply"], ["drift", "--run", "--heal"]):
            res = subprocess.run([sys.executable, "-m", "gitorch", *args], cwd=repo.path, env=env,
                                 capture_output=True, text=True, timeout=60)
            assert res.returncode == 1, res
            assert re.search(r"the controller \S+:\d+ leads \(term 1,", res.stderr), res.stderr
            assert "Traceback" not in res.stderr
        # A drift check that only reports still runs, and says why it does not heal.
        res = subprocess.run([sys.executable, "-m", "gitorch", "drift", "--run"], cwd=repo.path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res
        assert "only reports" in res.stderr
    finally:
        serve.stop()
    # Once serve stopped (it released the lease), apply takes it.
    res = subprocess.run([sys.executable, "-m", "gitorch", "apply"], cwd=repo.path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_a_follower_leads_in_a_new_term_when_the_leader_dies(repo: GitRepo, tmp_path: Path) -> None:
    repo.commit("ns", {"ns.yaml": NS})
    env = {**os.environ, "GITORCH_STATE_DIR": str(tmp_path / "state")}
    first = Serve(repo.path, env, "127.0.0.1:0")
    second: Serve | None = None
    try:
        first.wait_for(r"leading \(.*term 1\)")
        second = Serve(repo.path, env, "127.0.0.1:0")
        second.wait_for("standing by")
        first.stop(signal.SIGKILL)  # no release: the follower must wait for the lease to lapse
        second.wait_for(r"leading \(.*term 2\)", timeout=60)
        second.wait_for(r"pass \d+: \w+ valid")
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()
    assert "term 2" not in first.output()


@pytest.mark.lab
def test_a_deposed_controller_is_refused_before_it_touches_a_node(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    with controlled(lab, repo, tmp_path, "lead") as (repo, controller):
        store: Store = controller.store
        term = store.acquire_lease(LEASE, "old-leader", 15)
        assert term is not None
        repo.commit("two", {"apps.yaml": WEB.replace("REPLICAS", "2")})
        first = controller.reconcile(fence=term)
        assert first.valid
        converge(controller)
        # Another controller takes over (the old one paused past its lease), in term 2.
        newer = store.acquire_lease(LEASE, "new-leader", 15, datetime.now(UTC) + timedelta(hours=1))
        assert newer is not None and newer.term == term.term + 1
        head = repo.commit("three", {"apps.yaml": WEB.replace("REPLICAS", "3")})
        with pytest.raises(StaleLeader, match="held by new-leader"):
            controller.reconcile(fence=term)
        # Nothing of that pass reached the store or the nodes: still two pods, the head not applied.
        assert len([p for p in store.pods(namespace="lead") if p.owner_name == "web"]) == 2
        last = store.last_applied_revision()
        assert last is not None and last.commit != head
        store.release_lease(LEASE, "new-leader")

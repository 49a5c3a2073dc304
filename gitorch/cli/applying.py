"""`gitorch apply`: reconcile passes until the cluster matches a commit, showing progress."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from gitorch.cli import console
from gitorch.reconcile.controller import Controller, ControllerSettings, PassResult
from gitorch.reconcile.leadership import Leadership
from gitorch.source.git import Repository
from gitorch.store.database import Store

PASS_INTERVAL = 0.5  # seconds between passes while waiting; a pass is cheap when nothing changes


def _summary(result: PassResult) -> list[str]:
    lines = []
    if result.plan is not None:
        for key, s in sorted(result.plan.statuses.items()):
            lines.append(f"  {s.health:<11} {key}  {s.message}")
    for node, err in sorted(result.node_errors.items()):
        state = "NotReady   " if node in result.lost_nodes else "unreachable"
        lines.append(f"  {state} {err}")
    return lines


def apply(repo: Repository, store: Store, state_dir: Path, *, rev: str | None, wait: bool, timeout: float,
          leadership: Leadership | None = None, trust_keys: tuple[str, ...] = ()) -> bool:
    """True when the commit was valid and (with `wait`) every workload became Healthy; each pass
    is fenced by `leadership`'s term when given."""
    settings = dataclasses.replace(ControllerSettings.from_env(), trust_keys=trust_keys)
    controller = Controller(repo, store, state_dir, settings)
    deadline = time.monotonic() + timeout
    last: list[str] = []
    try:
        while True:
            fence = None
            if leadership is not None:
                fence = leadership.fence or leadership.renew()
                if fence is None:
                    console.error("lost the controller lease (another controller leads now); stopped")
                    return False
            result = controller.reconcile(rev, fence=fence)
            if not result.valid:
                for line in result.diagnostics:
                    console.write(line, stderr=True)
                console.error(
                    f"{result.revision.short} is invalid and was not applied; the last good revision keeps running"
                )
                return False
            lines = _summary(result)
            if lines != last:
                console.write(f"{time.strftime('%H:%M:%S')} {result.revision.short}:")
                for line in lines:
                    console.write(line)
                last = lines
            if not wait or result.converged:
                if wait:
                    console.write(f"converged on {result.revision.short} ({result.revision.subject})")
                return True
            if time.monotonic() > deadline:
                console.error(f"not converged after {timeout:g} s (see `gitorch status`)")
                return False
            time.sleep(PASS_INTERVAL)
    finally:
        controller.close()

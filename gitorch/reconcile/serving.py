"""`gitorch serve`: the controller process. Reconcile passes on a timer, leader election
through the store, clean shutdown on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

from gitorch import console
from gitorch.reconcile.controller import Controller, ControllerSettings, PassResult
from gitorch.source import Repository
from gitorch.store import Store
from gitorch.timers import Timers

LEASE = "gitorch-controller"


class Server:
    """Runs reconcile passes every `interval` seconds while it holds the controller lease."""

    def __init__(
        self,
        repo: Repository,
        store: Store,
        state_dir: Path,
        *,
        branch: str | None,
        interval: float,
        settings: ControllerSettings | None = None,
    ) -> None:
        self.repo = repo
        self.store = store
        self.branch = branch
        self.interval = interval
        self.controller = Controller(repo, store, state_dir, settings or ControllerSettings.from_env())
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.timers = Timers()
        self.stopping = threading.Event()
        self._last: tuple[str, ...] = ()
        self._leader: bool | None = None
        self.passes = 0

    def _describe(self, result: PassResult) -> tuple[str, ...]:
        lines = [f"{result.revision.short} {'valid' if result.valid else 'INVALID'}"]
        if result.plan is not None:
            lines += [f"{s.health} {k}: {s.message}" for k, s in sorted(result.plan.statuses.items())]
        lines += [f"node error: {e}" for _, e in sorted(result.node_errors.items())]
        return tuple(lines)

    def reconcile(self) -> None:
        if self.stopping.is_set():
            return
        ttl = max(15.0, self.interval * 3)
        leader = self.store.try_acquire_lease(LEASE, self.holder, ttl)
        if leader != self._leader:
            console.write(f"{time.strftime('%H:%M:%S')} {'leading' if leader else 'standing by'} ({self.holder})")
            self._leader = leader
        if not leader:
            return
        try:
            result = self.controller.reconcile(self.branch)
        except Exception as exc:  # a failed pass is retried on the next tick, never fatal
            console.error(f"reconcile pass failed: {exc}")
            return
        self.passes += 1
        lines = self._describe(result)
        if lines != self._last:
            console.write(f"{time.strftime('%H:%M:%S')} " + "\n  ".join(lines))
            self._last = lines

    def run(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.timers.every(self.interval, self.reconcile, "reconcile")
        self.timers.start()
        console.write(
            f"gitorch serve: watching {self.repo.path} ({self.branch or 'HEAD'}), a pass every {self.interval:g} s"
        )
        try:
            self.stopping.wait()
        finally:
            console.write("stopping: finishing the current pass")
            self.timers.stop()
            self.store.release_lease(LEASE, self.holder)
            self.controller.close()
            console.write("stopped")

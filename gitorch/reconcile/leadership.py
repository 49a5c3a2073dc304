"""Leadership: one controller at a time acts on the cluster, fenced by lease terms.

The lease lives in the store and is renewed on its own timer, whatever a pass takes, against
the database's clock. Each term has a number (a fencing token): the store refuses writes and
node agents refuse syncs from an older term than one they have seen, so a controller that
paused past its lease cannot act on what it believed before. `serve` holds the lease while it
runs; one-shot commands that change the cluster (`apply`, `rollback`, `drift --heal`) take it
for their duration or refuse, naming the leader.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from gitorch.model.errors import GitorchError
from gitorch.store.database import Fence, Store, StoreError

log = logging.getLogger(__name__)

LEASE = "gitorch-controller"
DEFAULT_TTL = 15.0
SAFETY = 0.8
"""Act only within this share of the lease after a renewal: a margin for clock rate and delays."""


class LeaderBusy(GitorchError):
    """Another controller holds the lease."""


def holder_name() -> str:
    """A unique holder name for this process (host:pid), as Kubernetes' leader election uses."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership:
    """The lease of one controller process: `renew` takes or keeps it, `fence` is the current
    term while it is safely held (None otherwise). Thread-safe."""

    def __init__(
        self,
        store: Store,
        holder: str,
        ttl: float = DEFAULT_TTL,
        *,
        lease: str = LEASE,
    ) -> None:
        self.store = store
        self.holder = holder
        self.ttl = ttl
        self.lease = lease
        self._lock = threading.Lock()
        self._fence: Fence | None = None
        self._valid_until = 0.0

    @property
    def fence(self) -> Fence | None:
        """The current term, if it was renewed recently enough to act on."""
        with self._lock:
            if self._fence is not None and time.monotonic() < self._valid_until:
                return self._fence
            return None

    @property
    def leading(self) -> bool:
        return self.fence is not None

    def renew(self) -> Fence | None:
        """Take or renew the lease now; a store error counts as not leading."""
        started = time.monotonic()
        try:
            fence = self.store.acquire_lease(self.lease, self.holder, self.ttl)
        except StoreError as exc:
            log.error("lease renewal failed: %s", exc)
            fence = None
        self._set(fence, started)
        return fence

    def lost(self, why: str) -> None:
        """Stop acting at once (a node or the store refused this term)."""
        log.warning("leadership lost: %s", why)
        self._set(None, time.monotonic())

    def release(self) -> None:
        with self._lock:
            had = self._fence is not None
            self._fence = None
        if had:
            try:
                self.store.release_lease(self.lease, self.holder)
            except StoreError as exc:
                log.warning("could not release the lease: %s", exc)

    def _set(self, fence: Fence | None, started: float) -> None:
        with self._lock:
            self._fence = fence
            # Measured from before the request: the lease may have been granted at its start.
            self._valid_until = started + self.ttl * SAFETY if fence is not None else 0.0


def _holder_is_dead(store: Store) -> bool:
    """A lease held by a process of this host that no longer exists (a killed `apply`) is ended
    at once rather than waited out; leases of other hosts always run their course."""
    current = store.lease(LEASE)
    if current is None:
        return False
    host, _, pid = current.holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
        return False
    except ProcessLookupError:
        pass
    except PermissionError:
        return False  # alive, someone else's
    log.warning("the controller lease's holder %s is dead: taking the lease over", current.holder)
    return store.break_lease(LEASE, current.holder)


@contextmanager
def exclusive(store: Store, what: str, ttl: float = DEFAULT_TTL) -> Iterator[Leadership]:
    """Hold the controller lease for a one-shot command, renewed every ttl/3 on a thread of its
    own; refuse with LeaderBusy, naming the leader and its term, when another holds it."""
    leadership = Leadership(store, holder_name(), ttl)
    if leadership.renew() is None and _holder_is_dead(store):
        leadership.renew()
    if leadership.fence is None:
        current = store.lease(LEASE)
        if current is None:
            raise LeaderBusy(f"{what}: the controller lease cannot be taken (the store refused it); retry")
        left = max(0.0, (current.expires_at - datetime.now(UTC)).total_seconds())
        raise LeaderBusy(
            f"{what}: the controller {current.holder} leads (term {current.term}, lease renewed "
            f"{current.renewed_at:%H:%M:%S} UTC, {left:.0f} s left); it applies the branch it follows. "
            "Push to Git instead, or stop that controller first"
        )
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl / 3):
            leadership.renew()

    thread = threading.Thread(target=keep, name="lease", daemon=True)
    thread.start()
    try:
        yield leadership
    finally:
        stop.set()
        thread.join(timeout=5)
        leadership.release()

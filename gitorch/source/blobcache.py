"""A bounded, least-recently-used cache of what each Git blob parsed and validated to.

Git blobs are content-addressed: a file whose blob id did not change parses and validates
to the same documents and diagnostics, so a commit that changes one file re-validates one
file. The controller loads the head on every pass and `plan` loads two commits that share
most files; both reuse what the previous load computed. The cache lives in the process
only and is bounded by entries and by an estimate of the bytes its values hold: the least
recently used are dropped first (its retention rule). Values must be immutable, as every
load that hits shares them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheLimits:
    """Bounds on the cache; whichever is reached first evicts the least recently used."""

    entries: int = 100_000
    """Files kept: the tree walk reads at most 100,000 files and folders of one commit."""
    bytes: int = 256 * 2**20
    """Estimated memory of the values kept: bench/plan.py's 10,000-object commit takes 45 MB.
    Values the current commit uses are shared with its desired state, so what this costs beyond
    it is the files of older commits, dropped least recently used first."""


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int  # each one a file parsed and validated
    evictions: int
    entries: int
    bytes: int


class BlobCache(Generic[V]):
    """Values by key with a cost in bytes; thread-safe (a server may load in several threads)."""

    def __init__(self, limits: CacheLimits = CacheLimits()) -> None:
        self.limits = limits
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def put(self, key: Hashable, value: V, cost: int) -> None:
        """Keep `value`; one that alone exceeds the byte bound is not kept."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if cost > self.limits.bytes or self.limits.entries <= 0:
                return
            self._items[key] = (value, cost)
            self._bytes += cost
            while len(self._items) > self.limits.entries or self._bytes > self.limits.bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
                self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._items), self._bytes)

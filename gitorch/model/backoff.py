"""Retry delays: one exponential back-off policy for every place that retries.

Purely computational, no side effects: the caller owns the clock, the sleeping and the random
generator (`Backoff.delay` takes the generator, `retry` takes the sleep).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from random import Random

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off as in gRPC's connection back-off: the nominal delay starts at
    `base`, grows by `factor` with each failure in a row up to `cap`, then jitter spreads it."""

    base: float
    """Seconds: the nominal delay after the first failure."""
    factor: float = 2.0
    """How much the nominal delay grows with each further failure (1: a constant delay)."""
    cap: float = 30.0
    """Seconds: the longest nominal delay. Jitter applies after it, so a delay may reach
    cap * (1 + jitter): callers that wait at the cap do not all wake at once."""
    jitter: float = 0.0
    """The spread, as a fraction of the nominal delay: 0.5 draws from [0.5, 1.5) times it."""

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap and math.isfinite(self.cap)):
            raise ValueError(f"back-off needs 0 < base <= cap < inf, not base={self.base} cap={self.cap}")
        if not (1 <= self.factor < math.inf):
            raise ValueError(f"back-off factor must be at least 1, not {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"back-off jitter must be in [0, 1], not {self.jitter}")

    def nominal(self, attempt: int) -> float:
        """Seconds to wait after `attempt` failures in a row (1 for the first), before jitter."""
        if attempt < 1:
            raise ValueError(f"attempts count from 1, not {attempt}")
        try:
            return min(self.cap, self.base * self.factor ** (attempt - 1))
        except OverflowError:  # failing for hours: the cap was reached long ago
            return self.cap

    def delay(self, attempt: int, rng: Random | None = None) -> float:
        """Seconds to wait after `attempt` failures in a row (1 for the first); `rng` draws the
        jitter, and is needed when the policy has some."""
        nominal = self.nominal(attempt)
        if not self.jitter:
            return nominal
        if rng is None:
            raise ValueError("a jittered back-off needs a random generator")
        return nominal * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))


def retry(
    fn: Callable[[], T],
    policy: Backoff,
    *,
    attempts: int,
    retry_on: Callable[[Exception], bool],
    sleep: Callable[[float], object],
    rng: Random | None = None,
) -> T:
    """What `fn` returns, calling it up to `attempts` times while it raises an exception that
    `retry_on` accepts, with `sleep(policy.delay(n, rng))` after the n-th failure. The last
    exception, or the first that `retry_on` refuses, propagates."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not retry_on(exc):
                raise
        sleep(policy.delay(attempt, rng))
        attempt += 1

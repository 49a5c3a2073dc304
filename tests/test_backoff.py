"""The one back-off policy (gitorch/model/backoff.py) and the call sites that use it."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from gitorch.model.backoff import Backoff, retry
from gitorch.nodes.ssh import CONNECT_BACKOFF
from gitorch.server.notifications import SEND_BACKOFF
from gitorch.server.serving import REQUEUE_BACKOFF, WATCH_BACKOFF

# Each call site's formula before the helper, as a function of the failures in a row (from 1)
# and a draw in [0, 1): the policies must keep them (see the commit that introduced them).
BEFORE: dict[str, tuple[Backoff, Callable[[int, float], float]]] = {
    "ssh connect": (CONNECT_BACKOFF, lambda n, u: min(2.0, 0.1 * 2 ** (n - 1)) * (0.5 + u)),
    "pod watch": (WATCH_BACKOFF, lambda n, u: min(30.0, 0.5 * 2**n) * (0.5 + u)),
    "requeue": (REQUEUE_BACKOFF, lambda n, u: min(30.0, 2.0**n)),
    "notifications": (SEND_BACKOFF, lambda n, u: 0.5 * 2 ** (n - 1)),  # 5 attempts: the cap is never reached
}


@pytest.mark.parametrize("site", BEFORE, ids=list(BEFORE))
def test_each_call_site_keeps_its_delays(site: str) -> None:
    policy, before = BEFORE[site]
    draws, replay = random.Random(7), random.Random(7)
    for n in range(1, 12 if site != "notifications" else 5):
        want = before(n, replay.random() if policy.jitter else 0.0)
        assert policy.delay(n, draws) == pytest.approx(want), f"failure {n}"


@pytest.mark.parametrize(
    ("policy", "want"),
    [
        (Backoff(0.1, cap=2.0), [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]),
        (Backoff(1.0, factor=3.0, cap=10.0), [1.0, 3.0, 9.0, 10.0, 10.0]),
        (Backoff(0.5, factor=1.0, cap=0.5), [0.5, 0.5, 0.5]),
    ],
    ids=["doubling to its cap", "tripling", "constant"],
)
def test_nominal_delays_grow_by_the_factor_up_to_the_cap(policy: Backoff, want: list[float]) -> None:
    assert [policy.nominal(n) for n in range(1, len(want) + 1)] == pytest.approx(want)
    assert [policy.delay(n) for n in range(1, len(want) + 1)] == pytest.approx(want)  # no jitter: no draw


@pytest.mark.parametrize("attempt", [1023, 1024, 1025, 10**6], ids=lambda n: f"failure {n}")
def test_hours_of_failures_stay_at_the_cap(attempt: int) -> None:
    # 2.0 ** 1024 overflows a float: the formulas this replaced raised OverflowError there.
    policy = Backoff(0.5, cap=30.0, jitter=0.5)
    assert policy.nominal(attempt) == 30.0
    assert 15.0 <= policy.delay(attempt, random.Random(1)) < 45.0


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_jitter_stays_within_its_range_and_spreads_over_it(jitter: float) -> None:
    policy = Backoff(1.0, cap=8.0, jitter=jitter)
    rng = random.Random(2024)
    for attempt in (1, 3, 4, 9):
        nominal = policy.nominal(attempt)
        low, high = nominal * (1 - jitter), nominal * (1 + jitter)
        delays = [policy.delay(attempt, rng) for _ in range(2000)]
        assert all(low <= d < high for d in delays), (attempt, min(delays), max(delays))
        # Not stuck at one point: the draws reach both ends of the range.
        span = high - low
        assert min(delays) < low + 0.05 * span and max(delays) > high - 0.05 * span


def test_a_seeded_generator_repeats_its_delays() -> None:
    policy = Backoff(0.2, cap=5.0, jitter=0.5)
    first = [policy.delay(n, random.Random(99)) for n in range(1, 10)]
    again = [policy.delay(n, random.Random(99)) for n in range(1, 10)]
    assert first == again
    assert len({policy.delay(3, random.Random(seed)) for seed in range(20)}) > 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0.0},
        {"base": -1.0},
        {"base": float("nan")},
        {"base": 2.0, "cap": 1.0},
        {"base": 1.0, "cap": float("inf")},
        {"base": 1.0, "factor": 0.5},
        {"base": 1.0, "factor": float("inf")},
        {"base": 1.0, "jitter": -0.1},
        {"base": 1.0, "jitter": 1.5},
    ],
    ids=["zero base", "negative base", "NaN base", "cap below base", "no cap", "shrinking", "infinite factor",
         "negative jitter", "jitter over 1"],
)
def test_a_policy_that_cannot_wait_sensibly_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="back-off"):
        Backoff(**kwargs)


def test_attempts_count_from_one_and_jitter_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="count from 1"):
        Backoff(1.0).delay(0)
    with pytest.raises(ValueError, match="random generator"):
        Backoff(1.0, jitter=0.5).delay(1)


class Flaky:
    """Fails `failures` times with `error`, then returns "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_retry_sleeps_the_policys_delays_between_attempts() -> None:
    slept: list[float] = []
    flaky = Flaky(3, OSError("refused"))
    policy = Backoff(0.5, cap=1.5, jitter=0.5)
    got = retry(flaky, policy, attempts=5, retry_on=lambda e: True, sleep=slept.append, rng=random.Random(3))
    assert got == "ok" and flaky.calls == 4
    replay = random.Random(3)
    assert slept == [policy.delay(n, replay) for n in (1, 2, 3)]


def test_retry_gives_up_after_its_attempts_with_the_last_error() -> None:
    slept: list[float] = []
    flaky = Flaky(10, OSError("refused"))
    with pytest.raises(OSError, match="refused"):
        retry(flaky, Backoff(1.0), attempts=3, retry_on=lambda e: True, sleep=slept.append)
    assert flaky.calls == 3 and slept == [1.0, 2.0]  # no sleep after the last attempt


def test_retry_stops_at_once_on_an_error_it_is_not_told_to_retry() -> None:
    slept: list[float] = []
    flaky = Flaky(10, PermissionError("denied"))
    with pytest.raises(PermissionError):
        retry(flaky, Backoff(1.0), attempts=5, retry_on=lambda e: not isinstance(e, PermissionError),
              sleep=slept.append)
    assert flaky.calls == 1 and slept == []


def test_retry_needs_an_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retry(lambda: "ok", Backoff(1.0), attempts=0, retry_on=lambda e: True, sleep=lambda s: None)

"""The tests' one wait helper (tests/waiting.py)."""

from __future__ import annotations

import itertools

import pytest

from tests.waiting import wait_until


def test_returns_the_first_value_accepted() -> None:
    counter = itertools.count()
    assert wait_until("a count of 3", lambda: next(counter), timeout=30, interval=0, accept=lambda n: n >= 3) == 3


def test_by_default_waits_for_a_truthy_value() -> None:
    values = iter([None, [], "", ["pod"]])
    assert wait_until("a pod", lambda: next(values), timeout=30, interval=0) == ["pod"]


def test_fails_naming_what_and_the_last_value_seen() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError) as failed:
        wait_until("2 pods running", lambda: ["pod-a"] * min(next(counter), 1), timeout=0.05, interval=0.01,
                   accept=lambda pods: len(pods) == 2, describe=lambda: "serve log: no nodes")
    message = str(failed.value)
    assert "waiting for 2 pods running; last seen: ['pod-a']" in message
    assert message.endswith("\nserve log: no nodes")


def test_a_long_last_value_is_cut_in_the_middle() -> None:
    long = "start" + "x" * 100_000 + "end"
    with pytest.raises(AssertionError) as failed:
        wait_until("a short log", lambda: long, timeout=0, accept=lambda s: len(s) < 10)
    message = str(failed.value)
    assert "'start" in message and "end'" in message and len(message) < 2200


def test_checks_once_even_with_no_time_left() -> None:
    assert wait_until("ready", lambda: "ready", timeout=0) == "ready"


def test_an_error_of_the_check_is_not_swallowed() -> None:
    def check() -> bool:
        raise RuntimeError("serve exited")

    with pytest.raises(RuntimeError, match="serve exited"):
        wait_until("serve", check, timeout=30)


def test_the_last_value_is_shown_as_asked() -> None:
    with pytest.raises(AssertionError, match=r"last seen: 1 of 3 ready$"):
        wait_until("3 ready pods", lambda: 1, timeout=0, accept=lambda n: n == 3, show=lambda n: f"{n} of 3 ready")

"""Waiting in tests for something that happens in another process, thread or node."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SHOWN = 2000  # characters of the last value a failure message shows (its start and its end)


def wait_until(
    what: str,
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.2,
    accept: Callable[[T], object] = bool,
    show: Callable[[T], str] = repr,
    describe: Callable[[], str] | None = None,
) -> T:
    """The first value of `check()` that `accept` takes (by default: a truthy one), calling it
    every `interval` seconds; fails the test after `timeout` seconds naming `what`, the last
    value seen (as `show` renders it) and, if given, `describe()` (a log, say). Exceptions of
    `check` propagate."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if accept(value):
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    shown = show(value)
    if len(shown) > SHOWN:
        shown = f"{shown[: SHOWN // 2]} ... {shown[-SHOWN // 2 :]}"
    extra = f"\n{describe()}" if describe is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last seen: {shown}{extra}")

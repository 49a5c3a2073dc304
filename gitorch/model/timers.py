"""Timers: cron schedules and periodic jobs. The only module that imports apscheduler."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DOW = {str(i): d for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"])}


def _cron_dow(field: str) -> str:
    """cron counts weekdays from Sunday=0 (7 too); APScheduler from Monday=0: use names."""
    out = []
    for part in field.split(","):
        step = ""
        if "/" in part:
            part, step = part.split("/", 1)
            step = "/" + step
        bounds = [_DOW.get(b, b) for b in part.split("-")]
        out.append("-".join(bounds) + step)
    return ",".join(out)


def cron_trigger(schedule: str, time_zone: str | None = None) -> CronTrigger:
    expr = MACROS.get(schedule.strip(), schedule.strip())
    minute, hour, day, month, dow = expr.split()
    try:
        tz = ZoneInfo(time_zone) if time_zone else UTC
    except ZoneInfoNotFoundError:
        tz = UTC
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day.replace("?", "*"),
        month=month,
        day_of_week=_cron_dow(dow.replace("?", "*")),
        timezone=tz,
    )


def fire_times(
    schedule: str, after: float, until: float, *, time_zone: str | None = None, limit: int = 100
) -> list[float]:
    """The schedule's times in (after, until], oldest first, at most `limit` (pure)."""
    trigger = cron_trigger(schedule, time_zone)
    now = datetime.fromtimestamp(until, tz=UTC)
    prev = datetime.fromtimestamp(after, tz=UTC)
    out: list[float] = []
    while len(out) < limit:
        nxt = trigger.get_next_fire_time(prev, prev)
        if nxt is None or nxt > now:
            break
        if nxt.timestamp() <= after:  # get_next_fire_time may return `prev` itself
            prev = datetime.fromtimestamp(nxt.timestamp() + 1, tz=UTC)
            continue
        out.append(nxt.timestamp())
        prev = nxt
    return out


def _skip_overlap(record: logging.LogRecord) -> bool:
    return "maximum number of running instances" not in str(record.msg)


class Timers:
    """Periodic jobs of `gitorch serve` (Git polling, reconcile passes, heartbeats)."""

    def __init__(self) -> None:
        self._scheduler = BackgroundScheduler(timezone=UTC)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        # A pass longer than the interval makes apscheduler skip the overlapping run and warn
        # each time; that is the intended behaviour (max_instances=1), not worth a line.
        scheduler_log = logging.getLogger("apscheduler.scheduler")
        if _skip_overlap not in scheduler_log.filters:
            scheduler_log.addFilter(_skip_overlap)

    def every(self, seconds: float, fn: Callable[[], None], name: str) -> None:
        self._scheduler.add_job(
            fn,
            IntervalTrigger(seconds=seconds),
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )

    def cron(self, schedule: str, fn: Callable[[], None], name: str, time_zone: str | None = None) -> None:
        self._scheduler.add_job(
            fn,
            cron_trigger(schedule, time_zone),
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )

    def wake(self, name: str) -> None:
        """Run a job now (e.g. a reconcile after a push) instead of at its next interval."""
        job = self._scheduler.get_job(name)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        self._scheduler.shutdown(wait=True)

"""Logging set-up for the CLI: text for people (default) or one JSON object a line for shippers.

Library code logs through `logging` with optional `extra` fields (object, revision, node, event);
only this module decides how records look. Logs go to stderr; tables stay on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

FIELDS = ("event", "object", "revision", "node")
"""The `extra` keys a JSON line carries when a record has them."""
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


class TextFormatter(logging.Formatter):
    """The message as people read it; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = _PREFIX.get(record.levelno, "") + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


_current = ("info", "text")


def current() -> tuple[str, str]:
    """The log level and format in effect."""
    return _current


def setup(level: str = "info", fmt: str = "text") -> None:
    """Route gitorch's records (and other libraries' warnings) to stderr in the chosen format."""
    global _current
    if level.lower() not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level {level!r} or format {fmt!r} unknown: levels {', '.join(LEVELS)}, "
                         f"formats {', '.join(FORMATS)}")
    _current = (level.lower(), fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    ours = logging.getLogger("gitorch")
    # Other libraries' warnings and errors (alembic, apscheduler, paramiko) come out in the same
    # format, so a JSON stream stays JSON; their info and debug chatter stays out.
    for logger, threshold in ((ours, level.upper()), (logging.getLogger(), "WARNING")):
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(threshold)
    ours.propagate = False


def reload(values: Mapping[str, str], start: tuple[str, str]) -> str:
    """`serve` on SIGHUP: GITORCH_LOG_LEVEL and GITORCH_LOG_FORMAT from its env file, else back
    to what it started with; a bad value keeps the current settings (and says so)."""
    level = values.get("GITORCH_LOG_LEVEL", start[0])
    fmt = values.get("GITORCH_LOG_FORMAT", start[1])
    try:
        setup(level, fmt)
    except ValueError as exc:
        logging.getLogger(__name__).warning(f"reload: {exc}; keeping log level {_current[0]}, format {_current[1]}",
                                            extra={"event": "reload-failed"})
    return f"log level {_current[0]}, log format {_current[1]}"

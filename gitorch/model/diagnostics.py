"""Diagnostics: one problem in the desired state, located at file:line:col and a JSON pointer.

Purely computational, no side effects.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """A problem found in one manifest; `line` and `column` are 1-based (0 when unknown)."""

    path: str
    line: int
    column: int
    pointer: str
    message: str
    hint: str = ""
    severity: Severity = Severity.ERROR

    def format(self) -> str:
        """`path:line:col: /json/pointer: message (hint)`, one printable line; warnings say so."""
        where = f"{self.path}:{self.line}:{self.column}" if self.line else self.path
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        if where or self.pointer:
            text = f"{where}: {self.pointer or '/'}: {prefix}{self.message}"
        else:  # about the commit as a whole (its signature, say), not a place in a file
            text = f"{prefix}{self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return _UNPRINTABLE.sub(_escape, text)

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "pointer": self.pointer,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity.value,
        }


# What a terminal may act on: control characters (C0, DEL, C1), line separators and
# bidirectional overrides. Keys and file names from Git can hold any of them.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def errors(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.severity is Severity.ERROR]


def warnings(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.severity is Severity.WARNING]


def escape_token(token: str | int) -> str:
    """Escape one JSON-pointer reference token (RFC 6901)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def pointer(*tokens: str | int) -> str:
    return "".join("/" + escape_token(t) for t in tokens)


def split_pointer(ptr: str) -> list[str]:
    if not ptr:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in ptr.split("/")[1:]]

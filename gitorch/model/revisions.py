"""Revisions: one commit of the desired state, as every layer sees it (no Git objects)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Revision:
    """One commit: what it is and who made it."""

    oid: str
    author: str
    message: str
    time: str  # ISO 8601, UTC

    @property
    def short(self) -> str:
        return self.oid[:7]

    @property
    def subject(self) -> str:
        return self.message.splitlines()[0] if self.message else ""


EMPTY_REVISION = Revision(oid="", author="", message="(empty: nothing deployed)", time="")

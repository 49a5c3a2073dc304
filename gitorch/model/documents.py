"""Where a manifest came from: positions in files and the document protocol objects point to.

Plain types only: the YAML reader (source/manifests.py) provides the real documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in a file."""

    line: int
    column: int


class SourceDocument(Protocol):
    """One YAML document of a file, able to say where any JSON pointer in it is written.
    Read-only: parsed documents are shared between loads (source/validation.py's cache)."""

    @property
    def path(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def body(self) -> Any: ...

    def position(self, ptr: str, *, key: bool = False) -> Position: ...

    def locate(self, ptr: str, *, key: bool = False) -> tuple[str, Position]:
        """The file and position `ptr` is written at (a kustomize patch's, for a value it set)."""
        ...

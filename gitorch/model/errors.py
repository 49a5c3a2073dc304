"""Domain errors: each one is a message a user can act on, printed without a traceback."""

from __future__ import annotations


class GitorchError(Exception):
    """An error the user can cause or fix; the CLI prints its message on one line and exits 1."""


class SourceError(GitorchError):
    """The repository or revision cannot be read."""


class ManifestError(GitorchError):
    """The desired state has errors; `diagnostics` lists them."""

    def __init__(self, message: str, diagnostics: list[object] | None = None) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics or []

"""Settings: where gitorch keeps its state, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    """Where the store, the lab and caches live (`GITORCH_STATE_DIR`, default ~/.local/state/gitorch)."""

    database_url: str
    """SQLAlchemy URL of the state store (`GITORCH_DATABASE_URL`, default SQLite in state_dir)."""

    @property
    def lab_dir(self) -> Path:
        return self.state_dir / "lab"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        default = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "gitorch"
        state_dir = Path(env.get("GITORCH_STATE_DIR") or default).expanduser()
        url = env.get("GITORCH_DATABASE_URL") or f"sqlite:///{state_dir / 'gitorch.db'}"
        return cls(state_dir=state_dir, database_url=url)

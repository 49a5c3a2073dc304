"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab, down, up
from tests.gitrepo import GitRepo
from tests.lab import LAB_SUBNET, require_lab

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "repo"


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    """An empty Git work tree on branch main."""
    return GitRepo(tmp_path / "repo")


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own gitorch state directory."""
    state = tmp_path / "state"
    monkeypatch.setenv("GITORCH_STATE_DIR", str(state))
    return state


# ---- lab nodes (gitorch.nodes.lab) -------------------------------------------------------


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three real SSH nodes for the whole session, removed at its end."""
    require_lab()
    state_dir = tmp_path_factory.mktemp("lab")
    try:
        yield up(3, state_dir=state_dir, subnet=LAB_SUBNET, nodes_file=state_dir / "nodes.yaml")
    finally:
        down(state_dir)


# ---- end of lab nodes ---------------------------------------------------------------------

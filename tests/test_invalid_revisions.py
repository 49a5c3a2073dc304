"""A commit whose validation raised is recorded invalid, with an event, like a schema error; the
last applied revision keeps running (issue 19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitorch.reconcile.controller import Controller
from gitorch.source import validation
from gitorch.source.git import open_repository
from gitorch.store.database import Store
from tests.gitrepo import GitRepo

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"


def test_a_crash_in_validation_makes_the_commit_invalid_not_the_pass(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    controller = Controller(open_repository(repo.path), store, tmp_path / "state")
    try:
        good = repo.commit("good", {"ns.yaml": NS})
        assert controller.reconcile().valid
        bad = repo.commit("trips a bug", {"other.yaml": NS.replace("shop", "other")})
        real = validation.load_desired

        def crashing(snapshot: validation.Snapshot, **options: object) -> validation.DesiredState:
            if snapshot.revision.oid == bad:
                raise AttributeError("'str' object has no attribute 'get'")
            return real(snapshot)

        monkeypatch.setattr(validation, "load_desired", crashing)
        monkeypatch.setattr("gitorch.source.desired.load_desired", crashing)
        result = controller.reconcile()
        assert not result.valid
        assert "internal error validating this commit: AttributeError" in result.diagnostics[0]
        stored = store.revision(bad)
        assert stored is not None and stored.outcome == "invalid"
        assert any(e.reason == "InvalidRevision" and e.revision == bad for e in store.events())
        last = store.last_applied_revision()
        assert last is not None and last.commit == good
        assert result.state is not None and result.state.revision.oid == good  # the last good one reconciled
    finally:
        controller.close()
        store.close()

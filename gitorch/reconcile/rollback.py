"""Rollback through Git: a new commit on the watched branch that restores an earlier tree,
so the cluster follows Git back and the history says who rolled back, to what and why."""

from __future__ import annotations

from gitorch.model.errors import GitorchError
from gitorch.model.revisions import Revision
from gitorch.source.git import Repository, RevertCommit, commit_tree_of, parent_revision, tree_id
from gitorch.store.database import Store

TRAILER = "Gitorch-Rollback-Of"


def rollback_message(target: Revision, reason: str) -> str:
    """`Rollback to <short>: <reason>` plus the trailer naming the restored commit (pure)."""
    subject = f"Rollback to {target.short}: {reason.strip()}" if reason.strip() else f"Rollback to {target.short}"
    return f"{subject}\n\n{TRAILER}: {target.oid}\n"


def default_target(repo: Repository, branch: str, store: Store | None) -> Revision:
    """The last applied revision before the branch head whose content differs from the head;
    without any in the store, the head's parent."""
    head = repo.resolve(f"refs/heads/{branch}")
    head_tree = tree_id(repo, head.oid)
    if store is not None:
        applied = [r for r in store.revisions() if r.outcome == "applied" and r.commit != head.oid]
        applied.sort(key=lambda r: r.applied_at.timestamp() if r.applied_at else 0.0, reverse=True)
        for r in applied:
            try:
                if tree_id(repo, r.commit) != head_tree:
                    return repo.resolve(r.commit)
            except GitorchError:
                continue  # a commit this repository no longer has
    parent = parent_revision(repo, head.oid)
    if parent is None:
        raise GitorchError(f"{head.short} (head of {branch!r}) has no parent and the store knows no applied revision")
    return parent


def rollback(repo: Repository, branch: str, rev: str | None, reason: str, store: Store | None) -> RevertCommit:
    target = repo.resolve(rev) if rev else default_target(repo, branch, store)
    return commit_tree_of(repo, target.oid, branch, rollback_message(target, reason))

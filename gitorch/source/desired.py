"""Loading the desired state of a revision: source (Git) plus validation, in one call."""

from __future__ import annotations

from gitorch.model.objects import DesiredState
from gitorch.model.revisions import EMPTY_REVISION
from gitorch.source.git import Repository
from gitorch.source.sops import NO_KEYS, Keyring
from gitorch.source.validation import load_desired


def load(repo: Repository, rev: str | None, keyring: Keyring = NO_KEYS) -> DesiredState:
    """The desired state of one commit; `rev=""` means the empty state (nothing deployed).
    SOPS-encrypted documents are decrypted with `keyring` (see `validation._open_sops`)."""
    if rev == "":
        return DesiredState(EMPTY_REVISION, {}, [])
    return load_desired(repo.snapshot(rev), keyring=keyring)

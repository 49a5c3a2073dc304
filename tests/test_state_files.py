"""gitorch's own files are its user's only: the SQLite store (and its -wal/-shm) 0600, the state
directory, mirrors and known hosts in 0700 folders, whatever the umask, and an older state
directory made with looser modes is tightened when the store is opened."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.nodes.ssh import check_remote_host
from gitorch.source.git import RemoteAuth, mirror
from gitorch.store.database import Store
from tests.gitrepo import GitRepo, git

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def gitorch(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GITORCH_STATE_DIR": str(state)}
    env.pop("GITORCH_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "gitorch", *args], env=env, capture_output=True, text=True,
                          check=True)


def test_the_store_and_its_journal_files_are_0600_in_a_0700_folder(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "new" / "state" / "gitorch.db"
    before = mode(tmp_path)
    with Store.open(f"sqlite:///{path}") as store:
        store.record_event("Deployment", "shop", "web", reason="Test", type="Normal", message="m")
        wal, shm = path.with_name("gitorch.db-wal"), path.with_name("gitorch.db-shm")
        assert wal.exists() and shm.exists()  # open, in WAL mode: all three files are there
        assert (mode(path), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    # The folders the store made for it; the one that was there keeps its mode.
    assert (mode(path.parent), mode(path.parent.parent)) == (0o700, 0o700)
    assert mode(tmp_path) == before


def test_an_older_state_folder_is_tightened_when_opened(tmp_path: Path, umask: int) -> None:
    """A state directory from before (0755, a 0644 store with its journal files) is made private
    by the next command that opens the store."""
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    db = state / "gitorch.db"
    holder = sqlite3.connect(db)  # keeps -wal and -shm in place while gitorch opens the store
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("CREATE TABLE t (x)")
        holder.execute("INSERT INTO t VALUES (1)")
        holder.commit()
        files = [db, state / "gitorch.db-wal", state / "gitorch.db-shm"]
        for f in files:
            os.chmod(f, 0o644)
        gitorch("get", "revisions", state=state)
        assert mode(state) == 0o700
        assert [mode(f) for f in files] == [0o600, 0o600, 0o600]
    finally:
        holder.close()


def test_a_fresh_state_directory_is_private(tmp_path: Path, umask: int) -> None:
    state = tmp_path / "home" / ".local" / "state" / "gitorch"
    gitorch("get", "revisions", state=state)
    assert mode(state) == 0o700 and mode(state / "gitorch.db") == 0o600


def test_known_hosts_are_private(tmp_path: Path, umask: int) -> None:
    known = tmp_path / "state" / "known_hosts"
    check_remote_host("git.example", 22, KEY, None, str(known))  # trusted on first use: written
    assert (mode(known.parent), mode(known)) == (0o700, 0o600)
    assert known.read_text() == f"[git.example]:22 {KEY}\n"


def test_a_mirror_is_private(tmp_path: Path, umask: int) -> None:
    bare = tmp_path / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    work = GitRepo(tmp_path / "work")
    work.commit("one", {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n"})
    git("push", "-q", str(bare), "HEAD:main", cwd=work.path)
    state = tmp_path / "state"
    dest = state / "mirrors" / "abc"
    mirror(f"file://{bare}", dest, RemoteAuth())
    assert (mode(state), mode(dest.parent), mode(dest)) == (0o700, 0o700, 0o700)
    # A mirror made before (with the umask's modes) is tightened on its next fetch.
    os.chmod(dest, 0o755)
    os.chmod(dest.parent, 0o755)
    mirror(f"file://{bare}", dest, RemoteAuth())
    assert (mode(dest.parent), mode(dest)) == (0o700, 0o700)

"""A throwaway PostgreSQL server for tests, from Debian's `postgresql` package.

`postgres_server` (session-scoped) runs initdb in a temporary directory, starts the server on a
free 127.0.0.1 port (run as the `postgres` user when we are root: PostgreSQL refuses root) and
stops it at the end. `PostgresServer.fresh_database()` gives each test its own empty database.
When PostgreSQL cannot be started the test is skipped, or fails when the env `CI` is set.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest

START_TIMEOUT = 60


class PostgresUnavailable(Exception):
    """PostgreSQL is not installed here or cannot be started."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    raise PostgresUnavailable("initdb not found (apt-get install -y postgresql)")


class PostgresServer:
    """One running PostgreSQL cluster in a temporary directory, reachable over TCP."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        # As root, run the server as `postgres`, in a directory that user owns.
        self.user = None if os.geteuid() != 0 else "postgres"
        if self.user is not None:
            try:
                account = pwd.getpwnam(self.user)
            except KeyError as exc:
                raise PostgresUnavailable("no `postgres` system user to run the server") from exc
        self.dir = Path(tempfile.mkdtemp(prefix="gitorch-pg-"))
        if self.user is not None:
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        self.data = self.dir / "data"
        self.port = 0
        self._names = itertools.count(1)

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(
            cmd,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{argv[0]} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
            )

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E",
                  "UTF8", "--no-sync", "--no-instructions")
        options = (
            "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections=200 -k {self.dir}"
        )
        last: PostgresUnavailable | None = None
        for _ in range(3):  # another process may take the free port before the server binds it
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"),
                          "-w", "-t", str(START_TIMEOUT), "-o", f"-p {self.port} {options}",
                          "start")
                return
            except PostgresUnavailable as exc:
                last = exc
        log = self.dir / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise PostgresUnavailable(f"{last}\n{tail}")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"gitorch_test_{next(self._names)}"
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def fresh_database(self) -> Iterator[str]:
        """Yield the URL of a new empty database, dropped afterwards (for a fixture)."""
        name = self.create_database()
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)


def unavailable(reason: str) -> NoReturn:
    """Skip the test for `reason`; fail it in CI, which must never skip silently."""
    message = f"PostgreSQL unavailable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must not skip PostgreSQL tests)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skipped, or failed in CI, when impossible)."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
    try:
        server.start()
    except (PostgresUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()

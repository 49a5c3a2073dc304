"""Fixtures of the chaos suite, and the figures it prints at the end of the test run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab
from tests.chaos.harness import ChaosCluster
from tests.postgres import PostgresServer, postgres_server  # noqa: F401  (a fixture)

REPORTS = pytest.StashKey[list[tuple[str, list[str]]]]()
"""What each chaos test wants shown in the terminal summary: (title, lines)."""


def report(config: pytest.Config, title: str, lines: list[str]) -> None:
    config.stash.setdefault(REPORTS, []).append((title, lines))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    for title, lines in config.stash.get(REPORTS, []):
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:  # noqa: F811
    """The URL of a new, empty PostgreSQL database."""
    yield from postgres_server.fresh_database()


@pytest.fixture
def chaos_cluster(lab: Lab, database: str, tmp_path: Path) -> Iterator[ChaosCluster]:
    """Serve processes on one PostgreSQL store driving the session's lab nodes; at the end the
    workload is removed from Git and the nodes emptied, so later tests find them clean."""
    cluster = ChaosCluster(lab, database, tmp_path)
    try:
        yield cluster
    finally:
        cluster.teardown()

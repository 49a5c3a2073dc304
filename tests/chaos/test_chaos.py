"""The chaos suite (issue 19): seeded faults on real lab nodes, invariants after each.

The test command runs a short round with seed 19 (GITORCH_CHAOS_FAULTS, default 4: each kind of
fault once); `GITORCH_CHAOS_FAULTS=100` runs the long one. GITORCH_CHAOS_SEED replays a run's faults
(which, in what order, on which node, after which delay). The figures are printed in the
terminal summary: `N faults injected, M invariant violations`, and the failover times.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.chaos.conftest import report
from tests.chaos.faults import ChaosRun
from tests.chaos.harness import ChaosCluster

pytestmark = pytest.mark.lab

SHORT = 4
SEED = 19
"""The default seed: the test command runs the same faults every time (GITORCH_CHAOS_SEED picks others)."""


def _faults() -> int:
    raw = os.environ.get("GITORCH_CHAOS_FAULTS", "")
    return int(raw) if raw.strip() else SHORT


def _seed() -> int:
    raw = os.environ.get("GITORCH_CHAOS_SEED", "")
    return int(raw) if raw.strip() else SEED


@pytest.mark.timeout(300 + 420 * _faults())  # every wait inside is bounded; this bounds their sum
def test_faults_leave_the_invariants_standing(chaos_cluster: ChaosCluster, request: pytest.FixtureRequest) -> None:
    count, seed = _faults(), _seed()

    def log(line: str) -> None:
        print(f"chaos: {line}", file=sys.stderr, flush=True)

    run = ChaosRun(chaos_cluster, seed, log)
    log(f"seed {seed}, {count} faults (GITORCH_CHAOS_SEED={seed} GITORCH_CHAOS_FAULTS={count} replays them)")
    try:
        run.start()
        run.run(count)
    finally:
        report(request.config, "chaos", run.report.lines())
    assert run.report.injected == count
    assert not run.report.violations, "\n".join(run.report.lines())

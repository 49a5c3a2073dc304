"""PostgreSQL HA (issue 19): three `serve` processes on one PostgreSQL store drive the lab nodes;
the leader is killed with SIGKILL right after it started a Job's pod, twice. Each time a follower
leads in the next term once the dead leader's lease ran out, the nodes follow the new term, and
nothing is done twice: the Job's pod started once, no identity runs twice, the cluster converges."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import partial

import pytest

from gitorch.reconcile.leadership import LEASE
from gitorch.store.database import Lease, Store
from tests.chaos.harness import AGENT_ROOT, RENEW_EVERY, ChaosCluster, LogRecord, ServeProcess, node_run
from tests.waiting import wait_until

pytestmark = pytest.mark.lab


def _fences(cluster: ChaosCluster) -> dict[str, int]:
    """The highest controller term each node's agent has seen (its fence.json)."""
    out = {}
    for n in cluster.lab.nodes:
        done = node_run(cluster.lab, n.name, f"cat {AGENT_ROOT}/fence.json")
        if done.returncode == 0:
            out[n.name] = int(json.loads(done.stdout)["term"])
    return out


def _logged(serve: ServeProcess, event: str, since: float = 0.0) -> list[LogRecord]:
    return [r for r in serve.log() if r.event == event and r.at > since]


def _started(cluster: ChaosCluster, ident: str) -> bool:
    return ident in cluster.job_starts()


def _term_after(store: Store, term: int) -> Lease | None:
    lease = store.lease(LEASE)
    return lease if lease is not None and lease.term > term else None


def _converged(cluster: ChaosCluster) -> None:
    snap, _ = cluster.converge(timeout=120)
    assert not snap.problems, snap.problems
    assert not snap.duplicates, snap.duplicates


@pytest.mark.timeout(600)
def test_a_killed_leader_is_followed_in_a_new_term_and_nothing_runs_twice(chaos_cluster: ChaosCluster) -> None:
    c = chaos_cluster
    c.workload.job_seconds = 20.0  # still running when its starter dies; finished under the next leader
    c.commit("ha: web and db")
    first = c.start_serve()
    assert wait_until("a leader", c.leader, timeout=60) is first
    followers = [c.start_serve(), c.start_serve()]
    for f in followers:
        wait_until("standing by", partial(_logged, f, "standing-by"), timeout=60, describe=f.output)
    _converged(c)

    for round_ in (1, 2):
        # A new Job, and the leader dies as soon as its pod has started.
        c.workload.job = round_
        c.workload.web_version += 1
        c.commit(f"ha: job {round_}")
        ident = f"chaos/once-{round_}-0"
        wait_until(f"{ident} started", partial(_started, c, ident), timeout=60)
        leader = c.leader()
        assert leader is not None
        died = c.kill(leader)
        before = c.store.lease(LEASE)  # as the leader last renewed it: no renewal can follow
        assert before is not None and before.holder.endswith(f":{leader.pid}")

        # A follower leads in the next term, taken once the dead leader's lease ran out (it is
        # retried every pass interval and lease renewal, all on the database's clock).
        after = wait_until("a new term", partial(_term_after, c.store, before.term), timeout=60)
        assert after is not None and after.term == before.term + 1
        assert after.acquired_at >= before.expires_at
        assert after.acquired_at <= before.expires_at + timedelta(seconds=RENEW_EVERY)
        successor = next(s for s in c.serves if after.holder.endswith(f":{s.pid}"))
        wait_until("the new leader's first pass", partial(_logged, successor, "pass", died), timeout=60,
                   describe=successor.output)

        _converged(c)
        assert c.job_starts()[ident] == [c.job_starts()[ident][0]], c.job_starts()  # started exactly once
        job_pod = next(p for p in c.store.pods() if p.owner_kind == "Job" and p.name == f"once-{round_}-0")
        assert job_pod.phase == "Succeeded" and job_pod.restarts == 0
        # Every node took a sync from the new term, and would refuse the dead leader's.
        assert set(_fences(c).values()) == {after.term}
    assert not c.leases.take_violations()
    assert not c.term_claims()
    assert len(c.serves) == 1 and not any(r.event == "leading" for r in c.serves[0].log() if r.at < died)

"""The chaos runner: a seeded sequence of faults, each injected during a rollout, each followed by
the invariants (harness.py). Faults:

- kill-serve: SIGKILL of the leading `serve` at a random point of a rollout, then a new serve;
- link-flap: a node's host-side veth down for a few seconds, then up;
- kill-supervisor: SIGKILL of a node agent's supervisor (pods keep running, a new one adopts them);
- second-serve: a second (or third) serve on the same PostgreSQL store while a Node that accepts
  TCP and never answers is in Git, for longer than a lease.

Invariants after each: the cluster converges to the head commit within a bounded wait; no
identity (namespace/name) runs twice anywhere, during the wait or after; every Job pod started
exactly once; lease terms never overlap and each has one holder (the lease row, polled, and the
serves' logs); the store's pods agree with what the nodes run.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.chaos.harness import AGENT_ROOT, LEASE_TTL, ChaosCluster, node_run, veths

_REVISION = re.compile(r"\b[0-9a-f]{7,40}\b")
KINDS = ("kill-serve", "link-flap", "kill-supervisor", "second-serve")
CONVERGE_TIMEOUT = 150.0
"""Seconds a cluster gets to converge after a fault (a pass stuck on a silent node takes ~20 s)."""
MAX_SERVES = 3


@dataclass
class Failover:
    """One leader's death and what followed: seconds to a new term and to its first pass."""

    standby: bool
    """Whether a follower was already running (else the replacement had to start first)."""
    to_leading: float | None
    to_pass: float | None


@dataclass
class ChaosReport:
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    converge_seconds: list[float] = field(default_factory=list)
    unforced_terms: int = 0
    """New terms that no leader's death explains (leadership flips)."""

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {self.faults[k]}" for k in KINDS)
        out = [f"{self.injected} faults injected, {len(self.violations)} invariant violations "
               f"(seed {self.seed}; {kinds})"]
        hot = sorted(f.to_pass for f in self.failovers if f.standby and f.to_pass is not None)
        if hot:
            out.append(f"failover, leader SIGKILLed to a standing-by follower's first pass: p50 "
                       f"{percentile(hot, 50):.1f} s, p99 {percentile(hot, 99):.1f} s, max {hot[-1]:.1f} s "
                       f"over {len(hot)} kills (lease {LEASE_TTL:g} s)")
        cold = sorted(f.to_pass for f in self.failovers if not f.standby and f.to_pass is not None)
        if cold:
            out.append(f"no follower running (a new serve waited out the lease): p50 {percentile(cold, 50):.1f} s, "
                       f"max {cold[-1]:.1f} s over {len(cold)} kills")
        if self.converge_seconds:
            c = sorted(self.converge_seconds)
            out.append(f"converged after a fault: p50 {percentile(c, 50):.1f} s, max {c[-1]:.1f} s; "
                       f"unforced leadership changes: {self.unforced_terms}")
        out += [f"violation: {v}" for v in self.violations]
        return out


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted `values` (p99 of fewer than 100 values is the largest)."""
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]


def plan_faults(rng: random.Random, count: int) -> list[str]:
    """`count` faults: every kind once per round of four, in a shuffled order."""
    out: list[str] = []
    while len(out) < count:
        block = list(KINDS)
        rng.shuffle(block)
        out += block
    return out[:count]


class ChaosRun:
    """Injects `count` faults chosen by `seed` into `cluster`, checking invariants after each."""

    def __init__(self, cluster: ChaosCluster, seed: int, log: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.report = ChaosReport(seed)
        self.log = log
        self._kills: list[float] = []
        self._twice: set[str] = set()
        self._seen: set[str] = set()

    # -- the run ----------------------------------------------------------------------------

    def start(self) -> None:
        c = self.cluster
        c.commit("chaos: first revision")
        c.start_serve()
        self.check("start")

    def run(self, count: int) -> ChaosReport:
        for i, kind in enumerate(plan_faults(self.rng, count), 1):
            self.log(f"fault {i}/{count}: {kind}")
            getattr(self, "fault_" + kind.replace("-", "_"))()
            self.report.faults[kind] += 1
            self.check(f"fault {i} ({kind}, seed {self.report.seed})")
        return self.report

    # -- rollouts ---------------------------------------------------------------------------

    def rollout(self) -> str:
        """A commit that starts a rollout: a new web version, a scale, a new db version or a new Job."""
        w = self.cluster.workload
        what = self.rng.choice(("web", "web", "scale", "db", "job"))
        if what == "web":
            w.web_version += 1
        elif what == "scale":
            w.web_replicas = self.rng.choice([r for r in (2, 3, 4) if r != w.web_replicas])
        elif what == "db":
            w.db_version += 1
        else:
            w.job += 1
        return self.cluster.commit(f"chaos: {what}")

    # -- faults -----------------------------------------------------------------------------

    def fault_kill_serve(self) -> None:
        c = self.cluster
        leader = c.wait_leader()
        if leader is None:
            self.violate("no serve leads before kill-serve")
            return
        self.rollout()
        time.sleep(self.rng.uniform(0.0, 3.0))
        leader = c.leader() or leader
        standby = any(s is not leader and s.alive for s in c.serves)
        died = c.kill(leader)
        self._kills.append(died)
        c.start_serve()
        self.measure_failover(died, standby)

    def fault_link_flap(self) -> None:
        c = self.cluster
        node = self.rng.choice(c.lab.nodes).name
        veth = veths(c.lab)[node]
        down_for = self.rng.uniform(2.0, 10.0)
        self.rollout()
        time.sleep(self.rng.uniform(0.0, 2.0))
        self.log(f"  {node} ({veth}) down for {down_for:.1f} s")
        subprocess.run(["ip", "link", "set", veth, "down"], check=True, timeout=10)
        try:
            time.sleep(down_for)
        finally:
            subprocess.run(["ip", "link", "set", veth, "up"], check=True, timeout=10)

    def fault_kill_supervisor(self) -> None:
        c = self.cluster
        node = self.rng.choice(c.lab.nodes).name
        self.rollout()
        time.sleep(self.rng.uniform(0.0, 2.0))
        script = (
            f"pid=$(python3 -c 'import json; print(json.load(open(\"{AGENT_ROOT}/supervisor.pid\"))[\"pid\"])') "
            '&& kill -KILL "$pid" && echo "$pid"'
        )
        done = node_run(c.lab, node, script)
        if done.returncode != 0:
            self.violate(f"kill-supervisor on {node}: no supervisor to kill ({done.stderr.strip()[-200:]})")
        else:
            self.log(f"  {node}: supervisor {done.stdout.strip()} killed")

    def fault_second_serve(self) -> None:
        c = self.cluster
        c.add_silent()
        if len(c.serves) >= MAX_SERVES:  # keep the number of controllers bounded: a follower goes
            leader = c.leader()
            follower = next(s for s in c.serves if s is not leader)
            c.kill(follower)
        c.start_serve()
        self.rollout()
        # Longer than a lease, so a pass stuck on the silent node outlasts it (issue 19).
        time.sleep(self.rng.uniform(LEASE_TTL + 2, LEASE_TTL + 8))
        self.check("second serve with a silent node")
        c.remove_silent()
        c.commit("chaos: the silent node leaves Git")

    # -- measuring ------------------------------------------------------------------------------

    def measure_failover(self, died: float, standby: bool, timeout: float = 4 * LEASE_TTL) -> None:
        deadline = time.monotonic() + timeout
        to_leading = to_pass = None
        while time.monotonic() < deadline and to_pass is None:
            for s in self.cluster.serves:
                for r in s.log():
                    if r.at < died:
                        continue
                    if r.event == "leading" and to_leading is None:
                        to_leading = r.at - died
                    if r.event in ("pass", "pass-failed") and (to_pass is None or r.at - died < to_pass):
                        to_pass = r.at - died
            time.sleep(0.2)
        if to_pass is None:
            self.violate(f"no pass by another serve within {timeout:g} s of the leader's death")
        self.report.failovers.append(Failover(standby, to_leading, to_pass))
        self.log(f"  leader killed; new term after {to_leading} s, first pass after {to_pass} s"
                 f" ({'standing-by follower' if standby else 'new serve'})")

    # -- invariants -----------------------------------------------------------------------------

    def violate(self, what: str) -> None:
        """Count a violation once: one cause (a Job stuck Degraded, say) still shows after the
        following faults, at other heads, and is not counted again."""
        key = _REVISION.sub("<rev>", what.split(": ", 1)[1] if what.startswith("after ") else what)
        if key in self._seen:
            return
        self._seen.add(key)
        self.report.violations.append(what)
        self.log(f"  VIOLATION {what}")

    def check(self, after: str) -> None:
        c = self.cluster
        snap, took = c.converge(CONVERGE_TIMEOUT)
        self.report.converge_seconds.append(took)
        for problem in snap.problems[:8]:
            self.violate(f"after {after}: not converged to {snap.head[:10]} in {CONVERGE_TIMEOUT:g} s: {problem}")
        for d in snap.duplicates:
            self.violate(f"after {after}: {d}")
        for ident, nodes in sorted(c.job_starts().items()):
            if len(nodes) > 1 and ident not in self._twice:
                self._twice.add(ident)
                self.violate(f"after {after}: Job pod {ident} started {len(nodes)} times (on {', '.join(nodes)})")
        for v in c.leases.take_violations():
            self.violate(f"after {after}: {v}")
        for v in c.term_claims():
            if v not in self.report.violations:
                self.violate(v)
        terms = len(c.leases.order)
        self.report.unforced_terms = max(0, terms - 1 - len(self._kills))
        self.log(f"  {after}: {'converged' if not snap.problems else 'NOT converged'} in {took:.1f} s "
                 f"({snap.pods} pods, {snap.processes} processes on the nodes); term {c.leases.current()}; "
                 f"serves {len(c.serves)}")

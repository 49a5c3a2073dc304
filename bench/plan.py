"""Validate and plan a generated repository of 10,000 objects; last line: objects per second.

Issue targets: 10,000 objects validated and planned in under 5 s on a 2-core machine; cold
validation of 10,000 objects <= 2 s; a one-file change in it validated and planned <= 0.3 s.

A commit of 10,000 objects is validated cold (nothing cached: every file parsed and checked),
then a second commit changing 5% of the objects is planned against it, as a pull request
would be. Then a chain of commits, each changing one file, is loaded and planned one after
the other, as `serve` and `plan` do with the source cache (validation.FILE_CACHE) warm.
Peers measured in the same run: the cold validation with jsonschema alone (no compiled
schema checks), and a cold load of the one-file commit. Machines are shared (other
engineers' tests run beside it), so the timed steps are repeated, and the best and median
wall-clock times are printed with the CPU time of the process (which waiting for a core
does not inflate). The cyclic GC runs as it does in `serve`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitorch.model.objects import DesiredState
from gitorch.source import desired, validation
from gitorch.source.diffs import ChangeSet, diff_states
from gitorch.source.git import Repository, open_repository
from gitorch.source.rendering import PlanReport, plan_markdown, plan_text

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@x",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@x",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def app(ns: str, i: int, replicas: int) -> str:
    """Four objects an application typically has: config, secret, deployment, service."""
    name = f"app-{i}"
    return f"""\
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config, namespace: {ns}}}
data: {{GREETING: hello-{i}, LOG_LEVEL: info}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-secret, namespace: {ns}}}
stringData: {{token: not-a-real-token-{i}}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: web
          command: ["python3", "-m", "http.server", "8080"]
          envFrom:
            - configMapRef: {{name: {name}-config}}
          env:
            - name: TOKEN
              valueFrom:
                secretKeyRef: {{name: {name}-secret, key: token}}
          ports:
            - {{name: http, containerPort: 8080}}
          resources:
            requests: {{cpu: 100m, memory: 64Mi}}
            limits: {{memory: 128Mi}}
          readinessProbe:
            httpGet: {{path: /, port: http}}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
"""


def layout(objects: int) -> tuple[int, int]:
    """(namespaces, applications) for about `objects` objects."""
    namespaces = max(1, objects // 400)
    return namespaces, (objects - namespaces) // 4


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, check=True, env=ENV, capture_output=True, text=True)
    return done.stdout.strip()


def generate(root: Path, objects: int) -> tuple[str, str]:
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True, env=ENV)
    namespaces, apps = layout(objects)
    for n in range(namespaces):
        (root / f"ns-{n}").mkdir()
        (root / f"ns-{n}" / "namespace.yaml").write_text(
            f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n}\n"
        )
    for i in range(apps):
        (root / f"ns-{i % namespaces}" / f"app-{i}.yaml").write_text(app(f"ns-{i % namespaces}", i, 2))
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "base")
    base = _git(root, "rev-parse", "HEAD")
    for i in range(0, apps, 20):  # change 5% of the applications
        (root / f"ns-{i % namespaces}" / f"app-{i}.yaml").write_text(app(f"ns-{i % namespaces}", i, 3))
    _git(root, "commit", "-q", "-am", "scale")
    return base, _git(root, "rev-parse", "HEAD")


def one_file_commits(root: Path, objects: int, count: int) -> list[str]:
    """`count` commits after HEAD, each changing the replicas in one application's file."""
    namespaces, apps = layout(objects)
    oids = []
    for j in range(count):
        i = (1 + j * 97) % apps
        (root / f"ns-{i % namespaces}" / f"app-{i}.yaml").write_text(app(f"ns-{i % namespaces}", i, 5 + j))
        _git(root, "commit", "-q", "-am", f"scale app-{i}")
        oids.append(_git(root, "rev-parse", "HEAD"))
    return oids


Timing = tuple[float, float]  # (wall-clock, CPU) seconds


def plan_against(repo: Repository, base: DesiredState, rev: str) -> tuple[Timing, DesiredState, ChangeSet]:
    """What `gitorch plan` does past the CLI: load (snapshot, parse, validate), diff, render."""
    t0, c0 = time.perf_counter(), time.process_time()
    head = desired.load(repo, rev)
    changes = diff_states(base, head)
    report = PlanReport(base.revision, head.revision, changes, head.diagnostics)
    plan_text(report)
    plan_markdown(report)
    return (time.perf_counter() - t0, time.process_time() - c0), head, changes


def cold_load(repo: Repository, rev: str) -> Timing:
    """A load that finds nothing cached (the cache is bypassed, not cleared)."""
    t0, c0 = time.perf_counter(), time.process_time()
    state = validation.load_desired(repo.snapshot(rev), None)
    elapsed = (time.perf_counter() - t0, time.process_time() - c0)
    assert state.ok, [d.format() for d in state.diagnostics[:5]]
    return elapsed


def spread(samples: list[Timing]) -> str:
    walls, cpus = [w for w, _ in samples], [c for _, c in samples]
    return (
        f"best {min(walls):.2f} s, median {statistics.median(walls):.2f} s of {len(samples)} "
        f"(CPU best {min(cpus):.2f} s, median {statistics.median(cpus):.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each repeated step")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        base, head = generate(root, args.objects)
        chain = one_file_commits(root, args.objects, args.repeat + 1)
        repo = open_repository(root)
        validation.FILE_CACHE.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        base_state = desired.load(repo, base)  # the first load: schemas compiled, the cache filled
        t1, c1 = time.perf_counter(), time.process_time()
        plan_5, head_state, changes = plan_against(repo, base_state, head)
        n = len(base_state.objects)
        assert base_state.ok and head_state.ok, [d.format() for d in head_state.diagnostics[:5]]
        colds = [cold_load(repo, base) for _ in range(args.repeat)]
        real_fast_valid = validation._fast_valid
        validation._fast_valid = lambda check, body: False  # the peer: jsonschema checks every document
        try:
            jsonschema_alone = cold_load(repo, base)
        finally:
            validation._fast_valid = real_fast_valid
        # One-file commits in a row, each planned against the one before (the first is warm-up).
        previous, parsed = head_state, []
        steps: list[Timing] = []
        for oid in chain:
            before = validation.FILE_CACHE.stats().misses
            elapsed, previous, one = plan_against(repo, previous, oid)
            steps.append(elapsed)
            parsed.append(validation.FILE_CACHE.stats().misses - before)
            assert previous.ok and one.summary == "Plan: 0 to add, 1 to change, 0 to destroy.", one.summary
        steps = steps[1:]
        peer = cold_load(repo, chain[-1])
        print(f"objects: {n} in {base_state.files} files")
        print(f"cold validate of one commit, the first in the process: {t1 - t0:.2f} s (CPU {c1 - c0:.2f} s)")
        best = min(w for w, _ in colds)
        print(f"cold validate of one commit: {spread(colds)}; {n / best:,.0f} objects/s (target: <= 2 s)")
        ratio = jsonschema_alone[1] / min(c for _, c in colds)
        print(
            f"  peer, jsonschema alone checking every document: {jsonschema_alone[0]:.2f} s "
            f"(CPU {jsonschema_alone[1]:.2f} s, {ratio:.1f}x the best cold CPU)"
        )
        print(
            f"plan of a 5% change against it (parse changed files, validate, diff, render): {plan_5[0]:.2f} s "
            f"(CPU {plan_5[1]:.2f} s)"
        )
        print(f"  {changes.summary}")
        print(
            f"one-file change validated and planned (load, diff, render; files parsed: {max(parsed)}): "
            f"{spread(steps)} (target: <= 0.3 s)"
        )
        print(
            f"  peer, a cold load of that commit alone: {peer[0]:.2f} s "
            f"(CPU {peer[1]:.2f} s, {peer[1] / min(c for _, c in steps):.0f}x the best)"
        )
        total = (t1 - t0) + plan_5[0]
        print(f"validate + plan total: {total:.2f} s (target: under 5 s for 10,000 objects)")
        print(f"{n / total:,.0f} objects validated and planned per second")


if __name__ == "__main__":
    main()

"""From a new commit to 100 Ready pods on a 10-node lab: pod start latency and total time.

Pod start latency is Kubernetes' SLO measure: from the moment a pod is scheduled (its
node chosen) to the moment the controller sees it Ready. Anchor: Kubernetes' pod-startup
SLO is p99 <= 5 s. Target: p99 <= 2 s. Needs root (it builds a lab). Last line: p99 in s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitorch.nodes import lab as labmod
from gitorch.reconcile.controller import Controller
from gitorch.source.git import open_repository
from gitorch.store.database import Store

ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "bench",
       "GIT_COMMITTER_EMAIL": "b@x", "GIT_CONFIG_GLOBAL": "/dev/null", "PATH": "/usr/bin:/bin"}


def deployment(i: int, replicas: int) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app-{i}, namespace: bench}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: app-{i}}}}}
  template:
    metadata: {{labels: {{app: app-{i}}}}}
    spec:
      containers:
        - name: main
          command: [python3, -c, "import time; time.sleep(10**6)"]
          resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}
          readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
---
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--subnet", default="10.231.60.0/24",
                        help="the lab's private /24 (another run's lab must not share it)")
    args = parser.parse_args()
    labmod.preflight()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "lab"
        labmod.up(args.nodes, state_dir=state, subnet=args.subnet, nodes_file=Path(tmp) / "nodes.yaml")
        try:
            repo = Path(tmp) / "repo"
            repo.mkdir()
            (repo / "nodes.yaml").write_text((Path(tmp) / "nodes.yaml").read_text())
            (repo / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n")
            subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=ENV)
            subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=ENV)
            subprocess.run(["git", "commit", "-qm", "nodes"], cwd=repo, check=True, env=ENV)
            store = Store.open(f"sqlite:///{tmp}/store.db")
            controller = Controller(open_repository(repo), store, Path(tmp) / "state")
            controller.reconcile()  # connect, ship the agent, learn the nodes: the cluster is up
            (repo / "apps.yaml").write_text("".join(deployment(i, args.pods // 10) for i in range(10)))
            subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=ENV)
            subprocess.run(["git", "commit", "-qm", "100 pods"], cwd=repo, check=True, env=ENV)
            t0 = time.monotonic()
            scheduled: dict[str, float] = {}
            ready: dict[str, float] = {}
            passes = 0
            while True:
                result = controller.reconcile()
                passes += 1
                now = time.monotonic()
                assert result.plan is not None
                for p in result.plan.pods:
                    if p.node:
                        scheduled.setdefault(p.name, now)
                for rec in store.pods():
                    if rec.ready:
                        ready.setdefault(rec.name, now)
                if result.converged and len(ready) >= args.pods:
                    break
                if now - t0 > 300:
                    raise SystemExit(f"not converged after 300 s: {len(ready)}/{args.pods} ready")
            total = time.monotonic() - t0
            controller.close()
            store.close()
        finally:
            labmod.down(state)
    latencies = [ready[n] - scheduled[n] for n in ready if n in scheduled]
    print(f"{len(ready)} pods Ready on {args.nodes} nodes in {total:.2f} s from the commit ({passes} passes)")
    print(f"pod start latency (scheduled -> Ready): p50 {statistics.median(latencies):.2f} s, "
          f"p99 {pct(latencies, 0.99):.2f} s, max {max(latencies):.2f} s")
    print("anchor: Kubernetes' pod-startup SLO p99 <= 5 s; target p99 <= 2 s")
    print(f"p99 pod start latency: {pct(latencies, 0.99):.2f} s")


if __name__ == "__main__":
    main()

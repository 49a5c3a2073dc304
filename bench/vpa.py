"""What the VerticalPodAutoscaler recommender adds to a pass: N Deployments of P pods (one
container each), each with a VPA; every pass brings one new sample per pod (one metrics interval),
which the recommender takes in and turns into every VPA's status. The peer, measured on the same
state and pods in the same run: that pass's `plan()` (which here also places replacements for the
made-up pods, whose names are not the planner's). No lab: the desired state is a real Git
commit, the samples are made up. Medians of R passes. Last line: the recommender's milliseconds
per pass and its ratio to plan().
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gitorch.model.usage import ContainerUsage, PodUsage
from gitorch.reconcile.planning import Observed, PodState, plan
from gitorch.reconcile.recommending import Recommender
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo

T0 = 1_800_000_000.0


def manifests(n: int, pods: int) -> dict[str, str]:
    files = {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"}
    for i in range(n):
        files[f"app{i}.yaml"] = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app{i}, namespace: shop}}
spec:
  replicas: {pods}
  selector: {{matchLabels: {{app: app{i}}}}}
  template:
    metadata: {{labels: {{app: app{i}}}}}
    spec:
      containers:
        - name: main
          command: [sleep, infinity]
          resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
---
apiVersion: autoscaling.k8s.io/v1
kind: VerticalPodAutoscaler
metadata: {{name: app{i}, namespace: shop}}
spec:
  targetRef: {{kind: Deployment, name: app{i}}}
  updatePolicy: {{updateMode: "Off"}}
"""
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--passes", type=int, default=15)
    args = parser.parse_args()
    repo = GitRepo(Path(tempfile.mkdtemp(prefix="vpa-bench-")) / "repo")
    repo.commit("apps", manifests(args.deployments, args.pods))
    state = desired.load(open_repository(repo.path), None)
    assert state.ok, [d.format() for d in state.diagnostics][:3]
    pods = [PodState(f"app{i}-{j}", "shop", "Deployment", f"app{i}", "n1", "r", "Running", True, created=T0)
            for i in range(args.deployments) for j in range(args.pods)]
    history: dict[tuple[str, str], list[PodUsage]] = {}
    r = Recommender()
    ours: list[float] = []
    peer: list[float] = []
    for k in range(args.passes):
        now = T0 + 15 * (k + 1)
        for n, p in enumerate(pods):  # one new sample per pod (40 kept, as serve's window)
            kept = history.setdefault(("shop", p.name), [])
            kept.append(PodUsage("shop", p.name, "n1", now, 15.0,
                                 (ContainerUsage("main", 50 + (n * 7 + k) % 100, 50_000_000 + n * 1000),)))
            del kept[:-40]
        start = time.perf_counter()
        r.feed(state, pods, lambda key: history.get(key, []), now)
        statuses = r.statuses(state, pods)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        plan(state, Observed(now, tuple(pods), (), recommendations=statuses))
        peer.append(time.perf_counter() - start)
    mine, theirs = statistics.median(ours) * 1000, statistics.median(peer) * 1000
    print(f"{args.deployments} VPAs, {len(pods)} pods, {args.passes} passes: recommender median {mine:.1f} ms "
          f"(min {min(ours) * 1000:.1f}), plan() median {theirs:.1f} ms")
    print(f"recommender {mine:.1f} ms per pass, {mine / theirs:.2f}x plan()")


if __name__ == "__main__":
    main()

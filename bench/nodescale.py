"""From a pod Pending for lack of room to Ready on a standby node the cluster autoscaler activated.

A 2-node lab: lab-1 active with 1 CPU to give (two 400m pods fill it), lab-2 a standby node.
Each round commits `batch` scaled 0 -> 1 (a 300m pod that fits only on lab-2) and runs reconcile
passes back to back, as `serve` does after a push, until the pod is Ready; then scales it back to
0 and waits for lab-2 to return to standby (scaleDownUnneededTime 1s). The peer, in alternating
rounds, is the same commit with lab-2 an ordinary active node: the difference is what activating
costs. Kubernetes' Cluster Autoscaler reacts within 10 s (its scan interval) plus the minutes a
cloud takes to provision the machine. First, without a lab, what choosing costs a pass: the
fewest of 10 standby nodes for 10 pending pods beside 10,000 placed ones on 100 nodes (best of 5).
Needs root (it builds a lab). Last line: the median time to Ready on the activated node, in seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shared import git
from gitorch.nodes import lab as labmod
from gitorch.reconcile import nodescaling
from gitorch.reconcile.controller import Controller
from gitorch.reconcile.scheduler import NodeInfo, PodInfo, Resources
from gitorch.source.git import open_repository
from gitorch.store.database import Store

CLUSTER = """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: bench}
spec:
  autoscaling: {scaleDownUnneededTime: 1s}
"""


def deployment(name: str, replicas: int, cpu: str) -> str:
    return f"""\
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: bench}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - {{name: main, command: [sleep, "100000"], resources: {{requests: {{cpu: {cpu}, memory: 16Mi}}}}}}
"""


def nodes_yaml(lab: labmod.Lab, standby: bool) -> str:
    docs = []
    for body in labmod.node_manifests(lab)[:2]:
        body["spec"]["capacity"] = {"cpu": "1"}
        if body["metadata"]["name"] == "lab-2" and standby:
            body["spec"]["standby"] = True
        docs.append("---\n" + json.dumps(body) + "\n")
    return "".join(docs)


def commit(repo: Path, lab: labmod.Lab, standby: bool, batch: int) -> None:
    (repo / "cluster.yaml").write_text(CLUSTER)
    (repo / "nodes.yaml").write_text(nodes_yaml(lab, standby))
    (repo / "apps.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n"
                                    + deployment("web", 2, "400m") + deployment("batch", batch, "300m"))
    git("add", "-A", cwd=repo)
    git("commit", "-qm", f"standby={standby} batch={batch}", cwd=repo)


def until(controller: Controller, done: Callable[[], bool], timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        controller.reconcile()
        if done():
            return time.monotonic() - start
    raise SystemExit(f"not done within {timeout} s")


def state(store: Store, node: str) -> str:
    row = store.object_status("Node", "", node)
    return str(((row.body or {}).get("scaling") or {}).get("state")) if row is not None else "None"


def settled(store: Store, wanted: str) -> bool:
    """Every pod Ready and lab-2 in the `wanted` state (an ordinary node keeps none: "None")."""
    return all(p.ready for p in store.pods(namespace="bench")) and state(store, "lab-2") == wanted


def choice_cost() -> float:
    """Seconds one scale-up choice takes beside 10,000 placed pods (best of 5)."""
    nodes = [NodeInfo(f"n{i}", {}, Resources(64000, 256 << 30, 110, 0)) for i in range(100)]
    bound = [(PodInfo(f"p{i}", "ns", {"app": f"a{i % 50}"}, Resources(600, 1 << 30, 1, 0),
                      owner=f"Deployment/ns/a{i % 50}"), f"n{i % 100}") for i in range(10000)]
    pending = [PodInfo(f"q{i}", "ns", {"app": "x"}, Resources(4000, 1 << 30, 1, 0), owner="Deployment/ns/x")
               for i in range(10)]
    standby = [NodeInfo(f"s{i}", {}, Resources(8000, 32 << 30, 110, 0)) for i in range(10)]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        up = nodescaling.choose(pending, nodes, standby, bound)
        best = min(best, time.perf_counter() - start)
        assert up is not None and len(up.nodes) == 5
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--subnet", default=os.environ.get("GITORCH_TEST_SUBNET", "10.231.45.0/24"))
    args = parser.parse_args()
    print(f"choosing 5 of 10 standby nodes for 10 pending pods beside 10,000 placed ones: {choice_cost():.3f} s",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-nodescale-"))
    lab = labmod.up(2, state_dir=work / "lab", subnet=args.subnet)
    repo = work / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    store = Store.open(f"sqlite:///{work / 'store.db'}")
    controller = Controller(open_repository(repo), store, work / "state")
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for standby in [True, False] * args.rounds:
            commit(repo, lab, standby, 0)
            until(controller, functools.partial(settled, store, "Standby" if standby else "None"))
            commit(repo, lab, standby, 1)
            took = until(controller, lambda: any(p.owner_name == "batch" and p.ready and p.node == "lab-2"
                                                 for p in store.pods(namespace="bench")))
            times[standby].append(took)
            print(f"{'standby' if standby else 'active '} node: batch's pod Ready on lab-2 {took:.3f} s after the "
                  "commit", flush=True)
    finally:
        controller.close()
        store.close()
        labmod.down(work / "lab")
        shutil.rmtree(work, ignore_errors=True)
    woken, ready = statistics.median(times[True]), statistics.median(times[False])
    print(f"median over {args.rounds} rounds: activated standby node {woken:.3f} s "
          f"(min {min(times[True]):.3f}, max {max(times[True]):.3f}); already active node {ready:.3f} s "
          f"(ratio {woken / ready:.2f})")
    print(f"{woken:.3f}")


if __name__ == "__main__":
    main()

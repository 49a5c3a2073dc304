"""Schedule 10,000 pods on 1,000 and on 5,000 generated nodes; last line: pods/s on 5,000 nodes.

Anchor: kube-scheduler's own regression threshold for this shape (SchedulingBasic, 5,000
nodes, 10,000 pods) is 270 pods/s; gitorch's target is 1,000 pods/s. The peer measured in
the same run is this scheduler with sampling off (percentageOfNodesToScore: 100, every
feasible node filtered and scored), on the first 1,000 pods.

Nodes: capacities from 4 to 64 cpu, zones, a disk label, some dedicated (NoSchedule) and
spot (PreferNoSchedule) nodes, most with podman. Pods: replicas of ~200 owners with
requests; a mix with nodeSelector, tolerations, hostname anti-affinity and zone spread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitorch.reconcile.scheduler import Decision, NodeInfo, PodInfo, Resources, Taint, schedule

GI = 1 << 30
MI = 1 << 20
KUBE_SCHEDULER_THRESHOLD = 270  # pods/s, SchedulingBasic 5000Nodes_10000Pods


def make_nodes(count: int, rng: random.Random) -> list[NodeInfo]:
    nodes = []
    for i in range(count):
        cpu, mem = rng.choice([(4, 16), (8, 32), (16, 64), (32, 128), (64, 256)])
        labels = {
            "topology.kubernetes.io/zone": f"zone-{i % 5}",
            "disk": "ssd" if rng.random() < 0.4 else "hdd",
        }
        taints: tuple[Taint, ...] = ()
        roll = rng.random()
        if roll < 0.05:
            labels["dedicated"] = "db"
            taints = (Taint("dedicated", "db", "NoSchedule"),)
        elif roll < 0.10:
            taints = (Taint("spot", "true", "PreferNoSchedule"),)
        nodes.append(
            NodeInfo(
                name=f"node-{i:05d}",
                labels=labels,
                allocatable=Resources(cpu * 1000, mem * GI, 110, 200 * GI),
                taints=taints,
                runtimes=frozenset({"process", "podman"}) if rng.random() < 0.8 else frozenset({"process"}),
            )
        )
    return nodes


def make_pods(count: int, owners: int, rng: random.Random) -> list[PodInfo]:
    """`count` pods, replicas of `owners` workloads; each kind of workload shares its spec
    objects across replicas, as pods built from one template do."""
    pods: list[PodInfo] = []
    per_owner = count // owners
    for o in range(owners):
        name = f"app-{o:03d}"
        labels = {"app": name}
        requests = Resources(rng.choice([100, 250, 500, 1000]), rng.choice([128, 256, 512, 1024]) * MI, 1)
        kind = o % 20
        extra: dict[str, object] = {}
        if kind == 0:  # databases on dedicated nodes
            extra["node_selector"] = {"dedicated": "db"}
            extra["tolerations"] = ({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"},)
        elif kind == 1:
            extra["node_selector"] = {"disk": "ssd"}
        elif kind == 2:  # one replica per node
            extra["affinity"] = {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}
                    ]
                }
            }
        elif kind == 3:  # even over zones
            extra["topology_spread"] = (
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": labels},
                },
            )
        elif kind == 4:
            extra["tolerations"] = ({"key": "spot", "operator": "Exists"},)
        for r in range(per_owner):
            pods.append(
                PodInfo(
                    name=f"{name}-{r:03d}",
                    namespace=f"team-{o % 10}",
                    labels=labels,
                    requests=requests,
                    needs_container_runtime=o % 2 == 0,
                    owner=f"Deployment/team-{o % 10}/{name}",
                    **extra,  # type: ignore[arg-type]
                )
            )
    return pods


def run(pods: list[PodInfo], nodes: list[NodeInfo], percentage: int = 0) -> tuple[float, list[Decision]]:
    start = time.perf_counter()
    decisions = schedule(pods, nodes, percentage_of_nodes_to_score=percentage)
    return time.perf_counter() - start, decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the 5,000-node run")
    args = parser.parse_args()
    rng = random.Random(42)
    pods = make_pods(args.pods, 200, rng)
    results = []
    for count in (1000, 5000):
        nodes = make_nodes(count, random.Random(count))
        if args.profile and count == 5000:
            import cProfile
            import pstats

            with cProfile.Profile() as prof:
                run(pods, nodes)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        seconds, decisions = run(pods, nodes)
        placed = sum(1 for d in decisions if d.node)
        per_node = Counter(d.node for d in decisions if d.node)
        print(
            f"  {count} nodes: {placed}/{len(pods)} placed in {seconds:.2f} s, "
            f"{len(per_node)} nodes used, at most {max(per_node.values())} pods on one node"
        )
        if count == 1000:
            sample = pods[:1000]
            full, _ = run(sample, nodes, 100)
            quick, _ = run(sample, nodes)
            print(
                f"  peer, every feasible node scored (percentageOfNodesToScore 100): "
                f"{len(sample) / full:.0f} pods/s vs {len(sample) / quick:.0f} pods/s sampled "
                f"({full / quick:.1f}x) on the first {len(sample)} pods"
            )
        results.append((count, len(pods) / seconds))
    for count, rate in results:
        print(
            f"  {count} nodes: {rate / KUBE_SCHEDULER_THRESHOLD:.1f}x "
            f"kube-scheduler's {KUBE_SCHEDULER_THRESHOLD} pods/s threshold"
        )
    for count, rate in results:
        print(f"{count} nodes: {rate:.0f} pods/s")


if __name__ == "__main__":
    main()

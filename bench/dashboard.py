"""The dashboard's pages with 1,000 pods in the store: the render time of each page.

The store (SQLite, as `serve` uses by default) is filled directly: 100 Deployments of 10 pods
in 10 namespaces over 10 nodes, a rollout half done in every Deployment (two revisions), 50
revisions, 300 events and 10 drift reports. Each page is rendered as a loopback GET would get
it (the store's queries plus the template), the median of several renders after a warm-up.
Peer: the same store read by `gitorch get pods -o json`'s query alone. Target: every page under
200 ms. Last line: the slowest page in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitorch.server.dashboard import Dashboard
from gitorch.store import summaries
from gitorch.store.database import PodRecord, Store


def fill(store: Store, *, pods: int = 1000, per_deployment: int = 10, namespaces: int = 10, nodes: int = 10) -> None:
    """A cluster's worth of records, written as a reconcile pass would (one transaction)."""
    now = datetime.now(UTC)
    deployments = pods // per_deployment
    commits = [f"{i:040x}" for i in range(1, 51)]
    with store.transaction():
        for i, commit in enumerate(commits):
            store.record_revision(commit, author="Ada <ada@example.org>", message=f"change {i}\n\nbody of {i}",
                                  committed_at=now - timedelta(minutes=60 - i))
            store.set_revision_outcome(commit, "applied", when=now - timedelta(minutes=59 - i))
        for n in range(nodes):
            store.upsert_node(f"node-{n}", address=f"10.0.0.{n + 1}", pod_cidr=f"10.244.{n}.0/24")
            store.heartbeat(f"node-{n}", now, {"cpus": 4, "memory": {"totalBytes": 8 << 30, "availableBytes": 3 << 30},
                                               "disk": {"path": "/", "totalBytes": 100 << 30, "freeBytes": 40 << 30},
                                               "os": "Debian GNU/Linux 13", "kernel": "6.1.0"},
                            conditions=[{"type": "Ready", "status": "True", "reason": "AgentAnswered"}],
                            agent_version="1")
        records = []
        for d in range(deployments):
            ns, name = f"team-{d % namespaces}", f"app-{d}"
            old, new = f"{d:05x}aaaa", f"{d:05x}bbbb"
            history = [{"revision": old, "commit": commits[-2], "subject": "change 48", "since": now.timestamp() - 600},
                       {"revision": new, "commit": commits[-1], "subject": "change 49", "since": now.timestamp()}]
            store.upsert_object_status(
                "Deployment", ns, name, now=now, sync="Synced", health="Progressing",
                last_applied_revision=commits[-1], last_attempted_revision=commits[-1],
                conditions=[{"type": "Ready", "status": "False", "reason": "Progressing",
                             "message": f"{per_deployment // 2} of {per_deployment} updated"}],
                body={"history": history, "rollout": {"revision": new, "started": now.timestamp()}})
            store.upsert_object_status("Service", ns, name, now=now, sync="Synced", health="Healthy",
                                       last_applied_revision=commits[-1])
            for k in range(per_deployment):
                rev = new if k < per_deployment // 2 else old
                records.append(PodRecord(namespace=ns, name=f"{name}-{rev[:6]}-{k}", owner_kind="Deployment",
                                         owner_name=name, node=f"node-{(d + k) % nodes}", template_hash=rev,
                                         phase="Running", ready=k % 7 != 0, ip=f"10.244.{(d + k) % nodes}.{k + 2}",
                                         created_at=now - timedelta(minutes=k), updated_at=now))
        store.upsert_pods(records, now=now)
        for e in range(300):
            store.record_event("Deployment", f"team-{e % namespaces}", f"app-{e % deployments}",
                               reason="ScalingReplicaSet" if e % 5 else "Unhealthy",
                               type="Normal" if e % 5 else "Warning",
                               message=f"event {e}", when=now - timedelta(seconds=300 - e), revision=commits[-1])
        for r in range(10):
            findings = [{"kind": "PodMissing", "object": f"Deployment/team-0/app-{f}", "node": "node-1",
                         "detail": "pod not running", "mode": "report"} for f in range(r)]
            store.save_drift_report(started_at=now - timedelta(hours=10 - r), finished_at=now - timedelta(hours=10 - r),
                                    mode="report", revision=commits[-1], findings=findings)


CPU: dict[str, float] = {}


def timed(fn: object, repeat: int, name: str = "") -> float:
    """The median wall-clock ms of `repeat` calls after a warm-up; their median CPU ms goes to
    CPU[name] (the figure that holds when other work shares the cores)."""
    assert callable(fn)
    fn()  # warm-up: templates compiled, caches filled
    samples, cpu = [], []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    CPU[name] = statistics.median(cpu)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/state.db")
        fill(store, pods=args.pods)
        dashboard = Dashboard(store)
        pod = store.pods(spec=False)[0]
        pages = ["/", "/objects", "/revisions", f"/revisions/{50:040x}", "/drift", "/events", "/nodes",
                 "/nodes/node-1", f"/pods/{pod.namespace}/{pod.name}/logs"]
        peer = timed(lambda: [summaries.pod_summary(p) for p in store.pods()], args.repeat, "peer")
        print(f"{args.pods} pods in the store; peer: `get pods -o json`'s read {peer:.1f} ms "
              f"({CPU['peer']:.1f} ms CPU); load average {os.getloadavg()[0]:.1f}")
        slowest = ("", 0.0)
        for page in pages:
            ms = timed(lambda page=page: dashboard.render(page), args.repeat, page)
            size = len(dashboard.render(page))
            print(f"{page:<50} {ms:7.1f} ms ({CPU[page]:6.1f} ms CPU)  {size / 1024:5.0f} KiB  "
                  f"({ms / peer:.1f}x the peer)")
            slowest = max(slowest, (page, ms), key=lambda x: x[1])
        live = timed(lambda: dashboard.render("/objects", {"part": "live"}), args.repeat)
        print(f"{'/objects?part=live (a live update fetches it)':<50} {live:7.1f} ms")
        marks = timed(store.marks, args.repeat)
        print(f"{'change marks (one poll of the live streams)':<50} {marks:7.1f} ms")
        store.close()
        print(f"slowest page: {slowest[0]} {slowest[1]:.1f} ms (target < 200 ms)")
        print(f"{slowest[1]:.1f}")


if __name__ == "__main__":
    main()

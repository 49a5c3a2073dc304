"""The dashboard's pages with 1,000 pods in the store: the render time of each page.

A real repository holds the 50 revisions: the first has 100 applications (a ConfigMap, a
Secret, a Deployment and a Service each, bench/plan.py's) in folders apps/team-N/ of 10
namespaces; each later one scales one application. The store (SQLite, as `serve` uses by
default) is filled directly: those 100 Deployments with 10 pods each over 10 nodes, a rollout
half done in every Deployment (two revisions), the 50 revisions applied, 300 events and 10
drift reports. Each page is rendered as a loopback GET would get it (the store's queries plus
the template), the median of several renders after a warm-up; the revision pages and the tree
by folder also as they are first rendered (the plan, or the folders of the applied revision,
read from Git, not yet kept), and the Objects page's live part as 32 viewers fetch it after
one change (one render, shared). Peer: the same store read by `gitorch get pods -o json`'s
query alone. Target: every page under 200 ms. Last line: the slowest page in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.plan import app
from bench.shared import GIT_ENV
from gitorch.server.dashboard import Dashboard
from gitorch.source.git import open_repository
from gitorch.store import summaries
from gitorch.store.database import PodRecord, Store


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, env=GIT_ENV, check=True, capture_output=True,
                          text=True).stdout.strip()


def repository(root: Path, *, deployments: int = 100, namespaces: int = 10, commits: int = 50) -> list[str]:
    """The revisions, oldest first: every application, then one application scaled per commit."""
    _git(root.parent, "init", "-q", "-b", "main", str(root))
    for n in range(namespaces):
        folder = root / "apps" / f"team-{n}"
        folder.mkdir(parents=True)
        (folder / "namespace.yaml").write_text(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-{n}\n")
    for d in range(deployments):
        (root / "apps" / f"team-{d % namespaces}" / f"app-{d}.yaml").write_text(app(f"team-{d % namespaces}", d, 10))
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "change 0\n\nevery application")
    oids = [_git(root, "rev-parse", "HEAD")]
    for i in range(1, commits):
        d = (i * 37) % deployments
        (root / "apps" / f"team-{d % namespaces}" / f"app-{d}.yaml").write_text(
            app(f"team-{d % namespaces}", d, 10 + i))
        _git(root, "commit", "-q", "-am", f"change {i}\n\nbody of {i}")
        oids.append(_git(root, "rev-parse", "HEAD"))
    return oids


def fill(store: Store, commits: list[str], *, pods: int = 1000, per_deployment: int = 10, namespaces: int = 10,
         nodes: int = 10) -> None:
    """A cluster's worth of records, written as a reconcile pass would (one transaction)."""
    now = datetime.now(UTC)
    deployments = pods // per_deployment
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
        commits = repository(Path(tmp) / "repo", deployments=args.pods // 10)
        store = Store.open(f"sqlite:///{tmp}/state.db")
        fill(store, commits, pods=args.pods)
        dashboard = Dashboard(store, repo=open_repository(Path(tmp) / "repo"))
        pod = store.pods(spec=False)[0]
        pages = ["/", "/objects", "/objects?by=folder", "/revisions", f"/revisions/{commits[-1]}",
                 f"/revisions/{commits[0]}", "/drift", "/events", "/nodes", "/nodes/node-1",
                 f"/pods/{pod.namespace}/{pod.name}/logs"]

        def get(page: str) -> str:
            path, _, query = page.partition("?")
            return dashboard.render(path, dict(q.split("=", 1) for q in query.split("&") if q))

        def forget() -> None:  # what a page reads from Git once and then keeps
            dashboard._plans.clear()
            dashboard._folder_map = None

        peer = timed(lambda: [summaries.pod_summary(p) for p in store.pods()], args.repeat, "peer")
        print(f"{args.pods} pods in the store; peer: `get pods -o json`'s read {peer:.1f} ms "
              f"({CPU['peer']:.1f} ms CPU); load average {os.getloadavg()[0]:.1f}")
        slowest = ("", 0.0)
        for page in pages:
            ms = timed(lambda page=page: get(page), args.repeat, page)
            size = len(get(page))
            print(f"{page[:50]:<50} {ms:7.1f} ms ({CPU[page]:6.1f} ms CPU)  {size / 1024:5.0f} KiB  "
                  f"({ms / peer:.1f}x the peer)")
            slowest = max(slowest, (page, ms), key=lambda x: x[1])
            if page.startswith("/revisions/") or "by=folder" in page:
                first = f"{page[:37]} (first render)"
                ms = timed(lambda page=page: (forget(), get(page)), args.repeat, first)
                print(f"{first:<50} {ms:7.1f} ms ({CPU[first]:6.1f} ms CPU)  read from Git, then kept")
                slowest = max(slowest, (first, ms), key=lambda x: x[1])
        # A change sends every viewer of /objects to its live part: the first renders it, the
        # others get that render (before the cache, each viewer paid a render).
        viewers = 32
        one = timed(lambda: (dashboard._live_parts._kept.clear(), get("/objects?part=live")), args.repeat, "one")
        shared = timed(lambda: (dashboard._live_parts._kept.clear(),
                                [get("/objects?part=live") for _ in range(viewers)]), args.repeat, "shared")
        print(f"{'/objects?part=live, one viewer (a render)':<50} {one:7.1f} ms ({CPU['one']:6.1f} ms CPU)")
        print(f"{f'/objects?part=live, {viewers} viewers after a change':<50} {shared:7.1f} ms "
              f"({CPU['shared']:6.1f} ms CPU; {viewers} renders would be ~{viewers * one:.0f} ms)")
        marks = timed(store.marks, args.repeat)
        print(f"{'change marks (one poll of the live streams)':<50} {marks:7.1f} ms")
        store.close()
        print(f"slowest page: {slowest[0]} {slowest[1]:.1f} ms (target < 200 ms)")
        print(f"{slowest[1]:.1f}")


if __name__ == "__main__":
    main()

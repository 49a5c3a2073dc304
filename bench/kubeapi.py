"""The read-only Kubernetes API on 10,000 pods: a full list (JSON and as=Table) over HTTPS, and
how long a watch waits for an event after a pod changes in the store.

The store is filled directly (100 Deployments of 100 pods each); the API server runs in this
process on its own HTTPS listener, as `serve --kube-api-listen` runs it. Peer: `gitorch get
pods -o json`'s work (reading the pods and dumping them as JSON), measured in the same run.
Targets (issue 20): a full list under 300 ms, watch events within 100 ms of the store change.
Last line: the full JSON list in ms (median).
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitorch.server.kubeapi import KubeApiServer, KubeApiSettings
from gitorch.store.database import PodRecord, Store

TOKEN = "bench-token-0123456789abcdef"


def fill(store: Store, deployments: int, per: int) -> None:
    """Written a minute ago: a cluster at rest, before the changes the watch waits for."""
    before = datetime.now(UTC) - timedelta(minutes=1)
    with store.transaction():
        for d in range(deployments):
            manifest = {"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": f"app-{d}", "namespace": "bench", "labels": {"app": f"app-{d}"}},
                        "spec": {"replicas": per, "selector": {"matchLabels": {"app": f"app-{d}"}},
                                 "template": {"metadata": {"labels": {"app": f"app-{d}"}},
                                              "spec": {"containers": [{"name": "main", "image": "busybox",
                                                                       "command": ["sleep", "1000000"]}]}}}}
            store.upsert_object_status("Deployment", "bench", f"app-{d}", body={"manifest": manifest,
                                                                                 "rollout": {"revision": "abc123"}},
                                       health="Healthy", sync="Synced")
        store.upsert_pods([
            PodRecord(namespace="bench", name=f"app-{d}-abc123-{i}", owner_kind="Deployment", owner_name=f"app-{d}",
                      template_hash="abc123", phase="Running", ready=True, node=f"node-{i % 10}",
                      ip=f"10.244.{d}.{i + 2}")
            for d in range(deployments) for i in range(per)], now=before)


def timed(conn: http.client.HTTPSConnection, path: str, accept: str) -> tuple[float, int]:
    start = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}", "Accept": accept})
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - start
    assert resp.status == 200, body[:300]
    return elapsed * 1000, len(json.loads(body).get("items", json.loads(body).get("rows", [])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--per", type=int, default=100)
    parser.add_argument("--lists", type=int, default=5)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tokens").write_text(f"{TOKEN},bench\n")
        store = Store.open(f"sqlite:///{root / 'gitorch.db'}")
        fill(store, args.deployments, args.per)
        pods = args.deployments * args.per
        settings = KubeApiSettings(tls_dir=root / "tls", token_file=root / "tokens")
        started = time.perf_counter()
        server = KubeApiServer(store, None, "127.0.0.1", 0, settings).start()
        listening = time.perf_counter()
        server.feed.ready.wait(600)
        print(f"listening after {(listening - started) * 1000:.0f} ms (serve goes on); first build of {pods} "
              f"pods: {(time.perf_counter() - started) * 1000:.0f} ms")
        try:
            context = ssl.create_default_context(cafile=str(root / "tls" / "ca.crt"))
            host, port = server.http.address
            conn = http.client.HTTPSConnection(host, port, context=context, timeout=60)
            results: dict[str, list[float]] = {}
            for label, accept in (("json", "application/json"),
                                  ("table", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")):
                times = []
                for _ in range(args.lists):
                    ms, n = timed(conn, "/api/v1/pods", accept)
                    assert n == pods, n
                    times.append(ms)
                results[label] = times
                print(f"list {pods} pods ({label}): median {statistics.median(times):.0f} ms, "
                      f"best {min(times):.0f} ms")
            peer = []
            for _ in range(args.lists):
                start = time.perf_counter()
                rows = store.pods()
                json.dumps([{"namespace": p.namespace, "name": p.name, "ready": p.ready, "phase": p.phase,
                             "node": p.node, "ip": p.ip, "created": p.created_at} for p in rows], default=str)
                peer.append((time.perf_counter() - start) * 1000)
            print(f"peer `gitorch get pods -o json` work: median {statistics.median(peer):.0f} ms "
                  f"(API/peer {statistics.median(results['json']) / statistics.median(peer):.2f}x)")

            # A watch, then pod changes written to the store one at a time.
            conn.close()
            conn = http.client.HTTPSConnection(host, port, context=context, timeout=60)
            rv = json.loads(_get(conn, "/api/v1/namespaces/bench/pods?limit=1"))["metadata"]["resourceVersion"]
            watch = http.client.HTTPSConnection(host, port, context=context, timeout=60)
            watch.request("GET", f"/api/v1/namespaces/bench/pods?watch=true&resourceVersion={rv}",
                          headers={"Authorization": f"Bearer {TOKEN}"})
            stream = watch.getresponse()
            delays = []
            for i in range(args.changes):
                name = f"app-{i}-abc123-0"
                time.sleep(0.3)
                before = time.perf_counter()
                store.upsert_pods([PodRecord(namespace="bench", name=name, owner_kind="Deployment",
                                             owner_name=f"app-{i}", template_hash="abc123", phase="Running",
                                             ready=False, node="node-0", ip=f"10.244.{i}.2")])
                while True:
                    event = json.loads(stream.readline())
                    if event["object"]["metadata"]["name"] == name:
                        break
                delays.append((time.perf_counter() - before) * 1000)
            watch.close()
            print(f"watch event after a store change: median {statistics.median(delays):.0f} ms, "
                  f"max {max(delays):.0f} ms (store polled every {settings.poll * 1000:.0f} ms)")
            conn.close()
            print(f"{statistics.median(results['json']):.0f}")
        finally:
            server.close()
            store.close()


def _get(conn: http.client.HTTPSConnection, path: str) -> bytes:
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    return conn.getresponse().read()


if __name__ == "__main__":
    main()

"""From `git push` returning to every pod of the changed Deployment Ready: p50 and p99 over 20 pushes.

A 10-node lab, a bare repository with gitorch's hooks, and `gitorch serve --interval 3600`
(so nothing is found by polling: the post-receive hook wakes the controller). Each push
changes a 10-replica Deployment's environment, which rolls all of its pods. Anchors: Argo
CD polls every 3 minutes unless a webhook is set up; Flux at each object's interval.
Target: p99 under 3 s. Needs root (it builds a lab). Last line: p99 in seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shared import free_port, git
from gitorch.nodes import lab as labmod
from gitorch.store.database import Store


def web(version: int) -> str:
    return f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: bench}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: bench}}
spec:
  replicas: 10
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 10, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          command: [python3, -c, "import time; time.sleep(10**6)"]
          env: [{{name: VERSION, value: "{version}"}}]
          resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}
          readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
"""




def rolled(store: Store, previous: set[str]) -> set[str] | None:
    """The revision set once all 10 pods are Ready on one revision not seen before."""
    pods = [p for p in store.pods(namespace="bench") if p.owner_name == "web"]
    revisions = {p.template_hash for p in pods}
    if len(pods) == 10 and len(revisions) == 1 and all(p.ready for p in pods) and not revisions & previous:
        return revisions
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--pushes", type=int, default=20)
    args = parser.parse_args()
    labmod.preflight()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = root / "state"
        env = {**os.environ, "GITORCH_STATE_DIR": str(state)}
        labmod.up(args.nodes, state_dir=root / "lab", subnet="10.231.61.0/24", nodes_file=root / "nodes.yaml")
        server = None
        try:
            bare = root / "cluster.git"
            git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
            port = free_port()
            gitorch = [sys.executable, "-m", "gitorch"]
            subprocess.run([*gitorch, "hook", "install", str(bare), "--notify", f"http://127.0.0.1:{port}/hooks/wake"],
                           env=env, check=True, capture_output=True)
            work = root / "work"
            git("clone", "-q", str(bare), str(work), cwd=root)
            (work / "nodes.yaml").write_text((root / "nodes.yaml").read_text())
            (work / "apps.yaml").write_text(web(0))
            git("add", "-A", cwd=work)
            git("commit", "-qm", "v0", cwd=work)
            git("push", "-q", "origin", "HEAD:main", cwd=work)
            server = subprocess.Popen([*gitorch, "serve", "--repo", str(bare), "--branch", "main", "--interval", "3600",
                                       "--listen", f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            time.sleep(1)
            store = Store.open(f"sqlite:///{state}/gitorch.db")
            seen: set[str] = set()
            deadline = time.monotonic() + 120
            while (revs := rolled(store, seen)) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the first revision never became Ready")
                time.sleep(0.05)
            seen |= revs
            times = []
            for i in range(1, args.pushes + 1):
                (work / "apps.yaml").write_text(web(i))
                git("commit", "-qam", f"v{i}", cwd=work)
                git("push", "-q", "origin", "HEAD:main", cwd=work)
                t0 = time.monotonic()
                while (revs := rolled(store, seen)) is None:
                    if time.monotonic() - t0 > 60:
                        raise SystemExit(f"push {i}: not Ready after 60 s")
                    time.sleep(0.02)
                times.append(time.monotonic() - t0)
                seen |= revs
            store.close()
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
            labmod.down(root / "lab")
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
    print(f"{len(times)} pushes, each rolling a 10-replica Deployment on {args.nodes} lab nodes")
    print(f"git push returned -> all 10 new pods Ready: p50 {statistics.median(times):.2f} s, p99 {p99:.2f} s, "
          f"max {max(times):.2f} s")
    print("anchors: Argo CD polls every 180 s without a webhook; target p99 under 3 s")
    print(f"p99 push to Ready: {p99:.2f} s")


if __name__ == "__main__":
    main()

"""HorizontalPodAutoscaler reaction times on a 2-node lab, through `gitorch serve` as users run it.

Kubernetes' path, which is the peer: metrics sampled every 15 s (metrics-server's resolution),
the HPA synced every 15 s, then the new pod starts. A Deployment of one pod (100m CPU request
and limit) with an HPA (min 1, max 2, 60% CPU, scale-down window 0 s) idles until the load
starts (a file appears on the nodes), then burns its 100m until the file goes. Measured: load start -> the second
pod Ready (target <= 20 s), and load end -> back to one pod. Needs root (it builds a lab).
Last line: the scale-up time in s.
"""

from __future__ import annotations

import argparse
import os
import random
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

APP = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn, namespace: bench}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      containers:
        - name: burn
          command: [sh, -c, "while :; do while [ ! -e {go} ]; do sleep 0.2; done; while [ -e {go} ]; do :; done; done"]
          resources: {{requests: {{cpu: 100m}}, limits: {{cpu: 100m}}}}
          readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: burn, namespace: bench}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: burn}}
  minReplicas: 1
  maxReplicas: 2
  metrics:
    - type: Resource
      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 60}}}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 0}}
"""


def ready(store: Store) -> int:
    return sum(1 for p in store.pods(namespace="bench") if p.owner_name == "burn" and p.ready)


def wait(what: str, check: object, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="load on/off cycles")
    parser.add_argument("--interval", type=float, default=15.0, help="metrics resolution and HPA sync period (s)")
    parser.add_argument("--subnet", default="10.231.61.0/24",
                        help="the lab's private /24 (another run's lab must not share it)")
    args = parser.parse_args()
    labmod.preflight()
    with tempfile.TemporaryDirectory() as tmp:
        lab = labmod.up(2, state_dir=Path(tmp) / "lab", subnet=args.subnet, nodes_file=Path(tmp) / "nodes.yaml")
        serve = None
        try:
            repo = Path(tmp) / "repo"
            repo.mkdir()
            (repo / "nodes.yaml").write_text((Path(tmp) / "nodes.yaml").read_text())
            (repo / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n")
            tag = Path(tmp).name
            go = f"/tmp/go-{tag}"  # the pods burn while it exists on their node
            (repo / "app.yaml").write_text(APP.format(go=go))
            git("init", "-q", "-b", "main", cwd=repo)
            git("add", "-A", cwd=repo)
            git("commit", "-qm", "burn", cwd=repo)
            state = Path(tmp) / "state"
            env = {**os.environ, "GITORCH_STATE_DIR": str(state), "GITORCH_METRICS_INTERVAL": str(args.interval),
                   "GITORCH_HPA_SYNC_PERIOD": str(args.interval)}
            log = (Path(tmp) / "serve.log").open("w")
            serve = subprocess.Popen([sys.executable, "-m", "gitorch", "serve", "--listen",
                                      f"127.0.0.1:{free_port()}"], cwd=repo, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
            wait("the store", lambda: (state / "gitorch.db").exists(), 60)
            store = Store.open(f"sqlite:///{state / 'gitorch.db'}")
            wait("one Ready pod", lambda: ready(store) == 1, 120)
            ups, downs, decided = [], [], []
            for r in range(args.rounds):
                # Idle samples in and the HPA synced, then a random phase: the load starts anywhere
                # between two samples, as it would in life.
                time.sleep(args.interval * 1.5 + random.uniform(0, args.interval))
                for n in lab.nodes:
                    labmod_ssh(lab, n.name, f"touch {go}")
                t0, wall0 = time.monotonic(), time.time()
                ups.append(wait("the second pod Ready", lambda: ready(store) == 2, 180) - t0)
                rescale = [e for e in store.events() if e.reason == "SuccessfulRescale"
                           and e.last_time.timestamp() >= wall0 and e.message.startswith("New size: 2")]
                decided.append(rescale[0].last_time.timestamp() - wall0 if rescale else float("nan"))
                for n in lab.nodes:
                    labmod_ssh(lab, n.name, f"rm -f {go}")
                t1 = time.monotonic()
                downs.append(wait("back to one pod", lambda: len([p for p in store.pods(namespace="bench")
                                                                 if p.owner_name == "burn"]) == 1, 180) - t1)
                print(f"round {r + 1}: scale-up {ups[-1]:.1f} s (decided after {decided[-1]:.1f} s, then the pod "
                      f"started), scale-down (0 s window) {downs[-1]:.1f} s", flush=True)
            print(f"Kubernetes' path: {args.interval:g} s metrics + {args.interval:g} s HPA sync + pod start; "
                  f"worst case about {2 * args.interval:g} s + start, target <= 20 s")
            print(f"decision (metrics + sync) after load start: median {statistics.median(decided):.1f} s; "
                  f"then the new pod Ready: median {statistics.median(ups) - statistics.median(decided):.1f} s")
            print(f"scale-down after load ends (0 s window): median {statistics.median(downs):.1f} s")
            print(f"scale-up from load start to the new pod Ready: median {statistics.median(ups):.1f} s "
                  f"(rounds: {', '.join(f'{u:.1f}' for u in ups)})")
            print(f"{statistics.median(ups):.1f}")
            store.close()
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(timeout=60)
            labmod.down(Path(tmp) / "lab")


def labmod_ssh(lab: labmod.Lab, node: str, script: str) -> None:
    subprocess.run(labmod.ssh_command(lab, node, ["sh", "-c", script]), check=True, stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=30)


if __name__ == "__main__":
    main()

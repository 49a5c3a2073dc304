"""gitorch's Ingress against a hand-written HAProxy config: the same backends, the same run.

A 2-node lab; a Deployment of 10 `http.server` pods behind a Service and an Ingress; the
Cluster's ingress node (lab-1) runs HAProxy as gitorch configures it (port 80), and beside it a
second HAProxy (the same Debian binary) from a config written by hand (port 8081) whose backend
lists the same pods. wrk (Debian's) from this machine measures each in turn, under `nice -n 10`:
requests/s and p99 latency. Then a rolling update of the 10 replicas (maxSurge 2, maxUnavailable
0) runs under a fixed request rate through gitorch's Ingress (wrk's Lua `delay`), counting the
failed requests (socket errors and non-2xx). Needs root (it builds a lab) and wrk.
Last line: the ratio of gitorch's requests/s to the hand-written config's (issue 11's target: >= 0.95).
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shared import git
from gitorch.nodes import lab as labmod
from gitorch.reconcile.controller import Controller, ControllerSettings
from gitorch.source.git import open_repository
from gitorch.store.database import Store

SERVER = ("import http.server, os\\nname = os.environ['POD_NAME']\\n"
          "class H(http.server.BaseHTTPRequestHandler):\\n"
          "    protocol_version = 'HTTP/1.1'\\n"
          "    def do_GET(self):\\n"
          "        body = (os.environ['VERSION'] + ' ' + name).encode()\\n"
          "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\\n"
          "        self.end_headers(); self.wfile.write(body)\\n"
          "    def log_message(self, *a): pass\\n"
          "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\\n")
HOST = "web.bench.test"


def manifests(ingress_node: str, version: str) -> str:
    return f"""\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {{name: bench}}
spec:
  ingress:
    nodeSelector: {{kubernetes.io/hostname: {ingress_node}}}
---
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
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 2, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          command: [python3, -c, "{SERVER}"]
          env:
            - {{name: VERSION, value: "{version}"}}
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: bench}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: bench}}
spec:
  rules:
    - host: {HOST}
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: http}}}}}}}}
"""


def hand_written(endpoints: list[str]) -> str:
    """What a person would write for the same backends: one frontend, one backend, the pods."""
    servers = "\n".join(f"    server p{i} {ep}" for i, ep in enumerate(endpoints, 1))
    return f"""\
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend hand
    bind :8081
    default_backend web
backend web
    balance roundrobin
{servers}
"""


def answers(url: str) -> str:
    try:
        req = urllib.request.Request(url, headers={"Host": HOST})
        with urllib.request.urlopen(req, timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p99 (ms), requests and failed requests from wrk's report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = (sum(int(g) for g in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return {"rps": rps, "p99": _ms(p99.group(1)) if p99 else float("nan"), "requests": total, "failed": failed}


def wrk(url: str, seconds: float, connections: int) -> dict[str, float]:
    argv = ["nice", "-n", "10", "wrk", "-t1", f"-c{connections}", f"-d{max(1, math.ceil(seconds))}s", "--latency",
            "-H", f"Host: {HOST}", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    return parse_wrk(out)


def combined(runs: list[dict[str, float]]) -> dict[str, float]:
    """Several wrk runs of equal length as one: mean requests/s, the worse p99, summed counts."""
    return {"rps": sum(r["rps"] for r in runs) / len(runs), "p99": max(r["p99"] for r in runs),
            "requests": sum(r["requests"] for r in runs), "failed": sum(r["failed"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=24.0, help="load on each side, in all")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=6, help="ABBA blocks of runs (each run seconds/(2 x blocks))")
    parser.add_argument("--rate", type=int, default=200, help="requests/s during the rolling update")
    parser.add_argument("--subnet", default="10.231.52.0/24")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk; scripts/bootstrap.sh does)")
    labmod.preflight()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "lab"
        lab = labmod.up(2, state_dir=state, subnet=args.subnet, nodes_file=state / "nodes.yaml")
        try:
            node = lab.nodes[0]
            repo = Path(tmp) / "repo"
            repo.mkdir()
            (repo / "nodes.yaml").write_text((state / "nodes.yaml").read_text())
            (repo / "apps.yaml").write_text(manifests(node.name, "v1"))
            git("init", "-q", "-b", "main", cwd=repo)
            git("add", "-A", cwd=repo)
            git("commit", "-q", "-m", "web behind an Ingress", cwd=repo)
            store = Store.open(f"sqlite:///{tmp}/store.db")
            controller = Controller(open_repository(repo), store, Path(tmp) / "state",
                                    ControllerSettings(node_call_timeout=5.0))
            ours, theirs = f"http://{node.address}:80/", f"http://{node.address}:8081/"
            deadline = time.monotonic() + 180
            while True:
                controller.reconcile()
                pods = store.pods(namespace="bench")
                if len(pods) == 10 and all(p.ready and p.ip for p in pods) and answers(ours).startswith("v1"):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the Ingress never answered with 10 ready pods")
                time.sleep(0.3)
            controller.reconcile()
            endpoints = sorted(f"{p.ip}:8080" for p in store.pods(namespace="bench"))
            config = hand_written(endpoints)
            subprocess.run(labmod.ssh_command(lab, node.name, ["sh", "-c", "cat > /tmp/hand.cfg && setsid haproxy "
                                                               "-D -f /tmp/hand.cfg </dev/null >/dev/null 2>&1"]),
                           input=config, text=True, check=True, timeout=30)
            while not answers(theirs).startswith("v1"):
                if time.monotonic() > deadline + 30:
                    raise SystemExit("the hand-written HAProxy never answered")
                time.sleep(0.2)
            wrk(ours, 2, args.connections)  # warm both up
            wrk(theirs, 2, args.connections)
            # Short runs alternating in ABBA blocks, so neither side always runs on a warmer or busier
            # machine (other jobs share these cores); each block gives a ratio, and the figure is their
            # median: one block disturbed by another process moves it little.
            runs: dict[str, list[dict[str, float]]] = {ours: [], theirs: []}
            ratios = []
            for _ in range(args.blocks):
                block: dict[str, list[dict[str, float]]] = {ours: [], theirs: []}
                for url in (ours, theirs, theirs, ours):
                    block[url].append(wrk(url, args.seconds / (2 * args.blocks), args.connections))
                    runs[url].append(block[url][-1])
                ratios.append(combined(block[ours])["rps"] / combined(block[theirs])["rps"])
            mine, hand = combined(runs[ours]), combined(runs[theirs])
            print(f"gitorch Ingress:     {mine['rps']:8.1f} req/s, p99 {mine['p99']:.2f} ms, "
                  f"{mine['failed']:.0f} failed of {mine['requests']:.0f}")
            print(f"hand-written config: {hand['rps']:8.1f} req/s, p99 {hand['p99']:.2f} ms, "
                  f"{hand['failed']:.0f} failed of {hand['requests']:.0f}")
            # The rolling update under a fixed rate: each connection waits so the total is --rate.
            conns = 4
            script = Path(tmp) / "pace.lua"
            script.write_text(f"function delay()\n  return {1000 * conns // args.rate}\nend\n")
            load = subprocess.Popen(["nice", "-n", "10", "wrk", "-t1", f"-c{conns}", "-d600s", "--latency",
                                     "-s", str(script), "-H", f"Host: {HOST}", ours],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            (repo / "apps.yaml").write_text(manifests(node.name, "v2"))
            git("commit", "-q", "-am", "web v2", cwd=repo)
            started = time.monotonic()
            while True:
                controller.reconcile()
                pods = store.pods(namespace="bench")
                if len(pods) == 10 and all(p.ready for p in pods) and answers(ours).startswith("v2") and all(
                        answers(ours).startswith("v2") for _ in range(10)):
                    break
                if time.monotonic() - started > 300:
                    load.kill()
                    raise SystemExit("the rolling update did not finish in 300 s")
                time.sleep(0.2)
            rolled = time.monotonic() - started
            time.sleep(2)
            load.send_signal(signal.SIGINT)  # wrk reports what it did so far
            out, _ = load.communicate(timeout=30)
            roll = parse_wrk(out)
            print(f"10-replica rolling update ({rolled:.1f} s) at {args.rate} req/s through the Ingress: "
                  f"{roll['failed']:.0f} failed of {roll['requests']:.0f} requests, p99 {roll['p99']:.2f} ms")
            if roll["failed"]:  # say what failed: wrk's error counts and the proxy's log lines that were not 200
                print("\n".join(line for line in out.splitlines() if "errors" in line or "Non-2xx" in line))
                log = subprocess.run(labmod.ssh_command(lab, node.name, ["sh", "-c", "cat /var/lib/gitorch/pods/*/logs/"
                                                                         "haproxy.log"]),
                                     capture_output=True, text=True, timeout=30).stdout
                print("\n".join([line for line in log.splitlines() if " 200 " not in line and "HTTP/1.1" in line][:10]))
            controller.close()
            store.close()
        finally:
            labmod.down(state)
    print(f"ratio gitorch/hand-written req/s per ABBA block: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"over all runs {mine['rps'] / hand['rps']:.3f}")
    print(f"ratio gitorch/hand-written req/s (median of {len(ratios)} blocks): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()

"""From a pod's readiness changing to every node's service rules reflecting it: p50, p99, max.

A 3-node lab, `gitorch serve` at its default 1 s interval, a Deployment of 3 pods (one per
node) behind a ClusterIP Service with a 1 s exec readiness probe. Each of 20 flips removes
or restores one pod's ready file. The clock starts when the pod's node recorded the change:
the mtime of its agent's status.json, as the agent's `watch` stream reports it (the
supervisor's own `writtenAt` has 1 s resolution). It stops when the last of the 3 nodes'
`ip gitorch` nftables tables lists the endpoint as it should: a poller on each node, woken
by `nft monitor`, stamps each change (one machine, one clock). The peer is gitorch itself
with the push turned off (GITORCH_NO_WATCH=1): a change then waits for the next 1 s pass.
Needs root (it builds a lab). Last line: p99 with the push, in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shared import free_port, git
from gitorch.nodes import lab as labmod
from gitorch.nodes.client import AgentFile

APPS = """\
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: bench}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {app: echo}}
              topologyKey: kubernetes.io/hostname
      containers:
        - name: echo
          command:
            - python3
            - -c
            - |
              import http.server, os
              name = os.environ['POD_NAME']
              open('/tmp/ready-' + name, 'w').close()
              class H(http.server.BaseHTTPRequestHandler):
                  def do_GET(self):
                      self.send_response(200); self.end_headers(); self.wfile.write(name.encode())
                  def log_message(self, *a): pass
              http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe:
            exec:
              command: [sh, -c, 'test -f /tmp/ready-$POD_NAME']
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bench}
spec:
  selector: {app: echo}
  ports: [{name: web, port: 80, targetPort: http}]
"""

# Runs on each node until its stdin closes: one JSON line {"t", "eps", "via"} whenever the
# set of addresses the service table DNATs to changes. `nft monitor` wakes it at each
# ruleset commit (one transaction per rebuild), stamped then; a listing made while the
# commit is still being announced may show the old table, so it is retried for 100 ms. A
# slow re-list every 0.5 s is the backstop.
POLLER = r"""
import json, os, re, select, subprocess, sys, time
def eps():
    out = subprocess.run(["nft", "list", "table", "ip", "gitorch"], capture_output=True, text=True).stdout
    return sorted(set(re.findall(r"dnat to ([0-9.]+):8080", out)))
mon = subprocess.Popen(["nft", "monitor", "ruleset"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
fd, stdin = mon.stdout.fileno(), sys.stdin.fileno()
last = eps()
print(json.dumps({"t": time.time(), "eps": last, "via": "start"}), flush=True)
while True:
    ready, _, _ = select.select([fd, stdin], [], [], 0.5)
    t, via = time.time(), "monitor" if fd in ready else "poll"
    if stdin in ready and not os.read(stdin, 4096):
        break
    if fd in ready:
        os.read(fd, 65536)
        while select.select([fd], [], [], 0.005)[0]:
            os.read(fd, 65536)
    now = eps()
    for _ in range(10 if via == "monitor" else 0):
        if now != last:
            break
        time.sleep(0.01)
        now = eps()
    if now != last:
        print(json.dumps({"t": t, "eps": now, "via": via}), flush=True)
        last = now
mon.kill()
"""


class Lines:
    """A command on a lab node (over OpenSSH) whose JSON output lines are kept as they come."""

    def __init__(self, lab: labmod.Lab, node: str, argv: list[str]) -> None:
        self.node = node
        self.proc = subprocess.Popen(
            labmod.ssh_command(lab, node, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def first(self, check: Callable[[dict[str, Any]], bool], since: int, timeout: float = 30.0) -> dict[str, Any]:
        """The first line from index `since` on that passes `check` (waiting for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[since:]:
                    if check(line):
                        return line
                since = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise SystemExit(f"{self.node}: no expected line within {timeout:g} s")
                self._cond.wait(left)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()




def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def ready_in(event: dict[str, Any], pod: str) -> bool | None:
    if event.get("event") != "status":
        return None
    return next((bool(p["ready"]) for p in event["pods"] if p["name"] == pod), None)


def measure(lab: labmod.Lab, repo: Path, state: Path, flips: int, push: bool, log: Path) -> tuple[list[float], int]:
    """Run `gitorch serve` and flip readiness `flips` times; the propagation times, and how
    many node stamps came from the 0.5 s backstop rather than `nft monitor`."""
    env = {**os.environ, "GITORCH_STATE_DIR": str(state)}
    env.pop("GITORCH_NO_WATCH", None)
    if not push:
        env["GITORCH_NO_WATCH"] = "1"
    nodes = [n.name for n in lab.nodes]
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitorch",
                "serve",
                "--repo",
                str(repo),
                "--branch",
                "main",
                "--listen",
                f"127.0.0.1:{free_port()}",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    watches: dict[str, Lines] = {}
    pollers: dict[str, Lines] = {}
    try:
        agent = AgentFile.load().path
        deadline = time.monotonic() + 120
        pods: dict[str, tuple[str, str]] = {}  # name -> (node, ip)
        while len(pods) < 3:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the Deployment never became Ready:\n{log.read_text()}")
            for n in nodes:
                if n not in watches:
                    probe = subprocess.run(labmod.ssh_command(lab, n, ["test", "-f", agent]), check=False)
                    if probe.returncode == 0:
                        watches[n] = Lines(lab, n, ["python3", agent, "watch"])
                        pollers[n] = Lines(lab, n, ["python3", "-c", POLLER])
            pods = {}
            for n, w in watches.items():
                latest = next((e for e in reversed(w.lines) if e.get("event") == "status"), None)
                for p in latest["pods"] if latest else []:
                    if p["ready"] and p["podIP"] and p["namespace"] == "bench":
                        pods[p["name"]] = (n, p["podIP"])
            time.sleep(0.2)
        ips = sorted(ip for _, ip in pods.values())
        for n in nodes:
            pollers[n].first(lambda line: line["eps"] == ips, 0, timeout=60)
        names = sorted(pods)
        times: list[float] = []
        backstop = 0
        for i in range(flips):
            pod = names[(i // 2) % len(names)]
            node, ip = pods[pod]
            ready = i % 2 == 1  # remove the ready file, then restore it
            time.sleep(random.uniform(0.5, 1.5))  # no phase lock with the pass timer
            marks = {n: pollers[n].mark() for n in nodes}
            since = watches[node].mark()
            verb = "touch" if ready else "rm -f"
            subprocess.run(labmod.ssh_command(lab, node, ["sh", "-c", f"{verb} /tmp/ready-{pod}"]), check=True)
            changed = watches[node].first(lambda e, pod=pod, ready=ready: ready_in(e, pod) is ready, since)
            stamps = [
                pollers[n].first(lambda line, ip=ip, ready=ready: (ip in line["eps"]) is ready, marks[n]) for n in nodes
            ]
            backstop += sum(s["via"] == "poll" for s in stamps)
            times.append(max(s["t"] for s in stamps) - float(changed["writtenAt"]))
        return times, backstop
    finally:
        for lines in (*watches.values(), *pollers.values()):
            lines.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def summary(label: str, times: list[float]) -> str:
    return (
        f"{label}: p50 {statistics.median(times):.2f} s, p99 {pct(times, 0.99):.2f} s, "
        f"max {max(times):.2f} s over {len(times)} flips"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flips", type=int, default=20)
    args = parser.parse_args()
    labmod.preflight()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lab = labmod.up(3, state_dir=root / "lab", subnet="10.231.62.0/24", nodes_file=root / "nodes.yaml")
        try:
            work = root / "repo"
            git("init", "-q", "-b", "main", str(work), cwd=root)
            (work / "nodes.yaml").write_text((root / "nodes.yaml").read_text())
            (work / "apps.yaml").write_text(APPS)
            git("add", "-A", cwd=work)
            git("commit", "-qm", "echo", cwd=work)
            pushed, backstop_on = measure(lab, work, root / "state", args.flips, True, root / "serve-push.log")
            polled, backstop_off = measure(lab, work, root / "state", args.flips, False, root / "serve-poll.log")
        finally:
            labmod.down(root / "lab")
    print(f"{args.flips} readiness flips (ready file removed, then restored), 3 lab nodes, serve at its 1 s interval")
    print("from the pod's node recording it (status.json mtime) to all 3 nodes' nftables tables reflecting it")
    if backstop_on or backstop_off:
        print(
            f"note: node stamps from the 0.5 s re-list, not nft monitor (late by up to 0.5 s): {backstop_off} "
            f"with the push off, {backstop_on} with it on, of {3 * args.flips} each"
        )
    print(summary("push off (GITORCH_NO_WATCH=1, the 1 s pass)", polled))
    print(summary("push on (agent watch wakes a pass)", pushed))
    print(f"p99 ratio, push off / push on: {pct(polled, 0.99) / pct(pushed, 0.99):.1f}x")
    print(f"endpoint propagation p99: {pct(pushed, 0.99):.2f} s")


if __name__ == "__main__":
    main()

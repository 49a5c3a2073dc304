"""NetworkPolicy's cost on the data path, and how fast a policy commit is enforced.

A 2-node lab: a server pod on one node, a client pod on the other. From inside the client's
network namespace: the TCP connection rate (connect, read one byte, close, one after another)
and the throughput of one TCP stream, first with no policy, then with 100 policies selecting
the server (each allowing an ipBlock on a port of its own, so the server's ingress chain holds
100 rules; one more allows the client). Rounds alternate between the two sets. Then, with
the controller's passes in a loop as `serve` runs them, the time from a commit (a policy that
isolates both pods) to its rules being in place on both nodes. Needs root (it builds a lab).
Last line: with 100 policies / with none, connection rate and throughput.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shared import git
from gitorch.nodes import lab as labmod
from gitorch.reconcile.controller import Controller
from gitorch.source.git import open_repository
from gitorch.store.database import Store

# The client closes first, with a reset (SO_LINGER 0): no TIME_WAIT piles up between rounds,
# which otherwise slows the later rounds' connects whatever the policies.
SERVER = ("import socket, threading\\n"
          "def rate():\\n"
          "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\\n"
          "    s.bind(('0.0.0.0', 5001)); s.listen(512)\\n"
          "    while True:\\n"
          "        c, _ = s.accept(); c.sendall(b'x')\\n"
          "        try: c.recv(1)\\n"
          "        except OSError: pass\\n"
          "        c.close()\\n"
          "def sink():\\n"
          "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\\n"
          "    s.bind(('0.0.0.0', 5002)); s.listen(8)\\n"
          "    while True:\\n"
          "        c, _ = s.accept()\\n"
          "        while c.recv(1 << 20): pass\\n"
          "        c.close()\\n"
          "threading.Thread(target=sink, daemon=True).start(); rate()\\n")

CLIENT = """\
import socket, struct, sys, time
ip, seconds = sys.argv[1], float(sys.argv[2])
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    c = socket.create_connection((ip, 5001), timeout=2); c.recv(1)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close(); n += 1
rate = n / seconds
s = socket.create_connection((ip, 5002), timeout=2); buf = bytes(1 << 18); sent = 0
start = time.monotonic(); end = start + seconds
while time.monotonic() < end:
    s.sendall(buf); sent += len(buf)
s.close()
print(rate, sent / (time.monotonic() - start))
"""


def pods(server_node: str, client_node: str) -> str:
    def pod(name: str, node: str, command: str) -> str:
        return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{app: {name}}}}}\n"
                f"spec:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers:\n"
                f"    - name: main\n      command: {command}\n---\n")
    return ("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n"
            + pod("srv", server_node, f'[python3, -c, "{SERVER}"]') + pod("cli", client_node, "[sleep, infinity]"))


def policies(count: int) -> str:
    out = []
    for i in range(count):
        out.append("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                   f"metadata: {{name: p{i}, namespace: bench}}\n"
                   "spec:\n  podSelector: {matchLabels: {app: srv}}\n  ingress:\n"
                   f"    - from: [{{ipBlock: {{cidr: 10.{100 + i // 250}.{i % 250}.0/24}}}}]\n"
                   f"      ports: [{{port: {6000 + i}}}]\n---\n")
    if count:
        out.append("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                   "metadata: {name: client, namespace: bench}\n"
                   "spec:\n  podSelector: {matchLabels: {app: srv}}\n  ingress:\n"
                   "    - from: [{podSelector: {matchLabels: {app: cli}}}]\n---\n")
    return "".join(out)


ISOLATE = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: isolate, namespace: bench}\n"
           "spec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n")


def ssh(lab: labmod.Lab, node: str, script: str, timeout: float = 60) -> str:
    proc = subprocess.run(labmod.ssh_command(lab, node, ["sh", "-c", script]), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--subnet", default="10.231.52.0/24")
    args = parser.parse_args()
    labmod.preflight()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "lab"
        lab = labmod.up(2, state_dir=state, subnet=args.subnet, nodes_file=state / "nodes.yaml")
        try:
            a, b = (n.name for n in lab.nodes)
            repo = Path(tmp) / "repo"
            repo.mkdir()
            (repo / "nodes.yaml").write_text((state / "nodes.yaml").read_text())
            (repo / "apps.yaml").write_text(pods(a, b))
            (repo / "policies.yaml").write_text("")
            git("init", "-q", "-b", "main", cwd=repo)

            def commit(message: str, text: str) -> None:
                (repo / "policies.yaml").write_text(text)
                git("add", "-A", cwd=repo)
                git("commit", "-q", "--allow-empty", "-m", message, cwd=repo)

            commit("server and client", "")
            store = Store.open(f"sqlite:///{tmp}/store.db")
            controller = Controller(open_repository(repo), store, Path(tmp) / "state")
            deadline = time.monotonic() + 120
            while True:
                controller.reconcile()
                rows = {p.name: p for p in store.pods(namespace="bench") if p.ip and p.phase == "Running"}
                if len(rows) == 2:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the pods never ran")
                time.sleep(0.2)
            server_ip = rows["srv"].ip
            probe = f"ip netns exec gitorch-bench_cli python3 -c '{CLIENT}' {server_ip} {args.seconds}"

            def measure() -> tuple[float, float]:
                for _ in range(100):
                    out = ssh(lab, b, probe).split()
                    if len(out) == 2:
                        return float(out[0]), float(out[1])
                    controller.reconcile()
                    time.sleep(0.2)
                raise SystemExit("the client never reached the server")

            def settle(text: str, what: str) -> None:
                commit(what, text)
                for _ in range(5):
                    controller.reconcile()

            results: dict[int, list[tuple[float, float]]] = {0: [], 100: []}
            for n in range(args.rounds):
                for count in (0, 100):
                    settle(policies(count), f"{count} policies")
                    rules = ssh(lab, a, "nft list table ip gitorch-policy 2>/dev/null | grep -c return")
                    results[count].append(measure())
                    rate, tput = results[count][-1]
                    print(f"round {n + 1}, {count:3} policies ({rules.strip() or 0} allow rules on the server's "
                          f"node): {rate:.0f} connections/s, {tput / 1e6:.0f} MB/s")

            # Commit -> enforced on both nodes, passes looping as `serve` runs them.
            stop = threading.Event()

            def passes() -> None:
                while not stop.is_set():
                    controller.reconcile()
                    stop.wait(0.05)

            loop = threading.Thread(target=passes, daemon=True)
            loop.start()
            delays = []
            try:
                for _ in range(args.rounds * 2):
                    commit("isolate", ISOLATE)
                    committed = time.monotonic()
                    while not ("bench/srv" in ssh(lab, a, "nft list table ip gitorch-policy 2>/dev/null")
                               and "bench/cli" in ssh(lab, b, "nft list table ip gitorch-policy 2>/dev/null")):
                        if time.monotonic() - committed > 60:
                            raise SystemExit("the policy was not enforced within 60 s")
                    delays.append(time.monotonic() - committed)
                    commit("open", "")
                    time.sleep(1.5)
            finally:
                stop.set()
                loop.join(timeout=30)
            controller.close()
            store.close()
        finally:
            labmod.down(state)
    rate0, rate100 = (statistics.median(r for r, _ in results[c]) for c in (0, 100))
    tput0, tput100 = (statistics.median(t for _, t in results[c]) for c in (0, 100))
    print(f"no policy:    {rate0:.0f} connections/s, {tput0 / 1e6:.0f} MB/s (median of {args.rounds})")
    print(f"100 policies: {rate100:.0f} connections/s, {tput100 / 1e6:.0f} MB/s (target: at most 10% lower)")
    print(f"commit -> enforced on both nodes: median {statistics.median(delays):.2f} s, "
          f"max {max(delays):.2f} s over {len(delays)} commits (passes looping; ssh polling included)")
    print(f"with 100 policies / without: connection rate {rate100 / rate0:.3f}, throughput {tput100 / tput0:.3f}")


if __name__ == "__main__":
    main()

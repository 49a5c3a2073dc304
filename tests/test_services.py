"""Services on real lab nodes (kube-proxy's job): cluster IPs and node ports DNAT-ed by each
node's nftables table to the ready pods, spread over them, following readiness."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitorch.desired import load
from gitorch.nodes.lab import Lab
from gitorch.reconcile.controller import Controller
from gitorch.reconcile.services import service_table
from gitorch.source import open_repository
from gitorch.store import ClusterIPAllocation, NodePortAllocation, PodRecord
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge, ssh_run

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: svc\n"
AGENT = 'f=$(ls -t /var/lib/gitorch/agent/agent-*.py | head -1); python3 "$f"'

SERVER = """\
import http.server, os
name = os.environ['POD_NAME']
open('/tmp/ready-' + name, 'w').close()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(name.encode())
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()
"""


def apps(replicas: int = 3) -> str:
    indented = "\n".join("              " + line for line in SERVER.splitlines())
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: svc
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: echo}}
  template:
    metadata:
      labels: {{app: echo}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {{matchLabels: {{app: echo}}}}
              topologyKey: kubernetes.io/hostname
      containers:
        - name: echo
          command:
            - python3
            - -c
            - |
{indented}
          ports:
            - {{name: http, containerPort: 8080}}
          readinessProbe:
            exec:
              command: [sh, -c, 'test -f /tmp/ready-$POD_NAME']
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: svc}}
spec:
  selector: {{app: echo}}
  ports: [{{name: web, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-np, namespace: svc}}
spec:
  type: NodePort
  selector: {{app: echo}}
  ports: [{{port: 8081, targetPort: 8080, nodePort: 30777}}]
"""


# ---- the pure table ---------------------------------------------------------------------


def test_service_table_lists_ready_endpoints_with_named_target_ports(repo: GitRepo) -> None:
    repo.commit("apps", {"ns.yaml": NAMESPACE, "apps.yaml": apps()})
    state = load(open_repository(repo.path), None)

    def pod(name: str, ip: str | None, ready: bool = True, phase: str = "Running") -> PodRecord:
        return PodRecord(
            namespace="svc",
            name=name,
            owner_kind="Deployment",
            owner_name="echo",
            node="n1",
            phase=phase,
            ready=ready,
            ip=ip,
        )

    pods = [
        pod("echo-a", "10.244.0.2"),
        pod("echo-b", "10.244.1.2"),
        pod("echo-c", "10.244.2.2", ready=False),  # not ready: out of rotation
        pod("echo-d", None),  # no IP yet
        pod("echo-e", "10.244.2.3", phase="Pending"),
    ]
    ips = [
        ClusterIPAllocation(ip="10.96.0.10", namespace="svc", service="web"),
        ClusterIPAllocation(ip="10.96.0.11", namespace="svc", service="web-np"),
    ]
    ports = [NodePortAllocation(port=30777, namespace="svc", service="web-np", port_name="")]
    table = service_table(state, pods, ips, ports)
    eps = [{"ip": "10.244.0.2", "port": 8080}, {"ip": "10.244.1.2", "port": 8080}]
    assert table == [
        {
            "name": "svc/web-np:8081",
            "protocol": "TCP",
            "clusterIP": "10.96.0.11",
            "port": 8081,
            "nodePort": 30777,
            "endpoints": eps,
        },
        {
            "name": "svc/web:web",
            "protocol": "TCP",
            "clusterIP": "10.96.0.10",
            "port": 80,
            "nodePort": None,
            "endpoints": eps,
        },
    ]
    # No cluster IP yet: not in the table (never a half-programmed service).
    assert [e["name"] for e in service_table(state, pods, ips[:1], [])] == ["svc/web:web"]


# ---- on the lab -------------------------------------------------------------------------


@pytest.fixture
def cluster(lab: Lab, repo: GitRepo, tmp_path: Path) -> Iterator[tuple[GitRepo, Controller]]:
    with controlled(lab, repo, tmp_path, "svc") as pair:
        yield pair


GET = (
    "import sys, urllib.request\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    try: print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())\n"
    "    except Exception as e: print('ERR', type(e).__name__)\n"
)


def get_many(lab: Lab, node: str, url: str, times: int, netns: str | None = None) -> list[str]:
    """GET url `times` times from a node, or from a pod's network namespace on it."""
    prefix = f"ip netns exec {netns} " if netns else ""
    out = ssh_run(lab, node, f"{prefix}python3 -c '{GET}' {url} {times}", check=False).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def until(what: str, check: Callable[[], bool], controller: Controller, timeout: float = 45.0) -> None:
    """Reconcile passes (as `serve` runs them) until check() holds."""
    deadline = time.monotonic() + timeout
    while True:
        controller.reconcile()
        if check():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.lab
def test_cluster_ip_and_node_port_spread_over_ready_pods(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    repo.commit("echo and services", {"apps.yaml": apps()})
    converge(controller)
    store = controller.store
    pods = {p.name: p for p in store.pods(namespace="svc") if p.owner_name == "echo"}
    assert len(pods) == 3 and len({p.node for p in pods.values()}) == 3
    vip = next(c.ip for c in store.cluster_ips() if (c.namespace, c.service) == ("svc", "web"))
    assert [n.port for n in store.node_ports() if n.service == "web-np"] == [30777]
    # The cluster IP gets into the table on the pass after it is allocated.
    controller.reconcile()

    client = next(iter(pods.values()))
    assert client.node is not None
    node = client.node
    answers: list[str] = []

    def spread() -> bool:
        answers[:] = get_many(lab, node, f"http://{vip}:80/", 30, netns=f"gitorch-{client.name}")
        return len(set(answers) & set(pods)) >= 2 and set(answers) <= set(pods)

    until("the cluster IP to answer from several pods", spread, controller)

    # NodePort on every node's address, from a node (not a pod).
    addresses = {n.name: n.address for n in store.nodes()}
    assert len(addresses) == 3
    for name, address in addresses.items():
        got = get_many(lab, node, f"http://{address}:30777/", 4)
        assert got and set(got) <= set(pods), f"node port on {name} ({address}): {got}"

    facts = json.loads(ssh_run(lab, node, f"{AGENT} facts").stdout)
    assert facts["services"] == "nftables"
    table = ssh_run(lab, node, "nft list table ip gitorch").stdout
    assert vip in table and "30777" in table
    # An unchanged table is not programmed again: a pass stays cheap.
    programmed = json.loads(ssh_run(lab, node, "cat /var/lib/gitorch/services.json").stdout)
    assert programmed["ok"]
    controller.reconcile()
    controller.reconcile()
    assert json.loads(ssh_run(lab, node, "cat /var/lib/gitorch/services.json").stdout) == programmed

    # One pod fails its readiness probe: it leaves the rotation after the next passes.
    out = next(p for p in pods.values() if p.name != client.name)
    assert out.node is not None
    ssh_run(lab, out.node, f"rm -f /tmp/ready-{out.name}")

    def left() -> bool:
        answers[:] = get_many(lab, node, f"http://{vip}:80/", 30, netns=f"gitorch-{client.name}")
        return bool(answers) and out.name not in answers and set(answers) <= set(pods)

    until(f"{out.name} to leave the rotation", left, controller)
    # ... and comes back once ready again.
    ssh_run(lab, out.node, f"touch /tmp/ready-{out.name}")

    def back() -> bool:
        answers[:] = get_many(lab, node, f"http://{vip}:80/", 30, netns=f"gitorch-{client.name}")
        return out.name in answers

    until(f"{out.name} to rejoin the rotation", back, controller)

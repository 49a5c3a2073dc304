"""Services on real lab nodes (kube-proxy's job): cluster IPs and node ports DNAT-ed by each
node's nftables table to the ready pods, spread over them, following readiness; agents push
readiness changes (the `watch` verb), so `gitorch serve` updates every node at once."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitorch.model.settings import Settings
from gitorch.nodes.lab import Lab
from gitorch.reconcile.controller import Controller
from gitorch.reconcile.services import service_table
from gitorch.source.desired import load
from gitorch.source.git import open_repository
from gitorch.store.database import PodRecord, Store
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge, ssh_run
from tests.waiting import wait_until

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: svc\n"
AGENT = 'f=$(ls -t /var/lib/gitorch/agent/agent-*.py | head -1); python3 "$f"'

SERVER = """\
import http.server, os
name = os.environ['POD_NAME']
ready = '/tmp/ready-' + name
if not os.path.exists(ready):  # a test may have made it, as root: the pod (not root) cannot open that
    open(ready, 'w').close()
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
    ips = {("svc", "web"): "10.96.0.10", ("svc", "web-np"): "10.96.0.11"}
    ports = {("svc", "web-np", ""): 30777}
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
    assert [e["name"] for e in service_table(state, pods, {("svc", "web"): "10.96.0.10"}, {})] == ["svc/web:web"]


HOST_PORT = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: edge, namespace: svc}}
spec:
  containers:
    - name: echo
      env: [{{name: POD_NAME, value: edge}}]
      command: [python3, -c, {SERVER!r}]
      ports: [{{containerPort: 8080, hostPort: 31080}}, {{containerPort: 5353, hostPort: 5353, protocol: UDP}}]
"""


def test_host_ports_are_entries_for_the_pods_node_only(repo: GitRepo) -> None:
    from gitorch.nodes.agent import nft_ruleset, parse_services

    repo.commit("edge", {"ns.yaml": NAMESPACE, "edge.yaml": HOST_PORT})
    state = load(open_repository(repo.path), None)
    assert state.ok, [d.format() for d in state.diagnostics]
    row = PodRecord(namespace="svc", name="edge", owner_kind="Pod", owner_name="edge", node="n2", phase="Running",
                    ready=False, ip="10.244.1.7")  # not ready: a hostPort forwards all the same (portmap)
    table = service_table(state, [row], {}, {})
    assert [(e["name"], e["hostPort"], e["protocol"], e["endpoints"]) for e in table] == [
        ("svc/edge:hostPort/31080/TCP", 31080, "TCP", [{"ip": "10.244.1.7", "port": 8080}]),
        ("svc/edge:hostPort/5353/UDP", 5353, "UDP", [{"ip": "10.244.1.7", "port": 5353}]),
    ]
    assert service_table(state, [row.model_copy(update={"ip": None})], {}, {}) == []  # no address: nothing to forward
    assert service_table(state, [row.model_copy(update={"phase": "Succeeded"})], {}, {}) == []
    parsed = parse_services(table)
    on_n2 = nft_ruleset(parsed, "10.244.1.0/24")
    assert "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto tcp th dport 31080 goto hp0" in on_n2
    assert "dnat to 10.244.1.7:8080" in on_n2 and "meta l4proto udp th dport 5353" in on_n2
    on_n1 = nft_ruleset(parsed, "10.244.0.0/24")  # another node's pod: that node forwards, not this one
    assert "31080" not in on_n1 and "10.244.1.7" not in on_n1


# ---- the agent's watch stream (no nodes needed) -----------------------------------------

AGENT_FILE = Path(__file__).resolve().parents[1] / "gitorch" / "nodes" / "agent.py"


def test_watch_streams_only_changes_that_matter_to_endpoints(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    status = root / "status.json"

    def write(ready: bool, message: str, ip: str = "10.244.0.2") -> None:
        pod = {
            "name": "echo-a",
            "namespace": "svc",
            "phase": "Running",
            "ready": ready,
            "podIP": ip,
            "terminating": False,
            "message": message,
            "restarts": 0,
        }
        (root / "tmp").write_text(json.dumps({"pods": [pod]}))
        os.replace(root / "tmp", status)  # as the supervisor writes it

    write(True, "")
    proc = subprocess.Popen(
        [sys.executable, str(AGENT_FILE), "watch", "--root", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        first = json.loads(proc.stdout.readline())
        assert first["ok"] and first["event"] == "status"
        assert [(p["name"], p["ready"]) for p in first["pods"]] == [("echo-a", True)]
        write(True, "a message endpoints do not care about")
        time.sleep(0.3)
        write(False, "Readiness probe failed")
        changed = json.loads(proc.stdout.readline())  # the message-only rewrite sent nothing
        assert changed["event"] == "status" and changed["digest"] != first["digest"]
        assert [(p["name"], p["ready"]) for p in changed["pods"]] == [("echo-a", False)]
        assert changed["writtenAt"] == pytest.approx(status.stat().st_mtime, abs=0.01)
        status.unlink()
        gone = json.loads(proc.stdout.readline())
        assert gone["pods"] == []
        proc.stdin.close()  # the SSH channel went away
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    served = subprocess.run(
        [sys.executable, str(AGENT_FILE), "serve", "--root", str(root)],
        input='{"verb": "watch"}\n',
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(served.stdout) == {"ok": False, "error": "serve: unknown verb 'watch'"}


@pytest.mark.parametrize("content", ['{"pods": 5}', '{"pods": true}', '{"pods": [1, null]}', "null", '{"po'],
                         ids=["pods-a-number", "pods-a-bool", "pods-not-objects", "null", "half-written"])
def test_watch_reads_a_corrupt_status_as_no_pods_and_ends_quietly(tmp_path: Path, content: str) -> None:
    """A status.json edited by hand or cut short is no pods (the stream goes on), and the
    agent exits cleanly when its reader goes away while stdin is still open."""
    (tmp_path / "status.json").write_text(content)
    proc = subprocess.Popen([sys.executable, str(AGENT_FILE), "watch", "--root", str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = json.loads(proc.stdout.readline())
        assert first["ok"] and first["event"] == "status" and first["pods"] == [], first
        proc.stdout.close()  # the controller's end went away first; stdin stays open
        (tmp_path / "new").write_text('{"pods": [{"name": "a", "namespace": "b"}]}')
        os.replace(tmp_path / "new", tmp_path / "status.json")
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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

    def one_pass() -> bool:
        controller.reconcile()
        return check()

    wait_until(what, one_pass, timeout=timeout, interval=0.5)


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
        answers[:] = get_many(
            lab, node, f"http://{vip}:80/", 30, netns=f"gitorch-{client.namespace}_{client.name}"
        )
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
        answers[:] = get_many(
            lab, node, f"http://{vip}:80/", 30, netns=f"gitorch-{client.namespace}_{client.name}"
        )
        return bool(answers) and out.name not in answers and set(answers) <= set(pods)

    until(f"{out.name} to leave the rotation", left, controller)
    # ... and comes back once ready again.
    ssh_run(lab, out.node, f"touch /tmp/ready-{out.name}")

    def back() -> bool:
        answers[:] = get_many(
            lab, node, f"http://{vip}:80/", 30, netns=f"gitorch-{client.namespace}_{client.name}"
        )
        return out.name in answers

    until(f"{out.name} to rejoin the rotation", back, controller)


@pytest.mark.lab
def test_a_host_port_reaches_the_pod_at_its_nodes_address(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """hostPort as the CNI portmap plugin: GET node_ip:hostPort answers from the pod, and
    only on the pod's node."""
    repo, controller = cluster
    repo.commit("edge", {"edge.yaml": HOST_PORT})
    converge(controller)
    controller.reconcile()  # the pod's address reaches the table on the pass after it reports one
    (edge,) = [p for p in controller.store.pods(namespace="svc") if p.name == "edge"]
    addresses = {n.name: n.address for n in controller.store.nodes()}
    other = next(n for n in addresses if n != edge.node)
    answers: list[str] = []

    def answered() -> bool:
        answers[:] = get_many(lab, other, f"http://{addresses[edge.node]}:31080/", 3)
        return answers == ["edge"] * 3

    until("the pod to answer at its node's address and hostPort", answered, controller)
    third = next(n for n in addresses if n not in (edge.node, other))
    elsewhere = get_many(lab, other, f"http://{addresses[third]}:31080/", 2)
    assert "edge" not in elsewhere, elsewhere  # another node's address at that port is not the pod's
    table = ssh_run(lab, edge.node, "nft list table ip gitorch").stdout
    assert "31080" in table and edge.ip is not None and f"{edge.ip}:8080" in table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def endpoints_on(lab: Lab, node: str) -> set[str]:
    """The pod addresses a node's service table DNATs to."""
    table = ssh_run(lab, node, "nft list table ip gitorch", check=False).stdout
    return set(re.findall(r"dnat to ([0-9.]+):8080", table))


@pytest.mark.lab
def test_readiness_changes_reach_every_node_when_the_agent_pushes_them(
    lab: Lab, cluster: tuple[GitRepo, Controller], tmp_path: Path
) -> None:
    repo, _ = cluster
    repo.commit("echo and services", {"apps.yaml": apps()})
    log = tmp_path / "serve.log"
    # An hour between timer passes: after the first rollout, only a push explains a pass.
    with log.open("w") as out:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitorch",
                "serve",
                "--repo",
                str(repo.path),
                "--branch",
                "main",
                "--interval",
                "3600",
                "--listen",
                f"127.0.0.1:{free_port()}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    store = Store.open(Settings.from_env().database_url)
    try:
        nodes = [n.name for n in lab.nodes]

        def wait(what: str, check: Callable[[], bool], timeout: float) -> None:
            def serving_and() -> bool:
                held = check()
                assert held or serve.poll() is None, log.read_text()
                return held

            wait_until(what, serving_and, timeout=timeout, interval=0.2, describe=log.read_text)

        pods: dict[str, PodRecord] = {}

        def rolled_out() -> bool:
            pods.update({p.name: p for p in store.pods(namespace="svc") if p.owner_name == "echo" and p.ip})
            ips = {p.ip for p in pods.values() if p.ready}
            return len(ips) == 3 and all(endpoints_on(lab, n) == ips for n in nodes)

        wait("the Deployment behind every node's table", rolled_out, 90)
        out_pod = next(iter(pods.values()))
        assert out_pod.node is not None and out_pod.ip is not None
        woken = log.read_text().count(f"woken by pod status on {out_pod.node}")

        # One pod fails its readiness probe: its node pushes the change, a pass runs at
        # once and every node drops the endpoint, an hour before the next timer pass.
        ip = out_pod.ip
        ssh_run(lab, out_pod.node, f"rm -f /tmp/ready-{out_pod.name}")
        wait(f"{out_pod.name} to leave every table", lambda: all(ip not in endpoints_on(lab, n) for n in nodes), 15)
        assert log.read_text().count(f"woken by pod status on {out_pod.node}") > woken
        # ... and comes back the same way once ready again.
        ssh_run(lab, out_pod.node, f"touch /tmp/ready-{out_pod.name}")
        wait(f"{out_pod.name} to rejoin every table", lambda: all(ip in endpoints_on(lab, n) for n in nodes), 15)
    finally:
        store.close()
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()


@pytest.mark.lab
def test_client_ip_session_affinity_keeps_a_client_on_one_pod(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """sessionAffinity: ClientIP (issue 10: accepted and ignored until now): every connection of
    one client address goes to the pod that served it first, as kube-proxy's nftables mode does."""
    repo, controller = cluster
    sticky = apps().replace("  selector: {app: echo}\n  ports: [{name: web, port: 80, targetPort: http}]",
                            "  selector: {app: echo}\n  sessionAffinity: ClientIP\n"
                            "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n"
                            "  ports: [{name: web, port: 80, targetPort: http}]")
    assert "sessionAffinity: ClientIP" in sticky
    repo.commit("sticky web", {"apps.yaml": sticky})
    converge(controller)
    store = controller.store
    pods = {p.name: p for p in store.pods(namespace="svc") if p.owner_name == "echo"}
    vip = next(c.ip for c in store.cluster_ips() if (c.namespace, c.service) == ("svc", "web"))
    node = next(iter(pods.values())).node
    assert node is not None
    answers: list[str] = []

    def all_ready() -> bool:
        answers[:] = get_many(lab, node, f"http://{vip}:80/", 20)
        return len(answers) == 20

    until("the cluster IP to answer", all_ready, controller)
    assert len(set(answers)) == 1 and set(answers) <= set(pods), answers  # one client, one pod
    # The table keeps its clients out of the listing: a pass does not take them for a hand edit.
    programmed = json.loads(ssh_run(lab, node, "cat /var/lib/gitorch/services.json").stdout)
    controller.reconcile(full=True)
    assert json.loads(ssh_run(lab, node, "cat /var/lib/gitorch/services.json").stdout)["at"] == programmed["at"]
    assert "timeout 10m" in ssh_run(lab, node, "nft list table ip gitorch").stdout  # 600 s, as nft prints it

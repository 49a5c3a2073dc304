"""Pod networking on real lab nodes: own IPs from each node's pod CIDR, pod-to-pod traffic
across nodes without NAT, surviving a supervisor restart, torn down with the pod."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab
from gitorch.reconcile.controller import Controller
from gitorch.reconcile.networking import network_blocks
from gitorch.store.database import PodRecord
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge, ssh_run
from tests.waiting import wait_until

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: net\n"
AGENT = 'f=$(ls -t /var/lib/gitorch/agent/agent-*.py | head -1); python3 "$f"'

SERVER = """\
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(self.client_address[0].encode())
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()
"""


def echo(replicas: int = 2) -> str:
    indented = "\n".join("              " + line for line in SERVER.splitlines())
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: net
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
            - {{containerPort: 8080}}
          readinessProbe:
            httpGet: {{path: /, port: 8080}}
            periodSeconds: 1
"""


def test_network_blocks_route_to_every_other_node() -> None:
    blocks = network_blocks(
        {"a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": "10.244.2.0/24"},
        {"a": "10.0.0.1", "b": "10.0.0.2", "c": "node-c.example"},
    )
    assert blocks["a"] == {
        "podCIDR": "10.244.0.0/24",
        "gateway": "10.244.0.1",
        "routes": [{"cidr": "10.244.1.0/24", "via": "10.0.0.2"}],  # c has no IP literal
    }
    assert [r["cidr"] for r in blocks["c"]["routes"]] == ["10.244.0.0/24", "10.244.1.0/24"]


@pytest.fixture
def cluster(lab: Lab, repo: GitRepo, tmp_path: Path) -> Iterator[tuple[GitRepo, Controller]]:
    with controlled(lab, repo, tmp_path, "net") as pair:
        yield pair


def netns(pod: PodRecord) -> str:
    """The pod's network namespace on its node (the agent's key: namespace_name)."""
    return f"gitorch-{pod.namespace}_{pod.name}"


def fetch(lab: Lab, pod: PodRecord, url: str) -> str:
    """GET url from inside the pod's network namespace, on the pod's node."""
    assert pod.node is not None
    code = f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).read().decode())"
    return ssh_run(lab, pod.node, f'ip netns exec {netns(pod)} python3 -c "{code}"').stdout.strip()


def netns_list(lab: Lab, node: str) -> str:
    return ssh_run(lab, node, "ip netns list; ip -o link show master gitorch0", check=False).stdout


@pytest.mark.lab
def test_pods_on_two_nodes_talk_by_pod_ip_without_nat(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    repo.commit("echo", {"apps.yaml": echo()})
    converge(controller)
    store = controller.store
    pods = [p for p in store.pods(namespace="net") if p.owner_name == "echo"]
    assert len(pods) == 2 and len({p.node for p in pods}) == 2
    cidrs = {n.name: n.pod_cidr for n in store.nodes()}
    for p in pods:
        assert p.ip is not None and p.node is not None and cidrs[p.node]
        assert ipaddress.ip_address(p.ip) in ipaddress.ip_network(str(cidrs[p.node]))
        assert ipaddress.ip_network(str(cidrs[p.node])).subnet_of(ipaddress.ip_network("10.244.0.0/16"))
    a, b = pods
    assert a.ip != b.ip
    # Both serve on 8080 (possible only with own IPs); the server sees the client pod's IP.
    assert fetch(lab, a, f"http://{b.ip}:8080/") == a.ip
    assert fetch(lab, b, f"http://{a.ip}:8080/") == b.ip
    assert a.node is not None
    facts = json.loads(ssh_run(lab, a.node, f"{AGENT} facts").stdout)
    assert facts["podNetwork"] == "bridge"
    # MACs follow IPs (0a:58 + the address): a pod re-created with its IP keeps its MAC, and
    # the gateway's stays put as pods come and go, so no neighbour entry goes stale.
    for p in pods:
        assert p.node is not None and p.ip is not None
        mac = ssh_run(lab, p.node, f"ip netns exec {netns(p)} cat /sys/class/net/eth0/address").stdout
        assert mac.strip() == "0a:58:" + ":".join(f"{int(x):02x}" for x in p.ip.split("."))
        gateway = str(next(ipaddress.ip_network(str(cidrs[p.node])).hosts()))
        bridge = ssh_run(lab, p.node, "cat /sys/class/net/gitorch0/address").stdout
        assert bridge.strip() == "0a:58:" + ":".join(f"{int(x):02x}" for x in gateway.split("."))

    # The supervisor goes away and comes back with the next sync: pods adopted, not restarted,
    # their namespaces and addresses kept.
    for p in pods:
        assert p.node is not None
        ssh_run(lab, p.node, f"{AGENT} stop-supervisor")
    converge(controller)
    again = {p.name: p for p in store.pods(namespace="net") if p.owner_name == "echo"}
    assert {n: p.ip for n, p in again.items()} == {p.name: p.ip for p in pods}
    assert all(p.restarts == 0 for p in again.values())
    assert fetch(lab, a, f"http://{b.ip}:8080/") == a.ip

    # A removed pod's namespace and veth go with it.
    repo.commit("scale to 1", {"apps.yaml": echo(replicas=1)})
    converge(controller)
    left = [p for p in store.pods(namespace="net") if p.owner_name == "echo"]
    assert len(left) == 1
    gone = next(p for p in pods if p.name != left[0].name)
    assert gone.node is not None
    wait_until(f"{gone.name}'s netns to go", lambda: netns_list(lab, gone.node or ""), timeout=30, interval=0.3,
               accept=lambda listed: netns(gone) not in listed)
    assert "master gitorch0" not in netns_list(lab, gone.node)
    assert left[0].ip == next(p.ip for p in pods if p.name == left[0].name)


SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: net}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: net}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: net}
spec:
  serviceName: db
  replicas: 2
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
        - name: db
          command: [python3, -m, http.server, "8080"]
          readinessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 1
"""


@pytest.mark.lab
def test_dns_answers_from_the_store(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    import dns.message
    import dns.query
    import dns.rdatatype

    from gitorch.dns.records import zone_data
    from gitorch.dns.server import DNSServer, DNSSettings
    from gitorch.source.desired import load

    repo, controller = cluster
    repo.commit("echo, db and services", {"apps.yaml": echo() + "---\n" + SERVICES})
    converge(controller)
    store = controller.store
    state = load(controller.repo, None)
    data = zone_data(state, store.pods(), store.cluster_ips())
    web_ip = next(c.ip for c in store.cluster_ips() if (c.namespace, c.service) == ("net", "web"))
    db = {p.name: p.ip for p in store.pods(namespace="net") if p.owner_name == "db"}
    assert len(db) == 2 and all(db.values())

    with DNSServer(data, DNSSettings(host="127.0.0.1", port=0)) as srv:

        def ask(name: str, rtype: str = "A") -> set[str]:
            reply = dns.query.udp(dns.message.make_query(name, rtype), "127.0.0.1", port=srv.port, timeout=2)
            wanted = dns.rdatatype.from_text(rtype)
            return {r.to_text() for rrset in reply.answer if rrset.rdtype == wanted for r in rrset}

        assert ask("web.net.svc.cluster.local") == {web_ip}
        assert ask("db.net.svc.cluster.local") == set(db.values())
        assert ask("db-0.db.net.svc.cluster.local") == {db["db-0"]}

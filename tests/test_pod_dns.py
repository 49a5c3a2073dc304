"""Pods resolve Services by short name through the cluster DNS (their own resolv.conf names
it, with the namespace search list and ndots:5), and reach it on the controller host
through the node's egress masquerade; dnsPolicy Default keeps the node's resolv.conf."""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.dns.cluster import ClusterDNS, settings_for
from gitorch.nodes.agent import ClusterDNSSpec, PodSpec, nft_ruleset, resolv_conf
from gitorch.nodes.lab import Lab
from gitorch.reconcile.controller import Controller, ControllerSettings
from gitorch.source.desired import load
from gitorch.source.git import open_repository
from gitorch.store.database import PodRecord, Store
from tests.gitrepo import GitRepo
from tests.lab import ssh_run
from tests.waiting import wait_until

AGENT = 'f=$(ls -t /var/lib/gitorch/agent/agent-*.py | head -1); python3 "$f"'
NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"

SERVER = """\
import http.server, os
name = os.environ['POD_NAME']
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(name.encode())
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()
"""

# Through the system resolver (getaddrinfo reads /etc/resolv.conf), by short name.
CLIENT = """\
import socket, time, urllib.request
print('RESOLV', open('/etc/resolv.conf').read().replace(chr(10), ' | '), flush=True)
while True:
    try:
        ip = socket.gethostbyname('web')
        body = urllib.request.urlopen('http://web/', timeout=3).read().decode()
        print('OK', ip, body, flush=True)
    except Exception as e:
        print('ERR', type(e).__name__, e, flush=True)
    time.sleep(1)
"""

PLAIN = "print('RESOLV', open('/etc/resolv.conf').read().replace(chr(10), ' | '), flush=True)\n" \
    "import time\nwhile True: time.sleep(60)\n"


def _indent(text: str) -> str:
    return "\n".join("              " + line for line in text.splitlines())


def _deployment(name: str, script: str, replicas: int = 1, extra: str = "") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: shop}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:{extra}
      containers:
        - name: main
          command:
            - python3
            - -c
            - |
{_indent(script)}
"""


def apps() -> str:
    web = _deployment("web", SERVER, replicas=2).rstrip("\n") + """
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 1
"""
    service = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"""
    return "---\n".join([web, service, _deployment("client", CLIENT),
                         _deployment("plain", PLAIN, extra="\n      dnsPolicy: Default")])


# ---- pure --------------------------------------------------------------------------------


def _spec(**extra: object) -> PodSpec:
    return PodSpec.parse({"name": "p", "namespace": "shop", "containers": [{"name": "c", "command": ["true"]}],
                          **extra})


def test_resolv_conf_follows_dns_policy() -> None:
    dns = ClusterDNSSpec.parse({"nameservers": ["10.0.0.1"], "domain": "cluster.local", "options": ["ndots:5"]})
    assert resolv_conf(_spec(), True, dns) == (
        "# written by the gitorch node agent for this pod\nnameserver 10.0.0.1\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )
    assert resolv_conf(_spec(), True, None) is None  # no cluster DNS known: the node's
    assert resolv_conf(_spec(), False, dns) is None  # host network, ClusterFirst
    assert resolv_conf(_spec(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), False, dns) is not None
    assert resolv_conf(_spec(dnsPolicy="Default"), True, dns) is None
    own = _spec(dnsPolicy="None", dnsConfig={"nameservers": ["9.9.9.9"], "searches": ["a.example"],
                                              "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]})
    assert resolv_conf(own, True, dns) == (
        "# written by the gitorch node agent for this pod\nnameserver 9.9.9.9\nsearch a.example\n"
        "options ndots:2 edns0\n"
    )
    merged = _spec(dnsConfig={"options": [{"name": "ndots", "value": "1"}]})
    assert "options ndots:1\n" in (resolv_conf(merged, True, dns) or "")


def test_egress_masquerade_leaves_cluster_traffic_alone() -> None:
    text = nft_ruleset([], "10.244.1.0/24", ["10.244.0.0/16", "10.244.1.0/24"])
    assert 'ip saddr 10.244.1.0/24 ip daddr != { 10.244.0.0/16 } oifname != "gitorch0" masquerade' in text
    assert "oifname !=" not in nft_ruleset([], "10.244.1.0/24")


# ---- on the lab --------------------------------------------------------------------------


def _host(lab: Lab) -> str:
    """The lab bridge's address on this machine: the nodes reach it, pods through the node."""
    return str(next(ipaddress.ip_network(lab.subnet).hosts()))


@pytest.fixture
def cluster(lab: Lab, repo: GitRepo, tmp_path: Path) -> Iterator[tuple[GitRepo, Controller, ClusterDNS]]:
    repo.write({"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE})
    repo.commit("nodes")
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    listen = f"{_host(lab)}:53"
    controller = Controller(open_repository(repo.path), store, tmp_path / "state",
                            ControllerSettings(cluster_dns=listen))
    dns = ClusterDNS(settings_for(load(open_repository(repo.path), None), listen)).start()
    yield repo, controller, dns
    dns.stop()
    repo.commit("empty", {"apps.yaml": ""})
    for _ in range(20):
        if controller.reconcile().converged and not store.pods():
            break
    controller.close()
    store.close()


def _pass(controller: Controller, dns: ClusterDNS) -> None:
    result = controller.reconcile()
    if result.state is not None:
        dns.refresh(result.state, controller.store)


def _logs_script(pod: PodRecord) -> str:
    request = shlex.quote(json.dumps({"pod": pod.name}))
    return f"echo {request} > /tmp/logs-req.json; {AGENT} logs < /tmp/logs-req.json"


def _log(lab: Lab, pod: PodRecord) -> str:
    assert pod.node is not None
    out = ssh_run(lab, pod.node, _logs_script(pod), check=False).stdout
    try:
        return str(json.loads(out).get("log") or "")
    except ValueError:
        return ""


def _raw(lab: Lab, pod: PodRecord) -> str:
    """The pod's log, its node's status and supervisor log: for a failure message."""
    assert pod.node is not None
    script = f"{_logs_script(pod)}; {AGENT} status; tail -5 /var/lib/gitorch/supervisor.log"
    proc = ssh_run(lab, pod.node, script, check=False)
    return (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.lab
def test_pod_resolves_a_service_by_short_name(lab: Lab, cluster: tuple[GitRepo, Controller, ClusterDNS]) -> None:
    repo, controller, dns = cluster
    repo.commit("web, service, client", {"apps.yaml": apps()})
    store = controller.store
    seen: dict[str, Any] = {}

    def reached() -> str:
        """The client's log once it shows an answer from a web pod through the cluster IP."""
        _pass(controller, dns)
        pods = {p.name: p for p in store.pods(namespace="shop")}
        web = {n for n, p in pods.items() if p.owner_name == "web"}
        vip = next((c.ip for c in store.cluster_ips() if (c.namespace, c.service) == ("shop", "web")), None)
        client = next((p for p in pods.values() if p.owner_name == "client" and p.node), None)
        log = _log(lab, client) if client is not None and vip is not None else ""
        seen.update(pods=pods, vip=vip, client=client, log=log)
        answers = [line.split() for line in log.splitlines() if line.startswith("OK ")]
        return log if any(len(a) == 3 and a[1] == vip and a[2] in web for a in answers) else ""

    def state() -> str:
        pods, client = seen["pods"], seen["client"]
        return (f"pods: {[(p.name, p.node, p.phase, p.ip) for p in pods.values()]}, vip={seen['vip']}, "
                f"log tail: {seen['log'][-2000:]}, agent: {_raw(lab, client) if client else ''}")

    log = wait_until("the client to reach web via DNS", reached, timeout=120, interval=1,
                     show=lambda _: "no answer from web", describe=state)

    assert "nameserver " + _host(lab) in log and "search shop.svc.cluster.local svc.cluster.local" in log
    assert "ndots:5" in log
    # dnsPolicy Default: the node's own resolv.conf, untouched on the node itself.
    plain = next(p for p in store.pods(namespace="shop") if p.owner_name == "plain")
    assert plain.node is not None
    node_resolv = ssh_run(lab, plain.node, "cat /etc/resolv.conf", check=False).stdout
    assert "gitorch node agent" not in node_resolv

    def plain_log() -> str:
        return _log(lab, plain)

    got = wait_until("the plain pod's output", plain_log, timeout=30, interval=0.5, accept=lambda out: "RESOLV" in out)
    assert "gitorch node agent" not in got
    assert "RESOLV " + node_resolv.replace("\n", " | ") in got

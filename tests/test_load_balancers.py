"""LoadBalancer Services (issue 11): addresses from the Cluster's pools, planned purely and kept
stable; one announcing node per address, elected as MetalLB's layer-2 speakers do; and the
validation that says why a Service would never get one."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.nodes.lab import Lab
from gitorch.reconcile.allocations import EXCLUDE_LABEL, allocate, announcers, unhealthy_announcers
from gitorch.reconcile.controller import ControllerSettings
from gitorch.reconcile.planning import Observed
from gitorch.reconcile.reviewing import Holdings, cluster_preview, observed_hash, preview_text
from gitorch.source import desired
from gitorch.source.diffs import ChangeSet
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge, ssh_run
from tests.test_services import apps
from tests.waiting import wait_until

POOLS = """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: lab}
spec:
  loadBalancer:
    pools:
      - {name: public, addresses: [10.231.0.200-10.231.0.201], nodeSelector: {edge: "true"}}
      - {name: spare, addresses: [10.231.0.208/30]}
"""


def lb(name: str, extra: str = "", annotations: str = "") -> str:
    meta = f", annotations: {{{annotations}}}" if annotations else ""
    return f"""\
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default{meta}}}
spec:
  type: LoadBalancer
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80}}]
{extra}"""


def load(repo: GitRepo, files: dict[str, str]) -> tuple[desired.DesiredState, list[str]]:
    repo.commit("case", files)
    state = desired.load(open_repository(repo.path), None)
    return state, [d.format() for d in state.diagnostics if d.severity is Severity.ERROR]


def test_addresses_come_from_the_pools_in_order_stay_put_and_are_released(repo: GitRepo) -> None:
    state, errors = load(repo, {"c.yaml": POOLS, "s.yaml": lb("a") + lb("b") + lb("c")})
    assert not errors, errors
    first = allocate(state, {}, {}, {})
    assert first.lb_ips == {("default", "a"): "10.231.0.200", ("default", "b"): "10.231.0.201",
                            ("default", "c"): "10.231.0.209"}  # the second pool without its network address
    assert {k[1] for k in first.node_ports} == {"a", "b", "c"}  # a node port under each, as Kubernetes does
    assert all(ip for ip in first.cluster_ips.values())
    # a goes away: b and c keep theirs; a new Service takes the freed address.
    state, _ = load(repo, {"s.yaml": lb("b") + lb("c") + lb("d")})
    second = allocate(state, {}, {}, {}, first.lb_ips)
    assert second.lb_ips == {("default", "b"): "10.231.0.201", ("default", "c"): "10.231.0.209",
                             ("default", "d"): "10.231.0.200"}


def test_a_requested_address_and_a_named_pool(repo: GitRepo) -> None:
    files = {"c.yaml": POOLS,
             "s.yaml": lb("a", "  loadBalancerIP: 10.231.0.201\n")
             + lb("b", annotations="metallb.universe.tf/address-pool: spare")}
    state, errors = load(repo, files)
    assert not errors, errors
    got = allocate(state, {}, {}, {})
    assert got.lb_ips == {("default", "a"): "10.231.0.201", ("default", "b"): "10.231.0.209"}


def test_validation_says_why_a_service_would_never_get_an_address(repo: GitRepo) -> None:
    _, errors = load(repo, {"s.yaml": lb("a")})
    assert errors == ["s.yaml:6:9: /spec/type: no LoadBalancer address pool: this Service would never get an address "
                      "(hint: add spec.loadBalancer.pools to the Cluster, e.g. [{name: default, addresses: "
                      "[10.0.0.200-10.0.0.220]}])"]
    _, errors = load(repo, {"c.yaml": POOLS, "s.yaml": lb("a", "  loadBalancerIP: 10.9.9.9\n")
                            + lb("b", "  loadBalancerIP: 10.231.0.200\n") + lb("c", "  loadBalancerIP: 10.231.0.200\n")
                            + lb("d", annotations="gitorch.dev/address-pool: pubilc")})
    assert any("/spec/loadBalancerIP: 10.9.9.9 is in no address pool" in e for e in errors), errors
    assert any("10.231.0.200 is also asked for by Service default/b (hint: see s.yaml:" in e for e in errors), errors
    assert any("address pool 'pubilc' does not exist (hint: did you mean 'public'?)" in e for e in errors), errors


def test_the_reviewed_plan_shows_and_holds_the_address(repo: GitRepo) -> None:
    state, errors = load(repo, {"c.yaml": POOLS, "s.yaml": lb("a") + lb("b")})
    assert not errors, errors
    held = Holdings(lb_ips={("default", "b"): "10.231.0.201"})
    preview = cluster_preview(state, Observed(now=0.0), ChangeSet(()), held)
    assert preview.to_json()["loadBalancerIPs"] == {"default/a": "10.231.0.200", "default/b": "10.231.0.201"}
    text = preview_text(preview)
    assert "+ LoadBalancer address 10.231.0.200 for Service default/a" in text
    assert "10.231.0.201" not in text  # b already holds it: nothing new to review
    # The address a Service holds is part of what a reviewed plan was made against.
    assert observed_hash(Observed(now=0.0), held) != observed_hash(Observed(now=0.0), Holdings())


def test_one_node_announces_each_address_and_keeps_it_while_it_can(repo: GitRepo) -> None:
    state, _ = load(repo, {"c.yaml": POOLS, "s.yaml": lb("a") + lb("b", "  externalTrafficPolicy: Local\n")
                           + lb("c")})
    ips = allocate(state, {}, {}, {}).lb_ips
    a, b, c = ips[("default", "a")], ips[("default", "b")], ips[("default", "c")]
    nodes = {"n1": {"edge": "true"}, "n2": {"edge": "true"}, "n3": {}}
    local = {("default", "b"): {"n2"}}
    first = announcers(state, ips, nodes, {}, local)
    assert first[a] in ("n1", "n2")  # the public pool: edge nodes only
    assert first[b] == "n2"  # Local: only a node with a ready pod of it
    assert first[c] in ("n1", "n2", "n3")
    assert announcers(state, ips, nodes, first, local) == first  # stable
    # The announcer of a is lost: another edge node takes it; the others stay.
    gone = {n: labels for n, labels in nodes.items() if n != first[a]}
    moved = announcers(state, ips, gone, first, local)
    assert moved[a] not in (None, first[a]) and (moved[c] == first[c] or first[c] == first[a])
    # No edge node left: the address is announced by none (and shown pending).
    assert announcers(state, ips, {"n3": {}}, first, local)[a] is None


def test_a_node_that_reports_itself_unfit_or_is_excluded_is_passed_over(repo: GitRepo) -> None:
    state, _ = load(repo, {"c.yaml": POOLS, "s.yaml": lb("a") + lb("c", annotations="gitorch.dev/address-pool: spare")})
    ips = allocate(state, {}, {}, {}).lb_ips
    a, c = ips[("default", "a")], ips[("default", "c")]
    nodes = {"n1": {"edge": "true"}, "n2": {"edge": "true"}}
    first = announcers(state, ips, nodes, {}, {})
    held, other = first[a], ({"n1", "n2"} - {first[a]}).pop()
    # Its agent says it could not take the address: the next pass gives it to the other node.
    unfit = unhealthy_announcers(set(), {held: {"announce": {"ok": False, "failed": [a], "addresses": [a]}},
                                         other: {"announce": {"ok": True, "failed": [], "addresses": []}}})
    assert unfit == {held}
    moved = announcers(state, ips, nodes, first, {}, unfit)
    assert moved[a] == other and moved[c] == other
    # Told to drop it, it answers well again; the address stays where it went (no flapping back).
    unfit = unhealthy_announcers(unfit, {held: {"announce": {"ok": True, "failed": [], "addresses": []}}})
    assert unfit == set() and announcers(state, ips, nodes, moved, {}, unfit) == moved
    # Service rules it cannot program make it unfit too; a delta on a table it lacks does not.
    assert unhealthy_announcers(set(), {"n1": {"services": {"ok": False, "reason": "NftFailed"}}}) == {"n1"}
    assert unhealthy_announcers({"n1"}, {"n1": {"services": {"ok": False, "reason": "ServicesBaseMismatch"}},
                                         "n2": None}) == set()
    # With no fit node left, a degraded one still announces rather than none.
    assert announcers(state, ips, nodes, {}, {}, {"n1", "n2"})[a] in ("n1", "n2")
    # Kubernetes' exclude-from-external-load-balancers label keeps a node out altogether.
    excluded = {**nodes, other: {"edge": "true", EXCLUDE_LABEL: ""}}
    assert announcers(state, ips, excluded, moved, {}, {held})[a] == held


# ---- on lab nodes -------------------------------------------------------------------------



def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def addresses_on(lab: Lab, node: str) -> str:
    return ssh_run(lab, node, "ip -4 -o addr show", check=False).stdout


@pytest.mark.lab
def test_a_load_balancer_address_answers_from_the_host_and_moves_when_its_node_is_lost(
    lab: Lab, repo: GitRepo, tmp_path: Path
) -> None:
    net = ipaddress.ip_network(lab.subnet)
    first, last = net[240], net[243]
    cluster = POOLS.replace("10.231.0.200-10.231.0.201], nodeSelector: {edge: \"true\"}",
                            f"{first}-{last}]").replace("      - {name: spare, addresses: [10.231.0.208/30]}\n", "")
    service = ("---\napiVersion: v1\nkind: Service\nmetadata: {name: shop, namespace: svc}\n"
               "spec:\n  type: LoadBalancer\n  selector: {app: echo}\n  ports: [{port: 80, targetPort: http}]\n")
    record = json.loads((lab.state_dir / "lab.json").read_text())
    veth = {n["name"]: n["veth"] for n in record["nodes"]}
    with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
        controller.settings = ControllerSettings(node_call_timeout=3.0)
        repo.commit("shop behind a LoadBalancer", {"cluster.yaml": cluster, "apps.yaml": apps() + service})
        converge(controller)
        row = wait_until("an announced address", lambda: controller.reconcile() and [
            r for r in controller.store.load_balancer_ips() if r.node], timeout=60)[0]
        assert ipaddress.ip_address(row.ip) == first
        pods = {p.name for p in controller.store.pods(namespace="svc")}
        wait_until("the address to answer from the host", lambda: get(f"http://{row.ip}/"), timeout=30,
                   accept=lambda name: name in pods)
        holders = [n.name for n in lab.nodes if f" {row.ip}/32 " in addresses_on(lab, n.name)]
        assert holders == [row.node]
        # The CLI shows it as kubectl does: EXTERNAL-IP, status.loadBalancer.ingress, describe.
        env = {**os.environ, "GITORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}

        def cli(*args: str) -> str:
            return subprocess.run([sys.executable, "-m", "gitorch", *args], env=env, capture_output=True,
                                  text=True, check=True, timeout=60).stdout

        table = cli("get", "services", "-n", "svc")
        assert "EXTERNAL-IP" in table and any(line.split()[1] == "shop" and row.ip in line.split()
                                              for line in table.splitlines()[1:]), table
        shown = {s["name"]: s for s in json.loads(cli("get", "services", "-n", "svc", "-o", "json"))}
        assert shown["shop"]["status"] == {"loadBalancer": {"ingress": [{"ip": row.ip}]}}
        assert f"LoadBalancer Ingress:  {row.ip} (announced by {row.node})" in cli("describe", "service/shop",
                                                                                 "-n", "svc")
        # The announcing node's link goes down: another node takes the address and answers.
        subprocess.run(["ip", "link", "set", veth[row.node], "down"], check=True, timeout=10)
        try:
            moved = wait_until("another node to announce it", lambda: controller.reconcile() and [
                r for r in controller.store.load_balancer_ips() if r.node not in (None, row.node)], timeout=60)[0]
            assert moved.ip == row.ip
            wait_until("the address to answer again", lambda: get(f"http://{row.ip}/"), timeout=30,
                       accept=lambda name: name in pods)
        finally:
            subprocess.run(["ip", "link", "set", veth[row.node], "up"], check=True, timeout=10)
        # Back: the old node is told it no longer holds the address, and drops it.
        wait_until("the old node to drop the address", lambda: controller.reconcile() and (
            f" {row.ip}/32 " not in addresses_on(lab, row.node)), timeout=60)


@pytest.mark.lab
def test_local_traffic_policy_keeps_the_client_address_and_source_ranges_refuse_others(
    lab: Lab, repo: GitRepo, tmp_path: Path
) -> None:
    """externalTrafficPolicy Local: the address is announced only by a node running a ready pod of
    the Service, which answers from its own pod and sees this machine's address; a Service whose
    loadBalancerSourceRanges leave this machine out refuses it."""
    net = ipaddress.ip_network(lab.subnet)
    record = json.loads((lab.state_dir / "lab.json").read_text())
    host = str(record["host_address"])
    cluster = POOLS.replace("10.231.0.200-10.231.0.201], nodeSelector: {edge: \"true\"}", f"{net[240]}-{net[243]}]")
    cluster = cluster.replace("      - {name: spare, addresses: [10.231.0.208/30]}\n", "")
    echo = ("import http.server, os\\nclass H(http.server.BaseHTTPRequestHandler):\\n"
            "    def do_GET(self):\\n        self.send_response(200); self.end_headers()\\n"
            "        self.wfile.write((os.environ['POD_NAME'] + ' ' + self.client_address[0]).encode())\\n"
            "    def log_message(self, *a): pass\\n"
            "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\\n")
    apps_yaml = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: who, namespace: svc}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: who}}}}
  template:
    metadata: {{labels: {{app: who}}}}
    spec:
      containers:
        - name: who
          command: [python3, -c, "{echo}"]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: local, namespace: svc}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {{app: who}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: fenced, namespace: svc}}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [192.0.2.0/24]
  selector: {{app: who}}
  ports: [{{port: 80, targetPort: http}}]
"""
    with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
        controller.settings = ControllerSettings(node_call_timeout=3.0)
        repo.commit("local and fenced", {"cluster.yaml": cluster, "apps.yaml": apps_yaml})
        converge(controller)
        rows = wait_until("both addresses announced", lambda: controller.reconcile() and {
            r.service: r for r in controller.store.load_balancer_ips() if r.node}, timeout=60,
            accept=lambda got: len(got) == 2)
        pod = next(p for p in controller.store.pods(namespace="svc") if p.owner_name == "who")
        assert rows["local"].node == pod.node  # announced where the pod runs
        answer = wait_until("the Local address to answer", lambda: get(f"http://{rows['local'].ip}/"), timeout=30)
        assert answer == f"{pod.name} {host}"  # this machine's own address, not a node's
        assert get(f"http://{rows['fenced'].ip}/") == ""  # refused: this machine is not in its ranges

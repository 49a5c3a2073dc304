"""Drift reports on real lab nodes: pods removed or started behind gitorch's back are found
in report mode (which changes nothing), healed in heal mode, and shown with history."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gitorch.model.objects import DesiredState
from gitorch.model.revisions import EMPTY_REVISION
from gitorch.model.settings import Settings
from gitorch.nodes.lab import Lab
from gitorch.reconcile import drift
from gitorch.reconcile.controller import Controller
from gitorch.server.serving import Server
from gitorch.source.desired import load
from gitorch.source.git import open_repository
from gitorch.store.database import ObjectRecord, PodRecord, Store
from tests.gitrepo import GitRepo
from tests.lab import controlled, ssh_run
from tests.samples import gitorch
from tests.test_reconcile import NAMESPACE, _fix_port, converge, node_pods, web
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

# Run on a node: print a sync request that leaves pod argv[1] out and adds a copy of it
# named argv[2]: what someone editing the node by hand would do.
TAMPER = """\
import json, sys
d = json.load(open("/var/lib/gitorch/desired.json"))
victim, stray = sys.argv[1], sys.argv[2]
pods = [p for p in d["pods"] if p["name"] != victim]
copy = dict(next(p for p in d["pods"] if p["name"] == victim), name=stray, hostname=stray)
request = {"pods": pods + [copy]}
if "network" in d:
    request["network"] = d["network"]
print(json.dumps(request))
"""


@pytest.fixture
def cluster(lab: Lab, repo: GitRepo) -> Iterator[tuple[GitRepo, Controller]]:
    repo.write({"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE})
    settings = Settings.from_env()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.database_url)
    controller = Controller(open_repository(repo.path), store, settings.state_dir)
    yield repo, controller
    repo.commit("empty", {"apps.yaml": ""})
    for _ in range(20):
        if controller.reconcile().converged and not store.pods():
            break
    controller.close()
    store.close()


class Hook:
    """A webhook target on this machine that keeps what it is sent."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/drift"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tamper(lab: Lab, node: str, victim: str, stray: str) -> None:
    """Remove `victim` from the node's desired pods and start `stray`, behind gitorch's back."""
    program = base64.b64encode(TAMPER.encode()).decode()
    script = (
        "f=$(ls -t /var/lib/gitorch/agent/agent-*.py | head -1); "
        f"echo {program} | base64 -d > /tmp/tamper.py && "
        f'python3 /tmp/tamper.py {victim} {stray} | python3 "$f" sync >/dev/null'
    )
    ssh_run(lab, node, script)


def drift_cli(repo: GitRepo, *args: str) -> dict[str, Any]:
    proc = gitorch("drift", "--repo", str(repo.path), "--format", "json", *args, cwd=repo.path)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def kinds(doc: dict[str, Any], what: str) -> set[str]:
    return {f["kind"] for f in doc["findings"] if what in f["object"]}


def wait_running(lab: Lab, node: str, name: str, present: bool, timeout: float = 30.0) -> None:
    wait_until(f"{name} {'running' if present else 'gone'} on {node}",
               lambda: {str(p["name"]) for p in node_pods(lab, name)[node] if not p.get("terminating")},
               timeout=timeout, interval=0.3, accept=lambda names: (name in names) == present)


def test_report_then_heal_then_clean(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    repo.commit("web", {"apps.yaml": _fix_port(web(replicas=2))})
    converge(controller)
    clean = drift_cli(repo, "--run")
    assert clean["total"] == 0, clean["findings"]

    node, pods = next((n, p) for n, p in node_pods(lab, "web-").items() if p)
    victim = str(pods[0]["name"])
    tamper(lab, node, victim, "stray-1")
    wait_running(lab, node, "stray-1", True)

    found = drift_cli(repo, "--run")
    assert found["mode"] == "report" and not found["healed"]
    # --exit-code: 2 while the latest report has findings (for cron and CI), 0 when clean.
    assert gitorch("drift", "--exit-code", cwd=repo.path).returncode == 2
    assert "PodMissing" in kinds(found, victim), found["findings"]
    assert "ExtraPod" in kinds(found, "stray-1"), found["findings"]
    assert found["counts"]["PodMissing"] >= 1 and found["counts"]["ExtraPod"] >= 1
    assert found["delta"] == found["total"] and found["previous"]["id"] == clean["id"]
    # Report mode changes nothing on the nodes.
    running = {str(p["name"]) for p in node_pods(lab, "")[node]}
    assert "stray-1" in running and victim not in running

    healed = drift_cli(repo, "--run", "--heal")
    assert healed["mode"] == "heal" and healed["healed"], healed
    assert {f["kind"] for f in healed["findings"]} >= {"PodMissing", "ExtraPod"}
    assert not any(f["kind"] in ("PodMissing", "ExtraPod") for f in healed["healed"][0]["after"])
    wait_running(lab, node, "stray-1", False)
    wait_running(lab, node, victim, True)

    after = wait_until("a clean drift report", lambda: drift_cli(repo, "--run"), timeout=60, interval=0.5,
                       accept=lambda report: report["total"] == 0, show=lambda report: str(report["findings"]))
    assert after["delta"] is not None and after["delta"] <= 0
    assert gitorch("drift", "--exit-code", cwd=repo.path).returncode == 0

    # History: --since lists every report, newest first, each with its delta.
    history = drift_cli(repo, "--since", "1h")["reports"]
    assert [r["id"] for r in history[:3]] == [after["id"], *[r["id"] for r in history[1:3]]]
    assert len(history) >= 4 and history[-1]["id"] == clean["id"]
    assert any(r["delta"] and r["delta"] > 0 for r in history)
    latest = drift_cli(repo)
    assert latest["id"] == after["id"]

    text = gitorch("drift", "--since", "1h", cwd=repo.path)
    assert text.returncode == 0 and f"drift report #{found['id']}" in text.stdout
    assert f"{found['total']} findings (+{found['total']} since" in text.stdout, text.stdout
    md = gitorch("drift", "--since", "1h", "--format", "markdown", cwd=repo.path)
    assert md.returncode == 0, md.stderr
    assert "| kind | object | node | detail | mode |" in md.stdout and "| PodMissing |" in md.stdout
    assert "No drift: Git, the store and the nodes agree." in md.stdout


def test_cluster_heal_mode_and_ignore_annotation(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    ignored = _fix_port(web(replicas=1)).replace(
        "  namespace: shop\n", "  namespace: shop\n  annotations: {gitorch.dev/drift: ignore}\n", 1
    )
    repo.commit("web ignored", {"apps.yaml": ignored})
    converge(controller)
    node, pods = next((n, p) for n, p in node_pods(lab, "web-").items() if p)
    victim = str(pods[0]["name"])
    tamper(lab, node, victim, "stray-2")
    wait_running(lab, node, "stray-2", True)
    doc = drift_cli(repo, "--run")
    assert not kinds(doc, victim), doc["findings"]  # ignored: its missing pod is not reported
    # The stray copy belongs to no recorded object, so the Cluster default still applies.
    assert "ExtraPod" in kinds(doc, "stray-2")

    hook = Hook()
    cluster_yaml = (
        "apiVersion: gitorch.dev/v1\nkind: Cluster\nmetadata:\n  name: lab\n"
        "spec:\n  drift:\n    mode: heal\n    schedule: '*/5 * * * *'\n"
        f"  notifications:\n    - name: hook\n      url: {hook.url}\n      events: [driftFound]\n"
    )
    repo.commit("drift heals", {"cluster.yaml": cluster_yaml})
    converge(controller)  # heals too: a pass re-syncs every node's pod set
    tamper(lab, node, victim, "stray-3")
    wait_running(lab, node, "stray-3", True)
    doc = drift_cli(repo, "--run")
    assert doc["mode"] == "heal" and doc["healed"], doc
    assert "ExtraPod" in kinds(doc, "stray-3")
    wait_running(lab, node, "stray-3", False)

    # `gitorch serve` registers the Cluster's schedule; its job checks, heals and notifies.
    server = Server(controller.repo, controller.store, controller.state_dir, branch=None, interval=5.0)
    try:
        server._schedule_drift(controller.reconcile())
        assert server.drift_schedule == "*/5 * * * *"
        server.notifier.start()
        tamper(lab, node, victim, "stray-4")
        wait_running(lab, node, "stray-4", True)
        before = len(controller.store.drift_reports())
        server.drift()
        reports = controller.store.drift_reports()
        assert len(reports) == before + 1 and reports[0].mode == "heal"
        assert any(f["kind"] == "ExtraPod" for f in reports[0].findings)
        wait_until("the driftFound notification", lambda: hook.received, timeout=30, interval=0.2)
        assert hook.received[0]["event"] == "driftFound" and "ExtraPod" in hook.received[0]["text"]
    finally:
        server.notifier.stop()
        hook.close()


def _delete_rule(lab: Lab, node: str, containing: str) -> str:
    """Delete, by hand, the rule of chain `services` that mentions `containing`; returns it."""
    listing = ssh_run(lab, node, "nft -a list chain ip gitorch services").stdout
    line = next(x.strip() for x in listing.splitlines() if containing in x and "# handle" in x)
    rule, handle = line.rsplit("# handle", 1)
    ssh_run(lab, node, f"nft delete rule ip gitorch services handle {handle.strip()}")
    return rule.strip()


def test_nat_rule_removed_and_dns_records_that_differ(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    from gitorch.dns.cluster import ClusterDNS
    from gitorch.dns.records import zone_data
    from gitorch.dns.server import DNSSettings
    from tests.test_services import apps, get_many

    with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
        repo.commit("echo and services", {"apps.yaml": apps()})
        converge(controller)
        controller.reconcile()  # the cluster IP reaches the tables the pass after its allocation
        store = controller.store
        vip = next(c.ip for c in store.cluster_ips() if (c.namespace, c.service) == ("svc", "web"))
        dns = ClusterDNS(DNSSettings(host="127.0.0.1", port=0)).start()
        try:
            state = load(controller.repo, None)
            dns.refresh(state, store)
            address = f"127.0.0.1:{dns.port}"
            clean = drift.run(controller, dns=address)
            assert not [f for f in clean.findings if f["kind"] in ("NatRulesDrift", "DnsRecordDrift",
                                                                   "DnsUnreachable")], clean.findings

            node = lab.nodes[1].name
            removed = _delete_rule(lab, node, vip)
            assert vip in removed
            # The cluster DNS answers with an address gitorch never gave web.
            data = zone_data(state, store.pods(), store.cluster_ips())
            stale = dataclasses.replace(data, services=tuple(
                dataclasses.replace(s, cluster_ip="10.96.99.99") if s.name == "web" else s for s in data.services
            ))
            dns.server.update(stale)

            found = drift.run(controller, dns=address)
            nat = [f for f in found.findings if f["kind"] == "NatRulesDrift"]
            assert [(f["object"], f["node"], f["mode"]) for f in nat] == [("Service svc/web", node, "report")], nat
            assert "missing" in nat[0]["detail"] and vip in nat[0]["detail"]
            records = [f for f in found.findings if f["kind"] == "DnsRecordDrift"]
            assert [f["object"] for f in records] == ["Service svc/web"], found.findings
            assert f"A {vip}" in records[0]["detail"] and "10.96.99.99" in records[0]["detail"]
            # Report mode repairs nothing.
            assert vip not in ssh_run(lab, node, "nft list chain ip gitorch services").stdout

            dns.server.update(data)  # the zone back as the store has it
            healed = drift.run(controller, heal=True, dns=address)
            assert healed.healed and any(f["kind"] == "NatRulesDrift" for f in healed.findings)
            after = healed.healed[0]["after"]
            assert not [f for f in after if f["kind"] in ("NatRulesDrift", "DnsRecordDrift")], after
            assert vip in ssh_run(lab, node, "nft list chain ip gitorch services").stdout
            repaired = [e for e in store.events(("Node", "", node)) if e.reason == "ServiceTableRepaired"]
            assert repaired and "edited by hand" in repaired[-1].message, repaired
            client = next(p for p in store.pods(namespace="svc") if p.node == node and p.owner_name == "echo")
            answers = get_many(
                lab, node, f"http://{vip}:80/", 6, netns=f"gitorch-{client.namespace}_{client.name}"
            )
            assert answers and not [a for a in answers if a.startswith("ERR")], answers
        finally:
            dns.stop()
        gone = drift.run(controller, dns=address)
        assert [f["kind"] for f in gone.findings if f["object"] == "Cluster DNS"] == ["DnsUnreachable"]
        assert address in next(f["detail"] for f in gone.findings if f["kind"] == "DnsUnreachable")


# ---- pure parts --------------------------------------------------------------------------


def test_parse_since() -> None:
    now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert drift.parse_since("30m", now) == now - timedelta(minutes=30)
    assert drift.parse_since("2d", now) == now - timedelta(days=2)
    assert drift.parse_since("2026-01-31T10:00", now) == datetime(2026, 1, 31, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since"):
        drift.parse_since("yesterday", now)


def test_detect_node_unreachable_and_not_pruned() -> None:
    state = DesiredState(EMPTY_REVISION, {}, [])
    gone = ObjectRecord(kind="ConfigMap", namespace="shop", name="old", body={"manifest": {}})
    pod = PodRecord(namespace="shop", name="web-1", owner_kind="Deployment", owner_name="web", node="n1")
    found = drift.detect(state, [gone], [pod], {}, {"n1": "n1: connection refused"})
    assert [(f.kind.value, f.object) for f in found] == [
        ("NotPruned", "ConfigMap shop/old"),
        ("NodeUnreachable", "Node n1"),
    ]


def test_detect_nat_findings_by_service_and_a_missing_table() -> None:
    state = DesiredState(EMPTY_REVISION, {}, [])
    edited = {"checked": True, "message": "table ip gitorch: 3 rule(s) missing, 1 not programmed by gitorch",
              "missing": ['services: ip daddr 10.96.0.9 tcp dport 80 goto svc0 comment "shop/web:http"',
                          "ep0_0: meta l4proto tcp dnat to 10.32.0.5:8080",
                          'services: ip daddr 10.96.0.7 tcp dport 53 goto svc1 comment "kube/dns:53"'],
              "extra": ["services: tcp dport 22 accept"]}
    found = drift.detect(state, [], [], {"n1": {}, "n2": {}}, {}, nat={
        "n1": edited,
        "n2": {"checked": True, "message": "table ip gitorch is missing", "tableMissing": True,
               "missing": edited["missing"], "extra": []},
        "n3": {"checked": False, "message": "no table programmed since boot", "missing": [], "extra": []},
    })
    assert [(f.kind.value, f.object, f.node) for f in found] == [
        ("NatRulesDrift", "Service table", "n1"),
        ("NatRulesDrift", "Service table", "n2"),
    ]
    # Rules name their Service in a comment; Services Git does not have fall in "Service table".
    assert "and 2 more" in found[0].detail and found[1].detail == "table ip gitorch is missing"


# Run in a network namespace of its own (unshare -n): program a service table as the agent
# does, apply argv[1] by hand with nft, print the agent's verdict on the live table.
EDIT_TABLE = """\
import json, subprocess, sys, tempfile
from gitorch.nodes import agent
paths = agent.Paths(tempfile.mkdtemp())
services = [
    {"name": "shop/web:http", "protocol": "tcp", "clusterIP": "10.96.0.9", "port": 80, "nodePort": None,
     "endpoints": [["10.244.0.2", 8080], ["10.244.0.3", 8080]]},
    {"name": "shop/empty:http", "protocol": "tcp", "clusterIP": "10.96.0.10", "port": 80, "nodePort": 30080,
     "endpoints": []},
]
assert agent.program_services(paths, services, "10.244.0.0/24", None, ["10.244.0.0/16"])["ok"]
assert agent.services_drift(paths)["message"] == ""
subprocess.run(["sh", "-c", sys.argv[1]], check=True)
print(json.dumps(agent.services_drift(paths)))
"""


@pytest.mark.parametrize("edit", [
    pytest.param("nft add chain ip gitorch reject-input '{ type filter hook input priority filter; policy drop; }'",
                 id="base-chain-policy-drop"),
    pytest.param("nft add chain ip gitorch evil '{ type filter hook input priority -200; policy drop; }'",
                 id="base-chain-added"),
    pytest.param("nft insert rule ip gitorch no-endpoints ip daddr 10.96.0.10 tcp dport 80 reject "
                 "comment '\"shop/empty:http\"'", id="reject-rule-duplicated"),
    pytest.param("nft delete rule ip gitorch no-endpoints handle $(nft -a list chain ip gitorch no-endpoints "
                 "| awk '/reject/ {print $NF; exit}') && nft add rule ip gitorch no-endpoints "
                 "ip daddr 10.96.0.10 tcp dport 80 reject comment '\"shop/empty:http\"'", id="rules-reordered"),
    pytest.param("nft add rule ip gitorch ep0_0 tcp dport 1 accept", id="rule-added"),
    pytest.param("nft delete table ip gitorch", id="table-deleted"),
])
def test_every_hand_edit_of_a_service_table_is_drift(edit: str) -> None:
    """Whatever makes the agent rebuild a table (its listing changed) is also a drift finding:
    a base chain's policy turned to drop would cut the node off, yet has no rule of its own."""
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", EDIT_TABLE, edit], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["checked"] and verdict["message"], verdict
    state = DesiredState(EMPTY_REVISION, {}, [])
    found = drift.detect(state, [], [], {"n1": {}}, {}, nat={"n1": verdict})
    assert [(f.kind.value, f.node) for f in found] == [("NatRulesDrift", "n1")], found


def test_a_node_whose_nft_is_gone_says_so_rather_than_table_missing() -> None:
    """The table is still in the kernel when nft is uninstalled: drift says what is wrong."""
    script = EDIT_TABLE.replace('subprocess.run(["sh", "-c", sys.argv[1]], check=True)',
                                "agent.nft_binary = lambda: None  # uninstalled")
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads(proc.stdout)
    assert "nft not found" in verdict["message"] and not verdict["tableMissing"], verdict
    state = DesiredState(EMPTY_REVISION, {}, [])
    found = drift.detect(state, [], [], {"n1": {}}, {}, nat={"n1": verdict})
    assert [(f.kind.value, f.object, f.detail) for f in found] == [
        ("NatRulesDrift", "Service table", verdict["message"])
    ]


def test_a_node_that_cannot_program_its_table_is_drift() -> None:
    """No nft at all: the sync recorded why, and the drift check reports it."""
    script = """\
import json, tempfile
from gitorch.nodes import agent
agent.nft_binary = lambda: None
paths = agent.Paths(tempfile.mkdtemp())
services = [{"name": "shop/web:http", "protocol": "tcp", "clusterIP": "10.96.0.9", "port": 80, "nodePort": None,
             "endpoints": [["10.244.0.2", 8080]]}]
assert not agent.program_services(paths, services, "10.244.0.0/24", None, [])["ok"]
print(json.dumps(agent.services_drift(paths)))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["checked"] and "not programmed: nft not found" in verdict["message"], verdict
    found = drift.detect(DesiredState(EMPTY_REVISION, {}, []), [], [], {"n1": {}}, {}, nat={"n1": verdict})
    assert [(f.kind.value, f.object, f.node) for f in found] == [("NatRulesDrift", "Service table", "n1")]

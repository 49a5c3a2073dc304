"""NetworkPolicy on real lab nodes: the e2e-style truth tables of tests/netpol_cases.py, each
policy set committed in turn to one lab and every pair of the 9 pods probed on every
(protocol, port) of PROBES, from inside the pods' network namespaces; a hand edit of the policy table
is drift."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab
from gitorch.reconcile import drift
from gitorch.reconcile.controller import Controller
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge, ssh_run
from tests.netpol_cases import ALL, CASES, PROBES, Case, Matrix, compare, expected, pods_yaml, render
from tests.waiting import wait_until

SERVER = """\
import socket, threading
NAME = {name!r}.encode()
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port)); s.listen(128)
    while True:
        c, _ = s.accept()
        try: c.sendall(NAME)
        finally: c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', port))
    while True:
        _, peer = s.recvfrom(64); s.sendto(NAME, peer)
for proto, p in {probes!r}:
    threading.Thread(target=tcp if proto == 'TCP' else udp, args=(p,), daemon=True).start()
threading.Event().wait()
"""

# Every (target, protocol, port) at once from one pod, each with a short timeout: a refused
# connection (the policy's reject) answers at once, so a probe round takes about a second.
PROBE = """\
import json, socket, sys, threading
targets = json.loads(sys.argv[1]); out = {}
def probe(name, ip, proto, port):
    try:
        if proto == 'TCP':
            s = socket.create_connection((ip, port), timeout=1.5)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)
            s.connect((ip, port)); s.send(b'?')
        out[f'{name} {proto} {port}'] = s.recv(64).decode() == name
        s.close()
    except OSError:
        out[f'{name} {proto} {port}'] = False
threads = [threading.Thread(target=probe, args=(n, ip, pr, po)) for n, ip in targets.items()
           for pr, po in json.loads(sys.argv[2])]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(out))
"""


@pytest.fixture
def cluster(lab: Lab, repo: GitRepo, tmp_path: Path) -> Iterator[tuple[GitRepo, Controller]]:
    with controlled(lab, repo, tmp_path, "netpol") as pair:
        yield pair


def _server(pod: str) -> list[str]:
    return ["python3", "-c", SERVER.format(name=pod, probes=PROBES)]


def _observe(lab: Lab, where: dict[str, tuple[str, str]]) -> dict[tuple[str, int], Matrix]:
    """Probe every pair: `where` is pod -> (node, IP)."""
    targets = json.dumps({pod: ip for pod, (_, ip) in where.items()})
    probes = json.dumps(PROBES)

    def from_pod(src: str) -> dict[str, bool]:
        node, _ = where[src]
        ns, name = src.split("/")
        proc = ssh_run(lab, node, f"ip netns exec gitorch-{ns}_{name} python3 -c \"$P\" '{targets}' '{probes}'".replace(
            "$P", PROBE.replace('"', '\\"')), check=False)
        return dict(json.loads(proc.stdout or "{}"))

    with ThreadPoolExecutor(len(ALL)) as pool:
        rows = dict(zip(ALL, pool.map(from_pod, ALL), strict=True))
    return {(proto, port): {(s, d): bool(rows[s].get(f"{d} {proto} {port}")) for s in ALL for d in ALL}
            for proto, port in PROBES}


@pytest.mark.lab
def test_truth_tables(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    repo.commit("pods x, y, z in namespaces a, b, c", {"apps.yaml": pods_yaml(_server)})
    converge(controller)

    def placed() -> dict[str, tuple[str, str]]:
        rows = {f"{p.namespace}/{p.name}": p for p in controller.store.pods() if p.namespace in ("a", "b", "c")}
        return {k: (str(p.node), str(p.ip)) for k, p in rows.items() if p.ip and p.node and p.phase == "Running"}

    where = wait_until("9 pods running with addresses", lambda: (controller.reconcile(), placed())[1], timeout=60,
                       interval=0.5, accept=lambda w: len(w) == 9)
    assert len({node for node, _ in where.values()}) >= 2, where
    ips = {pod: ip for pod, (_, ip) in where.items()}

    # No policy: everything reaches everything (and the servers are all up).
    open_case = Case("no-policy", lambda ips: "", lambda s, d, proto, port: True)
    last: list[dict[tuple[str, int], Matrix]] = []

    def agrees(case: Case) -> bool:
        controller.reconcile()
        last[:] = [_observe(lab, where)]
        return not compare(case, last[0])

    failures = []
    for case in [open_case, *CASES, open_case]:
        repo.commit(case.name, {"policies.yaml": case.policies(ips)})
        try:
            wait_until(f"{case.name} enforced", lambda c=case: agrees(c), timeout=30, interval=0.2)
        except AssertionError:
            failures.extend(compare(case, last[0]))
    assert not failures, "\n\n".join(failures)


SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: x, namespace: a}
spec:
  selector: {pod: x}
  ports: [{port: 8080, targetPort: 80}]
"""
TCP = ("import socket, sys\ntry: print(socket.create_connection((sys.argv[1], 8080), timeout=1.5).recv(64).decode())\n"
       "except OSError as e: print('ERR', type(e).__name__)\n")


@pytest.mark.lab
def test_policy_sees_the_endpoint_behind_a_service(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """Through a cluster IP the policy of the pod behind it applies, to clients on its own node
    (whose traffic the node masquerades) and on others alike, as Kubernetes does."""
    repo, controller = cluster
    only_b_y = next(c for c in CASES if c.name == "allow-from-pod-label-in-other-namespace")
    repo.commit("pods, a Service for a/x, only b/y may reach a/x",
                {"apps.yaml": pods_yaml(_server) + SERVICE, "policies.yaml": only_b_y.policies({})})
    converge(controller)
    rows = wait_until("9 pods with addresses", lambda: (controller.reconcile(), {
        f"{p.namespace}/{p.name}": p for p in controller.store.pods() if p.ip and p.namespace in "abc"})[1],
        timeout=60, interval=0.5, accept=lambda r: len(r) == 9)
    vip = wait_until("a cluster IP", lambda: (controller.reconcile(), next(
        (c.ip for c in controller.store.cluster_ips() if (c.namespace, c.service) == ("a", "x")), None))[1],
        timeout=30, interval=0.5)

    def via_service(pod: str) -> str:
        row = rows[pod]
        return ssh_run(lab, str(row.node), f"ip netns exec gitorch-{row.namespace}_{row.name} "
                       f"python3 -c \"{TCP}\" {vip}", check=False).stdout.strip()

    clients = ["b/y", "b/x", "c/x", "a/y", "a/z"]
    # Same-node clients are masqueraded by their node on the way back to a/x: one must be among them.
    assert {rows[c].node for c in clients} >= {rows["a/x"].node}, {c: r.node for c, r in rows.items()}
    want = {c: "a/x" if c == "b/y" else "ERR" for c in clients}
    seen: dict[str, str] = {}

    def agrees() -> bool:
        controller.reconcile()
        seen.update({c: (via_service(c).split() or [""])[0] for c in clients})
        return seen == want

    wait_until("the cluster IP to follow a/x's policy", agrees, timeout=30, interval=0.5,
               describe=lambda: f"want {want}, saw {seen}; a/x on {rows['a/x'].node}, "
                                + ", ".join(f"{c} on {rows[c].node}" for c in clients))


@pytest.mark.lab
def test_hand_edit_of_policy_rules_is_drift_and_healed(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    repo.commit("pods", {"apps.yaml": pods_yaml(_server), "policies.yaml": CASES[0].policies({})})
    converge(controller)
    node = wait_until("a/x placed", lambda: (controller.reconcile(), next(
        (p.node for p in controller.store.pods(namespace="a") if p.name == "x" and p.ip), None))[1],
        timeout=60, interval=0.5)
    wait_until("a/x isolated", lambda: (controller.reconcile(), "a/x" in ssh_run(
        lab, str(node), "nft list table ip gitorch-policy", check=False).stdout)[1], timeout=30, interval=0.5)
    clean = drift.run(controller)
    assert not [f for f in clean.findings if f["kind"] == "PolicyRulesDrift"], clean.findings

    ssh_run(lab, str(node), "nft flush chain ip gitorch-policy forward")
    found = drift.run(controller)
    policy = [f for f in found.findings if f["kind"] == "PolicyRulesDrift"]
    assert policy and {f["node"] for f in policy} == {node}, found.findings
    assert any(f["object"] == "NetworkPolicy table" and "missing" in f["detail"] for f in policy), policy

    healed = drift.run(controller, heal=True)
    assert healed.healed, healed.findings
    assert not [f for f in healed.healed[0]["after"] if f["kind"] == "PolicyRulesDrift"], healed.healed
    assert "vmap" in ssh_run(lab, str(node), "nft list chain ip gitorch-policy forward").stdout


def test_matrix_render_marks_blocked() -> None:
    m = expected(CASES[0], "TCP", 80)
    text = render(m)
    assert text.splitlines()[1].split()[1:] == [".", "X", "X", ".", ".", ".", ".", ".", "."]  # a/x: itself, not a
    assert text.splitlines()[4].split()[1:4] == ["X", "X", "X"]  # b/x cannot reach namespace a

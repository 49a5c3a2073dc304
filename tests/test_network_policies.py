"""NetworkPolicy on real lab nodes: the e2e-style truth tables of tests/netpol_cases.py, each
policy set committed in turn to one lab and every pair of the 9 pods probed on every
(protocol, port) of PROBES, from inside the pods' network namespaces; a hand edit of the policy table
is drift."""

from __future__ import annotations

import json
import time
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


WEB = """\
apiVersion: v1
kind: Namespace
metadata: {{name: b}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: b}}
spec:
  containers: [{{name: c, command: [sleep, infinity]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: netpol}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, command: {command}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-web, namespace: netpol}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
"""
# What a TCP connection from the client to each address came to: "open" (a leak), or the errno.
CONNECT = ("import errno, json, socket, sys\nout = {}\nfor ip in sys.argv[1:]:\n"
           "    try: socket.create_connection((ip, 80), timeout=1.5).close(); out[ip] = 'open'\n"
           "    except OSError as e: out[ip] = errno.errorcode.get(e.errno, str(e))\nprint(json.dumps(out))\n")
SERVES = "import socket; socket.create_connection(('127.0.0.1', 80), timeout=1).close()"


@pytest.mark.lab
def test_a_new_pod_is_isolated_from_its_first_packet(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """Scaled up under a deny policy, a new replica refuses the client from the moment it serves,
    before the controller has seen its address: the node put the pod's chains on the address
    it gave the pod before making its network namespace (the controller is not run again, so a
    node waiting for the controller's next pass would leave the pod open)."""
    repo, controller = cluster
    command = json.dumps(_server("netpol/web"))
    repo.commit("a web replica the policy isolates, a client", {"apps.yaml": WEB.format(replicas=1, command=command)})
    converge(controller)
    client = wait_until("the client placed", lambda: (controller.reconcile(), next(
        (p for p in controller.store.pods(namespace="b") if p.name == "client" and p.ip), None))[1],
        timeout=60, interval=0.5)
    nodes = [n.name for n in lab.nodes]

    def web_netns() -> dict[str, str]:
        """Every web replica's network namespace on the lab's nodes: name -> node."""
        out = {}
        for node in nodes:
            for line in ssh_run(lab, node, "ip netns list", check=False).stdout.splitlines():
                if line.split() and line.split()[0].startswith("gitorch-netpol_web-"):
                    out[line.split()[0]] = node
        return out

    def probe(ips: list[str]) -> dict[str, str]:
        proc = ssh_run(lab, str(client.node), f"ip netns exec gitorch-b_client python3 -c \"{CONNECT}\" "
                       + " ".join(ips), check=False)
        return dict(json.loads(proc.stdout or "{}"))

    first = wait_until("the first replica", web_netns, timeout=30, interval=0.5, accept=lambda w: len(w) == 1)
    first_ip = wait_until("the first replica's address", lambda: next(
        (p.ip for p in controller.store.pods(namespace="netpol") if p.ip), None), timeout=30, interval=0.5)
    assert probe([first_ip]) == {first_ip: "EHOSTUNREACH"}, "the policy does not isolate the first replica"

    repo.commit("three replicas", {"apps.yaml": WEB.format(replicas=3, command=command)})
    controller.reconcile()  # one pass sends the new replicas to their nodes; none after it

    def serving() -> dict[str, str]:
        """The new replicas that serve on their own loopback: netns -> address."""
        out = {}
        for ns, node in web_netns().items():
            if ns in first:
                continue
            proc = ssh_run(lab, node, f"ip netns exec {ns} python3 -c \"{SERVES}\" && "
                           f"ip -n {ns} -4 -o addr show dev eth0", check=False)
            words = proc.stdout.split()
            if proc.returncode == 0 and "inet" in words:
                out[ns] = words[words.index("inet") + 1].split("/")[0]
        return out

    new = wait_until("a new replica serving", serving, timeout=60, interval=0.3, accept=bool)
    seen = probe(list(new.values()))
    assert seen and all(v == "EHOSTUNREACH" for v in seen.values()), \
        f"new replicas reachable before the controller saw them: {seen} (want EHOSTUNREACH, the policy's reject)"


PAIR = """\
apiVersion: v1
kind: Namespace
metadata: {{name: b}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: netpol, labels: {{app: web}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers: [{{name: web, command: {command}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: b}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers: [{{name: c, command: [sleep, infinity]}}]
"""
BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


@pytest.mark.lab
def test_same_node_traffic_is_policed_with_bridge_netfilter_off(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """Pod-to-pod traffic on one node is bridged: the policy table sees it only through
    br_netfilter with net.bridge.bridge-nf-call-iptables on. A node where someone turned it off
    gets it turned back on when its policies are programmed, and the pod is isolated again."""
    repo, controller = cluster
    node = lab.nodes[0].name
    pods = PAIR.format(node=node, command=json.dumps(_server("netpol/server")))
    deny = WEB.format(replicas=0, command="[]").split("---\n")[-1]
    repo.commit("a server and a client on one node", {"apps.yaml": pods})
    converge(controller)
    server = wait_until("the server's address", lambda: (controller.reconcile(), next(
        (p.ip for p in controller.store.pods(namespace="netpol") if p.ip), None))[1], timeout=60, interval=0.5)
    wait_until("the client placed", lambda: (controller.reconcile(), any(
        p.ip for p in controller.store.pods(namespace="b")))[1], timeout=60, interval=0.5)

    def probe() -> str:
        proc = ssh_run(lab, node, f"ip netns exec gitorch-b_client python3 -c \"{CONNECT}\" {server}", check=False)
        return str(json.loads(proc.stdout or "{}").get(server))

    wait_until("the server open to the client", probe, timeout=30, interval=0.5, accept=lambda r: r == "open")
    ssh_run(lab, node, f"echo 0 > {BRIDGE_NF}")
    repo.commit("the server isolated", {"apps.yaml": pods + "---\n" + deny})
    converge(controller)
    seen = wait_until("the client refused", lambda: (controller.reconcile(), probe())[1], timeout=20, interval=0.5,
                      accept=lambda r: r == "EHOSTUNREACH")
    assert seen == "EHOSTUNREACH"
    assert ssh_run(lab, node, f"cat {BRIDGE_NF}").stdout.strip() == "1"


SERVER6 = ("import socket\ns = socket.socket(socket.AF_INET6)\n"
           "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('::', 80)); s.listen(16)\n"
           "while True:\n    c, _ = s.accept(); c.sendall(b'six'); c.close()\n")
CONNECT6 = ("import errno, socket, sys\ntry:\n"
            "    a = socket.getaddrinfo(sys.argv[1] + '%eth0', 80, socket.AF_INET6)[0][4]\n"
            "    s = socket.socket(socket.AF_INET6); s.settimeout(1.5); s.connect(a); print('open')\n"
            "except OSError as e: print(errno.errorcode.get(e.errno, str(e)))\n")


def _link_local(ip: str) -> str:
    """The fe80:: address a pod's eth0 would take from its MAC (0a:58 + its IPv4, see mac_for)."""
    b = [int(x) for x in ip.split(".")]
    return f"fe80::858:{b[0]:02x}ff:fe{b[1]:02x}:{b[2]:02x}{b[3]:02x}"


@pytest.mark.lab
def test_pods_have_no_ipv6_to_pass_the_policy_by(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """The policy table is of the ip family: a pod with IPv6 on its eth0 (a link-local fe80::
    address at least) would reach an isolated pod on its node past it. Pods' eth0 has none."""
    repo, controller = cluster
    node = lab.nodes[0].name
    pods = PAIR.format(node=node, command=json.dumps(["python3", "-c", SERVER6]))
    deny = WEB.format(replicas=0, command="[]").split("---\n")[-1]
    repo.commit("an isolated IPv6-capable server and a client on one node", {"apps.yaml": pods + "---\n" + deny})
    converge(controller)
    server = wait_until("the server's address", lambda: (controller.reconcile(), next(
        (p.ip for p in controller.store.pods(namespace="netpol") if p.ip), None))[1], timeout=60, interval=0.5)
    wait_until("the server up", lambda: ssh_run(lab, node, "ip netns exec gitorch-netpol_server python3 -c "
                                                f"\"{SERVES}\"", check=False).returncode == 0, timeout=30, interval=0.5)
    for _ in range(6):  # a link-local address is usable once its duplicate check is done (~1 s)
        seen = ssh_run(lab, node, f"ip netns exec gitorch-b_client python3 -c \"{CONNECT6}\" {_link_local(server)}",
                       check=False).stdout.strip()
        if seen == "open":
            break
        time.sleep(0.5)
    assert seen != "open" and seen, f"the client reached the isolated server over IPv6 ({seen})"
    assert "inet6" not in ssh_run(lab, node, "ip -n gitorch-netpol_server -6 -o addr show dev eth0").stdout
    assert "inet6" not in ssh_run(lab, node, "ip -n gitorch-b_client -6 -o addr show dev eth0").stdout


@pytest.mark.lab
def test_a_terminating_pod_stays_isolated(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """Scaled down, a replica that takes its grace period to stop is still policed until it has
    gone, as Kubernetes keeps it: the controller no longer sends its entry, the node keeps it."""
    repo, controller = cluster
    stubborn = ["python3", "-c", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                + SERVER.format(name="netpol/web", probes=PROBES)]
    web = WEB.replace("    spec:\n      containers: [{{name: web",
                      "    spec:\n      terminationGracePeriodSeconds: 30\n      containers: [{{name: web")
    assert web != WEB
    repo.commit("two isolated replicas, a client", {"apps.yaml": web.format(replicas=2, command=json.dumps(stubborn))})
    converge(controller)
    client = wait_until("the client placed", lambda: (controller.reconcile(), next(
        (p for p in controller.store.pods(namespace="b") if p.name == "client" and p.ip), None))[1],
        timeout=60, interval=0.5)
    replicas = wait_until("both replicas' addresses", lambda: (controller.reconcile(), {
        p.name: (str(p.node), str(p.ip)) for p in controller.store.pods(namespace="netpol") if p.ip})[1],
        timeout=60, interval=0.5, accept=lambda r: len(r) == 2)

    def probe() -> dict[str, str]:
        ips = " ".join(ip for _, ip in replicas.values())
        proc = ssh_run(lab, str(client.node), f"ip netns exec gitorch-b_client python3 -c \"{CONNECT}\" {ips}",
                       check=False)
        return dict(json.loads(proc.stdout or "{}"))

    wait_until("both replicas isolated", probe, timeout=30, interval=0.5,
               accept=lambda r: len(r) == 2 and set(r.values()) == {"EHOSTUNREACH"})
    repo.commit("one replica", {"apps.yaml": web.format(replicas=1, command=json.dumps(stubborn))})
    for _ in range(2):  # the pass that removes one, and one after it
        controller.reconcile()
    leaving = [name for name in replicas if name not in {p.name for p in controller.store.pods(namespace="netpol")}]
    assert len(leaving) == 1, leaving
    node, _ = replicas[leaving[0]]
    assert ssh_run(lab, node, f"ip netns exec gitorch-netpol_{leaving[0]} python3 -c \"{SERVES}\"",
                   check=False).returncode == 0, "the leaving replica is not serving through its grace period"
    seen = probe()
    assert set(seen.values()) == {"EHOSTUNREACH"}, f"a terminating replica is reachable: {seen}"


EGRESS_DENY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-egress, namespace: b}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress: {egress}
"""
SSH = ("import socket, sys\ntry: print(socket.create_connection((sys.argv[1], 22), timeout=1.5).recv(4).decode())\n"
       "except OSError as e: print('ERR', e.errno)\n")


@pytest.mark.lab
def test_egress_isolation_covers_the_pods_own_node(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """A pod's traffic to its own node's address is delivered to the node, never forwarded: an
    egress-isolated pod must not reach the node's services (here its sshd) unless a rule allows
    the node's address, as it would any other address."""
    repo, controller = cluster
    node = lab.nodes[0]
    pods = PAIR.format(node=node.name, command=json.dumps(_server("netpol/server")))

    def from_client() -> str:
        return ssh_run(lab, node.name, f"ip netns exec gitorch-b_client python3 -c \"{SSH}\" {node.address}",
                       check=False).stdout.strip()

    repo.commit("a client on the node", {"apps.yaml": pods})
    converge(controller)
    wait_until("the client reaching its node's sshd", from_client, timeout=60, interval=0.5,
               accept=lambda r: r == "SSH-")
    repo.commit("the client isolated", {"apps.yaml": pods + "---\n" + EGRESS_DENY.format(egress="[]")})
    converge(controller)
    seen = wait_until("the client refused by its node", lambda: (controller.reconcile(), from_client())[1],
                      timeout=20, interval=0.5, accept=lambda r: r != "SSH-")
    assert seen == "ERR 113", seen  # EHOSTUNREACH: the policy's reject
    allow = f"[{{to: [{{ipBlock: {{cidr: {node.address}/32}}}}], ports: [{{port: 22}}]}}]"
    repo.commit("the node's sshd allowed", {"apps.yaml": pods + "---\n" + EGRESS_DENY.format(egress=allow)})
    converge(controller)
    wait_until("the client let through to its node's sshd", lambda: (controller.reconcile(), from_client())[1],
               timeout=20, interval=0.5, accept=lambda r: r == "SSH-")

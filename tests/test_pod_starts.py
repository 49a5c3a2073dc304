"""Many pods given to one node at once (issue 17: agents start pods in parallel), on a lab node."""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes.client import Fleet
from gitorch.nodes.lab import Lab
from gitorch.nodes.ssh import Endpoint, Pool, SSHOptions
from tests.lab import ssh_run
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

PODS = 20
NETWORK = {"podCIDR": "10.244.251.0/24", "gateway": "10.244.251.1"}
# Answers every connection on :8080 with the pod's name: an address that reaches the wrong
# namespace (or none) shows up as a wrong name (or an error), not as a pass.
SERVER = (
    "import os, socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8080)); s.listen(16)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(os.environ['POD'].encode()); c.close()\n"
)
# Run on the node: connect to every pod IP given on stdin and print {ip: what it answered}.
ASK = (
    "import json, socket, sys\n"
    "out = {}\n"
    "for ip in json.load(sys.stdin):\n"
    "    try:\n"
    "        with socket.create_connection((ip, 8080), timeout=5) as c: out[ip] = c.recv(100).decode()\n"
    "    except OSError as e: out[ip] = repr(e)\n"
    "print(json.dumps(out))\n"
)


def _pod(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "burst",
        "hash": "h1",
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 2,
        "volumes": [],
        "containers": [
            {
                "name": "main",
                "command": ["python3", "-c", SERVER],
                "args": [],
                "env": [{"name": "POD", "value": name}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 0.5},
            }
        ],
    }


@pytest.fixture
def fleet(lab: Lab, tmp_path: Path) -> Iterator[Fleet]:
    endpoints = [Endpoint(n.name, n.address, n.port, "root", str(lab.identity_file), n.host_key) for n in lab.nodes]
    with Fleet(endpoints, Pool(SSHOptions(known_hosts=tmp_path / "kh", connect_timeout=3))) as f:
        yield f


def test_twenty_pods_at_once_all_run_with_own_ips_that_answer(fleet: Fleet, lab: Lab) -> None:
    node = lab.nodes[2].name
    client = fleet.clients[node]
    names = [f"p{i}" for i in range(PODS)]
    try:
        client.call("sync", {"pods": [_pod(n) for n in names], "network": NETWORK})

        def all_ready() -> dict[str, Any] | None:
            pods = {p["name"]: p for p in client.call("status")["pods"]}
            ok = set(pods) == set(names) and all(p["phase"] == "Running" and p["ready"] for p in pods.values())
            return pods if ok else None

        pods = wait_until(f"{PODS} pods Running and Ready on {node}", all_ready, timeout=60, interval=0.2)
        ips = {n: p["podIP"] for n, p in pods.items()}
        assert len(set(ips.values())) == PODS, ips
        cidr = ipaddress.ip_network(NETWORK["podCIDR"])
        assert all(ip and ipaddress.ip_address(ip) in cidr and ip != NETWORK["gateway"] for ip in ips.values()), ips
        # From the node, each pod IP reaches that pod's own namespace and process.
        answers = json.loads(ssh_run(lab, node, f"echo {shlex.quote(json.dumps(list(ips.values())))} | "
                                                f"python3 -c {shlex.quote(ASK)}").stdout)
        assert answers == {ip: n for n, ip in ips.items()}
        # Each pod's eth0 carries the MAC made from its IP (0a:58 + its four bytes).
        macs = ssh_run(lab, node, "; ".join(f"ip netns exec gitorch-burst_{n} cat /sys/class/net/eth0/address"
                                            for n in names)).stdout.split()
        assert macs == ["0a:58:" + ":".join(f"{int(x):02x}" for x in ips[n].split(".")) for n in names]
        assert all(p["restarts"] == 0 for p in pods.values())
    finally:
        client.call("sync", {"pods": []})
        wait_until(f"pods gone from {node}", lambda: not client.call("status")["pods"], timeout=60, interval=0.2)
    listed = ssh_run(lab, node, "ip netns list; ip -o link show master gitorch0", check=False).stdout
    assert "gitorch-burst_" not in listed and "master gitorch0" not in listed

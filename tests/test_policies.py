"""NetworkPolicy compilation (gitorch.reconcile.policies), pure: the e2e-style truth tables
(tests/netpol_cases.py) evaluated on the compiled per-node rule sets as a node enforces them."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes import agent
from gitorch.reconcile.policies import Target, ip_block, policy_table
from gitorch.source.desired import load
from gitorch.source.git import open_repository
from gitorch.store.database import PodRecord
from tests.gitrepo import GitRepo
from tests.netpol_cases import ALL, CASES, PROBES, Case, Matrix, compare, pods_yaml

IPS = {pod: f"10.244.{i % 3}.{10 + i}" for i, pod in enumerate(ALL)}  # spread over three nodes
NODES = {pod: f"n{i % 3}" for i, pod in enumerate(ALL)}


def _pods() -> list[PodRecord]:
    return [PodRecord(namespace=p.split("/")[0], name=p.split("/")[1], owner_kind="Pod", owner_name=p.split("/")[1],
                      node=NODES[p], phase="Running", ip=IPS[p], ready=True) for p in ALL]


def _allows(rules: list[dict[str, Any]] | None, peer: str, proto: str, port: int) -> bool:
    if rules is None:
        return True
    addr = ipaddress.IPv4Address(peer)
    return any(
        (r["peers"] is None or any(addr in ipaddress.IPv4Network(c) for c in r["peers"]))
        and (r["ports"] is None or any(p == proto and lo <= port <= hi for p, lo, hi in r["ports"]))
        for r in rules
    )


def _observe(tables: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, int], Matrix]:
    entries = {e["pod"]: e for node in tables.values() for e in node}
    out = {}
    for proto, port in PROBES:
        m: Matrix = {}
        for s in ALL:
            for d in ALL:
                src, dst = entries.get(s, {}), entries.get(d, {})
                m[(s, d)] = s == d or (_allows(src.get("egress"), IPS[d], proto, port)
                                       and _allows(dst.get("ingress"), IPS[s], proto, port))
        out[(proto, port)] = m
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_truth_table(repo: GitRepo, case: Case) -> None:
    repo.commit("case", {"pods.yaml": pods_yaml(), "policies.yaml": case.policies(IPS)})
    state = load(open_repository(repo.path), None)
    assert not [d.format() for d in state.diagnostics if d.severity.name == "ERROR"]
    tables = policy_table(state, _pods())
    for node, entries in tables.items():
        assert all(NODES[e["pod"]] == node for e in entries)
    mismatches = compare(case, _observe(tables))
    assert not mismatches, "\n".join(mismatches)


def test_no_policy_no_entries(repo: GitRepo) -> None:
    repo.commit("case", {"pods.yaml": pods_yaml()})
    assert policy_table(load(open_repository(repo.path), None), _pods()) == {}


def test_default_policy_types_isolate_egress_only_with_egress_rules(repo: GitRepo) -> None:
    policy = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\n"
              "spec:\n  podSelector: {matchLabels: {pod: x}}\n  egress:\n  - to:\n    - podSelector: {}\n")
    repo.commit("case", {"pods.yaml": pods_yaml(), "p.yaml": policy})
    entry = policy_table(load(open_repository(repo.path), None), _pods())["n0"][0]
    assert entry["pod"] == "a/x" and entry["ingress"] == []  # Ingress always: deny all ingress
    assert entry["egress"] == [{"peers": sorted(f"{IPS[p]}/32" for p in ("a/x", "a/y", "a/z")), "ports": None}]


def test_an_ipv6_block_covers_nothing() -> None:
    assert ip_block({"cidr": "::/0", "except": ["fd00::/8"]}) == []


def test_ip_block_less_its_exceptions() -> None:
    assert ip_block({"cidr": "10.0.0.0/8", "except": ["10.0.0.0/9"]}) == ["10.128.0.0/9"]
    got = [ipaddress.IPv4Network(c) for c in ip_block({"cidr": "10.0.0.0/24", "except": ["10.0.0.7/32"]})]
    assert sum(n.num_addresses for n in got) == 255
    assert not any(ipaddress.IPv4Address("10.0.0.7") in n for n in got)


def test_a_placed_pod_without_an_address_gets_its_entry(repo: GitRepo) -> None:
    """A pod the plan places, its address not known yet, is given its entry (ip None): its node
    binds it to the address it gives the pod, before the pod's first packet."""
    repo.commit("case", {"pods.yaml": pods_yaml(), "policies.yaml": CASES[0].policies(IPS)})
    state = load(open_repository(repo.path), None)
    peers = [p for p in _pods() if p.name != "x"]
    targets = [Target(p.namespace, p.name, p.owner_kind, p.owner_name, p.node, p.ip) for p in _pods()]
    targets = [t._replace(ip=None) if t.name == "x" else t for t in targets]
    entries = {e["pod"]: e for node in policy_table(state, peers, targets).values() for e in node}
    assert entries["a/x"]["ip"] is None and entries["a/x"]["ingress"] == []
    assert entries["a/y"]["ip"] == IPS["a/y"]
    assert "b/x" not in entries  # not isolated: no entry


def test_the_node_binds_chains_to_the_address_it_gave() -> None:
    """The node's own binding wins over the controller's last-seen address; a reused address
    is never bound to the pod that had it before."""
    entries = [{"pod": "a/old", "ip": "10.244.0.5", "ingress": [], "egress": None},
               {"pod": "a/new", "ip": None, "ingress": [], "egress": None},
               {"pod": "a/seen", "ip": "10.244.0.9", "ingress": [], "egress": None}]
    bound = {"a/new": "10.244.0.5", "b/open": "10.244.0.7"}
    assert agent.policy_binding(entries, bound) == {"a/new": "10.244.0.5", "a/seen": "10.244.0.9"}
    text = agent.policy_ruleset(entries, agent.policy_binding(entries, bound))
    assert "10.244.0.5 : jump i0" in text and "10.244.0.9 : jump i1" in text and "a/old" not in text
    assert agent.policy_ruleset(entries[1:2], {}).count("\n") == 2  # not bound yet: no table at all


def test_bridge_netfilter_turned_back_on_or_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same-node pod traffic is bridged: without br_netfilter's sysctl the policy table never
    sees it. A 0 is set back to 1; a sysctl that is not there is reported, not ignored."""
    knob = tmp_path / "bridge-nf-call-iptables"
    knob.write_text("0\n")
    monkeypatch.setattr(agent, "BRIDGE_NF", str(knob))
    assert agent.bridge_netfilter() == ""
    assert knob.read_text() == "1"
    monkeypatch.setattr(agent, "BRIDGE_NF", str(tmp_path / "absent"))
    assert "br_netfilter" in agent.bridge_netfilter()


def test_a_freed_pod_address_is_not_given_again_at_once() -> None:
    """Another node's rules may still name a gone pod's address as a peer until the controller's
    next pass: a node gives addresses in turn, wrapping round, not the lowest free one."""
    net = agent.NetworkSpec.parse({"podCIDR": "10.244.1.0/29"})
    assert net is not None
    assert net.free_ip([]) == "10.244.1.2"  # .1 is the gateway
    assert net.free_ip(["10.244.1.3"], after="10.244.1.4") == "10.244.1.5"  # .2 was freed: not next
    assert net.free_ip(["10.244.1.2", "10.244.1.5"], after="10.244.1.6") == "10.244.1.3"  # round again
    assert net.free_ip([f"10.244.1.{i}" for i in range(2, 7)], after="10.244.1.4") is None

"""Work proportional to change (issue 17): a node with nothing new is not called, and the
periodic resync repairs what a missed change left behind, on real lab nodes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes.client import NodeClient
from gitorch.nodes.lab import Lab
from gitorch.reconcile.controller import ControllerSettings
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge, ssh_run
from tests.test_drift import _delete_rule
from tests.test_services import apps, endpoints_on
from tests.waiting import wait_until

pytestmark = pytest.mark.lab


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """How many `sync` calls each node received."""
    counted: Counter[str] = Counter()
    real = NodeClient.call

    def call(self: NodeClient, verb: str, payload: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        if verb == "sync":
            counted[self.name] += 1
        return real(self, verb, payload, timeout)

    monkeypatch.setattr(NodeClient, "call", call)
    yield counted


def test_a_node_with_nothing_new_is_not_called_and_a_resync_repairs_a_missed_change(
    lab: Lab, repo: GitRepo, tmp_path: Path, syncs: Counter[str]
) -> None:
    with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
        controller.settings = ControllerSettings(resync=3600)
        repo.commit("echo and services", {"apps.yaml": apps()})
        converge(controller)
        for _ in range(3):  # readiness settles: the last changes reach the service tables
            controller.reconcile()
        syncs.clear()
        for _ in range(3):
            result = controller.reconcile()
            assert result.converged
        assert sum(syncs.values()) == 0, syncs  # nothing changed: no node was called to sync

        # A change nobody told the controller about: a NAT rule deleted by hand on one node.
        store = controller.store
        vip = next(c.ip for c in store.cluster_ips() if (c.namespace, c.service) == ("svc", "web"))
        node = lab.nodes[0].name
        _delete_rule(lab, node, vip)
        controller.reconcile()
        assert vip not in ssh_run(lab, node, "nft list chain ip gitorch services").stdout  # not noticed yet
        # The periodic resync sends every node its whole state again, and the table is rebuilt.
        controller.reconcile(now=time.time() + 3601)
        assert vip in ssh_run(lab, node, "nft list chain ip gitorch services").stdout
        assert syncs[node] >= 1
        repaired = [e for e in store.events(("Node", "", node)) if e.reason == "ServiceTableRepaired"]
        assert repaired, store.events()


def test_a_node_whose_agent_lost_its_state_is_synced_at_once(
    lab: Lab, repo: GitRepo, tmp_path: Path, syncs: Counter[str]
) -> None:
    with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
        controller.settings = ControllerSettings(resync=3600)
        repo.commit("echo and services", {"apps.yaml": apps(replicas=3)})
        converge(controller)
        controller.reconcile()
        node = lab.nodes[2].name
        client = controller.fleet(controller.load(None)[1]).clients[node]
        # Someone else syncs the node (a one-shot run elsewhere): its generation moves on.
        client.call("sync", {"pods": []})
        syncs.clear()
        result = controller.reconcile()
        # Synced at once, not at its resync (its pods' endpoints left the other nodes' tables too).
        assert syncs[node] == 1, syncs
        converge(controller)
        assert len([p for p in controller.store.pods(namespace="svc") if p.node == node and p.ready]) >= 1
        assert result is not None


def test_a_quiet_node_says_unchanged_and_a_change_on_it_is_still_seen(
    lab: Lab, repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass asks every node for its status with the etag of its last answer: a node where
    nothing changed answers only `unchanged`, and its kept reports stand in; a pod restarted on
    it changes the etag, so the restart is recorded all the same."""
    answers: list[tuple[str, bool]] = []
    real = NodeClient.call

    def call(self: NodeClient, verb: str, payload: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        out = real(self, verb, payload, timeout)
        if verb == "status":
            answers.append((self.name, bool(out.get("unchanged"))))
        return out

    monkeypatch.setattr(NodeClient, "call", call)
    with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
        controller.settings = ControllerSettings(resync=3600)
        repo.commit("echo and services", {"apps.yaml": apps(replicas=3)})
        converge(controller)
        for _ in range(3):
            controller.reconcile()
        answers.clear()
        controller.reconcile()
        assert len(answers) == len(lab.nodes) and all(unchanged for _, unchanged in answers), answers
        pod = next(p for p in controller.store.pods(namespace="svc") if p.node and p.ready)
        assert pod.node is not None and pod.restarts == 0
        client = controller.fleet(controller.load(None)[1]).clients[pod.node]
        running = {(p["namespace"], p["name"]): p for p in client.call("status")["pods"]}
        pid = running[("svc", pod.name)]["containers"][0]["pid"]
        assert ssh_run(lab, pod.node, f"kill -KILL {int(pid)}").returncode == 0
        wait_until("the restart recorded", lambda: controller.reconcile() and next(
            p.restarts for p in controller.store.pods(namespace="svc") if p.name == pod.name), timeout=60)
        assert (pod.node, False) in answers  # the node's changed status was read in full


def test_an_endpoint_change_is_sent_as_a_delta_and_a_node_without_its_base_gets_the_whole_table(
    lab: Lab, repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first whole table, a readiness flip reaches every node as a `servicesDelta` (the
    changed entries only); a node that lost the table the delta starts from refuses it and is
    sent the whole table on the next pass, and every node's NAT rules end up right."""
    sent: list[tuple[str, str]] = []
    real = NodeClient.call

    def call(self: NodeClient, verb: str, payload: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        if verb == "sync" and payload is not None:
            sent.append((self.name, "delta" if "servicesDelta" in payload else
                         "whole" if "services" in payload else "none"))
        return real(self, verb, payload, timeout)

    monkeypatch.setattr(NodeClient, "call", call)
    nodes = [n.name for n in lab.nodes]
    with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
        controller.settings = ControllerSettings(resync=3600)
        repo.commit("echo and services", {"apps.yaml": apps(replicas=3)})
        converge(controller)
        ready = wait_until("three ready endpoints in every table", lambda: controller.reconcile() and [
            p for p in controller.store.pods(namespace="svc") if p.ready and p.ip], timeout=60,
            accept=lambda pods: len(pods) == 3 and all(endpoints_on(lab, n) == {p.ip for p in pods} for n in nodes))
        out = ready[0]
        assert out.node is not None and out.ip is not None
        sent.clear()
        ssh_run(lab, out.node, f"rm -f /tmp/ready-{out.name}")
        wait_until(f"{out.name} out of every table", lambda: controller.reconcile() and all(
            out.ip not in endpoints_on(lab, n) for n in nodes), timeout=30)
        assert sent and {kind for _, kind in sent} == {"delta"}, sent

        # A node loses the table it holds (its state folder restored from an old backup, say).
        ssh_run(lab, nodes[0], "rm -f /var/lib/gitorch/services-table.json")
        sent.clear()
        ssh_run(lab, out.node, f"touch /tmp/ready-{out.name}")
        wait_until(f"{out.name} back in every table", lambda: controller.reconcile() and all(
            out.ip in endpoints_on(lab, n) for n in nodes), timeout=30)
        controller.reconcile()
        mine = [kind for node, kind in sent if node == nodes[0]]
        assert mine[:2] == ["delta", "whole"], sent  # refused, then sent whole
        assert all(kind == "delta" for node, kind in sent if node != nodes[0]), sent


def test_within_a_term_the_kept_rows_are_what_the_store_holds(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    """serve's passes (fenced) fold their own writes into the rows they keep instead of reading
    them back; after a rollout, a scale-down and a pod's readiness flip, both must agree."""
    from gitorch.reconcile.leadership import LEASE

    def rows(pods: list[Any]) -> list[tuple[Any, ...]]:
        return [(p.namespace, p.name, p.node, p.template_hash, p.phase, p.ready, p.ip, p.restarts, p.ready_at)
                for p in pods]

    with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
        store = controller.store
        term = store.acquire_lease(LEASE, "test", 600)
        assert term is not None
        repo.commit("echo and services", {"apps.yaml": apps(replicas=3)})
        for step in ("rollout", "scale down"):
            for _ in range(60):
                result = controller.reconcile(fence=term)
                if result.converged:
                    break
            assert result.converged, step
            assert controller._cached or step == "rollout"
            assert rows(controller._pod_rows) == rows(store.pods(spec=False)), step
            objects = {(o.kind, o.name): (o.health, o.body, o.conditions) for o in controller._object_rows}
            assert objects == {(o.kind, o.name): (o.health, o.body, o.conditions) for o in store.objects()}, step
            repo.commit("scale down", {"apps.yaml": apps(replicas=2)})
        store.release_lease(LEASE, "test")


def test_a_node_that_never_answers_is_asked_again_only_after_a_back_off(
    lab: Lab, repo: GitRepo, tmp_path: Path
) -> None:
    """A Node that accepts TCP and never speaks SSH would hold every pass for the call timeout."""
    import socket

    from gitorch.nodes.client import Fleet

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    node = f"""\
---
apiVersion: gitorch.dev/v1
kind: Node
metadata: {{name: silent}}
spec: {{address: 127.0.0.1, port: {port}, user: root, identityFile: {lab.identity_file}}}
"""
    asked: list[list[str]] = []
    real = Fleet.fan_out

    def fan_out(self: Fleet, fn: Any, *, nodes: Any = None, **kw: Any) -> Any:
        names = list(nodes) if nodes is not None else list(self.clients)
        asked.append(names)
        return real(self, fn, nodes=names, **kw)

    try:
        with controlled(lab, repo, tmp_path, "svc") as (repo, controller):
            controller.settings = ControllerSettings(node_call_timeout=2)
            repo.commit("a silent node", {"silent.yaml": node})
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(Fleet, "fan_out", fan_out)
                t0 = time.time()
                first = controller.reconcile(now=t0)
                assert "silent" in first.node_errors and "silent" in asked[0]
                asked.clear()
                second = controller.reconcile(now=t0 + 1)
                assert "silent" not in asked[0], asked  # in its back-off: the others are asked alone
                assert "back-off" in second.node_errors["silent"]
                assert {n.name for n in lab.nodes} <= set(asked[0])
                asked.clear()
                controller.reconcile(now=t0 + 3)
                assert "silent" in asked[0]  # the back-off (2 s after one failure) has passed
            repo.commit("silent gone", {"silent.yaml": ""})
    finally:
        silent.close()

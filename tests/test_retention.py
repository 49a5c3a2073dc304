"""Bounded state as a user meets it: a deleted Service's address is released, old events go."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gitorch.reconcile.controller import Controller, ControllerSettings
from gitorch.source.git import open_repository
from gitorch.store.database import Store
from tests.gitrepo import GitRepo

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
SVC = """\
---
apiVersion: v1
kind: Service
metadata: {name: NAME, namespace: shop}
spec:
  type: NodePort
  selector: {app: NAME}
  ports: [{port: 80}]
"""


def test_a_service_gets_its_address_on_its_first_pass_and_releases_it_when_deleted(
    repo: GitRepo, tmp_path: Path
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    controller = Controller(open_repository(repo.path), store, tmp_path / "state")
    try:
        both = SVC.replace("NAME", "web") + SVC.replace("NAME", "api")
        repo.commit("two services", {"ns.yaml": NS, "svc.yaml": both})
        controller.reconcile()
        assert {c.service for c in store.cluster_ips()} == {"web", "api"}
        assert {n.service for n in store.node_ports()} == {"web", "api"}
        web_ip = next(c.ip for c in store.cluster_ips() if c.service == "web")
        repo.commit("api deleted", {"svc.yaml": SVC.replace("NAME", "web")})
        controller.reconcile()
        assert [(c.service, c.ip) for c in store.cluster_ips()] == [("web", web_ip)]
        assert [n.service for n in store.node_ports()] == ["web"]
    finally:
        controller.close()
        store.close()


def test_events_older_than_the_ttl_are_forgotten(repo: GitRepo, tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    settings = ControllerSettings(event_ttl=600, max_events=1000)
    controller = Controller(open_repository(repo.path), store, tmp_path / "state", settings)
    try:
        t0 = datetime.now(UTC).timestamp()
        repo.commit("web", {"ns.yaml": NS, "svc.yaml": SVC.replace("NAME", "web")})
        controller.reconcile(now=t0)
        repo.commit("bad", {"svc.yaml": "kind: [\n"})
        controller.reconcile(now=t0 + 1)
        assert any(e.reason == "InvalidRevision" for e in store.events())
        repo.commit("good again", {"svc.yaml": SVC.replace("NAME", "api")})
        controller.reconcile(now=t0 + 900)  # 15 minutes on: the invalid revision's event is past its TTL
        assert not any(e.reason == "InvalidRevision" for e in store.events())
        assert any(e.reason == "Pruned" for e in store.events())  # the newer event stays
    finally:
        controller.close()
        store.close()

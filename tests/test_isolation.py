"""One object's failure is that object's status, never the pass's (issue 19), on real lab nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitorch.model.objects import ObjectKey
from gitorch.nodes.lab import Lab
from gitorch.reconcile import planning
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge

pytestmark = pytest.mark.lab

WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: iso}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - {name: web, command: [sleep, "3600"]}
"""

CRON = """\
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: iso}
spec:
  schedule: "*/5 * * * *"
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - {name: report, command: [echo, hi]}
"""

AGENTS = """\
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: iso}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
        - {name: agent, command: [sleep, "3600"]}
"""


def test_a_suspended_cronjob_is_a_status_not_a_failed_pass(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    with controlled(lab, repo, tmp_path, "iso") as (repo, controller):
        head = repo.commit("web and a suspended cronjob", {"apps.yaml": WEB + CRON})
        converge(controller)
        store = controller.store
        cron = store.object_status("CronJob", "iso", "report")
        web = store.object_status("Deployment", "iso", "web")
        assert cron is not None and cron.health == "Suspended"
        assert web is not None and web.health == "Healthy"
        # The pass wrote its revision: status and the nodes agree on the commit.
        last = store.last_applied_revision()
        assert last is not None and last.commit == head


def test_a_controller_error_stalls_that_object_only(
    lab: Lab, repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with controlled(lab, repo, tmp_path, "iso") as (repo, controller):
        repo.commit("web and agents", {"apps.yaml": WEB + AGENTS})
        converge(controller)
        store = controller.store
        agents_before = {p.name for p in store.pods(namespace="iso") if p.owner_name == "agent"}
        assert len(agents_before) == 3

        def broken(ps: planning._Pass, obj: planning.Object) -> None:
            ps.plan.events.append(planning.PlannedEvent(obj.key, "Normal", "HalfDone", "must be undone"))
            raise KeyError("spec")

        monkeypatch.setitem(planning._CONTROLLERS, "DaemonSet", broken)
        repo.commit("scale web", {"apps.yaml": WEB.replace("replicas: 2", "replicas: 3") + AGENTS})
        result = None
        for _ in range(60):
            result = controller.reconcile()
            web = store.object_status("Deployment", "iso", "web")
            if web is not None and web.health == "Healthy" and len(
                [p for p in store.pods(namespace="iso") if p.owner_name == "web"]
            ) == 3:
                break
        else:
            pytest.fail("web did not scale while the DaemonSet's controller failed")
        assert result is not None and result.plan is not None
        status = result.plan.statuses[ObjectKey("DaemonSet", "iso", "agent")]
        assert status.health == "Degraded" and "KeyError" in status.message
        stored = store.object_status("DaemonSet", "iso", "agent")
        assert stored is not None and stored.health == "Degraded"
        assert any(c["type"] == "Stalled" and c["status"] == "True" for c in stored.conditions)
        # Its pods were kept as they are, not pruned.
        assert {p.name for p in store.pods(namespace="iso") if p.owner_name == "agent"} == agents_before
        assert any(e.reason == "ReconcileError" for e in store.events())
        assert not any(e.reason == "HalfDone" for e in store.events())


def test_a_malformed_field_leaves_the_last_good_revision_healing(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    with controlled(lab, repo, tmp_path, "iso") as (repo, controller):
        good = repo.commit("web", {"apps.yaml": WEB})
        converge(controller)
        store = controller.store
        broken = WEB.replace("        - {name: web, command: [sleep, \"3600\"]}",
                             "        - {name: web, command: [sleep, \"3600\"], resources: oops, env: [x]}")
        bad = repo.commit("malformed", {"apps.yaml": broken})
        result = controller.reconcile()
        assert not result.valid and any("resources" in d for d in result.diagnostics), result.diagnostics
        # Someone stops every pod on the nodes by hand: the last good revision is healed anyway.
        fleet = controller.fleet(result.state)  # type: ignore[arg-type]
        for client in fleet.clients.values():
            client.call("sync", {"pods": []})
        for _ in range(60):
            result = controller.reconcile()
            running = [p for p in store.pods(namespace="iso") if p.phase == "Running" and p.ready]
            if len(running) == 2:
                break
        else:
            pytest.fail(f"not healed: {[(p.name, p.phase) for p in store.pods(namespace='iso')]}")
        assert not result.valid
        revision = store.revision(bad)
        assert revision is not None and revision.outcome == "invalid"
        last = store.last_applied_revision()
        assert last is not None and last.commit == good

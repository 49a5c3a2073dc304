"""Claims bound to node-local directories: StorageClasses with the local provisioner
(WaitForFirstConsumer, reclaimPolicy), hand-made PersistentVolumes on a named node, pods
pinned to their claims' node, ReadWriteOncePod, and the agent's reclaim of a gone claim."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.reconcile.planning import Observed, plan
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.test_agent import Node
from tests.test_planning import NODES, NS, as_observed

NODE_FILES = "".join(
    f"---\napiVersion: gitorch.dev/v1\nkind: Node\nmetadata: {{name: n{i}}}\nspec: {{address: 10.0.0.{i}}}\n"
    for i in (1, 2, 3)
)
LOCAL = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: gitorch.dev/local
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
"""
MANUAL = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: manual}
provisioner: kubernetes.io/no-provisioner
"""
PV = """\
apiVersion: v1
kind: PersistentVolume
metadata: {name: disk-n2}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  local: {path: /mnt/disks/a}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [n2]}]
"""


def claim(name: str = "data", cls: str | None = None, mode: str = "ReadWriteOnce", size: str = "1Gi") -> str:
    cls_line = f"  storageClassName: {cls}\n" if cls is not None else ""
    return (f"apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n"
            f"  accessModes: [{mode}]\n{cls_line}  resources: {{requests: {{storage: {size}}}}}\n")


def using(name: str, replicas: int, claim_name: str = "data") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: shop}}
spec:
  replicas: {replicas}
  strategy: {{type: Recreate}}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: c, command: [sleep, "600"], volumeMounts: [{{name: d, mountPath: /data}}]}}]
      volumes: [{{name: d, persistentVolumeClaim: {{claimName: {claim_name}}}}}]
"""


def load(repo: GitRepo, files: dict[str, str]) -> desired.DesiredState:
    repo.commit("x", {"ns.yaml": NS, "nodes.yaml": NODE_FILES, **files})
    return desired.load(open_repository(repo.path), None)


def errors(state: desired.DesiredState) -> list[str]:
    return [d.format() for d in state.diagnostics if d.severity is Severity.ERROR]


def test_a_provisioned_claim_is_bound_where_its_first_pod_lands_and_pins_the_others(repo: GitRepo) -> None:
    now = 1000.0
    s = load(repo, {"sc.yaml": LOCAL, "pvc.yaml": claim(), "web.yaml": using("web", 1)})
    assert errors(s) == []
    first = plan(s, Observed(now, (), NODES))
    (pod,) = first.pods
    status = next(v for k, v in first.statuses.items() if k.kind == "PersistentVolumeClaim")
    assert status.binding is not None and status.binding.node == pod.node
    assert status.binding.reclaim == "Delete" and status.binding.path == "/var/lib/gitorch/volumes/shop/data"
    assert pod.spec["volumes"] == [{"name": "d", "hostPath": "/var/lib/gitorch/volumes/shop/data"}]
    # Scaled to 3, with the binding recorded: every pod goes to the claim's node, which the
    # spreading scheduler would not choose on its own.
    s3 = load(repo, {"web.yaml": using("web", 3)})
    claims = {k: v.binding for k, v in first.statuses.items() if v.binding is not None}
    three = plan(s3, Observed(now, as_observed(first, now), NODES, claims=claims))
    assert {d.node for d in three.pods} == {pod.node} and len(three.pods) == 3


def test_an_unbound_claim_is_adopted_on_the_node_its_running_pod_uses(repo: GitRepo) -> None:
    now = 1000.0
    s = load(repo, {"pvc.yaml": claim(), "web.yaml": using("web", 1)})
    first = plan(s, Observed(now, (), NODES))
    pods = as_observed(first, now)
    # Nothing recorded (a store from before bindings): the running pod's node is the claim's.
    again = plan(s, Observed(now, pods, NODES))
    status = next(v for k, v in again.statuses.items() if k.kind == "PersistentVolumeClaim")
    assert status.binding is not None and status.binding.node == pods[0].node
    assert status.binding.reclaim == "Retain"  # no class at all: gitorch's default keeps the data


def test_a_claim_binds_to_a_fitting_persistent_volume_and_its_pods_go_to_that_node(repo: GitRepo) -> None:
    now = 1000.0
    s = load(repo, {"sc.yaml": MANUAL, "pv.yaml": PV, "pvc.yaml": claim(cls="manual"), "web.yaml": using("web", 2)})
    assert errors(s) == []
    p = plan(s, Observed(now, (), NODES))
    assert {d.node for d in p.pods} == {"n2"}
    assert all(d.spec["volumes"] == [{"name": "d", "hostPath": "/mnt/disks/a"}] for d in p.pods)
    pv = next(v for k, v in p.statuses.items() if k.kind == "PersistentVolume")
    assert pv.message == "Bound to shop/data"
    # Too big for the only volume: the claim stays Pending, and so do its pods, saying why.
    big = load(repo, {"pvc.yaml": claim(cls="manual", size="20Gi")})
    p = plan(big, Observed(now, (), NODES))
    assert all(d.node is None and "is not bound: no PersistentVolume" in d.message for d in p.pods)
    status = next(v for k, v in p.statuses.items() if k.kind == "PersistentVolumeClaim")
    assert status.health == "Degraded" and status.message.startswith("Pending: no PersistentVolume")


def test_a_class_only_persistent_volumes_name_binds_them_with_no_storage_class_object(repo: GitRepo) -> None:
    """Kubernetes' own examples say storageClassName: manual on a PersistentVolume and its
    claim and declare no StorageClass: the claim binds to the volume statically."""
    s = load(repo, {"pv.yaml": PV, "pvc.yaml": claim(cls="manual"), "web.yaml": using("web", 1)})
    assert errors(s) == []
    p = plan(s, Observed(1000.0, (), NODES))
    assert {d.node for d in p.pods} == {"n2"}
    # A class neither a StorageClass nor a volume names is still an error.
    got = errors(load(repo, {"pvc.yaml": claim(cls="fast")}))
    assert any("pvc.yaml:" in e and "StorageClass 'fast' does not exist" in e for e in got), got


def test_a_read_write_once_pod_claim_takes_one_pod(repo: GitRepo) -> None:
    now = 1000.0
    s = load(repo, {"pvc.yaml": claim(mode="ReadWriteOncePod"), "web.yaml": using("web", 1)})
    first = plan(s, Observed(now, (), NODES))
    two = load(repo, {"web.yaml": using("web", 2)})
    p = plan(two, Observed(now, as_observed(first, now), NODES))
    waiting = [d for d in p.pods if d.node is None]
    assert len(waiting) == 1
    assert 'persistentvolumeclaim "data" is ReadWriteOncePod and used by pod' in waiting[0].message


def test_volume_mistakes_are_validation_errors(repo: GitRepo) -> None:
    bad_node = PV.replace("values: [n2]", "values: [n9]")
    got = errors(load(repo, {"sc.yaml": MANUAL, "pv.yaml": bad_node, "pvc.yaml": claim(cls="fast")}))
    assert any("pv.yaml:" in e and "node 'n9' is not a Node of this repository" in e for e in got), got
    assert any("pvc.yaml:" in e and "StorageClass 'fast' does not exist" in e for e in got), got
    immediate = LOCAL.replace("WaitForFirstConsumer", "Immediate")
    got = errors(load(repo, {"sc.yaml": immediate, "pv.yaml": "", "pvc.yaml": claim()}))
    assert len(got) == 1 and "node-local volumes are bound where their first pod lands" in got[0], got


def test_the_agent_reclaims_only_claim_directories_nobody_mounts(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("writes under /var/lib/gitorch/volumes: needs root")
    node = Node(tmp_path / "node")
    root = Path("/var/lib/gitorch/volumes") / f"test-{uuid.uuid4().hex[:8]}"
    gone, kept = root / "gone", root / "kept"
    for d in (gone, kept):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "file").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    link = root / "link"
    link.symlink_to(outside)
    try:
        desired_doc = {"pods": [{"name": "p", "volumes": [{"name": "v", "hostPath": str(kept)}]}]}
        (tmp_path / "node").mkdir(exist_ok=True)
        (tmp_path / "node" / "desired.json").write_text(__import__("json").dumps(desired_doc))
        answer = node.run("reclaim", {"paths": [str(gone), str(kept), str(link), "/etc", str(outside)]})
        assert answer["removed"] == [str(gone)] and answer["busy"] == [str(kept)]
        assert sorted(answer["refused"]) == sorted([str(link), "/etc", str(outside)])
        assert not gone.exists() and kept.exists() and outside.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)




def test_sub_path_expr_expands_the_containers_environment(repo: GitRepo) -> None:
    from gitorch.reconcile.podspecs import expand

    assert expand("$(POD_NAME)/logs", {"POD_NAME": "web-0"}) == "web-0/logs"
    assert expand("$$(POD_NAME)-$(UNSET)", {"POD_NAME": "x"}) == "$(POD_NAME)-$(UNSET)"
    per_pod = using("web", 1).replace(
        "mountPath: /data}", "mountPath: /data, subPathExpr: 'pods/$(MY_POD)'}"
    ).replace("command: [sleep, \"600\"],",
              "command: [sleep, \"600\"], env: [{name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}],")
    s = load(repo, {"pvc.yaml": claim(), "web.yaml": per_pod})
    assert errors(s) == []
    (pod,) = plan(s, Observed(1000.0, (), NODES)).pods
    assert pod.spec["containers"][0]["volumeMounts"][0]["subPath"] == f"pods/{pod.name}"
    both = per_pod.replace("subPathExpr:", "subPath: x, subPathExpr:")
    got = errors(load(repo, {"web.yaml": both}))
    assert len(got) == 1 and "subPath and subPathExpr are mutually exclusive" in got[0], got


def test_a_claim_volume_marked_read_only_mounts_read_only_everywhere(repo: GitRepo) -> None:
    ro = using("web", 1).replace("claimName: data}", "claimName: data, readOnly: true}")
    s = load(repo, {"pvc.yaml": claim(), "web.yaml": ro})
    assert errors(s) == []
    (pod,) = plan(s, Observed(1000.0, (), NODES)).pods
    assert pod.spec["containers"][0]["volumeMounts"][0]["readOnly"] is True
    (rw,) = plan(load(repo, {"web.yaml": using("web", 1)}), Observed(1000.0, (), NODES)).pods
    assert rw.spec["containers"][0]["volumeMounts"][0]["readOnly"] is False


@pytest.mark.parametrize("mode", ["ReadWriteMany", "ReadOnlyMany"])
def test_access_modes_across_nodes_are_refused_with_the_hint(repo: GitRepo, mode: str) -> None:
    got = errors(load(repo, {"pvc.yaml": claim(mode=mode)}))
    assert len(got) == 1, got
    assert got[0].startswith("pvc.yaml:5:17: /spec/accessModes/0:"), got
    assert "volumes are node-local, so ReadOnlyMany and ReadWriteMany are not supported" in got[0], got


def test_a_persistent_volumes_host_path_type_is_checked_on_the_node_as_a_pods_own(repo: GitRepo) -> None:
    typed = PV.replace("local: {path: /mnt/disks/a}", "hostPath: {path: /mnt/disks/a, type: Directory}")
    s = load(repo, {"sc.yaml": MANUAL, "pv.yaml": typed, "pvc.yaml": claim(cls="manual"), "web.yaml": using("web", 1)})
    assert errors(s) == [] and not [d for d in s.diagnostics if "hostPath/type" in d.pointer]
    (pod,) = plan(s, Observed(1000.0, (), NODES)).pods
    assert pod.spec["volumes"] == [{"name": "d", "hostPath": "/mnt/disks/a", "hostPathType": "Directory"}]

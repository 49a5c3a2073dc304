"""hostPath.type as the kubelet checks it before a pod starts: the ...OrCreate types make what is
missing, the others only check, and a pod whose check fails stays ContainerCreating with
Kubernetes' FailedMount message until the path is right."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from gitorch.nodes.agent import MountFailed, check_host_path
from gitorch.reconcile.planning import Observed, plan
from tests.gitrepo import GitRepo
from tests.test_agent import Node, node, pod, sleeper  # noqa: F401 (node is a fixture)
from tests.test_planning import NODES, state


def _block_device() -> str | None:
    for name in sorted(os.listdir("/dev")):
        with_path = os.path.join("/dev", name)
        try:
            if stat.S_ISBLK(os.stat(with_path).st_mode):
                return with_path
        except OSError:
            continue
    return None


def test_each_type_accepts_its_kind_of_file_and_refuses_the_others(tmp_path: Path) -> None:
    folder, file, sock = tmp_path / "d", tmp_path / "f", tmp_path / "s"
    folder.mkdir()
    file.write_text("x")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        kinds = {
            "Directory": (folder, "a directory"),
            "File": (file, "a file"),
            "Socket": (sock, "a socket file"),
            "CharDevice": (Path("/dev/null"), "a character device"),
        }
        for kind, (good, what) in kinds.items():
            check_host_path(str(good), kind)
            for other, _ in kinds.values():
                if other != good:
                    with pytest.raises(MountFailed) as err:
                        check_host_path(str(other), kind)
                    assert str(err.value) == f"hostPath type check failed: {other} is not {what}"
        with pytest.raises(MountFailed, match="is not a block device"):
            check_host_path("/dev/null", "BlockDevice")
        block = _block_device()
        if block is not None:
            check_host_path(block, "BlockDevice")
    # Missing: the plain types fail, nothing is made.
    for kind in ("Directory", "File", "Socket", "CharDevice", "BlockDevice"):
        with pytest.raises(MountFailed, match=r"hostPath type check failed: .* is not "):
            check_host_path(str(tmp_path / "missing"), kind)
        assert not (tmp_path / "missing").exists()


def test_the_or_create_types_make_what_is_missing(tmp_path: Path) -> None:
    check_host_path(str(tmp_path / "a" / "b"), "DirectoryOrCreate")
    made = tmp_path / "a" / "b"
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o755 & ~_umask()
    check_host_path(str(tmp_path / "new.sock"), "FileOrCreate")
    assert (tmp_path / "new.sock").is_file() and (tmp_path / "new.sock").read_text() == ""
    # FileOrCreate does not make the file's folder (Kubernetes' documented caveat).
    with pytest.raises(MountFailed, match="No such file or directory"):
        check_host_path(str(tmp_path / "nope" / "f"), "FileOrCreate")
    # An existing path of the wrong kind is refused, not replaced.
    with pytest.raises(MountFailed, match="is not a directory"):
        check_host_path(str(tmp_path / "new.sock"), "DirectoryOrCreate")
    with pytest.raises(MountFailed, match="is not a file"):
        check_host_path(str(made), "FileOrCreate")
    # No type: nothing is checked; a missing folder is made, as before.
    check_host_path(str(tmp_path / "new.sock"), "")
    check_host_path(str(tmp_path / "plain"), "")
    assert (tmp_path / "plain").is_dir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_type_reaches_the_node_only_when_set(repo: GitRepo) -> None:
    body = """\
apiVersion: v1
kind: Pod
metadata: {name: logger, namespace: shop}
spec:
  containers: [{name: c, command: [sleep, "60"], volumeMounts: [{name: sock, mountPath: /run/x.sock}]}]
  volumes: [{name: sock, hostPath: {path: /run/x.sock%s}}]
"""
    typed = plan(state(repo, {"pod.yaml": body % ", type: Socket"}), Observed(1000.0, (), NODES)).pods[0]
    assert typed.spec["volumes"] == [{"name": "sock", "hostPath": "/run/x.sock", "hostPathType": "Socket"}]
    plain = plan(state(repo, {"pod.yaml": body % ""}), Observed(1000.0, (), NODES)).pods[0]
    assert plain.spec["volumes"] == [{"name": "sock", "hostPath": "/run/x.sock"}]


def test_a_pod_whose_host_path_check_fails_waits_in_container_creating(node: Node, tmp_path: Path) -> None:  # noqa: F811
    wanted = tmp_path / "data"
    spec = pod("hp-1", sleeper(), volumes=[{"name": "data", "hostPath": str(wanted), "hostPathType": "Directory"}])
    node.sync(spec)
    message = f'MountVolume.SetUp failed for volume "data" : hostPath type check failed: {wanted} is not a directory'
    p = node.wait_pod("hp-1", lambda p: p["message"] == message, "FailedMount")
    assert p["phase"] == "Pending" and p["containers"][0]["reason"] == "ContainerCreating", p
    assert not wanted.exists()  # Directory checks; it makes nothing
    assert f"FailedMount: {message}" in (node.root / "supervisor.log").read_text()
    wanted.mkdir()  # the path is right now: the next try starts the pod
    node.wait_pod("hp-1", lambda p: p["phase"] == "Running", "Running", timeout=30)

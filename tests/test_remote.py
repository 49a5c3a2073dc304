"""A remote desired-state repository over SSH: mirrored with pygit2, key-file auth, pinned host key."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitorch.model.errors import SourceError
from gitorch.nodes.lab import Lab
from gitorch.nodes.ssh import HostKeyMismatch, check_remote_host
from gitorch.source.git import RemoteAuth, is_remote, mirror
from tests.gitrepo import GitRepo, git
from tests.waiting import wait_until

pytestmark = pytest.mark.lab


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder lab nodes see too (their /tmp is private): the remote's bare repo lives here."""
    path = Path(tempfile.mkdtemp(prefix="gitorch-remote-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _auth(**kw: str) -> RemoteAuth:
    return RemoteAuth(host_check=check_remote_host, **kw)


def test_is_remote() -> None:
    assert is_remote("ssh://git@host/org/repo.git") and is_remote("git@github.com:org/repo.git")
    assert is_remote("https://example.invalid/org/repo.git")
    assert not is_remote("/srv/git/cluster.git") and not is_remote("examples/repo")


def test_ssh_remote_is_mirrored_and_fetched(lab: Lab, shared_dir: Path, tmp_path: Path) -> None:
    bare = shared_dir / "cluster.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=shared_dir)
    work = GitRepo(tmp_path / "work")
    first = work.commit("one", {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n"})
    git("push", "-q", str(bare), "HEAD:main", cwd=work.path)
    node = lab.nodes[0]
    url = f"ssh://root@{node.address}{bare}"
    auth = _auth(ssh_key=str(lab.identity_file), host_key=node.host_key)
    repo = mirror(url, tmp_path / "mirror", auth)
    assert repo.resolve("main").oid == first
    second = work.commit("two", {"ns2.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: two}\n"})
    git("push", "-q", str(bare), "HEAD:main", cwd=work.path)
    assert mirror(url, tmp_path / "mirror", auth).resolve("main").oid == second
    # Trust on first use: recorded, then a changed key is refused.
    known = tmp_path / "known_hosts"
    mirror(url, tmp_path / "m2", _auth(ssh_key=str(lab.identity_file), known_hosts=str(known)))
    assert node.host_key.split()[1] in known.read_text()
    other = lab.nodes[1].host_key
    with pytest.raises(SourceError, match="host key changed"):
        mirror(url, tmp_path / "m3", _auth(ssh_key=str(lab.identity_file), host_key=other))
    with pytest.raises(SourceError, match="cannot fetch"):
        mirror(f"ssh://root@{node.address}/var/tmp/no-such.git", tmp_path / "m4", auth)
    # A key the node does not authorize: said once, plainly (not libgit2's 15 retries).
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(SourceError, match=f"refused the key {stranger}"):
        mirror(url, tmp_path / "m5", _auth(ssh_key=str(stranger), host_key=node.host_key))
    with pytest.raises(SourceError, match="no such key file"):
        mirror(url, tmp_path / "m6", _auth(ssh_key=str(tmp_path / "missing"), host_key=node.host_key))


class SwitchingProxy:
    """A TCP relay that sends its first connection to one SSH server and every later one to
    another: an impostor that shows the real host key once, to whoever looks first."""

    def __init__(self, first: tuple[str, int], then: tuple[str, int]) -> None:
        self.targets = (first, then)
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            target = self.targets[min(self.connections, 1)]
            self.connections += 1
            upstream = socket.create_connection(target, timeout=10)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("trust", ["pinned", "first-use"])
def test_the_host_key_is_checked_on_the_connection_that_fetches(
    lab: Lab, shared_dir: Path, tmp_path: Path, trust: str
) -> None:
    """Issue 18: a check on a connection of its own proves nothing about the next one. Through a
    relay that shows the real node first and an impostor after, the one connection of the first
    fetch gets the real key; the next fetch meets the impostor on the connection it fetches over,
    and is refused."""
    bare = shared_dir / "cluster.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=shared_dir)
    work = GitRepo(tmp_path / "work")
    first = work.commit("one", {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n"})
    git("push", "-q", str(bare), "HEAD:main", cwd=work.path)
    real, impostor = lab.nodes[0], lab.nodes[1]
    proxy = SwitchingProxy((real.address, 22), (impostor.address, 22))
    known = tmp_path / "known_hosts"
    pin = {"host_key": real.host_key} if trust == "pinned" else {"known_hosts": str(known)}
    auth = _auth(ssh_key=str(lab.identity_file), **pin)
    url = f"ssh://root@127.0.0.1:{proxy.port}{bare}"
    try:
        assert mirror(url, tmp_path / "mirror", auth).resolve("main").oid == first
        assert proxy.connections == 1  # no separate connection for the host key
        if trust == "first-use":
            assert known.read_text().split() == [f"[127.0.0.1]:{proxy.port}", *real.host_key.split()[:2]]
        with pytest.raises(SourceError, match="host key changed"):
            mirror(url, tmp_path / "mirror", auth)
        assert proxy.connections == 2
    finally:
        proxy.close()


def test_a_key_of_another_type_is_refused_naming_the_type_to_pin(tmp_path: Path) -> None:
    """libgit2 chooses the host key type (ECDSA before Ed25519) and cannot be asked for the pinned one."""
    ed25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9"
    with pytest.raises(HostKeyMismatch, match="presented a ecdsa-sha2-nistp256 key, the one pinned is ssh-ed25519"):
        check_remote_host("git.example", 22, ecdsa, ed25519, None)
    check_remote_host("git.example", 22, ed25519 + " comment", ed25519, None)  # the pin itself passes
    known = tmp_path / "known_hosts"
    check_remote_host("git.example", 2222, ecdsa, None, str(known))  # trusted on first use
    check_remote_host("git.example", 2222, ecdsa, None, str(known))
    with pytest.raises(HostKeyMismatch, match=f"the one recorded in {known} is ecdsa"):
        check_remote_host("git.example", 2222, ed25519, None, str(known))


def serve_follows(lab: Lab, tmp_path: Path, source: list[str], push: Callable[[str, dict[str, str]], object],
                  env: dict[str, str] | None = None) -> tuple[str, str]:
    """`gitorch serve` on a remote (`source`: --repo URL and its auth options) follows pushes
    made with `push(message, files)`: 1, then 2, then 0 web pods on the lab. Returns its
    stdout and stderr after a clean SIGTERM."""
    from tests.test_reconcile import NAMESPACE, _fix_port, node_pods, web

    push("one", {"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE,
                 "apps.yaml": _fix_port(web(replicas=1))})
    cmd = [sys.executable, "-m", "gitorch", "serve", *source, "--branch", "main", "--poll", "1",
           "--interval", "1", "--listen", "off"]
    proc = subprocess.Popen(cmd, env={**os.environ, "GITORCH_STATE_DIR": str(tmp_path / "state"), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def count() -> int:
            assert proc.poll() is None, "serve exited"
            return len([p for ps in node_pods(lab, "web-").values() for p in ps if p["phase"] == "Running"])

        for want, change in ((1, None), (2, ("two", _fix_port(web(replicas=2)))), (0, ("none", ""))):
            if change is not None:
                push(change[0], {"apps.yaml": change[1]})
            wait_until(f"{want} pod(s) running", count, timeout=60, interval=0.5, accept=lambda n, want=want: n == want)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    return out, err


def test_serve_follows_an_ssh_remote(lab: Lab, shared_dir: Path, tmp_path: Path) -> None:
    bare = shared_dir / "cluster.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=shared_dir)
    work = GitRepo(tmp_path / "work")

    def push(message: str, files: dict[str, str]) -> None:
        work.commit(message, files)
        git("push", "-q", str(bare), "HEAD:main", cwd=work.path)

    node = lab.nodes[0]
    serve_follows(lab, tmp_path, ["--repo", f"ssh://root@{node.address}{bare}", "--ssh-key",
                                  str(lab.identity_file), "--host-key", node.host_key], push)

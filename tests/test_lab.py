"""The local lab: real SSH nodes on this machine, and a clean `down` also after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.nodes import lab as labmod
from gitorch.nodes.lab import (
    Lab,
    LabError,
    LabNode,
    down,
    load,
    node_manifests,
    ssh_command,
    status,
    up,
    write_nodes_file,
)
from gitorch.source.manifests import parse_documents
from tests.lab import LAB_SUBNET, require_lab, ssh_run

REPO_ROOT = Path(__file__).resolve().parents[1]
# Labs made by single tests: away from the session lab's subnet and from the default one.
OTHER_SUBNET = "10.231.8.0/24"


def _fake_lab(tmp_path: Path) -> Lab:
    nodes = tuple(
        LabNode(f"lab-{i}", f"10.231.0.{10 + i}", 22, f"ssh-ed25519 AAAAkey{i}", 0) for i in (1, 2)
    )
    return Lab(tmp_path, "10.231.0.0/24", "glxbr", tmp_path / "id_ed25519", nodes)


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def _netns_pids(namespace: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=True
    )
    return [int(p) for p in out.stdout.split()]


def _running(pid: int) -> bool:
    """Whether pid runs; a zombie has exited and only waits for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _in_fresh_process(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


# ---- without nodes: argument checks and pure outputs --------------------------------------


@pytest.mark.parametrize(
    ("count", "subnet", "message"),
    [
        pytest.param(0, "10.231.0.0/24", "at least 1 node", id="no-nodes"),
        pytest.param(245, "10.231.0.0/24", "room for 244 nodes", id="too-many-for-a-24"),
        pytest.param(3, "10.231.0.0/33", "invalid lab subnet", id="bad-prefix"),
        pytest.param(3, "10.231.0.1/24", "invalid lab subnet", id="host-bits-set"),
        pytest.param(3, "fd00::/64", "must be IPv4", id="ipv6"),
    ],
)
def test_up_rejects_bad_arguments(count: int, subnet: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(LabError, match=message):
        up(count, state_dir=tmp_path, subnet=subnet)


def test_preflight_names_root_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match=r"run as root, e\.g\. sudo gitorch lab up 3"):
        labmod.preflight()


def test_preflight_names_each_missing_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(labmod.shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(labmod, "SSHD", "/nonexistent/sshd")
    with pytest.raises(LabError) as info:
        labmod.preflight()
    message = str(info.value)
    assert "apt-get install -y iproute2" in message
    assert "apt-get install -y openssh-server" in message
    assert "ssh-keygen" in message and "unshare" in message
    assert "\n" not in message


def test_state_dir_with_spaces_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="spaces"):
        load(tmp_path / "my lab")


def test_no_lab_recorded(tmp_path: Path) -> None:
    assert load(tmp_path) is None
    assert status(tmp_path) == []
    assert down(tmp_path / "never-used") == []


def test_ssh_command_passes_an_argv_and_pins_the_host_key(tmp_path: Path) -> None:
    lab = _fake_lab(tmp_path)
    argv = ssh_command(lab, "lab-2", ["echo", "two words", "$HOME"])
    assert argv[0] == "ssh"
    assert "StrictHostKeyChecking=yes" in argv
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in argv
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id_ed25519")
    assert argv[-3:] == ["root@10.231.0.12", "--", "echo 'two words' '$HOME'"]
    assert ssh_command(lab, "lab-1", [])[-1] == "root@10.231.0.11"  # an interactive shell


def test_ssh_command_unknown_node_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="unknown lab node 'lab-9'; known nodes: lab-1, lab-2"):
        ssh_command(_fake_lab(tmp_path), "lab-9", [])


def test_nodes_file_round_trips(tmp_path: Path) -> None:
    lab = _fake_lab(tmp_path)
    path = tmp_path / "out" / "nodes.yaml"
    write_nodes_file(lab, path)
    docs, errors = parse_documents(str(path), path.read_text())
    assert errors == []
    assert [d.body for d in docs] == node_manifests(lab)
    first = docs[0].body
    assert first["kind"] == "Node" and first["apiVersion"] == "gitorch.dev/v1"
    assert first["metadata"]["labels"] == {
        "gitorch.dev/lab": "true",
        "kubernetes.io/hostname": "lab-1",
    }
    assert first["spec"] == {
        "address": "10.231.0.11",
        "port": 22,
        "user": "root",
        "identityFile": str(tmp_path / "id_ed25519"),
        "hostKey": "ssh-ed25519 AAAAkey1",
    }


# ---- on the session lab ---------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize("index", [0, 1, 2], ids=["lab-1", "lab-2", "lab-3"])
def test_node_answers_ssh_with_its_name_and_address(lab: Lab, index: int) -> None:
    node = lab.nodes[index]
    assert ssh_run(lab, node.name, "hostname").stdout.strip() == node.name
    assert f"inet {node.address}/24" in ssh_run(lab, node.name, "ip -4 addr").stdout


@pytest.mark.lab
def test_lab_is_recorded_and_alive(lab: Lab) -> None:
    assert load(lab.state_dir) == lab
    base = LAB_SUBNET.rsplit(".", 1)[0]
    assert [n.address for n in lab.nodes] == [f"{base}.11", f"{base}.12", f"{base}.13"]
    assert status(lab.state_dir) == [
        {"name": n.name, "address": n.address, "pid": n.pid, "alive": True} for n in lab.nodes
    ]


@pytest.mark.lab
def test_node_reaches_another_node_by_name(lab: Lab) -> None:
    server, client = lab.nodes[0], lab.nodes[1]
    ssh_run(
        lab,
        server.name,
        "mkdir -p /tmp/www && echo hello-from-lab-1 > /tmp/www/hello.txt && "
        f"setsid /usr/bin/python3 -m http.server 8080 --bind {server.address} "
        "--directory /tmp/www </dev/null >/tmp/http.log 2>&1 &",
    )
    fetch = textwrap.dedent(
        f"""\
        import time, urllib.request
        url = "http://{server.name}:8080/hello.txt"
        for _ in range(100):
            try:
                print(urllib.request.urlopen(url, timeout=2).read().decode())
                break
            except OSError:
                time.sleep(0.05)
        """
    )
    got = ssh_run(lab, client.name, f"/usr/bin/python3 -c '{fetch}'")
    assert got.stdout.strip() == "hello-from-lab-1"
    # The server's /tmp is its own: the client node does not see the file.
    assert ssh_run(lab, client.name, "test -e /tmp/www/hello.txt", check=False).returncode != 0


@pytest.mark.lab
def test_nodes_have_private_dirs_and_their_own_kernel_settings(lab: Lab) -> None:
    a, b = lab.nodes[0].name, lab.nodes[1].name
    ssh_run(lab, a, "touch /etc/netns/only-on-a /var/lib/containers/only-on-a /run/only-on-a")
    for path in ("/etc/netns/only-on-a", "/var/lib/containers/only-on-a", "/run/only-on-a"):
        assert ssh_run(lab, b, f"test -e {path}", check=False).returncode != 0, path
        assert not Path(path).exists(), path
    assert ssh_run(lab, a, "cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert "options timeout:1 attempts:1" in ssh_run(lab, a, "cat /etc/resolv.conf").stdout
    hosts = ssh_run(lab, a, "cat /etc/hosts").stdout
    assert all(f"{n.address} {n.name}" in hosts for n in lab.nodes)
    # sshd is the node's PID 1, so killing the node's unshare takes everything with it.
    assert "sshd" in ssh_run(lab, a, "cat /proc/1/cmdline").stdout


@pytest.mark.lab
def test_nodes_file_is_written_and_parses(lab: Lab) -> None:
    path = lab.state_dir / "nodes.yaml"
    docs, errors = parse_documents(str(path), path.read_text())
    assert errors == []
    assert [d.body for d in docs] == node_manifests(lab)
    assert [d.body["spec"]["hostKey"] for d in docs] == [n.host_key for n in lab.nodes]


@pytest.mark.lab
def test_up_again_returns_the_running_lab(lab: Lab) -> None:
    again = up(3, state_dir=lab.state_dir, subnet=LAB_SUBNET)
    assert again == lab  # same PIDs: nothing was restarted


@pytest.mark.lab
def test_subnet_in_use_is_refused(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(LabError, match=f"overlaps {LAB_SUBNET.rsplit('.', 1)[0]}.1/24 on interface {lab.bridge}"):
        up(1, state_dir=tmp_path / "second", subnet=LAB_SUBNET)
    assert load(tmp_path / "second") is None


# ---- down -------------------------------------------------------------------------------------


@pytest.fixture
def small_lab(tmp_path: Path) -> Iterator[Path]:
    """The state dir of a 2-node lab, removed after the test whatever it did."""
    require_lab()
    state_dir = tmp_path / "small"
    try:
        yield state_dir
    finally:
        down(state_dir)


def _footprint(state_dir: Path) -> tuple[set[str], set[str], list[int]]:
    """The namespaces, host links and processes a lab consists of, from its record."""
    record = json.loads((state_dir / "lab.json").read_text())
    namespaces = {n["namespace"] for n in record["nodes"]}
    links = {n["veth"] for n in record["nodes"]} | {record["bridge"]}
    pids = [n["pid"] for n in record["nodes"]]
    pids += [p for ns in namespaces for p in _netns_pids(ns)]
    return namespaces, links, pids


def _assert_gone(namespaces: set[str], links: set[str], pids: list[int]) -> None:
    assert not namespaces & _netns_names()
    assert not links & _link_names()
    assert not [p for p in pids if _running(p)]


@pytest.mark.lab
def test_down_removes_everything_and_a_second_down_does_nothing(small_lab: Path) -> None:
    up(2, state_dir=small_lab, subnet=OTHER_SUBNET)
    namespaces, links, pids = _footprint(small_lab)
    assert namespaces <= _netns_names() and links <= _link_names()
    assert len(pids) >= 4  # each node's unshare and its sshd
    lines = down(small_lab)
    assert any(line.startswith("lab-1: killed pid") for line in lines)
    assert any(line.startswith("deleted bridge") for line in lines)
    _assert_gone(namespaces, links, pids)
    assert load(small_lab) is None
    assert down(small_lab) == []


@pytest.mark.lab
def test_down_in_a_fresh_process_after_up_was_killed(small_lab: Path) -> None:
    # `up` runs in a process that is then killed -9, as a crashed CLI would be.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from gitorch.nodes.lab import up; "
            f"up(2, state_dir=Path({str(small_lab)!r}), subnet={OTHER_SUBNET!r}); "
            "print('up', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    namespaces, links, pids = _footprint(small_lab)
    result = _in_fresh_process(
        f"""
        from pathlib import Path
        from gitorch.nodes.lab import down
        print("\\n".join(down(Path({str(small_lab)!r}))))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "deleted namespace" in result.stdout
    _assert_gone(namespaces, links, pids)


@pytest.mark.lab
def test_down_without_the_record_finds_the_lab_by_its_names(small_lab: Path) -> None:
    # As after a crash before the record was first written: only the name prefix is left.
    up(2, state_dir=small_lab, subnet=OTHER_SUBNET)
    namespaces, links, pids = _footprint(small_lab)
    (small_lab / "lab.json").unlink()
    lines = down(small_lab)
    assert any("deleted namespace" in line for line in lines)
    _assert_gone(namespaces, links, pids)

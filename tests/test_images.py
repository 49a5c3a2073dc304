"""Pods with an `image` on real lab nodes: run through podman where a node has it, and
reported unplaceable (NoContainerRuntime) where it has no container runtime."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from gitorch.nodes.client import Fleet, NodeClient
from gitorch.nodes.lab import Lab, down, up
from gitorch.nodes.ssh import Endpoint, Pool, SSHOptions
from tests.images import IMAGE, INDEX_HTML, containers, import_image, remove_image, require_podman
from tests.lab import require_lab, ssh_run
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

# Its own small lab, away from the session lab's subnet: only lab-1 gets a container runtime.
IMAGES_SUBNET = os.environ.get("GITORCH_TEST_IMAGES_SUBNET", "10.231.41.0/24")
WITH_RUNTIME, WITHOUT_RUNTIME = "lab-1", "lab-2"


@pytest.fixture(scope="module")
def images_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    state_dir = tmp_path_factory.mktemp("images-lab")
    try:
        yield up(2, state_dir=state_dir, subnet=IMAGES_SUBNET, runtimes={WITH_RUNTIME})
    finally:
        down(state_dir)


@pytest.fixture(scope="module")
def fleet(images_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    endpoints = [
        Endpoint(n.name, n.address, n.port, "root", str(images_lab.identity_file), n.host_key) for n in images_lab.nodes
    ]
    known_hosts = tmp_path_factory.mktemp("images-ssh") / "known_hosts"
    with Fleet(endpoints, Pool(SSHOptions(known_hosts=known_hosts, connect_timeout=3))) as f:
        yield f


@pytest.fixture(scope="module")
def image(images_lab: Lab) -> Iterator[str]:
    """The busybox image, imported on the node with a runtime; removed with all containers."""
    require_podman()
    import_image(images_lab, WITH_RUNTIME)
    try:
        yield IMAGE
    finally:
        remove_image(images_lab, WITH_RUNTIME)


def _pod(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "default",
        "hash": "h1",
        "restartPolicy": extra.pop("restartPolicy", "Always"),
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": image, "command": command, "args": [], **extra}],
        "volumes": [],
    }


def _pod_status(client: NodeClient, name: str) -> dict[str, Any] | None:
    return next((p for p in client.call("status")["pods"] if p["name"] == name), None)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_image_pod_runs_through_podman_and_is_removed_again(images_lab: Lab, fleet: Fleet, image: str) -> None:
    client = fleet.clients[WITH_RUNTIME]
    node = next(n for n in images_lab.nodes if n.name == WITH_RUNTIME)
    facts = client.call("facts", {"refresh": True})
    assert "podman" in facts["runtimes"], facts["runtimeDetails"]
    web = _pod(
        "web",
        image,
        ["sh", "-c", "echo started with GREETING=$GREETING; exec httpd -f -p 8080 -h /www"],
        env=[{"name": "GREETING", "value": "hello-from-the-pod-spec"}],
    )
    try:
        assert client.call("sync", {"pods": [web]})["ok"]
        pod = wait_until("pod web Running", lambda: _pod_status(client, "web"), timeout=20, interval=0.1,
                         accept=lambda p: p is not None and p["phase"] == "Running")
        ctr = pod["containers"][0]
        assert (ctr["runtime"], ctr["image"], ctr["state"]) == ("podman", image, "running")
        # --network host: the container serves on the node's own address.
        assert wait_until("httpd answering", lambda: _get(f"http://{node.address}:8080/"), timeout=20,
                          interval=0.1) == INDEX_HTML
        log = wait_until("the container's output", lambda: client.call("logs", {"pod": "web", "tail": -1})["log"],
                         timeout=20, interval=0.1)
        assert "started with GREETING=hello-from-the-pod-spec" in log
        assert containers(images_lab, WITH_RUNTIME) == ["gitorch-default_web-main"]

        client.call("sync", {"pods": []})
        wait_until("pod web removed", lambda: _pod_status(client, "web"), timeout=20, interval=0.1,
                   accept=lambda got: got is None)
        wait_until("container gone from podman ps -a", lambda: containers(images_lab, WITH_RUNTIME), timeout=20,
                   interval=0.1, accept=lambda got: got == [])
        assert _get(f"http://{node.address}:8080/") is None
    finally:
        client.call("sync", {"pods": []})


def test_image_that_is_not_on_the_node_is_not_pulled(images_lab: Lab, fleet: Fleet, image: str) -> None:
    client = fleet.clients[WITH_RUNTIME]
    missing = "localhost/gitorch-not-imported:1"
    try:
        client.call("sync", {"pods": [_pod("nopull", missing, ["true"], restartPolicy="Never")]})
        pod = wait_until("pod nopull Failed", lambda: _pod_status(client, "nopull"), timeout=20, interval=0.1,
                         accept=lambda p: p is not None and p["phase"] == "Failed")
        assert pod["containers"][0]["exitCode"] == 125  # podman's own error, not the container's
        log = client.call("logs", {"pod": "nopull", "tail": -1})["log"]
        assert missing in log and "image not known" in log, log
    finally:
        client.call("sync", {"pods": []})
    assert missing not in ssh_run(images_lab, WITH_RUNTIME, "podman images --format '{{.Repository}}'").stdout


def test_image_pod_on_a_node_without_a_runtime_is_unplaceable(images_lab: Lab, fleet: Fleet) -> None:
    client = fleet.clients[WITHOUT_RUNTIME]
    facts = client.call("facts", {"refresh": True})
    assert facts["runtimes"] == ["process"]
    assert facts["runtimeDetails"]["podman"] == {"available": False, "path": None, "message": "podman not installed"}
    assert ssh_run(images_lab, WITHOUT_RUNTIME, "command -v podman docker", check=False).stdout == ""
    try:
        client.call("sync", {"pods": [_pod("needs-image", IMAGE, ["sleep", "600"])]})
        pod = wait_until("pod Failed", lambda: _pod_status(client, "needs-image"), timeout=20, interval=0.1,
                         accept=lambda p: p is not None and p["phase"] == "Failed")
        assert pod["reason"] == "NoContainerRuntime"
        assert pod["containers"][0]["reason"] == "NoContainerRuntime"
        message = pod["message"]
        assert IMAGE in message and "no container runtime (podman or docker)" in message, message
        assert "podman: podman not installed" in message, message
    finally:
        client.call("sync", {"pods": []})

"""Pods with an `image` on real lab nodes: run through podman where a node has it, and
reported unplaceable (NoContainerRuntime) where it has no container runtime."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes.client import Fleet, NodeClient
from gitorch.nodes.lab import Lab, down, up
from gitorch.nodes.ssh import Endpoint, Pool, SSHOptions
from tests.images import IMAGE, INDEX_HTML, containers, import_image, podman, remove_image, require_podman
from tests.lab import require_lab, ssh_run
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

# Its own small lab, away from the session lab's subnet: only lab-1 gets a container runtime.
IMAGES_SUBNET = os.environ.get("GITORCH_TEST_IMAGES_SUBNET", "10.231.40.0/24")
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
        assert client.call("sync", {"pods": [web], "metrics": {"intervalSeconds": 1}})["ok"]
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
        # Resource metrics (`gitorch top`, the autoscalers) read podman's own cgroup for the container.
        def sampled() -> list[dict[str, Any]]:
            doc = client.call("status").get("metrics") or {}
            return [c for p in doc.get("pods") or [] if p.get("name") == "web" for c in p.get("containers") or []]

        (usage,) = wait_until("the container's CPU and memory", sampled, timeout=30, interval=0.5,
                              accept=lambda got: len(got) == 1 and isinstance(got[0]["cpuMillis"], int))
        assert isinstance(usage["memoryBytes"], int) and usage["memoryBytes"] > 0, usage
        assert containers(images_lab, WITH_RUNTIME) == ["gitorch-default_web-main"]

        client.call("sync", {"pods": []})
        wait_until("pod web removed", lambda: _pod_status(client, "web"), timeout=20, interval=0.1,
                   accept=lambda got: got is None)
        wait_until("container gone from podman ps -a", lambda: containers(images_lab, WITH_RUNTIME), timeout=20,
                   interval=0.1, accept=lambda got: got == [])
        assert _get(f"http://{node.address}:8080/") is None
    finally:
        client.call("sync", {"pods": []})


def test_an_image_that_cannot_be_pulled_fails_with_err_image_pull(images_lab: Lab, fleet: Fleet, image: str) -> None:
    # No imagePullPolicy: IfNotPresent. The image is not on the node and no registry serves it.
    client = fleet.clients[WITH_RUNTIME]
    missing = "localhost/gitorch-not-imported:1"
    try:
        client.call("sync", {"pods": [_pod("nopull", missing, ["true"], restartPolicy="Never")]})
        pod = wait_until("pod nopull Failed", lambda: _pod_status(client, "nopull"), timeout=30, interval=0.1,
                         accept=lambda p: p is not None and p["phase"] == "Failed")
        ctr = pod["containers"][0]
        assert ctr["exitCode"] == 125  # podman's own error, not the container's
        assert ctr["reason"] == "ErrImagePull" and missing in ctr["message"], ctr
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


# --- imagePullPolicy against a real registry (Debian's docker-registry, the CNCF distribution) ----


@pytest.fixture(scope="module")
def registry(images_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry on the lab's host address, plain HTTP, marked insecure for podman (in /etc,
    which the lab's nodes share with the host); yields its host:port."""
    require_podman()
    binary = shutil.which("docker-registry")
    if binary is None:
        reason = "docker-registry is not installed (apt-get install -y docker-registry)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must not skip image tests)", pytrace=False)
        pytest.skip(reason)
    host = str(ipaddress.ip_network(images_lab.subnet).network_address + 1)
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    where = f"{host}:{port}"
    root = tmp_path_factory.mktemp("registry")
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f"http: {{addr: '{where}'}}\n"
    )
    conf_dir = Path("/etc/containers/registries.conf.d")
    conf_dir.mkdir(parents=True, exist_ok=True)
    insecure = conf_dir / f"50-gitorch-test-{port}.conf"
    insecure.write_text(f'[[registry]]\nlocation = "{where}"\ninsecure = true\n')
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until("the registry answering", lambda: _get(f"http://{where}/v2/"), timeout=20, interval=0.1,
                   accept=lambda body: body is not None)
        yield where
    finally:
        proc.terminate()
        proc.wait(10)
        insecure.unlink(missing_ok=True)


def _push(lab: Lab, ref: str, index_html: str) -> None:
    """Build the busybox image with `index_html` on the node, push it as `ref`, and remove it
    from the node again, so the node has it only by pulling."""
    local = "localhost/gitorch-push:tmp"
    import_image(lab, WITH_RUNTIME, local, index_html)
    podman(lab, WITH_RUNTIME, "push", "--quiet", local, ref)
    podman(lab, WITH_RUNTIME, "rmi", "--force", local)


def _run_once(client: NodeClient, name: str, image: str, policy: str | None) -> dict[str, Any]:
    extra = {"imagePullPolicy": policy} if policy is not None else {}
    client.call("sync", {"pods": [_pod(name, image, ["cat", "/www/index.html"], restartPolicy="Never", **extra)]})
    return wait_until(f"pod {name} finished", lambda: _pod_status(client, name), timeout=60, interval=0.2,
                      accept=lambda p: p is not None and p["phase"] in ("Succeeded", "Failed"))


def test_image_pull_policy_always_pulls_ifnotpresent_keeps_and_never_refuses(
    images_lab: Lab, fleet: Fleet, image: str, registry: str
) -> None:
    client = fleet.clients[WITH_RUNTIME]
    ref = f"{registry}/gitorch/pulled:1"
    images = lambda: ssh_run(images_lab, WITH_RUNTIME, "podman images --format '{{.Repository}}:{{.Tag}}'").stdout  # noqa: E731
    try:
        # Never, and the image is not on the node: it fails at once, without asking the registry.
        _push(images_lab, ref, "first\n")
        never = _run_once(client, "never", ref, "Never")
        assert (never["phase"], never["containers"][0]["reason"]) == ("Failed", "ErrImageNeverPull"), never
        assert ref not in images()
        # IfNotPresent pulls what is missing.
        first = _run_once(client, "ifnp", ref, "IfNotPresent")
        assert first["phase"] == "Succeeded", first
        assert client.call("logs", {"pod": "ifnp", "tail": -1})["log"] == "first\n"
        assert ref in images()
        # The tag moves in the registry: IfNotPresent runs what the node has, Always pulls again.
        _push(images_lab, ref, "second\n")
        client.call("sync", {"pods": []})
        wait_until("pods gone", lambda: client.call("status")["pods"], timeout=20, interval=0.1,
                   accept=lambda pods: pods == [])
        _run_once(client, "ifnp2", ref, "IfNotPresent")
        assert client.call("logs", {"pod": "ifnp2", "tail": -1})["log"] == "first\n"
        _run_once(client, "always", ref, "Always")
        assert client.call("logs", {"pod": "always", "tail": -1})["log"].endswith("second\n")
        # No policy on a :latest image: Kubernetes' default is Always, so the moved tag is pulled.
        latest = f"{registry}/gitorch/pulled:latest"
        _push(images_lab, latest, "third\n")
        _run_once(client, "latest1", latest, None)
        _push(images_lab, latest, "fourth\n")
        _run_once(client, "latest2", latest, None)
        assert client.call("logs", {"pod": "latest2", "tail": -1})["log"].endswith("fourth\n")
        # Always, and the registry has no such image: ErrImagePull with the registry's words.
        missing = _run_once(client, "absent", f"{registry}/gitorch/absent:1", "Always")
        ctr = missing["containers"][0]
        assert (missing["phase"], ctr["reason"]) == ("Failed", "ErrImagePull"), missing
        assert "absent" in ctr["message"], ctr
    finally:
        client.call("sync", {"pods": []})
        podman(images_lab, WITH_RUNTIME, "rmi", "--force", "--ignore", ref, f"{registry}/gitorch/pulled:latest",
               check=False)


def test_an_image_pod_gets_its_security_context_as_podman_flags(images_lab: Lab, fleet: Fleet, image: str) -> None:
    """securityContext through podman's own flags (issue 12): --user, --group-add, --read-only,
    --cap-drop/--cap-add, --security-opt no-new-privileges, read back from the container's
    /proc/self/status; a ServiceAccount's uid comes with the sync, as the controller sends it."""
    client = fleet.clients[WITH_RUNTIME]
    security = {"account": "app", "groups": [3456], "readOnlyRootFilesystem": True, "noNewPrivs": True,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
    pod = _pod("sec", image, ["sh", "-c", "cat /proc/self/status; (echo x > /probe) 2>/dev/null || echo "
                              "root-read-only; exec sleep 600"], security=security)
    try:
        assert client.call("sync", {"pods": [pod], "accounts": {"default/app": 200123}})["ok"]
        log = wait_until("the container's status", lambda: client.call("logs", {"pod": "sec", "tail": -1})["log"],
                         timeout=30, interval=0.2, accept=lambda text: "root-read-only" in text)
        fields = {k: v.split() for k, v in (line.split(":", 1) for line in log.splitlines() if ":" in line)}
        assert fields["Uid"] == ["200123"] * 4 and fields["Gid"] == ["200123"] * 4
        assert "3456" in fields["Groups"], fields["Groups"]
        # podman makes an added capability ambient for a non-root user: effective, unlike the CRI runtimes.
        assert int(fields["CapBnd"][0], 16) == int(fields["CapEff"][0], 16) == 1 << 10
        assert fields["NoNewPrivs"] == ["1"]
    finally:
        client.call("sync", {"pods": []})

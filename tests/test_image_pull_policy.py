"""imagePullPolicy left out: the API server's default, which the node agent applies (Always for
an image tagged :latest or not tagged, else IfNotPresent), as podman's --pull value."""

from __future__ import annotations

import pytest

from gitorch.nodes.agent import ContainerSpec, default_pull_policy


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("busybox", "Always"),
        ("busybox:latest", "Always"),
        ("docker.io/library/nginx", "Always"),
        ("registry.example:5000/team/app", "Always"),  # the registry's port is not a tag
        ("registry.example:5000/team/app:latest", "Always"),
        ("nginx:1.27", "IfNotPresent"),
        ("registry.example:5000/team/app:v2", "IfNotPresent"),
        ("nginx@sha256:" + "a" * 64, "IfNotPresent"),  # by digest: never changes
        ("nginx:latest@sha256:" + "a" * 64, "IfNotPresent"),
        (None, "IfNotPresent"),  # a process container: nothing to pull
    ],
)
def test_default_pull_policy_is_kubernetes(image: str | None, policy: str) -> None:
    assert default_pull_policy(image) == policy


def _container(image: str, **extra: str) -> ContainerSpec:
    raw = {"name": "main", "image": image, "command": ["sleep", "1"], "args": [], "env": [], **extra}
    return ContainerSpec.parse(raw, "pod.containers[0]", False)


def test_the_runtime_is_told_to_pull_as_the_default_or_the_given_policy() -> None:
    assert _container("localhost/app:latest").pull == "always"
    assert _container("localhost/app").pull == "always"
    assert _container("localhost/app:1").pull == "missing"
    # A policy given wins over the default, both ways.
    assert _container("localhost/app:latest", imagePullPolicy="IfNotPresent").pull == "missing"
    assert _container("localhost/app:1", imagePullPolicy="Always").pull == "always"
    assert _container("localhost/app:latest", imagePullPolicy="Never").pull == "never"

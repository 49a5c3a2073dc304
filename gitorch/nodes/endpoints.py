"""Endpoints: how to reach each Node of a desired state, with the Cluster's SSH defaults.

Purely computational, no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitorch.model.objects import DesiredState
from gitorch.nodes.ssh import Endpoint, SSHOptions


@dataclass(frozen=True)
class SSHDefaults:
    user: str = "root"
    port: int = 22
    identity_file: str | None = None
    connect_timeout: float = 10.0
    command_timeout: float = 300.0
    max_parallel: int = 16


def ssh_defaults(state: DesiredState) -> SSHDefaults:
    clusters = state.of_kind("Cluster")
    ssh: dict[str, Any] = (clusters[0].spec.get("ssh") or {}) if clusters else {}
    return SSHDefaults(
        user=str(ssh.get("user", "root")),
        port=int(ssh.get("port", 22)),
        identity_file=ssh.get("identityFile"),
        connect_timeout=float(ssh.get("connectTimeoutSeconds", 10)),
        command_timeout=float(ssh.get("commandTimeoutSeconds", 300)),
        max_parallel=int(ssh.get("maxParallel", 16)),
    )


def endpoints(state: DesiredState) -> list[Endpoint]:
    """One Endpoint per Node, sorted by name; fields a Node leaves out come from the Cluster."""
    d = ssh_defaults(state)
    out = []
    for node in state.of_kind("Node"):
        spec = node.spec
        identity = spec.get("identityFile") or d.identity_file
        out.append(
            Endpoint(
                name=node.key.name,
                host=str(spec.get("address")),
                port=int(spec.get("port", d.port)),
                user=str(spec.get("user", d.user)),
                identity_file=str(Path(identity).expanduser()) if identity else None,
                host_key=spec.get("hostKey"),
            )
        )
    return out


def ssh_options(state: DesiredState, known_hosts: Path) -> SSHOptions:
    d = ssh_defaults(state)
    return SSHOptions(
        connect_timeout=d.connect_timeout,
        command_timeout=d.command_timeout,
        max_connecting=d.max_parallel,
        known_hosts=known_hosts,
    )

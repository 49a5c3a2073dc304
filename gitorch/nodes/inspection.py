"""Inspection: the facts every node's agent reports, gathered in parallel (`gitorch nodes`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from gitorch.model.objects import DesiredState
from gitorch.model.quantities import format_bytes
from gitorch.nodes.client import Fleet, NodeClient, Outcome
from gitorch.nodes.endpoints import endpoints, ssh_options
from gitorch.nodes.ssh import Pool

Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


def _facts(client: NodeClient) -> dict[str, Any]:
    """A node's facts on a new connection: what its supervisor published (one `cat`, no Python
    start on the node), else the agent's answer."""
    timeout = client.conn.options.command_timeout
    return client.published_facts(timeout) or client.call("facts", timeout=timeout)


def facts_of(client: NodeClient) -> dict[str, Any]:
    """What `gitorch nodes` asks each agent through a running serve's open connections (there a
    request to the agent process already running costs a round trip)."""
    return client.call("facts", timeout=client.conn.options.command_timeout)


def node_facts(
    state: DesiredState,
    known_hosts: Path,
    *,
    timeout: float,
    progress: Progress | None = None,
    answered: Mapping[str, Outcome[Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per Node: reachable or the error naming it, and its facts (stable keys).
    Nodes in `answered` (a running serve asked them over its own connections) are not
    connected to again."""
    eps = endpoints(state)
    if not eps:
        return []
    results: dict[str, Outcome[Any]] = {e.name: answered[e.name] for e in eps if answered and e.name in answered}
    rest = [e for e in eps if e.name not in results]
    if rest:
        options = ssh_options(state, known_hosts)
        with Fleet(rest, Pool(options)) as fleet:
            if progress is not None:
                with progress("asking nodes", len(rest)) as advance:
                    results.update(fleet.fan_out(_facts, timeout=timeout, progress=advance))
            else:
                results.update(fleet.fan_out(_facts, timeout=timeout))
    rows = []
    for ep in eps:
        outcome = results[ep.name]
        facts = outcome.value or {}
        memory = facts.get("memory") or {}
        rows.append(
            {
                "name": ep.name,
                "address": f"{ep.host}:{ep.port}",
                "reachable": outcome.ok,
                "error": outcome.error,
                "agentVersion": facts.get("agentVersion"),
                "hostname": facts.get("hostname"),
                "os": facts.get("os"),
                "kernel": facts.get("kernel"),
                "cpus": facts.get("cpus"),
                "memoryTotalBytes": memory.get("totalBytes"),
                "memoryAvailableBytes": memory.get("availableBytes"),
                "pods": len(facts.get("pods") or {}),
                "runtimes": facts.get("runtimes") or [],
                "cgroup": (facts.get("cgroup") or {}).get("version"),
                "seconds": round(outcome.seconds, 3),
                "via": "serve" if answered and ep.name in answered else "ssh",
            }
        )
    return rows


def table_row(r: dict[str, Any]) -> list[Any]:
    mem = ""
    if r["memoryTotalBytes"]:
        mem = f"{format_bytes(int(r['memoryAvailableBytes'] or 0))}/{format_bytes(int(r['memoryTotalBytes']))}"
    return [
        r["name"],
        r["address"],
        "yes" if r["reachable"] else "NO",
        r["agentVersion"] or "",
        r["cpus"] if r["cpus"] is not None else "",
        mem,
        r["pods"] if r["reachable"] else "",
        ",".join(r["runtimes"]),
        r["error"],
    ]

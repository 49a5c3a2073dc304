"""Helpers for tests that run on real lab nodes (see gitorch.nodes.lab)."""

from __future__ import annotations

import os
import subprocess

import pytest

from gitorch.nodes.lab import Lab, LabError, preflight, ssh_command

SSH_TIMEOUT = 30.0
# The session lab's subnet: not the default 10.231.0.0/24, so a user's own lab is left alone.
LAB_SUBNET = os.environ.get("GITORCH_TEST_SUBNET", "10.231.7.0/24")


def require_lab() -> None:
    """Skip the calling test when this machine cannot run a lab; in CI, fail instead."""
    try:
        preflight()
    except LabError as exc:
        reason = f"lab nodes unavailable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must not skip lab tests)", pytrace=False)
        pytest.skip(reason)


def ssh_run(
    lab: Lab, node: str, script: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a shell script on a node with the OpenSSH client; fail the test on error."""
    proc = subprocess.run(
        ssh_command(lab, node, ["sh", "-c", script]),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{node}: {script!r} exited {proc.returncode}: {proc.stderr.strip()}", pytrace=False
        )
    return proc

"""Git hooks: refuse pushes whose desired state does not validate (pre-receive)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from gitorch.errors import GitorchError

MARKER = "# installed by gitorch"


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str


def parse_updates(text: str) -> list[RefUpdate]:
    """Lines of `<old> <new> <ref>` as git feeds pre-receive and post-receive."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append(RefUpdate(*parts))
    return out


def _script(hook: str, branch: str, path: str) -> str:
    args = ["-m", "gitorch", "hook", "run", hook, "--branch", branch]
    if path:
        args += ["--path", path]
    return (
        "#!/bin/sh\n"
        f"{MARKER}: `gitorch hook install` wrote this; it checks pushes to {branch!r}.\n"
        f"exec {shlex.quote(sys.executable)} {' '.join(shlex.quote(a) for a in args)}\n"
    )


def install(repo: Path, *, branch: str, path: str = "", force: bool = False) -> list[Path]:
    """Write the pre-receive hook into a (bare) repository; return the files written."""
    repo = repo.resolve()
    git_dir = repo if (repo / "HEAD").is_file() and (repo / "objects").is_dir() else repo / ".git"
    if not (git_dir / "HEAD").is_file():
        raise GitorchError(f"{repo}: not a Git repository (expected a bare repo such as /srv/git/cluster.git)")
    hooks = git_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    written = []
    for hook in ("pre-receive",):
        target = hooks / hook
        if target.exists() and MARKER not in target.read_text(errors="replace") and not force:
            raise GitorchError(
                f"{target}: a {hook} hook already exists and was not written by gitorch; "
                "merge it by hand or pass --force to replace it"
            )
        tmp = target.with_suffix(".gitorch-tmp")
        tmp.write_text(_script(hook, branch, path))
        os.chmod(tmp, 0o755)
        tmp.replace(target)
        written.append(target)
    return written

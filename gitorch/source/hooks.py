"""Git hooks: refuse pushes whose desired state does not validate (pre-receive), and wake
the controller after a push to the watched branch (post-receive)."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from gitorch.model.errors import GitorchError

log = logging.getLogger(__name__)

MARKER = "# installed by gitorch"
DEFAULT_NOTIFY = "http://127.0.0.1:8090/hooks/wake"

# Runs in post-receive: the push is already done, so nothing here may fail it; a controller
# that is down only means the next timer pass deploys the push.
_POKE = """\
import sys, urllib.request
branch, url = "refs/heads/" + sys.argv[1], sys.argv[2]
moved = [l.split() for l in sys.stdin if len(l.split()) == 3]
if any(ref == branch and set(new) != {"0"} for _, new, ref in moved):
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=3).read()
        print("gitorch: controller notified")
    except Exception as exc:
        print("gitorch: could not notify the controller at %s (%s); it deploys on its next pass" % (url, exc))
"""


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


def _post_receive(branch: str, notify: str) -> str:
    return (
        "#!/bin/sh\n"
        f"{MARKER}: `gitorch hook install` wrote this; it wakes the controller after pushes to {branch!r}.\n"
        f"{shlex.quote(sys.executable)} -c {shlex.quote(_POKE)} {shlex.quote(branch)} {shlex.quote(notify)} || true\n"
        "exit 0\n"
    )


def install(
    repo: Path, *, branch: str, path: str = "", force: bool = False, notify: str = DEFAULT_NOTIFY
) -> list[Path]:
    """Write the pre-receive and post-receive hooks into a (bare) repository; return the files written."""
    repo = repo.resolve()
    git_dir = repo if (repo / "HEAD").is_file() and (repo / "objects").is_dir() else repo / ".git"
    if not (git_dir / "HEAD").is_file():
        raise GitorchError(f"{repo}: not a Git repository (expected a bare repo such as /srv/git/cluster.git)")
    hooks = git_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    written = []
    scripts = {"pre-receive": _script("pre-receive", branch, path), "post-receive": _post_receive(branch, notify)}
    for hook in scripts:
        target = hooks / hook
        if target.exists() and MARKER not in target.read_text(errors="replace") and not force:
            raise GitorchError(
                f"{target}: a {hook} hook already exists and was not written by gitorch; "
                "merge it by hand or pass --force to replace it"
            )
    for hook, text in scripts.items():
        target = hooks / hook
        tmp = target.with_suffix(".gitorch-tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o755)
        tmp.replace(target)
        written.append(target)
    return written


def notify(url: str, timeout: float = 3.0) -> bool:
    """POST to a controller's /hooks/wake; False (with a warning) when nobody answers."""
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=timeout).read()
        return True
    except Exception as exc:  # the commit is made; the next timer pass deploys it
        log.warning(f"could not notify the controller at {url} ({exc}); it deploys on its next pass")
        return False

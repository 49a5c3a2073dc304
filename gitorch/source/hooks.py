"""Git hooks: refuse pushes whose desired state does not validate (pre-receive), and wake
the controller after a push to the watched branch (post-receive)."""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gitorch.model.errors import GitorchError

log = logging.getLogger(__name__)

MARKER = "# installed by gitorch"
DEFAULT_NOTIFY = "http://127.0.0.1:8090/hooks/wake"
TOKEN_ENV = "GITORCH_WAKE_TOKEN"
"""The environment variable that, when set, holds the wake token (instead of the state dir's file)."""
TOKEN_FILE = "wake-token"

# Runs in post-receive: the push is already done, so nothing here may fail it; a controller
# that is down only means the next timer pass deploys the push. The token comes through the
# environment (readable by its owner only), never the command line; it is an unredirected
# header, so a redirect never carries it elsewhere.
_POKE = """\
import os, sys, urllib.error, urllib.request
branch, url = "refs/heads/" + sys.argv[1], sys.argv[2]
moved = [l.split() for l in sys.stdin if len(l.split()) == 3]
if any(ref == branch and set(new) != {"0"} for _, new, ref in moved):
    req = urllib.request.Request(url, data=b"", method="POST")
    req.add_unredirected_header("Authorization", "Bearer " + os.environ.get("GITORCH_HOOK_TOKEN", ""))
    try:
        urllib.request.urlopen(req, timeout=3).read()
        print("gitorch: controller notified")
    except urllib.error.HTTPError as exc:
        why = "it refused this hook's wake token: run `gitorch hook install` again" if exc.code == 401 else exc
        print("gitorch: could not notify the controller at %s (%s); it deploys on its next pass" % (url, why))
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


def _script(hook: str, branch: str, path: str, trust_keys: Sequence[str] = ()) -> str:
    args = ["-m", "gitorch", "hook", "run", hook, "--branch", branch]
    if path:
        args += ["--path", path]
    for key in trust_keys:
        args += ["--trust-key", key]
    return (
        "#!/bin/sh\n"
        f"{MARKER}: `gitorch hook install` wrote this; it checks pushes to {branch!r}.\n"
        f"exec {shlex.quote(sys.executable)} {' '.join(shlex.quote(a) for a in args)}\n"
    )


def _post_receive(branch: str, notify: str, token: str) -> str:
    return (
        "#!/bin/sh\n"
        f"{MARKER}: `gitorch hook install` wrote this; it wakes the controller after pushes to {branch!r}.\n"
        "# It holds the controller's wake token: keep it readable by its owner only.\n"
        f"GITORCH_HOOK_TOKEN={shlex.quote(token)} "
        f"{shlex.quote(sys.executable)} -c {shlex.quote(_POKE)} {shlex.quote(branch)} {shlex.quote(notify)} || true\n"
        "exit 0\n"
    )


def _check_token(token: str, where: str) -> str:
    token = token.strip()
    if not 16 <= len(token) <= 256 or not all(33 <= ord(c) < 127 for c in token):
        raise GitorchError(f"{where}: a wake token is 16 to 256 printable ASCII characters without spaces")
    return token


def wake_token(state_dir: Path, env: str | None = None) -> str:
    """The token `/hooks/wake` asks for: the variable `env` names when given (it must be set),
    else $GITORCH_WAKE_TOKEN when set, else the state dir's `wake-token` file, made (0600) on
    first use. `serve`, `hook install` and `rollback --notify` all read it from here."""
    name = env or TOKEN_ENV
    value = os.environ.get(name)
    if value:
        return _check_token(value, f"${name}")
    if env:
        raise GitorchError(f"--wake-token-env {env}: the variable is not set or empty")
    path = state_dir / TOKEN_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    try:
        return _check_token(path.read_text(), str(path))
    except OSError as exc:
        raise GitorchError(f"{path}: cannot read the wake token ({exc.strerror or exc})") from None


def install(
    repo: Path, *, branch: str, token: str, path: str = "", force: bool = False, notify: str = DEFAULT_NOTIFY,
    trust_keys: Sequence[str] = (),
) -> list[Path]:
    """Write the pre-receive and post-receive hooks into a (bare) repository; return the files written.
    The post-receive hook holds `token` (see `wake_token`), so it is readable by its owner only.
    `trust_keys` (see signatures.trust_keys) must sign the branch's first commit under git.verifyCommits."""
    repo = repo.resolve()
    git_dir = repo if (repo / "HEAD").is_file() and (repo / "objects").is_dir() else repo / ".git"
    if not (git_dir / "HEAD").is_file():
        raise GitorchError(f"{repo}: not a Git repository (expected a bare repo such as /srv/git/cluster.git)")
    hooks = git_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    written = []
    scripts = {
        "pre-receive": _script("pre-receive", branch, path, trust_keys),
        "post-receive": _post_receive(branch, notify, token),
    }
    modes = {"pre-receive": 0o755, "post-receive": 0o700}
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
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes[hook])  # never readable by others, even briefly
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, modes[hook])  # whatever the umask
        tmp.replace(target)
        written.append(target)
    return written


def notify(url: str, token: str, timeout: float = 3.0) -> bool:
    """POST to a controller's /hooks/wake with the wake token; False (with a warning) when it does not answer."""
    import urllib.request

    req = urllib.request.Request(url, data=b"", method="POST")
    req.add_unredirected_header("Authorization", f"Bearer {token}")  # never carried across a redirect
    try:
        urllib.request.urlopen(req, timeout=timeout).read()
        return True
    except Exception as exc:  # the commit is made; the next timer pass deploys it
        code = getattr(exc, "code", None)
        why = "it refused the wake token: see `serve --wake-token-env`" if code == 401 else str(exc)
        log.warning(f"could not notify the controller at {url} ({why}); it deploys on its next pass")
        return False

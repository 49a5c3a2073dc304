"""Source: read the manifests of one commit of a Git repository (never the work tree).

The only module that imports pygit2.
"""

from __future__ import annotations

import base64
import ctypes
import fnmatch
import functools
import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pygit2

from gitorch.model.diagnostics import Diagnostic, Severity
from gitorch.model.errors import GitorchError, SourceError
from gitorch.model.revisions import Revision
from gitorch.source.manifests import LIMITS, load_plain

CONFIG_FILE = "gitorch.yaml"
MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class TreeLimits:
    """Bounds on the walk of a commit's tree (see README, Validation); each one exceeded is an
    error naming the path, so a commit is never applied with some of its manifests unread."""

    depth: int = 32
    """Folders nested inside the manifests root."""
    entries: int = 100_000
    """Files and folders visited under the root (folders that `gitorch.yaml` excludes are not visited)."""
    file_bytes: int = LIMITS.file_bytes
    """Largest manifest file; a larger one is not even read."""
    total_bytes: int = 256 * 2**20
    """All manifest files of the commit together."""
    tree_bytes: int = 16 * 2**20
    """One Git tree object (a folder's listing), about 300,000 entries."""


TREE_LIMITS = TreeLimits()


@dataclass(frozen=True)
class SourceFile:
    """One manifest file of a commit; `blob` is its content hash, the key of what it parses to
    (validation.FILE_CACHE). Its bytes are `content`, or read from Git when first asked for, so
    a load that finds every blob in the cache reads none."""

    path: str
    blob: str
    content: bytes | None = field(default=None, repr=False, compare=False)
    reader: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        return self.reader() if self.reader is not None else b""


@dataclass(frozen=True)
class Snapshot:
    revision: Revision
    root: str  # the folder of the repository that holds the desired state ("" = top)
    files: tuple[SourceFile, ...]
    diagnostics: tuple[Diagnostic, ...] = ()  # what the tree walk refused or skipped
    others: tuple[SourceFile, ...] = ()
    """The other files (not .yaml/.yml): read only when a kustomization names them (a
    `Kustomization` file, a generator's files and env files)."""


@dataclass
class Repository:
    """A Git repository opened for reading, and where inside it the desired state lives."""

    path: Path
    root: str
    _repo: pygit2.Repository = field(repr=False)

    @property
    def is_bare(self) -> bool:
        return bool(self._repo.is_bare)

    @property
    def git_dir(self) -> Path:
        return Path(self._repo.path)

    def head_branch(self) -> str | None:
        """The branch HEAD names (None: a detached HEAD)."""
        try:
            name = self._repo.references["HEAD"].target
        except (KeyError, pygit2.GitError):
            return None
        return name.removeprefix("refs/heads/") if isinstance(name, str) and name.startswith("refs/heads/") else None

    def resolve(self, rev: str | None) -> Revision:
        """Resolve any revision expression (branch, tag, `HEAD~2`, an oid) to its commit."""
        commit = self._commit(rev)
        return _revision(commit)

    def _commit(self, rev: str | None) -> pygit2.Commit:
        spec = rev or "HEAD"
        try:
            obj = self._repo.revparse_single(spec)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            if rev is None and self._repo.head_is_unborn:
                raise SourceError(
                    f"{self.path}: the repository has no commits yet; commit your manifests first"
                ) from exc
            raise SourceError(f"{self.path}: no such revision {spec!r} (try a branch, tag or commit id)") from exc
        return commit

    def snapshot(self, rev: str | None) -> Snapshot:
        """The manifest files of one commit, narrowed by the root folder and `gitorch.yaml`."""
        commit = self._commit(rev)
        tree = commit.tree
        if self.root:
            try:
                entry = tree[self.root]
            except KeyError as exc:
                raise SourceError(
                    f"{self.path}: folder {self.root!r} does not exist in commit {str(commit.id)[:7]}"
                ) from exc
            sub = self._repo.get(entry.id)
            if not isinstance(sub, pygit2.Tree):
                raise SourceError(f"{self.path}: {self.root!r} is not a folder")
            tree = sub
        includes = self._includes(tree)
        found, diags, others = _walk(self._repo, tree, includes, self._display, TREE_LIMITS)
        files: list[SourceFile] = []
        total = 0
        for path, oid, size in found:
            shown = self._display(path)
            if size > TREE_LIMITS.file_bytes:
                diags.append(
                    _limit(
                        shown,
                        f"file is {size:,} bytes; the limit is {TREE_LIMITS.file_bytes:,}",
                        "split it into several files",
                    )
                )
                continue
            total += size
            if total > TREE_LIMITS.total_bytes:
                diags.append(
                    _limit(
                        shown,
                        f"the manifests of this commit exceed {TREE_LIMITS.total_bytes:,} bytes "
                        "from this file on; it and the files after it are not read",
                        "narrow the manifests with gitorch.yaml or --repo FOLDER",
                    )
                )
                break
            files.append(SourceFile(shown, str(oid), reader=functools.partial(_blob_data, self._repo, oid)))
        extra = tuple(
            SourceFile(self._display(path), str(oid), reader=functools.partial(_blob_data, self._repo, oid))
            for path, oid, _ in others
        )
        return Snapshot(_revision(commit), self.root, tuple(files), tuple(diags), extra)

    def _display(self, path: str) -> str:
        return f"{self.root}/{path}" if self.root else path

    def _includes(self, tree: pygit2.Tree) -> list[str] | None:
        try:
            entry = tree[CONFIG_FILE]
        except KeyError:
            return None
        blob = self._repo.get(entry.id)
        if not isinstance(blob, pygit2.Blob):
            return None
        where = self._display(CONFIG_FILE)
        if blob.size > TREE_LIMITS.file_bytes:
            raise SourceError(f"{where}: file is {blob.size:,} bytes; the limit is {TREE_LIMITS.file_bytes:,}")
        try:
            config = load_plain(blob.data, where) or {}
        except ValueError as exc:  # any YAML or decoding problem in the config file, with its line
            raise SourceError(f"cannot read {exc}") from exc
        if not isinstance(config, dict):
            raise SourceError(f"{where}: expected a mapping with a `manifests:` list")
        unknown = sorted(set(config) - {"manifests"})
        if unknown:
            raise SourceError(f"{where}: unknown field {unknown[0]!r} (supported: manifests)")
        manifests = config.get("manifests")
        if manifests is None:
            return None
        if not isinstance(manifests, list) or not all(isinstance(m, str) for m in manifests):
            raise SourceError(f"{where}: `manifests` must be a list of folders, files or globs")
        return [str(PurePosixPath(m.strip("/"))) for m in manifests]

    def work_tree_changes(self) -> list[str]:
        """Paths under the root with uncommitted changes (the source reads commits only)."""
        if self._repo.is_bare:
            return []
        try:
            status = self._repo.status(untracked_files="no")
        except pygit2.GitError:
            return []
        prefix = f"{self.root}/" if self.root else ""
        return sorted(
            p for p, flags in status.items() if p.startswith(prefix) and p.endswith(MANIFEST_SUFFIXES) and flags
        )


def _blob_data(repo: pygit2.Repository, oid: pygit2.Oid) -> bytes:
    blob = repo.get(oid)
    if not isinstance(blob, pygit2.Blob):  # the walk found it as a blob: only a broken repository
        raise SourceError(f"{repo.path}: object {str(oid)[:7]} is not a file")
    return bytes(blob.data)


def _included(path: str, includes: list[str] | None) -> bool:
    if includes is None:
        return True
    for inc in includes:
        if inc in (".", ""):
            return True
        if path == inc or path.startswith(inc + "/") or fnmatch.fnmatchcase(path, inc):
            return True
    return False


def _may_contain(folder: str, includes: list[str] | None) -> bool:
    """Whether a path under `folder/` can match an include (so folders it excludes are not walked)."""
    if includes is None:
        return True
    for inc in includes:
        literal = re.split(r"[*?\[]", inc, maxsplit=1)[0]  # fnmatch's `*` also matches `/`
        if inc in (".", "") or (folder + "/").startswith(literal) or literal.startswith(folder + "/"):
            return True
    return False


def _limit(path: str, message: str, hint: str = "", *, warning: bool = False) -> Diagnostic:
    return Diagnostic(path, 0, 0, "", message, hint, Severity.WARNING if warning else Severity.ERROR)


_LINK, _SUBMODULE = int(pygit2.enums.FileMode.LINK), int(pygit2.enums.FileMode.COMMIT)
# pygit2 decodes names that are not UTF-8 with surrogate escapes; no terminal can print those.
_BAD_NAME = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _shown(path: str) -> str:
    """A path as it can be printed: bytes that are not UTF-8 as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _walk(
    repo: pygit2.Repository,
    tree: pygit2.Tree,
    includes: list[str] | None,
    display: Callable[[str], str],
    limits: TreeLimits,
) -> tuple[list[tuple[str, pygit2.Oid, int]], list[Diagnostic], list[tuple[str, pygit2.Oid, int]]]:
    """The manifest files of a tree as (path, blob id, size), depth first in Git's order,
    without recursion and within `limits`; symlinks and submodules are skipped with a warning.
    Third: the other files, the same way (kustomizations may name them)."""
    found: list[tuple[str, pygit2.Oid, int]] = []
    others: list[tuple[str, pygit2.Oid, int]] = []
    diags: list[Diagnostic] = []
    entries = 0
    stack: list[tuple[str, Iterator[pygit2.Object]]] = [("", iter(tree))]
    while stack:
        prefix, it = stack[-1]
        entry = next(it, None)
        if entry is None:
            stack.pop()
            continue
        entries += 1
        path = f"{prefix}{entry.name}"
        if entries > limits.entries:
            diags.append(
                _limit(
                    display(path),
                    f"more than {limits.entries:,} files and folders under the manifests "
                    "folder; this one and the rest are not read",
                    "narrow the manifests with gitorch.yaml (manifests: [...]) or --repo FOLDER",
                )
            )
            break
        mode = entry.filemode
        if mode in (_LINK, _SUBMODULE):
            if _included(path, includes) or (mode == _LINK and _may_contain(path, includes)):
                what = "a symbolic link" if mode == _LINK else "a submodule"
                diags.append(
                    _limit(
                        _shown(display(path)),
                        f"{what}: skipped, gitorch reads only the files and folders of the commit itself",
                        "commit the manifests themselves here",
                        warning=True,
                    )
                )
            continue
        if entry.type_str == "tree":
            if not _may_contain(path, includes):
                continue
            if len(stack) >= limits.depth:
                diags.append(
                    _limit(
                        _shown(display(path)) + "/",
                        f"folders nested more than {limits.depth} deep; this one is not read",
                        "move the manifests to a shallower folder",
                    )
                )
                continue
        elif not (
            entry.type_str == "blob"
            and path.endswith(MANIFEST_SUFFIXES)
            and path != CONFIG_FILE
            and _included(path, includes)
        ):
            if entry.type_str == "blob" and path != CONFIG_FILE and _included(path, includes) \
                    and not _BAD_NAME.search(entry.name or ""):
                others.append((path, entry.id, 0))  # its size is checked if it is ever read
            continue
        if _BAD_NAME.search(entry.name or ""):
            diags.append(
                _limit(
                    _shown(display(path)),
                    "the name is not UTF-8 or holds control characters; it is not read",
                    "rename it with letters, digits, '-', '_' and '.'",
                )
            )
            continue
        size = repo.odb.read_header(entry.id)[1]
        if entry.type_str == "blob":
            found.append((path, entry.id, size))
        elif size > limits.tree_bytes:
            diags.append(
                _limit(
                    display(path) + "/",
                    f"folder listing is {size:,} bytes; the limit is {limits.tree_bytes:,}; it is not read",
                    "split the folder",
                )
            )
        else:
            sub = repo.get(entry.id)
            if isinstance(sub, pygit2.Tree):
                stack.append((path + "/", iter(sub)))
    return found, diags, others


def _revision(commit: pygit2.Commit) -> Revision:
    when = datetime.fromtimestamp(commit.commit_time, tz=UTC).isoformat().replace("+00:00", "Z")
    return Revision(
        oid=str(commit.id),
        author=f"{commit.author.name} <{commit.author.email}>",
        message=commit.message.strip(),
        time=when,
    )


def open_repository(path: str | os.PathLike[str] | None = None) -> Repository:
    """Open the repository holding `path` (a work tree, a folder inside one, or a bare repo).

    A folder inside a work tree narrows the desired state to that folder, so
    `--repo examples/repo` reads `examples/repo/` of the enclosing repository's commit.
    """
    target = Path(path or ".").resolve()
    if not target.exists():
        raise SourceError(f"{target}: no such directory")
    found = pygit2.discover_repository(str(target))
    if found is None:
        raise SourceError(f"{target}: not inside a Git repository (run `git init` there, or pass --repo PATH)")
    repo = pygit2.Repository(found)
    _add_quarantine(repo)
    root = ""
    if not repo.is_bare and repo.workdir:
        workdir = Path(repo.workdir).resolve()
        if target != workdir and workdir in target.parents:
            root = target.relative_to(workdir).as_posix()
    return Repository(path=target, root=root, _repo=repo)


def _add_quarantine(repo: pygit2.Repository) -> None:
    """Inside a pre-receive hook, pushed objects live in a quarantine directory git names
    in the environment; libgit2 does not read it, so add it as an alternate."""
    dirs: list[str] = []
    if os.environ.get("GIT_QUARANTINE_PATH"):
        dirs.append(os.environ["GIT_QUARANTINE_PATH"])
    if os.environ.get("GIT_OBJECT_DIRECTORY"):
        dirs.append(os.environ["GIT_OBJECT_DIRECTORY"])
    dirs.extend(filter(None, os.environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES", "").split(":")))
    for d in dirs:
        if os.path.isdir(d):
            repo.odb.add_disk_alternate(d)


def is_zero_oid(oid: str) -> bool:
    return set(oid) == {"0"}


@dataclass(frozen=True)
class RevertCommit:
    """A commit `commit_tree_of` wrote: `oid` on `branch`, restoring the tree of `target`."""

    oid: str
    branch: str
    target: Revision
    previous_head: str


def tree_id(repo: Repository, rev: str) -> str:
    """The tree id of a commit (for "is it the same content?")."""
    return str(repo._commit(rev).tree_id)


def parent_revision(repo: Repository, rev: str) -> Revision | None:
    """The first parent of a commit, or None for a root commit."""
    commit = repo._commit(rev)
    return _revision(commit.parents[0]) if commit.parents else None


@dataclass(frozen=True)
class SignedCommit:
    """One commit as signature checks see it: its signature and the bytes it signs (both
    empty when unsigned), and its first parent ("" for a root commit)."""

    revision: Revision
    parent: str
    signature: bytes = field(repr=False)
    signed_data: bytes = field(repr=False)


def signed_commit(repo: Repository, rev: str) -> SignedCommit:
    commit = repo._commit(rev)
    signature, data = commit.gpg_signature  # the `gpgsig` header: OpenPGP or SSH alike
    parent = str(commit.parent_ids[0]) if commit.parent_ids else ""
    return SignedCommit(_revision(commit), parent, bytes(signature or b""), bytes(data or b""))


def commits_between(repo: Repository, base: str, head: str, limit: int) -> list[str] | None:
    """The commits reachable from `head` but not from `base` ("" for none), oldest first;
    None when there are more than `limit` of them."""
    walker = repo._repo.walk(repo._commit(head).id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    if base:
        walker.hide(repo._commit(base).id)
    out: list[str] = []
    for commit in walker:
        out.append(str(commit.id))
        if len(out) > limit:
            return None
    return out


def is_ancestor(repo: Repository, ancestor: str, rev: str) -> bool:
    """Whether `ancestor` is `rev` or one of its ancestors."""
    a, r = repo._commit(ancestor).id, repo._commit(rev).id
    return a == r or bool(repo._repo.descendant_of(r, a))


def first_parent_log(repo: Repository, rev: str | None, limit: int) -> list[str]:
    """The commits of a branch's first-parent line, newest first, at most `limit`."""
    out: list[str] = []
    commit: pygit2.Commit | None = repo._commit(rev)
    while commit is not None and len(out) < limit:
        out.append(str(commit.id))
        commit = commit.parents[0] if commit.parent_ids else None
    return out


def _signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        config = repo.config
        name, email = config["user.name"], config["user.email"]
        return pygit2.Signature(str(name), str(email))
    except (KeyError, pygit2.GitError, ValueError):
        return pygit2.Signature("gitorch", "gitorch@localhost")


def commit_tree_of(repo: Repository, target_rev: str, branch: str, message: str) -> RevertCommit:
    """Write a new commit on `branch` whose tree is `target_rev`'s tree (a rollback through Git).

    A bare repository's ref is moved directly; a work tree must be clean under the manifests
    root, and when `branch` is checked out its files are updated too."""
    raw = repo._repo
    ref_name = f"refs/heads/{branch}"
    try:
        ref = raw.references[ref_name]
    except KeyError as exc:
        raise SourceError(f"{repo.path}: no branch {branch!r}") from exc
    head = ref.peel(pygit2.Commit)
    target = repo._commit(target_rev)
    if target.tree_id == head.tree_id:
        raise SourceError(
            f"{str(target.id)[:7]} has the same content as the head of {branch!r} ({str(head.id)[:7]}): "
            "nothing to roll back"
        )
    checked_out = not raw.is_bare and not raw.head_is_unborn and raw.head.name == ref_name
    if not raw.is_bare:
        prefix = f"{repo.root}/" if repo.root else ""
        try:
            status = raw.status(untracked_files="no")
        except pygit2.GitError:
            status = {}
        dirty = sorted(p for p, flags in status.items() if p.startswith(prefix) and flags)
        if dirty:
            shown = ", ".join(dirty[:3]) + (f" and {len(dirty) - 3} more" if len(dirty) > 3 else "")
            raise SourceError(
                f"{repo.path}: uncommitted changes under the manifests folder ({shown}); commit or stash them first"
            )
    sig = _signature(raw)
    oid = raw.create_commit(None, sig, sig, message, target.tree_id, [head.id])
    if checked_out:
        # Files first (SAFE never overwrites local changes), then the branch: a failure leaves both as they were.
        try:
            raw.checkout_tree(raw.get(oid), strategy=pygit2.GIT_CHECKOUT_SAFE)
        except pygit2.GitError as exc:
            raise SourceError(f"{repo.path}: cannot update the work tree: {exc}") from exc
    ref.set_target(oid, f"gitorch rollback to {str(target.id)[:7]}")
    return RevertCommit(str(oid), branch, _revision(target), str(head.id))


# --- remote repositories -------------------------------------------------------------------

_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


def is_remote(spec: str) -> bool:
    """`ssh://`, `https://`, `file://` URLs and scp-like `git@host:org/repo.git` are remotes."""
    return "://" in spec or bool(_SCP_LIKE.match(spec))


HostKeyCheck = Callable[[str, int, str, "str | None", "str | None"], None]
"""(host, port, key presented, pinned key, known-hosts file): returns when the key presented
("ssh-ed25519 AAAA...") is trusted, raises GitorchError if not."""


@dataclass(frozen=True)
class RemoteAuth:
    """How to authenticate to a remote; the token itself is read from the environment, never stored."""

    ssh_key: str | None = None
    """Private key file for SSH remotes (its `.pub` beside it is used when present)."""
    known_hosts: str | None = None
    """gitorch's known-hosts file: an SSH remote's host key is pinned there on first use."""
    host_key: str | None = None
    """The SSH remote's host key, pinned explicitly ("ssh-ed25519 AAAA...")."""
    token_env: str | None = None
    """Environment variable holding an HTTPS token (GitHub, GitLab, Gitea all accept it as a password)."""
    ca_file: str | None = None
    """PEM file of the CA(s) that sign an HTTPS remote's certificate, trusted besides the system's."""
    host_check: HostKeyCheck | None = None
    """Checks the host key an SSH remote presents on the connection that fetches
    (nodes.ssh.check_remote_host); an SSH remote needs one."""


class _HostkeyCert(ctypes.Structure):
    """libgit2's git_cert_hostkey (include/git2/cert.h since libgit2 1.2). pygit2 declares only
    its first fields and hands Python callbacks None instead of it, so the key is read here."""

    _fields_ = [
        ("cert_type", ctypes.c_int),
        ("type", ctypes.c_int),
        ("hash_md5", ctypes.c_ubyte * 16),
        ("hash_sha1", ctypes.c_ubyte * 20),
        ("hash_sha256", ctypes.c_ubyte * 32),
        ("raw_type", ctypes.c_int),
        ("hostkey", ctypes.c_void_p),
        ("hostkey_len", ctypes.c_size_t),
    ]


_CERT_HOSTKEY_LIBSSH2 = 2  # git_cert_t
_CERT_SSH_SHA256, _CERT_SSH_RAW = 1 << 2, 1 << 3  # git_cert_ssh_t
_MAX_HOST_KEY = 16 * 1024  # an RSA-16384 public key is ~2 KiB


def _presented_host_key() -> str | None:
    """The SSH host key ("type base64") libgit2 received on the connection it fetches over, read
    from pygit2's certificate callback frame; None when the certificate is not an SSH host key.
    Fails closed (SourceError) when it cannot be read for sure."""
    unreadable = (
        f"cannot see the SSH host key libgit2 received (pygit2 {pygit2.__version__}, "
        f"libgit2 {pygit2.LIBGIT2_VERSION}), so it cannot be checked; refusing"
    )
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "_certificate_check_cb" and "cert_i" in frame.f_locals):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or pygit2.LIBGIT2_VER < (1, 2, 0):
        raise SourceError(unreadable)
    from pygit2.ffi import ffi

    cert = _HostkeyCert.from_address(int(ffi.cast("uintptr_t", frame.f_locals["cert_i"])))
    if cert.cert_type != _CERT_HOSTKEY_LIBSSH2:
        return None
    if not (cert.type & _CERT_SSH_RAW and cert.type & _CERT_SSH_SHA256) or not 0 < cert.hostkey_len <= _MAX_HOST_KEY:
        raise SourceError(unreadable)
    blob = ctypes.string_at(cert.hostkey, cert.hostkey_len)
    # libgit2 hashed the same key: a struct laid out otherwise than assumed shows here, not as a wrong key.
    if bytes(cert.hash_sha256) != hashlib.sha256(blob).digest():
        raise SourceError(unreadable)
    size = int.from_bytes(blob[:4], "big")  # the key blob starts with its type name (RFC 4253 6.6)
    name = blob[4 : 4 + size].decode("ascii", "replace")
    return f"{name} {base64.b64encode(blob).decode()}"


class _Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, auth: RemoteAuth, url: str) -> None:
        super().__init__()
        self.auth = auth
        self.url = _redact(url)
        self.ssh = _ssh_host(url)
        self._token_sent = False
        self._key_sent = False

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        if self.auth.ssh_key and allowed_types & pygit2.enums.CredentialType.SSH_KEY:
            key = Path(self.auth.ssh_key).expanduser()
            if self._key_sent:  # asked again: refused (libgit2 would retry 15 times, then say so vaguely)
                raise SourceError(
                    f"{_redact(url)}: the server refused the key {key} (is its public key "
                    f"authorized for {username_from_url or 'git'}?)"
                )
            if not key.is_file():
                raise SourceError(f"{_redact(url)}: {key}: no such key file (--ssh-key)")
            self._key_sent = True
            pub = key.with_name(key.name + ".pub")
            return pygit2.Keypair(username_from_url or "git", pub if pub.exists() else None, key, "")
        name = self.auth.token_env
        token = os.environ.get(name or "", "")
        if token and allowed_types & pygit2.enums.CredentialType.USERPASS_PLAINTEXT:
            # Asked again after sending it: the server refused it (libgit2 would retry 15 times).
            if self._token_sent:
                raise SourceError(
                    f"{_redact(url)}: the server refused the token in ${name} "
                    "(is it valid, and may it read the repository?)"
                )
            self._token_sent = True
            return pygit2.UserPass(username_from_url or "x-access-token", token)
        if name and not token:
            raise SourceError(f"{_redact(url)}: ${name} is not set or empty (it should hold the HTTPS token)")
        raise SourceError(f"{_redact(url)}: no credentials for this remote (--ssh-key or --token-env)")

    def certificate_check(self, certificate: Any, valid: bool, host: bytes) -> bool:
        # An SSH host key is checked here, on the connection libgit2 fetches over (the pin, else
        # gitorch's known hosts, else trusted on first use); a TLS certificate must verify.
        presented = _presented_host_key()
        if presented is not None:
            if self.ssh is None or self.auth.host_check is None:
                raise SourceError(f"{self.url}: an SSH remote needs a host key check (RemoteAuth.host_check)")
            try:
                self.auth.host_check(self.ssh[0], self.ssh[1], presented, self.auth.host_key, self.auth.known_hosts)
            except GitorchError as exc:
                raise SourceError(f"{self.url}: {exc}") from exc
            return True
        if valid:
            return True
        hint = (
            f"not signed by a CA in {self.auth.ca_file} or the system's, or not issued for this host"
            if self.auth.ca_file
            else "pass --ca-file with the certificate of the CA that signed it"
        )
        name = host.decode(errors="replace")
        raise SourceError(f"{self.url}: the TLS certificate of {name} does not verify ({hint})")


def _trust_ca(auth: RemoteAuth) -> None:
    """Add `auth.ca_file` to the CAs libgit2 trusts; its TLS context is one for the whole process."""
    if not auth.ca_file:
        return
    path = Path(auth.ca_file).expanduser()
    if not path.is_file():
        raise SourceError(f"{path}: no such CA certificate file (--ca-file)")
    try:
        pygit2.settings.set_ssl_cert_locations(str(path), None)
    except pygit2.GitError as exc:
        raise SourceError(f"{path}: cannot load CA certificates from it (--ca-file): {exc}") from exc


def _redact(url: str) -> str:
    """A URL without any password or token in it."""
    return re.sub(r"//[^/@]*@", "//", url)


def _ssh_host(url: str) -> tuple[str, int] | None:
    """(host, port) of an SSH remote URL; None for other schemes."""
    from urllib.parse import urlsplit

    if _SCP_LIKE.match(url):
        return url.split("@", 1)[1].split(":", 1)[0], 22
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        return None
    return parts.hostname, parts.port or 22


def _callbacks(url: str, auth: RemoteAuth) -> _Callbacks:
    if _ssh_host(url) is not None and auth.host_check is None:
        raise SourceError(f"{_redact(url)}: an SSH remote needs a host key check (RemoteAuth.host_check)")
    return _Callbacks(auth, url)


def _private_dir(path: Path) -> None:
    """`path` and the folders made for it readable by their owner only (0700): a mirror holds the
    whole history of the desired state."""
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in {*created, path}:
        if folder.stat().st_mode & 0o077:
            os.chmod(folder, 0o700)


def mirror(url: str, dest: Path, auth: RemoteAuth) -> Repository:
    """A bare local mirror of a remote repository (cloned on first use, fetched after)."""
    _trust_ca(auth)
    callbacks = _callbacks(url, auth)
    try:
        _private_dir(dest.parent)  # first, so a mirror is out of reach while it is cloned
        if not (dest / "HEAD").exists():
            pygit2.clone_repository(url, str(dest), bare=True, callbacks=callbacks)
            repo = open_repository(dest)
        else:
            repo = open_repository(dest)
            fetch(repo, auth, url)
        _private_dir(dest)
        return repo
    except pygit2.GitError as exc:
        raise SourceError(f"{_redact(url)}: cannot fetch: {_redact(str(exc))}") from exc
    except OSError as exc:
        raise SourceError(f"{dest}: cannot make the mirror: {exc.strerror or exc}") from exc


def fetch(repo: Repository, auth: RemoteAuth, url: str | None = None) -> None:
    """Update every branch of a mirror from its remote (the newest commit always wins)."""
    remote = repo._repo.remotes["origin"]
    target = url or str(remote.url)
    _trust_ca(auth)
    try:
        callbacks = _callbacks(target, auth)
        remote.fetch(refspecs=["+refs/heads/*:refs/heads/*"], callbacks=callbacks)
    except pygit2.GitError as exc:
        raise SourceError(f"{_redact(target)}: cannot fetch: {_redact(str(exc))}") from exc

"""Signed commits: who signed a commit (`ssh-keygen -Y verify` for SSH signatures, `gpg --verify`
in batch mode with a throw-away GNUPGHOME for OpenPGP ones), and whether the commits between
the last applied revision and a head may be applied under the Cluster's `git.verifyCommits`.

The keys and grants always come from the trusted revision (the last applied one, or the
branch's tip before a push), never from the commits being checked; with nothing applied yet,
the head must be signed by a key given on the command line (`serve --trust-key`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gitorch.model.diagnostics import Diagnostic
from gitorch.model.errors import GitorchError
from gitorch.model.objects import DesiredState, ObjectKey
from gitorch.model.revisions import EMPTY_REVISION
from gitorch.source import git
from gitorch.source.grants import (
    Change,
    Grants,
    changes,
    grants,
    openpgp_keys,
    resource,
    signer_id,
    ssh_fingerprint,
    trusted,
    verifies_commits,
)

MAX_COMMITS = 1000
"""Commits checked in one range at most; a longer range is refused (push it in parts)."""
MAX_REFUSALS = 20
"""Refusals reported for one range (the first ones, in commit order)."""
TOOL_TIMEOUT = 20.0
"""Seconds one ssh-keygen or gpg run may take."""
MAX_SIGNATURE = 64 * 1024
"""Largest signature looked at (an RSA-16384 OpenPGP signature is ~3 KiB)."""

_SSH_ARMOR = re.compile(rb"-----BEGIN SSH SIGNATURE-----\s*(.*?)\s*-----END SSH SIGNATURE-----", re.S)
_PGP_ARMOR = b"-----BEGIN PGP SIGNATURE-----"


@dataclass(frozen=True)
class Signature:
    """What a commit's signature says: `method` is ssh, openpgp or none; `signer` the key's
    fingerprint when it can be read; `ids` every fingerprint grants may name it by (an
    OpenPGP primary key and its signing subkey); `verified` when the signature is good and
    made by a key the trusted revision knows, else `problem` says why not."""

    method: str
    signer: str = ""
    ids: frozenset[str] = frozenset()
    verified: bool = False
    problem: str = ""

    @property
    def shown(self) -> str:
        return f"{self.method} {self.signer}" if self.signer else self.method


def _run(argv: list[str], *, stdin: bytes = b"",
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=TOOL_TIMEOUT, env=env, check=False)
    except FileNotFoundError as exc:
        package = "openssh-client" if argv[0] == "ssh-keygen" else "gnupg"
        raise GitorchError(f"{argv[0]} is not installed: signed commits need it (apt install {package})") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitorchError(f"{argv[0]} took more than {TOOL_TIMEOUT:g} s to check a signature") from exc


def _ssh_key(signature: bytes) -> bytes | None:
    """The public key blob an SSHSIG signature carries (PROTOCOL.sshsig: "SSHSIG", version,
    then the key as an SSH string); None when it is not one."""
    m = _SSH_ARMOR.search(signature)
    if m is None:
        return None
    try:
        raw = base64.b64decode(b"".join(m.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if raw[:6] != b"SSHSIG" or len(raw) < 14:
        return None
    size = int.from_bytes(raw[10:14], "big")
    blob = raw[14 : 14 + size]
    return blob if len(blob) == size and size > 4 else None


def _key_line(blob: bytes) -> str:
    size = int.from_bytes(blob[:4], "big")
    return f"{blob[4 : 4 + size].decode('ascii', 'replace')} {base64.b64encode(blob).decode()}"


class Verifier:
    """Checks signatures against one set of grants and OpenPGP keys; holds a private temporary
    folder (allowed signers, gpg's home) until closed."""

    def __init__(self, grants: Grants, openpgp: Sequence[str] = ()) -> None:
        self.grants = grants
        self.openpgp = list(openpgp)
        self._dir: Path | None = None
        self._gnupg: Path | None = None

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._gnupg = None

    def _tmp(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="gitorch-sig-"))  # 0700
        return self._dir

    def check(self, signature: bytes, data: bytes) -> Signature:
        if not signature:
            return Signature("none", problem="is not signed")
        if len(signature) > MAX_SIGNATURE:
            return Signature("unknown",
                             problem=f"has a signature of {len(signature):,} bytes (at most {MAX_SIGNATURE:,})")
        if _SSH_ARMOR.search(signature):
            return self._ssh(signature, data)
        if _PGP_ARMOR in signature:
            return self._openpgp(signature, data)
        return Signature("unknown", problem="has a signature that is neither SSH nor OpenPGP")

    def _ssh(self, signature: bytes, data: bytes) -> Signature:
        blob = _ssh_key(signature)
        if blob is None:
            return Signature("ssh", problem="has an SSH signature that cannot be read")
        fpr = ssh_fingerprint(blob)
        ids = frozenset({fpr})
        if not self.grants.known(fpr):
            return Signature("ssh", fpr, ids, problem=f"is signed by SSH key {fpr}, which no binding names")
        tmp = self._tmp()
        allowed, sig = tmp / "allowed_signers", tmp / "commit.sig"
        allowed.write_text(f'gitorch namespaces="git" {_key_line(blob)}\n')
        sig.write_bytes(signature)
        res = _run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "gitorch", "-n", "git", "-s", str(sig)],
                   stdin=data)
        if res.returncode != 0:
            return Signature("ssh", fpr, ids, problem=f"has an SSH signature by {fpr} that does not verify")
        return Signature("ssh", fpr, ids, verified=True)

    def _home(self) -> Path:
        if self._gnupg is None:
            home = self._tmp() / "gnupg"
            home.mkdir(mode=0o700)
            if self.openpgp:  # one gpg run for them all; a key it cannot read is skipped (it verifies nothing)
                _run(["gpg", "--batch", "--no-tty", "--quiet", "--import"],
                     stdin="\n".join(self.openpgp).encode(), env=_gpg_env(home))
            self._gnupg = home
        return self._gnupg

    def _openpgp(self, signature: bytes, data: bytes) -> Signature:
        home = self._home()
        sig, body = home.parent / "commit.asc", home.parent / "commit.data"
        sig.write_bytes(signature)
        body.write_bytes(data)
        res = _run(["gpg", "--batch", "--no-tty", "--status-fd", "1", "--verify", str(sig), str(body)],
                   env=_gpg_env(home))
        status = parse_gpg_status(res.stdout.decode("utf-8", "replace"))
        if status.fingerprints and status.good:
            ids = frozenset(status.fingerprints)
            signer = status.fingerprints[-1]
            if not any(self.grants.known(i) for i in ids):
                return Signature("openpgp", signer, ids,
                                 problem=f"is signed by OpenPGP key {signer}, which no binding names")
            return Signature("openpgp", signer, ids, verified=True)
        signer = status.issuer
        if status.missing:
            return Signature("openpgp", signer, frozenset({signer}) if signer else frozenset(),
                             problem=f"is signed by OpenPGP key {signer or '(unknown)'}, which is not among the "
                                     "Cluster's git.openpgpKeys")
        why = status.bad or "does not verify"
        return Signature("openpgp", signer, frozenset({signer}) if signer else frozenset(),
                         problem=f"has an OpenPGP signature{' by ' + signer if signer else ''} that {why}")


def _gpg_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GNUPGHOME": str(home), "LC_ALL": "C"}


@dataclass(frozen=True)
class GpgStatus:
    good: bool = False
    fingerprints: tuple[str, ...] = ()  # the signing key's, then its primary key's
    issuer: str = ""
    missing: bool = False
    bad: str = ""


def parse_gpg_status(text: str) -> GpgStatus:
    """gpg's `--status-fd` lines (doc/DETAILS in GnuPG's source) as what a signature check needs;
    an expired or revoked key's signature is not good (EXPKEYSIG, REVKEYSIG instead of GOODSIG)."""
    good, issuer, missing, bad = False, "", False, ""
    fprs: tuple[str, ...] = ()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "[GNUPG:]":
            continue
        tag, args = parts[1], parts[2:]
        if tag == "GOODSIG":
            good = True
        elif tag == "VALIDSIG" and args:
            fprs = (args[0].upper(), args[-1].upper()) if len(args) >= 10 else (args[0].upper(),)
        elif tag == "ISSUER_FPR" and args:
            issuer = args[0].upper()
        elif tag == "ERRSIG" and args:
            issuer = issuer or (args[-1] if len(args) >= 7 and args[-1] != "-" else args[0]).upper()
        elif tag == "NO_PUBKEY":
            missing = True
        elif tag in ("BADSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG"):
            bad = {"BADSIG": "is bad (the commit was changed after signing)", "EXPKEYSIG": "was made by an expired key",
                   "REVKEYSIG": "was made by a revoked key", "EXPSIG": "has expired"}[tag]
            if args:
                issuer = issuer or args[0].upper()
    return GpgStatus(good and not bad, fprs, issuer or (fprs[-1] if fprs else ""), missing, bad)


# --- trusted keys from the command line ------------------------------------------------------


@dataclass(frozen=True)
class TrustKeys:
    """Keys given on the command line (`--trust-key`): the first revision must be signed by one."""

    ids: frozenset[str] = frozenset()
    openpgp: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ids)


def trust_keys(values: Sequence[str]) -> TrustKeys:
    """Parse `--trust-key` values: an SSH public key, its SHA256 fingerprint, an OpenPGP
    fingerprint, or a file holding an SSH public key or an armored OpenPGP public key."""
    ids: set[str] = set()
    armored: list[str] = []
    for value in values:
        text = value
        path = Path(value).expanduser()
        if signer_id(value) is None and ("/" in value or path.is_file()):
            try:
                text = path.read_text()
            except OSError as exc:
                raise GitorchError(f"--trust-key {value}: cannot read it ({exc.strerror or exc})") from None
        if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in text:
            fprs = openpgp_fingerprints(text)
            if not fprs:
                raise GitorchError(f"--trust-key {value}: gpg finds no key in it")
            ids.update(fprs)
            armored.append(text)
            continue
        ident = signer_id(text.strip().splitlines()[0] if text.strip() else "")
        if ident is None:
            raise GitorchError(
                f"--trust-key {value}: expected an SSH public key (or a .pub file), SHA256:<fingerprint>, "
                "an OpenPGP fingerprint, or a file with an armored OpenPGP public key"
            )
        ids.add(ident)
    return TrustKeys(frozenset(ids), tuple(armored))


def openpgp_fingerprints(armored: str) -> list[str]:
    """The fingerprints of the keys and subkeys in an armored OpenPGP key block."""
    with tempfile.TemporaryDirectory(prefix="gitorch-gpg-") as tmp:
        res = _run(["gpg", "--batch", "--no-tty", "--with-colons", "--import-options", "show-only", "--import"],
                   stdin=armored.encode(), env=_gpg_env(Path(tmp)))
    return [line.split(":")[9].upper() for line in res.stdout.decode("utf-8", "replace").splitlines()
            if line.startswith("fpr:") and len(line.split(":")) > 9]


# --- ranges -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why one commit of a range may not be applied."""

    commit: str
    message: str
    hint: str = ""
    signer: str = ""
    key: ObjectKey | None = None
    verb: str = ""
    path: str = ""
    line: int = 0
    column: int = 0

    def diagnostic(self) -> Diagnostic:
        return Diagnostic(self.path, self.line, self.column, "/metadata/name" if self.line else "", self.message,
                          self.hint)


Loader = Callable[[str], DesiredState]
"""A commit's desired state by oid."""


@dataclass
class RangeCheck:
    """Checks the commits from a trusted revision to a head (see check_range)."""

    repo: git.Repository
    load: Loader
    keys: TrustKeys = field(default_factory=TrustKeys)
    trusted_as: str = "the last applied revision"
    """What the trusted revision is, in messages (the pre-receive hook trusts the branch's tip)."""

    def check(self, trusted_state: DesiredState | None, head: DesiredState, *, label: str = "") -> list[Refusal]:
        """The refusals of the commits after `trusted_state` (the last applied revision; None when
        nothing was applied) up to `head`; [] when they may be applied. `label` names the trusted
        revision in messages (default `trusted_as`)."""
        head_oid = head.revision.oid
        if trusted_state is None or not trusted_state.revision.oid:
            if not self.keys:
                if verifies_commits(head):
                    return [Refusal(head_oid, f"commit {head_oid[:7]}: the Cluster sets git.verifyCommits and "
                                    "nothing was applied yet, so no key is trusted",
                                    "give the key that signed this commit with --trust-key")]
                return []
            found = self._first_trusted(head_oid)
            if isinstance(found, Refusal):
                return [found]
            if found == head_oid:
                return []
            return self.check(self.load(found), head, label="the newest revision signed by a --trust-key key")
        base = trusted_state.revision.oid
        where = f"{label or self.trusted_as} {base[:7]}"
        if not verifies_commits(trusted_state) or base == head_oid:
            return []
        with Verifier(grants(trusted_state), openpgp_keys(trusted_state)) as verifier:
            if not git.is_ancestor(self.repo, base, head_oid):
                # A head that replaces the history (a force push, say to drop a refused commit): its
                # signer answers for everything it changes from the trusted revision.
                return self._commits([head_oid], verifier, where, before=trusted_state)
            oids = git.commits_between(self.repo, base, head_oid, MAX_COMMITS)
            if oids is None:
                return [Refusal(head_oid, f"more than {MAX_COMMITS} commits after {where}",
                                "push them in parts")]
            return self._commits(oids, verifier, where)

    def _first_trusted(self, head: str) -> str | Refusal:
        """With nothing applied yet: the newest commit of `head`'s first-parent line signed by a
        `--trust-key` key; it is the trusted revision, and the commits after it are checked
        against its grants (so the controller may start after a few pushes)."""
        problem = ""
        with Verifier(trusted(self.keys.ids), self.keys.openpgp) as verifier:
            for oid in git.first_parent_log(self.repo, head, MAX_COMMITS):
                commit = git.signed_commit(self.repo, oid)
                sig = verifier.check(commit.signature, commit.signed_data)
                if sig.verified:
                    return oid
                problem = problem or sig.problem.replace("no binding names", "no --trust-key names")
        return Refusal(head, f"commit {head[:7]} {problem}, nor is any commit before it signed by a --trust-key key "
                       "(the Cluster sets git.verifyCommits and nothing was applied yet)",
                       "sign the first revision with a key given with --trust-key")

    def _commits(self, oids: list[str], verifier: Verifier, where: str,
                 before: DesiredState | None = None) -> list[Refusal]:
        """Each commit's signature, and whether its signer may make its changes, from its first
        parent or from `before` when given; `where` names the trusted revision."""
        out: list[Refusal] = []
        for oid in oids:
            if len(out) >= MAX_REFUSALS:
                break
            commit = git.signed_commit(self.repo, oid)
            sig = verifier.check(commit.signature, commit.signed_data)
            if not sig.verified:
                hint = ("sign it (git commit -S; git config gpg.format ssh for an SSH key) with a key a RoleBinding "
                        f"or ClusterRoleBinding of {where} names")
                out.append(Refusal(oid, f"commit {oid[:7]} {sig.problem}" + (
                    f" in {where}" if sig.problem.endswith("no binding names") else ""), hint, sig.signer))
                continue
            parent = before or (self.load(commit.parent) if commit.parent else DesiredState(EMPTY_REVISION, {}, []))
            after = self.load(oid)
            for change in changes(parent, after):
                if not verifier.grants.allows(sig.ids, change):
                    out.append(_refused(oid, sig, change, parent if change.verb.value == "delete" else after, where))
        return out[:MAX_REFUSALS]


def _refused(oid: str, sig: Signature, change: Change, state: DesiredState, where: str) -> Refusal:
    key = change.key
    group, plural = resource(key.kind)
    scope = f"in namespace {key.namespace}" if key.namespace else "cluster-wide"
    obj = state.objects.get(key)
    path, line, col = "", 0, 0
    if obj is not None:
        pos = obj.document.position("/metadata/name")
        path, line, col = obj.path, pos.line, pos.column
    shown = f"{key.kind} {key.namespace}/{key.name}" if key.namespace else f"{key.kind} {key.name}"
    message = (f"commit {oid[:7]} signed by {sig.shown} may not {change.verb.value} {shown}: no role bound to the "
               f"signer in {where} grants {change.verb.value!r} on {plural} ({group or 'core'} API group) {scope}")
    hint = "a commit signed by a key with that grant must make this change"
    return Refusal(oid, message, hint, sig.signer, key, change.verb.value, path, line, col)

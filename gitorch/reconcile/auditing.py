"""The audit trail: who changed which object, when, with which signature, and what the controller
did about it, from Git history (the branch's first-parent line) and the store (revisions and
events), as Kubernetes' audit log answers it for its API server.

A commit's signature is checked against the grants of the nearest revision before it that the
controller applied, as the controller checks it (trust comes from the last applied revision, so a
refused commit that widened a binding grants nothing to the commits after it); when the store
knows no such revision, against its parent's (a root commit against its own), as a pre-receive
hook without a store checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gitorch.model.objects import KINDS, DesiredState, ObjectKey
from gitorch.model.revisions import EMPTY_REVISION, Revision
from gitorch.source import desired, git, signatures
from gitorch.source.diffs import Action, FieldDiff, diff_states
from gitorch.source.grants import Change, Verb, grants, openpgp_keys
from gitorch.source.sops import NO_KEYS, Keyring
from gitorch.store.database import Store

MAX_COMMITS = 1000
"""Commits an audit walks at most (`--limit`)."""
_VERBS = {Action.CREATE: Verb.CREATE, Action.UPDATE: Verb.UPDATE, Action.DELETE: Verb.DELETE}


@dataclass(frozen=True)
class AuditEvent:
    """An event the controller recorded for a revision: about the revision itself (kind
    Revision, e.g. InvalidRevision) or about one object."""

    time: datetime
    type: str
    reason: str
    message: str
    revision: str
    object: ObjectKey

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(), "type": self.type, "reason": self.reason, "message": self.message,
                "revision": self.revision, "object": str(self.object)}


@dataclass(frozen=True)
class AuditEntry:
    """One object one commit changed."""

    revision: Revision
    signature: signatures.Signature
    key: ObjectKey
    verb: Verb
    fields: tuple[FieldDiff, ...]
    granted: bool  # the signature is verified and its signer's grants allow the change
    outcome: str  # applied, invalid, pending, or "" when the controller never saw it
    applied_in: str = ""  # the revision that first carried this change to the controller (applied, else seen)
    applied_at: datetime | None = None
    events: tuple[AuditEvent, ...] = field(default=())

    @property
    def summary(self) -> str:
        """The change in short: a few fields, secret values masked where the diff was made."""
        if self.verb is not Verb.UPDATE:
            return self.verb.value + "d"
        parts = [_field(f) for f in self.fields[:3]]
        more = len(self.fields) - 3
        return "; ".join(parts) + (f"; {more} more" if more > 0 else "")

    def to_json(self) -> dict[str, Any]:
        r, s = self.revision, self.signature
        return {
            "commit": r.oid,
            "time": r.time,
            "author": r.author,
            "subject": r.subject,
            "signature": {"method": s.method, "signer": s.signer, "verified": s.verified, "problem": s.problem},
            "verb": self.verb.value,
            "kind": self.key.kind,
            "namespace": self.key.namespace,
            "name": self.key.name,
            "granted": self.granted,
            "summary": self.summary,
            "fields": [f.to_json() for f in self.fields],
            "outcome": self.outcome,
            "appliedIn": self.applied_in or None,
            "appliedAt": self.applied_at.isoformat() if self.applied_at else None,
            "events": [e.to_json() for e in self.events],
        }


def _field(f: FieldDiff) -> str:
    def short(v: Any) -> str:
        text = str(v)
        return text if len(text) <= 32 else text[:29] + "..."

    if f.op.value == "+":
        return f"+{f.path}={short(f.new)}"
    if f.op.value == "-":
        return f"-{f.path}"
    return f"{f.path}: {short(f.old)} -> {short(f.new)}"


def audit(repo: git.Repository, store: Store | None, *, rev: str | None, since: datetime | None = None,
          key: ObjectKey | None = None, limit: int = 100, keyring: Keyring = NO_KEYS) -> list[AuditEntry]:
    """The changes of the last `limit` commits of `rev`'s first-parent line (newer than `since`),
    newest first, of one object when `key` is given; `store` adds the controller's side."""
    oids = git.first_parent_log(repo, rev, min(limit, MAX_COMMITS))
    states: dict[str, DesiredState] = {}

    def load(oid: str) -> DesiredState:
        if not oid:
            return DesiredState(EMPTY_REVISION, {}, [])
        if oid not in states:
            states[oid] = desired.load(repo, oid, keyring)
        return states[oid]

    stored = {r.commit: r for r in store.revisions()} if store is not None else {}
    events: dict[str, list[AuditEvent]] = {}
    if store is not None:
        for e in store.events():
            if e.revision:
                events.setdefault(e.revision, []).append(AuditEvent(
                    e.last_time, e.type, e.reason, e.message, e.revision, ObjectKey(e.kind, e.namespace, e.name)))
    # Walking from the newest: the applied revision nearest after a commit is the one that applied
    # it; else the nearest one the controller saw (a refused head, say) says what became of it.
    applied_by: dict[str, str] = {}
    seen_by: dict[str, str] = {}
    applied = seen = ""
    for oid in oids:
        row = stored.get(oid)
        if row is not None:
            seen = oid
            if row.outcome == "applied":
                applied = oid
        applied_by[oid], seen_by[oid] = applied, seen
    trust_from = _trusted_revisions(repo, rev, {c for c, r in stored.items() if r.outcome == "applied"})
    out: list[AuditEntry] = []
    for oid in oids:
        commit = git.signed_commit(repo, oid)
        if since is not None and datetime.fromisoformat(commit.revision.time.replace("Z", "+00:00")) < since:
            break
        after, before = load(oid), load(commit.parent)
        found = [c for c in diff_states(before, after).changed() if key is None or c.key == key]
        if not found:
            continue
        anchor = trust_from.get(oid, "")
        trusted = load(anchor) if anchor else before if commit.parent else after
        with signatures.Verifier(grants(trusted), openpgp_keys(trusted)) as verifier:
            sig = verifier.check(commit.signature, commit.signed_data)
            allowed = verifier.grants
        by = applied_by.get(oid, "") or seen_by.get(oid, "")
        row = stored.get(by)
        outcome = row.outcome if row is not None else ""
        for c in found:
            verb = _VERBS[c.action]
            related = tuple(
                e for e in [*events.get(oid, []), *(events.get(by, []) if by and by != oid else [])]
                if e.object.kind == "Revision" or e.object == c.key
            )
            out.append(AuditEntry(
                commit.revision, sig, c.key, verb, c.fields,
                sig.verified and allowed.allows(sig.ids, Change(c.key, verb)),
                outcome, by, row.applied_at if row is not None else None, related,
            ))
        states.pop(oid, None)  # its parent, the next one walked, stays
    return out


def _trusted_revisions(repo: git.Repository, rev: str | None, applied: set[str]) -> dict[str, str]:
    """For each commit of `rev`'s first-parent line, the nearest applied revision before it (none
    when no applied revision precedes it); walks at most MAX_COMMITS, and only when there is one."""
    if not applied:
        return {}
    out: dict[str, str] = {}
    last = ""
    for oid in reversed(git.first_parent_log(repo, rev, MAX_COMMITS)):
        if last:
            out[oid] = last
        if oid in applied:
            last = oid
    return out


def parse_object(text: str) -> ObjectKey:
    """KIND/NAMESPACE/NAME, or KIND/NAME for a cluster-scoped kind (`deployment/prod/web`)."""
    parts = text.split("/")
    kinds = {k.lower(): k for k in KINDS}
    kind = kinds.get(parts[0].lower()) if parts else None
    if kind is None or len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--object {text!r}: expected KIND/NAMESPACE/NAME (or KIND/NAME for a cluster-scoped kind)")
    namespaced = KINDS[kind].namespaced
    if namespaced and len(parts) == 2:
        return ObjectKey(kind, "default", parts[1])
    if not namespaced and len(parts) == 3:
        raise ValueError(f"--object {text!r}: {kind} is cluster-scoped: give KIND/NAME")
    return ObjectKey(kind, parts[1] if namespaced else "", parts[-1])


def signature_text(entry: AuditEntry) -> str:
    s = entry.signature
    if s.verified:
        return "verified" if entry.granted else "verified, not granted"
    if s.method == "none":
        return "unsigned"
    return "unknown key" if "no binding names" in s.problem or "not among" in s.problem else "bad"


def rows(entries: Sequence[AuditEntry]) -> list[list[str]]:
    """Table rows: TIME COMMIT SIGNER SIGNATURE CHANGE OBJECT SUMMARY CONTROLLER."""
    out = []
    for e in entries:
        obj = f"{e.key.kind}/{e.key.namespace + '/' if e.key.namespace else ''}{e.key.name}"
        if e.outcome == "applied":
            ctl = f"applied {e.applied_at:%Y-%m-%d %H:%M:%S} in {e.applied_in[:7]}" if e.applied_at else "applied"
        elif e.outcome:
            ctl = f"{e.outcome} in {e.applied_in[:7]}"
        else:
            ctl = "not seen"
        reasons = sorted({ev.reason for ev in e.events})
        if reasons:
            ctl += f" ({', '.join(reasons)})"
        out.append([e.revision.time, e.revision.short, e.signature.signer or "-", signature_text(e), e.verb.value,
                    obj, e.summary, ctl])
    return out

"""Fields the schemas accept that gitorch gives no effect, each with the reason.

Nothing is accepted and silently ignored: every property of every schema is either read by
the code that gives it effect (tests/test_schema_coverage.py checks this) or listed in
NO_EFFECT, and `gitorch validate` warns wherever a manifest sets one of these.

A field is named by its *location*: the schema that declares it (a kind's file stem, or a
name from defs.json's $defs) and the property path inside that schema, `[]` for a list's
items and `*` for a map's values, e.g. `container.imagePullPolicy`. A definition shared by
several kinds whose field has no effect in one kind only is named for that kind:
`cronjob/jobSpec.ttlSecondsAfterFinished`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

_COMPAT = "accepted for compatibility; no effect: "
_PER_POD = (
    _COMPAT + "a StatefulSet's per-pod claims are directories on each pod's node "
    "(/var/lib/gitorch/volumes/<namespace>/<claim>-<pod>), made at first use and kept, not claim objects"
)
_SERVE = "no effect: `gitorch serve --branch/--interval` decide this"

NO_EFFECT: dict[str, str] = {
    "cluster.spec.git.branch": _SERVE,
    "cluster.spec.git.pollIntervalSeconds": _SERVE,
    "cluster.spec.heartbeat.intervalSeconds": "no effect: the controller heartbeats reachable nodes on its passes",
    "cluster.spec.heartbeat.nodeTimeoutSeconds": "no effect: GITORCH_NODE_TIMEOUT decides (default 40 s)",
    "storageclass.parameters": _COMPAT + "gitorch's local provisioner takes no parameters",
    "storageclass.allowVolumeExpansion": _COMPAT + "gitorch does not limit a volume's size, so it can always grow",
    "persistentvolume.spec.volumeMode": _COMPAT + "gitorch volumes are always directories (Filesystem)",
    "configmap.immutable": _COMPAT + "gitorch does not refuse changes; the object in Git is the truth",
    "secret.immutable": _COMPAT + "gitorch does not refuse changes; the object in Git is the truth",
    "podSpec.subdomain": _COMPAT + "gitorch's DNS has no per-pod hostname.subdomain records",
    "podSpec.automountServiceAccountToken": _COMPAT + "gitorch never mounts a token (there is no API to use it "
    "against), so false is what always happens and true is refused",
    "serviceaccount.automountServiceAccountToken": _COMPAT + "gitorch never mounts a token (there is no API to use "
    "it against), so false is what always happens and true is refused",
    "statefulset.spec.persistentVolumeClaimRetentionPolicy.whenDeleted": (
        _COMPAT + "gitorch always keeps per-pod claims' directories (Retain)"
    ),
    "statefulset.spec.persistentVolumeClaimRetentionPolicy.whenScaled": (
        _COMPAT + "gitorch always keeps per-pod claims' directories (Retain)"
    ),
    "verticalpodautoscaler.spec.recommenders": (
        _COMPAT + "gitorch has one recommender (VPA's default); its settings are serve's GITORCH_VPA_* variables"
    ),
    "cronjob/jobSpec.ttlSecondsAfterFinished": (
        "no effect on a CronJob's runs: successfulJobsHistoryLimit and failedJobsHistoryLimit decide which "
        "runs' pods are kept"
    ),
    "statefulset/claimTemplateMetadata.labels": _PER_POD,
    "statefulset/claimTemplateMetadata.annotations": _PER_POD,
    "statefulset/persistentVolumeClaimSpec.storageClassName": _PER_POD,
    "statefulset/persistentVolumeClaimSpec.volumeName": _PER_POD,
    "statefulset/persistentVolumeClaimSpec.accessModes": (
        _COMPAT + "each per-pod claim is used by its one pod on its one node, as both ReadWriteOnce and "
        "ReadWriteOncePod allow"
    ),
    "persistentVolumeClaimSpec.volumeMode": _COMPAT + "gitorch volumes are always directories (Filesystem)",
    "persistentVolumeClaimSpec.resources.requests.storage": (
        _COMPAT + "gitorch does not limit a volume's size (a claim binds only to a PersistentVolume that large)"
    ),
    "persistentVolumeClaimSpec.resources.limits.storage": _COMPAT + "gitorch does not limit a volume's size",
}

# Entries the schema requires (as Kubernetes does): a manifest cannot leave them out, so
# `validate` does not warn about them; they stay in NO_EFFECT for the record.
REQUIRED: frozenset[str] = frozenset({
    "persistentVolumeClaimSpec.resources.requests.storage",
    "statefulset/persistentVolumeClaimSpec.accessModes",
})


def reason_for(schema: str, location: str) -> str | None:
    """The NO_EFFECT reason for a field of the kind whose schema file is `schema`: the kind's own
    entry first (`cronjob/jobSpec.…`), else the location's."""
    return NO_EFFECT.get(f"{Path(schema).stem}/{location}", NO_EFFECT.get(location))


def required(schema: str, location: str) -> bool:
    return f"{Path(schema).stem}/{location}" in REQUIRED or location in REQUIRED


@dataclass(frozen=True)
class Prop:
    """One property declared by a schema, as reached from a kind's root."""

    schema: str  # the kind's schema file, e.g. deployment.json
    path: tuple[str, ...]  # keys from the document root; "[]" a list item, "*" a map value
    location: str  # e.g. container.imagePullPolicy
    fixed: bool = False  # the schema allows one value only (a `const`): Kubernetes' own, what gitorch does


_SAME_LEVEL = ("allOf", "anyOf", "oneOf")


def schema_properties(schema_dir: Path) -> Iterator[Prop]:
    """Every property of every kind's schema, `$ref`s into defs.json resolved. Conditional
    sub-schemas (if/then/else/not) only constrain properties declared elsewhere: skipped."""
    files = {f.name: json.loads(f.read_bytes()) for f in sorted(schema_dir.glob("*.json"))}

    def resolve(ref: str, current: str) -> tuple[str, str, Any]:
        file, _, frag = ref.partition("#")
        file = file or current
        node: Any = files[file]
        parts = [p for p in frag.split("/") if p]
        for p in parts:
            node = node[p]
        owner = parts[-1] if len(parts) >= 2 and parts[0] == "$defs" else Path(file).stem
        return file, owner, node

    def walk(
        node: Any, file: str, owner: str, inner: tuple[str, ...], path: tuple[str, ...], refs: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], str, bool]]:
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str):
            key = ref if "#" in ref and ref.split("#")[0] else file + ref
            if key not in refs:
                rfile, rowner, target = resolve(ref, file)
                yield from walk(target, rfile, rowner, (), path, (*refs, key))
        for name, sub in (node.get("properties") or {}).items():
            fixed = isinstance(sub, dict) and ("const" in sub or len(sub.get("enum") or ()) == 1)
            yield (*path, name), ".".join((owner, *inner, name)), fixed
            yield from walk(sub, file, owner, (*inner, name), (*path, name), refs)
        items = node.get("items")
        if isinstance(items, dict):
            yield from walk(items, file, owner, (*inner, "[]"), (*path, "[]"), refs)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            yield from walk(extra, file, owner, (*inner, "*"), (*path, "*"), refs)
        for k in _SAME_LEVEL:
            for sub in node.get(k) or ():
                yield from walk(sub, file, owner, inner, path, refs)
        for sub in (node.get("dependentSchemas") or {}).values():
            yield from walk(sub, file, owner, inner, path, refs)

    for name, contents in files.items():
        if name == "defs.json":
            continue
        seen: set[tuple[tuple[str, ...], str]] = set()
        for path, location, fixed in walk(contents, name, Path(name).stem, (), (), ()):
            if (path, location) not in seen:
                seen.add((path, location))
                yield Prop(name, path, location, fixed)


# A trie of document paths, per schema file: {key: (subtrie, reason or None)}.
_Trie = dict[str, tuple["_Trie", str | None]]


@cache
def _tries(schema_dir: Path) -> Mapping[str, _Trie]:
    out: dict[str, _Trie] = {}
    for p in schema_properties(schema_dir):
        reason = reason_for(p.schema, p.location)
        if reason is None or required(p.schema, p.location):
            continue
        node = out.setdefault(p.schema, {})
        for i, key in enumerate(p.path):
            last = i == len(p.path) - 1
            sub, why = node.get(key, ({}, None))
            node[key] = (sub, reason if last else why)
            node = sub
    return out


def no_effect_fields(schema_dir: Path, schema: str, body: Any) -> Iterator[tuple[str, str]]:
    """(JSON pointer, reason) for each no-effect field that `body`, a document of the kind
    whose schema file is `schema`, sets."""
    trie = _tries(schema_dir).get(schema)
    if trie:
        yield from _find(trie, body, "")


def _find(trie: _Trie, value: Any, ptr: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        pairs: Iterator[tuple[Any, Any]] = iter(value.items())
        for k, v in pairs:
            here = f"{ptr}/{str(k).replace('~', '~0').replace('/', '~1')}"
            for key in (k, "*"):
                if key in trie:
                    sub, reason = trie[key]
                    if reason is not None:
                        yield here, reason
                    if sub:
                        yield from _find(sub, v, here)
    elif isinstance(value, list) and "[]" in trie:
        sub, reason = trie["[]"]
        for i, v in enumerate(value):
            if reason is not None:
                yield f"{ptr}/{i}", reason
            if sub:
                yield from _find(sub, v, f"{ptr}/{i}")


def markdown() -> str:
    """Every accepted-no-effect field with its reason, as the README's table lists them."""
    rows = [(f"`{k.split('/', 1)[-1]}`" + (f" ({k.split('/', 1)[0]})" if "/" in k else ""), reason)
            for k, reason in sorted(NO_EFFECT.items(), key=lambda kv: kv[0].split("/")[-1])]
    lines = ["| field | why it has no effect |", "| --- | --- |"]
    lines += [f"| {field} | {reason.replace('|', '/')} |" for field, reason in rows]
    return "\n".join(lines) + "\n"

"""Diffs: what changes between two desired states, object by object and field by field.

Purely computational, no side effects. Secret values are replaced by a marker when a
diff is built, so nothing downstream (text, markdown, JSON, saved plans) can leak them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from gitorch.model.objects import (
    HIDDEN,
    LAST_APPLIED,
    PUBLIC_FIELDS,
    SENSITIVE_FIELDS,
    DesiredState,
    Object,
    ObjectKey,
    autoscaled,
)


class Action(enum.StrEnum):
    """What happens to an object (Flux's change-set vocabulary)."""

    CREATE = "created"
    UPDATE = "configured"
    DELETE = "deleted"
    UNCHANGED = "unchanged"

    @property
    def symbol(self) -> str:
        return {"created": "+", "configured": "~", "deleted": "-", "unchanged": " "}[self.value]

    @property
    def verb(self) -> str:
        return {
            "created": "will be created",
            "configured": "will be changed",
            "deleted": "will be destroyed",
            "unchanged": "unchanged",
        }[self.value]


class Op(enum.StrEnum):
    ADD = "+"
    REMOVE = "-"
    CHANGE = "~"


@dataclass(frozen=True)
class FieldDiff:
    """One leaf field that appears, disappears or changes; `path` is display form
    (`spec.template.spec.containers[web].image`), values are already masked."""

    op: Op
    path: str
    old: Any = None
    new: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op.value, "path": self.path}
        if self.op is not Op.ADD:
            out["old"] = self.old
        if self.op is not Op.REMOVE:
            out["new"] = self.new
        return out


@dataclass(frozen=True)
class ObjectChange:
    key: ObjectKey
    action: Action
    fields: tuple[FieldDiff, ...] = ()
    path: str = ""  # the file that defines it (head, or base when deleted)
    note: str = ""  # e.g. "moved from a.yaml" or "looks like a rename of Deployment shop/web"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "kind": self.key.kind,
            "namespace": self.key.namespace,
            "name": self.key.name,
            "path": self.path,
            "note": self.note,
            "fields": [f.to_json() for f in self.fields],
        }


@dataclass(frozen=True)
class ChangeSet:
    changes: tuple[ObjectChange, ...] = field(default_factory=tuple)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)

    @property
    def has_changes(self) -> bool:
        return any(c.action is not Action.UNCHANGED for c in self.changes)

    @property
    def summary(self) -> str:
        return (
            f"Plan: {self.count(Action.CREATE)} to add, {self.count(Action.UPDATE)} to change, "
            f"{self.count(Action.DELETE)} to destroy."
        )

    def changed(self) -> list[ObjectChange]:
        return [c for c in self.changes if c.action is not Action.UNCHANGED]


# --- field diffs ----------------------------------------------------------------------


def _named(items: list[Any]) -> bool:
    """Lists of objects with unique names (containers, env, ports, volumes) match by name."""
    if not items or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return False
    names = [i["name"] for i in items]
    return len(set(names)) == len(names)


def _child(path: str, key: str) -> str:
    if not path:
        return key
    if "." in key or "/" in key or " " in key:
        return f'{path}["{key}"]'
    return f"{path}.{key}"


def leaves(value: Any, path: str) -> list[tuple[str, Any]]:
    """Flatten a value to (display path, scalar) pairs; empty containers are leaves."""
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out.extend(leaves(v, _child(path, k)))
        return out
    if isinstance(value, list) and value:
        out = []
        named = _named(value)
        for i, v in enumerate(value):
            out.extend(leaves(v, f"{path}[{v['name'] if named else i}]"))
        return out
    return [(path, value)]


def diff_values(old: Any, new: Any, path: str = "") -> list[FieldDiff]:
    """Leaf-level differences between two JSON values, in a stable order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldDiff] = []
        for k in list(new) + [k for k in old if k not in new]:
            sub = _child(path, k)
            if k not in old:
                out.extend(FieldDiff(Op.ADD, p, None, v) for p, v in leaves(new[k], sub))
            elif k not in new:
                out.extend(FieldDiff(Op.REMOVE, p, v, None) for p, v in leaves(old[k], sub))
            else:
                out.extend(diff_values(old[k], new[k], sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and old and new:
        if _named(old) and _named(new):
            before = {i["name"]: i for i in old}
            after = {i["name"]: i for i in new}
            out = []
            for name in list(after) + [n for n in before if n not in after]:
                sub = f"{path}[{name}]"
                if name not in before:
                    out.extend(FieldDiff(Op.ADD, p, None, v) for p, v in leaves(after[name], sub))
                elif name not in after:
                    out.extend(FieldDiff(Op.REMOVE, p, v, None) for p, v in leaves(before[name], sub))
                else:
                    out.extend(diff_values(before[name], after[name], sub))
            order_old = [n for n in before if n in after]
            order_new = [n for n in after if n in before]
            if order_old != order_new:
                out.append(FieldDiff(Op.CHANGE, f"{path} (order)", order_old, order_new))
            return out
        out = []
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(old):
                out.extend(FieldDiff(Op.ADD, p, None, v) for p, v in leaves(new[i], sub))
            elif i >= len(new):
                out.extend(FieldDiff(Op.REMOVE, p, v, None) for p, v in leaves(old[i], sub))
            else:
                out.extend(diff_values(old[i], new[i], sub))
        return out
    # Equal values of one type (1 and true are equal in Python); equal lists here are empty,
    # whether parsed (ReadOnlyList) or built.
    if old == new and (type(old) is type(new) or isinstance(old, list)):
        return []
    if isinstance(old, dict | list) or isinstance(new, dict | list):
        return [FieldDiff(Op.REMOVE, p, v, None) for p, v in leaves(old, path)] + [
            FieldDiff(Op.ADD, p, None, v) for p, v in leaves(new, path)
        ]
    return [FieldDiff(Op.CHANGE, path, old, new)]


# --- masking --------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class _Sealed:
    """A secret value inside a body being diffed: equal when the values are (so a change still
    shows), always shown as HIDDEN, and never descended into."""

    value: Any


def _sealed(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """`body` with every value that may be secret sealed: a well-formed map of values keeps its
    keys (names, as Kubernetes shows them); anything else outside the public fields, whatever
    its shape, is sealed whole, and so is kubectl's last-applied copy of the object."""
    public = PUBLIC_FIELDS.get(kind)
    if public is None:
        return body
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k in SENSITIVE_FIELDS.get(kind, ()) and isinstance(v, dict):
            out[k] = {name: _Sealed(x) for name, x in v.items()}
        elif k not in public:
            out[k] = _Sealed(v)
        elif k == "metadata" and isinstance(v, dict):
            annotations = v.get("annotations")
            if isinstance(annotations, dict) and LAST_APPLIED in annotations:
                v = {**v, "annotations": {**annotations, LAST_APPLIED: _Sealed(annotations[LAST_APPLIED])}}
            out[k] = v
        elif k == "metadata":
            out[k] = _Sealed(v)
        else:
            out[k] = v
    return out


def _unsealed(value: Any) -> Any:
    if isinstance(value, _Sealed):
        return HIDDEN
    if isinstance(value, dict):
        return {k: _unsealed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unsealed(v) for v in value]
    return value


def masked_body(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """A copy of `body` with every value that may be secret replaced by a marker."""
    if kind not in PUBLIC_FIELDS:
        return body
    return dict(_unsealed(_sealed(kind, body)))


def object_diff(kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[FieldDiff]:
    """Field diffs of one object, secret values masked (a changed one shows as changed)."""
    if kind not in PUBLIC_FIELDS:
        return diff_values(old or {}, new or {})
    diffs = diff_values(_sealed(kind, old or {}), _sealed(kind, new or {}))
    return [
        FieldDiff(d.op, d.path, _unsealed(d.old), _unsealed(d.new))
        if isinstance(d.old, _Sealed) or isinstance(d.new, _Sealed)
        else d
        for d in diffs
    ]


# --- change sets ----------------------------------------------------------------------


def _without_name(body: dict[str, Any]) -> str:
    meta = dict(body.get("metadata") or {})
    meta.pop("name", None)
    return json.dumps({**body, "metadata": meta}, sort_keys=True, default=str)


def diff_states(base: DesiredState | None, head: DesiredState) -> ChangeSet:
    """Every object of base and head with its action, in apply order."""
    before: dict[ObjectKey, Object] = base.objects if base else {}
    after = head.objects
    changes: dict[ObjectKey, ObjectChange] = {}
    created: list[ObjectKey] = []
    deleted: list[ObjectKey] = []
    for key, new in after.items():
        old = before.get(key)
        if old is None:
            changes[key] = ObjectChange(key, Action.CREATE, tuple(object_diff(key.kind, None, new.body)), new.path)
            created.append(key)
            continue
        # Unchanged files yield the very same parsed body (cached by blob): skip the walk.
        same = old.body is new.body or old.body == new.body
        fields = () if same else tuple(object_diff(key.kind, old.body, new.body))
        moved = f"moved from {old.path}" if old.path != new.path else ""
        changes[key] = ObjectChange(key, Action.UPDATE if fields else Action.UNCHANGED, fields, new.path, moved)
    for key, old in before.items():
        if key not in after:
            changes[key] = ObjectChange(key, Action.DELETE, tuple(object_diff(key.kind, old.body, None)), old.path)
            deleted.append(key)
    if created and deleted:
        # A delete and a create of identical bodies but for the name reads as a rename.
        twins = {
            (k.kind, k.namespace, _without_name(before[k].body)): k for k in sorted(deleted, key=ObjectKey.sort_key)
        }
        for k in sorted(created, key=ObjectKey.sort_key):
            twin = twins.get((k.kind, k.namespace, _without_name(after[k].body)))
            if twin is not None:
                c = changes[k]
                changes[k] = ObjectChange(k, c.action, c.fields, c.path, f"renamed from {twin.name}")
                d = changes[twin]
                changes[twin] = ObjectChange(twin, d.action, d.fields, d.path, f"renamed to {k.name}")
    for key, hpa in autoscaled(head).items():
        scaled = changes.get(key)
        if scaled is not None and (scaled.action is Action.CREATE
                                   or any(f.path == "spec.replicas" for f in scaled.fields)):
            # Git's replicas is only where the workload starts: the autoscaler decides the count.
            note = f"replicas managed by HorizontalPodAutoscaler {hpa}"
            changes[key] = ObjectChange(key, scaled.action, scaled.fields, scaled.path,
                                        f"{scaled.note}; {note}" if scaled.note else note)
    for key, changed in list(changes.items()):
        if key.kind == "Node" and any(f.path == "spec.standby" for f in changed.fields):
            standby = after.get(key) is not None and after[key].spec.get("standby") is True
            note = ("standby: runs no pods until the cluster autoscaler activates it" if standby
                    else "no longer standby: takes pods like any node")
            changes[key] = ObjectChange(key, changed.action, changed.fields, changed.path,
                                        f"{changed.note}; {note}" if changed.note else note)
    ordered = sorted(changes.values(), key=lambda c: c.key.sort_key())
    return ChangeSet(tuple(ordered))

"""Label selectors: Kubernetes `matchLabels` / `matchExpressions` and plain maps, matched on labels.

Purely computational, no side effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy a LabelSelector; an empty selector matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


def expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key = expr.get("key", "")
    op = expr.get("operator", "")
    values = expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):  # node affinity only
        try:
            have, want = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def map_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service- or nodeSelector-style plain map; an empty or missing map matches nothing
    for Services (the caller decides), everything here."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def describe(selector: Mapping[str, Any] | None) -> str:
    """`app=web,tier in (a,b)` as kubectl prints selectors."""
    if not selector:
        return "<all>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        op = e.get("operator", "")
        vals = ",".join(e.get("values") or [])
        if op == "Exists":
            parts.append(e.get("key", ""))
        elif op == "DoesNotExist":
            parts.append("!" + e.get("key", ""))
        else:
            parts.append(f"{e.get('key', '')} {op.lower()} ({vals})")
    return ",".join(parts)


class SelectorSyntaxError(ValueError):
    """A `labelSelector` query string that does not parse."""


def parse(text: str) -> dict[str, Any]:
    """A label selector in Kubernetes' string form (`app=web,tier!=db,env in (a,b),!legacy`)
    as a LabelSelector (matchExpressions only); raises SelectorSyntaxError."""
    expressions: list[dict[str, Any]] = []
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):  # split on commas outside parentheses
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        lowered = part.replace("\t", " ")
        for word, op in ((" notin ", "NotIn"), (" in ", "In")):
            if word in lowered:
                key, _, rest = lowered.partition(word)
                rest = rest.strip()
                if not (rest.startswith("(") and rest.endswith(")")):
                    raise SelectorSyntaxError(f"{part!r}: expected KEY {op.lower()} (V1,V2)")
                values = [v.strip() for v in rest[1:-1].split(",") if v.strip()]
                expressions.append({"key": key.strip(), "operator": op, "values": values})
                break
        else:
            if "!=" in part:
                key, _, value = part.partition("!=")
                expressions.append({"key": key.strip(), "operator": "NotIn", "values": [value.strip()]})
            elif "=" in part:
                key, _, value = part.partition("==" if "==" in part else "=")
                expressions.append({"key": key.strip(), "operator": "In", "values": [value.strip()]})
            elif part.startswith("!"):
                expressions.append({"key": part[1:].strip(), "operator": "DoesNotExist"})
            else:
                expressions.append({"key": part, "operator": "Exists"})
        last = expressions[-1]
        if not last["key"] or any(c in last["key"] for c in " ()!=<>"):
            raise SelectorSyntaxError(f"{part!r}: not a label selector term (KEY=VALUE, KEY!=VALUE, KEY in (A,B))")
    return {"matchExpressions": expressions}

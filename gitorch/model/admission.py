"""Namespace admission: LimitRange defaults and bounds, and ResourceQuota accounting, as
Kubernetes' LimitRanger and ResourceQuota admission plugins do them.

Purely computational, no side effects. Validation (gitorch/source/crosschecks.py) reports a
container outside a LimitRange and a desired state beyond a quota at file:line; planning
(gitorch/reconcile/planning.py) applies the defaults to every pod template and keeps pods
beyond a quota Pending with Kubernetes' message (a rollout's surge, a Job's pods).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from gitorch.model.quantities import QuantityError, format_bytes, format_millis, parse_quantity

COMPUTE = ("cpu", "memory", "ephemeral-storage")


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def amount(value: Any) -> Fraction | None:
    if isinstance(value, Fraction):
        return value
    try:
        return parse_quantity(value) if isinstance(value, str | int | float) else None
    except QuantityError:
        return None


def show(resource: str, value: Fraction) -> str:
    """A quantity as Kubernetes prints it in admission messages: `500m`, `2`, `1Gi`."""
    base = resource.rsplit(".", 1)[-1]
    if base == "cpu":
        millis = value * 1000
        return format_millis(int(-(-millis.numerator // millis.denominator)))
    if base in ("memory", "storage", "ephemeral-storage"):
        return format_bytes(int(-(-value.numerator // value.denominator)))
    return str(int(value)) if value.denominator == 1 else str(float(value))


# --- LimitRange ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LimitItem:
    """One of a LimitRange's `limits`, with the API server's defaulting applied: `default`
    falls back to `max`, and `defaultRequest` to `default`."""

    range_name: str
    type: str  # Container | Pod | PersistentVolumeClaim
    default: Mapping[str, Any] = field(default_factory=dict)
    default_request: Mapping[str, Any] = field(default_factory=dict)
    max: Mapping[str, Any] = field(default_factory=dict)
    min: Mapping[str, Any] = field(default_factory=dict)
    ratio: Mapping[str, Any] = field(default_factory=dict)


def limit_items(limit_ranges: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[LimitItem, ...]:
    """The items of a namespace's LimitRanges, given as (name, spec)."""
    out = []
    for name, spec in limit_ranges:
        for item in spec.get("limits") or []:
            if not isinstance(item, dict):
                continue
            kind = str(item.get("type") or "Container")
            maximum, minimum = _map(item.get("max")), _map(item.get("min"))
            default = dict(_map(item.get("default")))
            if kind == "Container":
                for r, v in maximum.items():
                    default.setdefault(r, v)
            default_request = dict(_map(item.get("defaultRequest")))
            if kind == "Container":
                for r, v in default.items():
                    default_request.setdefault(r, v)
                for r, v in minimum.items():
                    default_request.setdefault(r, v)
            out.append(LimitItem(name, kind, default, default_request, maximum, minimum,
                                 _map(item.get("maxLimitRequestRatio"))))
    return tuple(out)


def _defaulted_container(c: Mapping[str, Any], items: tuple[LimitItem, ...]) -> dict[str, Any] | None:
    """As Kubernetes: a limit left out takes the default; a request left out takes the default
    request, unless a limit was given (the API server's defaulting made it the request)."""
    resources = _map(c.get("resources"))
    given_limits, given_requests = _map(resources.get("limits")), _map(resources.get("requests"))
    limits, requests = dict(given_limits), dict(given_requests)
    for item in items:
        if item.type != "Container":
            continue
        for r, v in item.default.items():
            limits.setdefault(r, v)
        for r, v in item.default_request.items():
            if r not in given_requests and r not in given_limits:
                requests.setdefault(r, v)
    if limits == given_limits and requests == given_requests:
        return None
    res = dict(resources)
    if limits:
        res["limits"] = limits
    if requests:
        res["requests"] = requests
    return {**c, "resources": res}


def defaulted_template(template: Mapping[str, Any], items: tuple[LimitItem, ...]) -> Mapping[str, Any]:
    """The pod template with the LimitRanges' default limits and requests filled in where its
    containers (and init containers) leave them out; the very same template when none applies."""
    if not any(i.type == "Container" and (i.default or i.default_request) for i in items):
        return template
    spec = _map(template.get("spec"))
    new_spec: dict[str, Any] | None = None
    for group in ("initContainers", "containers"):
        containers = spec.get(group)
        if not isinstance(containers, list):
            continue
        changed = [(_defaulted_container(c, items) if isinstance(c, dict) else None) for c in containers]
        if any(x is not None for x in changed):
            new_spec = new_spec if new_spec is not None else dict(spec)
            new_spec[group] = [x if x is not None else c for x, c in zip(changed, containers, strict=True)]
    if new_spec is None:
        return template
    return {**template, "spec": new_spec}


@dataclass(frozen=True)
class Violation:
    """A container (or the pod) outside a LimitRange: where, and Kubernetes' message."""

    pointer: str  # inside the pod template's spec, e.g. /containers/0/resources/limits/cpu
    message: str
    range_name: str


def limit_violations(template: Mapping[str, Any], items: tuple[LimitItem, ...]) -> list[Violation]:
    """What the LimitRanger would forbid in a (defaulted) pod template, in its words."""
    out: list[Violation] = []
    spec = _map(template.get("spec"))
    totals: dict[str, dict[str, Fraction]] = {"requests": {}, "limits": {}}
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            if not isinstance(c, dict):
                continue
            res = _map(c.get("resources"))
            requests, limits = _map(res.get("requests")), _map(res.get("limits"))
            for which, values in (("requests", requests), ("limits", limits)):
                if group == "containers":
                    for r, v in values.items():
                        a = amount(v)
                        if a is not None:
                            totals[which][r] = totals[which].get(r, Fraction(0)) + a
            base = f"/{group}/{i}/resources"
            for item in items:
                if item.type == "Container":
                    out.extend(_bounds(item, "Container", requests, limits, base))
    for item in items:
        if item.type == "Pod":
            out.extend(_bounds(item, "Pod", totals["requests"], totals["limits"], "/containers"))
    return out


def _bounds(item: LimitItem, what: str, requests: Mapping[str, Any], limits: Mapping[str, Any],
            base: str) -> list[Violation]:
    out = []
    if what == "Pod":  # the pod's sums: reported at its containers
        return [Violation(base, v.message, v.range_name)
                for v in _bounds(item, "Pod ", requests, limits, base)]
    what = what.strip()
    for r, bound in item.min.items():
        b = amount(bound)
        req = requests.get(r, limits.get(r))
        a = amount(req) if req is not None else None
        if b is None:
            continue
        if a is None:
            out.append(Violation(f"{base}/requests", f"minimum {r} usage per {what} is {show(r, b)}.  No request "
                                 "is specified", item.range_name))
        elif a < b:
            out.append(Violation(f"{base}/requests/{r}", f"minimum {r} usage per {what} is {show(r, b)}, but "
                                 f"request is {show(r, a)}", item.range_name))
    for r, bound in item.max.items():
        b = amount(bound)
        a = amount(limits.get(r)) if r in limits else None
        if b is None:
            continue
        if a is None:
            out.append(Violation(f"{base}/limits", f"maximum {r} usage per {what} is {show(r, b)}.  No limit is "
                                 "specified", item.range_name))
        elif a > b:
            out.append(Violation(f"{base}/limits/{r}", f"maximum {r} usage per {what} is {show(r, b)}, but "
                                 f"limit is {show(r, a)}", item.range_name))
    for r, bound in item.ratio.items():
        b = amount(bound)
        lim, req = amount(limits.get(r)), amount(requests.get(r, limits.get(r)))
        if b is None or lim is None or not req:
            continue
        if lim / req > b:
            out.append(Violation(f"{base}/limits/{r}", f"{r} max limit to request ratio per {what} is "
                                 f"{show('', b)}, but provided ratio is {float(lim / req):f}", item.range_name))
    return out


# --- ResourceQuota ------------------------------------------------------------------------

# What a quota's `hard` may count, besides `count/<resource>.<group>`.
POD_RESOURCES = ("pods", "requests.cpu", "requests.memory", "requests.ephemeral-storage",
                 "limits.cpu", "limits.memory", "limits.ephemeral-storage", "cpu", "memory", "ephemeral-storage")
OBJECT_COUNTS = {
    "services": "Service", "configmaps": "ConfigMap", "secrets": "Secret",
    "persistentvolumeclaims": "PersistentVolumeClaim",
}
ALIASES = {"cpu": "requests.cpu", "memory": "requests.memory", "ephemeral-storage": "requests.ephemeral-storage"}


@dataclass(frozen=True)
class Quota:
    name: str
    hard: Mapping[str, Fraction]  # resource name -> amount


def quota(name: str, spec: Mapping[str, Any]) -> Quota:
    hard = {}
    for r, v in _map(spec.get("hard")).items():
        a = amount(v)
        if a is not None:
            hard[str(r)] = a
    return Quota(name, hard)


def pod_usage(template: Mapping[str, Any]) -> dict[str, Fraction]:
    """What one pod of this (defaulted) template counts against a quota: `pods` 1, and the
    sums of its containers' requests and limits (a request left out counts as its limit), as
    Kubernetes' pod evaluator does (init containers take the max)."""
    spec = _map(template.get("spec"))
    usage: dict[str, Fraction] = {"pods": Fraction(1)}

    def of(c: Mapping[str, Any]) -> dict[str, Fraction]:
        res = _map(c.get("resources"))
        requests, limits = _map(res.get("requests")), _map(res.get("limits"))
        out: dict[str, Fraction] = {}
        for r in COMPUTE:
            lim = amount(limits.get(r))
            req = amount(requests.get(r)) if r in requests else lim
            if req is not None:
                out[f"requests.{r}"] = req
            if lim is not None:
                out[f"limits.{r}"] = lim
        return out

    # As the scheduler's pod_requests: sidecars (restartPolicy Always) add up with the
    # containers; an init container counts with the sidecars started before it.
    main: dict[str, Fraction] = {}
    for c in spec.get("containers") or []:
        if isinstance(c, dict):
            add(main, of(c))
    sidecars: dict[str, Fraction] = {}
    peak: dict[str, Fraction] = {}
    for c in spec.get("initContainers") or []:
        if not isinstance(c, dict):
            continue
        if c.get("restartPolicy") == "Always":
            add(sidecars, of(c))
            running = dict(sidecars)
        else:
            running = dict(sidecars)
            add(running, of(c))
        for k, v in running.items():
            peak[k] = max(peak.get(k, Fraction(0)), v)
    add(main, sidecars)
    for k, v in peak.items():
        main[k] = max(main.get(k, Fraction(0)), v)
    usage.update(main)
    return usage


def tracked(q: Quota, resource: str) -> Fraction | None:
    """The quota's hard limit on `resource` (`requests.cpu` also answers to `cpu`)."""
    if resource in q.hard:
        return q.hard[resource]
    for alias, full in ALIASES.items():
        if full == resource and alias in q.hard:
            return q.hard[alias]
    return None


def must_specify(q: Quota, template: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(container, resource) pairs a quota needs and a container leaves out: Kubernetes refuses
    such a pod ("must specify limits.cpu for: web")."""
    out = []
    spec = _map(template.get("spec"))
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if not isinstance(c, dict):
            continue
        res = _map(c.get("resources"))
        requests, limits = _map(res.get("requests")), _map(res.get("limits"))
        for r in COMPUTE:
            if tracked(q, f"requests.{r}") is not None and r not in requests and r not in limits:
                out.append((str(c.get("name")), f"requests.{r}"))
            if tracked(q, f"limits.{r}") is not None and r not in limits:
                out.append((str(c.get("name")), f"limits.{r}"))
    return out


def exceeded(q: Quota, used: Mapping[str, Fraction], requested: Mapping[str, Fraction]) -> str | None:
    """Kubernetes' message when `requested` on top of `used` passes the quota, else None:
    `exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=1500m, limited: requests.cpu=2`."""
    over = []
    for r, amount in sorted(requested.items()):
        hard = tracked(q, r)
        if hard is not None and amount and used.get(r, Fraction(0)) + amount > hard:
            over.append(r)
    if not over:
        return None
    names = [r if r in q.hard else next(a for a, f in ALIASES.items() if f == r) for r in over]

    def fmt(values: Mapping[str, Fraction], keys: list[str]) -> str:
        return ",".join(f"{n}={show(r, values.get(r, Fraction(0)))}" for n, r in zip(names, keys, strict=True))

    limited = {r: tracked(q, r) or Fraction(0) for r in over}
    return (f"exceeded quota: {q.name}, requested: {fmt(requested, over)}, used: {fmt(used, over)}, "
            f"limited: {fmt(limited, over)}")


def add(total: dict[str, Fraction], usage: Mapping[str, Fraction], times: int = 1) -> None:
    for k, v in usage.items():
        total[k] = total.get(k, Fraction(0)) + v * times

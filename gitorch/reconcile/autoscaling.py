"""The HorizontalPodAutoscaler's algorithm, as Kubernetes' HPA controller computes it.

Purely computational, no side effects: every function takes the time it needs. Follows
pkg/controller/podautoscaler (replica_calculator.go and horizontal.go):

- per metric, desired = ceil(ready pods x current / target), nothing when within the
  tolerance (0.1); Pending pods and (for CPU) pods not ready, or ready for less than one
  metric window within their first 5 minutes, are left out, and pods without a sample count
  as 100% of the target on a scale-down and 0% on a scale-up; a correction that would
  reverse the direction keeps the current count;
- the largest proposal of all metrics wins; a metric that cannot be computed blocks a
  scale-down;
- `behavior`: the stabilization window (the lowest recommendation of the window on the way
  up, default 0 s; the highest on the way down, default 300 s), then the policies' rate
  limits (default up: 4 pods or 100% per 15 s, whichever is more; down: 100% per 15 s);
- minReplicas and maxReplicas bound the result; conditions AbleToScale, ScalingActive and
  ScalingLimited say why, with Kubernetes' reasons.

One deviation, for lack of a pod's readiness transition times: a CPU pod that is not ready
is always left out (Kubernetes counts one that was ready before, after its first 5 minutes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gitorch.model.objects import DesiredState, Object, autoscaled
from gitorch.model.quantities import QuantityError, cpu_millis, to_bytes
from gitorch.reconcile.podspecs import short_hash

TOLERANCE = 0.1
CPU_INITIALIZATION_PERIOD = 300.0  # --horizontal-pod-autoscaler-cpu-initialization-period
INITIAL_READINESS_DELAY = 30.0  # --horizontal-pod-autoscaler-initial-readiness-delay
MAX_EVENTS = 200  # scale events kept per autoscaler (besides their age: the longest policy period)
MAX_RECOMMENDATIONS = 400  # recommendations kept per autoscaler (besides their age: the longest window)


class MetricError(Exception):
    """A metric that cannot be computed: `reason` is Kubernetes' condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Metric:
    """One resource metric: `resource` is cpu (millicores) or memory (bytes)."""

    resource: str
    utilization: int | None = None  # target percentage of requests
    average: int | None = None  # target use per pod
    container: str | None = None  # ContainerResource

    @property
    def id(self) -> str:
        return f"{self.resource}/{self.container}" if self.container else self.resource

    def describe(self) -> str:
        what = f"{self.resource} resource" + (f" of container {self.container}" if self.container else "")
        return f"{what} utilization (percentage of request)" if self.utilization is not None else what


@dataclass(frozen=True)
class Policy:
    type: str  # Pods | Percent
    value: int
    period: int


@dataclass(frozen=True)
class Rules:
    window: int
    select: str  # Max | Min | Disabled
    policies: tuple[Policy, ...]


DEFAULT_UP = Rules(0, "Max", (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
DEFAULT_DOWN = Rules(300, "Max", (Policy("Percent", 100, 15),))


@dataclass(frozen=True)
class Spec:
    target_kind: str
    target_name: str
    min_replicas: int
    max_replicas: int
    metrics: tuple[Metric, ...]
    up: Rules = DEFAULT_UP
    down: Rules = DEFAULT_DOWN


def _quantity(resource: str, raw: Any) -> int:
    return cpu_millis(raw) if resource == "cpu" else to_bytes(raw)


def parse_spec(spec: Mapping[str, Any]) -> Spec:
    """A schema-valid HPA spec as typed values, with Kubernetes' defaults."""
    ref = spec.get("scaleTargetRef") or {}
    metrics: list[Metric] = []
    for m in spec.get("metrics") or [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 80}}}]:
        src = m.get("resource") if m.get("type") == "Resource" else m.get("containerResource")
        target = src.get("target") or {}
        resource = str(src.get("name"))
        try:
            average = (_quantity(resource, target["averageValue"])
                       if target.get("type") == "AverageValue" and target.get("averageValue") is not None else None)
        except QuantityError as exc:
            raise MetricError("InvalidMetricSourceType", f"averageValue: {exc}") from exc
        utilization = target.get("averageUtilization") if target.get("type") == "Utilization" else None
        metrics.append(Metric(resource, int(utilization) if utilization is not None else None, average,
                              src.get("container") if m.get("type") == "ContainerResource" else None))
    behavior = spec.get("behavior") or {}
    return Spec(
        str(ref.get("kind")), str(ref.get("name")), int(spec.get("minReplicas", 1)), int(spec["maxReplicas"]),
        tuple(metrics), _rules(behavior.get("scaleUp"), DEFAULT_UP), _rules(behavior.get("scaleDown"), DEFAULT_DOWN),
    )


def _rules(raw: Mapping[str, Any] | None, default: Rules) -> Rules:
    if not raw:
        return default
    policies = tuple(Policy(str(p["type"]), int(p["value"]), int(p["periodSeconds"]))
                     for p in raw.get("policies") or [])
    return Rules(int(raw.get("stabilizationWindowSeconds", default.window)), str(raw.get("selectPolicy", "Max")),
                 policies or default.policies)


@dataclass(frozen=True)
class PodSample:
    """One pod of the target as the calculator sees it; `values` per metric id, absent: no sample."""

    name: str
    phase: str
    ready: bool
    started: float
    ready_since: float | None = None
    values: Mapping[str, int] = field(default_factory=dict)
    timestamp: float = 0.0  # of the sample
    window: float = 15.0  # seconds the sample covers


@dataclass(frozen=True)
class MetricResult:
    replicas: int
    utilization: int | None  # percent of requests (Utilization targets)
    average: int  # average use per pod of the pods that counted


def _group(pods: Sequence[PodSample], metric: Metric, now: float) -> tuple[int, set[str], set[str]]:
    """groupPods: (ready pods with a sample, ignored pods, pods missing a sample)."""
    ready, ignored, missing = 0, set(), set()
    for p in pods:
        if p.phase in ("Failed", "Succeeded"):
            continue
        if p.phase == "Pending":
            ignored.add(p.name)
            continue
        if metric.id not in p.values:
            missing.add(p.name)
            continue
        if metric.resource == "cpu":
            if now < p.started + CPU_INITIALIZATION_PERIOD:
                # Unready, or one metric window not yet collected since it became ready.
                ignore = not p.ready or p.ready_since is None or p.timestamp < p.ready_since + p.window
            else:
                ignore = not p.ready
            if ignore:
                ignored.add(p.name)
                continue
        ready += 1
    return ready, ignored, missing


def _ratio(values: Mapping[str, int], metric: Metric, request: int | None) -> tuple[float, int | None, int]:
    """(usage ratio, utilization percent, average) as GetResourceUtilizationRatio and
    GetMetricUtilizationRatio compute them (integer arithmetic where Kubernetes has it)."""
    total = sum(values.values())
    average = total // len(values)
    if metric.utilization is not None:
        assert request is not None
        requests = request * len(values)
        if requests <= 0:
            raise MetricError("FailedGetResourceMetric", f"missing request for {metric.resource}")
        utilization = total * 100 // requests
        return utilization / metric.utilization, utilization, average
    assert metric.average is not None
    return average / metric.average if metric.average else math.inf, None, average


def replicas_for_metric(current: int, pods: Sequence[PodSample], metric: Metric, request: int | None, now: float,
                        tolerance: float = TOLERANCE) -> MetricResult:
    """GetResourceReplicas (Utilization) and GetRawResourceReplicas (AverageValue) for one metric."""
    if not pods:
        raise MetricError("FailedGetResourceMetric", "no pods returned by selector while calculating replica count")
    if metric.utilization is not None and (request is None or request <= 0):
        raise MetricError("FailedGetResourceMetric", f"missing request for {metric.resource}")
    ready, ignored, missing = _group(pods, metric, now)
    values = {p.name: p.values[metric.id] for p in pods if metric.id in p.values and p.name not in ignored
              and p.phase not in ("Failed", "Succeeded", "Pending")}
    if not values:
        raise MetricError("FailedGetResourceMetric",
                          f"unable to get metrics for resource {metric.resource}: no metrics returned from resource "
                          "metrics API" if not any(metric.id in p.values for p in pods)
                          else "did not receive metrics for any ready pods")
    ratio, utilization, average = _ratio(values, metric, request)
    rebalance = bool(ignored) and ratio > 1.0
    if not rebalance and not missing:
        if abs(1.0 - ratio) <= tolerance:
            return MetricResult(current, utilization, average)
        return MetricResult(math.ceil(ratio * ready), utilization, average)
    filled = dict(values)
    if missing:
        plain = metric.utilization is None
        if ratio < 1.0:
            # On a scale-down, pods without a sample count as using exactly the target (their request).
            fill = request if not plain else metric.average
            for name in missing:
                filled[name] = int(fill or 0)
        elif ratio > 1.0 or plain:
            for name in missing:
                filled[name] = 0  # on a scale-up, as using nothing
    if rebalance:
        for name in ignored:
            filled[name] = 0
    new_ratio = _ratio(filled, metric, request)[0]
    if (abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio)):
        return MetricResult(current, utilization, average)
    replicas = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return MetricResult(current, utilization, average)
    return MetricResult(replicas, utilization, average)


# --- behavior ------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """What an autoscaler remembers between syncs (kept in its status in the store): its
    recommendations (time, replicas) and scale events (time, change; up positive)."""

    recommendations: tuple[tuple[float, int], ...] = ()
    events: tuple[tuple[float, int], ...] = ()
    last_scale: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"recommendations": [list(r) for r in self.recommendations], "events": [list(e) for e in self.events],
                "lastScaleTime": self.last_scale}

    @classmethod
    def from_json(cls, raw: Any) -> History:
        if not isinstance(raw, Mapping):
            return cls()

        def pairs(key: str) -> tuple[tuple[float, int], ...]:
            return tuple((float(p[0]), int(p[1])) for p in raw.get(key) or []
                         if isinstance(p, (list, tuple)) and len(p) == 2)

        last = raw.get("lastScaleTime")
        return cls(pairs("recommendations"), pairs("events"), float(last) if isinstance(last, (int, float)) else None)


def _changed_within(events: Sequence[tuple[float, int]], period: int, now: float, up: bool) -> int:
    cutoff = now - period
    return sum(abs(c) for t, c in events if t > cutoff and (c > 0) == up)


def scale_up_limit(current: int, history: History, rules: Rules, now: float) -> int:
    """calculateScaleUpLimitWithScalingRules."""
    if rules.select == "Disabled":
        return current
    result: int | None = None
    for p in rules.policies:
        start = current - _changed_within(history.events, p.period, now, True) + _changed_within(
            history.events, p.period, now, False)
        proposed = start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
        result = proposed if result is None else (min if rules.select == "Min" else max)(result, proposed)
    return current if result is None else result


def scale_down_limit(current: int, history: History, rules: Rules, now: float) -> int:
    """calculateScaleDownLimitWithBehaviors."""
    if rules.select == "Disabled":
        return current
    result: int | None = None
    for p in rules.policies:
        start = current - _changed_within(history.events, p.period, now, True) + _changed_within(
            history.events, p.period, now, False)
        proposed = start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
        result = proposed if result is None else (max if rules.select == "Min" else min)(result, proposed)
    return current if result is None else result


def stabilize(current: int, desired: int, history: History, spec: Spec, now: float) -> tuple[int, str, str, History]:
    """stabilizeRecommendationWithBehaviors: the recommendation bounded by the windows'
    (lowest recent on the way up, highest recent on the way down); records `desired`."""
    up_cut, down_cut = now - spec.up.window, now - spec.down.window
    up, down = desired, desired
    for t, r in history.recommendations:
        if t > up_cut:
            up = min(up, r)
        if t > down_cut:
            down = max(down, r)
    recommendation = min(max(current, up), down)
    oldest = min(up_cut, down_cut)
    kept = tuple(r for r in history.recommendations if r[0] > oldest)[-(MAX_RECOMMENDATIONS - 1):]
    history = replace(history, recommendations=(*kept, (now, desired)))
    if recommendation == desired:
        return recommendation, "ReadyForNewScale", "recommended size matches current size", history
    if recommendation < desired:
        return (recommendation, "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
                history)
    return (recommendation, "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation", history)


def limit_rate(current: int, desired: int, history: History, spec: Spec, now: float) -> tuple[int, str, str]:
    """convertDesiredReplicasWithBehaviorRate: the policies' rate limits, then min/maxReplicas."""
    if desired > current:
        limit = max(scale_up_limit(current, history, spec.up, now), current)
        if spec.max_replicas > limit:
            allowed, reason = limit, "ScaleUpLimit"
            message = "the desired replica count is increasing faster than the maximum scale rate"
        else:
            allowed, reason = spec.max_replicas, "TooManyReplicas"
            message = "the desired replica count is more than the maximum replica count"
        if desired > allowed:
            return allowed, reason, message
    elif desired < current:
        limit = min(scale_down_limit(current, history, spec.down, now), current)
        if spec.min_replicas < limit:
            allowed, reason = limit, "ScaleDownLimit"
            message = "the desired replica count is decreasing faster than the maximum scale rate"
        else:
            allowed, reason = spec.min_replicas, "TooFewReplicas"
            message = "the desired replica count is less than the minimum replica count"
        if desired < allowed:
            return allowed, reason, message
    return desired, "DesiredWithinRange", "the desired count is within the acceptable range"


# --- one sync ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    metrics: tuple[dict[str, Any], ...]  # status.currentMetrics
    conditions: tuple[dict[str, str], ...]
    history: History
    rescale_reason: str = ""  # set when desired != current

    @property
    def rescaled(self) -> bool:
        return self.desired != self.current


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message}


def evaluate(spec: Spec, current: int, pods: Sequence[PodSample], requests: Mapping[str, int | None],
             history: History, now: float) -> Decision:
    """One sync of one autoscaler (reconcileAutoscaler): the replica count to set now, with its
    conditions and the updated history. `requests`: per metric id, each pod's request (None: a
    container has none)."""
    if not history.recommendations:
        # maybeInitScaleDownStabilizationWindow: a new autoscaler does not scale down at once.
        history = replace(history, recommendations=((now, current),))
    able = _condition("AbleToScale", True, "SucceededGetScale", "the HPA controller was able to get the target's "
                      "current scale")
    if current == 0 and spec.min_replicas != 0:
        return Decision(0, 0, (), (able, _condition("ScalingActive", False, "ScalingDisabled",
                                                    "scaling is disabled since the replica count of the target is "
                                                    "zero")), history)
    if current > spec.max_replicas or current < spec.min_replicas:
        desired = spec.max_replicas if current > spec.max_replicas else spec.min_replicas
        reason = ("Current number of replicas above Spec.MaxReplicas" if current > spec.max_replicas
                  else "Current number of replicas below Spec.MinReplicas")
        history = _record(history, current, desired, now, spec)
        return Decision(desired, current, (), (able, _condition("ScalingActive", True, "ValidMetricFound", reason)),
                        history, reason)
    proposal, chosen, statuses, errors = 0, "", [], []
    for m in spec.metrics:
        try:
            result = replicas_for_metric(current, pods, m, requests.get(m.id), now)
        except MetricError as exc:
            errors.append(exc)
            continue
        statuses.append(_current_metric(m, result))
        if result.replicas > proposal:
            proposal, chosen = result.replicas, m.describe()
    if not statuses:
        first = errors[0]
        return Decision(current, current, (), (able, _condition("ScalingActive", False, first.reason, "the HPA was "
                                                                 f"unable to compute the replica count: "
                                                                 f"{first.message}")), history)
    active = _condition("ScalingActive", True, "ValidMetricFound",
                        f"the HPA was able to successfully calculate a replica count from {chosen}")
    if errors and proposal < current:
        proposal = current  # an invalid metric blocks a scale-down (it might ask for more)
    rescale_reason = f"{chosen} above target" if proposal > current else "All metrics below target"
    stabilized, reason, message, history = stabilize(current, proposal, history, spec, now)
    able = _condition("AbleToScale", True, reason, message)
    desired, reason, message = limit_rate(current, stabilized, history, spec, now)
    limited = _condition("ScalingLimited", desired != stabilized, reason, message)
    history = _record(history, current, desired, now, spec)
    if desired != current:
        able = _condition("AbleToScale", True, "SucceededRescale",
                          f"the HPA controller was able to update the target scale to {desired}")
    return Decision(desired, current, tuple(statuses), (able, active, limited), history,
                    rescale_reason if desired != current else "")


def _record(history: History, current: int, desired: int, now: float, spec: Spec) -> History:
    """A scale event, kept while a policy's period may count it."""
    if desired == current:
        return history
    longest = max([p.period for p in (*spec.up.policies, *spec.down.policies)], default=15)
    events = tuple(e for e in history.events if e[0] > now - longest)[-(MAX_EVENTS - 1):]
    return replace(history, events=(*events, (now, desired - current)), last_scale=now)


def _current_metric(m: Metric, result: MetricResult) -> dict[str, Any]:
    current: dict[str, Any] = {"averageValue": result.average}
    if result.utilization is not None:
        current["averageUtilization"] = result.utilization
    source: dict[str, Any] = {"name": m.resource, "current": current}
    if m.container:
        source["container"] = m.container
        return {"type": "ContainerResource", "containerResource": source}
    return {"type": "Resource", "resource": source}


def target_text(m: Metric) -> str:
    """A metric's target as kubectl shows it: 50% or 500m / 256Mi."""
    if m.utilization is not None:
        return f"{m.utilization}%"
    return _amount(m.resource, m.average)


def _amount(resource: str, value: int | None) -> str:
    if value is None:
        return "<unknown>"
    return f"{value}m" if resource == "cpu" else f"{value // (1024 * 1024)}Mi" if value >= 1 << 20 else str(value)


def current_text(m: Metric, current: Mapping[str, Any] | None) -> str:
    if not current:
        return "<unknown>"
    if m.utilization is not None and current.get("averageUtilization") is not None:
        return f"{current['averageUtilization']}%"
    value = current.get("averageValue")
    return _amount(m.resource, int(value)) if isinstance(value, (int, float)) else "<unknown>"


def applied_hash(state: DesiredState, obj: Object) -> str:
    """The hash of what applying `obj` means: an autoscaled workload's `replicas` is left out, as
    a change of it in Git changes nothing while its autoscaler decides (drift does not report it)."""
    if obj.key not in autoscaled(state) or "replicas" not in obj.spec:
        return short_hash(obj.body)
    return short_hash({**obj.body, "spec": {k: v for k, v in obj.spec.items() if k != "replicas"}})

"""The HPA algorithm (reconcile/autoscaling.py): Kubernetes' replica calculator cases
(pkg/controller/podautoscaler/replica_calculator_test.go, same numbers and expectations),
behavior policies and stabilization windows, and one sync's conditions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gitorch.reconcile.autoscaling import (
    DEFAULT_DOWN,
    DEFAULT_UP,
    History,
    Metric,
    MetricError,
    PodSample,
    Policy,
    Rules,
    Spec,
    evaluate,
    limit_rate,
    parse_spec,
    replicas_for_metric,
    stabilize,
)

NOW = 10_000.0
COOL = NOW - 600  # started past the CPU initialization period (5 min)
HOT = NOW - 60  # within it
CPU30 = Metric("cpu", utilization=30)
CPU50 = Metric("cpu", utilization=50)


def pods(levels: Sequence[int | None], ready: Sequence[bool] | None = None, phases: Sequence[str] | None = None,
         started: Sequence[float] | None = None, metric: Metric = CPU30) -> list[PodSample]:
    """Pods as the upstream tests build them: ready since they started, a sample taken now."""
    out = []
    for i in range(max(len(levels), len(ready or []), len(phases or []))):
        start = started[i] if started else COOL
        is_ready = ready[i] if ready else True
        # Hot pods became ready just now: their sample covers no full window since.
        ready_since = (NOW - 1 if start == HOT else start) if is_ready else None
        level = levels[i] if i < len(levels) else None
        values = {metric.id: level} if level is not None else {}
        out.append(PodSample(f"p{i}", phases[i] if phases else "Running", is_ready, start, ready_since, values,
                             timestamp=NOW, window=15.0))
    return out


# (current, pods, metric, request per pod, expected replicas, expected utilization)
UPSTREAM = [
    pytest.param(3, pods([300, 500, 700]), CPU30, 1000, 5, 50, id="ScaleUp"),
    pytest.param(3, pods([300, 500, 700], ready=[False, True, True]), CPU30, 1000, 4, 60, id="ScaleUpUnreadyLessScale"),
    pytest.param(3, pods([300, 500, 700], started=[HOT, COOL, COOL]), CPU30, 1000, 4, 60, id="ScaleUpHotCpuLessScale"),
    pytest.param(3, pods([400, 500, 700], ready=[True, False, False]), CPU30, 1000, 3, 40, id="ScaleUpUnreadyNoScale"),
    pytest.param(3, pods([400, 500, 700], ready=[True, False, False], started=[COOL, HOT, HOT]), CPU30, 1000, 3, 40,
                 id="ScaleHotCpuNoScale"),
    pytest.param(2, pods([500, 700], ready=[True, True, False, False],
                         phases=["Running", "Running", "Failed", "Failed"]), CPU30, 1000, 4, 60,
                 id="ScaleUpIgnoresFailedPods"),
    pytest.param(5, pods([100, 300, 500, 250, 250]), CPU50, 1000, 3, 28, id="ScaleDown"),
    pytest.param(5, pods([100, 300, 500, 250, 250], ready=[True, True, True, False, False], metric=CPU50), CPU50,
                 1000, 2, 30, id="ScaleDownIncludeUnreadyPods"),
    pytest.param(5, pods([100], ready=[True, False, False, False, False],
                         phases=["Running", "Pending", "Pending", "Pending", "Pending"], metric=CPU50), CPU50, 1000,
                 1, 10, id="ScaleDownExcludeUnscheduledPods"),
    pytest.param(5, pods([100, 300, 500, 250, 250], started=[COOL, COOL, COOL, HOT, HOT], metric=CPU50), CPU50,
                 1000, 2, 30, id="ScaleDownIgnoreHotCpuPods"),
    pytest.param(5, pods([100, 300, 500, 250, 250], ready=[True] * 5 + [False] * 2,
                         phases=["Running"] * 5 + ["Failed"] * 2, metric=CPU50), CPU50, 1000, 3, 28,
                 id="ScaleDownIgnoresFailedPods"),
    pytest.param(3, pods([1010, 1030, 1020], metric=Metric("cpu", utilization=100)), Metric("cpu", utilization=100),
                 1000, 3, 102, id="Tolerance"),
]


@pytest.mark.parametrize(("current", "samples", "metric", "per_pod", "replicas", "utilization"), UPSTREAM)
def test_replica_calculator_matches_kubernetes(current: int, samples: list[PodSample], metric: Metric, per_pod: int,
                                               replicas: int, utilization: int) -> None:
    result = replicas_for_metric(current, samples, metric, per_pod, NOW)
    assert (result.replicas, result.utilization) == (replicas, utilization)


def test_missing_metrics_count_as_the_target_down_and_nothing_up() -> None:
    m = Metric("cpu", utilization=100)
    # MissingMetricsNoChangeEq: at exactly the target, the missing pod changes nothing.
    assert replicas_for_metric(2, pods([1000, None], metric=m), m, 1000, NOW).replicas == 2
    # MissingMetricsScaleUp: 0% for the missing pod still leaves it above the tolerance.
    assert replicas_for_metric(2, pods([1900, None], metric=m), m, 1000, NOW).replicas == 2  # 95%: within 0.1
    assert replicas_for_metric(2, pods([2500, None], metric=m), m, 1000, NOW).replicas == 3  # 125% of 2 pods
    # MissingMetricsScaleDown: the missing pod counts as 100%, which damps the scale-down.
    assert replicas_for_metric(4, pods([400, 95, 100, None], metric=m), m, 1000, NOW).replicas == 2  # not 1
    # A correction that would flip the direction keeps the current count.
    assert replicas_for_metric(3, pods([1500, None, None], metric=m), m, 1000, NOW).replicas == 3


def test_average_value_targets() -> None:
    m = Metric("memory", average=100 * 2**20)
    mib = 2**20
    assert replicas_for_metric(2, pods([300 * mib, 100 * mib], metric=m), m, None, NOW).replicas == 4
    assert replicas_for_metric(4, pods([20 * mib] * 4, metric=m), m, None, NOW).replicas == 1
    # Memory pods are not left out for readiness (only CPU ones are).
    assert replicas_for_metric(2, pods([300 * mib, 100 * mib], ready=[False, True], metric=m), m, None,
                               NOW).replicas == 4


def test_errors_name_the_reason() -> None:
    with pytest.raises(MetricError, match="missing request for cpu"):
        replicas_for_metric(1, pods([100]), CPU30, None, NOW)
    with pytest.raises(MetricError, match="no metrics returned"):
        replicas_for_metric(1, pods([None]), CPU30, 1000, NOW)
    with pytest.raises(MetricError, match="did not receive metrics for any ready pods"):
        replicas_for_metric(1, pods([100], ready=[False]), CPU30, 1000, NOW)
    with pytest.raises(MetricError, match="no pods"):
        replicas_for_metric(1, [], CPU30, 1000, NOW)


def spec(**kw: object) -> Spec:
    base = dict(target_kind="Deployment", target_name="web", min_replicas=1, max_replicas=100, metrics=(CPU50,))
    base.update(kw)
    return Spec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "desired", "events", "rules", "expected", "reason"),
    [
        pytest.param(1, 10, (), DEFAULT_UP, 5, "ScaleUpLimit", id="default-up-4-pods"),
        pytest.param(10, 40, (), DEFAULT_UP, 20, "ScaleUpLimit", id="default-up-100-percent"),
        pytest.param(5, 10, ((NOW - 5, 4),), DEFAULT_UP, 5, "ScaleUpLimit", id="up-budget-spent-in-period"),
        pytest.param(5, 12, ((NOW - 20, 4),), DEFAULT_UP, 10, "ScaleUpLimit", id="up-event-outside-period"),
        pytest.param(10, 12, (), DEFAULT_UP, 12, "DesiredWithinRange", id="within-rate"),
        pytest.param(10, 1, (), Rules(0, "Max", (Policy("Pods", 2, 60),)), 8, "ScaleDownLimit", id="down-2-pods"),
        pytest.param(10, 1, (), Rules(0, "Min", (Policy("Pods", 2, 60), Policy("Percent", 50, 60))), 8,
                     "ScaleDownLimit", id="down-min-policy"),
        pytest.param(10, 1, (), Rules(0, "Max", (Policy("Pods", 2, 60), Policy("Percent", 50, 60))), 5,
                     "ScaleDownLimit", id="down-max-policy"),
        pytest.param(10, 1, (), Rules(0, "Disabled", ()), 10, "ScaleDownLimit", id="down-disabled"),
        pytest.param(10, 1, (), DEFAULT_DOWN, 1, "DesiredWithinRange", id="down-default-all-at-once"),
    ],
)
def test_rate_limits(current: int, desired: int, events: tuple[tuple[float, int], ...], rules: Rules, expected: int,
                     reason: str) -> None:
    s = spec(up=rules, down=rules) if rules not in (DEFAULT_UP, DEFAULT_DOWN) else spec()
    got, why, _ = limit_rate(current, desired, History(events=events), s, NOW)
    assert (got, why) == (expected, reason)


def test_min_and_max_bound_the_rate() -> None:
    assert limit_rate(3, 50, History(), spec(max_replicas=4), NOW)[:2] == (4, "TooManyReplicas")
    assert limit_rate(3, 1, History(), spec(min_replicas=2), NOW)[:2] == (2, "TooFewReplicas")


def test_stabilization_windows() -> None:
    s = spec(down=Rules(300, "Max", DEFAULT_DOWN.policies))
    recent = History(recommendations=((NOW - 100, 6), (NOW - 50, 4)))
    got, reason, _, history = stabilize(5, 2, recent, s, NOW)
    assert (got, reason) == (5, "ScaleDownStabilized")  # the highest in 300 s is 6: no lower than current
    assert history.recommendations[-1] == (NOW, 2)
    old = History(recommendations=((NOW - 400, 6),))
    got, reason, _, history = stabilize(5, 2, old, s, NOW)
    assert (got, reason) == (2, "ReadyForNewScale") and history.recommendations == ((NOW, 2),)  # old ones dropped
    up_window = spec(up=Rules(60, "Max", DEFAULT_UP.policies))
    got, reason, _, _ = stabilize(2, 8, History(recommendations=((NOW - 30, 3),)), up_window, NOW)
    assert (got, reason) == (3, "ScaleUpStabilized")


def test_a_sync_scales_up_at_once_and_down_after_the_window() -> None:
    s = spec(max_replicas=3, down=Rules(30, "Max", DEFAULT_DOWN.policies))
    hot = pods([100, 100], metric=CPU50)  # 100% of 100m requests, target 50%
    d = evaluate(s, 2, hot, {"cpu": 100}, History(), NOW)
    assert (d.desired, d.rescale_reason) == (3, "cpu resource utilization (percentage of request) above target")
    conds = {c["type"]: c for c in d.conditions}
    assert conds["AbleToScale"]["reason"] == "SucceededRescale"
    assert conds["ScalingActive"]["reason"] == "ValidMetricFound"
    assert (conds["ScalingLimited"]["status"], conds["ScalingLimited"]["reason"]) == ("True", "TooManyReplicas")
    assert d.metrics == ({"type": "Resource", "resource": {"name": "cpu", "current": {
        "averageValue": 100, "averageUtilization": 100}}},)
    idle = pods([1, 1, 1], metric=CPU50)
    d2 = evaluate(s, 3, idle, {"cpu": 100}, d.history, NOW + 15)
    assert d2.desired == 3 and {c["type"]: c["reason"] for c in d2.conditions}["AbleToScale"] == "ScaleDownStabilized"
    d3 = evaluate(s, 3, idle, {"cpu": 100}, d2.history, NOW + 46)  # the window (30 s) has passed
    assert (d3.desired, d3.rescale_reason) == (1, "All metrics below target")
    assert History.from_json(d3.history.to_json()) == d3.history


def test_a_new_autoscaler_waits_the_down_window_before_scaling_down() -> None:
    d = evaluate(spec(), 4, pods([1, 1, 1, 1], metric=CPU50), {"cpu": 100}, History(), NOW)
    assert d.desired == 4 and {c["type"]: c["reason"] for c in d.conditions}["AbleToScale"] == "ScaleDownStabilized"


def test_sync_outside_the_bounds_disabled_or_without_metrics() -> None:
    assert evaluate(spec(max_replicas=3), 5, [], {}, History(), NOW).desired == 3
    assert evaluate(spec(min_replicas=2), 1, [], {}, History(), NOW).rescale_reason == (
        "Current number of replicas below Spec.MinReplicas")
    off = evaluate(spec(), 0, [], {}, History(), NOW)
    assert off.desired == 0 and off.conditions[1]["reason"] == "ScalingDisabled"
    blind = evaluate(spec(), 2, pods([None, None], metric=CPU50), {"cpu": 100}, History(), NOW)
    assert blind.desired == 2 and (blind.conditions[1]["status"], blind.conditions[1]["reason"]) == (
        "False", "FailedGetResourceMetric")
    # A metric that fails blocks a scale-down the others ask for.
    mem = Metric("memory", average=2**30)
    both = spec(metrics=(CPU50, mem), down=Rules(0, "Max", DEFAULT_DOWN.policies))
    low = [PodSample(f"p{i}", "Running", True, COOL, COOL, {"cpu": 1}, NOW) for i in range(3)]
    assert evaluate(both, 3, low, {"cpu": 100}, History(recommendations=((NOW - 1, 3),)), NOW).desired == 3


def test_parse_spec_defaults_and_behavior() -> None:
    s = parse_spec({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5})
    assert (s.min_replicas, s.metrics, s.up, s.down) == (1, (Metric("cpu", utilization=80),), DEFAULT_UP, DEFAULT_DOWN)
    s = parse_spec({"scaleTargetRef": {"kind": "StatefulSet", "name": "db"}, "minReplicas": 2, "maxReplicas": 5,
                    "metrics": [{"type": "Resource", "resource": {"name": "memory", "target": {
                        "type": "AverageValue", "averageValue": "256Mi"}}},
                        {"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app",
                                                                            "target": {"type": "Utilization",
                                                                                       "averageUtilization": 60}}}],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0,
                                               "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]}}})
    assert s.metrics == (Metric("memory", average=256 * 2**20), Metric("cpu", utilization=60, container="app"))
    assert s.down == Rules(0, "Max", (Policy("Pods", 1, 30),)) and s.up == DEFAULT_UP
    assert s.metrics[1].id == "cpu/app"

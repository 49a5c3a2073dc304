"""The VPA recommender (gitorch/model/recommendations.py): hand-worked numbers, and cases ported
from kubernetes/autoscaler's vertical-pod-autoscaler/pkg/recommender tests."""

from __future__ import annotations

import math

import pytest

from gitorch.model.recommendations import (
    CPU_BUCKETS,
    DAY,
    MAX_AMOUNT,
    MEMORY_BUCKETS,
    Aggregate,
    Buckets,
    ContainerPolicy,
    ContainerWindow,
    Estimate,
    Histogram,
    RecommenderSettings,
    Resources,
    _confident,
    confidence,
    estimate,
    recommend,
)

S = RecommenderSettings()
T0 = 20833 * DAY  # a midnight UTC: decay references are whole half-lives (days) since the epoch
MI = 2**20


def test_exponential_buckets_as_vpa_test_exponential_options() -> None:
    # histogram_options_test.go TestExponentialOptions: (max 100, first 10, ratio 2)
    b = Buckets(100.0, 10.0, 2.0)
    assert b.count == 5
    found = {v: b.find(v) for v in (-1, 9.99, 10, 29.99, 30, 69.99, 70, 149.99, 150, 1e10)}
    assert list(found.values()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [b.start(i) for i in range(5)] == [0.0, 10.0, 30.0, 70.0, 150.0]
    assert (CPU_BUCKETS.count, MEMORY_BUCKETS.count) == (223, 176)


def test_percentile_estimator_as_vpa() -> None:
    # estimator_test.go TestPercentileEstimator: p20 of 1, 2, 3 cores ~ 1; p50 of 1, 2, 3 GB ~ 2 GB (5%)
    cpu, memory = Histogram(CPU_BUCKETS), Histogram(MEMORY_BUCKETS)
    for v in (1.0, 2.0, 3.0):
        cpu.add(v, 1.0, T0)
        memory.add(v * 1e9, 1.0, T0)
    assert cpu.percentile(0.2) == pytest.approx(1.0, rel=0.05)
    assert memory.percentile(0.5) == pytest.approx(2e9, rel=0.05)
    assert Histogram(CPU_BUCKETS).percentile(0.9) == 0.0  # empty


def test_decay_halves_a_sample_each_half_life() -> None:
    # weights 1 (value 1 at t0) and 2 (value 3 one half-life later): p30 falls in 1's bucket, p50 in 3's
    h = Histogram(Buckets(100.0, 1.0, 2.0), half_life=3600.0)
    h.add(1.0, 1.0, T0)
    h.add(3.0, 1.0, T0 + 3600)
    assert h.percentile(0.3) == 3.0  # the end of bucket [1, 3)
    assert h.percentile(0.5) == 7.0  # the end of bucket [3, 7)
    assert h.total / h.weights[1] == pytest.approx(3.0)


def test_reference_time_moves_forward_and_old_samples_are_forgotten() -> None:
    h = Histogram(CPU_BUCKETS, half_life=3600.0)
    h.add(0.5, 1.0, T0)
    h.add(0.5, 1.0, T0 + 3600)
    assert h.percentile(0.5) == CPU_BUCKETS.start(CPU_BUCKETS.find(0.5) + 1)
    # Past 2^100 the reference moves to the new sample's time (a whole number of half-lives) and
    # the weights are rescaled: samples 150 half-lives old weigh 2^-150, below epsilon.
    h.add(2.0, 1.0, T0 + 3600 * 150)
    assert h.reference == round((T0 + 3600 * 150) / 3600) * 3600
    assert h.percentile(0.01) == CPU_BUCKETS.start(CPU_BUCKETS.find(2.0) + 1)


def test_checkpoint_as_vpa_test_histogram_save_to_checkpoint() -> None:
    # histogram_test.go TestHistogramSaveToCheckpoint: the light bucket rounds to 0 and is dropped
    h = Histogram(CPU_BUCKETS)
    h.add(1.0, 1.0, T0)
    h.add(2.0, 100000.0, T0)
    cp = h.checkpoint()
    assert cp["bucketWeights"] == {str(CPU_BUCKETS.find(2.0)): 10000}
    assert cp["totalWeight"] == 100001.0
    loaded = Histogram(CPU_BUCKETS)
    loaded.load(cp)
    assert loaded.total == 100001.0 and loaded.percentile(0.5) == h.percentile(0.5)
    with pytest.raises(ValueError):
        Histogram(CPU_BUCKETS).load({"totalWeight": 1.0, "bucketWeights": {"9999": 1}})


def test_confidence_multiplier_as_vpa() -> None:
    # estimator_test.go TestConfidenceMultiplier: 9 samples 2 minutes apart -> 9/(60*24) = 0.00625;
    # 3.14 cores x (1 + 0.1/0.00625)^2 = 907.46 cores; 3.14e9 bytes -> 9.0746e11
    agg = Aggregate.new(S)
    for i in range(9):
        agg.add_cpu(1.0, 0.0, T0 + 120 * i)
    conf = confidence(agg)
    assert conf == 0.00625
    assert _confident(3140, 0.1, 2.0, conf) == 907460
    assert _confident(3_140_000_000, 0.1, 2.0, conf) == 907_460_000_000
    # No history: the upper bound is the largest amount, the lower bound zero.
    assert _confident(3140, 1.0, 1.0, 0.0) == MAX_AMOUNT
    assert _confident(3140, 0.001, -2.0, 0.0) == 0


def _steady(cores: float, request: float, peak: float, minutes: int, every: float = 60.0) -> Aggregate:
    agg = Aggregate.new(S)
    window = ContainerWindow()
    for i in range(minutes):
        t = T0 + every * i
        window.add_cpu(agg, cores, request, t)
        window.add_memory(agg, peak, t, S.memory_interval)
    return agg


def test_estimate_hand_worked() -> None:
    # 0.5 cores, steady: bucket 66 = floor(log(0.5 x 0.05 / 0.001 + 1) / log 1.05), whose end is
    # 0.001 x (1.05^67 - 1) / 0.05 = 0.50567 cores -> 505m, + 15% (75m) = 580m for every percentile.
    # 400e6 bytes: bucket 22, ending at 414304751 bytes, + 15% (62145712) = 476450463 bytes.
    agg = _steady(0.5, 0.1, 400e6, minutes=24 * 60)  # a day at one sample a minute: confidence ~1
    assert confidence(agg) == pytest.approx(1.0, abs=0.001)
    est = estimate(agg, S)
    assert est.target == Resources(580, 476450463)
    # lower x (1 + 0.001/c)^-2 ~ 0.998; upper x (1 + 1/c) ~ 2
    c = confidence(agg)
    assert est.lower == Resources(int(580 * (1 + 0.001 / c) ** -2), int(476450463 * (1 + 0.001 / c) ** -2))
    assert est.upper == Resources(int(580 * (1 + 1 / c)), int(476450463 * (1 + 1 / c)))
    rec = recommend(est, ContainerPolicy(), S)
    assert rec is not None
    assert rec["target"] == {"cpu": 580, "memory": 455 * MI}  # memory rounded up to 1Mi


def test_minimum_is_per_pod_and_shared_by_containers() -> None:
    agg = _steady(0.002, 0.1, 5e6, minutes=30)  # far below 25m and 250Mi
    assert estimate(agg, S).target == Resources(25, 250 * MI)
    assert estimate(agg, S, containers_per_pod=2).target == Resources(12, 125 * MI)
    # 29 minutes of history: confidence 29/1440; the upper bound is p95 (2m + 15%: 2m) x (1 + 1440/29) = 101m,
    # above the minimum; the lower bound is under it, so the minimum.
    est = estimate(agg, S)
    assert est.lower == Resources(25, 250 * MI)
    assert est.upper.cpu_millis == 101


def test_cpu_samples_weigh_by_request() -> None:
    # 10 samples at 1 core with request 0.1, then 10 at 0.2 cores with request 1: the second
    # half weighs 10 times more, so p50 lands at 0.2 cores, not between.
    agg = Aggregate.new(S)
    for i in range(10):
        agg.add_cpu(1.0, 0.1, T0 + i)
    for i in range(10, 20):
        agg.add_cpu(0.2, 1.0, T0 + i)
    assert agg.cpu.percentile(0.5) == pytest.approx(0.2, rel=0.05)
    assert agg.samples == 20 and agg.first_sample == T0 and agg.last_sample == T0 + 19


def test_one_memory_peak_per_interval() -> None:
    agg = Aggregate.new(S)
    w = ContainerWindow()
    w.add_memory(agg, 100e6, T0, DAY)
    w.add_memory(agg, 300e6, T0 + 60, DAY)  # a higher peak replaces the first
    w.add_memory(agg, 200e6, T0 + 120, DAY)  # a lower one is not a peak
    assert agg.memory.total == pytest.approx(1.0)  # one peak, at the window's end (T0 + 1 day: the reference)
    assert agg.memory.percentile(0.01) == MEMORY_BUCKETS.start(MEMORY_BUCKETS.find(300e6) + 1)
    w.add_memory(agg, 50e6, T0 + DAY + 1, DAY)  # the next interval: a second peak, a day later so twice as heavy
    assert agg.memory.total == pytest.approx(1.0 + 2.0)
    assert not w.add_memory(agg, 10e6, T0, DAY)  # out of order


def test_an_oom_kill_is_a_bumped_memory_peak_as_vpa_record_oom() -> None:
    """VPA's RecordOOM: max(request, this interval's peak), bumped by 20% or 100Mi, whichever is
    more, as this interval's peak; once per kill; a kill before the current interval is dropped."""
    agg, w = Aggregate.new(S), ContainerWindow()
    w.add_memory(agg, 150 * MI, T0, DAY)
    assert w.record_oom(agg, T0 + 60, 200 * MI, DAY, S)  # max(200Mi, 150Mi) + 100Mi > 1.2 x 200Mi
    assert agg.memory.total == pytest.approx(1.0)  # it replaced the interval's peak
    assert agg.memory.percentile(0.01) == MEMORY_BUCKETS.start(MEMORY_BUCKETS.find(300 * MI) + 1)
    assert not w.record_oom(agg, T0 + 60, 200 * MI, DAY, S)  # the same kill, seen in the next sample
    big = ContainerWindow()
    big_agg = Aggregate.new(S)
    big.add_memory(big_agg, 1000 * MI, T0, DAY)
    assert big.record_oom(big_agg, T0 + 60, 0, DAY, S)  # 1.2 x 1000Mi > 1000Mi + 100Mi
    assert big_agg.memory.percentile(0.01) == MEMORY_BUCKETS.start(MEMORY_BUCKETS.find(1200 * MI) + 1)
    late = ContainerWindow()
    late_agg = Aggregate.new(S)
    late.add_memory(late_agg, 100 * MI, T0 + 3 * DAY, DAY)
    assert not late.record_oom(late_agg, T0, 100 * MI, DAY, S)  # long before this interval
    assert late_agg.memory.percentile(0.01) == MEMORY_BUCKETS.start(MEMORY_BUCKETS.find(100 * MI) + 1)
    est = estimate(agg, S)
    assert est.target.memory_bytes >= 300 * MI * (1 + S.margin)



    agg, w = Aggregate.new(S), ContainerWindow()
    assert w.add_cpu(agg, 0.5, 0.1, T0)
    assert not w.add_cpu(agg, 0.5, 0.1, T0)
    assert agg.samples == 1


def test_aggregate_checkpoint_round_trip() -> None:
    agg = _steady(0.5, 0.1, 400e6, minutes=120)
    again = Aggregate.from_checkpoint(agg.checkpoint(), S)
    assert estimate(again, S) == estimate(agg, S)
    assert (again.first_sample, again.last_sample, again.samples) == (agg.first_sample, agg.last_sample, 120)
    with pytest.raises(ValueError):
        Aggregate.from_checkpoint({**agg.checkpoint(), "version": "v1"}, S)


def test_expiry_after_the_memory_window() -> None:
    agg = _steady(0.5, 0.1, 400e6, minutes=2)
    assert not agg.expired(T0 + 7 * DAY, S)
    assert agg.expired(T0 + 60 + 8 * DAY, S)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(ContainerPolicy(), {"cpu": 580, "memory": 455 * MI}, id="default"),
        pytest.param(ContainerPolicy(max_allowed={"cpu": 500}), {"cpu": 500, "memory": 455 * MI}, id="maxAllowed"),
        pytest.param(ContainerPolicy(min_allowed={"memory": 1024 * MI}), {"cpu": 580, "memory": 1024 * MI},
                     id="minAllowed"),
        pytest.param(ContainerPolicy(controlled=("cpu",)), {"cpu": 580}, id="controlledResources"),
    ],
)
def test_policy_caps_target_but_not_uncapped(policy: ContainerPolicy, expected: dict[str, int]) -> None:
    est = Estimate(Resources(580, 476450463), Resources(300, 300 * MI), Resources(900, 900 * MI))
    rec = recommend(est, policy, S)
    assert rec is not None
    assert rec["target"] == expected
    assert rec["uncappedTarget"] == {k: v for k, v in {"cpu": 580, "memory": 455 * MI}.items() if k in expected}


def test_mode_off_gives_no_recommendation() -> None:
    est = Estimate(Resources(1, 1), Resources(1, 1), Resources(1, 1))
    assert recommend(est, ContainerPolicy(mode="Off"), S) is None
    assert math.isfinite(S.max_age) and S.max_age == 8 * DAY

"""Vertical Pod Autoscaler recommendations, as VPA's recommender computes them: per container,
a decaying histogram of CPU usage (samples weighted by the CPU request) and one of memory peaks
(one peak per container and aggregation interval); target, lower and upper bounds at
percentiles of those, plus a safety margin, a per-pod minimum, and bounds widened while the
history is short (the confidence multiplier).

Purely computational, no side effects: times are given (seconds since the epoch).
Ported from kubernetes/autoscaler vertical-pod-autoscaler/pkg/recommender (util/histogram.go,
util/decaying_histogram.go, model/aggregate_container_state.go, model/container.go,
logic/estimator.go, logic/recommender.go); the constants are VPA's defaults.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CHECKPOINT_VERSION = "v2"  # VPA's SupportedCheckpointVersion: a checkpoint of another version is dropped
MAX_CHECKPOINT_WEIGHT = 10000  # the largest bucket weight a checkpoint stores (VPA's MaxCheckpointWeight)
MAX_DECAY_EXPONENT = 100  # past 2^100 the reference time moves forward (VPA's maxDecayExponent)
MAX_AMOUNT = 10**14  # VPA's MaxResourceAmount (millicores or bytes)
MIN_SAMPLE_WEIGHT = 0.1  # a CPU sample's least weight, in cores of request
EPSILON = 0.001 * MIN_SAMPLE_WEIGHT  # a bucket lighter than this is empty
DAY = 86400.0


def _round(x: float) -> int:
    """Go's round-half-up as VPA uses it (Python's round() rounds half to even)."""
    return math.floor(x + 0.5)


def _amount(x: float) -> int:
    """VPA's resourceAmountFromFloat: truncated, never negative, at most MAX_AMOUNT."""
    if x < 0 or math.isnan(x):
        return 0
    return MAX_AMOUNT if x > MAX_AMOUNT else int(x)


@dataclass(frozen=True)
class Buckets:
    """Exponential buckets: the first covers [0, first); bucket n is first * ratio^n wide."""

    max_value: float
    first: float
    ratio: float
    epsilon: float = EPSILON

    @functools.cached_property
    def count(self) -> int:
        return math.ceil(math.log(self.max_value * (self.ratio - 1) / self.first + 1) / math.log(self.ratio)) + 1

    def find(self, value: float) -> int:
        if value < self.first:
            return 0
        bucket = int(math.log(value * (self.ratio - 1) / self.first + 1) / math.log(self.ratio))
        return min(bucket, self.count - 1)

    def start(self, bucket: int) -> float:
        if bucket == 0:
            return 0.0
        return self.first * (self.ratio**bucket - 1) / (self.ratio - 1)


CPU_BUCKETS = Buckets(1000.0, 0.001, 1.05)  # cores: 1 millicore to 1000 cores, 5% wider each
MEMORY_BUCKETS = Buckets(1e12, 1e7, 1.05)  # bytes: 10 MB to 1 TB, 5% wider each


class Histogram:
    """A histogram whose samples weigh 2^((time - reference) / half_life): a sample loses half its
    weight every half-life (VPA's decayingHistogram). With half_life 0 nothing decays."""

    def __init__(self, buckets: Buckets, half_life: float = 0.0) -> None:
        self.buckets = buckets
        self.half_life = half_life
        self.weights = [0.0] * buckets.count
        self.total = 0.0
        self.min_bucket = buckets.count - 1
        self.max_bucket = 0
        self.reference = 0.0  # always a whole number of half-lives since the epoch

    def _decay(self, t: float) -> float:
        if not self.half_life:
            return 1.0
        if t > self.reference + self.half_life * MAX_DECAY_EXPONENT:
            self._shift(t)
        return float(2.0 ** ((t - self.reference) / self.half_life))

    def _shift(self, t: float) -> None:
        new = _round(t / self.half_life) * self.half_life
        self._scale(math.ldexp(1.0, _round((self.reference - new) / self.half_life)))
        self.reference = new

    def _scale(self, factor: float) -> None:
        for b in range(self.min_bucket, self.max_bucket + 1):
            self.weights[b] *= factor
        self.total *= factor
        self._bounds()

    def _bounds(self) -> None:
        last = self.buckets.count - 1
        while self.weights[self.min_bucket] < self.buckets.epsilon and self.min_bucket < last:
            self.min_bucket += 1
        while self.weights[self.max_bucket] < self.buckets.epsilon and self.max_bucket > 0:
            self.max_bucket -= 1

    def add(self, value: float, weight: float, t: float) -> None:
        weight *= self._decay(t)
        b = self.buckets.find(value)
        self.weights[b] += weight
        self.total += weight
        if self.weights[b] >= self.buckets.epsilon:
            self.min_bucket = min(self.min_bucket, b)
            self.max_bucket = max(self.max_bucket, b)

    def subtract(self, value: float, weight: float, t: float) -> None:
        weight *= self._decay(t)
        b = self.buckets.find(value)
        if weight > self.weights[b] - self.buckets.epsilon:
            weight = self.weights[b]
        self.total -= weight
        self.weights[b] -= weight
        self._bounds()

    def empty(self) -> bool:
        return self.weights[self.min_bucket] < self.buckets.epsilon

    def percentile(self, p: float) -> float:
        """The end of the bucket where the cumulated weight reaches p (0..1) of the total; 0 when empty."""
        if self.empty():
            return 0.0
        threshold = p * self.total
        partial = 0.0
        b = self.min_bucket
        while b < self.max_bucket:
            partial += self.weights[b]
            if partial >= threshold:
                break
            b += 1
        return self.buckets.start(b + 1) if b < self.buckets.count - 1 else self.buckets.start(b)

    def checkpoint(self) -> dict[str, Any]:
        """VPA's HistogramCheckpoint: bucket weights scaled so the heaviest is 10000, the total
        weight and the reference time (precision is lost, as in VPA)."""
        heaviest = max((self.weights[b] for b in range(self.min_bucket, self.max_bucket + 1)), default=0.0)
        buckets: dict[str, int] = {}
        if heaviest > 0:
            ratio = MAX_CHECKPOINT_WEIGHT / heaviest
            for b in range(self.min_bucket, self.max_bucket + 1):
                w = _round(self.weights[b] * ratio)
                if w > 0:
                    buckets[str(b)] = w
        return {"totalWeight": self.total, "bucketWeights": buckets, "referenceTimestamp": self.reference}

    def load(self, checkpoint: Mapping[str, Any]) -> None:
        """Add a checkpoint's weights (ValueError when it does not fit these buckets)."""
        total = float(checkpoint.get("totalWeight", 0.0))
        raw = checkpoint.get("bucketWeights") or {}
        if total < 0 or not isinstance(raw, Mapping):
            raise ValueError("a checkpoint with a negative total weight or no buckets")
        weights = {int(k): int(v) for k, v in raw.items()}
        if any(b < 0 or b >= self.buckets.count or w < 0 for b, w in weights.items()):
            raise ValueError("a checkpoint bucket out of range")
        self.reference = float(checkpoint.get("referenceTimestamp", 0.0))
        whole = sum(weights.values())
        if whole == 0:
            return
        ratio = total / whole
        for b, w in weights.items():
            self.min_bucket = min(self.min_bucket, b)
            self.max_bucket = max(self.max_bucket, b)
            self.weights[b] += w * ratio
        self.total += total


@dataclass(frozen=True)
class RecommenderSettings:
    """The recommender's parameters; each default is VPA's (its flag in parentheses)."""

    target_cpu_percentile: float = 0.9
    """CPU usage percentile the target is based on (--target-cpu-percentile)."""
    lower_cpu_percentile: float = 0.5
    """CPU usage percentile of the lower bound (--recommendation-lower-bound-cpu-percentile)."""
    upper_cpu_percentile: float = 0.95
    """CPU usage percentile of the upper bound (--recommendation-upper-bound-cpu-percentile)."""
    target_memory_percentile: float = 0.9
    """Memory peak percentile the target is based on (--target-memory-percentile)."""
    lower_memory_percentile: float = 0.5
    """Memory peak percentile of the lower bound (--recommendation-lower-bound-memory-percentile)."""
    upper_memory_percentile: float = 0.95
    """Memory peak percentile of the upper bound (--recommendation-upper-bound-memory-percentile)."""
    margin: float = 0.15
    """Fraction added to every estimate as a safety margin (--recommendation-margin-fraction)."""
    pod_min_cpu_millis: float = 25.0
    """Least CPU recommended for a pod, shared by its containers (--pod-recommendation-min-cpu-millicores)."""
    pod_min_memory_bytes: float = 250 * 2**20
    """Least memory recommended for a pod, shared by its containers (--pod-recommendation-min-memory-mb)."""
    confidence_interval: float = DAY
    """Seconds of history that count as one unit of confidence (--confidence-interval-cpu/-memory)."""
    cpu_half_life: float = DAY
    """Seconds after which a CPU sample weighs half (--cpu-histogram-decay-half-life)."""
    memory_half_life: float = DAY
    """Seconds after which a memory peak weighs half (--memory-histogram-decay-half-life)."""
    memory_interval: float = DAY
    """Seconds of one memory aggregation interval: one peak per container each (--memory-aggregation-interval)."""
    memory_interval_count: int = 8
    """Intervals of history kept: a container with no sample for that long is forgotten
    (--memory-aggregation-interval-count)."""
    oom_bump_ratio: float = 1.2
    """After an OOM kill, memory needed is at least this times what the container had (--oom-bump-up-ratio)."""
    oom_min_bump_bytes: float = 100 * 2**20
    """... and at least this much more (--oom-min-bump-up-bytes)."""
    round_cpu_millis: int = 1
    """CPU recommendations are rounded up to a multiple of this (--round-cpu-millicores)."""
    round_memory_bytes: int = 2**20
    """Memory recommendations are rounded up to a multiple of this: 1Mi keeps patches readable
    (VPA's default is 1 byte; its --humanize-memory rounds to a unit)."""

    @property
    def max_age(self) -> float:
        return self.memory_interval * self.memory_interval_count


@dataclass
class Aggregate:
    """The history of one container of one autoscaler (VPA's AggregateContainerState); the first
    and last sample times and the count are of CPU samples, as in VPA."""

    cpu: Histogram
    memory: Histogram
    first_sample: float | None = None
    last_sample: float | None = None
    samples: int = 0

    @classmethod
    def new(cls, s: RecommenderSettings) -> Aggregate:
        return cls(Histogram(CPU_BUCKETS, s.cpu_half_life), Histogram(MEMORY_BUCKETS, s.memory_half_life))

    def add_cpu(self, cores: float, request_cores: float, t: float) -> None:
        # Weighted by the request: when the request grows, older history weighs less (VPA's reason).
        self.cpu.add(cores, max(request_cores, MIN_SAMPLE_WEIGHT), t)
        if self.last_sample is None or t > self.last_sample:
            self.last_sample = t
        if self.first_sample is None or t < self.first_sample:
            self.first_sample = t
        self.samples += 1

    def expired(self, now: float, s: RecommenderSettings) -> bool:
        return self.last_sample is not None and now - self.last_sample >= s.max_age

    def checkpoint(self) -> dict[str, Any]:
        """VPA's VerticalPodAutoscalerCheckpointStatus, as JSON."""
        return {"version": CHECKPOINT_VERSION, "firstSampleStart": self.first_sample,
                "lastSampleStart": self.last_sample, "totalSamplesCount": self.samples,
                "cpuHistogram": self.cpu.checkpoint(), "memoryHistogram": self.memory.checkpoint()}

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], s: RecommenderSettings) -> Aggregate:
        """ValueError when the checkpoint is of another version or malformed."""
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"unsupported checkpoint version {checkpoint.get('version')!r}")
        out = cls.new(s)
        try:
            out.cpu.load(checkpoint["cpuHistogram"])
            out.memory.load(checkpoint["memoryHistogram"])
            first, last = checkpoint.get("firstSampleStart"), checkpoint.get("lastSampleStart")
            out.first_sample = float(first) if first is not None else None
            out.last_sample = float(last) if last is not None else None
            out.samples = int(checkpoint.get("totalSamplesCount", 0))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed checkpoint: {exc}") from exc
        return out


@dataclass
class ContainerWindow:
    """One container of one pod (VPA's ContainerState): which samples it already gave, and its
    memory peak in the current aggregation interval."""

    last_cpu: float | None = None
    last_memory: float | None = None
    window_end: float | None = None
    peak: float = 0.0
    last_oom: float | None = None  # the OOM kill last recorded

    def add_cpu(self, agg: Aggregate, cores: float, request_cores: float, t: float) -> bool:
        if cores < 0 or (self.last_cpu is not None and t <= self.last_cpu):
            return False  # duplicate or out of order
        agg.add_cpu(cores, request_cores, t)
        self.last_cpu = t
        return True

    def record_oom(self, agg: Aggregate, t: float, requested: float, interval: float,
                   s: RecommenderSettings) -> bool:
        """An OOM kill at `t` as an artificial memory peak, as VPA's RecordOOM: the larger of
        the request and this interval's peak, bumped by `oom_bump_ratio` or `oom_min_bump_bytes`,
        whichever is more. Each kill counts once; one older than the current interval, not at all."""
        if self.last_oom is not None and t <= self.last_oom:
            return False
        self.last_oom = t
        if self.window_end is not None and t < self.window_end - interval:
            return False
        used = max(requested, self.peak)
        needed = max(used + s.oom_min_bump_bytes, used * s.oom_bump_ratio)
        return self.add_memory(agg, needed, max(t, self.last_memory or t), interval)

    def add_memory(self, agg: Aggregate, used: float, t: float, interval: float) -> bool:
        if used < 0 or (self.last_memory is not None and t < self.last_memory):
            return False
        self.last_memory = t
        if self.window_end is None:
            self.window_end = t
        if t < self.window_end:
            if not (self.peak and used > self.peak):
                return True
            # One peak per interval: the old one is replaced in the histogram (both at the window's end).
            agg.memory.subtract(self.peak, 1.0, self.window_end)
        else:
            self.window_end += math.floor((t - self.window_end) / interval) * interval + interval
        agg.memory.add(used, 1.0, self.window_end)
        self.peak = used
        return True


@dataclass(frozen=True)
class Resources:
    cpu_millis: int
    memory_bytes: int


@dataclass(frozen=True)
class Estimate:
    target: Resources
    lower: Resources
    upper: Resources


def confidence(agg: Aggregate, interval: float = DAY) -> float:
    """How much the history can be trusted: for one sample a minute over N intervals, N
    (the lesser of the history's length and its sample count, both in intervals)."""
    if agg.first_sample is None or agg.last_sample is None:
        return 0.0
    lifespan = (agg.last_sample - agg.first_sample) / interval
    return min(lifespan, agg.samples / (interval / 60.0))


def _scaled(amount: int, factor: float) -> int:
    return _amount(amount * factor)


def _confident(amount: int, multiplier: float, exponent: float, conf: float) -> int:
    factor = math.pow(1.0 + multiplier / conf, exponent) if conf > 0 else (math.inf if exponent > 0 else 0.0)
    return _amount(amount * factor) if not math.isinf(factor) else MAX_AMOUNT if amount else 0


def estimate(agg: Aggregate, s: RecommenderSettings, containers_per_pod: int = 1) -> Estimate:
    """Target, lower and upper bound of one container (VPA's podResourceRecommender)."""
    fraction = 1.0 / max(containers_per_pod, 1)
    min_cpu = _scaled(_amount(s.pod_min_cpu_millis), fraction)
    min_memory = _scaled(_amount(s.pod_min_memory_bytes), fraction)
    conf = confidence(agg, s.confidence_interval)

    def cpu(p: float) -> int:
        base = _amount(agg.cpu.percentile(p) * 1000)
        return base + _scaled(base, s.margin)

    def memory(p: float) -> int:
        base = _amount(agg.memory.percentile(p))
        return base + _scaled(base, s.margin)

    target = Resources(max(cpu(s.target_cpu_percentile), min_cpu), max(memory(s.target_memory_percentile), min_memory))
    # Bounds are wide while the history is short: upper x (1 + 1/confidence), lower x (1 + 0.001/confidence)^-2.
    upper = Resources(max(_confident(cpu(s.upper_cpu_percentile), 1.0, 1.0, conf), min_cpu),
                      max(_confident(memory(s.upper_memory_percentile), 1.0, 1.0, conf), min_memory))
    lower = Resources(max(_confident(cpu(s.lower_cpu_percentile), 0.001, -2.0, conf), min_cpu),
                      max(_confident(memory(s.lower_memory_percentile), 0.001, -2.0, conf), min_memory))
    return Estimate(target, lower, upper)


@dataclass(frozen=True)
class ContainerPolicy:
    """A resourcePolicy.containerPolicies entry, parsed (amounts in millicores and bytes)."""

    mode: str = "Auto"  # Off: no recommendation for this container
    min_allowed: Mapping[str, int] = field(default_factory=dict)
    max_allowed: Mapping[str, int] = field(default_factory=dict)
    controlled: tuple[str, ...] = ("cpu", "memory")
    controlled_values: str = "RequestsAndLimits"


def _round_up(value: int, step: int) -> int:
    return value if step <= 1 else -(-value // step) * step


def recommend(est: Estimate, policy: ContainerPolicy, s: RecommenderSettings) -> dict[str, dict[str, int]] | None:
    """One container's recommendation: target, lowerBound, upperBound (within minAllowed and
    maxAllowed) and uncappedTarget, of the controlled resources only; None with mode Off."""
    if policy.mode == "Off":
        return None

    def values(r: Resources, capped: bool) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, raw in (("cpu", r.cpu_millis), ("memory", r.memory_bytes)):
            if name not in policy.controlled:
                continue
            v = _round_up(raw, s.round_cpu_millis if name == "cpu" else s.round_memory_bytes)
            if capped:
                if name in policy.max_allowed:
                    v = min(v, policy.max_allowed[name])
                if name in policy.min_allowed:
                    v = max(v, policy.min_allowed[name])
            out[name] = v
        return out

    return {"target": values(est.target, True), "lowerBound": values(est.lower, True),
            "upperBound": values(est.upper, True), "uncappedTarget": values(est.target, False)}

"""VerticalPodAutoscalers (updateMode "Off"): the recommender's state in serve's memory, fed with
the agents' samples, its checkpoints in the store, and each autoscaler's status.

The history lives in `Recommender` (per autoscaler and container: VPA's aggregate container
state) and survives a restart through checkpoints (VPA's VerticalPodAutoscalerCheckpoint),
written at most every `checkpoint_interval` seconds. Retention: a container's history goes
when its autoscaler or its container leaves Git, when the autoscaler's target changes, or
when it had no sample for `settings.max_age` (8 days); the store holds exactly what is kept.
The numbers themselves are model/recommendations.py's (pure).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gitorch.model import recommendations as rec
from gitorch.model.objects import DesiredState, Object, ObjectKey
from gitorch.model.quantities import QuantityError, cpu_millis, to_bytes
from gitorch.model.usage import PodUsage

log = logging.getLogger(__name__)

CheckpointKey = tuple[str, str, str]  # (namespace, autoscaler, container)
MAX_WINDOWS = 100_000  # per-pod container windows kept at most (the oldest pods' go first)


@dataclass(frozen=True)
class Target:
    """What one autoscaler recommends for: its workload and that workload's containers."""

    kind: str
    name: str
    containers: tuple[str, ...]
    requests: Mapping[str, int]  # container -> CPU request in millicores (0: none)
    memory_requests: Mapping[str, int] = field(default_factory=dict)  # container -> bytes (0: none)


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def target_of(state: DesiredState, vpa: Object) -> Target | None:
    """The autoscaler's target as `state` has it (computed once per state)."""
    memo: dict[ObjectKey, Target | None] = state.memo.setdefault("vpa_targets", {})
    if vpa.key not in memo:
        memo[vpa.key] = _target_of(state, vpa)
    return memo[vpa.key]


def _target_of(state: DesiredState, vpa: Object) -> Target | None:
    ref = _map(vpa.spec.get("targetRef"))
    key = ObjectKey(str(ref.get("kind")), vpa.key.namespace, str(ref.get("name")))
    obj = state.objects.get(key)
    if obj is None:
        return None
    spec = _map(_map(obj.spec.get("template")).get("spec"))
    names: list[str] = []
    requests: dict[str, int] = {}
    memory: dict[str, int] = {}
    for c in spec.get("containers") or []:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            continue
        names.append(c["name"])
        res = c.get("resources") or {}
        raw = (res.get("requests") or {}).get("cpu", (res.get("limits") or {}).get("cpu"))
        try:
            requests[c["name"]] = cpu_millis(raw) if raw is not None else 0
        except QuantityError:
            requests[c["name"]] = 0
        raw = (res.get("requests") or {}).get("memory", (res.get("limits") or {}).get("memory"))
        try:
            memory[c["name"]] = to_bytes(raw) if raw is not None else 0
        except QuantityError:
            memory[c["name"]] = 0
    return Target(key.kind, key.name, tuple(names), requests, memory)


def policies(spec: Mapping[str, Any]) -> dict[str, rec.ContainerPolicy]:
    """resourcePolicy.containerPolicies by container name ("*" for the rest), amounts parsed."""
    out: dict[str, rec.ContainerPolicy] = {}
    resource_policy = _map(spec.get("resourcePolicy"))
    for p in resource_policy.get("containerPolicies") or []:
        if not isinstance(p, dict) or not isinstance(p.get("containerName"), str):
            continue

        def amounts(field: str, p: dict[str, Any] = p) -> dict[str, int]:
            raw = _map(p.get(field))
            got: dict[str, int] = {}
            try:
                if "cpu" in raw:
                    got["cpu"] = cpu_millis(raw["cpu"])
                if "memory" in raw:
                    got["memory"] = to_bytes(raw["memory"])
            except QuantityError:
                pass  # validation refuses it
            return got

        controlled = p.get("controlledResources")
        out[p["containerName"]] = rec.ContainerPolicy(
            mode=str(p.get("mode") or "Auto"),
            min_allowed=amounts("minAllowed"),
            max_allowed=amounts("maxAllowed"),
            controlled=tuple(str(r) for r in controlled) if isinstance(controlled, list) else ("cpu", "memory"),
            controlled_values=str(p.get("controlledValues") or "RequestsAndLimits"),
        )
    return out


def policy_for(found: Mapping[str, rec.ContainerPolicy], container: str) -> rec.ContainerPolicy:
    return found.get(container) or found.get("*") or rec.ContainerPolicy()


def cpu_text(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def memory_text(size: int) -> str:
    for unit, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % factor == 0 and size >= factor:
            return f"{size // factor}{unit}"
    return str(size)


def quantities(values: Mapping[str, int]) -> dict[str, str]:
    return {k: cpu_text(v) if k == "cpu" else memory_text(v) for k, v in values.items()}


class Recommender:
    """The history of every VerticalPodAutoscaler's containers (see the module docstring)."""

    def __init__(self, settings: rec.RecommenderSettings | None = None, checkpoint_interval: float = 60.0) -> None:
        self.settings = settings or rec.RecommenderSettings()
        self.checkpoint_interval = checkpoint_interval
        self.aggregates: dict[CheckpointKey, rec.Aggregate] = {}
        self.targets: dict[CheckpointKey, tuple[str, str]] = {}  # the workload each history is of
        self.windows: dict[tuple[str, str, str], rec.ContainerWindow] = {}  # (namespace, pod, container)
        self.fed: dict[tuple[str, str], float] = {}  # (namespace, pod) -> the newest sample taken in
        self.restored = False
        self.saved_at: float | None = None

    def restore(self, rows: Iterable[tuple[CheckpointKey, Mapping[str, Any]]]) -> int:
        """Load stored checkpoints (once); a malformed one, or one of another version, is dropped."""
        self.restored = True
        loaded = 0
        for key, value in rows:
            try:
                agg = rec.Aggregate.from_checkpoint(value, self.settings)
                target = value.get("target")
                if not (isinstance(target, list) and len(target) == 2):
                    raise ValueError("no target")
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("VerticalPodAutoscaler %s/%s: checkpoint of container %s dropped (%s)", *key, exc)
                continue
            self.aggregates[key] = agg
            self.targets[key] = (str(target[0]), str(target[1]))
            loaded += 1
        return loaded

    def feed(self, state: DesiredState, pods: Iterable[Any], history: Callable[[tuple[str, str]], list[PodUsage]],
             now: float) -> None:
        """Add every sample not yet counted of the pods of every autoscaler's target (each pod's
        containers by name: VPA aggregates per container name), then apply the retention rules."""
        by_owner: dict[ObjectKey, list[Any]] = {}
        for p in pods:
            by_owner.setdefault(ObjectKey(p.owner_kind, p.namespace, p.owner_name), []).append(p)
        interval = self.settings.memory_interval
        live_windows: set[tuple[str, str, str]] = set()
        live_pods: set[tuple[str, str]] = set()
        for vpa in state.of_kind("VerticalPodAutoscaler"):
            target = target_of(state, vpa)
            if target is None:
                continue
            ns = vpa.key.namespace
            found = policies(vpa.spec)
            for pod in by_owner.get(ObjectKey(target.kind, ns, target.name), []):
                samples = history((ns, pod.name))
                fed = self.fed.get((ns, pod.name))
                new = len(samples)
                while new > 0 and (fed is None or samples[new - 1].timestamp > fed):
                    new -= 1  # the window is in time order: only the samples after the last fed one
                if new < len(samples):
                    self.fed[(ns, pod.name)] = samples[-1].timestamp
                live_pods.add((ns, pod.name))
                for u in samples[new:]:
                    for c in u.containers:
                        if c.name not in target.containers or policy_for(found, c.name).mode == "Off":
                            continue
                        key = (ns, vpa.key.name, c.name)
                        if self.targets.get(key) != (target.kind, target.name):
                            self.aggregates[key] = rec.Aggregate.new(self.settings)  # a new or changed target
                            self.targets[key] = (target.kind, target.name)
                        agg = self.aggregates[key]
                        window = self.windows.setdefault((ns, pod.name, c.name), rec.ContainerWindow())
                        live_windows.add((ns, pod.name, c.name))
                        if c.cpu_millis is not None:  # measured over the interval before the sample
                            window.add_cpu(agg, c.cpu_millis / 1000, target.requests.get(c.name, 0) / 1000,
                                           u.timestamp - u.window)
                        if c.memory_bytes is not None:
                            window.add_memory(agg, float(c.memory_bytes), u.timestamp, interval)
                        if c.last_oom is not None:  # the instance before this one ran out of memory
                            window.record_oom(agg, c.last_oom, float(target.memory_requests.get(c.name, 0)),
                                              interval, self.settings)
                live_windows.update((ns, pod.name, c) for c in target.containers)
        for gone in set(self.windows) - live_windows:
            del self.windows[gone]
        for gone_pod in set(self.fed) - live_pods:
            del self.fed[gone_pod]
        if len(self.windows) > MAX_WINDOWS:
            for key in sorted(self.windows, key=lambda k: self.windows[k].last_memory or 0.0)[:len(self.windows)
                                                                                           - MAX_WINDOWS]:
                del self.windows[key]
        self.retain(state, now)

    def retain(self, state: DesiredState, now: float) -> None:
        wanted: set[CheckpointKey] = set()
        for vpa in state.of_kind("VerticalPodAutoscaler"):
            target = target_of(state, vpa)
            if target is not None:
                wanted.update((vpa.key.namespace, vpa.key.name, c) for c in target.containers
                              if self.targets.get((vpa.key.namespace, vpa.key.name, c)) == (target.kind, target.name))
        for key in list(self.aggregates):
            if key not in wanted or self.aggregates[key].expired(now, self.settings):
                del self.aggregates[key]
                self.targets.pop(key, None)

    def checkpoints(self) -> dict[CheckpointKey, dict[str, Any]]:
        """What the store should hold: every kept history, as VPA's checkpoint plus its target."""
        return {k: {**a.checkpoint(), "target": list(self.targets[k])} for k, a in sorted(self.aggregates.items())}

    def checkpoint_due(self, now: float) -> bool:
        return self.saved_at is None or now - self.saved_at >= self.checkpoint_interval

    def statuses(self, state: DesiredState, pods: Sequence[Any]) -> dict[ObjectKey, dict[str, Any]]:
        """Every autoscaler's status: its recommendation per container and its conditions."""
        matched: dict[ObjectKey, int] = {}
        for p in pods:
            if p.phase not in ("Succeeded", "Failed"):
                k = ObjectKey(p.owner_kind, p.namespace, p.owner_name)
                matched[k] = matched.get(k, 0) + 1
        out: dict[ObjectKey, dict[str, Any]] = {}
        for vpa in state.of_kind("VerticalPodAutoscaler"):
            target = target_of(state, vpa)
            pods_matched = matched.get(ObjectKey(target.kind, vpa.key.namespace, target.name), 0) if target else 0
            out[vpa.key] = status(vpa, target, {c: a for (ns, name, c), a in self.aggregates.items()
                                                if (ns, name) == (vpa.key.namespace, vpa.key.name)},
                                  pods_matched, self.settings)
        return out


def status(vpa: Object, target: Target | None, aggregates: Mapping[str, rec.Aggregate], pods_matched: int,
           s: rec.RecommenderSettings) -> dict[str, Any]:
    """One autoscaler's status (pure): containerRecommendations as quantities (VPA's shape),
    the conditions RecommendationProvided, LowConfidence and NoPodsMatched, and the history's
    length and sample count per container."""
    found = policies(vpa.spec)
    recommendations: list[dict[str, Any]] = []
    history: dict[str, dict[str, Any]] = {}
    low = False
    containers = target.containers if target is not None else ()
    for name in sorted(containers):
        agg = aggregates.get(name)
        if agg is None or agg.samples == 0:
            continue
        conf = rec.confidence(agg, s.confidence_interval)
        low = low or conf < 1.0
        history[name] = {"samples": agg.samples, "confidence": round(conf, 4),
                         "firstSample": agg.first_sample, "lastSample": agg.last_sample}
        got = rec.recommend(rec.estimate(agg, s, len(containers)), policy_for(found, name), s)
        if got is not None:
            recommendations.append({"containerName": name, **{k: quantities(v) for k, v in got.items()}})
    conditions: list[dict[str, Any]] = []
    if recommendations:
        conditions.append({"type": "RecommendationProvided", "status": "True", "reason": "",
                           "message": f"{len(recommendations)} container(s)"})
    else:
        why = ("no target" if target is None else "no usage samples yet: agents report every metrics interval, "
               "and only containers the process runtime runs in a cgroup are measured")
        conditions.append({"type": "RecommendationProvided", "status": "False", "reason": "NoSamples",
                           "message": why})
    if recommendations and low:
        conditions.append({"type": "LowConfidence", "status": "True", "reason": "ShortHistory",
                           "message": "less than a confidence interval of history: the bounds are wide"})
    if pods_matched == 0:
        conditions.append({"type": "NoPodsMatched", "status": "True", "reason": "NoPodsMatched",
                           "message": "No pods match this VPA object"})
    body: dict[str, Any] = {"target": [target.kind, target.name] if target else None, "conditions": conditions,
                            "history": history}
    if recommendations:
        body["recommendation"] = {"containerRecommendations": recommendations}
    return body

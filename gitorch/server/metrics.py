"""Prometheus metrics of `gitorch serve`. The only module that imports prometheus_client."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gitorch.model.usage import UsageWindow
from gitorch.reconcile.controller import PassResult
from gitorch.reconcile.drift import remaining
from gitorch.store.database import Store

PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def pass_outcome(result: PassResult) -> str:
    """converged | progressing | invalid | node_errors: one word for a pass (pure)."""
    if not result.valid:
        return "invalid"
    if set(result.node_errors) - result.lost_nodes:
        return "node_errors"
    return "converged" if result.converged else "progressing"


class Metrics:
    """The controller's metrics, in a registry of its own (not the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pass_seconds = Histogram(
            "gitorch_reconcile_pass_duration_seconds", "Duration of reconcile passes.", buckets=PASS_BUCKETS,
            registry=r,
        )
        self.passes = Counter(
            "gitorch_reconcile_passes", "Reconcile passes by outcome.", ["outcome"], registry=r
        )
        self.objects = Gauge(
            "gitorch_objects", "Desired objects by kind, health and sync state.", ["kind", "health", "sync"], registry=r
        )
        self.pods = Gauge("gitorch_pods", "Pods by phase, as the store knows them.", ["phase"], registry=r)
        self.node_reachable = Gauge(
            "gitorch_node_reachable", "1 when the node's agent answered the last pass.", ["node"], registry=r
        )
        self.applied = Info("gitorch_last_applied_revision", "The revision most recently applied.", registry=r)
        self.applied_time = Gauge(
            "gitorch_last_applied_revision_timestamp_seconds", "When the last applied revision was applied.",
            registry=r,
        )
        self.webhooks = Counter(
            "gitorch_webhook_requests", "Webhook requests by provider and result.", ["provider", "result"], registry=r
        )
        self.drift = Gauge(
            "gitorch_drift_findings", "Findings of the latest drift report, by kind (after any heal).", ["kind"],
            registry=r,
        )
        self.drift_report = Gauge(
            "gitorch_drift_report_timestamp_seconds", "When the latest drift report was started.", registry=r
        )
        self._dns = _DNSCollector()
        r.register(self._dns)
        self._usage = _UsageCollector()
        r.register(self._usage)
        self._lock = threading.Lock()
        for outcome in ("converged", "progressing", "invalid", "node_errors", "error"):
            self.passes.labels(outcome)

    def observe_failure(self, seconds: float) -> None:
        self.pass_seconds.observe(seconds)
        self.passes.labels("error").inc()

    def observe_pass(self, result: PassResult, seconds: float, store: Store) -> None:
        """Update every gauge from the pass and the store; gauges of vanished labels are removed."""
        self.pass_seconds.observe(seconds)
        self.passes.labels(pass_outcome(result)).inc()
        objects = Tally((o.kind, o.health, o.sync) for o in store.objects())
        pods = Tally(p.phase for p in store.pods())
        nodes = {n.name: n.name not in result.node_errors for n in store.nodes()}
        last = store.last_applied_revision()
        latest = store.drift_reports(limit=1)
        with self._lock:
            self.drift.clear()
            if latest:
                report = latest[0]
                for kind, n in Tally(str(f.get("kind")) for f in remaining(report)).items():
                    self.drift.labels(kind).set(n)
                self.drift_report.set(report.started_at.timestamp())
            self.objects.clear()
            for (kind, health, sync), n in objects.items():
                self.objects.labels(kind, health, sync).set(n)
            self.pods.clear()
            for phase, n in pods.items():
                self.pods.labels(phase).set(n)
            self.node_reachable.clear()
            for name, ok in nodes.items():
                self.node_reachable.labels(name).set(1 if ok else 0)
            if last is not None:
                self.applied.info({"commit": last.commit, "short": last.commit[:7]})
                if last.applied_at is not None:
                    self.applied_time.set(last.applied_at.timestamp())

    def dns_source(self, stats: Callable[[], Mapping[str, int] | None]) -> None:
        """Where DNS query counts come from (read at scrape time): transport -> count."""
        self._dns.stats = stats

    def usage_source(self, usage: Callable[[], UsageWindow | None]) -> None:
        """Where the per-pod and per-node resource gauges come from (read at scrape time)."""
        self._usage.usage = usage

    def webhook(self, provider: str, result: str) -> None:
        self.webhooks.labels(provider, result).inc()

    def render(self) -> tuple[bytes, str]:
        with self._lock:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _DNSCollector(Collector):
    """gitorch_dns_queries_total{transport}, read from the running DNS server when scraped
    (the server counts in its own hot loop; no metric call per packet)."""

    def __init__(self) -> None:
        self.stats: Callable[[], Mapping[str, int] | None] = lambda: None

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("gitorch_dns_queries", "DNS queries received, by transport.",
                                     labels=["transport"])
        for transport, n in sorted((self.stats() or {}).items()):
            family.add_metric([transport], n)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("gitorch_dns_queries", "DNS queries received, by transport.", labels=["transport"])


_USAGE_FAMILIES = (
    ("gitorch_pod_cpu_usage_millicores", "CPU used by a pod over the last metrics interval (millicores).",
     ["namespace", "pod", "node"]),
    ("gitorch_pod_memory_working_set_bytes", "A pod's working set (memory in use minus inactive file cache).",
     ["namespace", "pod", "node"]),
    ("gitorch_node_cpu_usage_millicores", "CPU used on a node over the last metrics interval (millicores).", ["node"]),
    ("gitorch_node_memory_working_set_bytes", "Memory in use on a node (MemTotal - MemAvailable).", ["node"]),
)


class _UsageCollector(Collector):
    """Resource gauges from the controller's usage window, read when scraped: a pod that is gone
    (or not reported for the window's age) has no series left."""

    def __init__(self) -> None:
        self.usage: Callable[[], UsageWindow | None] = lambda: None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pod_cpu, pod_mem, node_cpu, node_mem = (GaugeMetricFamily(n, h, labels=lbl) for n, h, lbl in _USAGE_FAMILIES)
        window = self.usage()
        if window is not None:
            for (ns, name), u in sorted(window.latest().items()):
                if u.cpu_millis is not None:
                    pod_cpu.add_metric([ns, name, u.node], u.cpu_millis, timestamp=u.timestamp)
                if u.memory_bytes is not None:
                    pod_mem.add_metric([ns, name, u.node], u.memory_bytes, timestamp=u.timestamp)
            for node, n in sorted(window.nodes().items()):
                if n.cpu_millis is not None:
                    node_cpu.add_metric([node], n.cpu_millis, timestamp=n.timestamp)
                if n.memory_bytes is not None:
                    node_mem.add_metric([node], n.memory_bytes, timestamp=n.timestamp)
        yield from (pod_cpu, pod_mem, node_cpu, node_mem)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from (GaugeMetricFamily(n, h, labels=lbl) for n, h, lbl in _USAGE_FAMILIES)

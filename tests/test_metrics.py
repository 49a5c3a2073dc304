"""/metrics content that needs no lab: DNS query counts read from a real DNS server at
scrape time, and the latest drift report's findings (what is left after a heal)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.message
import dns.query
from prometheus_client.parser import text_string_to_metric_families

from gitorch.dns.server import DNSServer, DNSSettings
from gitorch.dns.zone import ServiceRecord, ZoneData
from gitorch.model.revisions import EMPTY_REVISION
from gitorch.reconcile.controller import PassResult
from gitorch.server.metrics import Metrics
from gitorch.store.database import Store


def scrape(metrics: Metrics) -> dict[str, list[Any]]:
    text, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def test_dns_queries_are_counted_by_transport() -> None:
    metrics = Metrics()
    assert not [s for s in scrape(metrics)["gitorch_dns_queries"]]  # no DNS server: no samples
    zone = ZoneData(services=(ServiceRecord("web", "shop", "10.96.0.10"),), namespaces=frozenset({"shop"}))
    with DNSServer(zone, DNSSettings(host="127.0.0.1", port=0)) as server:
        metrics.dns_source(server.stats)
        for name in ("web.shop.svc.cluster.local", "nope.shop.svc.cluster.local") * 3:
            reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=server.port, timeout=2)
            assert reply.rcode() in (0, 3)
        dns.query.tcp(dns.message.make_query("web.shop.svc.cluster.local", "A"), "127.0.0.1",
                      port=server.port, timeout=2)
        counted = {s.labels["transport"]: s.value for s in scrape(metrics)["gitorch_dns_queries"]
                   if s.name.endswith("_total")}
    assert counted == {"udp": 6.0, "tcp": 1.0}


def test_drift_findings_of_the_latest_report(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    metrics = Metrics()
    result = PassResult(EMPTY_REVISION, valid=True)
    metrics.observe_pass(result, 0.1, store)
    assert not scrape(metrics)["gitorch_drift_findings"]
    now = datetime.now(UTC)
    found = [{"kind": "PodMissing", "object": "Pod a/b"}, {"kind": "ExtraPod", "object": "Pod a/c"},
             {"kind": "ExtraPod", "object": "Pod a/d"}]
    store.save_drift_report(started_at=now, finished_at=now, mode="report", findings=found)
    metrics.observe_pass(result, 0.1, store)
    assert {s.labels["kind"]: s.value for s in scrape(metrics)["gitorch_drift_findings"]} == {
        "PodMissing": 1.0, "ExtraPod": 2.0}
    # A healed report counts what was left after the heal.
    later = now + timedelta(seconds=1)
    store.save_drift_report(started_at=later, finished_at=later, mode="heal", findings=found,
                            healed=[{"after": found[1:2]}])
    metrics.observe_pass(result, 0.1, store)
    samples = scrape(metrics)
    assert {s.labels["kind"]: s.value for s in samples["gitorch_drift_findings"]} == {"ExtraPod": 1.0}
    assert samples["gitorch_drift_report_timestamp_seconds"][0].value > 0
    store.close()

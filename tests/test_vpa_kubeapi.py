"""A VerticalPodAutoscaler through serve's read-only Kubernetes API: autoscaling.k8s.io/v1 with
its status (conditions; the recommendation once there are samples)."""

from __future__ import annotations

from pathlib import Path

from tests.test_kubeapi import KUBECTL, Cluster
from tests.test_vpa import NS, WEB, vpa
from tests.waiting import wait_until


def test_the_api_serves_the_vertical_autoscaler(tmp_path: Path) -> None:
    c = Cluster(tmp_path, {"ns.yaml": NS, "web.yaml": WEB, "vpa.yaml": vpa()}, pods=2)
    try:
        got = wait_until("the autoscaler's status", lambda: c.get(
            "/apis/autoscaling.k8s.io/v1/namespaces/shop/verticalpodautoscalers/web"), timeout=60,
            accept=lambda o: bool(o.get("status", {}).get("conditions")))
        assert got["spec"]["targetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
        assert got["spec"]["updatePolicy"] == {"updateMode": "Off"}
        conditions = {x["type"]: x["status"] for x in got["status"]["conditions"]}
        assert conditions["RecommendationProvided"] == "False"  # no node runs the pods here: no samples
        listed = c.get("/apis/autoscaling.k8s.io/v1/verticalpodautoscalers")["items"]
        assert [o["metadata"]["name"] for o in listed] == ["web"]
        if KUBECTL is not None:
            assert "web" in c.kubectl("get", "vpa", "-n", "shop").stdout
    finally:
        c.stop()

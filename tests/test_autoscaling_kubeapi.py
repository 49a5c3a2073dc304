"""A HorizontalPodAutoscaler through serve's read-only Kubernetes API: autoscaling/v2 with its
status, and the workload's spec.replicas as the autoscaler set it (its scale, as in Kubernetes)."""

from __future__ import annotations

from pathlib import Path

from tests.test_autoscaling_planning import hpa, web
from tests.test_kubeapi import KUBECTL, Cluster
from tests.waiting import wait_until

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"


def test_the_api_serves_the_autoscaler_and_the_scale_it_set(tmp_path: Path) -> None:
    # Git says 1, the autoscaler's minimum is 2: the Deployment runs 2 (Pending here: no nodes).
    c = Cluster(tmp_path, {"ns.yaml": NS, "web.yaml": web(replicas=1),
                           "hpa.yaml": hpa().replace("minReplicas: 1", "minReplicas: 2")}, pods=2)
    try:
        got = wait_until("the autoscaler's status", lambda: c.get(
            "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/web"), timeout=60,
            accept=lambda o: o.get("status", {}).get("desiredReplicas") == 2)
        assert got["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
        assert {c["type"] for c in got["status"]["conditions"]} >= {"AbleToScale", "ScalingActive"}
        assert c.get("/apis/apps/v1/namespaces/shop/deployments/web")["spec"]["replicas"] == 2
        listed = c.get("/apis/autoscaling/v2/horizontalpodautoscalers")["items"]
        assert [o["metadata"]["name"] for o in listed] == ["web"]
        if KUBECTL is not None:
            assert "web" in c.kubectl("get", "hpa", "-n", "shop").stdout
    finally:
        c.stop()

"""What the cluster declares for Prometheus (`prometheusOperator`, `prometheusRelease`): checked config, and the
PodMonitor as rendered. That the PodMonitor scrapes exactly the Ray pods' metrics ports, translated as the
prometheus-operator translates it and run by a real Prometheus, is tests/test_kubernetes_sd.py's and the
rehearsal's to show."""

from __future__ import annotations

import pulumi
import pytest

from components import load_settings
from components.config.monitoring import Monitoring
from tests.program import render
from tests.variants import MONITORING, rendered


def error_of(config: dict[str, object]) -> str:
    with pytest.raises(pulumi.RunError) as raised:
        load_settings(config, "ray-cluster", "test")
    return str(raised.value)


def test_a_release_without_the_operators_objects_is_refused_naming_the_key() -> None:
    error = error_of({"prometheusRelease": "kps"})
    assert "prometheusRelease is 'kps'" in error and "prometheusOperator is false" in error


def test_a_release_that_is_no_label_value_is_refused() -> None:
    error = error_of({"prometheusOperator": True, "prometheusRelease": "kube prometheus"})
    assert "prometheusRelease is 'kube prometheus'" in error and "label value" in error


def test_the_settings_hold_the_release_only_when_the_objects_are_wanted() -> None:
    assert load_settings({}, "ray-cluster", "test").monitoring is None
    settings = load_settings({"prometheusOperator": True, "prometheusRelease": "kps"}, "ray-cluster", "test")
    assert settings.monitoring == Monitoring(release="kps")
    assert load_settings({"prometheusOperator": True}, "ray-cluster", "test").monitoring == Monitoring(release="")


def test_no_pod_monitor_unless_asked() -> None:
    assert rendered("default").of_kind("PodMonitor") == []


@pytest.mark.parametrize("variant", ["monitoring", "monitoring-autoscaling"])
def test_one_pod_monitor_scrapes_every_metrics_port_of_the_ray_pods_with_the_clusters_labels(variant: str) -> None:
    [monitor] = rendered(variant).of_kind("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] == "ray"
    # kube-prometheus-stack's Prometheus selects PodMonitors by their release label.
    assert monitor["metadata"]["labels"]["release"] == MONITORING["prometheusRelease"]
    assert monitor["spec"] == {
        "selector": {
            "matchLabels": {"ray.io/cluster": "ray"},
            "matchExpressions": [{"key": "ray.io/node-type", "operator": "In", "values": ["head", "worker"]}],
        },
        "podTargetLabels": ["ray.io/cluster", "ray.io/node-type", "ray.io/group"],
        "podMetricsEndpoints": [{"port": "metrics"}, {"port": "dash-metrics"}, {"port": "as-metrics"}],
    }


def test_without_a_release_the_pod_monitor_has_no_release_label() -> None:
    [monitor] = render({"prometheusOperator": "true"}).of_kind("PodMonitor")
    assert "release" not in monitor["metadata"]["labels"]

"""Pure builders for what the prometheus-operator needs to scrape the cluster: one PodMonitor for every Ray pod's
metrics port and the head's dashboard and autoscaler metrics ports, as Kubernetes dicts.

A PodMonitor, not a ServiceMonitor: every Ray pod serves its own node's metrics, and the head Service would reach
only the head (Ray's docs advise a PodMonitor for that reason). Each endpoint is one scrape job that takes the
pods' ports of its name: a worker has no `dash-metrics` port, so only the head is scraped there. Every series gets
the pods' `ray.io/*` labels (`ray_io_cluster`, the label Ray's Grafana dashboards filter on; `ray_io_node_type`;
`ray_io_group`), and the operator adds `namespace`, `pod`, `container` and `endpoint` (the port's name).

The stack's own Redis, which shares no label with the Ray pods, has a PodMonitor of its own for its exporter, whose
series get the cluster's name as `ray_io_cluster` from the Redis pod's own label for it.
"""

from __future__ import annotations

from ..config.monitoring import Monitoring
from ..config.settings import ClusterSettings
from . import pods, ray_node, redis
from .ray_node import Manifest

API_VERSION = "monitoring.coreos.com/v1"
# The pod labels copied onto every series (as ray_io_cluster, ray_io_node_type, ray_io_group).
POD_TARGET_LABELS = ("ray.io/cluster", "ray.io/node-type", "ray.io/group")
SCRAPED_PORTS = ("metrics", ray_node.DASHBOARD_METRICS_PORT_NAME, ray_node.AUTOSCALER_METRICS_PORT_NAME)
# The ray.io/node-type of the pods that run Ray nodes (the smoke test's and Serve check's pods have their own).
RAY_NODE_TYPES = ("head", "worker")


def object_labels(settings: ClusterSettings, monitoring: Monitoring) -> dict[str, str]:
    """The cluster's labels, and `release` where a kube-prometheus-stack Prometheus selects by it."""
    return {
        **pods.labels(settings, "monitoring", "monitoring"),
        **({"release": monitoring.release} if monitoring.release else {}),
    }


def pod_monitor_spec(settings: ClusterSettings) -> Manifest:
    return {
        "selector": {
            "matchLabels": {"ray.io/cluster": settings.cluster_name},
            "matchExpressions": [{"key": "ray.io/node-type", "operator": "In", "values": list(RAY_NODE_TYPES)}],
        },
        "podTargetLabels": list(POD_TARGET_LABELS),
        "podMetricsEndpoints": [{"port": port} for port in SCRAPED_PORTS],
    }


def redis_pod_monitor_spec(settings: ClusterSettings) -> Manifest | None:
    """The stack's own Redis's exporter, its series labelled with the cluster as the Ray pods' are; None without a
    Redis of the stack's own (an existing Redis is watched by whoever runs it)."""
    if settings.own_redis is None:
        return None
    cluster_label = "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in redis.CLUSTER_LABEL)
    return {
        "selector": {"matchLabels": redis.selector_labels(settings)},
        "podMetricsEndpoints": [
            {
                "port": redis.EXPORTER_PORT_NAME,
                "relabelings": [{"sourceLabels": [cluster_label], "targetLabel": "ray_io_cluster"}],
            }
        ],
    }

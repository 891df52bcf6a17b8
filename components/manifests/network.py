"""Pure builders for who may reach the cluster: the head Service's ports and the NetworkPolicies.

Ray's ports run code for whoever reaches them (CVE-2023-48022, "ShadowRay"), so by default only the cluster's
own pods may; clients are let in by namespace or CIDR, and only on the ports clients use.
"""

from __future__ import annotations

from ..config.settings import ClusterSettings
from . import pods, ray_node, redis
from .ray_node import Manifest

CLIENT_PORTS = (
    ("dashboard", ray_node.DASHBOARD_PORT),
    ("client", ray_node.CLIENT_PORT),
    ("metrics", ray_node.METRICS_PORT),
)


def head_service_ports() -> list[Manifest]:
    return [
        {"name": name, "port": port, "targetPort": port, "protocol": "TCP"}
        for name, port in (("gcs", ray_node.GCS_PORT), *CLIENT_PORTS)
    ]


def cluster_pods(settings: ClusterSettings) -> Manifest:
    return {"matchLabels": {"ray.io/cluster": settings.cluster_name}}


def internal_policy_spec(settings: ClusterSettings) -> Manifest:
    """Ray nodes and the smoke test talk to each other on many ports (GCS, raylets, object managers, workers)."""
    return {
        "podSelector": cluster_pods(settings),
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": cluster_pods(settings)}]}],
    }


def _namespaces(names: tuple[str, ...]) -> Manifest:
    match = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(names)}
    return {"namespaceSelector": {"matchExpressions": [match]}}


def _sources(cidrs: tuple[str, ...], namespaces: tuple[str, ...]) -> list[Manifest]:
    return [{"ipBlock": {"cidr": cidr}} for cidr in cidrs] + ([_namespaces(namespaces)] if namespaces else [])


def _ingress_policy(settings: ClusterSettings, sources: list[Manifest], ports: tuple[int, ...]) -> Manifest | None:
    if not sources:
        return None
    return {
        "podSelector": cluster_pods(settings),
        "policyTypes": ["Ingress"],
        "ingress": [{"from": sources, "ports": [{"port": port, "protocol": "TCP"} for port in ports]}],
    }


def client_policy_spec(settings: ClusterSettings) -> Manifest | None:
    """The listed namespaces and CIDR blocks may use the dashboard/jobs API, Ray Client and metrics; None if none."""
    sources = _sources(settings.client_cidrs, settings.client_namespaces)
    return _ingress_policy(settings, sources, tuple(port for _, port in CLIENT_PORTS))


# Every port that serves metrics: each node's, and the head's dashboard's and Ray's monitor's (the autoscaler's).
METRICS_PORTS = (ray_node.METRICS_PORT, ray_node.DASHBOARD_METRICS_PORT, ray_node.AUTOSCALER_METRICS_PORT)


def metrics_policy_spec(settings: ClusterSettings) -> Manifest | None:
    """The listed namespaces (Prometheus) may scrape every metrics port, and nothing else: scraping must not come
    with the right to submit jobs. None if none are listed."""
    sources = [_namespaces(settings.metrics_namespaces)] if settings.metrics_namespaces else []
    return _ingress_policy(settings, sources, METRICS_PORTS)


def serve_policy_spec(settings: ClusterSettings) -> Manifest | None:
    """The Serve audience (an ingress controller's namespace, a load balancer's CIDR) may reach the Serve port of
    every Ray pod, and nothing else: serving requests must not come with the right to submit jobs. None without
    Serve or without an audience (the cluster's own pods reach it anyway)."""
    serve = settings.serve
    if serve is None:
        return None
    return _ingress_policy(settings, _sources(serve.cidrs, serve.namespaces), (ray_node.SERVE_PORT,))


def redis_policy_spec(settings: ClusterSettings) -> Manifest | None:
    """The stack's own Redis admits this cluster's head only (and with generations the retirement Jobs, which delete
    an old generation's state), on the Redis port: it holds the cluster's state and its password, and no worker,
    client or other pod needs it; with the prometheus-operator, the metrics namespaces
    to its exporter's port only. None without a Redis of the stack's own."""
    if settings.own_redis is None:
        return None
    return {
        "podSelector": {"matchLabels": redis.selector_labels(settings)},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [
                    {"podSelector": {"matchLabels": pods.selector_labels(settings, group)}}
                    for group in ("head", *(["retirement"] if settings.generational else []))
                ],
                "ports": [{"port": redis.REDIS_PORT, "protocol": "TCP"}],
            },
            *(
                [
                    {
                        "from": [_namespaces(settings.metrics_namespaces)],
                        "ports": [{"port": redis.EXPORTER_PORT, "protocol": "TCP"}],
                    }
                ]
                if settings.monitoring and settings.metrics_namespaces
                else []
            ),
        ],
    }

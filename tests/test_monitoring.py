"""What the cluster declares for Prometheus (`prometheusOperator`, `prometheusRelease`): checked config, and the
PodMonitor as rendered. That the PodMonitor scrapes exactly the Ray pods' metrics ports, translated as the
prometheus-operator translates it and run by a real Prometheus, is tests/test_kubernetes_sd.py's and the
rehearsal's to show."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest

from components import load_settings
from components.config.monitoring import Monitoring
from tests.kubernetes_sd import file_sd_scrape_configs
from tests.program import ROOT, Manifest, Rendered
from tests.program import render_in_place as render
from tests.prometheus_scrape import scrape_configs
from tests.prometheus_server import prometheus_server
from tests.test_program import object_labels
from tests.variants import MONITORING, rendered


def error_of(config: dict[str, object]) -> str:
    with pytest.raises(pulumi.RunError) as raised:
        load_settings(config, "ray-cluster", "test")
    return str(raised.value)


OPERATOR: dict[str, object] = {"prometheusOperator": True, "allowedMetricsNamespaces": ["monitoring"]}


def test_the_operators_objects_without_a_namespace_prometheus_may_scrape_from_are_refused() -> None:
    """The NetworkPolicies would admit no Prometheus to the metrics ports: every target down, every alert on one
    firing."""
    error = error_of({"prometheusOperator": True})
    assert "prometheusOperator is 'true'" in error and "allowedMetricsNamespaces" in error, error


def test_a_release_without_the_operators_objects_is_refused_naming_the_key() -> None:
    error = error_of({"prometheusRelease": "kps"})
    assert "prometheusRelease is 'kps'" in error and "prometheusOperator is false" in error


def test_a_release_that_is_no_label_value_is_refused() -> None:
    error = error_of({**OPERATOR, "prometheusRelease": "kube prometheus"})
    assert "prometheusRelease is 'kube prometheus'" in error and "label value" in error


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"runbookUrl": "https://example.com/README.md"}, ["runbookUrl is", "prometheusOperator is false"]),
        ({**OPERATOR, "runbookUrl": "README.md"}, ["runbookUrl is 'README.md'", "http(s) URL"]),
        ({**OPERATOR, "runbookUrl": "https://example.com/README.md#alerts"}, ["without a `#`"]),
    ],
)
def test_a_runbook_url_that_cannot_link_alerts_is_refused_naming_the_key(
    config: dict[str, object], words: list[str]
) -> None:
    error = error_of(config)
    assert all(word in error for word in words), error


def test_the_settings_hold_the_release_only_when_the_objects_are_wanted() -> None:
    assert load_settings({}, "ray-cluster", "test").monitoring is None
    settings = load_settings({**OPERATOR, "prometheusRelease": "kps"}, "ray-cluster", "test")
    assert settings.monitoring == Monitoring(release="kps")
    assert load_settings(OPERATOR, "ray-cluster", "test").monitoring == Monitoring(release="")


def test_no_pod_monitor_unless_asked() -> None:
    assert rendered("default").of_kind("PodMonitor") == []


@pytest.mark.parametrize("variant", ["monitoring", "monitoring-autoscaling-fault-tolerant"])
def test_one_pod_monitor_scrapes_every_metrics_port_of_the_ray_pods_with_the_clusters_labels(variant: str) -> None:
    monitor = rendered(variant).one("PodMonitor", "ray")
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


def test_the_monitoring_objects_carry_the_clusters_labels_as_its_monitoring_part() -> None:
    """The PodMonitor, the PrometheusRule and the dashboards' ConfigMaps: labelled as the cluster's, component
    `monitoring` (so `kubectl get -l app.kubernetes.io/component=monitoring` lists them); the operator's objects also
    with the release kube-prometheus-stack's Prometheus selects them by, the dashboards with the Grafana sidecar's."""
    cluster = object_labels("monitoring")
    result = rendered("monitoring")
    for kind, name in (("PodMonitor", "ray"), ("PrometheusRule", "ray-alerts")):
        assert result.one(kind, name)["metadata"]["labels"] == {**cluster, "release": "kps"}
    maps = [m for m in result.of_kind("ConfigMap") if m["metadata"]["name"].startswith("ray-dashboard-")]
    assert maps and all(m["metadata"]["labels"] == {**cluster, "grafana_dashboard": "1"} for m in maps)


def test_without_a_release_the_pod_monitor_has_no_release_label() -> None:
    [monitor] = render({**OPERATOR, "prometheusOperator": "true"}).of_kind("PodMonitor")
    assert "release" not in monitor["metadata"]["labels"]


def running_pods(rendered_stack: Rendered) -> list[Manifest]:
    """Every pod the stack's Deployments and Jobs would run, Running and ready, as the API server lists them."""
    pods: list[Manifest] = []
    for workload in [*rendered_stack.of_kind("Deployment"), *rendered_stack.of_kind("Job")]:
        template = workload["spec"]["template"]
        for replica in range(workload["spec"].get("replicas", 1)):
            spec = template["spec"]
            containers = [*spec.get("initContainers", []), *spec["containers"]]
            pods.append(
                {
                    "metadata": {
                        "name": f"{workload['metadata']['name']}-{replica}",
                        "namespace": workload["metadata"]["namespace"],
                        "uid": f"uid-{len(pods)}",
                        "labels": template["metadata"]["labels"],
                    },
                    "spec": spec,
                    "status": {
                        "podIP": f"10.244.0.{len(pods) + 2}",
                        "hostIP": "192.0.2.1",
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "containerStatuses": [
                            {"name": c["name"], "containerID": f"containerd://{c['name']}"} for c in containers
                        ],
                    },
                }
            )
    return pods


@pytest.mark.parametrize("variant", ["monitoring", "monitoring-autoscaling-fault-tolerant"])
def test_a_real_prometheus_given_the_pod_monitor_scrapes_exactly_the_ray_pods_metrics_ports(
    variant: str, tmp_path: Path
) -> None:
    """The rendered PodMonitor, translated as prometheus-operator v0.93.0 translates it, applied by Debian's real
    Prometheus to the stack's pods as Kubernetes pod discovery lists them: every Ray pod's `metrics` port, the
    head's dashboard and autoscaler ports (in whichever container serves them), the stack's own Redis's exporter,
    nothing of the smoke test's pod; each target labelled with the cluster (and a Ray pod's with its node type and
    group)."""
    stack = rendered(variant)
    pods = running_pods(stack)
    translated = [job for monitor in stack.of_kind("PodMonitor") for job in scrape_configs(monitor)]
    jobs, files = file_sd_scrape_configs(translated, tmp_path / "sd")
    config = {"global": {"scrape_interval": "1h", "scrape_timeout": "1s"}, "scrape_configs": jobs}
    sd_files = {f.path.relative_to(tmp_path): f.groups(pods) for f in files}
    ips = {pod["metadata"]["name"]: pod["status"]["podIP"] for pod in pods}
    head = next(name for name in ips if name.startswith("ray-head-"))
    workers = sorted(name for name in ips if name.startswith("ray-worker-"))
    autoscaled = variant == "monitoring-autoscaling-fault-tolerant"
    monitor_container = "autoscaler" if autoscaled else "ray-head"
    expected = sorted(
        [
            (f"{ips[head]}:8080", "metrics", "ray-head", "head", "head"),
            (f"{ips[head]}:44227", "dash-metrics", "ray-head", "head", "head"),
            (f"{ips[head]}:44217", "as-metrics", monitor_container, "head", "head"),
            *((f"{ips[worker]}:8080", "metrics", "ray-worker", "worker", "worker") for worker in workers),
            # The stack's own Redis's exporter, labelled with the cluster only.
            *([(f"{ips['ray-redis-0']}:9121", "metrics", "exporter", "", "")] if autoscaled else []),
        ]
    )
    with prometheus_server(tmp_path, config, files=sd_files) as server:

        def active() -> list[tuple[str, str, str, str, str]] | None:
            found = sorted(
                (t["labels"]["instance"], t["labels"]["endpoint"], t["labels"]["container"],
                 t["labels"].get("ray_io_node_type", ""), t["labels"].get("ray_io_group", ""))
                for t in server.targets()["activeTargets"]
                if t["labels"].get("ray_io_cluster") == "ray" and t["labels"]["namespace"] == "ray-test"
            )  # fmt: skip
            return found if len(found) >= len(expected) else None

        assert server.wait_for(active, "every Ray pod's metrics targets") == expected
        assert len(server.targets()["activeTargets"]) == len(expected)


def test_the_dashboards_metrics_views_read_the_given_prometheus_and_grafana_and_show_this_cluster() -> None:
    """Env names as the pinned Ray's dashboard reads them (metrics_head.py); only the head's Ray container."""
    from ray.dashboard.modules.metrics import metrics_head

    stack = render(
        {
            "prometheusUrl": "http://kps-prometheus.monitoring.svc:9090",
            "grafanaUrl": "http://kps-grafana.monitoring.svc/",
            "grafanaIframeUrl": "https://grafana.example.com",
        }
    )
    [head] = stack.one("Deployment", "ray-head")["spec"]["template"]["spec"]["containers"][:1]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert {name: env.get(name) for name in (
        metrics_head.PROMETHEUS_HOST_ENV_VAR, metrics_head.GRAFANA_HOST_ENV_VAR,
        metrics_head.GRAFANA_IFRAME_HOST_ENV_VAR, metrics_head.GRAFANA_CLUSTER_FILTER_ENV_VAR,
    )} == {
        "RAY_PROMETHEUS_HOST": "http://kps-prometheus.monitoring.svc:9090",
        "RAY_GRAFANA_HOST": "http://kps-grafana.monitoring.svc",
        "RAY_GRAFANA_IFRAME_HOST": "https://grafana.example.com",
        "RAY_GRAFANA_CLUSTER_FILTER": "ray",
    }  # fmt: skip
    worker = stack.one("Deployment", "ray-worker")["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in worker["env"] if "GRAFANA" in e["name"] or "PROMETHEUS" in e["name"]]
    default_head = render({}).one("Deployment", "ray-head")["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in default_head["env"] if "GRAFANA" in e["name"] or "PROMETHEUS" in e["name"]]
    iframe_default = render({"grafanaUrl": "http://g.monitoring.svc"}).one("Deployment", "ray-head")
    env = {e["name"]: e.get("value") for e in iframe_default["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_GRAFANA_IFRAME_HOST"] == "http://g.monitoring.svc"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"prometheusUrl": "kps-prometheus:9090"}, ["prometheusUrl is 'kps-prometheus:9090'", "http(s) URL"]),
        ({"grafanaUrl": "http://grafana/?orgId=1"}, ["grafanaUrl is", "no query"]),
        ({"grafanaIframeUrl": "https://grafana.example.com"}, ["grafanaIframeUrl is", "grafanaUrl, which is empty"]),
    ],
)
def test_metrics_view_urls_that_cannot_work_are_refused(config: dict[str, object], words: list[str]) -> None:
    error = error_of(config)
    assert all(word in error for word in words), error


def test_each_of_rays_dashboards_is_a_configmap_grafanas_sidecar_loads() -> None:
    """One per generated file (components/dashboards), its JSON as it is, under a file name of its own."""
    files = {path.stem: path.read_text() for path in sorted((ROOT / "components" / "dashboards").glob("*.json"))}
    assert len(files) == 8
    monitoring = rendered("monitoring")
    maps = [m for m in monitoring.of_kind("ConfigMap") if m["metadata"]["labels"]["ray.io/group"] == "monitoring"]
    assert {m["metadata"]["name"]: m["data"] for m in maps} == {
        f"ray-dashboard-{name.replace('_', '-')}": {f"ray-{name.replace('_', '-')}.json": text}
        for name, text in files.items()
    }
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)
    assert [m for m in render({}).of_kind("ConfigMap") if "dashboard" in m["metadata"]["name"]] == []


def test_the_stacks_own_redis_runs_an_exporter_that_only_prometheus_reaches() -> None:
    """With the prometheus-operator, the Redis pod's exporter reads Redis over the pod's loopback with the password
    from the Secret (never in the manifest), on port 9121, which the Redis policy admits from the metrics namespaces
    alone; its PodMonitor labels its series with the cluster from the Redis pod's own label. Without the operator,
    or with an existing Redis, none of it."""
    stack = rendered("monitoring-autoscaling-fault-tolerant")
    spec = stack.one("Deployment", "ray-redis")["spec"]["template"]["spec"]
    [exporter] = [c for c in spec["containers"] if c["name"] == "exporter"]
    assert exporter["image"] == "oliver006/redis_exporter:v1.45.0" and exporter["command"] == ["/redis_exporter"]
    assert exporter["env"] == [
        {"name": "REDIS_ADDR", "value": "redis://127.0.0.1:6379"},
        {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "ray-redis", "key": "password"}}},
    ]
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 9121, "protocol": "TCP"}]
    assert exporter["securityContext"]["readOnlyRootFilesystem"] is True
    policy = stack.one("NetworkPolicy", "ray-redis")["spec"]
    assert policy["ingress"][1:] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}
                        ]
                    }
                }
            ],
            "ports": [{"port": 9121, "protocol": "TCP"}],
        }
    ]
    monitor = stack.one("PodMonitor", "ray-redis")
    assert monitor["spec"] == {
        "selector": stack.one("Deployment", "ray-redis")["spec"]["selector"],
        "podMetricsEndpoints": [
            {
                "port": "metrics",
                "relabelings": [
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                        "targetLabel": "ray_io_cluster",
                    }
                ],
            }
        ],
    }
    for config in (
        {"gcsFaultTolerance": "true"},
        {**OPERATOR, "gcsFaultTolerance": "true", "redisAddress": "redis.example:6379"},
    ):
        other = render(config)
        assert [m["metadata"]["name"] for m in other.of_kind("PodMonitor")] in ([], ["ray"])
        for deployment in other.of_kind("Deployment"):
            containers = deployment["spec"]["template"]["spec"]["containers"]
            assert "exporter" not in {c["name"] for c in containers}

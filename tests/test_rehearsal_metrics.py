"""The rehearsal of the cluster's metrics and alerts, with a real Prometheus in a pod of its own namespace.

Prometheus (Debian's 2.42, the stand-in for its image) runs in `monitoring`, the namespace `allowedMetricsNamespaces`
names, so the rehearsal's NetworkPolicies decide what it may scrape. Its scrape jobs are the rendered PodMonitors as
prometheus-operator v0.93.0 translates them (tests/prometheus_scrape.py), its rules the rendered PrometheusRule's
groups; Debian builds it without Kubernetes discovery, so the test lists the API's pods into its file discovery as
Kubernetes pod discovery would list them (tests/kubernetes_sd.py), once a second, into a ConfigMap the kubelet
syncs. Prometheus runs before `pulumi up`, as a cluster's Prometheus does: every target (each Ray pod's metrics,
the head's dashboard and autoscaler metrics, the stack's own Redis's exporter: the cluster is fault-tolerant) is up
within 30 s of its pod's readiness, every node's series carry the cluster's label, every metric an alert or one of
Ray's dashboards reads is in the scrape (but those that come only with what they count, each with its reason:
ONLY_WITH), and with the head gone the head-down alert fires within its `for:`, discovery's delay and an evaluation
interval. Needs root.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kubernetes_sd import file_sd_scrape_configs
from tests.program import ROOT, Manifest
from tests.prometheus_scrape import scrape_configs
from tests.rehearsal.cluster import Cluster, wait_for
from tests.rehearsal.image import prometheus_version
from tests.rehearsal.kubelet import VOLUME_SYNC_SECONDS, Pod
from tests.test_rehearsal import Deployment

sys.path.append(str(ROOT / "scripts"))
import grafana_dashboards

pytestmark = pytest.mark.rehearsal

CONFIG: dict[str, object] = {
    "workers": "1",
    "maxWorkers": "2",
    "prometheusOperator": "true",
    "allowedMetricsNamespaces": ["monitoring"],
    # A Redis of its own, whose exporter is scraped too.
    "gcsFaultTolerance": "true",
}
MONITORING = "monitoring"
SCRAPE_SECONDS = 5  # Prometheus's scrape and rule evaluation interval here
# How long a pod's going takes to reach Prometheus's targets, at most: the test's listing pass (1 s), the kubelet's
# sync of the ConfigMap's volume (VOLUME_SYNC_SECONDS), file discovery's refresh (1 s), and Prometheus's discovery
# manager, which hands target changes to the scrape manager at most once every 5 s (discovery/manager.go's
# updatert), as it does for Kubernetes discovery. Only the last is there on a real cluster.
DISCOVERY_SECONDS = 1 + VOLUME_SYNC_SECONDS + 1 + 5
CONFIG_DIR = Path("/etc/prometheus")
# The bound: a target is up within this long of its pod's readiness.
UP_WITHIN_SECONDS = 30
# Metrics an alert or a dashboard reads that a cluster exports only once what they count happens, or only where what
# they measure runs: patterns (full matches) and why.
ONLY_WITH = {
    "ray_memory_manager_worker_eviction_total": "Ray's memory monitor counts its kills only once it kills a worker",
    "ray_node_manager_unexpected_worker_failure_total": "counted only once a worker process dies unexpectedly",
    "autoscaler_recently_failed_nodes": "set only once a worker the autoscaler added failed to start",
    "ray_placement_groups": "only once a placement group exists",
    "ray_serve_.*": "Serve's own: only where Serve applications run (tests/test_rehearsal_serve.py's cluster)",
    "ray_data_.*": "Ray Data's: only while a Dataset executes",
    "ray_train_.*": "Ray Train's: only while a trainer runs",
    "ray_(vllm|sglang)_.*": "the LLM engines': only where Serve LLM runs them",
    "ray_tpu_.*": "only on TPU nodes",
    "ray_(node_gpus?|node_gram|component_gpu)_.*": "only on GPU nodes",
    "ray_node_cgroup_mem_(total|used)": "only where the node's container has a memory limit, as every Ray pod's has "
    "(the rehearsal does not emulate cgroup limits)",
}
# A job that owns an actor and tasks while the dashboards are checked: Ray reports tasks and actors (`ray_tasks`,
# `ray_actors`) from the processes that own them, so only while some driver or worker holds them.
OWNER_JOB = """
import ray, time
ray.init()

@ray.remote(num_cpus=0)
class Counter:
    def count(self):
        return 1

@ray.remote(num_cpus=0)
def one():
    return 1

counter = Counter.remote()
print(ray.get([counter.count.remote(), *(one.remote() for _ in range(3))]), flush=True)
time.sleep(120)
"""


def only_with(name: str) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in ONLY_WITH)


def listed(pod: Pod) -> Manifest:
    """The pod as the API server lists it, for Kubernetes pod discovery."""
    ready = "True" if pod.ready else "False"
    return {
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid, "labels": pod.labels},
        "spec": {**pod.spec, "nodeName": pod.node or ""},
        "status": {
            **({"podIP": pod.ip} if pod.ip else {}),
            "hostIP": "10.244.0.1",
            "phase": pod.phase,
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


class Prometheus:
    """The Prometheus pod, its file discovery fed from the cluster's pods, and what it has seen up, and when."""

    def __init__(self, cluster: Cluster, rendered_monitors: list[Manifest], rule: Manifest) -> None:
        self.cluster = cluster
        translated = [job for monitor in rendered_monitors for job in scrape_configs(monitor)]
        jobs, self.files = file_sd_scrape_configs(translated, CONFIG_DIR)
        interval = f"{SCRAPE_SECONDS}s"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": "4s", "evaluation_interval": interval},
            "rule_files": [str(CONFIG_DIR / "rules.yml")],
            "scrape_configs": jobs,
        }
        self.static = {
            "prometheus.yml": yaml.safe_dump(config),
            "rules.yml": yaml.safe_dump({"groups": rule["spec"]["groups"]}),
        }
        self.first_up: dict[str, float] = {}  # per target (endpoint and instance), when Prometheus first had it up
        self._stop = threading.Event()
        self._discovered: dict[str, str] = {}
        self._discover()
        container = {
            "name": "prometheus",
            "image": f"quay.io/prometheus/prometheus:v{prometheus_version()}",
            "command": ["/bin/prometheus"],
            "args": [f"--config.file={CONFIG_DIR}/prometheus.yml", "--storage.tsdb.path=/prometheus",
                     "--web.listen-address=:9090"],
            "ports": [{"name": "web", "containerPort": 9090, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/-/ready", "port": 9090}, "periodSeconds": 1},
            "volumeMounts": [{"name": "config", "mountPath": str(CONFIG_DIR), "readOnly": True}],
        }  # fmt: skip
        labels = {"app": "prometheus"}
        cluster.apply({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "prometheus", "namespace": MONITORING},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels},
                     "spec": {"containers": [container],
                              "volumes": [{"name": "config", "configMap": {"name": "prometheus"}}]}}},
        })  # fmt: skip
        self.pod = wait_for(
            lambda: next((p for p in cluster.pods.values() if p.namespace == MONITORING and p.ready), None),
            60,
            "Prometheus ready",
        )
        self._threads = [threading.Thread(target=self._loop, args=(job,), daemon=True)
                         for job in (self._discover, self._watch_up)]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def _discover(self) -> None:
        """Kubernetes pod discovery, as files: the API's pods, written to the ConfigMap when they change."""
        pods = [listed(pod) for pod in self.cluster.pods_in()]
        files = {f.path.name: json.dumps(f.groups(pods), sort_keys=True) for f in self.files}
        if files != self._discovered:
            self.cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "prometheus", "namespace": MONITORING},
                                "data": {**self.static, **files}})  # fmt: skip
            self._discovered = files

    def _watch_up(self) -> None:
        for sample in self.query("up == 1"):
            key = f"{sample['metric']['endpoint']} {sample['metric']['instance']}"
            self.first_up.setdefault(key, time.monotonic())

    def _loop(self, step: Any) -> None:
        while not self._stop.wait(1):
            try:
                step()
            except OSError:
                continue  # Prometheus not answering for a moment: the next pass asks again

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://{self.pod.ip}:9090/api/v1/{path}{query}", timeout=5) as answer:
            return json.load(answer)["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def wait_scraped(self, names: set[str]) -> None:
        """Until every one of `names` is among the cluster's series (bounded: a minute of scrapes)."""
        wait_for(lambda: names <= self.scraped_names(), 60, lambda: f"{sorted(names - self.scraped_names())} scraped")

    def scraped_names(self) -> set[str]:
        """The metric names Prometheus holds of the cluster (its series labelled ray_io_cluster)."""
        return {s["metric"]["__name__"] for s in self.query('count by (__name__) ({ray_io_cluster="ray"})')}

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    return Deployment.configured(cluster, CONFIG)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, deployment: Deployment) -> Iterator[Prometheus]:
    """Prometheus first, then `pulumi up`: it sees every target come."""
    [rule] = deployment.rendered.of_kind("PrometheusRule")
    prometheus = Prometheus(cluster, deployment.rendered.of_kind("PodMonitor"), rule)
    try:
        deployment.up()
        yield prometheus
    finally:
        prometheus.close()


def ray_pods(deployment: Deployment) -> list[Pod]:
    return [deployment.head(), *deployment.workers()]


def test_every_target_is_up_within_30_s_of_its_pods_readiness(deployment: Deployment, prometheus: Prometheus) -> None:
    """Each Ray pod's metrics, the head's dashboard's and autoscaler's (the autoscaler container), the stack's
    Redis's exporter, scraped from the `monitoring` namespace through the NetworkPolicies."""
    head, workers = deployment.head(), deployment.workers()
    [redis] = deployment.pods("ray-redis-")
    expected = {
        f"metrics {head.ip}:8080": head,
        f"dash-metrics {head.ip}:44227": head,
        f"as-metrics {head.ip}:44217": head,
        **{f"metrics {worker.ip}:8080": worker for worker in workers},
        f"metrics {redis.ip}:9121": redis,
    }
    active = prometheus.api("targets")["activeTargets"]
    targets = {f"{t['labels']['endpoint']} {t['labels']['instance']}": t for t in active}
    assert set(targets) == set(expected), targets

    def not_up() -> str:
        active = prometheus.api("targets")["activeTargets"]
        return (
            f"targets not up: {[(t['scrapeUrl'], t['health'], t['lastError']) for t in active if t['health'] != 'up']}"
        )

    wait_for(lambda: set(expected) <= set(prometheus.first_up), UP_WITHIN_SECONDS + 30, not_up)
    after = {
        key: round(prometheus.first_up[key] - pod.ready_since, 1) for key, pod in expected.items() if pod.ready_since
    }
    print(f"up after readiness (s): {after}", flush=True)
    late = {
        key: round(prometheus.first_up[key] - pod.ready_since, 1)
        for key, pod in expected.items()
        if pod.ready_since is not None and prometheus.first_up[key] - pod.ready_since > UP_WITHIN_SECONDS
    }
    assert not late, late


def test_every_nodes_series_carry_the_clusters_label(deployment: Deployment, prometheus: Prometheus) -> None:
    ips = {pod.ip for pod in ray_pods(deployment)}

    def labelled() -> set[str] | None:
        found = {
            s["metric"]["instance"].split(":")[0] for s in prometheus.query('ray_node_cpu_count{ray_io_cluster="ray"}')
        }
        return found if found == ips else None

    wait_for(labelled, 60, lambda: f"ray_node_cpu_count of {ips} labelled ray_io_cluster")


def test_every_metric_an_alert_reads_is_scraped(deployment: Deployment, prometheus: Prometheus) -> None:
    [rule] = deployment.rendered.of_kind("PrometheusRule")
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    read = {name for expr in exprs for name in _metric_names(expr)} - {"up"}
    prometheus.wait_scraped({name for name in read if not only_with(name)})


def test_every_metric_a_dashboard_reads_is_scraped_unless_it_comes_only_with_what_it_measures(
    deployment: Deployment, prometheus: Prometheus
) -> None:
    """The names every query of Ray's dashboards selects (scripts/grafana_dashboards.py), but those ONLY_WITH says
    come only with what they count, each for its reason: so a dashboard that reads a name Ray no longer exports
    (or exports under another) fails here. Every ONLY_WITH pattern is needed by some dashboard or alert."""
    read = set().union(*grafana_dashboards.metric_names_by_dashboard().values())
    deployment.submit(OWNER_JOB)
    prometheus.wait_scraped({name for name in read if not only_with(name)})
    [rule] = deployment.rendered.of_kind("PrometheusRule")
    alerts = {name for group in rule["spec"]["groups"] for r in group["rules"] for name in _metric_names(r["expr"])}
    unused = [p for p in ONLY_WITH if not any(re.fullmatch(p, name) for name in read | alerts)]
    assert not unused, f"ONLY_WITH patterns nothing reads any more: {unused}"


def _metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers followed by a label matcher's `{`."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


def test_with_the_head_gone_the_head_down_alert_fires_within_its_for_and_discovery(
    deployment: Deployment, prometheus: Prometheus
) -> None:
    """The head scaled to nothing (a lost head whose replacement cannot start looks the same to Prometheus): the
    alert fires within its `for:` of the head's going, plus the time its going takes to reach Prometheus's targets
    (DISCOVERY_SECONDS: Prometheus then marks its series stale at once), up to one evaluation interval before the
    alert is pending (with `for:` a whole number of intervals it fires at the evaluation `for:` later), and the
    test's one-second poll. The run that found the old bound (`for:` + two intervals + 2 s) too tight fired at
    133.2 s, under CI's load."""
    namespace = deployment.rendered.outputs["namespace"]
    [rule] = deployment.rendered.of_kind("PrometheusRule")
    [head_down] = [r for group in rule["spec"]["groups"] for r in group["rules"] if r["alert"] == "RayHeadDown"]
    for_seconds = int(head_down["for"].removesuffix("m")) * 60
    head = deployment.head()
    deployment.cluster.scale(namespace, "ray-head", 0)
    try:
        wait_for(lambda: head.name not in deployment.cluster.pods, 60, "the head gone")
        gone = time.monotonic()

        def firing() -> bool:
            alerts = prometheus.api("alerts")["alerts"]
            return any(a["labels"]["alertname"] == "RayHeadDown" and a["state"] == "firing" for a in alerts)

        wait_for(firing, for_seconds + DISCOVERY_SECONDS + 4 * SCRAPE_SECONDS + 30, "RayHeadDown firing", interval=1)
        fired_after = time.monotonic() - gone
        print(f"RayHeadDown fired {fired_after:.1f} s after the head left (for: {for_seconds} s)", flush=True)
        assert fired_after <= for_seconds + DISCOVERY_SECONDS + SCRAPE_SECONDS + 1 + 2  # 2 s: the load's jitter
    finally:
        deployment.cluster.scale(namespace, "ray-head", 1)

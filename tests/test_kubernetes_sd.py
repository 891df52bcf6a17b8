"""Pins tests/kubernetes_sd.py to Prometheus v2.42.0's discovery/kubernetes/pod.go, and runs it in real Prometheus.

The unit tests spell out every label buildPod emits for one rich pod, so a change to the model shows. The end-to-end
test feeds the operator's relabelings (tests/prometheus_scrape.py) to Debian's Prometheus with the model's targets
through file_sd, the stand-in for the Kubernetes discovery that build lacks: which pods a PodMonitor scrapes, and
with which labels, is then Prometheus' own answer. Targets are down (nothing listens): their labels are the point.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes_sd import (
    PodTargetsFile,
    build_pod,
    file_sd_groups,
    file_sd_scrape_configs,
    pod_source,
    sanitize_label_name,
)
from tests.prometheus_scrape import scrape_configs
from tests.prometheus_server import PrometheusError, PrometheusServer, prometheus_server

M = "__meta_kubernetes_"

RICH_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "ray-head-7d9f",
        "namespace": "ray",
        "uid": "0b5c3f1e-uid",
        "labels": {"ray.io/cluster": "ray", "app.kubernetes.io/name": "kuberay", "tier": "head"},
        "annotations": {"ray.io/ft-enabled": "false", "empty": ""},
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-the-controller", "uid": "u1"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "ray-head-7d9f", "uid": "u2", "controller": True},
        ],
    },
    "spec": {
        "nodeName": "node-1",
        "containers": [
            {
                "name": "ray-head",
                "image": "rayproject/ray:2.9.0",
                "ports": [
                    {"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "gcs", "containerPort": 6379},
                ],
            },
            {"name": "autoscaler", "image": "rayproject/ray:2.9.0-autoscaler"},
        ],
        "initContainers": [{"name": "wait-gcs", "image": "busybox:1.36"}],
    },
    "status": {
        "phase": "Running",
        "podIP": "10.244.0.5",
        "hostIP": "172.18.0.2",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [
            # The status' image (resolved) is not what v2.42 reports: it takes the spec's.
            {"name": "ray-head", "containerID": "containerd://aaa", "image": "docker.io/rayproject/ray:2.9.0"},
        ],
        "initContainerStatuses": [{"name": "wait-gcs", "containerID": "containerd://ccc", "image": "busybox:1.36"}],
    },
}

RICH_POD_LABELS = {
    M + "pod_name": "ray-head-7d9f",
    M + "pod_ip": "10.244.0.5",
    M + "pod_ready": "false",
    M + "pod_phase": "Running",
    M + "pod_node_name": "node-1",
    M + "pod_host_ip": "172.18.0.2",
    M + "pod_uid": "0b5c3f1e-uid",
    M + "pod_controller_kind": "ReplicaSet",
    M + "pod_controller_name": "ray-head-7d9f",
    M + "pod_label_ray_io_cluster": "ray",
    M + "pod_labelpresent_ray_io_cluster": "true",
    M + "pod_label_app_kubernetes_io_name": "kuberay",
    M + "pod_labelpresent_app_kubernetes_io_name": "true",
    M + "pod_label_tier": "head",
    M + "pod_labelpresent_tier": "true",
    M + "pod_annotation_ray_io_ft_enabled": "false",
    M + "pod_annotationpresent_ray_io_ft_enabled": "true",
    M + "pod_annotation_empty": "",
    M + "pod_annotationpresent_empty": "true",
    M + "namespace": "ray",
}

RICH_POD_TARGETS = [
    {
        "__address__": "10.244.0.5:8080",
        M + "pod_container_name": "ray-head",
        M + "pod_container_id": "containerd://aaa",
        M + "pod_container_image": "rayproject/ray:2.9.0",
        M + "pod_container_init": "false",
        M + "pod_container_port_number": "8080",
        M + "pod_container_port_name": "metrics",
        M + "pod_container_port_protocol": "TCP",
    },
    {
        "__address__": "10.244.0.5:6379",
        M + "pod_container_name": "ray-head",
        M + "pod_container_id": "containerd://aaa",
        M + "pod_container_image": "rayproject/ray:2.9.0",
        M + "pod_container_init": "false",
        M + "pod_container_port_number": "6379",
        M + "pod_container_port_name": "gcs",
        M + "pod_container_port_protocol": "TCP",  # the API server's default
    },
    {
        "__address__": "10.244.0.5",
        M + "pod_container_name": "autoscaler",
        M + "pod_container_id": "",  # no status of that name
        M + "pod_container_image": "rayproject/ray:2.9.0-autoscaler",
        M + "pod_container_init": "false",
    },
    {
        "__address__": "10.244.0.5",
        M + "pod_container_name": "wait-gcs",
        M + "pod_container_id": "containerd://ccc",
        M + "pod_container_image": "busybox:1.36",
        M + "pod_container_init": "true",
    },
]


def test_build_pod_emits_every_label_of_v2_42() -> None:
    """buildPod for a pod with ports, a portless container, an init container, labels, annotations and an owner."""
    assert build_pod(RICH_POD) == {
        "source": "pod/ray/ray-head-7d9f",
        "labels": RICH_POD_LABELS,
        "targets": RICH_POD_TARGETS,
    }


def test_file_sd_groups_are_one_per_target_with_the_pod_labels() -> None:
    """file_sd has group labels only: each target becomes a group of its own, carrying the pod's labels too."""
    groups = file_sd_groups([RICH_POD])
    assert groups == [
        {"targets": [address], "labels": RICH_POD_LABELS | rest}
        for address, rest in (
            (t["__address__"], {k: v for k, v in t.items() if k != "__address__"}) for t in RICH_POD_TARGETS
        )
    ]
    assert groups[3]["targets"] == ["10.244.0.5"]
    assert groups[3]["labels"][M + "pod_container_init"] == "true"
    assert groups[3]["labels"][M + "pod_name"] == "ray-head-7d9f"
    assert "__address__" not in groups[3]["labels"]


def test_a_pod_without_ip_has_no_targets() -> None:
    """buildPod returns the bare group while the pod has no IP (starting, or evicted)."""
    pod = copy.deepcopy(RICH_POD)
    del pod["status"]["podIP"]
    assert build_pod(pod) == {"source": pod_source("ray", "ray-head-7d9f"), "labels": {}, "targets": []}
    assert file_sd_groups([pod]) == []


def test_ready_without_condition_ipv6_and_no_controller() -> None:
    """podReady's "unknown", net.JoinHostPort's brackets, and no controller labels without a controller owner."""
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "n", "ownerReferences": [{"kind": "Node", "name": "x"}]},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 9, "protocol": "UDP"}]}]},
        "status": {"podIP": "fd00::5", "conditions": [{"type": "Ready", "status": "Unknown"}]},
    }
    group = build_pod(pod)
    assert group["labels"][M + "pod_ready"] == "unknown"
    assert not any("controller" in name for name in group["labels"])
    assert group["targets"] == [
        {
            "__address__": "[fd00::5]:9",
            M + "pod_container_name": "c",
            M + "pod_container_id": "",
            M + "pod_container_image": "i",
            M + "pod_container_init": "false",
            M + "pod_container_port_number": "9",
            M + "pod_container_port_name": "",
            M + "pod_container_port_protocol": "UDP",
        }
    ]
    del pod["status"]["conditions"]
    assert build_pod(pod)["labels"][M + "pod_ready"] == "unknown"


def test_sanitizing_and_its_collisions() -> None:
    """SanitizeLabelName maps [^a-zA-Z0-9_] to "_"; two keys that then collide have no deterministic outcome."""
    assert sanitize_label_name("ray.io/node-type") == "ray_io_node_type"
    assert sanitize_label_name("Ünï:x") == "_n__x"  # one "_" per character (Go matches runes), not per byte
    pod = {"metadata": {"name": "p", "namespace": "n", "labels": {"a.b": "1", "a/b": "2"}}, "status": {"podIP": "1"}}
    with pytest.raises(ValueError, match="both become 'a_b'"):
        build_pod(pod)


def test_scrape_configs_become_file_sd(tmp_path: Path) -> None:
    """kubernetes_sd_configs -> one file per entry holding its namespaces' pods; $(SHARD) -> 0; order kept."""
    jobs: list[dict[str, Any]] = [
        {
            "job_name": "a/b/0",
            "honor_labels": False,
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": ["ray"]}}, {"role": "pod"}],
            "relabel_configs": [{"source_labels": ["x"], "regex": "$(SHARD);|.+;.+", "action": "keep"}],
        }
    ]
    converted, files = file_sd_scrape_configs(jobs, tmp_path, refresh_interval="2s")
    first, second = tmp_path / "pods-0-0-a_b_0.json", tmp_path / "pods-0-1-a_b_0.json"
    assert converted == [
        {
            "job_name": "a/b/0",
            "honor_labels": False,
            "file_sd_configs": [
                {"files": [str(first)], "refresh_interval": "2s"},
                {"files": [str(second)], "refresh_interval": "2s"},
            ],
            "relabel_configs": [{"source_labels": ["x"], "regex": "0;|.+;.+", "action": "keep"}],
        }
    ]
    assert list(converted[0]) == ["job_name", "honor_labels", "file_sd_configs", "relabel_configs"]
    assert files == [PodTargetsFile("a/b/0", first, frozenset({"ray"})), PodTargetsFile("a/b/0", second, None)]
    elsewhere = copy.deepcopy(RICH_POD)
    elsewhere["metadata"]["namespace"] = "other"
    assert files[0].groups([RICH_POD, elsewhere]) == file_sd_groups([RICH_POD])
    assert len(files[1].groups([RICH_POD, elsewhere])) == 2 * len(RICH_POD_TARGETS)
    assert jobs[0]["relabel_configs"][0]["regex"] == "$(SHARD);|.+;.+"  # the input is left alone


@pytest.mark.parametrize(
    ("sd_config", "message"),
    [
        ({"role": "pod", "selectors": [{"role": "pod", "label": "a=b"}]}, "selectors"),
        ({"role": "pod", "attach_metadata": {"node": True}}, "attach_metadata"),
        ({"role": "pod", "api_server": "https://x"}, "api_server"),
        ({"role": "endpoints"}, "role 'endpoints'"),
        ({"role": "pod", "namespaces": {"own_namespace": True}}, "own_namespace"),
    ],
)
def test_unmodelled_kubernetes_sd_settings_raise(tmp_path: Path, sd_config: dict[str, Any], message: str) -> None:
    """What the model does not know must not be dropped silently."""
    with pytest.raises(NotImplementedError, match=message):
        file_sd_scrape_configs([{"job_name": "j", "kubernetes_sd_configs": [sd_config]}], tmp_path)


# The end-to-end cluster: namespace "ray" holds a head, a worker and a smoke test; "other" a look-alike worker.
def _pod(
    name: str, node_type: str, ip: str, containers: list[dict[str, Any]], namespace: str = "ray"
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "labels": {"ray.io/cluster": "ray", "ray.io/node-type": node_type},
        },
        "spec": {
            "nodeName": "node-1",
            "containers": containers,
            "initContainers": [{"name": "wait-gcs", "image": "busybox"}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "hostIP": "192.0.2.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": c["name"], "containerID": f"containerd://{name}-{c['name']}"} for c in containers
            ],
        },
    }


def _container(name: str, **ports: int) -> dict[str, Any]:
    return {
        "name": name,
        "image": "rayproject/ray",
        "ports": [{"name": port.replace("_", "-"), "containerPort": number} for port, number in ports.items()],
    }


HEAD = _pod(
    "ray-head",
    "head",
    "192.0.2.10",
    [_container("ray-head", metrics=8080, dash_metrics=44227, gcs=6379), _container("autoscaler", as_metrics=44217)],
)
WORKER = _pod("ray-worker", "worker", "192.0.2.11", [_container("ray-worker", metrics=8080)])
SMOKE_TEST = _pod("ray-smoke-test", "smoke-test", "192.0.2.12", [_container("smoke-test", metrics=8080)])
OTHER = _pod("ray-worker", "worker", "192.0.2.13", [_container("ray-worker", metrics=8080)], namespace="other")
PODS = [HEAD, WORKER, SMOKE_TEST, OTHER]

POD_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PodMonitor",
    "metadata": {"name": "ray-metrics", "namespace": "ray"},
    "spec": {
        "selector": {
            "matchLabels": {"ray.io/cluster": "ray"},
            "matchExpressions": [{"key": "ray.io/node-type", "operator": "In", "values": ["head", "worker"]}],
        },
        "podTargetLabels": ["ray.io/cluster", "ray.io/node-type"],
        "podMetricsEndpoints": [{"port": "metrics"}, {"port": "dash-metrics"}],
    },
}


def _active(pod: dict[str, Any], port: str, container: str, address: str) -> tuple[str, dict[str, str]]:
    index = {"metrics": 0, "dash-metrics": 1}[port]
    labels = {
        "container": container,
        "endpoint": port,
        "instance": address,
        "job": "ray/ray-metrics",
        "namespace": "ray",
        "pod": pod["metadata"]["name"],
        "ray_io_cluster": "ray",
        "ray_io_node_type": pod["metadata"]["labels"]["ray.io/node-type"],
    }
    return f"podMonitor/ray/ray-metrics/{index}", labels


def _discovered(server: PrometheusServer, files: list[PodTargetsFile], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets once every job has as many (active and dropped) as its file holds.

    A dropped target is told by `__meta_filepath` (a file per job), not by `job`: Prometheus 2.42's relabel.Process
    rewrites the discovered labels' array in place, so the API shows `__tmp_prometheus_job_name` where `job` was.
    """
    expected = {str(f.path): len(f.groups(pods)) for f in files}
    job_files = {f.job_name: str(f.path) for f in files}

    def settled() -> dict[str, Any] | None:
        targets = server.targets()
        seen = dict.fromkeys(expected, 0)
        for target in targets["activeTargets"]:
            seen[job_files[target["scrapePool"]]] += 1
        for target in targets["droppedTargets"]:
            seen[target["discoveredLabels"]["__meta_filepath"]] += 1
        return targets if seen == expected else None

    return server.wait_for(settled, f"the targets of {expected}")


def test_prometheus_scrapes_exactly_the_selected_pods(tmp_path: Path) -> None:
    """Real Prometheus applies the operator's relabelings to the modelled pods: the head's metrics and dashboard
    ports and the worker's metrics port are scraped, with the operator's labels; the smoke test, the sidecar's
    port, the init containers and the other namespace are not. An evicted worker (no IP) then drops out."""
    jobs, files = file_sd_scrape_configs(scrape_configs(POD_MONITOR), tmp_path / "sd")
    assert [(f.job_name, f.namespaces) for f in files] == [
        ("podMonitor/ray/ray-metrics/0", frozenset({"ray"})),
        ("podMonitor/ray/ray-metrics/1", frozenset({"ray"})),
    ]
    config = {"global": {"scrape_interval": "1h", "scrape_timeout": "1s"}, "scrape_configs": jobs}
    sd_files = {f.path.relative_to(tmp_path): f.groups(PODS) for f in files}
    with prometheus_server(tmp_path, config, files=sd_files) as server:
        targets = _discovered(server, files, PODS)
        active = sorted(
            ((t["scrapePool"], t["labels"]) for t in targets["activeTargets"]),
            key=lambda t: (t[0], t[1]["instance"]),
        )
        assert active == [
            _active(HEAD, "metrics", "ray-head", "192.0.2.10:8080"),
            _active(WORKER, "metrics", "ray-worker", "192.0.2.11:8080"),
            _active(HEAD, "dash-metrics", "ray-head", "192.0.2.10:44227"),
        ]
        # Prometheus read the model's labels as they are (an empty value is an unset label to it).
        modelled = {g["targets"][0]: g["labels"] for g in files[0].groups(PODS)}
        for target in targets["activeTargets"]:
            discovered = target["discoveredLabels"]
            address = discovered["__address__"]
            assert {k: v for k, v in discovered.items() if k.startswith(M)} == {
                k: v for k, v in modelled[address].items() if v
            }
            assert discovered["__meta_filepath"] == {f.job_name: str(f.path) for f in files}[target["scrapePool"]]
        assert targets["activeTargets"][0]["discoveredLabels"][M + "pod_container_id"].startswith("containerd://")

        dropped = {
            (t["discoveredLabels"]["__meta_filepath"], t["discoveredLabels"]["__address__"])
            for t in targets["droppedTargets"]
        }
        for f in files:
            assert (str(f.path), "192.0.2.12:8080") in dropped  # the smoke test: node-type not selected
            assert (str(f.path), "192.0.2.10:44217") in dropped  # the autoscaler sidecar's as-metrics port
            assert (str(f.path), "192.0.2.11") in dropped  # the worker's init container: no port
        seen = [address for _, address in dropped] + [t["labels"]["instance"] for t in targets["activeTargets"]]
        assert not [address for address in seen if address.startswith("192.0.2.13")]  # namespace "other"

        evicted = copy.deepcopy(WORKER)
        del evicted["status"]["podIP"]
        pods = [HEAD, evicted, SMOKE_TEST, OTHER]
        for f in files:
            server.write_targets(f.path.relative_to(tmp_path), f.groups(pods))
        targets = _discovered(server, files, pods)
        assert sorted(t["labels"]["instance"] for t in targets["activeTargets"]) == [
            "192.0.2.10:44227",
            "192.0.2.10:8080",
        ]


RULES = {"groups": [{"name": "g", "interval": "1s", "rules": [{"alert": "Always", "expr": "vector(1) > 0"}]}]}


def test_rules_alerts_and_queries(tmp_path: Path) -> None:
    """The helpers read Prometheus' answers: a rule file's group, its alert firing, an instant query."""
    with prometheus_server(tmp_path, {"rule_files": ["rules.yml"]}, files={"rules.yml": RULES}) as server:
        assert [sample["value"][1] for sample in server.query("vector(2) * 3")] == ["6"]
        assert server.query("1 + 1")[0]["value"][1] == "2"
        alerts = server.wait_for(lambda: server.alerts() or None, "the alert", timeout=10)
        assert [(a["labels"], a["state"]) for a in alerts] == [({"alertname": "Always"}, "firing")]
        [group] = server.rules()
        assert (group["name"], [(r["name"], r["health"]) for r in group["rules"]]) == ("g", [("Always", "ok")])
        with pytest.raises(PrometheusError, match="parse error"):
            server.query("sum(up")


def test_an_invalid_expression_fails_startup_with_prometheus_message(tmp_path: Path) -> None:
    """Prometheus refuses the rule file and exits: the error carries its message, not just a timeout."""
    bad = {"groups": [{"name": "g", "rules": [{"record": "x", "expr": "sum(up"}]}]}
    with (
        pytest.raises(PrometheusError, match=r"exited \(1\) before ready") as error,
        prometheus_server(tmp_path, {"rule_files": ["rules.yml"]}, files={"rules.yml": bad}),
    ):
        pytest.fail("Prometheus became ready")
    assert "could not parse expression: 1:7: parse error: unclosed left parenthesis" in str(error.value)
    assert str(tmp_path / "rules.yml") in str(error.value)


def test_an_invalid_expression_fails_a_reload_with_prometheus_message(tmp_path: Path) -> None:
    """A reload Prometheus refuses raises with the log's reason; the previous rules stay."""
    bad = {"groups": [{"name": "g", "rules": [{"record": "x", "expr": "rate(up[5m]"}]}]}
    with prometheus_server(tmp_path, {"rule_files": ["rules.yml"]}, files={"rules.yml": RULES}) as server:
        with pytest.raises(PrometheusError, match="failed to reload config") as error:
            server.reload(files={"rules.yml": bad})
        assert "could not parse expression" in str(error.value)
        assert [group["name"] for group in server.rules()] == ["g"]
        server.reload(files={"rules.yml": {"groups": []}})
        assert server.rules() == []


def test_a_missing_prometheus_fails_the_test(tmp_path: Path) -> None:
    """Never a skip: without the binary the test fails and says what to install."""
    with (
        pytest.raises(pytest.fail.Exception, match="prometheus package"),
        prometheus_server(tmp_path, {}, binary=tmp_path / "no-prometheus"),
    ):
        pass

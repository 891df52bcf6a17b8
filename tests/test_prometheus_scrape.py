"""Pins tests/prometheus_scrape.py against prometheus-operator v0.93.0's pkg/prometheus/promcfg.go.

Each test names the Go function it mirrors. Outputs are compared exactly, key order included (`ordered`): the
operator writes yaml.MapSlice, whose order Prometheus' config keeps. Two tests compare with the operator's own
golden files (pkg/prometheus/testdata at v0.93.0, copied verbatim), which its unit tests generate with the
PrometheusShardRetentionPolicy feature gate off; the rest assume the gate's default (on).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.crds import crds
from tests.prometheus_scrape import scrape_configs

# pkg/prometheus/testdata/PodTargetLabelsFromPodMonitor.golden (its scrape_configs), TestPodTargetLabelsFromPodMonitor.
GOLDEN_POD_TARGET_LABELS = """\
scrape_configs:
- job_name: podMonitor/default/testpodmonitor1/0
  honor_labels: false
  kubernetes_sd_configs:
  - role: pod
    namespaces:
      names:
      - default
  scrape_interval: 30s
  relabel_configs:
  - source_labels:
    - job
    target_label: __tmp_prometheus_job_name
  - action: drop
    source_labels:
    - __meta_kubernetes_pod_phase
    regex: (Failed|Succeeded)
  - action: keep
    source_labels:
    - __meta_kubernetes_pod_container_port_name
    regex: web
  - source_labels:
    - __meta_kubernetes_namespace
    target_label: namespace
  - source_labels:
    - __meta_kubernetes_pod_container_name
    target_label: container
  - source_labels:
    - __meta_kubernetes_pod_name
    target_label: pod
  - source_labels:
    - __meta_kubernetes_pod_label_example
    target_label: example
    regex: (.+)
    replacement: ${1}
  - source_labels:
    - __meta_kubernetes_pod_label_env
    target_label: env
    regex: (.+)
    replacement: ${1}
  - target_label: job
    replacement: default/testpodmonitor1
  - target_label: endpoint
    replacement: web
  - source_labels:
    - __address__
    - __tmp_hash
    target_label: __tmp_hash
    regex: (.+);
    replacement: $1
    action: replace
  - source_labels:
    - __tmp_hash
    target_label: __tmp_hash
    modulus: 1
    action: hashmod
  - source_labels:
    - __tmp_hash
    - __tmp_disable_sharding
    regex: $(SHARD);|.+;.+
    action: keep
"""

# pkg/prometheus/testdata/PodMonitorPhaseFilter.golden (scrape_configs only), from TestPodMonitorPhaseFilter.
GOLDEN_PHASE_FILTER = """\
scrape_configs:
- job_name: podMonitor/default/testpodmonitor1/0
  honor_labels: false
  kubernetes_sd_configs:
  - role: pod
    namespaces:
      names:
      - default
  relabel_configs:
  - source_labels:
    - job
    target_label: __tmp_prometheus_job_name
  - action: keep
    source_labels:
    - __meta_kubernetes_pod_container_port_name
    regex: test
  - source_labels:
    - __meta_kubernetes_namespace
    target_label: namespace
  - source_labels:
    - __meta_kubernetes_pod_container_name
    target_label: container
  - source_labels:
    - __meta_kubernetes_pod_name
    target_label: pod
  - target_label: job
    replacement: default/testpodmonitor1
  - target_label: endpoint
    replacement: test
  - source_labels:
    - __address__
    - __tmp_hash
    target_label: __tmp_hash
    regex: (.+);
    replacement: $1
    action: replace
  - source_labels:
    - __tmp_hash
    target_label: __tmp_hash
    modulus: 1
    action: hashmod
  - source_labels:
    - __tmp_hash
    - __tmp_disable_sharding
    regex: $(SHARD);|.+;.+
    action: keep
"""

# The operator's own relabelings, as generatePodMonitorConfig writes them, by name.
JOB_NAME_TO_META = {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}  # initRelabelings
RUNNING_FILTER = {  # generateRunningFilter
    "action": "drop",
    "source_labels": ["__meta_kubernetes_pod_phase"],
    "regex": "(Failed|Succeeded)",
}
NAMESPACE_CONTAINER_POD = [
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
]
# appendShardingRelabelingWithLabel(__address__) for one shard, PrometheusShardRetentionPolicy on.
SHARDING = [
    {"target_label": "__tmp_current_shard", "replacement": "$(SHARD)", "action": "replace"},
    {"source_labels": ["__tmp_current_shard"], "regex": "0", "action": "keep"},
    {
        "source_labels": ["__address__", "__tmp_hash"],
        "target_label": "__tmp_hash",
        "regex": "(.+);",
        "replacement": "$1",
        "action": "replace",
    },
    {"source_labels": ["__tmp_hash"], "target_label": "__tmp_hash", "modulus": 1, "action": "hashmod"},
    {"source_labels": ["__tmp_hash", "__tmp_disable_sharding"], "regex": "$(SHARD);|.+;.+", "action": "keep"},
]


def ordered(value: Any) -> Any:
    """`value` with every mapping as its list of (key, value) pairs: equality then checks the keys' order too."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return value


def pod_monitor(spec: dict[str, Any], *, name: str = "ray-workers", namespace: str = "ray") -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def web_endpoint_spec(**spec: Any) -> dict[str, Any]:
    return {"selector": {}, "podMetricsEndpoints": [{"port": "metrics"}], **spec}


def relabel_configs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    [config] = scrape_configs(pod_monitor(spec))
    rules: list[dict[str, Any]] = config["relabel_configs"]
    return rules


def test_matches_operator_golden_pod_target_labels() -> None:
    # TestPodTargetLabelsFromPodMonitor -> generatePodMonitorConfig (podTargetLabels, port, interval).
    monitor = {
        "metadata": {"name": "testpodmonitor1", "namespace": "default", "labels": {"group": "group1"}},
        "spec": {
            "selector": {},
            "podTargetLabels": ["example", "env"],
            "podMetricsEndpoints": [{"port": "web", "interval": "30s"}],
        },
    }
    expected = yaml.safe_load(GOLDEN_POD_TARGET_LABELS)["scrape_configs"]
    assert ordered(scrape_configs(monitor, shard_retention_policy=False)) == ordered(expected)


def test_matches_operator_golden_phase_filter() -> None:
    # TestPodMonitorPhaseFilter -> generatePodMonitorConfig (filterRunning: false drops generateRunningFilter).
    monitor = {
        "metadata": {"name": "testpodmonitor1", "namespace": "default"},
        "spec": {"selector": {}, "podMetricsEndpoints": [{"filterRunning": False, "port": "test"}]},
    }
    expected = yaml.safe_load(GOLDEN_PHASE_FILTER)["scrape_configs"]
    assert ordered(scrape_configs(monitor, shard_retention_policy=False)) == ordered(expected)


def test_whole_config_for_a_ray_pod_monitor() -> None:
    # generatePodMonitorConfig, end to end: every key and relabeling in the operator's order.
    monitor = pod_monitor(
        {
            "selector": {"matchLabels": {"ray.io/node-type": "worker", "app.kubernetes.io/name": "ray"}},
            "podTargetLabels": ["ray.io/cluster"],
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "interval": "15s",
                    "scrapeTimeout": "10s",
                    "path": "/metrics",
                    "scheme": "HTTP",
                    "honorLabels": True,
                    "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
                    "metricRelabelings": [{"action": "Drop", "sourceLabels": ["__name__"], "regex": "go_.*"}],
                }
            ],
        }
    )
    expected = [
        {
            "job_name": "podMonitor/ray/ray-workers/0",
            "honor_labels": True,
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": ["ray"]}}],
            "scrape_interval": "15s",
            "scrape_timeout": "10s",
            "metrics_path": "/metrics",
            "scheme": "http",
            "relabel_configs": [
                JOB_NAME_TO_META,
                RUNNING_FILTER,
                {
                    "action": "keep",
                    "source_labels": [
                        "__meta_kubernetes_pod_label_app_kubernetes_io_name",
                        "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name",
                    ],
                    "regex": "(ray);true",
                },
                {
                    "action": "keep",
                    "source_labels": [
                        "__meta_kubernetes_pod_label_ray_io_node_type",
                        "__meta_kubernetes_pod_labelpresent_ray_io_node_type",
                    ],
                    "regex": "(worker);true",
                },
                {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics"},
                *NAMESPACE_CONTAINER_POD,
                {
                    "source_labels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                    "target_label": "ray_io_cluster",
                    "regex": "(.+)",
                    "replacement": "${1}",
                },
                {"target_label": "job", "replacement": "ray/ray-workers"},
                {"target_label": "endpoint", "replacement": "metrics"},
                {
                    "source_labels": ["__meta_kubernetes_pod_node_name"],
                    "target_label": "node",
                    "action": "replace",
                },
                *SHARDING,
            ],
            "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": "go_.*", "action": "drop"}],
        }
    ]
    assert ordered(scrape_configs(monitor)) == ordered(expected)


def test_match_labels_sorted_by_key_and_sanitized() -> None:
    # generatePodMonitorConfig: sortutil.SortedKeys(matchLabels), sanitizeLabelName, regex "(value);true".
    rules = relabel_configs(web_endpoint_spec(selector={"matchLabels": {"z-key": "a.b", "a/key": ""}}))
    assert rules[2:4] == [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_label_a_key", "__meta_kubernetes_pod_labelpresent_a_key"],
            "regex": "();true",
        },
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_label_z_key", "__meta_kubernetes_pod_labelpresent_z_key"],
            "regex": "(a.b);true",
        },
    ]
    assert rules[4]["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]


def test_match_expressions_in_notin_exists_doesnotexist() -> None:
    # generatePodMonitorConfig: the switch over metav1.LabelSelectorOperator, after matchLabels, in order.
    selector = {
        "matchLabels": {"app": "ray"},
        "matchExpressions": [
            {"key": "ray.io/node-type", "operator": "In", "values": ["head", "worker"]},
            {"key": "ray.io/group", "operator": "NotIn", "values": ["gpu"]},
            {"key": "ray.io/cluster", "operator": "Exists"},
            {"key": "canary", "operator": "DoesNotExist", "values": []},
        ],
    }
    rules = relabel_configs(web_endpoint_spec(selector=selector))
    assert ordered(rules[2:7]) == ordered(
        [
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_pod_label_app", "__meta_kubernetes_pod_labelpresent_app"],
                "regex": "(ray);true",
            },
            {
                "action": "keep",
                "source_labels": [
                    "__meta_kubernetes_pod_label_ray_io_node_type",
                    "__meta_kubernetes_pod_labelpresent_ray_io_node_type",
                ],
                "regex": "(head|worker);true",
            },
            {
                "action": "drop",
                "source_labels": [
                    "__meta_kubernetes_pod_label_ray_io_group",
                    "__meta_kubernetes_pod_labelpresent_ray_io_group",
                ],
                "regex": "(gpu);true",
            },
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_labelpresent_ray_io_cluster"], "regex": "true"},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_labelpresent_canary"], "regex": "true"},
        ]
    )
    assert rules[7]["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ({"key": "a", "operator": "In"}, "needs values"),
        ({"key": "a", "operator": "NotIn", "values": []}, "needs values"),
        ({"key": "a", "operator": "Exists", "values": ["x"]}, "takes no values"),
        ({"key": "a", "operator": "Gt", "values": ["1"]}, "is not In, NotIn, Exists or DoesNotExist"),
        ({"key": "", "operator": "Exists"}, "key must be a non-empty string"),
    ],
)
def test_invalid_match_expressions_reject_the_pod_monitor(expression: dict[str, Any], message: str) -> None:
    # resource_selector.go checkPodMonitor -> metav1.LabelSelectorAsSelector refuses these before promcfg.go runs.
    with pytest.raises(ValueError, match=message):
        scrape_configs(pod_monitor(web_endpoint_spec(selector={"matchExpressions": [expression]})))


@pytest.mark.parametrize(
    ("namespace_selector", "expected"),
    [
        (None, [{"role": "pod", "namespaces": {"names": ["ray"]}}]),
        ({}, [{"role": "pod", "namespaces": {"names": ["ray"]}}]),
        ({"matchNames": []}, [{"role": "pod", "namespaces": {"names": ["ray"]}}]),
        ({"matchNames": ["b", "a"]}, [{"role": "pod", "namespaces": {"names": ["b", "a"]}}]),
        ({"any": True, "matchNames": ["b"]}, [{"role": "pod"}]),
        ({"any": False, "matchNames": ["b"]}, [{"role": "pod", "namespaces": {"names": ["b"]}}]),
    ],
)
def test_namespace_selector(namespace_selector: dict[str, Any] | None, expected: list[dict[str, Any]]) -> None:
    # getNamespacesFromNamespaceSelector (any wins; no matchNames: the PodMonitor's namespace) and
    # generateK8SSDConfig (no `namespaces` key for an empty list).
    spec = web_endpoint_spec()
    if namespace_selector is not None:
        spec["namespaceSelector"] = namespace_selector
    [config] = scrape_configs(pod_monitor(spec))
    assert ordered(config["kubernetes_sd_configs"]) == ordered(expected)


def test_two_endpoints_one_job_each() -> None:
    # appendPodMonitorConfigs: one generatePodMonitorConfig per endpoint, job_name podMonitor/<ns>/<name>/<index>.
    spec = {
        "selector": {},
        "podMetricsEndpoints": [{"port": "metrics"}, {"port": "dashboard-metrics", "interval": "1m"}],
    }
    configs = scrape_configs(pod_monitor(spec, name="ray-head", namespace="ml"))
    assert [config["job_name"] for config in configs] == ["podMonitor/ml/ray-head/0", "podMonitor/ml/ray-head/1"]
    assert "scrape_interval" not in configs[0]
    assert configs[1]["scrape_interval"] == "1m"
    for config, port in zip(configs, ["metrics", "dashboard-metrics"], strict=True):
        rules = config["relabel_configs"]
        assert rules[2] == {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": port,
        }
        # The job label is the PodMonitor's, the endpoint label each endpoint's port.
        assert rules[6:8] == [
            {"target_label": "job", "replacement": "ml/ray-head"},
            {"target_label": "endpoint", "replacement": port},
        ]


def test_port_number_keeps_the_container_port_number_and_sets_no_endpoint_label() -> None:
    # generatePodMonitorConfig: `else if ptr.Deref(ep.PortNumber, 0) != 0` keeps by number (an int regex, as the
    # golden file podMonitorObjectWithPortNumber.golden has `regex: 1024`); the endpoint label needs a port name.
    rules = relabel_configs({"selector": {}, "podMetricsEndpoints": [{"portNumber": 8080}]})
    assert ordered(rules) == ordered(
        [
            JOB_NAME_TO_META,
            RUNNING_FILTER,
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_number"], "regex": 8080},
            *NAMESPACE_CONTAINER_POD,
            {"target_label": "job", "replacement": "ray/ray-workers"},
            *SHARDING,
        ]
    )


def test_port_name_wins_over_port_number() -> None:
    # generatePodMonitorConfig: `if ptr.Deref(ep.Port, "") != ""` comes first; an empty name counts as unset.
    rules = relabel_configs({"selector": {}, "podMetricsEndpoints": [{"port": "metrics", "portNumber": 8080}]})
    assert rules[2]["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    rules = relabel_configs({"selector": {}, "podMetricsEndpoints": [{"port": "", "portNumber": 8080}]})
    assert rules[2] == {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_container_port_number"],
        "regex": 8080,
    }
    assert {"target_label": "endpoint", "replacement": ""} not in rules


def test_no_port_keeps_every_container_port() -> None:
    # generatePodMonitorConfig: neither port, portNumber nor targetPort: no port filter, no endpoint label.
    rules = relabel_configs({"selector": {}, "podMetricsEndpoints": [{}]})
    assert rules == [
        JOB_NAME_TO_META,
        RUNNING_FILTER,
        *NAMESPACE_CONTAINER_POD,
        {"target_label": "job", "replacement": "ray/ray-workers"},
        *SHARDING,
    ]


def test_pod_target_labels_are_sanitized() -> None:
    # generatePodMonitorConfig's loop over m.Spec.PodTargetLabels, with sanitizeLabelName on both sides.
    rules = relabel_configs(web_endpoint_spec(podTargetLabels=["ray.io/cluster", "ray.io/node-type"]))
    assert ordered(rules[6:8]) == ordered(
        [
            {
                "source_labels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                "target_label": "ray_io_cluster",
                "regex": "(.+)",
                "replacement": "${1}",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_label_ray_io_node_type"],
                "target_label": "ray_io_node_type",
                "regex": "(.+)",
                "replacement": "${1}",
            },
        ]
    )
    assert rules[8] == {"target_label": "job", "replacement": "ray/ray-workers"}


def test_job_label_overrides_the_default_job() -> None:
    # generatePodMonitorConfig: the <ns>/<name> job first, then m.Spec.JobLabel's pod label (when it has a value).
    rules = relabel_configs(web_endpoint_spec(jobLabel="app.kubernetes.io/name"))
    assert ordered(rules[6:9]) == ordered(
        [
            {"target_label": "job", "replacement": "ray/ray-workers"},
            {
                "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                "target_label": "job",
                "regex": "(.+)",
                "replacement": "${1}",
            },
            {"target_label": "endpoint", "replacement": "metrics"},
        ]
    )
    assert relabel_configs(web_endpoint_spec(jobLabel=""))[7] == {"target_label": "endpoint", "replacement": "metrics"}


def test_relabelings_follow_the_operators_and_precede_sharding() -> None:
    # generatePodMonitorConfig: generateRelabelConfig(ep.RelabelConfigs) after the endpoint label, before
    # appendShardingRelabelingWithAddress; generateRelabelConfig's key order, omissions and strings.ToLower(action).
    relabelings = [
        {"sourceLabels": ["a", "b"], "separator": "", "targetLabel": "t", "regex": "(.*)", "replacement": ""},
        {"action": "HashMod", "sourceLabels": ["x"], "targetLabel": "h", "modulus": 4},
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)", "replacement": "$1"},
        {"action": "LabelDrop", "regex": "tmp_.*", "sourceLabels": []},
    ]
    rules = relabel_configs(web_endpoint_spec(podMetricsEndpoints=[{"port": "metrics", "relabelings": relabelings}]))
    assert rules[7] == {"target_label": "endpoint", "replacement": "metrics"}
    assert ordered(rules[8:12]) == ordered(
        [
            {
                "source_labels": ["a", "b"],
                "separator": "",
                "target_label": "t",
                "regex": "(.*)",
                "replacement": "",
                "action": "replace",  # the CRD's default, which the API server writes before the operator reads
            },
            {"source_labels": ["x"], "target_label": "h", "modulus": 4, "action": "hashmod"},
            {"regex": "__meta_kubernetes_pod_label_(.+)", "replacement": "$1", "action": "labelmap"},
            {"regex": "tmp_.*", "action": "labeldrop"},
        ]
    )
    assert rules[12:] == SHARDING


def test_metric_relabelings() -> None:
    # generatePodMonitorConfig: metric_relabel_configs (generateRelabelConfig) only when there are any, last.
    [config] = scrape_configs(pod_monitor(web_endpoint_spec()))
    assert "metric_relabel_configs" not in config
    endpoint = {
        "port": "metrics",
        "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "ray_.*", "action": "keep"}],
    }
    [config] = scrape_configs(pod_monitor(web_endpoint_spec(podMetricsEndpoints=[endpoint])))
    assert list(config)[-1] == "metric_relabel_configs"
    assert config["metric_relabel_configs"] == [{"source_labels": ["__name__"], "regex": "ray_.*", "action": "keep"}]


def test_interval_path_timeout_scheme_and_honor_labels() -> None:
    # generatePodMonitorConfig: AddHonorLabels (always written), then scrape_interval, scrape_timeout,
    # metrics_path and scheme (Scheme.String lowercases) when set, in that order, before relabel_configs.
    endpoint = {"port": "metrics", "scheme": "HTTPS", "path": "/api/metrics", "scrapeTimeout": "5s", "interval": "10s"}
    [config] = scrape_configs(pod_monitor(web_endpoint_spec(podMetricsEndpoints=[endpoint])))
    assert list(config) == [
        "job_name",
        "honor_labels",
        "kubernetes_sd_configs",
        "scrape_interval",
        "scrape_timeout",
        "metrics_path",
        "scheme",
        "relabel_configs",
    ]
    assert [config[key] for key in list(config)[3:7]] == ["10s", "5s", "/api/metrics", "https"]
    assert config["honor_labels"] is False
    [config] = scrape_configs(pod_monitor(web_endpoint_spec(podMetricsEndpoints=[{"path": "", "interval": ""}])))
    assert list(config) == ["job_name", "honor_labels", "kubernetes_sd_configs", "relabel_configs"]


def test_scrape_timeout_longer_than_the_interval_rejects_the_pod_monitor() -> None:
    # resource_selector.go validateScrapeIntervalAndTimeout: the endpoint's interval, else the Prometheus' (30s).
    too_long = web_endpoint_spec(podMetricsEndpoints=[{"interval": "1m", "scrapeTimeout": "1m1s"}])
    with pytest.raises(ValueError, match="greater than scrapeInterval '1m'"):
        scrape_configs(pod_monitor(too_long))
    with pytest.raises(ValueError, match="greater than scrapeInterval '30s'"):
        scrape_configs(pod_monitor(web_endpoint_spec(podMetricsEndpoints=[{"scrapeTimeout": "31s"}])))
    equal = web_endpoint_spec(podMetricsEndpoints=[{"interval": "1m", "scrapeTimeout": "60s"}])
    assert scrape_configs(pod_monitor(equal))[0]["scrape_timeout"] == "60s"
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        scrape_configs(pod_monitor(web_endpoint_spec(podMetricsEndpoints=[{"interval": "1.5s"}])))


def test_filter_running() -> None:
    # generatePodMonitorConfig: `if ep.FilterRunning == nil || *ep.FilterRunning` adds generateRunningFilter.
    for filter_running, present in ((None, True), (True, True), (False, False)):
        endpoint = {"port": "metrics", "filterRunning": filter_running}
        assert (RUNNING_FILTER in relabel_configs(web_endpoint_spec(podMetricsEndpoints=[endpoint]))) is present


def test_sharding_without_the_retention_policy_gate() -> None:
    # appendShardingRelabelingWithLabel with cg.prometheusRetentionPolicies false: the hashmod trio alone.
    [config] = scrape_configs(pod_monitor(web_endpoint_spec()), shard_retention_policy=False)
    assert config["relabel_configs"][-3:] == SHARDING[2:]
    assert config["relabel_configs"][-4] == {"target_label": "endpoint", "replacement": "metrics"}


def test_kubernetes_sd_extra_is_merged_after_the_operators_keys() -> None:
    # generateK8SSDConfig writes an apiserverConfig's api_server, auth and tls_config after role and namespaces.
    extra = {
        "api_server": "https://127.0.0.1:6443",
        "tls_config": {"ca_file": "/tmp/ca.crt"},
        "authorization": {"credentials_file": "/tmp/token"},
    }
    configs = scrape_configs(
        pod_monitor({"selector": {}, "podMetricsEndpoints": [{"port": "a"}, {"port": "b"}]}), kubernetes_sd_extra=extra
    )
    for config in configs:
        assert ordered(config["kubernetes_sd_configs"]) == ordered(
            [{"role": "pod", "namespaces": {"names": ["ray"]}, **extra}]
        )
    assert configs[0]["kubernetes_sd_configs"][0] is not configs[1]["kubernetes_sd_configs"][0]
    with pytest.raises(ValueError, match="may not set"):
        scrape_configs(pod_monitor(web_endpoint_spec()), kubernetes_sd_extra={"namespaces": {"names": ["x"]}})


# Every field the vendored CRD gives a PodMonitor's spec and its endpoints, but those the translation models: each
# must raise, so a field the operator would honour is never dropped silently (a CRD update adds its new fields here).
_SCHEMA = crds()[("monitoring.coreos.com", "v1", "PodMonitor")][0]["properties"]["spec"]
UNMODELLED_SPEC_FIELDS = sorted(
    set(_SCHEMA["properties"]) - {"jobLabel", "namespaceSelector", "podMetricsEndpoints", "podTargetLabels", "selector",
                                  "selectorMechanism"}
)  # fmt: skip
UNMODELLED_ENDPOINT_FIELDS = sorted(
    set(_SCHEMA["properties"]["podMetricsEndpoints"]["items"]["properties"])
    - {"port", "portNumber", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings",
       "metricRelabelings", "filterRunning"}
)  # fmt: skip


@pytest.mark.parametrize("field", UNMODELLED_SPEC_FIELDS)
def test_unmodelled_spec_fields_raise(field: str) -> None:
    with pytest.raises(NotImplementedError, match=rf"^spec\.{field} is not implemented$"):
        scrape_configs(pod_monitor(web_endpoint_spec(**{field: 1})))


@pytest.mark.parametrize("field", UNMODELLED_ENDPOINT_FIELDS)
def test_unmodelled_endpoint_fields_raise(field: str) -> None:
    spec = web_endpoint_spec(podMetricsEndpoints=[{"port": "a"}, {"port": "b", field: {}}])
    with pytest.raises(NotImplementedError, match=rf"^spec\.podMetricsEndpoints\[1\]\.{field} is not implemented$"):
        scrape_configs(pod_monitor(spec))


def test_role_selector_raises() -> None:
    with pytest.raises(NotImplementedError, match="RoleSelector"):
        scrape_configs(pod_monitor(web_endpoint_spec(selectorMechanism="RoleSelector")))
    explicit = scrape_configs(pod_monitor(web_endpoint_spec(selectorMechanism="RelabelConfig")))
    assert explicit == scrape_configs(pod_monitor(web_endpoint_spec()))


def test_null_fields_are_unset() -> None:
    endpoint = {"port": "metrics", "tlsConfig": None, "interval": None}
    spec = web_endpoint_spec(podMetricsEndpoints=[endpoint], sampleLimit=None, jobLabel=None)
    assert scrape_configs(pod_monitor(spec)) == scrape_configs(pod_monitor(web_endpoint_spec()))


@pytest.mark.parametrize(
    ("monitor", "message"),
    [
        (pod_monitor(web_endpoint_spec(podMetricsEndpoint=[])), r"spec\.podMetricsEndpoint is not a PodMonitor field"),
        (pod_monitor(web_endpoint_spec(podMetricsEndpoints=[{"prot": "a"}])), r"\[0\]\.prot is not a PodMonitor field"),
        (pod_monitor({"podMetricsEndpoints": [{}]}), "spec.selector is required"),
        (pod_monitor(web_endpoint_spec(selector={"matchLabel": {}})), "unknown fields"),
        (pod_monitor(web_endpoint_spec(namespaceSelector={"matchName": ["a"]})), "unknown fields"),
        (
            pod_monitor(web_endpoint_spec(podMetricsEndpoints=[{"relabelings": [{"target": "x"}]}])),
            "unknown fields",
        ),
        (pod_monitor(web_endpoint_spec(podMetricsEndpoints=[{"relabelings": [{"action": "Move"}]}])), "relabel action"),
        (pod_monitor(web_endpoint_spec(podMetricsEndpoints=[{"scheme": "ftp"}])), "scheme"),
        (pod_monitor(web_endpoint_spec(podMetricsEndpoints=[{"portNumber": 0}])), "portNumber"),
        (pod_monitor(web_endpoint_spec(selectorMechanism="Labels")), "selectorMechanism"),
        ({"metadata": {"name": "x"}, "spec": web_endpoint_spec()}, "metadata.namespace"),
        ({**pod_monitor(web_endpoint_spec()), "kind": "ServiceMonitor"}, "PodMonitor"),
    ],
)
def test_invalid_pod_monitors_raise(monitor: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scrape_configs(monitor)


def test_no_endpoints_no_jobs() -> None:
    # appendPodMonitorConfigs: the loop over Spec.PodMetricsEndpoints.
    assert scrape_configs(pod_monitor({"selector": {}})) == []
    assert scrape_configs(pod_monitor({"selector": {}, "podMetricsEndpoints": []})) == []


def test_output_round_trips_through_yaml() -> None:
    monitor = pod_monitor(
        web_endpoint_spec(
            selector={"matchExpressions": [{"key": "a", "operator": "Exists"}]},
            podMetricsEndpoints=[{"portNumber": 8080, "relabelings": [{"replacement": "", "targetLabel": "x"}]}],
        )
    )
    configs = scrape_configs(monitor)
    assert yaml.safe_load(yaml.safe_dump({"scrape_configs": configs}, sort_keys=False)) == {"scrape_configs": configs}


def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool") or pytest.fail(
        "promtool (Debian's prometheus package) is missing: .ci/run installs it"
    )
    monitor = pod_monitor(
        {
            "selector": {"matchLabels": {"ray.io/node-type": "worker"}},
            "namespaceSelector": {"any": True},
            "podTargetLabels": ["ray.io/cluster"],
            "jobLabel": "app",
            "podMetricsEndpoints": [
                {"port": "metrics", "interval": "15s", "scrapeTimeout": "10s", "path": "/metrics", "scheme": "http"},
                {"portNumber": 8265, "relabelings": [{"sourceLabels": ["a"], "targetLabel": "b"}]},
            ],
        }
    )
    config = tmp_path / "prometheus.yml"
    # Debian's Prometheus is built without Kubernetes discovery (promtool refuses `kubernetes_sd_configs`): the
    # rehearsal stands in for it with file discovery, so that is what is checked here, with every relabeling.
    files = {"file_sd_configs": [{"files": [str(tmp_path / "targets.json")]}]}
    jobs = [{k: v for k, v in job.items() if k != "kubernetes_sd_configs"} | files for job in scrape_configs(monitor)]
    config.write_text(yaml.safe_dump({"scrape_configs": jobs}, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""The Prometheus `scrape_configs` entries prometheus-operator v0.93.0 generates for a PodMonitor.

Mirrors prometheus-operator v0.93.0 (commit f8fafd475f3d132e239432ae6172de60a6cb6516), pkg/prometheus/promcfg.go:
`appendPodMonitorConfigs` (one job per endpoint, in order) and `generatePodMonitorConfig`, with its helpers
`AddHonorLabels`, `generateK8SSDConfig`, `getNamespacesFromNamespaceSelector`, `initRelabelings`,
`generateRunningFilter`, `sanitizeLabelName`, `generateRelabelConfig` and `appendShardingRelabelingWithLabel`.
Keys come out in the operator's order (dicts keep insertion order), values in Prometheus' config-file schema.

Assumed, as for a default Prometheus resource and a default operator deployment:
- one shard, not a PrometheusAgent DaemonSet, no topology sharding, no scrape classes, no enforced namespace label,
  limits or body size, `ignoreNamespaceSelectors`, `overrideHonorLabels` and `podTargetLabels` unset, no
  `apiserverConfig` (Prometheus discovers in-cluster: `kubernetes_sd_extra` adds what a stand-in API server needs);
- the feature gate PrometheusShardRetentionPolicy on (its default in v0.93.0): every job then ends with a relabeling
  that copies `$(SHARD)` into `__tmp_current_shard` and a `keep` of shard 0, before the hashmod trio (modulus 1, and
  a `keep` of `$(SHARD)`). prometheus-config-reloader substitutes `$(SHARD)` (the shard's number, "0") in the file
  Prometheus reads; a Prometheus fed this output directly needs that substitution, or every target is dropped;
- the object as the API server hands it to the operator: a relabeling without `action` gets the CRD's default
  `replace`, and, as there, a value that is absent or null is unset;
- the checks the operator makes before it generates (`checkPodMonitor`): a selector `LabelSelectorAsSelector` refuses
  and a `scrapeTimeout` longer than the interval (the endpoint's, else the Prometheus default 30s) reject the
  PodMonitor, so they raise ValueError here. Relabelings are not validated (Prometheus' own config check does that).

Anything the PodMonitor sets that is not modelled raises NotImplementedError naming the field, an unknown field
(a typo the API server's pruning would drop) raises ValueError: nothing is ignored silently. Like the operator,
matchLabels/matchExpressions values and the port name go into the regexes as they are (not escaped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

OPERATOR_VERSION = "v0.93.0"
OPERATOR_COMMIT = "f8fafd475f3d132e239432ae6172de60a6cb6516"

# The PodMonitor's fields (CRD monitoring.coreos.com_podmonitors.yaml at v0.93.0), by whether they are modelled.
_SPEC_FIELDS = frozenset(
    {"jobLabel", "namespaceSelector", "podMetricsEndpoints", "podTargetLabels", "selector", "selectorMechanism"}
)
_SPEC_NOT_IMPLEMENTED = frozenset(
    {
        "attachMetadata",
        "bodySizeLimit",
        "convertClassicHistogramsToNHCB",
        "fallbackScrapeProtocol",
        "keepDroppedTargets",
        "labelLimit",
        "labelNameLengthLimit",
        "labelValueLengthLimit",
        "nativeHistogramBucketLimit",
        "nativeHistogramMinBucketFactor",
        "sampleLimit",
        "scrapeClass",
        "scrapeClassicHistograms",
        "scrapeNativeHistograms",
        "scrapeProtocols",
        "targetLimit",
    }
)
_ENDPOINT_FIELDS = frozenset(
    {
        "filterRunning",
        "honorLabels",
        "interval",
        "metricRelabelings",
        "path",
        "port",
        "portNumber",
        "relabelings",
        "scheme",
        "scrapeTimeout",
    }
)
_ENDPOINT_NOT_IMPLEMENTED = frozenset(
    {
        "authorization",
        "basicAuth",
        "bearerTokenSecret",
        "enableHttp2",
        "followRedirects",
        "honorTimestamps",
        "noProxy",
        "oauth2",
        "params",
        "proxyConnectHeader",
        "proxyFromEnvironment",
        "proxyUrl",
        "targetPort",
        "tlsConfig",
        "trackTimestampsStaleness",
    }
)
_RELABEL_FIELDS = frozenset({"action", "modulus", "regex", "replacement", "separator", "sourceLabels", "targetLabel"})
_RELABEL_ACTIONS = frozenset(
    {
        "replace",
        "keep",
        "drop",
        "hashmod",
        "labelmap",
        "labeldrop",
        "labelkeep",
        "lowercase",
        "uppercase",
        "keepequal",
        "dropequal",
    }
)
# The CRD's enum lists each action lowercase and in CamelCase (HashMod, LabelMap, ...): the spellings accepted.
_RELABEL_ACTION_SPELLINGS = _RELABEL_ACTIONS | frozenset(
    {
        "Replace",
        "Keep",
        "Drop",
        "HashMod",
        "LabelMap",
        "LabelDrop",
        "LabelKeep",
        "Lowercase",
        "Uppercase",
        "KeepEqual",
        "DropEqual",
    }
)
_SCHEMES = frozenset({"http", "https", "HTTP", "HTTPS"})
# monitoringv1.Duration's CRD pattern, which is also the grammar of Prometheus' model.ParseDuration.
_DURATION = re.compile(r"^(0|(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?)$")
_DURATION_UNIT_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1_000, 1)
_PROMETHEUS_DEFAULT_SCRAPE_INTERVAL = "30s"  # Prometheus CRD: spec.scrapeInterval, +kubebuilder:default:="30s"
_SHARD_ENV_VAR = "SHARD"  # pkg/operator/config_reloader.go: operator.ShardEnvVar
_SHARDS = 1  # pkg/prometheus/common.go shardsNumber: spec.shards unset (or <= 1) is 1
_INVALID_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label_name(name: str) -> str:
    """promcfg.go sanitizeLabelName: every character outside [a-zA-Z0-9_] becomes "_"."""
    return _INVALID_LABEL_CHAR.sub("_", name)


def scrape_configs(
    pod_monitor: Mapping[str, Any],
    *,
    kubernetes_sd_extra: Mapping[str, Any] | None = None,
    shard_retention_policy: bool = True,
) -> list[dict[str, Any]]:
    """The scrape configs prometheus-operator v0.93.0 writes for `pod_monitor`: one job per podMetricsEndpoints entry.

    `kubernetes_sd_extra` is merged into each `kubernetes_sd_configs` entry after `role` and `namespaces` (where
    the operator puts an apiserverConfig's `api_server`, auth and `tls_config`); it may not set those two keys.
    `shard_retention_policy` is the operator's feature gate PrometheusShardRetentionPolicy (on by default in
    v0.93.0; the operator's own golden files in pkg/prometheus/testdata are generated with it off).
    """
    extra = dict(kubernetes_sd_extra or {})
    clash = sorted({"role", "namespaces"} & extra.keys())
    if clash:
        raise ValueError(f"kubernetes_sd_extra may not set {clash}: the PodMonitor determines them")

    api_version = pod_monitor.get("apiVersion")
    if api_version is not None and api_version != "monitoring.coreos.com/v1":
        raise ValueError(f"apiVersion {api_version!r} is not monitoring.coreos.com/v1")
    kind = pod_monitor.get("kind")
    if kind is not None and kind != "PodMonitor":
        raise ValueError(f"kind {kind!r} is not PodMonitor")
    metadata = go_object(pod_monitor.get("metadata"), "metadata")
    name = go_required_string(metadata.get("name"), "metadata.name")
    namespace = go_required_string(metadata.get("namespace"), "metadata.namespace")

    spec = go_object(pod_monitor.get("spec"), "spec")
    _check_fields(spec, "spec", _SPEC_FIELDS, _SPEC_NOT_IMPLEMENTED)
    if "selector" not in _set(spec):
        raise ValueError("spec.selector is required")
    selector_relabelings = _selector_relabelings(spec)
    namespaces = _namespaces(spec.get("namespaceSelector"), namespace)
    pod_target_labels = _str_list(spec.get("podTargetLabels"), "spec.podTargetLabels")
    job_label = go_string(spec.get("jobLabel"), "spec.jobLabel")

    endpoints = spec.get("podMetricsEndpoints")
    if endpoints is None:
        return []
    if not isinstance(endpoints, Sequence) or isinstance(endpoints, str):
        raise ValueError("spec.podMetricsEndpoints must be a list")
    configs = []
    for index, endpoint in enumerate(endpoints):
        path = f"spec.podMetricsEndpoints[{index}]"
        ep = go_object(endpoint, path)
        _check_fields(ep, path, _ENDPOINT_FIELDS, _ENDPOINT_NOT_IMPLEMENTED)
        configs.append(
            _endpoint_config(
                ep,
                path,
                index=index,
                name=name,
                namespace=namespace,
                namespaces=namespaces,
                selector_relabelings=selector_relabelings,
                pod_target_labels=pod_target_labels,
                job_label=job_label,
                kubernetes_sd_extra=extra,
                shard_retention_policy=shard_retention_policy,
            )
        )
    return configs


def _endpoint_config(
    ep: Mapping[str, Any],
    path: str,
    *,
    index: int,
    name: str,
    namespace: str,
    namespaces: list[str],
    selector_relabelings: list[dict[str, Any]],
    pod_target_labels: list[str],
    job_label: str,
    kubernetes_sd_extra: Mapping[str, Any],
    shard_retention_policy: bool,
) -> dict[str, Any]:
    """promcfg.go generatePodMonitorConfig, for one endpoint (its index `index`)."""
    interval = go_string(ep.get("interval"), f"{path}.interval")
    scrape_timeout = go_string(ep.get("scrapeTimeout"), f"{path}.scrapeTimeout")
    for field, value in (("interval", interval), ("scrapeTimeout", scrape_timeout)):
        if value and not _DURATION.match(value):
            raise ValueError(f"{path}.{field}: {value!r} is not a Prometheus duration")
    # resource_selector.go validateScrapeIntervalAndTimeout: the operator rejects the PodMonitor.
    if scrape_timeout and _duration_ms(scrape_timeout) > _duration_ms(interval or _PROMETHEUS_DEFAULT_SCRAPE_INTERVAL):
        raise ValueError(
            f"{path}: scrapeTimeout {scrape_timeout!r} greater than scrapeInterval "
            f"{interval or _PROMETHEUS_DEFAULT_SCRAPE_INTERVAL!r}: the operator rejects the PodMonitor"
        )
    metrics_path = go_string(ep.get("path"), f"{path}.path")
    scheme = ep.get("scheme")
    if scheme is not None and scheme not in _SCHEMES:
        raise ValueError(f"{path}.scheme: {scheme!r} is not one of {sorted(_SCHEMES)}")
    port = go_string(ep.get("port"), f"{path}.port")
    port_number = ep.get("portNumber")
    if port_number is not None and (
        isinstance(port_number, bool) or not isinstance(port_number, int) or not 1 <= port_number <= 65535
    ):
        raise ValueError(f"{path}.portNumber: {port_number!r} is not an integer in [1, 65535]")
    filter_running = _optional_bool(ep.get("filterRunning"), f"{path}.filterRunning")
    honor_labels = _optional_bool(ep.get("honorLabels"), f"{path}.honorLabels")
    relabelings = _relabel_configs(ep.get("relabelings"), f"{path}.relabelings")
    metric_relabelings = _relabel_configs(ep.get("metricRelabelings"), f"{path}.metricRelabelings")

    # AddHonorLabels: always written (overrideHonorLabels unset).
    cfg: dict[str, Any] = {"job_name": f"podMonitor/{namespace}/{name}/{index}", "honor_labels": bool(honor_labels)}
    # generateK8SSDConfig: role, then namespaces unless the list is empty (namespaceSelector.any).
    sd_config: dict[str, Any] = {"role": "pod"}
    if namespaces:
        sd_config["namespaces"] = {"names": list(namespaces)}
    sd_config.update(kubernetes_sd_extra)
    cfg["kubernetes_sd_configs"] = [sd_config]
    if interval:
        cfg["scrape_interval"] = interval
    if scrape_timeout:
        cfg["scrape_timeout"] = scrape_timeout
    if metrics_path:
        cfg["metrics_path"] = metrics_path
    if scheme is not None:
        cfg["scheme"] = scheme.lower()  # monitoringv1.Scheme.String

    rules: list[dict[str, Any]] = [
        # initRelabelings
        {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
    ]
    if filter_running is None or filter_running:
        # generateRunningFilter
        rules.append(
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}
        )
    rules.extend(dict(rule) for rule in selector_relabelings)
    if port:
        rules.append({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port})
    elif port_number:
        rules.append(
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_number"], "regex": port_number}
        )
    rules.extend(
        [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ]
    )
    for label in pod_target_labels:
        rules.append(
            {
                "source_labels": ["__meta_kubernetes_pod_label_" + sanitize_label_name(label)],
                "target_label": sanitize_label_name(label),
                "regex": "(.+)",
                "replacement": "${1}",
            }
        )
    rules.append({"target_label": "job", "replacement": f"{namespace}/{name}"})
    if job_label:
        rules.append(
            {
                "source_labels": ["__meta_kubernetes_pod_label_" + sanitize_label_name(job_label)],
                "target_label": "job",
                "regex": "(.+)",
                "replacement": "${1}",
            }
        )
    if port:
        rules.append({"target_label": "endpoint", "replacement": port})
    rules.extend(relabelings)
    rules.extend(_sharding_relabelings(shard_retention_policy))
    cfg["relabel_configs"] = rules
    if metric_relabelings:
        cfg["metric_relabel_configs"] = metric_relabelings
    return cfg


def _selector_relabelings(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """generatePodMonitorConfig's relabelings for spec.selector (selectorMechanism RelabelConfig, the default)."""
    mechanism = spec.get("selectorMechanism")
    if mechanism == "RoleSelector":
        raise NotImplementedError("spec.selectorMechanism: RoleSelector is not implemented")
    if mechanism is not None and mechanism != "RelabelConfig":
        raise ValueError(f"spec.selectorMechanism: {mechanism!r} is not RelabelConfig or RoleSelector")
    selector = go_object(spec.get("selector"), "spec.selector")
    unknown = sorted(set(_set(selector)) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise ValueError(f"spec.selector: unknown fields {unknown}")
    match_labels = go_object(selector.get("matchLabels"), "spec.selector.matchLabels")
    rules: list[dict[str, Any]] = []
    for key in sorted(match_labels):  # sortutil.SortedKeys (Go's byte order is Python's code point order)
        value = go_required_string(match_labels[key], f"spec.selector.matchLabels[{key!r}]", allow_empty=True)
        rules.append(
            {
                "action": "keep",
                "source_labels": _label_and_present(key),
                "regex": f"({value});true",
            }
        )
    expressions = selector.get("matchExpressions")
    if expressions is None:
        return rules
    if not isinstance(expressions, Sequence) or isinstance(expressions, str):
        raise ValueError("spec.selector.matchExpressions must be a list")
    for index, expression in enumerate(expressions):
        path = f"spec.selector.matchExpressions[{index}]"
        exp = go_object(expression, path)
        unknown = sorted(set(_set(exp)) - {"key", "operator", "values"})
        if unknown:
            raise ValueError(f"{path}: unknown fields {unknown}")
        key = go_required_string(exp.get("key"), f"{path}.key")
        operator = exp.get("operator")
        values = _str_list(exp.get("values"), f"{path}.values")
        # metav1.LabelSelectorAsSelector, which checkPodMonitor runs first, refuses these.
        if operator in ("In", "NotIn"):
            if not values:
                raise ValueError(f"{path}: operator {operator} needs values")
            rules.append(
                {
                    "action": "keep" if operator == "In" else "drop",
                    "source_labels": _label_and_present(key),
                    "regex": f"({'|'.join(values)});true",
                }
            )
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                raise ValueError(f"{path}: operator {operator} takes no values")
            rules.append(
                {
                    "action": "keep" if operator == "Exists" else "drop",
                    "source_labels": ["__meta_kubernetes_pod_labelpresent_" + sanitize_label_name(key)],
                    "regex": "true",
                }
            )
        else:
            raise ValueError(f"{path}.operator: {operator!r} is not In, NotIn, Exists or DoesNotExist")
    return rules


def _label_and_present(key: str) -> list[str]:
    label = sanitize_label_name(key)
    return ["__meta_kubernetes_pod_label_" + label, "__meta_kubernetes_pod_labelpresent_" + label]


def _namespaces(namespace_selector: Any, namespace: str) -> list[str]:
    """promcfg.go getNamespacesFromNamespaceSelector (ignoreNamespaceSelectors unset); [] means every namespace."""
    selector = go_object(namespace_selector, "spec.namespaceSelector")
    unknown = sorted(set(_set(selector)) - {"any", "matchNames"})
    if unknown:
        raise ValueError(f"spec.namespaceSelector: unknown fields {unknown}")
    if _optional_bool(selector.get("any"), "spec.namespaceSelector.any"):
        return []
    match_names = _str_list(selector.get("matchNames"), "spec.namespaceSelector.matchNames")
    return match_names or [namespace]


def _relabel_configs(value: Any, path: str) -> list[dict[str, Any]]:
    """promcfg.go generateRelabelConfig, after the API server's defaulting (action: replace)."""
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{path} must be a list")
    out = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        rc = go_object(item, item_path)
        unknown = sorted(set(_set(rc)) - _RELABEL_FIELDS)
        if unknown:
            raise ValueError(f"{item_path}: unknown fields {unknown}")
        action = rc.get("action")
        if action is None:
            action = "replace"  # CRD: +kubebuilder:default=replace
        if action not in _RELABEL_ACTION_SPELLINGS:
            raise ValueError(f"{item_path}.action: {action!r} is not a relabel action")
        modulus = rc.get("modulus")
        if modulus is not None and (isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 0):
            raise ValueError(f"{item_path}.modulus: {modulus!r} is not a non-negative integer")
        source_labels = _str_list(rc.get("sourceLabels"), f"{item_path}.sourceLabels")
        separator = rc.get("separator")
        if separator is not None:
            separator = go_required_string(separator, f"{item_path}.separator", allow_empty=True)
        target_label = go_string(rc.get("targetLabel"), f"{item_path}.targetLabel")
        regex = go_string(rc.get("regex"), f"{item_path}.regex")
        replacement = rc.get("replacement")
        if replacement is not None:
            replacement = go_required_string(replacement, f"{item_path}.replacement", allow_empty=True)
        rule: dict[str, Any] = {}
        if source_labels:
            rule["source_labels"] = source_labels
        if separator is not None:
            rule["separator"] = separator
        if target_label:
            rule["target_label"] = target_label
        if regex:
            rule["regex"] = regex
        if modulus:
            rule["modulus"] = modulus
        if replacement is not None:
            rule["replacement"] = replacement
        rule["action"] = action.lower()
        out.append(rule)
    return out


def _sharding_relabelings(shard_retention_policy: bool) -> list[dict[str, Any]]:
    """promcfg.go appendShardingRelabelingWithAddress -> appendShardingRelabelingWithLabel(__address__), one shard."""
    rules: list[dict[str, Any]] = []
    if shard_retention_policy:
        rules.extend(
            [
                {"target_label": "__tmp_current_shard", "replacement": f"$({_SHARD_ENV_VAR})", "action": "replace"},
                {
                    "source_labels": ["__tmp_current_shard"],
                    "regex": "|".join(str(shard) for shard in range(_SHARDS)),  # generateInRangeShardPattern
                    "action": "keep",
                },
            ]
        )
    rules.extend(
        [
            {
                "source_labels": ["__address__", "__tmp_hash"],
                "target_label": "__tmp_hash",
                "regex": "(.+);",
                "replacement": "$1",
                "action": "replace",
            },
            {"source_labels": ["__tmp_hash"], "target_label": "__tmp_hash", "modulus": _SHARDS, "action": "hashmod"},
            {
                "source_labels": ["__tmp_hash", "__tmp_disable_sharding"],
                "regex": f"$({_SHARD_ENV_VAR});|.+;.+",
                "action": "keep",
            },
        ]
    )
    return rules


def _duration_ms(value: str) -> int:
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a Prometheus duration")
    return sum(int(amount) * unit for amount, unit in zip(match.groups()[1:], _DURATION_UNIT_MS, strict=True) if amount)


def _set(mapping: Mapping[str, Any]) -> list[str]:
    """The keys set: a null value is an unset field, as in an object the API server returns."""
    return [key for key, value in mapping.items() if value is not None]


def _check_fields(
    mapping: Mapping[str, Any], path: str, known: frozenset[str], not_implemented: frozenset[str]
) -> None:
    for key in _set(mapping):
        if key in not_implemented:
            raise NotImplementedError(f"{path}.{key} is not implemented")
        if key not in known:
            raise ValueError(f"{path}.{key} is not a PodMonitor field")


def go_object(value: Any, path: str) -> Mapping[str, Any]:
    """A Go struct or map field of an object read as JSON: unset is empty; anything but an object is refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{path} must be an object")
    return value


def go_required_string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    """A string field that must be set (and, unless `allow_empty`, not empty)."""
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ValueError(f"{path} must be a non-empty string" if not allow_empty else f"{path} must be a string")
    return value


def go_string(value: Any, path: str) -> str:
    """A Go string field: unset and "" are the same."""
    if value is None:
        return ""
    return go_required_string(value, path, allow_empty=True)


def _optional_bool(value: Any, path: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{path} must be a boolean")
    return value


def _str_list(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path} must be a list of strings")
    return list(value)

"""The strict CRD validator (tests/crds): what the API server would accept passes, and each mistake it would reject,
or silently prune, fails with the path of the offending field."""

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.crds import crds, re2, validate_custom_resource

CRD_FILES = sorted((Path(__file__).parent / "crds").glob("*/*.yaml"))

POD_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PodMonitor",
    "metadata": {"name": "ray", "namespace": "ray", "labels": {"app": "ray"}},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "ray"}},
        "podTargetLabels": ["ray.io/node-type"],
        "podMetricsEndpoints": [
            {"port": "metrics", "interval": "30s", "relabelings": [{"action": "replace", "targetLabel": "x"}]},
            {"portNumber": 8080, "targetPort": "metrics"},
            {"targetPort": 8080},
        ],
    },
}

PROMETHEUS_RULE: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "ray"},
    "spec": {
        "groups": [
            {
                "name": "ray",
                "partial_response_strategy": "Warn",
                "rules": [
                    {
                        "alert": "RayHeadDown",
                        "expr": "up{job='ray'} == 0",
                        "for": "5m",
                        "keep_firing_for": "1m",
                        "labels": {"severity": "critical"},
                        "annotations": {"summary": "the Ray head is down"},
                    },
                    {"record": "ray:up:sum", "expr": "sum(up{job='ray'})"},
                ],
            }
        ]
    },
}


DELETE = object()


def changed(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy with the field at a dotted path (list indexes as numbers) set, appended, or deleted (DELETE)."""
    result = copy.deepcopy(manifest)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    target: Any = result
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list) and last == len(target):
        target.append(value)
    else:
        target[last] = value
    return result


@pytest.mark.parametrize("manifest", [POD_MONITOR, PROMETHEUS_RULE], ids=["PodMonitor", "PrometheusRule"])
def test_a_valid_resource_passes(manifest: dict[str, Any]) -> None:
    """Else every rejection below might be the validator refusing everything."""
    validate_custom_resource(manifest)


MISTAKES = [
    (POD_MONITOR, "spec.podMetricsEnpoints", [], r"spec\.podMetricsEnpoints: unknown field"),
    (POD_MONITOR, "spec.podMetricsEndpoints.0.prot", "metrics", r"spec\.podMetricsEndpoints\[0\]\.prot: unknown"),
    (POD_MONITOR, "spec.podMetricsEndpoints.0.relabelings.0.source_labels", [], r"relabelings\[0\]\.source_label"),
    (POD_MONITOR, "metadata", "ray", r"metadata: must be of type object, not string"),
    (POD_MONITOR, "spec.podMetricsEndpoints", {"port": "metrics"}, r"spec\.podMetricsEndpoints: must be of type"),
    (POD_MONITOR, "spec.podMetricsEndpoints.0.port", 8080, r"podMetricsEndpoints\[0\]\.port: must be of type str"),
    (POD_MONITOR, "spec.podMetricsEndpoints.1.portNumber", 8080.0, r"\[1\]\.portNumber: must be of type integer"),
    (POD_MONITOR, "spec.podMetricsEndpoints.1.portNumber", 0, r"\[1\]\.portNumber: 0 is less than the minimum"),
    (POD_MONITOR, "spec.podMetricsEndpoints.2.targetPort", 1.5, r"\[2\]\.targetPort: must be an integer or a str"),
    (POD_MONITOR, "spec.podMetricsEndpoints.2.targetPort", True, r"\[2\]\.targetPort: must be an integer or a str"),
    (POD_MONITOR, "spec.podMetricsEndpoints.0.interval", "30 s", r"podMetricsEndpoints\[0\]\.interval: '30 s'"),
    (POD_MONITOR, "spec.selector", DELETE, r"spec\.selector: required field is missing"),
    (POD_MONITOR, "spec.scrapeProtocols", ["PrometheusProto"] * 2, r"spec\.scrapeProtocols\[1\]: duplicate"),
    (POD_MONITOR, "kind", "PodMonitors", r"no vendored CRD serves monitoring\.coreos\.com/v1 PodMonitors"),
    (PROMETHEUS_RULE, "spec.groups.0.name", DELETE, r"spec\.groups\[0\]\.name: required field is missing"),
    (PROMETHEUS_RULE, "spec.groups.0.rules.0.expr", 0.5, r"rules\[0\]\.expr: must be an integer or a string"),
    (PROMETHEUS_RULE, "spec.groups.0.rules.0.for", 300, r"rules\[0\]\.for: must be of type string, not integer"),
    (PROMETHEUS_RULE, "spec.groups.0.rules.0.keepFiringFor", "1m", r"rules\[0\]\.keepFiringFor: unknown field"),
    (PROMETHEUS_RULE, "spec.groups.0.rules.0.labels.severity", 1, r"rules\[0\]\.labels\.severity: must be of type"),
    (PROMETHEUS_RULE, "spec.groups.0.partial_response_strategy", "warn\n", r"groups\[0\]\.partial_response_str"),
    (PROMETHEUS_RULE, "spec.groups.1", {"name": "ray"}, r"spec\.groups\[1\]: duplicate key \{'name': 'ray'\}"),
]


@pytest.mark.parametrize(
    ("manifest", "path", "value", "error"), MISTAKES, ids=[f"{m['kind']}.{path}" for m, path, *_ in MISTAKES]
)
def test_a_mistake_fails_naming_the_field(manifest: dict[str, Any], path: str, value: Any, error: str) -> None:
    """The API server would reject each (or, for an unknown field, prune it without a word)."""
    broken = changed(manifest, path, value)
    with pytest.raises(ValueError, match=error):
        validate_custom_resource(broken)


def test_every_error_is_reported_at_once() -> None:
    """One run names every mistake, so a user fixes them in one go."""
    broken = changed(changed(POD_MONITOR, "spec.jobLabels", "app"), "spec.podMetricsEndpoints.0.path", 1)
    with pytest.raises(ValueError) as raised:
        validate_custom_resource(broken)
    assert re.findall(r"^  (\S+):", str(raised.value), re.MULTILINE) == [
        "spec.jobLabels",
        "spec.podMetricsEndpoints[0].path",
    ]


def test_an_int_or_string_mistake_is_reported_once() -> None:
    """Its schema says it twice (x-kubernetes-int-or-string and an anyOf of the two types): one line is clearer."""
    with pytest.raises(ValueError) as raised:
        validate_custom_resource(changed(POD_MONITOR, "spec.podMetricsEndpoints.2.targetPort", 1.5))
    assert str(raised.value).count("\n  ") == 1, str(raised.value)


@pytest.mark.parametrize("crd", CRD_FILES, ids=[path.name for path in CRD_FILES])
def test_the_vendored_crds_are_v0_93_0_and_serve_v1(crd: Path) -> None:
    """The README's provenance holds for every file, and the validator finds each of them."""
    loaded = yaml.safe_load(crd.read_text())
    assert loaded["metadata"]["annotations"]["operator.prometheus.io/version"] == "0.93.0"
    assert (loaded["spec"]["group"], "v1", loaded["spec"]["names"]["kind"]) in crds()


def test_every_schema_pattern_compiles_with_go_meaning() -> None:
    """Upstream patterns are Go RE2: one Python cannot read would otherwise fail only once a manifest reaches it."""
    patterns: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.add(node["pattern"])
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    for schema, _ in crds().values():
        collect(schema)
    assert "^(?i)(abort|warn)?$" in patterns, "Python's re rejects this one as written: the translation is exercised"
    for pattern in patterns:
        re2(pattern)
    assert re2("^(?i)(abort|warn)?$").search("WARN")
    assert not re2("^(?i)(abort|warn)?$").search("warn\n")
    assert re2(r"^a\\$").search("a\\") and re2(r"^a\$").search("a$")

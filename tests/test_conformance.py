"""Every manifest the program renders is valid, in strict mode, against every Kubernetes version from 1.30 on,
and passes the API server's own checks on enums and names that those OpenAPI schemas do not carry."""

import copy
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from importlib.resources import files
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from tests.crds import crds, validate_custom_resource
from tests.program import ROOT, Manifest, render
from tests.variants import VARIANTS, rendered

VERSIONS = [v for v in all_versions() if Version(v) >= Version("1.30")]
# kubernetes_validate reads and parses each schema file (its definitions are over a megabyte of JSON) on every call:
# two thirds of this module's time. The files do not change while the tests run, and it only reads what it parsed.
kubernetes_validate.utils.schema_contents = cache(kubernetes_validate.utils.schema_contents)
# The API groups of the custom resources the program may declare, whose CRDs are vendored under tests/crds.
CUSTOM_GROUPS = {group for group, _, _ in crds()}
SCHEMAS = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{VERSIONS[-1]}-local-strict"

Rule = Callable[[str], str | None]


class ApiServerRejectionError(Exception):
    """What `kubectl apply` would print: the API server's validation refused a field the schemas let through."""


def one_of(*allowed: str) -> Rule:
    """An enum as the API server's validation enforces it (case-sensitive), with its message."""

    def check(value: str) -> str | None:
        if value in allowed:
            return None
        supported = ", ".join(f'"{a}"' for a in sorted(allowed))
        return f'Unsupported value: "{value}": supported values: {supported}'

    return check


def matches(pattern: str, max_length: int, what: str) -> Rule:
    def check(value: str) -> str | None:
        if re.fullmatch(pattern, value) and len(value) <= max_length:
            return None
        return f'Invalid value: "{value}": {what}'

    return check


DNS_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"


def qualified_name(value: str) -> str | None:
    """A label key (k8s.io/apimachinery IsQualifiedName): an optional DNS subdomain prefix, then a name."""
    prefix, _, name = value.rpartition("/")
    name_ok = re.fullmatch("[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", name) and len(name) <= 63
    prefix_ok = not prefix or (re.fullmatch(DNS_SUBDOMAIN, prefix) and len(prefix) <= 253)
    if name_ok and prefix_ok:
        return None
    return f'Invalid value: "{value}": name part must consist of alphanumeric characters, "-", "_" or "." and an \
optional prefix must be a lowercase RFC 1123 subdomain'


def iana_service_name(value: str) -> str | None:
    """A container port's name (IsValidPortName): at most 15 of [a-z0-9-], a letter, no "--", no "-" at an end."""
    if (
        len(value) <= 15
        and re.fullmatch("[a-z0-9]([-a-z0-9]*[a-z0-9])?", value)
        and re.search("[a-z]", value)
        and "--" not in value
    ):
        return None
    return f'Invalid value: "{value}": must be an IANA_SVC_NAME (at most 15 characters of a-z, 0-9 and "-")'


PROTOCOLS = one_of("TCP", "UDP", "SCTP")
# (OpenAPI definition, field) -> the API server's rule; a list field's rule applies to each item.
API_SERVER_RULES: dict[tuple[str, str], Rule] = {
    ("io.k8s.api.core.v1.ServicePort", "protocol"): PROTOCOLS,
    ("io.k8s.api.core.v1.ContainerPort", "protocol"): PROTOCOLS,
    ("io.k8s.api.networking.v1.NetworkPolicyPort", "protocol"): PROTOCOLS,
    ("io.k8s.api.networking.v1.NetworkPolicySpec", "policyTypes"): one_of("Ingress", "Egress"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement", "operator"): one_of(
        "In", "NotIn", "Exists", "DoesNotExist"
    ),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement", "key"): qualified_name,
    ("io.k8s.api.core.v1.ServicePort", "name"): matches(DNS_LABEL, 63, "a lowercase RFC 1123 label"),
    ("io.k8s.api.core.v1.ContainerPort", "name"): iana_service_name,
}


@cache
def schema(name: str) -> Any:
    return json.loads((SCHEMAS / name).read_text())


def kind_schema(manifest: Manifest) -> Any:
    """The file kubernetes_validate picks for the manifest's kind (apps/v1 -> apps-v1, v1 -> v1)."""
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", manifest["apiVersion"])
    return schema(f"{manifest['kind'].lower()}-{api_version}.json")


def api_server_rejections(value: Any, node: Any, path: str, definition: str = "") -> Iterator[str]:
    """Walk the manifest along its OpenAPI schema and apply API_SERVER_RULES wherever their definition is used."""
    if "$ref" in node:
        definition = node["$ref"].rsplit("/", 1)[-1]
        node = schema("_definitions.json")["$defs"][definition]
    if isinstance(value, dict) and "properties" in node:
        for key, item in value.items():
            if key not in node["properties"]:
                continue  # strict validation reports unknown fields
            rule = API_SERVER_RULES.get((definition, key))
            for checked in item if isinstance(item, list) else [item]:
                error = rule(checked) if rule and isinstance(checked, str) else None
                if error:
                    yield f"{path}.{key}: {error}"
            yield from api_server_rejections(item, node["properties"][key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        for key, item in value.items():
            yield from api_server_rejections(item, node["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            yield from api_server_rejections(item, node["items"], f"{path}[{index}]")


def validate_everywhere(manifest: Manifest) -> None:
    """Raises on the first version whose schema rejects the manifest (or has no schema for its kind), or on what the
    API server's validation would reject."""
    validate_json(json.dumps(manifest, sort_keys=True))


@cache
def validate_json(manifest: str) -> None:
    """Variants share most manifests: each distinct one is validated once (a failure is not cached)."""
    parsed = json.loads(manifest)
    if parsed["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
        # A custom resource: its CRD's schema (vendored, strict), and its metadata as any object's (an ObjectMeta,
        # checked here as a ConfigMap's, whose schema has nothing else required).
        validate_custom_resource(parsed)
        metadata_only = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": parsed["metadata"]}
        for version in VERSIONS:
            kubernetes_validate.validate(metadata_only, version, strict=True)
        return
    for version in VERSIONS:
        kubernetes_validate.validate(parsed, version, strict=True)
    rejections = list(api_server_rejections(parsed, kind_schema(parsed), parsed["kind"]))
    if rejections:
        raise ApiServerRejectionError("\n".join(rejections))


def test_versions_reach_from_1_30_to_the_newest_shipped() -> None:
    assert VERSIONS[0].startswith("1.30") and VERSIONS[-1] == kubernetes_validate.latest_version()
    assert len(VERSIONS) >= 8


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_is_valid(variant: str) -> None:
    manifests = rendered(variant).manifests
    assert manifests
    for manifest in manifests:
        validate_everywhere(manifest)


def test_a_misspelled_field_is_rejected() -> None:
    head = copy.deepcopy(next(m for m in rendered("default").of_kind("Deployment") if "head" in m["metadata"]["name"]))
    container = head["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["periodSecond"] = container["readinessProbe"].pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        validate_everywhere(head)


def test_a_custom_resource_is_checked_against_its_crd() -> None:
    [pod_monitor] = rendered("monitoring").of_kind("PodMonitor")
    misspelt = copy.deepcopy(pod_monitor)
    misspelt["spec"]["podTargetLabel"] = misspelt["spec"].pop("podTargetLabels")
    with pytest.raises(ValueError, match="podTargetLabel"):
        validate_everywhere(misspelt)
    bad_label = copy.deepcopy(pod_monitor)
    bad_label["metadata"]["labels"]["release"] = {"not": "a string"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_everywhere(bad_label)


def test_a_kind_without_a_schema_is_an_error() -> None:
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_everywhere({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"}})


PROTOCOL_ERROR = 'Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP"'
# (kind, name, path to a field, a value every schema from 1.30 on accepts, what a real API server answers instead)
REJECTED_BY_THE_API_SERVER: dict[str, tuple[str, str, tuple[str | int, ...], object, str]] = {
    "Service port protocol": (
        "Service",
        "ray-head",
        ("spec", "ports", 0, "protocol"),
        "tcp",
        f"Service.spec.ports[0].protocol: {PROTOCOL_ERROR}",
    ),
    "container port protocol": (
        "Deployment",
        "ray-head",
        ("spec", "template", "spec", "containers", 0, "ports", 1, "protocol"),
        "tcp",
        f"Deployment.spec.template.spec.containers[0].ports[1].protocol: {PROTOCOL_ERROR}",
    ),
    "NetworkPolicy port protocol": (
        "NetworkPolicy",
        "ray-metrics",
        ("spec", "ingress", 0, "ports", 0, "protocol"),
        "tcp",
        f"NetworkPolicy.spec.ingress[0].ports[0].protocol: {PROTOCOL_ERROR}",
    ),
    "policy type": (
        "NetworkPolicy",
        "ray-clients",
        ("spec", "policyTypes"),
        ["ingress"],
        'NetworkPolicy.spec.policyTypes: Unsupported value: "ingress": supported values: "Egress", "Ingress"',
    ),
    "selector operator": (
        "NetworkPolicy",
        "ray-clients",
        ("spec", "ingress", 0, "from", 1, "namespaceSelector", "matchExpressions", 0, "operator"),
        "in",
        "NetworkPolicy.spec.ingress[0].from[1].namespaceSelector.matchExpressions[0].operator: "
        'Unsupported value: "in": supported values: "DoesNotExist", "Exists", "In", "NotIn"',
    ),
    "selector key": (
        "NetworkPolicy",
        "ray-metrics",
        ("spec", "ingress", 0, "from", 0, "namespaceSelector", "matchExpressions", 0, "key"),
        "Kubernetes.io/metadata.name",
        "NetworkPolicy.spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].key: Invalid value: "
        '"Kubernetes.io/metadata.name": name part must consist of alphanumeric characters, "-", "_" or "." and an '
        "optional prefix must be a lowercase RFC 1123 subdomain",
    ),
    "Service port name": (
        "Service",
        "ray-head",
        ("spec", "ports", 0, "name"),
        "GCS",
        'Service.spec.ports[0].name: Invalid value: "GCS": a lowercase RFC 1123 label',
    ),
    "container port name": (
        "Deployment",
        "ray-head",
        ("spec", "template", "spec", "containers", 0, "ports", 0, "name"),
        "dashboard-and-jobs",
        'Deployment.spec.template.spec.containers[0].ports[0].name: Invalid value: "dashboard-and-jobs": must be an '
        'IANA_SVC_NAME (at most 15 characters of a-z, 0-9 and "-")',
    ),
}


@pytest.mark.parametrize("case", REJECTED_BY_THE_API_SERVER)
def test_what_the_api_server_rejects_is_rejected(case: str) -> None:
    """The schemas carry no enum for protocols, policy types or selector operators and no format for label keys
    and port names, but a real cluster refuses a lower-case "tcp" and the like: so must this stand-in."""
    kind, name, path, bad, expected = REJECTED_BY_THE_API_SERVER[case]
    manifest = copy.deepcopy(rendered("clients-allowed").one(kind, name))
    parent: Any = manifest
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = bad
    for version in VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)  # what the schemas alone let through
    with pytest.raises(ApiServerRejectionError) as raised:
        validate_everywhere(manifest)
    assert str(raised.value) == expected


# The README's NetworkPolicies for CNIs that drop the kubelet's probes under an ingress policy (Troubleshooting).
README_POLICIES = [
    document
    for block in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    for document in yaml.safe_load_all(block)
    if document.get("kind") == "NetworkPolicy"
]


def test_the_readmes_probe_policies_are_valid_and_admit_every_probe_port_and_no_other() -> None:
    """For the cluster the README names (`ray`, with its own Redis): each pod's httpGet and tcpSocket probe ports
    are admitted from the nodes' block by a policy that selects the pod, and no other port the pod listens on (not
    the head's GCS, which shares Redis's port number)."""
    assert len(README_POLICIES) == 2
    for policy in README_POLICIES:
        validate_everywhere(policy)
    cluster = render({"gcsFaultTolerance": "true", "namespace": "ray-prod"})
    for workload in cluster.of_kind("Deployment"):
        template = workload["spec"]["template"]
        labels = template["metadata"]["labels"]
        probed = {
            probe[handler]["port"]
            for container in template["spec"]["containers"]
            for kind in ("readinessProbe", "livenessProbe")
            if (probe := container.get(kind))
            for handler in ("httpGet", "tcpSocket")
            if handler in probe
        }
        admitted = {
            port["port"]
            for policy in README_POLICIES
            if policy["metadata"]["namespace"] == workload["metadata"]["namespace"]
            and policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
            for rule in policy["spec"]["ingress"]
            for port in rule["ports"]
        }
        listening = {port["containerPort"] for c in template["spec"]["containers"] for port in c.get("ports", [])}
        assert probed <= admitted and not (admitted - probed) & listening, workload["metadata"]["name"]

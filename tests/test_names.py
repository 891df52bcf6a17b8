"""Every name any accepted config produces is one Kubernetes accepts, the provider's auto-names included: the
schemas the conformance tests use do not check names, the API server does (apimachinery validation)."""

import re

import pytest

from components.config.settings import UPGRADE_STRATEGIES
from tests.program import Manifest, render

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# What the API server requires of each kind's name (Services: RFC 1035 labels; Namespaces: RFC 1123 labels; Jobs:
# labels too, as the Job controller copies the name into the pods' `job-name` label; the rest: subdomains).
NAME_RULES = {
    "Service": (DNS_1035_LABEL, 63),
    "Namespace": (DNS_1123_LABEL, 63),
    "Job": (DNS_1123_LABEL, 63),
}
LONGEST = {
    "clusterName": "c" * 53,
    "namespace": "n" * 63,
    "workerGroups": [{"name": "g" * 9, "nodeSelector": {"pool": "p" * 63}}],
    "allowedClientNamespaces": ["a" * 63],
    "allowedMetricsNamespaces": ["m" * 63],
}


def name_problems(manifest: Manifest) -> list[str]:
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    pattern, longest = NAME_RULES.get(kind, (DNS_1123_SUBDOMAIN, 253))
    problems = [] if pattern.match(name) and len(name) <= longest else [f"{kind} name {name!r}"]
    labelled = [manifest["metadata"], manifest.get("spec", {}).get("template", {}).get("metadata", {})]
    for labels in (metadata.get("labels", {}) for metadata in labelled):
        problems += [
            f"{kind} {name} label {k}={v!r}" for k, v in labels.items() if not LABEL_VALUE.match(v) or len(v) > 63
        ]
    return problems


@pytest.mark.parametrize("strategy", UPGRADE_STRATEGIES)
@pytest.mark.parametrize(
    "config",
    [{}, LONGEST, {**LONGEST, "clusterName": "a", "workerGroups": [{"name": "0"}]}],
    ids=["default", "longest", "shortest"],
)
def test_every_name_is_valid(config: dict[str, object], strategy: str) -> None:
    rendered = render({**config, "upgradeStrategy": strategy})
    assert [problem for manifest in rendered.manifests for problem in name_problems(manifest)] == []


def test_an_over_long_name_is_caught() -> None:
    job = {"kind": "Job", "metadata": {"name": "j" * 64}, "spec": {}}
    service = {"kind": "Service", "metadata": {"name": "1ray-head"}, "spec": {}}
    assert name_problems(job) == [f"Job name {'j' * 64!r}"]
    assert name_problems(service) == ["Service name '1ray-head'"]


def test_the_smoke_test_job_name_does_not_grow_with_the_cluster_name() -> None:
    def smoke_test_name(cluster_name: str) -> str:
        name: str = render({"clusterName": cluster_name}).smoke_test()["metadata"]["name"]
        return name

    short, long = smoke_test_name("a"), smoke_test_name("c" * 53)
    assert len(short) == len(long) <= 63

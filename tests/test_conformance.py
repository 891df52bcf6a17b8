"""Every manifest the program renders is valid, in strict mode, against every Kubernetes version from 1.30 on."""

import copy
import json
from functools import cache

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from tests.program import Manifest
from tests.variants import VARIANTS, rendered

VERSIONS = [v for v in all_versions() if Version(v) >= Version("1.30")]


def validate_everywhere(manifest: Manifest) -> None:
    """Raises on the first version whose schema rejects the manifest (or has no schema for its kind)."""
    validate_json(json.dumps(manifest, sort_keys=True))


@cache
def validate_json(manifest: str) -> None:
    """Variants share most manifests: each distinct one is validated once (a failure is not cached)."""
    for version in VERSIONS:
        kubernetes_validate.validate(json.loads(manifest), version, strict=True)


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


def test_a_kind_without_a_schema_is_an_error() -> None:
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_everywhere({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"}})

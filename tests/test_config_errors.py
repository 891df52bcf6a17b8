"""Every bad config value ends the real program with a RunError naming key, value and what is allowed,
before a single resource is registered."""

import json
from typing import Any

import pulumi
import pytest

from tests.program import _Mocks, render


def spy_on_declarations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The logical names of all resources the program declares from now on."""
    declared: list[str] = []
    original = _Mocks.new_resource

    def recording(self: _Mocks, args: Any) -> Any:
        declared.append(args.name)
        return original(self, args)

    monkeypatch.setattr(_Mocks, "new_resource", recording)
    return declared


BAD_VALUES = [
    # (config, text the message must contain)
    ({"workers": -1}, ["ray-cluster:workers", "-1", "0 or more"]),
    ({"workers": "four"}, ["ray-cluster:workers", "four"]),
    ({"headMemory": "2GB"}, ["ray-cluster:headMemory", "'2GB'", "Kubernetes quantity"]),
    ({"workerCpu": "-1"}, ["ray-cluster:workerCpu", "'-1'", "Kubernetes quantity"]),
    ({"workerMemory": "lots"}, ["ray-cluster:workerMemory", "'lots'"]),
    ({"headCpu": "0"}, ["ray-cluster:headCpu", "'0'", "greater than zero"]),
    ({"workerGpus": -2}, ["ray-cluster:workerGpus", "-2"]),
    ({"image": ""}, ["ray-cluster:image", "''", "non-empty"]),
    ({"image": "rayproject/ray"}, ["ray-cluster:image", "'rayproject/ray'", "tag or a digest"]),
    ({"image": "rayproject/ray:latest"}, ["ray-cluster:image", "latest"]),
    ({"image": "localhost:5000/ray"}, ["ray-cluster:image", "tag or a digest"]),
    ({"namespace": "Not_A_Label"}, ["ray-cluster:namespace", "'Not_A_Label'", "DNS label"]),
    ({"clusterName": "ray.cluster"}, ["ray-cluster:clusterName", "'ray.cluster'", "start with a letter"]),
    # The head Service is named after the cluster, and a Service name must start with a letter.
    ({"clusterName": "1ray"}, ["ray-cluster:clusterName", "'1ray'", "start with a letter"]),
    ({"clusterName": "r" * 54}, ["ray-cluster:clusterName", "at most 53 characters"]),
    # Ray refuses an object store below 75 MiB, and the store is 30% of the pod's memory.
    ({"headMemory": "100Mi"}, ["ray-cluster:headMemory", "'100Mi'", "at least 250Mi", "75 MiB"]),
    ({"workerMemory": "200Mi"}, ["ray-cluster:workerMemory", "'200Mi'", "at least 250Mi"]),
    ({"workerMemory": "262143999"}, ["ray-cluster:workerMemory", "at least 250Mi"]),
    (
        {"workerGroups": [{"name": "small", "memory": "249Mi"}]},
        ["ray-cluster:workerGroups[0].memory", "'249Mi'", "at least 250Mi"],
    ),
    ({"workerImage": "rayproject/ray:latest"}, ["ray-cluster:workerImage", "latest"]),
    (
        {"image": f"rayproject/ray:2.60.0@sha256:{'0' * 64}", "workerGpus": "1"},
        ["ray-cluster:workerImage", "pinned by digest", "set this group's image"],
    ),
    (
        {"image": "rayproject/ray:2.60.0-aarch64", "workerGroups": [{"name": "gpu", "gpus": 1}]},
        ["ray-cluster:workerGroups[0].image", "is an -aarch64 image", "set this group's image"],
    ),
    (
        {"image": f"rayproject/ray@sha256:{'0' * 64}", "workerGroups": [{"name": "gpu", "gpus": 1}]},
        ["ray-cluster:workerGroups[0].image", "pinned by digest"],
    ),
    ({"workerGroups": [{"name": "gpu", "image": "rayproject/ray"}]}, ["ray-cluster:workerGroups[0].image", "tag"]),
    ({"workerDrainSeconds": "-1"}, ["ray-cluster:workerDrainSeconds", "-1", "between 0 and 3600"]),
    ({"allowedMetricsNamespaces": ["Prom"]}, ["ray-cluster:allowedMetricsNamespaces[0]", "'Prom'", "DNS label"]),
    ({"testJob": "sometimes"}, ["ray-cluster:testJob", "sometimes"]),
    ({"workerGroups": {"name": "gpu"}}, ["ray-cluster:workerGroups", "list"]),
    ({"workerGroups": [{"name": "GPU_1"}]}, ["ray-cluster:workerGroups[0].name", "'GPU_1'", "DNS label"]),
    ({"workerGroups": [{"name": "gpu", "replica": 2}]}, ["ray-cluster:workerGroups[0]", "unknown keys ['replica']"]),
    ({"workerGroups": [{"replicas": 2}]}, ["ray-cluster:workerGroups[0]", "must have a name"]),
    ({"workerGroups": [{"name": "gpu"}, {"name": "gpu"}]}, ["ray-cluster:workerGroups", "'gpu'", "unique"]),
    ({"workerGroups": [{"name": "worker"}]}, ["ray-cluster:workerGroups", "'worker'", "unique"]),
    ({"workerGroups": [{"name": "head"}]}, ["ray-cluster:workerGroups", "'head'"]),
    ({"workerGroups": [{"name": "gpu", "replicas": -1}]}, ["ray-cluster:workerGroups[0].replicas", "-1"]),
    ({"workerGroups": [{"name": "gpu", "memory": "8GB"}]}, ["ray-cluster:workerGroups[0].memory", "'8GB'"]),
    ({"workerGroups": [{"name": "gpu", "gpus": "one"}]}, ["ray-cluster:workerGroups[0].gpus", "'one'"]),
    (
        {"workerGroups": [{"name": "gpu", "nodeSelector": {"pool": "a b"}}]},
        ["ray-cluster:workerGroups[0].nodeSelector['pool']", "'a b'", "label value"],
    ),
    (
        {"workerGroups": [{"name": "gpu", "nodeSelector": {"pool": ["a"]}}]},
        ["ray-cluster:workerGroups[0].nodeSelector['pool']", "label value"],
    ),
    (
        {"workerGroups": [{"name": "gpu", "tolerations": [{"key": "k", "operator": "Equals"}]}]},
        ["ray-cluster:workerGroups[0].tolerations[0].operator", "'Equals'", "['Equal', 'Exists']"],
    ),
    (
        {"workerGroups": [{"name": "gpu", "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}]},
        ["ray-cluster:workerGroups[0].tolerations[0]", "Exists must have no value"],
    ),
    (
        {"workerGroups": [{"name": "gpu", "tolerations": [{"effect": "NoSchedule"}]}]},
        ["ray-cluster:workerGroups[0].tolerations[0]", "without a key must have the operator Exists"],
    ),
    (
        {"workerGroups": [{"name": "gpu", "tolerations": [{"key": "k", "tolerationSeconds": 60}]}]},
        ["ray-cluster:workerGroups[0].tolerations[0]", "only allowed with the effect NoExecute"],
    ),
    ({"workerGroups": [{"name": "gpu", "cpu": True}]}, ["ray-cluster:workerGroups[0].cpu", "'true'", "quantity"]),
    (
        {"workerGroups": [{"name": "gpu", "tolerations": [{"key": "k", "effekt": "NoSchedule"}]}]},
        ["ray-cluster:workerGroups[0].tolerations", "effekt"],
    ),
    ({"workerGroups": [{"name": "g" * 60}]}, ["ray-cluster:workerGroups", "at most 63"]),
    ({"allowedClientCidrs": ["10.8.0.1/16"]}, ["ray-cluster:allowedClientCidrs[0]", "'10.8.0.1/16'", "CIDR"]),
    ({"allowedClientCidrs": "10.8.0.0/16"}, ["ray-cluster:allowedClientCidrs", "10.8.0.0/16", "JSON"]),
    ({"allowedClientCidrs": {"vpn": "10.8.0.0/16"}}, ["ray-cluster:allowedClientCidrs", "must be a list"]),
    ({"allowedClientNamespaces": ["Team A"]}, ["ray-cluster:allowedClientNamespaces[0]", "'Team A'", "DNS label"]),
    ({"gcsReconnectTimeoutSeconds": 1}, ["ray-cluster:gcsReconnectTimeoutSeconds", "1", "between 5 and 3600"]),
    ({"tokenAuth": "maybe"}, ["ray-cluster:tokenAuth", "maybe"]),
]


@pytest.mark.parametrize(("config", "expected"), BAD_VALUES, ids=[json.dumps(c) for c, _ in BAD_VALUES])
def test_bad_value_is_rejected_before_any_resource(
    config: dict[str, object], expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = spy_on_declarations(monkeypatch)
    with pytest.raises(pulumi.RunError) as error:
        render(config)
    for text in expected:
        assert text in str(error.value)
    assert declared == []


@pytest.mark.parametrize("stack", ["Dev", "prod_eu", "a.b", "s" * 60])
def test_a_namespace_is_derived_only_from_a_stack_name_that_is_one(stack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Dev` and `dev`, `a_b` and `a-b` would share a namespace if names were normalised: refused, with the fix."""
    declared = spy_on_declarations(monkeypatch)
    with pytest.raises(pulumi.RunError) as error:
        render(stack=stack)
    assert f"ray-cluster:namespace is '', but the stack {stack!r}" in str(error.value)
    assert "pulumi config set namespace ray-" in str(error.value)
    assert declared == []


def test_a_valid_config_does_declare_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: the same spy sees resources when the config is good."""
    declared = spy_on_declarations(monkeypatch)
    render({"workers": 1})
    assert "ray-worker" in declared

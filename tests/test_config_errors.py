"""Every bad config value ends the real program with a RunError naming key, value and what is allowed,
before a single resource is registered."""

import json
import runpy
from typing import Any

import pulumi
import pytest

from tests.program import ROOT, _Mocks, capture, render, stack_config
from tests.pulumi_cli import StackConfig
from tests.variants import REDIS_CA


def spy_on_declarations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The logical names of all resources the program declares from now on."""
    declared: list[str] = []
    original = _Mocks.new_resource

    def recording(self: _Mocks, args: Any) -> Any:
        declared.append(args.name)
        return original(self, args)

    monkeypatch.setattr(_Mocks, "new_resource", recording)
    return declared


def case_id(config: dict[str, object]) -> str:
    """A case's test id: its config as compact JSON, text over 40 characters cut to its first 24 and "...".

    mutmut names a test by its id when it runs it again, in another process, so the id must be the same in every
    process: REDIS_CA is a PEM certificate made afresh in each, several lines long. Cut short, digests and
    certificates leave ids of one plain, short line.
    """

    def short(value: object) -> object:
        if isinstance(value, str) and len(value) > 40:
            return value[:24] + "..."
        if isinstance(value, dict):
            return {key: short(item) for key, item in value.items()}
        if isinstance(value, list):
            return [short(item) for item in value]
        return value

    return json.dumps(short(config), separators=(",", ":"))


BAD_VALUES: list[tuple[dict[str, object], list[str]]] = [
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
    ({"upgradeStrategy": "blueGreen"}, ["ray-cluster:upgradeStrategy", "'blueGreen'", "one of inPlace, generation"]),
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
        {"workerGroups": [{"name": "gpu", "readOnlyRootFilesystem": "no"}]},
        ["ray-cluster:workerGroups[0].readOnlyRootFilesystem is 'no', but it must be true or false"],
    ),
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
    ({"gcsFaultTolerance": "yes"}, ["ray-cluster:gcsFaultTolerance", "yes"]),
    # The autoscaler's keys are checked with autoscaling off too.
    ({"maxWorkers": "-1"}, ["ray-cluster:maxWorkers", "-1", "0 or more"]),
    ({"maxWorkers": "many"}, ["ray-cluster:maxWorkers", "many"]),
    ({"workerGroups": [{"name": "gpu", "maxReplicas": "two"}]}, ["ray-cluster:workerGroups[0].maxReplicas", "'two'"]),
    ({"idleTimeoutSeconds": "86401"}, ["ray-cluster:idleTimeoutSeconds", "86401", "between 1 and 86400"]),
    ({"upscalingSpeed": "0"}, ["ray-cluster:upscalingSpeed", "'0'", "above 0"]),
    ({"upscalingSpeed": "1001"}, ["ray-cluster:upscalingSpeed", "'1001'", "at most 1000"]),
    ({"upscalingSpeed": "-1"}, ["ray-cluster:upscalingSpeed", "'-1'"]),
    ({"upscalingSpeed": "1e3"}, ["ray-cluster:upscalingSpeed", "'1e3'"]),
    # Every Redis key is checked with fault tolerance off too: a typo does not wait until it is turned on.
    ({"redisAddress": "redis.example"}, ["ray-cluster:redisAddress", "'redis.example'", "host:port"]),
    ({"redisAddress": "redis.example:99999"}, ["ray-cluster:redisAddress", "'redis.example:99999'"]),
    ({"redisAddress": "http://redis.example:6379"}, ["ray-cluster:redisAddress", "rediss://host:port"]),
    ({"redisAddress": "redis.example:6379", "redisCaCert": REDIS_CA}, ["ray-cluster:redisCaCert", "rediss://"]),
    ({"redisAddress": "rediss://r.example:6380", "redisCaCert": "ca.pem"}, ["ray-cluster:redisCaCert", "PEM"]),
    ({"redisMemory": "100Mi"}, ["ray-cluster:redisMemory", "'100Mi'", "at least 256Mi"]),
    ({"redisMemory": "4Gi"}, ["ray-cluster:redisStorage", "'2Gi'", "at least redisMemory (4Gi)"]),
    ({"workerGroups": [{"name": "redis"}]}, ["ray-cluster:workerGroups", "'redis'", "not 'head' or 'redis'"]),
    ({"redisImage": "redis"}, ["ray-cluster:redisImage", "'redis'", "tag or a digest"]),
    ({"redisImage": "redis:latest"}, ["ray-cluster:redisImage", "latest"]),
    ({"redisStorage": "1GB"}, ["ray-cluster:redisStorage", "'1GB'", "Kubernetes quantity"]),
    ({"redisStorageClass": "Fast SSD"}, ["ray-cluster:redisStorageClass", "'Fast SSD'", "object name"]),
    (
        {"workerGroups": [{"name": "arm", "nodeSelector": {"kubernetes.io/arch": "arm64"}}]},
        [
            "ray-cluster:workerGroups[0].nodeSelector['kubernetes.io/arch'] is 'arm64'",
            "image rayproject/ray:2.60.0 is built for amd64",
        ],
    ),
    # A key the program does not read would change nothing and say nothing.
    ({"wrokers": "4"}, ["ray-cluster:wrokers is '4'", "not a key of this program", "did you mean `workers`?"]),
    ({"headmemory": "8Gi"}, ["ray-cluster:headmemory", "did you mean `headMemory`?", "pulumi config rm headmemory"]),
    ({"workerGroup": [{"name": "gpu"}]}, ["ray-cluster:workerGroup", "did you mean `workerGroups`?"]),
]


@pytest.mark.parametrize(("config", "expected"), BAD_VALUES, ids=[case_id(c) for c, _ in BAD_VALUES])
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


def test_an_unknown_key_far_from_every_known_one_is_refused_without_a_guess_and_a_secret_one_unread() -> None:
    with pytest.raises(pulumi.RunError) as error:
        render({"colour": "blue"})
    assert str(error.value) == (
        "ray-cluster:colour is 'blue', but it is not a key of this program: `pulumi config rm colour` removes it (the "
        "keys are listed in Pulumi.yaml and the README)"
    )
    with pytest.raises(pulumi.RunError) as error:
        render({"authTokn": "s3cret-value"}, secrets=("authTokn",))
    assert "ray-cluster:authTokn is '[secret]'" in str(error.value) and "s3cret-value" not in str(error.value)
    assert "did you mean `authToken`?" in str(error.value)


def test_keys_of_other_namespaces_are_the_providers() -> None:
    """The CLI hands the program the whole stack config: `kubernetes:context` and the like are not this program's."""
    config = {**stack_config("test", {}), "kubernetes:context": "kind-kind", "random:anything": "x"}

    def program() -> None:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    rendered = capture(program, "test", config)
    assert rendered.of_kind("Deployment")


def test_a_valid_config_does_declare_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: the same spy sees resources when the config is good."""
    declared = spy_on_declarations(monkeypatch)
    render({"workers": 1})
    assert "ray-worker" in declared


DIGEST = f"sha256:{'0' * 64}"
LABEL_VALUE_RULE = "it must be a label value: at most 63 letters, digits, '-', '_' or '.'"
COUNT_RULE = "it must be a whole number, 0 or more"
TOLERATION = "ray-cluster:workerGroups[0].tolerations[0]"
GPU_IMAGE_RULE = (
    "a GPU group needs an image with CUDA whose reference cannot be derived from it: set this group's image "
    "(e.g. rayproject/ray:<version>-gpu@sha256:<digest>)"
)


def tolerations(*values: object) -> dict[str, object]:
    """Config with one worker group that has these tolerations."""
    return {"workerGroups": [{"name": "gpu", "tolerations": list(values)}]}


# (config, the whole message): the user reads all of it, so every word of it is checked, not just the key.
WHOLE_MESSAGES: list[tuple[dict[str, object], str]] = [
    (
        {"headMemory": "2GB"},
        'ray-cluster:headMemory is \'2GB\', but it must be a Kubernetes quantity such as "1", "500m", "512Mi" or "4Gi"',
    ),
    ({"headCpu": "0"}, "ray-cluster:headCpu is '0', but it must be greater than zero"),
    ({"workers": -1}, f"ray-cluster:workers is -1, but {COUNT_RULE}"),
    (
        {"clusterName": "1ray"},
        "ray-cluster:clusterName is '1ray', but it must start with a letter and hold only lower-case letters, digits "
        "and '-', at most 53 characters (it names the head Service, which Kubernetes requires to start with a letter)",
    ),
    (
        {"image": " "},
        "ray-cluster:image is ' ', but it must be a non-empty image reference such as rayproject/ray:2.60.0",
    ),
    (
        {"image": "rayproject/ray"},
        "ray-cluster:image is 'rayproject/ray', but it must name a tag or a digest (rayproject/ray:<version>), "
        "not imply latest",
    ),
    # A stray '/' after the tag leaves a name without a tag, which no registry serves (InvalidImageName).
    (
        {"image": "rayproject/ray:2.60.0/"},
        "ray-cluster:image is 'rayproject/ray:2.60.0/', but it must name a tag or a digest (rayproject/ray:<version>), "
        "not imply latest",
    ),
    # Two digests are no reference at all (InvalidImageName on every node).
    (
        {"image": f"rayproject/ray:2.60.0@{DIGEST}@{DIGEST}"},
        f"ray-cluster:image is 'rayproject/ray:2.60.0@{DIGEST}@{DIGEST}', but it must name at most one digest "
        "(name[:tag][@sha256:<digest>])",
    ),
    (
        {"image": "rayproject/ray:latest"},
        "ray-cluster:image is 'rayproject/ray:latest', but it must pin a version: `latest` changes under a running "
        "cluster",
    ),
    (
        {"image": f"rayproject/ray:2.60.0@{DIGEST}", "workerGpus": "1"},
        f"ray-cluster:workerImage is '', but the cluster's image 'rayproject/ray:2.60.0@{DIGEST}' is pinned by "
        f"digest, and {GPU_IMAGE_RULE}",
    ),
    (
        {"image": "rayproject/ray:2.60.0-aarch64", "workerGroups": [{"name": "gpu", "gpus": 1}]},
        "ray-cluster:workerGroups[0].image is '', but the cluster's image 'rayproject/ray:2.60.0-aarch64' is an "
        f"-aarch64 image, and {GPU_IMAGE_RULE}",
    ),
    (
        {"workerGroups": [{"name": "gpu", "nodeSelector": {"pool": "a b"}}]},
        f"ray-cluster:workerGroups[0].nodeSelector['pool'] is 'a b', but {LABEL_VALUE_RULE}",
    ),
    # `--path 'workerGroups[0].nodeSelector' pool=a` stores text, not an object.
    (
        {"workerGroups": [{"name": "gpu", "nodeSelector": "pool=a"}]},
        "ray-cluster:workerGroups[0].nodeSelector is 'pool=a', but it must be an object of node label names to values",
    ),
    (
        {"workerGroups": [{"name": "gpu", "nodeSelector": ["pool"]}]},
        "ray-cluster:workerGroups[0].nodeSelector is ['pool'], but it must be an object of node label names to values",
    ),
    (
        {"workerGroups": [{"name": "gpu", "tolerations": "gpu=true:NoSchedule"}]},
        "ray-cluster:workerGroups[0].tolerations is 'gpu=true:NoSchedule', but it must be a list of Kubernetes "
        "tolerations",
    ),
    (
        {"workerGroups": [{"name": "gpu", "tolerations": {"key": "gpu"}}]},
        "ray-cluster:workerGroups[0].tolerations is {'key': 'gpu'}, but it must be a list of Kubernetes tolerations",
    ),
    (
        tolerations({"key": "k", "effekt": "NoSchedule"}),
        f"{TOLERATION} is {{'key': 'k', 'effekt': 'NoSchedule'}}, but a toleration may only have the keys "
        "['effect', 'key', 'operator', 'tolerationSeconds', 'value']",
    ),
    (
        tolerations({"key": "k", "operator": "Exists", "value": "v"}),
        f"{TOLERATION} is {{'key': 'k', 'operator': 'Exists', 'value': 'v'}}, but a toleration with the operator "
        "Exists must have no value",
    ),
    (
        tolerations({"effect": "NoSchedule"}),
        f"{TOLERATION} is {{'effect': 'NoSchedule'}}, but a toleration without a key must have the operator Exists",
    ),
    (
        tolerations({"key": "k", "effect": "NoExecution"}),
        f"{TOLERATION}.effect is 'NoExecution', but it must be one of ['NoSchedule', 'PreferNoSchedule', 'NoExecute']",
    ),
    (
        tolerations({"key": "k", "effect": "NoSchedule", "tolerationSeconds": 60}),
        f"{TOLERATION} is {{'key': 'k', 'effect': 'NoSchedule', 'tolerationSeconds': 60}}, but tolerationSeconds is "
        "only allowed with the effect NoExecute",
    ),
    (
        tolerations({"key": "k", "effect": "NoExecute", "tolerationSeconds": -5}),
        f"{TOLERATION}.tolerationSeconds is -5, but {COUNT_RULE}",
    ),
    (
        tolerations({"key": ["a"], "operator": "Exists"}),
        f"{TOLERATION} is {{'key': ['a'], 'operator': 'Exists'}}, but its key and value must be text",
    ),
    (
        tolerations({"key": "k", "value": {"a": "b"}}),
        f"{TOLERATION} is {{'key': 'k', 'value': {{'a': 'b'}}}}, but its key and value must be text",
    ),
    (
        {"workerGroups": ["gpu"]},
        "ray-cluster:workerGroups[0] is 'gpu', but it must be an object with a name and replicas",
    ),
    (
        {"workerGroups": [{"name": "gpu", "replica": 2}]},
        "ray-cluster:workerGroups[0] is {'name': 'gpu', 'replica': 2}, but it has unknown keys ['replica']; did you "
        "mean `replicas`? allowed are ['cpu', 'gpus', 'image', 'maxReplicas', 'memory', 'name', 'nodeSelector', "
        "'readOnlyRootFilesystem', 'replicas', 'tolerations']",
    ),
    ({"workerGroups": [{"replicas": 2}]}, "ray-cluster:workerGroups[0] is {'replicas': 2}, but it must have a name"),
    (
        {"workerGroups": {"name": "gpu"}},
        "ray-cluster:workerGroups is {'name': 'gpu'}, but it must be a list of worker group objects",
    ),
    (
        {"allowedClientCidrs": {"vpn": "10.8.0.0/16"}},
        "ray-cluster:allowedClientCidrs is {'vpn': '10.8.0.0/16'}, but it must be a list",
    ),
    (
        {"allowedMetricsNamespaces": {"prometheus": "monitoring"}},
        "ray-cluster:allowedMetricsNamespaces is {'prometheus': 'monitoring'}, but it must be a list",
    ),
    (
        {"allowedClientCidrs": ["10.8.0.1/16"]},
        "ray-cluster:allowedClientCidrs[0] is '10.8.0.1/16', but it must be a CIDR block such as 10.8.0.0/16",
    ),
    (
        {"gcsFaultTolerance": "true", "workers": "0"},
        "ray-cluster:workers is 0, but with gcsFaultTolerance the head runs no tasks (so that losing it loses no "
        "work), so at least one worker is needed, or a group that Ray's autoscaler may grow (maxWorkers, "
        "maxReplicas)",
    ),
    (
        {"workers": "3", "maxWorkers": "2"},
        "ray-cluster:maxWorkers is 2, but it must be 0 (no autoscaling) or at least workers (3)",
    ),
    (
        {"workerGroups": [{"name": "gpu", "replicas": 2, "maxReplicas": 1}]},
        "ray-cluster:workerGroups[0].maxReplicas is 1, but it must be 0 (no autoscaling) or at least "
        "workerGroups[0].replicas (2)",
    ),
    (
        {"upscalingSpeed": "fast"},
        "ray-cluster:upscalingSpeed is 'fast', but it must be a number above 0 and at most 1000: how many nodes may "
        "be pending at once, as a multiple of the nodes there are (1: at most doubling per step; 1000: no limit)",
    ),
    (
        {"idleTimeoutSeconds": "0"},
        "ray-cluster:idleTimeoutSeconds is 0, but it must be between 1 and 86400 seconds",
    ),
    (
        {"redisAddress": "redis.example"},
        "ray-cluster:redisAddress is 'redis.example', but it must be an existing Redis as host:port (e.g. "
        "redis.example.internal:6379), or rediss://host:port for TLS; empty with gcsFaultTolerance deploys a Redis "
        "in the namespace",
    ),
    (
        {"redisAddress": "redis.example:6379", "redisCaCert": REDIS_CA},
        f"ray-cluster:redisCaCert is {REDIS_CA[:40] + '...'!r}, but a CA certificate is only used with a TLS "
        "Redis: redisAddress rediss://...",
    ),
    (
        {"redisAddress": "rediss://redis.example:6380", "redisCaCert": "/home/me/ca.pem"},
        "ray-cluster:redisCaCert is '/home/me/ca.pem...', but it must be PEM certificates (\"-----BEGIN "
        'CERTIFICATE-----" ... "-----END CERTIFICATE-----"): `pulumi config set redisCaCert -- "$(cat ca.pem)"`',
    ),
    (
        {"gcsReconnectTimeoutSeconds": 4},
        "ray-cluster:gcsReconnectTimeoutSeconds is 4, but it must be 0 (Ray's choice for the cluster) or between 5 "
        "and 3600 seconds",
    ),
    # The prometheus-operator's objects, but no namespace Prometheus may reach the metrics ports from.
    (
        {"prometheusOperator": "true"},
        "ray-cluster:prometheusOperator is 'true', but it needs allowedMetricsNamespaces to hold the namespace "
        "Prometheus runs in (e.g. `pulumi config set --path 'allowedMetricsNamespaces[0]' monitoring`): the "
        "NetworkPolicies admit no other namespace to the metrics ports",
    ),
    (
        {"serveApplications": [{"name": "", "import_path": "a:b"}]},
        "ray-cluster:serveApplications[0].name is '', but it must be non-empty text",
    ),
    # An audience for Serve, but nothing to serve it.
    (
        {"allowedServeCidrs": ["10.0.0.0/8"]},
        "ray-cluster:allowedServeCidrs is ['10.0.0.0/8'], but it admits traffic to Serve, and serveApplications is "
        "empty",
    ),
    # A number is not a CIDR block, although Python's ipaddress would read 167772160 as 10.0.0.0/32.
    (
        {"allowedClientCidrs": [167772160]},
        "ray-cluster:allowedClientCidrs[0] is 167772160, but it must be a CIDR block such as 10.8.0.0/16",
    ),
]


@pytest.mark.parametrize(("config", "message"), WHOLE_MESSAGES, ids=[case_id(c) for c, _ in WHOLE_MESSAGES])
def test_the_whole_message_names_key_value_and_what_is_allowed(config: dict[str, object], message: str) -> None:
    with pytest.raises(pulumi.RunError) as error:
        render(config)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "config",
    [
        {"gcsReconnectTimeoutSeconds": 5, "workerDrainSeconds": 0},
        {"gcsReconnectTimeoutSeconds": 3600, "workerDrainSeconds": 3600},
    ],
)
def test_the_limits_of_a_number_of_seconds_are_allowed(config: dict[str, object]) -> None:
    """ "between 5 and 3600 seconds" includes 5 and 3600 (and 0 for the drain: a worker may stop at once)."""
    render(config)


@pytest.mark.parametrize(
    ("address", "ray_address"),
    [
        ("redis.example.internal:6379", "redis.example.internal:6379"),
        ("redis://10.0.0.7:6379", "10.0.0.7:6379"),
        ("rediss://redis.example.internal:6380", "rediss://redis.example.internal:6380"),
        ("r:1", "r:1"),
        ("r:65535", "r:65535"),
    ],
)
def test_an_existing_redis_is_given_to_ray_as_it_takes_it(address: str, ray_address: str) -> None:
    """host:port as it is, `redis://` dropped (Ray's default), `rediss://` kept (it turns TLS on)."""
    rendered = render({"gcsFaultTolerance": "true", "redisAddress": address})
    [head] = rendered.one("Deployment", "ray-head")["spec"]["template"]["spec"]["containers"]
    assert {"name": "RAY_REDIS_ADDRESS", "value": ray_address} in head["env"]


@pytest.mark.parametrize("image", ["myray:1.0", f"myray@{DIGEST}", "registry.example:5000/team/ray:2.60.0"])
def test_an_image_with_a_tag_or_a_digest_is_allowed_with_or_without_a_repository_path(image: str) -> None:
    """A Docker Hub library image (`myray:1.0`) has no '/' at all, and still names its tag."""
    rendered = render({"image": image})
    assert rendered.one("Deployment", "ray-worker")["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_a_group_set_with_the_cli_gets_its_replicas_and_tolerations() -> None:
    """`--path` stores "02" as text (a leading zero) and 60 as a number; a group without replicas gets one; every
    field of a toleration reaches the pod; the head, which has no GPUs key, asks for no GPU."""
    config = StackConfig()
    for command in [
        "pulumi config set --path 'workerGroups[0].name' gpu",
        "pulumi config set --path 'workerGroups[0].replicas' 02",
        "pulumi config set --path 'workerGroups[0].tolerations[0].key' nvidia.com/gpu",
        "pulumi config set --path 'workerGroups[0].tolerations[0].operator' Equal",
        "pulumi config set --path 'workerGroups[0].tolerations[0].value' present",
        "pulumi config set --path 'workerGroups[0].tolerations[0].effect' NoExecute",
        "pulumi config set --path 'workerGroups[0].tolerations[0].tolerationSeconds' 060",
        "pulumi config set --path 'workerGroups[0].tolerations[1].operator' Exists",
        "pulumi config set --path 'workerGroups[0].tolerations[2].key' spot",
        "pulumi config set --path 'workerGroups[0].tolerations[2].effect' NoExecute",
        "pulumi config set --path 'workerGroups[0].tolerations[2].tolerationSeconds' 0",
        "pulumi config set --path 'workerGroups[1].name' cpu",
    ]:
        config.run(command)
    rendered = render(config.program_config())
    gpu = rendered.one("Deployment", "ray-gpu")
    assert gpu["spec"]["replicas"] == 2
    assert gpu["spec"]["template"]["spec"]["tolerations"] == [
        {
            "key": "nvidia.com/gpu",
            "operator": "Equal",
            "value": "present",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
        {"operator": "Exists"},
        {"key": "spot", "effect": "NoExecute", "tolerationSeconds": 0},
    ]
    assert rendered.one("Deployment", "ray-cpu")["spec"]["replicas"] == 1
    [head] = rendered.one("Deployment", "ray-head")["spec"]["template"]["spec"]["containers"]
    assert head["resources"] == {"limits": {"cpu": "1", "memory": "4Gi"}, "requests": {"cpu": "1", "memory": "4Gi"}}

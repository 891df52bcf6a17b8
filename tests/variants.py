"""The config variants every manifest-level test renders: each one the real program under mocks, rendered once,
with config stored as the Pulumi CLI stores it."""

from __future__ import annotations

import copy
import functools

import trustme

from tests.mutation_testing import STATS_PHASE, mutant_under_test
from tests.program import Rendered, render
from tests.pulumi_cli import StackConfig

# The PEM of a throwaway CA, as `pulumi config set redisCaCert -- "$(cat ca.pem)"` stores it.
REDIS_CA = trustme.CA().cert_pem.bytes().decode()

# The README's GPU group, typed as `pulumi config set --path` types it (cpu 8 and `true` arrive as 8 and True).
GPU_GROUP = StackConfig()
for command in (
    "pulumi config set --path 'workerGroups[0].name' gpu",
    "pulumi config set --path 'workerGroups[0].replicas' 1",
    "pulumi config set --path 'workerGroups[0].cpu' 8",
    "pulumi config set --path 'workerGroups[0].memory' 32Gi",
    "pulumi config set --path 'workerGroups[0].gpus' 1",
    "pulumi config set --path 'workerGroups[0].nodeSelector[\"nvidia.com/gpu.present\"]' true",
    "pulumi config set --path 'workerGroups[0].tolerations[0].key' nvidia.com/gpu",
    "pulumi config set --path 'workerGroups[0].tolerations[0].operator' Exists",
    "pulumi config set --path 'workerGroups[0].tolerations[0].effect' NoSchedule",
):
    GPU_GROUP.run(command)

# The README's autoscaling example: the default group between 1 and 6 workers, a GPU group only while GPU work waits.
AUTOSCALING = StackConfig()
for command in (
    "pulumi config set workers 1",
    "pulumi config set maxWorkers 6",
    "pulumi config set --path 'workerGroups[0].name' gpu",
    "pulumi config set --path 'workerGroups[0].replicas' 0",
    "pulumi config set --path 'workerGroups[0].maxReplicas' 2",
    "pulumi config set --path 'workerGroups[0].gpus' 1",
    "pulumi config set --path 'workerGroups[0].tolerations[0].key' nvidia.com/gpu",
    "pulumi config set --path 'workerGroups[0].tolerations[0].operator' Exists",
    "pulumi config set --path 'workerGroups[0].tolerations[0].effect' NoSchedule",
):
    AUTOSCALING.run(command)

# The README's Serve example: an application baked into the image, reached from an ingress controller's namespace.
SERVE_APPLICATION = {
    "name": "hello",
    "import_path": "hello:app",
    "route_prefix": "/hello",
    "deployments": [{"name": "Hello", "num_replicas": 2}],
}
SERVE: dict[str, object] = {"serveApplications": [SERVE_APPLICATION], "allowedServeNamespaces": ["ingress-nginx"]}

MONITORING: dict[str, object] = {
    "prometheusOperator": "true",
    "prometheusRelease": "kps",
    "allowedMetricsNamespaces": ["monitoring"],
    "grafanaDashboards": "true",
}

VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "no-workers": {"workers": "0"},
    "one-worker": {"workers": "1"},
    "four-workers": {"workers": "4"},
    "custom-image-and-resources": {
        "image": "registry.example/ray:2.60.0-py311",
        "headCpu": "4",
        "workerMemory": "8Gi",
    },
    "gpu-group": GPU_GROUP.program_config(),
    "auth-off": {"tokenAuth": "false"},
    "clients-allowed": {
        "allowedClientNamespaces": ["ml-notebooks"],
        "allowedClientCidrs": ["10.8.0.0/16"],
        "allowedMetricsNamespaces": ["monitoring"],
    },
    "existing-namespace": {"namespace": "shared", "createNamespace": "false"},
    "no-test-job": {"testJob": "false"},
    "fault-tolerant": {"gcsFaultTolerance": "true", "redisStorageClass": "fast-ssd"},
    "fault-tolerant-external-tls-redis": {
        "gcsFaultTolerance": "true",
        "redisAddress": "rediss://redis.example.internal:6380",
        "redisPassword": "a-password",
        "redisCaCert": REDIS_CA,
    },
    "in-place-fault-tolerant": {"upgradeStrategy": "inPlace", "gcsFaultTolerance": "true"},
    "autoscaling": AUTOSCALING.program_config(),
    "autoscaling-fault-tolerant": {**AUTOSCALING.program_config(), "gcsFaultTolerance": "true"},
    "serve": SERVE,
    "serve-autoscaling-fault-tolerant": {
        **SERVE,
        **AUTOSCALING.program_config(),
        "gcsFaultTolerance": "true",
        "allowedServeCidrs": ["10.0.0.0/8"],
    },
    # The README's monitoring example: kube-prometheus-stack's Prometheus (release `kps`, namespace `monitoring`).
    "monitoring": MONITORING,
    # With autoscaling (the autoscaler's metrics port) and a Redis of its own (its exporter).
    "monitoring-autoscaling-fault-tolerant": {
        **MONITORING,
        **AUTOSCALING.program_config(),
        "gcsFaultTolerance": "true",
    },
}


def rendered(variant: str) -> Rendered:
    """The variant's render: a copy of the one render of it that the tests share.

    Under mutmut (docs/mutation.md) the renders are shared only among the tests of one mutant, which all see the
    same code; and not at all while mutmut learns which tests run a function by watching each test run it (its
    stats phase): there a shared render would hide every test but the first."""
    mutant = mutant_under_test()
    if mutant == STATS_PHASE:
        return render(VARIANTS[variant])
    return copy.deepcopy(_shared_render(variant, mutant))


@functools.cache
def _shared_render(variant: str, mutant: str | None) -> Rendered:
    """The variant's render, once per mutant under test (`mutant` only keys the cache: the mutant is active in the
    code the render runs)."""
    return render(VARIANTS[variant])

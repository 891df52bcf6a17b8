"""The config variants every manifest-level test renders: each one the real program under mocks, rendered once."""

from __future__ import annotations

from functools import cache

from tests.program import Rendered, render

GPU_GROUP = {
    "name": "gpu",
    "replicas": 1,
    "cpu": "8",
    "memory": "32Gi",
    "gpus": 1,
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "no-workers": {"workers": 0},
    "one-worker": {"workers": 1},
    "four-workers": {"workers": 4},
    "custom-image-and-resources": {"image": "registry.example/ray:2.60.0-py311", "headCpu": "4", "workerMemory": "8Gi"},
    "gpu-group": {"workerGroups": [GPU_GROUP]},
    "auth-off": {"tokenAuth": False},
    "clients-allowed": {"allowedClientNamespaces": ["ml-notebooks"], "allowedClientCidrs": ["10.8.0.0/16"]},
    "existing-namespace": {"namespace": "shared", "createNamespace": False},
    "no-test-job": {"testJob": False},
}


@cache
def rendered(variant: str) -> Rendered:
    return render(VARIANTS[variant])

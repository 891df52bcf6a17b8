"""Every `pulumi` command in the README's shell blocks, run in order against the CLI's config store and the real
program: each `pulumi up` (and each block that sets config) must render without an error, with the values stored
as the real CLI stores them (`--path` numbers and booleans included)."""

import json
import re
import shlex

import pytest

from tests.program import ROOT, Rendered
from tests.program import render_in_place as render
from tests.pulumi_cli import StackConfig

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)


def commands(block: str) -> list[str]:
    """The `pulumi ...` commands of a block, `&&` chains split, comments dropped."""
    found = []
    for line in block.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words[:1] == ["pulumi"]:
                found.append(shlex.join(words))
    return found


def run_readme() -> list[tuple[str, Rendered]]:
    """Runs the README's commands; returns each deployment (stack, what `pulumi up` would declare)."""
    stacks: dict[str, StackConfig] = {}
    stack = "dev"
    deployed: list[tuple[str, Rendered]] = []
    for block in BLOCKS:
        pending = False
        for command in commands(block):
            words = shlex.split(command)
            if words[1:3] == ["stack", "select"]:
                stack = words[-1]
            elif words[1:3] == ["config", "set"]:
                stacks.setdefault(stack, StackConfig()).run(command)
                pending = True
            elif words[1] == "up":
                config = stacks.setdefault(stack, StackConfig())
                deployed.append((stack, render(config.program_config(), stack, secrets=tuple(config.secrets))))
                pending = False
        if pending:
            config = stacks[stack]
            deployed.append((stack, render(config.program_config(), stack, secrets=tuple(config.secrets))))
    return deployed


@pytest.fixture
def deployed() -> list[tuple[str, Rendered]]:
    return run_readme()


def test_the_readme_has_the_commands_this_test_runs() -> None:
    everything = [command for block in BLOCKS for command in commands(block)]
    assert sum("config set --path" in command for command in everything) >= 9
    assert sum(command.startswith("pulumi up") for command in everything) >= 4


def test_every_readme_deployment_renders(deployed: list[tuple[str, Rendered]]) -> None:
    assert [stack for stack, _ in deployed] == [
        "dev", "dev", "arm", "staging", "prod", "prod", "prod", "prod", "prod", "prod", "prod"
    ]  # fmt: skip


def test_the_readme_turns_autoscaling_on_for_the_default_group_then_a_gpu_group_from_zero(
    deployed: list[tuple[str, Rendered]],
) -> None:
    _, default_group = deployed[6]
    assert default_group.one("Role", "ray-autoscaler")["rules"][2]["resourceNames"] == ["ray-worker"]
    _, gpu_group = deployed[7]
    assert gpu_group.one("Role", "ray-autoscaler")["rules"][2]["resourceNames"] == ["ray-worker", "ray-gpu"]
    assert gpu_group.one("Deployment", "ray-gpu")["spec"]["replicas"] == 0
    # GPU nodes are tainted: without the toleration the autoscaler's pods would stay Pending.
    gpu_spec = gpu_group.one("Deployment", "ray-gpu")["spec"]["template"]["spec"]
    assert gpu_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    config = json.loads(gpu_group.one("ConfigMap", "ray-autoscaler")["data"]["autoscaling.json"])
    bounds = {name: (t["min_workers"], t["max_workers"]) for name, t in config["available_node_types"].items()}
    assert bounds == {"head": (0, 0), "worker": (4, 10), "gpu": (0, 2)}  # prod runs 4 workers


def test_the_readme_turns_fault_tolerance_on_with_a_redis_of_the_stacks_own(
    deployed: list[tuple[str, Rendered]],
) -> None:
    _, tolerant = deployed[-3]
    assert tolerant.one("Deployment", "ray-redis")["spec"]["replicas"] == 1
    assert tolerant.outputs["gcsStorageNamespace"].startswith("ray-")


def test_the_readme_hands_the_cluster_to_kube_prometheus_stacks_prometheus(
    deployed: list[tuple[str, Rendered]],
) -> None:
    _, monitored = deployed[-2]
    # The Ray pods' PodMonitor, and the one of the stack's own Redis (its stack is fault-tolerant by then).
    assert sorted(m["metadata"]["name"] for m in monitored.of_kind("PodMonitor")) == ["ray", "ray-redis"]
    assert {m["metadata"]["labels"]["release"] for m in monitored.of_kind("PodMonitor")} == {"kube-prometheus-stack"}
    [rule] = monitored.one("NetworkPolicy", "ray-metrics")["spec"]["ingress"]
    assert rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["monitoring"]


def test_the_readme_gpu_group_is_what_it_says(deployed: list[tuple[str, Rendered]]) -> None:
    # The Configuration section's group (the Autoscaling section's comes later, on another stack).
    [gpu, *_] = [
        r.one("Deployment", "ray-gpu") for _, r in deployed if "ray-gpu" in {m["metadata"]["name"] for m in r.manifests}
    ]
    spec = gpu["spec"]["template"]["spec"]
    assert gpu["spec"]["replicas"] == 2
    assert spec["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true", "kubernetes.io/arch": "amd64"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["containers"][0]["image"] == "rayproject/ray:2.60.0-gpu"


def test_the_readme_environments_get_their_own_namespaces(deployed: list[tuple[str, Rendered]]) -> None:
    namespaces = {stack: rendered.one("Namespace")["metadata"]["name"] for stack, rendered in deployed}
    assert namespaces == {"dev": "ray-dev", "arm": "ray-arm", "staging": "ray-staging", "prod": "ray-prod"}


def test_the_readme_puts_every_ray_pod_of_an_aarch64_image_on_arm64_nodes(deployed: list[tuple[str, Rendered]]) -> None:
    [arm] = [rendered for stack, rendered in deployed if stack == "arm"]
    templates = [m["spec"]["template"] for m in arm.manifests if m["kind"] in ("Deployment", "Job")]
    assert len(templates) == 3  # the head, the workers, the smoke test
    for template in templates:
        assert {c["image"] for c in template["spec"]["containers"]} == {"rayproject/ray:2.60.0-aarch64"}
        assert template["spec"]["nodeSelector"] == {"kubernetes.io/arch": "arm64"}


def test_the_readme_points_the_dashboards_metrics_views_at_kube_prometheus_stack(
    deployed: list[tuple[str, Rendered]],
) -> None:
    _, viewed = deployed[-1]
    head = viewed.one("Deployment", "ray-head")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["RAY_PROMETHEUS_HOST"] == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    assert env["RAY_GRAFANA_HOST"] == "http://kube-prometheus-stack-grafana.monitoring.svc"

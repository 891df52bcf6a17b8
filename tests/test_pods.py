"""The pod builders on their own: no Pulumi runtime, just settings in and Kubernetes dicts out."""

import json
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from components import pods
from components.settings import DEFAULT_GROUP, ClusterSettings, PodResources, WorkerGroup

SETTINGS = ClusterSettings(
    cluster_name="demo",
    namespace="ml",
    create_namespace=True,
    image="rayproject/ray:2.60.0",
    head=PodResources(cpu="2", memory="8Gi"),
    worker_groups=(
        WorkerGroup(
            name=DEFAULT_GROUP,
            replicas=2,
            resources=PodResources(cpu="1500m", memory="3Gi"),
            image="rayproject/ray:2.60.0",
        ),
    ),
    test_job=True,
    token_auth=True,
    client_namespaces=(),
    client_cidrs=(),
    metrics_namespaces=(),
    gcs_reconnect_timeout_seconds=30,
    worker_drain_seconds=120,
)


@pytest.mark.parametrize(("cpu", "cpus"), [("100m", 1), ("1", 1), ("1200m", 2), ("1500m", 2), ("2.1", 3), ("2001m", 3)])
def test_fractional_cpus_are_rounded_up_not_to_the_nearest(cpu: str, cpus: int) -> None:
    """Ray would otherwise schedule more work than the pod's CPU limit allows (1200m is 2 CPUs, not 1)."""
    assert pods.node_sizing(PodResources(cpu=cpu, memory="1Gi")).num_cpus == cpus


def test_sizing_rounds_cpus_up_and_keeps_the_object_store_inside_shm() -> None:
    sizing = pods.node_sizing(PodResources(cpu="1500m", memory="3Gi", gpus=2))
    assert (sizing.num_cpus, sizing.num_gpus) == (2, 2)
    assert sizing.memory_bytes + sizing.object_store_bytes == 3 * 2**30
    assert sizing.object_store_bytes < sizing.shm_bytes < 3 * 2**30
    assert sizing.shm_bytes % pods.MIB == 0


def test_worker_command_survives_the_shell() -> None:
    args = pods.ray_start_args(SETTINGS, SETTINGS.worker_groups[0].resources, head=False)
    command = pods.shell("exec " + shlex.join(args))
    assert command[:2] == ["/bin/bash", "-c"]
    assert command[2].startswith(f"ulimit -n {pods.NOFILE_LIMIT} ")
    assert shlex.split(command[2].split("; ", 1)[1]) == ["exec", *args]
    assert "--address=demo-head.ml.svc:6379" in args


def test_wait_for_gcs_loops_until_health_check_passes_and_says_why_not(tmp_path: Path) -> None:
    """Run for real under bash, against a local port and a `ray` that refuses twice (as with a wrong token)."""
    fake_ray = tmp_path / "ray"
    fake_ray.write_text(
        '#!/bin/sh\ncount=$(cat "$0.calls" 2>/dev/null || echo 0); echo $((count + 1)) > "$0.calls"\n'
        '[ "$count" -ge 2 ] && exit 0\necho "Traceback ..." >&2; echo "Unauthenticated: invalid token" >&2; exit 1\n'
    )
    fake_ray.chmod(0o755)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        script = pods.wait_for_gcs_script(SETTINGS)
        assert script.count("demo-head.ml.svc") == 4 and script.count("6379") == 4
        local = script.replace("demo-head.ml.svc", "127.0.0.1").replace("6379", str(listener.getsockname()[1]))
        result = subprocess.run(
            ["bash", "-c", local], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30
        )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines == [f"waiting for the Ray head (GCS) at {local.split('--address=')[1].split(' ')[0]}: "
                     "Unauthenticated: invalid token"] * 2 + [lines[-1]]  # fmt: skip
    assert lines[-1].endswith(" is ready")

    unanswered = [
        ("127.0.0.1", "1", "connect: Connection refused"),
        ("no-such-head.invalid", "6379", "no-such-head.invalid: Name or service not known"),
    ]
    for host, port, why in unanswered:
        unreachable = subprocess.run(
            ["timeout", "3", "bash", "-c", script.replace("demo-head.ml.svc", host).replace("6379", port)],
            env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert f"waiting for the Ray head (GCS) at {host}:{port}: {why}\n" in unreachable.stdout


def test_labels_name_cluster_component_and_group() -> None:
    labels = pods.labels(SETTINGS, "worker", "gpu")
    assert labels["ray.io/cluster"] == labels["app.kubernetes.io/instance"] == "demo"
    assert labels["ray.io/group"] == "gpu" and labels["ray.io/node-type"] == "worker"
    assert pods.selector_labels(SETTINGS, "gpu").items() <= labels.items()


def test_gpu_resources_only_when_asked_for() -> None:
    assert "nvidia.com/gpu" not in pods.container_resources(PodResources(cpu="1", memory="1Gi"))["limits"]
    with_gpu = pods.container_resources(PodResources(cpu="1", memory="1Gi", gpus=4))
    assert with_gpu["limits"]["nvidia.com/gpu"] == with_gpu["requests"]["nvidia.com/gpu"] == "4"


def test_smoke_test_template_changes_with_the_script_and_the_cluster() -> None:
    first = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="print('a')", cluster_digest="1")
    second = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="print('b')", cluster_digest="1")
    third = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="print('a')", cluster_digest="2")
    assert len({json.dumps(t["metadata"]["annotations"]) for t in (first, second, third)}) == 3
    assert first["spec"]["restartPolicy"] == "Never"


def test_workers_drain_for_the_configured_time_and_the_kubelet_waits_for_it() -> None:
    worker = pods.worker_pod_template(SETTINGS, SETTINGS.worker_groups[0], {})
    head = pods.head_pod_template(SETTINGS, {})
    for template, drain in ((worker, 120), (head, pods.HEAD_DRAIN_SECONDS)):
        [ray] = template["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in ray["env"]}
        assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == str(drain)
        # Ray's teardown after the drain (about a second per process) must fit in the grace period as well.
        assert template["spec"]["terminationGracePeriodSeconds"] >= drain + 10
    # A head that drained would only delay its replacement; a worker outlasts Ray's default 30 s drain.
    assert head["spec"]["terminationGracePeriodSeconds"] < 30 < 120 <= worker["spec"]["terminationGracePeriodSeconds"]
    env = {item["name"]: item.get("value") for item in worker["spec"]["containers"][0]["env"]}
    assert env["RAY_gcs_rpc_server_reconnect_timeout_s"] == "30"


def test_workers_notice_a_new_head_within_seconds_and_the_head_keeps_rays_defaults() -> None:
    worker = pods.worker_pod_template(SETTINGS, SETTINGS.worker_groups[0], {})
    head = pods.head_pod_template(SETTINGS, {})
    [worker_env, head_env] = (
        {item["name"]: item.get("value") for item in template["spec"]["containers"][0]["env"]}
        for template in (worker, head)
    )
    # Ray's default self-check is every 60 s: a worker would stay in a cluster that no longer knows it that long.
    assert worker_env["RAY_raylet_liveness_self_check_interval_ms"] == "5000"
    assert "RAY_raylet_liveness_self_check_interval_ms" not in head_env
    assert "RAY_gcs_rpc_server_reconnect_timeout_s" not in head_env


def test_workers_roll_without_a_surge_pod_in_at_most_seven_rounds() -> None:
    rollout = pods.WORKER_ROLLOUT
    assert rollout == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}}
    # Kubernetes rounds maxUnavailable down, to at least 1 when maxSurge is 0.
    rounds = {n: -(-n // max(1, n * 25 // 100)) for n in range(1, 200)}
    assert max(rounds.values()) == pods.WORKER_ROLLOUT_ROUNDS


def test_every_ray_container_has_a_writable_home_as_its_working_directory() -> None:
    worker = pods.worker_pod_template(SETTINGS, SETTINGS.worker_groups[0], {})
    smoke = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="", cluster_digest="")
    for template in (worker, pods.head_pod_template(SETTINGS, {}), smoke):
        spec = template["spec"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in spec.get("initContainers", []) + spec["containers"]:
            env = {item["name"]: item.get("value") for item in container["env"]}
            assert env["HOME"] == container["workingDir"] == pods.HOME_DIR
            [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == pods.HOME_DIR]
            assert volumes[mount["name"]] == {"name": mount["name"], "emptyDir": {}} and not mount.get("readOnly")
            # Below the image's home, not over it: /home/ray/anaconda3 (conda, Ray) stays visible.
            assert pods.HOME_DIR.startswith("/home/ray/") and pods.HOME_DIR != "/home/ray/anaconda3"

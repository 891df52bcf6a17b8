"""The pod builders on their own: no Pulumi runtime, just settings in and Kubernetes dicts out."""

import shlex

from components import pods
from components.settings import DEFAULT_GROUP, ClusterSettings, PodResources, WorkerGroup

SETTINGS = ClusterSettings(
    cluster_name="demo",
    namespace="ml",
    create_namespace=True,
    image="rayproject/ray:2.60.0",
    head=PodResources(cpu="2", memory="8Gi"),
    worker_groups=(WorkerGroup(name=DEFAULT_GROUP, replicas=2, resources=PodResources(cpu="1500m", memory="3Gi")),),
    test_job=True,
    token_auth=True,
    client_namespaces=(),
    client_cidrs=(),
    gcs_reconnect_timeout_seconds=30,
)


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


def test_wait_for_gcs_loops_until_health_check_passes() -> None:
    script = pods.wait_for_gcs_script(SETTINGS)
    assert script.startswith("until (exec 3<>/dev/tcp/demo-head.ml.svc/6379) 2>/dev/null && ")
    assert "ray health-check --address=demo-head.ml.svc:6379 " in script
    assert "sleep 1; done" in script


def test_labels_name_cluster_component_and_group() -> None:
    labels = pods.labels(SETTINGS, "worker", "gpu")
    assert labels["ray.io/cluster"] == labels["app.kubernetes.io/instance"] == "demo"
    assert labels["ray.io/group"] == "gpu" and labels["ray.io/node-type"] == "worker"
    assert pods.selector_labels(SETTINGS, "gpu").items() <= labels.items()


def test_gpu_resources_only_when_asked_for() -> None:
    assert "nvidia.com/gpu" not in pods.container_resources(PodResources(cpu="1", memory="1Gi"))["limits"]
    with_gpu = pods.container_resources(PodResources(cpu="1", memory="1Gi", gpus=4))
    assert with_gpu["limits"]["nvidia.com/gpu"] == with_gpu["requests"]["nvidia.com/gpu"] == "4"


def test_smoke_test_template_changes_with_the_script() -> None:
    first = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="print('a')")
    second = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="print('b')")
    assert first["metadata"]["annotations"] != second["metadata"]["annotations"]
    assert first["spec"]["restartPolicy"] == "Never"

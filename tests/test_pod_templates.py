"""The pod templates on their own: the Ray head, a worker group and the smoke-test Job, as Kubernetes dicts.

Guards what the kubelet and the API server act on at pod level: the volumes (a memory-backed /dev/shm of the
promised size for Ray's object store, writable emptyDirs for /tmp and HOME, the token Secret readable by the
`ray` group only, the smoke-test script's ConfigMap), that every volumeMount names a volume of its pod, read-only
mounts, restartPolicy, the grace period, the service-account token that is never mounted, the default container
that `kubectl logs/exec` pick, and the labels Services and tooling select by. Expected values are written out
literally; the container-level builders (`ray start`, probes, ports) are guarded in test_pods.py.
"""

import dataclasses
import re
from typing import Any

import pytest

from components.config.groups import WorkerGroup
from components.config.resources import PodResources
from components.config.settings import ClusterSettings
from components.manifests import pods
from tests.test_pods import BASE_ENV, TOKEN_ENV
from tests.test_pods import RESTRICTED_CONTAINER as CONTAINER_SECURITY
from tests.test_pods import SETTINGS as BASE_SETTINGS

Manifest = dict[str, Any]

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# test_pods.py's cluster, with a GPU group beside the default one.
SETTINGS = dataclasses.replace(
    BASE_SETTINGS,
    worker_groups=(
        *BASE_SETTINGS.worker_groups,
        WorkerGroup(
            name="gpu",
            replicas=1,
            resources=PodResources(cpu="4", memory="16Gi", gpus=1),
            image="rayproject/ray:2.60.0-gpu",
            node_selector={"accelerator": "nvidia"},
            tolerations=(GPU_TOLERATION,),
        ),
    ),
)
NO_AUTH = dataclasses.replace(SETTINGS, token_auth=False)
[CPU_GROUP, GPU_GROUP] = SETTINGS.worker_groups
VERSION = {"ray-cluster.pulumi.com/auth-token-version": "v1"}
AMD64 = {"kubernetes.io/arch": "amd64"}
SCRIPT = "print('smoke')"
SCRIPT_SHA256 = "c8f7efe666eb489fbdb278ee6dd4c87c5344a6f59360745494e1ecbcddc562d4"  # `printf %s "$SCRIPT" | sha256sum`

# The image's `ray` user (uid 1000, group `users` 100): fsGroup makes the Secret's files group-owned by 100.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
SCRATCH_VOLUMES = [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
# 0o440: the owner (root) and the group (fsGroup 100, the `ray` user's) read the token; nobody writes or runs it.
TOKEN_VOLUME = {"name": "auth-token", "secret": {"secretName": "demo-auth-token", "defaultMode": 0o440}}
SCRATCH_MOUNTS = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/home/ray/workspace"}]
SHM_MOUNT = {"name": "shm", "mountPath": "/dev/shm"}
TOKEN_MOUNT = {"name": "auth-token", "mountPath": "/etc/ray/auth", "readOnly": True}


def shm_volume(mebibytes: int) -> Manifest:
    """/dev/shm in RAM (the kubelet's default emptyDir is node disk, which makes Ray's object store slow), capped."""
    return {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{mebibytes}Mi"}}


def pod_labels(component: str, group: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "ray",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "pulumi",
        "ray.io/cluster": "demo",
        "ray.io/node-type": component,
        "ray.io/group": group,
    }


def without(manifest: Manifest, *keys: str) -> Manifest:
    return {key: value for key, value in manifest.items() if key not in keys}


def smoke_test(settings: ClusterSettings) -> Manifest:
    return pods.smoke_test_pod_template(
        settings, script_config_map="demo-smoke-test", script=SCRIPT, cluster_digest="d1"
    )


def all_templates(settings: ClusterSettings) -> list[Manifest]:
    return [
        pods.head_pod_template(settings, VERSION),
        *(pods.worker_pod_template(settings, group, VERSION) for group in settings.worker_groups),
        smoke_test(settings),
    ]


def test_head_pod_keeps_the_restart_policy_grace_period_and_volumes_a_ray_node_needs() -> None:
    """35% of 8Gi is 2867.2 MiB: /dev/shm is capped in whole MiB below that, in RAM, and the token is read-only."""
    template = pods.head_pod_template(SETTINGS, VERSION)
    assert template["metadata"] == {
        "labels": {**pod_labels("head", "head"), **VERSION},
        "annotations": {"kubectl.kubernetes.io/default-container": "ray-head"},
    }
    assert without(template["spec"], "containers") == {
        "serviceAccountName": "demo",
        # Ray never calls the Kubernetes API: no token for anyone who gets into the pod.
        "automountServiceAccountToken": False,
        "securityContext": POD_SECURITY,
        # A Deployment's pods must restart their containers (the API server accepts only "Always").
        "restartPolicy": "Always",
        # The head does not drain: 0 s plus the margin for Ray's processes to stop.
        "terminationGracePeriodSeconds": 15,
        "volumes": [*SCRATCH_VOLUMES, shm_volume(2867), TOKEN_VOLUME],
        # An official Ray tag without -aarch64 is built for amd64: never on a node that cannot run it.
        "nodeSelector": AMD64,
    }
    [ray] = template["spec"]["containers"]
    assert ray["name"] == "ray-head"
    assert ray["volumeMounts"] == [*SCRATCH_MOUNTS, SHM_MOUNT, TOKEN_MOUNT]


# What every worker pod of this cluster has, whatever its group.
WORKER_POD = {
    "serviceAccountName": "demo",
    "automountServiceAccountToken": False,
    "securityContext": POD_SECURITY,
    "restartPolicy": "Always",
    # 120 s of drain plus 15 s for Ray's processes to stop, before the kubelet's SIGKILL.
    "terminationGracePeriodSeconds": 135,
    # Placed only while the cluster's head pod is (in the one domain every node is in): never into a restarting
    # head's room.
    "affinity": {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {"ray.io/cluster": "demo", "ray.io/group": "head"}},
                    "topologyKey": "kubernetes.io/os",
                }
            ]
        }
    },
}


def test_worker_pod_waits_for_the_gcs_in_an_init_container_and_is_placed_as_its_group_says() -> None:
    """16Gi gives a 5734Mi /dev/shm; the GPU group's nodeSelector and tolerations reach the pod as given."""
    template = pods.worker_pod_template(SETTINGS, GPU_GROUP, VERSION)
    assert template["metadata"] == {
        "labels": {**pod_labels("worker", "gpu"), **VERSION},
        # Not the init container: `kubectl logs` without `-c` shows the raylet's node, not the wait loop.
        "annotations": {"kubectl.kubernetes.io/default-container": "ray-worker"},
    }
    spec = template["spec"]
    assert without(spec, "containers", "initContainers") == {
        **WORKER_POD,
        "volumes": [*SCRATCH_VOLUMES, shm_volume(5734), TOKEN_VOLUME],
        "nodeSelector": {"accelerator": "nvidia", **AMD64},
        "tolerations": [GPU_TOLERATION],
    }
    [ray] = spec["containers"]
    assert ray["name"] == "ray-worker"
    assert ray["volumeMounts"] == [*SCRATCH_MOUNTS, SHM_MOUNT, TOKEN_MOUNT]

    [wait] = spec["initContainers"]
    # A TCP connect in bash: no token, no env, no writable directory (the Ray container checks the token).
    assert without(wait, "command") == {
        "name": "wait-gcs-ready",
        "image": "rayproject/ray:2.60.0-gpu",
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
            "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
        },
        "securityContext": CONTAINER_SECURITY,
    }
    shell, flag, script = wait["command"]
    assert (shell, flag) == ("/bin/bash", "-c")
    assert "exec 3<>/dev/tcp/demo-head.ml.svc/6379" in script and "health-check" not in script
    assert script.endswith('echo "GCS at demo-head.ml.svc:6379 accepts connections"')


def test_a_worker_group_without_placement_sets_only_its_images_architecture_and_no_tolerations() -> None:
    """Absent, not empty or null: the fields stay out of the manifest so nothing else's value is overwritten; an
    image of the group's own that is not an official Ray image (whose architecture only its builder knows) sets no
    node selector at all."""
    spec = pods.worker_pod_template(NO_AUTH, CPU_GROUP, {})["spec"]
    assert without(spec, "containers", "initContainers") == {
        **WORKER_POD,
        "volumes": [*SCRATCH_VOLUMES, shm_volume(1075)],
        "nodeSelector": AMD64,
    }
    custom = dataclasses.replace(CPU_GROUP, image="registry.example/team/ray:2.60.0")
    assert "nodeSelector" not in pods.worker_pod_template(NO_AUTH, custom, {})["spec"]
    assert [c.get("volumeMounts") for c in spec["initContainers"] + spec["containers"]] == [
        None,
        [*SCRATCH_MOUNTS, SHM_MOUNT],
    ]
    assert pods.worker_pod_template(NO_AUTH, CPU_GROUP, {})["metadata"]["labels"] == pod_labels("worker", "worker")


def test_smoke_test_pod_is_a_run_once_ray_client_driver_with_its_script_read_only() -> None:
    """The whole Job template: Never restarted in place (the Job counts the failure), no grace period of its own,
    no /dev/shm (a Ray Client driver keeps no object store), and the env the script reads."""
    assert smoke_test(SETTINGS) == {
        "metadata": {
            "labels": pod_labels("smoke-test", "smoke-test"),
            "annotations": {
                "kubectl.kubernetes.io/default-container": "smoke-test",
                "ray-cluster.pulumi.com/smoke-test-sha256": SCRIPT_SHA256,
                "ray-cluster.pulumi.com/cluster-sha256": "d1",
            },
        },
        "spec": {
            "serviceAccountName": "demo",
            "automountServiceAccountToken": False,
            "securityContext": POD_SECURITY,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "smoke-test",
                    "image": "rayproject/ray:2.60.0",
                    "command": ["python", "/opt/ray-smoke-test/smoke_test.py"],
                    "workingDir": "/home/ray/workspace",
                    "env": [
                        *BASE_ENV,
                        *TOKEN_ENV,
                        {"name": "RAY_ADDRESS", "value": "ray://demo-head.ml.svc:10001"},
                        {"name": "SMOKE_EXPECTED_WORKERS", "value": "3"},
                        {"name": "SMOKE_NODE_WAIT_SECONDS", "value": "600"},
                        {"name": "SMOKE_WORKER_GROUPS", "value": "worker=2,gpu=1"},
                    ],
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "1Gi"},
                        "limits": {"cpu": "500m", "memory": "1Gi"},
                    },
                    "securityContext": CONTAINER_SECURITY,
                    "volumeMounts": [
                        *SCRATCH_MOUNTS,
                        TOKEN_MOUNT,
                        {"name": "script", "mountPath": "/opt/ray-smoke-test", "readOnly": True},
                    ],
                }
            ],
            "volumes": [*SCRATCH_VOLUMES, TOKEN_VOLUME, {"name": "script", "configMap": {"name": "demo-smoke-test"}}],
            "nodeSelector": AMD64,
        },
    }


def test_without_auth_no_pod_has_a_token_volume_mount_or_env() -> None:
    smoke = smoke_test(NO_AUTH)["spec"]
    assert smoke["volumes"] == [*SCRATCH_VOLUMES, {"name": "script", "configMap": {"name": "demo-smoke-test"}}]
    [driver] = smoke["containers"]
    assert driver["volumeMounts"] == [
        *SCRATCH_MOUNTS,
        {"name": "script", "mountPath": "/opt/ray-smoke-test", "readOnly": True},
    ]
    assert driver["env"][:4] == [*BASE_ENV, {"name": "RAY_ADDRESS", "value": "ray://demo-head.ml.svc:10001"}]
    head = pods.head_pod_template(NO_AUTH, {})["spec"]
    assert head["volumes"] == [*SCRATCH_VOLUMES, shm_volume(2867)]
    assert head["containers"][0]["volumeMounts"] == [*SCRATCH_MOUNTS, SHM_MOUNT]


@pytest.mark.parametrize("settings", [SETTINGS, NO_AUTH], ids=["auth", "no-auth"])
def test_every_mount_names_a_volume_of_its_pod_and_every_volume_is_mounted(settings: ClusterSettings) -> None:
    """The API server rejects a pod whose volumeMount names no volume, and any name not a DNS-1123 label."""
    dns_label = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
    for template in all_templates(settings):
        spec = template["spec"]
        volumes = [volume["name"] for volume in spec["volumes"]]
        assert len(set(volumes)) == len(volumes) and all(dns_label.fullmatch(name) for name in volumes)
        # A worker's init container only tries a TCP port (bash): it mounts nothing.
        assert all("volumeMounts" not in container for container in spec.get("initContainers", []))
        containers = spec["containers"]
        mounted = {mount["name"] for container in containers for mount in container["volumeMounts"]}
        assert mounted == set(volumes), template["metadata"]["labels"]["ray.io/group"]
        # Each container sees /tmp and HOME writable, in its own pod's emptyDirs, and nothing else over them.
        for container in containers:
            paths = [mount["mountPath"] for mount in container["volumeMounts"]]
            assert paths[:2] == ["/tmp", "/home/ray/workspace"] and len(set(paths)) == len(paths)

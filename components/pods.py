"""Pure builders for the Ray pods: labels, `ray start` command lines and pod templates as Kubernetes dicts.

One function per concern, as in KubeRay's pod builder, so each can be tested without Pulumi and the
component only wires the results into resources. Ports, sizes and probe timings are defined once, here.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from .settings import ClusterSettings, PodResources, WorkerGroup

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
METRICS_PORT = 8080
AGENT_PORT = 52365
# Fixed rather than random, so the head's Ray Client server knows the runtime env agent's address from the start
# instead of looking it up while the agent may still be registering (first client connections failed that way).
RUNTIME_ENV_AGENT_PORT = 52366

# Ray's own default object store share is 30% of memory; /dev/shm gets a little more so the store always fits
# (Ray falls back to a slow disk-backed store when /dev/shm is smaller), and both count against the memory limit.
OBJECT_STORE_FRACTION = Decimal("0.30")
SHM_FRACTION = Decimal("0.35")

# The official Ray image runs as user `ray` (uid 1000, group `users`, gid 100).
RAY_UID = 1000
RAY_GID = 100
NOFILE_LIMIT = 65536
MIB = 2**20
POD_IP_ENV = "RAY_POD_IP"
AUTH_TOKEN_DIR = "/etc/ray/auth"
AUTH_TOKEN_KEY = "token"
SMOKE_TEST_MOUNT = "/opt/ray-smoke-test"
SMOKE_TEST_FILE = "smoke_test.py"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class RayNodeSizing:
    """What `ray start` is told, derived from the pod's requests so Ray never reads the host's cores and memory."""

    num_cpus: int
    num_gpus: int
    memory_bytes: int
    object_store_bytes: int
    shm_bytes: int


def node_sizing(resources: PodResources) -> RayNodeSizing:
    total = resources.memory_bytes
    object_store = int(total * OBJECT_STORE_FRACTION)
    return RayNodeSizing(
        # `ray start` takes whole CPUs; like KubeRay, round a fractional request up.
        num_cpus=int(resources.cpu_cores.to_integral_value(rounding=ROUND_CEILING)),
        num_gpus=resources.gpus,
        memory_bytes=total - object_store,
        object_store_bytes=object_store,
        shm_bytes=int(total * SHM_FRACTION) // MIB * MIB,
    )


def labels(settings: ClusterSettings, component: str, group: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels plus KubeRay's ray.io labels, so existing tooling recognises pods."""
    return {
        "app.kubernetes.io/name": "ray",
        "app.kubernetes.io/instance": settings.cluster_name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "pulumi",
        "ray.io/cluster": settings.cluster_name,
        "ray.io/node-type": component,
        "ray.io/group": group,
    }


def selector_labels(settings: ClusterSettings, group: str) -> dict[str, str]:
    """The immutable subset of labels a Deployment selects its pods by."""
    return {"ray.io/cluster": settings.cluster_name, "ray.io/group": group}


def ray_start_args(settings: ClusterSettings, resources: PodResources, *, head: bool) -> list[str]:
    """`ray start` for one node, in the foreground (`--block`) so the container lives exactly as long as Ray."""
    sizing = node_sizing(resources)
    role = (
        [
            "--head",
            f"--port={GCS_PORT}",
            "--dashboard-host=0.0.0.0",
            f"--dashboard-port={DASHBOARD_PORT}",
            f"--ray-client-server-port={CLIENT_PORT}",
        ]
        if head
        else [f"--address={settings.head_host}:{GCS_PORT}"]
    )
    return [
        "ray",
        "start",
        *role,
        f"--node-ip-address=$({POD_IP_ENV})",
        f"--num-cpus={sizing.num_cpus}",
        f"--num-gpus={sizing.num_gpus}",
        f"--memory={sizing.memory_bytes}",
        f"--object-store-memory={sizing.object_store_bytes}",
        f"--dashboard-agent-listen-port={AGENT_PORT}",
        f"--runtime-env-agent-port={RUNTIME_ENV_AGENT_PORT}",
        f"--metrics-export-port={METRICS_PORT}",
        "--disable-usage-stats",
        "--block",
    ]


def shell(script: str) -> list[str]:
    """Run `script` under bash, after raising the open-files limit that Ray's many connections need (runtimes
    such as containerd 2 start containers with a soft limit of 1024), or as far as the hard limit allows."""
    return ["/bin/bash", "-c", f'ulimit -n {NOFILE_LIMIT} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; {script}']


def wait_for_gcs_script(settings: ClusterSettings) -> str:
    """Loop until the head's GCS answers, so workers wait instead of crash-looping while the head starts.

    A plain TCP connect (bash's /dev/tcp) gates the `ray health-check`, so the waiting workers do not spend
    the CPU the starting head needs on a Python import every second.
    """
    host, port = settings.head_host, GCS_PORT
    return (
        f"until (exec 3<>/dev/tcp/{host}/{port}) 2>/dev/null && "
        f"ray health-check --address={host}:{port} >/dev/null 2>&1; do "
        f'echo "waiting for the Ray head (GCS) at {host}:{port}"; sleep 1; done; '
        f'echo "GCS at {host}:{port} is ready"'
    )


def container_resources(resources: PodResources) -> Manifest:
    amounts: dict[str, str] = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpus:
        amounts["nvidia.com/gpu"] = str(resources.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def container_security() -> Manifest:
    """Pod Security Standard "restricted": nothing in Ray needs root, extra capabilities or a writable image."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
    }


def pod_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "fsGroup": RAY_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def ray_env(settings: ClusterSettings) -> list[Manifest]:
    """Env of every process that talks to Ray: its pod's IP, no usage stats, and the token when auth is on."""
    env: list[Manifest] = [
        {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    if settings.token_auth:
        # A file rather than RAY_AUTH_TOKEN: env vars leak into `kubectl describe`, crash dumps and child processes.
        env += [
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN_PATH", "value": f"{AUTH_TOKEN_DIR}/{AUTH_TOKEN_KEY}"},
        ]
    return env


def ray_volumes(settings: ClusterSettings, sizing: RayNodeSizing | None) -> list[Manifest]:
    """Writable scratch for Ray's session directory, a memory-backed /dev/shm for the object store (Ray nodes
    only) and the auth token."""
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
    if sizing:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{sizing.shm_bytes // MIB}Mi"}})
    if settings.token_auth:
        secret = {"secretName": settings.auth_secret_name, "defaultMode": 0o440}
        volumes.append({"name": "auth-token", "secret": secret})
    return volumes


def ray_volume_mounts(settings: ClusterSettings, *, shm: bool) -> list[Manifest]:
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]
    if shm:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if settings.token_auth:
        mounts.append({"name": "auth-token", "mountPath": AUTH_TOKEN_DIR, "readOnly": True})
    return mounts


def http_probe(port: int, path: str, *, liveness: bool) -> Manifest:
    """Readiness every second (an HTTP GET, cheap), so Services and the smoke test follow a node within a
    second; liveness, as KubeRay's, tolerates a long stall before it restarts anything."""
    timings = (
        {"initialDelaySeconds": 30, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 120}
        if liveness
        else {"initialDelaySeconds": 1, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 10}
    )
    return {"httpGet": {"path": path, "port": port}, **timings}


def worker_env(settings: ClusterSettings) -> list[Manifest]:
    """How long a worker's raylet waits for a lost head before it exits, to be restarted against the new head."""
    return [{"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": str(settings.gcs_reconnect_timeout_seconds)}]


def ray_container(settings: ClusterSettings, resources: PodResources, *, head: bool) -> Manifest:
    ports = ([("gcs", GCS_PORT), ("dashboard", DASHBOARD_PORT), ("client", CLIENT_PORT)] if head else []) + [
        ("metrics", METRICS_PORT),
        ("agent", AGENT_PORT),
    ]
    readiness = (
        http_probe(DASHBOARD_PORT, "/api/gcs_healthz", liveness=False)
        if head
        else http_probe(AGENT_PORT, "/api/healthz", liveness=False)
    )
    return {
        "name": "ray-head" if head else "ray-worker",
        "image": settings.image,
        "command": shell("exec " + shlex.join(ray_start_args(settings, resources, head=head))),
        "env": ray_env(settings) + ([] if head else worker_env(settings)),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports],
        "resources": container_resources(resources),
        "securityContext": container_security(),
        "volumeMounts": ray_volume_mounts(settings, shm=True),
        "readinessProbe": readiness,
        "livenessProbe": http_probe(AGENT_PORT, "/api/healthz", liveness=True),
    }


def pod_template(
    settings: ClusterSettings,
    *,
    component: str,
    group: str,
    containers: list[Manifest],
    volumes: list[Manifest],
    init_containers: list[Manifest] | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[Manifest] | None = None,
    restart_policy: str = "Always",
    annotations: dict[str, str] | None = None,
) -> Manifest:
    spec: Manifest = {
        "serviceAccountName": settings.cluster_name,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "restartPolicy": restart_policy,
        "containers": containers,
        "volumes": volumes,
        **({"initContainers": init_containers} if init_containers else {}),
        **({"nodeSelector": node_selector} if node_selector else {}),
        **({"tolerations": tolerations} if tolerations else {}),
    }
    metadata: Manifest = {"labels": labels(settings, component, group)}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": spec}


def head_pod_template(settings: ClusterSettings) -> Manifest:
    return pod_template(
        settings,
        component="head",
        group="head",
        containers=[ray_container(settings, settings.head, head=True)],
        volumes=ray_volumes(settings, node_sizing(settings.head)),
    )


def worker_pod_template(settings: ClusterSettings, group: WorkerGroup) -> Manifest:
    wait_for_gcs = {
        "name": "wait-gcs-ready",
        "image": settings.image,
        "command": shell(wait_for_gcs_script(settings)),
        "env": ray_env(settings),
        # Init containers run before the Ray container, so the same amounts add nothing to the pod's footprint.
        "resources": container_resources(group.resources),
        "securityContext": container_security(),
        "volumeMounts": ray_volume_mounts(settings, shm=False),
    }
    return pod_template(
        settings,
        component="worker",
        group=group.name,
        containers=[ray_container(settings, group.resources, head=False)],
        init_containers=[wait_for_gcs],
        volumes=ray_volumes(settings, node_sizing(group.resources)),
        node_selector=dict(group.node_selector),
        tolerations=[dict(t) for t in group.tolerations],
    )


def smoke_test_pod_template(settings: ClusterSettings, *, script_config_map: str, script: str) -> Manifest:
    """A Ray Client driver that runs the smoke test against the head.

    Its env names the shape it must find and an annotation carries the script's hash, so a change of either
    changes the Job's template, which replaces the Job and runs the test again.
    """
    expected = {group.name: group.replicas for group in settings.worker_groups}
    driver = {
        "name": "smoke-test",
        "image": settings.image,
        "command": ["python", f"{SMOKE_TEST_MOUNT}/{SMOKE_TEST_FILE}"],
        "env": [
            *ray_env(settings),
            {"name": "RAY_ADDRESS", "value": f"ray://{settings.head_host}:{CLIENT_PORT}"},
            {"name": "SMOKE_EXPECTED_WORKERS", "value": str(settings.total_workers)},
            {"name": "SMOKE_WORKER_GROUPS", "value": ",".join(f"{k}={v}" for k, v in expected.items())},
        ],
        "resources": container_resources(PodResources(cpu="500m", memory="1Gi")),
        "securityContext": container_security(),
        "volumeMounts": [
            *ray_volume_mounts(settings, shm=False),
            {"name": "script", "mountPath": SMOKE_TEST_MOUNT, "readOnly": True},
        ],
    }
    return pod_template(
        settings,
        component="smoke-test",
        group="smoke-test",
        containers=[driver],
        volumes=[*ray_volumes(settings, None), {"name": "script", "configMap": {"name": script_config_map}}],
        restart_policy="Never",
        annotations={"ray-cluster.pulumi.com/smoke-test-sha256": hashlib.sha256(script.encode()).hexdigest()},
    )

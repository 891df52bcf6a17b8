"""Ray's own autoscaler for worker Deployments, with nothing beyond the namespace: no operator, no CRD, no
ClusterRole.

Ray's monitor (the v1 `StandardAutoscaler`, which `ray start --head` would start itself) runs as a container of its
own in the head pod, as KubeRay's autoscaler sidecar does, with `ray start --head --no-monitor` in the Ray container.
It loads this project's node provider (`node_provider.py`, shipped in a ConfigMap with the autoscaling config) and
changes the worker Deployments' replicas through their `scale` subresource.

Only that container can reach the Kubernetes API: the head pod's ServiceAccount is bound to a Role in the namespace,
and its token is a projected volume mounted into the autoscaler container alone (no automount), so job drivers and
any other code on the head, which runs in the Ray container, cannot read it. Workers keep a ServiceAccount without
any binding or token. KubeRay, by contrast, mounts the token into every container of the head pod.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from ..config.resources import PodResources
from ..config.settings import GENERATION_MARK, ClusterSettings
from . import pods, ray_node
from .security import container_security

CONTAINER_NAME = "autoscaler"
CONFIG_DIR = "/etc/ray/autoscaler"
CONFIG_FILE = "autoscaling.json"
# The node provider's source becomes this module in the autoscaler container (CONFIG_DIR is on its PYTHONPATH).
PROVIDER_MODULE = "ray_cluster_node_provider"
PROVIDER_FILE = f"{PROVIDER_MODULE}.py"
PROVIDER_SOURCE = "node_provider.py"
PROVIDER_CLASS = "DeploymentNodeProvider"
# The head's node type in the autoscaling config; worker node types are the group names, which may not be `head`.
HEAD_NODE_TYPE = "head"
# KubeRay's default for its autoscaler container: the monitor is one Python process that wakes every 5 seconds.
RESOURCES = PodResources(cpu="500m", memory="512Mi")
# Ray's monitor updates every second (Ray's default: every 5 s), so that a task that needs a new worker has it asked
# for within a second; its provider still reads the cluster from the API server only every 5 s at rest
# (components/in_pod/node_provider.py, CLUSTER_READ_SECONDS). Ray reads it as a whole number of seconds.
UPDATE_INTERVAL_ENV = "AUTOSCALER_UPDATE_INTERVAL_S"
UPDATE_SECONDS = 1
# Ray's monitor logs to its container's stderr (`kubectl logs <head pod> -c autoscaler`) with an empty file name;
# its events go to ray_node.AUTOSCALER_LOGS_DIR, which the head's Ray container reads for the dashboard.
# The node provider touches this file whenever it has read the cluster's pods from the Kubernetes API, once per
# autoscaler update (every 5 s): the container's probes read its age. The monitor itself leaves no such trace.
HEARTBEAT_FILE = "/tmp/ray/autoscaler/heartbeat"
# The container's own scratch space: nothing it reads or runs may be writable from the Ray container, where job
# drivers run (a planted module or `usercustomize`, a stale heartbeat that restarts it into them, would run next
# to the token).
_SCRATCH_VOLUMES = (("autoscaler-tmp", "/tmp"), ("autoscaler-home", ray_node.HOME_DIR))
# Ready once an update has gone through within this many seconds; restarted once none has for LIVENESS_SECONDS
# (an API server that is away for that long, a hung monitor), but not while it waits for the head's GCS.
READINESS_SECONDS = 30
LIVENESS_SECONDS = 120


# What Ray's config schema still requires of a cluster that Ray's own launcher would set up over SSH: nothing here.
LEGACY_FIELDS: dict[str, Any] = {
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "auth": {},
}


def name(settings: ClusterSettings) -> str:
    """Names the ServiceAccount, Role, RoleBinding and ConfigMap of the autoscaler: with generations, each
    generation's own (`<cluster>-autoscaler-<id>`), so that each scales its own worker Deployments, and only them."""
    suffix = f"-{GENERATION_MARK}" if settings.generational else ""
    return f"{settings.cluster_name}-autoscaler{suffix}"


def autoscaled_deployments(settings: ClusterSettings) -> list[str]:
    """The worker Deployments whose replicas the autoscaler owns: only these may be scaled through the Role."""
    return [settings.deployment_name(group.name) for group in settings.worker_groups if group.autoscaled]


def node_resources(settings: ClusterSettings, resources: PodResources, *, head: bool) -> dict[str, int]:
    """What the autoscaler expects a node of a type to offer: what `ray start` is told for its pods."""
    node = ray_node.node_sizing(resources)
    offered = {"CPU": ray_node.ray_num_cpus(settings, resources, head=head), "memory": node.memory_bytes}
    if node.num_gpus:
        offered["GPU"] = node.num_gpus
    return offered


def config(settings: ClusterSettings) -> dict[str, Any]:
    """Ray's autoscaling config, as KubeRay's autoscaling_config.py builds it from a RayCluster: one node type per
    worker group, sized between its replicas and its largest size (a group that does not autoscale has both
    equal, so the autoscaler counts its nodes but never changes it), the head's type that never scales, and
    the legacy fields Ray's config schema still requires, empty."""
    autoscaling = settings.autoscaling
    if autoscaling is None:
        raise ValueError("no worker group autoscales")
    node_types: dict[str, Any] = {
        HEAD_NODE_TYPE: {
            "min_workers": 0,
            "max_workers": 0,
            "node_config": {},
            "resources": node_resources(settings, settings.head, head=True),
        }
    }
    for group in settings.worker_groups:
        node_types[group.name] = {
            "min_workers": group.replicas,
            "max_workers": group.most_replicas,
            "node_config": {},
            "resources": node_resources(settings, group.resources, head=False),
        }
    return {
        "cluster_name": settings.cluster_name,
        "provider": {
            "type": "external",
            "module": f"{PROVIDER_MODULE}.{PROVIDER_CLASS}",
            "namespace": settings.namespace,
            "cluster": settings.cluster_name,
            "deployments": {group.name: settings.deployment_name(group.name) for group in settings.worker_groups},
            # With generations, its own generation's pods only: another's head and same-named groups are not its.
            **({"pod_labels": settings.generation_labels} if settings.generational else {}),
            # Required by Ray's BatchingNodeProvider: Kubernetes starts the nodes, not Ray's SSH updaters.
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "foreground_node_launch": True,
            "worker_liveness_check": False,
            "heartbeat_file": HEARTBEAT_FILE,
        },
        "head_node_type": HEAD_NODE_TYPE,
        "available_node_types": node_types,
        "max_workers": sum(group.most_replicas for group in settings.worker_groups),
        "idle_timeout_minutes": autoscaling.idle_timeout_seconds / 60,
        "upscaling_speed": float(autoscaling.upscaling_speed),
        **LEGACY_FIELDS,
    }


def config_files(settings: ClusterSettings, provider_source: str) -> dict[str, str]:
    """The ConfigMap's data: the autoscaling config and the node provider's source."""
    return {CONFIG_FILE: json.dumps(config(settings), indent=2, sort_keys=True), PROVIDER_FILE: provider_source}


def role_rules(settings: ClusterSettings) -> list[ray_node.Manifest]:
    """Exactly the calls the node provider makes, and nothing more: list the pods and delete the idle ones the
    autoscaler removes (a Role cannot name pods, whose names are random), read the worker Deployments and scale
    the autoscaled ones, by name. No pod `patch`: it would let the token change a pod's image, i.e. run code in
    any pod of the namespace."""
    deployments = [settings.deployment_name(group.name) for group in settings.worker_groups]
    return [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"], "resourceNames": deployments},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "verbs": ["patch"],
            "resourceNames": autoscaled_deployments(settings),
        },
    ]


def volumes(settings: ClusterSettings) -> list[ray_node.Manifest]:
    """The ConfigMap with the config and provider, the service-account files (`pods.api_access_volume`) and the
    container's scratch space."""
    return [
        {"name": CONTAINER_NAME, "configMap": {"name": name(settings), "defaultMode": 0o444}},
        pods.api_access_volume(),
        *({"name": volume, "emptyDir": {}} for volume, _ in _SCRATCH_VOLUMES),
        {"name": ray_node.AUTOSCALER_EVENTS_VOLUME, "emptyDir": {}},
    ]


def monitor_command(settings: ClusterSettings) -> list[str]:
    """Wait for the GCS of its own pod (as workers wait for the head's), then run Ray's monitor against it, as
    KubeRay's autoscaler container does. Its log goes to stderr; its events to the volume the head's Ray container
    links into the dashboard's session (ray_node.autoscaler_events_link), their file made before the wait, as the
    monitor would make it, so that the link is made as soon as the session is. `-s`: no user site directory,
    whatever lies in HOME."""
    monitor = [
        "python",
        "-s",
        "-m",
        "ray.autoscaler._private.monitor",
        f"--gcs-address=${ray_node.POD_IP_ENV}:{ray_node.GCS_PORT}",
        f"--autoscaling-config={CONFIG_DIR}/{CONFIG_FILE}",
        f"--logs-dir={ray_node.AUTOSCALER_LOGS_DIR}",
        "--logging-filename=",
        # Serve the autoscaler's metrics on the pod's IP (Ray's monitor starts that server only when given one).
        f"--monitor-ip=${ray_node.POD_IP_ENV}",
    ]
    # A heartbeat left by the container's last run (its /tmp outlives it) would soon read as a hung monitor.
    wait = ray_node.wait_for_gcs_script(settings, host=f"${ray_node.POD_IP_ENV}", health_check=True)
    events = ray_node.AUTOSCALER_EVENTS_FILE
    made = f"mkdir -p {PurePosixPath(events).parent} && touch {events}"
    return ray_node.shell(f"rm -f {HEARTBEAT_FILE}; {made}; {wait}; exec {' '.join(monitor)}")


def sidecar(settings: ClusterSettings) -> pods.Sidecar:
    return pods.Sidecar(container=container(settings), volumes=volumes(settings), service_account=name(settings))


def heartbeat_probe(*, liveness: bool) -> ray_node.Manifest:
    """Readiness: the provider read the pods within READINESS_SECONDS. Liveness: within LIVENESS_SECONDS, or not
    begun yet (the container waits for the head's GCS first, which may take minutes with a Redis that starts too)."""
    return pods.heartbeat_probe(HEARTBEAT_FILE, LIVENESS_SECONDS if liveness else READINESS_SECONDS, liveness=liveness)


def container(settings: ClusterSettings) -> ray_node.Manifest:
    """The autoscaler container of the head pod: the head's image (Ray's monitor must match the GCS's version),
    the Ray token to reach the GCS, the only mount of the Kubernetes token, and nothing the Ray container can
    write: its own /tmp and HOME, and the read-only config as its working directory (which `python -m` puts
    first on the module path)."""
    return {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "command": monitor_command(settings),
        "workingDir": CONFIG_DIR,
        "env": [
            *ray_node.ray_env(settings),
            {"name": "PYTHONPATH", "value": CONFIG_DIR},
            {"name": "PYTHONNOUSERSITE", "value": "1"},
            {"name": UPDATE_INTERVAL_ENV, "value": str(UPDATE_SECONDS)},
        ],
        "ports": [
            {
                "name": ray_node.AUTOSCALER_METRICS_PORT_NAME,
                "containerPort": ray_node.AUTOSCALER_METRICS_PORT,
                "protocol": "TCP",
            }
        ],
        "resources": ray_node.container_resources(RESOURCES),
        "securityContext": container_security(),
        "volumeMounts": [
            *({"name": volume, "mountPath": path} for volume, path in _SCRATCH_VOLUMES),
            {"name": ray_node.AUTOSCALER_EVENTS_VOLUME, "mountPath": ray_node.AUTOSCALER_LOGS_DIR},
            *([ray_node.auth_token_mount()] if settings.token_auth else []),
            {"name": CONTAINER_NAME, "mountPath": CONFIG_DIR, "readOnly": True},
            pods.api_access_mount(),
        ],
        "readinessProbe": heartbeat_probe(liveness=False),
        "livenessProbe": heartbeat_probe(liveness=True),
    }

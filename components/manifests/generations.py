"""Pure builders for what carries a cluster from one generation to the next (upgradeStrategy `generation`,
docs/upgrades.md): the anchor that owns every generation, and the retirement Job that lets an old generation finish
its jobs and then deletes it, after `pulumi up` has returned.

A generation's objects are retained on delete: when a switch replaces them, Pulumi drops them from the stack without
deleting them (deleting would hold `pulumi up` for the whole drain), and the retirement Job deletes them once
drained. The anchor ConfigMap owns them all, so `pulumi destroy`, which deletes it with Foreground propagation,
deletes every generation with it and returns once they are gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.resources import PodResources
from ..config.settings import (
    GENERATION_LABEL,
    GENERATION_MARK,
    MAX_UPGRADE_DRAIN_SECONDS,
    ClusterSettings,
    generation_storage_namespace,
)
from . import network, pods, ray_node, redis
from .ray_node import Manifest
from .security import container_security

RETIREMENT_FILE = "retire_generations.py"
RETIREMENT_MOUNT = "/etc/ray/retirement"
# upgradeDrainSeconds, beside the program in its ConfigMap rather than in the immutable Job: a change of it updates
# the ConfigMap in place, and the running retirement reads it again, instead of replacing the Job under its name.
DRAIN_FILE = "drain-seconds"
# A retirement's drain is at most the longest upgradeDrainSeconds; stopping what still runs then, and the old pods'
# own drains, take a while longer.
RETIREMENT_DEADLINE_SECONDS = MAX_UPGRADE_DRAIN_SECONDS + 3600


def anchor_data(settings: ClusterSettings) -> dict[str, str]:
    """What the anchor tells whoever finds it: it is there to own the generations."""
    return {"about": f"Owns every generation of the Ray cluster {settings.cluster_name}: deleting it deletes them all."}


def owner_reference(kind: str, name: str, uid: Any) -> Manifest:
    """A generation's object's reference to its owner (`uid`, an Output): the anchor, or for what goes with a
    generation's head Service, that Service. The garbage collector deletes the object once its owner is gone, and a
    Foreground delete of the owner waits for it."""
    return {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": True}


def _selector(labels: Mapping[str, str]) -> str:
    """A label selector, as `kubectl -l` and the API's `labelSelector` take it."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


def generations_command(settings: ClusterSettings) -> str:
    """The kubectl command that lists the Deployments of every generation that runs, with their generation."""
    cluster = _selector(network.cluster_pods(settings)["matchLabels"])
    return f"kubectl -n {settings.namespace} get deployments -l {cluster} -L {GENERATION_LABEL}"


def retirement_job_name(settings: ClusterSettings) -> str:
    """`<cluster>-<id>`, named as the generation's head Service: a Job per generation, which retires the ones before
    it. A Job's name is at most 63 characters (its pods' `job-name` label), which `<cluster>-retire-<id>` would pass
    with a 53-character clusterName."""
    return settings.generation_service_name


def retirement_role_rules(settings: ClusterSettings) -> list[Manifest]:
    """Exactly the retirement's calls: its own Job's creation (the switch), which generation the clients' Service
    selects, which generations there are, an old generation's Service and token, and the deletes of its objects
    once drained; with Serve, the Serve Service's endpoints (by name). Not by name otherwise (the names carry ids the
    Role cannot know): it could read or delete any Secret, Service, Deployment or Job of the namespace, as whoever
    runs `pulumi up` there can."""
    serve = (
        [
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get"],
                "resourceNames": [settings.serve_service_name],
            }
        ]
        if settings.serve
        else []
    )
    return [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "delete"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "delete"]},
        *serve,
    ]


def retirement_files(settings: ClusterSettings, program: str) -> dict[str, str]:
    """The retirement's ConfigMap: its program, and how long a replaced generation may drain."""
    return {RETIREMENT_FILE: program, DRAIN_FILE: str(settings.upgrade_drain_seconds)}


def retirement_job_spec(settings: ClusterSettings, script_config_map: str, storage_base: Any) -> Manifest:
    """The retirement Job: retried if its pod is lost (what it does is idempotent, and its drain counts from the
    Job's creation), bounded by the longest drain and a margin for the old pods' own drains. `storage_base`: with
    GCS fault tolerance, the cluster's storage namespace (an Output), which each generation's extends."""
    return {
        "backoffLimit": 6,
        "activeDeadlineSeconds": RETIREMENT_DEADLINE_SECONDS,
        "template": _retirement_pod_template(settings, script_config_map, storage_base),
    }


def _pattern(name: str) -> str:
    """A generation's object's name as the program reads it: `{generation}` where the id goes."""
    return name.replace(GENERATION_MARK, "{generation}")


def _retirement_pod_template(settings: ClusterSettings, script_config_map: str, storage_base: Any) -> Manifest:
    """The program on the cluster's image (its Python, `requests` and, for the Redis cleanup, Ray), under its own
    ServiceAccount; with GCS fault tolerance, the head's Redis address, password file and TLS settings. The names it
    works with come from the settings, which name the objects too."""

    env: list[Manifest] = [
        {"name": "HOME", "value": ray_node.HOME_DIR},
        {"name": "PYTHONNOUSERSITE", "value": "1"},
        {"name": "RETIRE_NAMESPACE", "value": settings.namespace},
        {"name": "RETIRE_GENERATION", "value": GENERATION_MARK},
        {"name": "RETIRE_GENERATION_LABEL", "value": GENERATION_LABEL},
        {"name": "RETIRE_CLUSTER_SELECTOR", "value": _selector(network.cluster_pods(settings)["matchLabels"])},
        {"name": "RETIRE_HEAD_SELECTOR", "value": _selector(pods.selector_labels(settings, "head"))},
        {"name": "RETIRE_CLIENTS_SERVICE", "value": settings.head_service_name},
        {"name": "RETIRE_JOB", "value": retirement_job_name(settings)},
        {"name": "RETIRE_HEAD_SERVICE", "value": _pattern(settings.generation_service_name)},
        {"name": "RETIRE_DASHBOARD_PORT", "value": str(ray_node.DASHBOARD_PORT)},
        {"name": "RETIRE_DRAIN_FILE", "value": f"{RETIREMENT_MOUNT}/{DRAIN_FILE}"},
    ]
    if settings.serve:
        env.append({"name": "RETIRE_SERVE_SERVICE", "value": settings.serve_service_name})
    if settings.token_auth:
        env.append({"name": "RETIRE_TOKEN_SECRET", "value": _pattern(settings.pod_auth_secret_name)})
        env.append({"name": "RETIRE_TOKEN_KEY", "value": ray_node.AUTH_TOKEN_KEY})
    if settings.fault_tolerance:
        pattern = storage_base.apply(lambda base: generation_storage_namespace(base, "{generation}"))
        redis_env = ray_node.gcs_storage_env(settings, pattern)
        env += [item for item in redis_env if item["name"] != ray_node.STORAGE_NAMESPACE_ENV]
        env.append({"name": "RETIRE_STORAGE_NAMESPACE", "value": pattern})
    fault_tolerance = settings.fault_tolerance
    if fault_tolerance and fault_tolerance.authenticates:
        password_file = f"{ray_node.REDIS_SECRET_DIR}/{redis.PASSWORD_KEY}"
        env.append({"name": "RETIRE_REDIS_PASSWORD_FILE", "value": password_file})
    container = {
        "name": "retire",
        "image": settings.image,
        "command": ["python", f"{RETIREMENT_MOUNT}/{RETIREMENT_FILE}"],
        "workingDir": ray_node.HOME_DIR,
        "env": env,
        "resources": ray_node.container_resources(PodResources(cpu="100m", memory="512Mi")),
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "home", "mountPath": ray_node.HOME_DIR},
            {"name": "program", "mountPath": RETIREMENT_MOUNT, "readOnly": True},
            pods.api_access_mount(),
            *ray_node.gcs_storage_mounts(settings),
        ],
    }
    return pods.pod_template(
        settings,
        component="retirement",
        group="retirement",
        containers=[container],
        volumes=[
            {"name": "tmp", "emptyDir": {}},
            {"name": "home", "emptyDir": {}},
            {"name": "program", "configMap": {"name": script_config_map}},
            pods.api_access_volume(),
            *ray_node.gcs_storage_volumes(settings),
        ],
        node_selector=pods.node_selector(settings.image),
        restart_policy="Never",
        version_labels=settings.generation_labels,
        service_account=settings.retirement_name,
    )

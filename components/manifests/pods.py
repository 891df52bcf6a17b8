"""Pure builders for the cluster's pod templates: the head's, each worker group's and the smoke test's, with their
labels, placement, grace periods and the workers' rollout, as Kubernetes dicts; the containers come from
ray_node.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config.groups import WorkerGroup
from ..config.images import ARCHITECTURE_LABEL, image_architecture
from ..config.resources import PodResources
from ..config.settings import ClusterSettings
from .ray_node import (
    CLIENT_PORT,
    HEAD_DRAIN_SECONDS,
    HOME_DIR,
    SHUTDOWN_MARGIN_SECONDS,
    SMOKE_NODE_WAIT_SECONDS,
    SMOKE_TEST_FILE,
    SMOKE_TEST_MOUNT,
    Manifest,
    container_resources,
    drain_seconds,
    gcs_storage_volumes,
    node_sizing,
    ray_container,
    ray_env,
    ray_volume_mounts,
    ray_volumes,
    shell,
    wait_for_gcs_script,
)
from .security import container_security, pod_security


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
    """The pods of a group of Ray nodes, of any generation (what may reach the Redis, say)."""
    return {"ray.io/cluster": settings.cluster_name, "ray.io/group": group}


def generation_selector(settings: ClusterSettings, group: str) -> dict[str, str]:
    """The pods of a group of this generation's Ray nodes: what its Deployment (immutably) and head Services select,
    and what its workers are placed after."""
    return {**selector_labels(settings, group), **settings.generation_labels}


def node_selector(image: str, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The node labels a pod of `image` must run on: those `given`, and the architecture an official Ray image is
    built for, so that a pod never lands on a node that cannot run its image (a pull that fails, or a Ray that
    crawls under emulation until its probes fail); without such a node it stays Pending and says why."""
    built_for = image_architecture(image)
    return {**(given or {}), **({ARCHITECTURE_LABEL: built_for} if built_for else {})}


# The node label every Linux node carries, with one value: a topology domain that spans the whole cluster.
WHOLE_CLUSTER_TOPOLOGY = "kubernetes.io/os"


def placed_after_the_head(settings: ClusterSettings) -> Manifest:
    """A worker pod is placed only while a head pod of its cluster is (a required pod affinity to it, in a domain
    every node shares). On a Kubernetes cluster without room to spare, a Pending worker (one the autoscaler asked
    for beyond the nodes, or a rollout's) would otherwise take the room a restarting head leaves (Recreate: the old
    head goes first) and keep the cluster headless, its autoscaler with it. Workers that run are not affected
    (IgnoredDuringExecution), and a head on a lost node still counts while its pod is in the API."""
    head = generation_selector(settings, "head")
    term = {"labelSelector": {"matchLabels": head}, "topologyKey": WHOLE_CLUSTER_TOPOLOGY}
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def pod_template(
    settings: ClusterSettings,
    *,
    component: str,
    group: str,
    containers: list[Manifest],
    volumes: list[Manifest],
    init_containers: list[Manifest] | None = None,
    node_selector: dict[str, str] | None = None,
    affinity: Manifest | None = None,
    tolerations: list[Manifest] | None = None,
    restart_policy: str = "Always",
    grace_seconds: int | None = None,
    version_labels: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | None = None,
    service_account: str | None = None,
) -> Manifest:
    """A pod template of the cluster; its pods run as the cluster's ServiceAccount, which has no permissions and
    no token, unless they need another (`service_account`)."""
    spec: Manifest = {
        "serviceAccountName": service_account or settings.cluster_name,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "restartPolicy": restart_policy,
        **({"terminationGracePeriodSeconds": grace_seconds} if grace_seconds is not None else {}),
        "containers": containers,
        "volumes": volumes,
        **({"initContainers": init_containers} if init_containers else {}),
        **({"nodeSelector": node_selector} if node_selector else {}),
        **({"affinity": affinity} if affinity else {}),
        **({"tolerations": tolerations} if tolerations else {}),
    }
    # `kubectl logs/exec` pick the first main container without `-c`.
    first = {"kubectl.kubernetes.io/default-container": containers[0]["name"]}
    return {
        "metadata": {
            "labels": {**labels(settings, component, group), **(version_labels or {})},
            "annotations": {**first, **(annotations or {})},
        },
        "spec": spec,
    }


# Where a pod's service-account files are by Kubernetes' convention, which in-cluster clients (Ray's KubeRay
# provider among them) read: `token`, `ca.crt` and `namespace`.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# A bound token the kubelet renews, which dies with the pod, as automount would give it (kube-api-access-*).
# An hour: its readers read the file before every request, and the kubelet renews it at 80% of that. (Not
# automount's 3607 s, which the API server by default extends to a year, for clients that never re-read it.)
TOKEN_SECONDS = 3600
API_ACCESS_VOLUME = "kube-api-access"


def api_access_volume() -> Manifest:
    """The service-account files that automount would give every container of the pod, as a volume that only the
    containers that call the Kubernetes API mount (`api_access_mount`)."""
    service_account_files = [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {
            "downwardAPI": {
                "items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]
            }
        },
    ]
    return {"name": API_ACCESS_VOLUME, "projected": {"defaultMode": 0o444, "sources": service_account_files}}


def api_access_mount() -> Manifest:
    return {"name": API_ACCESS_VOLUME, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}


def heartbeat_probe(heartbeat_file: str, within_seconds: int, *, liveness: bool) -> Manifest:
    """A probe of a sidecar that touches `heartbeat_file` as it goes round. Readiness: it did so within
    `within_seconds`. Liveness: it did so within `within_seconds`, or has not begun (it may wait minutes for the
    head's GCS first). bash, date and stat only, no Python start every few seconds."""
    age = f"$(( $(date +%s) - $(stat -c %Y {heartbeat_file}) ))"
    check = (
        f"[ ! -e {heartbeat_file} ] || [ {age} -lt {within_seconds} ]"
        if liveness
        else f"[ -e {heartbeat_file} ] && [ {age} -lt {within_seconds} ]"
    )
    timings = {"periodSeconds": 10, "failureThreshold": 3} if liveness else {"periodSeconds": 2, "failureThreshold": 1}
    return {"exec": {"command": ["/bin/bash", "-c", check]}, "timeoutSeconds": 2, **timings}


@dataclass(frozen=True)
class Sidecar:
    """A container the head pod runs beside Ray (the autoscaler, the Serve keeper), its own volumes, and the
    ServiceAccount the pod runs as for it (the head's sidecars share one)."""

    container: Manifest
    volumes: list[Manifest]
    service_account: str


def head_pod_template(
    settings: ClusterSettings,
    version_labels: Mapping[str, Any],
    storage_namespace: Any = None,
    sidecars: tuple[Sidecar, ...] = (),
) -> Manifest:
    """`version_labels` (the token's and the Redis password's versions) change with what the pod reads at start,
    so a change rolls it; `storage_namespace` names the cluster's state in Redis, with GCS fault tolerance. A
    volume that several sidecars mount (the Kubernetes token) is the pod's once."""
    head = ray_container(settings, settings.head, settings.image, head=True, storage_namespace=storage_namespace)
    accounts = {sidecar.service_account for sidecar in sidecars}
    if len(accounts) > 1:
        raise ValueError(f"the head's sidecars need one ServiceAccount, not {sorted(accounts)}")
    volumes = {
        volume["name"]: volume
        for volume in ray_volumes(settings, node_sizing(settings.head))
        + gcs_storage_volumes(settings)
        + [volume for sidecar in sidecars for volume in sidecar.volumes]
    }
    return pod_template(
        settings,
        component="head",
        group="head",
        containers=[head, *(sidecar.container for sidecar in sidecars)],
        volumes=list(volumes.values()),
        node_selector=node_selector(settings.image),
        grace_seconds=HEAD_DRAIN_SECONDS + SHUTDOWN_MARGIN_SECONDS,
        version_labels={**settings.generation_labels, **version_labels},
        service_account=accounts.pop() if accounts else None,
    )


def worker_pod_template(settings: ClusterSettings, group: WorkerGroup, version_labels: Mapping[str, Any]) -> Manifest:
    # Waits for the head's GCS port only (bash, no Python): it needs no token, no env and no writable directory.
    wait_for_gcs = {
        "name": "wait-gcs-ready",
        "image": group.image,
        "command": shell(wait_for_gcs_script(settings, health_check=False)),
        # Init containers run before the Ray container, so the same amounts add nothing to the pod's footprint.
        "resources": container_resources(group.resources),
        "securityContext": container_security(read_only=group.read_only_root_filesystem),
    }
    return pod_template(
        settings,
        component="worker",
        group=group.name,
        containers=[
            ray_container(
                settings,
                group.resources,
                group.image,
                head=False,
                read_only_root_filesystem=group.read_only_root_filesystem,
            )
        ],
        init_containers=[wait_for_gcs],
        volumes=ray_volumes(settings, node_sizing(group.resources)),
        node_selector=node_selector(group.image, group.node_selector),
        affinity=placed_after_the_head(settings),
        tolerations=[dict(t) for t in group.tolerations],
        grace_seconds=worker_grace_seconds(settings),
        version_labels={**settings.generation_labels, **version_labels},
    )


# Replace workers in place, a quarter at a time (at least one), never adding one first: a surge pod needs room for
# one more worker, which a GPU group sized to its GPUs never has, so the rollout (and `pulumi up`) would never end.
WORKER_ROLLOUT: Manifest = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}}
# Kubernetes rounds a quarter down (to at least one): up to 7 replicas roll one at a time, more in at most 6 rounds.
WORKER_ROLLOUT_ROUNDS = 7
# Kubernetes' default time a rollout may go without progress; a round's drain comes on top of it.
PROGRESS_DEADLINE_SECONDS = 600


def worker_grace_seconds(settings: ClusterSettings) -> int:
    return drain_seconds(settings, head=False) + SHUTDOWN_MARGIN_SECONDS


def worker_progress_deadline_seconds(settings: ClusterSettings) -> int:
    """A round of a rollout makes no progress while its old workers drain: without room for that, a long drain
    would mark the Deployment ProgressDeadlineExceeded, which fails `pulumi up`."""
    return worker_grace_seconds(settings) + PROGRESS_DEADLINE_SECONDS


def smoke_test_pod_template(
    settings: ClusterSettings, *, script_config_map: str, script: str, cluster_digest: Any
) -> Manifest:
    """A Ray Client driver that runs the smoke test against the head.

    Its env names the shape it must find, and annotations carry the script's hash and `cluster_digest` (a digest
    of everything that runs the cluster: pod templates, replicas, the head Service), so a change of any of them
    changes the Job's template, which replaces the Job and runs the test again, and nothing else does.
    """
    expected = {group.name: group.replicas for group in settings.worker_groups}
    driver = {
        "name": "smoke-test",
        "image": settings.image,
        "command": ["python", f"{SMOKE_TEST_MOUNT}/{SMOKE_TEST_FILE}"],
        "workingDir": HOME_DIR,
        "env": [
            *ray_env(settings),
            {"name": "RAY_ADDRESS", "value": f"ray://{settings.head_host}:{CLIENT_PORT}"},
            {"name": "SMOKE_EXPECTED_WORKERS", "value": str(settings.total_workers)},
            *([{"name": "SMOKE_MOST_WORKERS", "value": str(settings.most_workers)}] if settings.autoscaling else []),
            {"name": "SMOKE_NODE_WAIT_SECONDS", "value": str(SMOKE_NODE_WAIT_SECONDS)},
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
        node_selector=node_selector(settings.image),
        restart_policy="Never",
        annotations={
            "ray-cluster.pulumi.com/smoke-test-sha256": hashlib.sha256(script.encode()).hexdigest(),
            "ray-cluster.pulumi.com/cluster-sha256": cluster_digest,
        },
    )

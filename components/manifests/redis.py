"""Pure builders for the Redis that keeps the GCS's state when `gcsFaultTolerance` is on and no `redisAddress` is
given: its configuration, its volume claim, its pod and its Service, as Kubernetes dicts.

One Redis pod (a Deployment with the Recreate strategy: its ReadWriteOnce volume attaches to one pod at a time)
with an append-only file on a PersistentVolumeClaim, so a Redis pod that is lost and restarted comes back with
every key; password authentication from a Secret file; the official image's own user. Its labels share nothing with
the Ray pods' selectors, so no Ray NetworkPolicy admits anything to it: its own policy admits only the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.fault_tolerance import GcsFaultTolerance
from ..config.settings import ClusterSettings
from .security import container_security, pod_security

REDIS_PORT = 6379
# With the prometheus-operator, Redis's metrics (its memory against maxmemory, for RayRedisMemoryNearMax) come from
# an exporter in the Redis pod (oliver006/redis_exporter: a static binary at /redis_exporter, its default port), which
# reads INFO over the pod's loopback with the password.
EXPORTER_PORT = 9121
EXPORTER_PORT_NAME = "metrics"
EXPORTER_RESOURCES = {"cpu": "50m", "memory": "64Mi"}
# The official redis image's user `redis` (docker-library/redis: `groupadd -r -g 999 redis && useradd -r -u 999`).
REDIS_UID = 999
REDIS_GID = 999
# The Secret `<cluster>-redis`: the password (read by the head and by the probes) and, for the stack's Redis, its
# whole configuration (Redis reads `requirepass` from its config file only, never from a file of its own).
PASSWORD_KEY = "password"
CONFIG_KEY = "redis.conf"
CONFIG_DIR = "/etc/redis"
# The ConfigMap `<cluster>-redis-ca`: the CA that signed an existing TLS Redis's certificate.
CA_KEY = "ca.crt"
DATA_DIR = "/data"
# What the GCS's state needs: small tables (nodes, actors, jobs, placement groups, KV), written as they change.
CPU = "250m"
# Redis holds at most this share of its memory limit (maxmemory): the rest is for its own overhead and for the
# fork that rewrites the append-only file. Beyond it, writes are refused (noeviction: nothing of the GCS's state
# is ever dropped) instead of Redis being OOM-killed and unable to reload a file larger than its memory.
MAXMEMORY_FRACTION = 0.75
# The label that names the cluster a Redis object belongs to.
CLUSTER_LABEL = "app.kubernetes.io/instance"
# A label that changes with the password (revealing nothing of it), so the pods that read it roll with it.
PASSWORD_VERSION_LABEL = "ray-cluster.pulumi.com/redis-password-version"

Manifest = dict[str, Any]


def address(settings: ClusterSettings, fault_tolerance: GcsFaultTolerance) -> str:
    """RAY_REDIS_ADDRESS: the existing Redis as given, or the stack's own Redis Service."""
    return fault_tolerance.external_address or f"{settings.redis_name}.{settings.namespace}.svc:{REDIS_PORT}"


def ca_name(settings: ClusterSettings) -> str:
    return f"{settings.redis_name}-ca"


def labels(settings: ClusterSettings) -> dict[str, str]:
    """The recommended app.kubernetes.io labels; no `ray.io/cluster`, which every Ray NetworkPolicy selects by."""
    return {
        "app.kubernetes.io/name": "redis",
        CLUSTER_LABEL: settings.cluster_name,
        "app.kubernetes.io/component": "gcs-storage",
        "app.kubernetes.io/part-of": "ray",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def selector_labels(settings: ClusterSettings) -> dict[str, str]:
    return {"app.kubernetes.io/name": "redis", CLUSTER_LABEL: settings.cluster_name}


def _quoted(text: str) -> str:
    """A redis.conf string argument: double-quoted, with Redis's own escapes (sdssplitargs: `\\"`, `\\\\` and
    `\\xHH` for every byte that is not printable ASCII), so a password with spaces, quotes, `#` or any UTF-8 is read
    back byte for byte."""
    escaped = "".join(
        f"\\{chr(byte)}" if chr(byte) in '"\\' else chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"
        for byte in text.encode()
    )
    return f'"{escaped}"'


def config_file(password: str, fault_tolerance: GcsFaultTolerance) -> str:
    """redis.conf: password authentication; every write in the append-only file on the volume, flushed every
    second (the GCS writes little, and a second is what it can lose); no RDB snapshots besides it; a memory
    ceiling below the pod's limit, with nothing ever evicted."""
    return "\n".join(
        [
            f"port {REDIS_PORT}",
            "bind * -::*",
            f"dir {DATA_DIR}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"maxmemory {int(fault_tolerance.memory_bytes * MAXMEMORY_FRACTION)}",
            "maxmemory-policy noeviction",
            f"requirepass {_quoted(password)}",
            "",
        ]
    )


def claim_spec(fault_tolerance: GcsFaultTolerance) -> Manifest:
    storage_class = {"storageClassName": fault_tolerance.storage_class} if fault_tolerance.storage_class else {}
    return {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": fault_tolerance.storage}},
        **storage_class,
    }


def _ping_probe(*, liveness: bool) -> Manifest:
    """Readiness: Redis answers PONG to an authenticated PING (not while it loads its file, when it answers
    LOADING); liveness only asks that it accepts connections, so a long load is not killed."""
    if liveness:
        return {
            "tcpSocket": {"port": REDIS_PORT},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        }
    ping = (
        f'REDISCLI_AUTH="$(cat {CONFIG_DIR}/{PASSWORD_KEY})" redis-cli -h 127.0.0.1 -p {REDIS_PORT} ping '
        "| grep -qx PONG"
    )
    return {"exec": {"command": ["sh", "-c", ping]}, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3}


def exporter_container(settings: ClusterSettings, fault_tolerance: GcsFaultTolerance) -> Manifest:
    """The metrics exporter: Redis's INFO as Prometheus metrics on EXPORTER_PORT (only the metrics NetworkPolicy's
    namespaces reach it), the password from the Secret (the exporter takes it from its env), ready once it
    answers its health check. As the image's own user would run it, with nothing to write."""
    health = {"httpGet": {"path": "/health", "port": EXPORTER_PORT}}
    return {
        "name": "exporter",
        "image": fault_tolerance.exporter_image,
        "command": ["/redis_exporter"],
        "env": [
            {"name": "REDIS_ADDR", "value": f"redis://127.0.0.1:{REDIS_PORT}"},
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": settings.redis_name, "key": PASSWORD_KEY}},
            },
        ],
        "ports": [{"name": EXPORTER_PORT_NAME, "containerPort": EXPORTER_PORT, "protocol": "TCP"}],
        "resources": {"requests": EXPORTER_RESOURCES, "limits": EXPORTER_RESOURCES},
        "securityContext": container_security(REDIS_UID, REDIS_GID),
        "readinessProbe": {**health, "periodSeconds": 5},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 6},
    }


def deployment_spec(
    settings: ClusterSettings, fault_tolerance: GcsFaultTolerance, password_version: Any, claim: Any
) -> Manifest:
    """One Redis pod at a time (Recreate): its ReadWriteOnce volume attaches to one node only. `password_version`
    rolls the pod when the password changes; `claim` is the name of its data volume's claim (generated by
    Pulumi: a claim that must be replaced is then made before the old one is deleted, and the pod moves to it).
    With the prometheus-operator, its metrics exporter runs beside it."""
    return {
        "replicas": 1,
        "selector": {"matchLabels": selector_labels(settings)},
        "template": _pod_template(settings, fault_tolerance, {PASSWORD_VERSION_LABEL: password_version}, claim),
        "strategy": {"type": "Recreate"},
    }


def _pod_template(
    settings: ClusterSettings, fault_tolerance: GcsFaultTolerance, version_labels: Mapping[str, Any], claim: Any
) -> Manifest:
    container = {
        "name": "redis",
        "image": fault_tolerance.redis_image,
        "command": ["redis-server", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": CPU, "memory": fault_tolerance.memory},
            "limits": {"cpu": CPU, "memory": fault_tolerance.memory},
        },
        "securityContext": container_security(REDIS_UID, REDIS_GID),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        ],
        "readinessProbe": _ping_probe(liveness=False),
        "livenessProbe": _ping_probe(liveness=True),
    }
    exporter = [exporter_container(settings, fault_tolerance)] if settings.monitoring else []
    return {
        "metadata": {"labels": {**labels(settings), **version_labels}},
        "spec": {
            "serviceAccountName": settings.cluster_name,
            "automountServiceAccountToken": False,
            "securityContext": pod_security(REDIS_UID, REDIS_GID),
            "containers": [container, *exporter],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                {"name": "config", "secret": {"secretName": settings.redis_name, "defaultMode": 0o440}},
            ],
        },
    }


def service_spec(settings: ClusterSettings) -> Manifest:
    return {
        "type": "ClusterIP",
        "selector": selector_labels(settings),
        "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": REDIS_PORT, "protocol": "TCP"}],
    }

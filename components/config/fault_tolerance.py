"""GCS fault tolerance: where the GCS keeps its state (the stack's own Redis or an existing one, TLS and its CA), and
how long workers wait for a lost head, which depends on it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..manifests import sizing
from .groups import WorkerGroup
from .images import require_image
from .resources import parse_quantity, require_quantity
from .values import Inputs, config_error, require_object_name, require_seconds

# A Redis address as Ray's GCS takes it (RAY_REDIS_ADDRESS): host:port, `redis://` optional, `rediss://` for TLS.
_REDIS_ADDRESS = re.compile(
    r"^(?:(?P<scheme>rediss?)://)?(?P<host>[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):(?P<port>[0-9]{1,5})$"
)
_PEM_CERTIFICATE = re.compile(
    r"^(-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\s*)+$", re.MULTILINE
)
# The stack's own Redis: the GCS's tables of a small cluster fit in a few MiB, but every job's working_dir and
# py_modules package lands in Ray's key-value store too.
_MIN_REDIS_MEMORY = 256 * 2**20
# Workers' wait for a lost head (RAY_gcs_rpc_server_reconnect_timeout_s) when the key is left at 0: Ray's own
# default without fault tolerance (a head that comes back empty is a new cluster: rejoin it soon), KubeRay's with
# it (the head comes back with the cluster's state: wait for it, whatever its restart takes).
RAY_RECONNECT_SECONDS = 60
FAULT_TOLERANT_RECONNECT_SECONDS = 600


@dataclass(frozen=True)
class GcsFaultTolerance:
    """Where the GCS keeps its state, so that a new head resumes the cluster instead of starting an empty one.

    `external_address` is an existing Redis as Ray is given it (RAY_REDIS_ADDRESS); empty, the stack runs its own
    Redis (described by `redis_image`, `memory`, `storage` and `storage_class`, and `exporter_image`, its metrics
    exporter's, for the prometheus-operator); `ca_cert` is the PEM of the CA
    that signed a TLS Redis's certificate (empty: the image's system CAs); `authenticates` is whether Ray is given
    a password (always for the stack's own Redis; for an existing one, when `redisPassword` is set)."""

    external_address: str
    tls: bool
    authenticates: bool
    ca_cert: str
    redis_image: str
    exporter_image: str
    memory: str
    storage: str
    storage_class: str

    @property
    def memory_bytes(self) -> int:
        return int(parse_quantity("redisMemory", self.memory))


def _require_redis_address(value: str) -> tuple[str, bool]:
    """An existing Redis as Ray takes it (`host:port`, or `rediss://host:port` for TLS), and whether it is TLS."""
    match = _REDIS_ADDRESS.match(value)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise config_error(
            "redisAddress",
            value,
            "it must be an existing Redis as host:port (e.g. redis.example.internal:6379), or rediss://host:port "
            "for TLS; empty with gcsFaultTolerance deploys a Redis in the namespace",
        )
    tls = match["scheme"] == "rediss"
    address = f"{match['host']}:{match['port']}"
    return (f"rediss://{address}" if tls else address), tls


def fault_tolerance_settings(inputs: Inputs, worker_groups: tuple[WorkerGroup, ...]) -> GcsFaultTolerance | None:
    """The GCS's external storage, or None; every Redis key is checked either way, so a typo waits for nobody."""
    given_address = inputs.text("redisAddress")
    address, tls = _require_redis_address(given_address) if given_address else ("", False)
    ca_cert = inputs.text("redisCaCert").replace("\r\n", "\n").strip()  # a PEM saved on Windows too
    if ca_cert:
        if not _PEM_CERTIFICATE.match(ca_cert):
            raise config_error(
                "redisCaCert",
                ca_cert[:40] + "...",
                'it must be PEM certificates ("-----BEGIN CERTIFICATE-----" ... "-----END CERTIFICATE-----"): '
                '`pulumi config set redisCaCert -- "$(cat ca.pem)"`',
            )
        if not tls:
            raise config_error(
                "redisCaCert",
                ca_cert[:40] + "...",
                "a CA certificate is only used with a TLS Redis: redisAddress rediss://...",
            )
    redis_image = require_image("redisImage", inputs.text("redisImage"), "redis:7.0.15")
    exporter_image = require_image(
        "redisExporterImage", inputs.text("redisExporterImage"), "oliver006/redis_exporter:v1.45.0"
    )
    memory = require_quantity("redisMemory", inputs.text("redisMemory"))
    if parse_quantity("redisMemory", memory) < _MIN_REDIS_MEMORY:
        raise config_error("redisMemory", memory, f"it must be at least {_MIN_REDIS_MEMORY // sizing.MIB}Mi")
    storage = require_quantity("redisStorage", inputs.text("redisStorage"))
    if parse_quantity("redisStorage", storage) < parse_quantity("redisMemory", memory):
        raise config_error(
            "redisStorage",
            storage,
            f"it must be at least redisMemory ({memory}): the append-only file holds everything Redis holds",
        )
    storage_class = inputs.text("redisStorageClass")
    if storage_class:
        require_object_name("redisStorageClass", storage_class)
    if not inputs.boolean("gcsFaultTolerance"):
        return None
    if not sum(group.most_replicas for group in worker_groups):
        raise config_error(
            "workers",
            0,
            "with gcsFaultTolerance the head runs no tasks (so that losing it loses no work), so at least one "
            "worker is needed, or a group that Ray's autoscaler may grow (maxWorkers, maxReplicas)",
        )
    return GcsFaultTolerance(
        external_address=address,
        tls=tls,
        # Only whether it is empty: the password itself reaches the component as a secret Output.
        authenticates=not address or inputs.given("redisPassword"),
        ca_cert=ca_cert,
        redis_image=redis_image,
        exporter_image=exporter_image,
        memory=memory,
        storage=storage,
        storage_class=storage_class,
    )


def reconnect_seconds(inputs: Inputs, fault_tolerant: bool) -> int:
    """The configured wait for a lost head, or (0) the right one for the cluster's kind."""
    seconds = inputs.integer("gcsReconnectTimeoutSeconds")
    if seconds == 0:
        return FAULT_TOLERANT_RECONNECT_SECONDS if fault_tolerant else RAY_RECONNECT_SECONDS
    return require_seconds("gcsReconnectTimeoutSeconds", seconds, 5, 3600, "0 (Ray's choice for the cluster) or ")

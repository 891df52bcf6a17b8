"""The component's inputs -> one validated, immutable description of the cluster.

Every value is checked here, before any resource is declared, so that a typo fails `pulumi up` with a message
naming the key, the value and what is allowed, instead of a half-created cluster. Inputs come as the stack's
config (`inputs.from_stack_config`) or from a program in another language through the component package; a key
not given takes its default from `Pulumi.yaml`; only values that depend on the stack are derived here.

Inside objects set with `pulumi config set --path`, the CLI stores `true`/`false` as booleans and whole numbers
as integers (pulumi/pulumi sdk/go/common/resource/config/map.go, adjustObjectValue); through the package every
number arrives as a float. Both are turned back into what the user wrote: whole floats into integers, and
scalars into the text typed wherever the key holds text (a quantity, a label value), so
`--path 'workerGroups[0].cpu' 8` works.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import pulumi

from ..manifests import sizing
from .inputs import (
    GROUP_DEFAULTS,
    GROUP_KEYS,
    SECRET_KEYS,
    TOLERATION_KEYS,
    WORKER_GROUPS,
    contains_output,
    defaults,
    nearest_key_hint,
    whole_numbers,
)

PROJECT = "ray-cluster"
DEFAULT_GROUP = "worker"

# RFC 1123 labels name namespaces and most objects; a Service name must also start with a letter (RFC 1035), and
# every other name derives from the cluster's name, so the cluster's name follows the stricter rule.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Most other object names (Secrets, StorageClasses) are DNS subdomains: labels joined by dots, 253 characters.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_SUBDOMAIN = 253
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NOT_IN_LABEL = re.compile(r"[^a-z0-9-]+")
_WHOLE_NUMBER = re.compile(r"^[0-9]+$")
# Kubernetes' own grammar for a quantity (apimachinery resource.Quantity): a non-negative decimal number and one
# suffix. The kubernetes client's parse_quantity is looser (it takes "K", "Infinity", "1_000"), so it is not used.
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][-+]?[0-9]+)?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_TOLERATION_OPERATORS = ("Equal", "Exists")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# The Deployment name `<cluster>-<group>` is also a label value: at most 63 characters.
_MAX_NAME = 63
# Leaves room for the suffixes of every name derived from it (`-worker`, `-internal`, ...); tests check them all.
_MAX_CLUSTER_NAME = 53
# The official Ray images: tags without an accelerator suffix (or with `-cpu`) carry no CUDA; `-gpu` variants do.
_OFFICIAL_RAY_REPOSITORIES = frozenset({"rayproject/ray", "docker.io/rayproject/ray", "index.docker.io/rayproject/ray"})
_GPU_TAG = re.compile(r"-(gpu|cu[0-9]+)(-|$)")
_PLATFORM_SUFFIX = "-aarch64"
# The well-known node label of a node's CPU architecture (amd64, arm64), set by the kubelet.
ARCHITECTURE_LABEL = "kubernetes.io/arch"
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
# Group names that would collide with the names of the head's and the Redis's objects.
_RESERVED_GROUPS = ("head", "redis")
# Workers' wait for a lost head (RAY_gcs_rpc_server_reconnect_timeout_s) when the key is left at 0: Ray's own
# default without fault tolerance (a head that comes back empty is a new cluster: rejoin it soon), KubeRay's with
# it (the head comes back with the cluster's state: wait for it, whatever its restart takes).
RAY_RECONNECT_SECONDS = 60
FAULT_TOLERANT_RECONNECT_SECONDS = 600
# Ray's upscaling_speed: KubeRay's "Default" and "Aggressive" modes use 1000, no limit in practice.
_MAX_UPSCALING_SPEED = 1000
_DECIMAL_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$|^\.[0-9]+$")


def config_error(key: str, value: object, allowed: str) -> pulumi.RunError:
    """The one shape of every config error: which key, what it held, what it may hold."""
    return pulumi.RunError(f"{PROJECT}:{key} is {value!r}, but {allowed}")


def cli_text(value: object) -> object:
    """A scalar the CLI typed back into the text the user gave (`true`, `8`); anything else as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and math.isfinite(value):
        return repr(value)
    return value


def parse_quantity(key: str, value: object) -> Decimal:
    """A positive Kubernetes quantity as a number (cores or bytes); the API server would reject anything else."""
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    if match is None:
        raise config_error(key, value, 'it must be a Kubernetes quantity such as "1", "500m", "512Mi" or "4Gi"')
    number, suffix = Decimal(match["number"]), str(match["suffix"] or "")
    amount: Decimal
    if suffix in _BINARY:
        amount = number * Decimal(1024) ** _BINARY[suffix]
    elif suffix in _DECIMAL:
        amount = number.scaleb(_DECIMAL[suffix])
    else:
        amount = number.scaleb(int(suffix[1:]))
    if amount <= 0:
        raise config_error(key, value, "it must be greater than zero")
    return amount


_Value = TypeVar("_Value", str, int, bool)


class Inputs:
    """The inputs by their config key, each not given taking its default; every read checks the value's type.

    The stack's CLI and a generated SDK check types against Pulumi.yaml and the schema, but a YAML program or a
    Python caller can give anything, and a value computed by another resource arrives as an Output, which cannot
    be checked (or name anything) before resources are declared."""

    def __init__(self, args: Mapping[str, object]) -> None:
        known = defaults()
        for key, value in args.items():
            if key not in known:
                allowed = f"it is not an input of the cluster: {nearest_key_hint(key)}the inputs are {sorted(known)}"
                raise config_error(key, value, allowed)
            if key in SECRET_KEYS:
                if value is not None and not isinstance(value, str | pulumi.Output):
                    # Only its type is shown: it is a secret.
                    raise config_error(key, f"<{type(value).__name__}>", "it must be text (a secret)")
            elif contains_output(value):
                raise config_error(
                    key,
                    "an Output",
                    "it must be a plain value, known when the program runs: the cluster's names and shape are "
                    "checked from it before any resource is declared",
                )
        self._values = {**known, **{key: whole_numbers(value) for key, value in args.items() if value is not None}}

    def text(self, key: str) -> str:
        """Text, or a number or boolean as the text it was written as (as inside `--path` objects)."""
        return self._typed(key, str, "it must be text", cli_text)

    def integer(self, key: str) -> int:
        return self._typed(key, int, "it must be a whole number")

    def boolean(self, key: str) -> bool:
        return self._typed(key, bool, "it must be true or false")

    def _typed(
        self, key: str, kind: type[_Value], allowed: str, convert: Callable[[object], object] = lambda value: value
    ) -> _Value:
        given = self._values[key]
        value = convert(given)
        # A bool is an int to Python, not a whole number to the user.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise config_error(key, given, allowed)
        return value

    def value(self, key: str) -> object:
        """An object or a list, checked by its reader."""
        return self._values[key]

    def given(self, key: str) -> bool:
        """Whether a secret was given: a secret Output is, as its value cannot be read before it is used."""
        value = self._values[key]
        return isinstance(value, pulumi.Output) or bool(value)


def _require_quantity(key: str, value: object) -> str:
    """The quantity's text, as the user typed it (a number the CLI typed as one included)."""
    text = cli_text(value)
    parse_quantity(key, text)
    return str(text)


def _require_memory(key: str, value: object) -> str:
    """A pod memory Ray can start in: its object store share must reach Ray's minimum, or every start crash-loops."""
    text = _require_quantity(key, value)
    smallest = sizing.min_pod_memory_bytes()
    if parse_quantity(key, text) < smallest:
        raise config_error(
            key,
            value,
            f"it must be at least {smallest // sizing.MIB}Mi: Ray's object store takes "
            f"{sizing.OBJECT_STORE_FRACTION:.0%} of a pod's memory and refuses less than "
            f"{sizing.RAY_MIN_OBJECT_STORE_BYTES // sizing.MIB} MiB",
        )
    return text


@dataclass(frozen=True)
class PodResources:
    """Requests of one Ray pod; limits equal requests (Guaranteed QoS, as Ray advises for memory)."""

    cpu: str
    memory: str
    gpus: int = 0

    @classmethod
    def parse(cls, key_of: Callable[[str], str], cpu: object, memory: object, gpus: object = 0) -> PodResources:
        """`key_of("cpu")` names the config key a value came from, for the error message."""
        cpu_text = _require_quantity(key_of("cpu"), cpu)
        return cls(
            cpu=cpu_text, memory=_require_memory(key_of("memory"), memory), gpus=_require_count(key_of("gpus"), gpus)
        )

    @property
    def cpu_cores(self) -> Decimal:
        return parse_quantity("cpu", self.cpu)

    @property
    def memory_bytes(self) -> int:
        return int(parse_quantity("memory", self.memory))


@dataclass(frozen=True)
class WorkerGroup:
    """One worker Deployment. `replicas` is its size, or its least size when `max_replicas` is larger: then Ray's
    autoscaler sizes it between the two."""

    name: str
    replicas: int
    resources: PodResources
    image: str
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    max_replicas: int | None = None
    # False where the nodes' NVIDIA runtime hooks (CDI under crun before 1.26) write into the container's root.
    read_only_root_filesystem: bool = True

    @property
    def most_replicas(self) -> int:
        return max(self.replicas, self.max_replicas or 0)

    @property
    def autoscaled(self) -> bool:
        return self.most_replicas > self.replicas


@dataclass(frozen=True)
class Autoscaling:
    """Ray's autoscaler, on when a worker group may grow: how long a worker stays idle before it is removed, and
    how many nodes may be pending at once, as a multiple of the nodes there are (Ray's `upscaling_speed`)."""

    idle_timeout_seconds: int
    upscaling_speed: Decimal


@dataclass(frozen=True)
class GcsFaultTolerance:
    """Where the GCS keeps its state, so that a new head resumes the cluster instead of starting an empty one.

    `external_address` is an existing Redis as Ray is given it (RAY_REDIS_ADDRESS); empty, the stack runs its own
    Redis (described by `redis_image`, `memory`, `storage` and `storage_class`); `ca_cert` is the PEM of the CA
    that signed a TLS Redis's certificate (empty: the image's system CAs); `authenticates` is whether Ray is given
    a password (always for the stack's own Redis; for an existing one, when `redisPassword` is set)."""

    external_address: str
    tls: bool
    authenticates: bool
    ca_cert: str
    redis_image: str
    memory: str
    storage: str
    storage_class: str

    @property
    def memory_bytes(self) -> int:
        return int(parse_quantity("redisMemory", self.memory))


@dataclass(frozen=True)
class ClusterSettings:
    cluster_name: str
    namespace: str
    create_namespace: bool
    image: str
    head: PodResources
    worker_groups: tuple[WorkerGroup, ...]
    test_job: bool
    token_auth: bool
    client_namespaces: tuple[str, ...]
    client_cidrs: tuple[str, ...]
    metrics_namespaces: tuple[str, ...]
    gcs_reconnect_timeout_seconds: int
    worker_drain_seconds: int
    fault_tolerance: GcsFaultTolerance | None = None
    autoscaling: Autoscaling | None = None

    @property
    def head_service_name(self) -> str:
        return f"{self.cluster_name}-head"

    @property
    def head_host(self) -> str:
        """The head Service's DNS name; `.svc` resolves through every pod's search path, whatever the cluster domain."""
        return f"{self.head_service_name}.{self.namespace}.svc"

    def deployment_name(self, group: str) -> str:
        """`<cluster>-<group>`: the Deployment of a worker group, the head (`head`) or the stack's Redis (`redis`)."""
        return f"{self.cluster_name}-{group}"

    @property
    def auth_secret_name(self) -> str:
        return f"{self.cluster_name}-auth-token"

    @property
    def redis_name(self) -> str:
        """Names the stack's own Redis (Deployment, Service) and the Secret with the password of either Redis."""
        return f"{self.cluster_name}-redis"

    @property
    def total_workers(self) -> int:
        """The workers there are without autoscaling, and the fewest there are with it."""
        return sum(group.replicas for group in self.worker_groups)

    @property
    def most_workers(self) -> int:
        return sum(group.most_replicas for group in self.worker_groups)

    def warnings(self) -> list[str]:
        """What works but is likely to hurt: reported by the component on every `pulumi up`."""
        found = []
        if self.head.memory_bytes < sizing.RECOMMENDED_HEAD_MEMORY_BYTES:
            recommended = sizing.RECOMMENDED_HEAD_MEMORY_BYTES // 2**30
            found.append(
                f"{PROJECT}:headMemory is {self.head.memory!r}: the head's own Ray processes (GCS, dashboard, Ray "
                f"Client server, raylet, agents) use about 1 GiB before any work, so a head below {recommended}Gi is "
                "likely to be OOM-killed, and every worker with it"
            )
        if self.fault_tolerance and self.gcs_reconnect_timeout_seconds < FAULT_TOLERANT_RECONNECT_SECONDS:
            found.append(
                f"{PROJECT}:gcsReconnectTimeoutSeconds is {self.gcs_reconnect_timeout_seconds}: with "
                "gcsFaultTolerance, workers that give up on a lost head sooner than it comes back (a lost node's "
                "pods are rescheduled after about 5 minutes, then the image is pulled) exit and lose their tasks "
                f"and actors; 0 waits {FAULT_TOLERANT_RECONNECT_SECONDS} s"
            )
        return found


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


def _fault_tolerance(inputs: Inputs, worker_groups: tuple[WorkerGroup, ...]) -> GcsFaultTolerance | None:
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
    redis_image = _require_image("redisImage", inputs.text("redisImage"), "redis:7.0.15")
    memory = _require_quantity("redisMemory", inputs.text("redisMemory"))
    if parse_quantity("redisMemory", memory) < _MIN_REDIS_MEMORY:
        raise config_error("redisMemory", memory, f"it must be at least {_MIN_REDIS_MEMORY // sizing.MIB}Mi")
    storage = _require_quantity("redisStorage", inputs.text("redisStorage"))
    if parse_quantity("redisStorage", storage) < parse_quantity("redisMemory", memory):
        raise config_error(
            "redisStorage",
            storage,
            f"it must be at least redisMemory ({memory}): the append-only file holds everything Redis holds",
        )
    storage_class = inputs.text("redisStorageClass")
    if storage_class:
        _require_object_name("redisStorageClass", storage_class)
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
        memory=memory,
        storage=storage,
        storage_class=storage_class,
    )


def _reconnect_seconds(inputs: Inputs, fault_tolerant: bool) -> int:
    """The configured wait for a lost head, or (0) the right one for the cluster's kind."""
    seconds = inputs.integer("gcsReconnectTimeoutSeconds")
    if seconds == 0:
        return FAULT_TOLERANT_RECONNECT_SECONDS if fault_tolerant else RAY_RECONNECT_SECONDS
    return _require_seconds("gcsReconnectTimeoutSeconds", seconds, 5, 3600, "0 (Ray's choice for the cluster) or ")


def _require_count(key: str, value: object) -> int:
    """A whole number, 0 or more: an integer, or the digits of one (`--path ... 02` is kept as the text "02")."""
    if isinstance(value, str) and _WHOLE_NUMBER.match(value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise config_error(key, value, "it must be a whole number, 0 or more")
    return value


def _require_dns_label(key: str, value: object, max_length: int = _MAX_NAME) -> str:
    if not isinstance(value, str) or len(value) > max_length or not _DNS_LABEL.match(value):
        raise config_error(
            key, value, f"it must be a DNS label: lower-case letters, digits and '-', at most {max_length} characters"
        )
    return value


def _require_object_name(key: str, value: str) -> str:
    if len(value) > _MAX_SUBDOMAIN or not _DNS_SUBDOMAIN.match(value):
        raise config_error(
            key, value, f"it must be an object name: lower-case letters, digits, '-' and '.', at most {_MAX_SUBDOMAIN}"
        )
    return value


def _require_cluster_name(value: object) -> str:
    if not isinstance(value, str) or len(value) > _MAX_CLUSTER_NAME or not _DNS_1035_LABEL.match(value):
        raise config_error(
            "clusterName",
            value,
            "it must start with a letter and hold only lower-case letters, digits and '-', at most "
            f"{_MAX_CLUSTER_NAME} characters (it names the head Service, which Kubernetes requires to start "
            "with a letter)",
        )
    return value


def _require_image(key: str, value: object, example: str = "rayproject/ray:2.60.0") -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise config_error(key, value, f"it must be a non-empty image reference such as {example}")
    if value.count("@") > 1:
        raise config_error(key, value, "it must name at most one digest (name[:tag][@sha256:<digest>])")
    if "@" not in value and not _image_tag(value):
        raise config_error(key, value, "it must name a tag or a digest (rayproject/ray:<version>), not imply latest")
    if _image_tag(value) == "latest":
        raise config_error(key, value, "it must pin a version: `latest` changes under a running cluster")
    return value


def _image_tag(image: str) -> str:
    return image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]


def _official_ray_tag(image: str) -> str | None:
    """The tag of an official Ray image (`rayproject/ray:<tag>`, with a digest after it or not; empty for a digest
    alone); None for any other image."""
    tag = _image_tag(image)
    repository = image.split("@", 1)[0].removesuffix(f":{tag}")
    return tag if repository in _OFFICIAL_RAY_REPOSITORIES else None


def image_architecture(image: str) -> str | None:
    """The CPU architecture (as nodes label it, `kubernetes.io/arch`) an official Ray image is built for, read from
    its tag: Ray's image CI builds each architecture apart and appends `-aarch64` to the tags of the arm64 builds,
    nothing to the amd64 ones (ray-project/ray ci/ray_ci/ray_image.py, `arch_suffix`). Whether a tag without the
    suffix is amd64 alone or an index of both, amd64 nodes run it; arm64 nodes run the `-aarch64` tag for sure.
    None for any other image (its builder knows) and for an official image named by its digest alone."""
    tag = _official_ray_tag(image)
    if not tag:
        return None
    return "arm64" if tag.endswith(_PLATFORM_SUFFIX) else "amd64"


def gpu_image(key: str, image: str) -> str:
    """The image a GPU group runs when it names none: the `-gpu` variant of an official Ray image's tag
    (`2.60.0` and `2.60.0-cpu` -> `2.60.0-gpu`; a `-gpu` or `-cu<NNN>` tag as it is). A custom image is used as it
    is (whether it carries CUDA is its builder's to know). A digest names one image only, and no GPU variant of
    an `-aarch64` tag is known, so for those the group needs its own `image`."""
    tag = _official_ray_tag(image)
    if tag is None or _GPU_TAG.search(tag):
        return image
    repository = image.split("@", 1)[0].removesuffix(f":{tag}")
    if "@" in image or tag.endswith(_PLATFORM_SUFFIX):
        why = "is pinned by digest" if "@" in image else f"is an {_PLATFORM_SUFFIX} image"
        raise config_error(
            key,
            "",
            f"the cluster's image {image!r} {why}, and a GPU group needs an image with CUDA whose reference "
            "cannot be derived from it: set this group's image (e.g. rayproject/ray:<version>-gpu@sha256:<digest>)",
        )
    return f"{repository}:{tag.removesuffix('-cpu')}-gpu"


def _group_image(key: str, value: object, cluster_image: str, gpus: int) -> str:
    """The group's own image if given, else the cluster's (its -gpu variant for a group with GPUs)."""
    if value != "":
        return _require_image(key, value)
    return gpu_image(key, cluster_image) if gpus else cluster_image


def _require_label_value(key: str, value: object) -> str:
    text = cli_text(value)
    if not isinstance(text, str) or len(text) > _MAX_NAME or not _LABEL_VALUE.match(text):
        raise config_error(key, value, "it must be a label value: at most 63 letters, digits, '-', '_' or '.'")
    return text


def _require_node_selector(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise config_error(key, value, "it must be an object of node label names to values")
    return {name: _require_label_value(f"{key}[{name!r}]", label) for name, label in value.items()}


def _require_toleration(key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not set(value) <= TOLERATION_KEYS:
        raise config_error(key, value, f"a toleration may only have the keys {sorted(TOLERATION_KEYS)}")
    toleration: dict[str, Any] = {name: cli_text(value[name]) for name in ("key", "value") if name in value}
    if "operator" in value:
        if value["operator"] not in _TOLERATION_OPERATORS:
            raise config_error(f"{key}.operator", value["operator"], f"it must be one of {list(_TOLERATION_OPERATORS)}")
        toleration["operator"] = value["operator"]
    # The API server's own rules (core/v1 validation, validateTolerations).
    exists = toleration.get("operator") == "Exists"
    if exists and toleration.get("value"):
        raise config_error(key, value, "a toleration with the operator Exists must have no value")
    if not toleration.get("key") and not exists:
        raise config_error(key, value, "a toleration without a key must have the operator Exists")
    if "effect" in value:
        if value["effect"] not in _TAINT_EFFECTS:
            raise config_error(f"{key}.effect", value["effect"], f"it must be one of {list(_TAINT_EFFECTS)}")
        toleration["effect"] = value["effect"]
    if "tolerationSeconds" in value:
        if toleration.get("effect") != "NoExecute":
            raise config_error(key, value, "tolerationSeconds is only allowed with the effect NoExecute")
        toleration["tolerationSeconds"] = _require_count(f"{key}.tolerationSeconds", value["tolerationSeconds"])
    if not all(isinstance(toleration.get(name, ""), str) for name in ("key", "value")):
        raise config_error(key, value, "its key and value must be text")
    return toleration


def _require_tolerations(key: str, value: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise config_error(key, value, "it must be a list of Kubernetes tolerations")
    return tuple(_require_toleration(f"{key}[{index}]", toleration) for index, toleration in enumerate(value))


def _require_boolean(key: str, value: object) -> bool:
    """true or false (`--path` stores them as booleans)."""
    if not isinstance(value, bool):
        raise config_error(key, value, "it must be true or false")
    return value


def _parse_group(
    index: int, raw: object, defaults: PodResources, cluster_image: str, read_only_root_filesystem: bool
) -> WorkerGroup:
    key = f"workerGroups[{index}]"
    if not isinstance(raw, Mapping):
        raise config_error(key, raw, "it must be an object with a name and replicas")
    unknown = sorted(set(raw) - GROUP_KEYS)
    if unknown:
        hint = nearest_key_hint(unknown[0], GROUP_KEYS)
        raise config_error(key, raw, f"it has unknown keys {unknown}; {hint}allowed are {sorted(GROUP_KEYS)}")
    if "name" not in raw:
        raise config_error(key, raw, "it must have a name")
    group = {
        **GROUP_DEFAULTS,
        "cpu": defaults.cpu,
        "memory": defaults.memory,
        "readOnlyRootFilesystem": read_only_root_filesystem,
        **raw,
    }
    resources = PodResources.parse(lambda name: f"{key}.{name}", group["cpu"], group["memory"], group["gpus"])
    replicas = _require_count(f"{key}.replicas", group["replicas"])
    image = _group_image(f"{key}.image", group["image"], cluster_image, resources.gpus)
    node_selector = _require_node_selector(f"{key}.nodeSelector", group["nodeSelector"])
    built_for, chosen = image_architecture(image), node_selector.get(ARCHITECTURE_LABEL)
    if built_for and chosen and chosen != built_for:
        raise config_error(
            f"{key}.nodeSelector[{ARCHITECTURE_LABEL!r}]",
            chosen,
            f"the group's image {image} is built for {built_for} (official Ray tags end in {_PLATFORM_SUFFIX} for "
            "arm64 and have no suffix for amd64): choose an image of that architecture, or leave the label out",
        )
    return WorkerGroup(
        name=_require_dns_label(f"{key}.name", cli_text(group["name"])),
        replicas=replicas,
        max_replicas=_require_most(f"{key}.maxReplicas", group["maxReplicas"], replicas, f"{key}.replicas"),
        resources=resources,
        image=image,
        node_selector=node_selector,
        tolerations=_require_tolerations(f"{key}.tolerations", group["tolerations"]),
        read_only_root_filesystem=_require_boolean(f"{key}.readOnlyRootFilesystem", group["readOnlyRootFilesystem"]),
    )


def _require_most(key: str, value: object, least: int, least_key: str) -> int | None:
    """A group's largest size for the autoscaler: 0 (the key's default) keeps the group at its size."""
    most = _require_count(key, value)
    if most and most < least:
        raise config_error(key, value, f"it must be 0 (no autoscaling) or at least {least_key} ({least})")
    return most or None


def _autoscaling(inputs: Inputs, worker_groups: tuple[WorkerGroup, ...]) -> Autoscaling | None:
    """The autoscaler's settings, checked whether or not a group autoscales; None if none does."""
    idle_seconds = _require_seconds("idleTimeoutSeconds", inputs.integer("idleTimeoutSeconds"), 1, 86400)
    speed_text = inputs.text("upscalingSpeed")
    speed = Decimal(speed_text) if _DECIMAL_NUMBER.match(speed_text) else Decimal(0)
    if not 0 < speed <= _MAX_UPSCALING_SPEED:
        raise config_error(
            "upscalingSpeed",
            speed_text,
            f"it must be a number above 0 and at most {_MAX_UPSCALING_SPEED}: how many nodes may be pending at "
            "once, as a multiple of the nodes there are (1: at most doubling per step; 1000: no limit)",
        )
    if not any(group.autoscaled for group in worker_groups):
        return None
    return Autoscaling(idle_timeout_seconds=idle_seconds, upscaling_speed=speed)


def _require_list(key: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise config_error(key, value, "it must be a list")
    return value


def _require_label_list(inputs: Inputs, key: str) -> tuple[str, ...]:
    values = _require_list(key, inputs.value(key))
    return tuple(_require_dns_label(f"{key}[{i}]", cli_text(value)) for i, value in enumerate(values))


def _require_cidr(key: str, value: object) -> str:
    try:
        return str(ipaddress.ip_network(value if isinstance(value, str) else "", strict=True))
    except ValueError:
        raise config_error(key, value, "it must be a CIDR block such as 10.8.0.0/16") from None


def _require_seconds(key: str, value: int, low: int, high: int, or_else: str = "") -> int:
    if not low <= value <= high:
        raise config_error(key, value, f"it must be {or_else}between {low} and {high} seconds")
    return value


def default_namespace(project: str, stack: str) -> str:
    """`ray-<stack>`, only for a stack name that is a namespace name as it is: deriving one from `Dev` or `a_b`
    would give `dev` and `a-b` the same namespace. A copy of this program under another project name gets a
    suffix from the project's name, so its `dev` stack does not land in this project's `ray-dev`."""
    suffix = "" if project == PROJECT else "-" + hashlib.sha256(project.encode()).hexdigest()[:6]
    longest = _MAX_NAME - len("ray-") - len(suffix)
    if len(stack) > longest or not _DNS_LABEL.match(stack):
        example = _NOT_IN_LABEL.sub("-", stack.lower()).strip("-")[:longest] or "dev"
        raise config_error(
            "namespace",
            "",
            f"the stack {stack!r} is not a namespace name as it is (lower-case letters, digits and '-', at most "
            f"{longest} characters), so none is derived from it: set one, e.g. "
            f"`pulumi config set namespace ray-{example}`",
        )
    return f"ray-{stack}{suffix}"


def load_settings(args: Mapping[str, object], project: str, stack: str) -> ClusterSettings:
    """Read and check every input (`RayClusterArgs`); raises pulumi.RunError on the first bad value."""
    inputs = Inputs(args)
    cluster_name = _require_cluster_name(inputs.text("clusterName"))
    namespace = inputs.text("namespace") or default_namespace(project, stack)
    image = _require_image("image", inputs.text("image"))
    worker_resources = PodResources.parse(
        lambda name: f"worker{name.capitalize()}",
        inputs.text("workerCpu"),
        inputs.text("workerMemory"),
        inputs.integer("workerGpus"),
    )
    workers = _require_count("workers", inputs.integer("workers"))
    default_group = WorkerGroup(
        name=DEFAULT_GROUP,
        replicas=workers,
        max_replicas=_require_most("maxWorkers", inputs.integer("maxWorkers"), workers, "workers"),
        resources=worker_resources,
        image=_group_image("workerImage", inputs.text("workerImage"), image, worker_resources.gpus),
        read_only_root_filesystem=inputs.boolean("workerReadOnlyRootFilesystem"),
    )
    raw_groups = inputs.value(WORKER_GROUPS)
    if not isinstance(raw_groups, list):
        raise config_error("workerGroups", raw_groups, "it must be a list of worker group objects")
    read_only = default_group.read_only_root_filesystem
    groups = (
        default_group,
        *(_parse_group(i, raw, worker_resources, image, read_only) for i, raw in enumerate(raw_groups)),
    )
    names = [group.name for group in groups]
    for name in names:
        if names.count(name) > 1 or name in _RESERVED_GROUPS:
            raise config_error(
                "workerGroups",
                name,
                f"group names must be unique and not {' or '.join(map(repr, _RESERVED_GROUPS))} "
                f"('{DEFAULT_GROUP}' is the default)",
            )
        _require_dns_label("workerGroups", f"{cluster_name}-{name}")
    namespace = _require_dns_label("namespace", namespace)
    fault_tolerance = _fault_tolerance(inputs, groups)
    return ClusterSettings(
        cluster_name=cluster_name,
        namespace=namespace,
        create_namespace=inputs.boolean("createNamespace"),
        image=image,
        head=PodResources.parse(
            lambda name: f"head{name.capitalize()}", inputs.text("headCpu"), inputs.text("headMemory")
        ),
        worker_groups=groups,
        test_job=inputs.boolean("testJob"),
        token_auth=inputs.boolean("tokenAuth"),
        client_namespaces=_require_label_list(inputs, "allowedClientNamespaces"),
        client_cidrs=tuple(
            _require_cidr(f"allowedClientCidrs[{i}]", value)
            for i, value in enumerate(_require_list("allowedClientCidrs", inputs.value("allowedClientCidrs")))
        ),
        metrics_namespaces=_require_label_list(inputs, "allowedMetricsNamespaces"),
        gcs_reconnect_timeout_seconds=_reconnect_seconds(inputs, fault_tolerance is not None),
        worker_drain_seconds=_require_seconds("workerDrainSeconds", inputs.integer("workerDrainSeconds"), 0, 3600),
        fault_tolerance=fault_tolerance,
        autoscaling=_autoscaling(inputs, groups),
    )

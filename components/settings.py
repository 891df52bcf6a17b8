"""Stack config -> one validated, immutable description of the cluster.

Every value is checked here, before any resource is declared, so that a typo fails `pulumi up` with a message
naming the key, the value and what is allowed, instead of a half-created cluster. Defaults live in
`Pulumi.yaml` (the engine fills them in); only values that depend on the stack are derived here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pulumi

PROJECT = "ray-cluster"
DEFAULT_GROUP = "worker"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes' own grammar for a quantity (apimachinery resource.Quantity): a non-negative decimal number and one
# suffix. The kubernetes client's parse_quantity is looser (it takes "K", "Infinity", "1_000"), so it is not used.
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][-+]?[0-9]+)?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_GROUP_KEYS = frozenset({"name", "replicas", "cpu", "memory", "gpus", "nodeSelector", "tolerations"})
_TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})
# The Deployment name `<cluster>-<group>` is also a label value: at most 63 characters.
_MAX_NAME = 63


def config_error(key: str, value: object, allowed: str) -> pulumi.RunError:
    """The one shape of every config error: which key, what it held, what it may hold."""
    return pulumi.RunError(f"{PROJECT}:{key} is {value!r}, but {allowed}")


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


@dataclass(frozen=True)
class PodResources:
    """Requests of one Ray pod; limits equal requests (Guaranteed QoS, as Ray advises for memory)."""

    cpu: str
    memory: str
    gpus: int = 0

    @classmethod
    def parse(cls, key_of: Callable[[str], str], cpu: object, memory: object, gpus: object = 0) -> PodResources:
        """`key_of("cpu")` names the config key a value came from, for the error message."""
        parse_quantity(key_of("cpu"), cpu)
        parse_quantity(key_of("memory"), memory)
        assert isinstance(cpu, str) and isinstance(memory, str)
        return cls(cpu=cpu, memory=memory, gpus=_require_count(key_of("gpus"), gpus))

    @property
    def cpu_cores(self) -> Decimal:
        return parse_quantity("cpu", self.cpu)

    @property
    def memory_bytes(self) -> int:
        return int(parse_quantity("memory", self.memory))


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    replicas: int
    resources: PodResources
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


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
    gcs_reconnect_timeout_seconds: int

    @property
    def head_service_name(self) -> str:
        return f"{self.cluster_name}-head"

    @property
    def head_host(self) -> str:
        """The head Service's DNS name; `.svc` resolves through every pod's search path, whatever the cluster domain."""
        return f"{self.head_service_name}.{self.namespace}.svc"

    @property
    def auth_secret_name(self) -> str:
        return f"{self.cluster_name}-auth-token"

    @property
    def total_workers(self) -> int:
        return sum(group.replicas for group in self.worker_groups)


def _require_count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise config_error(key, value, "it must be a whole number, 0 or more")
    return value


def _require_dns_label(key: str, value: object, max_length: int = _MAX_NAME) -> str:
    if not isinstance(value, str) or len(value) > max_length or not _DNS_LABEL.match(value):
        raise config_error(
            key, value, f"it must be a DNS label: lower-case letters, digits and '-', at most {max_length} characters"
        )
    return value


def _require_image(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise config_error("image", value, "it must be a non-empty image reference such as rayproject/ray:2.60.0")
    name = value.split("@", 1)[0]
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    if "@" not in value and not tag:
        raise config_error(
            "image", value, "it must name a tag or a digest (rayproject/ray:<version>), not imply latest"
        )
    if tag == "latest":
        raise config_error("image", value, "it must pin a version: `latest` changes under a running cluster")
    return value


def _require_string_map(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise config_error(key, value, "it must be an object of string keys to string values")
    return dict(value)


def _require_tolerations(key: str, value: object) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise config_error(key, value, "it must be a list of Kubernetes tolerations")
    for toleration in value:
        if not isinstance(toleration, Mapping) or not set(toleration) <= _TOLERATION_KEYS:
            raise config_error(key, toleration, f"each toleration may only have the keys {sorted(_TOLERATION_KEYS)}")
    return tuple(dict(t) for t in value)


def _parse_group(index: int, raw: object, defaults: PodResources) -> WorkerGroup:
    key = f"workerGroups[{index}]"
    if not isinstance(raw, Mapping):
        raise config_error(key, raw, "it must be an object with a name and replicas")
    unknown = set(raw) - _GROUP_KEYS
    if unknown:
        raise config_error(key, raw, f"it has unknown keys {sorted(unknown)}; allowed are {sorted(_GROUP_KEYS)}")
    if "name" not in raw:
        raise config_error(key, raw, "it must have a name")
    return WorkerGroup(
        name=_require_dns_label(f"{key}.name", raw["name"]),
        replicas=_require_count(f"{key}.replicas", raw.get("replicas", 1)),
        resources=PodResources.parse(
            lambda name: f"{key}.{name}",
            raw.get("cpu", defaults.cpu),
            raw.get("memory", defaults.memory),
            raw.get("gpus", 0),
        ),
        node_selector=_require_string_map(f"{key}.nodeSelector", raw.get("nodeSelector", {})),
        tolerations=_require_tolerations(f"{key}.tolerations", raw.get("tolerations", [])),
    )


def _require_list(key: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise config_error(key, value, "it must be a list")
    return value


def _require_cidr(key: str, value: object) -> str:
    try:
        return str(ipaddress.ip_network(value if isinstance(value, str) else "", strict=True))
    except ValueError:
        raise config_error(key, value, "it must be a CIDR block such as 10.8.0.0/16") from None


def _require_seconds(key: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise config_error(key, value, f"it must be between {low} and {high} seconds")
    return value


def _default_namespace(stack: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"ray-{stack}".lower()).strip("-")[:_MAX_NAME].rstrip("-")


def load_settings(config: pulumi.Config, stack: str) -> ClusterSettings:
    """Read and check every key; raises pulumi.RunError on the first bad value."""
    cluster_name = _require_dns_label("clusterName", config.require("clusterName"), max_length=_MAX_NAME - 10)
    namespace = config.require("namespace") or _default_namespace(stack)
    worker_resources = PodResources.parse(
        lambda name: f"worker{name.capitalize()}",
        config.require("workerCpu"),
        config.require("workerMemory"),
        config.require_int("workerGpus"),
    )
    default_group = WorkerGroup(
        name=DEFAULT_GROUP,
        replicas=_require_count("workers", config.require_int("workers")),
        resources=worker_resources,
    )
    raw_groups = config.get_object("workerGroups") or []
    if not isinstance(raw_groups, list):
        raise config_error("workerGroups", raw_groups, "it must be a list of worker group objects")
    groups = (default_group, *(_parse_group(i, raw, worker_resources) for i, raw in enumerate(raw_groups)))
    names = [group.name for group in groups]
    for name in names:
        if names.count(name) > 1 or name == "head":
            raise config_error(
                "workerGroups", name, f"group names must be unique and not 'head' ('{DEFAULT_GROUP}' is the default)"
            )
        _require_dns_label("workerGroups", f"{cluster_name}-{name}")
    return ClusterSettings(
        cluster_name=cluster_name,
        namespace=_require_dns_label("namespace", namespace),
        create_namespace=config.require_bool("createNamespace"),
        image=_require_image(config.require("image")),
        head=PodResources.parse(
            lambda name: f"head{name.capitalize()}", config.require("headCpu"), config.require("headMemory")
        ),
        worker_groups=groups,
        test_job=config.require_bool("testJob"),
        token_auth=config.require_bool("tokenAuth"),
        client_namespaces=tuple(
            _require_dns_label(f"allowedClientNamespaces[{i}]", value)
            for i, value in enumerate(
                _require_list("allowedClientNamespaces", config.require_object("allowedClientNamespaces"))
            )
        ),
        client_cidrs=tuple(
            _require_cidr(f"allowedClientCidrs[{i}]", value)
            for i, value in enumerate(_require_list("allowedClientCidrs", config.require_object("allowedClientCidrs")))
        ),
        gcs_reconnect_timeout_seconds=_require_seconds(
            "gcsReconnectTimeoutSeconds", config.require_int("gcsReconnectTimeoutSeconds"), 5, 3600
        ),
    )

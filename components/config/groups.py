"""The worker groups: the default one (`workers`, `workerCpu`, ...) and those of `workerGroups`, each with its size,
resources, image, placement and, when it may grow, its autoscaler's bounds; and the autoscaler's own settings."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .images import ARCHITECTURE_LABEL, ARM64_TAG_SUFFIX, group_image, image_architecture
from .inputs import GROUP_DEFAULTS, GROUP_KEYS, TOLERATION_KEYS, WORKER_GROUPS, nearest_key_hint
from .resources import PodResources
from .values import (
    Inputs,
    cli_text,
    config_error,
    require_boolean,
    require_count,
    require_dns_label,
    require_label_value,
    require_seconds,
)

DEFAULT_GROUP = "worker"
_TOLERATION_OPERATORS = ("Equal", "Exists")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Group names that would collide with the names of the head's and the Redis's objects.
_RESERVED_GROUPS = ("head", "redis")
# Ray's upscaling_speed: KubeRay's "Default" and "Aggressive" modes use 1000, no limit in practice.
_MAX_UPSCALING_SPEED = 1000
_DECIMAL_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$|^\.[0-9]+$")


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


def worker_groups(inputs: Inputs, cluster_name: str, image: str) -> tuple[WorkerGroup, ...]:
    """The default group, then those of `workerGroups`, whose names must be unique, none the head's or the Redis's,
    and each `<cluster>-<group>` a DNS label (it names the group's Deployment)."""
    worker_resources = PodResources.parse(
        lambda name: f"worker{name.capitalize()}",
        inputs.text("workerCpu"),
        inputs.text("workerMemory"),
        inputs.integer("workerGpus"),
    )
    workers = require_count("workers", inputs.integer("workers"))
    default_group = WorkerGroup(
        name=DEFAULT_GROUP,
        replicas=workers,
        max_replicas=require_most("maxWorkers", inputs.integer("maxWorkers"), workers, "workers"),
        resources=worker_resources,
        image=group_image("workerImage", inputs.text("workerImage"), image, worker_resources.gpus),
        read_only_root_filesystem=inputs.boolean("workerReadOnlyRootFilesystem"),
    )
    raw_groups = inputs.value(WORKER_GROUPS)
    if not isinstance(raw_groups, list):
        raise config_error("workerGroups", raw_groups, "it must be a list of worker group objects")
    read_only = default_group.read_only_root_filesystem
    groups = (
        default_group,
        *(parse_group(i, raw, worker_resources, image, read_only) for i, raw in enumerate(raw_groups)),
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
        require_dns_label("workerGroups", f"{cluster_name}-{name}")
    return groups


def _require_node_selector(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise config_error(key, value, "it must be an object of node label names to values")
    return {name: require_label_value(f"{key}[{name!r}]", label) for name, label in value.items()}


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
        toleration["tolerationSeconds"] = require_count(f"{key}.tolerationSeconds", value["tolerationSeconds"])
    if not all(isinstance(toleration.get(name, ""), str) for name in ("key", "value")):
        raise config_error(key, value, "its key and value must be text")
    return toleration


def _require_tolerations(key: str, value: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise config_error(key, value, "it must be a list of Kubernetes tolerations")
    return tuple(_require_toleration(f"{key}[{index}]", toleration) for index, toleration in enumerate(value))


def parse_group(
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
    replicas = require_count(f"{key}.replicas", group["replicas"])
    image = group_image(f"{key}.image", group["image"], cluster_image, resources.gpus)
    node_selector = _require_node_selector(f"{key}.nodeSelector", group["nodeSelector"])
    built_for, chosen = image_architecture(image), node_selector.get(ARCHITECTURE_LABEL)
    if built_for and chosen and chosen != built_for:
        raise config_error(
            f"{key}.nodeSelector[{ARCHITECTURE_LABEL!r}]",
            chosen,
            f"the group's image {image} is built for {built_for} (official Ray tags end in {ARM64_TAG_SUFFIX} for "
            "arm64 and have no suffix for amd64): choose an image of that architecture, or leave the label out",
        )
    return WorkerGroup(
        name=require_dns_label(f"{key}.name", cli_text(group["name"])),
        replicas=replicas,
        max_replicas=require_most(f"{key}.maxReplicas", group["maxReplicas"], replicas, f"{key}.replicas"),
        resources=resources,
        image=image,
        node_selector=node_selector,
        tolerations=_require_tolerations(f"{key}.tolerations", group["tolerations"]),
        read_only_root_filesystem=require_boolean(f"{key}.readOnlyRootFilesystem", group["readOnlyRootFilesystem"]),
    )


def require_most(key: str, value: object, least: int, least_key: str) -> int | None:
    """A group's largest size for the autoscaler: 0 (the key's default) keeps the group at its size."""
    most = require_count(key, value)
    if most and most < least:
        raise config_error(key, value, f"it must be 0 (no autoscaling) or at least {least_key} ({least})")
    return most or None


def autoscaler_settings(inputs: Inputs, worker_groups: tuple[WorkerGroup, ...]) -> Autoscaling | None:
    """The autoscaler's settings, checked whether or not a group autoscales; None if none does."""
    idle_seconds = require_seconds("idleTimeoutSeconds", inputs.integer("idleTimeoutSeconds"), 1, 86400)
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

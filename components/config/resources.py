"""Kubernetes quantities as Ray pods need them: CPU and memory requests (limits equal them), each checked as the API
server parses it, and memory large enough for Ray's object store."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from ..manifests import sizing
from .values import cli_text, config_error, require_count

# Kubernetes' own grammar for a quantity (apimachinery resource.Quantity): a non-negative decimal number and one
# suffix. The kubernetes client's parse_quantity is looser (it takes "K", "Infinity", "1_000"), so it is not used.
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][-+]?[0-9]+)?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}

_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


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


def require_quantity(key: str, value: object) -> str:
    """The quantity's text, as the user typed it (a number the CLI typed as one included)."""
    text = cli_text(value)
    parse_quantity(key, text)
    return str(text)


def _require_memory(key: str, value: object) -> str:
    """A pod memory Ray can start in: its object store share must reach Ray's minimum, or every start crash-loops."""
    text = require_quantity(key, value)
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
        cpu_text = require_quantity(key_of("cpu"), cpu)
        return cls(
            cpu=cpu_text, memory=_require_memory(key_of("memory"), memory), gpus=require_count(key_of("gpus"), gpus)
        )

    @property
    def cpu_cores(self) -> Decimal:
        return parse_quantity("cpu", self.cpu)

    @property
    def memory_bytes(self) -> int:
        return int(parse_quantity("memory", self.memory))

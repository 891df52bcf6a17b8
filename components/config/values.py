"""Reading and checking single config values: the one shape of every error (the key, what it held, what it may
hold), the inputs by key with their types checked, and the checks that names, labels, lists, CIDR blocks and
numbers of seconds share.

Inside objects set with `pulumi config set --path`, the CLI stores `true`/`false` as booleans and whole numbers
as integers (pulumi/pulumi sdk/go/common/resource/config/map.go, adjustObjectValue); through the package every
number arrives as a float. Both are turned back into what the user wrote: whole floats into integers, and
scalars into the text typed wherever the key holds text (a quantity, a label value), so
`--path 'workerGroups[0].cpu' 8` works.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

import pulumi

from .inputs import SECRET_KEYS, contains_output, defaults, nearest_key_hint, whole_numbers

PROJECT = "ray-cluster"

# RFC 1123 labels name namespaces and most objects; a Service name must also start with a letter (RFC 1035), and
# every other name derives from the cluster's name, so the cluster's name follows the stricter rule.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# Most other object names (Secrets, StorageClasses) are DNS subdomains: labels joined by dots, 253 characters.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_SUBDOMAIN = 253

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_WHOLE_NUMBER = re.compile(r"^[0-9]+$")

# The Deployment name `<cluster>-<group>` is also a label value: at most 63 characters.
MAX_NAME = 63


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


def require_count(key: str, value: object) -> int:
    """A whole number, 0 or more: an integer, or the digits of one (`--path ... 02` is kept as the text "02")."""
    if isinstance(value, str) and _WHOLE_NUMBER.match(value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise config_error(key, value, "it must be a whole number, 0 or more")
    return value


def require_dns_label(key: str, value: object, max_length: int = MAX_NAME) -> str:
    if not isinstance(value, str) or len(value) > max_length or not DNS_LABEL.match(value):
        raise config_error(
            key, value, f"it must be a DNS label: lower-case letters, digits and '-', at most {max_length} characters"
        )
    return value


def require_object_name(key: str, value: str) -> str:
    if len(value) > _MAX_SUBDOMAIN or not _DNS_SUBDOMAIN.match(value):
        raise config_error(
            key, value, f"it must be an object name: lower-case letters, digits, '-' and '.', at most {_MAX_SUBDOMAIN}"
        )
    return value


def require_label_value(key: str, value: object) -> str:
    text = cli_text(value)
    if not isinstance(text, str) or len(text) > MAX_NAME or not _LABEL_VALUE.match(text):
        raise config_error(key, value, "it must be a label value: at most 63 letters, digits, '-', '_' or '.'")
    return text


def require_boolean(key: str, value: object) -> bool:
    """true or false (`--path` stores them as booleans)."""
    if not isinstance(value, bool):
        raise config_error(key, value, "it must be true or false")
    return value


def require_list(key: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise config_error(key, value, "it must be a list")
    return value


def require_label_list(inputs: Inputs, key: str) -> tuple[str, ...]:
    values = require_list(key, inputs.value(key))
    return tuple(require_dns_label(f"{key}[{i}]", cli_text(value)) for i, value in enumerate(values))


def require_cidr(key: str, value: object) -> str:
    try:
        return str(ipaddress.ip_network(value if isinstance(value, str) else "", strict=True))
    except ValueError:
        raise config_error(key, value, "it must be a CIDR block such as 10.8.0.0/16") from None


def require_seconds(key: str, value: int, low: int, high: int, or_else: str = "") -> int:
    if not low <= value <= high:
        raise config_error(key, value, f"it must be {or_else}between {low} and {high} seconds")
    return value

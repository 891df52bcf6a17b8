"""Strict checks of custom resources against vendored CRD schemas (tests/crds/<project>/*.yaml, whole upstream files).

The API server validates a custom resource against its CRD's structural `openAPIV3Schema`, but first prunes every
field the schema does not know: a misspelt field is dropped without a word. A Pulumi user expects an error instead,
so here an unknown field is one, wherever the schema sets neither `additionalProperties` (a map) nor
`x-kubernetes-preserve-unknown-fields`. The schema is read as the API server reads it (OpenAPI v3 on JSON Schema
draft 4): `x-kubernetes-int-or-string` takes an int or a string, `x-kubernetes-list-type` set and map reject
duplicates, `format` int32 and int64 bound integers, and patterns keep Go's RE2 meaning. Not checked: CEL rules
(`x-kubernetes-validations`, none in the vendored CRDs) and the root `metadata`, which the API server checks as an
ObjectMeta of its own whatever the CRD says (here it must only be an object).
"""

import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

__all__ = ["crds", "re2", "validate_custom_resource"]

CRD_DIR = Path(__file__).parent
PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"
INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}

Schema = Mapping[str, Any]
Errors = Iterator[ValidationError]


def validate_custom_resource(manifest: dict[str, Any]) -> None:
    """Raise a ValueError listing each offending field by its path (`spec.groups[0].name: ...`)."""
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise ValueError(f"apiVersion and kind must be strings, got {api_version!r} and {kind!r}")
    group, _, version = api_version.rpartition("/")
    validator, source = _validator(group, version, kind)
    errors = sorted({f"{_path(error.absolute_path)}: {error.message}" for error in validator.iter_errors(manifest)})
    if errors:
        metadata = manifest.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        raise ValueError(f"{kind} {name!r} does not conform to {source}:\n  " + "\n  ".join(errors))


@cache
def crds() -> dict[tuple[str, str, str], tuple[Schema, str]]:
    """Each served (group, version, kind) of the vendored CRDs: its openAPIV3Schema, and where it comes from."""
    found: dict[tuple[str, str, str], tuple[Schema, str]] = {}
    for path in sorted(CRD_DIR.glob("*/*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec, annotations = crd["spec"], crd["metadata"].get("annotations", {})
        release = annotations.get("operator.prometheus.io/version", "version unknown")
        for version in spec["versions"]:
            if version["served"]:
                where = f"{path.relative_to(CRD_DIR)} ({release}), version {version['name']}"
                found[spec["group"], version["name"], spec["names"]["kind"]] = (
                    version["schema"]["openAPIV3Schema"],
                    where,
                )
    return found


@cache
def _validator(group: str, version: str, kind: str) -> tuple[Any, str]:
    known = crds()
    if (group, version, kind) not in known:
        raise ValueError(f"no vendored CRD serves {group}/{version} {kind} (known: {sorted(known)})")
    schema, source = known[group, version, kind]
    # The API server checks the root metadata as an ObjectMeta, never against the CRD's bare `type: object`.
    root = {**schema, "properties": {**schema["properties"], "metadata": {"type": "object", PRESERVE: True}}}
    return _StrictValidator(root, format_checker=_FORMATS), source


def _type(validator: Any, types: str | list[str], instance: object, schema: Schema) -> Errors:
    """Draft 4's type (an integer is an int: neither 1.0 nor True), then the fields of an object the schema lacks."""
    wanted = [types] if isinstance(types, str) else types
    if not any(validator.is_type(instance, t) for t in wanted):
        yield ValidationError(f"must be of type {' or '.join(wanted)}, not {_json_type(instance)}")
    elif isinstance(instance, dict) and "additionalProperties" not in schema and not schema.get(PRESERVE):
        known = schema.get("properties", {})
        for field in sorted(set(instance) - set(known)):
            yield ValidationError(f"unknown field (known here: {', '.join(sorted(known)) or 'none'})", path=[field])


def _required(validator: Any, required: list[str], instance: object, schema: Schema) -> Errors:
    """Named at the missing field's own path, not at its parent's."""
    if isinstance(instance, dict):
        for field in required:
            if field not in instance:
                yield ValidationError("required field is missing", path=[field])


def _int_or_string(validator: Any, on: bool, instance: object, schema: Schema) -> Errors:
    if on and not (isinstance(instance, str) or (isinstance(instance, int) and not isinstance(instance, bool))):
        yield ValidationError(f"must be an integer or a string, not {_json_type(instance)} {instance!r}")


def _any_of(validator: Any, any_of: list[Schema], instance: object, schema: Schema) -> Errors:
    """The anyOf [integer, string] that comes with x-kubernetes-int-or-string says it again: one error is enough."""
    if not schema.get(INT_OR_STRING):
        yield from Draft4Validator.VALIDATORS["anyOf"](validator, any_of, instance, schema)


def _pattern(validator: Any, pattern: str, instance: object, schema: Schema) -> Errors:
    if isinstance(instance, str) and not re2(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def re2(pattern: str) -> re.Pattern[str]:
    """Go's RE2 in Python: flags such as `^(?i)` may follow the anchor there, and a final `$` is the text's end
    (Python's also matches before a trailing newline). A pattern Python cannot compile fails here, not silently."""
    translated = re.sub(r"^\^(\(\?[ims]+\))", r"\1^", pattern)
    if re.search(r"(?<!\\)(\\\\)*\$$", translated):
        translated = translated[:-1] + r"\Z"
    try:
        return re.compile(translated)
    except re.error as error:
        raise ValueError(f"schema pattern {pattern!r} has no Python equivalent here: {error}") from error


def _list_type(validator: Any, list_type: str, instance: object, schema: Schema) -> Errors:
    """As the API server: the items of a set are unique, and so are the keys of the items of a map."""
    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    seen: list[object] = []
    for index, item in enumerate(instance):
        key: object = item
        if list_type == "map" and isinstance(item, dict):
            key = {name: item.get(name) for name in schema.get("x-kubernetes-list-map-keys", [])}
        if key in seen:
            yield ValidationError(f"duplicate {'value' if list_type == 'set' else 'key'} {key!r}", path=[index])
        seen.append(key)


def _json_type(instance: object) -> str:
    return "null" if instance is None else JSON_TYPES.get(type(instance), type(instance).__name__)


def _path(path: Iterable[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".") or "(root)"


_FORMATS = FormatChecker(formats=())
for _format, (_low, _high) in INT_BOUNDS.items():
    _FORMATS.checks(_format)(
        lambda value, low=_low, high=_high: (
            not isinstance(value, int) or isinstance(value, bool) or low <= value <= high
        )
    )

_StrictValidator = validators.extend(
    Draft4Validator,
    validators={
        "type": _type,
        "required": _required,
        "anyOf": _any_of,
        "pattern": _pattern,
        INT_OR_STRING: _int_or_string,
        "x-kubernetes-list-type": _list_type,
    },
)

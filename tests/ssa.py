"""A model of field ownership under server-side apply, as pulumi-kubernetes 4.x and kubectl meet on one object.

Rules modelled (Kubernetes server-side apply; pulumi-kubernetes provider/pkg/await/await.go and ssa.go):
- Every leaf field of a live object has one manager; an apply takes ownership of the fields it sets, and
  removes the fields it owned before and no longer sets.
- An apply that sets a field another manager owns, to another value, is a conflict, unless it is forced
  (pulumi-kubernetes forces with the annotation `pulumi.com/patchForce: "true"`), which takes the field over.
- `kubectl scale` writes `spec.replicas` through the scale subresource as manager "kubectl";
  `kubectl rollout restart` stamps a template annotation as "kubectl-rollout"; `kubectl edit` writes as
  "kubectl-edit".
- Before each real apply, the provider takes over the fields of managers whose names start with "kubectl" and
  that did not write through a subresource (fixCSAFieldManagers): their edits are Pulumi's to keep or drop.
- `ignore_changes` paths: a field (or object) another manager owns (and Pulumi owns nothing of) is left out of the
  apply; otherwise it is sent with its live value (handleSSAIgnoreFields). The provider finds the field by
  splitting the path's text at every dot, so a path through a key with a dot (an annotation's) finds nothing.
- Pulumi applies only when its diff finds a change: against its last inputs after a plain `pulumi up`, against the
  live object after `pulumi refresh` (or `pulumi up --refresh`).
- A create (since pulumi-kubernetes 4.29) is refused for an object that exists (AlreadyExists), unless the provider
  upserts (`upsertExistingObjects`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from tests.pulumi_cli import path_segments

Path = tuple[str | int, ...]
PULUMI = "pulumi-kubernetes-5d1e0f2a"
PATCH_FORCE = "pulumi.com/patchForce"


class ConflictError(RuntimeError):
    """The API server refused the apply: another manager owns a field it sets to another value."""


class AlreadyExistsError(RuntimeError):
    """The API server refused a create: the object exists."""


@dataclass(frozen=True)
class Owned:
    value: Any
    manager: str
    subresource: str = ""


def leaves(value: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Every leaf of a manifest by its path (lists by index; empty objects and lists are leaves)."""
    if isinstance(value, dict) and value:
        return {path: leaf for key, item in value.items() for path, leaf in leaves(item, (*prefix, key)).items()}
    if isinstance(value, list) and value:
        return {path: leaf for index, item in enumerate(value) for path, leaf in leaves(item, (*prefix, index)).items()}
    return {prefix: value}


def rebuild(fields: dict[Path, Any]) -> Any:
    """The manifest whose leaves these are."""
    root: dict[str | int, Any] = {}
    for path, value in sorted(fields.items(), key=lambda item: [str(segment) for segment in item[0]]):
        node = root
        for segment in path[:-1]:
            node = node.setdefault(segment, {})
        node[path[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(isinstance(key, int) for key in node):
        return [_lists(node[index]) for index in sorted(node)]
    return {key: _lists(item) for key, item in node.items()}


def pulumi_path(text: str) -> Path:
    """A path in Pulumi's syntax (`spec.template.metadata.annotations["a/b"]`) as a field path."""
    return tuple(path_segments(text))


def property_path_text(path: Path) -> str:
    """Pulumi's PropertyPath.String() (sdk/go/common/resource/property_path.go): a key of anything but letters,
    digits and `_` is quoted as `["key"]`, others follow a dot, indexes are `[n]`."""
    text = ""
    for index, segment in enumerate(path):
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif all(c.isascii() and (c.isalnum() or c == "_") for c in segment):
            text += f".{segment}" if index else segment
        else:
            escaped = segment.replace('"', '\\"')
            text += f'["{escaped}"]'
    return text


def provider_ignore_path(text: str) -> Path:
    """The field path handleSSAIgnoreFields looks for: `strings.Split(path.String(), ".")`."""
    return tuple(property_path_text(pulumi_path(text)).split("."))


def _under(path: Path, prefix: Path) -> bool:
    return path[: len(prefix)] == prefix


@dataclass
class LiveObject:
    fields: dict[Path, Owned] = field(default_factory=dict)

    def manifest(self) -> Any:
        return rebuild({path: owned.value for path, owned in self.fields.items()})

    def value(self, text: str) -> Any:
        owned = self.fields.get(pulumi_path(text))
        return owned.value if owned else None

    def write(self, manager: str, values: dict[str, Any], subresource: str = "") -> None:
        """An update by another client (kubectl): it owns what it wrote."""
        for text, value in values.items():
            self.fields[pulumi_path(text)] = Owned(value, manager, subresource)

    def pulumi_apply(self, manifest: Any, ignore_changes: tuple[str, ...] = ()) -> None:
        """A server-side apply by pulumi-kubernetes, forced when the manifest carries patchForce."""
        force = manifest.get("metadata", {}).get("annotations", {}).get(PATCH_FORCE) == "true"
        for path, owned in list(self.fields.items()):
            if owned.manager.startswith("kubectl") and not owned.subresource:
                self.fields[path] = Owned(owned.value, PULUMI)
        desired = leaves(copy.deepcopy(manifest))
        for text in ignore_changes:
            ignored = provider_ignore_path(text)
            live = {path: owned for path, owned in self.fields.items() if _under(path, ignored)}
            if not live:
                continue  # not found on the cluster: the declared value goes
            desired = {path: value for path, value in desired.items() if not _under(path, ignored)}
            if any(owned.manager == PULUMI for owned in live.values()):  # else only others own it: left out
                desired.update({path: owned.value for path, owned in live.items()})
        conflicts = [
            path
            for path, value in desired.items()
            if path in self.fields and self.fields[path].manager != PULUMI and self.fields[path].value != value
        ]
        if conflicts and not force:
            owners = sorted({f"{self.fields[p].manager} ({self.fields[p].subresource or 'main'})" for p in conflicts})
            raise ConflictError(f"Apply failed with {len(conflicts)} conflict(s) with {owners}: {conflicts}")
        for path in [p for p, owned in self.fields.items() if owned.manager == PULUMI and p not in desired]:
            del self.fields[path]
        for path, value in desired.items():
            self.fields[path] = Owned(value, PULUMI)

    def drifted_from(self, manifest: Any, ignore_changes: tuple[str, ...] = ()) -> bool:
        """What `pulumi refresh` makes the next diff see: a field Pulumi sets that lives with another value (the
        engine leaves ignored paths out of the diff, parsing them properly)."""
        ignored = [pulumi_path(text) for text in ignore_changes]
        return any(
            not any(_under(path, prefix) for prefix in ignored)
            and (path not in self.fields or self.fields[path].value != value)
            for path, value in leaves(manifest).items()
        )


def pulumi_create(live: LiveObject | None, manifest: Any, *, upsert: bool = False) -> LiveObject:
    """pulumi-kubernetes' Create since 4.29 (provider/pkg/await/await.go Creation): a client-side create, which the
    API server refuses for an object that exists (`live`), unless the provider upserts (`upsertExistingObjects`, or
    PULUMI_K8S_UPSERT_EXISTING_OBJECTS=true): then a server-side apply, which takes the object over. Either way
    Pulumi then owns what it set (the provider hands a create's fields to its apply manager on the next update)."""
    if live is not None and not upsert:
        metadata = manifest.get("metadata", {})
        resource = f"{manifest['kind'].lower()}s"
        raise AlreadyExistsError(f'{resource} "{metadata.get("name")}" already exists')
    created = copy.deepcopy(live) if live is not None else LiveObject()
    created.pulumi_apply(manifest)
    return created


def pulumi_up(
    live: LiveObject, before: Any, after: Any, ignore_changes: tuple[str, ...] = (), *, refresh: bool = False
) -> bool:
    """`pulumi up` of one object whose inputs go from `before` to `after`; returns whether it applied."""
    changed = live.drifted_from(after, ignore_changes) if refresh else leaves(before) != leaves(after)
    if changed:
        live.pulumi_apply(after, ignore_changes)
    return changed

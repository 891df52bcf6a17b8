"""What `pulumi up` does when a stack's program changes: the Pulumi engine's step generator and pulumi-kubernetes'
Diff, modelled over two renders (`tests/program.py`), so a test can see the steps, their order and what happens to
the live objects without a Pulumi CLI or a cluster.

`plan(before, after)` treats `before` as the stack's state (every registration deployed as rendered) and `after`
as the program's new registrations, in the order the program made them. `None` is an empty stack: `plan(x, None)`
is `pulumi destroy`, `plan(None, x)` the first `pulumi up`.

Where each rule comes from (pulumi/pulumi and pulumi/pulumi-kubernetes on GitHub):

- Matching old and new by URN, then by aliases, including the aliases a child inherits from an aliased parent:
  pkg/resource/deploy/step_generator.go (generateSteps, generateAliases, collapseAliasToUrn,
  inheritedChildAlias).
- `ignoreChanges` resets the ignored inputs to their old values before Check and Diff (step_generator.go
  processIgnoreChanges, sdk/go/common/resource/property_path.go Reset), and fails the update when a path
  cannot be reset. `replaceOnChanges` turns a change under those paths into a replacement, `deleteBeforeReplace`
  overrides the provider's choice, `protect` refuses a replacement or a delete (step_generator.go
  continueStepsFromDiff, applyReplaceOnChanges; step.go DeleteStep.Apply).
- A replacement re-runs Check without the old inputs, so an auto-named object gets a fresh name
  (step_generator.go continueStepsFromDiff; provider/pkg/metadata/naming.go AssignNameIfAutonamable); an update
  keeps the old one (AdoptOldAutonameIfUnnamed in the provider's Check).
- Create-before-delete replacements delete the old copy at the end; delete-before-replace ones first delete every
  dependent the replacement would replace, in reverse dependency order (step_generator.go
  calculateDependentReplacements).
- Resources that left the program are deleted at the end, dependents and children first (step_generator.go
  GenerateDeletes, ScheduleDeletes; pkg/resource/graph/dependency_graph.go DependenciesOf). Deleting an external
  (read) or `retainOnDelete` resource only drops it from the state (step.go DeleteStep.Apply).
- A read (`Resource.get`) of a URN the stack managed with the same ID releases the object without deleting it
  ("relinquish"); with another ID the old object is deleted. A managed registration of a URN that was read takes
  the object over ("adopt") (step_generator.go GenerateReadSteps and generateSteps "wasExternal").
- pulumi-kubernetes' Diff (provider/pkg/provider/provider.go Diff, convertPatchToDiff; diff.go forceNew table):
  the fields that force a replacement per kind, and delete-before-replace exactly when a replaced object keeps a
  user-set name and namespace.
- With `upsertExistingObjects`, Create is a server-side apply patch (provider/pkg/await/await.go Creation), which
  creates the object or updates the existing one ("upsert"); without force (the `pulumi.com/patchForce`
  annotation) it fails only when another field manager owns a field with a different value (Kubernetes'
  server-side apply conflicts). Every Pulumi resource has its own field manager (provider.go fieldManagerName
  draws one per resource).
- pulumi-random's RandomPassword and RandomId replace on any input change (terraform-provider-random
  internal/provider/resource_password.go, resource_id.go: every input RequiresReplace), create-before-delete.
- Reads match old entries through the aliases a renamed parent passes to its children too, never their own
  (step_generator.go GenerateReadSteps, getOldResource, since pulumi 3.208).
- The provider's Diff compares the new inputs with the live object its state last stored (its outputs), pruned to
  the keys of the old inputs (provider.go Diff, pruneLiveState; util.go pruneMap, pruneSlice), and removes the
  ignoreChanges paths from its detailed diff. `pulumi up --refresh` (or `pulumi refresh` first) reads every object
  again: the state then stores the live object as its outputs and, as its inputs, the live object pruned to the old
  inputs' keys (provider.go Read), so drift in a field the program sets shows as a change.
- Since pulumi-kubernetes 4.29 Create is a client-side create (await.go Creation): the API server refuses an
  object that exists (AlreadyExists), also when the engine takes over a read object by creating it ("adopt"), and
  `pulumi preview` swallows the refusal. Only the provider's `upsertExistingObjects` (or
  PULUMI_K8S_UPSERT_EXISTING_OBJECTS=true) makes Create a server-side apply again, which upserts.
- Deletes are foreground (await.go Deletion, metadata.DeletionPropagation): deleting a Deployment or a Job waits
  for its pods, and a Namespace for everything in it, each pod up to its grace period; the provider gives up after
  customTimeouts.delete from the old state, else 10 minutes (metadata.TimeoutDuration), unless the object is one
  of the kinds whose delete `pulumi.com/skipAwait` leaves unawaited (overrides.go allowsSkipAwaitWithDelete).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tests.program import AUTONAMED_ANNOTATION, Alias, Manifest, Registration, Rendered, auto_name

StepKind = Literal["same", "create", "update", "replace", "delete", "read", "relinquish", "adopt", "read-replace"]
Action = Literal["create", "update", "delete", "release", "read"]
PathPart = str | int
PropertyPath = tuple[PathPart, ...]
WILDCARD = "*"

# Kinds the API server keeps outside namespaces (the provider asks the server: clients.IsNamespacedKind).
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "RuntimeClass",
    }
)
_LABEL_SELECTOR = (
    ".matchExpressions",
    ".matchExpressions.key",
    ".matchExpressions.operator",
    ".matchExpressions.values",
    ".matchLabels",
)
# provider/pkg/provider/diff.go `forceNew`, for (group, version, kind) of the kinds this project declares; any
# other kind is replaced only for a new name or namespace (metadataForceNewProperties).
FORCE_NEW: Mapping[tuple[str, str, str], tuple[str, ...]] = {
    ("apps", "v1", "Deployment"): (".spec.selector", *(".spec.selector" + p for p in _LABEL_SELECTOR)),
    ("batch", "v1", "Job"): (
        ".spec.completions",
        ".spec.parallelism",
        ".spec.selector",
        ".spec.template",
        *(".spec.selector" + p for p in _LABEL_SELECTOR),
    ),
    ("core", "v1", "Service"): (".spec.clusterIP",),
    ("core", "v1", "Secret"): (".type",),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding"): (".roleRef",),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"): (".roleRef",),
    ("core", "v1", "PersistentVolumeClaim"): (
        ".spec.accessModes",
        ".spec.selector",
        ".spec.storageClassName",
        ".spec.volumeName",
        *(".spec.selector" + p for p in _LABEL_SELECTOR),
    ),
}
# A forced server-side apply takes conflicting fields over instead of failing (provider/pkg/await/await.go
# patchForce; the PULUMI_K8S_ENABLE_PATCH_FORCE environment variable, which does the same, is not modelled).
PATCH_FORCE_ANNOTATION = "pulumi.com/patchForce"
RANDOM_TYPES = frozenset({"random:index/randomPassword:RandomPassword", "random:index/randomId:RandomId"})
# What pulumi-kubernetes waits for any operation without customTimeouts (await.go).
PROVIDER_TIMEOUT_SECONDS = 600.0
# A pod's terminationGracePeriodSeconds when its spec sets none (the API server's default).
DEFAULT_GRACE_SECONDS = 30
# The kinds whose delete `pulumi.com/skipAwait` leaves unawaited (overrides.go allowsSkipAwaitWithDelete).
SKIP_AWAIT_DELETE_KINDS = frozenset(
    {"Namespace", "Pod", "ReplicationController", "DaemonSet", "Deployment", "StatefulSet", "Job"}
)
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"
# Kinds whose pods a foreground delete waits for, and where their template is.
_POD_TEMPLATE_KINDS = frozenset({"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"})
_SINGLE_NODE_ACCESS_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})


@dataclass(frozen=True)
class Physical:
    """A Kubernetes object as the API server knows it: group, kind, namespace (empty when cluster-scoped), name."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Step:
    """What the engine decides for one URN. For a replacement `obj` is the new copy and `old_obj` the old one."""

    urn: str
    kind: StepKind
    name: str
    type: str
    old_urn: str = ""
    delete_before_replace: bool = False
    replace_paths: tuple[str, ...] = ()
    changed_paths: tuple[str, ...] = ()
    obj: Physical | None = None
    old_obj: Physical | None = None
    # A delete (or a replaced old copy) that only leaves the state: retainOnDelete, or a read object.
    retained: bool = False


@dataclass(frozen=True)
class Operation:
    """One thing `pulumi up` does, in order: to the cluster for Kubernetes objects, to the provider otherwise."""

    action: Action
    urn: str
    obj: Physical | None
    note: str = ""

    def __str__(self) -> str:
        target = str(self.obj) if self.obj else _label(self.urn)
        return f"{self.action} {target}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Plan:
    """The steps per URN (in the order `pulumi up` first acts on each), the operations in order, what would go
    wrong with live objects (`hazards`) and what makes `pulumi up` fail (`errors`)."""

    steps: tuple[Step, ...]
    operations: tuple[Operation, ...]
    hazards: tuple[str, ...]
    errors: tuple[str, ...]

    def step(self, key: str) -> Step:
        """The step for a URN (new, or the old one an alias matched) or for a logical name used by one step."""
        found = [s for s in self.steps if key in (s.urn, s.old_urn)] or [s for s in self.steps if s.name == key]
        if len(found) != 1:
            raise KeyError(f"{len(found)} steps match {key!r}: {[s.urn for s in found]}")
        return found[0]

    def kind_of(self, key: str) -> StepKind:
        return self.step(key).kind

    def of_kind(self, kind: StepKind) -> list[str]:
        """Logical names of the steps of one kind, in order."""
        return [s.name for s in self.steps if s.kind == kind]

    def created(self) -> list[str]:
        return self.of_kind("create")

    def updated(self) -> list[str]:
        return self.of_kind("update")

    def replaced(self) -> list[str]:
        return self.of_kind("replace")

    def deleted(self) -> list[str]:
        return self.of_kind("delete")


@dataclass
class _State:
    """One entry of the stack's state, as the engine keeps it."""

    urn: str
    type: str
    name: str
    custom: bool
    external: bool
    id: str
    inputs: Manifest
    parent: str
    dependencies: tuple[str, ...]
    property_dependencies: Mapping[str, tuple[str, ...]]
    protect: bool
    retain_on_delete: bool
    obj: Physical | None
    # The live object as the state last stored it (the provider's outputs); its inputs unless refreshed.
    outputs: Manifest = field(default_factory=dict)
    # customTimeouts.delete, or the provider's own limit.
    delete_timeout: float = PROVIDER_TIMEOUT_SECONDS

    def depends_on(self) -> set[str]:
        """Dependencies and property dependencies (GetAllDependencies without the parent)."""
        return {*self.dependencies, *(u for deps in self.property_dependencies.values() for u in deps)}


@dataclass(frozen=True)
class Diff:
    changed: tuple[PropertyPath, ...] = ()
    replace: tuple[PropertyPath, ...] = ()
    delete_before_replace: bool = False


# ----- property paths (sdk/go/common/resource/property_path.go) -----


def parse_path(text: str) -> PropertyPath:
    """A Pulumi property path: `a.b`, `a[0]`, `a["b.c"]`, with `*` (or `[*]`) matching any key or index."""
    parts: list[PathPart] = []
    key, i = "", 0
    while i < len(text):
        char = text[i]
        if char == "." or char == "[":
            if key:
                parts.append(key)
            key = ""
            if char == "[":
                if text.startswith('["', i):
                    end = text.index('"]', i + 2)
                    parts.append(text[i + 2 : end].replace('\\"', '"'))
                    i = end + 2
                    continue
                end = text.index("]", i)
                inner = text[i + 1 : end]
                parts.append(WILDCARD if inner == WILDCARD else int(inner))
                i = end + 1
                continue
        else:
            key += char
        i += 1
    if key:
        parts.append(key)
    return tuple(parts)


def format_path(path: PropertyPath) -> str:
    """The provider's rendering of a diff path (provider.go addPatchValueToDiff)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif any(c in part for c in '."[]'):
            text += '["{}"]'.format(part.replace('"', '\\"'))
        else:
            text += f".{part}" if text else part
    return text


def contains(prefix: PropertyPath, path: PropertyPath) -> bool:
    """PropertyPath.Contains: `prefix` names `path` or one of its parents; `*` matches any key or index."""
    return len(path) >= len(prefix) and all(p in (WILDCARD, q) for p, q in zip(prefix, path, strict=False))


def _force_new_pattern(jsonpath: str) -> PropertyPath:
    """A forceNew JSONPath of diff.go (`.spec.containers[*].image`) as a property path."""
    return tuple(WILDCARD if part == "[*]" else part for part in jsonpath.replace("[*]", ".[*]").strip(".").split("."))


# ----- values -----


def _strip_nulls(value: Any) -> Any:
    """The provider unmarshals inputs with SkipNulls: a null is the same as a missing key."""
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _same_value(a: Any, b: Any) -> bool:
    """Go's reflect.DeepEqual, or equal numbers of different types (provider.go equalNumbers)."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return type(a) is type(b) and bool(a == b)


def _diff_paths(old: Any, new: Any, path: PropertyPath = ()) -> Iterator[tuple[PropertyPath, Any]]:
    """The leaves of the provider's detailed diff with the new value at each (None for a delete): maps and lists
    are compared key by key and element by element (provider.go addPatchMapToDiff, addPatchArrayToDiff)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            if key not in new:
                yield (*path, key), None
            elif key not in old:
                yield (*path, key), new[key]
            else:
                yield from _diff_paths(old[key], new[key], (*path, key))
    elif isinstance(old, list) and isinstance(new, list):
        for index in range(max(len(old), len(new))):
            if index >= len(new):
                yield (*path, index), None
            elif index >= len(old):
                yield (*path, index), new[index]
            else:
                yield from _diff_paths(old[index], new[index], (*path, index))
    elif not _same_value(old, new):
        yield path, new


def _patch_slice(path: PropertyPath, value: Any) -> Any:
    """provider.go makePatchSlice: the changed value nested under its path, for the forceNew JSONPath lookup."""
    if not path:
        return value
    inner = _patch_slice(path[1:], value)
    return [inner] if isinstance(path[0], int) else {path[0]: inner}


def _found(value: Any, pattern: PropertyPath) -> bool:
    """Whether the JSONPath `pattern` finds something in `value` (openapi.PatchPropertiesChanged)."""
    if not pattern:
        return True
    head, rest = pattern[0], pattern[1:]
    if head == WILDCARD:
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
        return any(_found(item, rest) for item in items)
    return isinstance(value, dict) and head in value and _found(value[head], rest)


def _reset(path: PropertyPath, old: Any, new: Any) -> bool:
    """PropertyPath.Reset (sdk/go/common/resource/property_path.go), in place: put back in `new` the value `old`
    has at `path`, or delete it from `new` if `old` has none. False is a path error: an element above the leaf
    that only one side has, or an index only one list has. (None stands for a missing value.)"""
    key, rest = path[0], path[1:]
    if isinstance(key, int):
        old_list, new_list = isinstance(old, list), isinstance(new, list)
        if not (old_list and new_list):
            return not old_list and not new_list
        if not rest:
            if key >= len(old) and key >= len(new):
                return True
            if key >= len(old) or key >= len(new):
                return False
            new[key] = old[key]
            return True
        return key < len(old) and key < len(new) and _reset(rest, old[key], new[key])
    if key == WILDCARD:
        if not rest:
            if isinstance(new, dict) and isinstance(old, dict):
                new.clear()
                new.update(old)
            elif isinstance(new, list) and isinstance(old, list):
                if len(old) != len(new):
                    return False
                new[:] = old
            return isinstance(new, (dict, list))
        if isinstance(old, dict) and isinstance(new, dict):
            return all(k in new and _reset(rest, old[k], new[k]) for k in old)
        if isinstance(old, list) and isinstance(new, list):
            return len(old) == len(new) and all(_reset(rest, o, n) for o, n in zip(old, new, strict=True))
        return False
    if not rest:
        if isinstance(old, dict) and key in old:
            if not isinstance(new, dict):
                return False
            new[key] = old[key]
        elif isinstance(new, dict):
            new.pop(key, None)
        return True
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return not isinstance(old, dict) and not isinstance(new, dict)
    if key not in new:
        return key not in old
    return _reset(rest, old.get(key), new[key])


# ----- Kubernetes identity -----


def _gvk(type_token: str) -> tuple[str, str, str]:
    """(group, version, kind) of a pulumi-kubernetes type token; the core group is "core"."""
    _, module, kind = type_token.split(":")
    group, _, version = module.rpartition("/")
    return group, version, kind


def _is_kubernetes(type_token: str) -> bool:
    return type_token.startswith("kubernetes:")


def _namespace(kind: str, manifest: Mapping[str, Any]) -> str:
    """The object's namespace as the provider's Diff canonicalises it: "default" when unset, none when
    cluster-scoped."""
    if kind in CLUSTER_SCOPED_KINDS:
        return ""
    return str((manifest.get("metadata") or {}).get("namespace") or "default")


def _physical(registration_type: str, manifest: Mapping[str, Any], read_id: str = "") -> Physical | None:
    if not _is_kubernetes(registration_type):
        return None
    group, _, kind = _gvk(registration_type)
    group = "" if group == "core" else group
    if read_id:
        namespace, _, name = read_id.rpartition("/")
        return Physical(group, kind, "" if kind in CLUSTER_SCOPED_KINDS else namespace or "default", name)
    return Physical(group, kind, _namespace(kind, manifest), str((manifest.get("metadata") or {}).get("name", "")))


def _annotation(manifest: Mapping[str, Any], key: str) -> bool:
    """metadata.IsAnnotationTrue (provider/pkg/metadata/annotations.go)."""
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(key) == "true")


def _autonamed(manifest: Mapping[str, Any]) -> bool:
    return _annotation(manifest, AUTONAMED_ANNOTATION)


def _with_name(manifest: Manifest, name: str) -> Manifest:
    return {**manifest, "metadata": {**manifest["metadata"], "name": name}}


def _label(urn: str) -> str:
    """A short, readable name for a URN: its type's last part and its logical name."""
    return f"{urn.split('::')[2].split('$')[-1].split(':')[-1]} {urn.split('::')[-1]}"


def _state(registration: Registration) -> _State:
    return _State(
        urn=registration.urn,
        type=registration.type,
        name=registration.name,
        custom=registration.custom,
        external=registration.read,
        id=registration.id,
        inputs=registration.inputs,
        parent=registration.parent,
        dependencies=registration.dependencies,
        property_dependencies=registration.property_dependencies,
        protect=registration.options.protect,
        retain_on_delete=registration.options.retain_on_delete,
        obj=_physical(registration.type, registration.inputs, registration.id if registration.read else ""),
        outputs=registration.inputs,
        delete_timeout=duration_seconds(registration.options.custom_timeouts.get("delete", "")),
    )


def duration_seconds(text: str) -> float:
    """A custom timeout as the engine passes it on (Go's time.ParseDuration: `735s`, `20m`, `1h30m`), or the
    provider's own limit when none is set."""
    if not text:
        return PROVIDER_TIMEOUT_SECONDS
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(h|ms|m|s)", text)
    if "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def prune(live: Any, inputs: Any) -> Any:
    """pulumi-kubernetes' pruneMap and pruneSlice (provider/pkg/provider/util.go): the live object cut down to the
    keys (and list elements) of the inputs, whatever the cluster added besides them."""
    if isinstance(live, dict) and isinstance(inputs, dict):
        return {key: prune(value, inputs[key]) for key, value in live.items() if key in inputs}
    if isinstance(live, list) and isinstance(inputs, list):
        if not live or not inputs:
            return []
        if type(live[0]) is not type(inputs[0]):
            return copy.deepcopy(live)
        return [prune(value, target) for value, target in zip(live, inputs, strict=False)]
    return live


def pod_grace_seconds(manifest: Mapping[str, Any]) -> float:
    """How long the pods of a workload may take to stop once deleted (their grace period); 0 for other kinds."""
    if manifest.get("kind") not in _POD_TEMPLATE_KINDS:
        return 0.0
    spec = manifest.get("spec", {}).get("template", {}).get("spec", {})
    return float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))


def claims_mounted(manifest: Mapping[str, Any]) -> set[str]:
    """The PersistentVolumeClaims a workload's pods mount, by name."""
    if manifest.get("kind") not in _POD_TEMPLATE_KINDS:
        return set()
    volumes = manifest.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])
    return {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}


# ----- the engine -----


def force_new(
    type_token: str, inputs: Mapping[str, Any], enable_secret_mutable: bool, enable_config_map_mutable: bool
) -> list[PropertyPath]:
    """kubeProvider.forceNewProperties (diff.go): name and namespace always; per kind, the table; Secret data
    and ConfigMap data unless the provider makes them mutable and the object is not `immutable`."""
    group, version, kind = _gvk(type_token)
    paths = [".metadata.name", ".metadata.namespace", *FORCE_NEW.get((group, version, kind), ())]
    immutable = inputs.get("immutable") is True
    if kind == "Secret" and (not enable_secret_mutable or immutable):
        paths += [".stringData", ".data"]
    if kind == "ConfigMap" and (not enable_config_map_mutable or immutable):
        paths += [".binaryData", ".data"]
    return [_force_new_pattern(p) for p in paths]


def kubernetes_diff(
    type_token: str,
    old_inputs: Manifest,
    new_inputs: Manifest,
    *,
    enable_secret_mutable: bool = False,
    enable_config_map_mutable: bool = False,
    ignore_changes: Sequence[str] = (),
) -> Diff:
    """pulumi-kubernetes' Diff of one object's old state (its last live object pruned to its old inputs, or the old
    inputs themselves) and new inputs: what changed (less what `ignore_changes` covers), what forces a replacement,
    and whether that replacement must delete first (a user-set name that stays: the new object would collide)."""
    kind = _gvk(type_token)[2]
    old_manifest, new_manifest = _strip_nulls(old_inputs), _strip_nulls(new_inputs)
    for manifest in (old_manifest, new_manifest):
        if kind in CLUSTER_SCOPED_KINDS:
            manifest.get("metadata", {}).pop("namespace", None)
        else:
            manifest.setdefault("metadata", {})["namespace"] = _namespace(kind, manifest)
    forcing = force_new(type_token, new_manifest, enable_secret_mutable, enable_config_map_mutable)
    changed: list[PropertyPath] = []
    replace_paths: list[PropertyPath] = []
    ignored = [parse_path(text) for text in ignore_changes]
    for path, value in _diff_paths(old_manifest, new_manifest):
        if any(contains(prefix, path) for prefix in ignored):
            continue
        changed.append(path)
        if any(_found(_patch_slice(path, value), p) for p in forcing) or (path == ("metadata",) and value is None):
            replace_paths.append(path)
    old_metadata, new_metadata = old_manifest.get("metadata", {}), new_manifest.get("metadata", {})
    same_identity = all(old_metadata.get(key) == new_metadata.get(key) for key in ("name", "namespace"))
    dbr = bool(replace_paths) and not _autonamed(new_manifest) and same_identity
    return Diff(tuple(changed), tuple(replace_paths), dbr)


def type_token(manifest: Mapping[str, Any]) -> str:
    """The pulumi-kubernetes type token of a manifest (`apps/v1` Deployment -> kubernetes:apps/v1:Deployment)."""
    group, _, version = str(manifest["apiVersion"]).rpartition("/")
    return f"kubernetes:{group or 'core'}/{version}:{manifest['kind']}"


# The engine's (and the provider protocol's) stand-in for a value not known before the update runs.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


@dataclass
class _Engine:
    olds: list[_State]
    enable_config_map_mutable: bool
    enable_secret_mutable: bool
    urns: set[str] = field(default_factory=set)
    aliased: dict[str, str] = field(default_factory=dict)  # old URN -> the new URN that claimed it
    alias_of: dict[str, str] = field(default_factory=dict)  # new URN -> the old URN it matched through an alias
    handled: set[str] = field(default_factory=set)  # old URNs kept, updated, replaced or read: not deleted at the end
    deleted_early: set[str] = field(default_factory=set)  # old URNs deleted before a delete-before-replace
    pending: list[_State] = field(default_factory=list)  # replaced old copies, deleted at the end
    news: list[_State] = field(default_factory=list)
    steps: dict[str, Step] = field(default_factory=dict)
    operations: list[Operation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # URN -> (old name, new name) of an auto-named object replaced under a fresh name: an output that changed.
    renamed: dict[str, tuple[str, str]] = field(default_factory=dict)
    by_urn: dict[str, _State] = field(init=False)

    def __post_init__(self) -> None:
        self.by_urn = {s.urn: s for s in self.olds}

    # -- aliases (step_generator.go) --

    def _collapse(self, registration: Registration, spec: Alias) -> str:
        """collapseAliasToUrn: an alias spec's empty fields take the resource's own values."""
        if spec.urn:
            return str(spec.urn)
        stack, project = registration.urn.split("::")[0].removeprefix("urn:pulumi:"), registration.urn.split("::")[1]
        parent = spec.parent_urn or registration.parent
        if spec.parent_urn and spec.parent_urn in self.alias_of:
            parent = self.alias_of[spec.parent_urn]
        if spec.no_parent or (parent and parent.split("::")[2] == "pulumi:pulumi:Stack"):
            parent = ""
        type_token = spec.type or registration.type
        prefix = (
            f"{parent.rsplit('::', 1)[0]}$"
            if parent
            else f"urn:pulumi:{spec.stack or stack}::{spec.project or project}::"
        )
        return f"{prefix}{type_token}::{spec.name or registration.name}"

    def _aliases(self, registration: Registration) -> list[str]:
        """generateAliases: the resource's own aliases, then those inherited from a parent that matched an alias
        (inheritedChildAlias renames a child whose name starts with its parent's name)."""
        found = [self._collapse(registration, a) for a in registration.options.aliases]
        parent_alias = self.alias_of.get(registration.parent)
        if parent_alias:
            parent_name = registration.parent.split("::")[-1]

            def inherited(child_type: str, child_name: str) -> str:
                name = child_name
                if child_name.startswith(parent_name):
                    name = parent_alias.split("::")[-1] + child_name[len(parent_name) :]
                return f"{parent_alias.rsplit('::', 1)[0]}${child_type}::{name}"

            found.append(inherited(registration.type, registration.name))
            for alias in list(found[: len(registration.options.aliases)]):
                found.append(inherited(alias.split("::")[2].split("$")[-1], alias.split("::")[-1]))
        return list(dict.fromkeys(found))

    # -- recording --

    def _record(self, step: Step) -> None:
        self.steps[step.urn] = step

    def _operate(self, action: Action, urn: str, obj: Physical | None, note: str = "") -> None:
        self.operations.append(Operation(action, urn, obj, note))

    # -- the provider's Check and Diff --

    def _fresh_name(self, registration: Registration, inputs: Manifest, seed: str) -> Manifest:
        """A new auto-name: the provider draws it at random, so it never matches a name in the state."""
        if not _is_kubernetes(registration.type) or not _autonamed(inputs):
            return inputs
        taken = {s.obj.name for s in self.olds if s.obj}
        name = inputs["metadata"]["name"] if not seed else auto_name(registration.name, seed)
        while name in taken:
            seed += "'"
            name = auto_name(registration.name, seed)
        return _with_name(inputs, name)

    def _provider_diff(self, registration: Registration, old: _State, inputs: Manifest) -> Diff:
        """The provider's Diff of the old inputs against the new ones, whose ignored values the engine has already
        put back (so the provider's own removal of ignored paths from its diff has nothing left to remove)."""
        if registration.type in RANDOM_TYPES:
            paths = tuple(p for p, _ in _diff_paths(old.inputs, inputs))
            return Diff(changed=paths, replace=paths)
        if not registration.custom or not _is_kubernetes(registration.type):
            # Components (no provider: any difference is an update) and other providers, modelled as updating.
            return Diff(changed=tuple(p for p, _ in _diff_paths(old.inputs, inputs)))
        return kubernetes_diff(
            registration.type,
            prune(old.outputs, old.inputs),
            inputs,
            enable_secret_mutable=self.enable_secret_mutable,
            enable_config_map_mutable=self.enable_config_map_mutable,
            ignore_changes=registration.options.ignore_changes,
        )

    def _requires_replacement(self, dependent: _State, replace_set: set[str]) -> bool:
        """calculateDependentReplacements' requiresReplacement: a custom, managed dependent whose inputs come from a
        resource being replaced, if the provider would replace it with those inputs unknown. Modelled as: an
        unknown input changes every force-new field under it (for Kubernetes, `metadata` always holds name and
        namespace); pulumi-random replaces on any input."""
        if not dependent.custom or dependent.external:
            return False
        keys = {k for k, deps in dependent.property_dependencies.items() if replace_set & set(deps)}
        if not keys:
            return False
        if dependent.type in RANDOM_TYPES:
            return True
        if not _is_kubernetes(dependent.type):
            return False
        roots = {
            p[0]
            for p in force_new(
                dependent.type, dependent.inputs, self.enable_secret_mutable, self.enable_config_map_mutable
            )
        }
        return bool(keys & {str(r) for r in roots})

    def _dependent_replacements(self, root: _State) -> list[_State]:
        """The old resources that depend on `root` (DependingOn without children, skipping URNs already
        registered) and would be replaced with it, in dependency order."""
        index = self.olds.index(root)
        dependent_urns, dependents = {root.urn}, []
        for candidate in self.olds[index + 1 :]:
            if candidate.urn not in self.urns and candidate.depends_on() & dependent_urns:
                dependents.append(candidate)
                dependent_urns.add(candidate.urn)
        replace_set, result = {root.urn}, []
        for dependent in dependents:
            if self._requires_replacement(dependent, replace_set):
                result.append(dependent)
                replace_set.add(dependent.urn)
        return result

    # -- steps --

    def register(self, registration: Registration) -> None:
        if registration.read:
            self._read(registration)
        else:
            self._managed(registration)

    def _read(self, registration: Registration) -> None:
        """GenerateReadSteps: only the aliases a renamed parent passes on (a read sends none of its own); a managed
        old entry with another ID is replaced (deleted at the end)."""
        urn = registration.urn
        old = self._match(registration)
        self.urns.add(urn)
        new = _state(registration)
        self.news.append(new)
        base = Step(urn, "read", registration.name, registration.type, obj=new.obj)
        if old and not old.external and old.id != registration.id:
            self.handled.add(old.urn)
            self.pending.append(old)
            self._record(replace(base, kind="read-replace", old_urn=old.urn, old_obj=old.obj))
            self._operate("read", urn, new.obj)
            return
        if old:
            self.handled.add(old.urn)
        if old and not old.external:
            self._record(replace(base, kind="relinquish", old_urn=old.urn, old_obj=old.obj))
            self._operate("release", old.urn, old.obj, "relinquished: not deleted, no longer managed")
            self._operate("read", urn, new.obj)
            return
        self._record(replace(base, old_urn=old.urn if old else ""))
        self._operate("read", urn, new.obj)

    def _match(self, registration: Registration) -> _State | None:
        urn = registration.urn
        if urn in self.aliased:
            self.errors.append(f"{_label(urn)}: its URN was already claimed as an alias by {_label(self.aliased[urn])}")
        for candidate in [urn, *self._aliases(registration)]:
            old = self.by_urn.get(candidate)
            if old is None:
                continue
            if candidate != urn:
                if candidate in self.urns or candidate in self.aliased:
                    self.errors.append(f"{_label(urn)}: alias {candidate} is claimed twice")
                self.aliased[candidate] = urn
                self.alias_of[urn] = candidate
            return old
        return None

    def _managed(self, registration: Registration) -> None:
        urn = registration.urn
        old = self._match(registration)
        self.urns.add(urn)
        recreating = urn in self.deleted_early
        inputs = self._with_new_names(registration)
        if old is not None:
            self.handled.add(old.urn)
            inputs = self._ignore_changes(registration, old, inputs)
        kubernetes = _is_kubernetes(registration.type) and registration.custom
        if kubernetes and old and not recreating and not old.external and _autonamed(inputs) and _autonamed(old.inputs):
            inputs = _with_name(inputs, old.inputs["metadata"]["name"])  # AdoptOldAutonameIfUnnamed
        elif old is None or old.external:
            inputs = self._fresh_name(registration, inputs, seed="")
        new = replace(_state(registration), inputs=inputs, obj=_physical(registration.type, inputs))
        base = Step(urn, "create", registration.name, registration.type, old_urn=old.urn if old else "", obj=new.obj)

        if old is None:
            self._record(base)
            self._operate("create", urn, new.obj)
        elif recreating:
            new = self._renamed(registration, new, old)
            self._record(replace(base, kind="replace", delete_before_replace=True, obj=new.obj, old_obj=old.obj))
            self._operate("create", urn, new.obj, "replacement, its old copy was deleted first")
        elif old.external:
            self.pending.append(old)
            self._record(replace(base, kind="adopt", old_obj=old.obj))
            self._operate("create", urn, new.obj, "takes over the object it used to read")
        else:
            new = self._diffed(registration, old, new, base)
        self.news.append(new)

    def _with_new_names(self, registration: Registration) -> Manifest:
        """The inputs as the engine sees them in its preview: where one comes from an auto-named object that is
        replaced under a fresh name (`metadata.name` of a claim, say), it is that new name (the mocks' names are
        deterministic, so a render alone would carry the old one); an input computed from such a name (a digest)
        is unknown, as it is until the replacement exists."""
        renamed_urns = [urn for urn in registration.dependencies if urn in self.renamed]
        if not renamed_urns:
            return registration.inputs
        renames = dict(self.renamed[urn] for urn in renamed_urns)

        def renamed(value: Any) -> Any:
            if isinstance(value, str):
                return renames.get(value, value)
            if isinstance(value, dict):
                return {key: renamed(item) for key, item in value.items()}
            if isinstance(value, list):
                return [renamed(item) for item in value]
            return value

        def unknown(value: Any) -> Any:
            if isinstance(value, dict):
                return {key: unknown(item) for key, item in value.items()}
            if isinstance(value, list):
                return [unknown(item) for item in value]
            return UNKNOWN

        inputs: Manifest = renamed(registration.inputs)
        for key, sources in registration.property_dependencies.items():
            # Which of its values came from the name cannot be told: every one of them may change.
            if set(sources) & set(renamed_urns) and inputs.get(key) == registration.inputs.get(key):
                inputs[key] = unknown(inputs[key])
        return inputs

    def _ignore_changes(self, registration: Registration, old: _State, inputs: Manifest) -> Manifest:
        """processIgnoreChanges: the ignored inputs take their old values; a path that cannot be reset fails
        `pulumi up`."""
        reset = copy.deepcopy(inputs)
        missing = [p for p in registration.options.ignore_changes if not _reset(parse_path(p), old.inputs, reset)]
        if missing:
            self.errors.append(
                f"{_label(registration.urn)}: cannot ignore changes to {', '.join(missing)}: one or more elements of "
                "the path are missing"
            )
        return reset

    def _renamed(self, registration: Registration, new: _State, old: _State) -> _State:
        """A replacement re-runs Check without the old inputs: an auto-named object gets a fresh name."""
        if not _autonamed(new.inputs):
            return new
        inputs = self._fresh_name(registration, new.inputs, seed=f"{registration.urn} replacing {old.id}")
        return replace(new, inputs=inputs, obj=_physical(registration.type, inputs))

    def _diffed(self, registration: Registration, old: _State, new: _State, base: Step) -> _State:
        if _is_kubernetes(registration.type) and _gvk(old.type)[2] != _gvk(registration.type)[2]:
            was, now = _gvk(old.type)[2], _gvk(registration.type)[2]
            self.errors.append(
                f"{_label(registration.urn)}: an alias turns a {was} into a {now}; the provider diffs that as an "
                "in-place update of an object that does not exist"
            )
        diff = self._provider_diff(registration, old, new.inputs)
        rocs = [parse_path(p) for p in registration.options.replace_on_changes]
        replace_paths = [*diff.replace, *(p for p in diff.changed if any(contains(r, p) for r in rocs))]
        changed = tuple(format_path(p) for p in diff.changed)
        if not diff.changed:
            self._record(replace(base, kind="same", old_obj=old.obj))
            return new
        if not replace_paths:
            self._record(replace(base, kind="update", changed_paths=changed, old_obj=old.obj))
            self._operate("update", registration.urn, new.obj)
            return new
        if registration.options.protect and old.protect:
            self.errors.append(f"{_label(registration.urn)}: cannot be replaced, it is protected")
        dbr = diff.delete_before_replace
        if registration.options.delete_before_replace is not None:
            dbr = registration.options.delete_before_replace
        new = self._renamed(registration, new, old)
        if old.obj and new.obj and old.obj.name != new.obj.name and _autonamed(new.inputs):
            self.renamed[registration.urn] = (old.obj.name, new.obj.name)
        step = replace(
            base,
            kind="replace",
            delete_before_replace=dbr,
            replace_paths=tuple(dict.fromkeys(format_path(p) for p in replace_paths)),
            changed_paths=changed,
            obj=new.obj,
            old_obj=old.obj,
            retained=old.retain_on_delete,
        )
        if dbr:
            for dependent in reversed(self._dependent_replacements(old)):
                if dependent.urn in self.deleted_early:
                    continue
                self.deleted_early.add(dependent.urn)
                self._delete_step(dependent, "replaced")
                self._delete(dependent, f"before replacing {_label(registration.urn)}, which it depends on")
            self._record(step)
            self._delete(old, "delete-before-replace")
            self._operate("create", registration.urn, new.obj, "replacement")
        else:
            self._record(step)
            self._operate("create", registration.urn, new.obj, "replacement, create-before-delete")
            self.pending.append(old)
        return new

    def _delete_step(self, old: _State, verb: str) -> None:
        """A delete step for an old resource (a protected one is an error: the engine refuses it)."""
        if old.protect:
            self.errors.append(f"{_label(old.urn)}: cannot be {verb}, it is protected")
        retained = old.external or old.retain_on_delete
        self._record(Step(old.urn, "delete", old.name, old.type, old_urn=old.urn, old_obj=old.obj, retained=retained))

    def _delete(self, old: _State, note: str) -> None:
        if old.external or old.retain_on_delete:
            why = "read, never managed" if old.external else "retainOnDelete"
            self._operate("release", old.urn, old.obj, f"{note}; {why}: the object stays")
        elif old.custom:
            self._check_delete_wait(old)
            self._operate("delete", old.urn, old.obj, note)

    def _check_delete_wait(self, old: _State) -> None:
        """A foreground delete waits for the object's pods (a Namespace's: every pod in it), each of which may take
        its grace period to stop: the provider's limit (the old state's customTimeouts.delete) must be longer,
        unless skipAwait leaves the delete unawaited."""
        if old.obj is None or not _is_kubernetes(old.type):
            return
        if old.obj.kind in SKIP_AWAIT_DELETE_KINDS and _annotation(old.inputs, SKIP_AWAIT_ANNOTATION):
            return
        if old.obj.kind == "Namespace" and not old.obj.group:
            inside = [s for s in self.olds if s.obj and s.obj.namespace == old.obj.name and not s.external]
            grace = max((pod_grace_seconds(s.inputs) for s in inside), default=0.0)
        else:
            grace = pod_grace_seconds(old.inputs)
        if grace and old.delete_timeout <= grace:
            self.errors.append(
                f"deleting {_label(old.urn)} fails after {old.delete_timeout:g} s: the provider deletes in the "
                f"foreground and waits for pods that may take {grace:g} s to stop (their grace period); its "
                "customTimeouts.delete must be longer"
            )

    # -- deletes at the end (GenerateDeletes, ScheduleDeletes) --

    def finish(self) -> None:
        gone = [s for s in self.olds if s.urn not in self.handled and s.urn not in self.deleted_early]
        replaced = {id(s) for s in self.pending}
        for old in schedule_deletes(self.olds, [*gone, *self.pending]):
            if id(old) in replaced:
                self._delete(old, "old copy of a replacement")
                continue
            self._delete_step(old, "deleted")
            self._delete(old, "left the program")


def _dependencies_of(state: _State, before: Sequence[_State]) -> set[int]:
    """DependencyGraph.DependenciesOf: the earlier entries it depends on, its parent, and every earlier child of a
    component it depends on. Entries are told apart by identity: a URN can be both an old copy and a new one."""
    depends = state.depends_on()
    found = {id(s) for s in before if s.urn in depends or s.urn == state.parent}
    components = {s.urn for s in before if s.urn in depends and not s.custom}
    while components:
        children = [s for s in before if s.parent in components and id(s) not in found]
        found.update(id(s) for s in children)
        components = {s.urn for s in children if not s.custom}
    return found


def schedule_deletes(states: Sequence[_State], condemned: Iterable[_State]) -> list[_State]:
    """ScheduleDeletes: peel off, round by round, the condemned entries none of whose dependencies is still
    condemned, then reverse the rounds, so dependents and children go before what they depend on. Within a
    round (which the engine runs in parallel) later entries come first."""
    order = {id(s): i for i, s in enumerate(states)}
    remaining = {id(s): s for s in condemned}
    dependencies = {key: _dependencies_of(s, states[: order[key]]) for key, s in remaining.items()}
    rounds: list[list[_State]] = []
    while remaining:
        free = [s for key, s in remaining.items() if not dependencies[key] & remaining.keys()]
        rounds.append(sorted(free, key=lambda s: -order[id(s)]))
        for s in free:
            del remaining[id(s)]
    return [s for chunk in reversed(rounds) for s in chunk]


# ----- what happens to live objects -----


def _conflicts(applied: Any, owned: Any, path: PropertyPath = ()) -> Iterator[PropertyPath]:
    """Fields a server-side apply without force would conflict on: set by both with different values. Lists of
    objects with a `name` merge by name (Kubernetes' associative lists); other lists are atomic."""
    if isinstance(applied, dict) and isinstance(owned, dict):
        for key in applied.keys() & owned.keys():
            if path or key not in ("apiVersion", "kind"):
                yield from _conflicts(applied[key], owned[key], (*path, key))
    elif (
        isinstance(applied, list)
        and isinstance(owned, list)
        and all(isinstance(i, dict) and "name" in i for i in [*applied, *owned])
    ):
        by_name = {i["name"]: i for i in owned}
        for item in applied:
            if item["name"] in by_name:
                yield from _conflicts(item, by_name[item["name"]], (*path, item["name"]))
    elif not _same_value(_strip_nulls(applied), _strip_nulls(owned)):
        yield path


@dataclass(frozen=True)
class _Loss:
    """A live object that went away while someone other than the deleting entry held it."""

    obj: Physical
    by: str
    deleted: Physical
    holder: tuple[str, str]


Holder = tuple[str, str]


@dataclass
class _Cluster:
    """The live objects and who holds each: a holder is (URN, "old" | "new"); reads hold objects too. `current` is
    each holder's manifest as it is live now (its old one until it is updated)."""

    manifests: dict[Holder, Manifest]
    external: set[Holder]
    upsert: bool
    live: dict[Physical, list[Holder]] = field(default_factory=dict)
    current: dict[Holder, Manifest] = field(default_factory=dict)
    losses: list[_Loss] = field(default_factory=list)
    hazards: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def create(self, urn: str, obj: Physical) -> None:
        holders = self.live.setdefault(obj, [])
        if holders and not self.upsert:
            whose = ", ".join("its own old copy" if h[0] == urn else _label(h[0]) for h in holders)
            self.errors.append(
                f"creating {_label(urn)} fails: {obj} already exists (held by {whose}): pulumi-kubernetes creates "
                "client-side, and the API server answers AlreadyExists (upsertExistingObjects, or "
                "PULUMI_K8S_UPSERT_EXISTING_OBJECTS=true, makes it a server-side apply)"
            )
        for holder in holders if self.upsert else []:
            if holder[0] == urn and holder in self.external:
                continue  # a read of this URN becoming managed: the intended takeover
            whose = "its own old copy" if holder[0] == urn else _label(holder[0])
            self.hazards.append(
                f"creating {_label(urn)} finds {obj} already live, held by {whose}: with upsertExistingObjects "
                "server-side apply upserts, so it adopts that object instead of failing"
            )
            if holder not in self.manifests:
                continue
            applied, owned = self.manifests[(urn, "new")], self.manifests[holder]
            fields = ", ".join(sorted({format_path(p) for p in _conflicts(applied, owned)}))
            if fields and _annotation(applied, PATCH_FORCE_ANNOTATION):
                self.hazards.append(f"creating {_label(urn)} forces its values over {whose}'s on {fields}")
            elif fields:
                self.errors.append(f"creating {_label(urn)} fails: server-side apply conflict with {whose} on {fields}")
        holders.append((urn, "new"))
        self.changed((urn, "new"))

    def changed(self, holder: Holder) -> None:
        """A workload was created or updated: its pods now mount what its new manifest says. Two workloads whose
        pods mount one ReadWriteOnce claim at once fail on any cluster of more than one node (the second pod's
        volume cannot attach: "Multi-Attach error") and, on one node, run two programs on one volume's files."""
        if holder in self.manifests:
            self.current[holder] = self.manifests[holder]
        manifest = self.current.get(holder, {})
        mounted = claims_mounted(manifest)
        if not mounted:
            return
        namespace = _namespace(manifest.get("kind", ""), manifest)
        for other, other_manifest in self.current.items():
            if other == holder or not any(other in holders for holders in self.live.values()):
                continue
            if _namespace(other_manifest.get("kind", ""), other_manifest) != namespace:
                continue
            for claim in sorted(mounted & claims_mounted(other_manifest)):
                if self._single_node_claim(namespace, claim):
                    whose = "its own old copy" if other[0] == holder[0] else _label(other[0])
                    self.hazards.append(
                        f"{_label(holder[0])} and {whose} both mount the single-node claim "
                        f"{namespace}/{claim} at once: the second pod's volume cannot attach on another node "
                        "(Multi-Attach error), or two programs share its files on one"
                    )

    def _single_node_claim(self, namespace: str, name: str) -> bool:
        """Whether a claim of this stack's is ReadWriteOnce (or ReadWriteOncePod): attached to one node at a time."""
        return any(
            manifest.get("kind") == "PersistentVolumeClaim"
            and _namespace("PersistentVolumeClaim", manifest) == namespace
            and (manifest.get("metadata") or {}).get("name") == name
            and set(manifest.get("spec", {}).get("accessModes", [])) & _SINGLE_NODE_ACCESS_MODES
            for manifest in self.manifests.values()
        )

    def delete(self, urn: str, obj: Physical) -> None:
        """Kubernetes deletes the object whoever holds it; a Namespace takes everything in it along."""
        self.losses += [_Loss(obj, urn, obj, h) for h in self.live.pop(obj, []) if h != (urn, "old")]
        if obj.kind == "Namespace" and not obj.group:
            for inner in [o for o in self.live if o.namespace == obj.name]:
                self.losses += [_Loss(inner, urn, obj, h) for h in self.live.pop(inner)]

    def release(self, urn: str, obj: Physical) -> None:
        if (urn, "old") in self.live.get(obj, []):
            self.live[obj].remove((urn, "old"))

    def read(self, urn: str, obj: Physical) -> None:
        self.live.setdefault(obj, []).append((urn, "new"))

    def report(self, survivors: set[tuple[str, str]]) -> None:
        """A loss matters when its holder is still in the stack after `pulumi up`."""
        for loss in self.losses:
            if loss.holder not in survivors:
                continue
            whose = "its replacement" if loss.holder[0] == loss.by else _label(loss.holder[0])
            via = "" if loss.obj == loss.deleted else f" and with it {loss.obj}"
            self.hazards.append(
                f"deleting {_label(loss.by)} removes {loss.deleted}{via}, which {whose} still holds after up"
            )


def _simulate(engine: _Engine, upsert: bool) -> tuple[list[str], list[str]]:
    """Play the operations against the live objects of the old state."""
    manifests = {(s.urn, "old"): s.inputs for s in engine.olds if s.obj and not s.external}
    manifests.update({(s.urn, "new"): s.inputs for s in engine.news if s.obj and not s.external})
    external = {(s.urn, "old") for s in engine.olds if s.external} | {(s.urn, "new") for s in engine.news if s.external}
    cluster = _Cluster(manifests, external, upsert)
    # An object that stays under its (possibly aliased) URN is the new entry's from the start.
    continuing = {s.old_urn: s.urn for s in engine.steps.values() if s.old_urn and s.kind in ("same", "update", "read")}
    for old in engine.olds:
        if old.obj:
            holder = (continuing[old.urn], "new") if old.urn in continuing else (old.urn, "old")
            cluster.live.setdefault(old.obj, []).append(holder)
            if not old.external:
                cluster.current[holder] = old.inputs
    for op in engine.operations:
        if op.obj is None:
            continue
        if op.action == "create":
            cluster.create(op.urn, op.obj)
        elif op.action == "update":
            cluster.changed((op.urn, "new"))
        elif op.action == "delete":
            cluster.delete(op.urn, op.obj)
        elif op.action == "release":
            cluster.release(op.urn, op.obj)
        elif op.action == "read":
            cluster.read(op.urn, op.obj)
    cluster.report({(s.urn, "new") for s in engine.news if s.obj})
    return list(dict.fromkeys(cluster.hazards)), list(dict.fromkeys(cluster.errors))


def plan(
    before: Rendered | None,
    after: Rendered | None,
    *,
    enable_config_map_mutable: bool = False,
    enable_secret_mutable: bool = False,
    upsert_existing_objects: bool = False,
    refreshed_from: Mapping[Physical, Manifest] | None = None,
) -> Plan:
    """What `pulumi up` (or, with `after=None`, `pulumi destroy`) does to a stack deployed as `before`. The flags
    are the kubernetes provider's options of those names (all off by default). `refreshed_from` makes it `pulumi up
    --refresh` against a cluster whose objects are these (any other as the state last stored it)."""
    olds = [_state(r) for r in before.registrations] if before else []
    for old in olds:
        if refreshed_from and old.obj is not None and old.obj in refreshed_from and not old.external:
            old.outputs = copy.deepcopy(refreshed_from[old.obj])
            old.inputs = prune(old.outputs, old.inputs)
    engine = _Engine(olds, enable_config_map_mutable, enable_secret_mutable)
    for registration in after.registrations if after else []:
        engine.register(registration)
    engine.finish()
    hazards, conflicts = _simulate(engine, upsert_existing_objects)
    return Plan(
        steps=tuple(engine.steps.values()),
        operations=tuple(engine.operations),
        hazards=tuple(hazards),
        errors=tuple([*engine.errors, *conflicts]),
    )

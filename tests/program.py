"""Run the real program (`__main__.py`) under Pulumi's mocks and hand back what it declared.

The config is assembled as the Pulumi CLI does it: the defaults typed in `Pulumi.yaml`, then the stack's
`Pulumi.<stack>.yaml`, then the test's own values, all as the strings the CLI passes to a program. Each
captured Kubernetes resource becomes a plain manifest, as the provider would send it to the API server. What the
program reads back of an object (its outputs) is that manifest with the metadata.uid the API server gives it, a
UUID drawn from its type and ID so that renders are stable (`kubernetes_uid`): a uid is never among the inputs.

Besides the manifests, every registration keeps what the engine itself decides with: its URN (built as the
engine builds it), the resource options of the RegisterResource request, its property dependencies and its
provider ID, so that `tests/lifecycle.py` can compare two renders the way `pulumi up` would.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import runpy
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks, rpc, settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from components.config.inputs import declared_config

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "ray-cluster"
ROOT_STACK_TYPE = "pulumi:pulumi:Stack"
# pulumi-kubernetes marks the names it generated (provider/pkg/metadata/annotations.go, AnnotationAutonamed); its
# Diff asks for delete-before-replace only for objects that do not carry it (provider/pkg/provider/provider.go).
AUTONAMED_ANNOTATION = "pulumi.com/autonamed"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Alias:
    """One entry of the request's `aliases` (proto/pulumi/alias.proto): either a whole old `urn`, or a spec whose
    empty fields mean "as now" (the engine fills them in: pkg/resource/deploy/step_generator.go
    collapseAliasToUrn). The Python SDK 3.272 sends specs (`aliases`, never `aliasURNs`, and leaves `aliasSpecs`
    false, a flag only Node.js needs) because the mock monitor announces the `aliasSpecs` feature."""

    urn: str = ""
    name: str = ""
    type: str = ""
    stack: str = ""
    project: str = ""
    parent_urn: str = ""
    no_parent: bool = False


@dataclass(frozen=True)
class Options:
    """The resource options the engine reads from a RegisterResource request (pkg/resource/deploy/source_eval.go
    RegisterResource). `delete_before_replace` is None when the program left it to the provider, as the engine
    tells "unset" from "false" by `deleteBeforeReplaceDefined`. `protect` is already inherited from the parent
    (the Python SDK does that, pulumi/resource.py); `retain_on_delete` is only what this resource set."""

    ignore_changes: tuple[str, ...] = ()
    delete_before_replace: bool | None = None
    retain_on_delete: bool = False
    replace_on_changes: tuple[str, ...] = ()
    aliases: tuple[Alias, ...] = ()
    protect: bool = False
    custom_timeouts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    type: str
    name: str
    parent: str
    dependencies: tuple[str, ...]
    inputs: Manifest
    urn: str
    secret_paths: frozenset[str]
    # A CustomResource (False for components, which have no provider and nothing to create).
    custom: bool = True
    # Registered by `Resource.get(...)` (ReadResource): the engine reads the object and never manages it.
    read: bool = False
    # The provider's ID: `<namespace>/<name>` or `<name>` for Kubernetes (provider.go fqObjName), the given one
    # for a read.
    id: str = ""
    # Which resources each input came from; the engine walks these to find what a delete-before-replace must
    # take down first (step_generator.go calculateDependentReplacements).
    property_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    options: Options = field(default_factory=Options)


@dataclass
class Rendered:
    registrations: list[Registration]
    outputs: dict[str, Any]

    def kubernetes(self) -> list[Registration]:
        """The Kubernetes objects the program manages; a read (`.get`) is an existing object, not a manifest."""
        return [r for r in self.registrations if r.type.startswith("kubernetes:") and not r.read]

    @property
    def manifests(self) -> list[Manifest]:
        return [r.inputs for r in self.kubernetes()]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        """The one object of `kind` (named `name`). With generations, a generation's object is found by the name it
        has in place too, when no object has that name (`ray-head` finds `ray-head-<id>`): tests of what both
        strategies render alike name it once."""
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        if name is not None and not found and self.outputs.get("generation"):
            found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == f"{name}-{self.outputs['generation']}"]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
        return found[0]

    def smoke_test(self) -> Manifest:
        """The smoke-test Job (auto-named; beside it may run the Serve check's and, with generations, a retirement)."""
        jobs = [
            job
            for job in self.of_kind("Job")
            if job["metadata"]["labels"]["app.kubernetes.io/component"] == "smoke-test"
        ]
        assert len(jobs) == 1, [m["metadata"]["name"] for m in self.of_kind("Job")]
        return jobs[0]

    def registration_of(self, manifest: Manifest) -> Registration:
        return next(r for r in self.kubernetes() if r.inputs is manifest)


def plain(value: Any) -> Any:
    """A value as the provider sends it to the API server: Pulumi's wire format has only floats (2.0 becomes 2
    again) and wraps secrets in an envelope (unwrapped here; `secret_paths` records where they were)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return plain(value["value"])
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def secret_paths(value: Any, path: str = "") -> set[str]:
    """Dotted paths of the values the program sent to the engine as secrets (encrypted in the state)."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return {path}
        return {p for key, item in value.items() for p in secret_paths(item, f"{path}.{key}" if path else key)}
    if isinstance(value, list):
        return {p for index, item in enumerate(value) for p in secret_paths(item, f"{path}[{index}]")}
    return set()


def auto_name(logical_name: str, seed: str = "") -> str:
    """pulumi-kubernetes' auto-naming: the logical name, "-" and 8 lowercase hex characters
    (provider/pkg/metadata/naming.go: NewUniqueName(randomSeed, urn.Name()+"-", 0, 0, nil), whose default is 8
    characters of [0-9a-f]). The provider draws them from the engine's random seed; here they come from the
    logical name (or `seed`), so that renders are stable."""
    return f"{logical_name}-{hashlib.sha256((seed or logical_name).encode()).hexdigest()[:8]}"


def random_id(seed_text: str, byte_length: int, keepers: Any, prefix: str = "") -> dict[str, str]:
    """RandomId's outputs (terraform-provider-random internal/provider/resource_id.go Create): its bytes as hex,
    base64 (URL-safe without padding, and standard) and decimal, each after `prefix`. The real bytes are random
    and drawn again when `keepers` change (that replaces it); here they come from `seed_text` and the keepers, so
    they change exactly then."""
    seed = json.dumps([seed_text, keepers], sort_keys=True).encode()
    data = hashlib.sha256(seed).digest()[:byte_length]
    return {
        "hex": prefix + data.hex(),
        "b64Url": prefix + base64.urlsafe_b64encode(data).decode().rstrip("="),
        "b64Std": prefix + base64.b64encode(data).decode(),
        "dec": prefix + str(int.from_bytes(data, "big")),
    }


def provider_id(manifest: Manifest) -> str:
    """The ID pulumi-kubernetes gives an object: `<namespace>/<name>`, or `<name>` without a namespace."""
    metadata = manifest.get("metadata") or {}
    namespace, name = metadata.get("namespace") or "", metadata.get("name") or ""
    return f"{namespace}/{name}" if namespace else name


def kubernetes_uid(type_token: str, id_: str) -> str:
    """The metadata.uid the mocks give a Kubernetes object: the API server's is a random UUID, returned in the
    provider's outputs; here it comes from the type token and the provider's ID, so that renders are stable. It is
    not the rehearsal's (tests/rehearsal/cluster.py), whose `up` applies the live owner's in its place."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{type_token} {id_}"))


class _Outputs(dict[str, Any]):
    """A resource's outputs, as the engine hands them to the program, which keep the checked inputs they were made
    from: those are what a render captures (`Registration.inputs`), the outputs only what the program reads."""

    def __init__(self, outputs: Mapping[str, Any], inputs: Manifest) -> None:
        super().__init__(outputs)
        self.inputs = inputs


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[Any, Any]]:
        id_, state = self._checked(args)
        if args.typ.startswith("kubernetes:") and isinstance(state.get("metadata"), dict):
            # The provider's outputs are the live object, as the API server returned it: with the uid it drew.
            metadata = {**state["metadata"], "uid": kubernetes_uid(args.typ, id_)}
            return id_, _Outputs({**state, "metadata": metadata}, state)
        return id_, state

    def _checked(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        """The resource's ID and its inputs as the provider's Check returns them (and, for the random provider,
        what it draws)."""
        state = plain(dict(args.inputs))
        if args.typ.startswith("kubernetes:") and "metadata" in state and not args.resource_id:
            metadata = state["metadata"]
            if not metadata.get("name"):
                # What the provider's Check does to an unnamed object (metadata.AssignNameIfAutonamable).
                metadata["name"] = auto_name(args.name)
                metadata["annotations"] = {**(metadata.get("annotations") or {}), AUTONAMED_ANNOTATION: "true"}
        # Random bytes are drawn once, when the resource is created, and stay with it, under an alias too: seeded
        # here by the type and the inputs (not the logical name, which an alias changes), they stay across renders
        # the same way, and two passwords of different lengths share no characters.
        if args.typ == "random:index/randomPassword:RandomPassword":
            seed = f"{args.typ} {state['length']}".encode()
            state["result"] = hashlib.sha256(seed).hexdigest()[: int(state["length"])]
        if args.typ == "random:index/randomId:RandomId":
            state.update(random_id(args.typ, int(state["byteLength"]), state.get("keepers"), state.get("prefix", "")))
        if args.resource_id:
            return args.resource_id, state
        if args.custom is False:
            return "", state  # a component has no provider, so no ID
        if args.typ.startswith("kubernetes:") and "metadata" in state:
            return provider_id(state), state
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None


class _RecordingMonitor(mocks.MockMonitor):
    """Also records each request (the mocks see neither parents, dependencies nor options), and builds URNs as
    the engine does."""

    def __init__(self, mock: _Mocks) -> None:
        super().__init__(mock)
        self.requests: list[tuple[Any, str, bool]] = []

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        """The engine's URN (sdk/go/common/resource/urn.go New; pkg/resource/deploy/deployment.go generateURN):
        the parent's whole qualified type, `$`, then this type, except under the root stack. The plain mock keeps
        only the parent's last type and prefixes `pulumi:pulumi:Stack$` to top-level resources."""
        qualified = type_
        if parent:
            parent_type = parent.split("::")[2]
            if parent_type != ROOT_STACK_TYPE:
                qualified = f"{parent_type}${type_}"
        return f"urn:pulumi:{pulumi.get_stack()}::{pulumi.get_project()}::{qualified}::{name}"

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.requests.append((request, response.urn, False))
        return response

    def ReadResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().ReadResource(request)  # type: ignore[no-untyped-call]
        self.requests.append((request, response.urn, True))
        return response


def _alias(message: Any) -> Alias:
    if message.WhichOneof("alias") == "urn":
        return Alias(urn=message.urn)
    spec = message.spec
    return Alias(
        name=spec.name,
        type=spec.type,
        stack=spec.stack,
        project=spec.project,
        parent_urn=spec.parentUrn,
        no_parent=spec.noParent,
    )


def _options(request: Any) -> Options:
    """The options as the engine reads them (source_eval.go RegisterResource)."""
    timeouts = request.customTimeouts
    return Options(
        ignore_changes=tuple(request.ignoreChanges),
        delete_before_replace=(
            request.deleteBeforeReplace if request.deleteBeforeReplace or request.deleteBeforeReplaceDefined else None
        ),
        retain_on_delete=request.retainOnDelete,
        replace_on_changes=tuple(request.replaceOnChanges),
        aliases=tuple(_alias(a) for a in request.aliases) + tuple(Alias(urn=u) for u in request.aliasURNs),
        protect=request.protect,
        custom_timeouts={
            key: value
            for key, value in (("create", timeouts.create), ("update", timeouts.update), ("delete", timeouts.delete))
            if value
        },
    )


def _registration(monitor: _RecordingMonitor, request: Any, urn: str, read: bool) -> Registration:
    registered = monitor.resources[urn]
    sent = request.properties if read else request.object
    return Registration(
        type=request.type,
        name=request.name,
        parent=request.parent,
        dependencies=tuple(request.dependencies),
        inputs=registered.state.inputs if isinstance(registered.state, _Outputs) else registered.state,
        urn=urn,
        secret_paths=frozenset(secret_paths(json_format.MessageToDict(sent))),
        custom=read or request.custom,
        read=read,
        id=registered.id,
        property_dependencies={} if read else {k: tuple(v.urns) for k, v in request.propertyDependencies.items()},
        options=Options() if read else _options(request),
    )


def cli_string(value: object) -> str:
    """A config value as the CLI hands it to the program: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@functools.cache
def _parsed(path: Path, version: tuple[int, int, int]) -> Any:
    """A YAML file's content, parsed once per version of the file: parsing the stack file and Pulumi.yaml took a
    third of a render (tests write stack files; Pulumi.yaml is `declared_config`'s, parsed once)."""
    return yaml.safe_load(path.read_text())


def parsed_yaml(path: Path) -> Any:
    """The file's content as it is now (a copy: callers may change it); a version is its inode, size and mtime."""
    status = path.stat()
    return copy.deepcopy(_parsed(path, (status.st_ino, status.st_size, status.st_mtime_ns)))


def stack_config(stack: str, overrides: Mapping[str, object]) -> dict[str, str]:
    """The config the CLI would hand the program for `stack`: Pulumi.yaml's defaults (as the component reads them,
    `declared_config`), the stack file's values over them, then `overrides`."""
    declared = declared_config().items()
    values = {key: cli_string(spec["default"]) for key, spec in declared if "default" in spec}
    stack_file = ROOT / f"Pulumi.{stack}.yaml"
    if stack_file.exists():
        for key, value in (parsed_yaml(stack_file).get("config") or {}).items():
            values[key.removeprefix(f"{PROJECT}:")] = cli_string(value)
    values.update({key: cli_string(value) for key, value in overrides.items()})
    return {f"{PROJECT}:{key}": value for key, value in values.items()}


def capture(
    program: Callable[[], None],
    stack: str = "test",
    config: Mapping[str, str] | None = None,
    secrets: tuple[str, ...] = (),
) -> Rendered:
    """Run any Pulumi program function under the recording mocks; `config` holds full keys (`project:key`)."""
    mock = _Mocks()
    monitor = _RecordingMonitor(mock)
    settings.ROOT.set(None)
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()
    pulumi.runtime.set_mocks(mock, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(dict(config or {}), list(secrets))
    _sync_await(run_pulumi_func(program))
    root = settings.get_root_resource()
    assert isinstance(root, pulumi.runtime.stack.Stack)
    outputs = _sync_await(pulumi.Output.from_input(root.outputs).future(with_unknowns=False)) or {}
    registrations = [
        _registration(monitor, request, urn, read)
        for request, urn, read in monitor.requests
        if request.type != ROOT_STACK_TYPE
    ]
    return Rendered(registrations=registrations, outputs=outputs)


IN_PLACE: dict[str, object] = {"upgradeStrategy": "inPlace"}


def render_in_place(
    config: Mapping[str, object] | None = None, stack: str = "test", secrets: tuple[str, ...] = ()
) -> Rendered:
    """`render` of a stack that upgrades in place (unless `config` says otherwise), for the tests of what it renders
    under names without a generation's id; tests/test_generations.py covers what generations change of it."""
    return render({**IN_PLACE, **(config or {})}, stack, secrets)


def render(config: Mapping[str, object] | None = None, stack: str = "test", secrets: tuple[str, ...] = ()) -> Rendered:
    """Run `__main__.py` for one stack and config; its errors propagate as they would end `pulumi up`."""

    def program() -> None:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    return capture(program, stack, stack_config(stack, config or {}), tuple(f"{PROJECT}:{key}" for key in secrets))

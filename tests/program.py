"""Run the real program (`__main__.py`) under Pulumi's mocks and hand back what it declared.

The config is assembled as the Pulumi CLI does it: the defaults typed in `Pulumi.yaml`, then the stack's
`Pulumi.<stack>.yaml`, then the test's own values, all as the strings the CLI passes to a program. Each
captured Kubernetes resource becomes a plain manifest, as the provider would send it to the API server.
"""

from __future__ import annotations

import hashlib
import json
import runpy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks, rpc, settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "ray-cluster"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Registration:
    type: str
    name: str
    parent: str
    dependencies: tuple[str, ...]
    inputs: Manifest
    urn: str
    secret_paths: frozenset[str]


@dataclass
class Rendered:
    registrations: list[Registration]
    outputs: dict[str, Any]

    def kubernetes(self) -> list[Registration]:
        return [r for r in self.registrations if r.type.startswith("kubernetes:")]

    @property
    def manifests(self) -> list[Manifest]:
        return [r.inputs for r in self.kubernetes()]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
        return found[0]

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


def auto_name(logical_name: str) -> str:
    """Pulumi's auto-naming: the logical name plus a suffix (random in Pulumi, stable here)."""
    return f"{logical_name}-{hashlib.sha256(logical_name.encode()).hexdigest()[:7]}"


@dataclass
class _Mocks(pulumi.runtime.Mocks):
    states: dict[str, Manifest] = field(default_factory=dict)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[Any, Any]]:
        state = plain(dict(args.inputs))
        if args.typ.startswith("kubernetes:") and "metadata" in state:
            state["metadata"].setdefault("name", auto_name(args.name))
        if args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = hashlib.sha256(args.name.encode()).hexdigest()[: int(state["length"])]
        self.states[args.name] = state
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None


class _RecordingMonitor(mocks.MockMonitor):
    """Also records each registration's parent and dependencies, which the plain Mocks do not see."""

    def __init__(self, mock: _Mocks) -> None:
        super().__init__(mock)
        self.requests: list[Any] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.requests.append((request, response.urn))
        return response


def cli_string(value: object) -> str:
    """A config value as the CLI hands it to the program: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def stack_config(stack: str, overrides: Mapping[str, object]) -> dict[str, str]:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    values = {key: cli_string(spec["default"]) for key, spec in project.get("config", {}).items() if "default" in spec}
    stack_file = ROOT / f"Pulumi.{stack}.yaml"
    if stack_file.exists():
        for key, value in (yaml.safe_load(stack_file.read_text()).get("config") or {}).items():
            values[key.removeprefix(f"{PROJECT}:")] = cli_string(value)
    values.update({key: cli_string(value) for key, value in overrides.items()})
    return {f"{PROJECT}:{key}": value for key, value in values.items()}


def render(config: Mapping[str, object] | None = None, stack: str = "test", secrets: tuple[str, ...] = ()) -> Rendered:
    """Run `__main__.py` for one stack and config; its errors propagate as they would end `pulumi up`."""
    mock = _Mocks()
    monitor = _RecordingMonitor(mock)
    settings.ROOT.set(None)
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()
    pulumi.runtime.set_mocks(mock, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(stack_config(stack, config or {}), [f"{PROJECT}:{key}" for key in secrets])

    def program() -> None:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    _sync_await(run_pulumi_func(program))
    root = settings.get_root_resource()
    assert isinstance(root, pulumi.runtime.stack.Stack)
    outputs = _sync_await(pulumi.Output.from_input(root.outputs).future(with_unknowns=False)) or {}
    registrations = [
        Registration(
            type=request.type,
            name=request.name,
            parent=request.parent,
            dependencies=tuple(request.dependencies),
            inputs=mock.states.get(request.name, {}),
            urn=urn,
            secret_paths=frozenset(secret_paths(json_format.MessageToDict(request.object))),
        )
        for request, urn in monitor.requests
        if request.type != "pulumi:pulumi:Stack"
    ]
    return Rendered(registrations=registrations, outputs=outputs)

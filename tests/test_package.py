"""The component package (`provider/`), proven without the Pulumi CLI: its entry point started as the CLI starts it,
the schema Pulumi's analyzer infers (checked against the stack config in `Pulumi.yaml`, the source of truth), and
the `construct` path a program in another language takes (inputs through Pulumi's wire format: every number a
float, secrets as secret Outputs), whose resources must be the stack program's, and whose errors its."""

import contextlib
import contextvars
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pulumi
import pytest
import yaml
from google.protobuf import empty_pb2, json_format
from pulumi.provider.experimental import host
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.provider import ConstructResult
from pulumi.provider.server import ComponentInitError, ProviderServicer
from pulumi.runtime import rpc
from pulumi.runtime.proto import engine_pb2_grpc, provider_pb2, provider_pb2_grpc, resource_pb2, resource_pb2_grpc
from pulumi.runtime.sync_await import _sync_await

from components import RayCluster, load_settings
from components.config.inputs import GROUP_KEYS, OBJECT_KEYS, TOLERATION_KEYS
from tests import mutation_testing
from tests.program import (
    ROOT,
    Registration,
    Rendered,
    _Mocks,
    _RecordingMonitor,
    _registration,
    capture,
    render,
    stack_config,
)
from tests.test_config_errors import BAD_VALUES, WHOLE_MESSAGES, spy_on_declarations
from tests.variants import REDIS_CA

PROVIDER_DIR = ROOT / "provider"
TOKEN = "ray-cluster:index:RayCluster"
DECLARED: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
# What may be an Output (all else must be known when the program runs), and arrives as a secret.
SECRET_INPUTS = {"authToken", "redisPassword"}
WORKER_GROUP_TYPE = "ray-cluster:index:WorkerGroupArgs"
TOLERATION_TYPE = "ray-cluster:index:TolerationArgs"
SERVE_APPLICATION_TYPE = "ray-cluster:index:ServeApplicationArgs"
SERVE_DEPLOYMENT_TYPE = "ray-cluster:index:ServeDeploymentArgs"
WORKER_GROUP_PROPERTIES = {
    "name": "string",
    "replicas": "integer",
    "maxReplicas": "integer",
    "cpu": "string",
    "memory": "string",
    "gpus": "integer",
    "image": "string",
    "nodeSelector": "object",
    "tolerations": "array",
    "readOnlyRootFilesystem": "boolean",
}
TOLERATION_PROPERTIES = {
    "key": "string",
    "operator": "string",
    "value": "string",
    "effect": "string",
    "tolerationSeconds": "integer",
}
# The outputs a consumer always gets, and those only some clusters have (token auth, fault tolerance).
ALWAYS_OUTPUTS = {
    "namespace",
    "headServiceDns",
    "gcsAddress",
    "rayClientAddress",
    "dashboardUrl",
    "portForwardCommand",
    "image",
    "workerReplicas",
}
SOMETIMES_OUTPUTS = {"authTokenSecret", "gcsStorageNamespace", "serveUrl", "generation", "generationsCommand"}
# The component's children a consumer may depend on, by output, with their pulumi-kubernetes type; not stack outputs.
CHILDREN = {
    "headService": "core/v1:Service",
    "headDeployment": "apps/v1:Deployment",
    "workerDeployments": "apps/v1:Deployment",
}
IMAGE = DECLARED["image"]["default"]
# The schema as the analyzer infers it, to tell which error cases a typed program could send at all.
SCHEMA: dict[str, Any] = json.loads(ComponentProvider([RayCluster], "ray-cluster").schema or "{}")


def load_entry_point() -> ModuleType:
    """`provider/__main__.py` as a module (not run as `__main__`, so it hosts nothing on import)."""
    spec = importlib.util.spec_from_file_location("ray_cluster_provider", PROVIDER_DIR / "__main__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def provider() -> ComponentProvider:
    """The provider the entry point hosts, caught where `component_provider_host` would start serving it."""
    hosted: list[ComponentProvider] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(host, "is_hosting", False)
        patch.setattr(host, "main", lambda served, args: hosted.append(served))
        load_entry_point().main()
    assert len(hosted) == 1
    return hosted[0]


@pytest.fixture(scope="module")
def schema(provider: ComponentProvider) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(provider.schema or "{}")
    return loaded


@contextlib.contextmanager
def plugin(directory: Path, engine: str = "127.0.0.1:1") -> Iterator[provider_pb2_grpc.ResourceProviderStub]:
    """The plugin as the CLI runs it: `python provider/ <engine address>` from the consumer's directory; it prints
    the port it serves on."""
    # Under scripts/mutation, the plugin runs the original code: mutmut's trampoline, which the variable switches
    # on, cannot find its project from the consumer's directory (the in-process tests meet the mutants).
    environment = {name: value for name, value in os.environ.items() if name != mutation_testing.VARIABLE}
    process = subprocess.Popen(
        [sys.executable, str(PROVIDER_DIR), engine],
        cwd=directory,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), process.stderr.read()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield provider_pb2_grpc.ResourceProviderStub(channel)
    finally:
        process.kill()
        process.wait()


def test_the_plugin_serves_its_schema_as_the_cli_starts_it(tmp_path: Path, schema: dict[str, Any]) -> None:
    """`pulumi package add` / `get-schema` start the plugin and ask for its schema and version: it must find the
    repository's component from anywhere."""
    with plugin(tmp_path) as stub:
        served = stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=60)
        info = stub.GetPluginInfo(empty_pb2.Empty(), timeout=60)
    assert json.loads(served.schema) == schema
    assert info.version == load_entry_point().VERSION == schema["version"]
    assert schema["name"] == "ray-cluster"


def test_the_plugins_requirements_are_the_programs() -> None:
    """The CLI installs `provider/requirements.txt` into the plugin's own virtualenv: pip must resolve it (its `-r`
    relative to the file) to what the program needs, all of which this environment has."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "-r",
            str(PROVIDER_DIR / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    program_requirements = [
        line.split(">=")[0].split("==")[0]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    for name in program_requirements:
        assert f"Requirement already satisfied: {name}" in result.stdout


def test_the_plugin_runs_python_from_its_own_virtualenv() -> None:
    """pip into `provider/venv` (git-ignored, for a package added from a local clone)."""
    plugin = yaml.safe_load((PROVIDER_DIR / "PulumiPlugin.yaml").read_text())
    assert plugin["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}
    assert "provider/venv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_plugin_names_the_python_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older Python would fail with an ImportError from deep inside the component; the consumer sees why."""
    entry_point = load_entry_point()
    monkeypatch.setattr(sys, "version_info", (3, 10, 14, "final", 0))
    with pytest.raises(SystemExit) as exit_:
        entry_point.main()
    assert str(exit_.value).startswith("ray-cluster's component package needs Python 3.11 or newer; the Pulumi CLI")


def test_the_component_is_the_schemas_one_resource(schema: dict[str, Any]) -> None:
    assert list(schema["resources"]) == [TOKEN]
    resource = schema["resources"][TOKEN]
    assert resource["isComponent"] is True
    assert resource["requiredInputs"] == []
    assert set(schema["types"]) == {WORKER_GROUP_TYPE, TOLERATION_TYPE, SERVE_APPLICATION_TYPE, SERVE_DEPLOYMENT_TYPE}


def test_every_config_key_is_an_input_of_the_same_name_type_and_meaning(schema: dict[str, Any]) -> None:
    """Pulumi.yaml is the source of truth: each key an input, with its type and its description word for word. All
    but the secrets are plain (a generated SDK takes no Output for them: the cluster's names and shape are checked
    from them before anything is declared)."""
    inputs = schema["resources"][TOKEN]["inputProperties"]
    assert set(inputs) == {*DECLARED, *OBJECT_KEYS}
    for key, spec in DECLARED.items():
        prop = inputs[key]
        assert prop["type"] == spec["type"], key
        assert prop["description"] == spec["description"], key
        if spec["type"] == "array":
            assert prop["items"]["type"] == spec["items"]["type"], key
        assert prop.get("plain") is (None if key in SECRET_INPUTS else True), key


def test_worker_groups_are_typed_as_the_program_reads_them(schema: dict[str, Any]) -> None:
    inputs = schema["resources"][TOKEN]["inputProperties"]
    assert inputs["workerGroups"]["type"] == "array"
    assert inputs["workerGroups"]["items"]["$ref"] == f"#/types/{WORKER_GROUP_TYPE}"
    group = schema["types"][WORKER_GROUP_TYPE]
    assert {name: prop.get("type") for name, prop in group["properties"].items()} == WORKER_GROUP_PROPERTIES
    assert set(WORKER_GROUP_PROPERTIES) == GROUP_KEYS | {"name"}
    assert group["required"] == ["name"]
    assert group["properties"]["nodeSelector"]["additionalProperties"]["type"] == "string"
    assert group["properties"]["tolerations"]["items"]["$ref"] == f"#/types/{TOLERATION_TYPE}"
    toleration = schema["types"][TOLERATION_TYPE]
    assert {name: prop["type"] for name, prop in toleration["properties"].items()} == TOLERATION_PROPERTIES
    assert set(TOLERATION_PROPERTIES) == TOLERATION_KEYS
    assert "required" not in toleration


def test_the_outputs_are_the_stacks_and_the_children_a_consumer_may_depend_on(schema: dict[str, Any]) -> None:
    """A consumer gets what a stack exports, under the same names (null ones are optional), and the head's Service
    and Deployment and the worker groups' Deployments, typed as pulumi-kubernetes' resources."""
    resource = schema["resources"][TOKEN]
    assert set(resource["properties"]) - CHILDREN.keys() == set(render().outputs) == ALWAYS_OUTPUTS | SOMETIMES_OUTPUTS
    assert set(resource["required"]) == ALWAYS_OUTPUTS | CHILDREN.keys()
    types = {name: prop.get("type") for name, prop in resource["properties"].items() if name not in CHILDREN}
    assert types == {name: "object" if name == "workerReplicas" else "string" for name in types}
    assert resource["properties"]["workerReplicas"]["additionalProperties"]["type"] == "integer"
    version = schema["dependencies"][0]["version"]
    assert schema["dependencies"] == [{"name": "kubernetes", "version": version}]
    for name, kind in CHILDREN.items():
        typed = resource["properties"][name]
        reference = typed["additionalProperties"]["$ref"] if name == "workerDeployments" else typed["$ref"]
        assert reference == f"/kubernetes/v{version}/schema.json#/resources/kubernetes:{kind.replace('/', '%2F')}"


def descriptions(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "description":
                yield key, item
            yield from descriptions(item)
    elif isinstance(value, list):
        for item in value:
            yield from descriptions(item)


def test_everything_in_the_schema_is_described_in_one_line(schema: dict[str, Any]) -> None:
    """Descriptions become every SDK's doc comments: none missing, none with a docstring's line breaks."""
    resource = schema["resources"][TOKEN]
    properties = [*resource["inputProperties"].values(), *resource["properties"].values()]
    properties += [prop for kind in schema["types"].values() for prop in kind["properties"].values()]
    assert all(prop.get("description") for prop in properties)
    assert all(kind.get("description") for kind in schema["types"].values())
    found = list(descriptions(schema))
    assert len(found) > len(properties)
    assert all(isinstance(text, str) and text.strip() and "\n" not in text for _, text in found)


def check_value(schema: dict[str, Any], spec: dict[str, Any], value: object, where: str) -> None:
    """`value` as a YAML program would give it against the schema's property `spec` (types, nested types, unknown
    and required properties)."""
    if "$ref" in spec:
        kind = schema["types"][spec["$ref"].removeprefix("#/types/")]
        assert isinstance(value, dict), where
        assert set(value) <= set(kind["properties"]), f"{where}: unknown {set(value) - set(kind['properties'])}"
        assert set(kind.get("required", [])) <= set(value), where
        for name, item in value.items():
            check_value(schema, kind["properties"][name], item, f"{where}.{name}")
        return
    checks: dict[str, Callable[[object], bool]] = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    assert checks[spec["type"]](value), f"{where}: {value!r} is not {spec['type']}"
    if spec["type"] == "array":
        for index, item in enumerate(value):  # type: ignore[arg-type]
            check_value(schema, spec["items"], item, f"{where}[{index}]")
    if spec["type"] == "object":
        for name, item in value.items():  # type: ignore[attr-defined]
            check_value(schema, spec["additionalProperties"], item, f"{where}.{name}")


def as_sent(key: str, value: object) -> object:
    """A config value as a program in another language gives it: typed as the schema says (what the CLI keeps as
    the text `"3"` for an integer key is the number 3 there)."""
    kind = DECLARED[key]["type"] if key in DECLARED else "array"
    if kind == "integer" and isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def sendable(config: Mapping[str, object]) -> bool:
    """Whether a typed program could give these values: each is an input of the schema and fits it (not
    `workers: "four"`, nor a key or a group's key the schema lacks, which the SDK would drop before the component
    sees it)."""
    inputs = SCHEMA["resources"][TOKEN]["inputProperties"]
    if not config.keys() <= inputs.keys():
        return False
    try:
        for key, value in config.items():
            check_value(SCHEMA, inputs[key], as_sent(key, value), key)
    except AssertionError:
        return False
    return True


def construct(
    config: Mapping[str, object], secret: frozenset[str] = frozenset(SECRET_INPUTS), plain_inputs: bool = True
) -> tuple[Rendered, dict[str, Any]]:
    """The package's `construct`, under the same mocks as the program: `config` as the consumer's inputs, through
    Pulumi's wire format (as the engine hands them to the plugin: Outputs as output values, which the plugin's
    Configure says it accepts), `secret` keys as secret Outputs. Returns what
    was declared and the component's state (its outputs), resolved."""
    ready: list[ConstructResult] = []
    provider = ComponentProvider([RayCluster], "ray-cluster")

    def program() -> None:
        inputs: dict[str, object] = {}
        for key, value in config.items():
            sent = as_sent(key, value) if plain_inputs else value
            inputs[key] = pulumi.Output.secret(sent) if key in secret else sent

        async def through_the_wire() -> dict[str, Any]:
            struct = await rpc.serialize_properties(inputs, {}, keep_output_values=True)
            return await ProviderServicer._construct_inputs(struct, {})

        received = _sync_await(through_the_wire())
        ready.append(provider.construct("ray", TOKEN, received, pulumi.ResourceOptions()))

    rendered = capture(program, "test", stack_config("test", {}))
    state = _sync_await(pulumi.Output.from_input(ready[0].state).future(with_unknowns=False))
    return rendered, dict(state or {})


def by_urn(rendered: Rendered) -> dict[str, Registration]:
    """Each registration by URN, its dependencies as the sets they are to the engine (their order is the order in
    which the SDK resolved them)."""
    return {
        registration.urn: dataclasses.replace(
            registration,
            dependencies=tuple(sorted(registration.dependencies)),
            property_dependencies={
                key: tuple(sorted(urns)) for key, urns in registration.property_dependencies.items()
            },
        )
        for registration in rendered.registrations
    }


SAME_CLUSTERS: list[dict[str, object]] = [
    {},
    {
        "namespace": "ml",
        "createNamespace": False,
        "workers": 2,
        "workerCpu": "2",
        "workerMemory": "4Gi",
        "maxWorkers": 4,
        "idleTimeoutSeconds": 30,
        "upscalingSpeed": "1",
        "workerDrainSeconds": 300,
        "workerGroups": [
            {
                "name": "gpu",
                "replicas": 0,
                "maxReplicas": 2,
                "gpus": 1,
                "cpu": "4",
                "memory": "16Gi",
                "nodeSelector": {"nvidia.com/gpu.present": "true"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 60},
                ],
            },
            {"name": "highmem", "replicas": 1, "memory": "8Gi", "image": "rayproject/ray:2.60.0-py311"},
        ],
        "allowedClientNamespaces": ["jupyter"],
        "allowedClientCidrs": ["10.8.0.0/16"],
        "allowedMetricsNamespaces": ["monitoring"],
        "authToken": "a-token-of-the-users-own",
    },
    {"gcsFaultTolerance": True, "redisPassword": "p@ss w0rd", "redisStorageClass": "fast", "testJob": False},
    {
        "gcsFaultTolerance": True,
        "redisAddress": "rediss://redis.example.internal:6380",
        "redisCaCert": REDIS_CA,
        "redisPassword": "secret",
        "gcsReconnectTimeoutSeconds": 900,
        "tokenAuth": False,
        "headCpu": "2",
        "headMemory": "8Gi",
        "image": "rayproject/ray:2.60.0-py312",
    },
]


@pytest.mark.parametrize("config", SAME_CLUSTERS, ids=["defaults", "groups-and-access", "own-redis", "tls-redis"])
def test_the_same_values_given_either_way_make_the_same_resources(config: dict[str, object]) -> None:
    """Every registration (type, name, parent, inputs, secrets, dependencies, options) the package's construct
    makes equals the stack program's for the same values, and the component's outputs are the stack's."""
    program = render(config, secrets=tuple(sorted(SECRET_INPUTS & set(config))))
    package, state = construct(config)
    assert by_urn(package) == by_urn(program)
    assert {name: value for name, value in state.items() if name not in CHILDREN} == program.outputs
    urns = {r.name: r.urn for r in program.kubernetes()}
    assert _sync_await(state["headDeployment"].urn.future()) == urns["ray-head"]


def test_a_token_given_as_plain_text_is_kept_as_a_secret() -> None:
    """A YAML program may give the token without `fn::secret`: it is still only ever stored as a secret."""
    config = {"authToken": "not-marked-secret", "gcsFaultTolerance": True, "redisPassword": "nor-this"}
    package, _ = construct(config, secret=frozenset())
    program = render(config, secrets=("authToken", "redisPassword"))
    assert by_urn(package) == by_urn(program)
    assert any(r.secret_paths for r in package.registrations if r.type == "kubernetes:core/v1:Secret")


ERROR_CASES = [config for config, _ in [*BAD_VALUES, *WHOLE_MESSAGES] if sendable(config)]


def stack_error(config: Mapping[str, object]) -> str:
    with pytest.raises(pulumi.RunError) as error:
        render(config)
    return str(error.value)


def package_error(config: Mapping[str, object], **how: Any) -> str:
    with pytest.raises(ComponentInitError) as error:
        construct(config, **how)
    assert isinstance(error.value.inner, pulumi.RunError)
    return str(error.value.inner)


@pytest.mark.parametrize("config", ERROR_CASES, ids=[json.dumps(c)[:80] for c in ERROR_CASES])
def test_a_bad_input_fails_with_the_stack_configs_message_before_any_resource(
    config: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = stack_error(config)
    declared = spy_on_declarations(monkeypatch)
    assert package_error(config) == expected
    assert declared == []


def test_the_error_cases_cover_the_config_errors() -> None:
    """Only values no typed program can send are left out (text for a number, a key the schema lacks): 29 of the
    114 when this was written, so a `sendable` that excluded more would show here."""
    assert len(ERROR_CASES) >= 85


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"workers": 2.5}, "ray-cluster:workers is 2.5, but it must be a whole number"),
        ({"idleTimeoutSeconds": 0.5}, "ray-cluster:idleTimeoutSeconds is 0.5, but it must be a whole number"),
        ({"workerDrainSeconds": True}, "ray-cluster:workerDrainSeconds is True, but it must be a whole number"),
        ({"testJob": "yes"}, "ray-cluster:testJob is 'yes', but it must be true or false"),
        ({"headCpu": ["2"]}, "ray-cluster:headCpu is ['2'], but it must be text"),
        # A secret's value is never shown, not even in an error.
        ({"authToken": 12345}, "ray-cluster:authToken is '<float>', but it must be text (a secret)"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_input(config: dict[str, object], message: str) -> None:
    """What a YAML program (which a schema's types do not stop) may send; the stack's CLI refuses these itself."""
    assert package_error(config, secret=frozenset(), plain_inputs=False) == message


def test_a_number_for_text_is_the_text_it_was_written_as() -> None:
    """As inside a stack's `--path` objects (where the CLI types `8` as a number), at every level."""
    config = {"workerCpu": 2, "workerGroups": [{"name": "big", "cpu": 8, "memory": "16Gi"}]}
    package, _ = construct(config, plain_inputs=False)
    assert by_urn(package) == by_urn(
        render({"workerCpu": "2", "workerGroups": [{"name": "big", "cpu": "8", "memory": "16Gi"}]})
    )


OUTPUT_REFUSED = (
    "is 'an Output', but it must be a plain value, known when the program runs: the cluster's names and shape are "
    "checked from it before any resource is declared"
)


def test_an_input_another_resource_computes_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the secrets may be Outputs: the namespace of another resource, say, would reach the component as one.
    (An Output for a number never gets this far: Pulumi's SDK fails on it while it maps the inputs.)"""
    declared = spy_on_declarations(monkeypatch)
    assert (
        package_error({"namespace": "ml"}, secret=frozenset({"namespace"})) == f"ray-cluster:namespace {OUTPUT_REFUSED}"
    )
    assert package_error({"createNamespace": False}, secret=frozenset({"createNamespace"})) == (
        f"ray-cluster:createNamespace {OUTPUT_REFUSED}"
    )
    assert declared == []


def test_an_output_inside_a_worker_group_is_refused_by_the_groups_key() -> None:
    def program() -> None:
        RayCluster("ray", {"workerGroups": [{"name": "gpu", "cpu": pulumi.Output.from_input("8")}]})  # type: ignore[typeddict-item]

    with pytest.raises(pulumi.RunError) as error:
        capture(program, "test", stack_config("test", {}))
    assert str(error.value) == f"ray-cluster:workerGroups {OUTPUT_REFUSED}"


def test_an_empty_secret_password_for_an_existing_redis_fails_the_update() -> None:
    """A secret's emptiness shows only when it resolves: then it fails, instead of giving Ray an empty password
    (the stack config leaves an empty password out, and so gives Ray none)."""
    config = {"gcsFaultTolerance": True, "redisAddress": "redis.example.internal:6379", "redisPassword": ""}
    with pytest.raises(pulumi.RunError) as error:
        construct(config)
    assert str(error.value) == (
        "ray-cluster:redisPassword is '', but given as a secret, it must not be empty: leave it out for a Redis "
        "without a password"
    )


def test_a_worker_groups_defaults_are_the_ones_its_schema_describes(schema: dict[str, Any]) -> None:
    group = load_settings({"workerGroups": [{"name": "small"}]}, "ray-cluster", "test").worker_groups[1]
    assert (group.replicas, group.max_replicas, group.resources.gpus, group.image) == (1, None, 0, IMAGE)
    described = schema["types"][WORKER_GROUP_TYPE]["properties"]
    assert "(default 1)" in described["replicas"]["description"]
    assert "(default 0: no autoscaling)" in described["maxReplicas"]["description"]
    assert "(default 0)" in described["gpus"]["description"]
    assert "(default: image," in described["image"]["description"]


def test_an_unknown_input_is_refused_by_name() -> None:
    """A Python program that uses the component directly (a typo the TypedDict's type checker would also catch)."""

    def program() -> None:
        RayCluster("ray", {"wrokers": 3})  # type: ignore[typeddict-unknown-key]

    with pytest.raises(pulumi.RunError) as error:
        capture(program, "test", stack_config("test", {}))
    assert str(error.value).startswith(
        "ray-cluster:wrokers is 3, but it is not an input of the cluster: did you mean `workers`? the inputs are ["
    )


# The YAML example: a program a user copies, parsed and checked against the schema, then constructed.
EXAMPLE = ROOT / "examples" / "yaml" / "Pulumi.yaml"


def example_cluster() -> tuple[dict[str, Any], dict[str, Any]]:
    """The example program, and its one RayCluster resource."""
    program = yaml.safe_load(EXAMPLE.read_text())
    clusters = [r for r in program["resources"].values() if r["type"] in (TOKEN, "ray-cluster:RayCluster")]
    assert len(clusters) == 1
    return program, clusters[0]


def test_the_yaml_example_uses_this_package_and_only_what_its_schema_has(schema: dict[str, Any]) -> None:
    program, cluster = example_cluster()
    assert program["runtime"] == "yaml"
    assert (EXAMPLE.parent / program["packages"]["ray-cluster"] / "PulumiPlugin.yaml").is_file()
    inputs = schema["resources"][TOKEN]["inputProperties"]
    for name, value in cluster["properties"].items():
        assert name in inputs, name
        check_value(schema, inputs[name], value, name)
    name = next(name for name, r in program["resources"].items() if r is cluster)
    referenced = re.findall(rf"\$\{{{name}\.([A-Za-z]+)\}}", json.dumps(program["outputs"]))
    assert referenced
    assert set(referenced) <= set(schema["resources"][TOKEN]["properties"])


def test_a_yaml_program_is_told_to_run_pulumi_install_before_its_first_up() -> None:
    """`pulumi up` starts a source plugin from its virtualenv but never makes it (pulumi/pulumi
    pkg/resource/plugin/plugin.go, the Python host's RunPlugin): `pulumi install` does, for a `packages:` entry
    written by hand, where the steps are."""
    readme = (ROOT / "README.md").read_text()
    yaml_section = readme.split("In YAML, no SDK is needed", 1)[1].split("```", 1)[0]
    assert "run `pulumi install` once, before the first `pulumi" in " ".join(yaml_section.split())
    assert "Run `pulumi install` once before the first `pulumi up`" in EXAMPLE.read_text()


def test_the_yaml_example_makes_the_cluster_the_stack_config_would() -> None:
    _, cluster = example_cluster()
    package, _ = construct(cluster["properties"])
    assert by_urn(package) == by_urn(render(cluster["properties"]))


def test_the_readmes_sdk_names_are_those_the_cli_generates_from_the_schema(schema: dict[str, Any]) -> None:
    """The schema names its namespace, so a package added from git (which the CLI would otherwise name after the
    repository's owner) and one added from a clone generate the same SDKs, named as the CLI's code generators name
    them (pulumi/pulumi pkg/codegen: nodejs `@<namespace>/<name>`, python PyPack, pulumi-dotnet's root namespace
    and package name, each part of a `-` name capitalised)."""
    namespace, name = schema["namespace"], schema["name"]
    assert namespace == load_entry_point().NAMESPACE and re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", namespace)
    readme = (ROOT / "README.md").read_text()
    typescript = "".join(re.findall(r"```typescript\n(.*?)```", readme, re.DOTALL))
    imported = set(re.findall(r'from "([^"]+)"', typescript)) - {"@pulumi/pulumi"}
    assert imported == {f"@{namespace}/{name}"}

    def dotnet(words: str) -> str:
        return "".join(part[:1].upper() + part[1:] for part in words.split("-"))

    python = f"{namespace.replace('-', '_')}_{name.replace('-', '_')}"
    assert f"`{python}`" in readme and f"`{dotnet(namespace)}.{dotnet(name)}`" in readme


def release_tag_mismatches(repository: Path) -> list[str]:
    """The `v<version>` tags of a repository whose commit's `provider/__main__.py` says another VERSION: a package
    added from git at that tag would report the tag's version, not the code's."""

    def git(*words: str) -> str:
        return subprocess.run(["git", "-C", str(repository), *words], capture_output=True, text=True, check=True).stdout

    found = []
    for tag in git("tag", "--list", "v*").split():
        entry_point = git("show", f"{tag}:provider/__main__.py")
        [version] = re.findall(r'^VERSION = "([^"]+)"$', entry_point, re.MULTILINE)
        if f"v{version}" != tag:
            found.append(f"{tag}: provider/__main__.py says {version}")
    return found


def test_every_release_tag_names_a_commit_of_its_version(tmp_path: Path) -> None:
    assert release_tag_mismatches(ROOT) == []
    # The check itself, on a repository with a tag that agrees and one that does not.
    (tmp_path / "provider").mkdir()
    (tmp_path / "provider" / "__main__.py").write_text('VERSION = "0.1.0"\n')
    for command in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "r"],
                    ["tag", "v0.1.0"], ["tag", "v0.2.0"]):  # fmt: skip
        subprocess.run(["git", "-C", str(tmp_path), *command], check=True, capture_output=True)
    assert release_tag_mismatches(tmp_path) == ["v0.2.0: provider/__main__.py says 0.1.0"]


def test_the_readme_and_the_example_pin_this_release() -> None:
    """Consumers copy the `pulumi package add ...@v<version>` lines: they must name the version the plugin reports
    (the git tag a release gets)."""
    release = f"/provider@v{load_entry_point().VERSION}"
    for text in ((ROOT / "README.md").read_text(), EXAMPLE.read_text()):
        pinned = re.findall(r"/provider@v[0-9][^\s`]*", text)
        assert pinned and set(pinned) == {release}


class _Engine(engine_pb2_grpc.EngineServicer):
    """The engine's own service, as far as a plugin uses it: the log (the component's warnings go there)."""

    def __init__(self) -> None:
        self.logged: list[str] = []

    def Log(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        self.logged.append(request.message)
        return empty_pb2.Empty()


class _Monitor(resource_pb2_grpc.ResourceMonitorServicer):
    """The engine's resource monitor, over gRPC, in front of the program tests' recording mock monitor (what it
    does not implement stays refused, as the generated servicer refuses it). Each call runs in the test's
    context, where the mocks' stack and project are set (gRPC's threads start without them)."""

    def __init__(self, recording: _RecordingMonitor) -> None:
        self.recording = recording
        self.context = contextvars.copy_context()

    def _call(self, method: str, request: Any) -> Any:
        return self.context.copy().run(getattr(self.recording, method), request)

    def SupportsFeature(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        supported = self._call("SupportsFeature", request)
        return resource_pb2.SupportsFeatureResponse(hasSupport=supported.hasSupport)

    def GetDeploymentInfo(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return self._call("GetDeploymentInfo", request)

    def RegisterResource(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return self._call("RegisterResource", request)

    def ReadResource(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return self._call("ReadResource", request)

    def RegisterResourceOutputs(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        return empty_pb2.Empty()


def construct_in_the_plugin(
    directory: Path, config: Mapping[str, object], from_resources: Mapping[str, str] | None = None
) -> tuple[Rendered, provider_pb2.ConstructResponse | grpc.RpcError, list[str]]:
    """The engine's side of `pulumi up` in a consumer's program: it asks the plugin process (started as the CLI
    starts it) to construct a RayCluster, with the inputs on the wire as the consumer's SDK sent them, and the
    plugin registers every resource with this monitor over gRPC. `from_resources` names, for some inputs, the
    consumer's resource (URN) each came from. Returns what was registered, the response (or the gRPC error) and
    the engine's log."""
    mock = _Mocks()
    recording = _RecordingMonitor(mock)
    pulumi.runtime.set_mocks(mock, project="ray-cluster", stack="test", preview=False, monitor=recording)
    engine = _Engine()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    engine_pb2_grpc.add_EngineServicer_to_server(engine, server)
    resource_pb2_grpc.add_ResourceMonitorServicer_to_server(_Monitor(recording), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    inputs = {key: pulumi.Output.secret(value) if key in SECRET_INPUTS else value for key, value in config.items()}
    request = provider_pb2.ConstructRequest(
        project="ray-cluster",
        stack="test",
        monitorEndpoint=f"127.0.0.1:{port}",
        type=TOKEN,
        name="ray",
        parent="urn:pulumi:test::ray-cluster::pulumi:pulumi:Stack::ray-cluster-test",
        inputs=_sync_await(rpc.serialize_properties(inputs, {}, keep_output_values=True)),
        inputDependencies={
            key: provider_pb2.ConstructRequest.PropertyDependencies(urns=[urn])
            for key, urn in (from_resources or {}).items()
        },
    )
    try:
        with plugin(directory, engine=f"127.0.0.1:{port}") as stub:
            response: provider_pb2.ConstructResponse | grpc.RpcError = stub.Construct(request, timeout=120)
    except grpc.RpcError as error:
        response = error
    finally:
        server.stop(grace=None)
    registrations = [_registration(recording, sent, urn, read) for sent, urn, read in recording.requests]
    return Rendered(registrations=registrations, outputs={}), response, engine.logged


def test_the_plugin_constructs_the_programs_cluster_over_grpc(tmp_path: Path) -> None:
    """The whole path but the CLI: every resource the plugin process registers, as the engine would receive it,
    equals the stack program's for the same values; its state holds the stack's outputs, the token stays a
    secret, and the component's warnings reach the engine's log."""
    config = {**SAME_CLUSTERS[1], "headMemory": "1Gi"}
    package, response, logged = construct_in_the_plugin(tmp_path, config)
    assert isinstance(response, provider_pb2.ConstructResponse), response
    program = render(config, secrets=("authToken",))
    assert by_urn(package) == by_urn(program)
    assert response.urn == "urn:pulumi:test::ray-cluster::ray-cluster:index:RayCluster::ray"
    state = json_format.MessageToDict(response.state)
    assert state["dashboardUrl"] == program.outputs["dashboardUrl"] == "http://ray-head.ml.svc:8265"
    assert state["workerReplicas"] == {"worker": 2, "gpu": 0, "highmem": 1}
    assert any(message.startswith("ray-cluster:headMemory is '1Gi'") for message in logged)


def test_a_bad_input_fails_the_plugins_construct_with_the_stack_configs_message(tmp_path: Path) -> None:
    """Nothing registered, and the engine gets the stack config's message word for word."""
    package, response, _ = construct_in_the_plugin(tmp_path, {"workers": -1})
    assert isinstance(response, grpc.RpcError)
    # As Pulumi's SDK (3.272) reports any error of a component's constructor: the message, then its stack trace.
    assert response.details().startswith(f"Unexpected <class 'Exception'>: {stack_error({'workers': -1})}:\n")
    assert package.registrations == []


def test_a_token_from_another_resource_is_waited_for(tmp_path: Path) -> None:
    """A consumer's token made by its own resource (a RandomPassword, say) arrives with that dependency: the Secret
    that holds it, and the version that rolls the pods, are created after it."""
    consumers = "urn:pulumi:test::ray-cluster::random:index/randomPassword:RandomPassword::ray-token"
    package, response, _ = construct_in_the_plugin(tmp_path, {"authToken": "t0ken"}, {"authToken": consumers})
    assert isinstance(response, provider_pb2.ConstructResponse), response
    waiting = {r.name for r in package.registrations if consumers in r.dependencies}
    # By default, a generation's pods read it from a Secret of their own too.
    assert waiting == {"ray-auth-token-secret", "ray-auth-token-version", "ray-generation-auth-token-secret"}

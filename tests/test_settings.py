"""Settings from stack config: quantities, CLI-typed values, sizes Ray can start with, images for GPU groups and
derived namespaces, without declaring resources."""

import dataclasses
from decimal import Decimal

import pulumi
import pytest
from ray._private import ray_constants

from components.config.images import gpu_image
from components.config.resources import PodResources, parse_quantity
from components.config.settings import default_namespace
from components.config.values import cli_text
from components.manifests import sizing
from tests.test_pods import SETTINGS


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("1", Decimal(1)),
        ("500m", Decimal("0.5")),
        ("2.5", Decimal("2.5")),
        ("512Mi", Decimal(512 * 2**20)),
        ("4Gi", Decimal(4 * 2**30)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities_kubernetes_accepts_are_parsed(text: str, amount: Decimal) -> None:
    assert parse_quantity("headMemory", text) == amount


@pytest.mark.parametrize("text", ["2GB", "-1", "lots", "", "0", "1K", "Infinity", "1_000", "4 Gi", "0Gi", 4])
def test_quantities_kubernetes_rejects_are_rejected(text: object) -> None:
    with pytest.raises(pulumi.RunError) as error:
        parse_quantity("headMemory", text)
    assert "ray-cluster:headMemory" in str(error.value)
    assert repr(text) in str(error.value)


@pytest.mark.parametrize(
    ("typed", "text"),
    [(8, "8"), (True, "true"), (False, "false"), (0, "0"), (-1, "-1"), (1.5, "1.5"), ("32Gi", "32Gi")],
)
def test_values_the_cli_typed_become_the_text_the_user_gave(typed: object, text: str) -> None:
    assert cli_text(typed) == text


@pytest.mark.parametrize("value", [None, [8], {"a": 1}, float("nan")])
def test_values_that_are_not_scalars_stay_as_they_are(value: object) -> None:
    assert cli_text(value) is value


def test_a_number_of_cpus_is_a_quantity() -> None:
    resources = PodResources.parse(lambda name: name, 8, 34359738368)
    assert (resources.cpu, resources.memory, resources.cpu_cores) == ("8", "34359738368", Decimal(8))


def test_the_smallest_pod_memory_is_rays_smallest_object_store() -> None:
    """The minimum is Ray's own (a test of the pin, not a copy): 250Mi is the least whose 30% Ray accepts."""
    assert sizing.RAY_MIN_OBJECT_STORE_BYTES == ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES
    smallest = sizing.min_pod_memory_bytes()
    assert smallest == 250 * 2**20
    assert sizing.object_store_bytes(smallest) >= ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES
    assert sizing.object_store_bytes(smallest - 1) < ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES
    assert sizing.shm_bytes(smallest) > sizing.object_store_bytes(smallest)
    assert PodResources.parse(lambda name: name, "1", "250Mi").memory == "250Mi"


@pytest.mark.parametrize(
    ("image", "gpu"),
    [
        ("rayproject/ray:2.60.0", "rayproject/ray:2.60.0-gpu"),
        ("rayproject/ray:2.60.0-py311", "rayproject/ray:2.60.0-py311-gpu"),
        ("rayproject/ray:2.60.0-py311-cpu", "rayproject/ray:2.60.0-py311-gpu"),
        ("docker.io/rayproject/ray:2.60.0", "docker.io/rayproject/ray:2.60.0-gpu"),
        ("rayproject/ray:2.60.0-gpu", "rayproject/ray:2.60.0-gpu"),
        ("rayproject/ray:2.60.0-py311-cu124", "rayproject/ray:2.60.0-py311-cu124"),
        # A custom image is the user's: whether it carries CUDA is for its builder to know.
        ("registry.example/ray:2.60.0", "registry.example/ray:2.60.0"),
        pytest.param(
            f"registry.example/ray@sha256:{'a' * 64}", f"registry.example/ray@sha256:{'a' * 64}", id="custom-digest"
        ),
        ("localhost:5000/rayproject/ray:2.60.0", "localhost:5000/rayproject/ray:2.60.0"),
    ],
)
def test_a_gpu_group_runs_the_gpu_variant_of_an_official_image(image: str, gpu: str) -> None:
    assert gpu_image("workerImage", image) == gpu


def test_an_official_image_pinned_by_digest_has_no_derivable_gpu_variant() -> None:
    with pytest.raises(pulumi.RunError, match=r"workerImage.*pinned by digest"):
        gpu_image("workerImage", f"rayproject/ray:2.60.0@sha256:{'a' * 64}")


def test_namespaces_of_different_stacks_and_projects_differ() -> None:
    assert default_namespace("ray-cluster", "dev") == "ray-dev"
    assert default_namespace("ray-cluster", "prod-eu") == "ray-prod-eu"
    elsewhere = default_namespace("ray-cluster-copy", "dev")
    assert elsewhere.startswith("ray-dev-") and elsewhere != "ray-dev"
    assert elsewhere != default_namespace("ray-cluster-other", "dev")
    assert len(default_namespace("another-project", "s" * 52)) == 63


def test_a_small_head_gets_a_warning_and_a_sensible_one_none() -> None:
    assert dataclasses.replace(SETTINGS, head=PodResources(cpu="1", memory="2Gi")).warnings() == []
    [warning] = dataclasses.replace(SETTINGS, head=PodResources(cpu="1", memory="1536Mi")).warnings()
    assert warning == (
        "ray-cluster:headMemory is '1536Mi': the head's own Ray processes (GCS, dashboard, Ray Client server, raylet, "
        "agents) use about 1 GiB before any work, so a head below 2Gi is likely to be OOM-killed, and every worker "
        "with it"
    )


@pytest.mark.parametrize(
    ("project", "stack", "longest", "example"),
    [
        ("ray-cluster", "Prod_EU", 59, "prod-eu"),
        # Nothing of the stack's name is left for an example: a plain one is offered.
        ("ray-cluster", "__", 59, "dev"),
        pytest.param("ray-cluster", "s" * 60, 59, "s" * 59, id="ray-cluster-60-characters"),
        # Another project's namespaces carry a 7-character suffix, so its stack names must be shorter.
        pytest.param("another-project", "s" * 53, 52, "s" * 52, id="another-project-53-characters"),
    ],
)
def test_a_stack_name_that_is_no_namespace_gets_a_message_with_a_namespace_to_set(
    project: str, stack: str, longest: int, example: str
) -> None:
    """The message says the stack's name, the rule it breaks and a command that works, with a valid name in it."""
    with pytest.raises(pulumi.RunError) as error:
        default_namespace(project, stack)
    assert str(error.value) == (
        f"ray-cluster:namespace is '', but the stack {stack!r} is not a namespace name as it is (lower-case letters, "
        f"digits and '-', at most {longest} characters), so none is derived from it: set one, e.g. "
        f"`pulumi config set namespace ray-{example}`"
    )

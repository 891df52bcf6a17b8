"""The tree shows what runs where (README, "Development"): components/config reads and checks what `pulumi up` is
given, components/manifests builds the cluster's manifests from that, components/ray_cluster.py declares them as
resources, and components/in_pod holds the programs that run inside the pods. The rules each room keeps, checked on
the imports each module makes."""

import ast
import shlex
import sys
from pathlib import Path

import pytest

from tests.mutation_testing import under_mutmut
from tests.program import ROOT
from tests.variants import VARIANTS, rendered

COMPONENTS = ROOT / "components"
IN_POD = COMPONENTS / "in_pod"
# What the Ray image has besides the standard library: Ray and what ray[default] brings.
IN_THE_IMAGE = set(sys.stdlib_module_names) | {"ray", "requests", "urllib3", "yaml"}
# The Pulumi side: the SDK, the providers' SDKs, this repository's own code.
PULUMI_SIDE = {"pulumi", "pulumi_kubernetes", "pulumi_random", "components"}
PROGRAMS = sorted(path.name for path in IN_POD.glob("*.py") if path.name != "__init__.py")
# The Python programs and the Ray container's main process, in bash (ray_node.sh).
SHIPPED = sorted([*PROGRAMS, *(path.name for path in IN_POD.glob("*.sh"))])
# Under mutation testing (scripts/mutation), mutmut's copy of each mutated module imports mutmut's trampoline: that
# copy is never shipped.
MUTATION_TOOL = {"mutmut"} if under_mutmut() else set()


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The top-level packages a module imports absolutely, and the modules it imports relatively (`..config`)."""
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            relative.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.ImportFrom):
            absolute.add(str(node.module).split(".")[0])
        elif isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
    return absolute, relative


@pytest.mark.parametrize("program", PROGRAMS)
def test_an_in_pod_program_imports_only_what_the_image_has_and_nothing_of_the_pulumi_side(program: str) -> None:
    """It is shipped alone, as its text, and runs on the image's Python."""
    absolute, relative = imports(IN_POD / program)
    absolute -= MUTATION_TOOL
    assert absolute, "no import found: the check would pass vacuously"
    assert not relative, relative
    assert absolute <= IN_THE_IMAGE and not absolute & PULUMI_SIDE, absolute - IN_THE_IMAGE


@pytest.mark.parametrize("program", SHIPPED)
def test_every_in_pod_program_is_shipped_into_a_pod(program: str) -> None:
    """In a ConfigMap, or in a container's command (quoted for its shell), as a whole: a module of another kind does
    not belong here."""
    source = (IN_POD / program).read_text()
    shipped = [text for variant in VARIANTS for manifest in rendered(variant).manifests for text in _texts(manifest)]
    assert any(source in text or shlex.quote(source) in text for text in shipped)


def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


@pytest.mark.parametrize("room", ["config", "manifests"])
def test_config_and_manifests_declare_nothing_and_know_no_wiring(room: str) -> None:
    """Pure code: no provider SDK (which declares resources), not the component, nothing that runs in a pod; the
    manifests may read the config, the config nothing of the manifests but the memory split of a pod."""
    modules = sorted((COMPONENTS / room).glob("*.py"))
    assert modules
    for module in modules:
        absolute, relative = imports(module)
        assert not absolute & {"pulumi_kubernetes", "pulumi_random"}, (module.name, absolute)
        assert not any(name.endswith(("ray_cluster", "in_pod")) for name in relative), (module.name, relative)
        if room == "config":
            assert relative <= {".", ".inputs", ".values", ".resources", ".images", ".groups", ".fault_tolerance",
                                ".serve", ".monitoring", ".settings", "..manifests"}, (
                module.name, relative)  # fmt: skip

"""One source of truth: the Ray version lives in the default image tag; docs and pins are checked against it."""

import re
from importlib.metadata import version

import yaml

from tests.program import ROOT

PROJECT = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
README = (ROOT / "README.md").read_text()


def default_ray_version() -> str:
    image: str = PROJECT["config"]["image"]["default"]
    return image.rsplit(":", 1)[1]


def test_the_rehearsal_pins_the_default_images_ray() -> None:
    pins = re.findall(r"^ray\[default\]==(\S+)$", (ROOT / "requirements-dev.txt").read_text(), re.MULTILINE)
    assert pins == [default_ray_version()]
    assert version("ray") == default_ray_version()


def test_docs_name_the_default_image() -> None:
    assert f"rayproject/ray:{default_ray_version()}" in README
    for stale in set(re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", README)):
        assert stale == default_ray_version()


def test_every_config_key_is_typed_described_and_documented() -> None:
    for key, spec in PROJECT["config"].items():
        assert spec.get("type") in {"string", "integer", "boolean", "array"}, key
        assert "default" in spec, f"{key}: a typed key without a default is required by the CLI"
        assert spec.get("description"), key
        assert f"`{key}`" in README, key


def test_ci_runs_the_readmes_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^exec (\S+)$", ci, re.MULTILINE)
    assert commands == ["scripts/test"]
    assert "```bash\nscripts/test\n```" in README

"""The stand-in for `pulumi config set` stores values as the real CLI does (pulumi/pulumi
sdk/go/common/resource/config/map.go adjustObjectValue), so tests that use it see what users' commands produce."""

import pytest

from tests.pulumi_cli import StackConfig, path_segments, typed_value


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("true", True),
        ("false", False),
        ("True", "True"),  # only the exact words, not Go's ParseBool set
        ("1", 1),
        ("8", 8),
        ("0", 0),
        ("-1", -1),
        ("+5", 5),
        ("-01", -1),  # the leading-zero rule looks at the first character only
        ("007", "007"),
        ("02", "02"),
        ("1.5", "1.5"),
        ("1e3", "1e3"),
        ("32Gi", "32Gi"),
        ("9223372036854775808", "9223372036854775808"),  # beyond int64: Atoi fails, text stays
        ("", ""),
    ],
)
def test_path_values_are_typed_as_the_cli_types_them(text: str, stored: object) -> None:
    assert typed_value(text) == stored and type(typed_value(text)) is type(stored)


def test_paths_name_keys_indexes_and_quoted_keys() -> None:
    assert path_segments('workerGroups[0].nodeSelector["nvidia.com/gpu.present"]') == [
        "workerGroups",
        0,
        "nodeSelector",
        "nvidia.com/gpu.present",
    ]
    assert path_segments("a.b[1].c") == ["a", "b", 1, "c"]
    with pytest.raises(ValueError, match="invalid config path"):
        path_segments("[0].a")


def test_top_level_keys_stay_text_and_nested_ones_are_typed() -> None:
    config = StackConfig()
    config.run("pulumi config set workers 4")
    config.run("pulumi config set --path workerGpus 1")
    config.run("pulumi config set --path 'workerGroups[0].cpu' 8")
    config.run("pulumi config set --path 'workerGroups[0].nodeSelector[\"gpu\"]' true")
    config.run("pulumi config set --path 'workerGroups[1].name' spot")
    config.run("pulumi config set --secret authToken s3cret")
    assert config.program_config() == {
        "workers": "4",
        "workerGpus": "1",
        "workerGroups": [{"cpu": 8, "nodeSelector": {"gpu": True}}, {"name": "spot"}],
        "authToken": "s3cret",
    }
    assert config.secrets == {"authToken"}
    with pytest.raises(ValueError, match="out of range"):
        config.run("pulumi config set --path 'workerGroups[5].name' far")

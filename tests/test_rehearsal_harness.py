"""The rehearsal harness on its own (no root needed): Kubernetes' `$(VAR)` expansion, and no knowledge of this
project's commands, names or ports, which it must read from the manifests."""

import re

import pytest

from tests.program import ROOT
from tests.rehearsal.kubelet import expand


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--node-ip-address=$(POD_IP)", "--node-ip-address=10.0.0.7"),
        ("$(POD_IP):$(PORT)", "10.0.0.7:6379"),
        ("$(UNDEFINED) stays", "$(UNDEFINED) stays"),
        ("$$(POD_IP) is escaped", "$(POD_IP) is escaped"),
        ('ulimit -n "$(ulimit -Hn)"', 'ulimit -n "$(ulimit -Hn)"'),
        ("plain $HOME", "plain $HOME"),
    ],
)
def test_kubernetes_variable_expansion(text: str, expected: str) -> None:
    assert expand(text, {"POD_IP": "10.0.0.7", "PORT": "6379"}) == expected


def test_the_harness_knows_nothing_of_this_project() -> None:
    facts = re.compile(r"ray start|ray-head|ray-worker|smoke|6379|8265|10001|52365|wait-gcs|RAY_AUTH|--head")
    for source in (ROOT / "tests" / "rehearsal").glob("*.py"):
        assert facts.findall(source.read_text()) == [], source.name

"""Settings from stack config: quantities, defaults and every rejected value, without declaring resources."""

from decimal import Decimal

import pulumi
import pytest

from components.settings import parse_quantity


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

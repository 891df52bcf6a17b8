"""Programs that run inside the cluster's pods, never in `pulumi up`: shipped as their text (in a ConfigMap, or in a
container's command), they run on the image's Python, so they import only the standard library, Ray and what
`ray[default]` brings, and nothing of this repository's Pulumi side (tests/test_layout.py checks)."""

from pathlib import Path


def source(program: str) -> str:
    """The text of one of these programs (`smoke_test.py`, ...), as it is shipped into a pod."""
    return (Path(__file__).parent / program).read_text()

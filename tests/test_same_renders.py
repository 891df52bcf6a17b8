"""Through the move of components/ into rooms by kind (issue 21), nothing a user sees changes: every variant renders
the same resources, by URN, with the same inputs, options and dependencies, and the package's schema is the same,
as at the last commit before the move (scripts/same_renders.py renders each tree with its own code)."""

import subprocess
import sys

from tests.program import ROOT

BEFORE_THE_MOVE = "57054c9"


def test_every_variant_renders_as_before_the_move() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "same_renders.py"), BEFORE_THE_MOVE],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]

"""What the tests do differently while mutmut runs them (scripts/mutation, docs/mutation.md), decided in one place.

mutmut tells the tests through MUTANT_UNDER_TEST: `stats` while it watches which tests call which function, then a
mutant's name while that mutant's tests run (and other phase names before, e.g. an empty one for the clean run).
"""

from __future__ import annotations

import os

# The variable mutmut sets in the tests' process.
VARIABLE = "MUTANT_UNDER_TEST"
# The phase in which mutmut credits a test with each function the test runs.
STATS_PHASE = "stats"


def mutant_under_test() -> str | None:
    """mutmut's phase or mutant now, or None when mutmut does not run these tests."""
    return os.environ.get(VARIABLE)


def under_mutmut() -> bool:
    """Whether mutmut runs these tests (in any phase)."""
    return mutant_under_test() is not None

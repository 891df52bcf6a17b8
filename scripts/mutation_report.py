"""The mutation score of the last `mutmut run` (scripts/mutation), against docs/mutation.md's equivalent mutants.

A survivor is either a gap in the tests or an equivalent mutant (one no test could tell from the original, e.g.
a default that equals the value always passed); docs/mutation.md lists the equivalent ones, each with why. The
score counts killed mutants among the non-equivalent ones. Exits 1 if a survivor is unexplained, if a listed
one was killed after all (the list must stay true), or if the score is below the target.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.90
# docs/mutation.md lists each equivalent mutant as a bullet that starts with its name in backticks.
EQUIVALENT_ENTRY = re.compile(r"^- `(components\.[\w.]+__mutmut_\d+)`", re.MULTILINE)
# What mutmut reports for mutants the fast tests reject (a test that never ends is a failure too).
KILLED = {"killed", "timeout"}


def results() -> dict[str, str]:
    """Every mutant's status, from mutmut's per-file records."""
    statuses: dict[str, str] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            statuses[name] = status_by_exit_code[exit_code]
    return statuses


def module(mutant: str) -> str:
    """The module a mutant is of: `components.config.inputs.x_f__mutmut_3` -> `components.config.inputs`."""
    return re.sub(r"\.x[_ǁ].*", "", mutant)


def main() -> int:
    statuses = results()
    if not statuses:
        print("no mutmut results under mutants/: run scripts/mutation first", file=sys.stderr)
        return 1
    listed = set(EQUIVALENT_ENTRY.findall((ROOT / "docs" / "mutation.md").read_text()))
    unchecked = sorted(name for name, status in statuses.items() if status == "not checked")
    survivors = {name for name, status in statuses.items() if status not in KILLED and status != "not checked"}
    equivalent = survivors & listed
    unexplained = sorted(survivors - listed)
    stale = sorted(name for name in listed if statuses.get(name, "killed") in KILLED)
    counts = Counter(statuses.values())
    killed = sum(counts[status] for status in KILLED)
    considered = len(statuses) - len(equivalent) - len(unchecked)
    score = killed / considered
    print(f"mutants: {len(statuses)} ({', '.join(f'{n} {s}' for s, n in counts.most_common())})")
    print(f"equivalent (docs/mutation.md): {len(equivalent)}")
    print(f"score: {killed}/{considered} non-equivalent mutants killed = {score:.1%} (target {TARGET:.0%})")
    if unchecked:
        print(f"not checked: {len(unchecked)} (the run stopped early; `scripts/mutation` with no argument resumes it)")
    if unexplained:
        by_module = Counter(module(name) for name in unexplained)
        print(f"unexplained survivors by module: {', '.join(f'{m} {n}' for m, n in sorted(by_module.items()))}")
    for name in unexplained:
        print(f"unexplained survivor: {name} ({statuses[name]}): kill it, or list it as equivalent with why")
    for name in stale:
        print(f"listed as equivalent, but {statuses.get(name, 'no such mutant')}: {name}")
    return 1 if unexplained or stale or unchecked or score < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())

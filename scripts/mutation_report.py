"""The mutation score of the last `mutmut run` (scripts/mutation), against docs/mutation.md's equivalent mutants.

A survivor is either a gap in the tests or an equivalent mutant (one no test could tell from the original, e.g.
a default that equals the value always passed); docs/mutation.md lists the equivalent ones, each with why. The
score counts killed mutants among the non-equivalent ones. Exits 1 if a survivor is unexplained, if a listed
one was killed after all (the list must stay true), or if the score is below the target.

`--sample N` reports on a sample of N mutants drawn at random, the same N for the same mutants (scripts/mutation
--sample runs just those): the sample's score, and the 95% interval in which the whole tree's score lies (Wilson's, for
a proportion drawn from a sample). `--sample N --names` prints the sample's names, for `mutmut run`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.90
# docs/mutation.md lists each equivalent mutant as a bullet that starts with its name in backticks.
EQUIVALENT_ENTRY = re.compile(r"^- `(components\.[\w.]+__mutmut_\d+)`", re.MULTILINE)
# What mutmut reports for mutants the fast tests reject (a test that never ends is a failure too).
KILLED = {"killed", "timeout"}
# The sample's seed: the same mutants each time, so that a sample's run can be resumed and its verdicts re-read.
SAMPLE_SEED = 0


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


def sample(names: list[str], size: int) -> list[str]:
    """`size` of the mutants, drawn at random with SAMPLE_SEED, in name order."""
    return sorted(random.Random(SAMPLE_SEED).sample(sorted(names), size))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, metavar="N", help="report on N mutants drawn at random")
    parser.add_argument("--names", action="store_true", help="with --sample: print the sample's names, and stop")
    options = parser.parse_args()
    every_status = results()
    if not every_status:
        print("no mutmut results under mutants/: run scripts/mutation first", file=sys.stderr)
        return 1
    statuses = every_status
    if options.sample is not None:
        drawn = sample(list(every_status), options.sample)
        if options.names:
            print("\n".join(drawn))
            return 0
        print(f"a sample of {len(drawn)} of the {len(every_status)} mutants (seed {SAMPLE_SEED})")
        statuses = {name: every_status[name] for name in drawn}
    listed = set(EQUIVALENT_ENTRY.findall((ROOT / "docs" / "mutation.md").read_text()))
    # A listed name no mutant has any more (its function changed since) is stale in a sample too; a listed
    # mutant outside the sample is not judged by it.
    gone = sorted(listed - set(every_status))
    unchecked = sorted(name for name, status in statuses.items() if status == "not checked")
    survivors = {name for name, status in statuses.items() if status not in KILLED and status != "not checked"}
    equivalent = survivors & listed
    unexplained = sorted(survivors - listed)
    stale = sorted(name for name in listed & set(statuses) if statuses[name] in KILLED)
    counts = Counter(statuses.values())
    killed = sum(counts[status] for status in KILLED)
    considered = len(statuses) - len(equivalent) - len(unchecked)
    score = killed / considered
    print(f"mutants: {len(statuses)} ({', '.join(f'{n} {s}' for s, n in counts.most_common())})")
    print(f"equivalent (docs/mutation.md): {len(equivalent)}")
    print(f"score: {killed}/{considered} non-equivalent mutants killed = {score:.1%} (target {TARGET:.0%})")
    if options.sample is not None and considered:
        low, high = binomtest(killed, considered).proportion_ci(confidence_level=0.95, method="wilson")
        print(f"the whole tree's score, 95% interval from this sample: {low:.1%} to {high:.1%}")
    if unchecked:
        again = f"scripts/mutation --sample {options.sample}" if options.sample is not None else "scripts/mutation"
        print(f"not checked: {len(unchecked)} (the run stopped early; `{again}` resumes it)")
    if unexplained:
        by_module = Counter(module(name) for name in unexplained)
        print(f"unexplained survivors by module: {', '.join(f'{m} {n}' for m, n in sorted(by_module.items()))}")
    for name in unexplained:
        print(f"unexplained survivor: {name} ({statuses[name]}): kill it, or list it as equivalent with why")
    for name in stale:
        print(f"listed as equivalent, but {statuses[name]}: {name}")
    for name in gone:
        print(f"listed as equivalent, but no such mutant: {name}")
    return 1 if unexplained or stale or gone or unchecked or score < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())

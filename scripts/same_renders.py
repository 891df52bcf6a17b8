"""Whether the program declares the same thing as it did at a git revision: for a change that should change nothing a
user sees (a refactoring), run `.venv/bin/python scripts/same_renders.py <revision>`.

For every config variant the tests render (tests/variants.py) it compares, between the revision (checked out into a
temporary worktree) and the working tree: each resource's URN, type, parent, inputs (the manifest), resource options
and dependencies, and the stack's outputs; and the component package's schema. Each tree renders with its own code,
in a process of its own. Prints what differs; exits 1 if anything does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Runs in the tree being rendered, with only what both the revision and the working tree have: tests.program,
# tests.variants and the component package's schema from components.RayCluster.
DUMP = """
import dataclasses, json, sys
from pulumi.provider.experimental.component import ComponentProvider
from components import RayCluster
from tests.program import render
from tests.variants import REDIS_CA, VARIANTS

def resource(registration):
    return {
        "urn": registration.urn,
        "type": registration.type,
        "parent": registration.parent,
        "inputs": registration.inputs,
        "dependencies": sorted(registration.dependencies),
        "property_dependencies": {k: sorted(v) for k, v in registration.property_dependencies.items()},
        "options": dataclasses.asdict(registration.options),
        "secret_paths": sorted(registration.secret_paths),
        "read": registration.read,
    }

renders = {}
for name, config in sorted(VARIANTS.items()):
    rendered = render(config)
    # By URN: the order the SDK registers resources in is not fixed.
    renders[name] = {"resources": {r.urn: resource(r) for r in rendered.registrations}, "outputs": rendered.outputs}
schema = json.loads(ComponentProvider([RayCluster], "ray-cluster").schema or "{}")
text = json.dumps({"renders": renders, "schema": schema}, sort_keys=True, default=str)
# The variants' CA is drawn anew in every process.
print(text.replace(json.dumps(REDIS_CA.strip())[1:-1], "<a throwaway CA>"))
"""


def dump(tree: Path) -> dict[str, object]:
    python = ROOT / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", DUMP], cwd=tree, env={"PYTHONPATH": str(tree)}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"rendering {tree} failed:\n{done.stderr[-3000:]}")
    loaded: dict[str, object] = json.loads(done.stdout)
    return loaded


def differences(before: object, after: object, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            line
            for key in sorted(before.keys() | after.keys(), key=str)
            for line in (
                differences(before[key], after[key], f"{path}/{key}")
                if key in before and key in after
                else [f"{path}/{key}: {'only after' if key in after else 'only before'}"]
            )
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            line
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for line in differences(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [f"{path}: {json.dumps(before)[:200]} -> {json.dumps(after)[:200]}"]


def main(revision: str) -> int:
    with tempfile.TemporaryDirectory(prefix="same-renders-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision], check=True,
                       capture_output=True)  # fmt: skip
        try:
            before = dump(tree)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    after = dump(ROOT)
    found = differences(before, after)
    for line in found:
        print(line)
    renders = before["renders"]
    assert isinstance(renders, dict)
    print(f"{len(found)} differences in {len(renders)} variants and the package schema against {revision}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "HEAD"))

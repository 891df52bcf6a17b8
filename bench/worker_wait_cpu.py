"""The CPU a worker's wait for its head costs per check: this tree's components/in_pod/worker_start.py against the
same file at a baseline commit, side by side, against one running head.

Each side waits as a worker does for a head whose own node has registered, `--checks` times over, and the CPU time
of its process and of the children it forked (`getrusage`) is divided by the number of checks. The baseline must
have the `why_not_ready(address)` check (a forked child per check) that this tree replaced with one child waiting
through one GCS client (`check_until_ready(address, report)`); both sides load the file as the pod ships it.
Runs the image's Ray (the project's `.venv` has the same pinned version):

    .venv/bin/python bench/worker_wait_cpu.py [--baseline f4af025~1] [--checks 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKER_START = "components/in_pod/worker_start.py"


def load(name: str, text: str, directory: Path) -> ModuleType:
    path = directory / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_seconds() -> float:
    """This process's CPU time and that of its children it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def baseline_cost(module: ModuleType, address: str, checks: int) -> float:
    """CPU seconds per check of the baseline: a forked child per check."""
    start = cpu_seconds()
    for _ in range(checks):
        assert module.why_not_ready(address) is None
    return (cpu_seconds() - start) / checks


def current_cost(module: Any, address: str, checks: int) -> float:
    """CPU seconds per check of this tree: one child whose wait sees the head's node missing `checks` times (the
    node query answers "missing" until the last call), its fork, health check and client included."""
    answers = iter([*[False] * (checks - 1), True])
    real_missing = module.head_node_missing

    def missing_until_the_last(nodes: object) -> str | None:
        real_missing(nodes)  # the query itself, as each check makes it
        return None if next(answers) else module.HEAD_NODE_MISSING

    module.head_node_missing = missing_until_the_last
    module.HEAD_NODE_POLL_SECONDS = 0.0
    start = cpu_seconds()
    assert [why for why in module.try_in_a_child(address)][-1] == ""
    return (cpu_seconds() - start) / checks


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="f4af025~1", help="the commit whose worker_start.py is the baseline")
    parser.add_argument("--checks", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="worker-wait-cpu-") as scratch:
        directory = Path(scratch)
        baseline_text = subprocess.run(
            ["git", "show", f"{options.baseline}:{WORKER_START}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        baseline = load("worker_start_baseline", baseline_text, directory)
        current = load("worker_start_current", (ROOT / WORKER_START).read_text(), directory)
        ray = Path(sys.executable).parent / "ray"
        head = subprocess.Popen(
            [str(ray), "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
             f"--temp-dir={directory / 'ray'}", "--block"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        address = f"127.0.0.1:{port}"
        try:
            while baseline.why_not_ready(address) is not None:
                time.sleep(0.5)
            print(f"CPU per check, {options.checks} checks a round, against a running head ({address})")
            print("| round | baseline (ms) | this tree (ms) | ratio |\n|---|---|---|---|")
            for round_number in range(1, options.rounds + 1):
                old = baseline_cost(baseline, address, options.checks)
                new = current_cost(current, address, options.checks)
                print(f"| {round_number} | {old * 1000:.1f} | {new * 1000:.1f} | {new / old:.3f}x |")
        finally:
            os.killpg(head.pid, 15)
            head.wait(timeout=60)


if __name__ == "__main__":
    main()

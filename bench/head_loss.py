"""Losing the head: the seconds from deleting the head pod until the cluster does new work again, with GCS fault
tolerance (`gcsFaultTolerance: true`, the stack's own Redis) against without it, side by side.

Each run deploys the rendered cluster (rehearsal harness, `--workers` workers, every other key at its default),
deletes the head pod as an eviction or `kubectl delete pod` does (graceful), and measures until
- the new head pod is ready (its GCS answers),
- "new work": a Ray job submitted through the new head's Jobs API, as soon as it answers, has run one task on
  every worker (it waits inside for every worker to be a live node: without fault tolerance they must first
  exit, restart and rejoin; with it they never left), and
- every worker restart that the loss caused (0 with fault tolerance).
Runs alternate between the two modes, `--repeat` each; the medians and their ratio are reported, with the raw
runs. Needs root, like the rehearsal.

    sudo .venv/bin/python bench/head_loss.py [--workers 2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.manifests import ray_node
from tests.program import render
from tests.rehearsal.cluster import Cluster, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_jobs import Dashboard, active  # sibling modules, found once this folder is on the path
from side_by_side import alternate, medians_table

TIMEOUT = 600
# Waits inside the job until every worker is a live node, then runs one task pinned to each of them.
NEW_WORK = """
import sys, time, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
expected = int(sys.argv[1])
while True:
    workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
    if len(workers) == expected:
        break
    time.sleep(0.2)

@ray.remote(num_cpus=1)
def here():
    return ray.get_runtime_context().get_node_id()

pinned = [NodeAffinitySchedulingStrategy(worker, soft=False) for worker in workers]
ran = ray.get([here.options(scheduling_strategy=strategy).remote() for strategy in pinned])
assert sorted(ran) == sorted(workers), (ran, workers)
print("new work ran on every worker")
"""


@dataclass
class Run:
    head_ready: float
    new_work: float
    worker_restarts: int


def lose_the_head(fault_tolerant: bool, workers: int) -> Run:
    cluster = Cluster(Path(f"/run/ray-bench-head-loss-{os.getpid()}"))
    try:
        rendered = render({"workers": str(workers), "gcsFaultTolerance": str(fault_tolerant).lower()})
        cluster.up(rendered, timeout=TIMEOUT)
        token = str(rendered.one("Secret", "ray-auth-token")["stringData"][ray_node.AUTH_TOKEN_KEY])
        [old_head], worker_pods = active(cluster, "ray-head-"), active(cluster, "ray-worker-")
        restarts_before = sum(pod.restarts() for pod in worker_pods)
        deleted = time.monotonic()
        cluster.delete_pod(old_head.name)
        [head] = wait_for(
            lambda: [p for p in active(cluster, "ray-head-") if p.ready and p.name != old_head.name] or None,
            TIMEOUT,
            "a new head",
            interval=0.1,
        )
        head_ready = time.monotonic() - deleted
        dashboard = Dashboard(head, token)

        def submitted() -> str | None:
            try:
                return dashboard.submit(NEW_WORK, workers)
            except (OSError, urllib.error.HTTPError, ValueError):
                return None

        submission = wait_for(submitted, TIMEOUT, "the Jobs API of the new head", interval=0.2)

        def finished() -> str | None:
            status = str(dashboard.call(f"/api/jobs/{submission}")["status"])
            return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

        status = wait_for(finished, TIMEOUT, "the new work", interval=0.2)
        new_work = time.monotonic() - deleted
        if status != "SUCCEEDED":
            logs = dashboard.call(f"/api/jobs/{submission}/logs")["logs"]
            raise RuntimeError(f"the new work {status}:\n{logs}")
        return Run(head_ready, new_work, sum(pod.restarts() for pod in worker_pods) - restarts_before)
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()

    def describe(fault_tolerant: bool, run: Run) -> str:
        mode = "fault tolerant" if fault_tolerant else "without      "
        return (
            f"{mode}  head ready {run.head_ready:5.1f}  new work {run.new_work:5.1f}  "
            f"worker restarts {run.worker_restarts}"
        )

    runs, raws = alternate(arguments.repeat, lambda mode: lose_the_head(mode, arguments.workers), describe)
    print(f"{arguments.workers} workers, medians of {arguments.repeat} runs each, alternating:\n")
    medians_table(
        runs,
        "| | with fault tolerance | without | ratio |",
        {"head_ready": "new head ready (s)", "new_work": "new work done on every worker (s)"},
    )
    restarts = (sum(r.worker_restarts for r in runs[True]), sum(r.worker_restarts for r in runs[False]))
    print(f"| worker restarts, all runs | {restarts[0]} | {restarts[1]} | |")
    print("\nRaw runs (seconds after the head pod's deletion):\n")
    print("```\n" + "\n".join(raws) + "\n```")


if __name__ == "__main__":
    main()

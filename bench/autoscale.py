"""Scale-up: the seconds from work that waits for a CPU until it runs on a new worker, with Ray's autoscaler
(`maxWorkers` above `workers`) against the same scale-up done by hand (`kubectl scale`, issued the moment the
demand appears), side by side.

Each run deploys the rendered cluster afresh (rehearsal harness: the head and 1 worker, 1 CPU each) and submits
a Ray job whose driver notes the time, then asks for one CPU on each of three nodes (a STRICT_SPREAD placement
group, which only a third node completes) and runs a 5 s task in each bundle. With the autoscaler, nothing else
happens: Ray's monitor sees the demand and raises the Deployment's replicas. By hand, the benchmark watches the
job's log and sets the replicas to 2 through the API (as `kubectl scale` does) as soon as the driver says the
demand is there: an operator who reacts within a fifth of a second. Measured until the waiting task starts on
the new worker, and until that worker's pod is ready; with the autoscaler also the scale-down: from the end of
the work (every task ended within a second of the others) until one of the two, now idle, workers' pod has left
the API (idle for IDLE_SECONDS, drained, deleted). Runs alternate between the two modes, `--repeat` each; the
medians and their ratio are reported, with the raw runs. Needs root, like the rehearsal.

    sudo .venv/bin/python bench/autoscale.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.error
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
NAMESPACE = "ray-bench"
IDLE_SECONDS = 30
# The driver prints the moment it asks for one CPU on each of 3 nodes (a placement group that only a third node can
# complete: the head and the worker offer 1 CPU each), when the task in the third bundle started, and when the work
# ended.
DEMAND = """
import time, ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
ray.init()
before = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}

@ray.remote(num_cpus=1)
def work():
    started = time.time()
    time.sleep(5)
    return ray.util.get_node_ip_address(), started

demand = time.time()
print("demand at", demand, flush=True)
group = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
ray.get(group.ready())
strategies = [PlacementGroupSchedulingStrategy(group, index) for index in range(3)]
runs = ray.get([work.options(scheduling_strategy=strategy).remote() for strategy in strategies])
[started] = [at for ip, at in runs if ip not in before]
print("started on the new worker after", started - demand, flush=True)
remove_placement_group(group)
print("done at", time.time(), flush=True)
"""


@dataclass
class Run:
    task_started: float  # seconds from the demand until the task started on the new worker
    pod_ready: float  # seconds from the demand until the new worker's pod was ready
    scale_down: float | None  # with the autoscaler: seconds from the end of the work until an idle worker is gone


def scale_up(autoscaler: bool) -> Run:
    cluster = Cluster(Path(f"/run/ray-bench-autoscale-{os.getpid()}"))
    try:
        config = {"namespace": NAMESPACE, "workers": "1", "testJob": "false"}
        if autoscaler:
            config |= {"maxWorkers": "2", "idleTimeoutSeconds": str(IDLE_SECONDS)}
        rendered = render(config)
        cluster.up(rendered, timeout=TIMEOUT)
        token = str(rendered.one("Secret", "ray-auth-token")["stringData"][ray_node.AUTH_TOKEN_KEY])
        [head], [first] = active(cluster, "ray-head-"), active(cluster, "ray-worker-")
        dashboard = Dashboard(head, token)
        submission = dashboard.submit(DEMAND, 0)

        def logged(prefix: str) -> float | None:
            try:
                logs = str(dashboard.call(f"/api/jobs/{submission}/logs")["logs"])
            except (OSError, urllib.error.HTTPError, ValueError):
                return None
            lines = [line for line in logs.splitlines() if line.startswith(prefix)]
            return float(lines[0].removeprefix(prefix)) if lines else None

        demand = wait_for(lambda: logged("demand at "), TIMEOUT, "the demand", interval=0.2)
        if not autoscaler:
            cluster.scale(NAMESPACE, "ray-worker", 2)
        wait_for(
            lambda: [p for p in active(cluster, "ray-worker-") if p.name != first.name and p.ready] or None,
            TIMEOUT,
            "a second worker, ready",
            interval=0.1,
        )
        pod_ready = time.time() - demand
        task_started = wait_for(lambda: logged("started on the new worker after "), TIMEOUT, "the task", interval=0.5)
        if not autoscaler:
            return Run(task_started, pod_ready, None)
        done = wait_for(lambda: logged("done at "), TIMEOUT, "the end of the work", interval=0.2)
        # Both workers are idle now: the autoscaler removes either one.
        wait_for(
            lambda: len([p for p in cluster.pods.values() if p.name.startswith("ray-worker-")]) == 1,
            TIMEOUT,
            "an idle worker gone",
            interval=0.1,
        )
        return Run(task_started, pod_ready, time.time() - done)
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()

    def describe(autoscaler: bool, run: Run) -> str:
        mode = "autoscaler" if autoscaler else "by hand   "
        gone = f"  idle worker gone {run.scale_down:5.1f}" if run.scale_down is not None else ""
        return f"{mode}  pod ready {run.pod_ready:5.1f}  task started {run.task_started:5.1f}{gone}"

    runs, raws = alternate(arguments.repeat, scale_up, describe)
    print(f"Medians of {arguments.repeat} runs each, alternating:\n")
    medians_table(
        runs,
        "| seconds after the demand | Ray's autoscaler | by hand | ratio |",
        {"pod_ready": "the new worker's pod ready", "task_started": "the task runs on it"},
    )
    gone_after = statistics.median(run.scale_down for run in runs[True] if run.scale_down is not None)
    print(
        f"\nScale-down with Ray's autoscaler (idleTimeoutSeconds {IDLE_SECONDS}): an idle worker's pod gone "
        f"{gone_after:.1f} s (median) after the work ended."
    )
    print("\nRaw runs:\n")
    print("```\n" + "\n".join(raws) + "\n```")


if __name__ == "__main__":
    main()

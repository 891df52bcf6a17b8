"""Smoke test for a Ray cluster, run by the Kubernetes Job as a Ray Client driver.

Shipped to the Job in a ConfigMap (nothing is downloaded at run time). It waits, within a bound, until the head
and every expected worker are alive, then runs rounds of nested remote calls as Ray's original Kubernetes example
did: `where(where(()))` returns the nodes both calls ran on, so a pair of different nodes proves that an object
travelled between them. It prints `Success!` and exits 0, or prints what failed and exits 1, which fails the Job
and therefore `pulumi up`.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import Counter
from typing import Any

import ray

CALLS_PER_ROUND = 100
CALLS_PER_NODE = 2
MAX_ROUNDS = 30
# How long to wait for the connection and every node; the Job sets it (components/pods.py), within its own deadline.
NODE_WAIT_SECONDS = float(os.environ["SMOKE_NODE_WAIT_SECONDS"])
HEAD_RESOURCE = "node:__internal_head__"


@ray.remote(num_cpus=0, scheduling_strategy="SPREAD")
def where(trail: tuple[str, ...]) -> tuple[str, ...]:
    """Append the node this call ran on; SPREAD makes every node take a share of the calls. It holds no CPU: the
    proof is that objects travel between nodes, which must not wait for CPUs that the cluster's own work (a Serve
    replica, a long job) holds, nor ask the autoscaler for a node."""
    time.sleep(0.01)
    return (*trail, ray.get_runtime_context().get_node_id())


def connect(deadline: float) -> None:
    """Connect to the cluster, retrying while the head is still starting its client server (bounded)."""
    while True:
        try:
            ray.init()  # the address comes from RAY_ADDRESS
            return
        except ConnectionError as error:
            if time.monotonic() > deadline:
                raise
            print(f"cannot connect yet ({error.__class__.__name__}), retrying", flush=True)
            ray.shutdown()
            time.sleep(3)


def alive_nodes() -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node["Alive"]]  # type: ignore[no-untyped-call]


def wait_for_nodes(expected_workers: int, most_workers: int, deadline: float) -> list[dict[str, Any]]:
    """Until 1 head and the expected workers are alive: exactly that many (a replaced pod's old node lingers as alive
    for a while), or, where Ray's autoscaler may have added workers, up to `most_workers`. Returns every live node,
    the head first."""
    fixed = most_workers == expected_workers
    expected = f"{expected_workers}" if fixed else f"{expected_workers}-{most_workers}"
    wanted = f"{expected_workers + 1} ({expected} workers)" if fixed else f"1 head and {expected} workers"
    while True:
        nodes = alive_nodes()
        workers = [node for node in nodes if HEAD_RESOURCE not in node["Resources"]]
        print(f"{len(nodes)} nodes alive, {len(workers)} workers of {expected} expected", flush=True)
        if expected_workers <= len(workers) <= most_workers and len(nodes) == len(workers) + 1:
            return [node for node in nodes if node not in workers] + workers
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(nodes)} nodes alive ({len(workers)} workers), not {wanted}, after {NODE_WAIT_SECONDS:.0f}s"
            )
        time.sleep(2)


def calls_per_round(nodes: list[dict[str, Any]]) -> int:
    """CALLS_PER_NODE nested calls per live node, at most CALLS_PER_ROUND. The calls hold no CPU, so nothing but
    this bound keeps Ray from starting a worker process for each call in flight (and on a fault-tolerant head,
    which otherwise runs no tasks); SPREAD gives every node its share of a round."""
    return min(CALLS_PER_ROUND, CALLS_PER_NODE * len(nodes))


def run_rounds(worker_ids: set[str], multi_node: bool, calls: int = CALLS_PER_ROUND) -> set[str]:
    """Rounds of `calls` nested calls until every worker ran a call and, with 2+ nodes, an object changed node."""
    pairs: Counter[tuple[str, ...]] = Counter()
    for round_number in range(1, MAX_ROUNDS + 1):
        started = time.monotonic()
        pairs.update(ray.get([where.remote(where.remote(())) for _ in range(calls)]))
        ran_on = {node for pair in pairs for node in pair}
        moved = sum(count for pair, count in pairs.items() if pair[0] != pair[1])
        print(
            f"round {round_number}: {calls} nested calls in {time.monotonic() - started:.2f}s, "
            f"{len(ran_on)} nodes ran calls, {moved} objects moved between nodes",
            flush=True,
        )
        if worker_ids <= ran_on and (moved > 0 or not multi_node):
            return ran_on
    missing = sorted(worker_ids - ran_on)
    raise RuntimeError(f"after {MAX_ROUNDS} rounds: workers that ran no call {missing}, objects moved {moved}")


def main() -> int:
    expected_workers = int(os.environ["SMOKE_EXPECTED_WORKERS"])
    most_workers = int(os.environ.get("SMOKE_MOST_WORKERS", expected_workers))
    print(f"smoke test from {socket.gethostname()}: groups {os.environ['SMOKE_WORKER_GROUPS']}", flush=True)
    try:
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        connect(deadline)
        nodes = wait_for_nodes(expected_workers, most_workers, deadline)
        workers = nodes[1:]
        calls = calls_per_round(nodes)
        ran_on = run_rounds({node["NodeID"] for node in workers}, multi_node=len(workers) > 0, calls=calls)
        addresses = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}  # type: ignore[no-untyped-call]
        print(f"nodes that ran calls: {' '.join(sorted(addresses.get(n, n) for n in ran_on))}", flush=True)
    except Exception as error:  # noqa: BLE001 - any failure must end as a clear message and exit code 1
        print(f"Smoke test FAILED: {type(error).__name__}: {error}", flush=True)
        return 1
    print("Success!", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

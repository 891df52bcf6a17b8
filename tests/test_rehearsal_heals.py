"""The rehearsal of a cluster that heals and changes: the pods the program renders, run as a real Ray cluster (see
tests/rehearsal/), apart from tests/test_rehearsal.py's so the two run side by side.

One cluster of 2 workers lives through the module, in order, as a stack lives through its `pulumi up`s: its head's
node is lost and the workers rejoin the new head; a worker that starts while the lost head's address answers nothing
waits only seconds past the new head; a head-only change, a new token and a new image (on a node sized exactly for
the cluster) each roll what they must and run the smoke test again; a smoke test that failed runs again on the next
`pulumi up`. Needs root (network namespaces); without it these tests fail, they never skip.
"""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal

import pytest

from components.config.resources import parse_quantity
from tests.program import Rendered
from tests.rehearsal.cluster import Cluster, JobFailedError, wait_for
from tests.rehearsal.kubelet import Pod
from tests.rehearsal.scheduler import Node, add, pod_requests
from tests.test_rehearsal import CONFIG, RECONNECT_SECONDS, UP_TIMEOUT, Deployment, ran_calls_on

pytestmark = pytest.mark.rehearsal

NEW_TOKEN = "a-rotated-token-0123456789abcdef0123456789"


# Two: a rollout of them on a node sized exactly still goes one pod at a time (maxUnavailable 25% of 2 rounds to 0,
# and with maxSurge 0 the Deployment controller takes 1), and each change here restarts or rolls every one of them.
WORKERS = 2


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    return Deployment.deployed(cluster, {**CONFIG, "workers": str(WORKERS)})


def worker_exits_since(workers: list[Pod], since: float) -> dict[str, list[float]]:
    """Per worker pod, the seconds after `since` at which its Ray container exited."""
    return {pod.name: [t - since for t in pod.statuses["ray-worker"].exits if t >= since] for pod in workers}


def test_a_lost_head_is_replaced_and_the_workers_rejoin_it(deployment: Deployment) -> None:
    old_head, workers = deployment.head(), deployment.workers()
    node = deployment.cluster.node
    # The head's node is lost and the replacement waits for room (here: a cordoned node) for longer than
    # gcsReconnectTimeoutSeconds, so every worker takes the timeout's path.
    cordon = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    deployment.cluster.node = dataclasses.replace(node, taints=(*node.taints, cordon))
    deleted_at = time.monotonic()
    deployment.cluster.delete_pod(old_head.name)
    # Each raylet gives up once the head has been gone gcsReconnectTimeoutSeconds (Ray's default: 60 s), not sooner.
    bound = RECONNECT_SECONDS + 10
    wait_for(
        lambda: all(worker_exits_since(workers, deleted_at).values()),
        bound,
        lambda: f"every worker's Ray exited: {worker_exits_since(workers, deleted_at)}",
    )
    exits = worker_exits_since(workers, deleted_at)
    assert all(RECONNECT_SECONDS <= times[0] <= bound for times in exits.values()), exits
    deployment.cluster.node = node
    new_head = wait_for(lambda: [p for p in deployment.pods("ray-head-") if p.ready], 120, "a new head")[0]
    assert new_head.name != old_head.name
    deployment.wait_joined(120, "the workers rejoined the new head")
    assert [pod.name for pod in deployment.workers()] == [pod.name for pod in workers]  # same pods, restarted
    assert {pod.ip for pod in workers} <= ran_calls_on(deployment.smoke_test())


def test_a_new_workers_wait_ends_within_seconds_of_a_new_head_while_the_lost_heads_address_answers_nothing(
    deployment: Deployment,
) -> None:
    """The head's node is lost: the old head pod stays Terminating, a ready endpoint of the head Service (which
    publishes not-ready addresses) that drops every packet, beside the new head. A worker that starts while the
    new head waits for room sends its first tries to the lost address alone; each ends after the connect bound (2 s)
    instead of the kernel's two minutes of SYN retries, so its wait ends within seconds of the new head. Ray's own
    connections to the head Service may land on the lost address too, under Ray's own timeouts: once the lost pod
    is force-deleted (README, Troubleshooting), every worker is in the new head's cluster."""
    cluster, lost, workers = deployment.cluster, deployment.head(), deployment.workers()
    node = cluster.node
    # Room for one more worker, not for the new head (4Gi to a worker's 2Gi), made before the head is lost: the
    # controllers replace a lost pod within a pass, and the scheduler must never see the lost head's room free (CI
    # saw the new head placed early when the room shrank after the loss).
    wait_for(lambda: not any(p.terminating for p in cluster.pods.values()), 120, "no pod terminating")
    used: dict[str, Decimal] = {}
    for pod in cluster.pods.values():
        if pod.node is not None and not pod.finished and not pod.lost and pod is not lost:
            add(used, pod_requests(pod.spec))
    worker = pod_requests(deployment.rendered.one("Deployment", "ray-worker")["spec"]["template"]["spec"])
    room = {resource: str(used[resource] + worker[resource]) for resource in ("cpu", "memory")}
    cluster.node = dataclasses.replace(node, allocatable={**node.allocatable, **room})
    try:
        cluster.lose_pod(lost.name)
        cluster.scale("ray-test", "ray-worker", len(workers) + 1)
        [new] = wait_for(lambda: [p for p in deployment.workers() if p not in workers and p.node], 30, "a new worker")
        wait_for(
            lambda: "no answer within 2 s" in new.logs("wait-gcs-ready"),
            30,
            lambda: f"the new worker trying the lost head: {new.logs('wait-gcs-ready')}",
        )
        assert cluster.service_endpoints("ray-test", "ray-head") == [lost.ip]
        cluster.node = node  # room for the new head
        head = wait_for(lambda: [p for p in deployment.pods("ray-head-") if p.ready], 120, "a new head")[0]
        assert sorted(cluster.service_endpoints("ray-test", "ray-head")) == sorted([lost.ip, head.ip])
        assert head.ready_since is not None
        started = new.statuses["ray-worker"].starts
        # Each try to the lost address costs 2 s, not the kernel's two minutes.
        wait_for(lambda: started, 30, lambda: f"the new worker's wait: {new.logs('wait-gcs-ready')}")
        waited = started[0] - head.ready_since
        print(f"a new worker's wait ended {waited:.1f} s after the new head was ready")
    finally:
        cluster.node = node
        cluster.delete_pod(lost.name, grace_seconds=0)  # the node object is gone: its pods are force-deleted
        cluster.scale("ray-test", "ray-worker", len(workers))
    wait_for(
        lambda: len(deployment.workers()) == len(workers) and deployment.joined(),
        180,
        lambda: f"back to {WORKERS} workers: {deployment.membership()}",
    )


def test_a_head_only_change_runs_the_smoke_test_again_once_the_head_is_back(deployment: Deployment) -> None:
    old_head, workers = deployment.head(), deployment.workers()
    deployment.update(headMemory="3Gi")
    new_head = deployment.head()
    assert new_head.name != old_head.name and new_head.spec["containers"][0]["resources"]["limits"]["memory"] == "3Gi"
    assert [pod.name for pod in deployment.workers()] == [pod.name for pod in workers]  # not rolled: reconnected
    [run] = deployment.smoke_test_runs()
    assert new_head.ready_since is not None and old_head.deleted_at is not None
    assert run.phase == "Succeeded" and run.created_at > new_head.ready_since  # the test ran against the new head
    assert "Success!" in run.logs("smoke-test")
    assert deployment.wait_joined(120, "every worker in the new head's cluster")
    # A worker whose raylet reconnected to the new head in time learns at its next self-check that this head does
    # not know it, and exits to rejoin: within seconds of the new head, not at Ray's default minute.
    back = max(RECONNECT_SECONDS, new_head.ready_since - old_head.deleted_at)
    exits = worker_exits_since(workers, old_head.deleted_at)
    assert all(times and times[0] <= back + 10 for times in exits.values()), (back, exits)


def test_a_new_token_rolls_every_pod_and_the_old_token_is_refused(deployment: Deployment) -> None:
    before = {pod.name for pod in deployment.pods("ray-")}
    old_token = deployment.token
    deployment.update(authToken=NEW_TOKEN)
    assert deployment.token == NEW_TOKEN
    now = deployment.pods("ray-")
    assert len(now) == 1 + WORKERS and not before & {pod.name for pod in now}  # head and every worker are new pods
    assert [pod.phase for pod in deployment.smoke_test_runs()] == ["Succeeded"]
    assert deployment.dashboard("/nodes?view=summary", old_token)[0] == 403
    assert deployment.wait_joined(120, "every worker joined with the new token")
    assert all(pod.restarts() == 0 for pod in deployment.workers())  # none waited on a token the head refused


def requests_of(rendered: Rendered) -> dict[str, Decimal]:
    """CPU and memory the rendered cluster asks of its node: every pod, the smoke test's included."""
    total = {"cpu": Decimal(0), "memory": Decimal(0)}
    for workload in rendered.of_kind("Deployment") + rendered.of_kind("Job"):
        replicas = workload["spec"].get("replicas", 1)
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for resource in total:
                total[resource] += replicas * parse_quantity(resource, container["resources"]["requests"][resource])
    return total


def test_an_image_change_rolls_through_a_node_sized_exactly_for_the_cluster(deployment: Deployment) -> None:
    needed = requests_of(deployment.rendered)
    deployment.cluster.node = Node(allocatable={"cpu": str(needed["cpu"]), "memory": str(int(needed["memory"])),
                                                "nvidia.com/gpu": 0, "pods": 110})  # fmt: skip
    image = "rayproject/ray:2.60.0-py311"
    deployment.update(image=image)
    for pod in deployment.pods("ray-"):
        assert {c["image"] for c in pod.spec["containers"] + pod.spec.get("initContainers", [])} == {image}
    assert [pod.phase for pod in deployment.smoke_test_runs()] == ["Succeeded"]
    assert all(pod.unschedulable is None for pod in deployment.cluster.pods.values())


def test_a_failed_smoke_test_runs_again_on_the_next_up(deployment: Deployment) -> None:
    """Its pods evicted twice (backoffLimit 1), the smoke test fails `pulumi up`; the next `pulumi up`, with no
    change at all, replaces the failed Job and runs it again (replaceUnready) instead of awaiting it again."""
    deployment.configure(workers=str(len(deployment.workers()) - 1))  # a change, so the smoke test runs
    updating, failure = deployment.up_in_a_thread()
    for attempt in (1, 2):
        running = wait_for(
            lambda: [p for p in deployment.smoke_test_runs() if p.phase == "Running" and not p.terminating],
            240,
            f"smoke-test attempt {attempt} runs",
        )
        deployment.cluster.delete_pod(running[0].name, grace_seconds=0)  # evicted
    updating.join(UP_TIMEOUT)
    assert len(failure) == 1 and isinstance(failure[0], JobFailedError), failure
    deployment.up()  # the same program, the same config
    assert [pod.phase for pod in deployment.smoke_test_runs()] == ["Succeeded"]

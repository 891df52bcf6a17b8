"""The rehearsal of autoscaling: the rendered pods run as real Ray processes, Ray's monitor among them in the head
pod's autoscaler container, which loads the project's node provider from its ConfigMap and scales the worker
Deployments through the rehearsal's Kubernetes API (tests/rehearsal/apiserver.py) with the projected token, as
the Role allows.

One cluster lives through the module (1 worker that may grow to 2, and a GPU group from 0 to 1), in order:
(a) more CPU demand than the cluster has scales the default group up to maxWorkers and every task completes, while
`pulumi up` with the same config changes nothing; (b) once idle for idleTimeoutSeconds, the group goes back to
`workers`, removing the idle worker and not the one still running a task, which completes; (c) a task asking for a
GPU scales the GPU group from 0 to 1 and it goes back to 0 once idle (before that, the dashboard lists what the
autoscaler did in (a) and (b) among its events); (d) the autoscaler's token does nothing
outside the Role, and the Ray container of the head cannot find it; (e) on a node without room for a second worker,
an image change completes while the autoscaler's second worker is Pending. Needs root; without it these tests fail.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import time
from decimal import Decimal
from typing import Any

import pytest

from tests.rehearsal.cluster import Cluster, wait_for
from tests.rehearsal.kubelet import Pod
from tests.rehearsal.scheduler import add, pod_requests
from tests.test_rehearsal import Deployment

pytestmark = pytest.mark.rehearsal

# Longer than a worker can sit idle while (a)'s job still runs (its 15 s tasks in two rounds: a new worker that
# joins late can finish its task 15 s before the job ends); at 10 s, CI once saw it removed before (a)'s last check.
IDLE_SECONDS = 30
CONFIG: dict[str, object] = {
    "workers": "1",
    "maxWorkers": "2",
    "idleTimeoutSeconds": str(IDLE_SECONDS),
    "gcsReconnectTimeoutSeconds": "15",
    "workerGroups": [{"name": "gpu", "replicas": 0, "maxReplicas": 1, "gpus": 1}],
}
NAMESPACE = "ray-test"
# Ray's monitor decides every 5 s (AUTOSCALER_UPDATE_INTERVAL_S); a new worker pod then starts Ray and joins.
SCALE_UP_BOUND_SECONDS = 90
# Idle for IDLE_SECONDS, noticed at the next update, drained, its pod deleted and gone.
SCALE_DOWN_BOUND_SECONDS = IDLE_SECONDS + 60
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

NODE_OF_EACH_TASK = """
import ray, time
ray.init()

@ray.remote(num_cpus=1)
def work(seconds):
    time.sleep(seconds)
    return ray.util.get_node_ip_address()

print("ran on", repr(sorted(set(ray.get([work.remote(15) for _ in range(6)])))))
"""


# Where a busy task (busy_until_released) looks for its release, in the Ray container of its node's pod.
RELEASE_FILE = "/tmp/release-the-busy-task"


def busy_until_released(ip: str, seconds: int) -> str:
    """A job whose one task runs on the node of `ip` (Ray's `node:<ip>` resource pins it there) until RELEASE_FILE
    exists there, for at most `seconds`, and says which ended it."""
    return f"""
import os, ray, time
ray.init()

@ray.remote(num_cpus=1, resources={{"node:{ip}": 0.01}})
def work():
    end = time.monotonic() + {seconds}
    while time.monotonic() < end and not os.path.exists("{RELEASE_FILE}"):
        time.sleep(0.5)
    return ray.util.get_node_ip_address(), os.path.exists("{RELEASE_FILE}")

node, released = ray.get(work.remote())
print("ran on", repr(node))
print("released", released)
"""


GPU_TASK = """
import ray
ray.init()

@ray.remote(num_gpus=1)
def on_a_gpu():
    return ray.util.get_node_ip_address(), ray.get_gpu_ids()

print("gpu task", repr(ray.get(on_a_gpu.remote())))
"""


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    # One GPU on the node, for the GPU group's one pod.
    cluster.node = dataclasses.replace(cluster.node, allocatable={**cluster.node.allocatable, "nvidia.com/gpu": 1})
    return Deployment.deployed(cluster, CONFIG)


def replicas(deployment: Deployment, name: str) -> int:
    live: int = deployment.cluster.get("Deployment", NAMESPACE, name)["spec"]["replicas"]
    return live


def ran_on(logs: str, prefix: str) -> Any:
    [line] = [line for line in logs.splitlines() if line.startswith(prefix)]
    return ast.literal_eval(line.removeprefix(prefix))


def container_exec(pod: Pod, container: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    """`kubectl exec POD -c CONTAINER -- COMMAND`."""
    argv = pod.exec_argv(container, command)
    assert argv is not None, f"{container} of {pod.name} is not running"
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_it_forms_passes_its_smoke_test_and_settles_at_its_least_size(deployment: Deployment) -> None:
    """The smoke test asks for no more CPUs at once than the nodes have, so the autoscaler adds no worker for it,
    of the GPU group least (Ray puts CPU work on GPU nodes once the CPU groups are at their most: before the smoke
    test was bounded, it brought the GPU worker here)."""
    head = deployment.head()
    assert head.ready and set(head.statuses) >= {"ray-head", "autoscaler"}
    assert "Success!" in deployment.smoke_test()
    wait_for(lambda: replicas(deployment, "ray-worker") == 1, SCALE_DOWN_BOUND_SECONDS, "the default group at 1")
    wait_for(lambda: len(deployment.workers()) == 1, SCALE_DOWN_BOUND_SECONDS, "1 worker pod")
    assert replicas(deployment, "ray-gpu") == 0 and not deployment.pods("ray-gpu-")
    assert head.statuses["autoscaler"].exits == [] and head.restarts() == 0


def test_a_demand_beyond_the_cluster_scales_the_group_up_to_its_most(deployment: Deployment) -> None:
    """(a), and `pulumi up` with the same config while the autoscaler has the group at its most changes nothing."""
    before = {pod.name for pod in deployment.workers()}
    submitted = time.monotonic()
    submission = deployment.submit(NODE_OF_EACH_TASK)
    wait_for(lambda: replicas(deployment, "ray-worker") == 2, SCALE_UP_BOUND_SECONDS, "the default group at 2")
    [new] = wait_for(
        lambda: [p for p in deployment.workers() if p.name not in before and p.ready] or None,
        SCALE_UP_BOUND_SECONDS,
        "a new worker pod, ready",
    )
    joined_after = time.monotonic() - submitted
    deployment.up()
    assert replicas(deployment, "ray-worker") == 2
    status, logs = deployment.finished_job(submission, timeout=180)
    assert status == "SUCCEEDED", logs
    assert new.ip in ran_on(logs, "ran on "), logs
    assert replicas(deployment, "ray-worker") == 2  # its most: never above
    print(f"scale-up: a new worker ready {joined_after:.1f} s after the demand")


def test_idle_workers_go_back_to_the_least_size_and_busy_ones_stay(deployment: Deployment) -> None:
    """(b)"""
    workers = deployment.workers()
    assert len(workers) == 2
    busy, idle = workers
    submission = deployment.submit(busy_until_released(busy.ip, 2 * SCALE_DOWN_BOUND_SECONDS))
    wait_for(lambda: replicas(deployment, "ray-worker") == 1, SCALE_DOWN_BOUND_SECONDS, "the default group at 1")
    # The autoscaler deleted the idle pod (it deletes before it lowers the replicas), not the busy one.
    assert idle.terminating or idle.name not in deployment.cluster.pods
    assert not busy.terminating
    # It stops as any worker does: drained, within its pod's grace period (workerDrainSeconds and a margin).
    grace = deployment.rendered.one("Deployment", "ray-worker")["spec"]["template"]["spec"]
    wait_for(
        lambda: idle.name not in deployment.cluster.pods,
        grace["terminationGracePeriodSeconds"],
        lambda: f"the idle worker gone: {idle.events()}\n{idle.logs('ray-worker')[-3000:]}",
    )
    assert [pod.name for pod in deployment.workers()] == [busy.name]
    assert deployment.job(submission)[0] == "RUNNING" and not busy.terminating  # still busy, still there
    container_exec(busy, "ray-worker", ["touch", RELEASE_FILE])
    status, logs = deployment.finished_job(submission, timeout=60)
    assert status == "SUCCEEDED", logs
    assert ran_on(logs, "ran on ") == busy.ip
    assert "released True" in logs, logs  # busy until the test released it, not until its own bound
    assert busy.restarts() == 0 and busy.statuses["ray-worker"].exits == []
    time.sleep(IDLE_SECONDS + 10)  # idle again, at its least size: nothing more goes
    assert replicas(deployment, "ray-worker") == 1 and [p.name for p in deployment.workers()] == [busy.name]


def autoscaler_events(deployment: Deployment) -> list[str]:
    """The messages of the autoscaler's events the Ray dashboard lists (its cluster events API, what its Overview
    page shows), oldest first."""
    status, body = deployment.dashboard("/api/v0/cluster_events?limit=1000", deployment.token)
    assert status == 200, body
    events = json.loads(body)["data"]["result"]["result"]
    return [event["message"] for event in events if event["source_type"] == "AUTOSCALER"]


def test_the_dashboard_shows_what_the_autoscaler_did_and_why(deployment: Deployment) -> None:
    """After (a) and (b): the monitor's events, written in the autoscaler container, are in the dashboard's cluster
    events, as they are when `ray start --head` runs the monitor itself (before, they stayed in its container).
    The dashboard scans its session's events every 2 s (SCAN_EVENT_DIR_INTERVAL_SECONDS)."""
    added, removed = "Adding 1 node(s) of type worker.", "Removing 1 nodes of type worker (idle)."
    events = wait_for(
        lambda: (lambda seen: seen if {added, removed} <= set(seen) else None)(autoscaler_events(deployment)),
        10,
        lambda: f"the scale-up and the scale-down among the dashboard's events: {autoscaler_events(deployment)}",
    )
    assert events.index(added) < events.index(removed), events
    # The Ray container reads them and cannot write them.
    written = container_exec(
        deployment.head(),
        "ray-head",
        ["sh", "-c", "echo forged >> /var/log/ray-autoscaler/events/event_AUTOSCALER.log"],
    )
    assert written.returncode != 0 and "Read-only file system" in written.stderr, written


def test_a_gpu_task_brings_a_gpu_worker_from_zero_and_it_goes_again(deployment: Deployment) -> None:
    """(c)"""
    submission = deployment.submit(GPU_TASK)
    status, logs = deployment.finished_job(submission, timeout=SCALE_UP_BOUND_SECONDS + 60)
    assert status == "SUCCEEDED", logs
    [gpu_pod] = deployment.pods("ray-gpu-")
    ip, gpu_ids = ran_on(logs, "gpu task ")
    assert ip == gpu_pod.ip
    assert gpu_ids == [0]
    wait_for(lambda: replicas(deployment, "ray-gpu") == 0, SCALE_DOWN_BOUND_SECONDS, "the GPU group back at 0")
    # Gone from the API, not only Terminating: the drills after this one size the node by the pods it holds.
    wait_for(lambda: gpu_pod.name not in deployment.cluster.pods, SCALE_DOWN_BOUND_SECONDS, "the GPU worker gone")


KUBERNETES_REQUEST = """
import json, os, sys, requests
method, path = sys.argv[1], sys.argv[2]
directory = "/var/run/secrets/kubernetes.io/serviceaccount"
url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}{path}"
token = open(f"{directory}/token").read()
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"}
body = sys.argv[3] if len(sys.argv) > 3 else None
answer = requests.request(method, url, headers=headers, data=body, verify=f"{directory}/ca.crt", timeout=10)
print(answer.status_code, answer.json().get("message", ""))
"""


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", None, "200"),
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets", None, "403"),
        ("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{{head}}", '{"metadata":{"labels":{"a":"b"}}}', "403"),
        ("PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/ray-head/scale", '{"spec":{"replicas":2}}', "403"),
        ("DELETE", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/ray-worker", None, "403"),
        ("GET", "/api/v1/namespaces/default/pods", None, "403"),
    ],
    ids=["its pods", "secrets", "a pod", "the head's scale", "a deployment", "another namespace"],
)
def test_the_autoscalers_token_does_nothing_outside_the_role(
    deployment: Deployment, method: str, path: str, body: str | None, expected: str
) -> None:
    """(d)"""
    path = path.format(head=deployment.head().name)
    command = ["python", "-c", KUBERNETES_REQUEST, method, path, *([body] if body else [])]
    answered = container_exec(deployment.head(), "autoscaler", command)
    assert answered.returncode == 0, answered.stderr
    code, _, message = answered.stdout.strip().partition(" ")
    assert code == expected, answered.stdout
    if expected == "403":
        assert 'User "system:serviceaccount:ray-test:ray-autoscaler" cannot' in message, message
    assert replicas(deployment, "ray-head") == 1


def test_the_ray_container_of_the_head_cannot_find_the_token(deployment: Deployment) -> None:
    """Job drivers run in the Ray container: no token at the well-known path, nor mounted anywhere else."""
    head = deployment.head()
    looked = container_exec(head, "ray-head", ["sh", "-c", f"ls -A {TOKEN_DIR} 2>/dev/null; cat /proc/self/mountinfo"])
    assert looked.returncode == 0, looked.stderr
    assert "serviceaccount" not in looked.stdout and "kube-api-access" not in looked.stdout, looked.stdout
    found = container_exec(head, "autoscaler", ["sh", "-c", f"test -s {TOKEN_DIR}/token && cat /proc/self/mountinfo"])
    # (/var/run is a link to /run, where the mount table shows it.)
    assert found.returncode == 0 and "/secrets/kubernetes.io/serviceaccount" in found.stdout, found.stderr


def test_nothing_the_ray_container_writes_reaches_the_autoscaler_container(deployment: Deployment) -> None:
    """A job driver on the head may write its /tmp and HOME: neither a planted module, a `usercustomize`, nor a
    stale heartbeat (which would get the autoscaler restarted into them) reaches the container with the token."""
    head = deployment.head()
    site = "~/.local/lib/python3.11/site-packages"
    plant = (
        f"mkdir -p {site} /tmp/ray/autoscaler && echo 'import os; os._exit(3)' > {site}/usercustomize.py"
        " && echo 'import os; os._exit(3)' > ~/ray_cluster_node_provider.py"
        " && touch -d 2000-01-01 /tmp/ray/autoscaler/heartbeat"
    )
    planted = container_exec(head, "ray-head", ["sh", "-c", plant])
    assert planted.returncode == 0, planted.stderr
    seen = container_exec(head, "autoscaler", ["sh", "-c", "ls -A ~ /tmp/ray/autoscaler; pwd; cat /proc/1/cmdline"])
    assert "usercustomize" not in seen.stdout and "ray_cluster_node_provider.py" not in seen.stdout, seen.stdout
    assert "/etc/ray/autoscaler" in seen.stdout.splitlines()  # its working directory, read-only
    age = container_exec(
        head, "autoscaler", ["sh", "-c", "echo $(( $(date +%s) - $(stat -c %Y /tmp/ray/autoscaler/heartbeat) ))"]
    )
    assert int(age.stdout) < 30, age.stdout


NEW_IMAGE = "rayproject/ray:2.60.0-py311"
# More CPU work than the head and the one worker have, for longer than the drill lasts: the autoscaler asks for a
# second worker, and keeps asking.
LASTING_DEMAND = """
import ray, time
ray.init()

@ray.remote(num_cpus=1)
def work():
    time.sleep(600)

ray.get([work.remote() for _ in range(4)])
"""


def test_an_image_change_completes_while_a_worker_the_autoscaler_asked_for_waits_for_room(
    deployment: Deployment,
) -> None:
    """(e) The node has room for what runs and a smoke test, not for a second worker: the autoscaler's second worker
    stays Pending, and the group's rollout (no surge) waits for room. `pulumi up` of a new image does not wait for
    every replica of the autoscaled group (it would until its timeout): it completes once the smoke test passed. Once
    room is added the rollout completes by itself."""
    cluster = deployment.cluster
    roomy = cluster.node
    used: dict[str, Decimal] = {}
    for pod in cluster.pods_in(NAMESPACE):
        if pod.node is not None and not pod.finished:
            add(used, pod_requests(pod.spec))
    add(used, pod_requests(deployment.rendered.smoke_test()["spec"]["template"]["spec"]))
    # No GPU either: Ray would otherwise put the waiting CPU work on a GPU worker (its groups at their most).
    room: dict[str, str | int] = {"cpu": str(used["cpu"]), "memory": str(used["memory"]), "nvidia.com/gpu": 0}
    cluster.node = dataclasses.replace(roomy, allocatable={**roomy.allocatable, **room})
    deployment.submit(LASTING_DEMAND)
    [waiting] = wait_for(
        lambda: [p for p in deployment.workers() if p.unschedulable and "cpu" in p.unschedulable] or None,
        SCALE_UP_BOUND_SECONDS,
        "the autoscaler's second worker, Pending",
    )
    assert waiting.unschedulable and "Insufficient cpu" in waiting.unschedulable
    assert replicas(deployment, "ray-worker") == 2

    took = deployment.update(image=NEW_IMAGE)
    assert "Success!" in deployment.cluster.job_logs(deployment.applied(deployment.rendered.smoke_test()))
    assert deployment.head().spec["containers"][0]["image"] == NEW_IMAGE
    print(f"pulumi up of a new image with a worker Pending: {took:.1f} s")

    cluster.node = roomy
    wait_for(
        lambda: (
            all(p.ready and p.spec["containers"][0]["image"] == NEW_IMAGE for p in deployment.workers())
            and len(deployment.workers()) == replicas(deployment, "ray-worker")
        ),
        SCALE_UP_BOUND_SECONDS + SCALE_DOWN_BOUND_SECONDS,
        lambda: f"the workers rolled out: {[(p.name, p.phase, p.unschedulable) for p in deployment.workers()]}",
    )

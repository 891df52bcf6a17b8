"""The rehearsal of Ray Serve: the README's application, baked into the image, declared in `serveApplications`.

`pulumi up` completes only once the Serve check Job has seen the application RUNNING and `<cluster>-serve` (a
Service without a selector, whose EndpointSlice the head's keeper writes through the rehearsal's API server, under
its Role) routing its prefix, through kube-proxy's rules; a client in a pod of the namespace gets its answer through
the Service's ClusterIP, at 20 requests a second with no failure while `num_replicas` changes (the new replica
brings a worker through Ray's autoscaler, which removes it again once idle); a bad import path
fails `pulumi up` with Serve's own message, and the next `pulumi up` with a fixed config passes; with GCS fault
tolerance, requests through the Service keep succeeding while the head pod is replaced. Needs root.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.rehearsal.cluster import Cluster, JobFailedError, wait_for
from tests.test_rehearsal import Deployment
from tests.test_rehearsal_fault_tolerance import HEAL_BOUND_SECONDS
from tests.variants import SERVE_APPLICATION

pytestmark = pytest.mark.rehearsal

APPLICATION = {**SERVE_APPLICATION, "deployments": [{"name": "Hello", "num_replicas": 1}]}
IDLE_SECONDS = 15
# With GCS fault tolerance the head runs no tasks (no CPUs for Ray): each replica (one CPU) takes a worker (one
# CPU), so a second replica needs a second worker, which Ray's autoscaler brings (and removes once it is idle).
CONFIG: dict[str, object] = {
    "workers": "1",
    "maxWorkers": "2",
    "idleTimeoutSeconds": str(IDLE_SECONDS),
    "gcsFaultTolerance": "true",
    "serveApplications": [APPLICATION],
}
SERVICE = "ray-serve"
# Requests go on for this long while `pulumi up` changes the replicas (a new worker's start included).
TRAFFIC_SECONDS = 90
# A client in a pod of the namespace: the worker's Ray container (its Python), through the Service's ClusterIP.
CLIENT = """
import sys, time, urllib.request
url, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
sent = failed = run = longest = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    sent += 1
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            ok = answer.read() == b"hello"
    except Exception as error:
        ok = False
        print("failed:", repr(error), flush=True)
    failed, run = failed + (not ok), 0 if ok else run + 1
    longest = max(longest, run)
    time.sleep(1 / rate)
print(f"sent {sent} failed {failed} in a row {longest}", flush=True)
"""


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    return Deployment.deployed(cluster, CONFIG)


def serve_check_logs(deployment: Deployment) -> str:
    [job] = [
        m for m in deployment.rendered.manifests if m["kind"] == "Job" and "serve-check" in json.dumps(m["metadata"])
    ]
    return deployment.cluster.job_logs(job)


def client(deployment: Deployment, seconds: float, rate: float) -> subprocess.Popen[str]:
    """The client, run in a worker's Ray container against the Service's DNS name."""
    worker = deployment.workers()[0]
    url = f"http://{SERVICE}.{deployment.rendered.outputs['namespace']}.svc:8000/hello"
    argv = worker.exec_argv("ray-worker", ["python", "-c", CLIENT, url, str(seconds), str(rate)])
    assert argv is not None
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def counts(output: str) -> tuple[int, int, int]:
    """The client's last line: requests sent, failed, and the most that failed in a row."""
    found = re.findall(r"^sent (\d+) failed (\d+) in a row (\d+)$", output, re.MULTILINE)
    assert found, output
    sent, failed, in_a_row = map(int, found[-1])
    return sent, failed, in_a_row


def test_pulumi_up_passes_once_the_application_answers_through_the_serve_service(deployment: Deployment) -> None:
    logs = serve_check_logs(deployment)
    assert "Serve applications RUNNING and routed: ['hello']" in logs, logs
    endpoints = deployment.cluster.service_endpoints(deployment.rendered.outputs["namespace"], SERVICE)
    assert endpoints and set(endpoints) <= {pod.ip for pod in [deployment.head(), *deployment.workers()]}
    keeper = deployment.head().logs("serve-keeper")
    assert "the Service ray-serve sends requests to" in keeper, keeper
    assert deployment.cluster.api.refusals == []


def test_a_num_replicas_change_applies_in_place_with_no_failed_request_and_brings_a_worker(
    deployment: Deployment,
) -> None:
    """The second replica needs a CPU no node has: Ray's autoscaler adds a worker, and `pulumi up` returns once the
    replica runs there; no request through the Service fails meanwhile, and no pod restarts."""
    pods = {pod.name for pod in [deployment.head(), *deployment.workers()]}
    assert len(deployment.workers()) == 1
    traffic = client(deployment, seconds=TRAFFIC_SECONDS, rate=20)
    try:
        scaled = {**APPLICATION, "deployments": [{"name": "Hello", "num_replicas": 2}]}
        took = deployment.update(serveApplications=[scaled])
    finally:
        output, _ = traffic.communicate(timeout=TRAFFIC_SECONDS + 60)
    assert took < TRAFFIC_SECONDS - 5, f"the change took {took:.0f} s, longer than the traffic watched it"
    sent, failed, _ = counts(output)
    assert failed == 0 and sent >= 10 * TRAFFIC_SECONDS, output
    assert pods < {pod.name for pod in [deployment.head(), *deployment.workers()]}  # one more, none restarted
    assert len(deployment.workers()) == 2
    assert "Serve applications RUNNING and routed: ['hello']" in serve_check_logs(deployment)


def test_a_bad_import_path_fails_pulumi_up_with_serves_message_and_the_fix_passes(deployment: Deployment) -> None:
    broken = {**APPLICATION, "import_path": "no_such_module:app"}
    with pytest.raises(JobFailedError) as failed:
        deployment.update(serveApplications=[broken])
    assert "Serve application 'hello' is DEPLOY_FAILED" in str(failed.value)
    assert "No module named 'no_such_module'" in str(failed.value)
    deployment.update(serveApplications=[APPLICATION])
    assert "Serve applications RUNNING and routed: ['hello']" in serve_check_logs(deployment)


def test_the_worker_left_idle_by_fewer_replicas_goes(deployment: Deployment) -> None:
    """Back at one replica (the previous test's fixed config), one worker holds nothing: the autoscaler removes it
    after idleTimeoutSeconds (and its drain), and the Service keeps answering from the other."""
    wait_for(lambda: len(deployment.workers()) == 1, IDLE_SECONDS + 120, "the idle worker removed")
    namespace = deployment.rendered.outputs["namespace"]
    wait_for(
        lambda: deployment.cluster.service_endpoints(namespace, SERVICE) == [deployment.workers()[0].ip],
        30,
        "the Service on the remaining worker's proxy",
    )
    traffic = client(deployment, seconds=5, rate=20)
    output, _ = traffic.communicate(timeout=60)
    assert counts(output)[1] == 0, output


def test_requests_through_the_serve_service_keep_succeeding_while_the_head_is_replaced(deployment: Deployment) -> None:
    """With GCS fault tolerance the workers' proxies and replicas serve on while the head pod is deleted and
    replaced (the Service holds the workers' proxies, not the head's): no request fails twice in a row, and at least
    99% succeed."""
    endpoints = deployment.cluster.service_endpoints(deployment.rendered.outputs["namespace"], SERVICE)
    assert deployment.head().ip not in endpoints
    traffic = client(deployment, seconds=HEAL_BOUND_SECONDS + 10, rate=20)
    try:
        time.sleep(3)
        old_head = deployment.head()
        deployment.cluster.delete_pod(old_head.name)
        new_head = lambda: [p for p in deployment.pods("ray-head-") if p.ready and p.name != old_head.name]  # noqa: E731
        wait_for(new_head, HEAL_BOUND_SECONDS, "a new head")
    finally:
        output, _ = traffic.communicate(timeout=HEAL_BOUND_SECONDS + 60)
    sent, failed, in_a_row = counts(output)
    assert in_a_row <= 1 and failed <= sent // 100 and sent >= 20 * HEAL_BOUND_SECONDS // 2, output

"""The rehearsal of Ray Serve: the README's application, baked into the image, declared in `serveApplications`.

`pulumi up` completes only once the Serve check Job has seen the application RUNNING and `<cluster>-serve` (a
Service without a selector, whose EndpointSlice the head's keeper writes through the rehearsal's API server, under
its Role) routing its prefix, through kube-proxy's rules; a client in a pod of the namespace gets its answer through
the Service's ClusterIP (aiming at 20 requests a second, at least MIN_REQUESTS_PER_SECOND kept up on a loaded
machine) with no failure while `num_replicas` changes (the new replica
brings a worker through Ray's autoscaler, which removes it again once idle); a bad import path
fails `pulumi up` with Serve's own message, and the next `pulumi up` with a fixed config passes; with GCS fault
tolerance, requests through the Service keep succeeding while the head pod is replaced. Needs root.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
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
# Requests a second the client keeps up at least, whatever the machine's load (it aims at 20). A stalled Service fails
# a request (its 5 s timeout); but on this 2-core machine running the rest of the suite beside it, an answer through
# the proxy and its replica (Python processes all) took up to 400 ms, and the one-at-a-time client sent 2-3 a second.
MIN_REQUESTS_PER_SECOND = 1
# Its pods run ahead of the other modules' clusters (tests/conftest.py): its client is closed-loop, so its rate is
# the Serve path's latency, which is CPU on this shared machine. Beside the upgrade drill (a Python process a second
# on a head), it kept 35 requests in 45.5 s and 77 in 82.6 s at the same priority as the others.
CLUSTER_NICENESS = -10


# A client in a pod of the namespace: the worker's Ray container (its Python), through the Service's ClusterIP. It
# says "answering" once its first request is answered; then it sends one request at a time, on a schedule of `rate`
# a second (a slow answer delays the next request; the ones after catch up), until its stdin closes, and says how
# many it sent, how many failed (and most in a row), over how many seconds.
CLIENT = """
import sys, threading, time, urllib.request
url, rate = sys.argv[1], float(sys.argv[2])

def ask():
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.read() == b"hello"
    except Exception as error:
        print("failed:", repr(error), flush=True)
        return False

end = time.monotonic() + 60
while not ask():
    if time.monotonic() > end:
        sys.exit("no answer within 60 s")
    time.sleep(0.2)
print("answering", flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
sent = failed = run = longest = 0
start = time.monotonic()
while not stop.wait(max(0.0, start + sent / rate - time.monotonic())):
    sent += 1
    ok = ask()
    failed, run = failed + (not ok), 0 if ok else run + 1
    longest = max(longest, run)
print(f"sent {sent} failed {failed} in a row {longest} in {time.monotonic() - start:.1f} s", flush=True)
"""


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    return Deployment.deployed(cluster, CONFIG)


def serve_check_logs(deployment: Deployment) -> str:
    [job] = [
        m for m in deployment.rendered.manifests if m["kind"] == "Job" and "serve-check" in json.dumps(m["metadata"])
    ]
    return deployment.cluster.job_logs(deployment.applied(job))


class Client:
    """The client, run in a worker's Ray container against the Service's DNS name, at `rate` requests a second from
    its first answer (which the constructor waits for) until `stop`."""

    def __init__(self, deployment: Deployment, rate: float) -> None:
        worker = deployment.workers()[0]
        url = f"http://{SERVICE}.{deployment.rendered.outputs['namespace']}.svc:8000/hello"
        argv = worker.exec_argv("ray-worker", ["python", "-c", CLIENT, url, str(rate)])
        assert argv is not None
        self._process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self._before = until_answering(self._process)

    def stop(self) -> str:
        """Its output once it has stopped (killed, with whatever it runs in the pod, if it does not within a minute)."""
        try:
            output, _ = self._process.communicate(input="", timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            raise
        return self._before + output


def until_answering(process: subprocess.Popen[str]) -> str:
    """What a client printed until it said "answering" (its first answer), which it must have said (at most a
    minute, or it has exited)."""
    assert process.stdout is not None
    before = ""
    for line in process.stdout:
        if line == "answering\n":
            break
        before += line
    assert process.poll() is None, before
    return before


def counts(output: str) -> tuple[int, int, int, float]:
    """The client's last line: requests sent, failed, the most that failed in a row, and the seconds it sent for."""
    found = re.findall(r"^sent (\d+) failed (\d+) in a row (\d+) in ([\d.]+) s$", output, re.MULTILINE)
    assert found, output
    sent, failed, in_a_row, seconds = found[-1]
    return int(sent), int(failed), int(in_a_row), float(seconds)


def kept_up(sent: int, seconds: float) -> bool:
    """Whether the client sent MIN_REQUESTS_PER_SECOND for each whole second it ran: the time after its last
    request's answer, until the test stopped it, is no request's (5 sent in 5.1 s kept up)."""
    return sent >= math.floor(MIN_REQUESTS_PER_SECOND * seconds)


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
    traffic = Client(deployment, rate=20)
    try:
        scaled = {**APPLICATION, "deployments": [{"name": "Hello", "num_replicas": 2}]}
        deployment.update(serveApplications=[scaled])
        time.sleep(5)  # and a little after, with both replicas
    finally:
        output = traffic.stop()
    sent, failed, _, seconds = counts(output)
    assert failed == 0 and kept_up(sent, seconds), output
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
    traffic = Client(deployment, rate=20)
    time.sleep(5)
    output = traffic.stop()
    sent, failed, _, seconds = counts(output)
    assert failed == 0 and kept_up(sent, seconds), output


def test_requests_through_the_serve_service_keep_succeeding_while_the_head_is_replaced(deployment: Deployment) -> None:
    """With GCS fault tolerance the workers' proxies and replicas serve on while the head pod is deleted and
    replaced (the Service holds the workers' proxies, not the head's): no request fails twice in a row, and at least
    99% succeed."""
    endpoints = deployment.cluster.service_endpoints(deployment.rendered.outputs["namespace"], SERVICE)
    assert deployment.head().ip not in endpoints
    traffic = Client(deployment, rate=20)
    try:
        old_head = deployment.head()
        deployment.cluster.delete_pod(old_head.name)
        new_head = lambda: [p for p in deployment.pods("ray-head-") if p.ready and p.name != old_head.name]  # noqa: E731
        wait_for(new_head, HEAL_BOUND_SECONDS, "a new head")
        time.sleep(10)  # and on, with the new head
    finally:
        output = traffic.stop()
    sent, failed, in_a_row, seconds = counts(output)
    assert in_a_row <= 1 and failed <= sent // 100 and kept_up(sent, seconds), output

"""The rehearsal of Ray Serve: the README's application, baked into the image, declared in `serveApplications`.

`pulumi up` completes only once the Serve check Job has seen the application RUNNING and `<cluster>-serve` (a
Service without a selector, whose EndpointSlice the head's keeper writes through the rehearsal's API server, under
its Role) routing its prefix, through kube-proxy's rules; a client in a pod of the namespace gets its answer through
the Service's ClusterIP, at 20 requests a second with no failure while `num_replicas` changes; a bad import path
fails `pulumi up` with Serve's own message, and the next `pulumi up` with a fixed config passes. Needs root.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from components.manifests import ray_node
from tests.program import render
from tests.rehearsal.cluster import Cluster, JobFailedError
from tests.test_rehearsal import Deployment
from tests.variants import SERVE_APPLICATION

pytestmark = pytest.mark.rehearsal

APPLICATION = {**SERVE_APPLICATION, "deployments": [{"name": "Hello", "num_replicas": 1}]}
CONFIG: dict[str, object] = {"workers": "1", "serveApplications": [APPLICATION]}
SERVICE = "ray-serve"
# A client in a pod of the namespace: the worker's Ray container (its Python), through the Service's ClusterIP.
CLIENT = """
import sys, time, urllib.request
url, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
sent = failed = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    sent += 1
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            failed += answer.read() != b"hello"
    except Exception as error:
        failed += 1
        print("failed:", repr(error), flush=True)
    time.sleep(1 / rate)
print(f"sent {sent} failed {failed}", flush=True)
"""


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    deployment = Deployment(cluster, render(), token="", config=dict(CONFIG))
    deployment.configure()
    deployment.up()
    return deployment


def serve_check_logs(deployment: Deployment) -> str:
    [job] = [
        m for m in deployment.rendered.manifests if m["kind"] == "Job" and "serve-check" in json.dumps(m["metadata"])
    ]
    return deployment.cluster.job_logs(job)


def client(deployment: Deployment, seconds: float, rate: float) -> subprocess.Popen[str]:
    """The client, run in the worker's Ray container against the Service's DNS name."""
    [worker] = deployment.workers()
    url = f"http://{SERVICE}.{deployment.rendered.outputs['namespace']}.svc:8000/hello"
    argv = worker.exec_argv("ray-worker", ["python", "-c", CLIENT, url, str(seconds), str(rate)])
    assert argv is not None
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_pulumi_up_passes_once_the_application_answers_through_the_serve_service(deployment: Deployment) -> None:
    logs = serve_check_logs(deployment)
    assert "Serve applications RUNNING and routed: ['hello']" in logs, logs
    endpoints = deployment.cluster.service_endpoints(deployment.rendered.outputs["namespace"], SERVICE)
    assert endpoints and set(endpoints) <= {pod.ip for pod in [deployment.head(), *deployment.workers()]}
    keeper = deployment.head().logs("serve-keeper")
    assert "the Service ray-serve sends requests to" in keeper, keeper
    assert deployment.cluster.api.refusals == []


def test_a_num_replicas_change_applies_in_place_with_no_failed_request(deployment: Deployment) -> None:
    pods = {pod.name for pod in [deployment.head(), *deployment.workers()]}
    traffic = client(deployment, seconds=40, rate=20)
    try:
        scaled = {**APPLICATION, "deployments": [{"name": "Hello", "num_replicas": 2}]}
        deployment.update(serveApplications=[scaled])
    finally:
        output, _ = traffic.communicate(timeout=120)
    sent, failed = map(int, output.split("sent ")[-1].split(" failed "))
    assert failed == 0 and sent >= 400, output
    assert {pod.name for pod in [deployment.head(), *deployment.workers()]} == pods  # no pod restarted
    assert "Serve applications RUNNING and routed: ['hello']" in serve_check_logs(deployment)


def test_a_bad_import_path_fails_pulumi_up_with_serves_message_and_the_fix_passes(deployment: Deployment) -> None:
    broken = {**APPLICATION, "import_path": "no_such_module:app"}
    with pytest.raises(JobFailedError) as failed:
        deployment.update(serveApplications=[broken])
    assert "Serve application 'hello' is DEPLOY_FAILED" in str(failed.value)
    assert "No module named 'no_such_module'" in str(failed.value)
    deployment.update(serveApplications=[APPLICATION])
    assert "Serve applications RUNNING and routed: ['hello']" in serve_check_logs(deployment)
    assert ray_node.SERVE_PORT == 8000

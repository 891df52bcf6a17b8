"""The rehearsal of Ray Serve without GCS fault tolerance, and of its audience.

The head restarted without fault tolerance comes back with an empty GCS, so Serve has no application: the new head's
keeper applies the declared ones again by itself (no `pulumi up`), and requests through `<cluster>-serve` are
answered again within 30 s of the new head being ready. `allowedServeNamespaces` admits its namespace to port 8000
and nothing else: a pod there gets the application through the Serve Service but no answer from the head's jobs API
or Ray Client port, and a pod of another namespace gets no answer from any of them (the rehearsal's network enforces
the NetworkPolicies as Calico does, tests/rehearsal/network_policy.py). Its cluster's pods run at nice -10
(CLUSTER_NICENESS), well ahead of the other modules' clusters. Needs root.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from components.manifests import serve
from tests.rehearsal.cluster import Cluster, wait_for
from tests.rehearsal.kubelet import Manifest
from tests.test_rehearsal import Deployment
from tests.test_rehearsal_fault_tolerance import HEAL_BOUND_SECONDS
from tests.variants import SERVE_APPLICATION

pytestmark = pytest.mark.rehearsal

AUDIENCE = "ingress"
CONFIG: dict[str, object] = {
    "workers": "1",
    "serveApplications": [{**SERVE_APPLICATION, "deployments": [{"name": "Hello", "num_replicas": 1}]}],
    "allowedServeNamespaces": [AUDIENCE],
}
# The bound: the applications answer again within this long of the new head being ready.
BACK_WITHIN_SECONDS = 30
# Its pods run ahead of the other modules' clusters (tests/conftest.py), as a real head's node is not shared: what the
# bound measures is mostly CPU work (a new head's Ray processes, then Serve's controller, proxy and replica, each a
# Python process that starts), 6 s here alone, 36 s once with three other clusters on the machine's 2 cores at the
# same priority, and 34.5 s once at nice -10 (the head's dashboard answered 17 s after the head was Ready). At -20 a
# runnable process of this cluster weighs about 87 times one of theirs (the kernel's nice-to-weight table).
CLUSTER_NICENESS = -20
# Asks the URL in argv[1] once and says how it went: the answer, refused, or no answer (a dropped SYN).
ASK = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as answer:
        print("answered", answer.status, answer.read().decode())
except urllib.error.HTTPError as error:
    print("answered", error.code)
except Exception as error:
    print("refused" if "refused" in str(error) else "no answer")
"""


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    return Deployment.deployed(cluster, CONFIG)


def url(deployment: Deployment, service: str, port: int, path: str = "/") -> str:
    return f"http://{service}.{deployment.rendered.outputs['namespace']}.svc:{port}{path}"


def ask_from(deployment: Deployment, namespace: str, target: str) -> str:
    """What a pod of `namespace` (a Job's, in the cluster's image) gets when it asks `target`."""
    image = deployment.rendered.one("Deployment", "ray-head")["spec"]["template"]["spec"]["containers"][0]["image"]
    container: Manifest = {"name": "ask", "image": image, "command": ["python", "-c", ASK, target]}
    job: Manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "ask", "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }
    cluster = deployment.cluster
    cluster.apply(job)
    key = ("Job", namespace, "ask")
    pod = wait_for(lambda: next((p for p in cluster.pods_of(key) if p.finished), None), 60, "the question answered")
    cluster.delete(job)
    wait_for(lambda: not cluster.pods_of(key), 15, "the asking pod gone", 0.2)
    return pod.logs("ask").splitlines()[-1]


def test_the_serve_audience_gets_the_applications_and_nothing_else(deployment: Deployment) -> None:
    hello = url(deployment, "ray-serve", 8000, "/hello")
    assert ask_from(deployment, AUDIENCE, hello) == "answered 200 hello"
    assert ask_from(deployment, AUDIENCE, url(deployment, "ray-head", 8265, "/api/jobs/")) == "no answer"
    assert ask_from(deployment, AUDIENCE, url(deployment, "ray-head", 10001)) == "no answer"
    assert ask_from(deployment, "elsewhere", hello) == "no answer"


def test_the_applications_come_back_by_themselves_after_the_head_restarts(deployment: Deployment) -> None:
    """No fault tolerance: the new head's GCS knows no application; its keeper applies them again, and the Serve
    Service answers within 30 s of the new head being ready, with no `pulumi up`."""
    [cluster_ip] = deployment.cluster.resolve(f"ray-serve.{deployment.rendered.outputs['namespace']}.svc.cluster.local")
    hello = f"http://{cluster_ip}:8000/hello"  # asked from the node, through the ClusterIP
    old_head = deployment.head()
    deployment.cluster.delete_pod(old_head.name)
    new_head = lambda: [p for p in deployment.pods("ray-head-") if p.ready and p.name != old_head.name]  # noqa: E731
    [head] = wait_for(new_head, HEAL_BOUND_SECONDS, "a new head")
    ready_at = time.monotonic()

    said: dict[str, float] = {}  # each line of the new head's keeper, and when the test first saw it

    def answered() -> bool:
        for line in head.logs(serve.KEEPER_CONTAINER).splitlines():
            said.setdefault(line, round(time.monotonic() - ready_at, 1))
        try:
            with urllib.request.urlopen(hello, timeout=3) as answer:
                return bool(answer.read() == b"hello")
        except OSError:
            return False

    wait_for(answered, BACK_WITHIN_SECONDS + 30, "the application answering again", interval=0.5)
    back_after = time.monotonic() - ready_at
    print(f"answering again {back_after:.1f} s after the new head was ready", flush=True)
    print(f"the new head's keeper, seconds after the head was ready: {said}", flush=True)
    assert back_after <= BACK_WITHIN_SECONDS, said

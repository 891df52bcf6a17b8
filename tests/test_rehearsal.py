"""The rehearsal: the pods the program renders, run as a real Ray cluster (see tests/rehearsal/).

One cluster lives through the module, in order: it forms with its workers started before the head, the smoke
test passes, auth is checked, it is scaled from 3 to 4 workers, then a worker pod and the head pod are killed
and it heals. Needs root (network namespaces); without it these tests fail, they never skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import pods
from tests.program import Rendered, render
from tests.rehearsal.cluster import Cluster, wait_for
from tests.rehearsal.kubelet import BACKOFF_START, IMAGE_ROOT, Pod

pytestmark = pytest.mark.rehearsal

RECONNECT_SECONDS = 15  # gcsReconnectTimeoutSeconds for the rehearsal: the bound on noticing a lost head
CONFIG: dict[str, object] = {"gcsReconnectTimeoutSeconds": RECONNECT_SECONDS}
HEAD_DELAY_SECONDS = 8  # the head's pod starts this much after the workers' (a slower image pull)
UP_TIMEOUT = 420


@dataclass
class Deployment:
    cluster: Cluster
    rendered: Rendered
    token: str

    def pods(self, prefix: str) -> list[Pod]:
        return [pod for name, pod in sorted(self.cluster.pods.items()) if name.startswith(prefix)]

    def head(self) -> Pod:
        [head] = self.pods("ray-head-")
        return head

    def workers(self) -> list[Pod]:
        return self.pods("ray-worker-")

    def dashboard(self, path: str, token: str | None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"http://{self.head().ip}:{pods.DASHBOARD_PORT}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return error.code, b""

    def alive_node_ips(self) -> set[str]:
        status, body = self.dashboard("/nodes?view=summary", self.token)
        assert status == 200
        summary = json.loads(body)["data"]["summary"]
        return {node["ip"] for node in summary if node["raylet"]["state"] == "ALIVE"}

    def joined(self) -> bool:
        """Every current pod is a live Ray node, and no other node is."""
        try:
            expected = {pod.ip for pod in [self.head(), *self.workers()]}
            return all(pod.ready for pod in self.workers()) and self.alive_node_ips() == expected
        except (OSError, ValueError, AssertionError):
            return False

    def smoke_test(self) -> str:
        logs = self.cluster.run_job(self.rendered.one("Job"), timeout=300)
        assert "Success!" in logs, logs
        return logs


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the rehearsal needs root to create network namespaces; run it as root (CI does)")
    cluster = Cluster(Path(f"/run/ray-rehearsal-{os.getpid()}"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    rendered = render(CONFIG)
    cluster.up(rendered, timeout=UP_TIMEOUT, delays={"ray-head": HEAD_DELAY_SECONDS})
    token = rendered.one("Secret")["stringData"][pods.AUTH_TOKEN_KEY]
    return Deployment(cluster, rendered, token)


def ran_calls_on(logs: str) -> set[str]:
    [line] = re.findall(r"^nodes that ran calls: (.*)$", logs, re.MULTILINE)[-1:]
    return set(line.split())


def test_the_image_runs_the_default_images_ray() -> None:
    version = subprocess.run(
        [str(IMAGE_ROOT / "bin" / "ray"), "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    image = render().outputs["image"]
    assert version.stdout.split()[-1] == image.rsplit(":", 1)[1]


def test_the_default_cluster_forms_and_the_smoke_test_passes(deployment: Deployment) -> None:
    job = deployment.rendered.one("Job")
    logs = deployment.cluster.job_logs(job)
    attempts = deployment.cluster.pods_of(("Job", "ray-test", job["metadata"]["name"]))
    assert [pod.phase for pod in attempts] == ["Succeeded"], logs  # passed the first time, no retry
    assert "Success!" in logs
    workers = deployment.workers()
    assert len(workers) == 3
    assert {pod.ip for pod in workers} <= ran_calls_on(logs)
    assert deployment.alive_node_ips() == {deployment.head().ip, *(pod.ip for pod in workers)}


def test_workers_started_first_wait_for_the_head_without_a_restart(deployment: Deployment) -> None:
    head = deployment.head()
    for worker in deployment.workers():
        init, ray = worker.statuses["wait-gcs-ready"], worker.statuses["ray-worker"]
        assert init.starts[0] < head.started_at < ray.starts[0]  # waited in the init container until the head ran
        assert init.exit_codes == [0] and "is ready" in worker.logs("wait-gcs-ready")
        assert worker.restarts() == 0
    assert head.restarts() == 0


def test_ray_refuses_clients_without_the_token(deployment: Deployment, tmp_path: Path) -> None:
    status, _ = deployment.dashboard("/nodes?view=summary", token=None)
    assert status == 401
    status, _ = deployment.dashboard("/nodes?view=summary", token="not-the-token")
    assert status == 403
    assert deployment.dashboard("/nodes?view=summary", deployment.token)[0] == 200

    token_file = tmp_path / "token"
    token_file.write_text(deployment.token)
    check = [str(IMAGE_ROOT / "bin" / "ray"), "health-check", f"--address={deployment.head().ip}:{pods.GCS_PORT}"]
    environments = {
        "none": {"PATH": f"{IMAGE_ROOT}/bin"},
        "token": {"PATH": f"{IMAGE_ROOT}/bin", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)},
    }
    results = {
        name: subprocess.run(check, env=env, capture_output=True, text=True, timeout=120, check=False)
        for name, env in environments.items()
    }
    assert results["none"].returncode != 0
    assert "token" in results["none"].stderr.lower()
    assert results["token"].returncode == 0, results["token"].stderr


def test_a_fifth_node_joins_when_workers_go_from_3_to_4(deployment: Deployment) -> None:
    before = {pod.name for pod in deployment.workers()}
    head = deployment.head().name
    deployment.rendered = render({**CONFIG, "workers": 4})
    deployment.cluster.up(deployment.rendered, timeout=UP_TIMEOUT)  # runs the replaced smoke-test Job too
    workers = deployment.workers()
    assert len(workers) == 4 and before < {pod.name for pod in workers}
    assert deployment.head().name == head  # scaling never touches the head
    assert wait_for(deployment.joined, 120, "the fifth node joined")
    assert {pod.ip for pod in workers} <= ran_calls_on(deployment.smoke_test())


def test_a_killed_worker_pod_is_replaced_and_rejoins(deployment: Deployment) -> None:
    victim = deployment.workers()[0]
    deployment.cluster.delete_pod(victim.name)
    wait_for(lambda: len(deployment.workers()) == 4 and victim.name not in deployment.cluster.pods, 60, "replaced")
    wait_for(deployment.joined, 180, "the replacement worker joined")
    replacement = [pod for pod in deployment.workers() if pod.ip != victim.ip and pod.restarts() == 0]
    assert replacement
    assert {pod.ip for pod in deployment.workers()} <= ran_calls_on(deployment.smoke_test())


def test_a_killed_head_pod_is_replaced_and_the_workers_rejoin_it(deployment: Deployment) -> None:
    old_head, workers = deployment.head(), deployment.workers()
    restarts = {pod.name: pod.restarts() for pod in workers}
    deployment.cluster.delete_pod(old_head.name)
    new_head = wait_for(lambda: [p for p in deployment.pods("ray-head-") if p.ready], 120, "a new head")[0]
    assert new_head.name != old_head.name
    # Each worker notices within gcsReconnectTimeoutSeconds, exits, and is restarted after the back-off.
    bound = RECONNECT_SECONDS + BACKOFF_START + 60
    wait_for(lambda: all(pod.restarts() > restarts[pod.name] for pod in workers), bound, "workers restarted")
    wait_for(deployment.joined, 120, "the workers rejoined the new head")
    assert [pod.name for pod in deployment.workers()] == [pod.name for pod in workers]  # same pods, restarted
    assert {pod.ip for pod in workers} <= ran_calls_on(deployment.smoke_test())

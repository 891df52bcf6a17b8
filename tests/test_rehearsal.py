"""The rehearsal: the pods the program renders, run as a real Ray cluster (see tests/rehearsal/).

One cluster lives through the module, in order, as a stack lives through its `pulumi up`s: it forms with its workers
created before the head (placed after it), the smoke test passes, 20 Ray Client connections in a row never stall,
auth is checked, user code writes its home; it is scaled from 3 to 2 workers while they are busy (the removed one
drains), then to 4; a worker pod is killed and it heals. How it heals from a lost head and rolls a change is
tests/test_rehearsal_heals.py's cluster. Needs root (network namespaces); without it these tests fail, they never
skip.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from components.manifests import ray_node
from tests.program import Rendered

# The rehearsal's modules run stacks that upgrade in place (their drills find Deployments by their names); the upgrade
# drill (tests/test_rehearsal_upgrades.py) runs the default, generations, as its config says.
from tests.program import render_in_place as render
from tests.rehearsal.cluster import Cluster, wait_for
from tests.rehearsal.kubelet import IMAGE_ROOT, Manifest, Pod

pytestmark = pytest.mark.rehearsal

RECONNECT_SECONDS = 15  # gcsReconnectTimeoutSeconds for the rehearsal: the bound on noticing a lost head
CONFIG: dict[str, object] = {"gcsReconnectTimeoutSeconds": str(RECONNECT_SECONDS)}
HEAD_DELAY_SECONDS = 8  # the head's pod starts this much after the workers' (a slower image pull)
UP_TIMEOUT = 420
# Longer than Ray's default drain (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, 30 s) and than a default grace period,
# shorter than the program's workerDrainSeconds: only the program's settings let such a task finish.
BUSY_SECONDS = 45
SECRET_KEYS = ("authToken", "redisPassword")  # set with `pulumi config set --secret`
WORKER_NODES = "[n['NodeID'] for n in ray.nodes() if n['Alive'] and 'node:__internal_head__' not in n['Resources']]"


@dataclass
class Deployment:
    cluster: Cluster
    rendered: Rendered
    token: str
    config: dict[str, object] = field(default_factory=lambda: dict(CONFIG))

    @classmethod
    def configured(cls, cluster: Cluster, config: dict[str, object]) -> Deployment:
        """A stack with this config (`pulumi config set` of each key), rendered, not yet up."""
        deployment = cls(cluster, render(), token="", config=dict(config))
        deployment.configure()
        return deployment

    @classmethod
    def deployed(cls, cluster: Cluster, config: dict[str, object]) -> Deployment:
        """A stack with this config, and `pulumi up` done."""
        deployment = cls.configured(cluster, config)
        deployment.up()
        return deployment

    def configure(self, **changes: object) -> None:
        """`pulumi config set ...` for each change: the program renders (in the main thread: Pulumi's runtime
        needs its event loop)."""
        self.config.update(changes)
        secrets = tuple(key for key in SECRET_KEYS if key in self.config)
        self.rendered = render(self.config, secrets=secrets)
        self.token = self.rendered.one("Secret", "ray-auth-token")["stringData"][ray_node.AUTH_TOKEN_KEY]

    def up(self) -> float:
        """`pulumi up`; returns the seconds until it was done."""
        return self.cluster.up(self.rendered, timeout=UP_TIMEOUT)

    def update(self, **changes: object) -> float:
        self.configure(**changes)
        return self.up()

    def up_in_a_thread(self) -> tuple[threading.Thread, list[BaseException]]:
        """`pulumi up` in a thread of its own, started, so the test can act on the cluster meanwhile; what it
        raised lands in the list once the thread has ended."""
        failure: list[BaseException] = []

        def up() -> None:
            try:
                self.up()
            except BaseException as error:  # noqa: BLE001 - handed to the test's thread
                failure.append(error)

        updating = threading.Thread(target=up)
        updating.start()
        return updating, failure

    def token_env(self, directory: Path) -> dict[str, str]:
        """What a Ray process outside the cluster needs to present the token: a file, as the pods read theirs."""
        token_file = directory / "token"
        token_file.write_text(self.token)
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}

    def pods(self, prefix: str) -> list[Pod]:
        """The pods a Deployment keeps (neither Terminating nor finished) whose names start with `prefix`."""
        return [pod for name, pod in sorted(self.cluster.pods.items()) if name.startswith(prefix) and pod.active]

    def head(self) -> Pod:
        [head] = self.pods("ray-head-")
        return head

    def workers(self) -> list[Pod]:
        return self.pods("ray-worker-")

    def dashboard(self, path: str, token: str | None, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """A request to the head's dashboard (a POST of `body` as JSON if given), as `ray job submit` makes."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = f"http://{self.head().ip}:{ray_node.DASHBOARD_PORT}{path}"
        request = urllib.request.Request(url, data=data, headers=headers)
        try:
            # A job submission starts the job's supervisor actor before it answers: seconds on a loaded machine.
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return error.code, b""

    def alive_node_ips(self) -> set[str]:
        status, body = self.dashboard("/nodes?view=summary", self.token)
        assert status == 200
        summary = json.loads(body)["data"]["summary"]
        # The raylet's own address: a node the dashboard learnt of from the GCS's tables alone (a head restarted
        # with GCS fault tolerance recovers them from Redis) has no agent-reported "ip" yet.
        return {node["raylet"]["nodeManagerAddress"] for node in summary if node["raylet"]["state"] == "ALIVE"}

    def joined(self) -> bool:
        """Every current pod is a live Ray node, and no other node is."""
        try:
            expected = {pod.ip for pod in [self.head(), *self.workers()]}
            return all(pod.ready for pod in self.workers()) and self.alive_node_ips() == expected
        except (OSError, ValueError, AssertionError):
            return False

    def wait_joined(self, seconds: float, what: str) -> bool:
        """Wait until `joined`; past `seconds`, fail saying `what` was awaited and why it is not so (`membership`)."""
        return wait_for(self.joined, seconds, lambda: f"{what}: {self.membership()}")

    def membership(self) -> str:
        """Why `joined` is not true, for a failed wait: each pod of the cluster, Terminating ones included (its
        address, phase, readiness, restarts and its first container's last lines), and the nodes the head's
        dashboard lists as alive."""
        # Whatever the dashboard answers (or not): this only explains a failure, it must not hide it.
        try:
            alive = str(sorted(self.alive_node_ips()))
        except (OSError, ValueError, AssertionError, KeyError, TypeError, http.client.HTTPException) as error:
            alive = f"unknown ({error!r})"
        lines = [f"alive Ray nodes: {alive}"]
        for name, pod in sorted(self.cluster.pods.items()):
            try:
                last = pod.logs(pod.spec["containers"][0]["name"]).rstrip().splitlines()[-5:]
            except OSError as error:
                last = [repr(error)]
            state = (
                f"{pod.phase}{' Terminating' if pod.terminating else ''} ready={pod.ready} restarts={pod.restarts()}"
            )
            lines.append(f"--- {name} {pod.ip} {state}")
            lines += [f"    {line[:200]}" for line in last]
        return "\n".join(lines)

    def smoke_test(self) -> str:
        logs = self.cluster.run_job(self.rendered.smoke_test(), timeout=300)
        assert "Success!" in logs, logs
        return logs

    def applied(self, manifest: Manifest) -> Manifest:
        """The object of a rendered manifest as `pulumi up` last applied it: under its live name (an auto-named
        Job replaced by an `up` has a fresh one)."""
        return self.cluster.applied(self.rendered.registration_of(manifest).urn)

    def smoke_test_runs(self) -> list[Pod]:
        """The pods of the smoke-test Job `pulumi up` last ran."""
        job = self.applied(self.rendered.smoke_test())
        return self.cluster.pods_of(("Job", job["metadata"]["namespace"], job["metadata"]["name"]))

    def submit(self, script: str) -> str:
        """A Ray job through the Jobs API, as `ray job submit` sends it; its driver runs on the head."""
        code = base64.b64encode(script.encode()).decode()
        # Every task's output reaches the job's logs once per line (Ray folds repeated lines by default).
        entrypoint = f"RAY_DEDUP_LOGS=0 python -c \"import base64; exec(base64.b64decode('{code}'))\""
        status, answer = self.dashboard("/api/jobs/", self.token, {"entrypoint": entrypoint})
        assert status == 200, answer
        submission: str = json.loads(answer)["submission_id"]
        return submission

    def job(self, submission: str) -> tuple[str, str]:
        """The Ray job's status and logs."""
        _, info = self.dashboard(f"/api/jobs/{submission}", self.token)
        _, logs = self.dashboard(f"/api/jobs/{submission}/logs", self.token)
        return json.loads(info)["status"], json.loads(logs)["logs"]

    def finished_job(self, submission: str, timeout: float) -> tuple[str, str]:
        def finished() -> tuple[str, str] | None:
            status, logs = self.job(submission)
            return (status, logs) if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

        return wait_for(finished, timeout, lambda: f"Ray job {submission}: {self.job(submission)}", interval=1)


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    rendered = render(CONFIG)
    cluster.up(rendered, timeout=UP_TIMEOUT, delays={"ray-head": HEAD_DELAY_SECONDS})
    token = rendered.one("Secret", "ray-auth-token")["stringData"][ray_node.AUTH_TOKEN_KEY]
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
    job = deployment.rendered.smoke_test()
    logs = deployment.cluster.job_logs(job)
    attempts = deployment.cluster.pods_of(("Job", "ray-test", job["metadata"]["name"]))
    assert [pod.phase for pod in attempts] == ["Succeeded"], logs  # passed the first time, no retry
    assert "Success!" in logs
    workers = deployment.workers()
    assert len(workers) == 3
    assert {pod.ip for pod in workers} <= ran_calls_on(logs)
    assert deployment.alive_node_ips() == {deployment.head().ip, *(pod.ip for pod in workers)}


# Each connection starts its own client server on the head (~2 s here); one that hits Ray Client's fork stall
# (components/manifests/pods.py, GRPC_FORK_SUPPORT_ENV) waits out the proxier's 30 s channel timeout, then retries or
# fails.
# The bound lies below that and above one retry of the client's own connect loop (5 s, then 10 s: Ray's
# INITIAL_TIMEOUT_SEC and backoff), which a busy 2-core machine sometimes costs: CI once saw a first connection
# take 11.6 s and the other 19 take 1.6-1.8 s.
CLIENT_CONNECTIONS = 20
CONNECTION_BOUND_SECONDS = 20
CONNECT_AGAIN_AND_AGAIN = """
import sys, time, ray
for _ in range(int(sys.argv[2])):
    started = time.monotonic()
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    assert ray.get(ray.put(b"across")) == b"across"
    ray.shutdown()
    print(f"{time.monotonic() - started:.1f}", flush=True)
"""


def test_fresh_ray_client_connections_to_a_fresh_head_never_stall(deployment: Deployment, tmp_path: Path) -> None:
    env = {"PATH": f"{IMAGE_ROOT}/bin", **deployment.token_env(tmp_path)}
    address = f"ray://{deployment.head().ip}:{ray_node.CLIENT_PORT}"
    connect = [str(IMAGE_ROOT / "bin" / "python"), "-c", CONNECT_AGAIN_AND_AGAIN, address, str(CLIENT_CONNECTIONS)]
    result = subprocess.run(
        connect, env=env, capture_output=True, text=True, check=False,
        timeout=CLIENT_CONNECTIONS * CONNECTION_BOUND_SECONDS,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    seconds = [float(line) for line in result.stdout.split()]
    assert len(seconds) == CLIENT_CONNECTIONS
    assert max(seconds) < CONNECTION_BOUND_SECONDS, seconds


def test_workers_created_first_are_placed_after_the_head_and_wait_for_it_without_a_restart(
    deployment: Deployment,
) -> None:
    """The head's Deployment came later (a slow Redis, say): the workers' pods, created first, were placed only once
    the head's was (their pod affinity), then waited in their init container until its GCS answered."""
    head = deployment.head()
    for worker in deployment.workers():
        init, ray = worker.statuses["wait-gcs-ready"], worker.statuses["ray-worker"]
        assert worker.created_at < head.created_at <= worker.started_at  # Pending until the head was placed
        assert init.starts[0] < ray.starts[0]
        wait = worker.logs("wait-gcs-ready")
        assert "Connection refused" in wait and wait.rstrip().endswith("accepts connections")  # the GCS, not up yet
        assert init.exit_codes == [0]
        assert "is ready" in worker.logs("ray-worker")  # the health check passed, in the Ray container
        assert worker.restarts() == 0
    assert head.restarts() == 0


def test_ray_refuses_clients_without_the_token(deployment: Deployment, tmp_path: Path) -> None:
    status, _ = deployment.dashboard("/nodes?view=summary", token=None)
    assert status == 401
    status, _ = deployment.dashboard("/nodes?view=summary", token="not-the-token")
    assert status == 403
    assert deployment.dashboard("/nodes?view=summary", deployment.token)[0] == 200

    check = [str(IMAGE_ROOT / "bin" / "ray"), "health-check", f"--address={deployment.head().ip}:{ray_node.GCS_PORT}"]
    environments = {
        "none": {"PATH": f"{IMAGE_ROOT}/bin"},
        "token": {"PATH": f"{IMAGE_ROOT}/bin", **deployment.token_env(tmp_path)},
    }
    results = {
        name: subprocess.run(check, env=env, capture_output=True, text=True, timeout=120, check=False)
        for name, env in environments.items()
    }
    assert results["none"].returncode != 0
    assert "token" in results["none"].stderr.lower()
    assert results["token"].returncode == 0, results["token"].stderr


def test_a_worker_whose_token_the_head_refuses_waits_and_says_why(deployment: Deployment, tmp_path: Path) -> None:
    """A worker's Ray container command as rendered (components/in_pod/worker_start.py, the real Ray, the real head),
    with a token that is not the cluster's, as a worker meets a head during a token rotation: it keeps waiting and
    says why, without `ray start` and without an exit (which would be a restart)."""
    [container] = deployment.workers()[0].spec["containers"]
    head = f"{deployment.head().ip}:{ray_node.GCS_PORT}"
    program, arguments = container["command"][2].rsplit(" start ", 1)  # `ray start`'s arguments follow the code
    command = f"{program} start " + re.sub(r"--address=\S+", f"--address={head}", arguments)
    wrong_token = tmp_path / "token"
    wrong_token.write_text("not-the-token-0123456789abcdef0123456789")
    env = {"PATH": f"{IMAGE_ROOT}/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong_token)}  # fmt: skip
    waiting = subprocess.run(
        ["timeout", "8", "/bin/bash", "-c", command], env=env, capture_output=True, text=True, check=False
    )
    assert waiting.returncode == 124, waiting.stdout + waiting.stderr  # still waiting when stopped
    refused = f"waiting for the Ray head (GCS) at {head}: ray.exceptions.AuthenticationError: RPC error: "
    refused += "InvalidAuthToken: Authentication token is missing or incorrect."
    *said, stopped = waiting.stdout.splitlines()
    assert said and all(line.startswith(refused) for line in said), waiting.stdout
    assert stopped == "ray-node: SIGTERM while the node starts: its start stopped", waiting.stdout


def test_user_code_writes_its_home_cache_working_directory_and_ray_results(deployment: Deployment) -> None:
    """The real image's /home/ray is read-only here (read-only root): HOME and the working directory are not."""
    script = f"""
import pathlib, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

def write_everywhere(tag):
    home = pathlib.Path.home()
    targets = [home / f"{{tag}}.txt", home / ".cache" / "huggingface" / f"{{tag}}.txt",
               pathlib.Path.cwd() / f"{{tag}}-in-cwd.txt", home / "ray_results" / "experiment" / f"{{tag}}.txt"]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(tag)
    return " ".join(str(target) for target in targets)

ray.init()
print("driver wrote", write_everywhere("driver"), flush=True)
write = ray.remote(num_cpus=1)(write_everywhere)
for node in {WORKER_NODES}:
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    print("task wrote", ray.get(write.options(scheduling_strategy=strategy).remote("task")), flush=True)
"""
    status, logs = deployment.finished_job(deployment.submit(script), timeout=180)
    assert status == "SUCCEEDED", logs
    home = ray_node.HOME_DIR
    expected = f"{home}/{{0}}.txt {home}/.cache/huggingface/{{0}}.txt {home}/{{0}}-in-cwd.txt "
    expected += f"{home}/ray_results/experiment/{{0}}.txt"
    assert f"driver wrote {expected.format('driver')}" in logs
    assert logs.count(f"task wrote {expected.format('task')}") == len(deployment.workers()) == 3


def test_scaling_down_lets_the_removed_workers_tasks_finish(deployment: Deployment) -> None:
    """3 -> 2 while every worker runs a task longer than Ray's default drain: no task is lost or retried."""
    script = f"""
import time, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=1, max_retries=0)
def busy(seconds):
    print("busy", flush=True)
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()

ray.init()
workers = sorted({WORKER_NODES})
strategies = [NodeAffinitySchedulingStrategy(node, soft=False) for node in workers]
results = ray.get([busy.options(scheduling_strategy=s).remote({BUSY_SECONDS}) for s in strategies])
print("every task finished on its node:", sorted(results) == workers, len(results), flush=True)
"""
    before = {pod.name: pod for pod in deployment.workers()}
    submission = deployment.submit(script)
    # The driver and its tasks' workers start within seconds alone, a minute beside a full run's other clusters.
    wait_for(lambda: deployment.job(submission)[1].count(" busy\n") == 3, 120, lambda: f"{deployment.job(submission)}")
    started = time.monotonic()  # every task has begun (at most a pass of wait_for ago)
    deployment.update(workers="2")
    [removed] = [pod for name, pod in before.items() if name not in {p.name for p in deployment.workers()}]
    status, logs = deployment.finished_job(submission, timeout=120)
    assert status == "SUCCEEDED", logs
    assert "every task finished on its node: True 3" in logs
    assert removed.deleted_at is not None and removed.deleted_at - started < BUSY_SECONDS  # removed while busy
    # It drained: its processes stopped once its task was done, not at Ray's default 30 s drain.
    wait_for(lambda: removed.finished_at, 60, f"{removed.name} stopped")
    assert removed.finished_at is not None and removed.finished_at - started >= BUSY_SECONDS - 5
    assert [pod.phase for pod in deployment.smoke_test_runs()] == ["Succeeded"]


def test_new_nodes_join_when_workers_go_from_2_to_4(deployment: Deployment) -> None:
    before = {pod.name for pod in deployment.workers()}
    head = deployment.head().name
    deployment.update(workers="4")  # runs the replaced smoke-test Job too
    workers = deployment.workers()
    assert len(workers) == 4 and before < {pod.name for pod in workers}
    assert deployment.head().name == head  # scaling never touches the head
    assert deployment.wait_joined(120, "the new nodes joined")
    assert [pod.phase for pod in deployment.smoke_test_runs()] == ["Succeeded"]
    assert {pod.ip for pod in workers} <= ran_calls_on(deployment.smoke_test())


def test_a_killed_worker_pod_is_replaced_and_rejoins(deployment: Deployment) -> None:
    victim = deployment.workers()[0]
    deployment.cluster.delete_pod(victim.name)
    wait_for(lambda: len(deployment.workers()) == 4 and victim.name not in deployment.cluster.pods, 60, "replaced")
    deployment.wait_joined(180, "the replacement worker joined")
    replacement = [pod for pod in deployment.workers() if pod.ip != victim.ip and pod.restarts() == 0]
    assert replacement
    assert {pod.ip for pod in deployment.workers()} <= ran_calls_on(deployment.smoke_test())

"""The rehearsal of an upgrade by generation (upgradeStrategy `generation`, docs/upgrades.md): the pods the program
renders, run as a real Ray cluster (see tests/rehearsal/).

One cluster lives through the module, with a Serve application. A client in the namespace submits a no-op job to
the clients' head Service (`ray-head`, at its ClusterIP) throughout an image change, and another sends the
application 20 requests a second through `ray-serve`. The change's first `pulumi up` makes the new generation,
whose smoke test then fails (its pods are evicted twice): `pulumi up` fails, the clients' Service stays on the old
generation, which answers every submission (one every 5 s), and the new one, which answers at its own address, gets
none. A long job starts on the old generation; 10 s after it runs, the next `pulumi up`, with the same config,
applies the image change: it proves the new generation, moves the Service to it and returns while the long job runs
on. From 10 s before that `up` until 60 s after it began, and from its smoke test's pass until 15 s after it returned,
a job every second (every 5 s in between): none fails, and every submission made after the move lands in the new
generation. Then the drill lets the long job end (it waits for a file in its head's
container): it ends SUCCEEDED; the retirement Job then deletes the old
generation (its GCS state in the stack's Redis too: the cluster is fault-tolerant), whose pods are gone within
upgradeDrainSeconds + 30 s of the job's end; at no moment do more than twice the cluster's pods plus two run. From
before that `up` until the old generation is gone, at least 1,000 requests through `ray-serve`, none failed: its
endpoints move from the old generation's proxies to the new one's in that `up`. Needs
root (network namespaces); without it these tests fail, they never skip.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.config.settings import GENERATION_LABEL
from components.manifests import ray_node
from components.manifests import redis as redis_manifests
from tests.rehearsal.cluster import CLUSTER_DOMAIN, Cluster, JobFailedError, wait_for
from tests.rehearsal.kubelet import Manifest, Pod
from tests.test_rehearsal import CONFIG, UP_TIMEOUT, Deployment
from tests.test_rehearsal_serve import SERVICE, until_answering
from tests.variants import SERVE_APPLICATION

pytestmark = pytest.mark.rehearsal

NAMESPACE = "ray-test"
NEW_IMAGE = "rayproject/ray:2.60.0-py311"
# Long enough that a retirement waiting out the drain instead of the job's end could not pass for one that did not.
DRAIN_SECONDS = 600
# How soon after its last job's end the old generation is gone: the retirement's next pass (2 s), then its pods'
# drains and Ray's stop, its objects' deletes: about 20 s alone, 75 s once beside a full run's three other clusters.
# A retirement that waited out the drain instead would take over 500 s.
GONE_AFTER_ITS_LAST_JOB_SECONDS = 180
# The long job runs until the drill lets it end (`release`), at the latest this long: what a switching `pulumi up`
# takes is the machine's load's to say, and a job that ended on its own before that `up` returned proved nothing (two
# full runs' drills failed so with a 60 s job).
LONG_JOB_MOST_SECONDS = 900
# It ends once this file exists in its head's container, where Ray runs a job's driver by default: the drill makes it
# as `kubectl exec` would.
RELEASE_FILE = "/tmp/drill-release"
LONG_JOB = (
    f"n=0; until [ -e {RELEASE_FILE} ]; do n=$((n + 1)); [ $n -le {LONG_JOB_MOST_SECONDS * 2} ] || exit 1; sleep 0.5;"
    " done; echo released"
)
CLUSTER_PODS = 2  # a head and one worker


def cluster_niceness(pod: str) -> int:
    """The nice value of a pod of the drill's cluster: the workers' ahead of the other clusters on this machine, as
    if their nodes' CPUs were their own. The client's job a second starts Python processes on the old head (each
    job's supervisor and driver), queued PENDING for minutes on a loaded machine; beside them and three other
    clusters on 2 cores, the workers' Serve proxies answered after 15-27 s, past the Serve client's timeout, where
    the replica took 20 ms. (The whole cluster at -10 starved the other modules' checks; its heads at 0 keep the
    job storm behind them, and its workers, a Serve proxy and replica each, take little.)"""
    return -10 if pod.startswith("ray-worker-") else 0


# How long after a Service's selector changed a new connection may still reach the pods it selected before: the
# kube-proxy stand-in's next pass (every 0.2 s, but seconds apart when the controllers are busy on a loaded
# machine) and its rules' update; a real kube-proxy syncs its rules about once a second, later under load.
PROXY_SYNC_SECONDS = 5.0
# The proof (3): requests a second through the Serve Service during the change, and the fewest in all.
SERVE_RATE = 20
SERVE_REQUESTS = 1000
# One replica, taking as many requests at once as 20 a second need on this machine: under the switch's load its
# answers took 200-400 ms, 4-8 requests in flight, and at Serve's default of 5 a replica rejects the rest, which its
# proxy queues and retries; the switch's first seconds on a cold proxy then queued past the client's timeout.
APPLICATION = {
    **SERVE_APPLICATION,
    "deployments": [{"name": "Hello", "num_replicas": 1, "max_ongoing_requests": 100}],
}
SUBMITTER = """
import json, sys, threading, time, urllib.request

url, token = sys.argv[1], sys.argv[2]


def submit():
    sent = time.time()
    body = json.dumps({"entrypoint": "echo no-op"}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        request = urllib.request.Request(url, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return {"sent": sent, "id": json.loads(answer.read())["submission_id"]}
    except Exception as error:
        return {"sent": sent, "error": repr(error)}


end = time.monotonic() + 60
while "error" in (first := submit()):  # the pod's first connections, while its network is being wired
    if time.monotonic() > end:
        sys.exit(f"no answer within 60 s: {first}")
    time.sleep(0.5)
print(json.dumps(first), flush=True)
stop, period = threading.Event(), [float(sys.argv[3])]


def read_periods():  # each line of stdin: the seconds between submissions from now on; its end: stop
    for line in sys.stdin:
        period[0] = float(line)
    stop.set()


threading.Thread(target=read_periods, daemon=True).start()
while not stop.wait(max(0.0, first["sent"] + period[0] - time.time())):
    first = submit()
    print(json.dumps(first), flush=True)
"""


# The Serve client, open-loop: a request every 1/rate seconds, each in a thread of its own (a slow answer on this
# loaded machine delays no other, unlike tests/test_rehearsal_serve.py's one-at-a-time client, whose rate is its
# latency), until its stdin closes. A request fails on an error or after 30 s without an answer: a proxy that goes
# away fails its requests at once (refused, reset), while under a full suite's load the old generation's path,
# starved of CPU before the switch, answered some requests only after 10 s. Once stopped, and every request has its
# answer or its error, it says how many it sent, over how many seconds, and the failures.
SERVE_CLIENT = """
import json, sys, threading, time, urllib.request

url, rate = sys.argv[1], float(sys.argv[2])
failures, lock = [], threading.Lock()


def ask(request_id="drill-first"):
    sent = time.time()
    try:
        request = urllib.request.Request(url, headers={"X-Request-ID": request_id})  # Serve logs it with the request
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = answer.read()
        error = None if body == b"hello" else f"answered {body[:100]!r}"
    except Exception as failure:
        error = repr(failure)
    if error:
        with lock:
            failures.append({"sent": sent, "error": error, "id": request_id})


end = time.monotonic() + 60
while True:  # the pod's first connections, while its network is being wired
    ask()
    if not failures:
        break
    if time.monotonic() > end:
        sys.exit(f"no answer within 60 s: {failures[-1]}")
    failures.clear()
    time.sleep(0.5)
print("answering", flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
threads, start = [], time.monotonic()
while not stop.wait(max(0.0, start + len(threads) / rate - time.monotonic())):
    threads.append(threading.Thread(target=ask, args=(f"drill-{len(threads)}",)))
    threads[-1].start()
seconds = time.monotonic() - start
for thread in threads:
    thread.join()
print(json.dumps({"sent": len(threads), "seconds": seconds, "failures": failures}), flush=True)
"""


def submitter_deployment(image: str) -> Manifest:
    """A pod in the cluster's namespace that the cluster's NetworkPolicies let in (it carries the cluster's label,
    as the smoke test does), from which the client runs."""
    labels = {"app": "submitter", "ray.io/cluster": "ray"}
    container = {"name": "main", "image": image, "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "submitter", "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


class Submitter:
    """The client: a no-op job submitted through `ray-head` every `period` seconds until `stop`. Each
    job starts a supervisor actor, a Python process, on the head: a job a second takes about a core of this
    machine's two, so the test asks for one only where the proof needs it."""

    def __init__(self, deployment: Deployment, period: float) -> None:
        self._submissions: list[dict[str, object]] | None = None
        url = f"http://{service_address(deployment, 'ray-head')}:{ray_node.DASHBOARD_PORT}/api/jobs/"
        self._process = run_in_client_pod(deployment, [SUBMITTER, url, deployment.token, str(period)])

    def every(self, period: float) -> None:
        """A submission every `period` seconds from now on."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{period}\n")
        self._process.stdin.flush()

    def stop(self) -> list[dict[str, object]]:
        """Each submission: when it was sent, and its id or its error (stopped once, whoever asks first)."""
        if self._submissions is not None:
            return self._submissions
        self._submissions = json_lines(self._process)
        return self._submissions


def json_lines(process: subprocess.Popen[str], before: str = "") -> list[dict[str, Any]]:
    """A client's lines of JSON, once its stdin is closed and it has stopped (killed, with whatever it runs in the
    pod, if it does not within a minute): at least one."""
    try:
        output, _ = process.communicate(input="", timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines, before + output
    return lines


def service_address(deployment: Deployment, service: str) -> str:
    """A Service's ClusterIP, which its DNS name resolves to and which stays while the Service lives: the switch is
    kube-proxy's, not DNS's. The cluster DNS stand-in answers from this test's own process, which a full suite's load
    starves now and then past the resolver's 10 s (a lookup then falls through its search path to NXDOMAIN), where a
    cluster's DNS pods have CPUs of their own."""
    [address] = deployment.cluster.resolve(f"{service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}")
    return address


def run_in_client_pod(deployment: Deployment, arguments: list[str]) -> subprocess.Popen[str]:
    """`python -c <arguments>` in the clients' pod (made on the first call, with the image the stack then has: a
    later call must not roll it), its stdin and output piped."""
    if ("Deployment", NAMESPACE, "submitter") not in deployment.cluster.objects:
        deployment.cluster.apply(submitter_deployment(str(deployment.rendered.outputs["image"])))
    pod = wait_for(
        lambda: next(
            (p for p in deployment.cluster.pods_in(NAMESPACE) if p.name.startswith("submitter-") and p.ready), None
        ),
        60,
        "the clients' pod",
    )
    argv = pod.exec_argv("main", ["python", "-c", *arguments])
    assert argv is not None
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


class ServeTraffic:
    """SERVE_RATE requests a second to the application through `ray-serve` (at its ClusterIP), from its first
    answer (which the constructor waits for) until `stop`."""

    def __init__(self, deployment: Deployment) -> None:
        self.report: dict[str, Any] | None = None
        url = f"http://{service_address(deployment, SERVICE)}:8000{APPLICATION['route_prefix']}"
        self._process = run_in_client_pod(deployment, [SERVE_CLIENT, url, str(SERVE_RATE)])
        self._before = until_answering(self._process)

    def stop(self) -> dict[str, Any]:
        """What it sent, over how long, and what failed (stopped once, whoever asks first)."""
        if self.report is not None:
            return self.report
        self.report = json_lines(self._process, self._before)[-1]
        return self.report


class Watch:
    """In threads: which generation the clients' Service selects (the last moment each was seen, every tenth of a
    second), and the job submissions each generation's head has taken (asked at its pod's IP every 2 s, also
    while it terminates: each answer lists every job it has, hundreds), with how many times each answered."""

    def __init__(self, deployment: Deployment) -> None:
        self._deployment = deployment
        self.jobs: dict[str, set[str]] = {}  # submission ids by generation
        self.answered: dict[str, int] = {}  # by generation, how many times its head listed its jobs
        self.first_seen: dict[str, float] = {}  # by generation, when the Service was first seen selecting it
        self.last_seen: dict[str, float] = {}  # and last
        self.most_pods: list[str] = []  # the most pods of the cluster seen at once (the test's client's aside)
        self.last_end: dict[str, float] = {}  # by generation, when the last job its head listed as ended ended
        # Each change of where `ray-serve` sends new connections, and of the pods' addresses: when, and to what.
        self.serve_endpoints: list[tuple[float, list[str]]] = []
        self.pod_addresses: list[tuple[float, dict[str, str]]] = []
        # Every 5 s, the machine's load: its load average and how much of the last 10 s some task waited for a CPU,
        # and for I/O (the kernel's pressure stall information), to tell a starved drill from a stalled one.
        self.machine_load: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=target, daemon=True) for target in (self._selector, self._jobs, self._load)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def selected(self) -> list[str]:
        """The generations the Service selected, in order."""
        return sorted(self.first_seen, key=self.first_seen.__getitem__)

    def _selector(self) -> None:
        while not self._stop.wait(0.1):
            service = self._deployment.cluster.get("Service", NAMESPACE, "ray-head")
            selected, now = service["spec"]["selector"].get(GENERATION_LABEL, ""), time.time()
            self.first_seen.setdefault(selected, now)
            self.last_seen[selected] = now
            running = [
                pod.name for pod in self._deployment.cluster.pods_in(NAMESPACE)
                if not pod.finished and pod.labels.get("ray.io/cluster") == "ray"
                and pod.labels.get("app") != "submitter"
            ]  # fmt: skip
            if len(running) > len(self.most_pods):
                self.most_pods = running
            endpoints = self._deployment.cluster.service_endpoints(NAMESPACE, SERVICE)
            if not self.serve_endpoints or self.serve_endpoints[-1][1] != endpoints:
                self.serve_endpoints.append((now, endpoints))
            addresses = {
                pod.name: f"{pod.ip} {pod.phase}{' terminating' if pod.terminating else ''}"
                for pod in self._deployment.cluster.pods_in(NAMESPACE)
            }
            if not self.pod_addresses or self.pod_addresses[-1][1] != addresses:
                self.pod_addresses.append((now, addresses))

    def failures_by_endpoints(self, failures: list[dict[str, Any]]) -> dict[str, int]:
        """How many requests failed while `ray-serve` sent new connections where, by where."""
        counts: dict[str, int] = {}
        for failure in failures:
            sent = float(failure["sent"])
            endpoints = [what for when, what in self.serve_endpoints if when <= sent][-1:] or [[]]
            counts[str(endpoints[0])] = counts.get(str(endpoints[0]), 0) + 1
        return counts

    def history(self, since: float) -> str:
        """Where `ray-serve` sent new connections, the pods' addresses and the machine's load, each change in seconds
        from `since`."""
        changes = sorted([*self.serve_endpoints, *self.pod_addresses, *self.machine_load], key=lambda change: change[0])
        return "\n".join(f"{when - since:+.1f} {what}" for when, what in changes)

    def _load(self) -> None:
        while not self._stop.wait(5):
            average = Path("/proc/loadavg").read_text().split()[0]
            try:
                cpu, io = (
                    Path(f"/proc/pressure/{what}").read_text().split()[1].removeprefix("avg10=")
                    for what in ("cpu", "io")
                )
                waited = f"of the last 10 s, waited for CPU {cpu}%, I/O {io}%"
            except OSError:  # a kernel without pressure stall information
                waited = "no pressure stall information"
            self.machine_load.append((time.time(), f"load average {average}; {waited}"))

    def _jobs(self) -> None:
        while not self._stop.wait(2):
            self._list_jobs()

    def _list_jobs(self) -> None:
        headers = {"Authorization": f"Bearer {self._deployment.token}"}
        for head in heads(self._deployment.cluster):
            url = f"http://{head.ip}:{ray_node.DASHBOARD_PORT}/api/jobs/"
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as answer:
                    listed = json.loads(answer.read())
            except (OSError, http.client.HTTPException, ValueError):
                continue  # not answering yet, or any more, or cut off mid-answer
            generation = head.labels[GENERATION_LABEL]
            self.answered[generation] = self.answered.get(generation, 0) + 1
            taken = self.jobs.setdefault(generation, set())
            taken |= {job["submission_id"] for job in listed if job.get("submission_id")}
            ends = [float(job["end_time"]) / 1000 for job in listed if job.get("end_time")]
            self.last_end[generation] = max([*ends, self.last_end.get(generation, 0.0)])

    def stop(self) -> None:
        """Stop watching, once the heads have listed their jobs once more: the last submissions included."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        answered = sum(self.answered.values())

        def listed_again() -> bool:
            self._list_jobs()
            return sum(self.answered.values()) > answered

        wait_for(listed_again, 60, "the heads' last listing of their jobs")


def heads(cluster: Cluster) -> list[Pod]:
    """The heads of every generation that have an address and have not finished, terminating ones included."""
    return [p for p in cluster.pods_in(NAMESPACE) if p.labels.get("ray.io/group") == "head" and p.ip and not p.finished]


def serving(cluster: Cluster) -> list[str]:
    """Where `ray-serve` sends new connections (never none)."""
    endpoints = cluster.service_endpoints(NAMESPACE, SERVICE)
    assert endpoints, f"{SERVICE} has no endpoints"
    return endpoints


def generation_pods(cluster: Cluster, generation: str) -> list[Pod]:
    return [p for p in cluster.pods_in(NAMESPACE) if p.labels.get(GENERATION_LABEL) == generation and not p.finished]


def head_jobs(
    head: Pod, token: str, path: str = "", body: dict[str, object] | None = None, timeout: float = 30
) -> dict[str, object]:
    """One call to a head's Jobs API at its pod's address: a job's details, or a submission's answer."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    url = f"http://{head.ip}:{ray_node.DASHBOARD_PORT}/api/jobs/{path}"
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as answer:
        details: dict[str, object] = json.loads(answer.read())
        return details


# A job's details at its head's Jobs API, asked four times a second (each call given 2 s), each change printed as a
# line of JSON, until the job has ended.
JOB_WATCH = """
import json, sys, time, urllib.request

url, token, said = sys.argv[1], sys.argv[2], None
while True:
    try:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=2) as answer:
            details = json.loads(answer.read())
    except Exception:
        time.sleep(0.25)
        continue
    if details != said:
        print(json.dumps(details), flush=True)
        said = details
    if details["status"] not in ("PENDING", "RUNNING"):
        break
    time.sleep(0.25)
"""


class JobWatch:
    """One job's details as its head gives them, until it has ended, from a process of its own: the head may go two
    seconds after that (the retirement deletes it as soon as it sees the job end, on its next pass), and a thread of
    this test's process, which runs the rehearsal's whole control plane, missed that moment on a loaded machine."""

    def __init__(self, head: Pod, token: str, submission: str) -> None:
        self.details: dict[str, object] = {}
        url = f"http://{head.ip}:{ray_node.DASHBOARD_PORT}/api/jobs/{submission}"
        self._process = subprocess.Popen(
            [sys.executable, "-c", JOB_WATCH, url, token], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.details = json.loads(line)

    def stop(self) -> dict[str, object]:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._thread.join()
        return self.details


SERVE_LOGS = "/tmp/ray/session_latest/logs/serve/*.log"


def serve_logs(pods: list[Pod], select: str = f"tail -n 15 {SERVE_LOGS}") -> str:
    """Lines of the Serve logs (its controller's, proxies', replicas') in each of `pods`' Ray container: by default
    each log's last ones, else what the shell command `select` prints."""
    shown = []
    for pod in pods:
        container = "ray-head" if pod.labels.get("ray.io/group") == "head" else "ray-worker"
        argv = pod.exec_argv(container, ["sh", "-c", select])
        if argv is not None:
            listed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            shown.append(f"--- {pod.name}\n{listed.stdout[-6000:]}{listed.stderr[-500:]}")
    return "\n".join(shown)


def failed_lines(failures: list[dict[str, Any]]) -> str:
    """A shell command printing the Serve log lines of the first failed requests (by the request ids the client
    sent), and those of answers that took a second or more or were not 200."""
    patterns = [f"{failure['id']} " for failure in failures[:20]] + [
        r" [0-9]{4,}\.[0-9]+ms$",
        r" [1345][0-9][0-9] [0-9.]+ms$",
    ]
    return f"grep -H -E '{'|'.join(patterns)}' {SERVE_LOGS} | tail -n 60"


def release(head: Pod) -> None:
    """Lets the long job end: RELEASE_FILE made in the head's container, as `kubectl exec` would."""
    argv = head.exec_argv("ray-head", ["touch", RELEASE_FILE])
    assert argv is not None, "the old head's container is not running"
    subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)


def redis_keys(deployment: Deployment) -> list[str]:
    """Every key in the stack's Redis, as `kubectl exec` of redis-cli in its pod lists them."""
    [redis] = [pod for pod in deployment.cluster.pods_in(NAMESPACE) if pod.name.startswith("ray-redis-") and pod.active]
    auth = f'REDISCLI_AUTH="$(cat {redis_manifests.CONFIG_DIR}/{redis_manifests.PASSWORD_KEY})"'
    script = f"{auth} redis-cli -h 127.0.0.1 -p {redis_manifests.REDIS_PORT} --scan"
    argv = redis.exec_argv("redis", ["sh", "-c", script])
    assert argv is not None, "the Redis container is not running"
    listed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return listed.stdout.split()


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Iterator[Deployment]:
    config = {**CONFIG, "upgradeStrategy": "generation", "workers": "1", "upgradeDrainSeconds": str(DRAIN_SECONDS),
              "gcsFaultTolerance": "true", "serveApplications": [APPLICATION]}  # fmt: skip
    yield Deployment.deployed(cluster, config)


def test_an_image_change_moves_every_later_submission_to_a_proven_generation_and_fails_none(
    deployment: Deployment,
) -> None:
    cluster = deployment.cluster
    old = str(deployment.rendered.outputs["generation"])

    def retirement_logs() -> str:
        return cluster.job_logs(cluster.get("Job", NAMESPACE, f"ray-{new}"))

    client = Submitter(deployment, period=5)
    watch = Watch(deployment)
    long_job_watch: JobWatch | None = None
    serve_traffic: ServeTraffic | None = None
    try:
        deployment.configure(image=NEW_IMAGE)
        new = str(deployment.rendered.outputs["generation"])
        assert new != old
        updating, failure = deployment.up_in_a_thread()
        # The new generation's smoke test fails: its pods evicted twice (backoffLimit 1).
        for attempt in (1, 2):
            running = wait_for(
                lambda: [
                    p for p in cluster.pods_in(NAMESPACE)
                    if p.name.startswith("ray-smoke-test-") and p.phase == "Running" and not p.terminating
                ],
                UP_TIMEOUT,
                f"the new generation's smoke test, attempt {attempt}",
            )  # fmt: skip
            cluster.delete_pod(running[0].name, grace_seconds=0)
        updating.join(UP_TIMEOUT)
        assert len(failure) == 1 and isinstance(failure[0], JobFailedError), failure
        # Nothing moved: the old generation answers, the new one runs and has taken no submission.
        assert watch.selected == [old]
        assert generation_pods(cluster, old) and generation_pods(cluster, new)
        answered = watch.answered.get(new, 0)
        wait_for(lambda: watch.answered.get(new, 0) > answered + 2, 30, "the new generation's head listing its jobs")
        assert not watch.jobs.get(new), watch.jobs  # it answers, and has taken no submission
        # The Serve Service still sends requests to the old generation's proxies, which answer them.
        assert set(serving(cluster)) <= {pod.ip for pod in generation_pods(cluster, old)}, serving(cluster)
        serve_traffic = ServeTraffic(deployment)
        [old_head] = [head for head in heads(cluster) if head.labels[GENERATION_LABEL] == old]
        long_job = str(head_jobs(old_head, deployment.token, body={"entrypoint": LONG_JOB})["submission_id"])
        long_job_watch = JobWatch(old_head, deployment.token, long_job)
        # Its driver starts seconds after the submission alone; on a loaded machine, once those of the submissions
        # queued before it have (minutes once). Then a submission every second, from 10 s before the change.
        wait_for(
            lambda: long_job_watch.details.get("status") == "RUNNING", UP_TIMEOUT, "the long job's start", interval=0.2
        )
        client.every(1)
        time.sleep(10)
        switch_started = time.time()
        # The same config: the failed smoke test is replaced and runs again.
        switching, failure = deployment.up_in_a_thread()
        # A submission a second for the 60 s from the change, and again from the new generation's smoke test's
        # pass (the switch follows it, and the Serve check's) to the end. In between, one every 5 s: on a loaded machine
        # the `up` takes minutes, and each submission starts a Python process on the old head (1.2-1.6 CPU-seconds,
        # docs/benchmarks.md), which starts fewer a second than one: at a job a second throughout, the backlog (48 jobs
        # in a run) held the old generation, and the machine, for minutes after the switch; and from the smoke test's
        # start, they took the CPU the new generation's proof needed.
        switching.join(60)
        if switching.is_alive():
            client.every(5)
            wait_for(
                lambda: not switching.is_alive() or [p for p in deployment.smoke_test_runs() if p.phase == "Succeeded"],
                UP_TIMEOUT,
                "the new generation's smoke test's pass",
                interval=0.2,
            )
            client.every(1)
        switching.join(UP_TIMEOUT)
        assert not switching.is_alive() and not failure, failure
        # `pulumi up` returned while the long job runs on: the old generation is left to drain.
        returned = time.time()
        [new_head] = [head for head in heads(cluster) if head.labels[GENERATION_LABEL] == new]
        assert head_jobs(old_head, deployment.token, long_job)["status"] == "RUNNING"
        # The client goes on until 60 s after the change's second `pulumi up` began, and 15 s after it returned.
        time.sleep(max(15.0, 60 - (returned - switch_started)))
        submissions = client.stop()
        assert head_jobs(old_head, deployment.token, long_job)["status"] == "RUNNING"
        release(old_head)
        # The watch goes on: it sees the long job end on the old head, which the retirement then deletes once the
        # submissions it took have ended too (on a loaded machine, a head starts fewer drivers a second than the
        # client submits: they queue PENDING, minutes' worth). The bound is the issue's; how soon is asserted below.
        gone = wait_for(
            lambda: not generation_pods(cluster, old) and time.time(),
            DRAIN_SECONDS + 30,
            lambda: f"the old generation's pods to go\n{retirement_logs()}",
            interval=0.5,
        )
        # Requests the old proxies took before the move are answered: the traffic goes on until they are gone.
        serve = serve_traffic.stop()
    finally:
        client.stop()
        watch.stop()
        if long_job_watch is not None:
            long_job_watch.stop()
        if serve_traffic is not None:
            serve_traffic.stop()
    # Each failure, in seconds from the move of `ray-head` (and, with it, of `ray-serve`'s annotation).
    failures = [(round(float(f["sent"]) - watch.first_seen[new], 1), f["error"]) for f in serve["failures"]]
    if failures or serve["sent"] < SERVE_REQUESTS:
        keepers = "\n".join(f"--- {head.name}\n{head.logs('serve-keeper')}" for head in (old_head, new_head))
        failed_in_logs = serve_logs(
            list({pod.name: pod for pod in heads(cluster) + generation_pods(cluster, new)}.values()),
            failed_lines(serve["failures"]),
        )
        pytest.fail(
            f"{len(failures)} of {serve['sent']} requests failed (at least {SERVE_REQUESTS} wanted), the first at"
            f" {failures[:10]} s from the move; by where `ray-serve` sent them:"
            f" {watch.failures_by_endpoints(serve['failures'])}\n{keepers}\n--- the new generation's Serve logs\n"
            f"{serve_logs(generation_pods(cluster, new))}\n--- what the Serve logs say of the first failed requests,"
            f" and their answers that took a second or more or were not 200\n{failed_in_logs}"
            f"\n--- changes\n{watch.history(watch.first_seen[new])}"
            f"\n--- the retirement\n{retirement_logs()}"
        )
    assert set(serving(cluster)) <= {pod.ip for pod in generation_pods(cluster, new)}, serving(cluster)
    details = long_job_watch.details
    assert details["status"] == "SUCCEEDED", (details, retirement_logs())
    ended = float(str(details["end_time"])) / 1000
    # The old generation went soon after its last job ended (the issue asks within the drain + 30 s), long before
    # the drain's end: its jobs' end let it go, not the drain's. Its last job is the long one, or a submission it
    # took just before the switch that a loaded machine kept PENDING for minutes.
    last_ended = max(ended, watch.last_end[old])
    assert gone - last_ended <= GONE_AFTER_ITS_LAST_JOB_SECONDS < DRAIN_SECONDS + 30, (
        last_ended,
        gone,
        retirement_logs(),
    )
    assert len(watch.most_pods) <= 2 * CLUSTER_PODS + 2, watch.most_pods
    retirement = cluster.get("Job", NAMESPACE, f"ray-{new}")
    wait_for(lambda: cluster.job_status(retirement) == "Succeeded", 60, "the retirement Job's success")
    assert watch.selected == [old, new]
    failed = [s for s in submissions if "error" in s]
    assert not failed, failed
    # The new head lists its jobs until the end; every other submission was taken by the old head (which may have
    # gone before it listed the last of them).
    landed_new = [float(str(s["sent"])) for s in submissions if s["id"] in watch.jobs.get(new, set())]
    landed_old = [float(str(s["sent"])) for s in submissions if s["id"] not in watch.jobs.get(new, set())]
    # Each submission landed in the generation the Service selected when it was sent: the old one's up to the
    # move (and the kube-proxy's next sync), the new one's from then on, and both took some.
    moved = watch.first_seen[new]
    assert landed_old and max(landed_old) < moved + PROXY_SYNC_SECONDS, (moved, landed_old)
    assert landed_new and min(landed_new) > watch.last_seen[old] - 1, (watch.last_seen[old], landed_new)
    assert [sent for sent in landed_new if sent > moved + PROXY_SYNC_SECONDS]
    assert returned < ended  # `pulumi up` returned before the long job ended
    # What the old generation leaves behind is gone with it: its Service, its token's Secret, its GCS state.
    assert not any(old in name for kind, _, name in cluster.objects if kind in ("Deployment", "Service", "Secret"))
    storage = str(deployment.rendered.outputs["gcsStorageNamespace"])
    assert storage.endswith(f"-{new}")
    in_redis = redis_keys(deployment)
    assert in_redis and all(key.startswith(f"RAY{storage}@") for key in in_redis), (in_redis, retirement_logs())

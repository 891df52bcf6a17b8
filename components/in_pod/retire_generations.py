"""Retires the generations a switch replaced (upgradeStrategy `generation`, docs/upgrades.md): the Job
`<cluster>-<id>` (named as its generation's head Service) runs this once `<cluster>-head` selects its generation,
after `pulumi up` has returned.

Shipped as its text in a ConfigMap (components/manifests/generations.py); runs on the Ray image's Python with the
standard library, `requests` and Ray (for the Redis cleanup), and calls the Kubernetes API with its pod's
service-account token, which it reads before every call.

For every older generation of the cluster (one whose first Deployment or head Service was made before this
generation's first):
1. Waits until its head has had no job PENDING or RUNNING for QUIET_SECONDS (`GET /api/jobs/` at its own head
   Service's ClusterIP, with the token its pods read: a client following a job reads its end there); with Serve,
   until the Serve Service's EndpointSlice holds none of its pods (the new generation's keeper has taken it over);
   and at least QUIET_SECONDS after both this Job was made (just after the switch) and that, so that requests the
   old head and proxies took before the switch are answered: they get no new connection since. A
   generation without a Ready head pod for UNREACHABLE_SECONDS runs nothing; one whose Ready head does not answer is
   waited for.
2. Once upgradeDrainSeconds have passed since this Job was made, stops the submitted jobs still running
   (`POST /api/jobs/<id>/stop`) and gives them STOP_SECONDS to end.
3. Deletes its Deployments with Foreground propagation (each pod's SIGTERM drains its node, as any pod's does) and
   its Jobs, waits until its pods are gone, then deletes, with GCS fault tolerance, its GCS state in the Redis, its
   token Secret and last its head Service (the garbage collector then deletes what that owns).
It never touches its own generation, nor one made after it (a newer `pulumi up` may be making one), and it stops as
soon as `<cluster>-head` no longer selects its own generation: the newer generation's Job retires the rest (and
Pulumi deletes this one). A step that fails is tried again on the next pass, until the Job's own deadline.
"""

from __future__ import annotations

import base64
import datetime
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
ACTIVE = ("PENDING", "RUNNING")
PASS_SECONDS = 2.0
QUIET_SECONDS = 10.0
UNREACHABLE_SECONDS = 30.0
STOP_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 10.0
Document = dict[str, Any]


class UnansweredError(Exception):
    """A call without an answer worth acting on (no connection, a timeout, a 5xx, a refusal): tried again."""


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


@dataclass(frozen=True)
class Names:
    """The names the program works with, from its env: components/manifests/generations.py sets them from the
    component's own settings, a name of a generation's object as a pattern with `{generation}` where its id goes."""

    namespace: str
    generation: str
    generation_label: str
    cluster_selector: str  # the label selector of the cluster's objects, every generation's
    head_selector: str  # the label selector of its heads' pods, every generation's
    clients_service: str  # `<cluster>-head`
    job: str  # this retirement's Job
    head_service: str
    token_secret: str  # empty without token auth
    serve_service: str  # `<cluster>-serve`, empty without Serve
    storage_namespace: str  # empty without GCS fault tolerance
    dashboard_port: int
    token_key: str

    @classmethod
    def from_environment(cls, environ: dict[str, str]) -> Names:
        return cls(
            namespace=environ["RETIRE_NAMESPACE"],
            generation=environ["RETIRE_GENERATION"],
            generation_label=environ["RETIRE_GENERATION_LABEL"],
            cluster_selector=environ["RETIRE_CLUSTER_SELECTOR"],
            head_selector=environ["RETIRE_HEAD_SELECTOR"],
            clients_service=environ["RETIRE_CLIENTS_SERVICE"],
            job=environ["RETIRE_JOB"],
            head_service=environ["RETIRE_HEAD_SERVICE"],
            token_secret=environ.get("RETIRE_TOKEN_SECRET", ""),
            serve_service=environ.get("RETIRE_SERVE_SERVICE", ""),
            storage_namespace=environ.get("RETIRE_STORAGE_NAMESPACE", ""),
            dashboard_port=int(environ["RETIRE_DASHBOARD_PORT"]),
            token_key=environ.get("RETIRE_TOKEN_KEY", ""),
        )

    def of(self, pattern: str, generation: str) -> str:
        """A generation's object's name, from its pattern."""
        return pattern.replace("{generation}", generation)

    def selector(self, generation: str | None = None) -> str:
        """A label selector of the cluster's objects of one generation, or of every generation."""
        label = self.generation_label
        return f"{self.cluster_selector}," + (f"{label}={generation}" if generation else label)


class Kubernetes:
    """The API calls of the retirement, over HTTPS with the pod's service-account token, read before each call."""

    def __init__(self, environ: dict[str, str], namespace: str) -> None:
        host = environ["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        self.base_url = f"https://{host}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}"
        self.namespace = namespace
        self.session = requests.Session()
        self.session.trust_env = False  # in the cluster: no proxy, no .netrc

    def request(self, method: str, group_version: str, resource: str, name: str = "", query: str = "") -> Document:
        """The answer to one call; {} for an object that is not there (404)."""
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{prefix}/namespaces/{self.namespace}/{resource}" + (f"/{name}" if name else "") + query
        token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                verify=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except requests.RequestException as error:
            raise UnansweredError(f"{method} {path}: {type(error).__name__}") from error
        if response.status_code == 404:
            return {}
        if not response.ok:
            raise UnansweredError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        answer: Document = response.json()
        return answer


class HeadJobs:
    """The Jobs API of one generation's head, through its own Service, with the token its pods read."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def active(self) -> list[Document]:
        """The jobs PENDING or RUNNING there (submitted ones and drivers alike)."""
        try:
            response = self.session.get(f"{self.url}/api/jobs/", headers=self.headers, timeout=REQUEST_TIMEOUT_SECONDS)
        except requests.RequestException as error:
            raise UnansweredError(f"{self.url}: {type(error).__name__}") from error
        if not response.ok:
            raise UnansweredError(f"{self.url}/api/jobs/: {response.status_code} {response.text[:300]}")
        jobs: list[Document] = response.json()
        return [job for job in jobs if job.get("status") in ACTIVE]

    def stop(self, submission_id: str) -> None:
        try:
            self.session.post(
                f"{self.url}/api/jobs/{submission_id}/stop", headers=self.headers, timeout=REQUEST_TIMEOUT_SECONDS
            )
        except requests.RequestException as error:
            log(f"stopping {submission_id}: {type(error).__name__}")


def older_generations(listed: list[Document], own: str, label: str) -> list[str]:
    """The generations made before this one, oldest first, by their first listed object's creation (their
    Deployments and head Service): never this generation, nor one a newer `pulumi up` is making (whose workers may
    come before its head), whatever is left of one whose retirement stopped half-way included. None while this
    generation's own are not listed."""
    created: dict[str, str] = {}
    for item in listed:
        generation, when = item["metadata"]["labels"][label], item["metadata"]["creationTimestamp"]
        created[generation] = min(created.get(generation, when), when)
    if own not in created:
        return []
    # RFC 3339 times in UTC, as the API writes them, sort as they are.
    older = [generation for generation, when in created.items() if when < created[own]]
    return sorted(older, key=lambda generation: (created[generation], generation))


class Retirement:
    """One generation's retirement, one pass at a time (`step`), until it is gone."""

    def __init__(self, generation: str, names: Names, kubernetes: Kubernetes) -> None:
        self.generation, self.names, self.kubernetes = generation, names, kubernetes
        self.unreachable_since: float | None = None
        self.stopped_at: float | None = None
        self.left_serve_at: float | None = None  # when the Serve Service was first seen without its pods
        self.idle_since: float | None = None  # when its head was first seen without a job since one ran
        self.deleting = False
        self.done = False

    def step(self, now: float, started: float, deadline: float) -> None:
        if not self.deleting:
            self.deleting = self._drained(now, started, deadline)
            if not self.deleting:
                return
            log(f"generation {self.generation}: drained, deleting its Deployments")
        self.done = self._deleted()

    def _drained(self, now: float, started: float, deadline: float) -> bool:
        """No job runs on its head any more (or none may: the drain is over, or no head of it runs), the Serve
        Service no longer sends requests to it, and both the switch and that are QUIET_SECONDS old."""
        try:
            active = self._head().active()
        except UnansweredError as error:
            log(f"generation {self.generation}: {error}")
            if self._head_runs():  # a head that runs may have jobs: a slow answer, or a lost one, proves nothing
                self.unreachable_since = None
                return now >= deadline
            self.unreachable_since = self.unreachable_since or now
            return now - self.unreachable_since >= UNREACHABLE_SECONDS
        self.unreachable_since = None
        self.idle_since = None if active else (self.idle_since or now)
        if not self._left_serve(now) and now < deadline:
            return False
        if now - max(started, self.left_serve_at or started) < QUIET_SECONDS:
            return False
        if self.idle_since is not None:
            # Its jobs' clients (a `ray job submit` that follows one to its end) read the end from the old head:
            # QUIET_SECONDS for that, from the first pass that found it idle.
            return now - self.idle_since >= QUIET_SECONDS
        if now < deadline:
            log(f"generation {self.generation}: {len(active)} job(s) running, waiting")
            return False
        if self.stopped_at is None:
            self.stopped_at = now
            for job in active:
                if job.get("submission_id"):
                    log(f"generation {self.generation}: the drain is over, stopping {job['submission_id']}")
                    self._head().stop(job["submission_id"])
        return now - self.stopped_at >= STOP_SECONDS

    def _left_serve(self, now: float) -> bool:
        """The Serve Service's endpoints hold none of its pods' addresses (always so without Serve): noted once."""
        names, kubernetes = self.names, self.kubernetes
        if not names.serve_service or self.left_serve_at is not None:
            return True
        endpoints = kubernetes.request("GET", "discovery.k8s.io/v1", "endpointslices", names.serve_service)
        serving = {address for endpoint in endpoints.get("endpoints") or [] for address in endpoint["addresses"]}
        pods = kubernetes.request("GET", "v1", "pods", query=f"?labelSelector={names.selector(self.generation)}")
        own = {address for pod in pods["items"] if (address := (pod.get("status") or {}).get("podIP"))}
        if serving & own:
            log(f"generation {self.generation}: {names.serve_service} still sends requests to it, waiting")
            return False
        self.left_serve_at = now
        return True

    def _head_runs(self) -> bool:
        """A head pod of the generation is Ready, as the API says."""
        names = self.names
        selector = f"?labelSelector={names.head_selector},{names.generation_label}={self.generation}"
        pods = self.kubernetes.request("GET", "v1", "pods", query=selector)["items"]
        conditions = [c for pod in pods for c in (pod.get("status") or {}).get("conditions") or []]
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _head(self) -> HeadJobs:
        """Its head's Jobs API at its own Service's ClusterIP (no DNS lookup to fail), with its pods' token."""
        names = self.names
        token = None
        if names.token_secret:
            secret = self.kubernetes.request("GET", "v1", "secrets", names.of(names.token_secret, self.generation))
            encoded = (secret.get("data") or {}).get(names.token_key)
            token = base64.b64decode(encoded).decode() if encoded else None
        service = self.kubernetes.request("GET", "v1", "services", names.of(names.head_service, self.generation))
        address = (service.get("spec") or {}).get("clusterIP")
        if not address:
            raise UnansweredError(f"no Service {names.of(names.head_service, self.generation)}")
        host = f"[{address}]" if ":" in address else address
        return HeadJobs(f"http://{host}:{names.dashboard_port}", token)

    def _deleted(self) -> bool:
        """Its Deployments deleted (Foreground), and once its pods are gone, the rest of it: True when all is gone."""
        kubernetes, selector = self.kubernetes, f"?labelSelector={self.names.selector(self.generation)}"
        for kind, group_version, propagation in (
            ("deployments", "apps/v1", "Foreground"),
            ("jobs", "batch/v1", "Background"),
        ):
            for item in kubernetes.request("GET", group_version, kind, query=selector)["items"]:
                name = item["metadata"]["name"]
                kubernetes.request("DELETE", group_version, kind, name, f"?propagationPolicy={propagation}")
        if kubernetes.request("GET", "v1", "pods", query=selector)["items"]:
            return False
        names = self.names
        if names.storage_namespace:
            delete_gcs_state(names.of(names.storage_namespace, self.generation))
        if names.token_secret:
            kubernetes.request("DELETE", "v1", "secrets", names.of(names.token_secret, self.generation))
        # Last: the generation's last trace, by which a retirement that stopped before this point finds it again
        # (and the garbage collector then deletes what it owns: its autoscaler's objects).
        kubernetes.request("DELETE", "v1", "services", names.of(names.head_service, self.generation))
        log(f"generation {self.generation}: gone")
        return True


# Ray's own cleanup, in a process of its own: its C++ client aborts the process on a Redis it cannot reach (a DNS
# lookup that fails, at once; a refused connection, after a minute of retries) instead of raising. Aborted in this
# process, the retirement's pod would fail, and the pod that replaced it would no longer find the generation.
_GCS_CLEANUP = """
import sys
from ray._private import gcs_utils

host, port, use_ssl, storage_namespace = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "ssl", sys.argv[4]
password = sys.stdin.read()
sys.exit(0 if gcs_utils.cleanup_redis_storage(host, port, password, use_ssl, storage_namespace) else 1)
"""


def delete_gcs_state(storage_namespace: str) -> None:
    """The generation's keys in the Redis, as KubeRay's cleanup Job deletes a cluster's: with Ray's own function,
    which reads the Redis's TLS settings as the head does (RAY_REDIS_CA_CERT, RAY_REDIS_CA_PATH); the password goes
    through a pipe, never the command line."""
    address = os.environ["RAY_REDIS_ADDRESS"]
    use_ssl = address.startswith("rediss://")
    host, _, port = address.split("://")[-1].rpartition(":")
    password_file = os.environ.get("RETIRE_REDIS_PASSWORD_FILE", "")
    password = Path(password_file).read_text().strip() if password_file else ""
    argv = [sys.executable, "-c", _GCS_CLEANUP, host, port, "ssl" if use_ssl else "plain", storage_namespace]
    done = subprocess.run(argv, input=password, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        why = next((line for line in done.stderr.splitlines() if "Check failed" in line or "Error" in line), "")
        raise UnansweredError(f"the Redis did not delete the GCS state {storage_namespace}: {why[:300]}")
    log(f"deleted the GCS state {storage_namespace} from the Redis")


def selects_own_generation(kubernetes: Kubernetes, names: Names) -> bool:
    service = kubernetes.request("GET", "v1", "services", names.clients_service)
    return bool(service) and service["spec"].get("selector", {}).get(names.generation_label) == names.generation


def retire_pass(
    kubernetes: Kubernetes,
    names: Names,
    retirements: dict[str, Retirement],
    started: float,
    now: float,
    deadline: float,
) -> bool:
    """One pass over the older generations, each as far as it goes now: True once none is left, or once a newer
    generation took `<cluster>-head` over (its own Job retires the rest). A generation that no longer reads as
    older is let go, unless its deletion has begun."""
    if not selects_own_generation(kubernetes, names):
        log(f"{names.clients_service} does not select generation {names.generation}: leaving the rest to it")
        return True
    query = f"?labelSelector={names.selector()}"
    # A generation's Deployments, and its head Service, which a retirement deletes last of all.
    listed = [
        *kubernetes.request("GET", "apps/v1", "deployments", query=query)["items"],
        *kubernetes.request("GET", "v1", "services", query=query)["items"],
    ]
    older = older_generations(listed, names.generation, names.generation_label)
    for generation in [g for g, retirement in retirements.items() if g not in older and not retirement.deleting]:
        del retirements[generation]
    for generation in older:
        retirements.setdefault(generation, Retirement(generation, names, kubernetes))
    for retirement in retirements.values():
        if not retirement.done:
            retirement.step(now, started, deadline)
    return all(retirement.done for retirement in retirements.values())


def switched_at(kubernetes: Kubernetes, names: Names) -> float:
    """When this retirement's Job was made, just after the switch: the drain counts from there, whichever of the
    Job's pods runs this (one lost to an eviction is replaced, and the drain goes on where it was)."""
    job = kubernetes.request("GET", "batch/v1", "jobs", names.job)
    created = job["metadata"]["creationTimestamp"]
    return datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()


def retire(environ: dict[str, str]) -> int:
    names = Names.from_environment(environ)
    kubernetes = Kubernetes(environ, names.namespace)
    drain_file = Path(environ["RETIRE_DRAIN_FILE"])
    retirements: dict[str, Retirement] = {}
    started: float | None = None
    log(f"retiring the generations older than {names.generation}")
    while True:
        try:
            started = started or switched_at(kubernetes, names)
            # Read on each pass: a new upgradeDrainSeconds reaches the mounted file within the kubelet's sync.
            deadline = started + float(drain_file.read_text())
            if retire_pass(kubernetes, names, retirements, started, time.time(), deadline):
                log("no older generation left")
                return 0
        except UnansweredError as error:
            log(f"will try again: {error}")
        time.sleep(PASS_SECONDS)


if __name__ == "__main__":
    sys.exit(retire(dict(os.environ)))

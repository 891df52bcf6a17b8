"""A one-node Kubernetes for the rehearsal, and `pulumi up` on top of it.

It keeps the objects the program renders, resolves Service names to their ready pods, and runs two
controllers: a Deployment keeps `replicas` pods of its template (a deleted pod is replaced by a new one with a
new name and IP), a Job runs its pod until it succeeds, retrying up to `backoffLimit` within
`activeDeadlineSeconds`. `up` creates each resource once everything it depends on is ready, as Pulumi does,
with pulumi-kubernetes' readiness rules: a Deployment when all its replicas are ready, a Service when it has a
ready endpoint, a Job when it has succeeded.

Not emulated: NetworkPolicy enforcement, cgroup limits, image pulls, ClusterIPs (names resolve to pod IPs).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tests.program import Rendered
from tests.rehearsal.kubelet import Manifest, Pod, UnsupportedError
from tests.rehearsal.network import ClusterDNS, PodNetwork

CLUSTER_DOMAIN = "cluster.local"
T = TypeVar("T")


class JobFailedError(RuntimeError):
    """The Job gave up: `pulumi up` would fail here."""


def wait_for(condition: Callable[[], T], timeout: float, what: str | Callable[[], str], interval: float = 0.5) -> T:
    """Poll until `condition()` is truthy; every wait in the rehearsal is bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what if isinstance(what, str) else what()}: not within {timeout:.0f}s")
        time.sleep(interval)


def _key(manifest: Manifest) -> tuple[str, str, str]:
    metadata = manifest["metadata"]
    return manifest["kind"], metadata.get("namespace", ""), metadata["name"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


class Cluster:
    def __init__(self, directory: Path, prefix: str = f"rh{os.getpid() % 100000}") -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        self.image_home = directory / "image-home"
        self.image_home.mkdir(exist_ok=True)
        self.image_home.chmod(0o755)
        self.objects: dict[tuple[str, str, str], Manifest] = {}
        self.pods: dict[str, Pod] = {}
        self._owners: dict[str, tuple[str, str, str]] = {}
        self._job_started: dict[tuple[str, str, str], float] = {}
        self._declared: set[tuple[str, str, str]] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.network = PodNetwork(prefix)
        try:
            self.dns = ClusterDNS(self.network.gateway, self.resolve)
        except BaseException:
            self.network.close()
            raise
        self._controller = threading.Thread(target=self._reconcile_forever, name="controllers", daemon=True)
        self._controller.start()

    # ----- objects -----
    def get(self, kind: str, namespace: str, name: str) -> Manifest:
        with self._lock:
            return self.objects[(kind, namespace, name)]

    def apply(self, manifest: Manifest) -> None:
        kind = manifest["kind"]
        if kind not in {"Namespace", "ServiceAccount", "Secret", "ConfigMap", "Service", "NetworkPolicy",
                        "Deployment", "Job"}:  # fmt: skip
            raise UnsupportedError(f"kind {kind}")
        if kind == "Service":
            for port in manifest["spec"]["ports"]:
                if port.get("targetPort", port["port"]) != port["port"]:
                    raise UnsupportedError("a Service port that differs from its targetPort (no ClusterIP emulation)")
        with self._lock:
            previous = self.objects.get(_key(manifest))
            self.objects[_key(manifest)] = manifest
            if kind == "Job" and previous is None:
                self._job_started[_key(manifest)] = time.monotonic()
        if kind == "Deployment" and previous and previous["spec"]["template"] != manifest["spec"]["template"]:
            for pod in self.pods_of(_key(manifest)):  # a new template: replace every pod (Recreate)
                self.delete_pod(pod.name)

    def delete(self, manifest: Manifest) -> None:
        with self._lock:
            self.objects.pop(_key(manifest), None)
        for pod in self.pods_of(_key(manifest)):
            self.delete_pod(pod.name)

    # ----- pods -----
    def pods_of(self, owner: tuple[str, str, str]) -> list[Pod]:
        with self._lock:
            return [pod for name, pod in self.pods.items() if self._owners[name] == owner]

    def ready_pods(self, namespace: str, selector: dict[str, str], *, not_ready_too: bool = False) -> list[Pod]:
        with self._lock:
            pods = [p for p in self.pods.values() if p.namespace == namespace and _selects(selector, p.labels)]
        return [pod for pod in pods if pod.ready or not_ready_too]

    def resolve(self, name: str) -> list[str]:
        """Cluster DNS: `<service>.<namespace>.svc.<domain>` is the IPs of the Service's ready pods (or of all its
        pods with `publishNotReadyAddresses`)."""
        parts = name.split(".")
        if len(parts) < 4 or ".".join(parts[2:]) != f"svc.{CLUSTER_DOMAIN}":
            return []
        with self._lock:
            service = self.objects.get(("Service", parts[1], parts[0]))
        if not service:
            return []
        spec = service["spec"]
        everyone = bool(spec.get("publishNotReadyAddresses"))
        return [pod.ip for pod in self.ready_pods(parts[1], spec.get("selector", {}), not_ready_too=everyone)]

    def _start_pod(self, owner: tuple[str, str, str], template: Manifest, name: str) -> Pod:
        namespace_name, ip = self.network.add_pod(name)
        pod = Pod(
            name,
            owner[1],
            template["metadata"].get("labels", {}),
            template["spec"],
            network_namespace=namespace_name,
            ip=ip,
            directory=self.directory / "pods" / name,
            image_home=self.image_home,
            objects=lambda kind, object_name: self.get(kind, owner[1], object_name),
            dns=(self.network.gateway, CLUSTER_DOMAIN),
            mountpoint=self._mountpoint,
        )
        with self._lock:
            self.pods[name], self._owners[name] = pod, owner
        return pod

    @staticmethod
    def _mountpoint(path: str) -> None:
        """Mount targets missing from the "image" are created as empty directories, as a runtime does, and left in
        place: removing one would detach it from the pods of any other rehearsal running at the same time."""
        Path(path).mkdir(parents=True, exist_ok=True)

    def delete_pod(self, name: str) -> None:
        """`kubectl delete pod --force`: the processes die at once, the pod's network and files go."""
        with self._lock:
            pod = self.pods.pop(name, None)
            self._owners.pop(name, None)
        if pod:
            pod.delete()
            self.network.remove_pod(name)
            pod.release_files()

    # ----- controllers -----
    def _reconcile_forever(self) -> None:
        """One controller thread; it holds the lock only to read, so kubelets and DNS are never kept waiting."""
        while not self._stop.wait(0.2):
            with self._lock:
                snapshot = list(self.objects.items())
            for key, manifest in snapshot:
                if key[0] == "Deployment":
                    self._reconcile_deployment(key, manifest)
                elif key[0] == "Job":
                    self._reconcile_job(key, manifest)

    def _reconcile_deployment(self, key: tuple[str, str, str], deployment: Manifest) -> None:
        template = deployment["spec"]["template"]
        pod_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = self.pods_of(key)
        for pod in pods[deployment["spec"]["replicas"] :]:
            self.delete_pod(pod.name)
        for _ in range(deployment["spec"]["replicas"] - len(pods)):
            self._start_pod(key, template, f"{key[2]}-{pod_hash}-{secrets.token_hex(3)[:5]}")

    def _reconcile_job(self, key: tuple[str, str, str], job: Manifest) -> None:
        pods = self.pods_of(key)
        if self.job_status(job) != "Running":
            for pod in pods:
                if not pod.finished:
                    self.delete_pod(pod.name)
            return
        if all(pod.phase == "Failed" for pod in pods):
            self._start_pod(key, job["spec"]["template"], f"{key[2]}-{secrets.token_hex(3)[:5]}")

    def job_status(self, job: Manifest) -> str:
        """Running, Succeeded, or Failed (back-off limit or deadline reached)."""
        key = _key(job)
        pods = self.pods_of(key)
        if any(pod.phase == "Succeeded" for pod in pods):
            return "Succeeded"
        failed = sum(pod.phase == "Failed" for pod in pods)
        deadline = job["spec"].get("activeDeadlineSeconds")
        if failed > job["spec"].get("backoffLimit", 6):
            return "Failed"
        if deadline and time.monotonic() - self._job_started[key] > deadline:
            return "Failed"
        return "Running"

    # ----- pulumi up -----
    def is_ready(self, manifest: Manifest) -> bool:
        """pulumi-kubernetes' await rules for the kinds the program declares."""
        kind = manifest["kind"]
        if kind == "Deployment":
            replicas = manifest["spec"]["replicas"]
            pods = self.pods_of(_key(manifest))
            return len(pods) == replicas and all(pod.ready for pod in pods)
        if kind == "Service":
            return bool(self.ready_pods(manifest["metadata"]["namespace"], manifest["spec"].get("selector", {})))
        if kind == "Job":
            status = self.job_status(manifest)
            if status == "Failed":
                raise JobFailedError(f"Job {manifest['metadata']['name']} failed:\n{self.job_logs(manifest)}")
            return status == "Succeeded"
        return True

    def up(self, rendered: Rendered, timeout: float, delays: Mapping[str, float] | None = None) -> float:
        """Apply every resource once all it depends on is ready, then delete what the program no longer declares;
        returns the seconds until all were ready. `delays` holds back resources by logical name, as a slow image
        pull would."""
        started = time.monotonic()
        kubernetes = {r.urn: r for r in rendered.kubernetes()}
        ready: set[str] = {r.urn for r in rendered.registrations if r.urn not in kubernetes}
        applied: set[str] = set()

        def progress() -> bool:
            for urn, registration in kubernetes.items():
                if urn in ready or not set(registration.dependencies) <= ready:
                    continue
                if time.monotonic() - started < (delays or {}).get(registration.name, 0):
                    continue
                if urn not in applied:
                    self.apply(registration.inputs)
                    applied.add(urn)
                if self.is_ready(registration.inputs):
                    ready.add(urn)
            return ready >= kubernetes.keys()

        def not_ready() -> str:
            return "pulumi up: " + ", ".join(kubernetes[urn].name for urn in sorted(kubernetes.keys() - ready))

        wait_for(progress, timeout, not_ready, interval=0.2)
        elapsed = time.monotonic() - started
        declared = {_key(r.inputs) for r in kubernetes.values()}
        for key in self._declared - declared:
            self.delete(self.objects[key])
        self._declared = declared
        return elapsed

    def job_logs(self, job: Manifest) -> str:
        return "\n".join(
            f"--- {pod.name} ({pod.phase})\n{pod.logs(container['name'])}"
            for pod in self.pods_of(_key(job))
            for container in job["spec"]["template"]["spec"]["containers"]
        )

    def run_job(self, job: Manifest, timeout: float) -> str:
        """Run a Job (under a fresh name, like `kubectl create job --from`) to success; returns its logs."""
        fresh: dict[str, Any] = {**job, "metadata": {**job["metadata"], "name": f"rerun-{secrets.token_hex(3)}"}}
        self.apply(fresh)
        try:
            wait_for(lambda: self.is_ready(fresh), timeout, f"Job {fresh['metadata']['name']}")
            return self.job_logs(fresh)
        finally:
            self.delete(fresh)

    def close(self) -> None:
        self._stop.set()
        self._controller.join(timeout=10)
        stopping = [threading.Thread(target=self.delete_pod, args=(name,)) for name in list(self.pods)]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join(timeout=120)
        self.dns.close()
        self.network.close()
        shutil.rmtree(self.directory, ignore_errors=True)

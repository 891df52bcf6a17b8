"""The in-pod node provider (components/in_pod/node_provider.py), fast: its decisions against an in-memory Kubernetes
API that behaves like the real one (a ReplicaSet that removes pods in Kubernetes' order and creates them on a higher
count, terminating pods that linger until a later tick, a refusal as RBAC words it), driven by Ray's own
StandardAutoscaler where it can be; its HTTP client against a local HTTPS server; its restart on a new version in
a process of its own; and Ray's own loading and validation of the config it is given.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import trustme
from ray.autoscaler._private.autoscaler import StandardAutoscaler
from ray.autoscaler._private.load_metrics import LoadMetrics
from ray.autoscaler._private.providers import _clear_provider_cache, _get_node_provider
from ray.autoscaler._private.util import validate_config
from ray.autoscaler.batching_node_provider import BatchingNodeProvider, NodeData
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

from components.in_pod import node_provider
from components.in_pod.node_provider import (
    DeploymentNodeProvider,
    InClusterApi,
    KubernetesApiError,
    Manifest,
    Pod,
    node_status,
)
from components.manifests import autoscaling
from tests.http_stub import RecordingServer
from tests.program import render_in_place as render

# Ray's autoscaler internals without type hints, called through Any.
_LoadMetrics: Any = LoadMetrics
_clear_provider_cache_untyped: Any = _clear_provider_cache

NAMESPACE = "ns"
CLUSTER = "ray"
PROVIDER_FILE = Path(node_provider.__file__)

# -- An in-memory Kubernetes API ------------------------------------------------------------------------------------


def forbidden(verb: str, resource: str, name: str) -> str:
    """How the API server words an RBAC refusal."""
    group = "apps" if resource.startswith("deployments") else '""'
    kind = resource.split("/")[0] + (".apps" if group == "apps" else "")
    return (
        f'{kind} "{name}" is forbidden: User "system:serviceaccount:{NAMESPACE}:{CLUSTER}-autoscaler" cannot '
        f'{verb} resource "{resource}" in API group "{group}" in the namespace "{NAMESPACE}"'
    )


def pod_manifest(
    name: str,
    group: str,
    *,
    phase: str = "Running",
    node: str = "node-1",
    ready: bool = True,
    ip: str | None = "auto",
    created: int = 0,
    container: Manifest | None = None,
    init: Manifest | None = None,
    conditions: list[Manifest] | None = None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    """A pod as the API returns it, labelled as the component labels Ray pods."""
    kind = "head" if group == "head" else ("smoke-test" if group == "smoke-test" else "worker")
    if container is None:
        container = {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if phase == "Running" else {}
    status: Manifest = {
        "phase": phase,
        "conditions": [*(conditions or []), {"type": "Ready", "status": "True" if ready else "False"}],
    }
    if container:
        status["containerStatuses"] = [{"name": "ray", "ready": ready, "restartCount": 0, "state": container}]
    if init is not None:
        status["initContainerStatuses"] = [{"name": "wait-for-gcs", "state": init}]
    if ip == "auto":
        ip = f"10.0.0.{created + 10}" if node else None
    if ip:
        status["podIP"] = ip
    return {
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"ray.io/cluster": CLUSTER, "ray.io/group": group, "ray.io/node-type": kind},
            "annotations": dict(annotations or {}),
            "creationTimestamp": created,
        },
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }


@dataclass
class FakeKubernetes:
    """The part of the Kubernetes API the provider uses, on one state its controllers act on.

    `tick()` is time passing: pods deleted at an earlier tick are gone (a terminating pod lingers, as during its
    grace period), the kubelet moves each pending pod one step (scheduled, then running, ready and with an IP),
    and each ReplicaSet reconciles. With `eager`, the ReplicaSets also reconcile right after every write, as a
    fast controller would between two requests of the provider. A ReplicaSet removes pods in Kubernetes' order
    (controller.ActivePodsWithRanks): unscheduled, then pending before unknown before running, not ready before
    ready, lower pod-deletion-cost, more restarts, then newer.
    """

    eager: bool = False
    deployments: dict[str, Manifest] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    pods: dict[str, Manifest] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    # (method, path) -> the RBAC refusal's message
    refusals: dict[tuple[str, str], str] = field(default_factory=dict)
    # Deployments whose ReplicaSet cannot create pods (a ResourceQuota), with the reason.
    quota: dict[str, str] = field(default_factory=dict)
    clock: int = 1
    deleted_at: dict[str, int] = field(default_factory=dict)
    serial: int = 0

    # -- set-up --

    def add_deployment(self, group: str, replicas: int, *, autoscaled: bool = True, running: bool = True) -> None:
        name = f"{CLUSTER}-{group}"
        annotations = {node_provider.AUTOSCALED_ANNOTATION: "true"} if autoscaled else {}
        self.deployments[name] = {
            "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1, "annotations": annotations},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1},
        }
        self.groups[name] = group
        for _ in range(replicas):
            self.add_pod(group, running=running)

    def add_pod(self, group: str, *, running: bool = True, **fields: Any) -> str:
        self.serial += 1
        name = str(fields.pop("name", f"{CLUSTER}-{group}-{self.serial:03d}"))
        fields.setdefault("created", self.serial)
        if not running:
            fields.setdefault("phase", "Pending")
            fields.setdefault("node", "")
            fields.setdefault("ready", False)
        self.pods[name] = pod_manifest(name, group, **fields)
        return name

    def head(self) -> str:
        return self.add_pod("head", name=f"{CLUSTER}-head-0")

    # -- views for assertions --

    def writes(self) -> list[tuple[str, str, Any]]:
        return [call for call in self.calls if call[0] != "GET"]

    def live(self, group: str) -> list[str]:
        return sorted(name for name, pod in self.pods.items() if self._group(pod) == group and self._active(pod))

    def replicas(self, group: str) -> int:
        return int(self.deployments[f"{CLUSTER}-{group}"]["spec"]["replicas"])

    def set_ready(self, name: str, ready: bool) -> None:
        pod = self.pods[name]
        pod["status"]["conditions"][-1]["status"] = "True" if ready else "False"
        pod["status"]["containerStatuses"][0]["ready"] = ready

    # -- the API --

    def get(self, path: str) -> Manifest:
        self.calls.append(("GET", path, None))
        self._authorize("GET", path)
        url = urlsplit(path)
        parts = url.path.strip("/").split("/")
        if parts[:5] == ["api", "v1", "namespaces", NAMESPACE, "pods"] and len(parts) == 5:
            selector = parse_qs(url.query).get("labelSelector", [""])[0]
            wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
            items = [
                copy.deepcopy(pod) for pod in self.pods.values() if wanted.items() <= pod["metadata"]["labels"].items()
            ]
            return {"kind": "PodList", "metadata": {"resourceVersion": str(self.clock)}, "items": items}
        deployment = parts[:6] == ["apis", "apps", "v1", "namespaces", NAMESPACE, "deployments"] and len(parts) == 7
        if deployment and parts[6] in self.deployments:
            return copy.deepcopy(self.deployments[parts[6]])
        raise self._not_found("GET", path)

    def merge_patch(self, path: str, body: Manifest) -> Manifest:
        self.calls.append(("PATCH", path, copy.deepcopy(body)))
        self._authorize("PATCH", path)
        parts = path.strip("/").split("/")
        if parts[:5] == ["apis", "apps", "v1", "namespaces", NAMESPACE] and len(parts) == 8 and parts[7] == "scale":
            deployment = self.deployments.get(parts[6])
            if deployment is None or set(body) != {"spec"} or set(body["spec"]) != {"replicas"}:
                raise self._not_found("PATCH", path)
            if body["spec"]["replicas"] != deployment["spec"]["replicas"]:
                deployment["spec"]["replicas"] = body["spec"]["replicas"]
                deployment["metadata"]["generation"] += 1
            self._after_write()
            return {"kind": "Scale", "spec": {"replicas": deployment["spec"]["replicas"]}}
        if parts[:5] == ["api", "v1", "namespaces", NAMESPACE, "pods"] and len(parts) == 6:
            pod = self.pods.get(parts[5])
            if pod is None or set(body) != {"metadata"} or set(body["metadata"]) != {"annotations"}:
                raise self._not_found("PATCH", path)
            for key, value in body["metadata"]["annotations"].items():
                if value is None:
                    pod["metadata"]["annotations"].pop(key, None)
                else:
                    pod["metadata"]["annotations"][key] = value
            self._after_write()
            return copy.deepcopy(pod)
        raise self._not_found("PATCH", path)

    def delete(self, path: str) -> Manifest:
        self.calls.append(("DELETE", path, None))
        self._authorize("DELETE", path)
        parts = path.strip("/").split("/")
        if parts[:5] == ["api", "v1", "namespaces", NAMESPACE, "pods"] and len(parts) == 6 and parts[5] in self.pods:
            pod = self.pods[parts[5]]
            if "deletionTimestamp" not in pod["metadata"]:
                pod["metadata"]["deletionTimestamp"] = f"tick-{self.clock}"
                self.deleted_at[parts[5]] = self.clock
            self._after_write()
            return copy.deepcopy(pod)
        raise self._not_found("DELETE", path)

    # -- the controllers --

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.clock += 1
            for name, when in list(self.deleted_at.items()):
                if when < self.clock:
                    del self.pods[name], self.deleted_at[name]
            for pod in self.pods.values():
                self._kubelet(pod)
            self.reconcile()

    def reconcile(self) -> None:
        for name, deployment in self.deployments.items():
            group = self.groups[name]
            live = [pod for pod in self.pods.values() if self._group(pod) == group and self._active(pod)]
            wanted = deployment["spec"]["replicas"]
            deployment["status"]["observedGeneration"] = deployment["metadata"]["generation"]
            deployment["status"]["conditions"] = []
            if len(live) < wanted and name in self.quota:
                deployment["status"]["conditions"] = [
                    {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": self.quota[name]}
                ]
            elif len(live) < wanted:
                for _ in range(wanted - len(live)):
                    self.add_pod(group, running=False)
            for pod in sorted(live, key=self._deletion_rank)[: max(len(live) - wanted, 0)]:
                pod["metadata"]["deletionTimestamp"] = f"tick-{self.clock}"
                self.deleted_at[pod["metadata"]["name"]] = self.clock

    def _kubelet(self, pod: Manifest) -> None:
        if pod["status"]["phase"] != "Pending" or "deletionTimestamp" in pod["metadata"]:
            return
        if not pod["spec"].get("nodeName"):
            pod["spec"]["nodeName"] = "node-1"
            pod["status"]["containerStatuses"] = [
                {
                    "name": "ray",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }
            ]
            return
        pod["status"]["phase"] = "Running"
        pod["status"]["podIP"] = f"10.0.1.{pod['metadata']['creationTimestamp']}"
        pod["status"]["containerStatuses"] = [
            {"name": "ray", "ready": True, "restartCount": 0, "state": {"running": {}}}
        ]
        pod["status"]["conditions"][-1]["status"] = "True"

    @staticmethod
    def _deletion_rank(pod: Manifest) -> tuple[bool, int, bool, int, int, int]:
        status = pod["status"]
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        cost = int(pod["metadata"]["annotations"].get("controller.kubernetes.io/pod-deletion-cost", "0"))
        restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses", []))
        phase = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status["phase"], 0)
        return (bool(pod["spec"].get("nodeName")), phase, ready, cost, -restarts, -pod["metadata"]["creationTimestamp"])

    @staticmethod
    def _group(pod: Manifest) -> str:
        return str(pod["metadata"]["labels"]["ray.io/group"])

    @staticmethod
    def _active(pod: Manifest) -> bool:
        return "deletionTimestamp" not in pod["metadata"] and pod["status"]["phase"] not in ("Failed", "Succeeded")

    def _after_write(self) -> None:
        if self.eager:
            self.reconcile()

    def _authorize(self, method: str, path: str) -> None:
        message = self.refusals.get((method, path))
        if message is not None:
            raise KubernetesApiError(method, path, 403, "Forbidden", message)
        if f"/namespaces/{NAMESPACE}/" not in path:
            raise KubernetesApiError(method, path, 403, "Forbidden", "outside the Role's namespace")

    @staticmethod
    def _not_found(method: str, path: str) -> KubernetesApiError:
        return KubernetesApiError(method, path, 404, "NotFound", f"{path} not found")


def scale_path(group: str) -> str:
    return f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{CLUSTER}-{group}/scale"


def pod_path(name: str) -> str:
    return f"/api/v1/namespaces/{NAMESPACE}/pods/{name}"


# -- Ray's own autoscaler, driven as its monitor drives it --------------------------------------------------------

PROVIDER_CONFIG: Manifest = {
    "type": "external",
    "module": "components.in_pod.node_provider.DeploymentNodeProvider",
    "namespace": NAMESPACE,
    "cluster": CLUSTER,
    "deployments": {"worker": "ray-worker", "gpu": "ray-gpu", "fixed": "ray-fixed"},
    "disable_node_updaters": True,
    "disable_launch_config_check": True,
    "foreground_node_launch": True,
    "worker_liveness_check": False,
}

# The types' resources, as `ray start` is told them in their pods.
RESOURCES = {"head": {"CPU": 1.0}, "worker": {"CPU": 2.0}, "gpu": {"CPU": 1.0, "GPU": 1.0}, "fixed": {"CPU": 1.0}}


def autoscaling_config(**bounds: tuple[int, int]) -> Manifest:
    """A config like the one the component renders (KubeRay's shape, provider `external`)."""
    limits = {"worker": (1, 4), "gpu": (0, 2), "fixed": (2, 2), **bounds}
    types: Manifest = {"head": {"min_workers": 0, "max_workers": 0, "node_config": {}, "resources": RESOURCES["head"]}}
    for group, (least, most) in limits.items():
        types[group] = {"min_workers": least, "max_workers": most, "node_config": {}, "resources": RESOURCES[group]}
    return {
        "cluster_name": CLUSTER,
        "provider": copy.deepcopy(PROVIDER_CONFIG),
        "head_node_type": "head",
        "available_node_types": types,
        "max_workers": sum(most for _, most in limits.values()),
        "idle_timeout_minutes": 1.0,
        "upscaling_speed": 1.0,
        **copy.deepcopy(autoscaling.LEGACY_FIELDS),
    }


class FakeGcs:
    """The GCS's DrainNode, as StandardAutoscaler calls it before it asks the provider to remove nodes."""

    def __init__(self) -> None:
        self.drained: list[bytes] = []

    def drain_nodes(self, node_ids: set[bytes], timeout: int) -> list[bytes]:
        self.drained.extend(sorted(node_ids))
        return list(node_ids)


class Monitor:
    """Ray's StandardAutoscaler with this provider on the fake API, and the load metrics its monitor would
    collect from the GCS: one Ray node per running pod, by pod IP."""

    def __init__(self, kube: FakeKubernetes, config: Manifest | None = None) -> None:
        self.kube = kube
        self.config = config or autoscaling_config()
        # Ray's load metrics carry no type hints.
        self.metrics: Any = _LoadMetrics()
        self.gcs = FakeGcs()
        self.autoscaler: Any = StandardAutoscaler(
            lambda: copy.deepcopy(self.config), self.metrics, self.gcs, update_interval_s=0
        )

    @property
    def provider(self) -> DeploymentNodeProvider:
        provider = self.autoscaler.provider
        assert isinstance(provider, DeploymentNodeProvider)
        return provider

    def update(self, *, demand: list[dict[str, float]] | None = None, idle: dict[str, float] | None = None) -> None:
        """One update of the monitor: the raylets' reports (busy unless `idle` gives seconds), then Ray's decision."""
        running = [
            pod
            for pod in self.kube.pods.values()
            if pod["status"]["phase"] == "Running" and "deletionTimestamp" not in pod["metadata"]
        ]
        for position, pod in enumerate(running):
            name, group = pod["metadata"]["name"], pod["metadata"]["labels"]["ray.io/group"]
            seconds = (idle or {}).get(name, 0.0)
            static = RESOURCES[group]
            self.metrics.update(
                pod["status"]["podIP"],
                name.encode(),
                dict(static),
                dict(static) if seconds else {key: 0.0 for key in static},
                seconds,
                waiting_bundles=list(demand or []) if position == len(running) - 1 else [],
            )
        self.autoscaler.update()


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    """A fake API every provider built without one talks to (Ray's cache of providers emptied around each test)."""
    fake = FakeKubernetes()
    monkeypatch.setattr(node_provider, "in_cluster_api", lambda: fake)
    _clear_provider_cache_untyped()
    yield fake
    _clear_provider_cache_untyped()


def standard_cluster(kube: FakeKubernetes, *, worker: int = 1, gpu: int = 0, fixed: int = 2) -> None:
    kube.head()
    kube.add_deployment("worker", worker)
    kube.add_deployment("gpu", gpu)
    kube.add_deployment("fixed", fixed, autoscaled=False)


def provider(kube: FakeKubernetes) -> DeploymentNodeProvider:
    return DeploymentNodeProvider(copy.deepcopy(PROVIDER_CONFIG), CLUSTER, api=kube)


# -- Nodes and their statuses --------------------------------------------------------------------------------------


def test_nodes_are_the_head_and_the_worker_groups_pods_by_name_and_pod_ip(kube: FakeKubernetes) -> None:
    standard_cluster(kube, worker=2)
    pending = kube.add_pod("gpu", running=False)
    kube.add_pod("smoke-test", name="ray-smoke-test-abcde")
    job = kube.add_pod("worker", name="ray-smoke-test-fghij")  # a group named like the Job's would hold its pod
    kube.pods[job]["metadata"]["labels"]["ray.io/node-type"] = "smoke-test"
    kube.pods[job]["metadata"]["labels"]["ray.io/group"] = "worker"
    kube.add_pod("retired", name="ray-retired-001")
    gone = kube.add_pod("worker")
    kube.pods[gone]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    other = pod_manifest("other-worker-001", "worker")
    other["metadata"]["labels"]["ray.io/cluster"] = "other"
    kube.pods["other-worker-001"] = other

    nodes = provider(kube).get_node_data()

    assert nodes == {
        "ray-head-0": NodeData(kind="head", type="head", ip="10.0.0.11", status="up-to-date"),
        "ray-worker-002": NodeData(kind="worker", type="worker", ip="10.0.0.12", status="up-to-date"),
        "ray-worker-003": NodeData(kind="worker", type="worker", ip="10.0.0.13", status="up-to-date"),
        "ray-fixed-004": NodeData(kind="worker", type="fixed", ip="10.0.0.14", status="up-to-date"),
        "ray-fixed-005": NodeData(kind="worker", type="fixed", ip="10.0.0.15", status="up-to-date"),
        pending: NodeData(kind="worker", type="gpu", ip=None, status="scheduling"),
    }
    assert kube.calls[0] == ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=ray.io/cluster%3Dray", None)
    assert sorted(call[1] for call in kube.calls[1:]) == [
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/ray-{group}" for group in ("fixed", "gpu", "worker")
    ]


RUNNING = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}


@pytest.mark.parametrize(
    ("pod", "status"),
    [
        (pod_manifest("p", "worker"), "up-to-date"),
        (pod_manifest("p", "worker", ready=False), "up-to-date"),
        (pod_manifest("p", "worker", container={"waiting": {"reason": "CrashLoopBackOff"}}), "CrashLoopBackOff"),
        (pod_manifest("p", "worker", container={"terminated": {"exitCode": 1}}), "starting"),
        (pod_manifest("p", "worker", phase="Pending", node=""), "scheduling"),
        (
            pod_manifest(
                "p",
                "worker",
                phase="Pending",
                node="",
                conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
            ),
            "unschedulable",
        ),
        (pod_manifest("p", "worker", phase="Pending", init=RUNNING), "initializing"),
        (
            pod_manifest("p", "worker", phase="Pending", init={"waiting": {"reason": "ImagePullBackOff"}}),
            "init: ImagePullBackOff",
        ),
        (
            pod_manifest(
                "p",
                "worker",
                phase="Pending",
                init={"terminated": {"exitCode": 0}},
                container={"waiting": {"reason": "ContainerCreating"}},
            ),
            "ContainerCreating",
        ),
        (pod_manifest("p", "worker", phase="Pending", container={"waiting": {}}), "waiting"),
        (pod_manifest("p", "worker", phase="Pending"), "pending"),
        (pod_manifest("p", "worker", phase="Failed"), "update-failed"),
        (pod_manifest("p", "worker", phase="Unknown"), "update-failed"),
        (pod_manifest("p", "worker", phase="Succeeded"), "update-failed"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_pods_status_is_what_nodedata_asks_for(pod: Manifest, status: str) -> None:
    """Up-to-date iff the Ray node runs, "update-failed" iff the pod failed or is unknown, else why it pends."""
    assert node_status(pod) == status


def test_failed_pods_are_reported_but_not_counted_as_the_replicasets(kube: FakeKubernetes) -> None:
    standard_cluster(kube, worker=1)
    kube.add_pod("worker", name="ray-worker-evicted", phase="Failed", ready=False)
    nodes = provider(kube).get_node_data()
    assert nodes["ray-worker-evicted"].status == "update-failed"
    assert Pod.parse(kube.pods["ray-worker-evicted"]).active is False


# -- Scale-up ----------------------------------------------------------------------------------------------------


def test_demand_for_a_gpu_raises_the_gpu_deployment_and_nothing_else(kube: FakeKubernetes) -> None:
    standard_cluster(kube)
    monitor = Monitor(kube)

    monitor.update(demand=[{"GPU": 1.0}])

    assert kube.writes() == [("PATCH", scale_path("gpu"), {"spec": {"replicas": 1}})]
    kube.tick()
    monitor.update(demand=[{"GPU": 1.0}])  # the new pod pends: Ray counts it and asks for no other
    kube.tick(2)
    monitor.update()
    assert kube.writes() == [("PATCH", scale_path("gpu"), {"spec": {"replicas": 1}})]
    assert [node_status(kube.pods[name]) for name in kube.live("gpu")] == ["up-to-date"]


def test_demand_beyond_the_cluster_raises_the_cpu_group_to_its_maximum_only(kube: FakeKubernetes) -> None:
    standard_cluster(kube)
    monitor = Monitor(kube)

    monitor.update(demand=[{"CPU": 2.0}] * 20)  # only a worker fits a task of 2 CPUs

    assert kube.writes() == [("PATCH", scale_path("worker"), {"spec": {"replicas": 4}})]
    assert kube.replicas("gpu") == 0 and kube.replicas("fixed") == 2


def test_safe_to_scale_waits_for_the_replicaset_to_create_the_pods_asked_for(kube: FakeKubernetes) -> None:
    standard_cluster(kube)
    monitor = Monitor(kube)
    monitor.update(demand=[{"CPU": 1.0}] * 4)
    assert kube.replicas("worker") == 3

    # The ReplicaSet has not created the pods yet: Ray must not count 1 worker and ask for 2 more again.
    assert monitor.provider.get_node_data() and monitor.provider.safe_to_scale() is False
    monitor.update(demand=[{"CPU": 1.0}] * 4)
    assert kube.writes() == [("PATCH", scale_path("worker"), {"spec": {"replicas": 3}})]

    kube.tick()
    monitor.provider.get_node_data()
    assert monitor.provider.safe_to_scale() is True


# -- Scale-down --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eager", [False, True], ids=["controllers-between-updates", "controllers-between-calls"])
def test_scale_down_removes_exactly_the_idle_pod_ray_chose(kube: FakeKubernetes, eager: bool) -> None:
    """The ReplicaSet, asked for one pod fewer while it still counts the chosen one, would remove the not-ready
    pod (a busy worker whose readiness probe failed) before it compared deletion costs."""
    kube.eager = eager
    standard_cluster(kube, worker=3)
    idle, not_ready, busy = kube.live("worker")
    kube.set_ready(not_ready, False)
    monitor = Monitor(kube)

    monitor.update(idle={idle: 3600.0})

    assert monitor.gcs.drained == [idle.encode()]
    assert kube.writes() == [
        ("DELETE", pod_path(idle), None),
        ("PATCH", scale_path("worker"), {"spec": {"replicas": 2}}),
    ]
    assert kube.live("worker") == [not_ready, busy]
    assert idle not in monitor.provider.get_node_data()  # terminating, and chosen
    assert monitor.provider.safe_to_scale() is True

    kube.tick(2)
    monitor.update()
    assert kube.live("worker") == [not_ready, busy] and kube.replicas("worker") == 2
    assert idle not in kube.pods
    assert len(kube.writes()) == 2


def test_scale_down_of_every_idle_pod_stops_at_min_workers(kube: FakeKubernetes) -> None:
    standard_cluster(kube, worker=3)
    workers = kube.live("worker")
    monitor = Monitor(kube)

    monitor.update(idle=dict.fromkeys(workers, 3600.0))
    kube.tick(2)

    [kept] = kube.live("worker")
    assert kube.replicas("worker") == 1
    assert sorted(monitor.gcs.drained) == sorted(name.encode() for name in workers if name != kept)
    assert [call for call in kube.writes() if call[0] == "DELETE"] == [
        ("DELETE", pod_path(name), None) for name in workers if name != kept
    ]


def test_a_chosen_pod_whose_deletion_failed_is_not_reported_and_holds_scaling_until_it_is_gone(
    kube: FakeKubernetes,
) -> None:
    standard_cluster(kube, worker=2)
    idle, busy = kube.live("worker")
    kube.refusals[("DELETE", pod_path(idle))] = forbidden("delete", "pods", idle)
    monitor = Monitor(kube)

    monitor.update(idle={idle: 3600.0})

    # Replicas are never lowered past a pod that is still alive: the ReplicaSet would pick its own.
    assert ("PATCH", scale_path("worker"), {"spec": {"replicas": 1}}) not in kube.writes()
    assert idle not in monitor.provider.get_node_data()
    with pytest.raises(KubernetesApiError, match="cannot delete resource"):
        monitor.provider.safe_to_scale()

    del kube.refusals[("DELETE", pod_path(idle))]
    monitor.provider.get_node_data()
    assert monitor.provider.safe_to_scale() is False
    assert kube.writes()[-1] == ("DELETE", pod_path(idle), None)
    kube.tick(3)  # the ReplicaSet replaces it (replicas are still 2), and the new pod runs
    monitor.provider.get_node_data()
    assert monitor.provider.safe_to_scale() is True
    assert busy in kube.live("worker") and len(kube.live("worker")) == 2


def test_a_chosen_pod_already_gone_is_no_error(kube: FakeKubernetes) -> None:
    standard_cluster(kube, worker=2)
    idle, _ = kube.live("worker")
    ray = provider(kube)
    ray.non_terminated_nodes({})
    del kube.pods[idle]  # deleted by someone else meanwhile
    ray.terminate_node(idle)
    ray.post_process()
    assert kube.writes()[-1] == ("PATCH", scale_path("worker"), {"spec": {"replicas": 1}})


def test_a_restarted_provider_whose_deletion_failed_lets_ray_choose_again(kube: FakeKubernetes) -> None:
    """Nothing marks a chosen pod on the cluster (pods are not patched): a restarted monitor reports the pod again,
    and Ray, finding it still idle, chooses it again."""
    standard_cluster(kube, worker=2)
    idle, busy = kube.live("worker")
    kube.refusals[("DELETE", pod_path(idle))] = forbidden("delete", "pods", idle)
    first = Monitor(kube)
    first.update(idle={idle: 3600.0})
    assert kube.replicas("worker") == 2 and idle in kube.live("worker")
    del kube.refusals[("DELETE", pod_path(idle))]

    _clear_provider_cache_untyped()
    restarted = Monitor(kube)
    assert idle in restarted.provider.non_terminated_nodes({})
    restarted.update(idle={idle: 3600.0})
    kube.tick(2)

    assert kube.live("worker") == [busy] and kube.replicas("worker") == 1
    assert [call for call in kube.writes() if call[0] == "PATCH"] == [
        ("PATCH", scale_path("worker"), {"spec": {"replicas": 1}})
    ]


def test_pods_of_a_group_pulumi_owns_are_never_removed(kube: FakeKubernetes, caplog: pytest.LogCaptureFixture) -> None:
    """Ray removes nodes of a type above its maximum, busy or not: here a group raised to 3 replicas by `pulumi up`
    while the mounted config still says 2 (the kubelet refreshes it within a minute or two)."""
    standard_cluster(kube, fixed=3)
    fixed = kube.live("fixed")
    monitor = Monitor(kube, autoscaling_config(fixed=(2, 2)))

    with caplog.at_level(logging.WARNING):
        monitor.update()
        monitor.update()

    assert kube.live("fixed") == fixed and kube.replicas("fixed") == 3
    assert [call for call in kube.writes() if "fixed" in call[1]] == []
    assert "Deployment ray-fixed is not autoscaled (its replicas are Pulumi's)" in caplog.text
    assert set(fixed) <= set(monitor.provider.non_terminated_nodes({}))


# -- What is never patched ---------------------------------------------------------------------------------------


def test_no_update_patches_anything_when_nothing_changes(kube: FakeKubernetes) -> None:
    standard_cluster(kube, worker=2, gpu=1)
    monitor = Monitor(kube)
    for _ in range(3):
        monitor.update()  # every node busy, nothing waiting: nothing to launch, nothing idle
        kube.tick()
    assert kube.writes() == []


def cluster_reads(kube: FakeKubernetes) -> int:
    return sum(1 for method, path, _ in kube.calls if method == "GET" and "/pods?" in path)


def test_at_rest_the_cluster_is_read_as_often_as_a_5_second_monitor_would(kube: FakeKubernetes) -> None:
    """The monitor updates every second (a new task's worker is asked for within a second); with nothing changing,
    the API server is asked every CLUSTER_READ_SECONDS only, and the updates in between decide on that read."""
    standard_cluster(kube, worker=2)
    monitor = Monitor(kube)
    now = [100.0]
    monitor.provider.clock = lambda: now[0]
    nodes = []
    for _ in range(10):  # 10 s of updates, a second apart
        monitor.update()
        nodes.append(set(monitor.provider.node_data_dict))
        now[0] += 1.0
    assert node_provider.CLUSTER_READ_SECONDS == 5.0 and cluster_reads(kube) == 2  # at 100 s and at 105 s
    assert nodes == [nodes[0]] * 10 and len(nodes[0]) == 5
    assert kube.writes() == []


def test_after_a_request_the_cluster_is_read_every_update_until_it_settles(kube: FakeKubernetes) -> None:
    standard_cluster(kube)
    monitor = Monitor(kube)
    now = [100.0]
    monitor.provider.clock = lambda: now[0]
    monitor.update()
    now[0] += 1.0
    monitor.update(demand=[{"GPU": 1.0}])  # decided on the read of a second ago
    assert kube.writes() == [("PATCH", scale_path("gpu"), {"spec": {"replicas": 1}})] and cluster_reads(kube) == 1
    now[0] += 1.0
    monitor.update(demand=[{"GPU": 1.0}])  # read anew: the GPU pod is not there yet, the group has not settled
    now[0] += 1.0
    monitor.update(demand=[{"GPU": 1.0}])  # nor now
    assert cluster_reads(kube) == 3
    kube.tick()  # the ReplicaSet made the pod
    now[0] += 1.0
    monitor.update(demand=[{"GPU": 1.0}])  # read anew, and settled
    now[0] += 1.0
    monitor.update(demand=[{"GPU": 1.0}])  # at rest again
    assert cluster_reads(kube) == 4 and len(kube.live("gpu")) == 1
    assert kube.writes() == [("PATCH", scale_path("gpu"), {"spec": {"replicas": 1}})]


@pytest.mark.parametrize("lag", ["missing", "surplus"])
def test_a_group_whose_pods_lag_is_not_patched_when_another_group_scales(kube: FakeKubernetes, lag: str) -> None:
    """A worker pod was deleted (by hand, or evicted) and its replacement is not there yet, or a rollout runs a
    pod more than the replicas: Ray counts 1 or 3 workers for 2 replicas. A request that raises the GPU group
    carries that count; it must not become the worker's replicas."""
    standard_cluster(kube, worker=2)
    if lag == "missing":
        kube.delete(pod_path(kube.live("worker")[0]))
    else:
        kube.add_pod("worker")
    kube.calls.clear()
    lagging = provider(kube)
    lagging.non_terminated_nodes({})
    assert lagging.safe_to_scale() is False  # what keeps Ray from asking in this state at all

    lagging.create_node({}, {TAG_RAY_USER_NODE_TYPE: "gpu"}, 1)
    lagging.post_process()  # had it asked anyway

    assert kube.writes() == [("PATCH", scale_path("gpu"), {"spec": {"replicas": 1}})]


def test_a_group_with_as_many_replicas_as_its_maximum_is_reported_but_never_patched(kube: FakeKubernetes) -> None:
    standard_cluster(kube, fixed=2)
    fixed = kube.live("fixed")
    kube.delete(pod_path(fixed[0]))  # the ReplicaSet has yet to replace it: Ray sees 1 of min_workers 2
    kube.add_pod("fixed", name="ray-fixed-evicted", phase="Failed", ready=False)  # and one it may remove
    kube.calls.clear()
    monitor = Monitor(kube)

    monitor.update()

    assert {name for name, node in monitor.provider.node_data_dict.items() if node.type == "fixed"} == {
        fixed[1],
        "ray-fixed-evicted",
    }
    assert [call for call in kube.writes() if "/deployments/" in call[1]] == []
    assert monitor.provider.safe_to_scale() is True  # its lag holds nothing up: it is never scaled
    kube.tick()
    monitor.update()
    assert [call for call in kube.writes() if "/deployments/" in call[1]] == []
    assert kube.replicas("fixed") == 2


def test_a_chosen_failed_pod_is_deleted_without_lowering_replicas(kube: FakeKubernetes) -> None:
    """An evicted pod: Ray may remove it (it is reported), but its ReplicaSet already replaced it."""
    standard_cluster(kube, worker=2)
    kube.add_pod("worker", name="ray-worker-evicted", phase="Failed", ready=False)
    ray = provider(kube)
    ray.non_terminated_nodes({})
    assert ray.safe_to_scale() is True

    ray.terminate_node("ray-worker-evicted")
    ray.post_process()

    assert [call[0:2] for call in kube.writes()] == [("DELETE", pod_path("ray-worker-evicted"))]


def test_a_scale_up_does_not_lower_replicas_a_quota_keeps_from_pods(kube: FakeKubernetes) -> None:
    standard_cluster(kube, worker=1)
    kube.deployments["ray-worker"]["spec"]["replicas"] = 3
    kube.quota["ray-worker"] = 'pods "ray-worker-x" is forbidden: exceeded quota: pods, requested: pods=1'
    kube.tick()
    ray = provider(kube)
    ray.non_terminated_nodes({})
    assert ray.safe_to_scale() is True  # waiting would not bring the pods: the Deployment says why

    ray.create_node({}, {TAG_RAY_USER_NODE_TYPE: "worker"}, 1)
    ray.post_process()
    assert kube.writes() == []

    ray.non_terminated_nodes({})
    ray.terminate_node(kube.live("worker")[0])
    ray.post_process()  # a scale-down gives back the replicas that never came
    assert kube.writes()[-1] == ("PATCH", scale_path("worker"), {"spec": {"replicas": 0}})


def test_a_replica_failure_the_controller_reported_before_the_last_scale_holds_nothing(kube: FakeKubernetes) -> None:
    standard_cluster(kube, worker=1)
    kube.deployments["ray-worker"]["spec"]["replicas"] = 3
    kube.quota["ray-worker"] = "exceeded quota: pods"
    kube.tick()
    del kube.quota["ray-worker"]
    kube.deployments["ray-worker"]["spec"]["replicas"] = 4  # raised again; the controller has yet to see it
    kube.deployments["ray-worker"]["metadata"]["generation"] += 1
    ray = provider(kube)
    ray.non_terminated_nodes({})
    assert ray.safe_to_scale() is False
    kube.tick()
    ray.non_terminated_nodes({})
    assert ray.safe_to_scale() is True


def test_launching_and_removing_in_one_group_keeps_the_sum(kube: FakeKubernetes) -> None:
    standard_cluster(kube, worker=2)
    idle, busy = kube.live("worker")
    ray = provider(kube)
    ray.non_terminated_nodes({})
    ray.terminate_node(idle)
    ray.create_node({}, {TAG_RAY_USER_NODE_TYPE: "worker"}, 2)
    ray.post_process()

    assert [call[0:2] for call in kube.writes()] == [("PATCH", scale_path("worker")), ("DELETE", pod_path(idle))]
    assert kube.replicas("worker") == 3
    kube.tick(3)
    assert busy in kube.live("worker") and idle not in kube.pods and len(kube.live("worker")) == 3


# -- The Role ------------------------------------------------------------------------------------------------------


def rbac_attributes(method: str, path: str) -> tuple[str, str, str, str | None]:
    """(verb, API group, resource with subresource, name) of a request, as the API server's RequestInfo reads it."""
    parts = urlsplit(path).path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    after_namespace = parts[parts.index("namespaces") + 2 :]
    resource, name = after_namespace[0], (after_namespace[1] if len(after_namespace) > 1 else None)
    if len(after_namespace) > 2:
        resource += "/" + after_namespace[2]
    verb = {"GET": "get" if name else "list", "PATCH": "patch", "DELETE": "delete"}[method]
    return verb, group, resource, name


def test_the_components_role_allows_exactly_the_calls_the_provider_makes(kube: FakeKubernetes) -> None:
    """Every call a scale-up and a scale-down make is allowed by the Role the component renders for the same
    groups, and every permission the Role grants is used: nothing more than least privilege."""
    standard_cluster(kube, worker=2)
    monitor = Monitor(kube)
    monitor.update(demand=[{"GPU": 1.0}, {"CPU": 2.0}, {"CPU": 2.0}])
    kube.tick(3)
    monitor.update(idle=dict.fromkeys(kube.live("worker"), 3600.0))
    kube.tick(3)
    rendered = render(
        {
            "workers": "1",
            "maxWorkers": "4",
            "workerGroups": [{"name": "gpu", "replicas": 0, "maxReplicas": 2}, {"name": "fixed", "replicas": 2}],
        }
    )
    rules = rendered.one("Role", "ray-autoscaler")["rules"]
    requests = {rbac_attributes(call[0], call[1]) for call in kube.calls}

    def allowed_by(rule: Manifest, verb: str, group: str, resource: str, name: str | None) -> bool:
        named = "resourceNames" not in rule or (name is not None and name in rule["resourceNames"])
        return verb in rule["verbs"] and group in rule["apiGroups"] and resource in rule["resources"] and named

    assert {"list", "get", "patch", "delete"} == {verb for verb, *_ in requests}  # the scenario made every call
    for request in requests:
        assert any(allowed_by(rule, *request) for rule in rules), request
    for rule in rules:
        for verb in rule["verbs"]:
            assert any(
                verb == used and group in rule["apiGroups"] and resource in rule["resources"]
                for used, group, resource, _ in requests
            ), (verb, rule)


# -- Errors --------------------------------------------------------------------------------------------------------


def test_a_refused_scale_is_in_the_monitors_log_with_the_apis_message(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    standard_cluster(kube)
    message = forbidden("patch", "deployments/scale", "ray-gpu")
    kube.refusals[("PATCH", scale_path("gpu"))] = message
    monitor = Monitor(kube)

    with caplog.at_level(logging.ERROR):
        monitor.update(demand=[{"GPU": 1.0}])

    assert f"PATCH {scale_path('gpu')}: 403 Forbidden: {message}" in caplog.text


def test_a_provider_config_ray_would_run_badly_is_refused() -> None:
    config = copy.deepcopy(PROVIDER_CONFIG)
    config["worker_liveness_check"] = True
    with pytest.raises(ValueError, match="worker_liveness_check"):
        DeploymentNodeProvider(config, CLUSTER, api=FakeKubernetes())
    config = copy.deepcopy(PROVIDER_CONFIG)
    config["deployments"]["head"] = "ray-head"
    with pytest.raises(ValueError, match="head"):
        DeploymentNodeProvider(config, CLUSTER, api=FakeKubernetes())
    config = copy.deepcopy(PROVIDER_CONFIG)
    del config["foreground_node_launch"]
    with pytest.raises(AssertionError, match="foreground_node_launch"):
        DeploymentNodeProvider(config, CLUSTER, api=FakeKubernetes())


def test_the_cluster_label_defaults_to_rays_cluster_name() -> None:
    config = copy.deepcopy(PROVIDER_CONFIG)
    del config["cluster"]
    kube = FakeKubernetes()
    DeploymentNodeProvider(config, "other", api=kube).get_node_data()
    assert kube.calls[0][1].endswith("labelSelector=ray.io/cluster%3Dother")


def test_the_heartbeat_is_touched_after_each_read_of_the_cluster_and_not_when_it_fails(
    kube: FakeKubernetes, tmp_path: Path
) -> None:
    """The autoscaler container's probes read its age (components/manifests/autoscaling.py): fresh only while reads
    work."""
    standard_cluster(kube)
    heartbeat = tmp_path / "autoscaler" / "heartbeat"
    watched = DeploymentNodeProvider(
        {**copy.deepcopy(PROVIDER_CONFIG), "heartbeat_file": str(heartbeat)}, CLUSTER, api=kube
    )
    watched.get_node_data()
    assert heartbeat.exists()
    os.utime(heartbeat, (0, 0))
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=ray.io/cluster%3D{CLUSTER}"
    kube.refusals[("GET", pods)] = forbidden("list", "pods", "")
    with pytest.raises(node_provider.KubernetesApiError):
        watched.get_node_data()
    assert heartbeat.stat().st_mtime == 0
    del kube.refusals[("GET", pods)]
    watched.get_node_data()
    assert heartbeat.stat().st_mtime > 0


# -- The HTTP client -----------------------------------------------------------------------------------------------


class FakeApiServer(RecordingServer):
    """An HTTPS server with a certificate from its own CA, answering each request from a table."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = tmp_path / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        super().__init__(context=context)
        self.base_url = f"https://127.0.0.1:{self.port}"


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[FakeApiServer]:
    server = FakeApiServer(tmp_path)
    yield server
    server.close()


def test_the_client_sends_the_current_token_and_merge_patches_over_verified_https(
    api_server: FakeApiServer, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    api = InClusterApi(api_server.base_url, token_file=token, ca_file=api_server.ca_file)
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=ray.io/cluster%3Dray"
    api_server.answers[("GET", pods)] = (200, {"kind": "PodList", "items": []})
    api_server.answers[("PATCH", scale_path("gpu"))] = (200, {"kind": "Scale", "spec": {"replicas": 1}})
    api_server.answers[("DELETE", pod_path("p"))] = (200, {"kind": "Pod"})

    assert api.get(pods) == {"kind": "PodList", "items": []}
    token.write_text("rotated-token\n")  # the kubelet rotates it in place
    assert api.merge_patch(scale_path("gpu"), {"spec": {"replicas": 1}}) == {"kind": "Scale", "spec": {"replicas": 1}}
    assert api.delete(pod_path("p")) == {"kind": "Pod"}

    get, patch, delete = api_server.exchanges
    assert (get.method, get.path, get.headers["Authorization"]) == ("GET", pods, "Bearer first-token")
    assert (patch.method, patch.headers["Authorization"]) == ("PATCH", "Bearer rotated-token")
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(patch.body) == {"spec": {"replicas": 1}}
    assert (delete.method, delete.path, delete.body) == ("DELETE", pod_path("p"), b"")
    assert api.timeout == (5.0, 30.0)


def test_a_refusal_is_raised_with_the_apis_status_message(api_server: FakeApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    message = forbidden("patch", "deployments/scale", "ray-fixed")
    api_server.answers[("PATCH", scale_path("fixed"))] = (
        403,
        {"kind": "Status", "status": "Failure", "message": message, "reason": "Forbidden", "code": 403},
    )
    api_server.answers[("GET", "/proxy")] = (502, b"<html>Bad Gateway</html>")
    api = InClusterApi(api_server.base_url, token_file=token, ca_file=api_server.ca_file)

    with pytest.raises(KubernetesApiError) as refused:
        api.merge_patch(scale_path("fixed"), {"spec": {"replicas": 3}})
    assert (refused.value.code, refused.value.reason, refused.value.message) == (403, "Forbidden", message)
    assert str(refused.value) == f"PATCH {scale_path('fixed')}: 403 Forbidden: {message}"

    with pytest.raises(KubernetesApiError, match=r"GET /proxy: 502 Bad Gateway: <html>Bad Gateway</html>"):
        api.get("/proxy")


def test_a_request_the_server_does_not_answer_in_time_fails(api_server: FakeApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    api_server.delay = 2.0
    api = InClusterApi(api_server.base_url, token_file=token, ca_file=api_server.ca_file, timeout=(1.0, 0.2))
    with pytest.raises(KubernetesApiError, match="ReadTimeout"):
        api.get("/api/v1/namespaces/ns/pods")


def test_the_client_goes_to_the_api_server_directly_whatever_proxy_the_image_sets(
    api_server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    api_server.answers[("GET", "/api/v1/namespaces/ns/pods")] = (200, {"items": []})
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    api = InClusterApi(api_server.base_url, token_file=token, ca_file=api_server.ca_file)
    assert api.get("/api/v1/namespaces/ns/pods") == {"items": []}


def test_the_client_trusts_only_the_service_accounts_ca_and_needs_its_token(
    api_server: FakeApiServer, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other.crt"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    token = tmp_path / "token"
    token.write_text("t")
    with pytest.raises(KubernetesApiError, match="SSLError"):
        InClusterApi(api_server.base_url, token_file=token, ca_file=other_ca).get("/api/v1/namespaces/ns/pods")
    with pytest.raises(KubernetesApiError, match="NoToken"):
        InClusterApi(api_server.base_url, token_file=tmp_path / "none", ca_file=api_server.ca_file).get("/")
    assert api_server.exchanges == []


def test_the_api_server_is_found_as_kubernetes_tells_a_pod() -> None:
    api = InClusterApi.from_environment({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert api.base_url == "https://10.96.0.1:6443"
    assert (api.token_file, api.ca_file) == (
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
    )
    assert InClusterApi.from_environment({"KUBERNETES_SERVICE_HOST": "fd00::1"}).base_url == "https://[fd00::1]:443"
    with pytest.raises(RuntimeError, match="KUBERNETES_SERVICE_HOST"):
        InClusterApi.from_environment({})
    with pytest.raises(ValueError, match="HTTPS"):
        InClusterApi("http://10.96.0.1:80")


# -- As Ray loads it -----------------------------------------------------------------------------------------------


def test_rays_validation_accepts_a_config_like_the_components() -> None:
    validate_config(autoscaling_config())
    wrong = autoscaling_config()
    wrong["provider"]["namespace"] = ["ns"]  # what the check would catch: the schema types `namespace`
    with pytest.raises(jsonschema.ValidationError):
        validate_config(wrong)


def test_ray_loads_the_provider_from_the_configmaps_module_on_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(PROVIDER_FILE, tmp_path / "ray_cluster_node_provider.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ray_cluster_node_provider", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    config = copy.deepcopy(PROVIDER_CONFIG)
    config["module"] = "ray_cluster_node_provider.DeploymentNodeProvider"

    loaded = _get_node_provider(config, CLUSTER, use_cache=False)

    assert type(loaded).__module__ == "ray_cluster_node_provider"
    assert type(loaded).__name__ == "DeploymentNodeProvider"
    assert isinstance(loaded, BatchingNodeProvider)
    assert loaded.api.base_url == "https://10.96.0.1:443"  # type: ignore[attr-defined]
    monkeypatch.delitem(sys.modules, "ray_cluster_node_provider")


def test_the_shared_names_match_the_components() -> None:
    from components import resource_options
    from components.manifests import autoscaling

    assert node_provider.CONFIG_FILE == autoscaling.CONFIG_FILE
    assert f"{autoscaling.PROVIDER_MODULE}.{autoscaling.PROVIDER_CLASS}" == (
        "ray_cluster_node_provider.DeploymentNodeProvider"
    )
    assert resource_options.AUTOSCALED[node_provider.AUTOSCALED_ANNOTATION] == "true"
    assert node_provider.HEAD_GROUP == autoscaling.HEAD_NODE_TYPE


# -- Restart on a new version --------------------------------------------------------------------------------------

# Run in a process of its own, as Ray's monitor runs it: Ray's StandardAutoscaler on the mounted config file, which
# loads the mounted module as the provider (on an API without pods), one update, then a new version of the ConfigMap
# as `mode` says, and another update.
RESTART_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, pathlib, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    directory, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    sys.path.insert(0, str(directory))
    import ray_cluster_node_provider as module
    from ray.autoscaler._private.autoscaler import StandardAutoscaler
    from ray.autoscaler._private.load_metrics import LoadMetrics

    assert not any(name == "pulumi" or name.startswith(("pulumi.", "components")) for name in sys.modules)

    class NoPods:
        def get(self, path):
            if "/pods?" in path:
                return {"items": []}
            raise module.KubernetesApiError("GET", path, 404, "NotFound", "not found")

    module.in_cluster_api = NoPods
    autoscaler = StandardAutoscaler(str(directory / "autoscaling.json"), LoadMetrics(), None, update_interval_s=0)
    autoscaler.update()
    assert type(autoscaler.provider) is module.DeploymentNodeProvider and autoscaler.num_failures == 0
    files = {path.name: path.read_text() for path in (directory / "..data").iterdir()}
    config = json.loads(files["autoscaling.json"])
    if mode == "source":
        files["ray_cluster_node_provider.py"] += "\\n# the next version\\n"
    elif mode == "config":
        config["provider"]["deployments"]["big"] = "ray-big"  # a group added
    elif mode == "other-config":
        config["idle_timeout_minutes"] = 5  # Ray's monitor re-reads this part itself
    files["autoscaling.json"] = json.dumps(config)
    # The kubelet's update of a ConfigMap volume: a new directory, then `..data` swapped to it at once.
    (directory / "..v2").mkdir()
    for name, text in files.items():
        (directory / "..v2" / name).write_text(text)
    os.symlink("..v2", directory / "..data_tmp")
    os.replace(directory / "..data_tmp", directory / "..data")
    autoscaler.update()
    assert autoscaler.num_failures == 0
    print("still running")
    """
)


def mount_configmap(directory: Path, files: dict[str, str]) -> None:
    """Files as the kubelet mounts a ConfigMap: in a versioned directory that `..data` points to, each shown by a
    symlink through `..data`, so that an update swaps them all at once."""
    (directory / "..v1").mkdir()
    for name, text in files.items():
        (directory / "..v1" / name).write_text(text)
        (directory / name).symlink_to(Path("..data") / name)
    (directory / "..data").symlink_to("..v1")


@pytest.mark.parametrize(
    ("mode", "restarts"), [("source", True), ("config", True), ("other-config", False), ("unchanged", False)]
)
def test_the_monitor_exits_when_the_configmap_brings_a_new_provider(tmp_path: Path, mode: str, restarts: bool) -> None:
    config = autoscaling_config()
    config["provider"]["module"] = "ray_cluster_node_provider.DeploymentNodeProvider"
    mounted = tmp_path / "etc-ray-autoscaler"
    mounted.mkdir()
    mount_configmap(
        mounted,
        {"ray_cluster_node_provider.py": PROVIDER_FILE.read_text(), "autoscaling.json": json.dumps(config, indent=2)},
    )
    script = tmp_path / "monitor.py"
    script.write_text(RESTART_SCRIPT)

    done = subprocess.run(
        [sys.executable, str(script), str(mounted), mode],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert ("still running" in done.stdout) is not restarts, done.stderr
    assert ("exiting, so that Kubernetes restarts the autoscaler container" in done.stderr) is restarts
    if mode == "source":
        assert "ray_cluster_node_provider.py changed since it was imported" in done.stderr
    if mode == "config":
        assert "the provider section of" in done.stderr


def test_the_module_parses_as_the_oldest_python_ray_runs_on() -> None:
    """The Ray image's Python may be older than the program's: Ray 2.60 runs on 3.10, which has no `except*`."""
    ast.parse(PROVIDER_FILE.read_text(), feature_version=(3, 10))
    with pytest.raises(SyntaxError):  # what the check would catch
        ast.parse("try:\n    pass\nexcept* OSError:\n    pass\n", feature_version=(3, 10))


def test_with_pod_labels_only_the_pods_that_carry_them_are_nodes(kube: FakeKubernetes) -> None:
    """With generations, each generation's autoscaler sees its own generation's head and workers only: another
    generation's pods carry the same cluster label and group names."""
    standard_cluster(kube, worker=1)
    label = "ray-cluster.pulumi.com/generation"
    for pod in kube.pods.values():
        pod["metadata"]["labels"][label] = "0000000b"
    old = set(kube.pods)
    kube.add_pod("head", name="ray-head-new")
    kube.add_pod("worker", name="ray-worker-new")
    for name in ("ray-head-new", "ray-worker-new"):
        kube.pods[name]["metadata"]["labels"][label] = "0000000c"
    config = {**copy.deepcopy(PROVIDER_CONFIG), "pod_labels": {label: "0000000c"}}
    nodes = DeploymentNodeProvider(config, CLUSTER, api=kube).get_node_data()
    assert set(nodes) == {"ray-head-new", "ray-worker-new"} and not old & set(nodes)
    selector = "ray-cluster.pulumi.com/generation%3D0000000c%2Cray.io/cluster%3Dray"
    assert kube.calls[0] == ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}", None)

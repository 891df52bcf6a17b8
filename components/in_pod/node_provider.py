"""Ray's own (v1) autoscaler scaling the worker Deployments of one cluster: the node provider Ray's monitor loads.

This file is not part of the Pulumi program. The component ships its source in the `<cluster>-autoscaler` ConfigMap
as the module `ray_cluster_node_provider`, mounted on the PYTHONPATH of the head pod's `autoscaler` container, and
Ray's monitor (`python -m ray.autoscaler._private.monitor`) imports it through the autoscaling config's
`provider: {type: external, module: ray_cluster_node_provider.DeploymentNodeProvider}`. It runs in the Ray image, so it
imports only the standard library, Ray and what `ray[default]` brings (requests, PyYAML): nothing from `components`,
nothing from Pulumi.

What Ray calls a node is a pod here: the head pod (label `ray.io/group=head`) and the pods of the worker Deployments
named in the provider config, typed by their `ray.io/group` label, named by the pod's name, addressed by the pod's
IP (which `ray start --node-ip-address` makes the Ray node's IP, so Ray's load metrics and these nodes match).
Other pods of the cluster (the smoke test's Job) are not nodes, whatever their group label says.

Ray's `BatchingNodeProvider` does the bookkeeping: each autoscaler update starts with `get_node_data()` (one list of
pods, one read of each Deployment), asks `safe_to_scale()`, and ends with one `submit_scale_request()` carrying the
desired count per node type and the exact nodes to remove. This provider turns that into Kubernetes calls:

- scale-up: a Deployment's replicas are raised through its `scale` subresource (a merge patch), for the groups
  whose count the autoscaler changed, and no other;
- scale-down: the idle pods Ray chose (Ray has already drained them through the GCS) are deleted, and only then
  is the Deployment's replicas lowered. Deleting first is what makes the removal exact: a ReplicaSet asked for
  fewer pods removes unscheduled, pending and not-ready pods before it even compares deletion costs, so lowering
  the replicas first could take a busy worker whose readiness probe failed instead of the idle one. Once the
  chosen pods are terminating the ReplicaSet no longer counts them and has nothing left to remove; replacements
  it may have created in between are unscheduled, pending and the newest, the first it removes.

Two rules keep a request from being computed from a count that lags (what BatchingNodeProvider's consistency
requirement is about): chosen pods are never reported again, and `safe_to_scale()` is False while a chosen pod is
not yet terminating or while an autoscaled Deployment's live pods differ from its replicas (its ReplicaSet has not
caught up with the last request, or a rollout is under way). A Deployment whose replicas Pulumi owns (no
`ray-cluster.pulumi.com/autoscaled` annotation: a group with as many replicas as its maximum) is reported, but
neither scaled nor are its pods removed (the Role would refuse the scale, not the deletion).

Kubernetes API access is in-cluster: `KUBERNETES_SERVICE_HOST`/`_PORT`, the service-account token (re-read before
every request, since the kubelet rotates it) and CA that only this container mounts. An API error is raised with
the API's own Status message, so a refusal by the Role reads in the monitor's log as what it is.

When a new version of the program updates the ConfigMap, the kubelet updates the mounted files, but the monitor
keeps running the code it imported and the provider config it was created with (Ray builds the provider once;
it re-reads the rest of the autoscaling config on each update). See `DeploymentNodeProvider.restart_if_replaced`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

import requests
import yaml
from ray.autoscaler.batching_node_provider import BatchingNodeProvider, NodeData, ScaleRequest
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, STATUS_UP_TO_DATE, STATUS_UPDATE_FAILED

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]

CLUSTER_LABEL = "ray.io/cluster"
GROUP_LABEL = "ray.io/group"
# `head` or `worker` on Ray's pods; other pods of the cluster (the smoke test's) carry their own.
NODE_TYPE_LABEL = "ray.io/node-type"
# The head's group label and its node type in the autoscaling config (`head_node_type`).
HEAD_GROUP = "head"
# Set by the component on the Deployments whose replicas it leaves to the autoscaler (ray_cluster.py, `_AUTOSCALED`).
AUTOSCALED_ANNOTATION = "ray-cluster.pulumi.com/autoscaled"
# The autoscaling config's file name in the ConfigMap, next to this module's (autoscaling.py, `CONFIG_FILE`).
CONFIG_FILE = "autoscaling.json"
# Kubernetes restarts the container whatever its exit code (restartPolicy Always); 0 says it was meant.
RESTART_EXIT_CODE = 0

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Connecting to the API server is quick or broken; a list of a few pods is answered in well under a second. The
# monitor is one thread: a hung request would stop all autoscaling.
REQUEST_TIMEOUT_SECONDS = (5.0, 30.0)
MERGE_PATCH = "application/merge-patch+json"
# Ray's monitor updates every second here (AUTOSCALER_UPDATE_INTERVAL_S, set by the autoscaler container), so that
# a task that needs a new worker waits at most a second for the decision, not Ray's default 5 s. The cluster is read
# from the API server every update only while something changes (a request made, a group not yet settled); at rest
# once every CLUSTER_READ_SECONDS, Ray's default cadence: no more API calls than a 5 s monitor made. In between, the
# updates decide on the last read, which at rest is what a 5 s monitor's next update would have read.
CLUSTER_READ_SECONDS = 5.0

# Phases a ReplicaSet no longer counts among its pods (controller.FilterActivePods), and a restartPolicy Always pod
# only reaches when it was evicted or its node was lost.
_ENDED_PHASES = frozenset({"Failed", "Succeeded"})
_FAILED_PHASES = frozenset({"Failed", "Succeeded", "Unknown"})


def _source_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# What this module's file held when Python imported it (it was read microseconds ago, by the import itself).
_MODULE_FILE = Path(__file__)
_IMPORTED_DIGEST = _source_digest(_MODULE_FILE)


class KubernetesApiError(Exception):
    """A refused or failed Kubernetes API request, with the API's own words (its Status `message`)."""

    def __init__(self, method: str, path: str, code: int | None, reason: str, message: str) -> None:
        self.method = method
        self.path = path
        self.code = code
        self.reason = reason
        self.message = message
        status = f"{code} {reason}" if code is not None else reason
        super().__init__(f"{method} {path}: {status}: {message}")


class KubernetesApi(Protocol):
    """The three calls the provider makes, on API paths (`/api/v1/...`): the seam between the decisions, which
    tests drive against an in-memory API, and the HTTP."""

    def get(self, path: str) -> Manifest: ...

    def merge_patch(self, path: str, body: Manifest) -> Manifest: ...

    def delete(self, path: str) -> Manifest: ...


class InClusterApi:
    """The Kubernetes API over HTTPS, as a pod reaches it: the token is read before every request (the kubelet
    rotates it well before it expires; reading a small file is cheap next to a request), the server is verified
    against the CA Kubernetes projects next to it, and every request has a timeout."""

    def __init__(
        self,
        base_url: str,
        *,
        token_file: Path = SERVICE_ACCOUNT_DIR / "token",
        ca_file: Path = SERVICE_ACCOUNT_DIR / "ca.crt",
        timeout: tuple[float, float] = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        if not base_url.startswith("https://"):
            raise ValueError(f"the Kubernetes API must be reached over HTTPS, not at {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file
        self.timeout = timeout
        self._session = requests.Session()
        # The API server is in the cluster: no proxy from the image's environment, no .netrc credentials.
        self._session.trust_env = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> InClusterApi:
        """The API server's Service, as Kubernetes tells every container where it is."""
        host = environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise RuntimeError("KUBERNETES_SERVICE_HOST is not set: the node provider must run in a Kubernetes pod")
        port = environ.get("KUBERNETES_SERVICE_PORT") or "443"
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}")

    def get(self, path: str) -> Manifest:
        return self._request("GET", path)

    def merge_patch(self, path: str, body: Manifest) -> Manifest:
        return self._request("PATCH", path, body)

    def delete(self, path: str) -> Manifest:
        return self._request("DELETE", path)

    def _request(self, method: str, path: str, body: Manifest | None = None) -> Manifest:
        try:
            token = self.token_file.read_text().strip()
        except OSError as error:
            raise KubernetesApiError(
                method, path, None, "NoToken", f"cannot read {self.token_file}: {error}"
            ) from error
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = MERGE_PATCH
            data = json.dumps(body)
        try:
            response = self._session.request(
                method, self.base_url + path, data=data, headers=headers, timeout=self.timeout, verify=str(self.ca_file)
            )
        except (requests.RequestException, OSError) as error:
            raise KubernetesApiError(method, path, None, type(error).__name__, str(error)) from error
        if not 200 <= response.status_code < 300:
            raise _api_error(method, path, response)
        try:
            answer = response.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}


def _api_error(method: str, path: str, response: requests.Response) -> KubernetesApiError:
    """The API's Status (`reason`, `message`), or the start of whatever else answered (a proxy's error page)."""
    reason, message = str(response.reason or ""), response.text[:500]
    try:
        status = response.json()
    except ValueError:
        status = None
    if isinstance(status, dict):
        reason = str(status.get("reason") or reason)
        message = str(status.get("message") or message)
    return KubernetesApiError(method, path, response.status_code, reason, message)


def in_cluster_api() -> KubernetesApi:
    """The API client a provider gets unless it is given one (tests replace this)."""
    return InClusterApi.from_environment()


@dataclass(frozen=True)
class Pod:
    """What the provider needs of a pod."""

    name: str
    group: str
    # The `ray.io/node-type` label: `head`, `worker`, or another kind of pod.
    kind: str
    ip: str | None
    status: str
    # Has a deletionTimestamp: on its way out, no longer counted by its ReplicaSet, no longer a node.
    terminating: bool
    # Counted by its ReplicaSet (controller.FilterActivePods): not terminating, not Failed or Succeeded.
    active: bool

    @property
    def head(self) -> bool:
        return self.group == HEAD_GROUP and self.kind == HEAD_GROUP

    @classmethod
    def parse(cls, manifest: Manifest) -> Pod:
        metadata = manifest.get("metadata") or {}
        labels = metadata.get("labels") or {}
        status = manifest.get("status") or {}
        terminating = metadata.get("deletionTimestamp") is not None
        return cls(
            name=str(metadata.get("name", "")),
            group=str(labels.get(GROUP_LABEL, "")),
            kind=str(labels.get(NODE_TYPE_LABEL, "")),
            ip=status.get("podIP") or None,
            status=node_status(manifest),
            terminating=terminating,
            active=not terminating and status.get("phase", "Pending") not in _ENDED_PHASES,
        )


def node_status(pod: Manifest) -> str:
    """A pod's state in the words NodeData's docstring asks for: "up-to-date" if and only if the Ray node runs (the
    pod is Running and so are its containers), "update-failed" if and only if the pod failed or its state is
    unknown, and otherwise a short reason why it is still pending, which `ray status` shows."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase in _FAILED_PHASES:
        return STATUS_UPDATE_FAILED
    containers = status.get("containerStatuses") or []
    if phase == "Running":
        if containers and all("running" in (c.get("state") or {}) for c in containers):
            return STATUS_UP_TO_DATE
        return _waiting_reason(containers) or "starting"
    if not (pod.get("spec") or {}).get("nodeName"):
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return "unschedulable"
        return "scheduling"
    init_containers = status.get("initContainerStatuses") or []
    if any("terminated" not in (c.get("state") or {}) for c in init_containers):
        reason = _waiting_reason(init_containers)
        return f"init: {reason}" if reason and reason != "PodInitializing" else "initializing"
    return _waiting_reason(containers) or "pending"


def _waiting_reason(containers: Iterable[Manifest]) -> str | None:
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting is not None:
            return str(waiting.get("reason") or "waiting")
    return None


@dataclass(frozen=True)
class Deployment:
    """What the provider needs of a worker Deployment."""

    name: str
    replicas: int
    # Its replicas are the autoscaler's: the component set them once and leaves them alone.
    autoscaled: bool
    # Why pods are missing when the Deployment says its ReplicaSet cannot create them (a ResourceQuota, an admission
    # webhook): waiting for them would stop the autoscaler for good.
    refused: str | None

    @classmethod
    def parse(cls, manifest: Manifest) -> Deployment:
        metadata = manifest.get("metadata") or {}
        spec = manifest.get("spec") or {}
        status = manifest.get("status") or {}
        refused = None
        if status.get("observedGeneration", 0) >= metadata.get("generation", 0):
            for condition in status.get("conditions") or []:
                if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
                    refused = str(condition.get("message") or condition.get("reason") or "ReplicaFailure")
        return cls(
            name=str(metadata.get("name", "")),
            replicas=int(spec.get("replicas", 1)),
            autoscaled=(metadata.get("annotations") or {}).get(AUTOSCALED_ANNOTATION) == "true",
            refused=refused,
        )


@dataclass
class Plan:
    """A scale request as Kubernetes calls: which pods to remove, which Deployments get which replicas."""

    remove: list[str] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)
    # Groups whose count Ray changed but whose Deployment is not the autoscaler's, and why: neither their replicas
    # nor their pods are touched (Ray asks to remove pods of a group above its maximum, busy or not, e.g. while
    # a new `replicas` has reached the Deployment and not yet the mounted config).
    ignored: dict[str, str] = field(default_factory=dict)


def plan(
    request: ScaleRequest,
    nodes: Mapping[str, NodeData],
    pods: Mapping[str, Pod],
    deployments: Mapping[str, Deployment],
) -> Plan:
    """What the request asks of Kubernetes, given the nodes reported at the start of this update.

    Ray's request holds absolute counts that start from the nodes reported (BatchingNodeProvider fills it with
    `cur_num_workers()` and adds or subtracts), so the difference from what was reported is exactly what the
    autoscaler asked: nodes to launch and nodes to remove. Only groups with such a change are touched. The new
    replicas are the pods the ReplicaSet counts, minus the chosen ones it counts, plus the launches: failed pods
    (reported, so Ray may choose them, but not counted by the ReplicaSet) change nothing. A pure scale-up never
    lowers replicas below what they are, even if fewer pods than replicas exist (a ReplicaSet refused by a quota).
    """
    result = Plan()
    reported = Counter(node.type for node in nodes.values() if node.kind == NODE_KIND_WORKER)
    chosen: dict[str, list[str]] = {}
    for name in sorted(request.workers_to_delete):
        node = nodes.get(name)
        if node is None or node.kind != NODE_KIND_WORKER:
            continue
        chosen.setdefault(node.type, []).append(name)
    for group in sorted(set(request.desired_num_workers) | set(chosen)):
        removed = chosen.get(group, [])
        launched = request.desired_num_workers.get(group, reported[group]) - reported[group] + len(removed)
        if launched == 0 and not removed:
            continue
        deployment = deployments.get(group)
        if deployment is None:
            result.ignored[group] = "its Deployment was not found"
            continue
        if not deployment.autoscaled:
            result.ignored[group] = f"Deployment {deployment.name} is not autoscaled (its replicas are Pulumi's)"
            continue
        result.remove += removed
        counted = sum(1 for pod in pods.values() if pod.group == group and pod.active)
        counted_removed = sum(1 for name in removed if name in pods and pods[name].active)
        replicas = counted - counted_removed + launched if removed else max(deployment.replicas, counted + launched)
        if replicas != deployment.replicas:
            result.replicas[deployment.name] = replicas
    return result


class DeploymentNodeProvider(BatchingNodeProvider):
    """Ray's nodes as the pods of one cluster's head and worker Deployments (see the module's docstring).

    Provider config keys: `namespace`, `cluster` (the `ray.io/cluster` label's value; Ray's cluster name if
    absent), `deployments` (worker group -> Deployment name, every worker group), `pod_labels` (optional: labels
    the cluster's pods must carry besides, such as their generation's), `heartbeat_file` (optional: a
    file touched after each read of the cluster, for the container's probes), and the flags
    BatchingNodeProvider and this provider require: `disable_node_updaters`, `disable_launch_config_check`,
    `foreground_node_launch` true and `worker_liveness_check` false (Kubernetes restarts and probes the pods).
    """

    def __init__(
        self,
        provider_config: dict[str, Any],
        cluster_name: str,
        *,
        api: KubernetesApi | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if provider_config.get("worker_liveness_check", True) is not False:
            raise ValueError("DeploymentNodeProvider needs `worker_liveness_check: false`: Kubernetes restarts pods")
        BatchingNodeProvider.__init__(self, provider_config, cluster_name)
        self.namespace: str = provider_config["namespace"]
        self.cluster: str = provider_config.get("cluster") or cluster_name
        self.pod_labels: dict[str, str] = {CLUSTER_LABEL: self.cluster, **provider_config.get("pod_labels", {})}
        self.deployments: dict[str, str] = dict(provider_config["deployments"])
        if HEAD_GROUP in self.deployments:
            raise ValueError(f"{HEAD_GROUP!r} is the head's group, not a worker group")
        self.api = api if api is not None else in_cluster_api()
        self.pods: dict[str, Pod] = {}
        self.deployment_states: dict[str, Deployment] = {}
        # Pods Ray chose to remove, until they are terminating or gone (a monitor that restarts in between forgets
        # them: still idle, they are chosen again).
        self.chosen: set[str] = set()
        # When the cluster was last read (by `clock`, seconds), and whether it was changing then or a request was
        # made since: see CLUSTER_READ_SECONDS.
        self.clock = clock
        self.read_at: float | None = None
        self.changing = True
        # Touched after each successful read of the cluster: the container's probes read its age (the monitor
        # itself leaves no trace of a live update loop).
        self.heartbeat = Path(provider_config["heartbeat_file"]) if provider_config.get("heartbeat_file") else None
        self._config_file = _MODULE_FILE.with_name(CONFIG_FILE)
        self._loaded_provider_config = self._mounted_provider_config()
        logger.info(
            "DeploymentNodeProvider for cluster %s in namespace %s, worker Deployments %s",
            self.cluster,
            self.namespace,
            self.deployments,
        )

    # -- Ray's BatchingNodeProvider interface ------------------------------------------------------------------

    def get_node_data(self) -> dict[str, NodeData]:
        """The cluster's pods as Ray nodes: the head and the pods of the configured worker groups, neither
        terminating nor chosen for removal (BatchingNodeProvider's consistency requirement: a node once in a
        request's workers_to_delete is never reported again). Read anew unless the cluster is at rest and was read
        less than CLUSTER_READ_SECONDS ago."""
        self.restart_if_replaced()
        if self.changing or self.read_at is None or self.clock() - self.read_at >= CLUSTER_READ_SECONDS:
            self._read_cluster()
        return {
            pod.name: NodeData(
                kind=NODE_KIND_HEAD if pod.head else NODE_KIND_WORKER,
                type=pod.group,  # the head's group is its node type, `head`
                ip=pod.ip,
                status=pod.status,
            )
            for pod in self.pods.values()
            if not pod.terminating and not self._is_chosen(pod)
        }

    def _read_cluster(self) -> None:
        """The pods and the worker Deployments, from the API server."""
        selector = quote(",".join(f"{key}={value}" for key, value in sorted(self.pod_labels.items())), safe="/")
        listed = self.api.get(f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}")
        pods = (Pod.parse(item) for item in listed.get("items") or [])
        self.pods = {
            pod.name: pod for pod in pods if pod.head or (pod.kind == "worker" and pod.group in self.deployments)
        }
        self.deployment_states = {}
        for group, name in sorted(self.deployments.items()):
            manifest = self._get_deployment(name)
            if manifest is not None:
                self.deployment_states[group] = Deployment.parse(manifest)
        self.chosen = {name for name in self.chosen if name in self.pods and not self.pods[name].terminating}
        self.read_at = self.clock()
        if self.heartbeat is not None:
            self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
            self.heartbeat.touch()

    def safe_to_scale(self) -> bool:
        """False while the last request has not settled: a chosen pod is not yet terminating (it is deleted again
        here, after a deletion that failed), or an autoscaled Deployment's
        live pods differ from its replicas (its ReplicaSet has yet to create or remove pods, or a rollout is under
        way). Ray would otherwise count nodes that are about to go, or miss nodes that are about to come, and ask
        for too many or too few."""
        settled = True
        for pod in self.pods.values():
            if self._is_chosen(pod) and not pod.terminating:
                logger.info("Removing pod %s, which the autoscaler chose earlier.", pod.name)
                self._remove(pod.name)
                settled = False
        for group, deployment in sorted(self.deployment_states.items()):
            if not deployment.autoscaled:
                continue
            live = sum(
                1 for pod in self.pods.values() if pod.group == group and pod.active and not self._is_chosen(pod)
            )
            if live == deployment.replicas:
                continue
            if live < deployment.replicas and deployment.refused is not None:
                logger.warning(
                    "Deployment %s has %d of its %d pods: its ReplicaSet cannot create more (%s).",
                    deployment.name,
                    live,
                    deployment.replicas,
                    deployment.refused,
                )
                continue
            logger.info(
                "Waiting for Deployment %s: %d live pods for %d replicas.", deployment.name, live, deployment.replicas
            )
            settled = False
        self.changing = not settled
        return settled

    def submit_scale_request(self, scale_request: ScaleRequest) -> None:
        """Scale-ups first, then the chosen pods are deleted, then the Deployments they leave are lowered: replicas
        are lowered only once every chosen pod is terminating, so that the ReplicaSet never picks a pod of its own
        choosing (see the module's docstring). A failure stops there and is raised: replicas are never lowered
        past a pod that is still alive. Pods of a group that is not the autoscaler's are never removed."""
        wanted = plan(scale_request, self.node_data_dict, self.pods, self.deployment_states)
        self.changing = True
        # Registered before any call, so that they are never reported again even if a call below fails.
        self.chosen |= set(wanted.remove)
        for group, why in wanted.ignored.items():
            logger.warning("The autoscaler changed the count of group %s, which is left alone: %s.", group, why)
        current = {state.name: state.replicas for state in self.deployment_states.values()}
        for name, replicas in wanted.replicas.items():
            if replicas > current[name]:
                self._scale(name, current[name], replicas)
        for pod in wanted.remove:
            self._remove(pod)
        for name, replicas in wanted.replicas.items():
            if replicas < current[name]:
                self._scale(name, current[name], replicas)

    # -- Restart on a new version --------------------------------------------------------------------------------

    def restart_if_replaced(self) -> None:
        """Exit the process if the mounted ConfigMap no longer holds this code or this provider's config.

        A new version of the program updates the ConfigMap; the kubelet then swaps the mounted files, but the
        monitor keeps the module it imported, and Ray builds the provider once from the provider config it read
        first (it re-reads the rest of the autoscaling config on every update, not this part). So the provider
        compares this module's file with what was imported and the config file's `provider` section with what it
        was created with, at the start of each update, and on a difference it ends the process so that
        Kubernetes starts the container again (restartPolicy Always) with the new code and config.

        It exits with `os._exit` after flushing the logs: an exception would not end the monitor, whose loop
        catches every Exception and retries (StandardAutoscaler.update counts it as a failed update; Monitor._run
        logs "Trying again..." for ever), and SystemExit would wait for non-daemon threads and exit handlers of a
        process that talks to the GCS. Nothing is half done at that point: no request has been made in this update.
        """
        reason = self.replaced_by()
        if reason is not None:
            _exit_for_restart(reason)

    def replaced_by(self) -> str | None:
        """What changed in the mounted ConfigMap since this provider was created, if anything."""
        if _IMPORTED_DIGEST is not None and _source_digest(_MODULE_FILE) not in (_IMPORTED_DIGEST, None):
            return f"{_MODULE_FILE} changed since it was imported"
        mounted = self._mounted_provider_config()
        if mounted is not None and mounted != self._loaded_provider_config:
            return f"the provider section of {self._config_file} changed since the provider was created"
        return None

    def _mounted_provider_config(self) -> Any:
        """The `provider` section of the autoscaling config next to this module, as Ray's monitor loads it
        (YAML, of which JSON is a subset), or None without one (a provider imported from elsewhere, in tests)."""
        try:
            config = yaml.safe_load(self._config_file.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return copy.deepcopy(config.get("provider")) if isinstance(config, dict) else None

    # -- Kubernetes calls -------------------------------------------------------------------------------------

    def _is_chosen(self, pod: Pod) -> bool:
        return pod.name in self.chosen

    def _get_deployment(self, name: str) -> Manifest | None:
        try:
            return self.api.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}")
        except KubernetesApiError as error:
            if error.code != 404:
                raise
            logger.warning("Deployment %s does not exist: its group is not scaled.", name)
            return None

    def _scale(self, name: str, current: int, replicas: int) -> None:
        logger.info("Scaling Deployment %s from %d to %d replicas.", name, current, replicas)
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/scale"
        self.api.merge_patch(path, {"spec": {"replicas": replicas}})

    def _remove(self, name: str) -> None:
        """Delete a chosen pod (gracefully: it drains for its grace period). A pod already gone is fine. It is
        not marked first (a pod-deletion-cost): deleting it before the replicas are lowered leaves the ReplicaSet
        nothing to pick, and patching pods is a right the Role does better without (a pod's image can be changed
        in place)."""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{name}"
        try:
            logger.info("Deleting pod %s, which the autoscaler removes.", name)
            self.api.delete(path)
        except KubernetesApiError as error:
            if error.code != 404:
                raise


def _exit_for_restart(reason: str) -> NoReturn:
    logger.warning("%s: exiting, so that Kubernetes restarts the autoscaler container with the new version.", reason)
    for handler in [*logger.handlers, *logging.getLogger().handlers]:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(RESTART_EXIT_CODE)

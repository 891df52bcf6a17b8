"""A one-node Kubernetes for the rehearsal, and `pulumi up` on top of it.

It keeps the objects the program renders (each with a uid, a creation time and a generation, which a change to
its spec bumps, or to a Deployment's annotations; and its fields' managers, as server-side apply keeps them,
tests/ssa.py), resolves Service names to their ClusterIPs, serves part of the Kubernetes API from this state
(apiserver.py: HTTPS at the `kubernetes` Service, 10.96.0.1:443, whose one endpoint is the node; tokens, RBAC from
the Roles and RoleBindings applied here), and runs, in one thread, the controllers and the scheduler:
- a Deployment rolls its template out through ReplicaSets named after the template's hash, with its strategy:
  Recreate (the old pods gone before new ones are created) or RollingUpdate (within maxSurge and maxUnavailable,
  old pods scaled down as new ones become available), as the Deployment controller does;
- a ReplicaSet keeps `replicas` active pods (a deleted pod is replaced at once, by a pod with a new name and IP)
  and, when it has too many, deletes the ones Kubernetes would pick;
- a Job runs its pod until it succeeds, retrying with Kubernetes' back-off up to `backoffLimit` within
  `activeDeadlineSeconds`; a pod deleted before it succeeded counts as a failed attempt;
- a pod is admitted as the ServiceAccount admission plugin admits it: it runs as its ServiceAccount (`default`
  unless it names one), and is not created while that does not exist (the controller tries again; `up` tells
  why); unless the pod, or else its ServiceAccount, sets automountServiceAccountToken: false, every container gets
  the projected kube-api-access volume (a token bound to the pod, the cluster CA, the namespace);
- every namespace has the ServiceAccount `default` and the ConfigMap kube-root-ca.crt (the cluster CA), put back
  when deleted or changed, as the ServiceAccount controller and the root-CA publisher do;
- a Deployment's status (replicas, updated, ready, available, unavailable, the generation it observed) follows its
  pods; its spec.replicas can be written through its scale subresource (`scale`, as `kubectl scale` and the API
  server's scale endpoint write it), by a field manager of its own;
- the scheduler binds Pending pods, oldest first, to the node once they fit (scheduler.py) and every claim they
  mount exists and is not being deleted; the kubelet then starts them (kubelet.py);
- a PersistentVolumeClaim is provisioned dynamically by its StorageClass (the default class when it names none, as
  the DefaultStorageClass admission plugin sets it): at once under `Immediate`, under `WaitForFirstConsumer` when
  the scheduler binds the first pod that mounts it. Its volume is a directory under the cluster's directory, as a
  new ext4 filesystem is (root's, 755, with lost+found), whose data outlives every pod that mounts it; the
  reclaim policy is Delete, so deleting the claim deletes the volume, but only once no pod bound to the node
  mounts it (the kubernetes.io/pvc-protection finalizer): until then the claim is Terminating, still in the API.
  The API server refuses changes to a claim's spec except a larger resources.requests.storage on a bound claim
  whose class allows expansion. A ReadWriteOnce volume is mounted by one pod at a time: while a pod that mounted it
  is still in the API, another pod's mount fails ("Multi-Attach error", as when the second pod lands on another
  node of a real cluster) and its kubelet tries again.
Deleting a pod is graceful and never blocks: the pod is Terminating at once (not ready, not counted by its
controller), holds its resources on the node until its last process has exited, and only then leaves the API,
its network namespace and its files with it; a pod not yet bound to the node, or already finished, leaves at once.
Deleting any other object (`delete`) cascades as the API server and the garbage collector do it. In the foreground
(pulumi-kubernetes' propagation, and `delete`'s default) the object stays in the API, with a deletionTimestamp and
the foregroundDeletion finalizer, its controller stopped, while its dependents are deleted, recursively: a
Deployment's ReplicaSets and their pods, a Job's pods, and every object whose ownerReferences name its uid, of any
kind; it leaves once none of those that block it is left (pods, ReplicaSets, and objects whose reference says
blockOwnerDeletion). In the background it leaves at once, and the collector deletes its dependents in its next
pass, as it deletes any object none of whose owners is left (a uid that was never live included). Not modelled:
orphaning dependents, and dropping the deleted owner's reference from a dependent another owner keeps.

`up` is `pulumi up` against the state it keeps (the inputs it last applied per URN, and which resources failed their
await): each resource is created, updated, replaced (on a change to one of pulumi-kubernetes' replacement fields,
or for a Job marked `pulumi.com/replaceUnready` that failed its await: deleted and gone, then created, where the
object keeps a user-set name, as the provider asks, or as `deleteBeforeReplace` says; else created first, under a
fresh name if auto-named, and the old copy deleted with what is no longer declared, at the end of the first `up`
that succeeds, as the engine's pending deletes) or left alone (unchanged inputs: nothing is applied), once
everything it depends on is ready; a create of an object that exists fails (AlreadyExists), as since
pulumi-kubernetes 4.29, unless `up` may upsert. Its `ignore_changes`
paths take their last inputs' values before the diff, as the engine does, and the provider's server-side apply
leaves them at their live values (so a Deployment's replicas written through its scale subresource stay); an apply
is forced only with the `pulumi.com/patchForce` annotation, and otherwise fails (ConflictError) on a field another
manager owns with another value, as the API server refuses it. Each is then awaited with pulumi-kubernetes' rules: a
Deployment when every replica of the live object is of the current template and available and no pod of an old
template is active, a Service when it has an endpoint, a Job when it has succeeded (its failure fails `up`), a
PersistentVolumeClaim (see `claim_ready`) when it is Bound, or on its creation Pending if its class binds on first
consumer; nothing is awaited for a resource annotated `pulumi.com/skipAwait: "true"`. An ownerReference is applied
with the uid of the live owner of its kind and name, which the engine passes as the owner's output (a render's is
the mocks', tests/program.py; the state keeps the render's, for the diffs). Deleting is in the foreground and waits
until the object has left the API (a claim's finalizer included, and the dependents that block it); a resource
applied with `retainOnDelete` only leaves the state, its object stays.

Services get ClusterIPs, to which their names resolve, and kube-proxy's forwarding to their endpoints (network.py).
`clock` is the cluster's wall clock (tokens' lifetimes and the API's timestamps), which a test can move on. `apply`
is a kubectl client-side apply that replaces the object and owns every field it sets. NetworkPolicies are enforced
for ingress (network_policy.py), a new pod's rules in place before its containers start. Not emulated: cgroup
limits, image pulls (but a failed one for another architecture: kubelet.py), ClusterRoles and their bindings (a
RoleBinding to a ClusterRole is refused), the variables of a namespace's Services in its pods' env (service links;
only the `kubernetes` Service's are set), the labels a Job's pods get from the Job, proportional scaling of a
Deployment in mid-rollout, revision history limits; a volume's capacity (its directory is as large as the disk it
lies on), and claims other than dynamically provisioned ReadWriteOnce filesystems (refused: static binding to
PersistentVolumes, `volumeName`, selectors, data sources, block volumes, other access modes); pulumi-kubernetes'
5-minute limit on a claim's await (`up` has its own timeout).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from tests.crds import crds, validate_custom_resource
from tests.lifecycle import _reset, kubernetes_diff, parse_path, type_token
from tests.program import AUTONAMED_ANNOTATION, Options, Rendered, auto_name
from tests.rehearsal import network_policy
from tests.rehearsal.apiserver import PORT, RBAC_GROUP, APIServer
from tests.rehearsal.kubelet import (
    DEFAULT_GRACE_SECONDS,
    Clock,
    IssuedToken,
    Manifest,
    Pod,
    UnsupportedError,
    check_supported,
    quantity,
    service_env,
)
from tests.rehearsal.kubelet import (
    InvalidError as InvalidError,  # raised here too, and known to callers by this module
)
from tests.rehearsal.network import ClusterDNS, NetworkError, PodNetwork
from tests.rehearsal.scheduler import Node, add, pod_requests, unschedulable
from tests.ssa import AlreadyExistsError, LiveObject, Owned, leaves, pulumi_create

CLUSTER_DOMAIN = "cluster.local"
REPLACE_UNREADY = "pulumi.com/replaceUnready"
SKIP_AWAIT = "pulumi.com/skipAwait"
POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
JOB_BACKOFF_START, JOB_BACKOFF_MAX = 10.0, 360.0
# The custom resources whose CRDs are installed here (as kube-prometheus-stack installs them), vendored under
# tests/crds: stored as they are, once their CRD's schema accepts them. No controller acts on them (a test that needs
# Prometheus runs it).
CUSTOM_KINDS = {kind for _, _, kind in crds()}
_KINDS = {"Namespace", "ServiceAccount", "Secret", "ConfigMap", "Service", "NetworkPolicy", "Deployment", "Job",
          "PersistentVolumeClaim", "Role", "RoleBinding", "EndpointSlice",
          *CUSTOM_KINDS}  # fmt: skip
# The label that ties an EndpointSlice to its Service, which kube-proxy reads (whoever manages the slice).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Claims the provisioner here cannot satisfy as asked: refused rather than provisioned as something else.
_UNSUPPORTED_CLAIM_FIELDS = ("volumeName", "selector", "dataSource", "dataSourceRef", "volumeAttributesClassName")
# What the API server refuses to change in place.
_IMMUTABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": (("spec", "selector"),),
    "Job": (("spec", "selector"), ("spec", "template")),
    "RoleBinding": (("roleRef",),),
    "EndpointSlice": (("addressType",),),
}
# The `kubernetes` Service, the API server's, in `default`: the first address of the service range.
KUBERNETES_SERVICE: Key = ("Service", "default", "kubernetes")
ROOT_CA = "kube-root-ca.crt"
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# How a kubectl client-side apply (`apply`) writes: as one field manager, owning every field it sets.
KUBECTL_APPLY = "kubectl-client-side-apply"
_PHASE_ORDER = {"Pending": 0, "Unknown": 1, "Running": 2}
T = TypeVar("T")
Key = tuple[str, str, str]
# A delete's propagationPolicy, as far as modelled (Orphan is not: an orphan would outlive every controller here).
Propagation = Literal["Foreground", "Background"]


class JobFailedError(RuntimeError):
    """The Job gave up: `pulumi up` would fail here."""


class AdmissionError(RuntimeError):
    """The API server refused to create a pod (403 from an admission plugin): its controller tries again."""


@dataclass(frozen=True)
class ObjectMeta:
    """What the API server keeps of an object besides its manifest: its uid, when it was created (monotonic), its
    generation (bumped by each change to its spec, a Deployment's by a change to its annotations too, and by its
    deletion) and, while a foreground deletion waits for its dependents, when it was deleted (deletionTimestamp,
    with the foregroundDeletion finalizer)."""

    uid: str
    created_at: float
    generation: int
    deleted_at: float | None = None


@dataclass(frozen=True)
class StorageClass:
    """A StorageClass as the provisioner and pulumi-kubernetes read it. The rehearsal's default one is of the kind
    managed clusters default to (GKE's standard-rwo, EKS's gp2, AKS's managed-csi): a block volume with an ext4
    filesystem, so the kubelet manages its ownership for fsGroup; bound when its first consumer is scheduled;
    reclaim policy Delete; expandable."""

    name: str = "standard"
    binding_mode: Literal["Immediate", "WaitForFirstConsumer"] = "WaitForFirstConsumer"
    allow_expansion: bool = True


@dataclass
class Claim:
    """The API server's and the provisioner's record of one PersistentVolumeClaim: its class (the default one
    when it names none), its volume once provisioned (Bound), and whether it is being deleted (Terminating)."""

    uid: str
    namespace: str
    name: str
    storage_class: str | None
    volume: Path | None = None
    deleting: bool = False
    # The pods whose kubelet mounted its volume: a ReadWriteOnce volume attaches to one node at a time.
    users: set[str] = field(default_factory=set)

    @property
    def phase(self) -> str:
        return "Bound" if self.volume is not None else "Pending"


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str | Callable[[], str], interval: float = 0.5
) -> T:
    """Poll until `condition()` is truthy; every wait in the rehearsal is bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what if isinstance(what, str) else what()}: not within {timeout:.0f}s")
        time.sleep(interval)


def rolling_bounds(rolling_update: Mapping[str, int | str], replicas: int) -> tuple[int, int]:
    """maxSurge and maxUnavailable (25% each unless set; counts or percentages of `replicas`) as pod counts: the
    surge rounded up, the unavailable rounded down, and 1 unavailable if both come to 0 (ResolveFenceposts)."""

    def scaled(value: int | str, round_up: bool) -> int:
        if isinstance(value, int):
            return value
        exact = Decimal(value.removesuffix("%")) * replicas / 100
        return math.ceil(exact) if round_up else math.floor(exact)

    surge = scaled(rolling_update.get("maxSurge", "25%"), round_up=True)
    unavailable = scaled(rolling_update.get("maxUnavailable", "25%"), round_up=False)
    return surge, 1 if surge == 0 and unavailable == 0 else unavailable


def _key(manifest: Manifest) -> Key:
    metadata = manifest["metadata"]
    return manifest["kind"], metadata.get("namespace", ""), metadata["name"]


def _pluck(manifest: Manifest, path: tuple[str, ...]) -> Any:
    value: Any = manifest
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _owned_by(manager: str, manifest: Manifest) -> LiveObject:
    """An object's fields as one manager wrote them all."""
    return LiveObject({path: Owned(value, manager) for path, value in leaves(manifest).items()})


def _check_role(role: Manifest) -> None:
    """ValidatePolicyRule for a namespaced Role: verbs, API groups and resources in every rule; non-resource URLs
    only in ClusterRoles."""
    for index, rule in enumerate(role.get("rules") or []):
        where = f'Role.{RBAC_GROUP} "{role["metadata"]["name"]}" is invalid: rules[{index}]'
        if not rule.get("verbs"):
            raise InvalidError(f"{where}.verbs: Required value: verbs must contain at least one value")
        if rule.get("nonResourceURLs"):
            raise InvalidError(f"{where}.nonResourceURLs: Invalid value: {rule['nonResourceURLs']}: namespaced rules "
                               "cannot apply to non-resource URLs")  # fmt: skip
        for field_name, what in (("apiGroups", "api group"), ("resources", "resource")):
            if not rule.get(field_name):
                raise InvalidError(f"{where}.{field_name}: Required value: resource rules must supply at least one "
                                   f"{what}")  # fmt: skip


def _check_role_binding(binding: Manifest) -> None:
    """ValidateRoleBinding (its roleRef is immutable, see _IMMUTABLE), and what is not modelled: a binding to a
    ClusterRole."""
    ref, name = binding.get("roleRef") or {}, binding["metadata"]["name"]
    where = f'RoleBinding.{RBAC_GROUP} "{name}" is invalid'
    if ref.get("apiGroup") != RBAC_GROUP or ref.get("kind") not in {"Role", "ClusterRole"} or not ref.get("name"):
        raise InvalidError(f"{where}: roleRef: Invalid value: {ref}: a Role or ClusterRole of {RBAC_GROUP} by name")
    if ref["kind"] == "ClusterRole":
        raise UnsupportedError(f"RoleBinding {name}: a binding to a ClusterRole (ClusterRoles are not modelled)")
    for index, subject in enumerate(binding.get("subjects") or []):
        if subject.get("kind") not in {"ServiceAccount", "User", "Group"} or not subject.get("name"):
            raise InvalidError(f"{where}: subjects[{index}]: Invalid value: {subject}: a ServiceAccount, User or "
                               "Group by name")  # fmt: skip


def _check_claim(claim: Manifest) -> None:
    """What the API server requires of a claim (InvalidError), and what the provisioner here cannot provide
    (UnsupportedError): only a dynamically provisioned ReadWriteOnce filesystem."""
    spec, name = claim.get("spec", {}), claim["metadata"]["name"]
    if not spec.get("accessModes"):
        raise InvalidError(f"PersistentVolumeClaim {name}: spec.accessModes: Required value")
    if "storage" not in spec.get("resources", {}).get("requests", {}):
        raise InvalidError(f"PersistentVolumeClaim {name}: spec.resources[storage]: Required value")
    used = [field for field in _UNSUPPORTED_CLAIM_FIELDS if field in spec]
    used += [f"accessModes {spec['accessModes']}"] if spec["accessModes"] != ["ReadWriteOnce"] else []
    used += ["volumeMode Block"] if spec.get("volumeMode", "Filesystem") != "Filesystem" else []
    used += ['storageClassName "" (static binding)'] if spec.get("storageClassName") == "" else []
    if used:
        raise UnsupportedError(f"PersistentVolumeClaim {name}: not emulated: {', '.join(used)}")


def _template_hash(template: Manifest) -> str:
    """The pod-template-hash: a Deployment's ReplicaSet for a template is found by it."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _random_suffix() -> str:
    return secrets.token_hex(3)[:5]


@dataclass
class ReplicaSet:
    """The pods of one template of a Deployment, `replicas` of them; named, and its pods labelled, after the
    template's hash."""

    name: str
    namespace: str
    uid: str
    deployment: str  # the owning Deployment's uid
    pod_hash: str
    template: Manifest
    replicas: int
    created_at: float = field(default_factory=time.monotonic)
    # Deleted in the foreground with its Deployment: its controller stops, and it goes once its pods have.
    deleting: bool = False


@dataclass
class _JobRun:
    """The Job controller's record of one Job: when it started, every pod it ran (gone ones included), and its
    final condition once it has one: when the controller saw it, and why a Job failed."""

    started_at: float = field(default_factory=time.monotonic)
    attempts: list[Pod] = field(default_factory=list)
    status: str = "Running"
    ended_at: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class JobProgress:
    """A Job's status as its controller writes it: when it started and when it ended (monotonic), Running,
    Succeeded or Failed (and why: BackoffLimitExceeded or DeadlineExceeded), and its pods by state."""

    started_at: float
    ended_at: float | None
    status: str
    reason: str
    active: int
    ready: int
    terminating: int
    succeeded: int
    failed: int


@dataclass
class _Step:
    """One resource's operation in an `up` (same, create, update, or replace: with `delete_first`, `previous`
    deleted and its pods gone before the new one is created; else the new one created and `previous` deleted at
    the end of the `up`), then its await."""

    urn: str
    inputs: Manifest
    operation: str
    previous: Manifest | None = None
    ignore_changes: tuple[str, ...] = ()
    delete_first: bool = False
    leaving: list[Pod] | None = None
    applied: bool = False


def _outcome(pod: Pod) -> str | None:
    """A Job attempt as the Job controller counts it: Succeeded, Failed (a pod deleted before it had succeeded
    counts as failed at once), or None while it runs."""
    if pod.phase_at_deletion not in {None, "Succeeded"}:
        return "Failed"
    return pod.phase if pod.finished else None


def _deletion_order(a: Pod, b: Pod, now: float) -> int:
    """A ReplicaSet's order of preference for deletion (ActivePodsWithRanks.Less, on one node): unscheduled before
    scheduled, Pending before Running, not ready before ready, lower pod-deletion-cost first, then, of two ready
    pods, the one ready for less time, else the one with more restarts, else the newer one. Times compare on a
    log2 scale with ties broken by uid, so pods of about the same age go in an arbitrary order, as in Kubernetes."""

    def rank(pod: Pod) -> tuple[bool, int, bool, int]:
        try:
            cost = int(pod.annotations.get(POD_DELETION_COST, "0"))
        except ValueError:
            cost = 0
        return pod.node is not None, _PHASE_ORDER.get(pod.phase, 2), pod.ready, cost

    def by_age(time_a: float, time_b: float) -> int:
        log_a, log_b = (int(math.log2((now - t) * 1e9)) if now > t else -1 for t in (time_a, time_b))
        if log_a != log_b:
            return -1 if log_a < log_b else 1
        return -1 if a.uid < b.uid else 1

    if rank(a) != rank(b):
        return -1 if rank(a) < rank(b) else 1
    if a.ready and b.ready and a.ready_since != b.ready_since:
        return by_age(a.ready_since or now, b.ready_since or now)
    restarts_a, restarts_b = (max(s.restarts for s in pod.statuses.values()) for pod in (a, b))
    if restarts_a != restarts_b:
        return -1 if restarts_a > restarts_b else 1
    return by_age(a.created_at, b.created_at) if a.created_at != b.created_at else 0


class Cluster:
    """One node's worth of Kubernetes: objects, controllers, scheduler, kubelets, pod network and cluster DNS."""

    def __init__(
        self,
        directory: Path,
        prefix: str = f"rh{os.getpid() % 100000}",
        node: Node | None = None,
        storage_classes: Iterable[StorageClass] = (StorageClass(),),
        default_storage_class: str | None = "standard",
        niceness: Callable[[str], int] = lambda pod: 0,
        cores: Callable[[str], str | None] = lambda pod: None,
    ) -> None:
        """`directory` holds the pods' files and the claims' volumes (outside /tmp, which pods mount over); `prefix`
        names this cluster's network namespaces; `node` is its one node (by default roomy enough for any
        rehearsal, without GPUs); `storage_classes` are its StorageClasses, of which `default_storage_class` (if
        any) is the default; `niceness(pod name)` the nice value of a pod's processes (below 0:
        ahead of the other clusters on this machine, as if its node's CPUs were its own); `cores(pod name)` the CPUs
        a pod's processes may run on (taskset's list; None: any), to give pods CPUs of their own as pods on
        different nodes have."""
        self.niceness, self.cores = niceness, cores
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        # The node's own files (pods' files and volumes, tokens among them): root's alone, as the kubelet's
        # directory is, and hidden from every container (kubelet.py).
        self.directory.chmod(0o700)
        self._node = node or Node()
        self.clock = Clock()
        self.storage_classes = {storage_class.name: storage_class for storage_class in storage_classes}
        self.default_storage_class = default_storage_class
        self.claims: dict[tuple[str, str], Claim] = {}  # by (namespace, name), Terminating ones included
        self.objects: dict[Key, Manifest] = {}
        self._meta: dict[Key, ObjectMeta] = {}
        # Per object, its fields and their managers, as server-side apply keeps them (tests/ssa.py).
        self._live: dict[Key, LiveObject] = {}
        self._observed: dict[Key, int] = {}  # per Deployment, the generation its controller last acted on
        self._namespaces: set[str] = set()
        self._failed_creates: dict[str, str] = {}  # per controller uid, why the API server refused its last pod
        self.pods: dict[str, Pod] = {}  # every pod the API server knows, Terminating ones included
        self._lost: set[str] = set()  # the addresses of lost pods still in the API, whose traffic is dropped
        self.replica_sets: dict[str, ReplicaSet] = {}  # by uid
        self._jobs: dict[str, _JobRun] = {}  # by the Job's uid
        self._state: dict[str, Manifest] = {}  # per URN, the inputs `up` last applied
        self._retained: set[str] = set()  # URNs last applied with retainOnDelete
        # The old copies of create-before-delete replacements, each with whether it was retained: deleted at the end
        # of the next `up` that succeeds (this one's, or a later one's if it fails), as the engine's pending deletes.
        self._replaced: list[tuple[Manifest, bool]] = []
        self._init_errors: set[str] = set()  # URNs whose await failed or did not finish
        self._reapers: list[threading.Thread] = []
        self._errors: list[str] = []  # controller failures, which `up` reports
        # ClusterIPs by Service, handed out from the service range as the API server's allocator does, and the
        # kube-proxy rules wanted (by the controllers' pass) and applied (after it).
        self._cluster_ips: dict[Key, str] = {}
        self._free_cluster_ips = collections.deque(str(a) for a in PodNetwork.SERVICE_SUBNET.hosts())
        self._proxy_wanted: dict[str, dict[int, list[str]]] = {}
        self._proxy_applied: dict[str, dict[int, list[str]]] | None = None
        self._proxy_error = ""
        # The NetworkPolicies' rules: the addresses of pods whose sandbox is wired (before the kubelet records the
        # pod's IP), and the rules last applied; one writer at a time, so the last rules written are the newest.
        self._sandboxes: dict[str, str] = {}
        self._policies_applied: dict[str, list[network_policy.Admitted]] | None = None
        self._policy_lock = threading.Lock()
        self._policy_error = ""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.network = PodNetwork(prefix)
        try:
            self.dns = ClusterDNS(self.network.gateway, self.resolve)
            self._cluster_ips[KUBERNETES_SERVICE] = self._free_cluster_ips.popleft()
            self.api = APIServer(self, self.network.gateway, self._cluster_ips[KUBERNETES_SERVICE])
        except BaseException:
            self.network.close()
            raise
        ports = [{"name": "https", "port": PORT, "protocol": "TCP", "targetPort": PORT}]
        self._create(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default",
             "labels": {"component": "apiserver", "provider": "kubernetes"}},
             "spec": {"type": "ClusterIP", "clusterIP": self._cluster_ips[KUBERNETES_SERVICE], "ports": ports}}
        )  # fmt: skip
        # What every container is told of the API server (the kubelet always includes the `kubernetes` Service).
        self._service_env = service_env("kubernetes", self._cluster_ips[KUBERNETES_SERVICE], ports)
        self._sync_proxy()  # the API server is reachable at its ClusterIP from the start
        self._apply_proxy()
        self._controller = threading.Thread(target=self._reconcile_forever, name="controllers", daemon=True)
        self._controller.start()

    # ----- the node -----
    @property
    def node(self) -> Node:
        return self._node

    @node.setter
    def node(self, node: Node) -> None:
        """Change the node's allocatable resources, labels or taints (as when a bigger node joins); Pending pods that
        now fit are bound in the scheduler's next pass. Pods already bound stay."""
        with self._lock:
            self._node = node

    # ----- objects -----
    def get(self, kind: str, namespace: str, name: str) -> Manifest:
        with self._lock:
            return self.objects[(kind, namespace, name)]

    def apply(self, manifest: Manifest) -> None:
        """`kubectl apply` (client-side): create the object or change it in place, as one field manager that then
        owns every field it set; the controllers take it from there."""
        self._write(manifest, _owned_by(KUBECTL_APPLY, manifest))

    def pulumi_create(self, manifest: Manifest, *, upsert: bool = False) -> None:
        """pulumi-kubernetes' create (tests/ssa.py, pulumi_create): AlreadyExistsError for an object that exists,
        unless the provider upserts it."""
        with self._lock:
            key = _key(manifest)
            live = pulumi_create(self._live.get(key) if key in self.objects else None, manifest, upsert=upsert)
            self._write(live.manifest(), live)

    def server_side_apply(self, manifest: Manifest, ignore_changes: tuple[str, ...] = ()) -> None:
        """pulumi-kubernetes' apply of its inputs (tests/ssa.py, LiveObject.pulumi_apply): server-side apply, forced
        when the manifest carries pulumi.com/patchForce, of every field but the `ignore_changes` paths the object
        already has, which keep their live values (say a Deployment's replicas, written through its scale
        subresource); a field another manager owns and the apply sets to another value, unforced, is a conflict
        (ConflictError), as the API server refuses it."""
        with self._lock:
            live = copy.deepcopy(self._live.get(_key(manifest), LiveObject()))
            live.pulumi_apply(manifest, ignore_changes)
            self._write(live.manifest(), live)

    def write_from_api(self, manifest: Manifest, manager: str, *, create: bool) -> None:
        """A create (AlreadyExistsError if the object exists) or an update (KeyError if it does not) that a client
        in a pod sends through the API server, by its field manager, checked as any write is."""
        with self._lock:
            exists = _key(manifest) in self.objects
            if create and exists:
                raise AlreadyExistsError(f'{manifest["kind"]} "{manifest["metadata"]["name"]}" already exists')
            if not create and not exists:
                raise KeyError(manifest["metadata"]["name"])
            self._write(manifest, _owned_by(manager, manifest))

    def _write(self, manifest: Manifest, live: LiveObject) -> None:
        """Store an object once the API server's checks (and this rehearsal's limits) allow it; `live` is its fields
        and their managers after the write."""
        kind = manifest["kind"]
        if kind not in _KINDS:
            raise UnsupportedError(f"kind {kind}")
        if kind == "Role":
            _check_role(manifest)
        if kind == "RoleBinding":
            _check_role_binding(manifest)
        if kind == "Service":
            spec = manifest["spec"]
            if spec.get("type", "ClusterIP") != "ClusterIP" or "clusterIP" in spec:
                raise UnsupportedError("only Services of type ClusterIP with an allocated ClusterIP")
            if spec.get("sessionAffinity", "None") != "None":
                raise UnsupportedError("session affinity (kube-proxy's rules here pick an endpoint per connection)")
            for port in spec["ports"]:
                if port.get("targetPort", port["port"]) != port["port"] or port.get("protocol", "TCP") != "TCP":
                    raise UnsupportedError("a Service port other than TCP to the same port (kube-proxy's rules here)")
        if kind in {"Deployment", "Job"}:
            check_supported(manifest["spec"]["template"]["spec"])
        if kind == "PersistentVolumeClaim":
            _check_claim(manifest)
        if kind == "NetworkPolicy":
            network_policy.check_supported(manifest)
        if kind in CUSTOM_KINDS:
            try:
                validate_custom_resource(manifest)
            except ValueError as invalid:
                raise InvalidError(str(invalid)) from invalid
        key = _key(manifest)
        with self._lock:
            previous = self.objects.get(key)
            if previous is not None:
                changed = [".".join(p) for p in _IMMUTABLE.get(kind, ()) if _pluck(previous, p) != _pluck(manifest, p)]
                if changed:
                    raise InvalidError(f"{kind} {key[2]}: {', '.join(changed)}: field is immutable")
                if kind == "PersistentVolumeClaim":
                    self._check_claim_update(self.claims[key[1:]], previous, manifest)
            self._store(manifest, live)

    def _store(self, manifest: Manifest, live: LiveObject) -> None:
        """Keep an object (the API server's side of a write): a new one gets its uid, creation time and generation 1
        (and, by kind, its Job run, ClusterIP or claim, and its namespace's defaults); a change to an existing one's
        spec (or a Deployment's annotations, which its ReplicaSets copy) bumps its generation."""
        key, kind = _key(manifest), manifest["kind"]
        previous = self.objects.get(key)
        if previous is None:
            self._meta[key] = meta = ObjectMeta(secrets.token_hex(8), time.monotonic(), 1)
            if kind == "Job":
                self._jobs[meta.uid] = _JobRun()
            if kind == "Service" and key not in self._cluster_ips:
                self._cluster_ips[key] = self._free_cluster_ips.popleft()
            if kind == "PersistentVolumeClaim":
                storage_class = manifest["spec"].get("storageClassName", self.default_storage_class)
                self.claims[key[1:]] = Claim(meta.uid, key[1], key[2], storage_class)
        elif previous.get("spec") != manifest.get("spec") or (
            kind == "Deployment" and previous["metadata"].get("annotations") != manifest["metadata"].get("annotations")
        ):
            self._meta[key] = replace(self._meta[key], generation=self._meta[key].generation + 1)
        self.objects[key], self._live[key] = manifest, live
        new_namespaces = {key[1], key[2] if kind == "Namespace" else ""} - {""} - self._namespaces
        if new_namespaces:
            self._namespaces |= new_namespaces
            self._sync_namespaces()

    def _create(self, manifest: Manifest) -> None:
        """An object the cluster makes itself (the `kubernetes` Service, a namespace's defaults), stored without the
        checks `apply` makes of what it is given."""
        with self._lock:
            self._store(manifest, _owned_by(KUBECTL_APPLY, manifest))

    def _sync_namespaces(self) -> None:
        """What controllers keep in every namespace: the ServiceAccount `default` (the ServiceAccount controller)
        and the ConfigMap kube-root-ca.crt with the cluster CA's certificate (the root-CA publisher), each put back
        if deleted or changed."""
        for namespace in sorted(self._namespaces):
            if ("ServiceAccount", namespace, "default") not in self.objects:
                self._create({"apiVersion": "v1", "kind": "ServiceAccount",
                              "metadata": {"name": "default", "namespace": namespace}})  # fmt: skip
            data = {"ca.crt": self.api.ca_pem}
            if self.objects.get(("ConfigMap", namespace, ROOT_CA), {}).get("data") != data:
                self._create({"apiVersion": "v1", "kind": "ConfigMap", "data": data, "metadata": {
                    "name": ROOT_CA, "namespace": namespace,
                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the "
                                    "kube-apiserver when using internal endpoints such as the internal service IP or "
                                    "kubernetes.default.svc. No other usage is guaranteed across distributions of "
                                    "Kubernetes clusters."}}})  # fmt: skip

    def _check_claim_update(self, claim: Claim, previous: Manifest, manifest: Manifest) -> None:
        """ValidatePersistentVolumeClaimUpdate and the PersistentVolumeClaimResize admission plugin: the spec is
        immutable (its class as the server defaulted it) except resources.requests.storage of a bound claim, which
        may only grow, and only where the claim's class allows expansion."""

        def spec(claim_manifest: Manifest) -> Manifest:
            """The spec as the server compares it: its class as defaulted; a bound claim's storage request as before."""
            resources = claim_manifest["spec"]["resources"]
            requests = dict(resources["requests"])
            if claim.phase == "Bound":
                requests["storage"] = previous["spec"]["resources"]["requests"]["storage"]
            return {**claim_manifest["spec"], "storageClassName": claim.storage_class,
                    "resources": {**resources, "requests": requests}}  # fmt: skip

        old, new = (quantity(m["spec"]["resources"]["requests"]["storage"]) for m in (previous, manifest))
        given_class = manifest["spec"].get("storageClassName", claim.storage_class)
        if given_class != claim.storage_class or spec(previous) != spec(manifest):
            raise InvalidError(
                f"PersistentVolumeClaim {claim.name}: spec: Forbidden: spec is immutable after creation except "
                "resources.requests and volumeAttributesClassName for bound claims"
            )
        if new < old:
            raise InvalidError(
                f"PersistentVolumeClaim {claim.name}: spec.resources.requests.storage: Forbidden: field can not be "
                "less than previous value"
            )
        storage_class = self.storage_classes.get(claim.storage_class or "")
        if new > old and not (storage_class and storage_class.allow_expansion):
            raise InvalidError(
                f"PersistentVolumeClaim {claim.name}: only dynamically provisioned pvc can be resized and the "
                "storageclass that provisions the pvc must support resize"
            )

    def delete(self, manifest: Manifest, propagation: Propagation = "Foreground") -> list[Pod]:
        """Delete an object as the API server and the garbage collector do (see `_delete_object` and
        `_collect_garbage`). Foreground, pulumi-kubernetes' policy: the object stays, deleted but not gone, while
        its dependents are deleted, recursively (a Deployment's ReplicaSets and their pods, a Job's pods, and every
        object whose ownerReferences name it, of any kind), and leaves once none that blocks it is left, at once if
        none does; returns the pods its leaving waits for (its dependents' included), for the caller to wait until
        they are gone, as pulumi-kubernetes waits until the object is. Background: it leaves at once, and the
        garbage collector deletes its dependents in its next pass; returns none."""
        key = _key(manifest)
        with self._lock:
            meta = self._meta.get(key)
            if meta is None or key not in self.objects:
                return []
            self._delete_object(key, propagation)
            if propagation == "Background":
                return []
            self._collect_garbage()
            return self._awaited(meta.uid, set())

    def _delete_object(self, key: Key, propagation: Propagation) -> None:
        """The API server's side of a delete. A claim is Terminating until the pvc-protection finalizer lets it go
        (`_sync_claims`), whatever the policy; any other object leaves at once in the background, or in the
        foreground is marked deleted (its deletionTimestamp, the foregroundDeletion finalizer, its generation
        bumped, as markAsDeleting does) and its controller stops, for the garbage collector to finish."""
        if key[0] == "PersistentVolumeClaim":
            self.claims[key[1:]].deleting = True
        elif propagation == "Background":
            self._remove(key)
        elif self._meta[key].deleted_at is None:
            meta = self._meta[key]
            self._meta[key] = replace(meta, generation=meta.generation + 1, deleted_at=time.monotonic())

    def _remove(self, key: Key) -> None:
        """The object leaves the API, and with it its ClusterIP and its controller's records of it."""
        self.objects.pop(key, None)
        self._live.pop(key, None)
        self._observed.pop(key, None)
        if key in self._cluster_ips:
            self._free_cluster_ips.append(self._cluster_ips.pop(key))
        meta = self._meta.pop(key, None)
        if meta is not None:
            self._jobs.pop(meta.uid, None)

    def _staying(self) -> set[str]:
        """The uids of the owners a dependent may keep: every object, ReplicaSet and pod in the API but those a
        foreground deletion marked (a graceful deletion is not one: a Terminating pod still owns)."""
        return (
            {meta.uid for meta in self._meta.values() if meta.deleted_at is None}
            | {rs.uid for rs in self.replica_sets.values() if not rs.deleting}
            | {pod.uid for pod in self.pods.values()}
        )

    def _blocking(self, uid: str, staying: set[str]) -> tuple[list[Pod], list[str]]:
        """What a foreground deletion of `uid` waits for: its pods (a Job's, a ReplicaSet's), and the uids of its
        ReplicaSets and of the objects whose reference to it says blockOwnerDeletion, but for those another owner
        in `staying` keeps (the collector drops their reference to the deleted one)."""
        pods = [pod for pod in self.pods.values() if pod.owner == uid]
        owned = [rs.uid for rs in self.replica_sets.values() if rs.deployment == uid]
        for key, manifest in self.objects.items():
            references = manifest["metadata"].get("ownerReferences") or []
            others = {reference["uid"] for reference in references} - {uid}
            if any(r["uid"] == uid and r.get("blockOwnerDeletion") for r in references) and not others & staying:
                owned.append(self._meta[key].uid)
        return pods, owned

    def _blocked(self, uid: str, staying: set[str]) -> bool:
        """A foreground deletion of `uid` still waits for something (`_blocking`)."""
        pods, owned = self._blocking(uid, staying)
        return bool(pods or owned)

    def _awaited(self, uid: str, seen: set[str]) -> list[Pod]:
        """The pods whose going the foreground deletion of `uid` waits for, through every dependent that blocks it."""
        seen.add(uid)
        pods, owned = self._blocking(uid, self._staying())
        return pods + [pod for dependent in owned if dependent not in seen for pod in self._awaited(dependent, seen)]

    def _gone(self, pods: Iterable[Pod], objects: Iterable[Manifest] = ()) -> bool:
        """The pods have left the API, and so have the deleted `objects` (a claim leaves when its finalizer is
        removed; other objects at once)."""
        with self._lock:
            return not any(self.pods.get(pod.name) is pod for pod in pods) and not any(
                _key(manifest) in self.objects for manifest in objects
            )

    # ----- claims and their volumes -----
    def _claim_volume(self, namespace: str, name: str, pod: str) -> Path:
        """What the kubelet mounts for `pod`'s claim: its volume's directory; KeyError, saying why, until it can.
        A ReadWriteOnce volume (every claim here is one) that another pod still in the API mounts is refused as the
        attach-detach controller refuses it when that pod runs on another node: the rehearsal's one node stands for
        a cluster of many, where the scheduler may well put the second pod elsewhere, and on one node two programs
        would share the volume's files."""
        with self._lock:
            claim = self.claims.get((namespace, name))
            if claim is None:
                raise KeyError(f'persistentvolumeclaim "{name}" not found')
            if claim.deleting:
                raise KeyError(f"error processing PVC {namespace}/{name}: PVC is being deleted")
            if claim.volume is None:
                raise KeyError(f'persistentvolumeclaim "{name}" is not bound')
            claim.users = {u for u in claim.users if u in self.pods and not self.pods[u].finished}
            holders = sorted(claim.users - {pod})
            if holders:
                raise KeyError(
                    f'Multi-Attach error for volume "pvc-{claim.uid}" Volume is already used by pod(s) '
                    f"{', '.join(holders)}"
                )
            claim.users.add(pod)
            return claim.volume

    def _claims_of(self, pod: Pod) -> list[tuple[str, Claim | None]]:
        """The claims a pod mounts, by name; None for one that does not exist."""
        names = [v["persistentVolumeClaim"]["claimName"] for v in pod.spec.get("volumes", [])
                 if "persistentVolumeClaim" in v]  # fmt: skip
        return [(name, self.claims.get((pod.namespace, name))) for name in names]

    def _volume_binding(self, pod: Pod) -> str | None:
        """The scheduler's VolumeBinding plugin: why the pod cannot be bound yet for its claims, or None."""
        for name, claim in self._claims_of(pod):
            if claim is None:
                return f'persistentvolumeclaim "{name}" not found'
            if claim.deleting:
                return f'persistentvolumeclaim "{name}" is being deleted'
            storage_class = self.storage_classes.get(claim.storage_class or "")
            if claim.volume is None and storage_class is None:
                return f'storageclass.storage.k8s.io "{claim.storage_class}" not found'
            if claim.volume is None and storage_class is not None and storage_class.binding_mode == "Immediate":
                return "pod has unbound immediate PersistentVolumeClaims"
        return None

    def _provision(self, claim: Claim) -> None:
        """The provisioner: a new, empty volume (an ext4 filesystem's root: root's, 755, with lost+found), and the
        claim bound to it."""
        volume = self.directory / "volumes" / f"pvc-{claim.uid}"
        (volume / "lost+found").mkdir(parents=True)
        (volume / "lost+found").chmod(0o700)
        volume.chmod(0o755)
        claim.volume = volume

    def _in_use(self, claim: Claim) -> bool:
        """The pvc-protection controller's test: a pod still in the API and bound to the node mounts the claim
        (Terminating and finished ones included; a pod force-deleted has left the API)."""
        return any(
            pod.node is not None and any(mounted is claim for _, mounted in self._claims_of(pod))
            for pod in self.pods.values()
        )

    def _sync_claims(self) -> None:
        """Provision claims of `Immediate` classes; let deleted claims that no pod uses go, and their volumes with
        them (reclaim policy Delete)."""
        for key, claim in list(self.claims.items()):
            storage_class = self.storage_classes.get(claim.storage_class or "")
            if claim.deleting and not self._in_use(claim):
                del self.claims[key]
                self.objects.pop(("PersistentVolumeClaim", *key), None)
                self._live.pop(("PersistentVolumeClaim", *key), None)
                self._meta.pop(("PersistentVolumeClaim", *key), None)
                if claim.volume is not None:
                    shutil.rmtree(claim.volume)
            elif claim.volume is None and storage_class is not None and storage_class.binding_mode == "Immediate":
                self._provision(claim)

    def claim_ready(self, claim_manifest: Manifest, *, created: bool) -> bool:
        """pulumi-kubernetes' await for a PersistentVolumeClaim (provider/pkg/await/awaiters.go,
        untilCoreV1PersistentVolumeClaimReady): on its creation, Pending is ready if the claim's StorageClass binds
        on first consumer (a pod that mounts it may come later in the same `up`), otherwise Bound is; on an update,
        Bound is (PR #4181). A class it cannot find (none named, or none such) counts as binding at once."""
        with self._lock:
            claim = self.claims.get(_key(claim_manifest)[1:])
            if claim is None:
                return False
            storage_class = self.storage_classes.get(claim.storage_class or "")
            first_consumer = storage_class is not None and storage_class.binding_mode == "WaitForFirstConsumer"
            return claim.phase == ("Pending" if created and first_consumer else "Bound")

    # ----- pods -----
    def pods_of(self, owner: Key) -> list[Pod]:
        """The pods of a Job, or of a Deployment's ReplicaSets, oldest first, Terminating ones included."""
        with self._lock:
            owners = self._owners(owner)
            return [pod for pod in self.pods.values() if pod.owner in owners]

    def _owners(self, key: Key) -> set[str]:
        """The uids of a Job or a Deployment and of its ReplicaSets: what its pods name as their owner."""
        meta = self._meta.get(key)
        if meta is None:
            return set()
        return {meta.uid} | {rs.uid for rs in self.replica_sets.values() if rs.deployment == meta.uid}

    def pods_in(self, namespace: str | None = None) -> list[Pod]:
        """Every pod the API server knows in a namespace (or in all of them, as a watch of every namespace sees
        them), Terminating and finished ones included."""
        with self._lock:
            return [pod for pod in self.pods.values() if namespace is None or pod.namespace == namespace]

    def pod(self, namespace: str, name: str) -> Pod:
        """A pod the API server knows (KeyError once it has left)."""
        with self._lock:
            pod = self.pods[name]
            if pod.namespace != namespace:
                raise KeyError(name)
            return pod

    def annotate_pod(self, pod: Pod, annotations: Mapping[str, str]) -> None:
        """A pod's annotations as they are now (the ReplicaSet controller reads its deletion cost from them)."""
        with self._lock:
            pod.annotations = dict(annotations)

    def owner_reference(self, pod: Pod) -> Manifest | None:
        """The pod's ownerReference: its ReplicaSet or Job (None once that is gone)."""
        with self._lock:
            replica_set = self.replica_sets.get(pod.owner)
            if replica_set is not None:
                kind, api_version, name = "ReplicaSet", "apps/v1", replica_set.name
            else:
                job = next((key for key, meta in self._meta.items() if key[0] == "Job" and meta.uid == pod.owner), None)
                if job is None:
                    return None
                kind, api_version, name = "Job", "batch/v1", job[2]
        return {"apiVersion": api_version, "kind": kind, "name": name, "uid": pod.owner, "controller": True,
                "blockOwnerDeletion": True}  # fmt: skip

    def meta(self, kind: str, namespace: str, name: str) -> ObjectMeta:
        """What the API server keeps of an object besides its manifest (KeyError if there is none)."""
        with self._lock:
            return self._meta[(kind, namespace, name)]

    def objects_of(self, kind: str, namespace: str) -> list[Manifest]:
        with self._lock:
            return [manifest for key, manifest in self.objects.items() if key[:2] == (kind, namespace)]

    def deployment_status(self, namespace: str, name: str) -> Manifest:
        """A Deployment's status as its controller writes it: its active pods (replicas), those of the current
        template (updatedReplicas), the ready and the available ones, how many it lacks (unavailableReplicas)
        and the generation it last acted on; a count of 0 is left out, as the API's omitempty leaves it out."""
        key = ("Deployment", namespace, name)
        with self._lock:
            spec, owners = self.objects[key]["spec"], self._owners(key)
            pod_hash = _template_hash(spec["template"])
            current = {rs.uid for rs in self.replica_sets.values() if rs.uid in owners and rs.pod_hash == pod_hash}
            active = [pod for pod in self.pods.values() if pod.owner in owners and pod.active]
            available = sum(self._available(owner, spec.get("minReadySeconds", 0)) for owner in owners)
            status = {
                "observedGeneration": self._observed.get(key, 0),
                "replicas": len(active),
                "updatedReplicas": sum(pod.owner in current for pod in active),
                "readyReplicas": sum(pod.ready for pod in active),
                "availableReplicas": available,
                "unavailableReplicas": max(spec.get("replicas", 1) - available, 0),
            }
        return {field: count for field, count in status.items() if count}

    def live_replicas(self, namespace: str, name: str) -> int:
        """A Deployment's spec.replicas as it is now (whoever wrote it last: `up`, `apply` or its scale)."""
        with self._lock:
            replicas: int = self.objects[("Deployment", namespace, name)]["spec"].get("replicas", 1)
            return replicas

    def scale(self, namespace: str, name: str, replicas: int, manager: str = "kubectl") -> None:
        """`kubectl scale` (and a write to the scale subresource): spec.replicas written through the subresource by
        `manager`, which owns it from then on; the controllers act on it. KeyError if there is no such Deployment."""
        key = ("Deployment", namespace, name)
        with self._lock:
            live = copy.deepcopy(self._live[key])
            live.write(manager, {"spec.replicas": replicas}, subresource="scale")
            self._store(live.manifest(), live)

    def _owned(self, owner: str) -> list[Pod]:
        return [pod for pod in self.pods.values() if pod.owner == owner]

    def _endpoints(self, service: Manifest, *, keep_terminating: bool) -> list[Pod]:
        """The pods behind a Service: those it selects that have an IP and have not finished, the ready ones only
        unless it publishes not-ready addresses; then Terminating ones too where `keep_terminating`, as
        EndpointSlices (and so DNS) keep them while the Endpoints that Pulumi's await reads drop them."""
        spec, namespace = service["spec"], service["metadata"].get("namespace", "")
        if not spec.get("selector"):
            return []
        everyone = bool(spec.get("publishNotReadyAddresses"))
        with self._lock:
            pods = [
                p
                for p in self.pods.values()
                if p.namespace == namespace and spec["selector"].items() <= p.labels.items()
            ]
        return [
            p
            for p in pods
            if p.ip and not p.finished and (p.ready or (everyone and (keep_terminating or not p.terminating)))
        ]

    def resolve(self, name: str) -> list[str]:
        """Cluster DNS: `<service>.<namespace>.svc.<domain>` is the Service's ClusterIP, whatever its endpoints. It
        answers from the ClusterIPs as they are (one dict read), never waiting for the controllers' lock, as
        CoreDNS answers from its own cache of Services: a query that waited out a controller's pass on a loaded
        machine would time out, and the resolver would go on to the next search domain and answer NXDOMAIN."""
        parts = name.split(".")
        if len(parts) < 4 or ".".join(parts[2:]) != f"svc.{CLUSTER_DOMAIN}":
            return []
        address = self._cluster_ips.get(("Service", parts[1], parts[0]))
        return [address] if address else []

    def cluster_ip(self, namespace: str, name: str) -> str | None:
        """The ClusterIP the API server allocated to a Service (None for none)."""
        return self._cluster_ips.get(("Service", namespace, name))

    def service_endpoints(self, namespace: str, name: str) -> list[str]:
        """Where kube-proxy sends a new connection to the Service (see _proxy_addresses)."""
        with self._lock:
            service = self.objects.get(("Service", namespace, name))
            return self._proxy_addresses(service) if service else []

    def _proxy_addresses(self, service: Manifest) -> list[str]:
        """kube-proxy's endpoints of a Service: its pods' (see _proxied), or, for a Service without a selector, the
        ready addresses of the EndpointSlices labelled with its name in its namespace, whoever wrote them (an
        endpoint's `ready` is true unless it says otherwise)."""
        if service["spec"].get("selector"):
            return sorted(pod.ip for pod in self._proxied(service))
        namespace, name = service["metadata"].get("namespace", ""), service["metadata"]["name"]
        slices = [
            manifest
            for key, manifest in self.objects.items()
            if key[:2] == ("EndpointSlice", namespace)
            and manifest["metadata"].get("labels", {}).get(SERVICE_NAME_LABEL) == name
        ]
        return sorted(
            {
                address
                for endpoint_slice in slices
                for endpoint in endpoint_slice.get("endpoints") or []
                if (endpoint.get("conditions") or {}).get("ready") is not False
                for address in endpoint["addresses"]
            }
        )

    def _proxied(self, service: Manifest) -> list[Pod]:
        """kube-proxy's choice: the Service's ready endpoints (every one it publishes, where it publishes not-ready
        addresses; see _endpoints), else, since Kubernetes 1.28, those that are terminating but still serving
        (Running, every container ready), so that a Service whose last pod is being replaced still answers."""
        ready = self._endpoints(service, keep_terminating=True)
        if ready:
            return ready
        namespace, selector = service["metadata"].get("namespace", ""), service["spec"].get("selector") or {}
        return [
            pod
            for pod in self.pods.values()
            if pod.namespace == namespace
            and selector
            and selector.items() <= pod.labels.items()
            and pod.ip
            and pod.terminating
            and pod.phase == "Running"
            and all(pod.statuses[c["name"]].running and pod.statuses[c["name"]].ready for c in pod.spec["containers"])
        ]

    def _sync_proxy(self) -> None:
        """kube-proxy: when a Service's endpoints or ports change, the node's rules follow (applied outside the lock:
        nft is a process)."""
        services: dict[str, dict[int, list[str]]] = {}
        for key, address in self._cluster_ips.items():
            service = self.objects[key]
            # The `kubernetes` Service selects nothing: its endpoint is the API server, on the node.
            api = key == KUBERNETES_SERVICE
            endpoints = [self.network.gateway] if api else self._proxy_addresses(service)
            services[address] = {int(port["port"]): endpoints for port in service["spec"]["ports"]}
        self._proxy_wanted = services

    def _apply_proxy(self) -> None:
        """Apply the wanted rules if they changed; a failure is reported (by `up`) until a later pass succeeds."""
        wanted = self._proxy_wanted
        if wanted == self._proxy_applied:
            return
        try:
            self.network.proxy(wanted)
        except NetworkError as error:
            self._proxy_error = f"kube-proxy: {error}"
            if self._proxy_error not in self._errors:
                self._errors.append(self._proxy_error)
            return
        if self._proxy_error in self._errors:
            self._errors.remove(self._proxy_error)
        self._proxy_applied = wanted

    def _create_pod(self, owner: str, namespace: str, template: Manifest, name: str) -> Pod | None:
        """A new pod of `template` as the API server admits it, Pending until the scheduler binds it; None if the
        API server refused it, the reason kept for `up` to tell (the controller tries again in its next pass)."""
        try:
            spec = self._admitted(namespace, template["spec"])
        except AdmissionError as refused:
            self._failed_creates[owner] = f'FailedCreate: pods "{name}" is forbidden: {refused}'
            return None
        self._failed_creates.pop(owner, None)
        pod = Pod(
            name,
            namespace,
            template.get("metadata", {}),
            spec,
            owner=owner,
            directory=self.directory / "pods" / name,
            objects=lambda kind, object_name: self.get(kind, namespace, object_name),
            dns=(self.network.gateway, CLUSTER_DOMAIN),
            sandbox=self._sandbox,
            claims=lambda claim_name: self._claim_volume(namespace, claim_name, name),
            tokens=self._pod_token,
            clock=self.clock,
            service_env=self._service_env,
            private=self.directory,
            niceness=self.niceness(name),
            cores=self.cores(name),
        )
        with self._lock:
            self.pods[name] = pod
        return pod

    def _sandbox(self, name: str) -> tuple[str, str]:
        """CNI's part of a pod's start: its network namespace and address, and the NetworkPolicies' rules for that
        address in place before any of its containers runs (Calico's and Cilium's CNI plugins wait for the pod's
        policy likewise), so that a pod's first connections are neither let in nor dropped wrongly."""
        namespace, address = self.network.add_pod(name)
        with self._lock:
            self._sandboxes[name] = address
        self._police()
        return namespace, address

    def _police(self) -> None:
        """Apply the NetworkPolicies to the pods in the API now (network_policy.py), if that changes the rules; a
        failure is reported by `up` until a later pass succeeds."""
        with self._policy_lock:
            with self._lock:
                self._sandboxes = {name: a for name, a in self._sandboxes.items() if name in self.pods}
                pods = [
                    network_policy.PodAddress(pod.namespace, pod.labels, self._sandboxes.get(pod.name) or pod.ip)
                    for pod in self.pods.values()
                ]
                namespaces = {
                    name: network_policy.namespace_labels(
                        name, self.objects.get(("Namespace", "", name), {}).get("metadata", {}).get("labels")
                    )
                    for name in self._namespaces
                }
                policies = [manifest for key, manifest in self.objects.items() if key[0] == "NetworkPolicy"]
            wanted = network_policy.admitted(policies, pods, namespaces)
            if wanted == self._policies_applied:
                return
            try:
                self.network.police(wanted)
            except NetworkError as error:
                self._policy_error = f"NetworkPolicy: {error}"
                if self._policy_error not in self._errors:
                    self._errors.append(self._policy_error)
                return
            if self._policy_error in self._errors:
                self._errors.remove(self._policy_error)
            self._policies_applied = wanted

    def _admitted(self, namespace: str, template_spec: Manifest) -> Manifest:
        """The ServiceAccount admission plugin: the pod runs as its ServiceAccount (`default` unless it names one),
        which must exist (AdmissionError otherwise); unless the pod, or else its ServiceAccount, says
        automountServiceAccountToken: false, a projected volume kube-api-access-<random> (a token of the
        ServiceAccount for 3607 seconds, the cluster CA from kube-root-ca.crt, the namespace) is mounted read-only
        at /var/run/secrets/kubernetes.io/serviceaccount in every container, init containers too, that mounts
        nothing there itself."""
        spec = copy.deepcopy(template_spec)
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = spec["serviceAccount"] = account
        found = self.objects.get(("ServiceAccount", namespace, account))
        if found is None:
            raise AdmissionError(
                f'error looking up service account {namespace}/{account}: serviceaccount "{account}" not found'
            )
        if not spec.get("automountServiceAccountToken", found.get("automountServiceAccountToken", True)):
            return spec
        volume = f"kube-api-access-{_random_suffix()}"
        namespace_field = {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
        sources = [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                   {"configMap": {"name": ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                   {"downwardAPI": {"items": [namespace_field]}}]  # fmt: skip
        spec["volumes"] = [*spec.get("volumes", []), {"name": volume, "projected": {"defaultMode": 0o644,
                                                                                     "sources": sources}}]  # fmt: skip
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            if all(mount["mountPath"] != SERVICE_ACCOUNT_MOUNT for mount in container.get("volumeMounts", [])):
                mount = {"name": volume, "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": True}
                container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
        return spec

    def _pod_token(self, pod: Pod, audience: str | None, seconds: int) -> IssuedToken:
        """The TokenRequest the kubelet makes for a pod's projected token: bound to the pod, which must still be in
        the API, for its ServiceAccount (KeyError, failing the mount, while either is missing)."""
        with self._lock:
            if self.pods.get(pod.name) is not pod:
                raise KeyError(f'pods "{pod.name}" not found')
        return self.api.request_token(pod.namespace, pod.spec["serviceAccountName"], pod=pod, audience=audience,
                                      seconds=seconds)  # fmt: skip

    def delete_pod(self, name: str, grace_seconds: float | None = None) -> None:
        """`kubectl delete pod` (and what controllers do to scale down): returns at once. The pod is Terminating
        from now on; its processes get SIGTERM, and SIGKILL at the end of `grace_seconds` (by default the pod's
        terminationGracePeriodSeconds); it leaves the API once they have exited. 0 is `--force --grace-period=0`:
        it leaves the API (and frees its share of the node) at once, its processes killed behind it, as a pod not
        yet bound to the node or already finished does whatever its grace period."""
        with self._lock:
            pod = self.pods.get(name)
            if pod is None:
                return
            if pod.lost:  # no kubelet confirms a deletion: only a forced one removes it
                if grace_seconds == 0:
                    del self.pods[name]
                    self._lost.discard(pod.ip)
                    forget = threading.Thread(target=self._forget_lost, args=(pod,), name=f"forget-{name}", daemon=True)
                    self._reapers = [r for r in self._reapers if r.is_alive()] + [forget]
                    forget.start()
                return
            default = pod.spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
            grace = float(default if grace_seconds is None else grace_seconds)
            if pod.node is None or pod.finished:  # the pod strategy's CheckGracefulDelete: nothing to wait for
                grace = 0.0
            first = not pod.terminating
            pod.terminate(grace)
            if grace == 0:
                del self.pods[name]
            if first:
                reaper = threading.Thread(target=self._reap, args=(pod, grace), name=f"reap-{name}", daemon=True)
                self._reapers = [r for r in self._reapers if r.is_alive()] + [reaper]
                reaper.start()

    def lose_pod(self, name: str) -> None:
        """The pod's node is lost: its processes are gone (kubelet.py, Pod.lose), whatever is sent to its address is
        dropped without an answer, and it stays in the API, Terminating, until it is force-deleted (`delete_pod(name,
        0)`, as an operator or the pod garbage collector does once the node object is gone). Its controller replaces
        it at once; a Service that publishes not-ready addresses keeps it as a ready endpoint meanwhile, as its
        EndpointSlice does (ready = publishNotReadyAddresses or serving and not terminating). The rehearsal's one
        node stands for the cluster's others: the lost pod's share of resources was the lost node's."""
        with self._lock:
            pod = self.pods[name]
            pod.lose()
            self._lost.add(pod.ip)
            lost = set(self._lost)
        self.network.drop(lost)

    def _forget_lost(self, pod: Pod) -> None:
        """A lost pod force-deleted: its address reaches nothing (it is free again), its files go."""
        with self._lock:
            lost = set(self._lost)
        self.network.drop(lost)
        pod.wait_exited(timeout=30)
        self.network.remove_pod(pod.name)
        pod.release_files()

    def _reap(self, pod: Pod, grace: float) -> None:
        """Once the pod's last process has exited (the kubelet kills what is left at its deadline), the pod leaves
        the API, then its network namespace (so its connections were closed on the wire) and its files go."""
        pod.wait_exited(timeout=grace + 30)
        with self._lock:
            if self.pods.get(pod.name) is pod:
                del self.pods[pod.name]
        self.network.remove_pod(pod.name)
        pod.release_files()

    # ----- controllers and scheduler -----
    def _reconcile_forever(self) -> None:
        """The controllers and the scheduler, in one thread. A pass holds the lock, but never waits on a process:
        creating, deleting and binding pods only start things that run on their own."""
        while not self._stop.wait(0.2):
            with self._lock:
                for key, manifest in list(self.objects.items()):
                    if self._meta[key].deleted_at is not None:
                        continue  # its controller leaves it to the garbage collector
                    if key[0] == "Deployment":
                        self._guarded(self._sync_deployment, key, manifest)
                    elif key[0] == "Job":
                        self._guarded(self._sync_job, key, manifest)
                for replica_set in list(self.replica_sets.values()):
                    if not replica_set.deleting:
                        self._guarded(self._sync_replica_set, replica_set)
                self._guarded(self._schedule)
                self._guarded(self._sync_claims)
                self._guarded(self._sync_namespaces)
                self._guarded(self._collect_garbage)
                self._guarded(self._sync_proxy)
            self._apply_proxy()
            self._police()

    def _collect_garbage(self) -> None:
        """The garbage collector, until it has nothing left to do. A dependent none of whose owners stays (see
        `_staying`) is deleted: an object whose ownerReferences name its owners by uid (any kind), a Deployment's
        ReplicaSet, a ReplicaSet's or a Job's pod; in the foreground while an owner waits for it (a foreground
        deletion), else in the background (its owners are gone, as the EndpointSlice of a deleted Service; or its
        owner's uid was never live: a dangling reference). An object or ReplicaSet deleted in the foreground
        leaves once nothing that blocks it is left (`_blocking`). Not modelled: rewriting the references of a
        dependent that another owner keeps (the collector drops the one to the deleted owner; here it stays)."""
        changed = True
        while changed:
            changed = False
            staying = self._staying()
            waiting = {meta.uid for meta in self._meta.values() if meta.deleted_at is not None}
            for key, manifest in list(self.objects.items()):
                owners = {owner["uid"] for owner in manifest["metadata"].get("ownerReferences") or []}
                deleting = self._meta[key].deleted_at is not None or (
                    key[0] == "PersistentVolumeClaim" and self.claims[key[1:]].deleting
                )
                if owners and not owners & staying and not deleting:
                    self._delete_object(key, "Foreground" if owners & waiting else "Background")
                    changed = True
            for replica_set in list(self.replica_sets.values()):
                # Its controller stops; it goes once its pods have (not served, it may outlive its Deployment).
                if not replica_set.deleting and replica_set.deployment not in staying:
                    replica_set.deleting = changed = True
            for pod in list(self.pods.values()):
                if not pod.terminating and pod.owner not in staying:
                    self.delete_pod(pod.name)
            staying = self._staying()
            for key, meta in list(self._meta.items()):
                if meta.deleted_at is not None and not self._blocked(meta.uid, staying):
                    self._remove(key)
                    changed = True
            for replica_set in list(self.replica_sets.values()):
                if replica_set.deleting and not self._blocked(replica_set.uid, staying):
                    del self.replica_sets[replica_set.uid]
                    changed = True

    def _guarded(self, sync: Callable[..., None], *args: Any) -> None:
        """Run one controller's pass; a failure is kept for `up` to report instead of stopping every controller."""
        try:
            sync(*args)
        except Exception as error:  # noqa: BLE001 - reported by `up`
            if repr(error) not in self._errors:
                self._errors.append(repr(error))

    def _schedule(self) -> None:
        """Bind Pending pods, oldest first, to the node where they fit and their claims allow it, provisioning the
        claims that wait for their first consumer (before the binding, as the scheduler's PreBind waits for
        them); the kubelet then starts them."""
        used: dict[str, Decimal] = {}
        for pod in self.pods.values():
            # Terminating pods hold theirs until their processes exit; a lost pod's were its lost node's.
            if pod.node is not None and not pod.finished and not pod.lost:
                add(used, pod_requests(pod.spec))
        # What the scheduler's cache holds for affinity: pods bound to a node and not finished.
        placed = [
            (pod.namespace, pod.labels) for pod in self.pods.values() if pod.node is not None and not pod.finished
        ]
        for pod in list(self.pods.values()):
            if pod.node is not None or pod.terminating:
                continue
            pod.unschedulable = self._volume_binding(pod) or unschedulable(
                pod.spec, self._node, used, pod.namespace, placed
            )
            if pod.unschedulable is None:
                for _, claim in self._claims_of(pod):
                    if claim is not None and claim.volume is None:
                        self._provision(claim)
                pod.node, pod.architecture = self._node.name, self._node.labels["kubernetes.io/arch"]
                placed.append((pod.namespace, pod.labels))
                add(used, pod_requests(pod.spec))
                pod.start()

    def _sync_deployment(self, key: Key, deployment: Manifest) -> None:
        """The Deployment controller's pass: find (or make) the ReplicaSet of the current template and move the
        replicas over to it with the Deployment's strategy."""
        uid, spec = self._meta[key].uid, deployment["spec"]
        self._observed[key] = self._meta[key].generation
        replicas, template = spec.get("replicas", 1), spec["template"]
        pod_hash = _template_hash(template)
        sets = sorted((rs for rs in self.replica_sets.values() if rs.deployment == uid), key=lambda rs: rs.created_at)
        new = next((rs for rs in sets if rs.pod_hash == pod_hash), None)
        old = [rs for rs in sets if rs is not new]
        strategy = spec.get("strategy", {})
        if strategy.get("type", "RollingUpdate") == "Recreate":
            if not self._old_pods_left(old):
                new = new or self._new_replica_set(key, uid, template, pod_hash, 0)
                new.replicas = replicas
            return
        if new is None:
            new = self._new_replica_set(key, uid, template, pod_hash, 0)
        surge, unavailable = rolling_bounds(strategy.get("rollingUpdate", {}), replicas)
        if new.replicas != replicas:  # reconcileNewReplicaSet: grow within the surge, or shrink to `replicas`
            room = replicas + surge - sum(rs.replicas for rs in [*old, new])
            target = replicas if new.replicas > replicas else new.replicas + max(0, min(room, replicas - new.replicas))
            if target != new.replicas:
                new.replicas = target
                return
        self._scale_down_old(old, new, replicas, min(unavailable, replicas), spec.get("minReadySeconds", 0))

    def _old_pods_left(self, old: list[ReplicaSet]) -> bool:
        """Recreate's first half: scale the old ReplicaSets to 0; True while any of their pods is left, Terminating
        ones included."""
        for rs in old:
            rs.replicas = 0
        return any(not pod.finished for rs in old for pod in self._owned(rs.uid))

    def _scale_down_old(
        self, old: list[ReplicaSet], new: ReplicaSet, replicas: int, max_unavailable: int, min_ready: float
    ) -> None:
        """reconcileOldReplicaSets: shrink the old ReplicaSets, oldest first, as far as keeping `replicas -
        max_unavailable` available allows; their unavailable pods go first."""
        old_replicas = sum(rs.replicas for rs in old)
        if old_replicas == 0:
            return
        min_available = replicas - max_unavailable
        available = {rs.uid: self._available(rs.uid, min_ready) for rs in [*old, new]}
        budget = old_replicas + new.replicas - min_available - (new.replicas - available[new.uid])
        if budget <= 0:
            return
        for rs in old:  # cleanupUnhealthyReplicas
            scaled = min(budget, rs.replicas - available[rs.uid])
            if scaled > 0:
                rs.replicas, budget = rs.replicas - scaled, budget - scaled
        excess = sum(available.values()) - min_available
        for rs in old:  # scaleDownOldReplicaSetsForRollingUpdate
            if excess <= 0:
                break
            scaled = min(rs.replicas, excess)
            rs.replicas, excess = rs.replicas - scaled, excess - scaled

    def _available(self, owner: str, min_ready: float) -> int:
        """Active pods that have been ready for `min_ready` seconds (the Deployment's minReadySeconds)."""
        now = time.monotonic()
        return sum(
            pod.active and pod.ready and now - (pod.ready_since or now) >= min_ready for pod in self._owned(owner)
        )

    def _new_replica_set(
        self, key: Key, deployment: str, template: Manifest, pod_hash: str, replicas: int
    ) -> ReplicaSet:
        metadata = template.get("metadata", {})
        labels = {**metadata.get("labels", {}), "pod-template-hash": pod_hash}
        replica_set = ReplicaSet(
            name=f"{key[2]}-{pod_hash}",
            namespace=key[1],
            uid=secrets.token_hex(8),
            deployment=deployment,
            pod_hash=pod_hash,
            template={**template, "metadata": {**metadata, "labels": labels}},
            replicas=replicas,
        )
        self.replica_sets[replica_set.uid] = replica_set
        return replica_set

    def _sync_replica_set(self, replica_set: ReplicaSet) -> None:
        """Keep `replicas` active pods: create the missing ones, delete the surplus in Kubernetes' order."""
        active = [pod for pod in self._owned(replica_set.uid) if pod.active]
        for _ in range(replica_set.replicas - len(active)):
            name = f"{replica_set.name}-{_random_suffix()}"
            if self._create_pod(replica_set.uid, replica_set.namespace, replica_set.template, name) is None:
                break
        now = time.monotonic()

        def order(a: Pod, b: Pod) -> int:
            return _deletion_order(a, b, now)

        ordered = sorted(active, key=functools.cmp_to_key(order))
        for victim in ordered[: max(0, len(active) - replica_set.replicas)]:
            self.delete_pod(victim.name)

    def _sync_job(self, key: Key, job: Manifest) -> None:
        """Create the next attempt when none is active (after the back-off that follows a failure); once the Job has
        succeeded or failed, delete what still runs."""
        uid = self._meta[key].uid
        run = self._jobs[uid]
        active = [pod for pod in run.attempts if pod.active]
        if self._job_status(job, run) != "Running":
            for pod in active:
                self.delete_pod(pod.name)
            return
        if active:
            return
        failed = [pod for pod in run.attempts if _outcome(pod) == "Failed"]
        if failed:
            last = max(min(t for t in (pod.deleted_at, pod.finished_at) if t is not None) for pod in failed)
            if time.monotonic() < last + min(JOB_BACKOFF_START * 2 ** (len(failed) - 1), JOB_BACKOFF_MAX):
                return
        attempt = self._create_pod(uid, key[1], job["spec"]["template"], f"{key[2]}-{_random_suffix()}")
        if attempt is not None:
            run.attempts.append(attempt)

    def job_status(self, job: Manifest) -> str:
        """Running, Succeeded, or Failed (back-off limit or deadline reached), as the Job's conditions say."""
        with self._lock:
            meta = self._meta.get(_key(job))
            run = self._jobs.get(meta.uid) if meta else None
            if run is None:
                raise KeyError(f"no Job {_key(job)}")
            return self._job_status(job, run)

    def job_progress(self, namespace: str, name: str) -> JobProgress:
        """A Job's status as its controller writes it (KeyError if there is no such Job): its pods active (not
        Terminating nor finished; the ready ones among them), Terminating and not finished, and its attempts that
        succeeded and failed (a pod deleted before it succeeded among them)."""
        with self._lock:
            key = ("Job", namespace, name)
            run = self._jobs[self._meta[key].uid]
            status = self._job_status(self.objects[key], run)
            outcomes = [_outcome(pod) for pod in run.attempts]
            in_api = [pod for pod in run.attempts if self.pods.get(pod.name) is pod]
            return JobProgress(
                started_at=run.started_at,
                ended_at=run.ended_at,
                status=status,
                reason=run.reason,
                active=sum(pod.active for pod in run.attempts),
                ready=sum(pod.active and pod.ready for pod in run.attempts),
                terminating=sum(pod.terminating and not pod.finished for pod in in_api),
                succeeded=outcomes.count("Succeeded"),
                failed=outcomes.count("Failed"),
            )

    @staticmethod
    def _job_status(job: Manifest, run: _JobRun) -> str:
        """The Job's condition, settled (with when and why) the first time it is asked after the Job ended: its back-off
        limit is checked before its deadline, as the Job controller checks them."""
        if run.status == "Running":
            outcomes = [_outcome(pod) for pod in run.attempts]
            deadline = job["spec"].get("activeDeadlineSeconds")
            too_late = deadline is not None and time.monotonic() - run.started_at > deadline
            if "Succeeded" in outcomes:
                run.status = "Succeeded"
            elif outcomes.count("Failed") > job["spec"].get("backoffLimit", 6):
                run.status, run.reason = "Failed", "BackoffLimitExceeded"
            elif too_late:
                run.status, run.reason = "Failed", "DeadlineExceeded"
            if run.status != "Running":
                run.ended_at = time.monotonic()
        return run.status

    # ----- pulumi up -----
    def is_ready(self, manifest: Manifest, *, created: bool = True) -> bool:
        """pulumi-kubernetes' await rules for the kinds the harness runs, after the object was `created` (or
        updated)."""
        kind = manifest["kind"]
        if kind == "PersistentVolumeClaim":
            return self.claim_ready(manifest, created=created)
        if kind == "Deployment":
            return self._rolled_out(manifest)
        if kind == "Service":
            return bool(self._endpoints(manifest, keep_terminating=False))
        if kind == "Job":
            status = self.job_status(manifest)
            if status == "Failed":
                raise JobFailedError(f"Job {manifest['metadata']['name']} failed:\n{self.job_logs(manifest)}")
            return status == "Succeeded"
        return True

    def _rolled_out(self, deployment: Manifest) -> bool:
        """Every replica of the live object (whose replicas may have been written by another manager) is an
        available pod of the current template's ReplicaSet, and no old pod is active (the Available condition, and
        Progressing with NewReplicaSetAvailable)."""
        with self._lock:
            key = _key(deployment)
            if key not in self.objects:
                return False
            spec = self.objects[key]["spec"]
            pod_hash = _template_hash(spec["template"])
            uid = self._meta[key].uid
            sets = [rs for rs in self.replica_sets.values() if rs.deployment == uid]
            new = next((rs for rs in sets if rs.pod_hash == pod_hash), None)
            replicas: int = spec.get("replicas", 1)
            if new is None or new.replicas != replicas:
                return False
            active = sum(pod.active for rs in sets for pod in self._owned(rs.uid))
            return active == replicas == self._available(new.uid, spec.get("minReadySeconds", 0))

    def up(
        self, rendered: Rendered, timeout: float, delays: Mapping[str, float] | None = None, *, upsert: bool = False
    ) -> float:
        """`pulumi up`: plan each declared resource against the state (same, create, update or replace), carry the
        step out once all the resource depends on is ready, and await it; then delete what the program no longer
        declares and the old copies of create-before-delete replacements (those of a failed `up` too), but for what
        was applied with retainOnDelete, which only leaves the state. Returns the seconds until every resource was
        ready. A failed Job raises JobFailedError (once the steps then in flight have run to their end, as the
        engine lets them), a resource not ready in time TimeoutError; either way the resources left unready are
        remembered, and the next `up` awaits them again (or replaces them, where that is asked for). `delays` holds
        back resources by logical name, as a slow image pull would. `upsert` is the provider's
        upsertExistingObjects: without it, a create of an object that exists fails (AlreadyExistsError)."""
        started = time.monotonic()
        declared = {r.urn: r for r in rendered.kubernetes()}
        ready: set[str] = {r.urn for r in rendered.registrations if r.urn not in declared}
        steps: dict[str, _Step] = {}

        def progress() -> bool:
            if self._errors:
                raise RuntimeError(f"a controller failed: {'; '.join(self._errors)}")
            for urn, registration in declared.items():
                if urn in ready or not set(registration.dependencies) <= ready:
                    continue
                if time.monotonic() - started < (delays or {}).get(registration.name, 0):
                    continue
                if urn not in steps:
                    steps[urn] = self._plan(urn, registration.inputs, registration.options)
                step = steps[urn]
                if self._advance(step, upsert, registration.options.retain_on_delete):
                    ready.add(urn)
            return ready >= declared.keys()

        def not_ready() -> str:
            waiting = (
                f"{declared[urn].name} [{self._describe(declared[urn].inputs)}]" for urn in declared.keys() - ready
            )
            return "pulumi up: " + ", ".join(sorted(waiting))

        try:
            wait_for(progress, timeout, not_ready, interval=0.2)
        except Exception as failed:
            if not isinstance(failed, TimeoutError):
                # As the engine's step executor does on a failed step: no step starts any more, but those in flight
                # (applied, awaited) run to their end, ready or failed, before `up` exits.
                in_flight = {urn: step for urn, step in steps.items() if step.applied and urn not in ready}

                def settled() -> bool:
                    for urn, step in list(in_flight.items()):
                        try:
                            done = self._advance(step, upsert, declared[urn].options.retain_on_delete)
                        except JobFailedError:  # failed too: reported beside the first failure
                            done = False
                            del in_flight[urn]
                        if done:
                            ready.add(urn)
                            del in_flight[urn]
                    return not in_flight

                left = timeout - (time.monotonic() - started)
                with contextlib.suppress(TimeoutError):
                    wait_for(settled, max(0.0, left), "pulumi up: the steps in flight", interval=0.2)
            self._init_errors |= {urn for urn, step in steps.items() if step.applied and urn not in ready}
            raise
        elapsed = time.monotonic() - started
        leaving: list[Pod] = []
        deleted: list[Manifest] = []
        undeclared = [urn for urn in reversed(self._state) if urn not in declared]
        gone = [(self._state.pop(urn), urn in self._retained) for urn in undeclared]
        self._retained &= declared.keys()
        self._init_errors &= declared.keys()
        for manifest, retained in [*gone, *self._replaced]:
            if not retained:
                deleted.append(manifest)
                leaving += self.delete(manifest)
        self._replaced.clear()
        what = "pulumi up: deleting what is no longer declared, and what was replaced"
        wait_for(lambda: self._gone(leaving, deleted), timeout, what, interval=0.2)
        return elapsed

    def applied(self, urn: str) -> Manifest:
        """What `up` last applied for the resource `urn` (KeyError if nothing): its object's live name, which for an
        auto-named replacement is not the render's."""
        return self._state[urn]

    def _plan(self, urn: str, inputs: Manifest, options: Options) -> _Step:
        """What the engine does with one resource, from its last inputs (the ignored paths of the new ones reset to
        those, as processIgnoreChanges does before the diff) and whether its last await failed. A replacement
        deletes first where the provider asks it (a user-set name that stays), unless the program said otherwise
        (`deleteBeforeReplace`); else its new copy, if auto-named, gets a fresh name, as the provider's Check
        draws one for a replacement."""
        ignore_changes = options.ignore_changes
        previous = self._state.get(urn)
        if previous is None:
            return _Step(urn, inputs, "create", ignore_changes=ignore_changes)
        inputs = copy.deepcopy(inputs)
        if all(m["metadata"].get("annotations", {}).get(AUTONAMED_ANNOTATION) == "true" for m in (previous, inputs)):
            # The provider's Check keeps an auto-named object's name (AdoptOldAutonameIfUnnamed): the render's is
            # the logical name's, and a replacement's fresh one would otherwise read as a rename.
            inputs["metadata"]["name"] = previous["metadata"]["name"]
        missing = [path for path in ignore_changes if not _reset(parse_path(path), previous, inputs)]
        if missing:
            raise RuntimeError(f"pulumi up: {urn}: cannot ignore changes to {', '.join(missing)}: one or more "
                               "elements of the path are missing")  # fmt: skip
        diff = kubernetes_diff(type_token(inputs), previous, inputs)
        annotations = inputs["metadata"].get("annotations", {})
        replace_unready = annotations.get(REPLACE_UNREADY) == "true"
        if diff.replace or (
            urn in self._init_errors and inputs["kind"] == "Job" and replace_unready and not self._succeeded(previous)
        ):
            # An unready Job's replacement keeps its name: it deletes first unless auto-named, by the same rule.
            delete_first = (
                diff.delete_before_replace if diff.replace else annotations.get(AUTONAMED_ANNOTATION) != "true"
            )
            if options.delete_before_replace is not None:
                delete_first = options.delete_before_replace
            if not delete_first:
                inputs = self._fresh_name(urn, inputs, previous)
            return _Step(urn, inputs, "replace", previous, ignore_changes, delete_first)
        if urn not in self._init_errors:
            return _Step(urn, inputs, "same" if previous == inputs else "update", ignore_changes=ignore_changes)
        # With unchanged inputs the engine goes on awaiting it.
        return _Step(urn, inputs, "update", ignore_changes=ignore_changes)

    def _fresh_name(self, urn: str, inputs: Manifest, previous: Manifest) -> Manifest:
        """An auto-named replacement's new name, as the provider draws one at random: never a name of this kind
        that its namespace has (the render's auto-name is the logical name's, the same every time)."""
        metadata = inputs["metadata"]
        if metadata.get("annotations", {}).get(AUTONAMED_ANNOTATION) != "true":
            return inputs
        name, seed = metadata["name"], f"{urn} replacing {previous['metadata']['name']}"
        namespace = metadata.get("namespace", "")
        with self._lock:
            taken = {key[2] for key in self.objects if key[:2] == (inputs["kind"], namespace)}
        while name in taken or name == previous["metadata"]["name"]:
            seed += "'"
            name = auto_name(urn.rsplit("::", 1)[-1], seed)
        return {**inputs, "metadata": {**metadata, "name": name}}

    def _succeeded(self, job: Manifest) -> bool:
        try:
            return self.job_status(job) == "Succeeded"
        except KeyError:  # deleted behind Pulumi's back
            return False

    def _advance(self, step: _Step, upsert: bool, retain_on_delete: bool) -> bool:
        """Carry a step on as far as it goes now; True once the resource is ready. What it applies is recorded
        with `retain_on_delete`, which decides whether a later delete of it deletes the object."""
        if step.operation == "same":  # the engine's same step records the resource's options as they are now
            self._retain(step.urn, retain_on_delete)
            return True
        # A retained object is released, not deleted: the new copy's create then finds it (AlreadyExists).
        if step.operation == "replace" and step.delete_first and not step.applied and step.urn not in self._retained:
            assert step.previous is not None
            if step.leaving is None:
                step.leaving = self.delete(step.previous)
            if not self._gone(step.leaving, [step.previous]):
                return False
        if not step.applied:
            sent = self._with_live_owners(step.inputs)
            if step.operation == "update":
                self.server_side_apply(sent, step.ignore_changes)
            else:  # a create, or the new copy of a replacement
                self.pulumi_create(sent, upsert=upsert)
            if step.operation == "replace" and not step.delete_first:
                assert step.previous is not None
                self._replaced.append((step.previous, step.urn in self._retained))
            step.applied, self._state[step.urn] = True, step.inputs
            self._retain(step.urn, retain_on_delete)
        if step.inputs["metadata"].get("annotations", {}).get(SKIP_AWAIT) == "true":
            ready = True  # metadata.ReadyCondition: an immediate condition
        else:  # a failure propagates, and `up` remembers the resource as unready
            ready = self.is_ready(step.inputs, created=step.operation != "update")
        if ready:
            self._init_errors.discard(step.urn)
        return ready

    def _with_live_owners(self, inputs: Manifest) -> Manifest:
        """The manifest as the provider sends it: an ownerReference's uid is the owner's output, which the engine
        passes, the uid of the live owner of that kind and name (in the object's namespace, but for a Namespace);
        a render's is the mocks' (tests/program.py). Without such an owner the uid stays as it was given, and the
        API server stores it as it accepts any: the garbage collector then deletes the object, whose owner is
        gone. The state keeps the inputs, whose uids are stable across renders, for the diffs."""
        references = inputs["metadata"].get("ownerReferences")
        if not references:
            return inputs
        namespace = inputs["metadata"].get("namespace", "")
        with self._lock:
            live = [
                self._meta.get((reference["kind"], "" if reference["kind"] == "Namespace" else namespace,
                                reference["name"]))
                for reference in references
            ]  # fmt: skip
        resolved = [{**ref, "uid": meta.uid} if meta else ref for ref, meta in zip(references, live, strict=True)]
        return {**inputs, "metadata": {**inputs["metadata"], "ownerReferences": resolved}}

    def _retain(self, urn: str, retain_on_delete: bool) -> None:
        """Record whether a later delete of the resource only drops it from the state."""
        if retain_on_delete:
            self._retained.add(urn)
        else:
            self._retained.discard(urn)

    def _describe(self, manifest: Manifest) -> str:
        """The pods of a resource as `kubectl get pods` would list them, for a timeout's message."""

        def state(pod: Pod) -> str:
            words = [pod.phase, "Terminating" if pod.terminating else "", "ready" if pod.ready else ""]
            return " ".join([pod.name, *filter(None, words)]) + (f" ({pod.unschedulable})" if pod.unschedulable else "")

        if manifest["kind"] == "PersistentVolumeClaim":
            claim = self.claims.get(_key(manifest)[1:])
            if claim is None:
                return ""
            return f"{claim.phase}{' Terminating' if claim.deleting else ''}, class {claim.storage_class}"
        with self._lock:
            refused = [self._failed_creates[o] for o in self._owners(_key(manifest)) if o in self._failed_creates]
        return "; ".join([*(state(pod) for pod in self.pods_of(_key(manifest))), *refused])

    def job_logs(self, job: Manifest) -> str:
        return "\n".join(
            f"--- {pod.name} ({pod.phase})\n{pod.events()}{pod.logs(container['name'])}"
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
        """Stop the controllers, delete every pod as `kubectl delete --force --grace-period=0` does and wait until
        their processes are gone; then the DNS, the network and the files go. The drills prove how pods stop within
        their grace periods; the end of a module proves nothing, so it waits for none (a module's teardown took up
        to 48 s of drains that no longer had a head to drain through)."""
        self._stop.set()
        self._controller.join(timeout=10)
        with self._lock:
            for name in list(self.pods):
                self.delete_pod(name, grace_seconds=0)
            reapers = list(self._reapers)
        deadline = time.monotonic() + 60
        for reaper in reapers:
            reaper.join(timeout=max(0.0, deadline - time.monotonic()))
        self.api.close()
        self.dns.close()
        self.network.close()
        shutil.rmtree(self.directory, ignore_errors=True)

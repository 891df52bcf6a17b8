"""The rehearsal's one node and whether a pod may be bound to it, as kube-scheduler's filters decide: the node's
allocatable resources against the effective requests of the pods bound to it (NodeResourcesFit, which also
counts pods), its labels against the pod's nodeSelector (NodeAffinity), its NoSchedule and NoExecute taints
against the pod's tolerations (TaintToleration), and the pods placed so far against its required pod affinity
(InterPodAffinity: each term needs a pod of the pod's namespace that its labelSelector matches, placed on a node
whose label `topologyKey` has the value the node has; the node stands for all nodes, and a pod placed on a lost
one counts while it is in the API).

Not emulated: node affinity, pod anti-affinity, preferred terms, selectors but matchLabels and other namespaces
(refused when applied), topology spread, priorities and preemption, and NoExecute evicting pods that already run
(a taint added later only keeps new pods away).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.rehearsal.kubelet import Manifest, machine_architecture, quantity


def _default_allocatable() -> dict[str, str | int]:
    """Room for every rehearsal of this project at once, and no GPU: GPU pods stay Pending unless a test adds some."""
    return {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": 0, "pods": 110}


def _default_labels() -> dict[str, str]:
    """The well-known labels the kubelet puts on its node."""
    return {"kubernetes.io/hostname": "node", "kubernetes.io/os": "linux", "kubernetes.io/arch": machine_architecture()}


@dataclass(frozen=True)
class Node:
    """The node as the scheduler sees it: allocatable resources as Kubernetes quantities, labels, and taints
    (`{"key", "value", "effect"}`)."""

    allocatable: Mapping[str, str | int] = field(default_factory=_default_allocatable)
    labels: Mapping[str, str] = field(default_factory=_default_labels)
    taints: tuple[Mapping[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.labels.get("kubernetes.io/hostname", "node")

    def amount(self, resource: str) -> Decimal:
        return quantity(self.allocatable.get(resource, 0))


def container_requests(container: Manifest) -> dict[str, Decimal]:
    """A container's requests; a resource it only limits is requested at its limit, as the API server defaults it."""
    resources = container.get("resources", {})
    amounts = {**resources.get("limits", {}), **resources.get("requests", {})}
    return {name: quantity(amount) for name, amount in amounts.items()}


def pod_requests(spec: Manifest) -> dict[str, Decimal]:
    """The pod's effective requests: per resource, the larger of its largest init container's request (they run
    one at a time, before the others) and the sum of its containers' requests; plus the one pod it is."""
    total: dict[str, Decimal] = {"pods": Decimal(1)}
    for container in spec["containers"]:
        for name, amount in container_requests(container).items():
            total[name] = total.get(name, Decimal(0)) + amount
    for container in spec.get("initContainers", []):
        for name, amount in container_requests(container).items():
            total[name] = max(total.get(name, Decimal(0)), amount)
    return total


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, str]) -> bool:
    """Kubernetes' ToleratesTaint: an empty effect or key matches any; Exists ignores the value."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    operator = toleration.get("operator", "Equal")
    return bool(operator == "Exists" or (operator == "Equal" and toleration.get("value", "") == taint.get("value", "")))


def add(used: dict[str, Decimal], requests: Mapping[str, Decimal]) -> None:
    """Count a bound pod's requests in `used`, the node's resources that its pods hold."""
    for name, amount in requests.items():
        used[name] = used.get(name, Decimal(0)) + amount


def unschedulable(
    spec: Manifest,
    node: Node,
    used: Mapping[str, Decimal],
    namespace: str = "",
    placed: Iterable[tuple[str, Mapping[str, str]]] = (),
) -> str | None:
    """Why a pod of `namespace` with `spec` cannot be bound to `node`, whose pods hold `used` and where the pods
    `placed` (their namespaces and labels) are, in the words of its PodScheduled condition; None if it can."""
    if not spec.get("nodeSelector", {}).items() <= node.labels.items():
        return "node(s) didn't match Pod's node affinity/selector"
    terms = spec.get("affinity", {}).get("podAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    placed = list(placed)
    for term in terms:
        selector = term["labelSelector"]["matchLabels"].items()
        if term["topologyKey"] not in node.labels or not any(
            where == namespace and selector <= labels.items() for where, labels in placed
        ):
            return "node(s) didn't match pod affinity rules"
    for taint in node.taints:
        tolerations = spec.get("tolerations", [])
        if taint["effect"] in {"NoSchedule", "NoExecute"} and not any(tolerates(t, taint) for t in tolerations):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    requests = pod_requests(spec)
    short = [name for name, amount in requests.items() if amount and used.get(name, 0) + amount > node.amount(name)]
    if short:
        return ", ".join(f"Insufficient {name}" if name != "pods" else "Too many pods" for name in short)
    return None

"""Prometheus v2.42.0's Kubernetes service discovery, role `pod`, as file_sd target groups.

Debian's Prometheus (2.42.0+ds) is built without Kubernetes discovery, so the tests stand in for it with file
discovery fed what Kubernetes discovery would have produced. Mirrors discovery/kubernetes/pod.go at v2.42.0 (commit
225c61122d88b01d1f0eaaee0e05b6f3e0567ac0): `buildPod`, `podLabels`, `GetControllerOf`, `podReady`,
`findPodContainerID`/`findPodContainerStatus`, `podSourceFromNamespaceAndName`; `strutil.SanitizeLabelName`; and
`Discovery.getNamespaces` (discovery/kubernetes/kubernetes.go) for which pods a `namespaces` setting sees.

Modelled, for pods given as the API server returns them (Pod dicts):
- a pod without `status.podIP` yields a group with neither labels nor targets (buildPod returns early);
- the group's labels: `__meta_kubernetes_namespace`, `_pod_name`, `_pod_ip`, `_pod_ready` (the Ready condition's
  status, lowercased; "unknown" without one), `_pod_phase`, `_pod_node_name`, `_pod_host_ip`, `_pod_uid`,
  `_pod_controller_kind`/`_name` (the first ownerReference with `controller: true`, each only if non-empty),
  `_pod_label_<name>`/`_pod_labelpresent_<name>` and `_pod_annotation_<name>`/`_pod_annotationpresent_<name>`;
- one target per container port (`podIP:port`, bracketed for IPv6 as net.JoinHostPort does) with
  `_pod_container_port_name`/`_number`/`_protocol`, or, for a container without ports, one target whose address is
  the pod IP; containers first, then init containers; every target with `_pod_container_name`, `_pod_container_id`
  (from the status of that name in containerStatuses, or initContainerStatuses for an init container; "" without
  one), `_pod_container_image` (the spec's image: v2.42 does not read the status' image) and `_pod_container_init`.
Values Go would emit empty are emitted empty (Prometheus treats "" as unset). A port without `protocol` gets "TCP",
the API server's default.

Not modelled: `attach_metadata` (node labels), `selectors`, `namespaces.own_namespace`, the API connection settings
(`api_server`, `kubeconfig_file`, auth, TLS), other roles, and watch events (a pod's deletion is its absence from the
next snapshot). File discovery also adds `__meta_filepath` to every target, which Kubernetes discovery does not.
Two labels (or annotations) that sanitize to the same name raise ValueError: Prometheus keeps whichever its map
iteration visits last, which is random.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.prometheus_scrape import go_object, go_required_string, go_string

PROMETHEUS_VERSION = "v2.42.0"
PROMETHEUS_COMMIT = "225c61122d88b01d1f0eaaee0e05b6f3e0567ac0"

META = "__meta_kubernetes_"  # kubernetes.go metaLabelPrefix
_INVALID_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")  # util/strutil invalidLabelCharRE
# What prometheus-config-reloader substitutes, for shard 0, in the configuration Prometheus reads.
SHARD_PLACEHOLDER = "$(SHARD)"
SHARD = "0"


def sanitize_label_name(name: str) -> str:
    """strutil.SanitizeLabelName: every character outside [a-zA-Z0-9_] becomes "_"."""
    return _INVALID_LABEL_CHAR.sub("_", name)


def pod_source(namespace: str, name: str) -> str:
    """podSourceFromNamespaceAndName: the target group's source."""
    return "pod/" + namespace + "/" + name


def pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    """podLabels: the labels every target of the pod carries (buildPod adds the namespace)."""
    metadata = go_object(pod.get("metadata"), "metadata")
    spec = go_object(pod.get("spec"), "spec")
    status = go_object(pod.get("status"), "status")
    labels = {
        META + "pod_name": go_string(metadata.get("name"), "metadata.name"),
        META + "pod_ip": go_string(status.get("podIP"), "status.podIP"),
        META + "pod_ready": _pod_ready(status),
        META + "pod_phase": go_string(status.get("phase"), "status.phase"),
        META + "pod_node_name": go_string(spec.get("nodeName"), "spec.nodeName"),
        META + "pod_host_ip": go_string(status.get("hostIP"), "status.hostIP"),
        META + "pod_uid": go_string(metadata.get("uid"), "metadata.uid"),
    }
    controller = _controller_of(metadata)
    if controller is not None:
        kind = go_string(controller.get("kind"), "ownerReferences[].kind")
        name = go_string(controller.get("name"), "ownerReferences[].name")
        if kind:
            labels[META + "pod_controller_kind"] = kind
        if name:
            labels[META + "pod_controller_name"] = name
    for field, prefix, present in (
        ("labels", "pod_label_", "pod_labelpresent_"),
        ("annotations", "pod_annotation_", "pod_annotationpresent_"),
    ):
        values = go_object(metadata.get(field), f"metadata.{field}")
        seen: dict[str, str] = {}
        for key, value in values.items():
            name = sanitize_label_name(key)
            if name in seen:
                raise ValueError(
                    f"metadata.{field}: {seen[name]!r} and {key!r} both become {name!r}: Prometheus keeps either"
                )
            seen[name] = key
            labels[META + prefix + name] = go_string(value, f"metadata.{field}[{key!r}]")
            labels[META + present + name] = "true"  # presentValue
    return labels


def build_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """buildPod: the pod's target group, {"source", "labels", "targets"}, each target a label set with __address__."""
    metadata = go_object(pod.get("metadata"), "metadata")
    namespace = go_required_string(metadata.get("namespace"), "metadata.namespace")
    name = go_required_string(metadata.get("name"), "metadata.name")
    group: dict[str, Any] = {"source": pod_source(namespace, name), "labels": {}, "targets": []}
    status = go_object(pod.get("status"), "status")
    pod_ip = go_string(status.get("podIP"), "status.podIP")
    # "PodIP can be empty when a pod is starting or has been evicted."
    if not pod_ip:
        return group
    group["labels"] = pod_labels(pod) | {META + "namespace": namespace}

    spec = go_object(pod.get("spec"), "spec")
    containers = _list(spec.get("containers"), "spec.containers")
    init_containers = _list(spec.get("initContainers"), "spec.initContainers")
    targets: list[dict[str, str]] = group["targets"]
    for index, container in enumerate([*containers, *init_containers]):
        is_init = index >= len(containers)
        path = f"spec.initContainers[{index - len(containers)}]" if is_init else f"spec.containers[{index}]"
        c = go_object(container, path)
        container_name = go_string(c.get("name"), f"{path}.name")
        statuses = _list(status.get("initContainerStatuses" if is_init else "containerStatuses"), "status")
        common = {
            META + "pod_container_name": container_name,
            META + "pod_container_id": _container_id(statuses, container_name),
            META + "pod_container_image": go_string(c.get("image"), f"{path}.image"),
            META + "pod_container_init": "true" if is_init else "false",  # strconv.FormatBool
        }
        ports = _list(c.get("ports"), f"{path}.ports")
        if not ports:
            targets.append({"__address__": pod_ip, **common})
            continue
        for port_index, port in enumerate(ports):
            port_path = f"{path}.ports[{port_index}]"
            p = go_object(port, port_path)
            number = p.get("containerPort")
            if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
                raise ValueError(f"{port_path}.containerPort: {number!r} is not a port number")
            targets.append(
                {
                    "__address__": _join_host_port(pod_ip, str(number)),
                    **common,
                    META + "pod_container_port_number": str(number),
                    META + "pod_container_port_name": go_string(p.get("name"), f"{port_path}.name"),
                    META + "pod_container_port_protocol": go_string(p.get("protocol", "TCP"), f"{port_path}.protocol"),
                }
            )
    return group


def file_sd_groups(
    pods: Iterable[Mapping[str, Any]], namespaces: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """The file_sd groups for the pods in `namespaces` (None: all): one per target, the pod's labels merged in.

    file_sd has labels per group only; a group per target carrying the pod's labels and the target's is what
    TargetsFromGroup makes of buildPod's group (the two sets of names never overlap).
    """
    groups = []
    for pod in pods:
        metadata = go_object(pod.get("metadata"), "metadata")
        if namespaces is not None and metadata.get("namespace") not in namespaces:
            continue
        group = build_pod(pod)
        for target in group["targets"]:
            address = target["__address__"]
            labels = group["labels"] | {k: v for k, v in target.items() if k != "__address__"}
            groups.append({"targets": [address], "labels": labels})
    return groups


@dataclass(frozen=True)
class PodTargetsFile:
    """The file_sd file standing in for one `kubernetes_sd_configs` entry (role pod) of job `job_name`."""

    job_name: str
    path: Path
    namespaces: frozenset[str] | None  # None: every namespace (Discovery.getNamespaces' NamespaceAll)

    def groups(self, pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """What this file holds when the cluster has `pods`."""
        return file_sd_groups(pods, self.namespaces)


def file_sd_scrape_configs(
    scrape_configs: Sequence[Mapping[str, Any]], directory: Path, *, refresh_interval: str = "1s"
) -> tuple[list[dict[str, Any]], list[PodTargetsFile]]:
    """`scrape_configs` as Debian's Prometheus runs them, with the files to write (see PodTargetsFile.groups).

    Each `kubernetes_sd_configs` entry becomes a `file_sd_configs` entry reading a file of its own in `directory`,
    and every "$(SHARD)" becomes "0", as prometheus-config-reloader writes it for shard 0.
    """
    jobs: list[dict[str, Any]] = []
    files: list[PodTargetsFile] = []
    for job_index, job in enumerate(scrape_configs):
        job_name = go_required_string(job.get("job_name"), f"scrape_configs[{job_index}].job_name")
        converted: dict[str, Any] = {}
        for key, value in job.items():
            if key == "file_sd_configs":  # a job's own entries stay, in order with the stand-ins
                converted.setdefault(key, []).extend(_substitute_shard(_list(value, f"{job_name}: {key}")))
                continue
            if key != "kubernetes_sd_configs":
                converted[key] = _substitute_shard(value)
                continue
            entries = []
            for sd_index, sd_config in enumerate(_list(value, f"{job_name}: kubernetes_sd_configs")):
                path = directory / f"pods-{job_index}-{sd_index}-{re.sub(r'[^A-Za-z0-9_.-]', '_', job_name)}.json"
                namespaces = _sd_namespaces(go_object(sd_config, f"{job_name}: kubernetes_sd_configs[{sd_index}]"))
                files.append(PodTargetsFile(job_name, path, namespaces))
                entries.append({"files": [str(path)], "refresh_interval": refresh_interval})
            converted.setdefault("file_sd_configs", []).extend(entries)
        jobs.append(converted)
    return jobs, files


def _sd_namespaces(sd_config: Mapping[str, Any]) -> frozenset[str] | None:
    """Which namespaces' pods a kubernetes_sd_configs entry sees; only `role: pod` and `namespaces.names`."""
    for key in sd_config:
        if key not in ("role", "namespaces"):
            raise NotImplementedError(f"kubernetes_sd_configs: {key} is not modelled")
    if sd_config.get("role") != "pod":
        raise NotImplementedError(f"kubernetes_sd_configs: role {sd_config.get('role')!r} is not modelled")
    namespaces = go_object(sd_config.get("namespaces"), "kubernetes_sd_configs.namespaces")
    for key in namespaces:
        if key == "own_namespace":
            raise NotImplementedError("kubernetes_sd_configs: namespaces.own_namespace is not modelled")
        if key != "names":
            raise ValueError(f"kubernetes_sd_configs: namespaces.{key} is not a Prometheus setting")
    names = _list(namespaces.get("names"), "kubernetes_sd_configs.namespaces.names")
    if not all(isinstance(name, str) for name in names):
        raise ValueError("kubernetes_sd_configs: namespaces.names must be strings")
    return frozenset(names) if names else None


def _substitute_shard(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(SHARD_PLACEHOLDER, SHARD)
    if isinstance(value, Mapping):
        return {key: _substitute_shard(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute_shard(item) for item in value]
    return value


def _pod_ready(status: Mapping[str, Any]) -> str:
    """podReady: the Ready condition's status, lowercased; "unknown" without one."""
    for condition in _list(status.get("conditions"), "status.conditions"):
        c = go_object(condition, "status.conditions[]")
        if c.get("type") == "Ready":
            return go_string(c.get("status"), "status.conditions[].status").lower()
    return "unknown"


def _controller_of(metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """GetControllerOf: the first ownerReference with `controller: true`."""
    for ref in _list(metadata.get("ownerReferences"), "metadata.ownerReferences"):
        r = go_object(ref, "metadata.ownerReferences[]")
        if r.get("controller") is True:
            return r
    return None


def _container_id(statuses: Sequence[Any], name: str) -> str:
    """findPodContainerID: the containerID of the first status named `name`, else ""."""
    for status in statuses:
        s = go_object(status, "containerStatuses[]")
        if s.get("name") == name:
            return go_string(s.get("containerID"), "containerStatuses[].containerID")
    return ""


def _join_host_port(host: str, port: str) -> str:
    """net.JoinHostPort."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _list(value: Any, path: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValueError(f"{path} must be a list")
    return value

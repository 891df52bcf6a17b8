"""A small kubelet: runs one pod's containers from its manifest, as real processes, in their images' stand-ins.

Everything comes from the pod spec, nothing from knowledge of this project: each container's image (one the
registry in image.py knows; any other is refused; one the registry holds for another architecture than the node's
fails to pull, and the pod stays Pending), command and args with Kubernetes' `$(VAR)` expansion, its env
(the image's, then the `kubernetes` Service's variables, KUBERNETES_SERVICE_HOST and the rest, which every
container gets, then the container's own: values, which may refer to those, fieldRef, resourceFieldRef,
secretKeyRef, configMapKeyRef), its working directory, its volume mounts (emptyDir, memory-backed emptyDir with its
size limit, PersistentVolumeClaims: the claim's volume, with fsGroup ownership applied as the kubelet applies it to
volumes that support ownership management; and the volumes the kubelet fills, see below), its securityContext (user
and group, the image's unless set; fsGroup, no-new-privileges, the runtime's default capabilities less those
dropped, read-only root filesystem), init containers before the main ones, readiness and liveness probes (httpGet,
tcpSocket, exec), the restart policy with Kubernetes' crash-loop back-off, and deletion: the pod is Terminating at
once, every container's main process gets SIGTERM together, and whatever is left gets SIGKILL when the pod's grace
period (one deadline for the pod) runs out.

The volumes the kubelet fills (Secret, ConfigMap, downward API and projected ones: serviceAccountToken, configMap,
secret and downwardAPI sources, `optional` ones included) are written as its AtomicWriter writes them: the files in
a timestamped directory, `..data` pointing to it, each name a symlink through `..data`, a new payload swapped in by
one rename. Every file has the volume's defaultMode (0644 unless set), except a token: 0600, owned by the pod's
user, when every container sets the same runAsUser (FsUser) or the pod has an fsGroup; with an fsGroup the files
then get its group and group read, never group write (these volumes are read-only to the kubelet's ownership
change). They are always mounted read-only. A token is asked for through `tokens` (the API server's TokenRequest,
bound to the pod; 3600 seconds unless the source says, never under 600) and cached by the token manager, which
asks again once 80% of its lifetime (or 24 hours) has passed, less up to 10 seconds of jitter. While a pod's
containers run, its filled volumes are synced every VOLUME_SYNC_SECONDS: a changed Secret, ConfigMap, label or
annotation and a refreshed token reach the files; a deleted object leaves them as they were.

The pod's files lie on this machine, under the cluster's directory (root's alone), as a kubelet's lie under
/var/lib/kubelet; no container sees them: an empty, read-only tmpfs covers that directory in every container, once
its own mounts are made, and a container running as root has no capability to unmount it.

Each container runs in the pod's network namespace and in its own mount, UTS and PID namespaces, so it has
the pod's hostname and files, and when its main process exits every process it started dies with it. Its root
filesystem is this machine's, with its image's trees over it (see image.py). An exec probe runs in the running
container as `kubectl exec` would (the runtime's ExecSync): in its mount, PID, UTS and network namespaces, with its
env, working directory, user, groups, capabilities and no-new-privileges; it passes on exit 0, and at its
timeoutSeconds it is killed and fails. A tcpSocket probe passes when a TCP connection to the pod's IP (or the
probe's host) and port opens.

Not emulated: probes run one after another in the pod's supervising thread (a kubelet runs each in its own
worker), so a probe that hangs until its timeout delays the pod's others by as much; an exec probe does not get
the container's open-files limit; filled volumes lie on disk, not on a tmpfs, and are not synced while only init
containers run; a file's own mode and a path below a directory in a volume's items, a downward API file of a
container's resources or of a status field, and ClusterTrustBundle sources (all refused).
"""

from __future__ import annotations

import base64
import json
import math
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

from tests.rehearsal import image

Manifest = dict[str, Any]

IMAGE_ROOT = image.ROOT  # where the tests find the image's Ray outside any pod
# containerd 2's default open-files limit for containers: soft 1024, hard 524288 (or what this machine allows).
# containerd's default capabilities (CapBnd 0xa80425fb): a container running as root has these and no others, so it
# can neither mount nor unmount, nor enter another namespace.
RUNTIME_CAPABILITIES = ("chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
                        "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write")  # fmt: skip
RUNTIME_NOFILE = (1024, 524288)
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
DEFAULT_GRACE_SECONDS = 30
_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_QUANTITY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([numkMGTPE]|[KMGTPE]i)|[eE]([+-]?\d+))?")
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
# Fields whose effect this kubelet (or the scheduler) would silently leave out: a manifest using one is refused.
_UNSUPPORTED_POD_FIELDS = ("topologySpreadConstraints", "hostNetwork", "hostPID", "hostIPC",
                           "shareProcessNamespace", "readinessGates")  # fmt: skip
# The one kind of affinity the scheduler emulates (scheduler.py): required pod affinity by matchLabels.
_AFFINITY_TERM_KEYS = {"labelSelector", "topologyKey"}
_UNSUPPORTED_CONTAINER_FIELDS = ("lifecycle", "startupProbe", "envFrom")
_UNSUPPORTED_MOUNT_FIELDS = ("subPath", "subPathExpr", "mountPropagation")
_VOLUME_KINDS = ("emptyDir", "secret", "configMap", "persistentVolumeClaim", "projected", "downwardAPI")
# The kinds of volume the kubelet fills with files of its own (through its AtomicWriter), always mounted read-only,
# and keeps up to date while the pod runs.
_FILLED_KINDS = ("secret", "configMap", "projected", "downwardAPI")
_PROJECTED_SOURCES = ("serviceAccountToken", "configMap", "secret", "downwardAPI")
# What the downward API can write to a file (an env var can also take status.podIP and others).
_DOWNWARD_FILE_FIELDS = ("metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels",
                         "metadata.annotations")  # fmt: skip
# The kubelet syncs a running pod's volumes every sync period (1 minute, plus the ConfigMap and Secret cache's
# delay), so a changed object reaches its files within about a minute. The rehearsal's period is shorter, to keep
# tests fast, but never zero: a container that reads a file right after its object changed still sees the old one,
# as it would on a cluster, and must wait for the update.
VOLUME_SYNC_SECONDS = 2.0
# The kubelet's token manager: a projected token is refreshed once 80% of its requested lifetime has passed, or
# once it is 24 hours old, each less a random jitter of up to 10 seconds (pkg/kubelet/token/token_manager.go).
TOKEN_REFRESH_SHARE, TOKEN_MAX_AGE, TOKEN_JITTER = 0.8, 24 * 3600, 10.0
DEFAULT_TOKEN_SECONDS, MIN_TOKEN_SECONDS = 3600, 600
_PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec")
# SetVolumeOwnership's masks (pkg/volume/volume_linux.go): group read-write (read-only for a read-only volume),
# and for directories group search and setgid, so what is made in them belongs to fsGroup too.
_OWNERSHIP_RW, _OWNERSHIP_RO, _OWNERSHIP_DIR = 0o660, 0o440, stat.S_ISGID | 0o110


class UnsupportedError(RuntimeError):
    """The manifest uses something this kubelet does not emulate: fail loudly rather than run it wrongly."""


class InvalidError(RuntimeError):
    """The API server would refuse the request (422: a field is immutable, missing or out of range; 403 from an
    admission plugin, such as a resize the claim's class does not allow)."""


class Clock:
    """The cluster's wall clock: this machine's, plus however far a test has moved it on (`advance`), as if the
    API server's and the node's clocks jumped together at that moment. Token lifetimes, the kubelet's token refresh
    and the API's timestamps follow it, so a test can let an hour pass at once; the rehearsal's waits and the
    controllers' own timing (monotonic) do not jump."""

    def __init__(self) -> None:
        self._epoch = time.time() - time.monotonic()
        self._jumps: list[tuple[float, float]] = []  # (monotonic time, seconds)

    def now(self) -> float:
        return self.wall(time.monotonic())

    def advance(self, seconds: float) -> None:
        self._jumps.append((time.monotonic(), seconds))

    def wall(self, monotonic: float) -> float:
        """A time.monotonic() reading as the cluster's wall-clock time then (later jumps leave it alone)."""
        return monotonic + self._epoch + sum(seconds for at, seconds in self._jumps if at <= monotonic)


@dataclass(frozen=True)
class IssuedToken:
    """A TokenRequest's answer as the kubelet keeps it: the token, when the API server says it expires
    (status.expirationTimestamp, wall-clock seconds) and the lifetime the kubelet asked for."""

    token: str
    expires_at: float
    expiration_seconds: int

    def needs_refresh(self, now: float, jitter: float) -> bool:
        """The token manager's requiresRefresh: 80% of the requested lifetime has passed, or 24 hours."""
        issued_at = self.expires_at - self.expiration_seconds
        refresh_at = issued_at + min(TOKEN_MAX_AGE, TOKEN_REFRESH_SHARE * self.expiration_seconds)
        return now > refresh_at - jitter


def service_env(name: str, cluster_ip: str, ports: list[Manifest]) -> dict[str, str]:
    """The variables the kubelet sets for a Service (pkg/kubelet/envvars FromServices): `<NAME>_SERVICE_HOST`,
    `<NAME>_SERVICE_PORT` (its first port) and one per named port, and the Docker-link style `<NAME>_PORT...`."""
    prefix = name.upper().replace("-", "_")
    first = ports[0]
    env = {f"{prefix}_SERVICE_HOST": cluster_ip, f"{prefix}_SERVICE_PORT": str(first["port"])}
    for port in ports:
        if port.get("name"):
            env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
    env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{cluster_ip}:{first['port']}"
    for port in ports:
        protocol = port.get("protocol", "TCP")
        link = f"{prefix}_PORT_{port['port']}_{protocol.upper()}"
        env[link] = f"{protocol.lower()}://{cluster_ip}:{port['port']}"
        env.update({f"{link}_PROTO": protocol.lower(), f"{link}_PORT": str(port["port"]), f"{link}_ADDR": cluster_ip})
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion: `$(VAR)` becomes VAR's value if it is defined, `$$` becomes `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REFERENCE.sub(replace, text)


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity ("500m", "4Gi", "1e3", or a plain number) as cores, bytes or devices."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, suffix, exponent = Decimal(match[1]), match[2] or "", match[3]
    if exponent is not None:
        return number.scaleb(int(exponent))
    if suffix in _BINARY_SUFFIXES:
        return number * Decimal(1024) ** _BINARY_SUFFIXES[suffix]
    return number.scaleb(_DECIMAL_SUFFIXES.get(suffix, 0))


def machine_architecture() -> str:
    """This machine's CPU architecture as a node labels it (`kubernetes.io/arch`): the rehearsal's node's."""
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine)


def container_image(container: Manifest) -> image.Image:
    """The stand-in for the container's image; UnsupportedError for an image the registry does not know, or a
    Redis of another version than the one installed here."""
    try:
        return image.lookup(container["image"])
    except LookupError as error:
        raise UnsupportedError(f"container {container['name']}: {error}") from error


def check_supported(spec: Manifest) -> None:
    """Refuse, when a pod template is applied, what this kubelet and the scheduler would otherwise leave out or run
    wrongly: unemulated fields, images, volume kinds and probe handlers."""
    used = [name for name in _UNSUPPORTED_POD_FIELDS if name in spec]
    used += _unsupported_affinity(spec.get("affinity", {}))
    used += [f"{c['name']}.restartPolicy (a sidecar)" for c in spec.get("initContainers", []) if "restartPolicy" in c]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        container_image(container)
        used += [f"{container['name']}.{name}" for name in _UNSUPPORTED_CONTAINER_FIELDS if name in container]
        for kind in ("readinessProbe", "livenessProbe"):
            handlers = [name for name in container.get(kind, {}) if name in (*_PROBE_HANDLERS, "grpc")]
            if kind in container and (len(handlers) != 1 or handlers[0] not in _PROBE_HANDLERS):
                used.append(f"{container['name']}.{kind} {handlers} (one of {', '.join(_PROBE_HANDLERS)} is emulated)")
        mounts = container.get("volumeMounts", [])
        used += [
            f"{container['name']}.volumeMounts.{name}"
            for m in mounts
            for name in _UNSUPPORTED_MOUNT_FIELDS
            if name in m
        ]
    for volume in spec.get("volumes", []):
        if not any(kind in volume for kind in _VOLUME_KINDS):
            used.append(f"volumes.{volume['name']} (only {', '.join(_VOLUME_KINDS)} are emulated)")
        for source in volume.get("projected", {}).get("sources", []):
            kinds = [kind for kind in source if kind in _PROJECTED_SOURCES]
            if len(kinds) != 1 or len(source) != 1:
                used.append(f"volumes.{volume['name']}.sources {sorted(source)} (one of {_PROJECTED_SOURCES})")
        for kind, source in _sources(volume):
            used += _unsupported_items(volume["name"], kind, source)
    if used:
        raise UnsupportedError(f"not emulated: {', '.join(used)}")


def _unsupported_affinity(affinity: Manifest) -> list[str]:
    """What of a pod's affinity the scheduler does not emulate: all but required pod affinity terms that select by
    matchLabels in the pod's own namespace, with a topology key."""
    if not affinity:
        return []
    pod_affinity = affinity.get("podAffinity", {})
    terms = pod_affinity.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    supported = (
        set(affinity) == {"podAffinity"}
        and set(pod_affinity) == {"requiredDuringSchedulingIgnoredDuringExecution"}
        and all(set(t) == _AFFINITY_TERM_KEYS and set(t["labelSelector"]) == {"matchLabels"} for t in terms)
    )
    return [] if supported else [f"affinity {affinity} (only required pod affinity by matchLabels is emulated)"]


def _sources(volume: Manifest) -> list[tuple[str, Manifest]]:
    """What a volume the kubelet fills is made of, as (kind, source): a projected volume's sources, or the volume's
    own source."""
    if "projected" in volume:
        return [(kind, body) for source in volume["projected"].get("sources", []) for kind, body in source.items()
                if kind in _PROJECTED_SOURCES]  # fmt: skip
    return [(kind, volume[kind]) for kind in _FILLED_KINDS if kind in volume]


def _unsupported_items(volume: str, kind: str, source: Manifest) -> list[str]:
    """The files of a source this kubelet would write wrongly (a mode of their own, a path below a directory, a
    field it does not project); a token's lifetime the API server refuses (InvalidError)."""
    if kind == "serviceAccountToken":
        seconds = source.get("expirationSeconds", DEFAULT_TOKEN_SECONDS)
        if seconds < MIN_TOKEN_SECONDS:
            raise InvalidError(
                f"volumes.{volume}.projected.sources.serviceAccountToken.expirationSeconds: Invalid value: {seconds}: "
                "may not specify a duration less than 10 minutes"
            )
        return [f"volumes.{volume}.serviceAccountToken.path {source['path']}"] if "/" in source["path"] else []
    used = [
        f"volumes.{volume}.items[{item.get('key', item['path'])}] (a mode of its own, or a path below a directory)"
        for item in source.get("items", [])
        if "mode" in item or "/" in item["path"]
    ]
    if kind == "downwardAPI":
        fields = [item.get("fieldRef", {}).get("fieldPath", "resourceFieldRef") for item in source.get("items", [])]
        used += [f"volumes.{volume}.downwardAPI {path}" for path in fields if _downward_field(path) is None]
    return used


def _downward_field(path: str) -> tuple[str, str | None] | None:
    """A downward API file's field as (metadata.labels or .annotations or another field, one key or None); None
    for a field this kubelet does not write to files."""
    match = re.fullmatch(r"(metadata\.(?:labels|annotations))\['([^']+)'\]", path)
    if match:
        return match[1], match[2]
    return (path, None) if path in _DOWNWARD_FILE_FIELDS else None


UNSHARE_LOST_SIGKILL = b"unshare: sigprocmask unblock failed: Invalid argument"
# A step of every container's setup (Pod.argv), in its PID 1's command line until it execs the container's command.
_SETUP_MARK = b"mount -t proc proc /proc"


@dataclass
class ContainerStatus:
    name: str
    restarts: int = 0
    ready: bool = False
    running: bool = False
    exit_codes: list[int] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # time.monotonic() of each start
    exits: list[float] = field(default_factory=list)  # and of each exit the kubelet saw
    log: Path = Path("/dev/null")
    collected_log: str = ""  # the log's last text, once the pod's files are gone

    def exited(self, code: int) -> None:
        """The kubelet saw the container's process end: it is neither running nor ready, with this exit code.

        A container whose PID 1 was killed (by the kubelet at its deadline, or from outside, as the OOM killer
        does) ended by SIGKILL, whatever `unshare --fork` made of it: util-linux 2.38's unshare, reporting its
        child's SIGKILL, fails to re-raise it and exits 1 with this message as its last word."""
        if code == 1 and self.log.read_bytes()[-200:].rstrip().endswith(UNSHARE_LOST_SIGKILL):
            code = -signal.SIGKILL
        self.running, self.ready = False, False
        self.exit_codes.append(code)
        self.exits.append(time.monotonic())


class Pod:
    """One pod: its volumes on disk, its containers as processes, its status as a kubelet would report it.

    It is created Pending and unscheduled; `start()` runs it once the scheduler has bound it to the node, and
    `terminate()` deletes it. Times are time.monotonic()."""

    def __init__(
        self,
        name: str,
        namespace: str,
        metadata: Manifest,
        spec: Manifest,
        *,
        owner: str,
        directory: Path,
        objects: Callable[[str, str], Manifest],
        dns: tuple[str, str],
        sandbox: Callable[[str], tuple[str, str]],
        claims: Callable[[str], Path] | None = None,
        tokens: Callable[[Pod, str | None, int], IssuedToken] | None = None,
        clock: Clock | None = None,
        service_env: Mapping[str, str] | None = None,
        private: Path | None = None,
        niceness: int = 0,
        cores: str | None = None,
    ) -> None:
        """`owner` is the uid of the object that created the pod (its ownerReference); `objects(kind, name)` returns
        a Secret or ConfigMap (KeyError while there is none); `dns` is (nameserver, cluster domain);
        `sandbox(name)` wires the pod's network namespace and returns its name and the pod's IP, as CNI does when
        the kubelet creates the pod's sandbox; `claims(name)` is the directory of a PersistentVolumeClaim's bound
        volume (KeyError, saying why, while the claim is missing, unbound or being deleted); `tokens(pod, audience,
        seconds)` is the API server's TokenRequest for the pod's ServiceAccount, bound to the pod (KeyError while
        it cannot issue one); `clock` is the cluster's wall clock; `service_env` the variables of the Services
        every container is told of; `private` the node's own files (the pods' and volumes' directories), which no
        container sees, as none sees the kubelet's directory on a real node; `niceness` the nice value its
        containers' processes run at, and what is exec'd in them, probes included (Cluster's); `cores` the CPUs
        they may run on (taskset's list, None: any), as on a node of their own."""
        self.name, self.namespace, self.spec, self.owner = name, namespace, spec, owner
        self.niceness, self.cores = niceness, cores
        self.labels: dict[str, str] = dict(metadata.get("labels", {}))
        self.annotations: dict[str, str] = dict(metadata.get("annotations", {}))
        self.uid = secrets.token_hex(8)
        self.directory = directory
        self._objects, self._dns, self._sandbox = objects, dns, sandbox
        self._claims = claims or _no_claims
        self._tokens = tokens or _no_tokens
        self.clock = clock or Clock()
        self._service_env = dict(service_env or {})
        self._private = private
        self._issued: dict[tuple[str | None, int], IssuedToken] = {}  # the token manager's cache
        self._sync_error = ""  # the last failure of a volume sync, reported once
        self._volume_sources: dict[str, Path] = {}  # per volume, the directory its mounts bind
        self._execs: dict[str, _Exec] = {}  # per running container, what an exec in it runs as
        self.node: str | None = None  # spec.nodeName: set when the scheduler binds it
        self.lost = False  # its node is gone: nothing runs, nothing reports, nothing confirms its deletion
        self.architecture = machine_architecture()  # its node's `kubernetes.io/arch`, set with `node`
        self.unschedulable: str | None = None  # the PodScheduled condition's message while it cannot be bound
        self.network_namespace, self.ip = "", ""
        self.created_at = time.monotonic()
        self.started_at = self.created_at  # status.startTime: when the kubelet took it up (creation until then)
        self.ready_since: float | None = None  # the Ready condition's last transition to true
        self.deleted_at: float | None = None  # metadata.deletionTimestamp
        self.phase_at_deletion: str | None = None
        self.finished_at: float | None = None
        self.statuses = {c["name"]: ContainerStatus(c["name"]) for c in self._all_containers()}
        self.phase = "Pending"
        self._kill_at: float | None = None
        self._stop = threading.Event()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ----- status -----
    @property
    def terminating(self) -> bool:
        return self.deleted_at is not None

    @property
    def ready(self) -> bool:
        """The Ready condition; a Terminating pod is no longer ready (Services and controllers drop it at once)."""
        main = self.spec["containers"]
        return not self.terminating and self.phase == "Running" and all(self.statuses[c["name"]].ready for c in main)

    @property
    def finished(self) -> bool:
        return self.phase in {"Succeeded", "Failed"}

    @property
    def active(self) -> bool:
        """What ReplicaSets and Jobs count: neither Terminating nor finished."""
        return not self.terminating and not self.finished

    def restarts(self) -> int:
        return sum(status.restarts for status in self.statuses.values())

    def logs(self, container: str) -> str:
        """The container's output, every start of it; kept once the pod is gone, as a log collector would, so a
        test can still say why a deleted pod's container ended as it did."""
        status = self.statuses[container]
        try:
            return status.log.read_text(errors="replace")
        except FileNotFoundError:
            return status.collected_log

    def events(self) -> str:
        """What `kubectl describe pod` would list under Events: failed mounts, kubelet errors."""
        events = self.directory / "events.txt"
        return events.read_text() if events.exists() else ""

    # ----- life cycle, as the cluster drives it -----
    def start(self) -> None:
        """Run the pod (once it is bound to the node): its sandbox, files and containers, in a thread of its own."""
        if self._stop.is_set() or self._thread is not None:
            return
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{self.name}", daemon=True)
        self._thread.start()

    @property
    def deletion_deadline(self) -> float | None:
        """metadata.deletionTimestamp (monotonic): when the pod's processes get SIGKILL if still there."""
        return self._kill_at

    def terminate(self, grace_seconds: float) -> None:
        """Deletion: Terminating from now on; SIGTERM goes to every container's main process at once and SIGKILL to
        whatever is left `grace_seconds` from now. A second deletion with a shorter grace brings the deadline
        forward, as `kubectl delete --grace-period` does. Returns at once."""
        now = time.monotonic()
        with self._lock:
            if self.deleted_at is None:
                self.deleted_at, self.phase_at_deletion = now, self.phase
            self._kill_at = min(now + grace_seconds, math.inf if self._kill_at is None else self._kill_at)
        self._stop.set()

    def lose(self) -> None:
        """Its node is lost (powered off, cut off): every process of the pod dies with it, no drain, and nothing
        reports on the pod any more: its phase stays as the kubelet last reported it, and its deletion, which the
        control plane asks for (the taint manager's eviction of a pod on an unreachable node), is never confirmed
        until the pod is force-deleted."""
        with self._lock:
            self.lost = True
        self.terminate(0.0)

    def wait_exited(self, timeout: float) -> bool:
        """Wait, up to `timeout`, until no process of the pod is left; True if none is."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def release_files(self) -> None:
        for status in self.statuses.values():
            status.collected_log = self.logs(status.name)
        for volume in self.spec.get("volumes", []):
            path = self.directory / "volumes" / volume["name"]
            if volume.get("emptyDir", {}).get("medium") == "Memory":
                subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    # ----- files -----
    def _all_containers(self) -> list[Manifest]:
        return list(self.spec.get("initContainers", [])) + list(self.spec["containers"])

    def _prepare_files(self) -> bool:
        """The pod's /etc files and volumes. Like a kubelet whose mount fails, it retries until every Secret and
        ConfigMap the pod mounts exists and every claim it mounts is bound; False if the pod is deleted first."""
        volumes = self.spec.get("volumes", [])
        while True:
            try:
                contents = {volume["name"]: self._volume_files(volume) for volume in volumes}
                break
            except KeyError as missing:
                why = missing.args[0] if isinstance(missing.args[0], str) else f"{missing} not found"
                self._event(f"FailedMount: {why}")
                if self._stop.wait(1):
                    return False
        nameserver, domain = self._dns
        etc = self.directory / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{self.ip}\t{self.name}\n")
        search = f"{self.namespace}.svc.{domain} svc.{domain} {domain}"
        (etc / "resolv.conf").write_text(f"search {search}\nnameserver {nameserver}\noptions ndots:5\n")
        for stand_in in {container_image(c).name: container_image(c) for c in self._all_containers()}.values():
            (etc / f"passwd.{stand_in.name}").write_text(stand_in.passwd(Path("/etc/passwd").read_text()))
            groups = stand_in.groups(Path("/etc/group").read_text())
            if groups is not None:
                (etc / f"group.{stand_in.name}").write_text(groups)
        for path in etc.iterdir():
            path.chmod(0o644)
        pod_context = self.spec.get("securityContext", {})
        for volume in volumes:
            self._prepare_volume(volume, contents[volume["name"]], pod_context)
        return True

    def _volume_files(self, volume: Manifest) -> dict[str, _File] | Path | None:
        """The files of a volume the kubelet fills (KeyError while an object or key it needs is missing), the
        directory of a claim's volume (KeyError unless it is bound and not being deleted), None for an emptyDir."""
        if "emptyDir" in volume:
            return None
        if "persistentVolumeClaim" in volume:
            return self._claims(volume["persistentVolumeClaim"]["claimName"])
        return self._filled_files(volume)

    def _filled_files(self, volume: Manifest) -> dict[str, _File]:
        """The files of a Secret, ConfigMap, downward API or projected volume, each with its mode, as the volume
        plugins collect them (a projected volume's sources in order, a later file replacing an earlier one)."""
        kind = next(kind for kind in ("projected", *_FILLED_KINDS) if kind in volume)
        default_mode: int = volume[kind].get("defaultMode", 0o644)
        files: dict[str, _File] = {}
        for source_kind, source in _sources(volume):
            files.update(self._source_files(source_kind, source, default_mode))
        return files

    def _source_files(self, kind: str, source: Manifest, default_mode: int) -> dict[str, _File]:
        if kind == "serviceAccountToken":
            # projected.go collectData: 0600 when the kubelet sets an owner (FsUser) or a group (fsGroup, whose
            # ownership change then makes it 0640), so only the pod's user can read it; else the volume's mode.
            fs_user = _fs_user(self.spec)
            private = fs_user is not None or "fsGroup" in self.spec.get("securityContext", {})
            token = self._token(source.get("audience") or None, source.get("expirationSeconds", DEFAULT_TOKEN_SECONDS))
            return {source["path"]: _File(token.encode(), 0o600 if private else default_mode, fs_user)}
        if kind == "downwardAPI":
            items = source.get("items", [])
            return {item["path"]: _File(self._downward(item["fieldRef"]["fieldPath"]), default_mode) for item in items}
        name: str = source["secretName"] if "secretName" in source else source["name"]
        try:
            found = self._objects("Secret" if kind == "secret" else "ConfigMap", name)
        except KeyError:
            if source.get("optional"):
                return {}
            raise
        return {path: _File(data, default_mode) for path, data in _projected(source, object_files(found)).items()}

    def _downward(self, path: str) -> bytes:
        """A downward API file: a field's value, or a map as `key="value"` lines, sorted (as fmt's %q quotes)."""
        field_path, key = _downward_field(path) or (path, None)
        if field_path in {"metadata.labels", "metadata.annotations"}:
            values = self.labels if field_path == "metadata.labels" else self.annotations
            if key is not None:
                return values.get(key, "").encode()
            lines = sorted(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in values.items())
            return "\n".join(lines).encode()
        return {"metadata.name": self.name, "metadata.namespace": self.namespace, "metadata.uid": self.uid}[
            field_path
        ].encode()

    def _token(self, audience: str | None, seconds: int) -> str:
        """The token manager: the cached token while it needs no refresh, else a new one; if the API server cannot
        issue one, the cached one while it has not expired (KeyError once it has, or without one)."""
        cached = self._issued.get((audience, seconds))
        if cached is not None and not cached.needs_refresh(self.clock.now(), random.uniform(0, TOKEN_JITTER)):
            return cached.token
        try:
            fresh = self._tokens(self, audience, seconds)
        except KeyError:
            if cached is None or self.clock.now() > cached.expires_at:
                raise
            return cached.token
        self._issued[(audience, seconds)] = fresh
        return fresh.token

    def _fill(self, volume: Manifest, files: dict[str, _File]) -> None:
        """Write a filled volume's files (only if they changed), then the fsGroup ownership the kubelet applies to
        these volumes, which it treats as read-only (group read, never group write)."""
        fs_group = self.spec.get("securityContext", {}).get("fsGroup")
        if write_atomically(self._volume_sources[volume["name"]], files) and fs_group is not None:
            set_volume_ownership(self._volume_sources[volume["name"]], fs_group, True, "Always")

    def _sync_volumes(self) -> None:
        """The kubelet's periodic sync of a running pod's filled volumes: changed objects, labels and annotations and
        refreshed tokens reach the files, swapped in at once; while an object is missing the files stay as they
        were (the kubelet reports the error and tries again)."""
        for volume in self.spec.get("volumes", []):
            if not any(kind in volume for kind in _FILLED_KINDS):
                continue
            try:
                files = self._filled_files(volume)
            except KeyError as missing:
                if str(missing) != self._sync_error:
                    self._sync_error = str(missing)
                    self._event(f"FailedMount: volume {volume['name']} not updated: {missing}")
                continue
            self._fill(volume, files)

    def _prepare_volume(self, volume: Manifest, files: dict[str, _File] | Path | None, pod_context: Manifest) -> None:
        fs_group: int | None = pod_context.get("fsGroup")
        if isinstance(files, Path):  # a claim's volume: mounted where it lies, its ownership managed
            self._volume_sources[volume["name"]] = files
            if fs_group is not None:
                read_only = bool(volume["persistentVolumeClaim"].get("readOnly"))
                set_volume_ownership(files, fs_group, read_only, pod_context.get("fsGroupChangePolicy", "Always"))
            return
        path = self.directory / "volumes" / volume["name"]
        self._volume_sources[volume["name"]] = path
        path.mkdir(parents=True)
        if files is None:
            empty_dir = volume["emptyDir"]
            if empty_dir.get("medium") == "Memory":
                size = int(quantity(empty_dir["sizeLimit"])) if "sizeLimit" in empty_dir else None
                options = f"size={size}" if size else "size=50%"
                subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
            path.chmod(0o1777)
            return
        # Each of these volumes wraps an emptyDir: on the node's disk for a ConfigMap (0777), in memory (a tmpfs'
        # root, 1777) for the others.
        path.chmod(0o777 if "configMap" in volume else 0o1777)
        self._fill(volume, files)

    def _event(self, message: str) -> None:
        """What `kubectl describe pod` would list under Events, kept in the pod's directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "events.txt").open("a") as events:
            events.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    # ----- one container -----
    def _declared_env(self, container: Manifest) -> dict[str, str]:
        """The container's own env, in order; `$(VAR)` in a value refers to the entries before it or to a Service's
        variables, never to the image's env (Kubernetes' rule)."""
        env: dict[str, str] = {}
        for item in container.get("env", []):
            source = item.get("valueFrom")
            value = expand(item.get("value", ""), {**self._service_env, **env})
            env[item["name"]] = self._value_from(container, source) if source else value
        return env

    def _value_from(self, container: Manifest, source: Manifest) -> str:
        if "fieldRef" in source:
            fields: dict[str, str] = {
                "metadata.name": self.name,
                "metadata.namespace": self.namespace,
                "status.podIP": self.ip,
                "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            }
            path: str = source["fieldRef"]["fieldPath"]
            if path.startswith("metadata.labels['"):
                return self.labels.get(path[len("metadata.labels['") : -2], "")
            if path not in fields:
                raise UnsupportedError(f"fieldRef {path}")
            return fields[path]
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            section, resource = ref["resource"].split(".", 1)
            amount = quantity(container["resources"][section][resource])
            return str(math.ceil(amount / quantity(ref.get("divisor", "1"))))
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return object_files(self._objects("Secret", ref["name"]))[ref["key"]].decode()
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return object_files(self._objects("ConfigMap", ref["name"]))[ref["key"]].decode()
        raise UnsupportedError(f"valueFrom {sorted(source)}")

    def argv(self, container: Manifest, trees: list[image.Mount]) -> list[str]:
        """The command that starts the container over its image's `trees` for this start (Image.start):
        namespaces, mounts, working directory and identity as the runtime sets them up. Records what an exec in
        the container runs as."""
        if not container.get("command"):
            raise UnsupportedError(f"container {container['name']}: no command (the image's entrypoint is not known)")
        stand_in = container_image(container)
        declared = self._declared_env(container)
        command = [expand(word, declared) for word in container["command"] + container.get("args", [])]
        env = {**stand_in.env, "HOSTNAME": self.name, **self._service_env, **declared}
        pod_context = self.spec.get("securityContext", {})
        context = {**pod_context, **container.get("securityContext", {})}
        etc = self.directory / "etc"
        files = {"hosts": "hosts", "resolv.conf": "resolv.conf", "passwd": f"passwd.{stand_in.name}"}
        if (etc / f"group.{stand_in.name}").exists():
            files["group"] = f"group.{stand_in.name}"
        setup = [
            "set -e",
            f"hostname {shlex.quote(self.name)}",
            *(f"mount --bind {shlex.quote(str(etc / source))} /etc/{name}" for name, source in files.items()),
            _SETUP_MARK.decode(),
        ]
        # Parents before children, as containerd orders a container's mounts; each target is made where it lies.
        mounts: list[tuple[PurePosixPath, Path]] = []
        shared = {tree.source for tree in trees if tree.kind == "shared"}
        for tree in trees:
            _host_path(tree.target, mounts, shared - {tree.source}).mkdir(parents=True, exist_ok=True)
            mounts.append((tree.target, tree.source))
            setup.append(f"mount --bind {shlex.quote(str(tree.source))} {shlex.quote(str(tree.target))}")
            if tree.kind == "shared":
                setup.append(f"mount -o remount,bind,ro {shlex.quote(str(tree.target))}")
        for mount in sorted(container.get("volumeMounts", []), key=lambda m: len(PurePosixPath(m["mountPath"]).parts)):
            target, source = PurePosixPath(mount["mountPath"]), self._volume_sources[mount["name"]]
            _host_path(target, mounts, shared).mkdir(parents=True, exist_ok=True)
            mounts.append((target, source))
            setup.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}")
            if mount.get("readOnly") or self._read_only_volume(mount["name"]):
                setup.append(f"mount -o remount,bind,ro {shlex.quote(str(target))}")
        if self._private is not None:  # once every mount from it is made
            private = shlex.quote(str(self._private))
            setup.append(f"if [ -d {private} ]; then mount -t tmpfs -o ro,size=4k,mode=0755 private {private}; fi")
        # The image's files, its layer included, are read-only last: a bind mount made afterwards would inherit
        # that from the tree its source lies in.
        if context.get("readOnlyRootFilesystem"):
            setup.append("mount -o remount,bind,ro /")
            setup += [f"mount -o remount,bind,ro {shlex.quote(str(t.target))}" for t in trees if t.kind == "layer"]
        workdir = PurePosixPath(container.get("workingDir", str(stand_in.workdir)))
        _host_path(workdir, mounts, shared).mkdir(parents=True, exist_ok=True)
        setup.append(f"ulimit -Hn {RUNTIME_NOFILE[1]} 2>/dev/null || true")
        setup.append(f"ulimit -Sn {RUNTIME_NOFILE[0]}")
        setup.append(f"cd {shlex.quote(str(workdir))}")
        identity = self._identity(context, pod_context, stand_in)
        process = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *command]
        setup.append("exec " + shlex.join(identity + process))
        with self._lock:
            self._execs[container["name"]] = _Exec(identity, env, workdir)
        return [
            "ip", "netns", "exec", self.network_namespace,
            "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--propagation", "private",
            "/bin/sh", "-c", "; ".join(setup),
        ]  # fmt: skip

    def exec_argv(self, container: str, command: list[str]) -> list[str] | None:
        """`command` run in the running container as the runtime's ExecSync runs it (see the module's docstring);
        None when the container is not running (not started yet, as `_start` counts it, or exited)."""
        with self._lock:
            process, spec = self._processes.get(container), self._execs.get(container)
        main = _main_pids(process) if process is not None and process.poll() is None else []
        if spec is None or not main:
            return None
        env = [f"{name}={value}" for name, value in spec.env.items()]
        return [
            *self._placement(), "nsenter", f"--target={main[0]}", "--mount", "--uts", "--pid", "--net", "--",
            *spec.identity, "env", "-i", f"--chdir={spec.workdir}", *env, *command,
        ]  # fmt: skip

    def _placement(self) -> list[str]:
        """What a container's processes, and what is exec'd in them, start under: their nice value and their
        CPUs."""
        niced = ["nice", "-n", str(self.niceness)] if self.niceness else []
        return niced + (["taskset", "--cpu-list", self.cores] if self.cores else [])

    def _read_only_volume(self, name: str) -> bool:
        """A claim mounted `readOnly` in the pod's volume is read-only in every container; so is every volume the
        kubelet fills, always."""
        volume = next(v for v in self.spec.get("volumes", []) if v["name"] == name)
        return bool(volume.get("persistentVolumeClaim", {}).get("readOnly")) or any(k in volume for k in _FILLED_KINDS)

    @staticmethod
    def _identity(context: Manifest, pod_context: Manifest, stand_in: image.Image) -> list[str]:
        """setpriv's arguments: the securityContext's user and group, else the image's (whose primary group the
        runtime takes from the image's /etc/passwd), with fsGroup and supplementalGroups, no-new-privileges and the
        capability bounding set: the runtime's default set, less what the container drops."""
        if context.get("privileged") or context.get("capabilities", {}).get("add"):
            raise UnsupportedError("privileged containers and added capabilities")
        user = context.get("runAsUser", stand_in.user)
        group = context.get("runAsGroup", stand_in.group if user == stand_in.user else 0)
        if context.get("runAsNonRoot") and user == 0:
            raise RuntimeError("CreateContainerConfigError: container has runAsNonRoot and image will run as root")
        groups = pod_context.get("supplementalGroups", [])
        if "fsGroup" in pod_context:
            groups = [pod_context["fsGroup"], *groups]
        identity = ["setpriv", f"--reuid={user}", f"--regid={group}"]
        identity += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        if context.get("allowPrivilegeEscalation") is False:
            identity.append("--no-new-privs")
        dropped = {name.lower().removeprefix("cap_") for name in context.get("capabilities", {}).get("drop", [])}
        kept = [] if "all" in dropped else [name for name in RUNTIME_CAPABILITIES if name not in dropped]
        identity += ["--inh-caps=-all", "--bounding-set=-all" + "".join(f",+{name}" for name in kept)]
        return identity

    def _start(self, container: Manifest) -> subprocess.Popen[bytes]:
        status = self.statuses[container["name"]]
        trees = container_image(container).start(self.directory / "rootfs" / container["name"])
        argv = self.argv(container, trees)
        status.log = self.directory / f"{container['name']}.log"
        with status.log.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            process = subprocess.Popen([*self._placement(), *argv], stdout=log, stderr=subprocess.STDOUT)
        # A runtime's container has started once its own command runs: until this one's PID 1 has left the setup of
        # its mounts and the wrappers that set its identity and environment, it is not running (nor Ready without a
        # probe, nor open to exec), as a runtime's StartContainer has not returned; and a SIGTERM its stop sends now
        # reaches its command (the setup's PID 1 ignored it). The kubelet waits on StartContainer up to its
        # --runtime-request-timeout, 2 minutes by default (a loaded machine once took over 10 s here).
        deadline = time.monotonic() + 120
        while process.poll() is None and not self._stop.is_set() and time.monotonic() < deadline:
            main = _main_pids(process)
            if main and not _in_setup(main[0]):
                break
            time.sleep(0.02)
        status.running = True
        status.starts.append(time.monotonic())
        with self._lock:
            self._processes[container["name"]] = process
        return process

    def _stop_containers(self, names: list[str], deadline: Callable[[], float]) -> dict[str, int]:
        """As a kubelet stops containers: SIGTERM to each one's main process at once, SIGKILL to whatever is left at
        `deadline()` (read again while waiting, so a deletion with a shorter grace brings it forward); returns
        their exit codes."""
        with self._lock:
            processes = {name: self._processes.pop(name) for name in names if name in self._processes}
        signalled: set[str] = set()
        while alive := {name: p for name, p in processes.items() if p.poll() is None}:
            for name in alive.keys() - signalled:
                if _signal_main(alive[name], signal.SIGTERM):
                    signalled.add(name)
            if time.monotonic() >= deadline():
                for process in alive.values():
                    # Killing its PID 1 takes the container's whole PID namespace down; unshare's --kill-child
                    # covers only a container not yet forked (a change of user clears it from the forked one).
                    _signal_main(process, signal.SIGKILL)
                    process.kill()
                for process in alive.values():
                    process.wait(timeout=30)
                break
            time.sleep(0.05)
        return {name: process.wait() for name, process in processes.items()}

    def _wait(self, process: subprocess.Popen[bytes]) -> int | None:
        """The exit code of `process`, or None if the pod is deleted first (its termination then stops it)."""
        while process.poll() is None:
            if self._stop.wait(0.1):
                return None
        return process.returncode

    # ----- the pod's life -----
    def _run(self) -> None:
        try:
            self.network_namespace, self.ip = self._sandbox(self.name)
            if not self._prepare_files() or not self._pull_images():
                return
            restart = self.spec.get("restartPolicy", "Always")
            for container in self.spec.get("initContainers", []):
                if not self._run_to_completion(container, retry=restart != "Never"):
                    return
            if not self._stop.is_set():
                self.phase = "Running"
                self._supervise(self.spec["containers"], restart)
        except Exception as error:  # noqa: BLE001 - a kubelet reports, it does not crash
            self.phase = "Failed"
            self._event(f"kubelet error: {error!r}")
        finally:
            self._finish()

    def _finish(self) -> None:
        """Stop what still runs (by the deletion deadline, or the grace period when the kubelet itself gave up)
        and settle the final phase: Succeeded only if every main container last exited 0."""
        grace_end = time.monotonic() + self.spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        running = [name for name, status in self.statuses.items() if status.running]
        codes = self._stop_containers(running, lambda: grace_end if self._kill_at is None else self._kill_at)
        for name, code in codes.items():
            self.statuses[name].exited(code)
        if not self.finished and not self.lost:
            last = [self.statuses[c["name"]].exit_codes[-1:] for c in self.spec["containers"]]
            self.phase = "Succeeded" if all(exit_code == [0] for exit_code in last) else "Failed"
        self.ready_since, self.finished_at = None, time.monotonic()

    def _pull_images(self) -> bool:
        """Pull every container's image before the pod's containers start: one the registry does not hold for the
        node's architecture fails, as containerd refuses a manifest of another platform, and the kubelet tries
        again with back-off (ErrImagePull, then ImagePullBackOff) while the pod stays Pending; False if the pod is
        deleted first."""
        backoff = BACKOFF_START
        while wrong := [c["image"] for c in self._all_containers() if self.architecture not in
                        container_image(c).architectures]:  # fmt: skip
            for reference in dict.fromkeys(wrong):
                self._event(
                    f'Failed: Failed to pull image "{reference}": no match for platform in manifest: not found '
                    f"(the node is linux/{self.architecture}); ErrImagePull"
                )
            if self._stop.wait(backoff):
                return False
            backoff = min(backoff * 2, BACKOFF_MAX)
        return True

    def _run_to_completion(self, container: Manifest, retry: bool) -> bool:
        status, backoff = self.statuses[container["name"]], BACKOFF_START
        while not self._stop.is_set():
            code = self._wait(self._start(container))
            if code is None:
                return False
            with self._lock:
                self._processes.pop(container["name"], None)
            status.exited(code)
            if code == 0:
                return True
            if not retry:
                self.phase = "Failed"
                return False
            status.restarts += 1
            if self._stop.wait(backoff):
                return False
            backoff = min(backoff * 2, BACKOFF_MAX)
        return False

    def _supervise(self, containers: list[Manifest], restart: str) -> None:
        processes = {c["name"]: self._start(c) for c in containers}
        probes = {c["name"]: _Probes(self, c) for c in containers}
        backoff = dict.fromkeys(processes, BACKOFF_START)
        next_start: dict[str, float] = {}
        next_sync = time.monotonic() + VOLUME_SYNC_SECONDS
        while not self._stop.wait(0.2):
            if time.monotonic() >= next_sync:
                self._sync_volumes()
                next_sync = time.monotonic() + VOLUME_SYNC_SECONDS
            for container in containers:
                name, status = container["name"], self.statuses[container["name"]]
                process = processes[name]
                if status.running and process.poll() is None:
                    if not probes[name].check():  # liveness failed: kill, and restart as after a crash
                        self._stop_containers([name], self._liveness_deadline(container))
                    continue
                if status.running:  # it just exited
                    with self._lock:
                        self._processes.pop(name, None)
                    status.exited(process.wait())
                    if restart == "Never" or (restart == "OnFailure" and process.returncode == 0):
                        continue
                    next_start[name] = time.monotonic() + backoff[name]
                    backoff[name] = min(backoff[name] * 2, BACKOFF_MAX)
                elif name in next_start and time.monotonic() >= next_start[name]:
                    del next_start[name]
                    status.restarts += 1
                    processes[name], probes[name] = self._start(container), _Probes(self, container)
            self._note_readiness()
            if restart != "Always" and not any(s.running for n, s in self.statuses.items() if n in processes):
                codes = [self.statuses[c["name"]].exit_codes[-1] for c in containers]
                self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
                return

    def _liveness_deadline(self, container: Manifest) -> Callable[[], float]:
        """A liveness kill's SIGKILL deadline: the probe's own grace period, else the pod's, or sooner if the pod
        is deleted meanwhile."""
        probe_grace = container["livenessProbe"].get("terminationGracePeriodSeconds")
        grace = (
            self.spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
            if probe_grace is None
            else probe_grace
        )
        end = time.monotonic() + grace
        return lambda: min(end, math.inf if self._kill_at is None else self._kill_at)

    def _note_readiness(self) -> None:
        """Keep the Ready condition's transition time, which a ReplicaSet weighs when it picks pods to delete."""
        ready = self.ready
        if ready and self.ready_since is None:
            self.ready_since = time.monotonic()
        elif not ready:
            self.ready_since = None


def object_files(found: Manifest) -> dict[str, bytes]:
    """A Secret's or ConfigMap's keys as file contents: its `data` (base64 in a Secret) and `binaryData` (a
    ConfigMap's, base64), and a Secret's `stringData`, which the API server merges into `data` on writing (it wins
    over a key of `data`)."""
    encoded, plain = ("data", "stringData") if found["kind"] == "Secret" else ("binaryData", "data")
    files = {key: value.encode() for key, value in found.get(plain, {}).items()}
    return {key: base64.b64decode(value) for key, value in found.get(encoded, {}).items()} | files


def _projected(source: Manifest, files: dict[str, bytes]) -> dict[str, bytes]:
    """The files a Secret or ConfigMap source shows: every key, or only the listed `items`, each at its `path`. A
    listed key the object lacks fails the mount (KeyError: retried, as the kubelet retries a failed mount), unless
    the source is optional."""
    if "items" not in source:
        return files
    missing = [item["key"] for item in source["items"] if item["key"] not in files]
    if missing and not source.get("optional"):
        raise KeyError(f"keys {missing} of the volume's items")
    return {item["path"]: files[item["key"]] for item in source["items"] if item["key"] in files}


@dataclass(frozen=True)
class _File:
    """One file of a volume the kubelet fills: its content, mode and, for a token, its owner (FsUser)."""

    data: bytes
    mode: int
    owner: int | None = None


def write_atomically(directory: Path, files: Mapping[str, _File]) -> bool:
    """The kubelet's AtomicWriter: the files lie in a timestamped directory (0755) that the `..data` symlink points
    to, and each visible name is a symlink through `..data`; a new payload goes into a new directory and `..data`
    is swapped over to it in one rename, so a reader sees either every old file or every new one. Nothing is
    written while the same files hold the same contents (as the AtomicWriter compares them). True if it wrote."""
    data = directory / "..data"
    current = directory / os.readlink(data) if data.is_symlink() else None
    same_names = current is not None and sorted(os.listdir(current)) == sorted(files)
    if same_names and all((directory / "..data" / name).read_bytes() == file.data for name, file in files.items()):
        return False
    fresh = Path(tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()), dir=directory))
    fresh.chmod(0o755)
    for name, file in files.items():
        (fresh / name).write_bytes(file.data)
        (fresh / name).chmod(file.mode)
        if file.owner is not None:
            os.chown(fresh / name, file.owner, -1)
    (directory / "..data_tmp").symlink_to(fresh.name)
    os.rename(directory / "..data_tmp", data)
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    for entry in list(directory.iterdir()):
        if not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    if current is not None:
        shutil.rmtree(current)
    return True


def _fs_user(spec: Manifest) -> int | None:
    """The kubelet's FsUserFrom: the user every container (init containers included) runs as, where each sets one
    (its own runAsUser or the pod's) and they agree; None otherwise (an image's own user does not count)."""
    pod_user = spec.get("securityContext", {}).get("runAsUser")
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    users = {container.get("securityContext", {}).get("runAsUser", pod_user) for container in containers}
    return None if len(users) != 1 or None in users else users.pop()


def _host_path(target: PurePosixPath, mounts: list[tuple[PurePosixPath, Path]], shared: set[Path]) -> Path:
    """Where a mount target or working directory lies on this machine, given the mounts made before it (the last
    one that covers it wins): inside an image's tree, a volume, or else this machine's own tree, where a missing
    one is created and left in place (removing it would detach it from the pods of any other rehearsal running
    at the same time). Inside a `shared` tree (the stand-in's one copy, e.g. the Ray image's conda) it is
    refused."""
    for point, source in reversed(mounts):
        if target == point or point in target.parents:
            if source in shared:
                raise UnsupportedError(f"{target}: a mount target or working directory inside the image's {point}")
            return source / target.relative_to(point)
    return Path(target)


def _in_setup(pid: int) -> bool:
    """Whether a container's PID 1 still runs the setup of its mounts, or the setpriv and `env -i` it then execs to
    set the container's identity and environment (Pod.argv), not yet its own command: a test that looked for the
    command's process as soon as the pod ran once found `env` in its place."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _SETUP_MARK in command_line or command_line.startswith((b"setpriv\0", b"env\0-i\0"))


def _main_pids(process: subprocess.Popen[bytes]) -> list[int]:
    """A container's main process, its PID 1 (`unshare --fork` is its parent); none before it is forked."""
    try:
        return [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    except OSError:
        return []


def _signal_main(process: subprocess.Popen[bytes], signum: int) -> bool:
    """Signal a container's main process, as the runtime would. False if it has not been forked yet."""
    main = _main_pids(process)
    for pid in main:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
    return bool(main)


def _no_claims(name: str) -> Path:
    raise KeyError(f'persistentvolumeclaim "{name}" not found')


def _no_tokens(pod: Pod, audience: str | None, seconds: int) -> IssuedToken:
    raise KeyError(f"pod {pod.name}: no API server issues tokens here")


def set_volume_ownership(root: Path, fs_group: int, read_only: bool, policy: str) -> None:
    """The kubelet's SetVolumeOwnership for a volume that supports ownership management: every file and directory
    in it gets fsGroup as its group, group read-write (read-only on a read-only volume) and, for directories,
    group search and setgid; symlinks get the group only. With fsGroupChangePolicy OnRootMismatch nothing is
    walked when the volume's root already has fsGroup and those permissions."""
    mask = _OWNERSHIP_RO if read_only else _OWNERSHIP_RW
    if policy not in {"Always", "OnRootMismatch"}:
        raise UnsupportedError(f"fsGroupChangePolicy {policy}")
    top, wanted = root.lstat(), mask | _OWNERSHIP_DIR
    if policy == "OnRootMismatch" and top.st_gid == fs_group and top.st_mode & wanted == wanted:
        return

    def change(path: Path) -> None:
        info = path.lstat()
        os.lchown(path, -1, fs_group)
        if stat.S_ISLNK(info.st_mode):
            return
        bits = mask | (_OWNERSHIP_DIR if stat.S_ISDIR(info.st_mode) else 0)
        path.chmod(stat.S_IMODE(info.st_mode) | bits)

    change(root)
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            change(Path(directory) / name)


@dataclass(frozen=True)
class _Exec:
    """What a process exec'd in a running container runs as: the container's identity (setpriv's arguments), env
    and working directory, as the runtime copies them from the container's own process."""

    identity: list[str]
    env: dict[str, str]
    workdir: PurePosixPath


class _Probes:
    """Readiness and liveness probes (httpGet, tcpSocket, exec) of one running container, on Kubernetes'
    schedule."""

    def __init__(self, pod: Pod, container: Manifest) -> None:
        self.pod, self.container = pod, container
        self.status = pod.statuses[container["name"]]
        self.started = time.monotonic()
        self.next_due = {kind: self.started + container.get(kind, {}).get("initialDelaySeconds", 0) for kind in
                         ("readinessProbe", "livenessProbe") if kind in container}  # fmt: skip
        self.failures = dict.fromkeys(self.next_due, 0)
        if "readinessProbe" not in container:
            self.status.ready = True

    def check(self) -> bool:
        """Run the probes that are due; False once liveness has failed failureThreshold times in a row."""
        now = time.monotonic()
        for kind, due in self.next_due.items():
            if now < due:
                continue
            probe = self.container[kind]
            self.next_due[kind] = now + probe.get("periodSeconds", 10)
            failure = self._run(probe)
            if failure is not None:
                self.pod._event(f"Unhealthy: {self.container['name']}: {kind} failed: {failure}")
            self.failures[kind] = 0 if failure is None else self.failures[kind] + 1
            if kind == "readinessProbe":
                if failure is None:
                    self.status.ready = True
                elif self.failures[kind] >= probe.get("failureThreshold", 3):
                    self.status.ready = False
            elif self.failures[kind] >= probe.get("failureThreshold", 3):
                return False
        return True

    def _run(self, probe: Manifest) -> str | None:
        """One probe: None if it passed, else why it failed."""
        timeout = probe.get("timeoutSeconds", 1)
        if "httpGet" in probe:
            return self._http_get(probe["httpGet"], timeout)
        if "tcpSocket" in probe:
            return self._tcp_socket(probe["tcpSocket"], timeout)
        if "exec" in probe:
            return self._exec(probe["exec"], timeout)
        raise UnsupportedError(f"probe {sorted(probe)}: only {', '.join(_PROBE_HANDLERS)} are emulated")

    def _port(self, port: int | str) -> int:
        """A probe's port: a number, or the name of one of the container's ports."""
        if isinstance(port, str):
            return int(next(p["containerPort"] for p in self.container.get("ports", []) if p.get("name") == port))
        return port

    def _http_get(self, get: Manifest, timeout: float) -> str | None:
        url = f"http://{self.pod.ip}:{self._port(get['port'])}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return None if 200 <= int(response.status) < 400 else f"HTTP {response.status}"
        except OSError as error:
            return f"{url}: {error}"

    def _tcp_socket(self, tcp: Manifest, timeout: float) -> str | None:
        address = (tcp.get("host", self.pod.ip), self._port(tcp["port"]))
        try:
            with socket.create_connection(address, timeout=timeout):
                return None
        except OSError as error:
            return f"dial tcp {address[0]}:{address[1]}: {error}"

    def _exec(self, handler: Manifest, timeout: float) -> str | None:
        """The command in the container, as ExecSync runs it; `$(VAR)` expands to the value written in the
        container's env (empty for one from valueFrom), as the kubelet's ExpandContainerCommandOnlyStatic does."""
        static = {item["name"]: item.get("value", "") for item in self.container.get("env", [])}
        command = [expand(word, static) for word in handler["command"]]
        argv = self.pod.exec_argv(self.container["name"], command)
        if argv is None:
            return "the container is not running"
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the command and everything it started, in the container too
            process.communicate()
            return f"command timed out after {timeout}s"
        if process.returncode != 0:
            return f"exit code {process.returncode}: {output.decode(errors='replace').strip()[-500:]}"
        return None

"""A small kubelet: runs one pod's containers from its manifest, as real processes.

Everything comes from the pod spec, nothing from knowledge of this project: each container's command and args
with Kubernetes' `$(VAR)` expansion, its env (values, fieldRef, resourceFieldRef, secretKeyRef,
configMapKeyRef), its volume mounts (emptyDir, memory-backed emptyDir with its size limit, Secret and
ConfigMap files), its securityContext (user, group, fsGroup, no-new-privileges, dropped capabilities, read-only
root filesystem), init containers before the main ones, httpGet readiness and liveness probes, and the
restart policy with Kubernetes' crash-loop back-off.

Each container runs in the pod's network namespace and in its own mount, UTS and PID namespaces, so it has
the pod's hostname and files, and when its main process exits every process it started dies with it.
The "image" is this machine's own filesystem, with Ray from the test environment on PATH.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.settings import parse_quantity

Manifest = dict[str, Any]

# The stand-in for the Ray image: a virtualenv with only ray[default] at the image's version, which
# scripts/test builds outside /tmp (pods mount their own /tmp over whatever is there). Its bin is the image's PATH.
IMAGE_ROOT = Path(os.environ.get("RAY_REHEARSAL_IMAGE", "/opt/ray-cluster-rehearsal/image"))
IMAGE_PATH = f"{IMAGE_ROOT}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
# containerd 2's default open-files limit for containers: soft 1024, hard 524288 (or what this machine allows).
RUNTIME_NOFILE = (1024, 524288)
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0
_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class UnsupportedError(RuntimeError):
    """The manifest uses something this kubelet does not emulate: fail loudly rather than run it wrongly."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion: `$(VAR)` becomes VAR's value if it is defined, `$$` becomes `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REFERENCE.sub(replace, text)


@dataclass
class ContainerStatus:
    name: str
    restarts: int = 0
    ready: bool = False
    running: bool = False
    exit_codes: list[int] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # time.monotonic() of each start
    log: Path = Path("/dev/null")


class Pod:
    """One pod: its volumes on disk, its containers as processes, its status as a kubelet would report it."""

    def __init__(
        self,
        name: str,
        namespace: str,
        labels: Mapping[str, str],
        spec: Manifest,
        *,
        network_namespace: str,
        ip: str,
        directory: Path,
        image_home: Path,
        objects: Callable[[str, str], Manifest],
        dns: tuple[str, str],
        mountpoint: Callable[[str], None],
    ) -> None:
        """`objects(kind, name)` returns a Secret or ConfigMap; `dns` is (nameserver, cluster domain);
        `mountpoint(path)` makes sure a mount target exists in the "image", as a container runtime does."""
        self.name, self.namespace, self.labels, self.spec = name, namespace, dict(labels), spec
        self.network_namespace, self.ip, self.directory, self.image_home = network_namespace, ip, directory, image_home
        self._objects = objects
        self.statuses = {c["name"]: ContainerStatus(c["name"]) for c in self._all_containers()}
        self.phase = "Pending"
        self.started_at = time.monotonic()
        self._stop = threading.Event()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._prepare_files(*dns)
        for container in self._all_containers():
            for mount in container.get("volumeMounts", []):
                mountpoint(mount["mountPath"])
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{name}", daemon=True)
        self._thread.start()

    # ----- status -----
    @property
    def ready(self) -> bool:
        return self.phase == "Running" and all(self.statuses[c["name"]].ready for c in self.spec["containers"])

    @property
    def finished(self) -> bool:
        return self.phase in {"Succeeded", "Failed"}

    def restarts(self) -> int:
        return sum(status.restarts for status in self.statuses.values())

    def logs(self, container: str) -> str:
        return self.statuses[container].log.read_text(errors="replace")

    # ----- files -----
    def _all_containers(self) -> list[Manifest]:
        return list(self.spec.get("initContainers", [])) + list(self.spec["containers"])

    def _prepare_files(self, nameserver: str, domain: str) -> None:
        etc = self.directory / "etc"
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{self.ip}\t{self.name}\n")
        search = f"{self.namespace}.svc.{domain} svc.{domain} {domain}"
        (etc / "resolv.conf").write_text(f"search {search}\nnameserver {nameserver}\noptions ndots:5\n")
        for path in etc.iterdir():
            path.chmod(0o644)
        fs_group = self.spec.get("securityContext", {}).get("fsGroup")
        for volume in self.spec.get("volumes", []):
            self._prepare_volume(volume, self.directory / "volumes" / volume["name"], fs_group)

    def _prepare_volume(self, volume: Manifest, path: Path, fs_group: int | None) -> None:
        path.mkdir(parents=True)
        if "emptyDir" in volume:
            empty_dir = volume["emptyDir"]
            if empty_dir.get("medium") == "Memory":
                size = int(parse_quantity("sizeLimit", empty_dir["sizeLimit"])) if "sizeLimit" in empty_dir else None
                options = f"size={size}" if size else "size=50%"
                subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
            path.chmod(0o1777)
            return
        if "secret" in volume:
            source = volume["secret"]
            secret = self._objects("Secret", source["secretName"])
            files = {k: v.encode() for k, v in secret.get("stringData", {}).items()}
            files |= {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
        elif "configMap" in volume:
            source = volume["configMap"]
            files = {k: v.encode() for k, v in self._objects("ConfigMap", source["name"]).get("data", {}).items()}
        else:
            raise UnsupportedError(f"volume {volume['name']}: only emptyDir, secret and configMap are emulated")
        mode = source.get("defaultMode", 0o644)
        for key, content in files.items():
            file = path / key
            file.write_bytes(content)
            file.chmod(mode)
            if fs_group is not None:
                os.chown(file, 0, fs_group)
        path.chmod(0o755)

    def release_files(self) -> None:
        for volume in self.spec.get("volumes", []):
            path = self.directory / "volumes" / volume["name"]
            if volume.get("emptyDir", {}).get("medium") == "Memory":
                subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    # ----- one container -----
    def environment(self, container: Manifest) -> dict[str, str]:
        env = {"PATH": IMAGE_PATH, "HOME": str(self.image_home), "HOSTNAME": self.name}
        for item in container.get("env", []):
            env[item["name"]] = (
                expand(item["value"], env) if "value" in item else self._value_from(container, item["valueFrom"])
            )
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
            amount = parse_quantity(ref["resource"], container["resources"][section][resource])
            divisor = parse_quantity("divisor", str(ref.get("divisor", "1")))
            return str(math.ceil(amount / divisor))
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = self._objects("Secret", ref["name"])
            if ref["key"] in secret.get("stringData", {}):
                return str(secret["stringData"][ref["key"]])
            return base64.b64decode(secret["data"][ref["key"]]).decode()
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return str(self._objects("ConfigMap", ref["name"])["data"][ref["key"]])
        raise UnsupportedError(f"valueFrom {sorted(source)}")

    def argv(self, container: Manifest) -> list[str]:
        """The command that starts the container: namespaces, mounts and identity as the runtime sets them up."""
        env = self.environment(container)
        command = [expand(word, env) for word in container.get("command", []) + container.get("args", [])]
        if not container.get("command"):
            raise UnsupportedError(f"container {container['name']}: no command (the image's entrypoint is not known)")
        volumes = {v["name"]: self.directory / "volumes" / v["name"] for v in self.spec.get("volumes", [])}
        setup = [
            f"hostname {shlex.quote(self.name)}",
            f"mount --bind {self.directory}/etc/hosts /etc/hosts",
            f"mount --bind {self.directory}/etc/resolv.conf /etc/resolv.conf",
            "mount -t proc proc /proc",
        ]
        for mount in container.get("volumeMounts", []):
            target = shlex.quote(mount["mountPath"])
            setup.append(f"mount --bind {volumes[mount['name']]} {target}")
            if mount.get("readOnly"):
                setup.append(f"mount -o remount,bind,ro {target}")
        pod_context = self.spec.get("securityContext", {})
        context = {**pod_context, **container.get("securityContext", {})}
        if context.get("readOnlyRootFilesystem"):
            setup.append("mount -o remount,bind,ro /")
        setup.append(f"ulimit -Hn {RUNTIME_NOFILE[1]} 2>/dev/null; ulimit -Sn {RUNTIME_NOFILE[0]}")
        setup.append(f"cd {shlex.quote(str(self.image_home))}")
        identity = self._identity(context, pod_context)
        process = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *command]
        setup.append("exec " + shlex.join(identity + process))
        return [
            "ip", "netns", "exec", self.network_namespace,
            "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--propagation", "private",
            "/bin/sh", "-c", "; ".join(setup),
        ]  # fmt: skip

    @staticmethod
    def _identity(context: Manifest, pod_context: Manifest) -> list[str]:
        if context.get("privileged") or context.get("capabilities", {}).get("add"):
            raise UnsupportedError("privileged containers and added capabilities")
        user = context.get("runAsUser")
        if context.get("runAsNonRoot") and not user:
            raise UnsupportedError("runAsNonRoot without runAsUser: the image's user is not known")
        identity = ["setpriv"]
        if user is not None:
            groups = [pod_context["fsGroup"]] if "fsGroup" in pod_context else []
            groups += pod_context.get("supplementalGroups", [])
            identity += [f"--reuid={user}", f"--regid={context.get('runAsGroup', 0)}"]
            identity += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        if context.get("allowPrivilegeEscalation") is False:
            identity.append("--no-new-privs")
        if "ALL" in context.get("capabilities", {}).get("drop", []):
            identity += ["--inh-caps=-all", "--bounding-set=-all"]
        return identity if len(identity) > 1 else []

    def _start(self, container: Manifest) -> subprocess.Popen[bytes]:
        status = self.statuses[container["name"]]
        status.log = self.directory / f"{container['name']}.log"
        with status.log.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            process = subprocess.Popen(self.argv(container), stdout=log, stderr=subprocess.STDOUT)
        status.running = True
        status.starts.append(time.monotonic())
        with self._lock:
            self._processes[container["name"]] = process
        return process

    def _stop_container(self, name: str) -> None:
        """As a kubelet stops a container: SIGTERM to its main process, SIGKILL after the grace period."""
        with self._lock:
            process = self._processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        # `unshare --fork` waits for the container's PID 1; signal that one, as the runtime would.
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        main = children.read_text().split() if children.exists() else []
        for pid in main:
            os.kill(int(pid), signal.SIGTERM)
        try:
            process.wait(timeout=self.spec.get("terminationGracePeriodSeconds", 30))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)  # unshare --kill-child takes the whole PID namespace down
            process.wait(timeout=30)

    # ----- the pod's life -----
    def _run(self) -> None:
        try:
            restart = self.spec.get("restartPolicy", "Always")
            for container in self.spec.get("initContainers", []):
                if not self._run_to_completion(container, retry=restart != "Never"):
                    self.phase = "Failed"
                    return
            self.phase = "Running"
            self._supervise(self.spec["containers"], restart)
        except Exception as error:  # noqa: BLE001 - a kubelet reports, it does not crash
            self.phase = "Failed"
            (self.directory / "kubelet-error.txt").write_text(repr(error))

    def _run_to_completion(self, container: Manifest, retry: bool) -> bool:
        status, backoff = self.statuses[container["name"]], BACKOFF_START
        while not self._stop.is_set():
            code = self._start(container).wait()
            status.running = False
            status.exit_codes.append(code)
            if code == 0 or self._stop.is_set():
                return code == 0
            if not retry:
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
        while not self._stop.wait(0.2):
            for container in containers:
                name, status = container["name"], self.statuses[container["name"]]
                process = processes[name]
                if status.running and process.poll() is None:
                    if not probes[name].check():  # liveness failed: kill, and restart as after a crash
                        self._stop_container(name)
                    continue
                if status.running:  # it just exited
                    status.running, status.ready = False, False
                    status.exit_codes.append(process.wait())
                    if restart == "Never" or (restart == "OnFailure" and process.returncode == 0):
                        continue
                    next_start[name] = time.monotonic() + backoff[name]
                    backoff[name] = min(backoff[name] * 2, BACKOFF_MAX)
                elif name in next_start and time.monotonic() >= next_start[name]:
                    del next_start[name]
                    status.restarts += 1
                    processes[name], probes[name] = self._start(container), _Probes(self, container)
            if restart != "Always" and not any(s.running for n, s in self.statuses.items() if n in processes):
                codes = [self.statuses[c["name"]].exit_codes[-1] for c in containers]
                self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
                return

    def delete(self) -> None:
        """`kubectl delete pod`: every container is stopped gracefully; the caller then tears down the network."""
        self._stop.set()
        for name in list(self._processes):
            self._stop_container(name)
        self._thread.join(timeout=60)
        self.phase = "Deleted"


class _Probes:
    """httpGet readiness and liveness probes of one running container, on Kubernetes' schedule."""

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
            passed = self._http_get(probe)
            self.failures[kind] = 0 if passed else self.failures[kind] + 1
            if kind == "readinessProbe":
                if passed:
                    self.status.ready = True
                elif self.failures[kind] >= probe.get("failureThreshold", 3):
                    self.status.ready = False
            elif self.failures[kind] >= probe.get("failureThreshold", 3):
                return False
        return True

    def _http_get(self, probe: Manifest) -> bool:
        if "httpGet" not in probe:
            raise UnsupportedError(f"probe {sorted(probe)}: only httpGet is emulated")
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in self.container.get("ports", []) if p["name"] == port)
        url = f"http://{self.pod.ip}:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as response:
                return 200 <= int(response.status) < 400
        except OSError:
            return False

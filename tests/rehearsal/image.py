"""The stand-ins for the images pods run, keyed by repository, each presented as `docker inspect` shows the real
image: its user and group, WORKDIR, ENV, the /etc/passwd (and /etc/group) entries it adds, and the trees it brings.
A container's root filesystem is this machine's, with its image's trees mounted over it (kubelet.py).

The Ray image (`rayproject/ray`, any tag) runs as `ray` (uid 1000, gid 100) with HOME and WORKDIR /home/ray, conda
in /home/ray/anaconda3 and that conda's bin first on PATH, and /home/ray owned by ray. The stand-in is a virtualenv
with only ray[default] at the image's version, which scripts/test builds outside /tmp (pods mount their own /tmp
over whatever is there). Each container start gets a fresh writable layer holding the image's /home (a runtime
creates a new container, with a new layer, for every start), and the virtualenv is bind-mounted onto its
anaconda3, so Python started as /home/ray/anaconda3/bin/python finds the virtualenv's site-packages (its
pyvenv.cfg sits next to bin/). PATH names only that path, never the virtualenv's own: a volume mounted over
/home/ray hides `ray` and the virtualenv's `python`, exactly as it hides conda in the real image. The image's
/etc/passwd names uid 1000 `ray`; its /etc/group is this machine's (gid 100 is `users` in both).

The registry holds each official Ray tag for one architecture, as Ray's image CI pushes them: tags ending in
`-aarch64` for arm64, every other tag for amd64; the Redis image for both. A node of another architecture fails to
pull the image (kubelet.py), as containerd refuses a manifest of another platform.

The Redis image (`redis`, `library/redis`, `docker.io/library/redis`; Debian-based tags only) runs as `redis`
(uid 999, gid 999, named so in its /etc/passwd and /etc/group) in WORKDIR /data, an image volume owned by redis:
a fresh writable directory per container start that a read-only root filesystem leaves writable, as containerd
gives every VOLUME of an image, unless a pod volume is mounted over it. redis-server and redis-cli are on PATH in
/usr/local/bin. The stand-in is Debian's Redis (the `redis-tools` package: /usr/bin/redis-check-rdb is the whole
server and acts as redis-server when called by that name) presented as the official image presents it: a
directory of symlinks (redis-server, redis-sentinel, redis-cli, redis-check-rdb, redis-check-aof, redis-benchmark) that
scripts/test builds, mounted read-only over /usr/local/bin. Its tag must be the installed Redis's version (or that
version's `-bookworm` variant, the same image): any other tag is refused, so the pinned image and the Redis the
rehearsal runs cannot drift apart silently. The mount point /data is made on this machine, empty, and left in
place, as kubelet.py does for any mount target outside an image's trees.

The Prometheus image (`quay.io/prometheus/prometheus`, `prom/prometheus`) runs as `nobody` (uid and gid 65534) in
WORKDIR /prometheus, an image volume owned by nobody, with /bin/prometheus; the stand-in is Debian's Prometheus
(the `prometheus` package, /usr/bin/prometheus, which merged-/usr Debian also finds as /bin/prometheus). Its tag
must be the installed Prometheus's version (`v2.42.0`): any other is refused. Debian builds it without Kubernetes
service discovery, so a rehearsal's Prometheus discovers pods through files the test writes from the API's state
(tests/kubernetes_sd.py).

The Redis exporter image (`oliver006/redis_exporter`, a scratch image) holds only /redis_exporter, which runs as
uid and gid 59000 in /; the stand-in is Debian's exporter (the `prometheus-redis-exporter` package,
/usr/bin/prometheus-redis-exporter), which scripts/test links as /redis_exporter on this machine, whose root every
container sees outside its image's trees. Its tag must be the installed exporter's version (`v1.45.0`).

An image the registry does not know is refused (UnsupportedError when its pod template is applied), where the
stand-in once ran every image as Ray: a misspelt image, or a custom one whose user, paths and tools differ, would
otherwise pass a rehearsal it would fail for real. The harness's own pods name the Ray image.

Not emulated: the stand-ins' shared trees (the virtualenv, Redis's bin) are read-only in every container (the real
image's conda, owned by ray, is writable without `readOnlyRootFilesystem`); they are the one copy every pod shares,
and copy-on-write layers are not worth their portability cost here. Outside an image's own trees, the root is this
machine's (Debian bookworm, as the official Redis image is), and the Redis image's other ENV entries (gosu's
version, the source's URL) are left out, as nothing reads them. Alpine-based Redis tags, whose tools and groups
differ, are refused.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

ROOT = Path(os.environ.get("RAY_REHEARSAL_IMAGE", "/opt/ray-cluster-rehearsal/image"))
USER, GROUP = 1000, 100
HOME = PurePosixPath("/home/ray")
CONDA = HOME / "anaconda3"
WORKDIR = HOME
ENV = {"PATH": f"{CONDA}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(HOME)}
# The layer's top directory: the part of the image's tree that the stand-in provides itself.
LAYER_TOP = HOME.parent
_PASSWD_ENTRY = f"ray:x:{USER}:{GROUP}::{HOME}:/bin/bash"
RAY_REPOSITORIES = frozenset({"rayproject/ray", "docker.io/rayproject/ray", "index.docker.io/rayproject/ray"})

REDIS_ROOT = Path(os.environ.get("REDIS_REHEARSAL_IMAGE", "/opt/ray-cluster-rehearsal/redis"))
REDIS_SERVER = Path("/usr/bin/redis-check-rdb")  # Debian's redis-tools: the server, named by argv[0]
REDIS_USER = REDIS_GROUP = 999
REDIS_BIN = PurePosixPath("/usr/local/bin")
REDIS_DATA = PurePosixPath("/data")
REDIS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REDIS_REPOSITORIES = frozenset(
    {"redis", "library/redis", "docker.io/redis", "docker.io/library/redis", "index.docker.io/library/redis"}
)

PROMETHEUS_SERVER = Path("/usr/bin/prometheus")
PROMETHEUS_USER = PROMETHEUS_GROUP = 65534
PROMETHEUS_DATA = PurePosixPath("/prometheus")
PROMETHEUS_REPOSITORIES = frozenset(
    {"quay.io/prometheus/prometheus", "prom/prometheus", "docker.io/prom/prometheus", "index.docker.io/prom/prometheus"}
)

REDIS_EXPORTER = Path("/redis_exporter")  # scripts/test's link to Debian's exporter
REDIS_EXPORTER_USER = REDIS_EXPORTER_GROUP = 59000
REDIS_EXPORTER_REPOSITORIES = frozenset(
    {"oliver006/redis_exporter", "docker.io/oliver006/redis_exporter", "index.docker.io/oliver006/redis_exporter"}
)

MountKind = Literal["layer", "shared", "volume"]


class MissingStandInError(RuntimeError):
    """A stand-in is not installed on this machine (scripts/test and .ci/run install them): the rehearsal cannot
    run, and fails rather than skips."""


@dataclass(frozen=True)
class Mount:
    """A tree the image brings to one container start, mounted at `target`: `layer` is part of the image's root
    filesystem (read-only under readOnlyRootFilesystem), `shared` the stand-in's one copy (always read-only; no
    mount target or working directory may lie inside it), `volume` an image VOLUME (always writable)."""

    target: PurePosixPath
    source: Path
    kind: MountKind


@dataclass(frozen=True)
class Image:
    """One image as the runtime sees it. `start(path)` makes the trees of one container start in the fresh
    directory `path` (the last start's is discarded) and returns them in mount order, parents first."""

    name: str
    user: int
    group: int
    workdir: PurePosixPath
    env: Mapping[str, str]
    passwd_entries: tuple[str, ...]
    group_entries: tuple[str, ...]  # none: the image's /etc/group is this machine's, and is left alone
    start: Callable[[Path], list[Mount]]
    # The CPU architectures (as nodes label theirs, `kubernetes.io/arch`) the registry holds the image for.
    architectures: frozenset[str] = frozenset({"amd64", "arm64"})

    def passwd(self, host: str) -> str:
        """The image's /etc/passwd: this machine's, with the image's users in place of whoever holds their names or
        uids here, so `whoami` and `~user` answer as in the image."""
        return _replaced(host, self.passwd_entries)

    def groups(self, host: str) -> str | None:
        """The image's /etc/group in the same way, or None where the machine's serves."""
        return _replaced(host, self.group_entries) if self.group_entries else None


def _replaced(host: str, entries: tuple[str, ...]) -> str:
    """`host` (an /etc/passwd or /etc/group) without the lines that share a name or an id with `entries`, then
    `entries`."""
    names = {entry.split(":")[0] for entry in entries}
    ids = {entry.split(":")[2] for entry in entries}
    lines = [line.split(":") for line in host.splitlines() if line]
    kept = [":".join(line) for line in lines if line[0] not in names and (line[2:3] or [""])[0] not in ids]
    return "\n".join([*kept, *entries]) + "\n"


def passwd(host: str) -> str:
    """The Ray image's /etc/passwd (see Image.passwd)."""
    return RAY.passwd(host)


def fresh_layer(path: Path) -> Path:
    """A new writable layer for one container start at `path` (the last start's is discarded): the image's /home
    with ray's home (1000:100, 755) and the mount point of its conda; returns the directory to mount on LAYER_TOP."""
    shutil.rmtree(path, ignore_errors=True)
    top = path / LAYER_TOP.name
    home = top / HOME.relative_to(LAYER_TOP)
    (home / CONDA.relative_to(HOME)).mkdir(parents=True)
    top.chmod(0o755)
    for directory in (home, home / CONDA.relative_to(HOME)):
        os.chown(directory, USER, GROUP)
        directory.chmod(0o755)
    return top


def _ray_start(path: Path) -> list[Mount]:
    return [Mount(LAYER_TOP, fresh_layer(path), "layer"), Mount(CONDA, ROOT, "shared")]


RAY = Image(
    name="ray",
    user=USER,
    group=GROUP,
    workdir=WORKDIR,
    env=ENV,
    passwd_entries=(_PASSWD_ENTRY,),
    group_entries=(),
    start=_ray_start,
)


def _redis_start(path: Path) -> list[Mount]:
    """/usr/local/bin from the stand-in, and a fresh /data owned by redis (the Dockerfile's `mkdir /data && chown
    redis:redis /data`, 755)."""
    shutil.rmtree(path, ignore_errors=True)
    data = path / REDIS_DATA.name
    data.mkdir(parents=True)
    os.chown(data, REDIS_USER, REDIS_GROUP)
    data.chmod(0o755)
    return [Mount(REDIS_BIN, REDIS_ROOT / "bin", "shared"), Mount(REDIS_DATA, data, "volume")]


@functools.cache
def redis_version() -> str:
    """The installed Redis's version, as `redis-server --version` reports it (`v=7.0.15`)."""
    try:
        completed = subprocess.run(
            ["redis-server", "--version"], executable=REDIS_SERVER, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as error:
        raise MissingStandInError(
            f"{REDIS_SERVER} does not run ({error}): install Debian's redis-tools as .ci/run does"
        ) from error
    return next(word for word in completed.stdout.split() if word.startswith("v=")).removeprefix("v=")


def _redis(tag: str) -> Image:
    version = redis_version()
    if tag not in {version, f"{version}-bookworm"}:
        raise LookupError(
            f"redis:{tag or '<no tag>'}: the rehearsal's Redis is this machine's Redis {version} (Debian's "
            f"redis-tools), so a Redis image must be tagged {version} (or {version}-bookworm)"
        )
    if not (REDIS_ROOT / "bin" / "redis-server").exists():
        raise MissingStandInError(f"{REDIS_ROOT}/bin is missing: scripts/test (as root) builds it")
    return Image(
        name="redis",
        user=REDIS_USER,
        group=REDIS_GROUP,
        workdir=REDIS_DATA,
        env={"PATH": REDIS_PATH, "REDIS_VERSION": version},
        passwd_entries=(f"redis:x:{REDIS_USER}:{REDIS_GROUP}::/home/redis:/bin/sh",),
        group_entries=(f"redis:x:{REDIS_GROUP}:",),
        start=_redis_start,
    )


def _prometheus_start(path: Path) -> list[Mount]:
    """A fresh /prometheus owned by nobody (the Dockerfile's `chown -R nobody:nobody /prometheus`, VOLUME)."""
    shutil.rmtree(path, ignore_errors=True)
    data = path / PROMETHEUS_DATA.name
    data.mkdir(parents=True)
    os.chown(data, PROMETHEUS_USER, PROMETHEUS_GROUP)
    data.chmod(0o755)
    return [Mount(PROMETHEUS_DATA, data, "volume")]


def _version_output(binary: Path, package: str) -> str:
    """What the installed stand-in says to `--version` (MissingStandInError, naming its Debian package, when it
    does not run)."""
    try:
        completed = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise MissingStandInError(
            f"{binary} does not run ({error}): install Debian's {package} as .ci/run does (scripts/test, as root, "
            "links what it must)"
        ) from error
    return completed.stdout + completed.stderr


def _require_version_tag(repository: str, tag: str, version: str, package: str) -> None:
    """An image whose stand-in is Debian's `package` must be tagged with its version (`v<version>`), so the pinned
    image and what the rehearsal runs cannot drift apart silently."""
    if tag != f"v{version}":
        raise LookupError(
            f"{repository}:{tag or '<no tag>'}: the rehearsal's stand-in is this machine's {version} (Debian's "
            f"{package}), so the image must be tagged v{version}"
        )


@functools.cache
def prometheus_version() -> str:
    """The installed Prometheus's version (`prometheus, version 2.42.0+ds ...` gives 2.42.0)."""
    output = _version_output(PROMETHEUS_SERVER, "prometheus")
    return output.split("version ", 1)[1].split()[0].split("+")[0]


def _prometheus(tag: str) -> Image:
    _require_version_tag("prometheus", tag, prometheus_version(), "prometheus")
    return Image(
        name="prometheus",
        user=PROMETHEUS_USER,
        group=PROMETHEUS_GROUP,
        workdir=PROMETHEUS_DATA,
        env={"PATH": REDIS_PATH},
        passwd_entries=(f"nobody:x:{PROMETHEUS_USER}:{PROMETHEUS_GROUP}:nobody:/home:/bin/false",),
        group_entries=(),  # busybox's group 65534 is nogroup, as this machine's
        start=_prometheus_start,
    )


@functools.cache
def redis_exporter_version() -> str:
    """The installed exporter's version (`Redis Metrics Exporter 1.45.0-2+b4 ...` gives 1.45.0)."""
    output = _version_output(REDIS_EXPORTER, "prometheus-redis-exporter")
    return output.split("Exporter ", 1)[1].split()[0].split("-")[0]


def _redis_exporter(tag: str) -> Image:
    _require_version_tag("oliver006/redis_exporter", tag, redis_exporter_version(), "prometheus-redis-exporter")
    return Image(
        name="redis_exporter",
        user=REDIS_EXPORTER_USER,
        group=REDIS_EXPORTER_GROUP,
        workdir=PurePosixPath("/"),
        env={"PATH": REDIS_PATH},  # a scratch image sets none: the runtime's default
        passwd_entries=(),  # a scratch image has no /etc/passwd; this machine's stays
        group_entries=(),
        start=lambda path: [],
    )


def split_reference(reference: str) -> tuple[str, str, str]:
    """An image reference's repository, tag and digest (`docker.io/library/redis:7.0.15@sha256:...`); empty where
    it names none. A registry's port (`host:5000/name`) is part of the repository."""
    name, _, digest = reference.partition("@")
    repository, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        return name, "", digest
    return repository, tag, digest


def ray_architectures(tag: str) -> frozenset[str]:
    """What the registry holds an official Ray tag for: Ray's image CI builds and pushes each architecture on its
    own, the arm64 builds with the suffix `-aarch64` and the amd64 builds without one (ray-project/ray
    ci/ray_ci/ray_image.py, push_ray_image.py)."""
    return frozenset({"arm64"}) if tag.endswith("-aarch64") else frozenset({"amd64"})


def lookup(reference: str) -> Image:
    """The stand-in for an image; LookupError (saying why) for an image the rehearsal cannot run as it is."""
    repository, tag, _ = split_reference(reference)
    if repository in RAY_REPOSITORIES:
        return dataclasses.replace(RAY, architectures=ray_architectures(tag))
    if repository in REDIS_REPOSITORIES:
        return _redis(tag)
    if repository in PROMETHEUS_REPOSITORIES:
        return _prometheus(tag)
    if repository in REDIS_EXPORTER_REPOSITORIES:
        return _redis_exporter(tag)
    known = ", ".join(
        sorted(RAY_REPOSITORIES | REDIS_REPOSITORIES | PROMETHEUS_REPOSITORIES | REDIS_EXPORTER_REPOSITORIES)
    )
    raise LookupError(f"image {reference}: the rehearsal has no stand-in for {repository} (it knows {known})")

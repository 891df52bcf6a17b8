"""Pure builders for one Ray node's container: `ray start`'s command line, its env, volumes, probes and the wait for
the head, as Kubernetes dicts. The ports, paths and env names of a Ray node are defined once, here.

One function per concern, as in KubeRay's pod builder (ray-operator/controllers/ray/common/pod.go), so each can be
tested without Pulumi; pods.py puts the containers into pod templates.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from decimal import ROUND_CEILING
from typing import Any

from .. import in_pod
from ..config.resources import PodResources
from ..config.settings import ClusterSettings
from . import redis, sizing
from .security import container_security

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
METRICS_PORT = 8080
# The head's own metrics servers, at Ray's defaults (DASHBOARD_METRIC_PORT, AUTOSCALER_METRIC_PORT): the dashboard's,
# and Ray's monitor's, which serves on its pod's IP when started with `--monitor-ip` (as `ray start --head` starts
# it; the autoscaler container passes it too). Named as KubeRay names them (a port name has at most 15 characters).
DASHBOARD_METRICS_PORT = 44227
AUTOSCALER_METRICS_PORT = 44217
DASHBOARD_METRICS_PORT_NAME = "dash-metrics"
AUTOSCALER_METRICS_PORT_NAME = "as-metrics"
AGENT_PORT = 52365
# Ray Serve's HTTP proxies (every node that runs replicas, and the head), when the cluster runs Serve applications.
SERVE_PORT = 8000
# The official Ray image runs as user `ray` (security.RAY_UID, RAY_GID), with HOME and WORKDIR /home/ray and conda in
# /home/ray/anaconda3. The root filesystem is read-only, so HOME and the working directory move to an emptyDir below
# the image's home, which leaves conda where the image put it.
HOME_DIR = "/home/ray/workspace"
NOFILE_LIMIT = 65536
MIB = sizing.MIB
POD_IP_ENV = "RAY_POD_IP"
AUTH_TOKEN_DIR = "/etc/ray/auth"
AUTH_TOKEN_VOLUME = "auth-token"
AUTH_TOKEN_KEY = "token"
SMOKE_TEST_MOUNT = "/opt/ray-smoke-test"
SMOKE_TEST_FILE = "smoke_test.py"
# How long the smoke test waits for its connection and for every node to join, before it fails.
SMOKE_NODE_WAIT_SECONDS = 600
# A pod template label that changes with the auth token (but reveals nothing of it), so every pod that reads the
# token rolls when it changes. A label, not an annotation: the Deployments leave their pod templates' annotations
# to whoever sets them (`kubectl rollout restart`), so a change there would not reach the cluster.
TOKEN_VERSION_LABEL = "ray-cluster.pulumi.com/auth-token-version"
# On SIGTERM the container's main process (components/in_pod/ray_node.sh) drains its node (no new work; running tasks
# finish) for up to this many seconds, then stops Ray's processes, allowing each a few seconds: the pod's grace
# period covers both.
DRAIN_TIMEOUT_ENV = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"
SHUTDOWN_MARGIN_SECONDS = 15
# The head does not drain: without GCS fault tolerance its loss ends every job anyway, with it the head runs no
# tasks; either way a head that drains only delays its replacement.
HEAD_DRAIN_SECONDS = 0
# With GCS fault tolerance the head reads the Redis password (and a TLS Redis's CA) from files: the password goes to
# `ray start` on its command line (Ray has no other way to take it), never into the manifest or the env.
REDIS_SECRET_DIR = "/etc/ray/redis"
REDIS_CA_DIR = "/etc/ray/redis-ca"
# Where the Ray image (Ubuntu's ca-certificates) keeps the system CAs, for a TLS Redis without a CA of its own.
SYSTEM_CA_DIR = "/etc/ssl/certs"
# Names this cluster's keys in Redis; set per cluster (by default every cluster on one Redis would share "default").
STORAGE_NAMESPACE_ENV = "RAY_external_storage_namespace"
# Ray Client's proxier on the head starts a server for each client with `Popen(preexec_fn=...)`, a fork() of a
# multithreaded gRPC process; with gRPC's fork support on, the child now and then dies before its exec and the
# client waits about 40 s (the proxier's 30 s channel timeout, then a retry) or fails: ray-project/ray#63202, fix
# pending in #65982. With it off, the fork is a plain one. Only the head runs the proxier.
GRPC_FORK_SUPPORT_ENV = "GRPC_ENABLE_FORK_SUPPORT"
# A raylet whose head came back within gcsReconnectTimeoutSeconds reconnects to a GCS that has never heard of it
# (a new cluster, without GCS fault tolerance); it learns so, and exits to be restarted into the new cluster, only
# at its next self-check, every 60 s by Ray's default. A cheap RPC every few seconds makes that a few seconds.
LIVENESS_SELF_CHECK_ENV = "RAY_raylet_liveness_self_check_interval_ms"
LIVENESS_SELF_CHECK_SECONDS = 5
# With autoscaling, Ray's monitor runs in the autoscaler container and writes its events (what it launched and
# removed, and why) as Ray's event logger does, to `<its logs dir>/events/event_AUTOSCALER.log`, on a volume of
# their own that the head's Ray container mounts read-only at the same path. The Ray dashboard shows the events it
# finds in its session's `logs/events` directory, so the head links the file there (see autoscaler_events_link):
# the Ray container, where job drivers run, reads what the autoscaler writes, never the other way round.
AUTOSCALER_EVENTS_VOLUME = "autoscaler-events"
AUTOSCALER_LOGS_DIR = "/var/log/ray-autoscaler"
AUTOSCALER_EVENTS_FILE = f"{AUTOSCALER_LOGS_DIR}/events/event_AUTOSCALER.log"
# What a worker's Ray container runs instead of `ray start`, with the same arguments: components/in_pod/worker_start.py,
# shipped as its text in the container's command (so a change to it rolls the workers, as any change of the pod
# template does).
WORKER_START_SOURCE = in_pod.source("worker_start.py")
# A Ray container's main process, in bash, once `ray start` has started the node (see that file): its functions are
# defined by the container's command, shipped as their text like worker_start.py.
RAY_NODE_SOURCE = in_pod.source("ray_node.sh")
Manifest = dict[str, Any]


@dataclass(frozen=True)
class RayNodeSizing:
    """What `ray start` is told, derived from the pod's requests so Ray never reads the host's cores and memory."""

    num_cpus: int
    num_gpus: int
    memory_bytes: int
    object_store_bytes: int
    shm_bytes: int


def node_sizing(resources: PodResources) -> RayNodeSizing:
    total = resources.memory_bytes
    object_store = sizing.object_store_bytes(total)
    return RayNodeSizing(
        # `ray start` takes whole CPUs; like KubeRay, round a fractional request up.
        num_cpus=int(resources.cpu_cores.to_integral_value(rounding=ROUND_CEILING)),
        num_gpus=resources.gpus,
        memory_bytes=total - object_store,
        object_store_bytes=object_store,
        shm_bytes=sizing.shm_bytes(total),
    )


def ray_num_cpus(settings: ClusterSettings, resources: PodResources, *, head: bool) -> int:
    """The CPUs a node offers Ray. With GCS fault tolerance the head offers none (KubeRay's advice): tasks and
    actors then run on workers only, which keep running through the loss of the head, so losing the head loses no
    work."""
    return 0 if head and settings.fault_tolerance else node_sizing(resources).num_cpus


def ray_start_args(settings: ClusterSettings, resources: PodResources, *, head: bool) -> list[str]:
    """`ray start` for one node, the arguments of the `ray` command from `start` on. Without `--block`: it returns
    once the node runs, and the container's main process (components/in_pod/ray_node.sh) keeps the container alive
    as long as the node, without a Python process resident only to wait."""
    node = node_sizing(resources)
    role = (
        [
            "--head",
            f"--port={GCS_PORT}",
            "--dashboard-host=0.0.0.0",
            f"--dashboard-port={DASHBOARD_PORT}",
            f"--ray-client-server-port={CLIENT_PORT}",
            # With autoscaling, Ray's monitor runs in a container of its own (manifests/autoscaling.py).
            *(["--no-monitor"] if settings.autoscaling else []),
        ]
        if head
        else [f"--address={settings.head_host}:{GCS_PORT}"]
    )
    return [
        "start",
        *role,
        f"--node-ip-address=$({POD_IP_ENV})",
        f"--num-cpus={ray_num_cpus(settings, resources, head=head)}",
        f"--num-gpus={node.num_gpus}",
        f"--memory={node.memory_bytes}",
        f"--object-store-memory={node.object_store_bytes}",
        f"--dashboard-agent-listen-port={AGENT_PORT}",
        f"--metrics-export-port={METRICS_PORT}",
        "--disable-usage-stats",
    ]


def node_command(settings: ClusterSettings, resources: PodResources, *, head: bool) -> list[str]:
    """What a Ray container runs: `ray start` on the head; on a worker the same arguments to
    components/in_pod/worker_start.py, which first waits, in the same Python process, for a head that accepts it."""
    start = ray_start_args(settings, resources, head=head)
    return ["ray", *start] if head else ["python", "-c", WORKER_START_SOURCE, *start]


def autoscaler_events_link() -> str:
    """With autoscaling, what the head's script sets before `run_node`: the file that components/in_pod/ray_node.sh
    links into the session's `logs/events`, where the dashboard reads every node's events
    (dashboard/modules/event/event_head.py), once both this run's session and the autoscaler's file exist (the
    dashboard stats each file there as it scans, so a dangling link would fail its every scan)."""
    return f"autoscaler_events={shlex.quote(AUTOSCALER_EVENTS_FILE)}; "


def shell(script: str) -> list[str]:
    """Run `script` under bash, after raising the open-files limit that Ray's many connections need (runtimes
    such as containerd 2 start containers with a soft limit of 1024), or as far as the hard limit allows."""
    return ["/bin/bash", "-c", f'ulimit -n {NOFILE_LIMIT} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; {script}']


# How often a waiting worker tries the head's GCS port (a TCP connect costs next to nothing), and how often it
# repeats an unchanged reason for waiting in its log.
GCS_POLL_SECONDS = "0.2"
WAIT_REPORT_SECONDS = 5
# How long one try may wait for an answer. Unbounded, a connect whose SYN is dropped waits for the kernel's SYN
# retries, about two minutes: a lost node's Terminating head stays a ready endpoint of the head Service (it publishes
# not-ready addresses) until that pod is force-deleted, and some data planes drop what is sent to a Service without
# endpoints. Bounded, the next try goes to another endpoint (kube-proxy chooses per connection).
CONNECT_TIMEOUT_SECONDS = 2


def wait_for_gcs_script(settings: ClusterSettings, host: str | None = None, *, health_check: bool) -> str:
    """Loop until the head's GCS answers, so a container waits instead of crash-looping while the head starts, and
    say why it waits: the name does not resolve, the port refuses, or what `ray health-check` said (a token the head
    does not accept, say), at once when the reason changes and every few seconds while it does not.

    A plain TCP connect (bash's /dev/tcp, given CONNECT_TIMEOUT_SECONDS by coreutils' `timeout`), tried five times a
    second, so a waiting container learns of the open port within a fifth of a second without spending the CPU the
    starting head needs on a Python start. With
    `health_check`, `ray health-check` must then pass too, a second apart; a worker's init container goes without:
    its Ray container runs that check itself (components/in_pod/worker_start.py). Only the first line of bash's own
    message is kept, without its `bash: line 1: ` prefix. `host` is the head Service's name unless given (a
    container of the head pod itself waits on its own pod's address).
    """
    host = host or settings.head_host
    address = f"{host}:{GCS_PORT}"
    answered = (
        (
            f"why=$(ray health-check --address={address} 2>&1) && break; "
            "why=${why##*$'\\n'}; why=${why:-\"ray health-check failed without a word\"}; pause=1; "
        )
        if health_check
        else "break; "
    )
    ready = "is ready" if health_check else "accepts connections"
    connect = f"timeout {CONNECT_TIMEOUT_SECONDS} bash -c 'exec 3<>/dev/tcp/{host}/{GCS_PORT}'"
    unanswered = f"no answer within {CONNECT_TIMEOUT_SECONDS} s"
    return (
        "said=; said_at=0; while true; do "
        f"if why=$({connect} 2>&1); then {answered}"
        f"else why=${{why%%$'\\n'*}}; why=${{why#*bash: }}; why=${{why#line *: }}; why=${{why:-{unanswered}}}; "
        f"pause={GCS_POLL_SECONDS}; fi; "
        f'if [ "$why" != "$said" ] || [ $((SECONDS - said_at)) -ge {WAIT_REPORT_SECONDS} ]; then '
        f'echo "waiting for the Ray head (GCS) at {address}: $why"; said=$why; said_at=$SECONDS; fi; '
        'sleep "$pause"; done; '
        f'echo "GCS at {address} {ready}"'
    )


def container_resources(resources: PodResources) -> Manifest:
    amounts: dict[str, str] = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpus:
        amounts["nvidia.com/gpu"] = str(resources.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def ray_env(settings: ClusterSettings) -> list[Manifest]:
    """Env of every process that talks to Ray: its pod's IP, a writable HOME (Ray Train's ~/ray_results, the
    ~/.cache of Hugging Face and torch), no usage stats, and the token when auth is on."""
    env: list[Manifest] = [
        {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": HOME_DIR},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    if settings.token_auth:
        # A file rather than RAY_AUTH_TOKEN: env vars leak into `kubectl describe`, crash dumps and child processes.
        env += [
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN_PATH", "value": f"{AUTH_TOKEN_DIR}/{AUTH_TOKEN_KEY}"},
        ]
    return env


def ray_volumes(settings: ClusterSettings, node: RayNodeSizing | None) -> list[Manifest]:
    """Writable scratch for Ray's session directory and for HOME, a memory-backed /dev/shm for the object store
    (Ray nodes only) and the auth token."""
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
    if node:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{node.shm_bytes // MIB}Mi"}})
    if settings.token_auth:
        secret = {"secretName": settings.pod_auth_secret_name, "defaultMode": 0o440}
        volumes.append({"name": AUTH_TOKEN_VOLUME, "secret": secret})
    return volumes


def ray_volume_mounts(settings: ClusterSettings, *, shm: bool) -> list[Manifest]:
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME_DIR}]
    if shm:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if settings.token_auth:
        mounts.append(auth_token_mount())
    return mounts


def auth_token_mount() -> Manifest:
    return {"name": AUTH_TOKEN_VOLUME, "mountPath": AUTH_TOKEN_DIR, "readOnly": True}


def http_probe(port: int, path: str, *, liveness: bool) -> Manifest:
    """Readiness every second (an HTTP GET, cheap), so Services and the smoke test follow a node within a
    second; liveness, as KubeRay's, tolerates a long stall before it restarts anything."""
    timings = (
        {"initialDelaySeconds": 30, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 120}
        if liveness
        else {"initialDelaySeconds": 1, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 10}
    )
    return {"httpGet": {"path": path, "port": port}, **timings}


def drain_seconds(settings: ClusterSettings, *, head: bool) -> int:
    return HEAD_DRAIN_SECONDS if head else settings.worker_drain_seconds


def node_env(settings: ClusterSettings, *, head: bool) -> list[Manifest]:
    """How long a node drains when its pod is deleted; for the head, gRPC without fork support, so that Ray
    Client connections do not stall; for workers, how long the raylet waits for a lost head before it exits, and
    how soon it notices that the head it reconnected to is a new one, to be restarted against the new head either
    way."""
    env = [{"name": DRAIN_TIMEOUT_ENV, "value": str(drain_seconds(settings, head=head))}]
    if head:
        env.append({"name": GRPC_FORK_SUPPORT_ENV, "value": "0"})
        env += metrics_views_env(settings)
    else:
        reconnect = str(settings.gcs_reconnect_timeout_seconds)
        env.append({"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": reconnect})
        env.append({"name": LIVENESS_SELF_CHECK_ENV, "value": str(LIVENESS_SELF_CHECK_SECONDS * 1000)})
    return env


def metrics_views_env(settings: ClusterSettings) -> list[Manifest]:
    """The dashboard's metrics views (its head's Ray container): the Prometheus it queries, the Grafana it checks
    and embeds (the browser's address, if another), its panels filtered on this cluster (the Cluster variable of
    Ray's dashboards, `ray_io_cluster`, which the PodMonitor sets)."""
    views = settings.metrics_views
    env = [{"name": "RAY_PROMETHEUS_HOST", "value": views.prometheus_url}] if views.prometheus_url else []
    if views.grafana_url:
        env += [
            {"name": "RAY_GRAFANA_HOST", "value": views.grafana_url},
            {"name": "RAY_GRAFANA_IFRAME_HOST", "value": views.grafana_iframe_url or views.grafana_url},
            {"name": "RAY_GRAFANA_CLUSTER_FILTER", "value": settings.cluster_name},
        ]
    return env


def gcs_storage_env(settings: ClusterSettings, storage_namespace: Any) -> list[Manifest]:
    """The head's Redis, if GCS fault tolerance is on: where it is, this cluster's namespace in it (an Output: a
    random id drawn once per cluster, so a cluster made anew never resumes an old one's state) and, for a TLS
    Redis, the CA its certificate is checked against: the given one, else the image's system CAs."""
    fault_tolerance = settings.fault_tolerance
    if fault_tolerance is None:
        return []
    if storage_namespace is None:
        raise ValueError("a fault-tolerant head needs its cluster's storage namespace")
    env = [
        {"name": "RAY_REDIS_ADDRESS", "value": redis.address(settings, fault_tolerance)},
        {"name": STORAGE_NAMESPACE_ENV, "value": storage_namespace},
    ]
    if fault_tolerance.ca_cert:
        env.append({"name": "RAY_REDIS_CA_CERT", "value": f"{REDIS_CA_DIR}/{redis.CA_KEY}"})
    elif fault_tolerance.tls:
        env.append({"name": "RAY_REDIS_CA_PATH", "value": SYSTEM_CA_DIR})
    return env


def _gcs_storage_files(settings: ClusterSettings) -> list[tuple[Manifest, Manifest]]:
    """The head's (volume, mount) pairs for the Redis password (that key only: the stack's Redis's whole
    config sits in the same Secret) and a TLS Redis's CA."""
    fault_tolerance = settings.fault_tolerance
    files: list[tuple[Manifest, Manifest]] = []
    if fault_tolerance and fault_tolerance.authenticates:
        only_the_password = [{"key": redis.PASSWORD_KEY, "path": redis.PASSWORD_KEY}]
        secret = {"secretName": settings.redis_name, "defaultMode": 0o440, "items": only_the_password}
        files.append(
            (
                {"name": "redis-password", "secret": secret},
                {"name": "redis-password", "mountPath": REDIS_SECRET_DIR, "readOnly": True},
            )
        )
    if fault_tolerance and fault_tolerance.ca_cert:
        files.append(
            (
                {"name": "redis-ca", "configMap": {"name": redis.ca_name(settings), "defaultMode": 0o444}},
                {"name": "redis-ca", "mountPath": REDIS_CA_DIR, "readOnly": True},
            )
        )
    return files


def gcs_storage_volumes(settings: ClusterSettings) -> list[Manifest]:
    return [volume for volume, _ in _gcs_storage_files(settings)]


def gcs_storage_mounts(settings: ClusterSettings) -> list[Manifest]:
    return [mount for _, mount in _gcs_storage_files(settings)]


def ray_container(
    settings: ClusterSettings,
    resources: PodResources,
    image: str,
    *,
    head: bool,
    storage_namespace: Any = None,
    read_only_root_filesystem: bool = True,
) -> Manifest:
    """A Ray node's container; the head's with its GCS storage, if fault tolerance is on. Its script defines the
    main process's functions (components/in_pod/ray_node.sh), then starts the node through them."""
    autoscaler_events = head and settings.autoscaling
    start = (autoscaler_events_link() if autoscaler_events else "") + "run_node "
    start = f"{RAY_NODE_SOURCE}\n{start}" + shlex.join(node_command(settings, resources, head=head))
    fault_tolerance = settings.fault_tolerance if head else None
    if fault_tolerance and fault_tolerance.authenticates:
        start += f' --redis-password="$(cat {REDIS_SECRET_DIR}/{redis.PASSWORD_KEY})"'
    head_ports = [
        ("gcs", GCS_PORT),
        ("dashboard", DASHBOARD_PORT),
        ("client", CLIENT_PORT),
        (DASHBOARD_METRICS_PORT_NAME, DASHBOARD_METRICS_PORT),
        # Without autoscaling `ray start --head` runs Ray's monitor here; with it, the autoscaler container does.
        *([] if settings.autoscaling else [(AUTOSCALER_METRICS_PORT_NAME, AUTOSCALER_METRICS_PORT)]),
    ]
    ports = (head_ports if head else []) + [
        ("metrics", METRICS_PORT),
        ("agent", AGENT_PORT),
        *([("serve", SERVE_PORT)] if settings.serve else []),
    ]
    readiness = (
        http_probe(DASHBOARD_PORT, "/api/gcs_healthz", liveness=False)
        if head
        else http_probe(AGENT_PORT, "/api/healthz", liveness=False)
    )
    return {
        "name": "ray-head" if head else "ray-worker",
        "image": image,
        "command": shell(start),
        "workingDir": HOME_DIR,
        "env": ray_env(settings)
        + node_env(settings, head=head)
        + (gcs_storage_env(settings, storage_namespace) if head else []),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports],
        "resources": container_resources(resources),
        "securityContext": container_security(read_only=read_only_root_filesystem),
        "volumeMounts": ray_volume_mounts(settings, shm=True)
        + (gcs_storage_mounts(settings) if head else [])
        + (
            [{"name": AUTOSCALER_EVENTS_VOLUME, "mountPath": AUTOSCALER_LOGS_DIR, "readOnly": True}]
            if autoscaler_events
            else []
        ),
        "readinessProbe": readiness,
        "livenessProbe": http_probe(AGENT_PORT, "/api/healthz", liveness=True),
    }

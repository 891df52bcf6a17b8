"""The pod builders on their own: no Pulumi runtime, just settings in and Kubernetes dicts out."""

import dataclasses
import json
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from components.config.groups import DEFAULT_GROUP, WorkerGroup
from components.config.resources import PodResources
from components.config.settings import ClusterSettings
from components.manifests import pods, ray_node, security

SETTINGS = ClusterSettings(
    cluster_name="demo",
    namespace="ml",
    create_namespace=True,
    image="rayproject/ray:2.60.0",
    head=PodResources(cpu="2", memory="8Gi"),
    worker_groups=(
        WorkerGroup(
            name=DEFAULT_GROUP,
            replicas=2,
            resources=PodResources(cpu="1500m", memory="3Gi"),
            image="rayproject/ray:2.60.0",
        ),
    ),
    test_job=True,
    token_auth=True,
    client_namespaces=(),
    client_cidrs=(),
    metrics_namespaces=(),
    gcs_reconnect_timeout_seconds=30,
    worker_drain_seconds=120,
)


@pytest.mark.parametrize(("cpu", "cpus"), [("100m", 1), ("1", 1), ("1200m", 2), ("1500m", 2), ("2.1", 3), ("2001m", 3)])
def test_fractional_cpus_are_rounded_up_not_to_the_nearest(cpu: str, cpus: int) -> None:
    """Ray would otherwise schedule more work than the pod's CPU limit allows (1200m is 2 CPUs, not 1)."""
    assert ray_node.node_sizing(PodResources(cpu=cpu, memory="1Gi")).num_cpus == cpus


def test_sizing_rounds_cpus_up_and_keeps_the_object_store_inside_shm() -> None:
    sizing = ray_node.node_sizing(PodResources(cpu="1500m", memory="3Gi", gpus=2))
    assert (sizing.num_cpus, sizing.num_gpus) == (2, 2)
    assert sizing.memory_bytes + sizing.object_store_bytes == 3 * 2**30
    assert sizing.object_store_bytes < sizing.shm_bytes < 3 * 2**30
    assert sizing.shm_bytes % ray_node.MIB == 0


def test_worker_command_survives_the_shell() -> None:
    """The worker runs components/in_pod/worker_start.py's text, whole, with `ray start`'s arguments, through
    ray_node.sh's functions: nothing in either is changed by bash's quoting or by Kubernetes, which expands `$(NAME)`
    (NAME a variable of the container's env) and `$$` in a command."""
    resources = SETTINGS.worker_groups[0].resources
    args = ray_node.node_command(SETTINGS, resources, head=False)
    command = ray_node.ray_container(SETTINGS, resources, "rayproject/ray:2.60.0", head=False)["command"]
    assert command[:2] == ["/bin/bash", "-c"]
    assert command[2].startswith(f"ulimit -n {ray_node.NOFILE_LIMIT} ")
    assert shlex.split(command[2].split(f"{ray_node.RAY_NODE_SOURCE}\n", 1)[1]) == ["run_node", *args]
    assert args[:3] == ["python", "-c", WORKER_START_SOURCE] and "$" not in WORKER_START_SOURCE
    env = {variable["name"] for variable in ray_node.ray_env(SETTINGS) + ray_node.node_env(SETTINGS, head=False)}
    substituted = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", RAY_NODE_SOURCE))
    assert "$$" not in RAY_NODE_SOURCE and not substituted & env and "raylet_pid" in substituted
    assert args[3:] == ray_node.ray_start_args(SETTINGS, SETTINGS.worker_groups[0].resources, head=False)
    assert "--address=demo-head.ml.svc:6379" in args


# The whole wait, as a worker's init container runs it (written out by hand, so any change to it shows here).
WAIT_FOR_GCS = (
    "said=; said_at=0; while true; do "
    "if why=$(timeout 2 bash -c 'exec 3<>/dev/tcp/demo-head.ml.svc/6379' 2>&1); then "
    "why=$(ray health-check --address=demo-head.ml.svc:6379 2>&1) && break; "
    "why=${why##*$'\\n'}; why=${why:-\"ray health-check failed without a word\"}; pause=1; "
    "else why=${why%%$'\\n'*}; why=${why#*bash: }; why=${why#line *: }; why=${why:-no answer within 2 s}; "
    "pause=0.2; fi; "
    'if [ "$why" != "$said" ] || [ $((SECONDS - said_at)) -ge 5 ]; then '
    'echo "waiting for the Ray head (GCS) at demo-head.ml.svc:6379: $why"; said=$why; said_at=$SECONDS; fi; '
    'sleep "$pause"; done; echo "GCS at demo-head.ml.svc:6379 is ready"'
)


# A worker's init container: the TCP connect only (its Ray container runs the health check).
WAIT_FOR_GCS_PORT = (
    "said=; said_at=0; while true; do "
    "if why=$(timeout 2 bash -c 'exec 3<>/dev/tcp/demo-head.ml.svc/6379' 2>&1); then break; "
    "else why=${why%%$'\\n'*}; why=${why#*bash: }; why=${why#line *: }; why=${why:-no answer within 2 s}; "
    "pause=0.2; fi; "
    'if [ "$why" != "$said" ] || [ $((SECONDS - said_at)) -ge 5 ]; then '
    'echo "waiting for the Ray head (GCS) at demo-head.ml.svc:6379: $why"; said=$why; said_at=$SECONDS; fi; '
    'sleep "$pause"; done; echo "GCS at demo-head.ml.svc:6379 accepts connections"'
)


def test_wait_for_gcs_is_exactly_the_promised_script() -> None:
    """A TCP connect five times a second, then (for the autoscaler) `ray health-check` a second apart; an unchanged
    reason said every 5 s; bash's first line without its prefix, the health check's last line."""
    assert ray_node.wait_for_gcs_script(SETTINGS, health_check=True) == WAIT_FOR_GCS
    assert ray_node.wait_for_gcs_script(SETTINGS, health_check=False) == WAIT_FOR_GCS_PORT


def test_wait_for_gcs_loops_until_health_check_passes_and_says_why_not(tmp_path: Path) -> None:
    """Run for real under /bin/bash (as the container does), against a local port and a `ray` that refuses
    twice (as with a wrong token): the reason is said once while it stays the same, and the wait ends as soon as
    the health check passes."""
    fake_ray = tmp_path / "ray"
    fake_ray.write_text(
        '#!/bin/sh\ncount=$(cat "$0.calls" 2>/dev/null || echo 0); echo $((count + 1)) > "$0.calls"\n'
        '[ "$count" -ge 2 ] && exit 0\necho "Traceback ..." >&2; echo "Unauthenticated: invalid token" >&2; exit 1\n'
    )
    fake_ray.chmod(0o755)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        script = ray_node.wait_for_gcs_script(SETTINGS, health_check=True)
        assert script.count("demo-head.ml.svc") == 4 and script.count("6379") == 4
        port = str(listener.getsockname()[1])
        local = script.replace("demo-head.ml.svc", "127.0.0.1").replace("6379", port)
        result = subprocess.run(
            ["/bin/bash", "-c", local], env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"waiting for the Ray head (GCS) at 127.0.0.1:{port}: Unauthenticated: invalid token",
        f"GCS at 127.0.0.1:{port} is ready",
    ]
    assert (tmp_path / "ray.calls").read_text() == "3\n"  # one second apart: a Python start is not cheap

    unanswered = [
        ("127.0.0.1", "1", "connect: Connection refused"),
        ("no-such-head.invalid", "6379", "no-such-head.invalid: Name or service not known"),
    ]
    started = time.monotonic()
    waits = [
        subprocess.Popen(
            ["timeout", "7", "/bin/bash", "-c", wait.replace("demo-head.ml.svc", host).replace("6379", port)],
            env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            text=True,
        )
        for wait in (script, ray_node.wait_for_gcs_script(SETTINGS, health_check=False))
        for host, port, _ in unanswered
    ]
    outputs = [wait.communicate()[0] for wait in waits]
    assert time.monotonic() - started > 6.5  # they kept waiting
    for (host, port, why), output in zip(unanswered * 2, outputs, strict=True):
        # Tried five times a second, said at once and again after five seconds, not at every try.
        assert output == f"waiting for the Ray head (GCS) at {host}:{port}: {why}\n" * 2


def test_a_try_whose_syn_goes_unanswered_ends_within_its_bound_and_the_next_one_goes_on(tmp_path: Path) -> None:
    """A listener whose accept queue is full drops new SYNs, as a lost node's address does: without a bound, bash's
    connect would wait for the kernel's SYN retries (about two minutes). Each try ends after 2 s and says so, and
    once the queue has room the next try gets through."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port), timeout=5)  # a backlog of 0 holds one: it is full
        script = ray_node.wait_for_gcs_script(SETTINGS, health_check=False).replace("demo-head.ml.svc", "127.0.0.1")
        wait = subprocess.Popen(
            ["/bin/bash", "-c", script.replace("6379", str(port))],
            env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(5)
        listener.accept()[0].close()  # room again
        freed = time.monotonic()
        output = wait.communicate(timeout=10)[0]
        queued.close()
    assert wait.returncode == 0 and time.monotonic() - freed < ray_node.CONNECT_TIMEOUT_SECONDS + 1
    *waiting, ready = output.splitlines()
    assert waiting and set(waiting) == {f"waiting for the Ray head (GCS) at 127.0.0.1:{port}: no answer within 2 s"}
    assert ready == f"GCS at 127.0.0.1:{port} accepts connections"


def test_the_workers_wait_ends_when_the_port_opens_without_running_ray(tmp_path: Path) -> None:
    """The init container's wait: a port that opens a second late is found within a fifth of a second, and no
    `ray` runs (the fake one would fail the wait: the Ray container does the health check)."""
    fake_ray = tmp_path / "ray"
    fake_ray.write_text("#!/bin/sh\nexit 1\n")
    fake_ray.chmod(0o755)
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        script = ray_node.wait_for_gcs_script(SETTINGS, health_check=False).replace("demo-head.ml.svc", "127.0.0.1")
        wait = subprocess.Popen(
            ["/bin/bash", "-c", script.replace("6379", str(port))],
            env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1)
        placeholder.listen()
        opened = time.monotonic()
        output = wait.communicate(timeout=10)[0]
    assert wait.returncode == 0 and time.monotonic() - opened < 0.6
    assert output.splitlines() == [
        f"waiting for the Ray head (GCS) at 127.0.0.1:{port}: connect: Connection refused",
        f"GCS at 127.0.0.1:{port} accepts connections",
    ]


def test_labels_name_cluster_component_and_group() -> None:
    labels = pods.labels(SETTINGS, "worker", "gpu")
    assert labels["ray.io/cluster"] == labels["app.kubernetes.io/instance"] == "demo"
    assert labels["ray.io/group"] == "gpu" and labels["ray.io/node-type"] == "worker"
    assert pods.selector_labels(SETTINGS, "gpu").items() <= labels.items()


def test_gpu_resources_only_when_asked_for() -> None:
    assert "nvidia.com/gpu" not in ray_node.container_resources(PodResources(cpu="1", memory="1Gi"))["limits"]
    with_gpu = ray_node.container_resources(PodResources(cpu="1", memory="1Gi", gpus=4))
    assert with_gpu["limits"]["nvidia.com/gpu"] == with_gpu["requests"]["nvidia.com/gpu"] == "4"


def test_smoke_test_template_changes_with_the_script_and_the_cluster() -> None:
    first = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="print('a')", cluster_digest="1")
    second = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="print('b')", cluster_digest="1")
    third = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="print('a')", cluster_digest="2")
    assert len({json.dumps(t["metadata"]["annotations"]) for t in (first, second, third)}) == 3
    assert first["spec"]["restartPolicy"] == "Never"


def test_workers_drain_for_the_configured_time_and_the_kubelet_waits_for_it() -> None:
    worker = pods.worker_pod_template(SETTINGS, SETTINGS.worker_groups[0], {})
    head = pods.head_pod_template(SETTINGS, {})
    for template, drain in ((worker, 120), (head, ray_node.HEAD_DRAIN_SECONDS)):
        [ray] = template["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in ray["env"]}
        assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == str(drain)
        # Ray's teardown after the drain (about a second per process) must fit in the grace period as well.
        assert template["spec"]["terminationGracePeriodSeconds"] >= drain + 10
    # A head that drained would only delay its replacement; a worker outlasts Ray's default 30 s drain.
    assert head["spec"]["terminationGracePeriodSeconds"] < 30 < 120 <= worker["spec"]["terminationGracePeriodSeconds"]
    env = {item["name"]: item.get("value") for item in worker["spec"]["containers"][0]["env"]}
    assert env["RAY_gcs_rpc_server_reconnect_timeout_s"] == "30"


def test_workers_notice_a_new_head_within_seconds_and_the_head_keeps_rays_defaults() -> None:
    worker = pods.worker_pod_template(SETTINGS, SETTINGS.worker_groups[0], {})
    head = pods.head_pod_template(SETTINGS, {})
    [worker_env, head_env] = (
        {item["name"]: item.get("value") for item in template["spec"]["containers"][0]["env"]}
        for template in (worker, head)
    )
    # Ray's default self-check is every 60 s: a worker would stay in a cluster that no longer knows it that long.
    assert worker_env["RAY_raylet_liveness_self_check_interval_ms"] == "5000"
    assert "RAY_raylet_liveness_self_check_interval_ms" not in head_env
    assert "RAY_gcs_rpc_server_reconnect_timeout_s" not in head_env


def test_workers_roll_without_a_surge_pod_in_at_most_seven_rounds() -> None:
    rollout = pods.WORKER_ROLLOUT
    assert rollout == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}}
    # Kubernetes rounds maxUnavailable down, to at least 1 when maxSurge is 0.
    rounds = {n: -(-n // max(1, n * 25 // 100)) for n in range(1, 200)}
    assert max(rounds.values()) == pods.WORKER_ROLLOUT_ROUNDS


def test_every_ray_container_has_a_writable_home_as_its_working_directory() -> None:
    worker = pods.worker_pod_template(SETTINGS, SETTINGS.worker_groups[0], {})
    smoke = pods.smoke_test_pod_template(SETTINGS, script_config_map="cm", script="", cluster_digest="")
    for template in (worker, pods.head_pod_template(SETTINGS, {}), smoke):
        spec = template["spec"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        # Not the worker's init container, which runs no Ray code (tests/test_security.py), only bash.
        for container in spec["containers"]:
            env = {item["name"]: item.get("value") for item in container["env"]}
            assert env["HOME"] == container["workingDir"] == ray_node.HOME_DIR
            [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == ray_node.HOME_DIR]
            assert volumes[mount["name"]] == {"name": mount["name"], "emptyDir": {}} and not mount.get("readOnly")
            # Below the image's home, not over it: /home/ray/anaconda3 (conda, Ray) stays visible.
            assert ray_node.HOME_DIR.startswith("/home/ray/") and ray_node.HOME_DIR != "/home/ray/anaconda3"


# Literal expectations for the container builders: every field below is read by the API server, the kubelet or Ray,
# so a changed name, value or case changes what the cluster does (or gets the manifest rejected).
ULIMIT = 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; '
# 30% of the pod's memory for the object store, the rest for Ray's own accounting (8 GiB head, 3 GiB worker).
HEAD_RAY_START = (
    "run_node ray start --head --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265"
    " --ray-client-server-port=10001"
    " '--node-ip-address=$(RAY_POD_IP)' --num-cpus=2 --num-gpus=0 --memory=6012954215"
    " --object-store-memory=2576980377 --dashboard-agent-listen-port=52365"
    " --metrics-export-port=8080 --disable-usage-stats"
)
WORKER_START_ARGS = (
    "start --address=demo-head.ml.svc:6379"
    " '--node-ip-address=$(RAY_POD_IP)' --num-cpus=2 --num-gpus=0 --memory=2254857831"
    " --object-store-memory=966367641 --dashboard-agent-listen-port=52365"
    " --metrics-export-port=8080 --disable-usage-stats"
)
# A worker runs `ray start`'s arguments through components/in_pod/worker_start.py, whose text the command carries.
WORKER_START_SOURCE = (Path(__file__).parents[1] / "components" / "in_pod" / "worker_start.py").read_text()
WORKER_RAY_START = f"run_node python -c {shlex.quote(WORKER_START_SOURCE)} {WORKER_START_ARGS}"
# Both run it through components/in_pod/ray_node.sh's functions, which the command defines first.
RAY_NODE_SOURCE = (Path(__file__).parents[1] / "components" / "in_pod" / "ray_node.sh").read_text()
TOKEN_ENV = [
    {"name": "RAY_AUTH_MODE", "value": "token"},
    {"name": "RAY_AUTH_TOKEN_PATH", "value": "/etc/ray/auth/token"},
]
BASE_ENV = [
    {"name": "RAY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    {"name": "HOME", "value": "/home/ray/workspace"},
    {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
]
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
}
READINESS_TIMINGS = {"initialDelaySeconds": 1, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 10}
LIVENESS_TIMINGS = {"initialDelaySeconds": 30, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 120}
LIVENESS = {"httpGet": {"path": "/api/healthz", "port": 52365}, **LIVENESS_TIMINGS}
MOUNTS = [
    {"name": "tmp", "mountPath": "/tmp"},
    {"name": "home", "mountPath": "/home/ray/workspace"},
    {"name": "shm", "mountPath": "/dev/shm"},
    {"name": "auth-token", "mountPath": "/etc/ray/auth", "readOnly": True},
]


# What the head's and every worker's Ray container share: a writable HOME as working directory, the restricted
# security context, the token and /dev/shm mounts, and the lenient liveness probe.
EVERY_RAY_CONTAINER = {
    "workingDir": "/home/ray/workspace",
    "securityContext": RESTRICTED_CONTAINER,
    "volumeMounts": MOUNTS,
    "livenessProbe": LIVENESS,
}


def tcp_ports(*named: tuple[str, int]) -> list[dict[str, object]]:
    """Container ports as the API server accepts them: protocol is case-sensitive ("TCP", never "tcp")."""
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in named]


def test_head_container_is_exactly_the_promised_spec() -> None:
    """Ray's head: `ray start --head` in the foreground with the pod's own sizing, the GCS, dashboard and client
    ports named for the Service, readiness on the GCS health endpoint every second, liveness lenient as KubeRay's,
    the restricted security context, the token file, a memory-backed /dev/shm, and gRPC without fork support."""
    container = ray_node.ray_container(SETTINGS, SETTINGS.head, "rayproject/ray:2.60.0", head=True)
    assert container == {
        "name": "ray-head",
        "image": "rayproject/ray:2.60.0",
        "command": ["/bin/bash", "-c", f"{ULIMIT}{RAY_NODE_SOURCE}\n{HEAD_RAY_START}"],
        **EVERY_RAY_CONTAINER,
        "env": [
            *BASE_ENV,
            *TOKEN_ENV,
            {"name": "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "value": "0"},
            # Ray Client's proxier forks a server per client; with gRPC's fork support on, now and then it stalls.
            {"name": "GRPC_ENABLE_FORK_SUPPORT", "value": "0"},
        ],
        "ports": tcp_ports(
            ("gcs", 6379),
            ("dashboard", 8265),
            ("client", 10001),
            ("dash-metrics", 44227),
            ("as-metrics", 44217),
            ("metrics", 8080),
            ("agent", 52365),
        ),
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}},
        "readinessProbe": {"httpGet": {"path": "/api/gcs_healthz", "port": 8265}, **READINESS_TIMINGS},
    }


def test_worker_container_is_exactly_the_promised_spec() -> None:
    """A worker joins the head's GCS by its Service name, exposes only metrics and agent ports, is ready when its
    own agent answers, and tells the raylet how long to wait for a lost head and how often to check it is known."""
    group = SETTINGS.worker_groups[0]
    container = ray_node.ray_container(SETTINGS, group.resources, "my/ray:custom", head=False)
    assert container == {
        "name": "ray-worker",
        "image": "my/ray:custom",
        "command": ["/bin/bash", "-c", f"{ULIMIT}{RAY_NODE_SOURCE}\n{WORKER_RAY_START}"],
        **EVERY_RAY_CONTAINER,
        "env": [
            *BASE_ENV,
            *TOKEN_ENV,
            {"name": "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "value": "120"},
            {"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": "30"},
            {"name": "RAY_raylet_liveness_self_check_interval_ms", "value": "5000"},
        ],
        "ports": tcp_ports(("metrics", 8080), ("agent", 52365)),
        "resources": {"requests": {"cpu": "1500m", "memory": "3Gi"}, "limits": {"cpu": "1500m", "memory": "3Gi"}},
        "readinessProbe": {"httpGet": {"path": "/api/healthz", "port": 52365}, **READINESS_TIMINGS},
    }


def test_ray_start_flags_ray_reads_for_head_and_worker() -> None:
    """The argv itself (no shell): `--head` and the dashboard on all interfaces only on the head, `--address` only
    on workers, and on both no usage stats, and no `--block`: `ray start` returns once the node runs, and the
    container's main process is components/in_pod/ray_node.sh."""
    head = ray_node.ray_start_args(SETTINGS, SETTINGS.head, head=True)
    worker = ray_node.ray_start_args(SETTINGS, SETTINGS.worker_groups[0].resources, head=False)
    assert head == shlex.split(HEAD_RAY_START)[2:] and "--block" not in head + worker
    assert worker == shlex.split(WORKER_START_ARGS)
    gpu = ray_node.ray_start_args(SETTINGS, PodResources(cpu="4", memory="10Gi", gpus=2), head=False)
    assert [arg for arg in gpu if arg.startswith(("--num-cpus=", "--num-gpus="))] == ["--num-cpus=4", "--num-gpus=2"]


def test_ray_env_without_token_auth_has_no_auth_settings() -> None:
    """The pod IP from the downward API (status.podIP, case-sensitive), HOME and no usage stats; the token
    settings only when auth is on, pointing at the mounted Secret's file."""
    assert ray_node.ray_env(SETTINGS) == [*BASE_ENV, *TOKEN_ENV]
    assert ray_node.ray_env(dataclasses.replace(SETTINGS, token_auth=False)) == BASE_ENV


def test_security_contexts_meet_the_restricted_pod_security_standard() -> None:
    """Each field is one the "restricted" standard checks: non-root, no privilege escalation, every capability
    dropped ("ALL", case-sensitive), the RuntimeDefault seccomp profile; plus a read-only image and Ray's uid/gid."""
    assert security.container_security() == RESTRICTED_CONTAINER
    assert security.pod_security() == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 100,
        "fsGroup": 100,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_probes_ready_within_a_second_and_restart_only_after_ten_minutes() -> None:
    """Readiness: first check after 1 s, then every second, unready after 10 misses. Liveness: starts after 30 s,
    every 5 s, restarts only after 120 misses (10 minutes of a stalled node), like KubeRay's."""
    assert ray_node.http_probe(8265, "/x", liveness=False) == {
        "httpGet": {"path": "/x", "port": 8265},
        **READINESS_TIMINGS,
    }
    assert ray_node.http_probe(52365, "/y", liveness=True) == {
        "httpGet": {"path": "/y", "port": 52365},
        **LIVENESS_TIMINGS,
    }


def test_labels_are_the_recommended_and_kuberay_sets() -> None:
    """Exact keys (label keys are case-sensitive) and values that kubectl, dashboards and KubeRay tooling match."""
    assert pods.labels(SETTINGS, "worker", "gpu") == {
        "app.kubernetes.io/name": "ray",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "pulumi",
        "ray.io/cluster": "demo",
        "ray.io/node-type": "worker",
        "ray.io/group": "gpu",
    }


def test_worker_grace_period_is_the_drain_plus_the_shutdown_margin() -> None:
    """The kubelet waits the configured drain (120 s) plus 15 s for Ray's processes to stop before SIGKILL."""
    assert pods.worker_grace_seconds(SETTINGS) == 135
    assert pods.worker_grace_seconds(dataclasses.replace(SETTINGS, worker_drain_seconds=0)) == 15

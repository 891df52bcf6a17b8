"""GCS fault tolerance as the program renders it: the head's Redis settings, the workers' long wait for a lost
head, the stack's own Redis (volume, pod, Service, policy, password) or an existing one, and the cluster's own
namespace in Redis. Expectations are written out by hand, so any change to them shows here."""

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.config.fault_tolerance import GcsFaultTolerance
from components.manifests import redis
from tests.lifecycle import plan
from tests.program import Rendered
from tests.program import render_in_place as render
from tests.rehearsal.image import REDIS_SERVER
from tests.test_program import container, env, flag, node_start, pod_spec, ray_argv
from tests.variants import REDIS_CA

FAULT_TOLERANT = {"gcsFaultTolerance": "true"}
FAULT_TOLERANCE = GcsFaultTolerance(
    external_address="",
    tls=False,
    authenticates=True,
    ca_cert="",
    redis_image="redis:7.0.15",
    exporter_image="oliver006/redis_exporter:v1.45.0",
    memory="1Gi",
    storage="2Gi",
    storage_class="",
)
EXTERNAL = {**FAULT_TOLERANT, "redisAddress": "redis.example.internal:6379"}
PASSWORD_FILE = "/etc/ray/redis/password"
REDIS_LABELS = {
    "app.kubernetes.io/name": "redis",
    "app.kubernetes.io/instance": "ray",
    "app.kubernetes.io/component": "gcs-storage",
    "app.kubernetes.io/part-of": "ray",
    "app.kubernetes.io/managed-by": "pulumi",
}


@pytest.fixture
def tolerant() -> Rendered:
    return render(FAULT_TOLERANT)


def names(rendered: Rendered) -> dict[str, str]:
    return {r.urn: r.name for r in rendered.registrations}


def dependencies(rendered: Rendered, name: str) -> set[str]:
    [registration] = [r for r in rendered.registrations if r.name == name]
    return {names(rendered)[urn] for urn in registration.dependencies}


def head_start(rendered: Rendered) -> str:
    """What the head's shell command runs: `run_node ray start ...` and what follows it."""
    return node_start(rendered.one("Deployment", "ray-head"))


def test_the_head_keeps_the_gcs_in_the_stacks_redis_and_runs_no_tasks(tolerant: Rendered) -> None:
    head = tolerant.one("Deployment", "ray-head")
    head_env = env(container(head))
    assert head_env["RAY_REDIS_ADDRESS"] == "ray-redis.ray-test.svc:6379"
    assert head_env["RAY_external_storage_namespace"] == tolerant.outputs["gcsStorageNamespace"]
    assert "RAY_REDIS_CA_CERT" not in head_env
    argv = ray_argv(head)
    assert flag(argv, "--num-cpus") == "0"
    # The password is read from the mounted Secret by the shell, never written into the manifest.
    assert head_start(tolerant).endswith(f' --disable-usage-stats --redis-password="$(cat {PASSWORD_FILE})"')
    mounts = container(head)["volumeMounts"]
    assert {"name": "redis-password", "mountPath": "/etc/ray/redis", "readOnly": True} in mounts
    volumes = pod_spec(head)["volumes"]
    # The password only: the same Secret holds the stack's Redis's whole config.
    password_only = {
        "secretName": "ray-redis",
        "defaultMode": 0o440,
        "items": [{"key": "password", "path": "password"}],
    }
    assert {"name": "redis-password", "secret": password_only} in volumes


def test_without_fault_tolerance_the_head_has_no_redis_and_runs_tasks() -> None:
    default = render()
    head = default.one("Deployment", "ray-head")
    assert not {"RAY_REDIS_ADDRESS", "RAY_external_storage_namespace"} & env(container(head)).keys()
    assert flag(ray_argv(head), "--num-cpus") == "1"
    assert "redis" not in json.dumps(default.manifests).lower()
    assert default.outputs["gcsStorageNamespace"] is None


@pytest.mark.parametrize(
    ("config", "seconds"),
    [({}, "60"), (FAULT_TOLERANT, "600"), ({**FAULT_TOLERANT, "gcsReconnectTimeoutSeconds": "45"}, "45")],
)
def test_workers_wait_for_a_lost_head_as_long_as_it_takes_to_come_back(config: dict[str, str], seconds: str) -> None:
    """With fault tolerance the head comes back with the cluster's state, so workers wait for it (KubeRay's
    600 s) instead of exiting to join an empty head; a configured wait is kept either way."""
    worker = container(render(config).one("Deployment", "ray-worker"))
    assert env(worker)["RAY_gcs_rpc_server_reconnect_timeout_s"] == seconds


def test_the_stacks_redis_is_one_restricted_pod_with_its_data_on_a_claim(tolerant: Rendered) -> None:
    deployment = tolerant.one("Deployment", "ray-redis")
    claim = tolerant.one("PersistentVolumeClaim")
    version = deployment["spec"]["template"]["metadata"]["labels"][redis.PASSWORD_VERSION_LABEL]
    ping = 'REDISCLI_AUTH="$(cat /etc/redis/password)" redis-cli -h 127.0.0.1 -p 6379 ping | grep -qx PONG'
    assert deployment["metadata"]["labels"] == REDIS_LABELS
    assert deployment["spec"] == {
        "replicas": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": "ray"}},
        "strategy": {"type": "Recreate"},
        "template": {
            "metadata": {"labels": {**REDIS_LABELS, redis.PASSWORD_VERSION_LABEL: version}},
            "spec": {
                "serviceAccountName": "ray",
                "automountServiceAccountToken": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 999,
                    "runAsGroup": 999,
                    "fsGroup": 999,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "redis",
                        "image": "redis:7.0.15",
                        "command": ["redis-server", "/etc/redis/redis.conf"],
                        "ports": [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}],
                        "resources": {
                            "requests": {"cpu": "250m", "memory": "1Gi"},
                            "limits": {"cpu": "250m", "memory": "1Gi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True,
                            "runAsUser": 999,
                            "runAsGroup": 999,
                        },
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data"},
                            {"name": "config", "mountPath": "/etc/redis", "readOnly": True},
                        ],
                        "readinessProbe": {
                            "exec": {"command": ["sh", "-c", ping]},
                            "periodSeconds": 2,
                            "timeoutSeconds": 2,
                            "failureThreshold": 3,
                        },
                        "livenessProbe": {
                            "tcpSocket": {"port": 6379},
                            "initialDelaySeconds": 10,
                            "periodSeconds": 10,
                            "failureThreshold": 6,
                        },
                    }
                ],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}},
                    {"name": "config", "secret": {"secretName": "ray-redis", "defaultMode": 0o440}},
                ],
            },
        },
    }
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}
    assert claim["metadata"]["labels"] == REDIS_LABELS
    assert claim["metadata"]["name"].startswith("ray-redis-data")  # named by Pulumi, so it can be replaced
    assert tolerant.one("Service", "ray-redis")["spec"] == {
        "type": "ClusterIP",
        "selector": {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": "ray"},
        "ports": [{"name": "redis", "port": 6379, "targetPort": 6379, "protocol": "TCP"}],
    }


def test_the_redis_volume_takes_its_size_and_storage_class_from_config() -> None:
    claim = render({**FAULT_TOLERANT, "redisStorage": "5Gi", "redisStorageClass": "fast-ssd"}).one(
        "PersistentVolumeClaim"
    )
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "fast-ssd",
    }


def test_only_the_head_may_reach_the_stacks_redis(tolerant: Rendered) -> None:
    """Its own policy admits the head's pods on the Redis port; no Ray policy selects it (its labels carry no
    `ray.io/cluster`), so workers, clients and scrapers cannot reach it."""
    policy = tolerant.one("NetworkPolicy", "ray-redis")
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": "ray"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"ray.io/cluster": "ray", "ray.io/group": "head"}}}],
                "ports": [{"port": 6379, "protocol": "TCP"}],
            }
        ],
    }
    redis_pod = tolerant.one("Deployment", "ray-redis")["spec"]["template"]["metadata"]["labels"]
    for other in tolerant.of_kind("NetworkPolicy"):
        if other is not policy:
            assert not other["spec"]["podSelector"]["matchLabels"].items() <= redis_pod.items()


def test_the_redis_password_is_generated_once_kept_secret_and_read_from_files(tolerant: Rendered) -> None:
    secret = tolerant.one("Secret", "ray-redis")
    password = secret["stringData"]["password"]
    assert len(password) == 32 and password.isalnum()
    # Memory for data up to three quarters of the pod's 1Gi, and no eviction: the GCS's state is never dropped.
    assert secret["stringData"]["redis.conf"] == (
        'port 6379\nbind * -::*\ndir /data\nappendonly yes\nappendfsync everysec\nsave ""\n'
        f'maxmemory 805306368\nmaxmemory-policy noeviction\nrequirepass "{password}"\n'
    )
    assert tolerant.registration_of(secret).secret_paths == {"stringData"}
    holders = {r.name for r in tolerant.registrations if password in json.dumps(r.inputs)}
    assert holders == {"ray-redis-password", "ray-redis-password-version", "ray-redis-secret"}
    assert password not in json.dumps(tolerant.outputs)


def test_a_given_redis_password_is_used() -> None:
    given = 'a pass"word with \\ and é'
    rendered = render({**FAULT_TOLERANT, "redisPassword": given}, secrets=("redisPassword",))
    data = rendered.one("Secret", "ray-redis")["stringData"]
    assert data["password"] == given
    assert data["redis.conf"].splitlines()[-1] == 'requirepass "a pass\\"word with \\\\ and \\xc3\\xa9"'


@pytest.mark.rehearsal
@pytest.mark.parametrize("password", ["plain", 'quote " backslash \\ hash # space', "tab\tnewline\né", "$(id)"])
def test_redis_reads_the_password_back_exactly(password: str, tmp_path: Path) -> None:
    """Redis's own parser reads the quoted password back: the Redis stand-in of the rehearsal (the same Redis as
    the pinned image), started with the rendered file, accepts exactly that password and no other."""
    config = tmp_path / "redis.conf"
    socket_path = tmp_path / "redis.sock"
    config.write_text(
        redis.config_file(password, FAULT_TOLERANCE)
        .replace("port 6379", "port 0")
        .replace("dir /data", f"dir {tmp_path}")
        + f"unixsocket {socket_path}\n"
    )
    server = subprocess.Popen(
        ["redis-server", str(config)], executable=REDIS_SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        def ping(given: str) -> str:
            return subprocess.run(
                ["redis-cli", "-s", str(socket_path), "ping"],
                env={"REDISCLI_AUTH": given, "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()

        assert ping(password) == "PONG"
        assert ping(password + "x").startswith(("WRONGPASS", "AUTH failed", "NOAUTH"))
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_password_changes_roll_the_head_and_the_redis_but_not_the_workers() -> None:
    def labels(rendered: Rendered, name: str) -> dict[str, Any]:
        found: dict[str, Any] = rendered.one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        return found

    before = render(FAULT_TOLERANT)
    after = render({**FAULT_TOLERANT, "redisPassword": "rotated-password"}, secrets=("redisPassword",))
    for name in ("ray-head", "ray-redis"):
        assert labels(before, name)[redis.PASSWORD_VERSION_LABEL] != labels(after, name)[redis.PASSWORD_VERSION_LABEL]
    assert redis.PASSWORD_VERSION_LABEL not in labels(after, "ray-worker")
    assert before.one("Deployment", "ray-worker") == after.one("Deployment", "ray-worker")


def test_the_head_starts_against_a_ready_redis_and_the_redis_after_its_claim(tolerant: Rendered) -> None:
    access = {"ray-namespace", "ray-service-account", "ray-internal-traffic", "ray-auth-token-secret"}
    storage = {"ray-redis-secret", "ray-redis-data", "ray-redis", "ray-redis-service", "ray-redis-traffic"}
    assert dependencies(tolerant, "ray-head") == access | storage | {
        "ray-auth-token-version",
        "ray-redis-password-version",
        "ray-gcs-storage-namespace",
    }
    assert dependencies(tolerant, "ray-redis") >= access | {"ray-redis-secret", "ray-redis-data"}
    assert dependencies(tolerant, "ray-worker") == access | {"ray-auth-token-version"}
    assert storage <= dependencies(tolerant, "ray-smoke-test")


def test_each_cluster_has_its_own_namespace_in_redis(tolerant: Rendered) -> None:
    """Drawn once per cluster and kept through head restarts; a cluster of another name or namespace (which may
    run beside it on the same Redis) draws its own, so none resumes another's state."""
    [cluster_id] = [r for r in tolerant.registrations if r.name == "ray-gcs-storage-namespace"]
    assert cluster_id.inputs["byteLength"] == 8
    assert cluster_id.inputs["keepers"] == {"clusterName": "ray", "namespace": "ray-test"}
    assert tolerant.outputs["gcsStorageNamespace"] == f"ray-{cluster_id.inputs['hex']}"


def test_an_existing_redis_gets_no_redis_of_the_stacks_own() -> None:
    rendered = render(EXTERNAL)
    assert not [m for m in rendered.manifests if "redis" in m["metadata"].get("name", "")]
    assert rendered.of_kind("PersistentVolumeClaim") == []
    head = container(rendered.one("Deployment", "ray-head"))
    assert env(head)["RAY_REDIS_ADDRESS"] == "redis.example.internal:6379"
    assert "--redis-password" not in head_start(rendered)  # none given: the Redis asks for none


def test_an_existing_redis_with_a_password_and_tls() -> None:
    config = {
        **FAULT_TOLERANT,
        "redisAddress": "rediss://redis.example.internal:6380",
        "redisPassword": "the-existing-password",
        "redisCaCert": REDIS_CA,
    }
    rendered = render(config, secrets=("redisPassword",))
    assert rendered.one("Secret", "ray-redis")["stringData"] == {"password": "the-existing-password"}
    assert rendered.one("ConfigMap", "ray-redis-ca")["data"] == {"ca.crt": REDIS_CA.strip()}
    head = rendered.one("Deployment", "ray-head")
    head_env = env(container(head))
    assert head_env["RAY_REDIS_ADDRESS"] == "rediss://redis.example.internal:6380"
    assert head_env["RAY_REDIS_CA_CERT"] == "/etc/ray/redis-ca/ca.crt"
    assert "RAY_REDIS_CA_PATH" not in head_env
    assert {"name": "redis-ca", "mountPath": "/etc/ray/redis-ca", "readOnly": True} in container(head)["volumeMounts"]
    ca_volume = {"name": "redis-ca", "configMap": {"name": "ray-redis-ca", "defaultMode": 0o444}}
    assert ca_volume in pod_spec(head)["volumes"]
    assert head_start(rendered).endswith(f' --redis-password="$(cat {PASSWORD_FILE})"')
    assert "the-existing-password" not in json.dumps(head)
    assert {"ray-redis-ca", "ray-redis-secret"} <= dependencies(rendered, "ray-head")


def test_a_tls_redis_without_a_ca_of_its_own_is_checked_against_the_images_system_cas() -> None:
    rendered = render({**FAULT_TOLERANT, "redisAddress": "rediss://redis.example.internal:6380"})
    head_env = env(container(rendered.one("Deployment", "ray-head")))
    assert head_env["RAY_REDIS_CA_PATH"] == "/etc/ssl/certs"
    assert "RAY_REDIS_CA_CERT" not in head_env
    assert rendered.of_kind("ConfigMap") == [rendered.one("ConfigMap", "ray-smoke-test")]


def test_a_short_wait_for_a_lost_head_is_warned_about_with_fault_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warned.append(message))
    render({**FAULT_TOLERANT, "gcsReconnectTimeoutSeconds": "60"})
    assert [w for w in warned if "gcsReconnectTimeoutSeconds is 60" in w] != []
    warned.clear()
    render(FAULT_TOLERANT)
    render({"gcsReconnectTimeoutSeconds": "60"})
    assert [w for w in warned if "gcsReconnectTimeoutSeconds" in w] == []


def test_the_shell_passes_the_password_file_to_ray_start_word_for_word(tmp_path: Path) -> None:
    """The head's command as bash runs it, with `ray` a stand-in that prints its arguments: the password arrives
    as one argument, exactly as in the file, whatever it holds. (The stand-in leaves no Ray process running, so the
    container's main process then says so and exits 1.)"""
    rendered = render(FAULT_TOLERANT)
    command = container(rendered.one("Deployment", "ray-head"))["command"]
    password = 'it\'s "quoted" $(id) `id` * ; & | \\'
    (tmp_path / "password").write_text(password)
    (tmp_path / "ray").write_text('#!/bin/sh\nfor word in "$@"; do printf "%s\\n" "$word"; done\n')
    (tmp_path / "ray").chmod(0o755)
    script = command[2].replace(PASSWORD_FILE, str(tmp_path / "password")).replace("$(RAY_POD_IP)", "10.0.0.2")
    result = subprocess.run(
        ["/bin/bash", "-c", script],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    *_, last_argument, said = result.stdout.splitlines()
    assert last_argument == f"--redis-password={password}"
    assert said.startswith("ray-node: no Ray process left by the start") and result.returncode == 1


@pytest.mark.parametrize("create_namespace", ["true", "false"])
def test_destroy_leaves_no_state_in_the_stacks_redis(create_namespace: str) -> None:
    """`pulumi destroy` deletes the Redis with its claim (so its volume, reclaim policy Delete), the pod before the
    claim it holds, also in a namespace the stack does not own and leaves in place."""
    destroy = plan(render({**FAULT_TOLERANT, "createNamespace": create_namespace}), None)
    assert destroy.hazards == () and destroy.errors == ()
    deleted = [op.obj.kind for op in destroy.operations if op.obj and op.action == "delete"]
    assert "PersistentVolumeClaim" in deleted
    redis_deployment = [op for op in destroy.operations if op.obj and op.obj.name == "ray-redis"]
    claim = [op for op in destroy.operations if op.obj and op.obj.kind == "PersistentVolumeClaim"]
    assert destroy.operations.index(redis_deployment[0]) < destroy.operations.index(claim[0])


def test_turning_fault_tolerance_off_deletes_the_stacks_redis_and_its_claim() -> None:
    changes = plan(render(FAULT_TOLERANT), render())
    assert changes.hazards == () and changes.errors == ()
    assert {"ray-redis", "ray-redis-data", "ray-redis-secret", "ray-gcs-storage-namespace"} <= set(changes.deleted())


def test_a_ca_saved_with_windows_line_endings_is_taken_as_pem() -> None:
    config = {**FAULT_TOLERANT, "redisAddress": "rediss://redis.example.internal:6380"}
    rendered = render({**config, "redisCaCert": REDIS_CA.replace("\n", "\r\n")})
    assert rendered.one("ConfigMap", "ray-redis-ca")["data"] == {"ca.crt": REDIS_CA.strip()}

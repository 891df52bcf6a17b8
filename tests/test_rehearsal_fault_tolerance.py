"""The rehearsal of GCS fault tolerance: the rendered pods, the stack's own Redis among them, run as real Ray and
Redis processes (Debian's redis-server stands in for the pinned redis image, see tests/rehearsal/image.py).

One fault-tolerant cluster lives through the module, in order: it forms and passes its smoke test with its own
Redis; (a) its head pod is deleted while a detached actor lives on a worker, and every worker keeps running, the
actor answers with its state, the job list keeps the earlier jobs and the smoke test passes again; (c) its Redis
pod is deleted, and the cluster recovers with its state; (b) it is moved to an existing Redis (given by
`redisAddress`, with a password), and drill (a) holds there too. Needs root; without it these tests fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from components.manifests import security
from tests.program import ROOT, Rendered
from tests.rehearsal.cluster import Cluster, wait_for
from tests.rehearsal.kubelet import IMAGE_ROOT, Manifest, Pod
from tests.test_rehearsal import UP_TIMEOUT, Deployment

pytestmark = pytest.mark.rehearsal

# A password that only survives if every layer quotes it: the Secret, redis.conf, the shell and `ray start`.
REDIS_PASSWORD = 'a "quoted" pass with spaces, $(id), `id`, # and é'
CONFIG: dict[str, object] = {"gcsFaultTolerance": "true", "workers": "2", "redisPassword": REDIS_PASSWORD}
EXTERNAL_NAMESPACE = "shared-redis"
EXTERNAL_PASSWORD = "the-platform-teams-redis-password"
README = (ROOT / "README.md").read_text()
HEAL_BOUND_SECONDS = 60  # a lost head is back, with every worker still in its cluster, within this

CREATE_LEDGER = """
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]

@ray.remote(num_cpus=0)
class Ledger:
    def __init__(self):
        self.entries = []
    def add(self, entry):
        self.entries.append(entry)
        return self.entries
    def node(self):
        return ray.get_runtime_context().get_node_id()

ledger = Ledger.options(
    name="ledger", namespace="drill", lifetime="detached",
    scheduling_strategy=NodeAffinitySchedulingStrategy(workers[0], soft=False),
).remote()
print("entries", ray.get(ledger.add.remote("before")))
print("node", ray.get(ledger.node.remote()))
"""


def add_to_ledger(entry: str) -> str:
    return f"""
import ray
ray.init()
ledger = ray.get_actor("ledger", namespace="drill")
print("entries", ray.get(ledger.add.remote({entry!r})))
"""


@pytest.fixture(scope="module")
def deployment(cluster: Cluster) -> Deployment:
    return Deployment.deployed(cluster, CONFIG)


def ray_job(deployment: Deployment, script: str) -> str:
    """A Ray job through the Jobs API (its driver runs on the head); its output once it succeeded."""
    status, logs = deployment.finished_job(deployment.submit(script), timeout=180)
    assert status == "SUCCEEDED", logs
    return logs


def ledger_entries(logs: str) -> list[str]:
    [line] = [line for line in logs.splitlines() if line.startswith("entries ")]
    entries: list[str] = json.loads(line.removeprefix("entries ").replace("'", '"'))
    return entries


def job_ids(deployment: Deployment) -> dict[str, str]:
    """`ray job list`: every submission the cluster remembers, with its status."""
    status, body = deployment.dashboard("/api/jobs/", deployment.token)
    assert status == 200
    return {job["submission_id"]: job["status"] for job in json.loads(body) if job.get("submission_id")}


def worker_exits(workers: list[Pod]) -> dict[str, tuple[int, int]]:
    """Per worker pod: how often its Ray container exited, and how often the kubelet restarted a container."""
    return {pod.name: (len(pod.statuses["ray-worker"].exits), pod.restarts()) for pod in workers}


def heal_after_losing_the_head(deployment: Deployment) -> float:
    """Delete the head pod (as a node failure or an eviction does); returns the seconds until a new head is
    ready and every worker is a live node of its cluster."""
    old_head = deployment.head()
    deleted_at = time.monotonic()
    deployment.cluster.delete_pod(old_head.name)
    wait_for(
        lambda: [p for p in deployment.pods("ray-head-") if p.ready and p.name != old_head.name],
        HEAL_BOUND_SECONDS,
        "a new head",
    )
    deployment.wait_joined(HEAL_BOUND_SECONDS, "every worker in the new head's cluster")
    return time.monotonic() - deleted_at


def drill_head_loss(deployment: Deployment) -> None:
    """Drill (a): the head is lost while a detached actor lives on a worker."""
    created = ray_job(deployment, CREATE_LEDGER)
    assert ledger_entries(created) == ["before"]
    jobs_before = job_ids(deployment)
    assert "SUCCEEDED" in jobs_before.values()
    workers = deployment.workers()
    exits = worker_exits(workers)

    healed = heal_after_losing_the_head(deployment)
    print(f"head lost: back with every worker in {healed:.1f}s")

    assert [pod.name for pod in deployment.workers()] == [pod.name for pod in workers]  # the same pods
    assert worker_exits(workers) == exits  # Ray never stopped on any worker
    assert ledger_entries(ray_job(deployment, add_to_ledger("after"))) == ["before", "after"]
    remembered = job_ids(deployment)
    assert jobs_before.items() <= remembered.items()
    assert {pod.ip for pod in workers} <= set(deployment.smoke_test().split("nodes that ran calls: ")[1].split())


def test_the_fault_tolerant_cluster_forms_with_its_own_redis(deployment: Deployment) -> None:
    [redis] = deployment.pods("ray-redis-")
    assert redis.ready and redis.restarts() == 0
    assert [pod.phase for pod in deployment.smoke_test_runs()] == ["Succeeded"]
    # The head read the password from its file: the GCS is up on the Redis, whose password is in no manifest and
    # in none of Ray's session logs.
    head = deployment.head()
    assert head.ready
    assert not [m for m in deployment.rendered.manifests if m["kind"] != "Secret" and "pass with" in json.dumps(m)]
    logs = [path for path in (head.directory / "volumes" / "tmp" / "ray").glob("session_*/logs/**/*") if path.is_file()]
    assert len(logs) > 10
    assert [path.name for path in logs if b"pass with spaces" in path.read_bytes()] == []


def test_a_lost_head_loses_nothing_with_the_stacks_redis(deployment: Deployment) -> None:
    drill_head_loss(deployment)


def test_a_lost_redis_pod_comes_back_with_the_clusters_state(deployment: Deployment) -> None:
    """Ray's GCS does not reconnect to a Redis that went away: it exits, the head container restarts and its
    GCS reloads the state from the new Redis pod, which found it on its claim. Workers never stop."""
    [redis] = deployment.pods("ray-redis-")
    head, workers = deployment.head(), deployment.workers()
    exits, head_restarts = worker_exits(workers), head.restarts()
    deleted_at = time.monotonic()
    deployment.cluster.delete_pod(redis.name)
    wait_for(lambda: [p for p in deployment.pods("ray-redis-") if p.ready and p.name != redis.name], 120, "Redis")
    wait_for(lambda: head.restarts() > head_restarts and head.ready, 180, "the head's restart on the new Redis")
    deployment.wait_joined(180, "every worker in the cluster")
    print(f"Redis lost: the head is back with every worker in {time.monotonic() - deleted_at:.1f}s")
    assert deployment.head() is head  # the same pod: its Ray container restarted, nothing was rescheduled
    assert worker_exits(workers) == exits
    assert ledger_entries(ray_job(deployment, add_to_ledger("after Redis"))) == ["before", "after", "after Redis"]
    deployment.smoke_test()


# The existing Redis speaks TLS only, with a certificate of a private CA for its Service's name.
EXTERNAL_HOST = f"redis.{EXTERNAL_NAMESPACE}.svc"
EXTERNAL_CA = trustme.CA()
EXTERNAL_CERTIFICATE = EXTERNAL_CA.issue_cert(EXTERNAL_HOST, f"{EXTERNAL_HOST}.cluster.local")


def external_redis() -> list[Manifest]:
    """A Redis someone else runs, in a namespace of its own (the platform team's, not this stack's): TLS only,
    with a password."""
    labels = {"app": "shared-redis"}
    metadata = {"name": "redis", "namespace": EXTERNAL_NAMESPACE}
    tls = {
        "tls.crt": EXTERNAL_CERTIFICATE.cert_chain_pems[0].bytes().decode(),
        "tls.key": EXTERNAL_CERTIFICATE.private_key_pem.bytes().decode(),
    }
    command = [
        "redis-server", "--requirepass", EXTERNAL_PASSWORD, "--appendonly", "yes", "--port", "0",
        "--tls-port", "6379", "--tls-cert-file", "/tls/tls.crt", "--tls-key-file", "/tls/tls.key",
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {**metadata, "name": "redis-tls"}, "stringData": tls},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {"fsGroup": 999},
                        "containers": [
                            {
                                "name": "redis",
                                "image": "redis:7.0.15",
                                "command": command,
                                "securityContext": security.container_security(999, 999),
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/data"},
                                    {"name": "tls", "mountPath": "/tls", "readOnly": True},
                                ],
                                "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1},
                            }
                        ],
                        "volumes": [
                            {"name": "data", "emptyDir": {}},
                            {"name": "tls", "secret": {"secretName": "redis-tls", "defaultMode": 0o440}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {"selector": labels, "ports": [{"name": "redis", "port": 6379, "targetPort": 6379}]},
        },
    ]


@pytest.fixture(scope="module")
def on_an_existing_redis(deployment: Deployment) -> Iterator[Deployment]:
    """The cluster moved to an existing TLS Redis with a private CA: its own Redis goes, the head restarts on
    the new (empty) storage and the workers rejoin it."""
    manifests = external_redis()
    for manifest in manifests:
        deployment.cluster.apply(manifest)
    wait_for(lambda: deployment.cluster.is_ready(manifests[1]), 120, "the existing Redis")
    deployment.update(
        redisAddress=f"rediss://{EXTERNAL_HOST}:6379",
        redisPassword=EXTERNAL_PASSWORD,
        redisCaCert=EXTERNAL_CA.cert_pem.bytes().decode(),
    )
    yield deployment


def test_moving_to_an_existing_redis_removes_the_stacks_own(on_an_existing_redis: Deployment) -> None:
    deployment = on_an_existing_redis
    assert deployment.pods("ray-redis-") == []
    assert not [key for key in deployment.cluster.objects if key[0] == "PersistentVolumeClaim"]
    [head] = deployment.head().spec["containers"]
    env = {item["name"]: item.get("value") for item in head["env"]}
    assert env["RAY_REDIS_ADDRESS"] == f"rediss://{EXTERNAL_HOST}:6379"
    assert [pod.phase for pod in deployment.smoke_test_runs()] == ["Succeeded"]


def test_a_lost_head_loses_nothing_with_an_existing_redis(on_an_existing_redis: Deployment) -> None:
    drill_head_loss(on_an_existing_redis)


def redis_cli(redis: Pod, ca: Path, *command: str) -> str:
    """redis-cli in the Redis pod's network, over TLS, with the existing Redis's password (from the environment)."""
    tls = ["--tls", "--cacert", str(ca), "--sni", EXTERNAL_HOST]
    result = subprocess.run(
        ["ip", "netns", "exec", redis.network_namespace, "redis-cli", *tls, "-h", redis.ip, *command],
        env={"REDISCLI_AUTH": EXTERNAL_PASSWORD, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout


def test_the_readmes_cleanup_deletes_this_clusters_keys_and_no_others(
    on_an_existing_redis: Deployment, tmp_path: Path
) -> None:
    """The README's line for an existing Redis, run as written (the values filled in; for TLS with a private CA,
    as the README says: `use_ssl=True` and RAY_REDIS_CA_CERT) once the cluster is gone: every key of this
    cluster's storage namespace is deleted, another cluster's keys stay."""
    deployment = on_an_existing_redis
    ca = tmp_path / "ca.pem"
    EXTERNAL_CA.cert_pem.write_to_path(str(ca))
    [redis] = [pod for name, pod in deployment.cluster.pods.items() if name.startswith("redis-") and pod.active]
    namespace = str(deployment.rendered.outputs["gcsStorageNamespace"])
    redis_cli(redis, ca, "HSET", "RAYanother-cluster@KV", "key", "value")
    ours = redis_cli(redis, ca, "--scan", "--pattern", f"RAY{namespace}@*").split()
    assert len(ours) >= 3, ours  # nodes, jobs, KV, ...
    deployment.cluster.up(Rendered(registrations=[], outputs={}), timeout=UP_TIMEOUT)  # `pulumi destroy`
    assert deployment.pods("ray-") == []
    [line] = re.findall(r"^REDIS_PASSWORD=\S+ python -c .*$", README, re.MULTILINE)
    command = line.replace("REDIS_HOST", redis.ip).replace("STORAGE_NAMESPACE", namespace)
    command = command.replace("REDIS_PASSWORD=... ", "").replace("python", str(IMAGE_ROOT / "bin" / "python"), 1)
    command = command.replace("use_ssl=False", "use_ssl=True")
    subprocess.run(
        ["ip", "netns", "exec", redis.network_namespace, "/bin/sh", "-c", command],
        env={"REDIS_PASSWORD": EXTERNAL_PASSWORD, "RAY_REDIS_CA_CERT": str(ca), "PATH": "/usr/bin:/bin"},
        check=True, timeout=120,
    )  # fmt: skip
    assert redis_cli(redis, ca, "--scan", "--pattern", f"RAY{namespace}@*").split() == []
    assert redis_cli(redis, ca, "--scan", "--pattern", "RAY*").split() == ["RAYanother-cluster@KV"]

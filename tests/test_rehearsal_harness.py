"""The rehearsal harness on its own, with small hand-made manifests and no Ray where it can be helped.

Without root: Kubernetes' `$(VAR)` expansion, quantities, effective requests, tolerations, rolling-update bounds,
that the harness knows nothing of this project's commands, names or ports, which it must read from the
manifests, and what it refuses (images it has no stand-in for, probes and volumes it does not emulate). Marked
`rehearsal` (they fail, never skip, without root and the stand-ins scripts/test installs as root): a Redis of
another version than the one installed refused, the images' filesystems and config, the scheduler, Deployment
rollouts, graceful termination, `pulumi up`'s replacement and await rules, owner references and the foreground
cascade of an owner's deletion, probes, and PersistentVolumeClaims with a Redis that keeps its data on one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.program import (
    AUTONAMED_ANNOTATION,
    ROOT,
    Options,
    Registration,
    Rendered,
    auto_name,
    kubernetes_uid,
    provider_id,
    render_in_place,
)
from tests.rehearsal import image, network_policy
from tests.rehearsal.cluster import Cluster, InvalidError, JobFailedError, StorageClass, rolling_bounds, wait_for
from tests.rehearsal.kubelet import Manifest, Pod, UnsupportedError, check_supported, expand, quantity
from tests.rehearsal.scheduler import Node, pod_requests, tolerates
from tests.ssa import AlreadyExistsError

NAMESPACE = "harness"
# The harness's pods run in the Ray image's stand-in unless a test names another image.
RAY_IMAGE = "rayproject/ray:2.60.0"
# The program's pinned Redis (one source of truth: Pulumi.yaml's default), which the stand-in must be.
REDIS_IMAGE: str = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["redisImage"]["default"]
# A main process that ends as soon as it is asked to (PID 1 gets SIGTERM only if it handles it).
SERVE = 'trap "exit 0" TERM; while :; do sleep 0.1; done'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--node-ip-address=$(POD_IP)", "--node-ip-address=10.0.0.7"),
        ("$(POD_IP):$(PORT)", "10.0.0.7:6379"),
        ("$(UNDEFINED) stays", "$(UNDEFINED) stays"),
        ("$$(POD_IP) is escaped", "$(POD_IP) is escaped"),
        ('ulimit -n "$(ulimit -Hn)"', 'ulimit -n "$(ulimit -Hn)"'),
        ("plain $HOME", "plain $HOME"),
    ],
)
def test_kubernetes_variable_expansion(text: str, expected: str) -> None:
    assert expand(text, {"POD_IP": "10.0.0.7", "PORT": "6379"}) == expected


def test_the_harness_knows_nothing_of_this_project() -> None:
    facts = re.compile(r"ray start|ray-head|ray-worker|smoke|6379|8265|10001|52365|wait-gcs|RAY_AUTH|--head")
    for source in (ROOT / "tests" / "rehearsal").glob("*.py"):
        assert facts.findall(source.read_text()) == [], source.name


@pytest.mark.parametrize(
    ("text", "amount"),
    [("500m", "0.5"), ("2", "2"), (3, "3"), ("1.5", "1.5"), ("4Gi", str(4 * 2**30)), ("1k", "1000"),
     ("1e3", "1000"), ("128974848", "128974848"), ("129M", "129000000"), ("0", "0")],
)  # fmt: skip
def test_quantities(text: str | int, amount: str) -> None:
    assert quantity(text) == Decimal(amount)


def test_effective_requests_are_the_larger_of_the_largest_init_container_and_the_containers_together() -> None:
    def with_resources(requests: dict[str, str], limits: dict[str, str] | None = None) -> Manifest:
        return {"name": "c", "resources": {"requests": requests, **({"limits": limits} if limits else {})}}

    spec = {
        "initContainers": [with_resources({"cpu": "3", "memory": "1Gi"}), with_resources({"cpu": "1"})],
        "containers": [
            with_resources({"cpu": "1", "memory": "1Gi"}),
            with_resources({"cpu": "500m"}, limits={"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"}),
        ],
    }
    requests = pod_requests(spec)
    # cpu: max(3, 1 + 0.5); memory: max(1Gi, 1Gi + 2Gi, requested at its limit); the GPU only limited, so requested
    assert requests == {"pods": 1, "cpu": 3, "memory": 3 * 2**30, "nvidia.com/gpu": 1}


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}, True),
        ({"key": "dedicated", "value": "gpu"}, True),  # Equal by default, any effect
        ({"key": "dedicated", "value": "cpu"}, False),
        ({"key": "dedicated", "operator": "Exists"}, True),
        ({"operator": "Exists"}, True),  # no key: every taint
        ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
    ],
)
def test_tolerations(toleration: dict[str, str], tolerated: bool) -> None:
    assert tolerates(toleration, {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}) is tolerated


@pytest.mark.parametrize(
    ("rolling_update", "replicas", "bounds"),
    [
        ({}, 3, (1, 0)),  # 25% of 3: surge rounded up, unavailable down
        ({}, 4, (1, 1)),
        ({"maxSurge": 0, "maxUnavailable": 0}, 3, (0, 1)),  # both 0 would never progress
        ({"maxSurge": 0, "maxUnavailable": 1}, 3, (0, 1)),
        ({"maxSurge": "50%", "maxUnavailable": "50%"}, 3, (2, 1)),
    ],
)
def test_rolling_update_bounds(rolling_update: dict[str, int | str], replicas: int, bounds: tuple[int, int]) -> None:
    assert rolling_bounds(rolling_update, replicas) == bounds


def test_the_images_passwd_names_its_user_ray() -> None:
    host = "root:x:0:0:root:/root:/bin/bash\nsomeone:x:1000:1000::/home/someone:/bin/bash\n"
    assert image.passwd(host).splitlines() == ["root:x:0:0:root:/root:/bin/bash", "ray:x:1000:100::/home/ray:/bin/bash"]


# ----- with root: a cluster of hand-made manifests -----


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the rehearsal harness needs root to create network namespaces; run it as root (CI does)")
    cluster = Cluster(Path(f"/run/rehearsal-harness-{os.getpid()}"), prefix=f"hh{os.getpid() % 100000}")
    try:
        yield cluster
    finally:
        cluster.close()


def container(script: str, name: str = "main", **fields: Any) -> Manifest:
    return {"name": name, "image": RAY_IMAGE, "command": ["/bin/sh", "-c", script], **fields}


def cpu(amount: str) -> Manifest:
    return {"resources": {"requests": {"cpu": amount}}}


def template(*containers: Manifest, app: str = "app", **spec: Any) -> Manifest:
    return {"metadata": {"labels": {"app": app}}, "spec": {"containers": list(containers), **spec}}


def deployment(name: str, replicas: int, pod: Manifest, **spec: Any) -> Manifest:
    selector = {"matchLabels": pod["metadata"]["labels"]}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"replicas": replicas, "selector": selector, "template": pod, **spec}}  # fmt: skip


def job(name: str, pod: Manifest, annotations: dict[str, str] | None = None, **spec: Any) -> Manifest:
    metadata = {"name": name, "namespace": NAMESPACE, **({"annotations": annotations} if annotations else {})}
    pod = {**pod, "spec": {"restartPolicy": "Never", **pod["spec"]}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": {"template": pod, **spec}}


def config_map(name: str, data: dict[str, str]) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NAMESPACE}, "data": data}


def stack(*resources: tuple[str, Manifest, tuple[str, ...]], options: dict[str, Options] | None = None) -> Rendered:
    """A hand-made program: (logical name, manifest, the names it depends on), in the order Pulumi registers them;
    `options` are resource options by logical name."""

    def urn(name: str) -> str:
        return f"urn:pulumi:test::harness::kubernetes:x::{name}"

    registrations = [
        Registration(f"kubernetes:{manifest['apiVersion']}:{manifest['kind']}", name, "",
                     tuple(urn(d) for d in dependencies), manifest, urn(name), frozenset(),
                     options=(options or {}).get(name, Options()))
        for name, manifest, dependencies in resources
    ]  # fmt: skip
    return Rendered(registrations=registrations, outputs={})


def owned(manifest: Manifest, owner: Manifest) -> Manifest:
    """`manifest` with an ownerReference to `owner` that blocks its deletion, as a render gives it: with the uid the
    mocks give the owner's outputs (tests/program.py), not the cluster's."""
    uid = kubernetes_uid(f"kubernetes:{owner['apiVersion']}:{owner['kind']}", provider_id(owner))
    reference = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
                 "uid": uid, "blockOwnerDeletion": True}  # fmt: skip
    return {**manifest, "metadata": {**manifest["metadata"], "ownerReferences": [reference]}}


def pods(cluster: Cluster, manifest: Manifest) -> list[Pod]:
    return cluster.pods_of((manifest["kind"], NAMESPACE, manifest["metadata"]["name"]))


def finished_pod(cluster: Cluster, pod: Manifest, timeout: float = 30) -> Pod:
    """Run one pod of `pod` to its end, as a Job without retries."""
    check = job("check", pod, backoffLimit=0)
    cluster.apply(check)
    return wait_for(
        lambda: next((p for p in pods(cluster, check) if p.finished), None), timeout, "the pod finished", 0.1
    )


def running(cluster: Cluster, manifest: Manifest, count: int, timeout: float = 20) -> list[Pod]:
    """Wait until `count` of the resource's pods are ready and no other is active; returns the ready ones."""

    def ready() -> list[Pod] | None:
        active = [pod for pod in pods(cluster, manifest) if pod.active]
        return active if len(active) == count and all(pod.ready for pod in active) else None

    return wait_for(ready, timeout, f"{count} ready pods of {manifest['metadata']['name']}", interval=0.1)


# ----- the image -----


@pytest.mark.rehearsal
def test_the_image_runs_as_ray_in_its_home_which_a_read_only_root_covers(cluster: Cluster) -> None:
    script = (
        'echo "id=$(id -u):$(id -g) user=$(whoami) pwd=$(pwd) home=$HOME path=$PATH"; '
        "stat -c 'owner=%u:%g mode=%a' /home/ray; "
        'touch "$HOME/file" 2>/dev/null && echo "home writable" || echo "home read-only"; '
        "/home/ray/anaconda3/bin/python -c 'import sys, ray; print(sys.prefix, ray.__file__)'"
    )
    pod = finished_pod(cluster, template(container(script, securityContext={"readOnlyRootFilesystem": True})))
    logs = pod.logs("main")
    assert pod.phase == "Succeeded", logs
    assert f"id=1000:100 user=ray pwd=/home/ray home=/home/ray path={image.ENV['PATH']}" in logs
    assert str(image.ROOT) not in image.ENV["PATH"]
    assert "owner=1000:100 mode=755" in logs
    assert "home read-only" in logs
    # Python found by the image's conda path uses the virtualenv mounted there, and its site-packages.
    assert "/home/ray/anaconda3 /home/ray/anaconda3/lib/" in logs


@pytest.mark.rehearsal
def test_an_empty_dir_below_home_is_writable_and_leaves_conda_in_place(cluster: Cluster) -> None:
    home_existed = Path("/home/ray").exists()
    work = "/home/ray/work"
    main = container(
        'pwd; touch "$HOME/file" && echo "home writable"; ray --version',
        env=[{"name": "HOME", "value": work}],  # the container's env overrides the image's
        workingDir=work,
        volumeMounts=[{"name": "work", "mountPath": work}],
        securityContext={"readOnlyRootFilesystem": True},
    )
    pod = finished_pod(cluster, template(main, volumes=[{"name": "work", "emptyDir": {}}]))
    logs = pod.logs("main")
    assert pod.phase == "Succeeded", logs
    assert f"{work}\nhome writable\n" in logs
    assert "ray, version" in logs
    assert Path("/home/ray").exists() == home_existed  # the mount target was made in the image, not here


@pytest.mark.rehearsal
def test_an_empty_dir_over_home_hides_conda(cluster: Cluster) -> None:
    main = container(
        'command -v ray || echo "no ray"; python3 -c "import ray" 2>/dev/null || echo "no ray module"',
        volumeMounts=[{"name": "home", "mountPath": "/home/ray"}],
    )
    pod = finished_pod(cluster, template(main, volumes=[{"name": "home", "emptyDir": {}}]))
    assert "no ray\nno ray module\n" in pod.logs("main"), pod.logs("main")


@pytest.mark.rehearsal
def test_each_container_start_has_its_own_writable_image_layer(cluster: Cluster) -> None:
    writer = container('touch "$HOME/mark" && echo written', name="writer")
    reader = container('test -e "$HOME/mark" && echo "mark seen" || echo "no mark"')
    pod = finished_pod(cluster, template(reader, initContainers=[writer]))
    assert "written" in pod.logs("writer")
    assert "no mark" in pod.logs("main"), pod.logs("main")


# ----- the scheduler -----


@pytest.mark.rehearsal
def test_a_pod_that_does_not_fit_stays_pending_until_the_node_has_room(cluster: Cluster) -> None:
    cluster.node = Node(allocatable={"cpu": "1", "memory": "1Gi", "pods": 10})
    big = deployment("big", 1, template(container(SERVE, **cpu("1500m"))))
    cluster.apply(big)
    [pod] = wait_for(lambda: pods(cluster, big), 5, "a pod", interval=0.1)
    wait_for(lambda: pod.unschedulable, 5, "the scheduler's verdict", interval=0.1)
    time.sleep(1)
    assert (pod.phase, pod.node, pod.ip, pod.unschedulable) == ("Pending", None, "", "Insufficient cpu")
    assert pod.statuses["main"].starts == []  # no process was started
    cluster.node = replace(cluster.node, allocatable={**cluster.node.allocatable, "cpu": "2"})
    assert running(cluster, big, 1) == [pod]


@pytest.mark.rehearsal
def test_a_gpu_pod_stays_pending_on_a_node_without_gpus(cluster: Cluster) -> None:
    gpu: Manifest = {"resources": {"limits": {"nvidia.com/gpu": 1}}}  # a limit alone is also the request
    cluster.apply(deployment("gpu", 1, template(container(SERVE, **gpu))))
    [pod] = wait_for(lambda: list(cluster.pods.values()), 5, "a pod", interval=0.1)
    wait_for(lambda: pod.unschedulable, 5, "the scheduler's verdict", interval=0.1)
    time.sleep(1)
    assert (pod.phase, pod.unschedulable, pod.statuses["main"].starts) == ("Pending", "Insufficient nvidia.com/gpu", [])


@pytest.mark.rehearsal
def test_node_selectors_and_taints(cluster: Cluster) -> None:
    taint = {"key": "dedicated", "value": "ray", "effect": "NoSchedule"}
    cluster.node = replace(cluster.node, labels={**cluster.node.labels, "pool": "ray"}, taints=(taint,))
    tolerating = [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    cases: dict[str, tuple[Manifest, bool]] = {
        "elsewhere": ({"nodeSelector": {"pool": "other"}, "tolerations": tolerating}, False),
        "intolerant": ({"nodeSelector": {"pool": "ray"}}, False),
        "tolerating": ({"nodeSelector": {"pool": "ray"}, "tolerations": tolerating}, True),
        "equal": ({"tolerations": [{"key": "dedicated", "value": "ray"}]}, True),
    }
    manifests = {
        name: deployment(name, 1, template(container(SERVE), app=name, **spec)) for name, (spec, _) in cases.items()
    }
    for manifest in manifests.values():
        cluster.apply(manifest)
    for name, (_, schedulable) in cases.items():
        if schedulable:
            running(cluster, manifests[name], 1)
    for name, (_, schedulable) in cases.items():
        [pod] = pods(cluster, manifests[name])
        assert (pod.node is not None) == schedulable, (name, pod.unschedulable)
    [elsewhere], [intolerant] = pods(cluster, manifests["elsewhere"]), pods(cluster, manifests["intolerant"])
    assert elsewhere.unschedulable == "node(s) didn't match Pod's node affinity/selector"
    assert intolerant.unschedulable == "node(s) had untolerated taint {dedicated: ray}"


@pytest.mark.rehearsal
def test_an_image_built_for_another_architecture_than_the_nodes_fails_to_pull_and_its_pod_stays_pending(
    cluster: Cluster,
) -> None:
    """Official Ray tags are amd64 images, `-aarch64` ones arm64: an arm64 node runs only the latter."""
    cluster.node = replace(cluster.node, labels={**cluster.node.labels, "kubernetes.io/arch": "arm64"})
    amd64 = job("amd64", template(container("echo ran")), backoffLimit=0)
    cluster.apply(amd64)
    [pod] = wait_for(lambda: [p for p in pods(cluster, amd64) if p.node], 10, "the pod bound", interval=0.1)
    wait_for(lambda: "no match for platform in manifest" in pod.events(), 10, "a failed pull", interval=0.1)
    assert f'Failed to pull image "{RAY_IMAGE}"' in pod.events()
    assert (pod.phase, pod.statuses["main"].starts) == ("Pending", [])
    arm64 = finished_pod(cluster, template(container("echo ran", image="rayproject/ray:2.60.0-aarch64")))
    assert (arm64.phase, arm64.logs("main").splitlines()[-1]) == ("Succeeded", "ran")


@pytest.mark.rehearsal
def test_on_arm64_nodes_the_programs_ray_pods_of_an_amd64_image_stay_pending_and_say_why(cluster: Cluster) -> None:
    """Not pulled and crash-looping: never bound, with the scheduler's reason; the Redis image (multi-architecture)
    and what is not a pod are not held back."""
    cluster.node = replace(cluster.node, labels={**cluster.node.labels, "kubernetes.io/arch": "arm64"})
    with pytest.raises(TimeoutError):
        cluster.up(render_in_place({"workers": "1", "gcsFaultTolerance": "true"}), timeout=15)
    ray_pods = [pod for pod in cluster.pods_in("ray-test") if pod.labels.get("app.kubernetes.io/name") == "ray"]
    assert {pod.labels["ray.io/group"] for pod in ray_pods} == {"head", "worker"}
    for pod in ray_pods:
        assert (pod.node, pod.unschedulable) == (None, "node(s) didn't match Pod's node affinity/selector")
    [redis] = [pod for pod in cluster.pods_in("ray-test") if pod.labels.get("app.kubernetes.io/name") == "redis"]
    assert redis.node is not None
    cluster.up(Rendered(registrations=[], outputs={}), timeout=60)


@pytest.mark.rehearsal
def test_a_pod_with_required_pod_affinity_is_placed_only_while_a_pod_it_selects_is(cluster: Cluster) -> None:
    """Only a placed pod of its own namespace counts (not one of another namespace, not one that finished), in a
    topology domain the node has; once placed, it stays whatever happens to the other (IgnoredDuringExecution)."""
    term = {"labelSelector": {"matchLabels": {"app": "leader"}}, "topologyKey": "kubernetes.io/os"}
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    finished_pod(cluster, template(container("true"), app="leader"))  # a leader that ran and ended
    elsewhere = deployment("leader", 1, template(container(SERVE), app="leader"))
    cluster.apply({**elsewhere, "metadata": {"name": "leader", "namespace": "elsewhere"}})
    follower = deployment("follower", 1, template(container(SERVE), app="follower", affinity=affinity))
    cluster.apply(follower)
    [pod] = wait_for(lambda: pods(cluster, follower), 5, "a pod", interval=0.1)
    time.sleep(1)
    assert (pod.node, pod.unschedulable) == (None, "node(s) didn't match pod affinity rules")
    leader = deployment("leader", 1, template(container(SERVE), app="leader"))
    cluster.apply(leader)
    [placed] = running(cluster, follower, 1)
    assert placed is pod
    cluster.delete(leader)
    time.sleep(1)
    assert pod.node is not None and pod.active


@pytest.mark.rehearsal
def test_pending_pods_are_bound_oldest_first_when_room_frees_up(cluster: Cluster) -> None:
    cluster.node = Node(allocatable={"cpu": "1", "memory": "1Gi", "pods": 10})
    web = deployment("web", 3, template(container(SERVE, **cpu("1"))))
    cluster.apply(web)
    [first] = wait_for(lambda: [p for p in pods(cluster, web) if p.ready], 20, "one pod running", interval=0.1)
    waiting = [pod for pod in pods(cluster, web) if pod.node is None]
    cluster.delete_pod(first.name, grace_seconds=0)  # its replacement is the newest pod
    wait_for(lambda: waiting[0].ready, 20, "the oldest Pending pod running", interval=0.1)
    assert [pod.node for pod in pods(cluster, web) if pod is not waiting[0]] == [None, None]


# ----- Deployments -----


class Watch:
    """Samples a Deployment's pods while something happens to it, to check what held at every moment."""

    def __init__(self, cluster: Cluster, manifest: Manifest) -> None:
        self.samples: list[list[tuple[str, bool, bool, bool]]] = []  # (template hash, active, ready, exited)
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.05):
                self.samples.append([(p.labels["pod-template-hash"], p.active, p.ready, p.finished)
                                     for p in pods(cluster, manifest)])  # fmt: skip

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def versioned(version: str, pod: Manifest) -> Manifest:
    """`pod` with a changed template, as a new image or env would change it."""
    [main] = pod["spec"]["containers"]
    return {**pod, "spec": {**pod["spec"], "containers": [{**main, "env": [{"name": "VERSION", "value": version}]}]}}


@pytest.mark.rehearsal
def test_the_default_rolling_update_cannot_surge_on_a_full_node(cluster: Cluster) -> None:
    cluster.node = Node(allocatable={"cpu": "3", "memory": "1Gi", "pods": 10})
    first = deployment("web", 3, versioned("1", template(container(SERVE, **cpu("1")))))
    cluster.up(stack(("web", first, ())), timeout=30)
    old = {pod.name for pod in running(cluster, first, 3)}
    second = deployment("web", 3, versioned("2", first["spec"]["template"]))
    with pytest.raises(TimeoutError, match="Insufficient cpu"):
        cluster.up(stack(("web", second, ())), timeout=6)
    current = pods(cluster, second)
    assert {pod.name for pod in current if pod.ready} == old  # maxUnavailable 0: no old pod may go first
    [surge] = [pod for pod in current if pod.name not in old]
    assert (surge.phase, surge.unschedulable) == ("Pending", "Insufficient cpu")


@pytest.mark.rehearsal
def test_max_surge_0_rolls_through_a_full_node_one_pod_at_a_time(cluster: Cluster) -> None:
    cluster.node = Node(allocatable={"cpu": "3", "memory": "1Gi", "pods": 10})
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    first = deployment("web", 3, versioned("1", template(container(SERVE, **cpu("1")))), strategy=strategy)
    cluster.up(stack(("web", first, ())), timeout=30)
    old = {pod.name for pod in running(cluster, first, 3)}
    second = deployment("web", 3, versioned("2", first["spec"]["template"]), strategy=strategy)
    watch = Watch(cluster, second)
    try:
        cluster.up(stack(("web", second, ())), timeout=120)  # three pods in turn: on a loaded machine, a minute
    finally:
        watch.stop()
    assert not old & {pod.name for pod in running(cluster, second, 3)}
    assert max(sum(active for _, active, _, _ in sample) for sample in watch.samples) == 3  # never a surge
    assert min(sum(active and ready for _, active, ready, _ in sample) for sample in watch.samples) == 2


@pytest.mark.rehearsal
def test_recreate_lets_the_old_pods_go_before_creating_new_ones(cluster: Cluster) -> None:
    slow_exit = 'trap "sleep 1; exit 0" TERM; while :; do sleep 0.1; done'
    first = deployment("web", 2, versioned("1", template(container(slow_exit))), strategy={"type": "Recreate"})
    cluster.up(stack(("web", first, ())), timeout=30)
    old_hash = running(cluster, first, 2)[0].labels["pod-template-hash"]
    second = deployment("web", 2, versioned("2", first["spec"]["template"]), strategy={"type": "Recreate"})
    watch = Watch(cluster, second)
    try:
        cluster.up(stack(("web", second, ())), timeout=30)
    finally:
        watch.stop()
    new_hash = running(cluster, second, 2)[0].labels["pod-template-hash"]
    present = [{h for h, _, _, exited in sample if not exited} for sample in watch.samples]
    assert present[0] == {old_hash} and present[-1] == {new_hash}
    assert all(len(hashes) <= 1 for hashes in present)  # never old and new pods at once, Terminating ones included


@pytest.mark.rehearsal
def test_a_scale_down_deletes_pending_pods_then_the_cheapest_to_lose(cluster: Cluster) -> None:
    cluster.node = Node(allocatable={"cpu": "2", "memory": "1Gi", "pods": 10})
    web = deployment("web", 3, template(container(SERVE, **cpu("1"))))
    cluster.apply(web)
    wait_for(lambda: len([p for p in pods(cluster, web) if p.ready]) == 2, 20, "two pods running", interval=0.1)
    [pending] = [pod for pod in pods(cluster, web) if pod.node is None]
    keep, lose = [pod for pod in pods(cluster, web) if pod.ready]
    keep.annotations["controller.kubernetes.io/pod-deletion-cost"] = "100"  # kubectl annotate
    cluster.apply({**web, "spec": {**web["spec"], "replicas": 2}})
    wait_for(lambda: pending.terminating, 5, "the Pending pod deleted", interval=0.1)
    assert not keep.terminating and not lose.terminating
    cluster.apply({**web, "spec": {**web["spec"], "replicas": 1}})
    wait_for(lambda: lose.terminating, 5, "the cheaper pod deleted", interval=0.1)
    assert not keep.terminating


# ----- graceful termination -----


# Written by a container's shell once its `trap` has run: it handles SIGTERM as its script says only from then on,
# and its pod (without a readiness probe) is Ready as soon as it starts, maybe before that on a loaded machine.
TRAPPED = "echo trapped"


def one_pod(cluster: Cluster, script: str, grace: int, *containers: Manifest) -> tuple[Manifest, Pod]:
    """A Deployment of one pod running `script` (and `containers`), with `grace` seconds to stop; and its pod, once
    every container that says TRAPPED has."""
    web = deployment("web", 1, template(container(script), *containers, terminationGracePeriodSeconds=grace))
    cluster.apply(web)
    [pod] = running(cluster, web, 1)
    trapping = [c["name"] for c in pod.spec["containers"] if TRAPPED in c["command"][-1]]
    wait_for(lambda: all("trapped" in pod.logs(name) for name in trapping), 10, "the traps set", interval=0.05)
    return web, pod


def deleted(cluster: Cluster, pod: Pod) -> float:
    """Delete the pod; the seconds until it is gone (checking that deleting returns at once)."""
    started = time.monotonic()
    cluster.delete_pod(pod.name)
    assert time.monotonic() - started < 0.5
    assert pod.terminating and not pod.ready
    wait_for(lambda: pod.name not in cluster.pods, 30, f"{pod.name} gone", interval=0.05)
    return time.monotonic() - started


@pytest.mark.rehearsal
def test_a_container_that_handles_sigterm_exits_by_itself_within_the_grace_period(cluster: Cluster) -> None:
    _, pod = one_pod(cluster, f'trap "sleep 1; exit 0" TERM; {TRAPPED}; while :; do sleep 0.1; done', 20)
    assert 0.9 < deleted(cluster, pod) < 6
    assert pod.statuses["main"].exit_codes == [0]


@pytest.mark.rehearsal
def test_containers_that_ignore_sigterm_are_killed_at_the_pods_one_deadline(cluster: Cluster) -> None:
    ignore = f'trap "" TERM; {TRAPPED}; while :; do sleep 0.1; done'
    _, pod = one_pod(cluster, ignore, 3, container(ignore, name="sidecar"))
    assert 2.9 < deleted(cluster, pod) < 5.5  # one deadline for the pod, not one per container
    codes = [pod.statuses[name].exit_codes for name in ("main", "sidecar")]
    assert codes == [[-9], [-9]], f"{pod.logs('main')}\n{pod.logs('sidecar')}\n{pod.events()}"


@pytest.mark.rehearsal
def test_a_container_killed_from_outside_ended_by_sigkill_as_after_an_oom_kill(cluster: Cluster) -> None:
    """The OOM killer SIGKILLs a container's process: the kubelet reports a SIGKILL (137 in kubectl), whatever
    the harness's own wrapper makes of it, and restarts the container."""
    script = ": killed-from-outside; while :; do sleep 0.1; done"
    _, pod = one_pod(cluster, script, 30)
    [main] = [pid for pid in os.listdir("/proc") if pid.isdigit() and command_line(pid) == ["/bin/sh", "-c", script]]
    os.kill(int(main), signal.SIGKILL)
    wait_for(lambda: pod.statuses["main"].exit_codes, 5, "the kill seen", interval=0.05)
    assert pod.statuses["main"].exit_codes == [-signal.SIGKILL]


def command_line(pid: str) -> list[str]:
    try:
        return [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
    except OSError:
        return []


@pytest.mark.rehearsal
def test_a_deployment_replaces_a_terminating_pod_at_once_which_holds_its_resources_until_gone(cluster: Cluster) -> None:
    cluster.node = Node(allocatable={"cpu": "1", "memory": "1Gi", "pods": 10})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
               "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}}  # fmt: skip
    cluster.apply(service)
    web = deployment("web", 1, template(container(f'trap "" TERM; {TRAPPED}; while :; do sleep 0.1; done', **cpu("1"))))
    cluster.apply(web)
    [old] = running(cluster, web, 1)
    wait_for(lambda: "trapped" in old.logs("main"), 10, "the trap set", interval=0.05)
    assert cluster.service_endpoints(NAMESPACE, "web") == [old.ip]
    cluster.delete_pod(old.name)  # its grace period: the default 30 s
    [new] = wait_for(lambda: [p for p in pods(cluster, web) if p is not old], 2, "a replacement", interval=0.05)
    # No ready endpoint left: kube-proxy falls back to the one that is terminating but still serving.
    assert old.terminating and old.name in cluster.pods and cluster.service_endpoints(NAMESPACE, "web") == [old.ip]
    wait_for(lambda: new.unschedulable, 2, "the scheduler's verdict", interval=0.05)
    assert (new.phase, new.unschedulable) == ("Pending", "Insufficient cpu")  # the old pod still holds the CPU
    cluster.delete_pod(old.name, grace_seconds=0)  # --force --grace-period=0
    assert old.name not in cluster.pods
    assert running(cluster, web, 1) == [new]
    assert cluster.service_endpoints(NAMESPACE, "web") == [new.ip]
    cluster.delete(web)
    cluster.delete_pod(new.name, grace_seconds=0)  # rather than wait 30 s for it when the test ends


# Answers each connection on port 8000 with its pod's name, until SIGTERM.
ANSWER_WITH_HOSTNAME = (
    'exec python -c "import socket, signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); '
    "s = socket.create_server(('', 8000)); "
    '[c.sendall(socket.gethostname().encode()) or c.close() for c, _ in iter(s.accept, None)]"'
)
ASK_THE_SERVICE = (
    'exec python -c "import socket, sys; c = socket.create_connection((sys.argv[1], 8000), timeout=5); '
    'print(c.recv(100).decode(), c.getpeername()[0])" '
)


@pytest.mark.rehearsal
def test_a_pod_on_a_lost_node_stays_a_ready_endpoint_that_answers_nothing_until_it_is_force_deleted(
    cluster: Cluster,
) -> None:
    """Its processes are gone and its deletion never confirmed: its controller replaces it at once, and a Service
    that publishes not-ready addresses keeps it beside the replacement, as EndpointSlices do. A connect to it gets no
    answer at all (no reset), one to the replacement does; a forced deletion ends it."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 8000}],
                        "publishNotReadyAddresses": True}}  # fmt: skip
    cluster.apply(service)
    web = deployment("web", 1, template(container(ANSWER_WITH_HOSTNAME), app="web"))
    cluster.apply(web)
    [lost] = running(cluster, web, 1)
    cluster.lose_pod(lost.name)
    [new] = running(cluster, web, 1)
    assert lost.terminating and lost.name in cluster.pods and lost.phase == "Running"
    assert sorted(cluster.service_endpoints(NAMESPACE, "web")) == sorted([lost.ip, new.ip])
    probe = 'exec python -c "import socket, sys; socket.create_connection((sys.argv[1], 8000), timeout=3); print(1)" '
    silent = finished_pod(cluster, template(container(probe + lost.ip)))
    assert silent.phase == "Failed" and "TimeoutError" in silent.logs("main"), silent.logs("main")  # not refused
    cluster.delete(job("check", template(container("true"))))
    answered = finished_pod(cluster, template(container(probe + new.ip)))
    assert answered.phase == "Succeeded", answered.logs("main")
    cluster.delete_pod(lost.name)  # a graceful deletion: no kubelet confirms it
    assert lost.name in cluster.pods
    cluster.delete_pod(lost.name, grace_seconds=0)
    assert lost.name not in cluster.pods and cluster.service_endpoints(NAMESPACE, "web") == [new.ip]


@pytest.mark.rehearsal
def test_a_service_name_is_a_cluster_ip_that_follows_its_pods_and_refuses_without_any(cluster: Cluster) -> None:
    """The name resolves to the Service's ClusterIP (from the service range, not a pod's IP) for as long as the
    Service exists; a connection to it reaches whichever pod backs it at the time, the reply coming from the
    ClusterIP; with no pod behind it, a connection is refused at once."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 8000}]}}  # fmt: skip
    cluster.apply(service)
    address = f"web.{NAMESPACE}.svc.cluster.local"
    [cluster_ip] = cluster.resolve(address)
    assert cluster_ip.startswith("10.96.0.")
    web = deployment("web", 1, template(container(ANSWER_WITH_HOSTNAME), app="web"))
    cluster.apply(web)
    check = job("check", template(container(ASK_THE_SERVICE + f"web.{NAMESPACE}.svc")))

    def answered_by(server: Pod) -> None:
        answer = finished_pod(cluster, check["spec"]["template"])
        assert answer.phase == "Succeeded", answer.logs("main")
        assert answer.logs("main").splitlines()[-1] == f"{server.name} {cluster_ip}"
        assert cluster.resolve(address) == [cluster_ip]
        cluster.delete(check)
        wait_for(lambda: not pods(cluster, check), 10, "the check gone", interval=0.1)

    [first] = running(cluster, web, 1)
    answered_by(first)
    cluster.delete_pod(first.name)
    wait_for(lambda: first.name not in cluster.pods, 15, "the first server gone", interval=0.1)
    [second] = running(cluster, web, 1)
    answered_by(second)
    with socket.create_connection((cluster_ip, 8000), timeout=5) as from_the_node:  # the harness is on the node
        assert from_the_node.recv(100).decode() == second.name
    cluster.delete(web)
    wait_for(lambda: not cluster.service_endpoints(NAMESPACE, "web"), 15, "no endpoint left", interval=0.1)
    started = time.monotonic()
    refused = finished_pod(cluster, template(container(ASK_THE_SERVICE + f"web.{NAMESPACE}.svc")))
    assert refused.phase == "Failed" and "ConnectionRefusedError" in refused.logs("main")
    assert time.monotonic() - started < 10


# Serves its pod's name on port 8000 and asks the Service named in argv[1] until it is answered.
ASK_MYSELF_THROUGH_THE_SERVICE = (
    'exec python -c "import socket, sys, threading, time\n'
    "s = socket.create_server(('', 8000))\n"
    "serve = lambda: [c.sendall(socket.gethostname().encode()) or c.close() for c, _ in iter(s.accept, None)]\n"
    "threading.Thread(target=serve, daemon=True).start()\n"
    "while True:\n"
    "    try:\n"
    "        print('answered by', socket.create_connection((sys.argv[1], 8000), timeout=2).recv(100).decode(),"
    " flush=True)\n"
    "        break\n"
    "    except OSError as error:\n"
    "        print(error, flush=True); time.sleep(0.5)\n"
    'time.sleep(3600)" '
)


@pytest.mark.rehearsal
def test_a_pod_reaches_itself_through_its_own_services_cluster_ip(cluster: Cluster) -> None:
    """Hairpin traffic, as the kubelet's hairpin mode allows it: the head's autoscaler container waits for the
    GCS of its own pod through the head Service."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "self", "namespace": NAMESPACE},
               "spec": {"selector": {"app": "self"}, "ports": [{"port": 8000}]}}  # fmt: skip
    cluster.apply(service)
    itself = deployment(
        "self", 1, template(container(ASK_MYSELF_THROUGH_THE_SERVICE + f"self.{NAMESPACE}.svc"), app="self")
    )
    cluster.apply(itself)
    [pod] = running(cluster, itself, 1)
    wait_for(lambda: f"answered by {pod.name}" in pod.logs("main"), 20, lambda: pod.logs("main"), interval=0.2)
    cluster.delete(itself)
    cluster.delete(service)
    cluster.delete_pod(pod.name, grace_seconds=0)


@pytest.mark.rehearsal
def test_a_job_pod_deleted_before_it_finished_is_a_failed_attempt(cluster: Cluster) -> None:
    work = job(
        "work", template(container(f'trap "exit 0" TERM; {TRAPPED}; while :; do sleep 0.1; done')), backoffLimit=0
    )
    cluster.apply(work)
    [pod] = wait_for(lambda: [p for p in pods(cluster, work) if p.phase == "Running"], 10, "running", interval=0.1)
    wait_for(lambda: "trapped" in pod.logs("main"), 10, "the trap set", interval=0.05)
    cluster.delete_pod(pod.name)
    with pytest.raises(JobFailedError):
        wait_for(lambda: cluster.is_ready(work), 5, "the Job's verdict", interval=0.1)
    wait_for(lambda: pod.finished, 30, "the pod's end", interval=0.1)
    assert pod.phase == "Succeeded"  # it exited 0 on SIGTERM, yet it was deleted before it had succeeded
    assert cluster.job_status(work) == "Failed"


# ----- pulumi up -----


@pytest.mark.rehearsal
@pytest.mark.parametrize("replace_unready", [False, True])
def test_a_failed_job_fails_up_again_unless_it_may_be_replaced(cluster: Cluster, replace_unready: bool) -> None:
    flag = config_map("flag", {"ok": "no"})
    mount: Manifest = {"volumeMounts": [{"name": "flag", "mountPath": "/etc/flag"}]}
    check = template(
        container('test "$(cat /etc/flag/ok)" = yes', **mount),
        volumes=[{"name": "flag", "configMap": {"name": "flag"}}],
    )
    annotations = {"pulumi.com/replaceUnready": "true"} if replace_unready else None
    program = stack(("flag", flag, ()), ("check", job("check", check, annotations, backoffLimit=0), ("flag",)))
    with pytest.raises(JobFailedError):
        cluster.up(program, timeout=30)
    [failed] = pods(cluster, program.one("Job"))
    cluster.apply(config_map("flag", {"ok": "yes"}))  # fixed with kubectl; the program still says "no"
    started = time.monotonic()
    if not replace_unready:
        with pytest.raises(JobFailedError):  # the engine goes on awaiting the failed Job, which fails at once
            cluster.up(program, timeout=30)
        assert time.monotonic() - started < 3
        assert pods(cluster, program.one("Job")) == [failed]
        return
    cluster.up(program, timeout=30)
    [attempt] = pods(cluster, program.one("Job"))
    assert attempt is not failed and attempt.phase == "Succeeded"
    assert cluster.get("ConfigMap", NAMESPACE, "flag")["data"] == {"ok": "yes"}  # unchanged inputs: left alone


@pytest.mark.rehearsal
def test_a_failed_step_lets_the_steps_in_flight_run_to_their_end_before_up_exits(cluster: Cluster) -> None:
    """As the engine's step executor: a failed Job starts no more steps, but a Job created beside it is awaited to
    its end; the next `up` finds that one done and leaves it, rather than run a second copy beside the first."""
    replace = {"pulumi.com/replaceUnready": "true"}
    slow = job("slow", template(container("sleep 3")), replace, backoffLimit=0)
    failing = job("failing", template(container("false")), replace, backoffLimit=0)
    program = stack(("slow", slow, ()), ("failing", failing, ()))
    with pytest.raises(JobFailedError):
        cluster.up(program, timeout=60)
    assert cluster.job_status(slow) == "Succeeded"
    [first] = pods(cluster, slow)
    with pytest.raises(JobFailedError):  # the failed one replaced, and failing again
        cluster.up(program, timeout=60)
    assert pods(cluster, slow) == [first]


@pytest.mark.rehearsal
def test_a_changed_job_template_replaces_the_job_and_unchanged_inputs_leave_it_alone(cluster: Cluster) -> None:
    def program(version: str) -> Rendered:
        return stack(("print", job("print", template(container(f"echo version {version}")), backoffLimit=0), ()))

    cluster.up(program("1"), timeout=30)
    [first] = pods(cluster, program("1").one("Job"))
    cluster.up(program("1"), timeout=30)
    assert pods(cluster, program("1").one("Job")) == [first]
    cluster.up(program("2"), timeout=30)
    [second] = pods(cluster, program("2").one("Job"))
    assert second is not first and first.name not in cluster.pods
    assert "version 2" in second.logs("main")


def exists(cluster: Cluster, manifest: Manifest) -> bool:
    try:
        cluster.get(manifest["kind"], NAMESPACE, manifest["metadata"]["name"])
    except KeyError:
        return False
    return True


@pytest.mark.rehearsal
def test_a_renamed_object_replaces_its_old_copy_only_at_the_end_of_an_up_that_succeeds(cluster: Cluster) -> None:
    """The provider asks for delete-before-replace only when the name stays: a renamed object is created beside its
    old copy, which the engine deletes with what is no longer declared, after everything else is ready; when the
    `up` fails first, the old copy stays (a pending delete) until the end of the next `up` that succeeds."""

    def program(version: str, check: str) -> tuple[Rendered, Manifest]:
        web = deployment(f"web-{version}", 1, template(container(SERVE), app=f"web-{version}"))
        checked = job("check", template(container(check)), backoffLimit=0)
        return stack(("web", web, ()), ("check", checked, ("web",))), web

    first_program, first = program("1", "true")
    cluster.up(first_program, timeout=30)
    [first_pod] = running(cluster, first, 1)
    failing_program, failing = program("2", "false")
    with pytest.raises(JobFailedError):
        cluster.up(failing_program, timeout=30)
    assert exists(cluster, first) and exists(cluster, failing)  # created beside the old copy, which stays
    assert first_pod.ready
    fixed_program, fixed = program("3", "true")
    cluster.up(fixed_program, timeout=30)
    assert not exists(cluster, first) and not exists(cluster, failing)  # both old copies went at the end
    assert first_pod.name not in cluster.pods
    running(cluster, fixed, 1)


@pytest.mark.rehearsal
def test_an_auto_named_replacement_gets_a_fresh_name_and_the_old_copy_goes_at_the_end(cluster: Cluster) -> None:
    def program(version: str) -> Rendered:
        named = job(auto_name("print"), template(container(f"echo version {version}")), backoffLimit=0)
        named["metadata"]["annotations"] = {AUTONAMED_ANNOTATION: "true"}
        return stack(("print", named, ()))

    cluster.up(program("1"), timeout=30)
    old_name = program("1").one("Job")["metadata"]["name"]
    cluster.up(program("2"), timeout=30)
    [new] = [key[2] for key in cluster.objects if key[0] == "Job"]
    assert new != old_name and new.startswith("print-")
    [pod] = cluster.pods_of(("Job", NAMESPACE, new))
    assert "version 2" in pod.logs("main")
    cluster.up(program("2"), timeout=30)  # the same program: the provider's Check keeps the fresh name
    assert [key[2] for key in cluster.objects if key[0] == "Job"] == [new]
    assert cluster.pods_of(("Job", NAMESPACE, new)) == [pod]


@pytest.mark.rehearsal
def test_a_resource_applied_with_retain_on_delete_leaves_the_state_and_its_object_stays(cluster: Cluster) -> None:
    kept = deployment("kept", 1, template(container(SERVE), app="kept"))
    retained = {"kept": Options(retain_on_delete=True)}
    cluster.up(stack(("kept", kept, ()), options=retained), timeout=30)
    [pod] = running(cluster, kept, 1)
    cluster.up(stack(), timeout=30)
    assert exists(cluster, kept) and pod.ready
    with pytest.raises(AlreadyExistsError):  # declared again, it is created again: the object is no longer Pulumi's
        cluster.up(stack(("kept", kept, ()), options=retained), timeout=30)


# A pod that takes 2 s to drain once asked to stop.
DRAINS_2S = 'trap "sleep 2; exit 0" TERM; while :; do sleep 0.1; done'


@pytest.mark.rehearsal
def test_an_owner_reference_names_the_live_owner_and_deleting_it_waits_for_what_it_owns(cluster: Cluster) -> None:
    """A render's ownerReference carries the uid the mocks gave the owner's outputs; `up` applies the live owner's,
    as the engine passes the owner's output, and keeps the render's for its diffs (the same program again applies
    nothing). An `up` without the owner deletes it in the foreground: what it owns goes first, of any kind, though
    retained, and the `up` ends only once the Deployment's pod has drained and left the API."""
    anchor = config_map("generations", {})
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token", "namespace": NAMESPACE},
              "stringData": {"token": "t"}}  # fmt: skip
    web, token = owned(deployment("web", 1, template(container(DRAINS_2S))), anchor), owned(secret, anchor)
    retained = {name: Options(retain_on_delete=True) for name in ("web", "token")}
    program = stack(("anchor", anchor, ()), ("web", web, ("anchor",)), ("token", token, ("anchor",)), options=retained)
    cluster.up(program, timeout=30)
    live_uid = cluster.meta("ConfigMap", NAMESPACE, "generations").uid
    rendered_uid = web["metadata"]["ownerReferences"][0]["uid"]
    for kind, name in (("Deployment", "web"), ("Secret", "token")):
        [reference] = cluster.get(kind, NAMESPACE, name)["metadata"]["ownerReferences"]
        assert reference == {**web["metadata"]["ownerReferences"][0], "uid": live_uid} and live_uid != rendered_uid
    assert cluster.applied(program.registration_of(web).urn)["metadata"]["ownerReferences"][0]["uid"] == rendered_uid
    [pod] = running(cluster, web, 1)
    live = cluster.get("Deployment", NAMESPACE, "web")
    cluster.up(program, timeout=30)
    assert cluster.get("Deployment", NAMESPACE, "web") is live  # not written again
    started = time.monotonic()
    cluster.up(stack(), timeout=30)
    assert time.monotonic() - started >= 2 and pod.name not in cluster.pods
    assert not any(exists(cluster, manifest) for manifest in (anchor, web, token))


@pytest.mark.rehearsal
def test_an_object_whose_owner_is_not_live_is_stored_as_given_and_garbage_collected(cluster: Cluster) -> None:
    """The API server accepts any uid in an ownerReference: with no live owner of that kind and name, the object is
    created with the render's, and the garbage collector, finding its owner gone, deletes it."""
    ghost = deployment("ghost", 1, template(container(SERVE)))
    orphan = owned(config_map("orphan", {}), ghost)
    cluster.up(stack(("orphan", orphan, ())), timeout=30)
    wait_for(lambda: not exists(cluster, orphan), 5, "the orphan collected", interval=0.1)


# ----- images and probes the harness refuses -----


def probe_spec(probe: Manifest, image_name: str = RAY_IMAGE) -> Manifest:
    return {"containers": [{"name": "main", "image": image_name, "command": ["true"], "readinessProbe": probe}]}


@pytest.mark.rehearsal
def test_the_installed_redis_is_the_version_the_redis_image_is_pinned_to() -> None:
    assert image.redis_version() == REDIS_IMAGE.rsplit(":", 1)[1]
    assert image.lookup(REDIS_IMAGE).user == 999
    assert image.lookup(f"docker.io/library/{REDIS_IMAGE}-bookworm@sha256:{'0' * 64}").workdir == image.REDIS_DATA


@pytest.mark.rehearsal
@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ("redis:7.2.4", "must be tagged 7.0.15"),
        ("redis:7.0", "must be tagged 7.0.15"),
        ("redis:7.0.15-alpine", "must be tagged 7.0.15"),
        (f"redis@sha256:{'0' * 64}", "must be tagged 7.0.15"),
        ("oliver006/redis_exporter:v1.62.0", "must be tagged v1.45.0"),
        ("quay.io/prometheus/prometheus:v2.53.0", "must be tagged v2.42.0"),
        ("registry.example/ray:2.60.0-py311", "no stand-in for registry.example/ray"),
        ("localhost:5000/redis:7.0.15", "no stand-in for localhost:5000/redis"),
        ("stand-in", "no stand-in for stand-in"),
    ],
)
def test_images_without_a_stand_in_or_of_another_version_than_their_stand_ins_are_refused(
    reference: str, why: str
) -> None:
    with pytest.raises(UnsupportedError, match=re.escape(why)):
        check_supported(probe_spec({"tcpSocket": {"port": 1}}, reference))


@pytest.mark.parametrize(
    "probe",
    [
        {"grpc": {"port": 50051}},
        {"periodSeconds": 1},
        {"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}},
    ],
)
def test_a_probe_without_exactly_one_emulated_handler_is_refused(probe: Manifest) -> None:
    with pytest.raises(UnsupportedError, match="readinessProbe"):
        check_supported(probe_spec(probe))
    for handler in ({"exec": {"command": ["true"]}}, {"tcpSocket": {"port": "x"}}, {"httpGet": {"port": 1}}):
        check_supported(probe_spec(handler))  # each emulated one alone is accepted


@pytest.mark.rehearsal
def test_a_volume_with_items_shows_only_those_keys_and_waits_for_a_missing_one(cluster: Cluster) -> None:
    """`items` project the listed keys only, each at its path; a listed key the object lacks fails the mount,
    which the kubelet retries until the key is there."""
    cluster.apply(config_map("files", {"shown": "yes", "hidden": "no"}))
    listing = container("ls /files; cat /files/renamed; echo")
    volume = {"name": "files", "configMap": {"name": "files", "items": [{"key": "shown", "path": "renamed"}]}}
    pod = finished_pod(cluster, template({**listing, "volumeMounts": [{"name": "files", "mountPath": "/files"}]},
                                         volumes=[volume]))  # fmt: skip
    assert pod.logs("main").splitlines()[1:] == ["renamed", "yes"]
    waiting = {"name": "files", "configMap": {"name": "files", "items": [{"key": "later", "path": "later"}]}}
    web = deployment("web", 1, template({**container(SERVE), "volumeMounts": [{"name": "files", "mountPath": "/f"}]},
                                        volumes=[waiting]))  # fmt: skip
    cluster.apply(web)
    [pending] = wait_for(lambda: pods(cluster, web), 5, "a pod", interval=0.1)
    wait_for(lambda: "FailedMount" in pending.events(), 10, "the failed mount", interval=0.1)
    assert pending.statuses["main"].starts == []
    cluster.apply(config_map("files", {"later": "now"}))
    assert running(cluster, web, 1) == [pending]


@pytest.mark.rehearsal
def test_an_item_with_a_mode_or_a_nested_path_is_refused() -> None:
    for item in ({"key": "a", "path": "a", "mode": 0o400}, {"key": "a", "path": "dir/a"}):
        spec = {
            "containers": [container("true")],
            "volumes": [{"name": "v", "secret": {"secretName": "s", "items": [item]}}],
        }
        with pytest.raises(UnsupportedError, match="items"):
            check_supported(spec)


def test_a_volume_kind_the_kubelet_does_not_emulate_is_refused() -> None:
    spec = {**probe_spec({"exec": {"command": ["true"]}}), "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    with pytest.raises(UnsupportedError, match=r"volumes\.h"):
        check_supported(spec)


# ----- probes -----


def kubectl_exec(pod: Pod, container_name: str, script: str) -> str:
    """`kubectl exec POD -c CONTAINER -- sh -c SCRIPT`: its output; fails the test unless it exits 0."""
    argv = pod.exec_argv(container_name, ["sh", "-c", script])
    assert argv is not None, f"{container_name} of {pod.name} is not running"
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


@pytest.mark.rehearsal
def test_an_exec_probe_runs_in_the_container_as_the_container(cluster: Cluster) -> None:
    checks = (
        'test "$(id -u):$(id -g):$(id -G)" = "4242:4343:4343 5000" && test "$GREETING" = hello && test "$(pwd)" = /work'
        ' && test "$(hostname)" = "$HOSTNAME" && grep -q "^CapEff:\t0*$" /proc/self/status'
        ' && grep -q "^NoNewPrivs:\t1$" /proc/self/status && test -e /work/marker && test "$(cat /proc/1/comm)" = sh'
    )
    main = container(
        f"touch /work/marker; {SERVE}",
        env=[{"name": "GREETING", "value": "hello"}],
        workingDir="/work",
        volumeMounts=[{"name": "work", "mountPath": "/work"}],
        securityContext={"runAsUser": 4242, "runAsGroup": 4343, "allowPrivilegeEscalation": False,
                         "capabilities": {"drop": ["ALL"]}},
        readinessProbe={"exec": {"command": ["sh", "-c", checks]}, "periodSeconds": 1},
    )  # fmt: skip
    spec: Manifest = {"securityContext": {"fsGroup": 5000}, "volumes": [{"name": "work", "emptyDir": {}}]}
    web = deployment("web", 1, template(main, **spec))
    cluster.apply(web)
    [pod] = wait_for(lambda: pods(cluster, web), 5, "a pod", interval=0.1)
    wait_for(lambda: pod.ready, 20, lambda: f"the exec probe passing: {kubectl_exec(pod, 'main', checks)}", 0.2)
    assert kubectl_exec(pod, "main", "pwd") == "/work\n"


@pytest.mark.rehearsal
def test_a_pods_processes_and_what_is_execd_in_them_run_on_the_cpus_the_cluster_gives_that_pod() -> None:
    """bench/time_to_ready.py --cores-apart gives the head's pod and the workers' pods CPUs of their own; a pod the
    cluster gives none runs on any."""
    directory, prefix = Path(f"/run/rehearsal-harness-{os.getpid()}"), f"hh{os.getpid() % 100000}"
    cluster = Cluster(directory, prefix=prefix, cores=lambda pod: "0" if pod.startswith("pinned") else None)
    try:
        pinned = deployment("pinned", 1, template(container("sleep 600 & wait"), app="pinned"))
        free = deployment("free", 1, template(container("sleep 600 & wait"), app="free"))
        cluster.apply(pinned)
        cluster.apply(free)
        [pinned_pod], [free_pod] = running(cluster, pinned, 1), running(cluster, free, 1)
        cpus = "grep -h Cpus_allowed_list /proc/1/status /proc/$(pgrep -x sleep)/status /proc/self/status"
        assert kubectl_exec(pinned_pod, "main", cpus).split() == ["Cpus_allowed_list:", "0"] * 3
        [every] = [line for line in Path("/proc/self/status").read_text().splitlines() if "Cpus_allowed_list" in line]
        assert kubectl_exec(free_pod, "main", cpus).split() == every.split() * 3
    finally:
        cluster.close()


@pytest.mark.rehearsal
def test_an_exec_probe_is_killed_at_its_timeout_and_fails(cluster: Cluster) -> None:
    probe = {"exec": {"command": ["sleep", "37"]}, "timeoutSeconds": 1, "periodSeconds": 60}
    web = deployment("web", 1, template(container(SERVE, readinessProbe=probe)))
    cluster.apply(web)
    [pod] = wait_for(lambda: pods(cluster, web), 5, "a pod", interval=0.1)
    wait_for(lambda: "timed out" in pod.events(), 10, "the probe's timeout", interval=0.1)
    time.sleep(0.5)
    assert not pod.ready and pod.phase == "Running"
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and command_line(pid) == ["sleep", "37"]]


@pytest.mark.rehearsal
def test_tcp_socket_probes_follow_the_port_by_number_or_name(cluster: Cluster) -> None:
    listen = "exec python3 -c \"import socket, time; s = socket.create_server(('', 7001)); time.sleep(600)\""
    ports = [{"name": "open", "containerPort": 7001}, {"name": "closed", "containerPort": 7002}]
    cases: dict[str, int | str] = {"by-number": 7001, "by-name": "open", "closed": "closed"}

    def listener(name: str, port: int | str) -> Manifest:
        probe = {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 1}
        pod = template(container(listen, ports=ports, readinessProbe=probe), app=name, terminationGracePeriodSeconds=1)
        return deployment(name, 1, pod)

    manifests = {name: listener(name, port) for name, port in cases.items()}
    for manifest in manifests.values():
        cluster.apply(manifest)
    running(cluster, manifests["by-number"], 1)
    running(cluster, manifests["by-name"], 1)
    [closed] = pods(cluster, manifests["closed"])
    wait_for(lambda: "7002" in closed.events(), 10, "the closed port's probe failing", interval=0.1)
    assert closed.phase == "Running" and not closed.ready


@pytest.mark.rehearsal
def test_a_failing_tcp_socket_liveness_probe_restarts_the_container(cluster: Cluster) -> None:
    liveness = {"tcpSocket": {"port": 7003}, "periodSeconds": 1, "failureThreshold": 2}
    web = deployment("web", 1, template(container(SERVE, livenessProbe=liveness), terminationGracePeriodSeconds=1))
    cluster.apply(web)
    [pod] = wait_for(lambda: pods(cluster, web), 5, "a pod", interval=0.1)
    wait_for(lambda: pod.statuses["main"].exit_codes, 15, "the liveness kill", interval=0.1)


# ----- PersistentVolumeClaims -----


def claim(name: str = "data", storage: str = "1Gi", **spec: Any) -> Manifest:
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}, **spec}
    metadata = {"name": name, "namespace": NAMESPACE}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def with_claim(*containers: Manifest, claim_name: str = "data", app: str = "app") -> Manifest:
    return template(*containers, app=app, securityContext={"fsGroup": 999},
                    volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}])  # fmt: skip


@pytest.mark.rehearsal
def test_a_pod_whose_claim_does_not_exist_stays_pending_until_it_does(cluster: Cluster) -> None:
    mounted = container(SERVE, volumeMounts=[{"name": "data", "mountPath": "/data"}])
    web = deployment("web", 1, with_claim(mounted))
    cluster.apply(web)
    [pod] = wait_for(lambda: pods(cluster, web), 5, "a pod", interval=0.1)
    wait_for(lambda: pod.unschedulable, 5, "the scheduler's verdict", interval=0.1)
    time.sleep(1)
    assert (pod.phase, pod.node, pod.unschedulable) == ("Pending", None, 'persistentvolumeclaim "data" not found')
    assert pod.statuses["main"].starts == []
    cluster.apply(claim())
    assert running(cluster, web, 1) == [pod]
    assert cluster.claims[(NAMESPACE, "data")].phase == "Bound"  # bound for its first consumer


@pytest.mark.rehearsal
def test_a_second_pod_on_a_read_write_once_claim_waits_until_the_first_is_gone(cluster: Cluster) -> None:
    """Two Deployments on one claim (a renamed Redis made before the old is deleted): the second pod's mount fails
    as its volume's attach does on another node, until the first pod has left the API."""
    cluster.apply(claim())
    mounted = container(SERVE, volumeMounts=[{"name": "data", "mountPath": "/data"}])
    first = deployment("first", 1, with_claim(mounted, app="first"), strategy={"type": "Recreate"})
    cluster.apply(first)
    [holder] = running(cluster, first, 1)
    second = deployment("second", 1, with_claim(mounted, app="second"), strategy={"type": "Recreate"})
    cluster.apply(second)
    [waiting] = wait_for(lambda: [p for p in pods(cluster, second) if p.node], 10, "the second pod bound", 0.1)
    wait_for(lambda: "Multi-Attach error" in waiting.events(), 10, "the refused mount", interval=0.1)
    assert f"Volume is already used by pod(s) {holder.name}" in waiting.events()
    assert waiting.statuses["main"].starts == [] and not waiting.ready
    cluster.delete(first)
    assert running(cluster, second, 1) == [waiting]


@pytest.mark.rehearsal
def test_up_creates_only_what_does_not_exist_unless_the_provider_may_upsert(cluster: Cluster) -> None:
    """pulumi-kubernetes 4.29 and later create client-side: an object that exists (made with kubectl, or read by the
    stack before) is refused with AlreadyExists, and stays as it was, unless the provider upserts it."""
    existing = config_map("settings", {"mode": "kubectl"})
    cluster.apply(existing)
    declared = stack(("settings", config_map("settings", {"mode": "pulumi"}), ()))
    with pytest.raises(AlreadyExistsError, match='configmaps "settings" already exists'):
        cluster.up(declared, timeout=10)
    assert cluster.get("ConfigMap", NAMESPACE, "settings")["data"] == {"mode": "kubectl"}
    cluster.up(declared, timeout=10, upsert=True)
    assert cluster.get("ConfigMap", NAMESPACE, "settings")["data"] == {"mode": "pulumi"}
    cluster.up(declared, timeout=10)  # now the stack's: nothing to create


@pytest.mark.rehearsal
def test_a_claim_outlives_its_pods_and_is_deleted_once_no_pod_uses_it(cluster: Cluster) -> None:
    writer = container('id -u > /data/by; touch /data/written && echo "$(stat -c %g:%a /data)"; ' + SERVE,
                       securityContext={"runAsUser": 999, "runAsGroup": 999},
                       volumeMounts=[{"name": "data", "mountPath": "/data"}])  # fmt: skip
    cluster.apply(claim())
    web = deployment("web", 1, with_claim(writer))
    cluster.apply(web)
    [first] = running(cluster, web, 1)
    # Ready once started (no probe): its first words may come a moment later.
    wait_for(lambda: "999:" in first.logs("main"), 10, lambda: f"the writer's output: {first.logs('main')}", 0.1)
    assert "999:2775" in first.logs("main")  # fsGroup ownership: the group's, group-writable, setgid
    volume = cluster.claims[(NAMESPACE, "data")].volume
    assert volume is not None and (volume / "written").exists()
    kubectl_exec(first, "main", "touch /data/before")
    cluster.delete(claim())  # in use: Terminating, the object and its volume kept
    time.sleep(1)
    assert cluster.claims[(NAMESPACE, "data")].deleting and (volume / "written").exists()
    assert cluster.get("PersistentVolumeClaim", NAMESPACE, "data")
    cluster.delete_pod(first.name)  # its replacement cannot mount a claim being deleted
    [second] = wait_for(lambda: [p for p in pods(cluster, web) if p is not first], 5, "a replacement", 0.1)
    wait_for(lambda: second.unschedulable, 5, "the scheduler's verdict", interval=0.1)
    assert second.unschedulable == 'persistentvolumeclaim "data" is being deleted'
    wait_for(lambda: first.name not in cluster.pods, 10, "the first pod gone", interval=0.1)
    wait_for(lambda: (NAMESPACE, "data") not in cluster.claims, 5, "the claim gone", interval=0.1)
    # Reclaim policy Delete: the volume goes after its claim, as a provisioner deletes it once the claim has gone (a
    # full run once found it still there just after).
    wait_for(lambda: not volume.exists(), 10, "the claim's volume deleted", interval=0.1)
    cluster.apply(claim())  # a new claim: a new, empty volume
    [pod] = running(cluster, web, 1)
    new_volume = cluster.claims[(NAMESPACE, "data")].volume
    assert pod is second and new_volume is not None and new_volume != volume
    wait_for(lambda: "999:" in pod.logs("main"), 10, lambda: f"the writer's output: {pod.logs('main')}", 0.1)
    assert sorted(os.listdir(new_volume)) == ["by", "lost+found", "written"]  # the second pod's own; no "before"


@pytest.mark.rehearsal
def test_the_api_server_refuses_changes_to_a_claims_spec_but_a_bound_claims_growth(cluster: Cluster) -> None:
    cluster.storage_classes["fixed"] = StorageClass("fixed", "Immediate", allow_expansion=False)
    cluster.apply(claim())
    limited = claim(resources={"requests": {"storage": "1Gi"}, "limits": {"storage": "1Gi"}})
    for changed in (limited, claim(storageClassName="fixed"), claim(storage="2Gi")):
        with pytest.raises(InvalidError, match="spec is immutable"):  # growth too: the claim is not bound yet
            cluster.apply(changed)
    cluster.apply(claim(storageClassName="standard"))  # the class the server defaulted, now named: no change
    web = deployment("web", 1, with_claim(container(SERVE)))
    cluster.apply(web)
    running(cluster, web, 1)
    cluster.apply(claim(storage="2Gi"))
    with pytest.raises(InvalidError, match="can not be less than previous value"):
        cluster.apply(claim(storage="1Gi"))
    cluster.apply(claim("fixed", storageClassName="fixed"))
    wait_for(lambda: cluster.claims[(NAMESPACE, "fixed")].phase == "Bound", 5, "an Immediate claim bound", 0.1)
    with pytest.raises(InvalidError, match="must support resize"):
        cluster.apply(claim("fixed", storage="2Gi", storageClassName="fixed"))
    for unsupported in (claim(volumeName="pv-1"), claim(accessModes=["ReadWriteMany"]), claim(storageClassName="")):
        with pytest.raises(UnsupportedError):
            cluster.apply({**unsupported, "metadata": {"name": "other", "namespace": NAMESPACE}})


@pytest.mark.rehearsal
def test_up_awaits_a_claim_as_pulumi_kubernetes_does(cluster: Cluster) -> None:
    cluster.storage_classes["fast"] = StorageClass("fast", "Immediate")
    consumer = deployment("web", 1, with_claim(container(SERVE)))
    # WaitForFirstConsumer: Pending is ready on creation, so the pod that binds it can follow.
    cluster.up(stack(("data", claim(), ()), ("web", consumer, ("data",))), timeout=20)
    assert cluster.claims[(NAMESPACE, "data")].phase == "Bound"
    # Immediate: ready once Bound. A class that does not exist never binds, and its await times out.
    cluster.up(stack(("fast", claim("fast", storageClassName="fast"), ())), timeout=10)
    assert cluster.claims[(NAMESPACE, "fast")].phase == "Bound"
    with pytest.raises(TimeoutError, match=r"nowhere \[Pending, class missing\]"):
        cluster.up(stack(("nowhere", claim("nowhere", storageClassName="missing"), ())), timeout=2)
    # An update awaits Bound: a claim still waiting for its consumer never gets there, unless await is skipped.
    lonely = claim("lonely")
    cluster.up(stack(("lonely", lonely, ())), timeout=5)
    relabelled = {**lonely, "metadata": {**lonely["metadata"], "labels": {"a": "b"}}}
    with pytest.raises(TimeoutError, match=r"lonely \[Pending, class standard\]"):
        cluster.up(stack(("lonely", relabelled, ())), timeout=2)
    skipped = {**relabelled, "metadata": {**relabelled["metadata"], "annotations": {"pulumi.com/skipAwait": "true"}}}
    cluster.up(stack(("lonely", skipped, ())), timeout=5)


@pytest.mark.rehearsal
def test_up_deletes_a_claim_only_after_the_pods_that_use_it(cluster: Cluster) -> None:
    consumer = deployment("web", 1, with_claim(container(SERVE)))
    cluster.up(stack(("data", claim(), ()), ("web", consumer, ("data",))), timeout=20)
    volume = cluster.claims[(NAMESPACE, "data")].volume
    cluster.up(stack(), timeout=20)
    assert not cluster.claims and not cluster.pods and volume is not None and not volume.exists()


# ----- a Redis that keeps its data on a claim -----

REDIS_PORT = 6379
PING = f'REDISCLI_AUTH="$(cat /etc/redis/password)" redis-cli -h 127.0.0.1 -p {REDIS_PORT} ping | grep -qx PONG'


def redis_secret(password: str, *, config_password: str | None = None) -> Manifest:
    config = "\n".join([f"port {REDIS_PORT}", "bind * -::*", "dir /data", "appendonly yes", "appendfsync everysec",
                        'save ""', f'requirepass "{config_password or password}"', ""])  # fmt: skip
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": NAMESPACE},
            "type": "Opaque", "stringData": {"redis.conf": config, "password": password}}  # fmt: skip


def redis_deployment(name: str = "redis", claim_name: str = "redis-data") -> Manifest:
    """The Redis the program renders, in the shape of its manifests."""
    main = {
        "name": "redis",
        "image": REDIS_IMAGE,
        "command": ["redis-server", "/etc/redis/redis.conf"],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "config", "mountPath": "/etc/redis", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "readinessProbe": {"exec": {"command": ["sh", "-c", PING]}, "periodSeconds": 1, "timeoutSeconds": 2},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "initialDelaySeconds": 1, "periodSeconds": 2},
    }
    pod_security = {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
                    "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": claim_name}},
        {"name": "config", "secret": {"secretName": "redis", "defaultMode": 0o440}},
        {"name": "tmp", "emptyDir": {}},
    ]
    pod = template(main, app=name, securityContext=pod_security, volumes=volumes)
    return deployment(name, 1, pod, strategy={"type": "Recreate"})


def redis_cli(pod: Pod, *command: str) -> str:
    """redis-cli in the Redis container, authenticated with the Secret's password."""
    auth = 'REDISCLI_AUTH="$(cat /etc/redis/password)"'
    return kubectl_exec(pod, "redis", f"{auth} redis-cli -h 127.0.0.1 -p {REDIS_PORT} {' '.join(command)}").strip()


@pytest.mark.rehearsal
def test_the_redis_image_runs_as_redis_with_its_tools_on_path_in_data(cluster: Cluster) -> None:
    script = (
        'echo "id=$(id -u):$(id -g) user=$(whoami) group=$(id -gn) pwd=$(pwd) path=$PATH"; '
        "command -v redis-server; command -v redis-cli; redis-server --version; stat -c 'data=%U:%G %a' /data; "
        'touch /data/file && echo "data writable"; touch /usr/local/bin/x 2>/dev/null || echo "bin read-only"'
    )
    main = {"name": "main", "image": REDIS_IMAGE, "command": ["sh", "-c", script],
            "securityContext": {"readOnlyRootFilesystem": True}}  # fmt: skip
    pod = finished_pod(cluster, template(main))
    logs = pod.logs("main")
    assert pod.phase == "Succeeded", logs
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert f"id=999:999 user=redis group=redis pwd=/data path={path}\n" in logs
    assert "/usr/local/bin/redis-server\n/usr/local/bin/redis-cli\n" in logs
    assert f"Redis server v={REDIS_IMAGE.rsplit(':', 1)[1]} " in logs
    assert "data=redis:redis 755\ndata writable\nbin read-only\n" in logs  # an image volume, under a read-only root


@pytest.mark.rehearsal
def test_redis_keeps_a_key_on_its_claim_across_pods_and_loses_it_with_the_claim(cluster: Cluster) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis", "namespace": NAMESPACE},
               "spec": {"selector": {"app": "redis"}, "ports": [{"port": REDIS_PORT}]}}  # fmt: skip
    program = stack(
        ("secret", redis_secret("pass word#1"), ()),
        ("data", claim("redis-data"), ()),
        ("redis", redis_deployment(), ("secret", "data")),
        ("service", service, ("redis",)),
    )
    cluster.up(program, timeout=30)
    [first] = running(cluster, program.one("Deployment"), 1)
    assert redis_cli(first, "SET", "gcs", "kept") == "OK"
    assert "appendonlydir" in kubectl_exec(first, "redis", "ls /data")
    cluster.delete_pod(first.name)
    wait_for(lambda: first.name not in cluster.pods, 15, "the first Redis pod gone", interval=0.1)
    [second] = running(cluster, program.one("Deployment"), 1, timeout=30)
    assert second is not first and redis_cli(second, "GET", "gcs") == "kept"
    assert cluster.service_endpoints(NAMESPACE, "redis") == [second.ip]
    # The claim deleted (it goes once its pod has) and created again: a new, empty volume.
    cluster.up(Rendered(registrations=[r for r in program.registrations if r.name == "secret"], outputs={}), 30)
    assert not cluster.claims
    cluster.up(program, timeout=30)
    [third] = running(cluster, program.one("Deployment"), 1)
    assert redis_cli(third, "GET", "gcs") == ""


@pytest.mark.rehearsal
def test_a_redis_with_a_wrong_password_in_its_probe_never_becomes_ready(cluster: Cluster) -> None:
    cluster.apply(redis_secret("the probe's", config_password="the server's"))
    cluster.apply(claim("redis-data"))
    redis = redis_deployment()
    cluster.apply(redis)
    [pod] = wait_for(lambda: [p for p in pods(cluster, redis) if p.phase == "Running"], 20, "Redis running", 0.1)
    wait_for(lambda: "readinessProbe failed" in pod.events(), 15, "a failed readiness probe", interval=0.1)
    assert "WRONGPASS" in pod.events() or "exit code 1" in pod.events(), pod.events()
    time.sleep(2)
    assert not pod.ready and pod.restarts() == 0  # the tcpSocket liveness probe still passes


# ----- NetworkPolicies -----


def policy(name: str, selector: Manifest, *rules: Manifest, **spec: Any) -> Manifest:
    metadata = {"name": name, "namespace": NAMESPACE}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata,
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": list(rules), **spec}}  # fmt: skip


WEB = network_policy.PodAddress(NAMESPACE, {"app": "web"}, "10.244.0.2")
OTHER = network_policy.PodAddress(NAMESPACE, {"app": "other"}, "10.244.0.3")
AUDIENCE = network_policy.PodAddress("audience", {"app": "client"}, "10.244.0.4")
NAMESPACES = {name: network_policy.namespace_labels(name, labels)
              for name, labels in ((NAMESPACE, None), ("audience", {"team": "ingress"}))}  # fmt: skip
BY_NAME = {"namespaceSelector": {"matchExpressions": [
    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["audience"]}]}}  # fmt: skip


def ways_in(*policies: Manifest) -> dict[str, list[network_policy.Admitted]]:
    return network_policy.admitted(policies, [WEB, OTHER, AUDIENCE], NAMESPACES)


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "other"}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]}, {"app": "db"}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {"app": "web"}, False),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {"app": ""}, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, {"app": ""}, False),
        ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "x", "operator": "Exists"}]}, {"app": "web"},
         False),
    ],
)  # fmt: skip
def test_label_selectors(selector: Manifest, labels: dict[str, str], selected: bool) -> None:
    assert network_policy.matches(selector, labels) is selected


def test_pods_no_policy_selects_are_not_isolated_and_selected_ones_admit_only_their_rules_peers() -> None:
    isolated = ways_in(policy("web", {"matchLabels": {"app": "web"}}, {"from": [BY_NAME], "ports": [{"port": 8000}]}))
    assert isolated == {WEB.ip: [network_policy.Admitted(((AUDIENCE.ip, ()),), ((8000, 8000),))]}


def test_peers_by_pod_namespace_both_and_cidr_and_rules_without_from_or_ports() -> None:
    web = {"matchLabels": {"app": "web"}}
    same_namespace = {"podSelector": {"matchLabels": {"app": "other"}}}
    labelled = {"namespaceSelector": {"matchLabels": {"team": "ingress"}}, "podSelector": {"matchLabels": {"app": "x"}}}
    block = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/24"]}}
    isolated = ways_in(
        policy("a", web, {"from": [same_namespace, labelled]}, {"ports": [{"port": 9000, "endPort": 9010}]}),
        policy("b", web, {"from": [block]}, {"from": [{"podSelector": {"matchLabels": {"app": "none"}}}]}),
    )
    assert isolated == {WEB.ip: [
        network_policy.Admitted(((OTHER.ip, ()),), None),  # the labelled namespace holds no pod `app: x`
        network_policy.Admitted(None, ((9000, 9010),)),
        network_policy.Admitted((("10.0.0.0/8", ("10.244.0.0/24",)),), None),
    ]}  # fmt: skip
    assert ways_in(policy("deny", web)) == {WEB.ip: []}
    rules = network_policy.policy_rules(isolated)
    assert f"ip saddr {{ {OTHER.ip} }} accept" in rules and "tcp dport { 9000-9010 } accept" in rules
    assert "ip saddr 10.0.0.0/8 ip saddr != { 10.244.0.0/24 } accept" in rules


def test_a_port_entry_without_a_number_admits_every_tcp_port_and_no_other_protocol() -> None:
    isolated = ways_in(policy("web", {"matchLabels": {"app": "web"}}, {"ports": [{"protocol": "TCP"}]}))
    assert isolated == {WEB.ip: [network_policy.Admitted(None, ((1, 65535),))]}
    assert "tcp dport { 1-65535 } accept" in network_policy.policy_rules(isolated)


def test_a_pod_reaches_itself_whatever_its_policies_say() -> None:
    """Through a Service, its own connection comes back to it across the node: not policed, as on a cluster."""
    rules = network_policy.policy_rules(ways_in(policy("deny", {"matchLabels": {"app": "web"}})))
    assert f"ip saddr {WEB.ip} accept" in rules.split("chain pod-0 {", 1)[1].split("}", 1)[0]


def test_a_cidr_with_host_bits_is_its_network_and_empty_egress_is_no_egress_policy() -> None:
    """As the API server takes them: a CIDR with host bits names its network (a sloppy parse); `egress: []`
    without policyTypes makes an Ingress policy (Egress is defaulted only for a policy with egress rules)."""
    block = {"ipBlock": {"cidr": "10.1.2.3/8", "except": ["10.244.0.9/24"]}}
    isolated = ways_in(policy("a", {"matchLabels": {"app": "web"}}, {"from": [block]}, egress=[], policyTypes=[]))
    assert isolated == {WEB.ip: [network_policy.Admitted((("10.0.0.0/8", ("10.244.0.0/24",)),), None)]}


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"policyTypes": ["Ingress", "Egress"]}, "NetworkPolicy egress"),
        ({"egress": [{}]}, "NetworkPolicy egress"),
        ({"ingress": [{"ports": [{"port": "http"}]}]}, "named port 'http'"),
        ({"ingress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}, "protocol UDP"),
    ],
)
def test_what_the_enforcement_does_not_emulate_is_refused(spec: Manifest, why: str) -> None:
    manifest = {"metadata": {"namespace": NAMESPACE}, "spec": {"podSelector": {}, **spec}}
    with pytest.raises(UnsupportedError, match=why):
        network_policy.check_supported(manifest)


# Asks host argv[1], port argv[2], and says how it went: an answer, refused, or no answer (a dropped SYN).
KNOCK = (
    'exec python -c "import socket, sys\n'
    "try:\n"
    "    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); print('answered', c.recv(100))\n"
    "except TimeoutError: print('no answer')\n"
    "except ConnectionRefusedError: print('refused')\n"
    '" '
)
# Answers with its name on ports 8000 and 8001.
ANSWER_ON_TWO_PORTS = (
    'exec python -c "import socket, threading\n'
    "def serve(port):\n"
    "    s = socket.create_server(('', port))\n"
    "    for c, _ in iter(s.accept, None): c.sendall(socket.gethostname().encode()); c.close()\n"
    "threading.Thread(target=serve, args=(8001,), daemon=True).start(); serve(8000)\n"
    '"'
)


@pytest.mark.rehearsal
def test_network_policies_admit_their_peers_on_their_ports_and_drop_the_rest(cluster: Cluster) -> None:
    """A server selected by a policy that admits the `audience` namespace on port 8000: a pod there gets answers
    on 8000, directly and through the Service (from its first connection on), but no answer on 8001; pods of
    another namespace, or of the server's own that no rule names, get no answer at all; the node (the kubelet's
    probes) reaches every port. Without the policy, everyone reaches everything."""
    audience = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "audience"}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 8000}]}}  # fmt: skip
    admit = policy("web", {"matchLabels": {"app": "web"}}, {"from": [BY_NAME], "ports": [{"port": 8000}]})
    for manifest in (audience, service, admit):
        cluster.apply(manifest)
    web = deployment("web", 1, template(container(ANSWER_ON_TWO_PORTS), app="web"))
    cluster.apply(web)
    [server] = running(cluster, web, 1)

    def knock(namespace: str, script: str) -> str:
        knocker = job("knock", template(container(script), app="knock"))
        knocker["metadata"]["namespace"] = namespace
        cluster.apply(knocker)
        pod = wait_for(
            lambda: next((p for p in cluster.pods_of(("Job", namespace, knocker["metadata"]["name"]))
                          if p.finished), None), 30, "the knock finished", 0.1
        )  # fmt: skip
        cluster.delete(knocker)
        wait_for(lambda: not cluster.pods_of(("Job", namespace, "knock")), 10, "the knock gone", 0.1)
        return "\n".join(pod.logs("main").splitlines()[1:])  # after the kubelet's `--- start` line

    answered = f"answered {server.name.encode()!r}"
    # A new pod's first connection is admitted: its rules were in place before it started (no SYN dropped, so its
    # network namespace counts no retransmission).
    first = knock("audience", f"exec bash -c 'exec 3<>/dev/tcp/{server.ip}/8000 && grep ^Tcp: /proc/net/snmp'")
    names, counts = (line.split() for line in first.splitlines())
    assert dict(zip(names, counts, strict=True))["RetransSegs"] == "0", first
    assert knock("audience", KNOCK + f"{server.ip} 8000") == answered
    assert knock("audience", KNOCK + f"web.{NAMESPACE}.svc 8000") == answered
    assert knock("audience", KNOCK + f"{server.ip} 8001") == "no answer"
    assert knock("elsewhere", KNOCK + f"{server.ip} 8000") == "no answer"
    assert knock("elsewhere", KNOCK + f"web.{NAMESPACE}.svc 8000") == "no answer"
    assert knock(NAMESPACE, KNOCK + f"{server.ip} 8000") == "no answer"
    for port in (8000, 8001):
        with socket.create_connection((server.ip, port), timeout=5) as from_the_node:
            assert from_the_node.recv(100).decode() == server.name
    cluster.delete(admit)
    wait_for(lambda: knock("elsewhere", KNOCK + f"{server.ip} 8001") == answered, 10, "the policy gone")

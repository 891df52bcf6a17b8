"""The real program under Pulumi's mocks: the resources, fields and dependencies that make the cluster work."""

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
from google.protobuf import json_format
from pulumi.runtime import mocks

from components import RayCluster
from components.config.resources import parse_quantity
from components.manifests.ray_node import AUTH_TOKEN_KEY
from components.manifests.ray_node import TOKEN_VERSION_LABEL as TOKEN_VERSION
from tests.lifecycle import plan
from tests.program import Manifest, Rendered, capture, kubernetes_uid
from tests.program import render_in_place as render
from tests.pulumi_cli import StackConfig

HEAD_HOST = "ray-head.ray-test.svc"
POD_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "ray.io/cluster",
    "ray.io/node-type",
    "ray.io/group",
]


@pytest.fixture
def default() -> Rendered:
    """A fresh render per test (0.1 s): mutmut credits a test only with the code run during its own setup, call
    and teardown, so a module-scoped render would let a mutant survive every test but the first that used it."""
    return render()


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest) -> Manifest:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    found: Manifest = containers[0]
    return found


def ray_container(workload: Manifest) -> Manifest:
    """The Ray node's container of a Ray pod, beside which the head may run the autoscaler's."""
    found: list[Manifest] = [c for c in pod_spec(workload)["containers"] if c["name"] in ("ray-head", "ray-worker")]
    assert len(found) == 1
    return found[0]


# A worker's Ray container runs `ray start`'s arguments through components/in_pod/worker_start.py, shipped as its text.
WORKER_START = ["python", "-c", (Path(__file__).parents[1] / "components" / "in_pod" / "worker_start.py").read_text()]


# A Ray container's main process: components/in_pod/ray_node.sh, whose text the command carries.
RAY_NODE_SOURCE = (Path(__file__).parents[1] / "components" / "in_pod" / "ray_node.sh").read_text()


def node_start(workload: Manifest) -> str:
    """What a Ray container's script runs after defining ray_node.sh's functions: `run_node <the start command>`,
    after, with autoscaling on the head, the autoscaler's events file to link."""
    command = ray_container(workload)["command"]
    assert command[:2] == ["/bin/bash", "-c"]
    defined, start = command[2].split(f"{RAY_NODE_SOURCE}\n", 1)
    assert defined.startswith("ulimit ") and defined.endswith("; "), defined
    return str(start)


def ray_argv(workload: Manifest) -> list[str]:
    """The `ray start ...` words of a Ray container: `run_node ray start ...` on the head, `run_node python -c
    <worker_start.py> start ...` on a worker, both after the functions of components/in_pod/ray_node.sh."""
    words = shlex.split(node_start(workload).split("run_node ", 1)[1])
    runs = ["ray"] if words[:2] == ["ray", "start"] else WORKER_START
    assert words[: len(runs)] == runs and words[len(runs)] == "start", words[:2]
    return ["ray", *words[len(runs) :]]


def flag(argv: list[str], name: str) -> str:
    values = [word.split("=", 1)[1] for word in argv if word.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} in {argv}"
    return values[0]


def env(container_spec: Manifest) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container_spec["env"]}


def test_the_component_owns_every_resource(default: Rendered) -> None:
    component = default.registrations[0]
    assert component.type == "ray-cluster:index:RayCluster"
    assert all(r.parent == component.urn for r in default.registrations[1:])
    assert sorted(m["kind"] for m in default.manifests) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Job",
        "Namespace",
        "NetworkPolicy",
        "Secret",
        "Service",
        "ServiceAccount",
    ]


def test_namespace_comes_from_the_stack_name() -> None:
    assert render(stack="staging").one("Namespace")["metadata"]["name"] == "ray-staging"
    assert render(stack="prod-eu").one("Namespace")["metadata"]["name"] == "ray-prod-eu"
    assert render({"namespace": "ml"}, stack="Prod_EU").one("Namespace")["metadata"]["name"] == "ml"


def test_an_existing_namespace_is_used_not_created() -> None:
    rendered = render({"namespace": "shared-ml", "createNamespace": False})
    assert rendered.of_kind("Namespace") == []
    assert {m["metadata"]["namespace"] for m in rendered.manifests} == {"shared-ml"}


def test_head_service_is_stable_and_selects_only_the_head(default: Rendered) -> None:
    service = default.one("Service", "ray-head")
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "gcs": 6379,
        "dashboard": 8265,
        "client": 10001,
        "metrics": 8080,
    }
    selector = service["spec"]["selector"].items()
    head_labels = default.one("Deployment", "ray-head")["spec"]["template"]["metadata"]["labels"].items()
    worker_labels = default.one("Deployment", "ray-worker")["spec"]["template"]["metadata"]["labels"].items()
    assert selector <= head_labels
    assert not selector <= worker_labels


def test_head_runs_current_ray_start_flags(default: Rendered) -> None:
    head = default.one("Deployment", "ray-head")
    assert head["spec"]["replicas"] == 1
    assert head["spec"]["strategy"] == {"type": "Recreate"}
    argv = ray_argv(head)
    assert "--head" in argv and "--block" not in argv
    assert flag(argv, "--port") == "6379"
    assert flag(argv, "--dashboard-host") == "0.0.0.0"
    assert flag(argv, "--ray-client-server-port") == "10001"
    assert flag(argv, "--node-ip-address") == "$(RAY_POD_IP)"
    assert env(container(head))["RAY_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    for outdated in ("--redis-port", "--redis-shard-ports", "--webui-host", "--redis-password"):
        assert not any(word.startswith(outdated) for word in argv)


def test_ray_is_told_the_pod_resources_not_the_host(default: Rendered) -> None:
    for name, cpu, memory in (("ray-head", "1", "4Gi"), ("ray-worker", "1", "2Gi")):
        workload = default.one("Deployment", name)
        argv = ray_argv(workload)
        resources = container(workload)["resources"]
        assert resources["requests"] == resources["limits"] == {"cpu": cpu, "memory": memory}
        assert flag(argv, "--num-cpus") == cpu
        assert flag(argv, "--num-gpus") == "0"
        object_store = int(flag(argv, "--object-store-memory"))
        assert int(flag(argv, "--memory")) + object_store == parse_quantity("m", memory)
        shm = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "shm")["emptyDir"]
        assert shm["medium"] == "Memory"
        assert 0 < object_store < parse_quantity("shm", shm["sizeLimit"]) < parse_quantity("m", memory)
        assert {"name": "shm", "mountPath": "/dev/shm"} in container(workload)["volumeMounts"]


def test_probes_use_rays_health_endpoints(default: Rendered) -> None:
    head, worker = container(default.one("Deployment", "ray-head")), container(default.one("Deployment", "ray-worker"))
    assert head["readinessProbe"]["httpGet"] == {"path": "/api/gcs_healthz", "port": 8265}
    for ray_container in (head, worker):
        assert ray_container["livenessProbe"]["httpGet"] == {"path": "/api/healthz", "port": 52365}
        assert ray_container["livenessProbe"]["failureThreshold"] * ray_container["livenessProbe"]["periodSeconds"] > 60
    assert worker["readinessProbe"]["httpGet"] == {"path": "/api/healthz", "port": 52365}


def test_workers_join_the_head_by_its_service_name(default: Rendered) -> None:
    worker = default.one("Deployment", "ray-worker")
    assert worker["spec"]["replicas"] == 3
    argv = ray_argv(worker)
    assert "--head" not in argv
    assert flag(argv, "--address") == f"{HEAD_HOST}:6379"
    # The head's health check runs in the Ray container (components/in_pod/worker_start.py); the init container waits,
    # without Python, for the GCS port.
    assert shlex.split(node_start(worker))[:4] == ["run_node", *WORKER_START]
    [init] = pod_spec(worker)["initContainers"]
    assert init["image"] == container(worker)["image"]
    assert f"exec 3<>/dev/tcp/{HEAD_HOST}/6379" in init["command"][-1] and "ray " not in init["command"][-1]
    assert init["command"][-1].startswith("ulimit")
    assert init["resources"] == container(worker)["resources"]


def test_workers_start_with_the_head_not_after_it(default: Rendered) -> None:
    worker = default.registration_of(default.one("Deployment", "ray-worker"))
    head_names = {default.registration_of(default.one(kind, "ray-head")).urn for kind in ("Deployment", "Service")}
    assert not head_names & set(worker.dependencies)


def test_every_pod_carries_the_labels(default: Rendered) -> None:
    for workload in default.of_kind("Deployment") + default.of_kind("Job"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert set(POD_LABELS) <= set(labels)
        assert labels["app.kubernetes.io/managed-by"] == "pulumi"
    assert default.one("Deployment", "ray-head")["spec"]["template"]["metadata"]["labels"]["ray.io/node-type"] == "head"
    worker_labels = default.one("Deployment", "ray-worker")["spec"]["template"]["metadata"]["labels"]
    assert worker_labels["ray.io/node-type"] == "worker"
    assert worker_labels["ray.io/group"] == "worker"


def test_smoke_test_job_waits_for_the_whole_cluster(default: Rendered) -> None:
    job = default.smoke_test()
    registration = default.registration_of(job)
    for kind, name in (("Deployment", "ray-head"), ("Service", "ray-head"), ("Deployment", "ray-worker")):
        assert default.registration_of(default.one(kind, name)).urn in registration.dependencies
    # The script's own wait ends first (with a message), then the Job's deadline, then `pulumi up`'s wait for it.
    node_wait = int(env(container(job))["SMOKE_NODE_WAIT_SECONDS"])
    deadline = job["spec"]["activeDeadlineSeconds"]
    assert node_wait + 120 <= deadline < int(registration.options.custom_timeouts["create"].removesuffix("s"))
    assert job["spec"]["backoffLimit"] == 1  # one retry: a flake is forgiven, a broken cluster is not retried for long
    assert "ttlSecondsAfterFinished" not in job["spec"]
    driver = container(job)
    assert env(driver)["RAY_ADDRESS"] == f"ray://{HEAD_HOST}:10001"
    assert env(driver)["SMOKE_EXPECTED_WORKERS"] == "3"
    script = default.one("ConfigMap")["data"]["smoke_test.py"]
    assert "Success!" in script and "CALLS_PER_ROUND = 100" in script
    [volume] = [v for v in pod_spec(job)["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == default.one("ConfigMap")["metadata"]["name"]
    assert driver["command"] == ["python", "/opt/ray-smoke-test/smoke_test.py"]


def test_smoke_test_job_can_be_turned_off() -> None:
    rendered = render({"testJob": False})
    assert rendered.of_kind("Job") == [] and rendered.of_kind("ConfigMap") == []


def test_outputs_say_how_to_reach_the_cluster(default: Rendered) -> None:
    assert default.outputs == {
        "namespace": "ray-test",
        "headServiceDns": HEAD_HOST,
        "gcsAddress": f"{HEAD_HOST}:6379",
        "rayClientAddress": f"ray://{HEAD_HOST}:10001",
        "dashboardUrl": f"http://{HEAD_HOST}:8265",
        "portForwardCommand": "kubectl -n ray-test port-forward service/ray-head 8265:8265 10001:10001",
        "image": "rayproject/ray:2.60.0",
        "workerReplicas": {"worker": 3},
        "authTokenSecret": "ray-auth-token",
        "gcsStorageNamespace": None,
        "serveUrl": None,
        "generation": None,
        "generationsCommand": None,
    }


@pytest.mark.parametrize("workers", [0, 1, 4])
def test_worker_count(workers: int) -> None:
    rendered = render({"workers": workers})
    assert rendered.one("Deployment", "ray-worker")["spec"]["replicas"] == workers
    assert env(container(rendered.smoke_test()))["SMOKE_EXPECTED_WORKERS"] == str(workers)
    assert rendered.outputs["workerReplicas"] == {"worker": workers}


def test_scaling_changes_only_the_worker_group_and_the_job() -> None:
    before, after = ({(m["kind"], m["metadata"]["name"]): m for m in render({"workers": n}).manifests} for n in (3, 4))
    assert before.keys() == after.keys()
    changed = {key for key in before if before[key] != after[key]}
    [job] = [key for key in before if key[0] == "Job"]
    assert changed == {("Deployment", "ray-worker"), job}
    assert before[job]["spec"]["template"] != after[job]["spec"]["template"]


def test_dev_stack_file_is_applied() -> None:
    assert render(stack="dev").one("Deployment", "ray-worker")["spec"]["replicas"] == 2


def test_custom_image_and_resources() -> None:
    rendered = render(
        {"image": "myregistry/ray-ml:2.60.0-py311", "headCpu": "4", "headMemory": "16Gi", "workerCpu": "500m"}
    )
    head, worker = rendered.one("Deployment", "ray-head"), rendered.one("Deployment", "ray-worker")
    for workload in rendered.of_kind("Deployment") + rendered.of_kind("Job"):
        images = {c["image"] for c in pod_spec(workload)["containers"] + pod_spec(workload).get("initContainers", [])}
        assert images == {"myregistry/ray-ml:2.60.0-py311"}
    assert flag(ray_argv(head), "--num-cpus") == "4"
    assert int(flag(ray_argv(head), "--object-store-memory")) == int(16 * 2**30 * 0.3)
    assert container(worker)["resources"]["limits"]["cpu"] == "500m"
    assert flag(ray_argv(worker), "--num-cpus") == "1"
    assert rendered.outputs["image"] == "myregistry/ray-ml:2.60.0-py311"


def test_an_extra_gpu_group() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    rendered = render(
        {
            "workerGroups": [
                {
                    "name": "gpu",
                    "replicas": 2,
                    "cpu": "8",
                    "memory": "32Gi",
                    "gpus": 1,
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [toleration],
                }
            ]
        }
    )
    gpu = rendered.one("Deployment", "ray-gpu")
    assert gpu["spec"]["replicas"] == 2
    assert container(gpu)["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert flag(ray_argv(gpu), "--num-gpus") == "1"
    assert pod_spec(gpu)["nodeSelector"] == {"nvidia.com/gpu.present": "true", "kubernetes.io/arch": "amd64"}
    assert pod_spec(gpu)["tolerations"] == [toleration]
    assert gpu["spec"]["template"]["metadata"]["labels"]["ray.io/group"] == "gpu"
    assert "nvidia.com/gpu" not in container(rendered.one("Deployment", "ray-worker"))["resources"]["limits"]
    job = rendered.registration_of(rendered.smoke_test())
    assert rendered.registration_of(gpu).urn in job.dependencies
    assert env(container(rendered.smoke_test()))["SMOKE_EXPECTED_WORKERS"] == "5"
    assert rendered.outputs["workerReplicas"] == {"worker": 3, "gpu": 2}


def test_gpu_groups_run_the_gpu_variant_of_the_image() -> None:
    config = StackConfig(values={"workerGpus": "1"})
    config.run("pulumi config set --path 'workerGroups[0].name' a100")
    config.run("pulumi config set --path 'workerGroups[0].gpus' 2")
    config.run("pulumi config set --path 'workerGroups[1].name' cuda-custom")
    config.run("pulumi config set --path 'workerGroups[1].gpus' 1")
    config.run("pulumi config set --path 'workerGroups[1].image' registry.example/ray-cuda:2.60.0")
    config.run("pulumi config set --path 'workerGroups[2].name' cpu")
    rendered = render(config.program_config())

    def images(name: str) -> set[str]:
        spec = pod_spec(rendered.one("Deployment", name))
        return {c["image"] for c in spec["containers"] + spec.get("initContainers", [])}

    assert images("ray-head") == images("ray-cpu") == {"rayproject/ray:2.60.0"}
    assert images("ray-worker") == images("ray-a100") == {"rayproject/ray:2.60.0-gpu"}
    assert images("ray-cuda-custom") == {"registry.example/ray-cuda:2.60.0"}
    assert container(rendered.smoke_test())["image"] == "rayproject/ray:2.60.0"


def test_workers_roll_without_surge_and_drain_before_they_stop(default: Rendered) -> None:
    worker = default.one("Deployment", "ray-worker")
    assert worker["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"},
    }
    assert env(container(worker))["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "120"
    assert pod_spec(worker)["terminationGracePeriodSeconds"] == 135
    drained = render({"workerDrainSeconds": "600"}).one("Deployment", "ray-worker")
    assert env(container(drained))["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "600"
    assert pod_spec(drained)["terminationGracePeriodSeconds"] == 615


def test_a_failed_smoke_test_is_replaced_by_the_next_up(default: Rendered) -> None:
    """pulumi-kubernetes re-awaits a Job that failed (and fails again) unless it may replace an unready one."""
    assert default.smoke_test()["metadata"]["annotations"]["pulumi.com/replaceUnready"] == "true"


def test_pulumi_owns_the_fields_it_sets_on_every_object(default: Rendered) -> None:
    for manifest in default.manifests:
        assert manifest["metadata"]["annotations"]["pulumi.com/patchForce"] == "true", manifest["kind"]


def test_a_new_token_rolls_every_pod_that_reads_it() -> None:
    """The token is the (secret) keeper of a RandomId whose value labels every pod template that reads the token: a
    new token replaces the RandomId (pulumi-random draws anew when keepers change), and so rolls the pods."""
    rendered = render({"authToken": "a" * 40}, secrets=("authToken",))
    [version] = [r for r in rendered.registrations if r.type == "random:index/randomId:RandomId"]
    token = rendered.one("Secret")["stringData"][AUTH_TOKEN_KEY]
    assert version.inputs["keepers"] == {"token": token} and version.secret_paths == {"keepers.token"}
    labels = {
        m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"][TOKEN_VERSION]
        for m in rendered.of_kind("Deployment")
    }
    assert labels == {"ray-head": version.inputs["hex"], "ray-worker": version.inputs["hex"]}
    rotated = plan(rendered, render({"authToken": "b" * 40}, secrets=("authToken",)))
    assert rotated.kind_of(version.name) == "replace"
    assert {"ray-head", "ray-worker"} <= set(rotated.updated())
    assert TOKEN_VERSION not in json.dumps(render({"tokenAuth": "false"}).manifests)


def test_rollouts_may_take_every_round_of_drains(default: Rendered) -> None:
    """Seven rounds of a worker rollout, each waiting for a drain, fit in `pulumi up`'s wait, and a round's drain
    is not taken for a stuck rollout (ProgressDeadlineExceeded fails the await)."""
    for drain in (120, 3600):
        rendered = default if drain == 120 else render({"workerDrainSeconds": str(drain)})
        worker = rendered.one("Deployment", "ray-worker")
        grace = pod_spec(worker)["terminationGracePeriodSeconds"]
        assert worker["spec"]["progressDeadlineSeconds"] >= grace + 600
        timeouts = rendered.registration_of(worker).options.custom_timeouts
        assert timeouts["update"] == f"{20 * 60 + 7 * grace}s" == timeouts["create"]
    head = default.registration_of(default.one("Deployment", "ray-head")).options.custom_timeouts
    assert head["update"] == "1200s" and "progressDeadlineSeconds" not in default.one("Deployment", "ray-head")["spec"]


def test_deployments_leave_their_pod_templates_annotations_to_kubectl(default: Rendered) -> None:
    for deployment in default.of_kind("Deployment"):
        options = default.registration_of(deployment).options
        assert options.ignore_changes == ("spec.template.metadata.annotations",)


def test_metrics_scrapers_get_the_metrics_ports_only() -> None:
    """Every node's metrics port, the dashboard's and Ray's monitor's (the autoscaler's), and nothing else."""
    rendered = render({"allowedMetricsNamespaces": ["monitoring"]})
    policy = rendered.one("NetworkPolicy", "ray-metrics")["spec"]
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"port": port, "protocol": "TCP"} for port in (8080, 44227, 44217)]
    assert rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["monitoring"]
    assert policy["podSelector"] == {"matchLabels": {"ray.io/cluster": "ray"}}
    # Registration order follows Pulumi's asynchronous outputs: compare as a set.
    assert sorted(m["metadata"]["name"] for m in rendered.of_kind("NetworkPolicy")) == ["ray-internal", "ray-metrics"]


def test_a_small_head_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning is attached to the component, so `pulumi up` shows it on the cluster's row, not the stack's."""
    warnings: list[tuple[str, object]] = []
    monkeypatch.setattr(
        pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append((message, kwargs.get("resource")))
    )
    render()
    assert warnings == []
    render({"headMemory": "1Gi"})
    [(message, resource)] = warnings
    assert "headMemory is '1Gi'" in message
    assert isinstance(resource, RayCluster)


COMPONENT_URN = "urn:pulumi:test::ray-cluster::ray-cluster:index:RayCluster::ray"
PATCH_FORCE = {"pulumi.com/patchForce": "true"}


def object_labels(component: str, group: str | None = None) -> dict[str, str]:
    """The labels every object of the cluster carries, written out here (not taken from components.manifests.pods)."""
    return {
        "app.kubernetes.io/name": "ray",
        "app.kubernetes.io/instance": "ray",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "pulumi",
        "ray.io/cluster": "ray",
        "ray.io/node-type": component,
        "ray.io/group": group or component,
    }


def namespaced(name: str, component: str, group: str | None = None) -> Manifest:
    """The metadata of a named object in the stack's namespace."""
    return {
        "name": name,
        "namespace": "ray-test",
        "labels": object_labels(component, group),
        "annotations": PATCH_FORCE,
    }


def test_every_object_keeps_its_logical_name_kind_and_labels() -> None:
    """Logical names are what the state knows each object by: a renamed one is deleted and created again (and a
    fixed-name object collides with itself). Every object is labelled with the part of the cluster it belongs to
    (`kubectl get all -l ray.io/node-type=head`), and the ServiceAccount mounts no API token into any pod."""
    rendered = render(
        {
            "allowedClientNamespaces": ["notebooks"],
            "allowedMetricsNamespaces": ["monitoring"],
            "workerGroups": [{"name": "gpu", "gpus": 1}],
        }
    )
    found: dict[tuple[str, str], Manifest] = {}
    for registration in rendered.kubernetes():
        top = {key: value for key, value in registration.inputs.items() if key not in ("spec", "data", "stringData")}
        found[(registration.type, registration.name)] = top
    job = found[("kubernetes:batch/v1:Job", "ray-smoke-test")]["metadata"]
    assert job.pop("name").startswith("ray-smoke-test-")  # generated: a changed Job is created before the old goes
    policy = ("kubernetes:networking.k8s.io/v1:NetworkPolicy", "NetworkPolicy", "networking.k8s.io/v1")
    assert found == {
        ("kubernetes:core/v1:Namespace", "ray-namespace"): {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": "ray-test",
                "labels": {
                    "app.kubernetes.io/managed-by": "pulumi",
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
                "annotations": PATCH_FORCE,
            },
        },
        ("kubernetes:core/v1:ServiceAccount", "ray-service-account"): {
            "kind": "ServiceAccount",
            "apiVersion": "v1",
            "metadata": namespaced("ray", "cluster"),
            "automountServiceAccountToken": False,
        },
        **{
            (policy[0], f"ray-{suffix}-traffic"): {
                "kind": policy[1],
                "apiVersion": policy[2],
                "metadata": namespaced(f"ray-{name}", "cluster"),
            }
            for suffix, name in (("internal", "internal"), ("client", "clients"), ("metrics", "metrics"))
        },
        ("kubernetes:core/v1:Secret", "ray-auth-token-secret"): {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": namespaced("ray-auth-token", "cluster"),
            "type": "Opaque",
        },
        ("kubernetes:core/v1:Service", "ray-head-service"): {
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": namespaced("ray-head", "head"),
        },
        **{
            ("kubernetes:apps/v1:Deployment", f"ray-{group}"): {
                "kind": "Deployment",
                "apiVersion": "apps/v1",
                "metadata": namespaced(f"ray-{group}", component, group),
            }
            for component, group in (("head", "head"), ("worker", "worker"), ("worker", "gpu"))
        },
        ("kubernetes:core/v1:ConfigMap", "ray-smoke-test-script"): {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": namespaced("ray-smoke-test", "smoke-test"),
        },
        ("kubernetes:batch/v1:Job", "ray-smoke-test"): {
            "kind": "Job",
            "apiVersion": "batch/v1",
            "metadata": {
                "namespace": "ray-test",
                "labels": object_labels("smoke-test"),
                "annotations": {**PATCH_FORCE, "pulumi.com/replaceUnready": "true", "pulumi.com/autonamed": "true"},
            },
        },
    }


def test_the_head_service_resolves_the_head_alone_before_it_is_ready(default: Rendered) -> None:
    """Each Deployment selects its own group's pods only, and the Service the head's, published before the head
    is ready (the workers' init containers check the GCS themselves)."""
    service = default.one("Service", "ray-head")["spec"]
    assert {key: value for key, value in service.items() if key != "ports"} == {
        "type": "ClusterIP",
        "selector": {"ray.io/cluster": "ray", "ray.io/group": "head"},
        "publishNotReadyAddresses": True,
    }
    rendered = render({"workerGroups": [{"name": "gpu", "gpus": 1}]})
    for group in ("head", "worker", "gpu"):
        selector = rendered.one("Deployment", f"ray-{group}")["spec"]["selector"]
        assert selector == {"matchLabels": {"ray.io/cluster": "ray", "ray.io/group": group}}, group


def test_pods_are_created_only_once_their_access_objects_exist(default: Rendered) -> None:
    """A pod whose ServiceAccount or token Secret does not exist yet is rejected or cannot start, and one that
    starts before its NetworkPolicy runs unfenced; the smoke test waits for all of the cluster."""
    names = {r.urn: r.name for r in default.registrations}

    def dependencies(name: str) -> set[str]:
        [registration] = [r for r in default.registrations if r.name == name]
        return {names[urn] for urn in registration.dependencies}

    access = {"ray-namespace", "ray-service-account", "ray-internal-traffic", "ray-auth-token-secret"}
    for deployment in ("ray-head", "ray-worker"):
        assert dependencies(deployment) == access | {"ray-auth-token-version"}
    cluster = {"ray-head-service", "ray-head", "ray-worker", "ray-smoke-test-script"}
    assert dependencies("ray-smoke-test") == access | cluster | {"ray-auth-token-version"}


def test_pulumi_up_waits_a_minute_longer_than_the_smoke_test_may_run(default: Rendered) -> None:
    """The Job's own deadline (its node wait plus five minutes of calls) ends first, so `pulumi up` reports the
    Job's failure instead of a timeout of its own."""
    job = default.smoke_test()
    assert job["spec"]["activeDeadlineSeconds"] == 900
    assert default.registration_of(job).options.custom_timeouts == {"create": "960s"}


def test_the_generated_token_is_drawn_once_per_stack_and_is_the_one_used(default: Rendered) -> None:
    """The README's 48-character token: any change of the random resources' inputs would replace them (a new
    token, or a new version label rolling every pod) on the next `pulumi up` of an existing stack."""
    [password] = [r for r in default.registrations if r.type == "random:index/randomPassword:RandomPassword"]
    [version] = [r for r in default.registrations if r.type == "random:index/randomId:RandomId"]
    assert {key: value for key, value in password.inputs.items() if key != "result"} == {"length": 48, "special": False}
    assert version.inputs["byteLength"] == 8 and len(version.inputs["hex"]) == 16
    token = default.one("Secret")["stringData"][AUTH_TOKEN_KEY]
    assert token == password.inputs["result"] and len(token) == 48


_REGISTER_OUTPUTS = mocks.MockMonitor.RegisterResourceOutputs


def component_outputs(monkeypatch: pytest.MonkeyPatch, config: dict[str, object]) -> dict[str, Any]:
    """What the component registers as its outputs (kept in the state, shown by `pulumi stack --show-urns -j` and
    the console); the mock monitor drops them, so they are recorded here."""
    recorded: dict[str, dict[str, Any]] = {}

    def record(monitor: mocks.MockMonitor, request: Any) -> Any:
        recorded[request.urn] = json_format.MessageToDict(request.outputs)
        return _REGISTER_OUTPUTS(monitor, request)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(mocks.MockMonitor, "RegisterResourceOutputs", record)
    render(config)
    return recorded[COMPONENT_URN]


def test_the_component_records_how_to_reach_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The component's own outputs say what the stack's do, under the same names (the package schema's)."""
    reach = {
        "namespace": "ray-test",
        "headServiceDns": HEAD_HOST,
        "gcsAddress": f"{HEAD_HOST}:6379",
        "rayClientAddress": f"ray://{HEAD_HOST}:10001",
        "dashboardUrl": f"http://{HEAD_HOST}:8265",
        "portForwardCommand": "kubectl -n ray-test port-forward service/ray-head 8265:8265 10001:10001",
        "image": "rayproject/ray:2.60.0",
        "workerReplicas": {"worker": 3},
    }
    outputs = component_outputs(monkeypatch, {})
    children = {name: outputs.pop(name) for name in ("headService", "headDeployment", "workerDeployments")}
    assert outputs == {**reach, "authTokenSecret": "ray-auth-token"}
    # Without token auth there is no Secret to name: the output is null (and so left out of the state).
    without_auth = component_outputs(monkeypatch, {"tokenAuth": "false"})
    assert {k: v for k, v in without_auth.items() if k not in children} == reach
    assert render({"tokenAuth": "false"}).outputs["authTokenSecret"] is None
    # The children a consumer may depend on: references to the resources (URN and ID), which the stack does not
    # export.
    component = "urn:pulumi:test::ray-cluster::ray-cluster:index:RayCluster$kubernetes"
    assert not children.keys() & render().outputs.keys()
    workers = children.pop("workerDeployments")
    assert {name: ref["urn"] for name, ref in [*children.items(), *workers.items()]} == {
        "headService": f"{component}:core/v1:Service::ray-head-service",
        "headDeployment": f"{component}:apps/v1:Deployment::ray-head",
        "worker": f"{component}:apps/v1:Deployment::ray-worker",
    }


def test_the_smoke_test_reruns_when_what_runs_the_cluster_changes_and_only_then() -> None:
    """The Job's cluster digest is the SHA-256 of the running specs (the head Service's, the head's and each
    worker group's), as canonical JSON: keys sorted, so the order a user wrote a map in does not matter."""
    rendered = render({"workerGroups": [{"name": "gpu", "gpus": 1, "nodeSelector": {"a": "1", "b": "2"}}]})
    running = {
        "head-service": rendered.one("Service", "ray-head")["spec"],
        "head": rendered.one("Deployment", "ray-head")["spec"],
        "workers": {group: rendered.one("Deployment", f"ray-{group}")["spec"] for group in ("worker", "gpu")},
    }
    expected = hashlib.sha256(json.dumps(running, sort_keys=True).encode()).hexdigest()
    job = rendered.smoke_test()
    assert job["spec"]["template"]["metadata"]["annotations"]["ray-cluster.pulumi.com/cluster-sha256"] == expected
    reordered = render({"workerGroups": [{"name": "gpu", "gpus": 1, "nodeSelector": {"b": "2", "a": "1"}}]})
    assert reordered.smoke_test() == job


def test_every_pod_of_an_official_ray_image_runs_only_on_nodes_of_its_architecture() -> None:
    """A tag's architecture (`-aarch64`: arm64, none: amd64) is each Ray pod's node selector, merged with a group's
    own; Redis (a multi-architecture image) and custom images are placed by nothing of the kind."""
    config = StackConfig(values={"image": "rayproject/ray:2.60.0-aarch64", "gcsFaultTolerance": "true"})
    config.run("pulumi config set --path 'workerGroups[0].name' gpu")
    config.run("pulumi config set --path 'workerGroups[0].gpus' 1")
    config.run("pulumi config set --path 'workerGroups[0].image' rayproject/ray:2.60.0-gpu")
    config.run("pulumi config set --path 'workerGroups[0].nodeSelector[\"kubernetes.io/arch\"]' amd64")
    config.run("pulumi config set --path 'workerGroups[1].name' custom")
    config.run("pulumi config set --path 'workerGroups[1].image' registry.example/ray:2.60.0")
    config.run("pulumi config set --path 'workerGroups[1].nodeSelector.pool' ray")
    rendered = render(config.program_config())
    selectors = {
        m["metadata"]["name"]: m["spec"]["template"]["spec"].get("nodeSelector")
        for m in rendered.manifests
        if m["kind"] == "Deployment"
    }
    assert selectors == {
        "ray-head": {"kubernetes.io/arch": "arm64"},
        "ray-worker": {"kubernetes.io/arch": "arm64"},
        "ray-gpu": {"kubernetes.io/arch": "amd64"},
        "ray-custom": {"pool": "ray"},
        "ray-redis": None,
    }
    assert pod_spec(rendered.smoke_test())["nodeSelector"] == {"kubernetes.io/arch": "arm64"}


def test_a_kubernetes_objects_uid_is_an_output_the_program_can_give_another_object_and_never_an_input() -> None:
    """The provider's outputs are the live object, uid included (the mocks draw it from the type and the ID), so
    an ownerReference can name its owner; the owner's captured manifest is its inputs, without one."""

    def program() -> None:
        owner = k8s.core.v1.ConfigMap("owner", metadata={"name": "owner", "namespace": "ns"}, data={})
        reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
        k8s.core.v1.Secret("owned", metadata={"name": "owned", "namespace": "ns", "ownerReferences": [reference]})
        pulumi.export("uid", owner.metadata.uid)

    rendered = capture(program)
    uid = kubernetes_uid("kubernetes:core/v1:ConfigMap", "ns/owner")
    assert rendered.outputs["uid"] == uid
    assert rendered.one("Secret")["metadata"]["ownerReferences"][0]["uid"] == uid
    assert rendered.one("ConfigMap")["metadata"] == {"name": "owner", "namespace": "ns"}
    assert kubernetes_uid("kubernetes:core/v1:Secret", "ns/owner") != uid

"""Autoscaling as the program renders it: Ray's monitor in a container of its own in the head pod, its config and
node provider in a ConfigMap, a namespaced Role that lets it scale only the autoscaled Deployments, the Kubernetes
token mounted into that container alone, and Deployments whose replicas Pulumi leaves to the autoscaler.
Expectations are written out by hand, so any change to them shows here."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler._private import constants as autoscaler_constants
from ray.autoscaler._private.util import prepare_config, validate_config

from components.in_pod.node_provider import CLUSTER_READ_SECONDS
from components.manifests import autoscaling
from tests.lifecycle import plan
from tests.program import ROOT, Manifest, Rendered
from tests.program import render_in_place as render
from tests.ssa import LiveObject, pulumi_up
from tests.test_program import container, env, flag, node_start, pod_spec, ray_argv, ray_container

AUTOSCALING: dict[str, object] = {"maxWorkers": "4", "workers": "1"}
GPU_FROM_ZERO: dict[str, object] = {
    **AUTOSCALING,
    "workerGroups": [{"name": "gpu", "replicas": 0, "maxReplicas": 1, "gpus": 1, "cpu": "2", "memory": "4Gi"}],
}
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
GIB = 2**30


@pytest.fixture(scope="module")
def scaled() -> Rendered:
    return render(GPU_FROM_ZERO)


def autoscaler_container(rendered: Rendered) -> Manifest:
    containers: list[Manifest] = pod_spec(rendered.one("Deployment", "ray-head"))["containers"]
    [sidecar] = [c for c in containers if c["name"] == "autoscaler"]
    return sidecar


def ray_config(rendered: Rendered) -> dict[str, Any]:
    data = rendered.one("ConfigMap", "ray-autoscaler")["data"]
    loaded: dict[str, Any] = json.loads(data["autoscaling.json"])
    return loaded


def test_off_by_default_nothing_of_it_is_rendered() -> None:
    rendered = render()
    assert not [m for m in rendered.manifests if "autoscaler" in m["metadata"].get("name", "")]
    head = pod_spec(rendered.one("Deployment", "ray-head"))
    assert [c["name"] for c in head["containers"]] == ["ray-head"]
    assert head["serviceAccountName"] == "ray"
    assert "--no-monitor" not in ray_argv(rendered.one("Deployment", "ray-head"))
    assert {r.options.ignore_changes for r in rendered.kubernetes() if r.type.endswith("Deployment")} == {
        ("spec.template.metadata.annotations",)
    }
    assert "SMOKE_MOST_WORKERS" not in env(container(rendered.smoke_test()))


@pytest.mark.parametrize("config", [{"maxWorkers": "3"}, {"workerGroups": [{"name": "gpu", "maxReplicas": 1}]}])
def test_a_maximum_equal_to_the_size_is_not_autoscaling(config: dict[str, object]) -> None:
    assert not render(config).of_kind("Role")


def test_the_role_allows_listing_and_deleting_pods_and_scaling_only_the_autoscaled_deployments(
    scaled: Rendered,
) -> None:
    """No pod patch (a pod's image can be changed in place); test_node_provider.py checks that these are exactly
    the calls the provider makes."""
    role = scaled.one("Role", "ray-autoscaler")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "verbs": ["get"],
            "resourceNames": ["ray-worker", "ray-gpu"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["deployments/scale"],
            "verbs": ["patch"],
            "resourceNames": ["ray-worker", "ray-gpu"],
        },
    ]
    binding = scaled.one("RoleBinding", "ray-autoscaler")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ray-autoscaler"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ray-autoscaler", "namespace": "ray-test"}]
    account = scaled.one("ServiceAccount", "ray-autoscaler")
    assert account["automountServiceAccountToken"] is False
    assert not scaled.of_kind("ClusterRole") and not scaled.of_kind("ClusterRoleBinding")


def test_a_group_that_does_not_autoscale_cannot_be_scaled() -> None:
    rendered = render({"maxWorkers": "4", "workerGroups": [{"name": "fixed", "replicas": 2}]})
    assert rendered.one("Role", "ray-autoscaler")["rules"][2]["resourceNames"] == ["ray-worker"]


def test_only_the_autoscaler_container_mounts_the_kubernetes_token(scaled: Rendered) -> None:
    head = scaled.one("Deployment", "ray-head")
    spec = pod_spec(head)
    assert spec["serviceAccountName"] == "ray-autoscaler"
    assert spec["automountServiceAccountToken"] is False
    [api_access] = [v for v in spec["volumes"] if v["name"] == "kube-api-access"]
    assert api_access == {
        "name": "kube-api-access",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        },
    }
    mounting = {
        c["name"]
        for c in [*spec["containers"], *spec.get("initContainers", [])]
        for m in c.get("volumeMounts", [])
        if m["name"] == "kube-api-access"
    }
    assert mounting == {"autoscaler"}
    for workload in [*scaled.of_kind("Deployment"), scaled.smoke_test()]:
        if workload["metadata"]["name"] != "ray-head":
            assert pod_spec(workload)["serviceAccountName"] != "ray-autoscaler"
            assert pod_spec(workload).get("automountServiceAccountToken") is False


def test_the_autoscaler_container_runs_rays_monitor_against_the_local_gcs(scaled: Rendered) -> None:
    sidecar = autoscaler_container(scaled)
    script = sidecar["command"][2]
    assert sidecar["command"][:2] == ["/bin/bash", "-c"]
    # It forgets its last run's heartbeat, waits for the GCS as the workers do, then becomes the monitor (exec:
    # it gets the kubelet's SIGTERM).
    waited, monitor = script.rsplit("; exec ", 1)
    assert waited.split("; ")[1] == "rm -f /tmp/ray/autoscaler/heartbeat"
    # Its events file, before the wait: the head links it into the dashboard's session once both are there.
    assert waited.split("; ")[2] == (
        "mkdir -p /var/log/ray-autoscaler/events && touch /var/log/ray-autoscaler/events/event_AUTOSCALER.log"
    )
    # Its own pod's GCS, not through the head Service (that would need the network's hairpin support).
    assert "ray health-check --address=$RAY_POD_IP:6379" in waited and "svc" not in waited
    assert monitor.split() == [
        "python",
        "-s",
        "-m",
        "ray.autoscaler._private.monitor",
        "--gcs-address=$RAY_POD_IP:6379",
        "--autoscaling-config=/etc/ray/autoscaler/autoscaling.json",
        "--logs-dir=/var/log/ray-autoscaler",
        "--logging-filename=",
        "--monitor-ip=$RAY_POD_IP",
    ]
    assert sidecar["image"] == "rayproject/ray:2.60.0"
    assert env(sidecar) == {
        "RAY_POD_IP": {"fieldRef": {"fieldPath": "status.podIP"}},
        "HOME": "/home/ray/workspace",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/etc/ray/auth/token",
        "PYTHONPATH": "/etc/ray/autoscaler",
        "PYTHONNOUSERSITE": "1",
        # Ray's monitor every second, against its default 5 s (the provider still reads the cluster every 5 s).
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    amounts = {"cpu": "500m", "memory": "512Mi"}
    assert sidecar["resources"] == {"requests": amounts, "limits": amounts}
    # Nothing the Ray container (where job drivers run) can write: its own /tmp and HOME, a read-only working
    # directory, which `python -m` puts first on the module path; its events' volume, which the Ray container
    # mounts read-only.
    assert sidecar["workingDir"] == "/etc/ray/autoscaler"
    assert sidecar["volumeMounts"] == [
        {"name": "autoscaler-tmp", "mountPath": "/tmp"},
        {"name": "autoscaler-home", "mountPath": "/home/ray/workspace"},
        {"name": "autoscaler-events", "mountPath": "/var/log/ray-autoscaler"},
        {"name": "auth-token", "mountPath": "/etc/ray/auth", "readOnly": True},
        {"name": "autoscaler", "mountPath": "/etc/ray/autoscaler", "readOnly": True},
        {"name": "kube-api-access", "mountPath": TOKEN_DIR, "readOnly": True},
    ]
    age = "$(( $(date +%s) - $(stat -c %Y /tmp/ray/autoscaler/heartbeat) ))"
    assert sidecar["readinessProbe"] == {
        "exec": {"command": ["/bin/bash", "-c", f"[ -e /tmp/ray/autoscaler/heartbeat ] && [ {age} -lt 30 ]"]},
        "timeoutSeconds": 2,
        "periodSeconds": 2,
        "failureThreshold": 1,
    }
    assert sidecar["livenessProbe"] == {
        "exec": {"command": ["/bin/bash", "-c", f"[ ! -e /tmp/ray/autoscaler/heartbeat ] || [ {age} -lt 120 ]"]},
        "timeoutSeconds": 2,
        "periodSeconds": 10,
        "failureThreshold": 3,
    }
    assert sidecar["securityContext"]["runAsUser"] == 1000
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    # Ray's own monitor would be a second one: the Ray container starts none.
    assert "--no-monitor" in ray_argv(scaled.one("Deployment", "ray-head"))


def test_at_rest_the_provider_asks_the_api_server_no_more_often_than_under_rays_default_cadence() -> None:
    """The monitor updates every UPDATE_SECONDS (the sidecar's env, above); the provider, in the pod, reads pods and
    Deployments at rest only every CLUSTER_READ_SECONDS (tests/test_node_provider.py shows it keeps to that). The
    in-pod module cannot import the Pulumi side that sets the cadence, so this holds the two facts together: at rest
    it reads no more often than with Ray's own cadence, where it read at every update."""
    assert autoscaling.UPDATE_SECONDS < CLUSTER_READ_SECONDS
    reads_per_minute = 60 / max(autoscaling.UPDATE_SECONDS, CLUSTER_READ_SECONDS)
    assert reads_per_minute <= 60 / rays_default_update_seconds()


def rays_default_update_seconds() -> int:
    """Ray's default monitor cadence, as the pinned source states it (`env_integer("AUTOSCALER_UPDATE_INTERVAL_S",
    5)`): Ray's constant itself takes the variable's value wherever it is set, as it is in the sidecar."""
    source = Path(autoscaler_constants.__file__).read_text()
    defaults = []
    for call in ast.walk(ast.parse(source)):
        if isinstance(call, ast.Call) and len(call.args) == 2:
            name, value = call.args
            if isinstance(name, ast.Constant) and name.value == autoscaling.UPDATE_INTERVAL_ENV:
                assert isinstance(value, ast.Constant) and isinstance(value.value, int)
                defaults.append(value.value)
    [default] = defaults
    return default


def test_the_configmap_ships_the_node_provider_as_it_is_in_the_repository(scaled: Rendered) -> None:
    data = scaled.one("ConfigMap", "ray-autoscaler")["data"]
    assert set(data) == {"autoscaling.json", "ray_cluster_node_provider.py"}
    assert data["ray_cluster_node_provider.py"] == (ROOT / "components" / "in_pod" / "node_provider.py").read_text()
    volumes = pod_spec(scaled.one("Deployment", "ray-head"))["volumes"]
    assert {"name": "autoscaler", "configMap": {"name": "ray-autoscaler", "defaultMode": 0o444}} in volumes
    assert {"name": "autoscaler-tmp", "emptyDir": {}} in volumes and {
        "name": "autoscaler-home",
        "emptyDir": {},
    } in volumes
    ray_container_mounts = {m["name"] for m in ray_container(scaled.one("Deployment", "ray-head"))["volumeMounts"]}
    assert not {"autoscaler-tmp", "autoscaler-home", "autoscaler", "kube-api-access"} & ray_container_mounts


def test_the_head_links_the_autoscalers_events_into_its_session_for_the_dashboard(scaled: Rendered) -> None:
    """The autoscaler writes its events to a volume of their own; the head's Ray container mounts it read-only and
    links the file into this run's session once both exist (the session's link removed first, so that an older
    session's, kept in the pod's /tmp across container restarts, is not taken for it); a head without autoscaling
    has neither (`ray start --head` runs Ray's monitor, which writes into the session itself)."""
    volumes = pod_spec(scaled.one("Deployment", "ray-head"))["volumes"]
    assert {"name": "autoscaler-events", "emptyDir": {}} in volumes
    head = ray_container(scaled.one("Deployment", "ray-head"))
    assert {"name": "autoscaler-events", "mountPath": "/var/log/ray-autoscaler", "readOnly": True} in head[
        "volumeMounts"
    ]
    # components/in_pod/ray_node.sh links it, once both it and the session exist (tests/test_ray_node.py).
    source = "/var/log/ray-autoscaler/events/event_AUTOSCALER.log"
    assert node_start(scaled.one("Deployment", "ray-head")).startswith(
        f"autoscaler_events={source}; run_node ray start "
    )
    unscaled = render({"workers": "1"})
    plain = ray_container(unscaled.one("Deployment", "ray-head"))
    assert node_start(unscaled.one("Deployment", "ray-head")).startswith("run_node ray start ")
    assert "autoscaler-events" not in {m["name"] for m in plain["volumeMounts"]}


def test_the_autoscaling_config_sizes_each_group_between_its_bounds(scaled: Rendered) -> None:
    config = ray_config(scaled)
    assert config["provider"] == {
        "type": "external",
        "module": "ray_cluster_node_provider.DeploymentNodeProvider",
        "namespace": "ray-test",
        "cluster": "ray",
        "deployments": {"worker": "ray-worker", "gpu": "ray-gpu"},
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
        "foreground_node_launch": True,
        "worker_liveness_check": False,
        "heartbeat_file": "/tmp/ray/autoscaler/heartbeat",
    }
    assert config["head_node_type"] == "head"
    assert config["max_workers"] == 5
    assert config["idle_timeout_minutes"] == 1.0
    assert config["upscaling_speed"] == 1000.0
    types = config["available_node_types"]
    assert {name: (t["min_workers"], t["max_workers"]) for name, t in types.items()} == {
        "head": (0, 0),
        "worker": (1, 4),
        "gpu": (0, 1),
    }
    # 30% of each pod's memory is the object store, which is not Ray's `memory` resource.
    assert types["worker"]["resources"] == {"CPU": 1, "memory": 2 * GIB - 2 * GIB * 3 // 10}
    assert types["gpu"]["resources"] == {"CPU": 2, "GPU": 1, "memory": 4 * GIB - 4 * GIB * 3 // 10}
    assert types["head"]["resources"] == {"CPU": 1, "memory": 4 * GIB - 4 * GIB * 3 // 10}


def test_the_autoscaler_expects_of_each_node_type_what_ray_start_is_told(scaled: Rendered) -> None:
    """Read independently from the rendered `ray start` command lines, not from the builder."""
    types = ray_config(scaled)["available_node_types"]
    for deployment in scaled.of_kind("Deployment"):
        argv = ray_argv(deployment)
        node_type = deployment["metadata"]["name"].removeprefix("ray-")
        offered = {"CPU": int(flag(argv, "--num-cpus")), "memory": int(flag(argv, "--memory"))}
        if int(flag(argv, "--num-gpus")):
            offered["GPU"] = int(flag(argv, "--num-gpus"))
        assert types[node_type]["resources"] == offered, node_type


def test_rays_own_config_check_accepts_it(scaled: Rendered) -> None:
    config = ray_config(scaled)
    validate_config(config)
    prepared = prepare_config(config)
    assert prepared["available_node_types"]["gpu"]["max_workers"] == 1


def test_idle_timeout_and_upscaling_speed_reach_the_config() -> None:
    config = ray_config(render({**AUTOSCALING, "idleTimeoutSeconds": "90", "upscalingSpeed": "0.5"}))
    assert config["idle_timeout_minutes"] == 1.5
    assert config["upscaling_speed"] == 0.5


def test_with_fault_tolerance_the_head_type_offers_no_cpu() -> None:
    """With the head at 0 CPUs, the autoscaler must not count on it for tasks."""
    rendered = render({"gcsFaultTolerance": "true", "workers": "0", "maxWorkers": "2"})
    assert ray_config(rendered)["available_node_types"]["head"]["resources"]["CPU"] == 0
    assert flag(ray_argv(rendered.one("Deployment", "ray-head")), "--num-cpus") == "0"


def test_autoscaled_deployments_leave_their_replicas_to_the_autoscaler(scaled: Rendered) -> None:
    for name, autoscaled in {"ray-worker": True, "ray-gpu": True, "ray-head": False}.items():
        deployment = scaled.one("Deployment", name)
        ignored = scaled.registration_of(deployment).options.ignore_changes
        assert ("spec.replicas" in ignored) is autoscaled, name
        annotations = deployment["metadata"]["annotations"]
        assert annotations.get("ray-cluster.pulumi.com/autoscaled") == ("true" if autoscaled else None), name
        # `pulumi up` does not wait for an autoscaled group's replicas (some may wait for room): the smoke test
        # proves the cluster instead.
        assert annotations.get("pulumi.com/skipAwait") == ("true" if autoscaled else None), name
    assert scaled.one("Deployment", "ray-worker")["spec"]["replicas"] == 1
    assert scaled.one("Deployment", "ray-gpu")["spec"]["replicas"] == 0


def worker_object(config: dict[str, object]) -> tuple[Manifest, tuple[str, ...]]:
    rendered = render(config)
    manifest = rendered.one("Deployment", "ray-worker")
    return manifest, rendered.registration_of(manifest).options.ignore_changes


@pytest.mark.parametrize("refresh", [False, True])
def test_pulumi_up_leaves_the_autoscalers_replicas_alone(refresh: bool) -> None:
    manifest, ignore = worker_object(AUTOSCALING)
    live = LiveObject()
    live.pulumi_apply(manifest, ignore)
    live.write("ray-autoscaler", {"spec.replicas": 4}, subresource="scale")
    assert pulumi_up(live, manifest, manifest, ignore, refresh=refresh) is False
    assert live.value("spec.replicas") == 4
    # A change that does reach the Deployment leaves its replicas with the autoscaler too.
    changed, changed_ignore = worker_object({**AUTOSCALING, "workerMemory": "3Gi"})
    assert pulumi_up(live, manifest, changed, changed_ignore)
    assert live.value("spec.replicas") == 4
    assert live.value("spec.template.spec.containers[0].resources.limits.memory") == "3Gi"


def test_when_autoscaling_is_turned_off_pulumi_takes_the_replicas_back() -> None:
    manifest, ignore = worker_object(AUTOSCALING)
    live = LiveObject()
    live.pulumi_apply(manifest, ignore)
    live.write("ray-autoscaler", {"spec.replicas": 4}, subresource="scale")
    fixed, fixed_ignore = worker_object({"workers": "1"})
    assert pulumi_up(live, manifest, fixed, fixed_ignore)
    assert live.value("spec.replicas") == 1


def test_an_unchanged_stack_plans_no_change_while_the_autoscaler_works() -> None:
    changes = plan(render(GPU_FROM_ZERO), render(GPU_FROM_ZERO))
    assert [step for step in changes.steps if step.kind != "same"] == []


def test_a_new_idle_timeout_replaces_only_the_configmap() -> None:
    """Under the same name, which the head pod mounts: the kubelet brings the new files to the running container."""
    changes = plan(render(AUTOSCALING), render({**AUTOSCALING, "idleTimeoutSeconds": "600"}))
    assert {step.name: step.kind for step in changes.steps if step.kind != "same"} == {
        "ray-autoscaler-config": "replace"
    }


def test_with_autoscaling_a_new_least_size_goes_to_the_autoscaler_not_to_the_deployment() -> None:
    """`workers` of an autoscaled group: the Deployment's replicas are ignored, the config is replaced (and
    the smoke test, which expects at least that many workers, runs again)."""
    changes = plan(render(AUTOSCALING), render({**AUTOSCALING, "workers": "2"}))
    changed = {step.name: step.kind for step in changes.steps if step.kind != "same"}
    assert changed == {"ray-autoscaler-config": "replace", "ray-smoke-test": "replace"}
    assert ray_config(render({**AUTOSCALING, "workers": "2"}))["available_node_types"]["worker"]["min_workers"] == 2


def test_the_smoke_test_accepts_as_many_workers_as_the_autoscaler_may_add(scaled: Rendered) -> None:
    job_env = env(container(scaled.smoke_test()))
    assert (job_env["SMOKE_EXPECTED_WORKERS"], job_env["SMOKE_MOST_WORKERS"]) == ("1", "5")


def test_the_head_waits_for_the_autoscalers_objects(scaled: Rendered) -> None:
    [head] = [r for r in scaled.registrations if r.name == "ray-head"]
    names = {r.urn: r.name for r in scaled.registrations}
    assert {
        "ray-autoscaler-config",
        "ray-autoscaler-service-account",
        "ray-autoscaler-role",
        "ray-autoscaler-role-binding",
    } <= {names[urn] for urn in head.dependencies}


@pytest.mark.parametrize(
    ("age_seconds", "ready", "alive"),
    [(None, False, True), (1, True, True), (60, False, True), (300, False, False)],
    ids=["no heartbeat yet", "fresh", "a minute old", "five minutes old"],
)
def test_the_probes_read_the_heartbeats_age_under_bash(
    tmp_path: Path, age_seconds: int | None, ready: bool, alive: bool
) -> None:
    heartbeat = tmp_path / "heartbeat"
    if age_seconds is not None:
        heartbeat.touch()
        then = time.time() - age_seconds
        os.utime(heartbeat, (then, then))
    for probe, expected in ((False, ready), (True, alive)):
        command = autoscaling.heartbeat_probe(liveness=probe)["exec"]["command"]
        script = command[2].replace(autoscaling.HEARTBEAT_FILE, str(heartbeat))
        assert (subprocess.run([command[0], "-c", script]).returncode == 0) is expected, (probe, script)

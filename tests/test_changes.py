"""A stack's life after its first `pulumi up`, as the engine decides it: every config key changed alone, the
namespace and cluster-name changes both ways, and destroy, planned by the model in tests/lifecycle.py from two
renders of the real program. Each plan must be safe (no live object left to or deleted from under another
resource, no engine error), and what it does to pods and to the smoke test must be what the README's
"Changing a running stack" table says."""

from __future__ import annotations

import functools
import json
import re

import pulumi
import pytest
import yaml

from components import RayCluster, from_stack_config
from components.config.inputs import OBJECT_KEYS
from tests.lifecycle import Plan, Step, plan
from tests.program import ROOT, Rendered, capture, render, stack_config
from tests.variants import REDIS_CA, SERVE, SERVE_APPLICATION

README = (ROOT / "README.md").read_text()
CONFIG_KEYS = set(yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]) | set(OBJECT_KEYS)
# One change per key, away from the default; keys whose change is tested both ways have both.
CHANGES: dict[str, dict[str, object]] = {
    "workers": {"workers": "4"},
    "workerCpu": {"workerCpu": "2"},
    "workerMemory": {"workerMemory": "3Gi"},
    "workerGpus": {"workerGpus": "1"},
    "workerImage": {"workerImage": "registry.example/ray:2.60.0"},
    "workerDrainSeconds": {"workerDrainSeconds": "300"},
    "workerReadOnlyRootFilesystem": {"workerReadOnlyRootFilesystem": "false"},
    "gcsReconnectTimeoutSeconds": {"gcsReconnectTimeoutSeconds": "120"},
    "workerGroups": {"workerGroups": [{"name": "extra"}]},
    "headCpu": {"headCpu": "2"},
    "headMemory": {"headMemory": "8Gi"},
    "image": {"image": "rayproject/ray:2.60.0-py311"},
    "authToken": {"authToken": "a-token-of-the-users-own-0123456789abcdef"},
    "tokenAuth": {"tokenAuth": "false"},
    "clusterName": {"clusterName": "renamed"},
    "namespace": {"namespace": "elsewhere"},
    "createNamespace": {"createNamespace": "false"},
    "allowedClientNamespaces": {"allowedClientNamespaces": ["notebooks"]},
    "allowedClientCidrs": {"allowedClientCidrs": ["10.8.0.0/16"]},
    "allowedMetricsNamespaces": {"allowedMetricsNamespaces": ["monitoring"]},
    "testJob": {"testJob": "false"},
    "gcsFaultTolerance": {"gcsFaultTolerance": "true"},
    "redisAddress": {"redisAddress": "redis.example.internal:6379"},
    "redisPassword": {"redisPassword": "a-redis-password-of-the-users-own"},
    "redisCaCert": {"redisCaCert": REDIS_CA},
    "redisMemory": {"redisMemory": "2Gi", "redisStorage": "4Gi"},
    "redisImage": {"redisImage": "redis:7.0.15-alpine"},
    "redisExporterImage": {"redisExporterImage": "oliver006/redis_exporter:v1.45.0-alpine"},
    "redisStorage": {"redisStorage": "5Gi"},
    "redisStorageClass": {"redisStorageClass": "fast-ssd"},
    "maxWorkers": {"maxWorkers": "6"},
    "idleTimeoutSeconds": {"idleTimeoutSeconds": "300"},
    "upscalingSpeed": {"upscalingSpeed": "1"},
    "serveApplications": {
        "serveApplications": [{**SERVE_APPLICATION, "deployments": [{"name": "Hello", "num_replicas": 3}]}]
    },
    "allowedServeNamespaces": {**SERVE, "allowedServeNamespaces": ["gateway"]},
    "allowedServeCidrs": {**SERVE, "allowedServeCidrs": ["10.0.0.0/8"]},
    "prometheusOperator": {"prometheusOperator": "true"},
    "prometheusRelease": {"prometheusRelease": "kps"},
    "runbookUrl": {"runbookUrl": "https://example.com/ray-cluster/README.md"},
    "grafanaDashboards": {"grafanaDashboards": "true"},
    "prometheusUrl": {"prometheusUrl": "http://kps-prometheus.monitoring.svc:9090"},
    "grafanaUrl": {"grafanaUrl": "http://kps-grafana.monitoring.svc"},
    "grafanaIframeUrl": {"grafanaUrl": "http://kps-grafana.monitoring.svc", "grafanaIframeUrl": "https://g.example"},
    "upgradeStrategy": {"upgradeStrategy": "inPlace"},
    "upgradeDrainSeconds": {"upgradeDrainSeconds": "600"},
}
FAULT_TOLERANT: dict[str, object] = {"gcsFaultTolerance": "true"}
METRICS_ALLOWED: dict[str, object] = {"allowedMetricsNamespaces": ["monitoring"]}
MONITORED: dict[str, object] = {**METRICS_ALLOWED, "prometheusOperator": "true"}
AUTOSCALED: dict[str, object] = {"maxWorkers": "6"}
# The Redis keys change a stack that uses them: fault tolerance on (with a TLS Redis of its own, for its CA).
BEFORE: dict[str, dict[str, object]] = {
    **dict.fromkeys(
        ["redisAddress", "redisPassword", "redisImage", "redisMemory", "redisStorage", "redisStorageClass"],
        FAULT_TOLERANT,
    ),
    "redisCaCert": {**FAULT_TOLERANT, "redisAddress": "rediss://redis.example.internal:6380"},
    # The exporter runs beside the stack's own Redis for the prometheus-operator.
    "redisExporterImage": {**FAULT_TOLERANT, **MONITORED},
    # The autoscaler's keys change a stack that autoscales.
    **dict.fromkeys(["idleTimeoutSeconds", "upscalingSpeed"], AUTOSCALED),
    # The Serve keys change a stack that serves.
    **dict.fromkeys(["serveApplications", "allowedServeNamespaces", "allowedServeCidrs"], SERVE),
    # The prometheus-operator's objects are for a Prometheus the NetworkPolicies admit.
    "prometheusOperator": METRICS_ALLOWED,
    # The release and the runbook change a stack's prometheus-operator objects.
    **dict.fromkeys(["prometheusRelease", "runbookUrl"], MONITORED),
    # The browser's Grafana is another than the head's.
    "grafanaIframeUrl": {"grafanaUrl": "http://kps-grafana.monitoring.svc"},
}
SECRETS = ("authToken", "redisPassword")


IN_PLACE: dict[str, object] = {"upgradeStrategy": "inPlace"}
# Every change is also planned on a fault-tolerant stack (its own Redis, whose volume a change must never leave to
# two pods), on an autoscaling one (replicas the autoscaler owns, a Role, a sidecar) and on one that upgrades in place
# (Deployments updated under their names; the default upgrades by generation: Deployments replaced under new names,
# the clients' Services moved).
BASES: dict[str, dict[str, object]] = {
    "default": {},
    "fault-tolerant": FAULT_TOLERANT,
    "autoscaling": AUTOSCALED,
    "in-place": IN_PLACE,
}
# The one change whose `pulumi up` needs the provider to upsert, as the README's table says: taking over an existing
# namespace creates it, which the API server refuses for an object that exists.
ADOPTS_THE_NAMESPACE = "PULUMI_K8S_UPSERT_EXISTING_OBJECTS=true pulumi up"


@functools.cache
def _render(config: str, secrets: tuple[str, ...]) -> Rendered:
    return render(json.loads(config), secrets=secrets)


def before(key: str | None, base: str = "default") -> Rendered:
    """The stack a key's change is made to: the base one, with what the key needs to be used."""
    return _render(json.dumps({**BASES[base], **BEFORE.get(key or "", {})}), ())


# On a stack that upgrades in place, the change of upgradeStrategy is to generations.
IN_PLACE_CHANGES: dict[str, dict[str, object]] = {"upgradeStrategy": {"upgradeStrategy": "generation"}}


def rendered(key: str | None, base: str = "default") -> Rendered:
    """The base stack (None), or that stack after one key's change."""
    changes = {**CHANGES, **IN_PLACE_CHANGES} if base == "in-place" else CHANGES
    change = {**BASES[base], **BEFORE.get(key or "", {}), **(changes[key] if key else {})}
    return _render(json.dumps(change), tuple(name for name in SECRETS if name in change))


IN_PLACE_CELL = "; in place: "


def readme_table() -> dict[str, tuple[str, str, str]]:
    """Config key -> (pods, pods with upgradeStrategy inPlace, smoke test) from the README's table, whose pods cell
    says what the default does, then, where in place differs, `; in place: ` and what it does."""
    section = README.split("## Changing a running stack", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        pods, _, in_place = row[2].strip().partition(IN_PLACE_CELL)
        for key in re.findall(r"`([A-Za-z]+)`", row[0]):
            if key in CONFIG_KEYS:
                table[key] = (pods, in_place or pods, row[3].strip(" |"))
    return table


def _template_changed(step: Step) -> bool:
    return any(path.startswith("spec.template") for path in step.changed_paths)


def pods_effect(changes: Plan) -> str:
    """What the change does to running pods, in the README's words: a new generation when Ray's Deployments are
    replaced and the clients' head Service moves to them in place; a new cluster when it is replaced too."""
    deployments = [step for step in changes.steps if step.type == "kubernetes:apps/v1:Deployment"]
    head = [step for step in deployments if step.name.endswith("-head")]
    redis = [step for step in deployments if step.name.endswith("-redis")]
    workers = [step for step in deployments if step not in head + redis]
    clients_service = [step for step in changes.steps if step.name.endswith("-head-service")]
    retirement = [step for step in changes.steps if step.name.endswith("-retirement")]
    effects = []
    if any(step.kind == "replace" for step in deployments):
        moved = any(step.kind != "delete" for step in retirement)
        if not moved or any(step.kind == "replace" for step in [*redis, *clients_service]):
            return "new cluster"
        effects.append("new generation")
    else:
        if any(step.kind == "update" and _template_changed(step) for step in head):
            effects.append("head restarts")
        if any(step.kind == "update" and _template_changed(step) for step in workers):
            effects.append("workers roll")
        elif any(step.kind in ("create", "delete") or "spec.replicas" in step.changed_paths for step in workers):
            effects.append("workers added or removed")
    if any(step.kind == "update" and _template_changed(step) for step in redis):
        effects.append("Redis restarts")
    elif any(step.kind in ("create", "delete") for step in redis):
        effects.append("Redis added or removed")
    return ", ".join(effects) or "none"


def smoke_effect(changes: Plan) -> str:
    jobs = [
        step for step in changes.steps if step.type == "kubernetes:batch/v1:Job" and step.name.endswith("smoke-test")
    ]
    return "runs again" if any(step.kind in ("replace", "create") for step in jobs) else "no"


def assert_safe(changes: Plan) -> None:
    assert changes.hazards == () and changes.errors == (), (changes.hazards, changes.errors)


def test_the_table_covers_every_config_key() -> None:
    assert readme_table().keys() == CONFIG_KEYS == CHANGES.keys()


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_each_change_does_what_the_readme_says(key: str) -> None:
    """By default (generations) and in place: the README's pods cell says both where they differ."""
    changes, in_place = plan(before(key), rendered(key)), plan(before(key, "in-place"), rendered(key, "in-place"))
    assert_safe(changes)
    effects = (pods_effect(changes), pods_effect(in_place), smoke_effect(changes))
    assert effects == readme_table()[key]
    assert smoke_effect(in_place) == smoke_effect(changes)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("key", sorted(CHANGES))
def test_each_change_is_safe_on_every_kind_of_stack_and_undone(key: str, base: str) -> None:
    assert_safe(plan(before(key, base), rendered(key, base)))
    undo = plan(rendered(key, base), before(key, base), upsert_existing_objects=key == "createNamespace")
    assert_safe(undo)


def test_taking_over_an_existing_namespace_needs_one_up_that_upserts_as_the_readme_says() -> None:
    """createNamespace false -> true: the engine takes the read namespace over by creating it, which the API
    server refuses (AlreadyExists) since pulumi-kubernetes 4.29, on this and every later `up`; `pulumi preview`
    does not show it. The README's command for that one `up` lets the provider upsert it."""
    refused = plan(rendered("createNamespace"), before("createNamespace"))
    assert [error.split(":")[0] for error in refused.errors] == ["creating Namespace ray-namespace fails"]
    assert "AlreadyExists" in refused.errors[0]
    section = README.split("## Changing a running stack", 1)[1].split("\n## ", 1)[0]
    [row] = [line for line in section.splitlines() if line.startswith("| `createNamespace`")]
    assert f"`{ADOPTS_THE_NAMESPACE}`" in row
    adopted = plan(rendered("createNamespace"), before("createNamespace"), upsert_existing_objects=True)
    assert adopted.kind_of("ray-namespace") == "adopt"
    assert_safe(adopted)
    # The next `up`, without the setting, has nothing left to create.
    assert_safe(plan(before("createNamespace"), before("createNamespace")))


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("destroy", {}),
        ("a group removed", {"workerGroups": []}),
        ("a rename", {"clusterName": "renamed"}),
        ("a move", {"namespace": "elsewhere"}),
    ],
    ids=["destroy", "group-removed", "rename", "move"],
)
def test_deletes_outwait_the_longest_drain(what: str, change: dict[str, object]) -> None:
    """Workers draining for an hour (workerDrainSeconds 3600) take up to 3615 s to stop: every delete that waits
    for them (a Deployment's, the namespace's) must wait longer than the provider's 10 minutes."""
    draining: dict[str, object] = {"workerDrainSeconds": "3600", "workerGroups": [{"name": "extra"}]}
    deployed = _render(json.dumps(draining), ())
    after = None if what == "destroy" else _render(json.dumps({**draining, **change}), ())
    assert_safe(plan(deployed, after))


def test_a_renamed_cluster_gets_a_new_redis_volume_after_its_old_redis_is_gone() -> None:
    """Never two Redis pods on one ReadWriteOnce claim: the claim is replaced with the cluster, and the old one is
    deleted after the old Redis Deployment."""
    changes = plan(before("clusterName", "fault-tolerant"), rendered("clusterName", "fault-tolerant"))
    claim = changes.step("ray-redis-data")
    assert claim.kind == "replace" and not claim.delete_before_replace
    assert claim.replace_paths == ('metadata.labels["app.kubernetes.io/instance"]',)
    deletes = [str(op.obj) for op in changes.operations if op.action == "delete"]
    assert deletes.index("Deployment ray-test/ray-redis") < deletes.index(f"{claim.old_obj}")


@pytest.mark.parametrize("key", ["clusterName", "namespace", "createNamespace", "image", "authToken"])
def test_no_urn_depends_on_a_value_a_user_may_change(key: str) -> None:
    """The same resources before and after: each is updated or replaced under its URN, never re-created under a
    new one (which would adopt the live object and then delete it with the old URN)."""
    before, after = rendered(None), rendered(key)
    assert {r.urn for r in before.registrations} == {r.urn for r in after.registrations}
    changes = plan(before, after)
    assert changes.created() == [] and changes.deleted() == []


def test_a_rename_replaces_each_object_before_deleting_the_old_one_in_the_same_namespace() -> None:
    changes = plan(rendered(None), rendered("clusterName"))
    replaced = [changes.step(name) for name in changes.replaced()]
    assert {"ray-head", "ray-worker", "ray-head-service", "ray-auth-token-secret"} <= set(changes.replaced())
    for step in [step for step in replaced if step.type.startswith("kubernetes:")]:  # not the generation's id
        assert not step.delete_before_replace, step.name
        assert step.obj and step.old_obj and step.obj.namespace == step.old_obj.namespace == "ray-test"
        assert step.obj.name != step.old_obj.name


def test_creating_the_namespace_no_more_releases_it_and_creating_it_again_adopts_it() -> None:
    released = plan(rendered(None), rendered("createNamespace"))
    assert released.kind_of("ray-namespace") == "relinquish"
    namespace = [op.action for op in released.operations if op.obj and op.obj.kind == "Namespace"]
    assert sorted(namespace) == ["read", "release"]
    adopted = plan(rendered("createNamespace"), rendered(None))
    assert adopted.kind_of("ray-namespace") == "adopt"


@pytest.mark.parametrize("key", [None, "createNamespace"])
def test_destroy_deletes_the_namespace_last_or_leaves_an_existing_one(key: str | None) -> None:
    destroy = plan(rendered(key), None)
    assert_safe(destroy)
    kubernetes = [op for op in destroy.operations if op.obj]
    namespace = [op for op in kubernetes if op.obj and op.obj.kind == "Namespace"]
    if key is None:
        assert namespace == [kubernetes[-1]] and namespace[0].action == "delete"
    else:
        assert [op.action for op in namespace] == ["release"]
    deleted = {op.obj.name for op in kubernetes if op.obj and op.action == "delete"}
    released = {op.obj.name for op in kubernetes if op.obj and op.action == "release"}
    # The generation's objects are retained: the anchor's foreground delete takes them along.
    hex_id = rendered(key).outputs["generation"]
    assert {"ray-generations", "ray-auth-token"} <= deleted
    assert {f"ray-head-{hex_id}", f"ray-worker-{hex_id}"} <= released


def test_the_smoke_test_runs_again_only_when_the_running_cluster_changes() -> None:
    """The Job's digest covers the head and worker Deployments and the head Service: any change of those
    replaces it, and no other change does."""
    for key in CHANGES:
        changes = plan(before(key), rendered(key))
        cluster = [
            step
            for step in changes.steps
            if step.type in ("kubernetes:apps/v1:Deployment", "kubernetes:core/v1:Service")
            and step.kind != "same"
            and not step.name.endswith("redis-service")
        ]
        if key != "testJob":
            assert (smoke_effect(changes) == "runs again") == bool(cluster), key


def test_a_stack_whose_component_was_named_after_the_cluster_moves_to_the_fixed_names_in_place() -> None:
    """Before logical names were fixed, the component (and so every child, `<name>-...`) was named after
    `clusterName`. The program's alias (and Pulumi's child-alias rule) carry such a stack's resources over: the
    same objects, no replacement, nothing created or deleted."""
    config = {"clusterName": "analytics"}

    def earlier_program() -> None:
        RayCluster("analytics", from_stack_config(pulumi.Config()))

    earlier = capture(earlier_program, "test", stack_config("test", config))
    assert {r.name for r in earlier.registrations} >= {"analytics", "analytics-head", "analytics-namespace"}
    changes = plan(earlier, render(config))
    assert_safe(changes)
    assert changes.created() == changes.deleted() == changes.replaced() == []
    assert {step.kind for step in changes.steps} == {"same"}

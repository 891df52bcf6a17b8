"""The lifecycle model (tests/lifecycle.py) on small hand-made stacks: each engine or provider rule, with the case
that shows the rule can tell two situations apart. The last tests check that tests/program.py records, from the
real SDK's requests, what the model reads."""

from __future__ import annotations

import copy
import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest

from tests.lifecycle import Physical, Plan, contains, format_path, parse_path, plan
from tests.program import AUTONAMED_ANNOTATION, Alias, Options, Registration, Rendered, auto_name, capture

STACK_URN = "urn:pulumi:test::proj::pulumi:pulumi:Stack::proj-test"
COMPONENT = "my:index:Cluster"
NAMESPACE = "kubernetes:core/v1:Namespace"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
JOB = "kubernetes:batch/v1:Job"
SECRET = "kubernetes:core/v1:Secret"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SERVICE = "kubernetes:core/v1:Service"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"
PASSWORD = "random:index/randomPassword:RandomPassword"


def urn(type_: str, name: str, parent: str = STACK_URN) -> str:
    """The engine's URN: the parent's qualified type (none under the stack), `$`, the type, the name."""
    parent_type = parent.split("::")[2]
    qualified = type_ if parent_type == "pulumi:pulumi:Stack" else f"{parent_type}${type_}"
    return f"urn:pulumi:test::proj::{qualified}::{name}"


def manifest(type_: str, name: str | None, namespace: str | None = "apps", **fields: Any) -> dict[str, Any]:
    """A manifest as tests/program.py records it; `name=None` means auto-named (by the provider's Check)."""
    module, kind = type_.split(":")[1:]
    group, _, version = module.rpartition("/")
    metadata: dict[str, Any] = {"name": name} if name else {}
    if namespace and kind != "Namespace":
        metadata["namespace"] = namespace
    return {
        "apiVersion": version if group == "core" else f"{group}/{version}",
        "kind": kind,
        "metadata": metadata,
        **fields,
    }


def res(
    type_: str,
    logical: str,
    inputs: dict[str, Any] | None = None,
    *,
    parent: str = STACK_URN,
    deps: tuple[str, ...] = (),
    prop_deps: dict[str, tuple[str, ...]] | None = None,
    read_id: str = "",
    **options: Any,
) -> Registration:
    """A registration: custom unless it is the component type; auto-named manifests get the mock's name."""
    inputs = dict(inputs or {})
    metadata = inputs.get("metadata")
    if metadata is not None and not metadata.get("name") and not read_id:
        inputs["metadata"] = {
            **metadata,
            "name": auto_name(logical),
            "annotations": {**metadata.get("annotations", {}), AUTONAMED_ANNOTATION: "true"},
        }
    namespace, name = (metadata or {}).get("namespace", ""), (inputs.get("metadata") or {}).get("name", "")
    return Registration(
        type=type_,
        name=logical,
        parent=parent,
        dependencies=deps,
        inputs=inputs,
        urn=urn(type_, logical, parent),
        secret_paths=frozenset(),
        custom=type_ != COMPONENT,
        read=bool(read_id),
        id=read_id or (f"{namespace}/{name}" if namespace else name),
        property_dependencies=prop_deps or {},
        options=Options(**options),
    )


def stack(*registrations: Registration) -> Rendered:
    return Rendered(registrations=list(registrations), outputs={})


def namespace(logical: str = "ns", name: str = "apps", **options: Any) -> Registration:
    return res(NAMESPACE, logical, manifest(NAMESPACE, name), **options)


def deployment(
    logical: str = "web", name: str | None = "web", replicas: int = 1, app: str = "web", **options: Any
) -> Registration:
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": app}}, "template": {"metadata": {}}}
    return res(DEPLOYMENT, logical, manifest(DEPLOYMENT, name, spec=spec), **options)


def job(image: str = "ray:1", **options: Any) -> Registration:
    spec = {"template": {"spec": {"containers": [{"name": "main", "image": image}]}}}
    return res(JOB, "smoke", manifest(JOB, None, spec=spec), **options)


def ops(result: Plan) -> list[str]:
    return [str(op).split(" (")[0] for op in result.operations]


# ----- URN matching and the steps of a plain update -----


def test_an_unchanged_stack_is_all_same_and_a_label_change_is_an_update() -> None:
    before = stack(namespace(), deployment())
    assert {s.kind for s in plan(before, before).steps} == {"same"}
    relabelled = res(
        DEPLOYMENT,
        "web",
        {**deployment().inputs, "metadata": {"name": "web", "namespace": "apps", "labels": {"tier": "a"}}},
    )
    result = plan(before, stack(namespace(), relabelled))
    assert result.updated() == ["web"] and result.step("web").changed_paths == ("metadata.labels",)
    assert ops(result) == ["update Deployment apps/web"]


def test_first_up_creates_in_program_order_and_destroy_deletes_everything() -> None:
    program = stack(namespace(), deployment())
    assert ops(plan(None, program)) == ["create Namespace apps", "create Deployment apps/web"]
    destroy = plan(program, None)
    assert destroy.deleted() == ["web", "ns"]  # neither depends on the other: later registrations go first
    assert {op.action for op in destroy.operations} == {"delete"}


def test_steps_are_listed_in_program_order() -> None:
    before = stack(namespace(), deployment("a", "a"), deployment("b", "b"))
    after = stack(namespace(), deployment("a", "a", replicas=2), deployment("b", "b"))
    assert [s.name for s in plan(before, after).steps] == ["ns", "a", "b"]


# ----- the kubernetes provider's Diff -----


def test_renaming_a_fixed_name_deployment_is_a_create_before_delete_replacement() -> None:
    result = plan(stack(deployment()), stack(deployment(name="web2")))
    step = result.step("web")
    assert (step.kind, step.delete_before_replace, step.replace_paths) == ("replace", False, ("metadata.name",))
    assert ops(result) == ["create Deployment apps/web2", "delete Deployment apps/web"]
    assert result.hazards == ()


def test_a_selector_change_under_a_kept_name_is_delete_before_replace() -> None:
    result = plan(stack(deployment()), stack(deployment(app="web2")))
    step = result.step("web")
    assert (step.kind, step.delete_before_replace) == ("replace", True)
    assert step.replace_paths == ("spec.selector.matchLabels.app",)
    assert ops(result) == ["delete Deployment apps/web", "create Deployment apps/web"]


def test_a_replica_change_is_only_an_update() -> None:
    assert plan(stack(deployment()), stack(deployment(replicas=3))).kind_of("web") == "update"


def test_an_auto_named_replacement_gets_a_fresh_name_and_is_create_before_delete() -> None:
    before, after = stack(job("ray:1")), stack(job("ray:2"))
    assert before.registrations[0].inputs["metadata"]["name"] == after.registrations[0].inputs["metadata"]["name"]
    step = plan(before, after).step("smoke")
    assert (step.kind, step.delete_before_replace) == ("replace", False)
    assert step.replace_paths == ("spec.template.spec.containers[0].image",)
    assert step.obj is not None and step.old_obj is not None
    assert step.obj.name != step.old_obj.name and re.fullmatch(r"smoke-[0-9a-f]{8}", step.obj.name)
    assert ops(plan(before, after)) == [f"create Job apps/{step.obj.name}", f"delete Job apps/{step.old_obj.name}"]


def test_an_auto_named_update_keeps_its_old_name() -> None:
    before = stack(job())
    old_name = before.registrations[0].inputs["metadata"]["name"]
    drawn_again = {**job().inputs["metadata"], "name": "smoke-ffffffff", "labels": {"a": "b"}}
    step = plan(before, stack(res(JOB, "smoke", {**job().inputs, "metadata": drawn_again}))).step("smoke")
    assert (step.kind, step.changed_paths) == ("update", ("metadata.labels",))
    assert step.obj is not None and step.obj.name == old_name


def test_service_cluster_ip_is_immutable_but_its_ports_are_not() -> None:
    def service(**spec: Any) -> Registration:
        return res(SERVICE, "svc", manifest(SERVICE, "svc", spec={"ports": [{"port": 80}], **spec}))

    assert plan(stack(service()), stack(service(clusterIP="None"))).kind_of("svc") == "replace"
    assert plan(stack(service()), stack(service(ports=[{"port": 81}]))).kind_of("svc") == "update"


def test_a_claims_access_modes_and_class_replace_it_and_its_storage_request_is_an_update() -> None:
    """diff.go: a PersistentVolumeClaim's accessModes, selector, storageClassName and volumeName force a replacement
    (delete first, under its fixed name); a new storage request is an update (the API server allows growth)."""

    def claim(storage: str = "1Gi", **spec: Any) -> Registration:
        fields = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}, **spec}
        return res(CLAIM, "data", manifest(CLAIM, "redis-data", spec=fields))

    for changed in (
        claim(accessModes=["ReadWriteOncePod"]),
        claim(storageClassName="premium"),
        claim(volumeName="pv-1"),
        claim(selector={"matchLabels": {"disk": "ssd"}}),
    ):
        step = plan(stack(claim()), stack(changed)).step("data")
        assert (step.kind, step.delete_before_replace) == ("replace", True), step
    assert plan(stack(claim()), stack(claim("2Gi"))).kind_of("data") == "update"
    assert plan(stack(claim(storageClassName="a")), stack(claim("2Gi", storageClassName="a"))).kind_of("data") == (
        "update"
    )


def test_secret_and_config_map_data_replace_unless_the_provider_makes_them_mutable() -> None:
    def secret(token: str, **fields: Any) -> Registration:
        return res(SECRET, "token", manifest(SECRET, "token", type="Opaque", stringData={"t": token}, **fields))

    def config_map(value: str, **fields: Any) -> Registration:
        return res(CONFIG_MAP, "cm", manifest(CONFIG_MAP, "cm", data={"k": value}, **fields))

    secret_change = (stack(secret("a")), stack(secret("b")))
    assert plan(*secret_change).step("token").delete_before_replace  # a fixed name: delete first
    assert plan(*secret_change, enable_secret_mutable=True).kind_of("token") == "update"
    immutable = (stack(secret("a", immutable=True)), stack(secret("b", immutable=True)))
    assert plan(*immutable, enable_secret_mutable=True).kind_of("token") == "replace"
    assert plan(stack(config_map("a")), stack(config_map("b"))).kind_of("cm") == "replace"
    assert (
        plan(stack(config_map("a")), stack(config_map("b")), enable_config_map_mutable=True).kind_of("cm") == "update"
    )
    immutable_cm = (stack(config_map("a", immutable=True)), stack(config_map("b", immutable=True)))
    assert plan(*immutable_cm, enable_config_map_mutable=True).kind_of("cm") == "replace"


def test_random_password_replaces_on_any_input_change() -> None:
    def password(length: int) -> Registration:
        return res(PASSWORD, "pw", {"length": length, "special": False})

    assert plan(stack(password(48)), stack(password(48))).kind_of("pw") == "same"
    step = plan(stack(password(48)), stack(password(32))).step("pw")
    assert (step.kind, step.delete_before_replace, step.replace_paths) == ("replace", False, ("length",))


def test_an_api_version_change_under_an_alias_is_an_update() -> None:
    old = res("kubernetes:apps/v1beta1:Deployment", "web", {**deployment().inputs, "apiVersion": "apps/v1beta1"})
    alias = Alias(type="kubernetes:apps/v1beta1:Deployment")
    result = plan(stack(old), stack(deployment(aliases=(alias,))))
    assert (result.kind_of("web"), result.step("web").changed_paths) == ("update", ("apiVersion",))
    assert result.errors == ()
    kind_change = plan(stack(res(JOB, "web", manifest(JOB, "web"))), stack(deployment(aliases=(Alias(type=JOB),))))
    assert kind_change.errors and "turns a Job into a Deployment" in kind_change.errors[0]


# ----- resource options -----


def test_ignore_changes_hides_a_change_even_a_replacing_one() -> None:
    before = stack(deployment())
    assert plan(before, stack(deployment(replicas=5, ignore_changes=("spec.replicas",)))).kind_of("web") == "same"
    ignored_selector = deployment(app="other", ignore_changes=("spec.selector",))
    assert plan(before, stack(ignored_selector)).kind_of("web") == "same"
    assert plan(before, stack(deployment(replicas=5, ignore_changes=("spec.template",)))).kind_of("web") == "update"


def test_ignore_changes_fails_up_when_a_parent_of_the_path_is_missing() -> None:
    """Reset deletes an ignored leaf the old inputs lack, but a missing element above the leaf is a path error."""
    restarted = 'spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]'

    def web(template_metadata: dict[str, Any] | None) -> Registration:
        spec = {"selector": {"matchLabels": {"app": "web"}}, "template": {}}
        if template_metadata is not None:
            spec["template"] = {"metadata": template_metadata}
        return res(DEPLOYMENT, "web", manifest(DEPLOYMENT, "web", spec=spec), ignore_changes=(restarted,))

    annotated = web({"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}})
    only_leaf_missing = plan(stack(web({"annotations": {}})), stack(annotated))
    assert (only_leaf_missing.kind_of("web"), only_leaf_missing.errors) == ("same", ())
    parent_missing = plan(stack(web(None)), stack(annotated))
    assert parent_missing.errors == (
        f"Deployment web: cannot ignore changes to {restarted}: one or more elements of the path are missing",
    )


def test_delete_before_replace_option_overrides_the_provider() -> None:
    forced = plan(stack(job("ray:1")), stack(job("ray:2", delete_before_replace=True)))
    assert forced.step("smoke").delete_before_replace and forced.operations[0].action == "delete"
    refused = plan(stack(deployment()), stack(deployment(app="web2", delete_before_replace=False)))
    assert any("already exists (held by its own old copy)" in e and "AlreadyExists" in e for e in refused.errors)
    kept_name = plan(
        stack(deployment()), stack(deployment(app="web2", delete_before_replace=False)), upsert_existing_objects=True
    )
    assert not kept_name.step("web").delete_before_replace
    assert any("its own old copy" in h for h in kept_name.hazards)  # the create upserts the old object...
    assert any("which its replacement still holds" in h for h in kept_name.hazards)  # ...which is then deleted
    assert any("server-side apply conflict" in e and "spec.selector" in e for e in kept_name.errors)


def test_a_forced_apply_takes_conflicting_fields_over_instead_of_failing() -> None:
    """With `pulumi.com/patchForce` the provider's create applies with force: no conflict, but the fields of the
    object it finds are overwritten."""
    metadata = {"name": "web", "namespace": "apps", "annotations": {"pulumi.com/patchForce": "true"}}
    forced = res(
        DEPLOYMENT, "web", {**deployment(app="web2").inputs, "metadata": metadata}, delete_before_replace=False
    )
    forcing = plan(stack(deployment()), stack(forced), upsert_existing_objects=True)
    assert forcing.errors == () and any("forces its values" in h and "spec.selector" in h for h in forcing.hazards)


def test_replace_on_changes_turns_an_update_into_a_replacement() -> None:
    result = plan(stack(deployment()), stack(deployment(replicas=2, replace_on_changes=("spec.replicas",))))
    assert (result.kind_of("web"), result.step("web").replace_paths) == ("replace", ("spec.replicas",))
    wildcard = plan(stack(deployment()), stack(deployment(replicas=2, replace_on_changes=("*",))))
    assert wildcard.kind_of("web") == "replace"


def test_retain_on_delete_drops_from_the_state_without_deleting() -> None:
    retained = plan(stack(namespace(retain_on_delete=True)), stack())
    assert retained.deleted() == ["ns"] and retained.step("ns").retained
    assert [op.action for op in retained.operations] == ["release"]
    assert [op.action for op in plan(stack(namespace()), stack()).operations] == ["delete"]


def test_protect_refuses_deletes_and_replacements() -> None:
    assert plan(stack(namespace(protect=True)), stack()).errors
    assert plan(stack(deployment(protect=True)), stack(deployment(app="x", protect=True))).errors
    assert plan(stack(deployment(protect=True)), stack(deployment(replicas=2, protect=True))).errors == ()


# ----- aliases -----


def test_renaming_a_namespace_resource_fails_or_with_upsert_adopts_then_deletes_its_object() -> None:
    refused = plan(stack(namespace("ns")), stack(namespace("ns2")))
    assert [e.split(":")[0] for e in refused.errors] == ["creating Namespace ns2 fails"]
    result = plan(stack(namespace("ns")), stack(namespace("ns2")), upsert_existing_objects=True)
    assert (result.created(), result.deleted()) == (["ns2"], ["ns"])
    assert ops(result) == ["create Namespace apps", "delete Namespace apps"]
    assert any("adopts that object" in h for h in result.hazards)
    assert any(
        "deleting Namespace ns removes Namespace apps, which Namespace ns2 still holds" in h for h in result.hazards
    )


def test_an_alias_carries_the_resource_over_to_its_new_urn() -> None:
    result = plan(stack(namespace("ns")), stack(namespace("ns2", aliases=(Alias(name="ns"),))))
    step = result.step("ns2")
    assert (step.kind, step.old_urn) == ("same", urn(NAMESPACE, "ns"))
    assert result.operations == () and result.hazards == ()
    assert (
        plan(stack(namespace("ns")), stack(namespace("ns2", aliases=(Alias(urn=urn(NAMESPACE, "ns")),)))).kind_of("ns2")
        == "same"
    )


def test_children_inherit_their_renamed_parents_alias() -> None:
    def cluster(name: str, **options: Any) -> list[Registration]:
        parent = res(COMPONENT, name, **options)
        child = res(NAMESPACE, f"{name}-ns", manifest(NAMESPACE, "apps"), parent=parent.urn)
        return [parent, child]

    renamed = plan(stack(*cluster("ray")), stack(*cluster("rc", aliases=(Alias(name="ray"),))))
    assert {s.kind for s in renamed.steps} == {"same"}
    assert renamed.step("rc-ns").old_urn == urn(NAMESPACE, "ray-ns", urn(COMPONENT, "ray"))
    unaliased = plan(stack(*cluster("ray")), stack(*cluster("rc")))
    assert (unaliased.kind_of("rc-ns"), unaliased.kind_of("ray-ns")) == ("create", "delete")


def test_a_read_matches_the_old_entry_through_its_renamed_parents_alias() -> None:
    """A read sends no aliases of its own, but a renamed parent's reach it (pulumi 3.208, GenerateReadSteps): a
    namespace that stack read under the old parent is the same read, and one it managed is released, not deleted."""

    def cluster(name: str, read: bool, **options: Any) -> list[Registration]:
        parent = res(COMPONENT, name, **options)
        inputs = {} if read else manifest(NAMESPACE, "apps")
        child = res(NAMESPACE, f"{name}-ns", inputs, parent=parent.urn, read_id="apps" if read else "")
        return [parent, child]

    renamed = plan(stack(*cluster("ray", read=True)), stack(*cluster("rc", read=True, aliases=(Alias(name="ray"),))))
    assert renamed.kind_of("rc-ns") == "read" and renamed.step("rc-ns").old_urn.endswith("::ray-ns")
    assert renamed.deleted() == [] and renamed.errors == ()
    released = plan(stack(*cluster("ray", read=False)), stack(*cluster("rc", read=True, aliases=(Alias(name="ray"),))))
    assert released.kind_of("rc-ns") == "relinquish"
    assert [op.action for op in released.operations if op.obj] == ["release", "read"]


def test_a_role_bindings_role_is_replaced_not_updated() -> None:
    """Kubernetes keeps roleRef immutable; the provider's Diff replaces the binding (subjects update in place)."""
    binding = "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"

    def bound(role: str, account: str) -> Rendered:
        subjects = [{"kind": "ServiceAccount", "name": account, "namespace": "apps"}]
        role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role}
        return stack(res(binding, "b", manifest(binding, "b", roleRef=role_ref, subjects=subjects)))

    assert plan(bound("a", "x"), bound("b", "x")).step("b").replace_paths == ("roleRef.name",)
    assert plan(bound("a", "x"), bound("a", "y")).kind_of("b") == "update"


# ----- the live state: the provider's Diff, refresh -----


def test_the_diff_sees_the_live_object_pruned_to_the_inputs_and_refresh_rewrites_the_inputs() -> None:
    """Drift in a field the program sets shows only after a refresh, and then as an update; what the cluster adds
    beside the inputs' keys (defaults, status) never does; an ignored path stays ignored either way."""
    program = stack(deployment(replicas=2, ignore_changes=("spec.replicas",)))
    live = dict(copy.deepcopy(program.registrations[0].inputs))
    live["status"] = {"readyReplicas": 2}
    live["spec"] = {**live["spec"], "replicas": 5, "revisionHistoryLimit": 10}  # scaled by someone, defaulted
    web = Physical("apps", "Deployment", "apps", "web")
    assert plan(program, program, refreshed_from={web: live}).kind_of("web") == "same"
    live["spec"]["selector"] = {"matchLabels": {"app": "edited"}}  # a field the program sets, edited
    assert plan(program, program).kind_of("web") == "same"
    refreshed = plan(program, program, refreshed_from={web: live})
    assert refreshed.kind_of("web") == "replace" and refreshed.step("web").replace_paths == (
        "spec.selector.matchLabels.app",
    )


# ----- deletes: order, namespaces -----


def workload(
    logical: str = "web", name: str = "web", grace: int | None = None, claim: str = "", **options: Any
) -> Registration:
    """A Deployment whose pods have this grace period (the API server's 30 s by default) and mount `claim`."""
    pod: dict[str, Any] = {"containers": [{"name": "main", "image": "ray:1"}]}
    if grace is not None:
        pod["terminationGracePeriodSeconds"] = grace
    if claim:
        pod["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    template = {"metadata": {"labels": {"app": logical}}, "spec": pod}
    spec = {"replicas": 1, "selector": {"matchLabels": {"app": logical}}, "template": template}
    annotations = options.pop("annotations", {})
    inputs = manifest(DEPLOYMENT, name, spec=spec)
    inputs["metadata"]["annotations"] = annotations
    return res(DEPLOYMENT, logical, inputs, **options)


def test_a_delete_must_outwait_the_grace_of_the_pods_it_waits_for() -> None:
    """Foreground deletion waits for the pods, which may take their grace period (a worker's drain); the provider
    gives up after customTimeouts.delete (10 minutes unless set), and so does `pulumi destroy` or `up`."""
    draining = workload(grace=735)
    [error] = plan(stack(draining), None).errors
    assert error.startswith("deleting Deployment web fails after 600 s") and "take 735 s" in error
    assert plan(stack(workload(grace=735, custom_timeouts={"delete": "855s"})), None).errors == ()
    assert plan(stack(workload(grace=735, custom_timeouts={"delete": "13m"})), None).errors == ()
    unawaited = workload(grace=735, annotations={"pulumi.com/skipAwait": "true"})
    assert plan(stack(unawaited), None).errors == ()
    # The namespace's delete waits for every pod in it, the Deployment's own wait put aside.
    errors = plan(stack(namespace(), workload(grace=735, custom_timeouts={"delete": "855s"})), None).errors
    assert [e.split(" fails")[0] for e in errors] == ["deleting Namespace ns"]
    assert plan(stack(namespace(custom_timeouts={"delete": "855s"}), workload(grace=735)), stack(namespace())).errors
    assert plan(stack(workload()), None).errors == ()  # 30 s of grace, 10 minutes of patience


def test_two_workloads_on_one_single_node_claim_at_once_are_a_hazard() -> None:
    """A Deployment renamed (create-before-delete) with the same claim: both pods want the volume while the old one
    lives; a claim that many nodes may mount (ReadWriteMany) is no hazard."""

    def program(name: str, access: str) -> Rendered:
        data = res(CLAIM, "data", manifest(CLAIM, "data", spec={"accessModes": [access]}))
        return stack(data, workload(name=name, claim="data"))

    [hazard] = plan(program("redis", "ReadWriteOnce"), program("renamed-redis", "ReadWriteOnce")).hazards
    assert hazard.startswith("Deployment web and its own old copy both mount the single-node claim apps/data")
    assert plan(program("redis", "ReadWriteMany"), program("renamed-redis", "ReadWriteMany")).hazards == ()
    assert plan(program("redis", "ReadWriteOnce"), program("redis", "ReadWriteOnce")).hazards == ()


def test_deletes_go_dependents_and_children_first() -> None:
    parent = res(COMPONENT, "cluster")
    ns = res(NAMESPACE, "ns", manifest(NAMESPACE, "apps"), parent=parent.urn)
    account = res(
        SERVICE_ACCOUNT,
        "sa",
        manifest(SERVICE_ACCOUNT, "sa"),
        parent=parent.urn,
        deps=(ns.urn,),
        prop_deps={"metadata": (ns.urn,)},
    )
    web = res(DEPLOYMENT, "web", deployment().inputs, parent=parent.urn, deps=(account.urn,))
    unrelated = res(CONFIG_MAP, "cm", manifest(CONFIG_MAP, "cm", data={}), parent=parent.urn)
    destroy = plan(stack(parent, ns, account, web, unrelated), None)
    order = destroy.deleted()
    assert order.index("web") < order.index("sa") < order.index("ns") and order[-1] == "cluster"
    assert order.index("cm") < order.index("cluster")
    # Program order is not what decides: registering the Deployment first changes nothing.
    assert plan(stack(parent, ns, account, unrelated, web), None).deleted().index("web") < order.index("sa")


def test_deleting_a_namespace_deletes_the_objects_the_stack_keeps_in_it() -> None:
    kept = deployment()
    result = plan(stack(namespace(), kept), stack(kept))
    assert result.kind_of("ns") == "delete" and result.kind_of("web") == "same"
    assert result.hazards == (
        "deleting Namespace ns removes Namespace apps and with it Deployment apps/web, which Deployment web still "
        "holds after up",
    )
    assert plan(stack(namespace(), kept), None).hazards == ()  # all of it goes: nothing left behind to lose


def test_a_delete_before_replace_takes_its_dependents_down_first() -> None:
    ns = namespace(delete_before_replace=True, replace_on_changes=("metadata.labels",))
    relabelled = res(
        NAMESPACE,
        "ns",
        {**ns.inputs, "metadata": {"name": "apps", "labels": {"a": "b"}}},
        delete_before_replace=True,
        replace_on_changes=("metadata.labels",),
    )
    account = res(
        SERVICE_ACCOUNT, "sa", manifest(SERVICE_ACCOUNT, "sa"), deps=(ns.urn,), prop_deps={"metadata": (ns.urn,)}
    )
    web = res(DEPLOYMENT, "web", deployment().inputs, deps=(ns.urn, account.urn))  # depends_on only
    result = plan(stack(ns, account, web), stack(relabelled, account, web))
    assert ops(result) == [
        "delete ServiceAccount apps/sa",
        "delete Namespace apps",
        "create Namespace apps",
        "create ServiceAccount apps/sa",
    ]
    assert result.replaced() == ["sa", "ns"] and result.step("sa").delete_before_replace  # listed by first action
    # The Deployment only depends_on the Namespace, so the engine keeps it, but the namespace took it along.
    assert result.kind_of("web") == "same"
    assert any("with it Deployment apps/web" in h for h in result.hazards)


# ----- reads: relinquish, adopt -----


def test_reading_what_the_stack_managed_relinquishes_it() -> None:
    read = res(NAMESPACE, "ns", {}, read_id="apps")
    result = plan(stack(namespace()), stack(read))
    assert result.kind_of("ns") == "relinquish"
    assert [op.action for op in result.operations] == ["release", "read"] and result.hazards == ()
    other = plan(stack(namespace()), stack(res(NAMESPACE, "ns", {}, read_id="other")))
    assert other.kind_of("ns") == "read-replace"
    assert ops(other) == ["read Namespace other", "delete Namespace apps"]


def test_managing_what_the_stack_read_adopts_it_once_the_provider_may_upsert() -> None:
    """The engine takes a read object over by creating it: since pulumi-kubernetes 4.29 a create is refused for an
    object that exists, unless the provider upserts (upsertExistingObjects)."""
    refused = plan(stack(res(NAMESPACE, "ns", {}, read_id="apps")), stack(namespace()))
    assert refused.kind_of("ns") == "adopt"
    assert len(refused.errors) == 1 and "Namespace apps already exists" in refused.errors[0]
    result = plan(stack(res(NAMESPACE, "ns", {}, read_id="apps")), stack(namespace()), upsert_existing_objects=True)
    assert result.kind_of("ns") == "adopt"
    assert [op.action for op in result.operations] == ["create", "release"]
    assert result.hazards == result.errors == ()
    assert plan(stack(res(NAMESPACE, "ns", {}, read_id="apps")), stack()).step("ns").retained


def test_creating_what_another_resource_reads_is_an_adoption() -> None:
    shared = res(NAMESPACE, "shared", {}, read_id="apps")
    assert any("held by Namespace shared" in e for e in plan(stack(shared), stack(shared, namespace("mine"))).errors)
    result = plan(stack(shared), stack(shared, namespace("mine")), upsert_existing_objects=True)
    assert result.kind_of("mine") == "create"
    assert any("held by Namespace shared" in h for h in result.hazards)


# ----- Plan's lookups and the path helpers -----


def test_lookups_refuse_an_ambiguous_logical_name() -> None:
    parent = res(COMPONENT, "c")
    moved = res(NAMESPACE, "ns", manifest(NAMESPACE, "apps"), parent=parent.urn)
    result = plan(stack(namespace()), stack(parent, moved))
    with pytest.raises(KeyError):
        result.kind_of("ns")
    assert result.kind_of(moved.urn) == "create" and result.kind_of(urn(NAMESPACE, "ns")) == "delete"


def test_property_paths_parse_format_and_contain() -> None:
    path = parse_path('metadata.labels["app.kubernetes.io/name"]')
    assert path == ("metadata", "labels", "app.kubernetes.io/name")
    assert format_path(path) == 'metadata.labels["app.kubernetes.io/name"]'
    assert format_path(parse_path("spec.containers[0].image")) == "spec.containers[0].image"
    assert contains(parse_path("spec.containers[*]"), parse_path("spec.containers[3].image"))
    assert not contains(parse_path("spec.containers[0]"), parse_path("spec.containers[3].image"))


# ----- what tests/program.py records from the SDK -----


def test_program_records_options_reads_and_auto_names_from_the_sdk() -> None:
    def program() -> None:
        ns = k8s.core.v1.Namespace("ns", metadata={"name": "apps"})
        k8s.apps.v1.Deployment(
            "web",
            metadata={"namespace": ns.metadata.name},
            spec={"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}}},
            opts=pulumi.ResourceOptions(
                ignore_changes=["spec.replicas"],
                delete_before_replace=True,
                retain_on_delete=True,
                replace_on_changes=["spec.template"],
                aliases=[pulumi.Alias(name="old-web")],
                protect=True,
                custom_timeouts=pulumi.CustomTimeouts(create="5m"),
            ),
        )
        k8s.core.v1.Namespace.get("shared", "shared")

    rendered = capture(program)
    # The Deployment registers once the Namespace's name resolves, after the read: look them up by name.
    ns, web, shared = (next(r for r in rendered.registrations if r.name == n) for n in ("ns", "web", "shared"))
    assert web.options.ignore_changes == ("spec.replicas",) and web.options.replace_on_changes == ("spec.template",)
    assert (web.options.delete_before_replace, web.options.retain_on_delete, web.options.protect) == (True, True, True)
    assert Alias(name="old-web") in web.options.aliases and web.options.custom_timeouts == {"create": "5m"}
    assert ns.options.delete_before_replace is None and web.property_dependencies["metadata"] == (ns.urn,)
    assert re.fullmatch(r"web-[0-9a-f]{8}", web.inputs["metadata"]["name"])
    assert (web.id, ns.id) == (f"apps/{web.inputs['metadata']['name']}", "apps")
    assert (shared.read, shared.id, shared.urn) == (
        True,
        "shared",
        "urn:pulumi:test::ray-cluster::" + NAMESPACE + "::shared",
    )
    assert web in rendered.kubernetes() and shared not in rendered.kubernetes()  # a read is not a manifest
    managed = capture(lambda: k8s.core.v1.Namespace("shared", metadata={"name": "shared"}))
    assert plan(managed, rendered).kind_of("shared") == "relinquish"  # same URN and ID as the managed one

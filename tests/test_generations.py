"""upgradeStrategy `generation` (docs/upgrades.md, step 1): a change that needs new Ray pods makes a new generation
of the head and workers, under names that carry its id, beside the old one; the clients' head Service moves to it
once its smoke test passed, and the old one is deleted at the end of the update. Checked on the rendered program
and on the engine's plan of a change (tests/lifecycle.py)."""

import json
import re

import pytest

from components.config.settings import GENERATION_LABEL, GENERATION_MARK
from components.manifests import ray_node
from tests.lifecycle import plan
from tests.program import IN_PLACE, Manifest, Rendered, render
from tests.test_program import container, env, flag, ray_argv
from tests.variants import SERVE, VARIANTS

GENERATIONS: dict[str, object] = {"upgradeStrategy": "generation"}
HEX_ID = re.compile(r"^[0-9a-f]{8}$")


def generation(rendered: Rendered) -> str:
    generation_id: str = rendered.outputs["generation"]
    assert HEX_ID.match(generation_id), generation_id
    return generation_id


def labels(workload: Manifest) -> dict[str, str]:
    found: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return found


def test_each_ray_deployment_and_the_generations_head_service_carry_its_id() -> None:
    rendered = render(GENERATIONS)
    hex_id = generation(rendered)
    head, worker = rendered.one("Deployment", f"ray-head-{hex_id}"), rendered.one("Deployment", f"ray-worker-{hex_id}")
    for workload in (head, worker):
        assert labels(workload)[GENERATION_LABEL] == hex_id
        assert workload["spec"]["selector"]["matchLabels"][GENERATION_LABEL] == hex_id
    own = rendered.one("Service", f"ray-{hex_id}")
    assert own["spec"]["selector"] == {"ray.io/cluster": "ray", "ray.io/group": "head", GENERATION_LABEL: hex_id}
    # The workers join, are placed after, and the smoke test reaches, this generation's head.
    host = f"ray-{hex_id}.ray-test.svc"
    assert flag(ray_argv(worker), "--address") == f"{host}:{ray_node.GCS_PORT}"
    affinity = worker["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    [term] = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"][GENERATION_LABEL] == hex_id
    assert env(container(rendered.smoke_test()))["RAY_ADDRESS"] == f"ray://{host}:{ray_node.CLIENT_PORT}"


def named_container(workload: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_object_keeps_the_mark_of_the_generations_id(variant: str) -> None:
    rendered = render({**VARIANTS[variant], **GENERATIONS})
    assert GENERATION_MARK not in str(rendered.manifests)
    assert generation(rendered) in str(rendered.one("Service", "ray-head"))


def test_each_generations_pods_read_the_token_from_a_secret_of_their_own_and_clients_from_the_same_one() -> None:
    rendered = render(GENERATIONS)
    hex_id = generation(rendered)
    own, clients = rendered.one("Secret", f"ray-auth-token-{hex_id}"), rendered.one("Secret", "ray-auth-token")
    assert own["stringData"] == clients["stringData"]
    assert rendered.outputs["authTokenSecret"] == "ray-auth-token"
    for workload in [*rendered.of_kind("Deployment"), rendered.smoke_test()]:
        mounted = {v["secret"]["secretName"] for v in workload["spec"]["template"]["spec"]["volumes"] if "secret" in v}
        assert mounted == {f"ray-auth-token-{hex_id}"}, workload["metadata"]["name"]


def test_the_clients_head_service_selects_the_generation_only_after_its_smoke_test() -> None:
    rendered = render(GENERATIONS)
    clients = rendered.one("Service", "ray-head")
    assert clients["spec"]["selector"][GENERATION_LABEL] == generation(rendered)
    job = rendered.registration_of(rendered.smoke_test())
    assert job.urn in rendered.registration_of(clients).dependencies
    # The outputs name the clients' Service, whichever generation it points at.
    assert rendered.outputs["dashboardUrl"] == f"http://ray-head.ray-test.svc:{ray_node.DASHBOARD_PORT}"


def test_without_a_smoke_test_the_clients_service_waits_for_the_generations_rollout() -> None:
    rendered = render({**GENERATIONS, "testJob": "false"})
    waits_for = set(rendered.registration_of(rendered.one("Service", "ray-head")).dependencies)
    deployments = {rendered.registration_of(workload).urn for workload in rendered.of_kind("Deployment")}
    assert deployments <= waits_for


def test_a_generations_gcs_keeps_its_own_state_in_redis_which_every_generations_head_may_reach() -> None:
    rendered = render({**GENERATIONS, "gcsFaultTolerance": "true"})
    hex_id = generation(rendered)
    head = rendered.one("Deployment", f"ray-head-{hex_id}")
    storage = env(container(head))[ray_node.STORAGE_NAMESPACE_ENV]
    assert storage == f"{rendered.outputs['gcsStorageNamespace']}" and storage.endswith(f"-{hex_id}")
    redis_policy = rendered.one("NetworkPolicy", "ray-redis")
    allowed = [source["podSelector"]["matchLabels"] for source in redis_policy["spec"]["ingress"][0]["from"]]
    # The old head keeps its Redis meanwhile, and a retirement Job deletes an old generation's state there.
    assert [labels["ray.io/group"] for labels in allowed] == ["head", "retirement"]
    assert not any(GENERATION_LABEL in labels for labels in allowed)


@pytest.mark.parametrize(
    ("change", "new_generation"),
    [
        ({"image": "rayproject/ray:2.60.0-py311"}, True),
        ({"headMemory": "8Gi"}, True),
        ({"workerCpu": "2"}, True),
        ({"authToken": "a-token-of-the-users-own-0123456789abcdef"}, True),
        ({"workers": "5"}, False),
        ({"allowedClientNamespaces": ["notebooks"]}, False),
    ],
)
def test_a_change_that_needs_new_ray_pods_and_only_such_a_change_makes_a_new_generation(
    change: dict[str, object], new_generation: bool
) -> None:
    secrets = ("authToken",) if "authToken" in change else ()
    before, after = render(GENERATIONS), render({**GENERATIONS, **change}, secrets=secrets)
    assert (generation(before) != generation(after)) == new_generation


def test_a_new_generation_is_made_beside_the_old_which_goes_once_the_clients_service_moved() -> None:
    before = render(GENERATIONS)
    after = render({**GENERATIONS, "image": "rayproject/ray:2.60.0-py311"})
    changes = plan(before, after)
    assert changes.hazards == () and changes.errors == ()
    deployments = [step for step in changes.steps if step.type == "kubernetes:apps/v1:Deployment"]
    assert deployments and all(step.kind == "replace" and not step.delete_before_replace for step in deployments)
    operations = [str(operation) for operation in changes.operations]
    moved = operations.index("update Service ray-test/ray-head")
    old_id, new_id = generation(before), generation(after)
    assert operations.index(f"create Deployment ray-test/ray-head-{new_id} (replacement, create-before-delete)") < moved
    # The retirement Job starts once the clients' Service moved; Pulumi deletes nothing of the old generation, only
    # drops it from the stack (the Job deletes it once drained), so `pulumi up` does not wait for its drain.
    assert operations.index(f"create Job ray-test/ray-{new_id} (replacement, create-before-delete)") > moved
    # The old retirement Job (whose work the new one takes over) is the one object of the old generation it deletes.
    released = [operation for operation in operations if old_id in operation]
    assert sorted(released) == sorted(
        [
            f"delete Job ray-test/ray-{old_id} (old copy of a replacement)",
            *(
                f"release {kept} (old copy of a replacement; retainOnDelete: the object stays)"
                for kept in (
                    f"Deployment ray-test/ray-head-{old_id}",
                    f"Deployment ray-test/ray-worker-{old_id}",
                    f"Service ray-test/ray-{old_id}",
                    f"Secret ray-test/ray-auth-token-{old_id}",
                )
            ),
        ]
    ), released


def test_switching_to_generations_and_back_is_a_safe_update() -> None:
    in_place, generations = render(), render(GENERATIONS)
    for changes in (plan(in_place, generations), plan(generations, in_place)):
        assert changes.hazards == () and changes.errors == ()


def test_the_serve_service_moves_to_a_generation_with_the_clients_head_service_once_both_proofs_passed() -> None:
    """`<cluster>-serve` names the generation whose keeper writes its endpoints; Pulumi sets it once the smoke test
    and the Serve check passed, and the retirement starts after both Services moved."""
    rendered = render({**GENERATIONS, **SERVE})
    hex_id = generation(rendered)
    service = rendered.one("Service", "ray-serve")
    assert service["metadata"]["annotations"][GENERATION_LABEL] == hex_id
    assert "ownerReferences" not in service["metadata"]  # the stack's, not a generation's
    [check] = [job for job in rendered.of_kind("Job") if job["metadata"]["name"].startswith("ray-serve-check-")]
    waits_for = rendered.registration_of(service).dependencies
    assert {rendered.registration_of(rendered.smoke_test()).urn, rendered.registration_of(check).urn} <= set(waits_for)
    retirement = rendered.registration_of(rendered.one("Job", f"ray-{hex_id}"))
    assert rendered.registration_of(service).urn in retirement.dependencies
    # The keeper knows its generation and where to read which one the Service serves; the check asks the new head's
    # own proxy (found through Serve), not the Service, which still sends requests to the old generation.
    head = rendered.one("Deployment", f"ray-head-{hex_id}")
    keeper = env(named_container(head, "serve-keeper"))
    assert (keeper["SERVE_GENERATION"], keeper["SERVE_GENERATION_KEY"]) == (hex_id, GENERATION_LABEL)
    check_env = env(container(check))
    assert "SERVE_URL" not in check_env
    assert check_env["SERVE_DASHBOARD_URL"] == f"http://ray-{hex_id}.ray-test.svc:{ray_node.DASHBOARD_PORT}"
    # The retirement waits until the Serve Service's endpoints leave a generation, reading them by name only.
    retire_env = env(container(rendered.one("Job", f"ray-{hex_id}")))
    assert retire_env["RETIRE_SERVE_SERVICE"] == "ray-serve"
    rules = rendered.one("Role", "ray-retire")["rules"]
    assert [r for r in rules if r["apiGroups"] == ["discovery.k8s.io"]] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get"],
         "resourceNames": ["ray-serve"]}
    ]  # fmt: skip


def test_in_place_the_serve_service_names_no_generation_and_comes_before_the_head() -> None:
    rendered = render({**IN_PLACE, **SERVE})
    service = rendered.one("Service", "ray-serve")
    assert GENERATION_LABEL not in service["metadata"]["annotations"]
    head = rendered.registration_of(rendered.one("Deployment", "ray-head"))
    assert rendered.registration_of(service).urn in head.dependencies
    keeper = env(named_container(rendered.one("Deployment", "ray-head"), "serve-keeper"))
    assert "SERVE_GENERATION" not in keeper


def test_each_generations_autoscaler_scales_its_own_deployments_and_goes_with_its_head_service() -> None:
    rendered = render({**GENERATIONS, "maxWorkers": "4"})
    hex_id = generation(rendered)
    name = f"ray-autoscaler-{hex_id}"
    config = json.loads(rendered.one("ConfigMap", name)["data"]["autoscaling.json"])
    provider = config["provider"]
    assert provider["deployments"] == {"worker": f"ray-worker-{hex_id}"}
    assert provider["pod_labels"] == {GENERATION_LABEL: hex_id}  # its own generation's pods only
    [scale] = [rule for rule in rendered.one("Role", name)["rules"] if rule["resources"] == ["deployments/scale"]]
    assert scale["resourceNames"] == [f"ray-worker-{hex_id}"]
    head = rendered.one("Deployment", f"ray-head-{hex_id}")
    assert head["spec"]["template"]["spec"]["serviceAccountName"] == name
    for kind in ("ConfigMap", "ServiceAccount", "Role", "RoleBinding"):
        manifest = rendered.one(kind, name)
        [owner] = manifest["metadata"]["ownerReferences"]
        # The retirement deletes the generation's Service once its pods are gone; the garbage collector the rest.
        assert (owner["kind"], owner["name"], owner["blockOwnerDeletion"]) == ("Service", f"ray-{hex_id}", True)
        assert rendered.registration_of(manifest).options.retain_on_delete


def test_the_longest_cluster_name_leaves_room_for_the_generations_head_service() -> None:
    longest = "c" * 53
    rendered = render({**GENERATIONS, "clusterName": longest})
    [own] = [service for service in rendered.of_kind("Service") if service["metadata"]["name"] != f"{longest}-head"]
    assert own["metadata"]["name"] == f"{longest}-{generation(rendered)}" and len(own["metadata"]["name"]) <= 63


def test_an_up_without_a_change_leaves_the_generation_alone() -> None:
    unchanged = plan(render(GENERATIONS), render(GENERATIONS))
    assert {step.kind for step in unchanged.steps} == {"same"}


def test_the_stack_says_how_to_list_the_generations_that_run_and_their_retirements_jobs() -> None:
    rendered = render(GENERATIONS)
    command = str(rendered.outputs["generationsCommand"])
    assert command == f"kubectl -n ray-test get deployments -l ray.io/cluster=ray -L {GENERATION_LABEL}"
    retirement = rendered.one("Job", f"ray-{generation(rendered)}")
    assert retirement["metadata"]["labels"][GENERATION_LABEL] == generation(rendered)
    # Pulumi deletes it when the next generation's retirement has started: that one does what it had left.
    assert not rendered.registration_of(retirement).options.retain_on_delete


def test_every_object_of_a_generation_is_retained_on_delete_and_owned_by_the_anchor_and_nothing_else_is() -> None:
    rendered = render({**GENERATIONS, "gcsFaultTolerance": "true"})
    hex_id = generation(rendered)
    anchor = rendered.one("ConfigMap", "ray-generations")
    assert not rendered.registration_of(anchor).options.retain_on_delete
    of_the_generation = [
        m
        for m in rendered.manifests
        if hex_id in m["metadata"].get("name", "") and m["kind"] != "Job"  # the retirement: not retained, below
    ]
    assert {m["kind"] for m in of_the_generation} == {"Deployment", "Service", "Secret"}
    for manifest in rendered.manifests:
        retained = rendered.registration_of(manifest).options.retain_on_delete
        owners = manifest["metadata"].get("ownerReferences", [])
        if manifest in of_the_generation:
            assert retained and manifest["metadata"]["labels"][GENERATION_LABEL] == hex_id
            [owner] = owners
            assert (owner["kind"], owner["name"], owner["blockOwnerDeletion"]) == ("ConfigMap", "ray-generations", True)
        else:
            assert not retained and not owners, manifest["metadata"]


def test_back_to_in_place_the_anchor_goes_at_the_end_and_the_generation_with_it() -> None:
    generations, in_place = render(GENERATIONS), render(IN_PLACE)
    assert "ray-generations" not in {m["metadata"]["name"] for m in in_place.manifests}
    operations = [str(operation) for operation in plan(generations, in_place).operations]
    # Pulumi drops the generation's objects from the stack, and deletes the anchor that owns them last of all: its
    # foreground delete waits until Kubernetes has deleted them (tests/test_rehearsal_harness.py, the cascade).
    assert "delete ConfigMap ray-test/ray-generations (left the program)" in operations
    created_in_place = operations.index("create Deployment ray-test/ray-head (replacement, create-before-delete)")
    assert operations.index("delete ConfigMap ray-test/ray-generations (left the program)") > created_in_place


def test_the_generations_head_service_is_not_awaited_for_it_owns_what_its_head_needs() -> None:
    rendered = render({**GENERATIONS, "maxWorkers": "4"})
    hex_id = generation(rendered)
    service = rendered.one("Service", f"ray-{hex_id}")
    assert service["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
    # Awaited, it would wait for the head pod, which waits for the autoscaler's objects, which wait for its uid.
    head = rendered.registration_of(rendered.one("Deployment", f"ray-head-{hex_id}"))
    account = rendered.registration_of(rendered.one("ServiceAccount", f"ray-autoscaler-{hex_id}"))
    assert account.urn in head.dependencies
    assert rendered.registration_of(service).urn in account.dependencies

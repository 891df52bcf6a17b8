"""Drift: what `kubectl scale`, `kubectl rollout restart` and `kubectl edit` do to the next `pulumi up`, under
server-side apply as the provider runs it (tests/ssa.py), with the objects and options the program declares."""

from __future__ import annotations

import copy

import pytest

from tests.program import Manifest, Registration, render
from tests.ssa import PATCH_FORCE, ConflictError, LiveObject, pulumi_up

RESTARTED_AT = 'spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]'


def worker(config: dict[str, object] | None = None) -> tuple[Manifest, tuple[str, ...]]:
    rendered = render(config or {})
    manifest = rendered.one("Deployment", "ray-worker")
    registration: Registration = rendered.registration_of(manifest)
    return manifest, registration.options.ignore_changes


def deployed(manifest: Manifest, ignore: tuple[str, ...]) -> LiveObject:
    live = LiveObject()
    live.pulumi_apply(manifest, ignore)
    return live


def without_patch_force(manifest: Manifest) -> Manifest:
    stripped = copy.deepcopy(manifest)
    del stripped["metadata"]["annotations"][PATCH_FORCE]
    return stripped


@pytest.mark.parametrize("refresh", [True, False])
def test_pulumi_takes_the_replicas_back_from_kubectl_scale(refresh: bool) -> None:
    manifest, ignore = worker()
    live = deployed(manifest, ignore)
    live.write("kubectl", {"spec.replicas": 5}, subresource="scale")
    # `pulumi up --refresh` resets the drift at once; a plain `pulumi up` leaves it until the object changes.
    assert pulumi_up(live, manifest, manifest, ignore, refresh=refresh) is refresh
    assert live.value("spec.replicas") == (3 if refresh else 5)
    changed, _ = worker({"image": "rayproject/ray:2.60.0-py311"})
    assert pulumi_up(live, manifest, changed, ignore)
    assert live.value("spec.replicas") == 3


def test_without_patch_force_the_next_apply_after_a_scale_fails() -> None:
    """The defect patchForce fixes: the real provider reports this field-manager conflict."""
    manifest, ignore = worker()
    live = deployed(without_patch_force(manifest), ignore)
    live.write("kubectl", {"spec.replicas": 5}, subresource="scale")
    with pytest.raises(ConflictError, match=r"kubectl \(scale\).*'spec', 'replicas'"):
        pulumi_up(live, manifest, without_patch_force(manifest), ignore, refresh=True)


def test_a_rollout_restart_survives_the_next_up() -> None:
    manifest, ignore = worker()
    assert ignore == ("spec.template.metadata.annotations",)
    live = deployed(manifest, ignore)
    live.write("kubectl-rollout", {RESTARTED_AT: "2026-11-26T12:00:00Z"})
    changed, _ = worker({"workerMemory": "3Gi"})
    assert pulumi_up(live, manifest, changed, ignore)
    assert live.value(RESTARTED_AT) == "2026-11-26T12:00:00Z"
    assert live.value("spec.template.spec.containers[0].resources.limits.memory") == "3Gi"


@pytest.mark.parametrize("ignore", [(), (RESTARTED_AT,)], ids=["nothing ignored", "the annotation's own path"])
def test_otherwise_the_next_up_drops_the_restart(ignore: tuple[str, ...]) -> None:
    """...and so restarts every pod a second time: the provider takes kubectl's field over and drops it. Ignoring
    the annotation's own path does not help: the provider splits ignore paths at every dot, its key's included."""
    manifest, _ = worker()
    live = deployed(manifest, ignore)
    live.write("kubectl-rollout", {RESTARTED_AT: "2026-11-26T12:00:00Z"})
    changed, _ = worker({"workerMemory": "3Gi"})
    pulumi_up(live, manifest, changed, ignore)
    assert live.value(RESTARTED_AT) is None


def test_a_kubectl_edit_of_a_field_pulumi_sets_is_put_back() -> None:
    manifest, ignore = worker()
    live = deployed(manifest, ignore)
    env = "spec.template.spec.containers[0].env[0].name"
    original = live.value(env)
    live.write("kubectl-edit", {env: "EDITED"})
    assert pulumi_up(live, manifest, manifest, ignore, refresh=True)
    assert live.value(env) == original

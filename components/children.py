"""How the RayCluster component declares its children: named after the component (never after config a user may
change, so their URNs stay), parented to it, in the cluster's namespace (read from the Namespace resource, so they
wait for it), labelled like the pods they belong with and owned by Pulumi field by field; Deployments with their
timeouts and the paths left to others; secrets generated once per stack. The component (ray_cluster.py) says what
to declare; this says how.
"""

from collections.abc import Callable, Mapping
from typing import TypeVar

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from . import resource_options
from .config.settings import GENERATION_MARK, ClusterSettings
from .generations import with_generation
from .manifests import generations, pods, ray_node

Child = TypeVar("Child", bound=pulumi.CustomResource)


class ClusterChildren(pulumi.ComponentResource):
    """A component whose children are the cluster's objects: `_settings`, `_name`, `_namespace` and `_access`
    (what every Deployment waits for) are the subclass's to set before it declares any; with generations,
    `_generation` (the id) and `_anchor_uid` (the uid of the ConfigMap that owns every generation) before it
    declares any of a generation's objects."""

    _name: str
    _settings: ClusterSettings
    _namespace: pulumi.Output[str]
    _access: list[pulumi.CustomResource]
    _generation: pulumi.Output[str] | None = None
    _anchor_uid: pulumi.Output[str] | None = None

    def _child(
        self,
        kind: Callable[..., Child],
        suffix: str,
        resource_name: str | None,
        component: str,
        group: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        drains: bool = True,
        owner: ray_node.Manifest | None = None,
        **fields: object,
    ) -> Child:
        """A namespaced child labelled like the pods it belongs with (the Ray pods', unless `labels` are given);
        reading the namespace from the Namespace resource makes it wait for that namespace. The generation's id
        takes the place of its mark in the name and the fields (components/generations.py). A generation's object
        (its name carries the mark) is labelled with it and, unless it does not `drains` with it, outlives the
        switch away from it: retained on delete, owned by the anchor (or by its `owner`, an ownerReference, which
        the retirement deletes), deleted by the retirement (or by the garbage collector after its owner)."""
        named = {"name": resource_name} if resource_name else {}
        options = pulumi.ResourceOptions.merge(pulumi.ResourceOptions(parent=self), opts)
        labels = labels or pods.labels(self._settings, component, group or component)
        of_the_generation: dict[str, object] = {}
        generations_own = bool(resource_name and GENERATION_MARK in resource_name)
        if generations_own:
            labels = {**labels, **self._settings.generation_labels}
        if generations_own and drains:
            # Once replaced, the retirement Job deletes it, not Pulumi (manifests/generations.py).
            anchor = generations.owner_reference("ConfigMap", self._settings.anchor_name, self._anchor_uid)
            of_the_generation["ownerReferences"] = [owner or anchor]
            options = pulumi.ResourceOptions.merge(options, pulumi.ResourceOptions(retain_on_delete=True))
        metadata = with_generation(
            {
                **named,
                "namespace": self._namespace,
                "labels": labels,
                "annotations": {**resource_options.PULUMI_OWNS_ITS_FIELDS, **(annotations or {})},
                **of_the_generation,
            },
            self._generation,
        )
        fields = {key: with_generation(value, self._generation) for key, value in fields.items()}
        return kind(f"{self._name}-{suffix}", metadata=metadata, opts=options, **fields)

    def _deployment_spec(self, group: str, replicas: int, template: ray_node.Manifest) -> ray_node.Manifest:
        return {
            "replicas": replicas,
            "selector": {"matchLabels": pods.generation_selector(self._settings, group)},
            "template": template,
        }

    def _deployment(
        self,
        group: str,
        component: str,
        spec: ray_node.Manifest,
        timeout_seconds: int,
        after: list[pulumi.CustomResource] | None = None,
        labels: Mapping[str, str] | None = None,
        autoscaled: bool = False,
        name: str | None = None,
    ) -> pulumi.CustomResource:
        """`<cluster>-<group>` (or `name`), a Deployment of Ray pods (or, with its own `labels` and `name`, the
        Redis), created once the access objects (ServiceAccount, policies, token) and whatever else it needs
        (`after`) exist; `pulumi up` waits `timeout_seconds` for it to roll out. An `autoscaled` one's replicas are
        the autoscaler's."""
        timeout = f"{timeout_seconds}s"
        grace = spec["template"]["spec"].get(
            "terminationGracePeriodSeconds", resource_options.POD_DEFAULT_GRACE_SECONDS
        )
        options = pulumi.ResourceOptions(
            depends_on=[*self._access, *(after or [])],
            custom_timeouts=pulumi.CustomTimeouts(
                create=timeout, update=timeout, delete=resource_options.delete_timeout(grace)
            ),
            ignore_changes=[
                resource_options.POD_TEMPLATE_ANNOTATIONS,
                *([resource_options.AUTOSCALER_OWNS_REPLICAS] if autoscaled else []),
            ],
        )
        deployment: pulumi.CustomResource = self._child(
            k8s.apps.v1.Deployment,
            group,
            name or self._settings.deployment_name(group),
            component,
            group,
            spec=spec,
            opts=options,
            labels=labels,
            annotations=resource_options.AUTOSCALED if autoscaled else None,
        )
        return deployment

    def _api_access(
        self,
        component: str,
        name: str,
        rules: list[ray_node.Manifest],
        service_account: str,
        group: str = "head",
        owner: ray_node.Manifest | None = None,
    ) -> list[pulumi.CustomResource]:
        """What a container of the head needs to call the Kubernetes API, and nothing more: the Role `name` with
        `rules`, bound to the ServiceAccount `service_account`, which is created here (without an automounted
        token) when it is the Role's own (`name`); the head's sidecars share the pod's one ServiceAccount. `group`:
        the pods that use it; `owner`: a generation's objects' owner, if not the anchor (see `_child`)."""
        own_account = (
            [
                self._child(
                    k8s.core.v1.ServiceAccount,
                    f"{component}-service-account",
                    name,
                    component,
                    group,
                    automount_service_account_token=False,
                    owner=owner,
                )
            ]
            if service_account == name
            else []
        )
        role = self._child(k8s.rbac.v1.Role, f"{component}-role", name, component, group, rules=rules, owner=owner)
        subject = {"kind": "ServiceAccount", "name": service_account, "namespace": self._settings.namespace}
        binding = self._child(
            k8s.rbac.v1.RoleBinding,
            f"{component}-role-binding",
            name,
            component,
            group,
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            subjects=[subject],
            owner=owner,
        )
        return [*own_account, role, binding]

    def _proving_job(
        self,
        component: str,
        template: ray_node.Manifest,
        retries: int,
        deadline_seconds: int,
        after: list[pulumi.CustomResource],
    ) -> pulumi.CustomResource:
        """A Job that proves the cluster (or its Serve applications), so that its failure fails `pulumi up`: created
        once what it proves exists (`after`), awaited a minute beyond its own deadline. No fixed name: a changed
        template replaces the immutable Job create-before-delete, so it runs again; a failed one is replaced by
        the next `pulumi up` instead of awaited again."""
        job: pulumi.CustomResource = self._child(
            k8s.batch.v1.Job,
            component,
            None,
            component,
            annotations=resource_options.RETRY_FAILED_JOB,
            spec={"backoffLimit": retries, "activeDeadlineSeconds": deadline_seconds, "template": template},
            opts=pulumi.ResourceOptions(
                depends_on=after, custom_timeouts=pulumi.CustomTimeouts(create=f"{deadline_seconds + 60}s")
            ),
        )
        return job

    def _secret(self, suffix: str, given: pulumi.Input[str] | None, length: int) -> pulumi.Output[str]:
        """The given secret, or one of `length` letters and digits generated once per stack, as a secret Output."""
        generated = random.RandomPassword(
            f"{self._name}-{suffix}", length=length, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        return pulumi.Output.secret(
            pulumi.Output.all(given, generated.result).apply(lambda values: str(values[0] or values[1]))
        )

    def _secret_version(self, suffix: str, **secret: pulumi.Input[str]) -> pulumi.Output[str]:
        """A random id drawn anew whenever the secret (its one keyword argument) changes: in a pod template's
        labels, it rolls the pods that read the secret at start, while the template reveals nothing of it."""
        version = random.RandomId(
            f"{self._name}-{suffix}-version", byte_length=8, keepers=secret, opts=pulumi.ResourceOptions(parent=self)
        )
        version_hex: pulumi.Output[str] = version.hex
        return version_hex

"""The RayCluster component: wires the pure builders into Kubernetes resources, every one parented to it.

Logical names derive from the component's own name only, never from config a user may change (`clusterName`,
`namespace`), so a change of config updates or replaces resources under the same URNs instead of creating new
ones that collide with, or are deleted along with, the live objects of the old ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from . import network, pods
from .settings import ClusterSettings

# Ray images are several GB: the first pull alone can outlast pulumi-kubernetes' 10-minute default.
_PULL_SECONDS = 20 * 60
# The smoke test's own wait for the nodes, then up to 30 rounds of 200 calls (seconds each on a loaded cluster).
_SMOKE_TEST_DEADLINE_SECONDS = pods.SMOKE_NODE_WAIT_SECONDS + 300
SMOKE_TEST_SCRIPT = (Path(__file__).parent / pods.SMOKE_TEST_FILE).read_text()
# Every field Pulumi sets is Pulumi's: a `kubectl scale` (which owns spec.replicas through the scale subresource)
# would otherwise make the next apply fail with a field-manager conflict. Fields Pulumi does not set stay with
# whoever set them.
_PULUMI_OWNS_ITS_FIELDS = {"pulumi.com/patchForce": "true"}
# The pod templates' annotations are left to whoever sets them: `kubectl rollout restart` stamps one there, which the
# provider would take over on its next apply and drop, restarting every pod a second time. (The annotation's own
# path cannot be ignored: the provider splits ignore paths at every dot, and its key has dots.) What must roll pods
# when it changes goes into labels instead.
_POD_TEMPLATE_ANNOTATIONS = "spec.template.metadata.annotations"
# A failed smoke-test Job is replaced by the next `pulumi up` (so it runs again) instead of awaited again.
_RETRY_FAILED_JOB = {"pulumi.com/replaceUnready": "true"}


class RayCluster(pulumi.ComponentResource):
    """A Ray head, its Service, one Deployment per worker group and an optional smoke-test Job, locked down:
    a dedicated ServiceAccount, NetworkPolicies and (by default) Ray token authentication."""

    namespace: pulumi.Output[str]
    head_service_dns: pulumi.Output[str]
    gcs_address: pulumi.Output[str]
    client_address: pulumi.Output[str]
    dashboard_url: pulumi.Output[str]
    port_forward_command: pulumi.Output[str]
    image: pulumi.Output[str]
    worker_replicas: pulumi.Output[dict[str, int]]
    auth_secret_name: pulumi.Output[str | None]

    def __init__(
        self,
        name: str,
        settings: ClusterSettings,
        auth_token: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`auth_token` is the user's own token (a secret); without one, a token is generated once per stack."""
        # Inputs stay None: whatever is passed here is recorded in the state as the component's inputs.
        super().__init__("ray-cluster:index:RayCluster", name, None, opts)
        self._name, self._settings = name, settings
        for warning in settings.warnings():
            pulumi.log.warn(warning, resource=self)
        self._namespace = self._declare_namespace()

        access = [
            self._child(
                k8s.core.v1.ServiceAccount,
                "service-account",
                settings.cluster_name,
                "cluster",
                automount_service_account_token=False,
            ),
            *self._network_policies(),
        ]
        version_labels: dict[str, Any] = {}
        if settings.token_auth:
            secret, token_version = self._auth_secret(auth_token)
            access.append(secret)
            version_labels[pods.TOKEN_VERSION_LABEL] = token_version
        self._access = access

        head_service_spec = {
            "type": "ClusterIP",
            "selector": pods.selector_labels(settings, "head"),
            "ports": network.head_service_ports(),
            # The head's name resolves as soon as its pod runs, not once its dashboard is ready: the workers'
            # init containers check the GCS themselves, so they join seconds earlier.
            "publishNotReadyAddresses": True,
        }
        head_service = self._child(
            k8s.core.v1.Service, "head-service", settings.head_service_name, "head", spec=head_service_spec
        )
        # Never two heads: a second GCS would split the cluster in two.
        head_spec = {
            **self._deployment_spec("head", 1, pods.head_pod_template(settings, version_labels)),
            "strategy": {"type": "Recreate"},
        }
        head = self._deployment("head", "head", head_spec, _PULL_SECONDS)
        # Workers do not wait for the head: they start with it, and their init container waits for its GCS.
        worker_specs = {
            group.name: {
                **self._deployment_spec(
                    group.name, group.replicas, pods.worker_pod_template(settings, group, version_labels)
                ),
                "strategy": pods.WORKER_ROLLOUT,
                "progressDeadlineSeconds": pods.worker_progress_deadline_seconds(settings),
            }
            for group in settings.worker_groups
        }
        # Every round of a rollout may wait for its workers' drain.
        rollout_seconds = _PULL_SECONDS + pods.WORKER_ROLLOUT_ROUNDS * pods.worker_grace_seconds(settings)
        workers = [self._deployment(group, "worker", spec, rollout_seconds) for group, spec in worker_specs.items()]
        if settings.test_job:
            running = {"head-service": head_service_spec, "head": head_spec, "workers": worker_specs}
            self._smoke_test([*access, head_service, head, *workers], _digest(running))

        host = settings.head_host
        self.namespace = self._namespace
        self.head_service_dns = pulumi.Output.from_input(host)
        self.gcs_address = pulumi.Output.from_input(f"{host}:{pods.GCS_PORT}")
        self.client_address = pulumi.Output.from_input(f"ray://{host}:{pods.CLIENT_PORT}")
        self.dashboard_url = pulumi.Output.from_input(f"http://{host}:{pods.DASHBOARD_PORT}")
        self.port_forward_command = pulumi.Output.from_input(
            f"kubectl -n {settings.namespace} port-forward service/{settings.head_service_name} "
            f"{pods.DASHBOARD_PORT}:{pods.DASHBOARD_PORT} {pods.CLIENT_PORT}:{pods.CLIENT_PORT}"
        )
        self.image = pulumi.Output.from_input(settings.image)
        self.worker_replicas = pulumi.Output.from_input({g.name: g.replicas for g in settings.worker_groups})
        self.auth_secret_name = pulumi.Output.from_input(settings.auth_secret_name if settings.token_auth else None)
        self.register_outputs(
            {
                "namespace": self.namespace,
                "head_service_dns": self.head_service_dns,
                "gcs_address": self.gcs_address,
                "client_address": self.client_address,
                "dashboard_url": self.dashboard_url,
                "port_forward_command": self.port_forward_command,
                "image": self.image,
                "worker_replicas": self.worker_replicas,
                "auth_secret_name": self.auth_secret_name,
            }
        )

    def _child(
        self,
        kind: Callable[..., pulumi.CustomResource],
        suffix: str,
        resource_name: str | None,
        component: str,
        group: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
        annotations: Mapping[str, str] | None = None,
        **fields: object,
    ) -> pulumi.CustomResource:
        """A namespaced child labelled like the pods it belongs with; reading the namespace from the Namespace
        resource makes it wait for that namespace."""
        named = {"name": resource_name} if resource_name else {}
        metadata = {
            **named,
            "namespace": self._namespace,
            "labels": pods.labels(self._settings, component, group or component),
            "annotations": {**_PULUMI_OWNS_ITS_FIELDS, **(annotations or {})},
        }
        options = pulumi.ResourceOptions.merge(pulumi.ResourceOptions(parent=self), opts)
        return kind(f"{self._name}-{suffix}", metadata=metadata, opts=options, **fields)

    def _deployment_spec(self, group: str, replicas: int, template: pods.Manifest) -> pods.Manifest:
        return {
            "replicas": replicas,
            "selector": {"matchLabels": pods.selector_labels(self._settings, group)},
            "template": template,
        }

    def _deployment(
        self, group: str, component: str, spec: pods.Manifest, timeout_seconds: int
    ) -> pulumi.CustomResource:
        """`<cluster>-<group>`, a Deployment of Ray pods, created once the access objects (ServiceAccount,
        policies, token) exist; `pulumi up` waits `timeout_seconds` for it to roll out."""
        timeout = f"{timeout_seconds}s"
        options = pulumi.ResourceOptions(
            depends_on=self._access,
            custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout),
            ignore_changes=[_POD_TEMPLATE_ANNOTATIONS],
        )
        name = f"{self._settings.cluster_name}-{group}"
        return self._child(k8s.apps.v1.Deployment, group, name, component, group, spec=spec, opts=options)

    def _declare_namespace(self) -> pulumi.Output[str]:
        """The stack's own namespace, or an existing one, read rather than managed, under the same logical name:
        switching `createNamespace` from true to false then releases the namespace (the engine's "relinquish":
        the same object, no delete), and from false to true adopts it, instead of deleting the namespace with the
        cluster in it or failing on a name that exists."""
        settings = self._settings
        logical_name = f"{self._name}-namespace"
        options = pulumi.ResourceOptions(parent=self)
        if not settings.create_namespace:
            existing = k8s.core.v1.Namespace.get(logical_name, settings.namespace, opts=options)
            read: pulumi.Output[str] = existing.id.apply(lambda _: settings.namespace)
            return read
        namespace = k8s.core.v1.Namespace(
            logical_name,
            metadata={
                "name": settings.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "pulumi",
                    # Admission rejects any pod here that is not "restricted", ours included.
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
                "annotations": _PULUMI_OWNS_ITS_FIELDS,
            },
            opts=options,
        )
        name: pulumi.Output[str] = namespace.metadata.name
        return name

    def _network_policies(self) -> list[pulumi.CustomResource]:
        settings = self._settings
        specs = {
            "internal-traffic": ("internal", network.internal_policy_spec(settings)),
            "client-traffic": ("clients", network.client_policy_spec(settings)),
            "metrics-traffic": ("metrics", network.metrics_policy_spec(settings)),
        }
        return [
            self._child(
                k8s.networking.v1.NetworkPolicy, suffix, f"{settings.cluster_name}-{name}", "cluster", spec=spec
            )
            for suffix, (name, spec) in specs.items()
            if spec
        ]

    def _auth_secret(self, given: pulumi.Input[str] | None) -> tuple[pulumi.CustomResource, pulumi.Output[str]]:
        """The token every Ray process reads from a mounted file (generated unless the stack config gives one),
        and its version: a random id drawn anew whenever the token changes, so pods roll with the token while
        their templates reveal nothing of it."""
        generated = random.RandomPassword(
            f"{self._name}-auth-token", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        token: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(given, generated.result).apply(lambda tokens: str(tokens[0] or tokens[1]))
        )
        version = random.RandomId(
            f"{self._name}-auth-token-version",
            byte_length=8,
            keepers={"token": token},
            opts=pulumi.ResourceOptions(parent=self),
        )
        secret = self._child(
            k8s.core.v1.Secret,
            "auth-token-secret",
            self._settings.auth_secret_name,
            "cluster",
            type="Opaque",
            string_data={pods.AUTH_TOKEN_KEY: token},
        )
        version_hex: pulumi.Output[str] = version.hex
        return secret, version_hex

    def _smoke_test(self, cluster: list[pulumi.CustomResource], cluster_digest: pulumi.Output[str]) -> None:
        settings = self._settings
        script_name = f"{settings.cluster_name}-smoke-test"
        script = self._child(
            k8s.core.v1.ConfigMap,
            "smoke-test-script",
            script_name,
            "smoke-test",
            data={pods.SMOKE_TEST_FILE: SMOKE_TEST_SCRIPT},
        )
        self._child(
            k8s.batch.v1.Job,
            "smoke-test",
            # No fixed name: a changed template replaces the immutable Job create-before-delete, so it runs again.
            None,
            "smoke-test",
            annotations=_RETRY_FAILED_JOB,
            spec={
                "backoffLimit": 1,
                "activeDeadlineSeconds": _SMOKE_TEST_DEADLINE_SECONDS,
                "template": pods.smoke_test_pod_template(
                    settings, script_config_map=script_name, script=SMOKE_TEST_SCRIPT, cluster_digest=cluster_digest
                ),
            },
            opts=pulumi.ResourceOptions(
                depends_on=[script, *cluster],
                custom_timeouts=pulumi.CustomTimeouts(create=f"{_SMOKE_TEST_DEADLINE_SECONDS + 60}s"),
            ),
        )


def _digest(specs: Mapping[str, Any]) -> pulumi.Output[str]:
    """A SHA-256 of specs that may hold Outputs (the token's version), once they are known."""
    return pulumi.Output.from_input(specs).apply(
        lambda resolved: hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()
    )

"""The RayCluster component: wires the pure builders into Kubernetes resources, every one parented to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from . import network, pods
from .settings import ClusterSettings

# Ray images are several GB: the first pull alone can outlast pulumi-kubernetes' 10-minute default.
_ROLLOUT_TIMEOUTS = pulumi.CustomTimeouts(create="20m", update="20m")
_SMOKE_TEST_DEADLINE_SECONDS = 900
SMOKE_TEST_SCRIPT = (Path(__file__).parent / pods.SMOKE_TEST_FILE).read_text()


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
        if settings.token_auth:
            access.append(self._auth_secret(auth_token))
        self._ready_to_run = pulumi.ResourceOptions(depends_on=access, custom_timeouts=_ROLLOUT_TIMEOUTS)

        head_service = self._child(
            k8s.core.v1.Service,
            "head-service",
            settings.head_service_name,
            "head",
            spec={
                "type": "ClusterIP",
                "selector": pods.selector_labels(settings, "head"),
                "ports": network.head_service_ports(),
                # The head's name resolves as soon as its pod runs, not once its dashboard is ready: the workers'
                # init containers check the GCS themselves, so they join seconds earlier.
                "publishNotReadyAddresses": True,
            },
        )
        # Never two heads: a second GCS would split the cluster in two.
        head = self._deployment("head", "head", 1, pods.head_pod_template(settings), {"type": "Recreate"})
        # Workers do not wait for the head: they start with it, and their init container waits for its GCS.
        workers = [
            self._deployment(group.name, "worker", group.replicas, pods.worker_pod_template(settings, group))
            for group in settings.worker_groups
        ]
        if settings.test_job:
            self._smoke_test([*access, head_service, head, *workers])

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
        **fields: object,
    ) -> pulumi.CustomResource:
        """A namespaced child labelled like the pods it belongs with; reading the namespace from the Namespace
        resource makes it wait for that namespace."""
        named = {"name": resource_name} if resource_name else {}
        metadata = {
            **named,
            "namespace": self._namespace,
            "labels": pods.labels(self._settings, component, group or component),
        }
        options = pulumi.ResourceOptions.merge(pulumi.ResourceOptions(parent=self), opts)
        return kind(f"{self._name}-{suffix}", metadata=metadata, opts=options, **fields)

    def _deployment(
        self,
        group: str,
        component: str,
        replicas: int,
        template: pods.Manifest,
        strategy: pods.Manifest | None = None,
    ) -> pulumi.CustomResource:
        """`<cluster>-<group>`, a Deployment of Ray pods, created once the access objects (ServiceAccount,
        policies, token) exist."""
        spec: pods.Manifest = {
            "replicas": replicas,
            "selector": {"matchLabels": pods.selector_labels(self._settings, group)},
            "template": template,
            **({"strategy": strategy} if strategy else {}),
        }
        name = f"{self._settings.cluster_name}-{group}"
        return self._child(k8s.apps.v1.Deployment, group, name, component, group, spec=spec, opts=self._ready_to_run)

    def _declare_namespace(self) -> pulumi.Output[str]:
        """The stack's own namespace, or the name of an existing one that `pulumi destroy` must leave alone."""
        settings = self._settings
        if not settings.create_namespace:
            return pulumi.Output.from_input(settings.namespace)
        namespace = k8s.core.v1.Namespace(
            f"{self._name}-namespace",
            metadata={
                "name": settings.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "pulumi",
                    # Admission rejects any pod here that is not "restricted", ours included.
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        name: pulumi.Output[str] = namespace.metadata.name
        return name

    def _network_policies(self) -> list[pulumi.CustomResource]:
        settings = self._settings
        policies = [
            self._child(
                k8s.networking.v1.NetworkPolicy,
                "internal-traffic",
                f"{settings.cluster_name}-internal",
                "cluster",
                spec=network.internal_policy_spec(settings),
            )
        ]
        client_spec = network.client_policy_spec(settings)
        if client_spec:
            policies.append(
                self._child(
                    k8s.networking.v1.NetworkPolicy,
                    "client-traffic",
                    f"{settings.cluster_name}-clients",
                    "cluster",
                    spec=client_spec,
                )
            )
        return policies

    def _auth_secret(self, given: pulumi.Input[str] | None) -> pulumi.CustomResource:
        """The token every Ray process reads from a mounted file; generated unless the stack config gives one."""
        generated = random.RandomPassword(
            f"{self._name}-auth-token", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        token = pulumi.Output.secret(
            pulumi.Output.all(given, generated.result).apply(lambda tokens: tokens[0] or tokens[1])
        )
        return self._child(
            k8s.core.v1.Secret,
            "auth-token-secret",
            self._settings.auth_secret_name,
            "cluster",
            type="Opaque",
            string_data={pods.AUTH_TOKEN_KEY: token},
        )

    def _smoke_test(self, cluster: list[pulumi.CustomResource]) -> None:
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
            spec={
                "backoffLimit": 1,
                "activeDeadlineSeconds": _SMOKE_TEST_DEADLINE_SECONDS,
                "template": pods.smoke_test_pod_template(
                    settings, script_config_map=script_name, script=SMOKE_TEST_SCRIPT
                ),
            },
            opts=pulumi.ResourceOptions(
                depends_on=[script, *cluster],
                custom_timeouts=pulumi.CustomTimeouts(create=f"{_SMOKE_TEST_DEADLINE_SECONDS + 60}s"),
            ),
        )

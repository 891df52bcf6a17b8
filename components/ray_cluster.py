"""The RayCluster component: wires the pure pod builders into Kubernetes resources, parented to itself."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from . import pods
from .settings import ClusterSettings

# Ray images are several GB: the first pull alone can outlast pulumi-kubernetes' 10-minute default.
_ROLLOUT_TIMEOUTS = pulumi.CustomTimeouts(create="20m", update="20m")
_SMOKE_TEST_DEADLINE_SECONDS = 900
SMOKE_TEST_SCRIPT = (Path(__file__).parent / pods.SMOKE_TEST_FILE).read_text()


class RayCluster(pulumi.ComponentResource):
    """A Ray head, its Service, one Deployment per worker group and an optional smoke-test Job."""

    namespace: pulumi.Output[str]
    head_service_dns: pulumi.Output[str]
    gcs_address: pulumi.Output[str]
    client_address: pulumi.Output[str]
    dashboard_url: pulumi.Output[str]
    port_forward_command: pulumi.Output[str]
    image: pulumi.Output[str]
    worker_replicas: pulumi.Output[dict[str, int]]

    def __init__(self, name: str, settings: ClusterSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        # Inputs stay None: whatever is passed here is recorded in the state as the component's inputs.
        super().__init__("ray-cluster:index:RayCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rollout = pulumi.ResourceOptions(parent=self, custom_timeouts=_ROLLOUT_TIMEOUTS)

        namespace = self._namespace(name, settings, child)
        # Reading the name from the Namespace resource makes everything in it wait for it.
        namespace_name = namespace.metadata.name if namespace else pulumi.Output.from_input(settings.namespace)

        def metadata(resource_name: str | None, component: str, group: str) -> dict[str, object]:
            named = {"name": resource_name} if resource_name else {}
            return {**named, "namespace": namespace_name, "labels": pods.labels(settings, component, group)}

        head_service = k8s.core.v1.Service(
            f"{name}-head-service",
            metadata=metadata(settings.head_service_name, "head", "head"),
            spec={
                "type": "ClusterIP",
                "selector": pods.selector_labels(settings, "head"),
                "ports": [
                    {"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"}
                    for port_name, port in (
                        ("gcs", pods.GCS_PORT),
                        ("dashboard", pods.DASHBOARD_PORT),
                        ("client", pods.CLIENT_PORT),
                        ("metrics", pods.METRICS_PORT),
                    )
                ],
            },
            opts=child,
        )
        head = k8s.apps.v1.Deployment(
            f"{name}-head",
            metadata=metadata(settings.head_service_name, "head", "head"),
            spec={
                "replicas": 1,
                # Never two heads: a second GCS would split the cluster in two.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": pods.selector_labels(settings, "head")},
                "template": pods.head_pod_template(settings),
            },
            opts=rollout,
        )
        # Workers depend only on the namespace: they start with the head, and their init container waits for it.
        workers = [
            k8s.apps.v1.Deployment(
                f"{name}-{group.name}",
                metadata=metadata(f"{settings.cluster_name}-{group.name}", "worker", group.name),
                spec={
                    "replicas": group.replicas,
                    "selector": {"matchLabels": pods.selector_labels(settings, group.name)},
                    "template": pods.worker_pod_template(settings, group),
                },
                opts=rollout,
            )
            for group in settings.worker_groups
        ]
        if settings.test_job:
            script_name = f"{settings.cluster_name}-smoke-test"
            script = k8s.core.v1.ConfigMap(
                f"{name}-smoke-test-script",
                metadata=metadata(script_name, "smoke-test", "smoke-test"),
                data={pods.SMOKE_TEST_FILE: SMOKE_TEST_SCRIPT},
                opts=child,
            )
            k8s.batch.v1.Job(
                f"{name}-smoke-test",
                # No fixed name: a changed template replaces the immutable Job create-before-delete, so it runs again.
                metadata=metadata(None, "smoke-test", "smoke-test"),
                spec={
                    "backoffLimit": 1,
                    "activeDeadlineSeconds": _SMOKE_TEST_DEADLINE_SECONDS,
                    "template": pods.smoke_test_pod_template(
                        settings, script_config_map=script_name, script=SMOKE_TEST_SCRIPT
                    ),
                },
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[script, head_service, head, *workers],
                    custom_timeouts=pulumi.CustomTimeouts(create=f"{_SMOKE_TEST_DEADLINE_SECONDS + 60}s"),
                ),
            )

        self.namespace = namespace_name
        self.head_service_dns = pulumi.Output.from_input(settings.head_host)
        self.gcs_address = pulumi.Output.from_input(f"{settings.head_host}:{pods.GCS_PORT}")
        self.client_address = pulumi.Output.from_input(f"ray://{settings.head_host}:{pods.CLIENT_PORT}")
        self.dashboard_url = pulumi.Output.from_input(f"http://{settings.head_host}:{pods.DASHBOARD_PORT}")
        self.port_forward_command = pulumi.Output.from_input(
            f"kubectl -n {settings.namespace} port-forward service/{settings.head_service_name} "
            f"{pods.DASHBOARD_PORT}:{pods.DASHBOARD_PORT} {pods.CLIENT_PORT}:{pods.CLIENT_PORT}"
        )
        self.image = pulumi.Output.from_input(settings.image)
        self.worker_replicas = pulumi.Output.from_input({g.name: g.replicas for g in settings.worker_groups})
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
            }
        )

    def _namespace(
        self, name: str, settings: ClusterSettings, opts: pulumi.ResourceOptions
    ) -> k8s.core.v1.Namespace | None:
        """The stack's own namespace, or None to use an existing one that `pulumi destroy` must leave alone."""
        if not settings.create_namespace:
            return None
        return k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": settings.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "pulumi",
                    # Admission rejects any pod here that is not "restricted", ours included.
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
            opts=opts,
        )

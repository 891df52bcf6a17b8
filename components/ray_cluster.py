"""The RayCluster component: wires the pure builders into Kubernetes resources, every one parented to it.

Logical names derive from the component's own name only, never from config a user may change (`clusterName`,
`namespace`), so a change of config updates or replaces resources under the same URNs instead of creating new
ones that collide with, or are deleted along with, the live objects of the old ones.

The class is also the component package's (`provider/`): Pulumi's analyzer reads its constructor's `args`
annotation and its `pulumi.Output` attributes (their docstrings included) into the package's schema, which is
why this module has no `from __future__ import annotations` (the analyzer cannot resolve string annotations).
"""

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
from pulumi.provider.experimental.util import camel_case

from . import in_pod, resource_options
from .children import Child, ClusterChildren
from .config.fault_tolerance import GcsFaultTolerance
from .config.inputs import RayClusterArgs
from .config.monitoring import Monitoring
from .config.serve import ServeSettings
from .config.settings import generation_storage_namespace, load_settings
from .config.values import config_error
from .generations import digest, generation_id
from .manifests import (
    alerts,
    autoscaling,
    dashboards,
    generations,
    monitoring,
    network,
    pods,
    ray_node,
    redis,
    serve,
)

SMOKE_TEST_SCRIPT = in_pod.source(ray_node.SMOKE_TEST_FILE)


class _GcsStorage(typing.NamedTuple):
    """With GCS fault tolerance: the cluster's name in Redis, what the head must wait for (the password's Secret, a
    TLS Redis's CA, the stack's own Redis), the head's labels that roll it with the password, and the stack's own
    Redis Deployment's spec (None for an existing Redis)."""

    storage_namespace: pulumi.Output[str] | None
    resources: list[pulumi.CustomResource]
    head_labels: dict[str, Any]
    redis_spec: ray_node.Manifest | None


class RayCluster(ClusterChildren):
    """A Ray cluster: head, Service, worker groups, smoke-test Job; locked down by NetworkPolicies and token auth."""

    namespace: pulumi.Output[str]
    """The namespace of every object of the cluster."""
    head_service_dns: pulumi.Output[str]
    """The head Service's DNS name, as pods of the Kubernetes cluster reach it."""
    gcs_address: pulumi.Output[str]
    """Where `ray start --address` finds the head's GCS."""
    ray_client_address: pulumi.Output[str]
    """The Ray Client address, for `ray.init("ray://...")`."""
    dashboard_url: pulumi.Output[str]
    """The dashboard and the Jobs API (`ray job submit --address ...`)."""
    port_forward_command: pulumi.Output[str]
    """The kubectl command that brings the dashboard and the Ray Client port to localhost."""
    image: pulumi.Output[str]
    """The Ray image of the head."""
    worker_replicas: pulumi.Output[dict[str, int]]
    """Replicas of each worker group, by group name (an autoscaled group's least size)."""
    auth_token_secret: pulumi.Output[str | None]
    """The Secret holding the Ray auth token (key `token`), when tokenAuth is on."""
    gcs_storage_namespace: pulumi.Output[str | None]
    """This cluster's key prefix in Redis, when gcsFaultTolerance is on."""
    serve_url: pulumi.Output[str | None]
    """Where the Serve applications answer (`<clusterName>-serve`, port 8000), when serveApplications are given."""
    generation: pulumi.Output[str | None]
    """The generation this stack declares (upgradeStrategy `generation`), its pods' generation label."""
    generations_command: pulumi.Output[str | None]
    """With upgradeStrategy `generation`: the kubectl command that lists the generations that run, draining ones too."""
    head_service: pulumi.Output[k8s.core.v1.Service]
    """The head's Service (`<clusterName>-head`), for resources that must wait for it or read it."""
    head_deployment: pulumi.Output[k8s.apps.v1.Deployment]
    """The head's Deployment (`<clusterName>-head`), for resources that must wait for it or read it."""
    worker_deployments: pulumi.Output[dict[str, k8s.apps.v1.Deployment]]
    """Each worker group's Deployment (`<clusterName>-<group>`), by group name."""

    # With generations and GCS fault tolerance: the cluster's storage namespace, which each generation's extends.
    _storage_base: pulumi.Output[str] | None = None

    def __init__(self, name: str, args: RayClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        """`args` are the stack config's keys (`inputs.from_stack_config`), or a package consumer's inputs: every
        value is checked before anything is declared. Without `authToken`, a token is generated once per stack;
        without `redisPassword`, a password for the stack's own Redis."""
        settings = load_settings(args, pulumi.get_project(), pulumi.get_stack())
        # Inputs stay None: whatever is passed here is recorded in the state as the component's inputs.
        super().__init__("ray-cluster:index:RayCluster", name, None, opts)
        self._name, self._settings = name, settings
        for warning in settings.warnings():
            pulumi.log.warn(warning, resource=self)
        self._namespace = self._declare_namespace()
        self._access, version_labels, token = self._access_objects(args.get("authToken"))
        gcs = self._gcs(args.get("redisPassword"))
        head_labels = {**version_labels, **gcs.head_labels}
        storage_namespace = gcs.storage_namespace
        if settings.generational:
            storage_namespace = self._begin_generation(
                head_labels, version_labels, storage_namespace, token, [*self._access, *gcs.resources]
            )
        head_service, head_service_spec = self._head_service(settings.generation_service_name)
        autoscaler = self._autoscaler(head_service) if settings.autoscaling else []
        serve_access = self._serve_access(settings.serve) if settings.serve else []
        # Only the head reads the Redis password. With fault tolerance, the GCS starts against a Redis that is
        # ready; its sidecars start with their config, their ServiceAccount and their permissions.
        head, head_spec = self._head(head_labels, storage_namespace, after=[*gcs.resources, *autoscaler, *serve_access])
        workers, worker_specs = self._workers(version_labels)
        proofs: list[pulumi.CustomResource] = []
        if settings.test_job:
            running = {"head-service": head_service_spec, "head": head_spec, "workers": worker_specs}
            if gcs.redis_spec:
                running["redis"] = gcs.redis_spec
            cluster = [*self._access, *gcs.resources, *autoscaler, head_service, head, *workers.values()]
            proofs.append(self._smoke_test(cluster, digest(running)))
        if settings.serve:
            proofs.append(self._serve_check(settings.serve, [*self._access, *serve_access, head, *workers.values()]))
        if settings.generational:
            # The clients' Services move to this generation only once it is proven (or, without a smoke test, has
            # rolled out): a generation that fails leaves them on the last one, which goes on answering.
            proven = proofs or [head, *workers.values()]
            head_service = self._clients_head_service(head_service_spec, proven)
            self._retirement([head_service, *([self._serve_service(proven)] if settings.serve else [])])
        if settings.monitoring:
            self._monitoring(settings.monitoring)
        if settings.grafana_dashboards:
            self._grafana_dashboards()
        self._set_outputs(storage_namespace)
        # The children a consumer may depend on (as Pulumi's own component examples keep them).
        self.head_service = pulumi.Output.from_input(head_service)
        self.head_deployment = pulumi.Output.from_input(head)
        self.worker_deployments = pulumi.Output.from_input(workers)
        self.register_outputs(self.outputs_by_name())

    def _begin_generation(
        self,
        head_labels: Mapping[str, Any],
        version_labels: Mapping[str, Any],
        storage_namespace: pulumi.Output[str] | None,
        token: pulumi.Output[str] | None,
        needed: list[pulumi.CustomResource],
    ) -> pulumi.Output[str] | None:
        """With generations, before any of a generation's objects: its id, from its Ray pods' templates; the anchor
        that owns every generation, made after what their pods `needed` (so deleted before it: `pulumi destroy`
        deletes the Redis and the policies only once every generation's pods are gone); the Secret its pods read the
        token from; and its GCS storage namespace (returned)."""
        templates = {
            "head": self._head_template(head_labels, storage_namespace),
            **self._worker_templates(version_labels),
        }
        self._generation = generation_id(self._name, templates, self)
        # Deleted with Foreground propagation, it waits for every generation it owns, their pods' drains included.
        anchor = self._child(
            k8s.core.v1.ConfigMap,
            "generations-anchor",
            self._settings.anchor_name,
            "generations",
            data=generations.anchor_data(self._settings),
            opts=pulumi.ResourceOptions(
                depends_on=needed,
                custom_timeouts=pulumi.CustomTimeouts(
                    delete=resource_options.delete_timeout(pods.worker_grace_seconds(self._settings))
                ),
            ),
        )
        self._anchor_uid = anchor.metadata.uid
        if token is not None:
            # A new token reaches no pod of the generation it replaces, which answers with the old one until it goes.
            self._access.append(
                self._token_secret("generation-auth-token-secret", self._settings.pod_auth_secret_name, token)
            )
        if storage_namespace is None:
            return None
        # Each generation's GCS keeps its own state in the Redis: a new head starts beside the old one.
        self._storage_base = storage_namespace
        return pulumi.Output.all(storage_namespace, self._generation).apply(
            lambda names: generation_storage_namespace(*names)
        )

    def _retirement(self, clients_services: list[pulumi.CustomResource]) -> None:
        """The Job that retires the generations this one replaced, once the `clients_services` (`<cluster>-head`,
        and `<cluster>-serve` with Serve) have moved to this one: created
        after the switch, not awaited (`pulumi up` returns while the old generations drain), under a Role that lets
        it delete them."""
        settings = self._settings
        name = settings.retirement_name
        program = self._child(
            k8s.core.v1.ConfigMap,
            "retirement-program",
            name,
            "retirement",
            data=generations.retirement_files(settings, in_pod.source(generations.RETIREMENT_FILE)),
        )
        access = self._api_access("retirement", name, generations.retirement_role_rules(settings), name, "retirement")
        # Not retained: the next generation's retirement takes over its work, and Pulumi deletes it once that one runs.
        self._child(
            k8s.batch.v1.Job,
            "retirement",
            generations.retirement_job_name(settings),
            "retirement",
            drains=False,
            annotations=resource_options.RUNS_AFTER_UP,
            spec=generations.retirement_job_spec(settings, name, self._storage_base),
            opts=pulumi.ResourceOptions(depends_on=[*clients_services, program, *access]),
        )

    def _monitoring(self, settings: Monitoring) -> None:
        """The prometheus-operator's objects: the PodMonitor of the Ray pods (and of the stack's own Redis's
        exporter) and the cluster's alerting rules. The
        provider awaits no custom resource, and Prometheus finds the pods whenever they come: nothing waits for
        them, nor they for anything."""
        labels = monitoring.object_labels(self._settings, settings)
        monitors = [("pod-monitor", self._settings.cluster_name, monitoring.pod_monitor_spec(self._settings))]
        redis_monitor = monitoring.redis_pod_monitor_spec(self._settings)
        if redis_monitor is not None:
            monitors.append(("redis-pod-monitor", self._settings.redis_name, redis_monitor))
        for logical_name, name, spec in monitors:
            self._child(
                _custom_resource(monitoring.API_VERSION, "PodMonitor"),
                logical_name,
                name,
                "monitoring",
                labels=labels,
                spec=spec,
            )
        self._child(
            _custom_resource(monitoring.API_VERSION, "PrometheusRule"),
            "alerts",
            f"{self._settings.cluster_name}-alerts",
            "monitoring",
            labels=labels,
            spec=alerts.prometheus_rule_spec(self._settings, settings),
        )

    def _grafana_dashboards(self) -> None:
        """One ConfigMap per Ray dashboard, for Grafana's sidecar; nothing waits for them."""
        labels = {**pods.labels(self._settings, "monitoring", "monitoring"), **dashboards.SIDECAR_LABEL}
        for name, text in dashboards.dashboards().items():
            suffix = name.replace("_", "-")
            self._child(
                k8s.core.v1.ConfigMap,
                f"dashboard-{suffix}",
                f"{self._settings.cluster_name}-dashboard-{suffix}",
                "monitoring",
                labels=labels,
                data={dashboards.file_name(name): text},
            )

    def _access_objects(
        self, auth_token: pulumi.Input[str] | None
    ) -> tuple[list[pulumi.CustomResource], dict[str, Any], pulumi.Output[str] | None]:
        """What every Ray pod needs before it starts: its ServiceAccount, the NetworkPolicies and, with token auth,
        the token's Secret; the pod template labels that roll the pods when the token changes; and the token."""
        settings = self._settings
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
        if not settings.token_auth:
            return access, version_labels, None
        token = self._secret("auth-token", auth_token, 48)
        access.append(self._token_secret("auth-token-secret", settings.auth_secret_name, token))
        version_labels[ray_node.TOKEN_VERSION_LABEL] = self._secret_version("auth-token", token=token)
        return access, version_labels, token

    def _gcs(self, given_password: pulumi.Input[str] | None) -> _GcsStorage:
        """With GCS fault tolerance, where the head keeps the cluster's state (see `_gcs_storage`); else nothing."""
        fault_tolerance = self._settings.fault_tolerance
        if fault_tolerance is None:
            return _GcsStorage(None, [], {}, None)
        storage_namespace = self._storage_namespace()
        resources, head_labels, redis_spec = self._gcs_storage(fault_tolerance, given_password)
        return _GcsStorage(storage_namespace, resources, head_labels, redis_spec)

    def _head_service(self, service_name: str) -> tuple[k8s.core.v1.Service, ray_node.Manifest]:
        """How this generation's workers and smoke test reach its head, and its spec: in place the clients'
        `<cluster>-head` too; with generations `<cluster>-<id>`, the generation's own."""
        settings = self._settings
        spec = {
            "type": "ClusterIP",
            "selector": pods.generation_selector(settings, "head"),
            "ports": network.head_service_ports(),
            # The head's name resolves as soon as its pod runs, not once its dashboard is ready: the workers'
            # init containers check the GCS themselves, so they join seconds earlier.
            "publishNotReadyAddresses": True,
        }
        logical_name, annotations = "head-service", None
        if settings.generational:
            logical_name, annotations = "generation-service", resource_options.OWNS_WHAT_ITS_HEAD_NEEDS
        service = self._child(
            k8s.core.v1.Service, logical_name, service_name, "head", spec=spec, annotations=annotations
        )
        return service, spec

    def _clients_head_service(
        self, spec: ray_node.Manifest, proofs: list[pulumi.CustomResource]
    ) -> pulumi.CustomResource:
        """With generations, `<cluster>-head`, which clients reach the dashboard, the Jobs API and Ray Client
        through: it selects the generation once the `proofs` are done, an update of its selector in place."""
        service: pulumi.CustomResource = self._child(
            k8s.core.v1.Service,
            "head-service",
            self._settings.head_service_name,
            "head",
            spec=spec,
            opts=pulumi.ResourceOptions(depends_on=proofs),
        )
        return service

    def _head_template(self, version_labels: Mapping[str, Any], storage_namespace: Any) -> ray_node.Manifest:
        settings = self._settings
        sidecars = (
            *([autoscaling.sidecar(settings)] if settings.autoscaling else []),
            *([serve.sidecar(settings)] if settings.serve else []),
        )
        return pods.head_pod_template(settings, version_labels, storage_namespace, sidecars)

    def _head(
        self, version_labels: Mapping[str, Any], storage_namespace: Any, after: list[pulumi.CustomResource]
    ) -> tuple[pulumi.CustomResource, ray_node.Manifest]:
        """`<cluster>-head`, one pod, recreated rather than rolled (never two heads of a generation: a second GCS
        would split the cluster in two), created once what it needs (`after`) exists; and its spec."""
        template = self._head_template(version_labels, storage_namespace)
        spec = {**self._deployment_spec("head", 1, template), "strategy": {"type": "Recreate"}}
        return self._deployment("head", "head", spec, resource_options.PULL_SECONDS, after=after), spec

    def _worker_templates(self, version_labels: Mapping[str, Any]) -> dict[str, ray_node.Manifest]:
        settings = self._settings
        return {
            group.name: pods.worker_pod_template(settings, group, version_labels) for group in settings.worker_groups
        }

    def _workers(
        self, version_labels: Mapping[str, Any]
    ) -> tuple[dict[str, pulumi.CustomResource], dict[str, ray_node.Manifest]]:
        """`<cluster>-<group>` for each worker group, by group name, and their specs. They do not wait for the head:
        their pods are placed once its pod is, and their init container waits for its GCS."""
        settings = self._settings
        groups = {group.name: group for group in settings.worker_groups}
        specs = {
            name: {
                **self._deployment_spec(name, groups[name].replicas, template),
                "strategy": pods.WORKER_ROLLOUT,
                "progressDeadlineSeconds": pods.worker_progress_deadline_seconds(settings),
            }
            for name, template in self._worker_templates(version_labels).items()
        }
        # Every round of a rollout may wait for its workers' drain.
        rollout = resource_options.PULL_SECONDS + pods.WORKER_ROLLOUT_ROUNDS * pods.worker_grace_seconds(settings)
        autoscaled = {group.name for group in settings.worker_groups if group.autoscaled}
        deployments = {
            group: self._deployment(group, "worker", spec, rollout, autoscaled=group in autoscaled)
            for group, spec in specs.items()
        }
        return deployments, specs

    def _set_outputs(self, storage_namespace: pulumi.Output[str] | None) -> None:
        """How to reach the cluster, and what it is made of."""
        settings = self._settings
        host = settings.client_host
        self.namespace = self._namespace
        self.head_service_dns = pulumi.Output.from_input(host)
        self.gcs_address = pulumi.Output.from_input(f"{host}:{ray_node.GCS_PORT}")
        self.ray_client_address = pulumi.Output.from_input(f"ray://{host}:{ray_node.CLIENT_PORT}")
        self.dashboard_url = pulumi.Output.from_input(f"http://{host}:{ray_node.DASHBOARD_PORT}")
        self.port_forward_command = pulumi.Output.from_input(
            f"kubectl -n {settings.namespace} port-forward service/{settings.head_service_name} "
            f"{ray_node.DASHBOARD_PORT}:{ray_node.DASHBOARD_PORT} {ray_node.CLIENT_PORT}:{ray_node.CLIENT_PORT}"
        )
        self.image = pulumi.Output.from_input(settings.image)
        self.worker_replicas = pulumi.Output.from_input({g.name: g.replicas for g in settings.worker_groups})
        self.auth_token_secret = pulumi.Output.from_input(settings.auth_secret_name if settings.token_auth else None)
        self.gcs_storage_namespace = pulumi.Output.from_input(storage_namespace)
        self.serve_url = pulumi.Output.from_input(serve.url(settings) if settings.serve else None)
        self.generation = pulumi.Output.from_input(self._generation)
        self.generations_command = pulumi.Output.from_input(
            generations.generations_command(settings) if settings.generational else None
        )

    def outputs_by_name(self) -> dict[str, pulumi.Output[Any]]:
        """The outputs under their names in the package's schema (the attributes' names in camelCase, by the
        analyzer's own rule)."""
        return {camel_case(name): getattr(self, name) for name in OUTPUT_ATTRIBUTES}

    def stack_outputs(self) -> dict[str, pulumi.Output[Any]]:
        """What a stack of this project exports: the outputs but the children (whole objects, for other
        resources to depend on, not for `pulumi stack output`)."""
        return {camel_case(name): getattr(self, name) for name in OUTPUT_ATTRIBUTES if name not in CHILD_OUTPUTS}

    def _autoscaler(self, head_service: k8s.core.v1.Service) -> list[pulumi.CustomResource]:
        """What the head's autoscaler container needs: its config and node provider, and a ServiceAccount bound
        to a Role that lets it scale the autoscaled worker Deployments and remove their idle pods. With generations,
        each generation's own, owned by its `head_service`: the garbage collector deletes them once the retirement
        has deleted that Service."""
        settings = self._settings
        name = autoscaling.name(settings)
        owner = (
            generations.owner_reference("Service", settings.generation_service_name, head_service.metadata.uid)
            if settings.generational
            else None
        )
        provider_source = in_pod.source(autoscaling.PROVIDER_SOURCE)
        files = self._child(
            k8s.core.v1.ConfigMap,
            "autoscaler-config",
            name,
            "autoscaler",
            "head",
            data=autoscaling.config_files(settings, provider_source),
            owner=owner,
        )
        return [files, *self._api_access("autoscaler", name, autoscaling.role_rules(settings), name, owner=owner)]

    def _serve_access(self, serve_settings: ServeSettings) -> list[pulumi.CustomResource]:
        """What the head's Serve keeper needs: the Serve config, the Service whose endpoints it writes, and a Role
        for both bound to the head's ServiceAccount (its own, unless the autoscaler's is the head's)."""
        settings = self._settings
        name = serve.name(settings)
        files = self._child(
            k8s.core.v1.ConfigMap, "serve-config", name, "serve", "head", data=serve.config_files(serve_settings)
        )
        # With generations, the Service comes once the generation is proven (its annotation names the generation
        # whose keeper writes its endpoints); a keeper waits for it.
        service = [] if settings.generational else [self._serve_service([])]
        rules = serve.role_rules(settings)
        return [files, *service, *self._api_access("serve", name, rules, serve.service_account(settings))]

    def _serve_service(self, after: list[pulumi.CustomResource]) -> pulumi.CustomResource:
        """`<cluster>-serve`, whose endpoints the keeper writes (with generations, the keeper of the generation its
        annotation names, made or moved `after` that generation's proofs)."""
        service: pulumi.CustomResource = self._child(
            k8s.core.v1.Service,
            "serve-service",
            serve.name(self._settings),
            "serve",
            "head",
            annotations={**resource_options.ENDPOINTS_WRITTEN_LATER, **serve.service_annotations(self._settings)},
            spec=serve.service_spec(),
            opts=pulumi.ResourceOptions(depends_on=after),
        )
        return service

    def _serve_check(
        self, serve_settings: ServeSettings, cluster: list[pulumi.CustomResource]
    ) -> pulumi.CustomResource:
        """The Job that applies the Serve config and fails `pulumi up` unless every application runs with it."""
        template = serve.check_pod_template(self._settings, serve_settings)
        return self._proving_job("serve-check", template, 0, serve.CHECK_DEADLINE_SECONDS, cluster)

    def _declare_namespace(self) -> pulumi.Output[str]:
        """The stack's own namespace, or an existing one, read rather than managed, under the same logical name:
        switching `createNamespace` from true to false then releases the namespace (the engine's "relinquish":
        the same object, no delete), and from false to true adopts it, instead of deleting the namespace with the
        cluster in it or failing on a name that exists."""
        settings = self._settings
        logical_name = f"{self._name}-namespace"
        if not settings.create_namespace:
            existing = k8s.core.v1.Namespace.get(
                logical_name, settings.namespace, opts=pulumi.ResourceOptions(parent=self)
            )
            read: pulumi.Output[str] = existing.id.apply(lambda _: settings.namespace)
            return read
        # Deleting the namespace deletes every pod in it, the workers' drains included.
        delete = resource_options.delete_timeout(pods.worker_grace_seconds(settings))
        namespace = k8s.core.v1.Namespace(
            logical_name,
            metadata={
                "name": settings.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "pulumi",
                    # Admission rejects any pod here that is not "restricted", ours included.
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
                "annotations": resource_options.PULUMI_OWNS_ITS_FIELDS,
            },
            opts=pulumi.ResourceOptions(parent=self, custom_timeouts=pulumi.CustomTimeouts(delete=delete)),
        )
        name: pulumi.Output[str] = namespace.metadata.name
        return name

    def _network_policies(self) -> list[pulumi.CustomResource]:
        settings = self._settings
        specs = {
            "internal-traffic": ("internal", network.internal_policy_spec(settings)),
            "client-traffic": ("clients", network.client_policy_spec(settings)),
            "metrics-traffic": ("metrics", network.metrics_policy_spec(settings)),
            "serve-traffic": ("serve", network.serve_policy_spec(settings)),
        }
        return [
            self._child(
                k8s.networking.v1.NetworkPolicy, suffix, f"{settings.cluster_name}-{name}", "cluster", spec=spec
            )
            for suffix, (name, spec) in specs.items()
            if spec
        ]

    def _token_secret(self, suffix: str, name: str, token: pulumi.Output[str]) -> pulumi.CustomResource:
        """A Secret with the token (generated unless the stack config gives one), which Ray processes read from a
        mounted file and clients with kubectl."""
        secret: pulumi.CustomResource = self._child(
            k8s.core.v1.Secret, suffix, name, "cluster", type="Opaque", string_data={ray_node.AUTH_TOKEN_KEY: token}
        )
        return secret

    def _storage_namespace(self) -> pulumi.Output[str]:
        """This cluster's name in Redis: stable through every head restart, drawn anew for a cluster of another
        name or namespace (a rename runs the new cluster beside the old one for a while: they must not share
        state), and for a cluster made again after `pulumi destroy`, so that no cluster resumes another's state."""
        settings = self._settings
        cluster_id = random.RandomId(
            f"{self._name}-gcs-storage-namespace",
            byte_length=8,
            keepers={"clusterName": settings.cluster_name, "namespace": settings.namespace},
            opts=pulumi.ResourceOptions(parent=self),
        )
        namespace: pulumi.Output[str] = cluster_id.hex.apply(lambda hex_id: f"{settings.cluster_name}-{hex_id}")
        return namespace

    def _gcs_storage(
        self, fault_tolerance: GcsFaultTolerance, given_password: pulumi.Input[str] | None
    ) -> tuple[list[pulumi.CustomResource], dict[str, Any], ray_node.Manifest | None]:
        """What the head reads to reach its Redis: the password's Secret (if Ray is given one) and a TLS Redis's
        CA; and, without an existing Redis, the stack's own: its claim, Deployment, Service and NetworkPolicy.
        Returns what the head must wait for, the head's version labels (the password's), and the Redis
        Deployment's spec (None for an existing Redis)."""
        settings = self._settings
        labels = redis.labels(settings)

        def child(kind: Callable[..., Child], suffix: str, name: str | None, **fields: Any) -> Child:
            """A child of the Redis's own, labelled as Redis, not as a Ray pod."""
            return self._child(kind, suffix, name, "gcs-storage", labels=labels, **fields)

        needed: list[pulumi.CustomResource] = []
        if fault_tolerance.ca_cert:
            ca = child(
                k8s.core.v1.ConfigMap, "redis-ca", redis.ca_name(settings), data={redis.CA_KEY: fault_tolerance.ca_cert}
            )
            needed.append(ca)
        if fault_tolerance.external_address and not fault_tolerance.authenticates:
            return needed, {}, None
        if fault_tolerance.external_address:
            password: pulumi.Output[str] = pulumi.Output.secret(
                pulumi.Output.from_input(given_password).apply(_existing_redis_password)
            )
            data: dict[str, pulumi.Input[str]] = {redis.PASSWORD_KEY: password}
        else:
            password = self._secret("redis-password", given_password, 32)
            data = {
                redis.PASSWORD_KEY: password,
                redis.CONFIG_KEY: password.apply(lambda text: redis.config_file(text, fault_tolerance)),
            }
        password_version = self._secret_version("redis-password", password=password)
        secret = child(k8s.core.v1.Secret, "redis-secret", settings.redis_name, type="Opaque", string_data=data)
        needed.append(secret)
        head_labels = {redis.PASSWORD_VERSION_LABEL: password_version}
        if fault_tolerance.external_address:
            return needed, head_labels, None
        claim = child(
            k8s.core.v1.PersistentVolumeClaim,
            "redis-data",
            # No fixed name: a change the API server refuses in place (the storage class) replaces the claim
            # create-before-delete, the Redis pod moves to the new one, and the old one is deleted once free.
            None,
            annotations=resource_options.CLAIM_BINDS_WITH_ITS_POD,
            spec=redis.claim_spec(fault_tolerance),
            opts=pulumi.ResourceOptions(replace_on_changes=[resource_options.CLAIM_OF_ONE_CLUSTER]),
        )
        spec = redis.deployment_spec(settings, fault_tolerance, password_version, claim.metadata.name)
        deployment = self._deployment(
            "redis",
            "gcs-storage",
            spec,
            resource_options.PULL_SECONDS,
            after=[secret, claim],
            labels=labels,
            name=settings.redis_name,
        )
        service = child(k8s.core.v1.Service, "redis-service", settings.redis_name, spec=redis.service_spec(settings))
        policy = child(
            k8s.networking.v1.NetworkPolicy,
            "redis-traffic",
            settings.redis_name,
            spec=network.redis_policy_spec(settings),
        )
        return [*needed, claim, deployment, service, policy], head_labels, spec

    def _smoke_test(
        self, cluster: list[pulumi.CustomResource], cluster_digest: pulumi.Output[str]
    ) -> pulumi.CustomResource:
        settings = self._settings
        script_name = f"{settings.cluster_name}-smoke-test"
        script = self._child(
            k8s.core.v1.ConfigMap,
            "smoke-test-script",
            script_name,
            "smoke-test",
            data={ray_node.SMOKE_TEST_FILE: SMOKE_TEST_SCRIPT},
        )
        template = pods.smoke_test_pod_template(
            settings, script_config_map=script_name, script=SMOKE_TEST_SCRIPT, cluster_digest=cluster_digest
        )
        return self._proving_job(
            "smoke-test", template, 1, resource_options.SMOKE_TEST_DEADLINE_SECONDS, [script, *cluster]
        )


def _existing_redis_password(given: object) -> str:
    """An existing Redis's password as given. A secret Output cannot be read before it is used, so an empty one
    (which the stack config leaves out, but a package consumer may send) is refused only when it resolves."""
    password = str(given)
    if not password:
        raise config_error(
            "redisPassword", "", "given as a secret, it must not be empty: leave it out for a Redis without a password"
        )
    return password


# The component's outputs: its `pulumi.Output` attributes, as Pulumi's analyzer finds them for the package's schema.
def _is_output(annotation: object) -> bool:
    origin: object = typing.get_origin(annotation)
    return origin is pulumi.Output


OUTPUT_ATTRIBUTES = tuple(name for name, kind in inspect.get_annotations(RayCluster).items() if _is_output(kind))
CHILD_OUTPUTS = ("head_service", "head_deployment", "worker_deployments")


def _custom_resource(api_version: str, kind: str) -> Callable[..., k8s.apiextensions.CustomResource]:
    """A kind of custom resource, declared as its built-in kinds are (name, metadata, spec, options)."""

    def declare(resource_name: str, **fields: Any) -> k8s.apiextensions.CustomResource:
        return k8s.apiextensions.CustomResource(resource_name, api_version=api_version, kind=kind, **fields)

    return declare

"""The component's inputs -> one validated, immutable description of the cluster.

Every value is checked here, before any resource is declared, so that a typo fails `pulumi up` with a message
naming the key, the value and what is allowed, instead of a half-created cluster. Inputs come as the stack's
config (`inputs.from_stack_config`) or from a program in another language through the component package; a key
not given takes its default from `Pulumi.yaml`; only values that depend on the stack are derived here. Each
concern checks its own keys: values.py (single values), resources.py, images.py, groups.py, fault_tolerance.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..manifests import sizing
from .fault_tolerance import (
    FAULT_TOLERANT_RECONNECT_SECONDS,
    GcsFaultTolerance,
    fault_tolerance_settings,
    reconnect_seconds,
)
from .groups import Autoscaling, WorkerGroup, autoscaler_settings, worker_groups
from .images import require_image
from .monitoring import MetricsViews, Monitoring, metrics_views, monitoring_settings
from .resources import PodResources
from .serve import ServeSettings, serve_settings
from .values import (
    DNS_LABEL,
    MAX_NAME,
    PROJECT,
    Inputs,
    config_error,
    require_cidr,
    require_dns_label,
    require_label_list,
    require_list,
    require_seconds,
)

_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

_NOT_IN_LABEL = re.compile(r"[^a-z0-9-]+")

# Leaves room for the suffixes of every name derived from it (`-worker`, `-internal`, ...); tests check them all.
_MAX_CLUSTER_NAME = 53

# How a change that needs new Ray pods reaches the cluster (docs/upgrades.md): `inPlace` restarts the head and rolls
# the workers; `generation` starts a new generation beside the old one and switches the clients to it once proven.
UPGRADE_STRATEGIES = ("inPlace", "generation")
# Stands for the generation's id in what the builders make (names, labels, addresses) until the component knows
# the id, which is drawn from a digest of those very pod templates (`components/generations.py`).
GENERATION_MARK = "<generation-id>"  # no name, label, image or address can hold "<" or ">"
GENERATION_LABEL = "ray-cluster.pulumi.com/generation"
# `<cluster>-<id>`: a generation's own head Service; its id is 8 hex digits.
GENERATION_ID_LENGTH = 8


def generation_storage_namespace(base: str, generation: str) -> str:
    """A generation's GCS storage namespace in the Redis: the cluster's, with the generation's id."""
    return f"{base}-{generation}"


# How long an old generation's running jobs may take to finish after a switch, at most (`upgradeDrainSeconds`).
MAX_UPGRADE_DRAIN_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class ClusterSettings:
    cluster_name: str
    namespace: str
    create_namespace: bool
    image: str
    head: PodResources
    worker_groups: tuple[WorkerGroup, ...]
    test_job: bool
    token_auth: bool
    client_namespaces: tuple[str, ...]
    client_cidrs: tuple[str, ...]
    metrics_namespaces: tuple[str, ...]
    gcs_reconnect_timeout_seconds: int
    worker_drain_seconds: int
    fault_tolerance: GcsFaultTolerance | None = None
    autoscaling: Autoscaling | None = None
    serve: ServeSettings | None = None
    monitoring: Monitoring | None = None
    metrics_views: MetricsViews = field(default_factory=MetricsViews)
    grafana_dashboards: bool = False
    upgrade_strategy: str = "inPlace"
    upgrade_drain_seconds: int = 3600

    @property
    def generational(self) -> bool:
        """Changes that need new Ray pods start a new generation (upgradeStrategy `generation`)."""
        return self.upgrade_strategy == "generation"

    @property
    def generation_labels(self) -> dict[str, str]:
        """The labels that tell one generation's Ray pods from another's (none in place)."""
        return {GENERATION_LABEL: GENERATION_MARK} if self.generational else {}

    @property
    def own_redis(self) -> GcsFaultTolerance | None:
        """The fault tolerance settings when the stack runs its own Redis (None without fault tolerance, or with an
        existing Redis, which is whoever runs it's to guard and watch)."""
        fault_tolerance = self.fault_tolerance
        return fault_tolerance if fault_tolerance is not None and not fault_tolerance.external_address else None

    @property
    def head_service_name(self) -> str:
        """`<cluster>-head`: the Service clients reach the dashboard, the Jobs API and Ray Client through."""
        return f"{self.cluster_name}-head"

    @property
    def generation_service_name(self) -> str:
        """The Service of this generation's head, which its workers and its smoke test reach: `<cluster>-<id>`
        with generations, else the clients' own."""
        return f"{self.cluster_name}-{GENERATION_MARK}" if self.generational else self.head_service_name

    @property
    def head_host(self) -> str:
        """The DNS name of this generation's head Service; `.svc` resolves through every pod's search path, whatever
        the cluster domain."""
        return f"{self.generation_service_name}.{self.namespace}.svc"

    @property
    def client_host(self) -> str:
        """The DNS name of the clients' head Service (`<cluster>-head`)."""
        return f"{self.head_service_name}.{self.namespace}.svc"

    def deployment_name(self, group: str) -> str:
        """`<cluster>-<group>`: the Deployment of a worker group or of the head (`head`); with generations
        `<cluster>-<group>-<id>`."""
        suffix = f"-{GENERATION_MARK}" if self.generational else ""
        return f"{self.cluster_name}-{group}{suffix}"

    @property
    def serve_service_name(self) -> str:
        """`<cluster>-serve`: the Service of the Serve applications; its EndpointSlice has the same name."""
        return f"{self.cluster_name}-serve"

    @property
    def auth_secret_name(self) -> str:
        """The Secret clients read the token from (`<cluster>-auth-token`)."""
        return f"{self.cluster_name}-auth-token"

    @property
    def pod_auth_secret_name(self) -> str:
        """The Secret this generation's pods read the token from: with generations its own (`<cluster>-auth-token-
        <id>`), so that a new token reaches no pod of the generation it replaces; else the clients'."""
        suffix = f"-{GENERATION_MARK}" if self.generational else ""
        return f"{self.auth_secret_name}{suffix}"

    @property
    def anchor_name(self) -> str:
        """`<cluster>-generations`: the ConfigMap that owns every generation's objects, so that deleting it (`pulumi
        destroy`) deletes the generations Pulumi no longer tracks (they are retained on delete)."""
        return f"{self.cluster_name}-generations"

    @property
    def retirement_name(self) -> str:
        """`<cluster>-retire`: the retirement Jobs' ServiceAccount, Role and script; each Job is named as its
        generation's head Service, `<cluster>-<id>`."""
        return f"{self.cluster_name}-retire"

    @property
    def redis_name(self) -> str:
        """Names the stack's own Redis (Deployment, Service) and the Secret with the password of either Redis."""
        return f"{self.cluster_name}-redis"

    @property
    def total_workers(self) -> int:
        """The workers there are without autoscaling, and the fewest there are with it."""
        return sum(group.replicas for group in self.worker_groups)

    @property
    def most_workers(self) -> int:
        return sum(group.most_replicas for group in self.worker_groups)

    def warnings(self) -> list[str]:
        """What works but is likely to hurt: reported by the component on every `pulumi up`."""
        found = []
        if self.head.memory_bytes < sizing.RECOMMENDED_HEAD_MEMORY_BYTES:
            recommended = sizing.RECOMMENDED_HEAD_MEMORY_BYTES // 2**30
            found.append(
                f"{PROJECT}:headMemory is {self.head.memory!r}: the head's own Ray processes (GCS, dashboard, Ray "
                f"Client server, raylet, agents) use about 1 GiB before any work, so a head below {recommended}Gi is "
                "likely to be OOM-killed, and every worker with it"
            )
        if self.fault_tolerance and self.gcs_reconnect_timeout_seconds < FAULT_TOLERANT_RECONNECT_SECONDS:
            found.append(
                f"{PROJECT}:gcsReconnectTimeoutSeconds is {self.gcs_reconnect_timeout_seconds}: with "
                "gcsFaultTolerance, workers that give up on a lost head sooner than it comes back (a lost node's "
                "pods are rescheduled after about 5 minutes, then the image is pulled) exit and lose their tasks "
                f"and actors; 0 waits {FAULT_TOLERANT_RECONNECT_SECONDS} s"
            )
        return found


def _require_cluster_name(value: object) -> str:
    if not isinstance(value, str) or len(value) > _MAX_CLUSTER_NAME or not _DNS_1035_LABEL.match(value):
        raise config_error(
            "clusterName",
            value,
            "it must start with a letter and hold only lower-case letters, digits and '-', at most "
            f"{_MAX_CLUSTER_NAME} characters (it names the head Service, which Kubernetes requires to start "
            "with a letter)",
        )
    return value


def default_namespace(project: str, stack: str) -> str:
    """`ray-<stack>`, only for a stack name that is a namespace name as it is: deriving one from `Dev` or `a_b`
    would give `dev` and `a-b` the same namespace. A copy of this program under another project name gets a
    suffix from the project's name, so its `dev` stack does not land in this project's `ray-dev`."""
    suffix = "" if project == PROJECT else "-" + hashlib.sha256(project.encode()).hexdigest()[:6]
    longest = MAX_NAME - len("ray-") - len(suffix)
    if len(stack) > longest or not DNS_LABEL.match(stack):
        example = _NOT_IN_LABEL.sub("-", stack.lower()).strip("-")[:longest] or "dev"
        raise config_error(
            "namespace",
            "",
            f"the stack {stack!r} is not a namespace name as it is (lower-case letters, digits and '-', at most "
            f"{longest} characters), so none is derived from it: set one, e.g. "
            f"`pulumi config set namespace ray-{example}`",
        )
    return f"ray-{stack}{suffix}"


def load_settings(args: Mapping[str, object], project: str, stack: str) -> ClusterSettings:
    """Read and check every input (`RayClusterArgs`); raises pulumi.RunError on the first bad value."""
    inputs = Inputs(args)
    cluster_name = _require_cluster_name(inputs.text("clusterName"))
    namespace = inputs.text("namespace") or default_namespace(project, stack)
    image = require_image("image", inputs.text("image"))
    groups = worker_groups(inputs, cluster_name, image)
    namespace = require_dns_label("namespace", namespace)
    fault_tolerance = fault_tolerance_settings(inputs, groups)
    metrics_namespaces = require_label_list(inputs, "allowedMetricsNamespaces")
    autoscaling, serve = autoscaler_settings(inputs, groups), serve_settings(inputs)
    return ClusterSettings(
        cluster_name=cluster_name,
        namespace=namespace,
        create_namespace=inputs.boolean("createNamespace"),
        image=image,
        head=PodResources.parse(
            lambda name: f"head{name.capitalize()}", inputs.text("headCpu"), inputs.text("headMemory")
        ),
        worker_groups=groups,
        test_job=inputs.boolean("testJob"),
        token_auth=inputs.boolean("tokenAuth"),
        client_namespaces=require_label_list(inputs, "allowedClientNamespaces"),
        client_cidrs=tuple(
            require_cidr(f"allowedClientCidrs[{i}]", value)
            for i, value in enumerate(require_list("allowedClientCidrs", inputs.value("allowedClientCidrs")))
        ),
        metrics_namespaces=metrics_namespaces,
        gcs_reconnect_timeout_seconds=reconnect_seconds(inputs, fault_tolerance is not None),
        worker_drain_seconds=require_seconds("workerDrainSeconds", inputs.integer("workerDrainSeconds"), 0, 3600),
        fault_tolerance=fault_tolerance,
        autoscaling=autoscaling,
        serve=serve,
        monitoring=monitoring_settings(inputs, metrics_namespaces),
        metrics_views=metrics_views(inputs),
        grafana_dashboards=inputs.boolean("grafanaDashboards"),
        upgrade_strategy=_upgrade_strategy(inputs.text("upgradeStrategy")),
        upgrade_drain_seconds=require_seconds(
            "upgradeDrainSeconds", inputs.integer("upgradeDrainSeconds"), 0, MAX_UPGRADE_DRAIN_SECONDS
        ),
    )


def _upgrade_strategy(strategy: str) -> str:
    """`upgradeStrategy`, one of UPGRADE_STRATEGIES."""
    if strategy not in UPGRADE_STRATEGIES:
        raise config_error("upgradeStrategy", strategy, f"it must be one of {', '.join(UPGRADE_STRATEGIES)}")
    return strategy

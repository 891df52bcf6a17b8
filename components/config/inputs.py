"""What a RayCluster takes: one set of inputs, named as the stack config's keys, whichever way it is given.

A stack of this project gives them as stack config (`from_stack_config`); a program in another language gives
them through the component package (`provider/`), whose schema Pulumi's analyzer infers from `RayClusterArgs`.
Both land in `settings.load_settings`, so one value means one cluster either way.

`Pulumi.yaml` is the source of truth for every key's name, type, meaning and default: the stack's CLI reads it,
the component fills in its defaults from it (`declared_config`), and a test checks that each key here has the
same name, type and description. Two consequences of how the SDK's analyzer reads this module:
- no `from __future__ import annotations`: it reads the annotations as they are, and cannot resolve strings;
- the keys are camelCase, as the config's (the schema would camelCase snake_case names anyway), and each
  docstring is one line, as the analyzer copies it verbatim (line breaks and indentation included) into the
  schema and every generated SDK.
"""

import difflib
import functools
from collections.abc import Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Required, TypedDict, cast

import pulumi
from pulumi.runtime import config as runtime_config

PROJECT_FILE = Path(__file__).resolve().parents[2] / "Pulumi.yaml"
WORKER_GROUPS = "workerGroups"
SERVE_APPLICATIONS = "serveApplications"
# Lists of objects: Pulumi's typed config has no object type, so Pulumi.yaml does not declare them (default: none).
OBJECT_KEYS = (WORKER_GROUPS, SERVE_APPLICATIONS)
# Inputs that reach the component as secrets (a package consumer's `pulumi.secret(...)` arrives as a secret Output;
# a stack's config value is read with `get_secret`) and stay secret in every resource made from them.
SECRET_KEYS = frozenset({"authToken", "redisPassword"})


class TolerationArgs(TypedDict, total=False):
    """A Kubernetes toleration of the group's pods, as in a pod spec."""

    key: str
    """The taint key it tolerates; empty with the operator Exists tolerates every taint."""
    operator: str
    """Equal (the default) or Exists."""
    value: str
    """The taint value it tolerates, with the operator Equal."""
    effect: str
    """NoSchedule, PreferNoSchedule or NoExecute; empty tolerates every effect."""
    tolerationSeconds: int
    """With the effect NoExecute: how long the pod stays bound to a node that gains the taint."""


class WorkerGroupArgs(TypedDict, total=False):
    """One more worker Deployment, `<clusterName>-<name>`, such as a GPU group."""

    name: Required[str]
    """The group's name (a DNS label, not `head` or `redis`): its Deployment is `<clusterName>-<name>`."""
    replicas: int
    """Replicas of the group (default 1), or its least size when maxReplicas is larger."""
    maxReplicas: int
    """Most replicas of the group: above replicas, Ray's autoscaler sizes it between the two (default 0: no autoscaling)."""
    cpu: str
    """CPU request and limit of each pod (default: workerCpu)."""
    memory: str
    """Memory request and limit of each pod (default: workerMemory)."""
    gpus: int
    """nvidia.com/gpu per pod (default 0)."""
    image: str
    """Image of the group (default: image, or its `-gpu` variant when gpus > 0)."""
    nodeSelector: dict[str, str]
    """Node labels the group's pods must run on, such as {"nvidia.com/gpu.present": "true"}."""
    tolerations: list[TolerationArgs]
    """Taints the group's pods tolerate, such as those of GPU nodes."""
    readOnlyRootFilesystem: bool
    """Whether the root filesystem of the group's containers is read-only (default: workerReadOnlyRootFilesystem); false only for GPU nodes whose NVIDIA runtime hooks must write into it."""


class ServeDeploymentArgs(TypedDict, total=False):
    """Options of one deployment of a Serve application, overriding its code's (Ray Serve's `deployments[]` schema)."""

    name: Required[str]
    """The deployment's name, as in the application's code."""
    num_replicas: Any
    """Replicas of the deployment: a whole number, or "auto" for Serve's default autoscaling."""
    max_ongoing_requests: int
    """Most requests a replica handles at once (Serve's default 5)."""
    max_queued_requests: int
    """Most requests a caller queues for the deployment before it is refused (-1: no limit)."""
    backpressure_config: dict[str, Any]
    """Serve's backpressure options for the deployment."""
    user_config: Any
    """The deployment's user config, passed to its `reconfigure` method; a change applies without new replicas."""
    autoscaling_config: dict[str, Any]
    """Serve's autoscaling of the deployment's replicas (min_replicas, max_replicas, target_ongoing_requests, ...)."""
    graceful_shutdown_wait_loop_s: float
    """How often a stopping replica checks whether its requests are done."""
    graceful_shutdown_timeout_s: float
    """How long a stopping replica lets its requests finish before it is killed."""
    health_check_period_s: float
    """How often the controller checks each replica's health."""
    health_check_timeout_s: float
    """How long a replica's health check may take before it counts as failed."""
    ray_actor_options: dict[str, Any]
    """Options of each replica's actor: num_cpus, num_gpus, memory, resources, runtime_env, ..."""
    placement_group_bundles: list[dict[str, Any]]
    """A placement group per replica: its bundles of resources."""
    placement_group_strategy: str
    """The strategy of each replica's placement group (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD)."""
    placement_group_bundle_label_selector: list[dict[str, Any]]
    """Node labels each bundle of a replica's placement group must match."""
    max_replicas_per_node: int
    """Most replicas of the deployment on one node."""
    logging_config: dict[str, Any]
    """Serve's logging options for the deployment's replicas."""
    request_router_config: dict[str, Any]
    """How Serve routes requests to the deployment's replicas."""
    gang_scheduling_config: dict[str, Any]
    """Serve's gang scheduling of the deployment's replicas."""
    deployment_actors: list[dict[str, Any]]
    """Actors Serve starts beside the deployment."""
    rolling_update_percentage: float
    """The share of replicas an update replaces at once."""
    max_surge_percent: float
    """Replicas an update may start beyond the target, as a percentage (0: old ones stop before new ones start)."""


class ServeApplicationArgs(TypedDict, total=False):
    """A Ray Serve application, as in Serve's config file (`applications[]`)."""

    name: str
    """The application's name, unique in the cluster (default "default")."""
    import_path: Required[str]
    """Where its code is: `module:attribute` or `module.attribute`, an application or a builder of one."""
    route_prefix: str
    """The HTTP path the application serves under, starting with `/` (default `/`), unique in the cluster."""
    runtime_env: dict[str, Any]
    """The application's runtime environment: working_dir and py_modules must be remote URIs (or `local://` paths present on every node); pip, env_vars, ..."""
    args: dict[str, Any]
    """Arguments for an application builder (an import_path that names a function)."""
    deployments: list[ServeDeploymentArgs]
    """Options of the application's deployments, overriding those in its code."""
    logging_config: dict[str, Any]
    """Serve's logging options for the application."""
    external_scaler_enabled: bool
    """Whether an external scaler may set the application's replicas through Serve's API."""
    autoscaling_policy: dict[str, Any]
    """An application-level autoscaling policy (Serve marks it as under development)."""


class RayClusterArgs(TypedDict, total=False):
    """The cluster's inputs: the stack config's keys, each with its default from the project's Pulumi.yaml."""

    image: str
    """Ray image for the head, the workers and the smoke-test Job. Pin a tag (or a digest); never `latest`."""
    clusterName: str
    """Name of the Ray cluster; the head Service is `<clusterName>-head` and worker Deployments are `<clusterName>-<group>`."""
    namespace: str
    """Kubernetes namespace. Empty means `ray-<stack>`, so two stacks on one cluster never collide."""
    createNamespace: bool
    """Create (and on destroy, delete) the namespace. false uses an existing namespace and leaves it alone."""
    headCpu: str
    """CPU request and limit of the head pod (a Kubernetes quantity such as "1" or "500m")."""
    headMemory: str
    """Memory request and limit of the head pod. The head runs the GCS and the dashboard; small heads get OOM-killed."""
    workers: int
    """Replicas of the default worker group (0 or more)."""
    workerCpu: str
    """CPU request and limit of each pod of the default worker group."""
    workerMemory: str
    """Memory request and limit of each pod of the default worker group (30% becomes object store)."""
    workerGpus: int
    """nvidia.com/gpu per pod of the default worker group."""
    workerImage: str
    """Image of the default worker group. Empty means `image`, or its `-gpu` variant when workerGpus > 0."""
    workerReadOnlyRootFilesystem: bool
    """Whether the root filesystem of the default group's containers is read-only. false only for GPU nodes whose NVIDIA container runtime hooks (CDI, under crun before 1.26) must write into it."""
    maxWorkers: int
    """Most replicas of the default worker group. Above `workers`, Ray's autoscaler (in the head pod) adds workers while work waits for resources and removes idle ones, between `workers` and `maxWorkers`. 0 means no autoscaling."""
    idleTimeoutSeconds: int
    """How long a worker of an autoscaled group stays idle (no task or actor holds its resources) before the autoscaler removes it."""
    upscalingSpeed: str
    """How many workers the autoscaler may have pending at once, as a multiple of the nodes there are (Ray's upscaling_speed). "1" at most doubles the cluster per step; "1000" (KubeRay's default) sets no limit."""
    workerDrainSeconds: int
    """How long a worker that is being removed (scale-down, rollout, deleted pod) lets its running tasks finish before Ray stops."""
    upgradeStrategy: str
    """How a change that needs new Ray pods (image, token, head or worker resources) reaches the cluster. "generation" starts a new generation beside the old one, switches the head and Serve Services to it once its smoke test and Serve check passed, and lets the old one finish its running jobs and requests (for upgradeDrainSeconds at most) before it goes; it needs room for both meanwhile. "inPlace" restarts the head and rolls the workers (running jobs are lost), with no extra pods."""
    upgradeDrainSeconds: int
    """With upgradeStrategy "generation": how long, after a switch, the generation it replaced may go on running the jobs it has (new ones go to the new generation); jobs still running then are stopped, and the old generation goes."""
    workerGroups: list[WorkerGroupArgs]
    """More worker groups (Deployments) beside the default one, such as a GPU group; each may autoscale."""
    testJob: bool
    """Run the smoke-test Job, which proves that objects travel between nodes; a failure fails `pulumi up`."""
    tokenAuth: bool
    """Ray token authentication (RAY_AUTH_MODE=token) for every Ray process. false lets anyone who reaches the Ray ports run code."""
    authToken: pulumi.Input[str]
    """The Ray auth token; set it with `pulumi config set --secret authToken ...`. Empty means one generated once per stack."""
    allowedClientNamespaces: list[str]
    """Namespaces whose pods may reach the head's client ports (dashboard/jobs 8265, Ray Client 10001, metrics 8080)."""
    allowedClientCidrs: list[str]
    """CIDR blocks (e.g. a VPN range) that may reach the head's client ports."""
    allowedMetricsNamespaces: list[str]
    """Namespaces (e.g. Prometheus's) whose pods may scrape the metrics ports (8080 of every Ray pod, the head's 44227 and 44217), and nothing else."""
    serveApplications: list[ServeApplicationArgs]
    """Ray Serve applications the cluster runs, in Serve's config-file schema: applied by `pulumi up`, re-applied after a head restart, served by `<clusterName>-serve` on port 8000."""
    prometheusOperator: bool
    """Declare a PodMonitor (monitoring.coreos.com/v1) that scrapes every Ray pod's metrics and the head's dashboard and autoscaler metrics, each series labelled with the cluster's name (`ray_io_cluster`). Needs the prometheus-operator's CRDs (kube-prometheus-stack installs them), and `allowedMetricsNamespaces` to hold Prometheus's namespace."""
    prometheusRelease: str
    """The kube-prometheus-stack Helm release whose Prometheus should select the PodMonitor (its label `release`). Empty adds no label, for a Prometheus that selects it without one."""
    grafanaDashboards: bool
    """Declare Ray's own Grafana dashboards for the image's Ray version as ConfigMaps labelled `grafana_dashboard: "1"`, which Grafana's dashboard sidecar (kube-prometheus-stack's) loads; their Cluster variable picks this cluster."""
    runbookUrl: str
    """Where your copy of this project's README is published (e.g. `https://github.com/acme/ray-cluster/blob/main/README.md`): each alert's runbook_url is it plus the anchor of the alert's entry under Alerts. Empty links `README.md#<alert>`."""
    prometheusUrl: str
    """The Prometheus the Ray dashboard queries for its metrics views, as the head pod reaches it (e.g. `http://kube-prometheus-stack-prometheus.monitoring.svc:9090`). Empty leaves Ray's default (localhost: no metrics)."""
    grafanaUrl: str
    """The Grafana the Ray dashboard embeds its metrics panels from, as the head pod reaches it (e.g. `http://kube-prometheus-stack-grafana.monitoring.svc`); the panels filter on this cluster. Empty leaves Ray's default (localhost: no panels)."""
    grafanaIframeUrl: str
    """Where the browser reaches that Grafana, when not at grafanaUrl (e.g. `https://grafana.example.com`). Empty means grafanaUrl."""
    allowedServeNamespaces: list[str]
    """Namespaces (e.g. an ingress controller's) whose pods may reach the Serve port 8000 of the Ray pods, and nothing else."""
    allowedServeCidrs: list[str]
    """CIDR blocks that may reach the Serve port 8000 of the Ray pods, and nothing else."""
    gcsReconnectTimeoutSeconds: int
    """How long a worker waits for a lost head before it exits and Kubernetes restarts it to rejoin the new head. 0 means 60 s, or 600 s with gcsFaultTolerance."""
    gcsFaultTolerance: bool
    """Keep the GCS's state in Redis, so that a lost head pod loses nothing; workers, their tasks and actors keep running while the new head resumes the cluster."""
    redisAddress: str
    """An existing Redis for gcsFaultTolerance, `host:port`, or `rediss://host:port` for TLS. Empty deploys a Redis in the namespace."""
    redisPassword: pulumi.Input[str]
    """The Redis password; set it with `pulumi config set --secret redisPassword ...`. Empty means one generated once per stack for the stack's own Redis, and none for an existing Redis."""
    redisCaCert: str
    """The PEM certificate(s) of the CA that signed a `rediss://` Redis's certificate (`pulumi config set redisCaCert -- "$(cat ca.pem)"`). Empty trusts the image's system CAs."""
    redisImage: str
    """Image of the Redis the stack deploys for gcsFaultTolerance. Pin a tag (or a digest); never `latest`."""
    redisExporterImage: str
    """Image of the metrics exporter that runs beside the stack's own Redis with prometheusOperator (oliver006/redis_exporter, for the RayRedisMemoryNearMax alert on Redis's memory). Pin a tag (or a digest); never `latest`."""
    redisMemory: str
    """Memory request and limit of the stack's Redis; it holds at most 75% of it (maxmemory), the rest is room for its append-only file's rewrites."""
    redisStorage: str
    """Size of the volume that keeps the stack's Redis data (its append-only file), at least redisMemory; `pulumi destroy` deletes its claim (and the volume, where the StorageClass reclaims with Delete)."""
    redisStorageClass: str
    """StorageClass of the stack's Redis volume. Empty means the Kubernetes cluster's default."""


# A worker group's values when not given, where they are its own (its cpu, memory and image follow the cluster's).
GROUP_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {"replicas": 1, "maxReplicas": 0, "gpus": 0, "image": "", "nodeSelector": {}, "tolerations": []}
)
GROUP_KEYS = WorkerGroupArgs.__required_keys__ | WorkerGroupArgs.__optional_keys__
TOLERATION_KEYS = TolerationArgs.__required_keys__ | TolerationArgs.__optional_keys__


@functools.cache
def declared_config() -> Mapping[str, Mapping[str, Any]]:
    """The config keys `Pulumi.yaml` declares, each with its `type`, `default` and `description`.

    Read at run time, from the file the CLI reads: a package consumer's plugin holds the whole repository (the CLI
    clones it and runs `provider/`), so the component's defaults are the stack's without a copy."""
    import yaml  # the Pulumi SDK's own dependency

    project = yaml.safe_load(PROJECT_FILE.read_text())
    return MappingProxyType({key: MappingProxyType(spec) for key, spec in project["config"].items()})


def defaults() -> dict[str, object]:
    """Every input's value when it is not given: Pulumi.yaml's, and none of the lists of objects (`OBJECT_KEYS`)."""
    return {**{key: spec["default"] for key, spec in declared_config().items()}, **{key: [] for key in OBJECT_KEYS}}


def from_stack_config(config: pulumi.Config) -> RayClusterArgs:
    """The stack's config as the component's inputs, each key read as its declared type (the CLI has already
    checked the types against Pulumi.yaml), secrets as secret Outputs, and an empty secret as none given. A key of
    this project that the program does not know is refused first (`refuse_unknown_keys`)."""
    refuse_unknown_keys(config.name)
    readers = {
        "string": config.require,
        "integer": config.require_int,
        "boolean": config.require_bool,
        "array": config.require_object,
    }
    args: dict[str, object] = {key: config.get_object(key) or [] for key in OBJECT_KEYS}
    for key, spec in declared_config().items():
        if key not in SECRET_KEYS:
            args[key] = readers[spec["type"]](key)
        elif config.get(key):
            args[key] = config.require_secret(key)
    return cast(RayClusterArgs, args)


def stack_config_keys(namespace: str) -> set[str]:
    """The keys of the stack's config under `<namespace>:`. The CLI's language host hands the program the whole
    stack config, every namespace's, as JSON in PULUMI_CONFIG (pulumi/pulumi sdk/python/cmd/pulumi-language-python),
    which its exec script loads with `set_all_config` before the program runs, as Pulumi's mocks do."""
    prefix = f"{namespace}:"
    keys = {*runtime_config.get_config_env(), *runtime_config.CONFIG.get()}
    return {key.removeprefix(prefix) for key in keys if key.startswith(prefix)}


def refuse_unknown_keys(namespace: str) -> None:
    """A key of this project's config that the program does not read (`pulumi config set wrokers 4`) would change
    nothing and say nothing: refuse it, naming the key and the nearest known one. Keys of other namespaces
    (`kubernetes:context`) are the providers'."""
    for key in sorted(stack_config_keys(namespace) - set(defaults())):
        full_key = f"{namespace}:{key}"
        value = "[secret]" if runtime_config.is_config_secret(full_key) else runtime_config.get_config(full_key)
        raise pulumi.RunError(
            f"{full_key} is {value!r}, but it is not a key of this program: {nearest_key_hint(key)}"
            f"`pulumi config rm {key}` removes it (the keys are listed in Pulumi.yaml and the README)"
        )


def nearest_key_hint(key: str, keys: Collection[str] = ()) -> str:
    """The hint "did you mean `workers`? " for a misspelt input (`wrokers`, `headmemory`) among `keys` (the
    cluster's inputs unless given), or nothing when none is near."""
    by_lower = {known.lower(): known for known in keys or defaults()}
    nearest = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"did you mean `{by_lower[nearest[0]]}`? " if nearest else ""


def whole_numbers(value: object) -> object:
    """Whole floats as integers, in lists and objects too: every number a package consumer gives arrives as a
    float (Pulumi's wire format has no integers), and Pulumi's SDK 3.272 hands integer inputs on as it got them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    return value


def contains_output(value: object) -> bool:
    """Whether a value is, or holds, an Output: a value another resource computes, unknown until it is created."""
    if isinstance(value, pulumi.Output):
        return True
    if isinstance(value, list):
        return any(contains_output(item) for item in value)
    if isinstance(value, dict):
        return any(contains_output(item) for item in value.values())
    return False

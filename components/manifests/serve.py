"""Ray Serve as part of the cluster, without an operator: the Serve config, the Service that sends requests only to
healthy Serve proxies, the keeper that keeps both true, and the check that gates `pulumi up` on the applications.

- The config (`serve_config`) is Serve's config file: the applications as given, a proxy on every node that runs
  replicas (and the head), HTTP on SERVE_PORT. It lives in the ConfigMap `<cluster>-serve`.
- The keeper (`components/in_pod/serve_keeper.py`, a container of the head pod) applies it through the dashboard's
  REST API whenever the ConfigMap changes or Serve has lost an application (a head restart without GCS fault
  tolerance), and keeps the EndpointSlice of the selector-less Service `<cluster>-serve`: the pods whose Serve
  proxy answers its health check. A proxy on a node without replicas drains (503), so it leaves the Service; the
  head's proxy is in it only while no worker's is, so that losing the head drops no request that a worker's proxy
  could take. KubeRay does this by labelling pods from its operator; here no one may patch pods.
- The check (the same program, as a Job replaced whenever the config changes) applies the config and waits until
  every application is RUNNING with it and the Service routes its prefixes, or fails with Serve's own message.
- With upgradeStrategy `generation`, each generation's head runs its own keeper, and the Service's annotation
  GENERATION_LABEL names the generation whose keeper writes its endpoints; Pulumi moves it to a new generation in
  the update that proves it, when `<cluster>-head` moves. The check of a new generation asks its head's own proxy
  for the routes: the Service still sends requests to the old generation then.

Only the keeper container mounts the Kubernetes token (as the autoscaler's does): its Role reads the config and
the Service, and writes EndpointSlices in the namespace. A Role cannot name an object that does not exist yet, so
`create` is granted for any EndpointSlice of the namespace; `update` only for `<cluster>-serve`.
"""

from __future__ import annotations

import json
from typing import Any

from .. import in_pod
from ..config.resources import PodResources
from ..config.serve import ServeSettings
from ..config.settings import GENERATION_LABEL, GENERATION_MARK, ClusterSettings
from . import autoscaling, pods, ray_node
from .ray_node import DASHBOARD_PORT, SERVE_PORT, Manifest
from .security import container_security

KEEPER_SOURCE = in_pod.source("serve_keeper.py")
KEEPER_CONTAINER = "serve-keeper"
CHECK_CONTAINER = "serve-check"
CONFIG_KEY = "serve.json"
# The keeper is one Python process with the standard library only, waking every second.
KEEPER_RESOURCES = PodResources(cpu="100m", memory="128Mi")
CHECK_RESOURCES = PodResources(cpu="100m", memory="128Mi")
# How long `pulumi up` waits for the applications: an image's first replicas may pull dependencies (runtime_env).
CHECK_DEADLINE_SECONDS = 900
# The keeper touches this file after every pass; its probes read its age. A pass whose every call runs into its
# timeout (seven calls of 5 s, and the proxies' health checks, 2 s all at once) still fits the window, so a slow
# dashboard or API server never turns the head NotReady; a keeper that stopped going round is restarted.
HEARTBEAT_FILE = "/tmp/heartbeat"
LIVENESS_SECONDS = 60
READINESS_SECONDS = 60
# Labels the keeper gives its EndpointSlice: the Service's, and a manager other than Kubernetes' controllers.
MANAGED_BY = "serve-keeper.ray-cluster.pulumi.com"


def name(settings: ClusterSettings) -> str:
    """Names the Service, its EndpointSlice, the ConfigMap, the Role, its RoleBinding and the NetworkPolicy."""
    return settings.serve_service_name


def url(settings: ClusterSettings) -> str:
    return f"http://{name(settings)}.{settings.namespace}.svc:{SERVE_PORT}"


def serve_config(serve: ServeSettings) -> dict[str, Any]:
    """Serve's config file: the applications as given, proxies where replicas run (Serve's default), HTTP on every
    address of the pod on SERVE_PORT."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": serve.applications,
    }


def config_files(serve: ServeSettings) -> dict[str, str]:
    return {CONFIG_KEY: json.dumps(serve_config(serve), indent=2, sort_keys=True)}


def service_spec() -> Manifest:
    """No selector: the keeper writes the endpoints (see the module's docstring)."""
    return {"type": "ClusterIP", "ports": [{"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT,
                                            "protocol": "TCP"}]}  # fmt: skip


def service_annotations(settings: ClusterSettings) -> dict[str, str]:
    """With generations, the generation whose keeper writes the Service's endpoints (this one, once proven)."""
    return {GENERATION_LABEL: GENERATION_MARK} if settings.generational else {}


def service_account(settings: ClusterSettings) -> str:
    """The head pod's ServiceAccount, which its sidecars share: the autoscaler's when it autoscales."""
    return autoscaling.name(settings) if settings.autoscaling else name(settings)


def role_rules(settings: ClusterSettings) -> list[Manifest]:
    """Exactly the keeper's calls: read its config and its Service (the EndpointSlice's owner), create the
    EndpointSlice and update it."""
    own = [name(settings)]
    return [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": own},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get"], "resourceNames": own},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["create"]},
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "update"],
            "resourceNames": own,
        },
    ]


def _program_env(settings: ClusterSettings, dashboard_host: str) -> list[Manifest]:
    return [
        *ray_node.ray_env(settings),
        {"name": "PYTHONNOUSERSITE", "value": "1"},
        {"name": "SERVE_NAME", "value": name(settings)},
        {"name": "SERVE_PORT", "value": str(SERVE_PORT)},
        {"name": "SERVE_DASHBOARD_URL", "value": f"http://{dashboard_host}:{DASHBOARD_PORT}"},
    ]


def keeper_container(settings: ClusterSettings) -> Manifest:
    """The keeper: the head's image (its Python), the Ray token for the dashboard, the only mount of the
    Kubernetes token, its own /tmp; probes on its heartbeat, which it leaves whatever Serve answers (the head is
    ready whether or not Serve's applications are: the check reports them)."""
    return {
        "name": KEEPER_CONTAINER,
        "image": settings.image,
        "command": ["python", "-s", "-c", KEEPER_SOURCE, "keep"],
        "env": [
            *_program_env(settings, "127.0.0.1"),
            {"name": "SERVE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            *(
                [
                    {"name": "SERVE_GENERATION", "value": GENERATION_MARK},
                    {"name": "SERVE_GENERATION_KEY", "value": GENERATION_LABEL},
                ]
                if settings.generational
                else []
            ),
        ],
        "resources": ray_node.container_resources(KEEPER_RESOURCES),
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "serve-keeper-tmp", "mountPath": "/tmp"},
            *([ray_node.auth_token_mount()] if settings.token_auth else []),
            pods.api_access_mount(),
        ],
        "readinessProbe": heartbeat_probe(liveness=False),
        "livenessProbe": heartbeat_probe(liveness=True),
    }


def heartbeat_probe(*, liveness: bool) -> Manifest:
    """The keeper's loop went round within READINESS_SECONDS (whatever Serve answered); for liveness, within
    LIVENESS_SECONDS."""
    return pods.heartbeat_probe(HEARTBEAT_FILE, LIVENESS_SECONDS if liveness else READINESS_SECONDS, liveness=liveness)


def sidecar(settings: ClusterSettings) -> pods.Sidecar:
    return pods.Sidecar(
        container=keeper_container(settings),
        volumes=[pods.api_access_volume(), {"name": "serve-keeper-tmp", "emptyDir": {}}],
        service_account=service_account(settings),
    )


def check_pod_template(settings: ClusterSettings, serve: ServeSettings) -> Manifest:
    """The check: applies the config (so an error Serve answers at once fails `pulumi up` at once), then waits for
    every application. The config is in its env, so a change of it replaces the Job and checks again."""
    check = {
        "name": CHECK_CONTAINER,
        "image": settings.image,
        "command": ["python", "-s", "-c", KEEPER_SOURCE, "check"],
        "env": [
            *_program_env(settings, settings.head_host),
            # With generations, the head's own proxy (found through Serve): the Service moves only once this passed.
            *([] if settings.generational else [{"name": "SERVE_URL", "value": url(settings)}]),
            {"name": "SERVE_CONFIG", "value": json.dumps(serve_config(serve), sort_keys=True)},
            {"name": "SERVE_CHECK_SECONDS", "value": str(CHECK_DEADLINE_SECONDS - 30)},
        ],
        "resources": ray_node.container_resources(CHECK_RESOURCES),
        "securityContext": container_security(),
        # Serve's message reaches the Job's pod status (and `kubectl describe`) even when its log is gone.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [*([ray_node.auth_token_mount()] if settings.token_auth else [])],
    }
    return pods.pod_template(
        settings,
        component="serve-check",
        group="serve-check",
        containers=[check],
        volumes=[v for v in ray_node.ray_volumes(settings, None) if v["name"] == ray_node.AUTH_TOKEN_VOLUME],
        node_selector=pods.node_selector(settings.image),
        restart_policy="Never",
    )

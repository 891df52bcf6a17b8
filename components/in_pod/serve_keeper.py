"""Keeps a cluster's Ray Serve applications applied and its Serve Service sending requests to healthy proxies only;
as `check`, gates `pulumi up` on the applications.

Shipped as its text in the container's command (components/manifests/serve.py); runs on the image's Python with
the standard library and `requests` (which Ray needs).

`keep`, a container of the head pod, once a second:
- reads the wanted config from the ConfigMap `<cluster>-serve` through the API (a mounted ConfigMap follows a change
  only after the kubelet's next sync, a minute or more later);
- applies it (PUT /api/serve/applications/ on the head's dashboard, with the Ray token) when it differs from what
  this process applied last, or when Serve lacks one of its applications: a head restarted without GCS fault
  tolerance comes back without Serve. Not otherwise: every PUT, even of the same config, turns each application
  DEPLOYING for a moment;
- probes the Serve proxy of every node Serve lists (GET :<port>/-/healthz within 2 s, all at once) and writes the
  EndpointSlice of the Service `<cluster>-serve`: the healthy proxies of workers, or the head's while no worker's is
  healthy (a proxy on a node without replicas answers 503 while it drains, and is gone once drained); when they
  change, and every RESYNC_SECONDS whatever happened to the slice meanwhile (deleted by hand, or with a replaced
  Service). A proxy is healthy from its first 200 until it says otherwise: it answers anything else (503: it drains)
  or refuses the connection (it is gone), at once; or its probes found it silent for SILENT_SECONDS, counted from the
  first silent probe (a pass that cannot probe is the keeper's silence), as long as a kubelet's default readiness
  probe takes to give up on a pod (at once, if Serve no longer lists it: its node has left). A probe that times out on
  a loaded node says little: the same proxy answered requests in 10-60 ms while three probes in a row timed out, and a
  Service that gave up on it then sent its requests to the head's proxy, on the node the job submissions load. The
  Service is never emptied: with no proxy healthy it keeps those it has (an empty Service refuses every request at
  once, where a proxy that misses its probes still answers most).
  With upgradeStrategy `generation` (SERVE_GENERATION set), only while the Service's annotation names its own
  generation: Pulumi moves the annotation to a new generation once it is proven, and the keepers hand over in the
  same update, the old one stopping, the new one publishing its own proxies (never adopting the old ones, and never
  emptying the Service: until one of its own proxies answers, the old ones keep it).

`check`, a Job: applies the config in SERVE_CONFIG, then waits until every application is RUNNING with exactly that
config and the Service (SERVE_URL; with generations, which switch the Service only after the check, the head's own
proxy) answers with every route prefix; exits 1 with Serve's message as soon as an application
fails to deploy or is unhealthy, or once SERVE_CHECK_SECONDS have passed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
HEARTBEAT_FILE = Path("/tmp/heartbeat")
SERVE_API = "/api/serve/applications/"
PERIOD_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 2.0
# A kubelet's default readiness probe gives up on a pod after failureThreshold 3 probes periodSeconds 10 apart.
SILENT_SECONDS = 30.0
PROBES_AT_ONCE = 32
# What a probe of a proxy found: a 200; another answer or a refused connection (draining, or gone); nothing in time.
ANSWERED, REFUSED, SILENT = "answered", "refused", "silent"
# Short enough that a pass with every call slow still leaves its heartbeat within the probes' window
# (components/manifests/serve.py, LIVENESS_SECONDS).
REQUEST_TIMEOUT_SECONDS = 5.0
RESYNC_SECONDS = 10.0
MANAGED_BY = "serve-keeper.ray-cluster.pulumi.com"
FAILED = ("DEPLOY_FAILED", "UNHEALTHY")
Document = dict[str, Any]


class UnavailableError(Exception):
    """A call that did not get an answer worth acting on (no connection, a timeout, a 5xx): tried again later."""


def log(message: str) -> None:
    """A line of the container's log, with the time: what happened when, beside the other pods' logs."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def url_host(address: str) -> str:
    """An address as a URL's host: an IPv6 one in brackets."""
    return f"[{address}]" if ":" in address else address


def _session() -> requests.Session:
    session = requests.Session()
    # Every address here is in the cluster: no proxy from the image's environment, no .netrc credentials.
    session.trust_env = False
    return session


class Dashboard:
    """Serve's REST API on the Ray dashboard, with the cluster's token when token auth is on."""

    def __init__(self, base_url: str, environ: dict[str, str]) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = _session()
        self._token_file = environ.get("RAY_AUTH_TOKEN_PATH") if environ.get("RAY_AUTH_MODE") == "token" else None

    def _call(self, method: str, body: Document | None = None) -> requests.Response:
        headers = {}
        if self._token_file:
            headers["Authorization"] = f"Bearer {Path(self._token_file).read_text().strip()}"
        try:
            response = self._session.request(
                method, self.base_url + SERVE_API, json=body, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS
            )
        except requests.RequestException as error:
            raise UnavailableError(f"the dashboard does not answer ({type(error).__name__})") from error
        if response.status_code >= 500:
            raise UnavailableError(f"the dashboard answers {response.status_code}: {response.text[:300]}")
        return response

    def status(self) -> Document:
        response = self._call("GET")
        if response.status_code != 200:
            raise UnavailableError(f"GET {SERVE_API} answers {response.status_code}: {response.text[:300]}")
        answer: Document = response.json()
        return answer

    def apply(self, config: Document) -> str | None:
        """PUT the config; None once Serve took it, else what Serve said (a schema error: 400 with its text)."""
        response = self._call("PUT", config)
        if response.status_code == 200:
            return None
        return f"Serve refused the config ({response.status_code}): {response.text}"


class Kubernetes:
    """The few API calls of the keeper, over HTTPS with the pod's service-account token, read before each call."""

    def __init__(self, environ: dict[str, str]) -> None:
        host = environ["KUBERNETES_SERVICE_HOST"]
        self.base_url = f"https://{url_host(host)}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}"
        self.namespace = environ["SERVE_NAMESPACE"]
        self._session = _session()

    def call(self, method: str, path: str, body: Document | None = None) -> tuple[int, Document]:
        token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
        try:
            response = self._session.request(
                method,
                f"{self.base_url}{path}",
                json=body,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                verify=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except requests.RequestException as error:
            raise UnavailableError(f"{method} {path}: {type(error).__name__}") from error
        try:
            answer = response.json()
        except ValueError:
            answer = {"message": response.text[:300]}
        if response.status_code >= 500 or response.status_code in (401, 403):
            raise UnavailableError(f"{method} {path}: {response.status_code} {answer.get('message', '')}")
        return response.status_code, answer

    def path(self, group_version: str, resource: str, name: str = "") -> str:
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        return f"{prefix}/namespaces/{self.namespace}/{resource}" + (f"/{name}" if name else "")


def missing_applications(config: Document, status: Document) -> list[str]:
    """The wanted applications Serve does not have (all of them, after a head restart without fault tolerance)."""
    have = status.get("applications") or {}
    return [app.get("name", "default") for app in config["applications"] if app.get("name", "default") not in have]


def head_proxy_address(status: Document) -> str | None:
    """The head's proxy's address: the one on the controller's node (Serve pins its controller to the head)."""
    head_node = (status.get("controller_info") or {}).get("node_id")
    address: str | None = (status.get("proxies") or {}).get(head_node, {}).get("node_ip")
    return address


def serving_addresses(status: Document, healthy: set[str], published: list[str]) -> list[str]:
    """The proxies the Service sends requests to: the healthy ones of workers, or the head's while no worker's is.
    Those published already stay while they answer, whether Serve lists them or not: a controller that has just come
    back (a new head) reports no proxies for a moment, while the workers' go on serving."""
    head = head_proxy_address(status)
    addresses = {proxy.get("node_ip") for proxy in (status.get("proxies") or {}).values()} | set(published)
    workers = sorted(address for address in addresses if address in healthy and address != head)
    return workers or ([head] if head in healthy else [])


def endpoint_slice(name: str, service: Document, addresses: list[str], port: int, address_type: str) -> Document:
    """The Service's EndpointSlice, owned by it (deleted with it), every address ready. Its address type cannot
    change, so it is the pods' (the head's own address's), not that of the addresses it holds now (none, at first)."""
    metadata = service["metadata"]
    owner = {"apiVersion": "v1", "kind": "Service", "name": name, "uid": metadata["uid"]}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": metadata["namespace"],
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
            "ownerReferences": [owner],
        },
        "addressType": address_type,
        "ports": [{"name": "serve", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": True, "serving": True, "terminating": False}}
            for address in addresses
        ],
    }


def probe_proxies(addresses: set[str], port: int) -> dict[str, str]:
    """What each address's Serve proxy answers its health check now (ANSWERED, REFUSED or SILENT): probed
    PROBES_AT_ONCE at a time, so that a pass lasts one probe's timeout however many of a cluster's few proxies do not
    answer."""

    def probe(address: str) -> str:
        try:
            response = _session().get(f"http://{url_host(address)}:{port}/-/healthz", timeout=PROBE_TIMEOUT_SECONDS)
        except requests.Timeout:
            return SILENT
        except requests.RequestException:
            return REFUSED
        return ANSWERED if response.status_code == 200 else REFUSED

    if not addresses:
        return {}
    ordered = sorted(addresses)
    with ThreadPoolExecutor(max_workers=min(len(ordered), PROBES_AT_ONCE)) as probes:
        return dict(zip(ordered, probes.map(probe, ordered), strict=True))


class ProxyHealth:
    """Each proxy's health across passes: healthy from its first 200 until it answers otherwise or refuses the
    connection, or its probes have found it silent for SILENT_SECONDS, counted from the first silent one (a pass
    that could not probe, its dashboard not answering, is the keeper's silence, not the proxy's). A proxy not probed
    any more is forgotten."""

    def __init__(self) -> None:
        # Per proxy that answered 200 and has not refused since: when its probes began to find it silent (None: its
        # last one answered), in time.monotonic().
        self.silent_since: dict[str, float | None] = {}

    def observe(self, probes: dict[str, str], now: float) -> set[str]:
        """Record one round of probes, made at `now`; the proxies healthy after it."""
        self.silent_since = {
            address: None if found == ANSWERED else self._silent_since(address, now)
            for address, found in probes.items()
            if found == ANSWERED or (found == SILENT and address in self.silent_since)
        }
        return {
            address for address, since in self.silent_since.items() if since is None or now - since < SILENT_SECONDS
        }

    def _silent_since(self, address: str, now: float) -> float:
        since = self.silent_since[address]
        return now if since is None else since


def proxy_addresses(status: Document) -> set[str]:
    return {address for proxy in (status.get("proxies") or {}).values() if (address := proxy.get("node_ip"))}


def address_type(address: str) -> str:
    return "IPv6" if ":" in address else "IPv4"


def slice_addresses(endpoint_slice: Document) -> list[str]:
    return sorted(address for endpoint in endpoint_slice.get("endpoints") or [] for address in endpoint["addresses"])


class Keeper:
    """One pass at a time (`step`); what it last did is kept so it acts only on a change (or a resync)."""

    def __init__(
        self,
        dashboard: Dashboard,
        kubernetes: Kubernetes,
        name: str,
        port: int,
        pod_address: str,
        generation: tuple[str, str] | None = None,
    ) -> None:
        """`generation`: with generations, the Service's annotation that names the generation it serves, and this
        keeper's own generation."""
        self.dashboard, self.kubernetes = dashboard, kubernetes
        self.name, self.port, self.address_type = name, port, address_type(pod_address)
        self.generation = generation
        # Whether it has the Service: in place always; with generations once it has published a proxy of its own.
        self.holds_service = generation is None
        self.applied: Document | None = None
        self.published: list[str] | None = None
        self.checked_at = -RESYNC_SECONDS
        self.health = ProxyHealth()
        self.healthy: set[str] = set()
        self._said = ""

    def say(self, message: str) -> None:
        """Log a state once when it begins, not once a second."""
        if message != self._said:
            log(message)
            self._said = message

    def wanted(self) -> Document:
        code, config_map = self.kubernetes.call("GET", self.kubernetes.path("v1", "configmaps", self.name))
        if code != 200:
            raise UnavailableError(f"ConfigMap {self.name}: {code} {config_map.get('message', '')}")
        config: Document = json.loads(config_map["data"]["serve.json"])
        return config

    def step(self) -> None:
        config = self.wanted()
        status = self.dashboard.status()
        missing = missing_applications(config, status)
        if config != self.applied or missing:
            why = f"Serve lacks {missing}" if missing and config == self.applied else "the config changed"
            refused = self.dashboard.apply(config)
            if refused:
                self.say(refused)
                return
            names = [app.get("name", "default") for app in config["applications"]]
            log(f"applied the Serve config ({why}): {names}")
            self.applied = config
            status = self.dashboard.status()
        if not self.serves_here(self.service()):
            # Not (or no longer) this generation's Service: its own proxies only once it is, none adopted.
            self.say(f"the Service {self.name} sends requests to another generation: not writing its endpoints")
            self.published, self.holds_service = [], False
            return
        if self.published is None:
            # A new keeper in place (a new head) takes over what the Service holds now. A generation's holds nothing
            # until it publishes a proxy of its own: what the Service holds may be an older generation's.
            self.published = self.live_addresses() if self.holds_service else []
        published = self.published
        listed = proxy_addresses(status)
        # A proxy Serve no longer lists (its node has left the cluster) stays only while it answers: its silence is
        # a dead node's, not a busy one's.
        probes = {
            address: REFUSED if found == SILENT and address not in listed else found
            for address, found in probe_proxies(listed | set(published), self.port).items()
        }
        healthy = self.health.observe(probes, time.monotonic())
        if healthy != self.healthy:
            log(f"healthy proxies: {sorted(healthy)}; this pass's probes: {probes}")
            self.healthy = healthy
        addresses = serving_addresses(status, healthy, published)
        if not addresses:
            # Never emptied: taking the Service over, the old generation's proxies keep it until one of this one's
            # answers; holding it, its proxies keep it, though they miss their probes.
            self.say(
                f"the Service {self.name} is this generation's: waiting for a healthy proxy to send it to"
                if not self.holds_service
                else f"no proxy is healthy: the Service {self.name} keeps sending requests to {published}"
            )
            return
        if addresses != self.published or time.monotonic() - self.checked_at >= RESYNC_SECONDS:
            self.publish(addresses)

    def service(self) -> Document:
        code, service = self.kubernetes.call("GET", self.kubernetes.path("v1", "services", self.name))
        if code != 200:
            raise UnavailableError(f"Service {self.name}: {code} {service.get('message', '')}")
        return service

    def serves_here(self, service: Document) -> bool:
        """In place, always; with generations, while the Service's annotation names this keeper's generation."""
        if self.generation is None:
            return True
        key, own = self.generation
        return bool((service["metadata"].get("annotations") or {}).get(key) == own)

    def live_addresses(self) -> list[str]:
        """The addresses the Service's EndpointSlice holds now (none if there is no slice yet)."""
        path = self.kubernetes.path("discovery.k8s.io/v1", "endpointslices", self.name)
        found, current = self.kubernetes.call("GET", path)
        if found not in (200, 404):
            raise UnavailableError(f"EndpointSlice {self.name}: {found} {current.get('message', '')}")
        return slice_addresses(current) if found == 200 else []

    def publish(self, addresses: list[str]) -> None:
        """Make the live EndpointSlice hold `addresses`, writing it only where it does not (or is missing)."""
        kubernetes = self.kubernetes
        path = kubernetes.path("discovery.k8s.io/v1", "endpointslices", self.name)
        found, current = kubernetes.call("GET", path)
        if found == 200 and slice_addresses(current) == addresses:
            self.published, self.checked_at, self.holds_service = addresses, time.monotonic(), True
            return
        service = self.service()
        if not self.serves_here(service):
            # Read after the slice: a switch since this pass began leaves the slice to the new generation's keeper
            # (whose write since then makes this one's resourceVersion stale: a 409, not a write).
            self.published, self.holds_service = [], False
            return
        wanted = endpoint_slice(self.name, service, addresses, self.port, self.address_type)
        if found == 404:
            code, answer = kubernetes.call("POST", kubernetes.path("discovery.k8s.io/v1", "endpointslices"), wanted)
        else:
            wanted["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            code, answer = kubernetes.call("PUT", path, wanted)
        if code not in (200, 201):
            raise UnavailableError(f"EndpointSlice {self.name}: {code} {answer.get('message', '')}")
        log(f"the Service {self.name} sends requests to {addresses or 'no proxy'}")
        self.published, self.checked_at, self.holds_service = addresses, time.monotonic(), True


def keep(environ: dict[str, str]) -> None:
    generation = environ.get("SERVE_GENERATION")
    keeper = Keeper(
        Dashboard(environ["SERVE_DASHBOARD_URL"], environ),
        Kubernetes(environ),
        environ["SERVE_NAME"],
        int(environ["SERVE_PORT"]),
        environ["RAY_POD_IP"],
        (environ["SERVE_GENERATION_KEY"], generation) if generation else None,
    )
    while True:
        try:
            keeper.step()
        except (UnavailableError, OSError, ValueError, LookupError, TypeError, AttributeError) as error:
            # Whatever answered oddly (a proxy's error page, a shape this version does not know): said, tried again.
            keeper.say(f"waiting: {type(error).__name__}: {error}")
        HEARTBEAT_FILE.touch()
        time.sleep(PERIOD_SECONDS)


def check_state(config: Document, status: Document) -> tuple[bool, str]:
    """(True, why) when every wanted application is RUNNING with exactly its config, or has failed with it (why
    says which, in Serve's words); (False, what is awaited) otherwise."""
    have = status.get("applications") or {}
    waiting = []
    for app in config["applications"]:
        name = app.get("name", "default")
        details = have.get(name)
        if details is None or details.get("deployed_app_config") != app:
            waiting.append(f"{name}: not applied yet")
        elif details.get("status") in FAILED:
            return True, f"Serve application {name!r} is {details['status']}: {details.get('message', '')}"
        elif details.get("status") != "RUNNING":
            waiting.append(f"{name}: {details.get('status')}")
    return not waiting, "; ".join(waiting)


def routes_served(url: str, config: Document) -> str | None:
    """None once the Service answers with every wanted route prefix, else what is awaited."""
    wanted = {app.get("route_prefix", "/") for app in config["applications"]} - {None}
    try:
        response = _session().get(f"{url}/-/routes", timeout=PROBE_TIMEOUT_SECONDS * 2)
    except requests.RequestException as error:
        return f"{url} does not answer ({type(error).__name__})"
    routes = response.json() if response.status_code == 200 else {}
    missing = sorted(wanted - set(routes))
    return f"{url} does not route {missing} yet ({response.status_code})" if missing else None


def serve_url(environ: dict[str, str], status: Document) -> str:
    """Where the check asks for the routes: the Service (SERVE_URL), or with generations the head's own proxy."""
    if environ.get("SERVE_URL"):
        return environ["SERVE_URL"]
    address = head_proxy_address(status)
    if not address:
        raise UnavailableError("Serve lists no proxy on the head yet")
    return f"http://{url_host(address)}:{environ['SERVE_PORT']}"


def check(environ: dict[str, str]) -> int:
    config: Document = json.loads(environ["SERVE_CONFIG"])
    dashboard = Dashboard(environ["SERVE_DASHBOARD_URL"], environ)
    deadline = time.monotonic() + float(environ["SERVE_CHECK_SECONDS"])
    applied = False
    said = ""
    while time.monotonic() < deadline:
        try:
            if not applied:
                refused = dashboard.apply(config)
                if refused:
                    log(refused)
                    return 1
                applied = True
            status = dashboard.status()
            done, why = check_state(config, status)
            if done and why:
                log(why)
                return 1
            why = why or routes_served(serve_url(environ, status), config) or ""
        except (UnavailableError, OSError, ValueError, LookupError, TypeError, AttributeError) as error:
            why = f"{type(error).__name__}: {error}"
        if not why:
            names = [app.get("name", "default") for app in config["applications"]]
            log(f"Serve applications RUNNING and routed: {names}")
            return 0
        if why != said:
            log(f"waiting: {why}")
            said = why
        time.sleep(PERIOD_SECONDS)
    log(f"the Serve applications were not RUNNING within {environ['SERVE_CHECK_SECONDS']} s: {said}")
    return 1


def main(argv: list[str]) -> int:
    environ = dict(os.environ)
    if argv[1:] == ["keep"]:
        keep(environ)
        return 0
    if argv[1:] == ["check"]:
        return check(environ)
    print(f"usage: {argv[0]} keep|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

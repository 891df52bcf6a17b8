"""Ray Serve on the cluster: `serveApplications` checked before anything is declared, the Serve objects as rendered,
the keeper's decisions, and the keeper and the check run against a real Ray head with Serve (the rehearsal's
image: `ray[default,serve]` at the pinned version)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
import requests

from components import load_settings
from components.config.serve import APPLICATION_KEYS, DEPLOYMENT_KEYS
from components.config.settings import GENERATION_LABEL
from components.in_pod import serve_keeper
from components.manifests import serve
from tests.http_stub import RecordingServer
from tests.program import Rendered, render_in_place
from tests.rehearsal import apiserver, image
from tests.test_conformance import validate_everywhere
from tests.test_program import object_labels
from tests.variants import SERVE, SERVE_APPLICATION, rendered

APP = SERVE_APPLICATION
# The rehearsal's stand-in for the Ray image's Python: ray[default,serve] at the pinned version (scripts/test).
IMAGE_PYTHON = image.ROOT / "bin" / "python"


def error_of(config: dict[str, object]) -> str:
    with pytest.raises(pulumi.RunError) as raised:
        load_settings(config, "ray-cluster", "test")
    return str(raised.value)


@pytest.mark.parametrize(
    ("applications", "words"),
    [
        ([{"name": "a"}], ["serveApplications[0].import_path is None", "`module:attribute` or `module.attribute`"]),
        ([{"import_path": "hello"}], ["serveApplications[0].import_path is 'hello'"]),
        ([{"import_path": "hello:app()"}], ["import_path is 'hello:app()'"]),
        ([{"import_path": "a:b"}, {"import_path": "c.d", "route_prefix": "/c"}],
         ["serveApplications[1].name is 'default'", "serveApplications[0] has it too"]),
        ([{"name": "a", "import_path": "a:b"}, {"name": "b", "import_path": "c:d"}],
         ["serveApplications[1].route_prefix is '/'", "unique"]),
        ([{"import_path": "a:b", "route_prefix": "hello"}], ["route_prefix is 'hello'", "must start with `/`"]),
        ([{"import_path": "a:b", "improt_path": "x"}], ["improt_path is 'x'", "did you mean `import_path`?"]),
        ([{"import_path": "a:b", "port": 8001}], ["[0].port is 8001", "not a key of a Serve application"]),
        ([{"import_path": "a:b", "deployments": [{"name": "A", "num_replica": 2}]}],
         ["deployments[0].num_replica is 2", "did you mean `num_replicas`?"]),
        ([{"import_path": "a:b", "deployments": [{"name": "A", "num_replicas": 0}]}], ['1 or more, or "auto"']),
        ([{"import_path": "a:b", "deployments": [{"num_replicas": 2}]}], ["deployments[0].name is None"]),
        ([{"import_path": "a:b", "deployments": [{"name": "A"}, {"name": "A"}]}], ["deployments[1].name is 'A'"]),
        ([{"import_path": "a:b", "runtime_env": {"working_dir": "./src"}}],
         ["runtime_env.working_dir is './src'", "remote URI"]),
        ([{"import_path": "a:b", "deployments": [{"name": "A", "ray_actor_options": {"runtime_env": {
            "py_modules": ["s3://b/m.zip", "lib"]}}}]}], ["ray_actor_options.runtime_env.py_modules"]),
        ([{"import_path": "a:b", "args": "x=1"}], ["serveApplications[0].args is 'x=1'", "an object"]),
        ("hello:app", ["serveApplications is 'hello:app'", "a list"]),
    ],
)  # fmt: skip
def test_a_bad_application_is_refused_naming_the_key(applications: object, words: list[str]) -> None:
    message = error_of({"serveApplications": applications})
    assert message.startswith("ray-cluster:serveApplications")
    for word in words:
        assert word in message


def test_an_audience_without_applications_is_refused() -> None:
    assert "serveApplications is empty" in error_of({"allowedServeNamespaces": ["ingress"]})
    assert "10.0.0.0/8" in error_of({"allowedServeCidrs": ["10.0.0.0/8"]})


def test_good_applications_are_kept_as_given() -> None:
    given = [
        {**APP, "runtime_env": {"working_dir": "https://example.com/app.zip", "env_vars": {"A": "1"}}},
        {"name": "other", "import_path": "pkg.mod.builder", "route_prefix": None, "args": {"size": 3},
         "deployments": [{"name": "Model", "num_replicas": "auto", "autoscaling_config": {"max_replicas": 4}},
                         {"name": "Default", "num_replicas": None, "ray_actor_options": None}]},
    ]  # fmt: skip
    settings = load_settings({"serveApplications": given}, "ray-cluster", "test").serve
    assert settings is not None
    assert settings.applications == given
    assert settings.names == ("hello", "other") and settings.route_prefixes == ("/hello", None)


@pytest.mark.rehearsal
def test_the_keys_are_serves_own_at_the_pinned_version() -> None:
    """Every key of Serve's application and deployment schemas, as the pinned Ray has them, is accepted, and no
    other (an application's `host` and `port` only belong at the top, which Serve says when given)."""
    fields = subprocess.run(
        [str(IMAGE_PYTHON), "-c", "from ray.serve.schema import DeploymentSchema as D, ServeApplicationSchema as A; "
         "import json; print(json.dumps([sorted(A.model_fields), sorted(D.model_fields)]))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    applications, deployments = json.loads(fields.stdout)
    assert set(applications) - {"host", "port"} == APPLICATION_KEYS
    assert set(deployments) == DEPLOYMENT_KEYS


# ----- the rendered objects -----


def by_kind(result: Rendered, kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"].get("name", ""): m for m in result.manifests if m["kind"] == kind}


def head_pod(result: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = result.one("Deployment", "ray-head")["spec"]["template"]["spec"]
    return spec


def test_the_serve_service_selects_nothing_and_its_endpoints_are_the_keepers() -> None:
    result = rendered("serve")
    service = by_kind(result, "Service")["ray-serve"]
    assert "selector" not in service["spec"]
    assert service["spec"]["ports"] == [{"name": "serve", "port": 8000, "targetPort": 8000, "protocol": "TCP"}]
    assert service["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
    assert result.outputs["serveUrl"] == "http://ray-serve.ray-test.svc:8000"
    config = json.loads(by_kind(result, "ConfigMap")["ray-serve"]["data"]["serve.json"])
    assert config == {"proxy_location": "EveryNode", "http_options": {"host": "0.0.0.0", "port": 8000},
                      "applications": [APP]}  # fmt: skip
    assert not any(m["kind"] == "EndpointSlice" for m in result.manifests)


@pytest.mark.parametrize(("variant", "account"), [("serve", "ray-serve"),
                                                  ("serve-autoscaling-fault-tolerant", "ray-autoscaler")])  # fmt: skip
def test_only_the_keeper_holds_the_kubernetes_token_and_its_role_is_its_calls(variant: str, account: str) -> None:
    result = rendered(variant)
    autoscaled = account == "ray-autoscaler"
    account = result.one("ServiceAccount", account)["metadata"]["name"]  # a generation's autoscaler's has its id
    pod = head_pod(result)
    assert pod["serviceAccountName"] == account and pod["automountServiceAccountToken"] is False
    mounting = {c["name"] for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == "kube-api-access"}
    assert mounting == ({"serve-keeper", "autoscaler"} if autoscaled else {"serve-keeper"})
    assert [v["name"] for v in pod["volumes"]].count("kube-api-access") == 1
    role = by_kind(result, "Role")["ray-serve"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["ray-serve"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get"], "resourceNames": ["ray-serve"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["create"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "update"],
         "resourceNames": ["ray-serve"]},
    ]  # fmt: skip
    binding = by_kind(result, "RoleBinding")["ray-serve"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ray-test"}]
    assert ("ray-serve" in by_kind(result, "ServiceAccount")) is (account == "ray-serve")


def test_the_serve_objects_are_labelled_as_serve_in_the_heads_group_where_the_keeper_runs() -> None:
    result = rendered("serve")
    for kind in ("Service", "ConfigMap"):
        assert result.one(kind, "ray-serve")["metadata"]["labels"] == object_labels("serve", "head"), kind


def test_the_keeper_runs_its_shipped_text_and_every_ray_pod_offers_the_serve_port() -> None:
    result = rendered("serve")
    [keeper] = [c for c in head_pod(result)["containers"] if c["name"] == "serve-keeper"]
    assert keeper["command"] == ["python", "-s", "-c", Path(serve_keeper.__file__).read_text(), "keep"]
    env = {e["name"]: e.get("value") for e in keeper["env"]}
    assert env["SERVE_DASHBOARD_URL"] == "http://127.0.0.1:8265" and env["SERVE_NAME"] == "ray-serve"
    assert keeper["readinessProbe"]["exec"] and keeper["livenessProbe"]["exec"]
    for name, deployment in by_kind(result, "Deployment").items():
        ray = deployment["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "serve", "containerPort": 8000, "protocol": "TCP"} in ray["ports"], name
    default = rendered("default")
    assert not any(c["name"] == "serve-keeper" for c in head_pod(default)["containers"])
    assert "serveUrl" in default.outputs and default.outputs["serveUrl"] is None


def test_the_check_job_carries_the_config_so_a_change_runs_it_again() -> None:
    [job] = [
        m
        for m in rendered("serve").manifests
        if m["kind"] == "Job" and "serve-check" in m["metadata"]["labels"].values()
    ]
    assert job["spec"]["backoffLimit"] == 0
    [check] = job["spec"]["template"]["spec"]["containers"]
    assert check["command"][-1] == "check"
    env = {e["name"]: e.get("value") for e in check["env"]}
    assert json.loads(env["SERVE_CONFIG"])["applications"] == [APP]
    # The default's new generation's check asks its own head (tests/test_generations.py); in place, the Service.
    in_place = render_in_place(SERVE)
    [in_place_job] = [job for job in in_place.of_kind("Job") if "serve-check" in job["metadata"]["labels"].values()]
    [in_place_check] = in_place_job["spec"]["template"]["spec"]["containers"]
    in_place_env = {e["name"]: e.get("value") for e in in_place_check["env"]}
    assert in_place_env["SERVE_URL"] == "http://ray-serve.ray-test.svc:8000"
    assert in_place_env["SERVE_DASHBOARD_URL"] == "http://ray-head.ray-test.svc:8265"
    # The check gives up, saying what it waited for, half a minute before Kubernetes would end the Job.
    assert job["spec"]["activeDeadlineSeconds"] == 900 and env["SERVE_CHECK_SECONDS"] == "870"
    assert check["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_serve_audience_gets_port_8000_and_nothing_else() -> None:
    policies = by_kind(rendered("serve-autoscaling-fault-tolerant"), "NetworkPolicy")
    [rule] = policies["ray-serve"]["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert rule["from"] == [
        {"ipBlock": {"cidr": "10.0.0.0/8"}},
        {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                                     "values": ["ingress-nginx"]}]}},
    ]  # fmt: skip
    others = [p for name, p in policies.items() if name != "ray-serve"]
    assert not any("ingress-nginx" in json.dumps(p) for p in others)


# ----- the keeper's decisions -----


def test_the_head_serves_only_while_no_worker_proxy_is_healthy() -> None:
    proxies = {"h": {"node_ip": "10.0.0.1"}, "w1": {"node_ip": "10.0.0.2"}, "w2": {"node_ip": "10.0.0.3"}}
    status = {"controller_info": {"node_id": "h"}, "proxies": proxies}
    assert serve_keeper.serving_addresses(status, {"10.0.0.1", "10.0.0.3"}, []) == ["10.0.0.3"]
    assert serve_keeper.serving_addresses(status, {"10.0.0.1"}, []) == ["10.0.0.1"]
    assert serve_keeper.serving_addresses(status, set(), ["10.0.0.3"]) == []
    assert serve_keeper.proxy_addresses(status) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_a_proxy_already_published_stays_while_it_answers_though_a_new_controller_lists_none() -> None:
    """A new head's Serve controller reports no proxies for a moment: the workers' go on serving meanwhile."""
    assert serve_keeper.serving_addresses({"controller_info": {}, "proxies": {}}, {"10.0.0.3"}, ["10.0.0.3"]) == [
        "10.0.0.3"
    ]


def test_the_check_waits_for_the_config_it_applied_and_fails_with_serves_words() -> None:
    config = {"applications": [APP]}
    status = {"applications": {"hello": {"status": "RUNNING", "deployed_app_config": {**APP, "import_path": "old:x"}}}}
    assert serve_keeper.check_state(config, status) == (False, "hello: not applied yet")
    status["applications"]["hello"]["deployed_app_config"] = APP
    assert serve_keeper.check_state(config, status) == (True, "")
    status["applications"]["hello"].update(status="DEPLOY_FAILED", message="ModuleNotFoundError: hello")
    assert serve_keeper.check_state(config, status) == (
        True, "Serve application 'hello' is DEPLOY_FAILED: ModuleNotFoundError: hello")  # fmt: skip
    assert serve_keeper.missing_applications(config, {"applications": {}}) == ["hello"]


def test_an_application_without_a_name_is_serves_default_one_when_the_keeper_looks_for_it() -> None:
    unnamed = {"applications": [{key: value for key, value in APP.items() if key != "name"}]}
    assert serve_keeper.missing_applications(unnamed, {"applications": {}}) == ["default"]
    assert serve_keeper.missing_applications(unnamed, {"applications": {"default": {}}}) == []


def test_the_endpoint_slice_is_a_valid_one_owned_by_the_service() -> None:
    service = {"metadata": {"name": "ray-serve", "namespace": "ray-test", "uid": "u-1"}}
    for addresses in (["10.0.0.2", "10.0.0.3"], [], ["fd00::2"]):
        kind = serve_keeper.address_type(addresses[0] if addresses else "10.0.0.1")
        manifest = serve_keeper.endpoint_slice("ray-serve", service, addresses, 8000, kind)
        validate_everywhere(manifest)
        assert manifest["addressType"] == ("IPv6" if addresses == ["fd00::2"] else "IPv4")
        assert manifest["metadata"]["labels"]["kubernetes.io/service-name"] == "ray-serve"
        assert manifest["metadata"]["ownerReferences"][0]["uid"] == "u-1"
        assert [e["addresses"] for e in manifest["endpoints"]] == [[a] for a in addresses]
    assert serve_keeper.MANAGED_BY == serve.MANAGED_BY


# ----- against a real Ray head with Serve -----


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


HELLO = Path(image.__file__).parent / "serve_apps" / "hello.py"


@dataclass
class ServeHead:
    dashboard: str
    serve_port: int
    environ: dict[str, str]
    directory: Path

    def logs(self) -> str:
        """For a failure: what `ray start` said, which of Ray's processes ended and why, the dashboard's last words."""
        logs = self.directory / "ray" / "session_latest" / "logs"
        shown = [
            self.directory / "head.log",
            logs / "ray_process_exit.log",
            logs / "dashboard.err",
            logs / "dashboard.log",
        ]
        return "".join(
            f"\n--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in shown if path.exists()
        )

    def config(self, *applications: dict[str, Any]) -> dict[str, Any]:
        return {"proxy_location": "EveryNode", "http_options": {"host": "0.0.0.0", "port": self.serve_port},
                "applications": list(applications)}  # fmt: skip


HEAD_STARTS = 3  # a kubelet would go on, backing off; three starts bound the fixture


@pytest.fixture(scope="module")
def serve_head() -> Iterator[ServeHead]:
    """`ray start --head --block` of the rehearsal's image, with token auth and an app module on its path, in a
    session of its own (stopped as a whole), on loopback only; at nice -10, as the Serve modules' clusters run
    (tests/test_rehearsal_serve.py): at the others' priority, beside three clusters and the upgrade drill's job a
    second, its dashboard stopped answering (timeouts, then refused connections) and all three of its tests failed,
    twice in eight runs."""
    if not IMAGE_PYTHON.exists():
        pytest.fail(f"{IMAGE_PYTHON} is missing: scripts/test builds the rehearsal's image (as root)")
    directory = Path(tempfile.mkdtemp(prefix="/tmp/serve-"))
    (directory / "apps").mkdir()
    shutil.copy(HELLO, directory / "apps" / "hello.py")
    token = directory / "token"
    token.write_text("a-token-for-this-test-only-0123456789")
    environ = {"PATH": f"{IMAGE_PYTHON.parent}:/usr/bin:/bin", "HOME": str(directory), "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
               "PYTHONPATH": str(directory / "apps")}  # fmt: skip
    dashboard_port, serve_port = free_port(), free_port()
    command = ["nice", "-n", "-10", str(IMAGE_PYTHON.parent / "ray"), "start", "--head", "--block",
               f"--port={free_port()}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard_port}", "--num-cpus=4", f"--temp-dir={directory / 'ray'}",
               "--disable-usage-stats"]  # fmt: skip
    log = (directory / "head.log").open("w")

    def start() -> tuple[subprocess.Popen[bytes], int]:
        """`ray start`, and where its lines begin in the log."""
        since = (directory / "head.log").stat().st_size
        process = subprocess.Popen(command, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return process, since

    head, since = start()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        # Up once `ray start` says so (its raylet registered with the GCS) and the dashboard answers. `ray start`
        # gives up when its raylet has not registered within 30 s (Ray's node.py, fixed), which a full run's load
        # once made it do after the dashboard had answered; a head pod's container would then be restarted by its
        # kubelet, and so is this.
        deadline, starts = time.monotonic() + 180, 1
        while True:
            try:
                started = b"Ray runtime started" in (directory / "head.log").read_bytes()[since:]
                if started and requests.get(f"{dashboard}/api/gcs_healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if head.poll() is not None and starts < HEAD_STARTS:
                stop_all(head, directory)
                (head, since), starts = start(), starts + 1
            assert head.poll() is None and time.monotonic() < deadline, (directory / "head.log").read_text()
            time.sleep(0.5)
        yield ServeHead(dashboard, serve_port, {**environ, "SERVE_DASHBOARD_URL": dashboard}, directory)
    finally:
        stop_all(head, directory)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def stop_all(head: subprocess.Popen[bytes], directory: Path) -> None:
    """SIGKILL to `ray start --block`'s session and to any process of this head that left it (its session directory
    is in every Ray process's command line), as `kubectl delete --force --grace-period=0` ends a pod: no test here
    proves a graceful stop, and SIGTERM's stop took over 30 s in a full run."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=30)
    for process in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if str(directory).encode() in (process / "cmdline").read_bytes():
                os.kill(int(process.name), signal.SIGKILL)


def run_check(head: ServeHead, config: dict[str, Any], seconds: int = 120) -> subprocess.CompletedProcess[str]:
    """The check as its Job runs it: the image's Python, the shipped text, the env the Job gives it."""
    environ = {**head.environ, "SERVE_URL": f"http://127.0.0.1:{head.serve_port}", "SERVE_CONFIG": json.dumps(config),
               "SERVE_CHECK_SECONDS": str(seconds)}  # fmt: skip
    command = [str(IMAGE_PYTHON), "-s", "-c", serve.KEEPER_SOURCE, "check"]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=seconds + 30)


@pytest.mark.rehearsal
def test_the_check_passes_once_the_application_answers(serve_head: ServeHead) -> None:
    result = run_check(serve_head, serve_head.config(APP))
    assert result.returncode == 0, result.stdout + result.stderr + serve_head.logs()
    assert "Serve applications RUNNING and routed: ['hello']" in result.stdout
    assert requests.get(f"http://127.0.0.1:{serve_head.serve_port}/hello", timeout=5).text == "hello"


@pytest.mark.rehearsal
def test_a_bad_import_path_fails_the_check_with_serves_message(serve_head: ServeHead) -> None:
    broken = {**APP, "name": "broken", "route_prefix": "/broken", "import_path": "no_such_module:app"}
    started = time.monotonic()
    result = run_check(serve_head, serve_head.config(APP, broken))
    assert result.returncode == 1, result.stdout + serve_head.logs()
    assert "Serve application 'broken' is DEPLOY_FAILED" in result.stdout, result.stdout + serve_head.logs()
    assert "No module named 'no_such_module'" in result.stdout
    assert time.monotonic() - started < 60


class MemoryKubernetes(serve_keeper.Kubernetes):
    """The keeper's API calls against objects in memory (its ConfigMap, its Service, the EndpointSlice it writes),
    each authorized by the rendered Role as RBAC does it (403 otherwise), a write of a stale resourceVersion a
    409 Conflict, a change of an EndpointSlice's addressType a 422 and a write by another method than POST or PUT a
    405, as the API server answers them."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.namespace = "ray-test"
        self.objects: dict[str, dict[str, Any]] = {
            self.path("v1", "configmaps", "ray-serve"): {"data": {"serve.json": json.dumps(config)}},
            self.path("v1", "services", "ray-serve"): {"metadata": {"name": "ray-serve", "namespace": "ray-test",
                                                                    "uid": "u-1"}},
        }  # fmt: skip
        self.rules = by_kind(rendered("serve"), "Role")["ray-serve"]["rules"]
        self.versions = 0

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        attributes = apiserver.request_info(method, path, {})
        if not any(apiserver.rule_allows(rule, attributes) for rule in self.rules):
            return 403, {"message": f"{attributes.verb} {attributes.resource} {attributes.name} is forbidden"}
        if method == "GET":
            found = self.objects.get(path)
            return (200, found) if found else (404, {"message": "not found"})
        assert body is not None
        target = path if method == "PUT" else f"{path}/{body['metadata']['name']}"
        current = self.objects.get(target)
        if method == "PUT":
            if current is None or current["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
                return 409, {"message": "the object has been modified"}
            if current["addressType"] != body["addressType"]:
                return 422, {"message": "addressType: Invalid value: field is immutable"}
        elif method != "POST":
            return 405, {"message": f"the server does not allow this method on the requested resource: {method}"}
        elif current is not None:
            return 409, {"message": "already exists"}
        self.versions += 1
        self.objects[target] = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.versions)}}
        return (201 if method == "POST" else 200), body


class QuietDashboard(serve_keeper.Dashboard):
    """Serve as a new head's controller answers just after it came back: every application, no proxy yet."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.answer = status

    def status(self) -> dict[str, Any]:
        return self.answer

    def apply(self, config: dict[str, Any]) -> str | None:
        return None


def answering(healthy: set[str] | None = None) -> Callable[[set[str], int], dict[str, str]]:
    """A stand-in for the keeper's probes: the proxies in `healthy` (every one, if None) answer 200, the others
    nothing in time."""
    return lambda addresses, port: {
        address: serve_keeper.ANSWERED if healthy is None or address in healthy else serve_keeper.SILENT
        for address in addresses
    }


def test_a_new_keeper_keeps_the_proxies_the_service_holds_while_they_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new head's keeper (nothing published yet in its process) finds the workers' proxies in the live slice;
    while the new controller lists no proxy, those that answer stay, and one that does not goes."""
    config = {"applications": [APP]}
    kubernetes = MemoryKubernetes(config)
    service = kubernetes.objects[kubernetes.path("v1", "services", "ray-serve")]
    live = serve_keeper.endpoint_slice("ray-serve", service, ["10.0.0.2", "10.0.0.3"], 8000, "IPv4")
    slice_path = kubernetes.path("discovery.k8s.io/v1", "endpointslices", "ray-serve")
    kubernetes.objects[slice_path] = {**live, "metadata": {**live["metadata"], "resourceVersion": "7"}}
    status = {"controller_info": {"node_id": "h"}, "proxies": {}, "applications": {"hello": {}}}
    keeper = serve_keeper.Keeper(QuietDashboard(status), kubernetes, "ray-serve", 8000, "10.0.0.1")
    monkeypatch.setattr(serve_keeper, "probe_proxies", answering({"10.0.0.2"}))
    keeper.step()
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.0.2"]


def test_the_first_keeper_creates_the_endpoint_slice_with_the_healthy_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """No slice yet (a new stack): the keeper creates it, owned by the Service, holding the proxy that answers."""
    kubernetes = MemoryKubernetes({"applications": [APP]})
    status = {"controller_info": {"node_id": "h"}, "proxies": {"w": {"node_ip": "10.0.0.2"}}, "applications": {}}
    keeper = serve_keeper.Keeper(QuietDashboard(status), kubernetes, "ray-serve", 8000, "10.0.0.1")
    monkeypatch.setattr(serve_keeper, "probe_proxies", answering({"10.0.0.2"}))
    keeper.step()
    created = kubernetes.objects[kubernetes.path("discovery.k8s.io/v1", "endpointslices", "ray-serve")]
    assert serve_keeper.slice_addresses(created) == ["10.0.0.2"]
    assert created["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_a_proxy_is_healthy_from_its_first_200_until_it_refuses_or_is_silent_for_30_seconds() -> None:
    health = serve_keeper.ProxyHealth()
    answered, refused, silent = serve_keeper.ANSWERED, serve_keeper.REFUSED, serve_keeper.SILENT
    one, two = "10.0.0.1", "10.0.0.2"
    assert health.observe({one: answered, two: silent}, 0.0) == {one}  # two never answered: not healthy
    # No probe for 100 s (the keeper's passes failed): the silence counts from the first silent probe after it.
    assert health.observe({one: silent, two: silent}, 100.0) == {one}
    assert health.observe({one: silent, two: silent}, 129.9) == {one}
    assert health.observe({one: silent, two: answered}, 130.0) == {two}  # its probes found it silent for 30 s
    assert health.observe({one: answered, two: silent}, 131.0) == {one, two}  # an answer: healthy at once
    assert health.observe({one: refused, two: silent}, 132.0) == {two}  # a 503 or a refused connection: at once
    assert health.observe({one: silent, two: silent}, 133.0) == {two}  # and until it answers 200 again
    assert health.observe({one: answered}, 134.0) == {one}
    assert health.observe({one: silent, two: silent}, 135.0) == {one}  # two, not probed last, was forgotten


class Clock:
    """The keeper's time, as the test sets it."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    strftime = staticmethod(time.strftime)


def test_a_keeper_rides_out_silent_probes_and_never_empties_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load probes time out now and then: the Service stays on the worker's proxy (not moving to the head's,
    whose node the job submissions load) until the worker's has not answered for 30 s, or at once when it refuses;
    and with no proxy answering at all it keeps the one it has rather than refuse every request."""
    kubernetes = MemoryKubernetes({"applications": [APP]})
    proxies = {"h": {"node_ip": "10.0.0.1"}, "w": {"node_ip": "10.0.0.2"}}
    status = {"controller_info": {"node_id": "h"}, "proxies": proxies, "applications": {}}
    keeper = serve_keeper.Keeper(QuietDashboard(status), kubernetes, "ray-serve", 8000, "10.0.0.1")
    slice_path = kubernetes.path("discovery.k8s.io/v1", "endpointslices", "ray-serve")
    clock = Clock()
    monkeypatch.setattr(serve_keeper, "time", clock)

    def served_at(seconds: float, healthy: set[str] | None) -> list[str]:
        clock.now = seconds
        monkeypatch.setattr(serve_keeper, "probe_proxies", answering(healthy))
        keeper.step()
        return serve_keeper.slice_addresses(kubernetes.objects[slice_path])

    assert served_at(0, None) == ["10.0.0.2"]
    for second in range(1, 31):
        assert served_at(second, {"10.0.0.1"}) == ["10.0.0.2"], second
    assert served_at(31, {"10.0.0.1"}) == ["10.0.0.1"]  # the worker's probes have found it silent for 30 s
    assert served_at(32, None) == ["10.0.0.2"]  # it answers again
    for second in range(33, 70):  # no proxy answers at all
        assert served_at(second, set()) == ["10.0.0.2"], second
    assert served_at(70, None) == ["10.0.0.2"]
    monkeypatch.setattr(
        serve_keeper, "probe_proxies", lambda addresses, port: dict.fromkeys(addresses, serve_keeper.ANSWERED)
        | {"10.0.0.2": serve_keeper.REFUSED}
    )  # fmt: skip
    clock.now = 71
    keeper.step()  # the worker's proxy drains (503): the head's takes the requests at once
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.0.1"]


def test_a_silent_proxy_that_serve_no_longer_lists_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's node that left the cluster (Serve lists its proxy no more) and does not answer is gone, not busy:
    the head's proxy takes the requests on the next pass, not 30 s later."""
    kubernetes = MemoryKubernetes({"applications": [APP]})
    proxies = {"h": {"node_ip": "10.0.0.1"}, "w": {"node_ip": "10.0.0.2"}}
    status = {"controller_info": {"node_id": "h"}, "proxies": proxies, "applications": {}}
    keeper = serve_keeper.Keeper(QuietDashboard(status), kubernetes, "ray-serve", 8000, "10.0.0.1")
    slice_path = kubernetes.path("discovery.k8s.io/v1", "endpointslices", "ray-serve")
    monkeypatch.setattr(serve_keeper, "probe_proxies", answering())
    keeper.step()
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.0.2"]
    monkeypatch.setattr(serve_keeper, "probe_proxies", answering({"10.0.0.1"}))
    keeper.step()  # silent, but listed: it stays
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.0.2"]
    del proxies["w"]
    keeper.step()
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.0.1"]


def test_generations_keepers_hand_the_service_over_when_its_annotation_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each generation's keeper writes the slice only while the Service's annotation names its generation; the new
    one publishes its own proxies, never adopting the old generation's (which still answer while they drain)."""
    kubernetes = MemoryKubernetes({"applications": [APP]})
    service = kubernetes.objects[kubernetes.path("v1", "services", "ray-serve")]
    service["metadata"]["annotations"] = {GENERATION_LABEL: "0000000a"}
    slice_path = kubernetes.path("discovery.k8s.io/v1", "endpointslices", "ray-serve")
    monkeypatch.setattr(serve_keeper, "probe_proxies", answering())

    def keeper(generation: str, worker: str) -> serve_keeper.Keeper:
        status = {"controller_info": {"node_id": "h"}, "proxies": {"w": {"node_ip": worker}}, "applications": {}}
        head = f"{worker}0"
        return serve_keeper.Keeper(QuietDashboard(status), kubernetes, "ray-serve", 8000, head,
                                   (GENERATION_LABEL, generation))  # fmt: skip

    old, new = keeper("0000000a", "10.0.1.2"), keeper("0000000b", "10.0.2.2")
    old.step()
    new.step()
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.1.2"]
    service["metadata"]["annotations"] = {GENERATION_LABEL: "0000000b"}
    old.step()
    new.step()
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.2.2"]
    # A keeper taking the Service over never empties it: until a proxy of its own answers, the old ones keep it.
    newer = keeper("0000000c", "10.0.3.2")
    monkeypatch.setattr(serve_keeper, "probe_proxies", answering(set()))
    service["metadata"]["annotations"] = {GENERATION_LABEL: "0000000c"}
    newer.step()
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.2.2"]
    monkeypatch.setattr(serve_keeper, "probe_proxies", answering())
    newer.step()
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.3.2"]
    # An old keeper's pass that began before a switch (its addresses computed then) writes nothing after it.
    new.publish(["10.0.2.2"])
    for _ in range(3):
        old.step()
        new.step()
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == ["10.0.3.2"]


def test_a_generations_check_asks_its_heads_own_proxy_and_in_place_the_service() -> None:
    status = {
        "controller_info": {"node_id": "h"},
        "proxies": {"h": {"node_ip": "fd00::5"}, "w": {"node_ip": "10.0.0.2"}},
    }
    assert serve_keeper.serve_url({"SERVE_PORT": "8000"}, status) == "http://[fd00::5]:8000"
    service = "http://ray-serve.ray-test.svc:8000"
    assert serve_keeper.serve_url({"SERVE_PORT": "8000", "SERVE_URL": service}, status) == service
    with pytest.raises(serve_keeper.UnavailableError, match="no proxy on the head"):
        serve_keeper.serve_url({"SERVE_PORT": "8000"}, {"controller_info": {"node_id": "h"}, "proxies": {}})


def test_a_probe_tells_a_200_from_a_refusal_and_from_silence() -> None:
    """A 200 answers; a 503 (a draining proxy) or no listener (a proxy gone) refuses; a listener that takes the
    connection and says nothing within the probe's timeout (a loaded node) is silent."""
    healthy = RecordingServer(("127.0.0.1", 0), default=(200, {}))
    unhealthy = RecordingServer(("127.0.0.3", healthy.port), default=(503, {}))
    with socket.create_server(("127.0.0.4", healthy.port)):  # the kernel takes connections; none is read
        try:
            probes = serve_keeper.probe_proxies({f"127.0.0.{n}" for n in range(1, 5)}, healthy.port)
        finally:
            healthy.close()
            unhealthy.close()
    answered, refused, silent = serve_keeper.ANSWERED, serve_keeper.REFUSED, serve_keeper.SILENT
    assert probes == {"127.0.0.1": answered, "127.0.0.2": refused, "127.0.0.3": refused, "127.0.0.4": silent}
    for server in (healthy, unhealthy):
        assert [(e.method, e.path, e.headers.get("Authorization")) for e in server.exchanges] == [
            ("GET", "/-/healthz", None)
        ]


@pytest.mark.parametrize("mode", ["token", ""])
def test_the_keeper_asks_serve_with_the_clusters_token_when_token_auth_is_on(mode: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("the-token\n")
    environ = {"RAY_AUTH_MODE": mode, "RAY_AUTH_TOKEN_PATH": str(token)}
    server = RecordingServer(default=(200, {}))
    try:
        dashboard = serve_keeper.Dashboard(f"http://127.0.0.1:{server.port}/", environ)
        assert dashboard.status() == {} and dashboard.apply({"applications": []}) is None
    finally:
        server.close()
    auth = "Bearer the-token" if mode == "token" else None
    assert [(e.method, e.path, e.headers.get("Authorization")) for e in server.exchanges] == [
        (method, "/api/serve/applications/", auth) for method in ("GET", "PUT")
    ]


@pytest.mark.rehearsal
def test_the_keeper_keeps_the_applications_and_points_the_service_at_the_proxy(serve_head: ServeHead) -> None:
    """It applies a changed config in place, with no failed request at 20 requests a second; after Serve has lost
    its applications (as a head restarted without fault tolerance comes back), it applies them again by itself;
    the Service's endpoints are the head's proxy, the only one, and come back after the slice is deleted."""
    config = serve_head.config(APP)
    kubernetes = MemoryKubernetes(config)
    dashboard = serve_keeper.Dashboard(serve_head.dashboard, serve_head.environ)
    keeper = serve_keeper.Keeper(dashboard, kubernetes, "ray-serve", serve_head.serve_port, "127.0.0.1")
    slice_path = kubernetes.path("discovery.k8s.io/v1", "endpointslices", "ray-serve")

    def settled(want: dict[str, Any], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                keeper.step()
                done, why = serve_keeper.check_state(want, dashboard.status())
            except serve_keeper.UnavailableError as error:  # tried again on the next pass, as `keep` does
                done, why = False, str(error)
            if done and not why and kubernetes.objects.get(slice_path, {}).get("endpoints"):
                return
            assert time.monotonic() < deadline, why + serve_head.logs()
            time.sleep(0.5)

    settled(config)
    status = dashboard.status()
    head_ip = status["proxies"][status["controller_info"]["node_id"]]["node_ip"]
    assert [e["addresses"] for e in kubernetes.objects[slice_path]["endpoints"]] == [[head_ip]]
    del kubernetes.objects[slice_path]
    settled(config, seconds=serve_keeper.RESYNC_SECONDS + 5)
    assert serve_keeper.slice_addresses(kubernetes.objects[slice_path]) == [head_ip]

    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.05):
            try:
                answer = requests.get(f"http://127.0.0.1:{serve_head.serve_port}/hello", timeout=5)
                if answer.text != "hello":
                    failures.append(f"{answer.status_code} {answer.text[:100]}")
            except requests.RequestException as error:
                failures.append(repr(error))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        time.sleep(2)
        scaled = serve_head.config({**APP, "deployments": [{"name": "Hello", "num_replicas": 3}]})
        kubernetes.objects[kubernetes.path("v1", "configmaps", "ray-serve")]["data"]["serve.json"] = json.dumps(scaled)
        settled(scaled)
        time.sleep(2)
    finally:
        stop.set()
        sender.join()
    assert failures == []
    replicas = dashboard.status()["applications"]["hello"]["deployments"]["Hello"]["replicas"]
    assert len(replicas) == 3

    token = Path(serve_head.environ["RAY_AUTH_TOKEN_PATH"]).read_text()
    lost = requests.delete(
        f"{serve_head.dashboard}{serve_keeper.SERVE_API}", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    assert lost.status_code == 200 and serve_keeper.missing_applications(scaled, dashboard.status()) == ["hello"]
    # The keeper's next pass that reaches Serve applies them again: not a resync's, nor a changed config's.
    for _ in range(10):
        try:
            keeper.step()
            break
        except serve_keeper.UnavailableError:
            time.sleep(0.5)
    assert serve_keeper.missing_applications(scaled, dashboard.status()) == []
    settled(scaled)

"""Secure by default: Pod Security Standard "restricted", token auth in every Ray process, NetworkPolicies,
no secret in outputs, and a clean checkov scan."""

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.manifests import ray_node
from tests.program import ROOT, Manifest, Rendered
from tests.program import render_in_place as render
from tests.variants import VARIANTS, rendered

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIPS: dict[str, str] = yaml.safe_load((ROOT / "tests" / "checkov-skips.yaml").read_text())


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "Job"}:
            yield manifest["metadata"]["name"], manifest["spec"]["template"]["spec"]


def restricted_violations(name: str, spec: Manifest) -> list[str]:
    """The Pod Security Standard "restricted" rules, plus this project's own: read-only root filesystem,
    no API token, requests = limits on every container, probes on long-running containers."""
    found = []
    pod_context = spec.get("securityContext", {})
    if pod_context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        found.append(f"{name}: seccomp profile is not RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False or not spec.get("serviceAccountName"):
        found.append(f"{name}: no dedicated ServiceAccount with its token unmounted")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(f"{name}: {key}")
    if any("hostPath" in volume for volume in spec.get("volumes", [])):
        found.append(f"{name}: hostPath volume")
    for container in spec.get("initContainers", []) + spec["containers"]:
        where, context = f"{name}/{container['name']}", container.get("securityContext", {})
        run_as_non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        run_as_user = context.get("runAsUser", pod_context.get("runAsUser"))
        if run_as_non_root is not True or run_as_user == 0:
            found.append(f"{where}: may run as root")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: privilege escalation allowed")
        if context.get("capabilities", {}).get("drop") != ["ALL"] or context.get("capabilities", {}).get("add"):
            found.append(f"{where}: capabilities not all dropped")
        if context.get("privileged"):
            found.append(f"{where}: privileged")
        if context.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: writable root filesystem")
        resources = container.get("resources", {})
        if not resources.get("requests") or resources.get("requests") != resources.get("limits"):
            found.append(f"{where}: requests and limits missing or different")
    for container in spec["containers"]:
        if spec.get("restartPolicy", "Always") == "Always" and not (
            container.get("readinessProbe") and container.get("livenessProbe")
        ):
            found.append(f"{name}/{container['name']}: long-running without probes")
    return found


# The worker's init container tries the head's GCS port in bash and runs no Ray code (checked below).
WITHOUT_RAY = {"wait-gcs-ready"}
# The retirement Job talks to old generations' heads with their tokens, which it reads through the API (their
# Secrets), never with one of its own (checked below).
WITH_OTHERS_TOKENS = {"retire"}


def ray_containers(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest, Manifest]]:
    """Every container that runs Ray code (a node, a health check, the autoscaler or a driver), with its pod spec:
    those of every pod labelled as Ray's (the stack's Redis is not)."""
    ray_pods = {
        m["metadata"]["name"]
        for m in manifests
        if m["kind"] in {"Deployment", "Job"}
        and m["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "ray"
    }
    for name, spec in pod_specs(manifests):
        if name not in ray_pods:
            continue
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container["name"] not in WITHOUT_RAY | WITH_OTHERS_TOKENS:
                yield f"{name}/{container['name']}", container, spec


def test_the_retirement_reads_old_generations_tokens_through_the_api_and_mounts_no_token() -> None:
    manifests = rendered("fault-tolerant").manifests
    [retire] = [c for _, spec in pod_specs(manifests) for c in spec["containers"] if c["name"] in WITH_OTHERS_TOKENS]
    assert "RAY_AUTH_TOKEN_PATH" not in {item["name"] for item in retire["env"]}
    [role] = [m for m in manifests if m["kind"] == "Role" and m["metadata"]["name"] == "ray-retire"]
    [secrets] = [rule for rule in role["rules"] if "secrets" in rule["resources"]]
    assert secrets["verbs"] == ["get", "delete"]  # no list: it cannot read every Secret at once (any one by name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_containers_said_to_run_no_ray_code_run_none(variant: str) -> None:
    """So they need no token: bash's TCP connect, no `ray` command and no Python."""
    for _, spec in pod_specs(rendered(variant).manifests):
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container["name"] in WITHOUT_RAY:
                shell, flag, script = container["command"]
                assert (shell, flag) == ("/bin/bash", "-c") and "/dev/tcp/" in script
                assert not re.search(r"\bray |python", script) and "env" not in container, script


def missing_token(manifests: list[Manifest], secret_name: str) -> list[str]:
    """Ray containers that would not present the token: auth mode, token path, and the Secret mounted there."""
    missing = []
    for where, container, spec in ray_containers(manifests):
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        token_path = Path(env.get("RAY_AUTH_TOKEN_PATH") or "/nonexistent/token")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = [
            mount
            for mount in container.get("volumeMounts", [])
            if Path(mount["mountPath"]) == token_path.parent
            and volumes.get(mount["name"], {}).get("secret", {}).get("secretName") == secret_name
        ]
        if env.get("RAY_AUTH_MODE") != "token" or not mounted or "RAY_AUTH_TOKEN" in env:
            missing.append(where)
    return missing


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_is_restricted(variant: str) -> None:
    for name, spec in pod_specs(rendered(variant).manifests):
        assert restricted_violations(name, spec) == []


def test_a_root_container_is_caught() -> None:
    [(name, spec)] = [(n, s) for n, s in pod_specs(copy.deepcopy(render().manifests)) if n == "ray-head"]
    spec["containers"][0]["securityContext"]["runAsUser"] = 0
    assert restricted_violations(name, spec) == ["ray-head/ray-head: may run as root"]


def test_the_namespace_enforces_restricted() -> None:
    namespace = rendered("default").one("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_writable_paths_are_only_where_ray_writes() -> None:
    for _, container, spec in ray_containers(rendered("default").manifests):
        volumes = {v["name"]: v for v in spec["volumes"]}
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable <= {"/tmp", "/dev/shm", ray_node.HOME_DIR}
        assert all("emptyDir" in volumes[m["name"]] for m in container["volumeMounts"] if not m.get("readOnly"))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "auth-off"])
def test_every_ray_container_has_the_token(variant: str) -> None:
    result = rendered(variant)
    manifests = result.manifests
    assert len(list(ray_containers(manifests))) >= 2
    # With generations, each generation's pods read a Secret of their own (tests/test_generations.py).
    generation = result.outputs["generation"]
    assert missing_token(manifests, f"ray-auth-token-{generation}" if generation else "ray-auth-token") == []


def test_a_container_without_the_token_is_caught() -> None:
    manifests = copy.deepcopy(render().manifests)
    worker = next(m for m in manifests if m["metadata"]["name"] == "ray-worker")
    [ray] = worker["spec"]["template"]["spec"]["containers"]
    ray["env"] = [item for item in ray["env"] if item["name"] != "RAY_AUTH_TOKEN_PATH"]
    assert missing_token(manifests, "ray-auth-token") == ["ray-worker/ray-worker"]


def test_the_token_is_a_secret_and_never_an_output() -> None:
    result = render()
    secret = result.one("Secret", "ray-auth-token")
    token = secret["stringData"][ray_node.AUTH_TOKEN_KEY]
    assert len(token) >= 32
    assert result.registration_of(secret).secret_paths == {"stringData"}
    assert token not in json.dumps(result.outputs)
    holders = {r.type: r for r in result.registrations if token in json.dumps(r.inputs)}
    # Only the Secret, its generator and its version's keepers (sent as a secret) hold it; pulumi-random marks
    # `result` secret in the state.
    assert holders.keys() == {
        "kubernetes:core/v1:Secret",
        "random:index/randomPassword:RandomPassword",
        "random:index/randomId:RandomId",
    }
    assert holders["random:index/randomId:RandomId"].secret_paths == {"keepers.token"}
    version = result.one("Deployment", "ray-head")["spec"]["template"]["metadata"]["annotations"]
    assert token not in json.dumps(version)
    assert result.registrations[0].inputs == {}  # the component records no inputs


def test_a_given_token_is_used() -> None:
    result = render({"authToken": "my-own-token-of-sufficient-length-0123456789"}, secrets=("authToken",))
    assert result.one("Secret", "ray-auth-token")["stringData"][ray_node.AUTH_TOKEN_KEY].startswith("my-own-token")


def test_auth_can_be_turned_off() -> None:
    manifests = rendered("auth-off").manifests
    assert [m for m in manifests if m["kind"] == "Secret"] == []
    assert len(missing_token(manifests, "ray-auth-token")) == len(list(ray_containers(manifests)))


def test_network_policies_admit_only_the_cluster_and_listed_clients(default_policies: list[Manifest]) -> None:
    """Exactly these rules: clients on the dashboard/jobs, Ray Client and metrics ports only, from the listed CIDRs
    and from namespaces picked by the name label Kubernetes sets on every namespace; scrapers on metrics only."""
    [internal] = default_policies
    selector = {"matchLabels": {"ray.io/cluster": "ray"}}
    assert internal["spec"] == {
        "podSelector": selector,
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": selector}]}],
    }
    result = rendered("clients-allowed")
    # Registration order follows Pulumi's asynchronous outputs: compare as a set.
    assert sorted(p["metadata"]["name"] for p in result.of_kind("NetworkPolicy")) == [
        "ray-clients",
        "ray-internal",
        "ray-metrics",
    ]

    def namespaces(*names: str) -> Manifest:
        match = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(names)}
        return {"namespaceSelector": {"matchExpressions": [match]}}

    assert result.one("NetworkPolicy", "ray-clients")["spec"] == {
        "podSelector": selector,
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"ipBlock": {"cidr": "10.8.0.0/16"}}, namespaces("ml-notebooks")],
                "ports": [
                    {"port": 8265, "protocol": "TCP"},
                    {"port": 10001, "protocol": "TCP"},
                    {"port": 8080, "protocol": "TCP"},
                ],
            }
        ],
    }
    assert result.one("NetworkPolicy", "ray-metrics")["spec"] == {
        "podSelector": selector,
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [namespaces("monitoring")],
                "ports": [{"port": port, "protocol": "TCP"} for port in (8080, 44227, 44217)],
            }
        ],
    }
    assert render().one("Service")["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize("variant", ["default", "autoscaling"])
def test_every_metrics_port_is_rays_own_and_served_by_one_container_of_its_pod(variant: str) -> None:
    """Ray's defaults (a Ray that moved them would be scraped nowhere), each named once per pod: a PodMonitor
    scrapes a port by name, and a name two containers share makes two targets. The head's Ray container serves the
    dashboard's; Ray's monitor's is in the autoscaler container with autoscaling, else in the Ray container."""
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    def ports(deployment: str) -> dict[str, list[tuple[str, int]]]:
        template = rendered(variant).one("Deployment", deployment)["spec"]["template"]["spec"]
        found: dict[str, list[tuple[str, int]]] = {}
        for container in template["containers"]:
            for port in container.get("ports", []):
                found.setdefault(port["name"], []).append((container["name"], port["containerPort"]))
        return found

    head, worker = ports("ray-head"), ports("ray-worker")
    monitor = "autoscaler" if variant == "autoscaling" else "ray-head"
    assert head["dash-metrics"] == [("ray-head", DASHBOARD_METRIC_PORT)]
    assert head["as-metrics"] == [(monitor, AUTOSCALER_METRIC_PORT)]
    assert head["metrics"] == [("ray-head", 8080)] and worker["metrics"] == [("ray-worker", 8080)]
    assert all(len(containers) == 1 for containers in [*head.values(), *worker.values()])


def test_the_head_service_exposes_ray_ports_under_their_documented_names() -> None:
    """The README's `gcs 6379 · dashboard/jobs 8265 · client 10001 · metrics 8080`, each straight to the same port
    on the head pod over TCP (a ServiceMonitor or port-forward picks a port by these names)."""
    assert rendered("default").one("Service", "ray-head")["spec"]["ports"] == [
        {"name": "gcs", "port": 6379, "targetPort": 6379, "protocol": "TCP"},
        {"name": "dashboard", "port": 8265, "targetPort": 8265, "protocol": "TCP"},
        {"name": "client", "port": 10001, "targetPort": 10001, "protocol": "TCP"},
        {"name": "metrics", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
    ]


@pytest.fixture
def default_policies() -> list[Manifest]:
    return rendered("default").of_kind("NetworkPolicy")


def checkov(manifests: list[Manifest], directory: Path) -> dict[str, object]:
    """Run checkov over the manifests, offline, with the listed skips; returns its JSON report."""
    assert CHECKOV.exists(), f"{CHECKOV} is missing: scripts/test creates it from requirements-checkov.txt"
    directory.mkdir(parents=True, exist_ok=True)
    for index, manifest in enumerate(manifests):
        (directory / f"{index:02d}-{manifest['kind'].lower()}.yaml").write_text(yaml.safe_dump(manifest))
    completed = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "kubernetes",
            "--directory",
            str(directory),
            "--skip-download",
            "--skip-check",
            ",".join(SKIPS),
            "--output",
            "json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"},
    )
    assert completed.returncode in (0, 1), completed.stderr
    report: dict[str, object] = json.loads(completed.stdout)
    return report


def failed_checks(report: dict[str, object]) -> list[str]:
    results = report["results"]
    assert isinstance(results, dict)
    return sorted(f"{c['check_id']} {c['resource']}" for c in results["failed_checks"])


def test_each_skip_has_a_reason() -> None:
    assert SKIPS and all(check.startswith("CKV") and len(reason) > 20 for check, reason in SKIPS.items())


@pytest.mark.parametrize("variant", ["default", "fault-tolerant"])
def test_checkov_finds_nothing_in_the_cluster(variant: str, tmp_path: Path) -> None:
    report = checkov(rendered(variant).manifests, tmp_path)
    print("checkov summary:", report["summary"])
    assert failed_checks(report) == []
    summary = report["summary"]
    assert isinstance(summary, dict) and summary["passed"] > 100


def test_checkov_catches_a_root_container(tmp_path: Path) -> None:
    manifests = copy.deepcopy(render().manifests)
    head = next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == "ray-head")
    spec = head["spec"]["template"]["spec"]
    spec["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    spec["containers"][0]["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    assert any(check.startswith("CKV_K8S_23 ") for check in failed_checks(checkov(manifests, tmp_path)))


def test_rendering_is_the_program_not_a_fixture() -> None:
    """The variants above are rendered by the real program: a config change shows up in them."""
    assert isinstance(rendered("default"), Rendered)
    assert rendered("four-workers").one("Deployment", "ray-worker")["spec"]["replicas"] == 4

"""The rehearsal's Kubernetes API server (tests/rehearsal/apiserver.py) and what comes with it: bound
service-account tokens and RBAC, the `kubernetes` Service, projected volumes kept up to date by the kubelet, and
`up`'s ignore_changes against a Deployment scaled through its scale subresource.

Without root: how requests are parsed and authorized (RBAC's rule matching, its 403 messages), label selectors,
patches, tokens' signatures and refresh times, and what the kubelet refuses of projected volumes. Marked
`rehearsal` (they fail, never skip, without root, as tests/test_rehearsal_harness.py's do, whose fixture and
helpers they use): a pod reading pods over HTTPS with its projected token and the cluster CA, requests refused
as RBAC and authentication refuse them, a scale subresource write the controllers act on, a pod-deletion-cost
that picks the pod a scale-down removes, files that follow their objects, a token no other container can reach,
`up` keeping autoscaled replicas, and what a retirement Job calls: deletes in the foreground (the object shown,
marked, until its dependents are gone, an owner's of any kind) and in the background, Jobs listed by label with
their status, a Secret as stored, Services listed by label.

`call` is how a test (or a drill) talks to the API server from the node, as a client in a pod would.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shlex
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from components.in_pod import serve_keeper
from tests import test_rehearsal_harness as harness
from tests.program import Options, Rendered
from tests.rehearsal.apiserver import (
    APIError,
    Attributes,
    TokenIssuer,
    User,
    forbidden,
    format_selector,
    json_patch,
    label_selector,
    merge_patch,
    request_info,
    rule_allows,
    timestamp,
)
from tests.rehearsal.cluster import Cluster, InvalidError, wait_for
from tests.rehearsal.kubelet import IssuedToken, Manifest, UnsupportedError, check_supported, service_env
from tests.rehearsal.scheduler import Node
from tests.ssa import ConflictError
from tests.test_rehearsal_harness import (
    NAMESPACE,
    SERVE,
    config_map,
    container,
    cpu,
    deployment,
    job,
    kubectl_exec,
    pods,
    running,
    stack,
    template,
    versioned,
)

cluster = harness.cluster  # a fresh cluster for each test

RBAC = "rbac.authorization.k8s.io"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SCALER = "scaler"  # the ServiceAccount, Role and RoleBinding of the tests' autoscaler-like client
USER = f"system:serviceaccount:{NAMESPACE}:{SCALER}"
MERGE_PATCH, JSON_PATCH, JSON = "application/merge-patch+json", "application/json-patch+json", "application/json"
COST = "controller.kubernetes.io/pod-deletion-cost"
# The autoscaler's Role as issue 12 renders it, for one autoscaled Deployment, `web`.
SCALER_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch", "update"],
     "resourceNames": ["web"]},
]  # fmt: skip
# What automounting would give, as a volume of its own to mount into one container only.
KUBE_API_ACCESS: Manifest = {"name": "kube-api-access", "projected": {"defaultMode": 0o444, "sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                  "fieldPath": "metadata.namespace"}}]}}]}}  # fmt: skip
# The pod's Python and requests, as an in-pod client (the node provider) talks to the API: GET argv[1], print the
# status and the body.
IN_POD_GET = f"""
import os, sys, requests
token = open("{TOKEN_DIR}/token").read()
answer = requests.get("https://kubernetes.default.svc:" + os.environ["KUBERNETES_SERVICE_PORT"] + sys.argv[1],
                      headers={{"Authorization": "Bearer " + token}}, verify="{TOKEN_DIR}/ca.crt", timeout=10)
print(answer.status_code, answer.text)
"""


def call(
    cluster: Cluster, token: str | None, method: str, path: str, body: Any = None, content_type: str = MERGE_PATCH
) -> tuple[int, Manifest]:
    """One request to the API server through the `kubernetes` Service, from the node (where the harness runs),
    trusting the cluster CA: its status and JSON body."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(cluster.api.url + path, data=data, method=method, headers=headers)
    context = ssl.create_default_context(cadata=cluster.api.ca_pem)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def access(role: str = SCALER, rules: list[Manifest] = SCALER_RULES) -> list[Manifest]:
    """The ServiceAccount (no automounted token), the Role (by default the autoscaler's rules) and a RoleBinding of
    the ServiceAccount to `role`."""

    def metadata(name: str) -> Manifest:
        return {"name": name, "namespace": NAMESPACE}

    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(SCALER),
         "automountServiceAccountToken": False},
        {"apiVersion": f"{RBAC}/v1", "kind": "Role", "metadata": metadata(SCALER), "rules": rules},
        {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding", "metadata": metadata(SCALER),
         "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": SCALER, "namespace": NAMESPACE}]},
    ]  # fmt: skip


def grant(cluster: Cluster, rules: list[Manifest] = SCALER_RULES) -> str:
    """Apply the access objects (the Role's `rules`); a token for the ServiceAccount, as `kubectl create token`
    gives one."""
    for manifest in access(rules=rules):
        cluster.apply(manifest)
    return cluster.api.request_token(NAMESPACE, SCALER).token


def scaler_pod(*containers: Manifest, **spec: Any) -> Manifest:
    """A pod of the ServiceAccount whose `client` container alone mounts the token (`main` runs as the same user,
    the image's), as the head pod's autoscaler sidecar does."""
    client = container(SERVE, name="client", volumeMounts=[{"name": "kube-api-access", "mountPath": TOKEN_DIR,
                                                            "readOnly": True}])  # fmt: skip
    return template(container(SERVE), client, *containers, app="scaler", serviceAccountName=SCALER,
                    automountServiceAccountToken=False, volumes=[KUBE_API_ACCESS], terminationGracePeriodSeconds=1,
                    **spec)  # fmt: skip


def web(replicas: int = 1) -> Manifest:
    return deployment("web", replicas, template(container(SERVE), terminationGracePeriodSeconds=1))


def claims(token: str) -> Manifest:
    """A JWT's claims, read as any client may read them (unverified)."""
    payload = token.split(".")[1]
    decoded: Manifest = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


# ----- without root -----


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/pods", {}, Attributes("list", "", True, "", "v1", "ns", "pods")),
        ("GET", "/api/v1/namespaces/ns/pods", {"watch": ["true"]},
         Attributes("watch", "", True, "", "v1", "ns", "pods")),
        ("GET", "/api/v1/namespaces/ns/pods/p", {}, Attributes("get", "", True, "", "v1", "ns", "pods", "", "p")),
        ("DELETE", "/api/v1/namespaces/ns/pods", {}, Attributes("deletecollection", "", True, "", "v1", "ns", "pods")),
        ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/web/scale", {},
         Attributes("patch", "", True, "apps", "v1", "ns", "deployments", "scale", "web")),
        ("PUT", "/apis/apps/v1/namespaces/ns/deployments/web/scale", {},
         Attributes("update", "", True, "apps", "v1", "ns", "deployments", "scale", "web")),
        ("GET", "/api/v1/pods", {}, Attributes("list", "", True, "", "v1", "", "pods")),
        ("GET", "/api/v1/namespaces/ns", {}, Attributes("get", "", True, "", "v1", "ns", "namespaces", "", "ns")),
        ("GET", "/api/v1/watch/namespaces/ns/pods", {}, Attributes("watch", "", True, "", "v1", "ns", "pods")),
        ("GET", "/apis/apps/v1", {}, Attributes("get", "")),
        ("GET", "/healthz", {}, Attributes("get", "")),
    ],
)  # fmt: skip
def test_requests_are_read_as_the_api_servers_request_info_reads_them(
    method: str, path: str, query: dict[str, list[str]], expected: Attributes
) -> None:
    assert request_info(method, path, query) == dataclasses.replace(expected, path=path)


@pytest.mark.parametrize(
    ("rule", "attributes", "allowed"),
    [
        (SCALER_RULES[2], Attributes("patch", "", True, "apps", "v1", "ns", "deployments", "scale", "web"), True),
        (SCALER_RULES[2], Attributes("patch", "", True, "apps", "v1", "ns", "deployments", "scale", "gpu"), False),
        (SCALER_RULES[2], Attributes("patch", "", True, "apps", "v1", "ns", "deployments", "", "web"), False),
        (SCALER_RULES[1], Attributes("get", "", True, "apps", "v1", "ns", "deployments", "scale", "web"), False),
        (SCALER_RULES[0], Attributes("list", "", True, "", "v1", "ns", "pods"), True),
        (SCALER_RULES[0], Attributes("list", "", True, "apps", "v1", "ns", "pods"), False),
        (SCALER_RULES[0], Attributes("create", "", True, "", "v1", "ns", "pods"), False),
        (SCALER_RULES[0], Attributes("get", "", True, "", "v1", "ns", "pods", "log", "p"), False),
        # resourceNames cannot restrict a request without a name: list, watch, create, deletecollection
        ({**SCALER_RULES[0], "resourceNames": ["p"]}, Attributes("list", "", True, "", "v1", "ns", "pods"), False),
        ({**SCALER_RULES[0], "resourceNames": ["p"]},
         Attributes("get", "", True, "", "v1", "ns", "pods", "", "p"), True),
        ({"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["get"]},
         Attributes("get", "", True, "apps", "v1", "ns", "statefulsets", "scale", "s"), True),
        ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
         Attributes("delete", "", True, "x", "v1", "ns", "things", "status", "t"), True),
        ({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]},
         Attributes("get", "", True, "", "v1", "ns", "pods", "log", "p"), False),  # no such wildcard in RBAC
    ],
)  # fmt: skip
def test_rbac_rules_match_as_rbacs_authorizer_matches_them(
    rule: Manifest, attributes: Attributes, allowed: bool
) -> None:
    assert rule_allows(rule, attributes) is allowed


def test_forbidden_messages_are_the_api_servers() -> None:
    user = User(USER, ())
    named = Attributes("patch", "/x", True, "apps", "v1", "ns", "deployments", "scale", "gpu")
    assert forbidden(user, named, "").message == (
        f'deployments.apps "gpu" is forbidden: User "{USER}" cannot patch resource "deployments/scale" in API group '
        '"apps" in the namespace "ns"'
    )
    listing = Attributes("list", "/x", True, "", "v1", "", "secrets")
    assert forbidden(user, listing, 'RBAC: role.rbac.authorization.k8s.io "r" not found').status() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'secrets is forbidden: User "{USER}" cannot list resource "secrets" in API group "" at the cluster '
                   'scope: RBAC: role.rbac.authorization.k8s.io "r" not found',
        "reason": "Forbidden", "details": {"kind": "secrets"}, "code": 403,
    }  # fmt: skip
    assert forbidden(user, Attributes("get", "/metrics"), "").message == (
        f'forbidden: User "{USER}" cannot get path "/metrics"'
    )


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ("", {}, True),
        ("ray.io/cluster=ray", {"ray.io/cluster": "ray", "x": "y"}, True),
        ("ray.io/cluster==ray", {"ray.io/cluster": "other"}, False),
        ("a=1, b!=2", {"a": "1"}, True),
        ("a=1,b!=2", {"a": "1", "b": "2"}, False),
        ("tier in (web, api),!canary", {"tier": "api"}, True),
        ("tier in (web,api)", {}, False),
        ("tier notin (web)", {}, True),
        ("tier", {"tier": ""}, True),
        ("!tier", {"tier": ""}, False),
    ],
)
def test_label_selectors_select_as_the_api_server_selects(
    selector: str, labels: dict[str, str], selected: bool
) -> None:
    assert label_selector(selector)(labels) is selected


@pytest.mark.parametrize("selector", ["a>1", "a=b=c", "a in b", "(a)", "a=,,"])
def test_a_label_selector_it_cannot_parse_is_refused_not_guessed(selector: str) -> None:
    with pytest.raises(APIError) as refused:
        label_selector(selector)
    assert refused.value.code == 501


def test_patches_apply_as_their_rfcs_say() -> None:
    document: Manifest = {"metadata": {"annotations": {"a": "1", "b": "2"}}, "spec": {"replicas": 1, "list": [1, 2]}}
    assert merge_patch(document, {"metadata": {"annotations": {"a": None, "c": "3"}}, "spec": {"list": [3]}}) == {
        "metadata": {"annotations": {"b": "2", "c": "3"}}, "spec": {"replicas": 1, "list": [3]}}  # fmt: skip
    operations = [
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "add", "path": "/metadata/annotations/controller.kubernetes.io~1pod-deletion-cost", "value": "-5"},
        {"op": "remove", "path": "/metadata/annotations/a"},
        {"op": "add", "path": "/spec/list/-", "value": 3},
    ]
    assert json_patch(document, operations) == {
        "metadata": {"annotations": {"b": "2", COST: "-5"}}, "spec": {"replicas": 4, "list": [1, 2, 3]}}  # fmt: skip
    with pytest.raises(APIError) as failed:  # all or nothing: a failed test fails the whole patch
        json_patch(document, [{"op": "replace", "path": "/spec/replicas", "value": 4},
                              {"op": "test", "path": "/spec/replicas", "value": 1}])  # fmt: skip
    assert (failed.value.code, failed.value.reason) == (422, "Invalid")
    assert document["spec"]["replicas"] == 1


def test_a_scales_selector_is_formatted_as_the_api_formats_it() -> None:
    selector = {"matchLabels": {"ray.io/group": "worker", "ray.io/cluster": "ray"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]}  # fmt: skip
    assert format_selector(selector) == "ray.io/cluster=ray,ray.io/group=worker,tier in (a,b)"


def test_a_token_is_the_signers_alone_and_refreshed_at_80_percent_of_its_life_or_a_day() -> None:
    signer = TokenIssuer()
    token = signer.sign({"sub": "someone"})
    assert signer.claims(token) == {"sub": "someone"}
    header, _, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"sub": "admin"}).encode()).decode().rstrip("=")
    assert signer.claims(f"{header}.{forged}.{signature}") is None
    assert TokenIssuer().claims(token) is None  # another server's key
    issued = IssuedToken("t", expires_at=1000.0 + 3600, expiration_seconds=3600)
    assert not issued.needs_refresh(1000.0 + 2879, jitter=0) and issued.needs_refresh(1000.0 + 2881, jitter=0)
    long_lived = IssuedToken("t", expires_at=1000.0 + 7 * 86400, expiration_seconds=7 * 86400)
    assert long_lived.needs_refresh(1000.0 + 86401, jitter=0)


def test_every_container_is_told_where_the_api_server_is() -> None:
    assert service_env("kubernetes", "10.96.0.1", [{"name": "https", "port": 443, "protocol": "TCP"}]) == {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443", "KUBERNETES_PORT": "tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "443", "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
    }  # fmt: skip


def test_projected_volumes_the_kubelet_cannot_fill_as_asked_are_refused() -> None:
    def with_sources(*sources: Manifest) -> Manifest:
        return {"containers": [container("true")], "volumes": [{"name": "v", "projected": {"sources": list(sources)}}]}

    check_supported(with_sources(*KUBE_API_ACCESS["projected"]["sources"]))
    with pytest.raises(InvalidError, match="may not specify a duration less than 10 minutes"):
        check_supported(with_sources({"serviceAccountToken": {"path": "token", "expirationSeconds": 599}}))
    for source in ({"clusterTrustBundle": {"name": "b", "path": "b"}},
                   {"downwardAPI": {"items": [{"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}]}},
                   {"downwardAPI": {"items": [{"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}},
                   {"configMap": {"name": "c", "items": [{"key": "k", "path": "dir/k"}]}}):  # fmt: skip
        with pytest.raises(UnsupportedError):
            check_supported(with_sources(source))


# ----- with root: the API server of a cluster -----


@pytest.mark.rehearsal
def test_a_pod_lists_pods_over_https_with_its_projected_token_and_the_cluster_ca(cluster: Cluster) -> None:
    for manifest in access():
        cluster.apply(manifest)
    cluster.apply(web())
    scaler = deployment("scaler", 1, scaler_pod())
    cluster.apply(scaler)
    [pod] = running(cluster, scaler, 1)
    selector = urllib.parse.quote("app=scaler")
    path = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}"
    answer = kubectl_exec(pod, "client", f"python -c {shlex.quote(IN_POD_GET)} {shlex.quote(path)}")
    code, _, body = answer.strip().partition(" ")
    assert code == "200", body
    listed = json.loads(body)
    assert (listed["kind"], listed["apiVersion"]) == ("PodList", "v1")
    [item] = listed["items"]  # web's pod is not selected
    assert "kind" not in item  # a list's items carry no kind, as the API server's do not
    metadata, status = item["metadata"], item["status"]
    assert (metadata["name"], metadata["uid"], metadata["labels"]["app"]) == (pod.name, pod.uid, "scaler")
    assert metadata["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert int(metadata["resourceVersion"]) <= int(listed["metadata"]["resourceVersion"])
    assert item["spec"]["serviceAccountName"] == SCALER and item["spec"]["nodeName"] == cluster.node.name
    assert (status["phase"], status["podIP"]) == ("Running", pod.ip)
    assert {"type": "Ready", "status": "True"}.items() <= status["conditions"][-1].items()
    assert [(s["name"], s["ready"], "running" in s["state"]) for s in status["containerStatuses"]] == [
        ("main", True, True), ("client", True, True)]  # fmt: skip
    assert cluster.get("ConfigMap", NAMESPACE, "kube-root-ca.crt")["data"]["ca.crt"] == cluster.api.ca_pem
    assert [entry.user for entry in cluster.api.audit] == [USER]


@pytest.mark.rehearsal
def test_a_container_without_the_mount_cannot_reach_the_token_as_the_same_user_or_as_root(cluster: Cluster) -> None:
    for manifest in access():
        cluster.apply(manifest)
    scaler = deployment("scaler", 1, scaler_pod(container(SERVE, name="root", securityContext={"runAsUser": 0})))
    cluster.apply(scaler)
    [pod] = running(cluster, scaler, 1)
    token = kubectl_exec(pod, "client", f"cat {TOKEN_DIR}/token")
    assert claims(token)["kubernetes.io"]["pod"] == {"name": pod.name, "uid": pod.uid}
    on_the_node = pod.directory / "volumes" / "kube-api-access"
    assert (on_the_node / "token").read_text() == token  # the kubelet's copy, where every container's root lies
    # Not at the mount path, not where the kubelet keeps it (hidden under an empty directory), nowhere in /run,
    # /etc or /home; and root cannot unmount what hides it, so the kubelet's copy stays out of reach.
    look = (f"(ls -A {TOKEN_DIR}; ls -A {cluster.directory}; cat {on_the_node}/token; "
            f"grep -rslD skip {token[-40:]} /run /etc /home; umount {cluster.directory}; cat {on_the_node}/token; "
            "echo done) 2>&1")  # fmt: skip
    for name in ("main", "root"):
        output = kubectl_exec(pod, name, look)
        assert token[-40:] not in output and output.endswith("done\n"), output
        assert f"{on_the_node}/token: No such file or directory" in output, output


@pytest.mark.rehearsal
def test_requests_outside_the_role_are_forbidden_in_rbacs_words(cluster: Cluster) -> None:
    token = grant(cluster)
    cluster.apply(web())
    cluster.apply({**web(), "metadata": {"name": "other", "namespace": NAMESPACE}})
    assert call(cluster, token, "GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web/scale")[0] == 200
    prefix = f'User "{USER}" cannot'
    cases = [
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets", f'secrets is forbidden: {prefix} list resource "secrets" '
         f'in API group "" in the namespace "{NAMESPACE}"'),
        ("PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/other/scale", f'deployments.apps "other" is '
         f'forbidden: {prefix} patch resource "deployments/scale" in API group "apps" in the namespace "{NAMESPACE}"'),
        ("PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web", f'deployments.apps "web" is forbidden: '
         f'{prefix} patch resource "deployments" in API group "apps" in the namespace "{NAMESPACE}"'),
        ("GET", "/api/v1/namespaces/elsewhere/pods", f'pods is forbidden: {prefix} list resource "pods" in API group '
         '"" in the namespace "elsewhere"'),
        ("GET", "/api/v1/pods", f'pods is forbidden: {prefix} list resource "pods" in API group "" at the cluster '
         "scope"),
        ("GET", "/metrics", f'forbidden: {prefix} get path "/metrics"'),
    ]  # fmt: skip
    for method, path, message in cases:
        code, status = call(cluster, token, method, path, {} if method == "PATCH" else None)
        assert (code, status["reason"], status["message"]) == (403, "Forbidden", message)
    # A binding to a Role that does not exist grants nothing, and RBAC says why.
    cluster.delete(access()[2])
    cluster.apply(access(role="missing")[2])
    code, status = call(cluster, token, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods")
    assert (code, status["message"]) == (
        403,
        f'pods is forbidden: {prefix} list resource "pods" in API group "" in '
        f'the namespace "{NAMESPACE}": RBAC: role.{RBAC} "missing" not found',
    )
    with pytest.raises(InvalidError, match="roleRef: field is immutable"):
        cluster.apply(access()[2])
    with pytest.raises(UnsupportedError, match="ClusterRole"):
        cluster.apply({**access()[2], "metadata": {"name": "wide", "namespace": NAMESPACE},
                       "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "view"}})  # fmt: skip


@pytest.mark.rehearsal
def test_a_missing_bad_expired_or_orphaned_token_is_unauthorized(cluster: Cluster) -> None:
    token = grant(cluster)
    pods_path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    assert call(cluster, token, "GET", pods_path)[0] == 200
    header, _, signature = token.split(".")
    other_sa = claims(token) | {"sub": f"system:serviceaccount:{NAMESPACE}:default"}
    tampered = base64.urlsafe_b64encode(json.dumps(other_sa).encode()).decode().rstrip("=")
    elsewhere = cluster.api.request_token(NAMESPACE, SCALER, audience="vault").token
    short = cluster.api.request_token(NAMESPACE, SCALER, seconds=600).token
    unauthorized = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}  # fmt: skip
    for bad in (None, "", "garbage", f"{header}.{tampered}.{signature}", elsewhere):
        assert call(cluster, bad, "GET", pods_path) == (401, unauthorized), bad
    cluster.clock.advance(600 + 50)  # within go-jose's minute of leeway
    assert call(cluster, short, "GET", pods_path)[0] == 200
    cluster.clock.advance(20)
    assert call(cluster, short, "GET", pods_path)[0] == 401
    assert call(cluster, token, "GET", pods_path)[0] == 200
    # A token names its ServiceAccount by uid: deleted and created again, it is another account.
    cluster.delete(access()[0])
    assert call(cluster, token, "GET", pods_path)[0] == 401
    cluster.apply(access()[0])
    assert call(cluster, token, "GET", pods_path)[0] == 401


@pytest.mark.rehearsal
def test_a_pods_token_is_refused_once_the_pod_has_left_the_api(cluster: Cluster) -> None:
    for manifest in access():
        cluster.apply(manifest)
    scaler = deployment("scaler", 1, scaler_pod())
    cluster.apply(scaler)
    [pod] = running(cluster, scaler, 1)
    token = kubectl_exec(pod, "client", f"cat {TOKEN_DIR}/token")
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod.name}"
    code, shown = call(cluster, token, "GET", path)
    assert (code, shown["kind"], shown["metadata"]["uid"]) == (200, "Pod", pod.uid)
    cluster.delete_pod(pod.name)
    wait_for(lambda: pod.name not in cluster.pods, 10, "the pod gone", interval=0.1)
    assert call(cluster, token, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods")[0] == 401


@pytest.mark.rehearsal
def test_the_kubelet_refreshes_a_token_at_80_percent_of_its_life_and_the_automounted_one_lasts_a_year(
    cluster: Cluster,
) -> None:
    for manifest in access():
        cluster.apply(manifest)
    short = {"name": "kube-api-access", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}]}}  # fmt: skip
    scaler = deployment("scaler", 1, scaler_pod())
    scaler["spec"]["template"]["spec"]["volumes"] = [short]
    cluster.apply(scaler)
    [pod] = running(cluster, scaler, 1)
    first = kubectl_exec(pod, "client", f"cat {TOKEN_DIR}/token")
    issued = claims(first)
    assert issued["exp"] - issued["iat"] == 600 and "warnafter" not in issued["kubernetes.io"]
    cluster.clock.advance(0.8 * 600 - 60)
    time.sleep(3)  # a sync or more
    assert kubectl_exec(pod, "client", f"cat {TOKEN_DIR}/token") == first
    cluster.clock.advance(60 + 10)  # past 80% of its life, and the jitter

    def refreshed() -> str | None:
        token = kubectl_exec(pod, "client", f"cat {TOKEN_DIR}/token")
        return token if token != first else None

    second = wait_for(refreshed, 10, "a refreshed token", interval=0.5)
    assert claims(second)["iat"] > issued["iat"]
    assert call(cluster, first, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods")[0] == 200  # not expired yet
    assert call(cluster, second, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods")[0] == 200
    automounted = cluster.api.request_token(NAMESPACE, SCALER, pod=pod, seconds=3607)
    extended = claims(automounted.token)
    assert extended["exp"] - extended["iat"] == 365 * 24 * 3600
    assert extended["kubernetes.io"]["warnafter"] == extended["iat"] + 3607
    assert automounted.expires_at - cluster.clock.now() == pytest.approx(3607, abs=2)  # what the kubelet is told


@pytest.mark.rehearsal
@pytest.mark.parametrize(
    ("pod_security", "token", "ca"),
    [
        ({}, "444 0:0", "444 0:0"),  # the volume's defaultMode
        ({"runAsUser": 1000}, "600 1000:0", "444 0:0"),  # every container runs as 1000: its own
        ({"fsGroup": 2000}, "640 0:2000", "444 0:2000"),  # 0600, then the group's read
        ({"runAsUser": 1000, "fsGroup": 2000}, "640 1000:2000", "444 0:2000"),
    ],
)
def test_the_token_files_mode_and_owner_follow_the_pods_user_and_group(
    cluster: Cluster, pod_security: Manifest, token: str, ca: str
) -> None:
    for manifest in access():
        cluster.apply(manifest)
    scaler = deployment("scaler", 1, scaler_pod(securityContext=pod_security))
    cluster.apply(scaler)
    [pod] = running(cluster, scaler, 1)
    shown = kubectl_exec(pod, "client", f"cd {TOKEN_DIR}; stat -Lc '%a %u:%g' token ca.crt; cat token >/dev/null")
    assert shown.splitlines() == [token, ca]


@pytest.mark.rehearsal
def test_a_scale_patch_changes_the_deployment_and_its_controller_acts_on_it(cluster: Cluster) -> None:
    token = grant(cluster)
    cluster.apply(web())
    running(cluster, web(), 1)
    path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web"
    code, scale = call(cluster, token, "GET", f"{path}/scale")
    assert code == 200 and (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert (scale["spec"], scale["status"]) == ({"replicas": 1}, {"replicas": 1, "selector": "app=app"})
    assert call(cluster, token, "GET", path)[1]["metadata"]["generation"] == 1
    code, scaled = call(cluster, token, "PATCH", f"{path}/scale", {"spec": {"replicas": 3}})
    assert code == 200 and scaled["spec"] == {"replicas": 3}
    running(cluster, web(), 3)
    assert cluster.live_replicas(NAMESPACE, "web") == 3

    def rolled_out() -> Manifest | None:
        shown = call(cluster, token, "GET", path)[1]
        return shown if shown["status"].get("availableReplicas") == 3 else None

    shown = wait_for(rolled_out, 5, "the Deployment's status", interval=0.2)
    assert (shown["metadata"]["generation"], shown["spec"]["replicas"]) == (2, 3)
    assert {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}.items() <= shown[
        "status"].items()  # fmt: skip
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": scale["metadata"]["resourceVersion"]},
             {"op": "replace", "path": "/spec/replicas", "value": 1}]  # fmt: skip
    assert call(cluster, token, "PATCH", f"{path}/scale", stale, JSON_PATCH)[0] == 422
    put = {**scaled, "spec": {"replicas": 1}, "metadata": {**scaled["metadata"], "resourceVersion": "1"}}
    assert call(cluster, token, "PUT", f"{path}/scale", put, "application/json")[1]["reason"] == "Conflict"
    code, status = call(cluster, token, "PATCH", f"{path}/scale", {"spec": {"replicas": -1}})
    assert (code, status["message"]) == (422, 'Scale.autoscaling "web" is invalid: spec.replicas: Invalid value: -1: '
                                              "must be greater than or equal to 0")  # fmt: skip
    assert call(cluster, token, "PATCH", f"{path}/scale", {"spec": {"replicas": 0}}, "text/plain")[0] == 415
    code, zero = call(cluster, token, "PATCH", f"{path}/scale", {"spec": {"replicas": 0}})
    assert code == 200 and zero["spec"] == {}  # 0 is left out, as omitempty leaves it out
    wait_for(lambda: not [p for p in pods(cluster, web()) if p.active], 10, "no pod left", interval=0.1)
    assert "readyReplicas" not in call(cluster, token, "GET", path)[1]["status"]


@pytest.mark.rehearsal
def test_a_pod_deletion_cost_patched_through_the_api_picks_the_pod_a_scale_down_removes(cluster: Cluster) -> None:
    token = grant(cluster)
    cluster.apply(web(3))
    first, victim, last = running(cluster, web(), 3)
    pod_path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    for pod, cost in ((first, "10"), (victim, "-10"), (last, "10")):
        code, patched = call(
            cluster, token, "PATCH", f"{pod_path}/{pod.name}", {"metadata": {"annotations": {COST: cost}}}
        )
        assert code == 200 and patched["metadata"]["annotations"] == {COST: cost}
    code, scaled = call(cluster, token, "PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web/scale",
                        [{"op": "replace", "path": "/spec/replicas", "value": 2}], JSON_PATCH)  # fmt: skip
    assert code == 200 and scaled["spec"] == {"replicas": 2}
    wait_for(lambda: victim.terminating, 5, "the cheapest pod deleted", interval=0.1)
    assert not first.terminating and not last.terminating
    code, status = call(cluster, token, "PATCH", f"{pod_path}/{first.name}", {"metadata": {"annotations": {COST: "x"}}})
    assert (code, status["message"]) == (422, f'Pod "{first.name}" is invalid: metadata.annotations[{COST}]: Invalid '
                                              'value: "x": must be a 32bit integer')  # fmt: skip
    # What it does not model is refused, and kept for the test to see.
    code, status = call(cluster, token, "PATCH", f"{pod_path}/{first.name}", {"metadata": {"labels": {"app": "x"}}})
    assert (code, status["reason"]) == (501, "NotImplemented") and "metadata.labels" in cluster.api.refusals[-1]
    assert call(cluster, token, "GET", f"{pod_path}?watch=true")[0] == 501
    assert call(cluster, token, "GET", f"{pod_path}?fieldSelector=status.phase%3DRunning")[0] == 501
    assert call(cluster, token, "PATCH", pod_path, {})[1]["reason"] == "MethodNotAllowed"
    assert call(cluster, token, "GET", f"{pod_path}/nowhere")[1]["message"] == 'pods "nowhere" not found'
    # A graceful delete through the API: the answer is the pod, Terminating.
    code, deleted = call(cluster, token, "DELETE", f"{pod_path}/{last.name}", {"gracePeriodSeconds": 5}, JSON)
    assert code == 200 and deleted["metadata"]["deletionGracePeriodSeconds"] == 5 and last.terminating


@pytest.mark.rehearsal
def test_a_changed_config_map_and_annotation_reach_a_running_containers_files(cluster: Cluster) -> None:
    cluster.apply(config_map("settings", {"level": "1"}))
    mounts = [{"name": "settings", "mountPath": "/etc/settings"}, {"name": "about", "mountPath": "/etc/about"}]
    volumes = [
        {"name": "settings", "configMap": {"name": "settings"}},
        {"name": "about", "downwardAPI": {"items": [{"path": "cost", "fieldRef": {
            "fieldPath": f"metadata.annotations['{COST}']"}}]}},
    ]  # fmt: skip
    reader = deployment("reader", 1, template(container(SERVE, volumeMounts=mounts), volumes=volumes))
    cluster.apply(reader)
    [pod] = running(cluster, reader, 1)
    assert kubectl_exec(pod, "main", "cat /etc/settings/level; echo; readlink /etc/settings/level").split() == [
        "1", "..data/level"]  # fmt: skip
    assert "Read-only file system" in kubectl_exec(pod, "main", "touch /etc/settings/x 2>&1 || true")
    cluster.apply(config_map("settings", {"level": "2"}))
    cluster.annotate_pod(pod, {COST: "7"})
    wait_for(lambda: kubectl_exec(pod, "main", "cat /etc/settings/level") == "2", 10, "the new level", interval=0.2)
    wait_for(lambda: kubectl_exec(pod, "main", "cat /etc/about/cost") == "7", 10, "the annotation", interval=0.2)
    cluster.delete(config_map("settings", {}))  # the kubelet keeps the last files it had
    time.sleep(3)
    assert kubectl_exec(pod, "main", "cat /etc/settings/level") == "2"


@pytest.mark.rehearsal
def test_a_token_is_automounted_unless_the_pod_or_else_its_service_account_opts_out(cluster: Cluster) -> None:
    opted_out = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "quiet", "namespace": NAMESPACE},
                 "automountServiceAccountToken": False}  # fmt: skip
    cluster.apply(opted_out)
    cases: dict[str, tuple[Manifest, bool]] = {"default": ({}, True),
             "pod-false": ({"automountServiceAccountToken": False}, False),
             "sa-false": ({"serviceAccountName": "quiet"}, False),
             "pod-true": ({"serviceAccountName": "quiet", "automountServiceAccountToken": True}, True)}  # fmt: skip
    manifests = {name: deployment(name, 1, template(container(SERVE), app=name, **spec)) for name, (spec, _) in
                 cases.items()}  # fmt: skip
    for manifest in manifests.values():
        cluster.apply(manifest)
    for name, (_, mounted) in cases.items():
        [pod] = running(cluster, manifests[name], 1)
        listing = kubectl_exec(pod, "main", f"ls {TOKEN_DIR} 2>/dev/null || true").split()
        assert listing == (["ca.crt", "namespace", "token"] if mounted else []), name
    [pod] = pods(cluster, manifests["default"])
    assert kubectl_exec(pod, "main", f"cat {TOKEN_DIR}/namespace") == NAMESPACE
    assert claims(kubectl_exec(pod, "main", f"cat {TOKEN_DIR}/token"))["sub"] == (
        f"system:serviceaccount:{NAMESPACE}:default"
    )


@pytest.mark.rehearsal
def test_a_pod_of_a_missing_service_account_is_not_created_until_it_exists(cluster: Cluster) -> None:
    lonely = deployment("lonely", 1, template(container(SERVE), serviceAccountName=SCALER))
    with pytest.raises(TimeoutError, match=f'error looking up service account {NAMESPACE}/{SCALER}: serviceaccount '
                                           f'"{SCALER}" not found'):  # fmt: skip
        cluster.up(stack(("lonely", lonely, ())), timeout=2)
    assert not pods(cluster, lonely)
    cluster.apply(access()[0])
    running(cluster, lonely, 1)


def ignoring_replicas(program: Rendered) -> Rendered:
    """The program with its Deployment declared as autoscaled ones are: spec.replicas ignored after creation."""
    registrations = [dataclasses.replace(r, options=Options(ignore_changes=("spec.replicas",)))
                     for r in program.registrations]  # fmt: skip
    return Rendered(registrations=registrations, outputs={})


@pytest.mark.rehearsal
def test_up_keeps_replicas_written_through_the_scale_subresource_where_they_are_ignored(cluster: Cluster) -> None:
    cluster.node = Node(allocatable={"cpu": "2", "memory": "1Gi", "pods": 10})
    forced = deployment("web", 1, template(container(SERVE, **cpu("1")), terminationGracePeriodSeconds=1))
    forced["metadata"]["annotations"] = {"pulumi.com/patchForce": "true"}
    program = ignoring_replicas(stack(("web", forced, ())))
    cluster.up(program, timeout=30)
    cluster.scale(NAMESPACE, "web", 3, manager="autoscaler")  # as the scale subresource writes it

    def two_ready_one_pending() -> bool:
        current = pods(cluster, web())
        return sum(pod.ready for pod in current) == 2 and sum(bool(pod.unschedulable) for pod in current) == 1

    wait_for(two_ready_one_pending, 20, "two pods ready, one pending", interval=0.1)
    generation, started = cluster.meta("Deployment", NAMESPACE, "web").generation, time.monotonic()
    # Unchanged inputs, or a changed minimum that is ignored: nothing applied, nothing awaited (a pod is pending).
    cluster.up(program, timeout=5)
    more = {**forced, "spec": {**forced["spec"], "replicas": 2}}
    cluster.up(ignoring_replicas(stack(("web", more, ()))), timeout=5)
    assert time.monotonic() - started < 2
    assert cluster.meta("Deployment", NAMESPACE, "web").generation == generation
    assert cluster.live_replicas(NAMESPACE, "web") == 3
    cluster.node = Node()  # room for every replica
    old_hash = pods(cluster, web())[0].labels["pod-template-hash"]

    def version(number: str, manifest: Manifest = forced) -> Manifest:
        return {**manifest, "spec": {**manifest["spec"], "template": versioned(number, manifest["spec"]["template"])}}

    cluster.up(ignoring_replicas(stack(("web", version("2"), ()))), timeout=30)  # applied, its replicas left out
    assert cluster.live_replicas(NAMESPACE, "web") == 3
    hashes = {pod.labels["pod-template-hash"] for pod in running(cluster, web(), 3)}
    assert len(hashes) == 1 and hashes != {old_hash}
    # Without ignore_changes an apply, forced, takes replicas back; unforced, it conflicts with the scaler's.
    cluster.up(stack(("web", version("3"), ())), timeout=30)
    assert cluster.live_replicas(NAMESPACE, "web") == 1
    cluster.scale(NAMESPACE, "web", 2, manager="autoscaler")
    unforced = version("4", {**forced, "metadata": {"name": "web", "namespace": NAMESPACE}})
    with pytest.raises(ConflictError, match="autoscaler"):
        cluster.up(stack(("web", unforced, ())), timeout=30)


@pytest.mark.rehearsal
def test_endpoint_slices_are_written_as_the_api_server_takes_them_and_route_a_service_without_a_selector(
    cluster: Cluster,
) -> None:
    """The Serve keeper's calls (components/in_pod/serve_keeper.py): a create answers 201 (409 once it exists), an
    update needs the current resourceVersion (409), keeps the addressType (422) and a valid object (422);
    kube-proxy sends the Service's connections to the slice's ready addresses; the slice goes with its Service."""
    rules = [
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "create", "update"]},
    ]
    token = grant(cluster, rules)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "serve", "namespace": NAMESPACE},
               "spec": {"ports": [{"name": "serve", "port": 8000, "targetPort": 8000, "protocol": "TCP"}]}}  # fmt: skip
    cluster.apply(service)
    code, live = call(cluster, token, "GET", f"/api/v1/namespaces/{NAMESPACE}/services/serve")
    assert code == 200 and live["metadata"]["uid"]
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
    wanted = serve_keeper.endpoint_slice("serve", live, [], 8000, "IPv4")
    assert call(cluster, token, "POST", slices, wanted, "application/json")[0] == 201
    assert call(cluster, token, "POST", slices, wanted, "application/json")[1]["reason"] == "AlreadyExists"
    code, current = call(cluster, token, "GET", f"{slices}/serve")
    version = current["metadata"]["resourceVersion"]
    stale = serve_keeper.endpoint_slice("serve", live, ["10.0.0.9"], 8000, "IPv4")
    stale["metadata"]["resourceVersion"] = str(int(version) - 1)
    assert call(cluster, token, "PUT", f"{slices}/serve", stale, "application/json")[0] == 409
    for bad in (
        serve_keeper.endpoint_slice("serve", live, ["fd00::9"], 8000, "IPv6"),
        {**serve_keeper.endpoint_slice("serve", live, ["10.0.0.9"], 8000, "IPv4"), "endpoint": []},
    ):
        bad["metadata"]["resourceVersion"] = version
        assert call(cluster, token, "PUT", f"{slices}/serve", bad, "application/json")[0] == 422
    good = serve_keeper.endpoint_slice("serve", live, ["10.0.0.9", "10.0.0.8"], 8000, "IPv4")
    good["endpoints"][1]["conditions"]["ready"] = False
    good["metadata"]["resourceVersion"] = version
    assert call(cluster, token, "PUT", f"{slices}/serve", good, "application/json")[0] == 200
    assert cluster.service_endpoints(NAMESPACE, "serve") == ["10.0.0.9"]
    cluster.delete(service)
    wait_for(lambda: ("EndpointSlice", NAMESPACE, "serve") not in cluster.objects, 10, "the slice's garbage collection")


# What a retirement Job may do: read and delete the objects of an older generation.
RETIRER_RULES = [
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "delete"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "delete"]},
    {"apiGroups": [""], "resources": ["services", "secrets", "configmaps"], "verbs": ["get", "list", "delete"]},
]
DEPLOYMENTS, JOBS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
CORE = f"/api/v1/namespaces/{NAMESPACE}"


def gone(cluster: Cluster, token: str, path: str, timeout: float = 10) -> Manifest:
    """Wait until a get of `path` is 404; its answer."""

    def answer() -> Manifest | None:
        code, body = call(cluster, token, "GET", path)
        return body if code == 404 else None

    return wait_for(answer, timeout, f"{path} gone", interval=0.1)


@pytest.mark.rehearsal
def test_a_deployment_deleted_in_the_foreground_is_shown_until_its_pods_are_gone_in_the_background_it_goes_at_once(
    cluster: Cluster,
) -> None:
    token = grant(cluster)  # the autoscaler's Role: no delete
    draining = deployment("draining", 1, template(container(harness.DRAINS_2S), app="draining"))
    cluster.apply(draining)
    cluster.apply(web())
    [slow], [quick] = running(cluster, draining, 1), running(cluster, web(), 1)
    code, status = call(cluster, token, "DELETE", f"{DEPLOYMENTS}/draining?propagationPolicy=Foreground")
    assert (code, status["message"]) == (403, f'deployments.apps "draining" is forbidden: User "{USER}" cannot '
                                              f'delete resource "deployments" in API group "apps" in the namespace '
                                              f'"{NAMESPACE}"')  # fmt: skip
    cluster.apply(access(rules=RETIRER_RULES)[1])
    code, deleted = call(cluster, token, "DELETE", f"{DEPLOYMENTS}/draining?propagationPolicy=Foreground")
    metadata = deleted["metadata"]
    assert (code, deleted["kind"], metadata["generation"]) == (200, "Deployment", 2)  # bumped by the deletion
    assert (metadata["finalizers"], metadata["deletionGracePeriodSeconds"]) == (["foregroundDeletion"], 0)
    assert slow.terminating and not quick.terminating
    # Until its pod has drained, a get and a list show it as the answer did.
    code, shown = call(cluster, token, "GET", f"{DEPLOYMENTS}/draining")
    assert code == 200 and shown["metadata"]["deletionTimestamp"] == metadata["deletionTimestamp"]
    listed = call(cluster, token, "GET", DEPLOYMENTS)[1]["items"]
    assert [(item["metadata"]["name"], item["metadata"].get("finalizers")) for item in listed] == [
        ("draining", ["foregroundDeletion"]), ("web", None)]  # fmt: skip
    assert gone(cluster, token, f"{DEPLOYMENTS}/draining") == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'deployments.apps "draining" not found', "reason": "NotFound",
        "details": {"name": "draining", "group": "apps", "kind": "deployments"}, "code": 404,
    }  # fmt: skip
    assert slow.name not in cluster.pods
    # In the background (the default, here in a DeleteOptions body): gone at once, its pod deleted after.
    uid = cluster.meta("Deployment", NAMESPACE, "web").uid
    options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    assert call(cluster, token, "DELETE", f"{DEPLOYMENTS}/web", options, JSON) == (200, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": "web", "group": "apps", "kind": "deployments", "uid": uid},
    })  # fmt: skip
    assert call(cluster, token, "GET", f"{DEPLOYMENTS}/web")[0] == 404
    wait_for(lambda: quick.name not in cluster.pods, 10, "its pod collected", interval=0.1)
    code, status = call(cluster, token, "DELETE", f"{DEPLOYMENTS}/web")
    assert (code, status["message"]) == (404, 'deployments.apps "web" not found')


@pytest.mark.rehearsal
def test_jobs_are_listed_by_label_with_their_controllers_status_and_deleted_only_with_a_policy(
    cluster: Cluster,
) -> None:
    token = grant(cluster, RETIRER_RULES)
    succeeded = job("succeeded", template(container("true"), app="old"), backoffLimit=0)
    failed = job("failed", template(container("false"), app="old"), backoffLimit=0)
    active = job("active", template(container(SERVE), app="old", terminationGracePeriodSeconds=1))
    active["metadata"]["labels"] = {"app": "old", "own": "label"}  # a Job's own labels are not its template's
    other = job("other", template(container(SERVE), app="new", terminationGracePeriodSeconds=1))
    for manifest in (succeeded, failed, active, other):
        cluster.apply(manifest)
    wait_for(lambda: cluster.job_status(succeeded) == "Succeeded" and cluster.job_status(failed) == "Failed", 20,
             "the Jobs ended", interval=0.1)  # fmt: skip
    [pod] = running(cluster, active, 1)
    code, listed = call(cluster, token, "GET", f"{JOBS}?labelSelector=app%3Dold")
    assert (code, listed["kind"], listed["apiVersion"]) == (200, "JobList", "batch/v1")
    items = {item["metadata"]["name"]: item for item in listed["items"]}
    assert list(items) == ["active", "failed", "succeeded"] and "kind" not in items["active"]
    assert items["succeeded"]["metadata"]["labels"] == {"app": "old"}  # its template's, as none of its own
    assert items["active"]["metadata"]["labels"] == {"app": "old", "own": "label"}
    assert {"backoffLimit": 0, "completions": 1, "parallelism": 1}.items() <= items["succeeded"]["spec"].items()
    done, broken, running_now = (items[name]["status"] for name in ("succeeded", "failed", "active"))
    assert (done["succeeded"], done["ready"], "active" in done) == (1, 0, False)
    [complete] = done["conditions"]
    assert (complete["type"], complete["status"]) == ("Complete", "True")
    assert done["completionTime"] == complete["lastTransitionTime"]
    [failure] = broken["conditions"]
    assert (broken["failed"], "completionTime" in broken) == (1, False)
    assert (failure["type"], failure["reason"], failure["message"]) == (
        "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")  # fmt: skip
    assert (running_now["active"], running_now["ready"], "conditions" in running_now) == (1, 1, False)
    assert running_now["startTime"] <= timestamp(cluster.clock.now())
    code, shown = call(cluster, token, "GET", f"{JOBS}/active")
    assert (code, shown["kind"], shown["apiVersion"]) == (200, "Job", "batch/v1")
    # batch/v1 deletes orphan a Job's pods unless told otherwise, which is not modelled: refused.
    code, status = call(cluster, token, "DELETE", f"{JOBS}/active")
    assert (code, status["reason"]) == (501, "NotImplemented") and "the default of batch/v1 Jobs" in status["message"]
    assert call(cluster, token, "DELETE", f"{JOBS}/active?orphanDependents=true")[0] == 501
    code, status = call(cluster, token, "DELETE", f"{JOBS}/active?propagationPolicy=Background&orphanDependents=false")
    assert (code, status["message"]) == (422, 'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Invalid '
                                              'value: "Background": orphanDependents and deletionPropagation cannot '
                                              "be both set")  # fmt: skip
    code, status = call(cluster, token, "DELETE", f"{JOBS}/active?propagationPolicy=Sideways")
    assert (code, status["message"]) == (422, 'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: '
                                              'Unsupported value: "Sideways": supported values: "Foreground", '
                                              '"Background", "Orphan", "nil"')  # fmt: skip
    assert not pod.terminating
    code, status = call(cluster, token, "DELETE", f"{JOBS}/active?propagationPolicy=Background")
    assert (code, status["status"], status["details"]["kind"]) == (200, "Success", "jobs")
    wait_for(lambda: pod.name not in cluster.pods, 10, "its pod collected", interval=0.1)
    assert [item["metadata"]["name"] for item in call(cluster, token, "GET", JOBS)[1]["items"]] == [
        "failed", "other", "succeeded"]  # fmt: skip


@pytest.mark.rehearsal
def test_an_owner_deleted_through_the_api_in_the_foreground_takes_what_it_owns_first(cluster: Cluster) -> None:
    """A generation's objects, owned by an anchor ConfigMap: deleting the anchor in the foreground deletes them all,
    and the anchor stays, marked, until the Deployment's pod has drained. A Secret reads as the server stores it; a
    Service is listed by label; a delete's stale precondition is a conflict; a Service's delete answers the
    Service, a ConfigMap's in the foreground the ConfigMap, marked, though gone at once with nothing to wait for."""
    token = grant(cluster, RETIRER_RULES)
    cluster.apply(config_map("generations", {}))
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "generations", "blockOwnerDeletion": True,
                 "uid": cluster.meta("ConfigMap", NAMESPACE, "generations").uid}  # fmt: skip
    labels = {"app": "draining", "generation": "old"}

    def of_the_generation(manifest: Manifest) -> Manifest:
        return {**manifest, "metadata": {**manifest["metadata"], "labels": labels, "ownerReferences": [reference]}}

    secret = of_the_generation(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "token", "namespace": NAMESPACE},
            "data": {"kept": base64.b64encode(b"1").decode(), "replaced": base64.b64encode(b"2").decode()},
            "stringData": {"replaced": "3"},
        }
    )
    service = of_the_generation(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "head", "namespace": NAMESPACE},
            "spec": {"selector": labels, "ports": [{"port": 80}]},
        }
    )
    draining = of_the_generation(deployment("draining", 1, template(container(harness.DRAINS_2S), app="draining")))
    plain = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "plain", "namespace": NAMESPACE},
             "spec": {"selector": {"app": "none"}, "ports": [{"port": 80}]}}  # fmt: skip
    for manifest in (secret, service, draining, plain, config_map("settings", {})):
        cluster.apply(manifest)
    [pod] = running(cluster, draining, 1)
    code, shown = call(cluster, token, "GET", f"{CORE}/secrets/token")
    assert (code, shown["type"], "stringData" in shown) == (200, "Opaque", False)
    assert {key: base64.b64decode(value) for key, value in shown["data"].items()} == {"kept": b"1", "replaced": b"3"}
    code, listed = call(cluster, token, "GET", f"{CORE}/services?labelSelector=generation%3Dold")
    assert (code, listed["kind"], [item["metadata"]["name"] for item in listed["items"]]) == (200, "ServiceList",
                                                                                              ["head"])  # fmt: skip
    head_spec = listed["items"][0]["spec"]  # with what the API server allocates and defaults
    [address] = cluster.resolve(f"head.{NAMESPACE}.svc.cluster.local")
    assert (head_spec["clusterIP"], head_spec["clusterIPs"]) == (address, [address])
    assert (head_spec["type"], head_spec["ports"]) == ("ClusterIP", [{"protocol": "TCP", "targetPort": 80, "port": 80}])
    code, status = call(cluster, token, "DELETE", f"{CORE}/secrets/token", {"preconditions": {"uid": "stale"}}, JSON)
    assert (code, status["message"]) == (409, f"Precondition failed: UID in precondition: stale, UID in object meta: "
                                              f"{shown['metadata']['uid']}")  # fmt: skip
    code, anchor = call(cluster, token, "DELETE", f"{CORE}/configmaps/generations?propagationPolicy=Foreground")
    assert (code, anchor["kind"], anchor["metadata"]["finalizers"]) == (200, "ConfigMap", ["foregroundDeletion"])
    assert pod.terminating
    for path in (f"{CORE}/secrets/token", f"{CORE}/services/head"):  # nothing of theirs to wait for
        assert call(cluster, token, "GET", path)[0] == 404, path
    code, shown = call(cluster, token, "GET", f"{DEPLOYMENTS}/draining")
    assert code == 200 and shown["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert "deletionTimestamp" in call(cluster, token, "GET", f"{CORE}/configmaps/generations")[1]["metadata"]
    gone(cluster, token, f"{CORE}/configmaps/generations")
    assert pod.name not in cluster.pods and call(cluster, token, "GET", f"{DEPLOYMENTS}/draining")[0] == 404
    code, deleted = call(cluster, token, "DELETE", f"{CORE}/services/plain")
    assert (code, deleted["kind"], deleted["metadata"]["name"]) == (200, "Service", "plain")
    code, deleted = call(cluster, token, "DELETE", f"{CORE}/configmaps/settings?propagationPolicy=Foreground")
    assert (code, deleted["metadata"]["finalizers"], deleted["metadata"]["deletionGracePeriodSeconds"]) == (
        200, ["foregroundDeletion"], 0)  # fmt: skip
    assert call(cluster, token, "GET", f"{CORE}/configmaps/settings")[0] == 404

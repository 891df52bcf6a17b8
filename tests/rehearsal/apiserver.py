"""The rehearsal's Kubernetes API server: the part of the API a workload in a pod uses to watch and scale its own
Deployments and to delete its own objects, served over HTTPS from the cluster's own state (cluster.py: the objects
its controllers act on and the pods its kubelets run), with authentication and RBAC as the real API server does
them.

Served (everything else is refused loudly, see below):
- pods in a namespace: list (PodList, with a labelSelector), get, patch of the metadata (merge, JSON and
  strategic merge patches; annotations only, such as controller.kubernetes.io/pod-deletion-cost, validated as the
  API server does), delete (graceful, as `Cluster.delete_pod`, with the DeleteOptions below: gracePeriodSeconds
  and preconditions);
- Deployments in a namespace: list (DeploymentList), get and delete, with metadata.generation and a status
  computed from the ReplicaSets' pods (replicas, updatedReplicas, readyReplicas, availableReplicas,
  unavailableReplicas, observedGeneration; a zero count is left out, as the API's omitempty leaves it out);
- a Deployment's `scale` subresource (autoscaling/v1 Scale): get, patch and update. A new replica count is written
  as `kubectl scale` writes it (through the subresource, by its own field manager), and the controllers act on it;
  `Cluster.up` then treats it as pulumi-kubernetes' server-side apply does (see cluster.py);
- batch/v1 Jobs in a namespace: list (JobList), get and delete; labels defaulted from the template's when the Job
  has none, completions, parallelism, backoffLimit, completionMode and suspend defaulted, and a status as the Job
  controller writes it (startTime, active, succeeded and failed, left out at zero, ready, terminating,
  uncountedTerminatedPods, and once it ended its condition Complete, with completionTime, or Failed, with reason
  BackoffLimitExceeded or DeadlineExceeded);
- ConfigMaps and Secrets in a namespace: get and delete (a Secret's stringData folded into its data, base64, as
  the server stores it; type Opaque unless set); Services: list (ServiceList), get and delete, with their
  clusterIP(s) and the defaults of a ClusterIP Service on a single-stack IPv4 cluster (ports' protocol and
  targetPort, sessionAffinity, ipFamilies, ipFamilyPolicy, internalTrafficPolicy);
- EndpointSlices in a namespace: get, create and update (the whole object, its resourceVersion a precondition),
  validated strictly against the Kubernetes schema, addressType immutable; kube-proxy (cluster.py) routes a
  Service without a selector to the ready addresses of the slices labelled with its name.
A delete of one of these objects takes DeleteOptions from its body (JSON, of kind DeleteOptions) or else its query,
validated as the server does (422): preconditions (409), and the propagation policy, which the garbage collector
carries out (`Cluster.delete`), by default Background, but for a batch/v1 Job (Orphan, for backwards
compatibility, as its REST strategy says) and an object already deleted in the foreground. Foreground: the answer
is the object with a deletionTimestamp, a deletionGracePeriodSeconds of 0 and the foregroundDeletion finalizer (its
generation bumped), as get and list show it until its dependents are gone (a Deployment's ReplicaSets and pods, a
Job's pods, any object whose ownerReferences name it and block its deletion), and then 404. Background: the object
is gone at once (the answer is a Status of Success with its name, group, resource and uid; a Service's store
answers the Service), its dependents deleted by the garbage collector after. gracePeriodSeconds changes nothing
but for a pod.
Objects are shaped as the API returns them: metadata with uid, resourceVersion, creationTimestamp,
deletionTimestamp and deletionGracePeriodSeconds while a pod terminates or a foreground deletion waits (with its
finalizer), generateName and ownerReferences; a pod's spec as admitted (its ServiceAccount, the token volume the
admission plugin adds, its node) and its status (phase, conditions PodScheduled, Initialized, ContainersReady and
Ready, hostIP, podIP, startTime, qosClass, init and container statuses with their states and restart counts); list
items without kind and apiVersion, sorted by name. A resourceVersion is a counter the server bumps whenever what
it would show of an object changed, so a list's version is at least that of every object it holds, and
`resourceVersion` with `resourceVersionMatch=NotOlderThan` is served (a version newer than the server's is 504, as
the real one answers once its cache times out). Errors are metav1.Status with the real codes, reasons and
messages: 401 Unauthorized, 403 Forbidden with RBAC's message (and its reason, e.g. a binding's missing Role), 404
NotFound, 405 MethodNotAllowed, 409 Conflict (a stale resourceVersion or uid, a delete's precondition), 415
UnsupportedMediaType, 422 Invalid.

Authentication: only bound service-account tokens, which this server signs (RS256 JWTs with the claims the real
ones carry: issuer and audience https://kubernetes.default.svc.cluster.local, the ServiceAccount, the pod and
the node). A token is refused (401) once it has expired (with go-jose's minute of leeway), when its
ServiceAccount was deleted or re-created, or its pod has left the API (or was due to be gone a minute ago); a
request with no token is refused too, as on a cluster without anonymous requests (--anonymous-auth=false). A
token of 3607 seconds for a pod, the lifetime the automounted token asks for, is issued for a year with a
`warnafter` at 3607 seconds, as the API server extends it by default. Tokens come from `request_token`
(TokenRequest, as the kubelet asks for a projected token and `kubectl create token` does).

Authorization: RBAC from the Roles and RoleBindings applied to the cluster: subjects (ServiceAccount, with the
binding's namespace by default, User, Group), rules by apiGroups, resources with subresources (`deployments/
scale`, `*/scale`, `*`), verbs and resourceNames (which never match list, watch, create or deletecollection,
having no name to match), as RBAC's authorizer matches them; a binding to a missing Role grants nothing and
says so in the 403. The server listens on the node's address on the bridge, port 443, with a certificate for
that address, the `kubernetes` Service's ClusterIP and its names, signed by the cluster's CA (`ca_pem`), which
cluster.py publishes in every namespace as the ConfigMap kube-root-ca.crt.

Refused, never answered wrongly (501 NotImplemented, saying what, and kept in `refusals` for a test to show): any
other resource, verb, subresource or API version; watches; field selectors, `continue`, dryRun, orphaning
dependents (propagationPolicy Orphan, orphanDependents true, a batch/v1 Job's delete without a policy),
server-side apply patches, patches that change anything but a pod's annotations or a Scale's replicas (a pod's
labels would re-parent it, which the controllers here do not model), strategic merge patch directives and lists;
requests the default ClusterRoles allow every authenticated user (discovery, /version, self-subject reviews), as
ClusterRoles are not modelled (a RoleBinding to one is refused when it is applied); impersonation; protobuf and
YAML bodies; a query parameter it does not know. Not modelled at all: client certificates, ClusterRoles and their
bindings, admission webhooks (and the OwnerReferencesPermissionEnforcement admission plugin, off by default),
managedFields in the objects it returns, Deployment conditions, a pod's default fields other than its
ServiceAccount, node, restart policy, grace period, DNS policy and scheduler; a Job's generated selector and
template labels.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import http.server
import json
import re
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import kubernetes_validate
import trustme
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.rehearsal.kubelet import InvalidError, IssuedToken, Manifest, Pod, quantity
from tests.ssa import AlreadyExistsError

if TYPE_CHECKING:
    from tests.rehearsal.cluster import Cluster, ObjectMeta

PORT = 443
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = frozenset({ISSUER})
SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
# token.WarnOnlyBoundTokenExpirationSeconds: a pod's token asking for this lifetime is issued for a year instead
# (--service-account-extend-token-expiration, on by default), and warned about once it is older.
WARN_ONLY_SECONDS, EXTENDED_SECONDS = 3607, 365 * 24 * 3600
MIN_TOKEN_SECONDS = 600
LEEWAY = 60.0  # go-jose's jwt.DefaultLeeway: for exp and nbf, and for a deleted pod
RBAC_GROUP = "rbac.authorization.k8s.io"
POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# What the default ClusterRoles (system:discovery, system:public-info-viewer, system:basic-user,
# system:service-account-issuer-discovery) let every authenticated user do.
_PUBLIC_PATHS = re.compile(r"/(?:api|apis|openapi)(?:/.*)?|/(?:version|healthz|livez|readyz)/?|"
                           r"/\.well-known/openid-configuration|/openid/v1/jwks")  # fmt: skip
_SELF_REVIEWS = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
}
_UNKNOWN_FORMAT = "the body of the request was in an unknown format - accepted media types include: "
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml",
                "application/strategic-merge-patch+json")  # fmt: skip
# Metadata the server keeps for itself: what a patch or an update sends of it is ignored.
_SERVER_METADATA = {"creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                    "managedFields", "selfLink", "resourceVersion", "uid"}  # fmt: skip
# A label's (or an annotation's) key: an optional DNS-subdomain prefix and a name; a label's value.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY = rf"(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"
_REQUIREMENT = re.compile(
    rf"\s*(?:!\s*(?P<absent>{_KEY})|(?P<key>{_KEY})(?:\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})"
    rf"|\s+(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?)\s*"
)
_INT32 = re.compile(r"[+-]?[0-9]+")
# The query parameters served per verb of one object (besides `pretty`).
_PARAMETERS = {
    "get": {"resourceVersion"},
    "patch": {"fieldManager", "fieldValidation"},
    "update": {"fieldManager", "fieldValidation"},
    "create": {"fieldManager", "fieldValidation"},
    "delete": {"gracePeriodSeconds", "propagationPolicy", "orphanDependents"},
}


# The kinds of the objects served from the cluster's store (`_document`), by API group and resource.
_KINDS_OF = {("", "configmaps"): "ConfigMap", ("", "services"): "Service", ("", "secrets"): "Secret",
             ("apps", "deployments"): "Deployment", ("batch", "jobs"): "Job",
             ("discovery.k8s.io", "endpointslices"): "EndpointSlice"}  # fmt: skip
# What a DeleteOptions body may hold (dryRun and the rest are refused).
_DELETE_OPTIONS = {"kind", "apiVersion", "gracePeriodSeconds", "preconditions", "propagationPolicy", "orphanDependents"}
_PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")
# The garbage collector's finalizer of an object deleted in the foreground (metav1.FinalizerDeleteDependents).
FOREGROUND_DELETION = "foregroundDeletion"
# What the API server defaults in a ClusterIP Service's spec, on a single-stack IPv4 cluster.
_SERVICE_DEFAULTS = {"type": "ClusterIP", "sessionAffinity": "None", "ipFamilies": ["IPv4"],
                     "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"}  # fmt: skip
# The Job controller's messages for the reasons a Job fails.
_JOB_FAILURES = {"BackoffLimitExceeded": "Job has reached the specified backoff limit",
                 "DeadlineExceeded": "Job was active longer than specified deadline"}  # fmt: skip


class APIError(Exception):
    """A request the API server answers with a metav1.Status."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = {key: value for key, value in (details or {}).items() if value}

    def status(self) -> Manifest:
        body: Manifest = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": self.message, "reason": self.reason}  # fmt: skip
        if self.details:
            body["details"] = self.details
        return {**body, "code": self.code}


def unmodelled(what: str) -> APIError:
    """A request the real API server would serve and this one does not model: refused, saying so."""
    return APIError(501, "NotImplemented", f"not modelled by the rehearsal's API server: {what}")


def _qualified(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(group: str, resource: str, name: str) -> APIError:
    message = f'{_qualified(group, resource)} "{name}" not found'
    return APIError(404, "NotFound", message, {"name": name, "group": group, "kind": resource})


def conflict(group: str, resource: str, name: str, why: str) -> APIError:
    return APIError(409, "Conflict", why, {"name": name, "group": group, "kind": resource})


def stale(group: str, resource: str, name: str) -> APIError:
    """A write whose resourceVersion is not the object's."""
    why = (f'Operation cannot be fulfilled on {_qualified(group, resource)} "{name}": the object has been modified; '
           "please apply your changes to the latest version and try again")  # fmt: skip
    return conflict(group, resource, name, why)


def invalid(
    kind: str, group: str, name: str, field: str, value: Any, why: str, *, unsupported: bool = False
) -> APIError:
    """422 as field.Invalid makes it: `Kind.group "name" is invalid: field: Invalid value: value: why`; or, with
    `unsupported`, as field.NotSupported does: `...: Unsupported value: value: supported values: ...` (`why`)."""
    shown = json.dumps(value) if isinstance(value, str) else value
    detail = f"{'Unsupported' if unsupported else 'Invalid'} value: {shown}: {why}"
    cause = {"reason": "FieldValueNotSupported" if unsupported else "FieldValueInvalid", "message": detail,
             "field": field}  # fmt: skip
    return APIError(422, "Invalid", f'{_qualified(group, kind)} "{name}" is invalid: {field}: {detail}',
                    {"name": name, "group": group, "kind": kind, "causes": [cause]})  # fmt: skip


def timestamp(wall: float) -> str:
    """metav1.Time as JSON: RFC 3339 in UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Attributes:
    """What the API server reads off a request to authorize it (its RequestInfo)."""

    verb: str
    path: str
    resource_request: bool = False
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def request_info(method: str, path: str, query: Mapping[str, list[str]]) -> Attributes:
    """RequestInfoFactory.NewRequestInfo: /api/v1/... and /apis/<group>/<version>/... are resource requests, in a
    namespace (`namespaces/<ns>/...`) or not; `<resource>[/<name>[/<subresource>]]`; GET without a name is list
    (watch with `watch=true`, or under /watch/), DELETE without one deletecollection. Anything else is a
    non-resource request, whose verb is the method's name."""
    parts = [part for part in path.strip("/").split("/") if part]
    plain = Attributes(verb=method.lower(), path=path)
    if len(parts) < 3 or parts[0] not in {"api", "apis"} or (parts[0] == "apis" and len(parts) < 4):
        return plain
    group, rest = ("", parts[1:]) if parts[0] == "api" else (parts[1], parts[2:])
    version, rest = rest[0], rest[1:]
    verb = _VERBS.get(method, "")
    if rest[0] == "watch":
        verb, rest = "watch", rest[1:]
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in {"status", "finalize"}:
            rest = rest[2:]
    resource, name, subresource = [*rest, "", "", ""][:3]
    if not name and verb == "get":
        watch = query.get("watch", ["false"])[0].lower() not in {"false", "0"}
        verb = "watch" if watch else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(verb, path, True, group, version, namespace, resource, subresource, name)


def _applies(subject: Manifest, user: User, namespace: str) -> bool:
    """appliesToUser: a ServiceAccount subject (in the binding's namespace unless it names one), a User, a Group."""
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return user.name == f"system:serviceaccount:{subject.get('namespace') or namespace}:{subject.get('name')}"
    if kind == "User":
        return user.name == subject.get("name")
    return kind == "Group" and subject.get("name") in user.groups


def rule_allows(rule: Manifest, attributes: Attributes) -> bool:
    """RBAC's RuleAllows for a resource request: verb, API group, resource (`*`, the exact `resource/subresource`,
    or `*/subresource`) and, if the rule names any, the object's name, which a request without one never has."""
    verbs, groups = rule.get("verbs", []), rule.get("apiGroups", [])
    resources, names = rule.get("resources", []), rule.get("resourceNames", [])
    sub = attributes.subresource
    combined = f"{attributes.resource}/{sub}" if sub else attributes.resource
    return (
        ("*" in verbs or attributes.verb in verbs)
        and ("*" in groups or attributes.group in groups)
        and any(r in {"*", combined} or (bool(sub) and r == f"*/{sub}") for r in resources)
        and (not names or attributes.name in names)
    )


def forbidden(user: User, attributes: Attributes, reason: str) -> APIError:
    """responsewriters.Forbidden: RBAC's denial, in the words kubectl shows."""
    if attributes.resource_request:
        sub = attributes.subresource
        resource = f"{attributes.resource}/{sub}" if sub else attributes.resource
        scope = f' in the namespace "{attributes.namespace}"' if attributes.namespace else " at the cluster scope"
        message = f'User "{user.name}" cannot {attributes.verb} resource "{resource}" in API group "{attributes.group}"'
        message += scope
    else:
        message = f'User "{user.name}" cannot {attributes.verb} path "{attributes.path}"'
    message += f": {reason}" if reason else ""
    qualified = _qualified(attributes.group, attributes.resource)
    if not qualified:
        text = f"forbidden: {message}"
    else:
        text = f'{qualified} "{attributes.name}" is forbidden: {message}' if attributes.name else (
            f"{qualified} is forbidden: {message}")  # fmt: skip
    details = {"name": attributes.name, "group": attributes.group, "kind": attributes.resource}
    return APIError(403, "Forbidden", text, details)


def label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """labels.Parse: comma-separated requirements, `key=value` (or `==`), `key!=value`, `key in (a,b)`,
    `key notin (a,b)`, `key`, `!key`. Anything else is refused rather than guessed at."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for part in [] if not text.strip() else parts:
        match = _REQUIREMENT.fullmatch(part)
        values = [value.strip() for value in (match["values"] or "").split(",")] if match else []
        if match is None or not all(re.fullmatch(_VALUE, value) for value in values):
            raise unmodelled(f"labelSelector {text!r} (requirements of the forms k=v, k!=v, k in (..), k notin (..), "
                             "k and !k are parsed)")  # fmt: skip
        checks.append(_requirement(match, set(values)))
    return lambda labels: all(check(labels) for check in checks)


def _requirement(match: re.Match[str], values: set[str]) -> Callable[[Mapping[str, str]], bool]:
    if match["absent"]:
        return lambda labels: match["absent"] not in labels
    key = match["key"]
    if match["op"] in {"=", "=="}:
        return lambda labels: labels.get(key) == match["value"]
    if match["op"] == "!=":
        return lambda labels: labels.get(key) != match["value"]
    if match["set"] == "in":
        return lambda labels: labels.get(key) in values
    if match["set"] == "notin":
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels


def format_selector(selector: Manifest) -> str:
    """metav1.FormatLabelSelector: a LabelSelector as the string a Scale's status.selector holds, sorted by key."""
    requirements = [(key, f"{key}={value}") for key, value in selector.get("matchLabels", {}).items()]
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        words = {"In": f"{key} in ({','.join(sorted(values))})", "NotIn": f"{key} notin ({','.join(sorted(values))})",
                 "Exists": key, "DoesNotExist": f"!{key}"}  # fmt: skip
        requirements.append((key, words[operator]))
    return ",".join(text for _, text in sorted(requirements)) or "<none>"


def merge_patch(document: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(document) if isinstance(document, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test), all or nothing: a failed operation is 422, as
    the API server answers a patch it cannot apply."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise APIError(400, "BadRequest", "json: cannot unmarshal the patch into a JSON patch (a list of operations)")
    result = copy.deepcopy(document)
    for operation in operations:
        try:
            result = _json_patch_operation(result, operation)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            cause = {"reason": "UnexpectedServerResponse", "message": str(error)}
            message = "the server rejected our request due to an error in our request"
            raise APIError(422, "Invalid", message, {"causes": [cause]}) from error
    return result


def _pointer(path: str) -> list[str]:
    if path and not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} does not start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _json_patch_operation(document: Any, operation: Manifest) -> Any:
    op, path = operation.get("op"), _pointer(operation.get("path", ""))

    def parent(doc: Any, parts: list[str]) -> Any:
        for part in parts[:-1]:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        return doc

    def get(doc: Any, parts: list[str]) -> Any:
        return doc if not parts else (lambda p: p[int(parts[-1])] if isinstance(p, list) else p[parts[-1]])(
            parent(doc, parts))  # fmt: skip

    def remove(doc: Any, parts: list[str]) -> Any:
        container = parent(doc, parts)
        return container.pop(int(parts[-1])) if isinstance(container, list) else container.pop(parts[-1])

    def add(doc: Any, parts: list[str], value: Any) -> Any:
        if not parts:
            return value
        container = parent(doc, parts)
        if isinstance(container, list):
            index = len(container) if parts[-1] == "-" else int(parts[-1])
            if not 0 <= index <= len(container):
                raise IndexError(f"add operation does not apply: index {index} out of bounds")
            container.insert(index, value)
        elif isinstance(container, dict):
            container[parts[-1]] = value
        else:
            raise TypeError(f"add operation does not apply: {'/'.join(parts)}")
        return doc

    if op == "test":
        if get(document, path) != operation.get("value"):
            raise ValueError(f"testing value {operation['path']} failed: test failed")
        return document
    if op == "remove":
        remove(document, path)
        return document
    if op == "replace":
        get(document, path)  # it must exist
        if not path:
            return copy.deepcopy(operation["value"])
        remove(document, path)
        return add(document, path, copy.deepcopy(operation["value"]))
    if op == "add":
        return add(document, path, copy.deepcopy(operation["value"]))
    if op in {"move", "copy"}:
        source = _pointer(operation["from"])
        value = remove(document, source) if op == "move" else copy.deepcopy(get(document, source))
        return add(document, path, value)
    raise ValueError(f"unknown JSON patch operation {op!r}")


class TokenIssuer:
    """The service-account token signer: RS256 JWTs under a key of the API server's own, whose `kid` is its public
    key's SHA-256, as the real server names its keys."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._kid = _b64(hashlib.sha256(public).digest())

    def sign(self, claims: Manifest) -> str:
        header = _b64(json.dumps({"alg": "RS256", "kid": self._kid}, separators=(",", ":")).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = self._key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{_b64(signature)}"

    def claims(self, token: str) -> Manifest | None:
        """The claims of a token this server signed; None for anything else."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            signed = f"{parts[0]}.{parts[1]}".encode()
            self._key.public_key().verify(_unb64(parts[2]), signed, padding.PKCS1v15(), hashes.SHA256())
            header, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
        except (InvalidSignature, ValueError):
            return None
        return claims if isinstance(claims, dict) and header.get("alg") == "RS256" else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class DeleteOptions:
    """metav1.DeleteOptions as far as they are served: the grace period, the propagation policy (orphanDependents
    read as the one it stands for; None: the resource's default) and the preconditions (uid, resourceVersion)."""

    grace_seconds: int | None = None
    propagation: str | None = None
    preconditions: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Audit:
    """One request as the audit log keeps it: who, what, and the answer's code."""

    user: str
    verb: str
    path: str
    code: int


class APIServer:
    """The API server of one rehearsal cluster, serving from `cluster`'s state on `address`:443 over HTTPS."""

    def __init__(self, cluster: Cluster, address: str, service_ip: str) -> None:
        """`address` is the node's own (where kube-proxy sends the `kubernetes` Service), `service_ip` that
        Service's ClusterIP; the serving certificate holds both and the Service's names."""
        self.cluster, self.address, self.service_ip = cluster, address, service_ip
        self.ca = trustme.CA()
        self._signer = TokenIssuer()
        self._versions: dict[str, tuple[str, int]] = {}  # per object uid: what it last showed, and its version
        self._version = 0
        self._lock = threading.Lock()
        self.refusals: list[str] = []  # every request refused as not modelled
        self.audit: list[Audit] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(service_ip, address, *SERVICE_NAMES).configure_cert(context)
        self._server = _Server((address, PORT), self)
        # The handshake happens in each connection's own thread, so a client that stalls it stalls nobody else.
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._server.serve_forever, name="apiserver", daemon=True)
        self._thread.start()

    @property
    def ca_pem(self) -> str:
        """The cluster CA's certificate (PEM), which every pod's kube-root-ca.crt holds."""
        return self.ca.cert_pem.bytes().decode()

    @property
    def url(self) -> str:
        """Where a pod reaches the API: the `kubernetes` Service."""
        return f"https://{self.service_ip}:{PORT}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ----- tokens -----
    def request_token(
        self, namespace: str, account: str, *, pod: Pod | None = None, audience: str | None = None, seconds: int = 3600
    ) -> IssuedToken:
        """TokenRequest for a ServiceAccount (`kubectl create token`), bound to `pod` if given, as the kubelet asks
        for a projected token: KeyError while the ServiceAccount does not exist."""
        if seconds < MIN_TOKEN_SECONDS:
            raise ValueError(f"expirationSeconds {seconds}: may not specify a duration less than 10 minutes")
        uid = self.cluster.meta("ServiceAccount", namespace, account).uid
        audiences = [audience] if audience else sorted(API_AUDIENCES)
        now = self.cluster.clock.now()
        extended = pod is not None and seconds == WARN_ONLY_SECONDS and set(audiences) <= API_AUDIENCES
        private: Manifest = {"namespace": namespace, "serviceaccount": {"name": account, "uid": uid}}
        if pod is not None:
            private |= {"pod": {"name": pod.name, "uid": pod.uid}, "node": {"name": self.cluster.node.name}}
        if extended:
            private["warnafter"] = int(now) + seconds
        claims = {"aud": audiences, "exp": int(now) + (EXTENDED_SECONDS if extended else seconds), "iat": int(now),
                  "iss": ISSUER, "jti": str(uuid.uuid4()), "kubernetes.io": private, "nbf": int(now),
                  "sub": f"system:serviceaccount:{namespace}:{account}"}  # fmt: skip
        return IssuedToken(self._signer.sign(claims), now + seconds, seconds)

    def authenticate(self, authorization: str | None) -> User | None:
        """The bearer-token authenticator and the service-account token validator: the user a valid token names,
        else None."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        claims = self._signer.claims(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if claims is None or claims.get("iss") != ISSUER or not set(claims.get("aud", [])) & API_AUDIENCES:
            return None
        now = self.cluster.clock.now()
        if now > claims["exp"] + LEEWAY or now < claims["nbf"] - LEEWAY:
            return None
        private = claims["kubernetes.io"]
        namespace, account = private["namespace"], private["serviceaccount"]
        try:
            if self.cluster.meta("ServiceAccount", namespace, account["name"]).uid != account["uid"]:
                return None
            if "pod" in private:
                pod = self.cluster.pod(namespace, private["pod"]["name"])
                deadline = pod.deletion_deadline
                if pod.uid != private["pod"]["uid"] or (
                    deadline is not None and self.cluster.clock.wall(deadline) < now - LEEWAY
                ):
                    return None
        except KeyError:
            return None
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
        return User(f"system:serviceaccount:{namespace}:{account['name']}", groups)

    def authorize(self, user: User, attributes: Attributes) -> tuple[bool, str]:
        """RBAC: allowed if a rule of a Role bound to the user in the request's namespace allows it; else denied,
        with the reason RBAC gives (the bindings' errors, such as a Role that does not exist)."""
        errors: list[str] = []
        if attributes.resource_request and attributes.namespace:
            for binding in self.cluster.objects_of("RoleBinding", attributes.namespace):
                if not any(_applies(s, user, attributes.namespace) for s in binding.get("subjects", [])):
                    continue
                role_name = binding["roleRef"]["name"]
                try:
                    role = self.cluster.get("Role", attributes.namespace, role_name)
                except KeyError:
                    errors.append(f'role.{RBAC_GROUP} "{role_name}" not found')
                    continue
                if any(rule_allows(rule, attributes) for rule in role.get("rules", [])):
                    return True, ""
        if not errors:
            return False, ""
        return False, f"RBAC: {errors[0] if len(errors) == 1 else '[' + ', '.join(errors) + ']'}"

    # ----- requests -----
    def serve(self, request: Request) -> tuple[int, Manifest]:
        """One request, from authentication to the answer: (HTTP status, JSON body)."""
        user: User | None = None
        attributes = request_info(request.method, request.path, request.query)
        try:
            user = self.authenticate(request.headers.get("Authorization"))
            if user is None:
                raise APIError(401, "Unauthorized", "Unauthorized")
            if any(header.lower().startswith("impersonate-") for header in request.headers):
                raise unmodelled("impersonation")
            if _granted_to_everyone(attributes):
                raise unmodelled(f"{request.method} {request.path}, which the default ClusterRoles allow everyone")
            allowed, reason = self.authorize(user, attributes)
            if not allowed:
                raise forbidden(user, attributes, reason)
            body = self._route(attributes, request)
            code = 201 if attributes.verb == "create" else 200
        except APIError as error:
            if error.code == 501:
                self.refusals.append(f"{request.method} {request.path}: {error.message}")
            code, body = error.code, error.status()
        query = urllib.parse.urlencode(request.query, doseq=True)
        with self._lock:
            who = user.name if user else ""
            self.audit.append(Audit(who, attributes.verb, request.path + (f"?{query}" if query else ""), code))
        return code, body

    def _route(self, attributes: Attributes, request: Request) -> Manifest:
        accept = request.headers.get("Accept", "")
        if accept and not re.search(r"application/json|application/\*|\*/\*", accept):
            raise unmodelled(f"a response as {accept} (JSON only)")
        if attributes.resource_request and (
            (attributes.name and attributes.verb == "create")
            or (not attributes.name and attributes.verb in {"update", "patch"})
        ):
            raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        served = {
            ("", "v1", "pods", ""): ({"list", "get", "patch", "delete"}, self._pods),
            ("apps", "v1", "deployments", ""): ({"list", "get", "delete"}, self._objects),
            ("apps", "v1", "deployments", "scale"): ({"get", "patch", "update"}, self._scale),
            ("batch", "v1", "jobs", ""): ({"list", "get", "delete"}, self._objects),
            ("", "v1", "configmaps", ""): ({"get", "delete"}, self._objects),
            ("", "v1", "secrets", ""): ({"get", "delete"}, self._objects),
            ("", "v1", "services", ""): ({"list", "get", "delete"}, self._objects),
            ("discovery.k8s.io", "v1", "endpointslices", ""): ({"get", "create", "update"}, self._endpoint_slices),
        }
        key = (attributes.group, attributes.version, attributes.resource, attributes.subresource)
        verbs, handler = served.get(key, (set(), None))
        if attributes.subresource == "scale" and attributes.verb not in {"get", "patch", "update"}:
            raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if handler is None or attributes.verb not in verbs or not attributes.namespace or request.method == "HEAD":
            raise unmodelled(f"{attributes.verb} {request.path}")
        return handler(attributes, request)

    # ----- pods -----
    def _pods(self, attributes: Attributes, request: Request) -> Manifest:
        namespace, name = attributes.namespace, attributes.name
        if attributes.verb == "list":
            selected = self._list_options(request)
            items = [self._pod(pod) for pod in self.cluster.pods_in(namespace) if selected(pod.labels)]
            return self._list("PodList", "v1", items)
        options = _options(request, _PARAMETERS[attributes.verb])
        try:
            pod = self.cluster.pod(namespace, name)
        except KeyError:
            raise not_found("", "pods", name) from None
        if attributes.verb == "get":
            self._check_version(options.get("resourceVersion", ""))
            return {"kind": "Pod", "apiVersion": "v1", **self._pod(pod)}
        if attributes.verb == "patch":
            return self._patch_pod(pod, request)
        return self._delete_pod(pod, request)

    def _patch_pod(self, pod: Pod, request: Request) -> Manifest:
        """A patch of a pod: only its annotations may change (validated as the API server does); a changed
        resourceVersion or uid is a precondition; the status it sends is ignored, as the pod strategy ignores it."""
        before = {"kind": "Pod", "apiVersion": "v1", **self._pod(pod)}
        after = _patched(before, request)
        self._check_metadata(before, after, "", "pods")
        changed = [key for key in {*before, *after} - {"metadata", "status"} if before.get(key) != after.get(key)]
        old_meta, new_meta = before["metadata"], after["metadata"]
        changed += [f"metadata.{key}" for key in {*old_meta, *new_meta} - _SERVER_METADATA - {"annotations"}
                    if old_meta.get(key) != new_meta.get(key)]  # fmt: skip
        if changed:
            raise unmodelled(f"a patch of a pod's {', '.join(sorted(changed))} (its annotations may change)")
        annotations = new_meta.get("annotations") or {}
        self._check_annotations(pod, old_meta.get("annotations") or {}, annotations)
        self.cluster.annotate_pod(pod, annotations)
        return {"kind": "Pod", "apiVersion": "v1", **self._pod(pod)}

    def _check_annotations(self, pod: Pod, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        for key, value in new.items():
            if not isinstance(value, str):
                raise invalid("Pod", "", pod.name, f"metadata.annotations[{key}]", value, "must be a string")
            if not re.fullmatch(_KEY, key) or len(key.rpartition("/")[2]) > 63:
                raise invalid("Pod", "", pod.name, "metadata.annotations", key, "must be a qualified name")
        cost, before = new.get(POD_DELETION_COST), old.get(POD_DELETION_COST)
        # An invalid cost the pod already had may stay (AllowInvalidPodDeletionCost); a new one may not.
        if cost is not None and not _is_int32(cost) and (before is None or _is_int32(before)):
            field = f"metadata.annotations[{POD_DELETION_COST}]"
            raise invalid("Pod", "", pod.name, field, cost, "must be a 32bit integer")

    def _delete_pod(self, pod: Pod, request: Request) -> Manifest:
        """A pod's graceful deletion, as `Cluster.delete_pod` (a pod owns nothing here: its propagation policy
        changes nothing); the answer is the pod, Terminating (or already gone from the API, with a grace period of
        0)."""
        options = _delete_options(request)
        _check_preconditions(options, self._pod(pod)["metadata"], "", "pods")
        if options.grace_seconds is not None and options.grace_seconds < 0:
            raise unmodelled("a negative gracePeriodSeconds")
        self.cluster.delete_pod(pod.name, options.grace_seconds)
        return {"kind": "Pod", "apiVersion": "v1", **self._pod(pod)}

    def _pod(self, pod: Pod) -> Manifest:
        """A pod as the API shows it (without kind and apiVersion, as a list's item)."""
        clock, spec = self.cluster.clock, pod.spec
        metadata: Manifest = {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                              "creationTimestamp": timestamp(clock.wall(pod.created_at))}  # fmt: skip
        owner = self.cluster.owner_reference(pod)
        if owner is not None:
            metadata |= {"generateName": f"{owner['name']}-", "ownerReferences": [owner]}
        if pod.labels:
            metadata["labels"] = dict(pod.labels)
        if pod.annotations:
            metadata["annotations"] = dict(pod.annotations)
        if pod.deletion_deadline is not None and pod.deleted_at is not None:
            metadata["deletionTimestamp"] = timestamp(clock.wall(pod.deletion_deadline))
            metadata["deletionGracePeriodSeconds"] = round(pod.deletion_deadline - pod.deleted_at)
        defaults = {"restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "schedulerName": "default-scheduler"}  # fmt: skip
        shown_spec = {**defaults, **copy.deepcopy(spec)} | ({"nodeName": pod.node} if pod.node else {})
        document = {"metadata": metadata, "spec": shown_spec, "status": self._pod_status(pod)}
        return self._versioned(pod.uid, document)

    def _pod_status(self, pod: Pod) -> Manifest:
        clock = self.cluster.clock
        started = timestamp(clock.wall(pod.started_at))
        init = pod.spec.get("initContainers", [])
        initialized = not init or all(pod.statuses[c["name"]].exit_codes[-1:] == [0] for c in init)
        containers_ready = all(pod.statuses[c["name"]].ready for c in pod.spec["containers"]) and pod.phase == "Running"

        def condition(kind: str, true: bool, since: float | None, reason: str = "", message: str = "") -> Manifest:
            entry = {"type": kind, "status": "True" if true else "False", "lastProbeTime": None,
                     "lastTransitionTime": timestamp(clock.wall(since or pod.created_at))}  # fmt: skip
            return entry | {key: value for key, value in (("reason", reason), ("message", message)) if value}

        conditions = [condition("PodScheduled", pod.node is not None, pod.created_at,
                                "" if pod.node else "Unschedulable", pod.unschedulable or "")]  # fmt: skip
        if pod.node is not None:
            conditions += [
                condition("Initialized", initialized, pod.started_at),
                condition("ContainersReady", containers_ready, pod.ready_since),
                condition("Ready", pod.ready, pod.ready_since),
            ]
        status: Manifest = {"phase": pod.phase, "conditions": conditions, "qosClass": _qos_class(pod.spec)}
        if pod.node is not None:
            status |= {"hostIP": self.cluster.network.gateway, "startTime": started}
            status["hostIPs"] = [{"ip": status["hostIP"]}]
        if pod.ip:
            status |= {"podIP": pod.ip, "podIPs": [{"ip": pod.ip}]}
        if pod.node is not None and init:
            status["initContainerStatuses"] = [self._container_status(pod, c, init=True) for c in init]
        if pod.node is not None:
            status["containerStatuses"] = [self._container_status(pod, c) for c in pod.spec["containers"]]
        return status

    def _container_status(self, pod: Pod, container: Manifest, init: bool = False) -> Manifest:
        """A container's status: its state (running; terminated for good; waiting to be restarted or started),
        the termination before (lastState), its readiness and restarts. Each start's exit, if any, is its own."""
        clock, status = self.cluster.clock, pod.statuses[container["name"]]

        def terminated(index: int) -> Manifest:
            code = status.exit_codes[index]
            exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
            return {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                   "startedAt": timestamp(clock.wall(status.starts[index])),
                                   "finishedAt": timestamp(clock.wall(status.exits[index])),
                                   "containerID": _container_id(pod, container, index)}}  # fmt: skip

        exits = len(status.exit_codes)
        final = pod.finished or pod.terminating or pod.spec.get("restartPolicy") == "Never"
        if status.running:
            state, last = {"running": {"startedAt": timestamp(clock.wall(status.starts[-1]))}}, exits - 1
        elif exits and (final or (init and status.exit_codes[-1] == 0)):
            state, last = terminated(exits - 1), exits - 2
        elif exits:
            state, last = {"waiting": {"reason": "CrashLoopBackOff"}}, exits - 1
        else:
            reason = "PodInitializing" if not init and pod.spec.get("initContainers") else "ContainerCreating"
            state, last = {"waiting": {"reason": reason}}, -1
        entry: Manifest = {"name": container["name"], "state": state, "ready": status.ready,
                           "restartCount": status.restarts, "image": container["image"], "imageID": "",
                           "started": status.running}  # fmt: skip
        if status.starts:
            entry["containerID"] = _container_id(pod, container, len(status.starts) - 1)
        if last >= 0:
            entry["lastState"] = terminated(last)
        return entry

    # ----- objects from the store: Deployments, Jobs, ConfigMaps, Secrets, Services, EndpointSlices -----
    def _objects(self, attributes: Attributes, request: Request) -> Manifest:
        """get, list (a labelSelector's items) and delete of the kinds `_route` serves them of."""
        if attributes.verb == "delete":
            return self._delete(attributes, request)
        if attributes.verb != "list":
            self._check_version(_options(request, _PARAMETERS["get"]).get("resourceVersion", ""))
            return self._document(attributes)
        selected = self._list_options(request)
        kind = _KINDS_OF[(attributes.group, attributes.resource)]
        items = []
        for manifest in self.cluster.objects_of(kind, attributes.namespace):
            try:
                document = self._document(dataclasses.replace(attributes, name=manifest["metadata"]["name"]))
            except APIError:  # gone since
                continue
            if selected(document["metadata"].get("labels", {})):
                items.append({key: value for key, value in document.items() if key not in {"kind", "apiVersion"}})
        api_version = f"{attributes.group}/{attributes.version}" if attributes.group else attributes.version
        return self._list(f"{kind}List", api_version, items)

    def _document(self, attributes: Attributes) -> Manifest:
        """The object a request names, as a get returns it (404 if there is none)."""
        if attributes.resource == "deployments":
            return self._deployment(attributes.namespace, attributes.name)
        if attributes.resource == "jobs":
            return self._job(attributes.namespace, attributes.name)
        return self._stored(attributes)

    def _delete(self, attributes: Attributes, request: Request) -> Manifest:
        """The deletion of one object, as the registry's store and the garbage collector carry it out (`Cluster.
        delete`), with the request's DeleteOptions: its preconditions (409 when stale) and its propagation policy,
        by default Background, but for a batch/v1 Job, whose default is Orphan for backwards compatibility, and an
        object already deleted in the foreground, which stays so. Foreground answers the object marked as deleted
        (a deletionTimestamp, a deletionGracePeriodSeconds of 0, the foregroundDeletion finalizer, its generation
        bumped), which get and list show until its dependents are gone; Background answers a Status of Success
        that names it (a Service's store answers the object), which is gone at once, its dependents after. Orphan
        is refused, as not modelled. A grace period, read, changes nothing: only pods delete gracefully (the
        garbage collector deletes them with their own)."""
        options = _delete_options(request)
        document = self._document(attributes)
        metadata = document["metadata"]
        _check_preconditions(options, metadata, attributes.group, attributes.resource)
        default = "Orphan" if attributes.resource == "jobs" else "Background"
        policy = options.propagation or ("Foreground" if "deletionTimestamp" in metadata else default)
        if policy not in {"Foreground", "Background"}:
            raise unmodelled(f"a deletion that orphans the dependents (propagationPolicy {policy}"
                             f"{', the default of batch/v1 Jobs' if options.propagation is None else ''})")  # fmt: skip
        self.cluster.delete(document, "Foreground" if policy == "Foreground" else "Background")
        if policy == "Background" and attributes.resource == "services":
            return document
        if policy == "Background":
            details = {"name": attributes.name, "group": attributes.group, "kind": attributes.resource,
                       "uid": metadata["uid"]}  # fmt: skip
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {key: value for key, value in details.items() if value}}  # fmt: skip
        try:
            return self._document(attributes)
        except APIError:  # nothing blocked it: gone already, after the update that marked it, which is the answer
            if "deletionTimestamp" not in metadata:
                metadata |= self._deletion(time.monotonic(), metadata)
                if "generation" in metadata:
                    metadata["generation"] += 1
            return self._versioned(metadata["uid"], document)

    def _shown(self, manifest: Manifest, meta: ObjectMeta) -> Manifest:
        """An object as the API returns it: its manifest with the metadata the server keeps (uid, creation time,
        and while a foreground deletion waits for its dependents its deletion, see `_deletion`); a Secret with its
        stringData folded into its data, base64-encoded, as the server stores it, and its type defaulted; a Service
        with its ClusterIP and the defaults of a single-stack IPv4 cluster's ClusterIP Service."""
        document = copy.deepcopy(manifest)
        metadata = document["metadata"]
        metadata |= {"uid": meta.uid, "creationTimestamp": timestamp(self.cluster.clock.wall(meta.created_at))}
        if meta.deleted_at is not None:
            metadata |= self._deletion(meta.deleted_at, metadata)
        if document["kind"] == "Secret":
            plain = document.pop("stringData", {})
            data = {**document.pop("data", {}), **{k: base64.b64encode(v.encode()).decode() for k, v in plain.items()}}
            document |= {"data": data} if data else {}
            document.setdefault("type", "Opaque")
        if document["kind"] == "Service":
            spec, address = document["spec"], self.cluster.cluster_ip(metadata.get("namespace", ""), metadata["name"])
            ports = [{"protocol": "TCP", "targetPort": port["port"], **port} for port in spec.get("ports", [])]
            document["spec"] = {**copy.deepcopy(_SERVICE_DEFAULTS), **spec, "ports": ports} | (
                {"clusterIP": address, "clusterIPs": [address]} if address else {}
            )
            document.setdefault("status", {"loadBalancer": {}})
        return document

    def _deletion(self, deleted_at: float, metadata: Manifest) -> Manifest:
        """What markAsDeleting sets of an object deleted in the foreground: its deletionTimestamp, a
        deletionGracePeriodSeconds of 0, and the finalizer the garbage collector removes once its dependents are
        gone."""
        return {"deletionTimestamp": timestamp(self.cluster.clock.wall(deleted_at)), "deletionGracePeriodSeconds": 0,
                "finalizers": [*metadata.get("finalizers", []), FOREGROUND_DELETION]}  # fmt: skip

    # ----- Deployments and their scale -----
    def _deployment(self, namespace: str, name: str) -> Manifest:
        try:
            manifest = self.cluster.get("Deployment", namespace, name)
            meta = self.cluster.meta("Deployment", namespace, name)
            status = self.cluster.deployment_status(namespace, name)
        except KeyError:
            raise not_found("apps", "deployments", name) from None
        document = self._shown(manifest, meta)
        document["metadata"]["generation"] = meta.generation
        spec = document["spec"]
        spec.setdefault("replicas", 1)
        spec.setdefault("strategy", {"type": "RollingUpdate"})
        if spec["strategy"]["type"] == "RollingUpdate":
            spec["strategy"]["rollingUpdate"] = {"maxSurge": "25%", "maxUnavailable": "25%",
                                                 **spec["strategy"].get("rollingUpdate", {})}  # fmt: skip
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        document["status"] = status
        return self._versioned(meta.uid, document)

    def _scale(self, attributes: Attributes, request: Request) -> Manifest:
        """autoscaling/v1 Scale of a Deployment: spec.replicas (left out at 0, as omitempty leaves it), status
        replicas and selector; a patch or an update writes spec.replicas through the subresource."""
        namespace, name = attributes.namespace, attributes.name
        options = _options(request, _PARAMETERS[attributes.verb])
        before = self._scale_of(namespace, name)
        if attributes.verb == "get":
            self._check_version(options.get("resourceVersion", ""))
            return before
        if attributes.verb == "patch":
            after = _patched(before, request)
        else:
            after = _object_body(request)
            after["metadata"] = {"resourceVersion": "", **(after.get("metadata") or {})}
        self._check_metadata(before, after, "apps", "deployments", unconditional=attributes.verb == "update")
        replicas = (after.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise invalid("Scale", "autoscaling", name, "spec.replicas", replicas, "must be an integer")
        if replicas < 0:
            raise invalid("Scale", "autoscaling", name, "spec.replicas", replicas, "must be greater than or equal to 0")
        if replicas != (before.get("spec") or {}).get("replicas", 0):
            manager = request.query.get("fieldManager", [""])[0] or request.headers.get("User-Agent", "").split("/")[0]
            self.cluster.scale(namespace, name, replicas, manager[:128])
        return self._scale_of(namespace, name)

    def _scale_of(self, namespace: str, name: str) -> Manifest:
        deployment = self._deployment(namespace, name)
        metadata = {key: deployment["metadata"][key] for key in ("name", "namespace", "uid", "resourceVersion",
                                                                 "creationTimestamp")}  # fmt: skip
        replicas = deployment["spec"]["replicas"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": metadata,
                "spec": {"replicas": replicas} if replicas else {},
                "status": {"replicas": deployment["status"].get("replicas", 0),
                           "selector": format_selector(deployment["spec"]["selector"])}}  # fmt: skip

    # ----- Jobs -----
    def _job(self, namespace: str, name: str) -> Manifest:
        """A Job as the API returns it: its labels, when it has none, its template's (SetDefaults_Job); its spec's
        defaulted counts and modes; its status as its controller writes it (`Cluster.job_progress`), with the
        condition it ended with (Complete, or Failed and why). Not shown: the selector and the template labels the
        API server generates (the pods here do not carry them), the interim conditions newer controllers add first
        (SuccessCriteriaMet, FailureTarget)."""
        try:
            manifest = self.cluster.get("Job", namespace, name)
            meta = self.cluster.meta("Job", namespace, name)
            progress = self.cluster.job_progress(namespace, name)
        except KeyError:
            raise not_found("batch", "jobs", name) from None
        document = self._shown(manifest, meta)
        metadata, spec = document["metadata"], document["spec"]
        metadata["generation"] = meta.generation
        template_labels = (spec["template"].get("metadata") or {}).get("labels")
        if template_labels and not metadata.get("labels"):
            metadata["labels"] = dict(template_labels)
        if "completions" not in spec and "parallelism" not in spec:
            spec["completions"] = 1
        defaults = {"parallelism": 1, "backoffLimit": 6, "completionMode": "NonIndexed", "suspend": False}
        document["spec"] = {**defaults, **spec}
        wall = self.cluster.clock.wall
        counts = {"active": progress.active, "succeeded": progress.succeeded, "failed": progress.failed}
        status: Manifest = {"startTime": timestamp(wall(progress.started_at)), **{k: n for k, n in counts.items() if n},
                            "ready": progress.ready, "terminating": progress.terminating,
                            "uncountedTerminatedPods": {}}  # fmt: skip
        if progress.ended_at is not None:
            ended = timestamp(wall(progress.ended_at))
            condition = {"type": "Complete" if progress.status == "Succeeded" else "Failed", "status": "True",
                         "lastProbeTime": ended, "lastTransitionTime": ended}  # fmt: skip
            if progress.reason:
                condition |= {"reason": progress.reason, "message": _JOB_FAILURES[progress.reason]}
            status["conditions"] = [condition]
            if progress.status == "Succeeded":
                status["completionTime"] = ended
        document["status"] = status
        return self._versioned(meta.uid, document)

    # ----- ConfigMaps, Secrets, Services and EndpointSlices (these read and written) -----
    def _stored(self, attributes: Attributes) -> Manifest:
        """An object as the API returns it (`_shown`), with its resourceVersion."""
        group, resource, name = attributes.group, attributes.resource, attributes.name
        kind = _KINDS_OF[(group, resource)]
        try:
            manifest = self.cluster.get(kind, attributes.namespace, name)
            meta = self.cluster.meta(kind, attributes.namespace, name)
        except KeyError:
            raise not_found(group, resource, name) from None
        return self._versioned(meta.uid, self._shown(manifest, meta))

    def _endpoint_slices(self, attributes: Attributes, request: Request) -> Manifest:
        """get; create (POST of the whole object to the collection) and update (PUT of the whole object, its
        resourceVersion a precondition): validated as the API server does (the schema, strictly; addressType
        immutable), owned by the request's field manager."""
        if attributes.verb == "get":
            return self._objects(attributes, request)
        options = _options(request, _PARAMETERS[attributes.verb])
        body = _decoded(request.body)
        metadata = body.setdefault("metadata", {})
        if metadata.setdefault("namespace", attributes.namespace) != attributes.namespace:
            raise APIError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if "generateName" in metadata or not metadata.get("name"):
            raise unmodelled("an EndpointSlice without a name (generateName)")
        name = metadata["name"]
        try:
            kubernetes_validate.validate(body, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as error:
            raise invalid(
                "EndpointSlice", "discovery.k8s.io", name, ".".join(map(str, error.path)), "", error.message
            ) from None
        manager = (options.get("fieldManager") or request.headers.get("User-Agent", "").split("/")[0])[:128]
        stored = {key: value for key, value in body.items()}
        stored["metadata"] = {key: value for key, value in metadata.items() if key not in _SERVER_METADATA}
        if attributes.verb == "update":
            if name != attributes.name:
                raise APIError(
                    400,
                    "BadRequest",
                    f"the name of the object ({name}) does not match the name on the URL ({attributes.name})",
                )
            self._check_metadata(self._stored(attributes), body, "discovery.k8s.io", "endpointslices")
        try:
            self.cluster.write_from_api(stored, manager, create=attributes.verb == "create")
        except AlreadyExistsError:
            raise APIError(409, "AlreadyExists", f'endpointslices.discovery.k8s.io "{name}" already exists') from None
        except InvalidError as error:
            raise invalid(
                "EndpointSlice", "discovery.k8s.io", name, "addressType", body.get("addressType"), str(error)
            ) from None
        return self._stored(dataclasses.replace(attributes, name=name))

    # ----- shared -----
    def _versioned(self, uid: str, document: Manifest) -> Manifest:
        """The object with its resourceVersion: a new one from the server's counter whenever what it shows
        changed since it was last shown."""
        shown = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
        with self._lock:
            known = self._versions.get(uid)
            if known is None or known[0] != shown:
                self._version += 1
                known = self._versions[uid] = (shown, self._version)
        document["metadata"]["resourceVersion"] = str(known[1])
        return document

    def _check_version(self, wanted: str) -> None:
        """A read at `resourceVersion` (any, or not older than it): always served from the latest state, which is
        never older; a version the server has not reached yet is 504, as the real one answers once its cache
        waited for it in vain."""
        if wanted in {"", "0"}:
            return
        if not wanted.isdigit():
            raise unmodelled(f"resourceVersion {wanted!r}")
        if int(wanted) > self._version:
            raise APIError(504, "Timeout", f"Too large resource version: {wanted}, current: {self._version}",
                           {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                            "retryAfterSeconds": 1})  # fmt: skip

    def _list_options(self, request: Request) -> Callable[[Mapping[str, str]], bool]:
        options = _options(request, {"labelSelector", "fieldSelector", "resourceVersion", "resourceVersionMatch",
                                     "limit", "timeoutSeconds", "watch", "allowWatchBookmarks"})  # fmt: skip
        if options.get("fieldSelector"):
            raise unmodelled(f"fieldSelector {options['fieldSelector']!r}")
        if options.get("resourceVersionMatch", "NotOlderThan") != "NotOlderThan":
            raise unmodelled(f"resourceVersionMatch {options['resourceVersionMatch']}")
        self._check_version(options.get("resourceVersion", ""))
        return label_selector(options.get("labelSelector", ""))

    def _list(self, kind: str, api_version: str, items: list[Manifest]) -> Manifest:
        items.sort(key=lambda item: str(item["metadata"]["name"]))
        with self._lock:
            version = str(self._version)
        return {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": version}, "items": items}

    @staticmethod
    def _check_metadata(
        before: Manifest, after: Manifest, group: str, resource: str, unconditional: bool = False
    ) -> None:
        """What a patch or an update says of the object's identity: its name must stay; a uid or resourceVersion
        it sends is a precondition (409 when stale); an update without a resourceVersion is unconditional."""
        old, new, name = before["metadata"], after.get("metadata") or {}, before["metadata"]["name"]
        if new.get("name") != name:
            why = f"the name of the object ({new.get('name', '')}) does not match the name on the URL ({name})"
            raise APIError(400, "BadRequest", why)
        if new.get("uid", old["uid"]) != old["uid"]:
            why = f"Precondition failed: UID in precondition: {new['uid']}, UID in object meta: {old['uid']}"
            raise conflict(group, resource, name, why)
        wanted = new.get("resourceVersion", old["resourceVersion"])
        if wanted != old["resourceVersion"] and not (unconditional and wanted == ""):
            raise stale(group, resource, name)


def _granted_to_everyone(attributes: Attributes) -> bool:
    """What the default ClusterRoles let every authenticated user do: discovery and health paths, reviews of
    oneself."""
    if attributes.resource_request:
        return attributes.verb == "create" and (attributes.group, attributes.resource) in _SELF_REVIEWS
    return attributes.verb == "get" and bool(_PUBLIC_PATHS.fullmatch(attributes.path))


def _is_int32(value: str) -> bool:
    return bool(_INT32.fullmatch(value)) and -(2**31) <= int(value) < 2**31


def _options(request: Request, allowed: set[str]) -> dict[str, str]:
    """The query's parameters, each once; one this server does not know is refused rather than ignored."""
    unknown = set(request.query) - allowed - {"pretty"}
    if unknown:  # dryRun, continue and force among them
        raise unmodelled(f"query parameters {sorted(unknown)}")
    options = {key: values[0] for key, values in request.query.items()}
    if options.get("fieldValidation", "Strict") not in {"Strict", "Warn", "Ignore"}:
        raise APIError(400, "BadRequest", f"fieldValidation: invalid value {options['fieldValidation']!r}")
    return options


def _delete_options(request: Request) -> DeleteOptions:
    """A DELETE's DeleteOptions as the server reads them: from its body when it has one (JSON, of kind
    DeleteOptions), else from its query; orphanDependents as the policy it stands for (true: Orphan, false:
    Background); validated as ValidateDeleteOptions validates them (422)."""
    query = _options(request, _PARAMETERS["delete"])
    fields: Manifest = dict(query)
    if request.body.strip():
        fields = _object_body(request)
        unknown = set(fields) - _DELETE_OPTIONS
        if unknown:
            raise unmodelled(f"DeleteOptions {sorted(unknown)}")
        if fields.get("kind", "DeleteOptions") != "DeleteOptions":
            raise unmodelled(f"a DELETE whose body is a {fields['kind']} (DeleteOptions only)")
    else:  # the query's values are strings
        for key, parse in (("gracePeriodSeconds", int), ("orphanDependents", _boolean)):
            try:
                fields[key] = parse(fields[key]) if key in fields else None
            except ValueError as error:
                raise APIError(400, "BadRequest", f"{key}: {error}") from error
    grace, orphan, policy = (fields.get(key) for key in ("gracePeriodSeconds", "orphanDependents", "propagationPolicy"))
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
        raise APIError(400, "BadRequest", f"gracePeriodSeconds: {grace!r} is not an integer")
    if orphan is not None and policy is not None:
        raise invalid("DeleteOptions", "meta.k8s.io", "", "propagationPolicy", policy,
                      "orphanDependents and deletionPropagation cannot be both set")  # fmt: skip
    if policy is not None and policy not in _PROPAGATION_POLICIES:
        supported = ", ".join(json.dumps(value) for value in (*_PROPAGATION_POLICIES, "nil"))
        raise invalid("DeleteOptions", "meta.k8s.io", "", "propagationPolicy", policy,
                      f"supported values: {supported}", unsupported=True)  # fmt: skip
    if orphan is not None:
        policy = "Orphan" if orphan else "Background"
    return DeleteOptions(grace, policy, fields.get("preconditions") or {})


def _boolean(text: str) -> bool:
    """A query parameter's boolean, as strconv.ParseBool reads it."""
    if text in {"1", "t", "T", "true", "TRUE", "True"}:
        return True
    if text in {"0", "f", "F", "false", "FALSE", "False"}:
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def _check_preconditions(options: DeleteOptions, metadata: Manifest, group: str, resource: str) -> None:
    """A delete's preconditions: the object's uid and resourceVersion, where given (409 Conflict otherwise)."""
    for field, key in (("UID", "uid"), ("ResourceVersion", "resourceVersion")):
        wanted = options.preconditions.get(key)
        if wanted not in {None, metadata[key]}:
            why = f"Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {metadata[key]}"
            raise conflict(group, resource, metadata["name"], why)


def _object_body(request: Request) -> Manifest:
    """A request's body as NegotiateInputSerializer reads it, by its Content-Type (JSON when it has none): JSON is
    served, YAML and protobuf refused as not modelled, anything else is 415."""
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip() or "application/json"
    if content_type in {"application/yaml", "application/vnd.kubernetes.protobuf"}:
        raise unmodelled(f"a body in {content_type}")
    if content_type != "application/json":
        accepted = "application/json, application/yaml, application/vnd.kubernetes.protobuf"
        raise APIError(415, "UnsupportedMediaType", f"{_UNKNOWN_FORMAT}{accepted}")
    return _decoded(request.body)


def _decoded(body: bytes) -> Manifest:
    try:
        document = json.loads(body)
    except ValueError as error:
        raise APIError(400, "BadRequest", f"error decoding the request body as JSON: {error}") from error
    if not isinstance(document, dict):
        raise APIError(400, "BadRequest", "the request body is not a JSON object")
    return document


def _patched(document: Manifest, request: Request) -> Manifest:
    """`document` with the request's patch applied, by its content type."""
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if content_type not in _PATCH_TYPES:
        raise APIError(415, "UnsupportedMediaType", f"{_UNKNOWN_FORMAT}{', '.join(_PATCH_TYPES)}")
    if content_type == "application/apply-patch+yaml":
        raise unmodelled("server-side apply patches")
    try:
        patch = json.loads(request.body)
    except ValueError as error:
        raise APIError(400, "BadRequest", f"error decoding patch: {error}") from error
    if content_type == "application/json-patch+json":
        result = json_patch(document, patch)
    else:
        if content_type == "application/strategic-merge-patch+json" and _has_lists_or_directives(patch):
            raise unmodelled("a strategic merge patch with lists or $-directives")
        if not isinstance(patch, dict):
            raise APIError(400, "BadRequest", "error decoding patch: a merge patch must be a JSON object")
        result = merge_patch(document, patch)
    if not isinstance(result, dict):
        raise APIError(422, "Invalid", "the patched object is not a JSON object")
    return result


def _has_lists_or_directives(patch: Any) -> bool:
    """A strategic merge patch is a merge patch unless it holds lists (merged by key) or `$` directives."""
    if isinstance(patch, list):
        return True
    return isinstance(patch, dict) and any(
        key.startswith("$") or _has_lists_or_directives(value) for key, value in patch.items()
    )


def _qos_class(spec: Manifest) -> str:
    """The pod's QoS class: Guaranteed if every container limits and requests CPU and memory alike, BestEffort if
    none asks for any, else Burstable."""
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    amounts = [
        (c.get("resources", {}).get("requests", {}), c.get("resources", {}).get("limits", {})) for c in containers
    ]
    if not any(requests or limits for requests, limits in amounts):
        return "BestEffort"

    def guaranteed(requests: Manifest, limits: Manifest, name: str) -> bool:
        return name in limits and quantity(requests[name] if name in requests else limits[name]) == quantity(
            limits[name]
        )

    every = all(guaranteed(requests, limits, name) for requests, limits in amounts for name in ("cpu", "memory"))
    return "Guaranteed" if every else "Burstable"


def _container_id(pod: Pod, container: Manifest, start: int) -> str:
    return "containerd://" + hashlib.sha256(f"{pod.uid}/{container['name']}/{start}".encode()).hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: APIServer) -> None:
        self.api = api
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up, or fails the TLS handshake, is the client's business, not the server's."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def _serve(self) -> None:
        method = self.command
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        headers = {key: value for key, value in self.headers.items()}
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            self.close_connection = True
            code, body = 501, unmodelled("a chunked request body").status()
        else:
            content = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code, body = self.server.api.serve(Request(method, urllib.parse.unquote(url.path), query, headers, content))
        payload = json.dumps(body, separators=(",", ":")).encode() + b"\n"  # as the API server writes it
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    # BaseHTTPRequestHandler calls do_<METHOD>() for each request; any other method is its 501.
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 - its names

    def log_message(self, format: str, *args: Any) -> None:
        """The audit log (APIServer.audit) records requests; nothing goes to stderr."""

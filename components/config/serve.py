"""Ray Serve's applications (`serveApplications`) and who may reach them, checked before anything is declared.

The applications are given in Serve's own config-file schema (`applications[]` of `serve deploy`'s file), so a
config written for `serve deploy` or KubeRay's `serveConfigV2` works here as it is. Serve itself checks them only
once they reach a running cluster, and its schema drops every key it does not know without a word (pydantic's
default): a misspelt `num_replica` would deploy the code's default and say nothing. So each application and
deployment is refused here for what would fail or be lost there: an unknown key (with the nearest known one), a
missing or malformed `import_path`, names and route prefixes that collide, a prefix without its `/`, a local
`working_dir` that no node has. What Serve checks in depth (an autoscaling config's fields, actor options) it
reports when the config is applied, which fails `pulumi up` with its message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .inputs import SERVE_APPLICATIONS, ServeApplicationArgs, ServeDeploymentArgs, nearest_key_hint
from .values import Inputs, config_error, require_cidr, require_label_list, require_list

APPLICATION_KEYS = ServeApplicationArgs.__required_keys__ | ServeApplicationArgs.__optional_keys__
DEPLOYMENT_KEYS = ServeDeploymentArgs.__required_keys__ | ServeDeploymentArgs.__optional_keys__
# Serve's own defaults for an application's name and route prefix (python/ray/serve/schema.py).
DEFAULT_NAME = "default"
DEFAULT_ROUTE_PREFIX = "/"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
# `module.submodule:attribute` or `module.submodule.attribute`, as Serve's import_attr takes them.
_IMPORT_PATH = re.compile(rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*(:{_IDENTIFIER}(\.{_IDENTIFIER})*|\.{_IDENTIFIER})$")
# runtime_env keys that name code Serve downloads or finds on every node: a URI, never a path of the user's machine.
_CODE_LOCATIONS = ("working_dir", "py_modules")
_OBJECT_OPTIONS = ("runtime_env", "args", "logging_config", "autoscaling_policy")
_DEPLOYMENT_OBJECT_OPTIONS = (
    "autoscaling_config",
    "ray_actor_options",
    "logging_config",
    "backpressure_config",
    "request_router_config",
    "gang_scheduling_config",
)


@dataclass(frozen=True)
class ServeSettings:
    """The applications, as the JSON text of Serve's `applications` list (immutable, and what a pod is given),
    their names and route prefixes, and who besides the cluster may reach the Serve port."""

    applications_json: str
    names: tuple[str, ...]
    route_prefixes: tuple[str | None, ...]
    namespaces: tuple[str, ...]
    cidrs: tuple[str, ...]

    @property
    def applications(self) -> list[dict[str, Any]]:
        loaded: list[dict[str, Any]] = json.loads(self.applications_json)
        return loaded


def serve_settings(inputs: Inputs) -> ServeSettings | None:
    """The Serve applications and audience, or None without applications (then nothing of Serve is declared, and
    an audience given without applications is refused: it would admit traffic to nothing)."""
    raw = require_list(SERVE_APPLICATIONS, inputs.value(SERVE_APPLICATIONS))
    namespaces = require_label_list(inputs, "allowedServeNamespaces")
    cidrs = tuple(
        require_cidr(f"allowedServeCidrs[{i}]", value)
        for i, value in enumerate(require_list("allowedServeCidrs", inputs.value("allowedServeCidrs")))
    )
    if not raw:
        for key, given in (("allowedServeNamespaces", namespaces), ("allowedServeCidrs", cidrs)):
            if given:
                raise config_error(key, list(given), f"it admits traffic to Serve, and {SERVE_APPLICATIONS} is empty")
        return None
    applications = [_application(f"{SERVE_APPLICATIONS}[{i}]", value) for i, value in enumerate(raw)]
    names = [app.get("name", DEFAULT_NAME) for app in applications]
    prefixes = [app.get("route_prefix", DEFAULT_ROUTE_PREFIX) for app in applications]
    _require_unique("name", names)
    _require_unique("route_prefix", [prefix for prefix in prefixes if prefix is not None])
    return ServeSettings(
        applications_json=json.dumps(applications, sort_keys=True, separators=(",", ":")),
        names=tuple(names),
        route_prefixes=tuple(prefixes),
        namespaces=namespaces,
        cidrs=cidrs,
    )


def _require_unique(field: str, values: list[Any]) -> None:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise config_error(
                f"{SERVE_APPLICATIONS}[{i}].{field}",
                value,
                f"serveApplications[{values.index(value)}] has it too: each application's {field} must be unique",
            )


def _require_known_keys(key: str, value: object, known: Collection[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise config_error(key, value, f"it must be an object: {what}")
    for field in sorted(value):
        if field not in known:
            raise config_error(
                f"{key}.{field}",
                value[field],
                f"it is not a key of {what} (Serve would ignore it): {nearest_key_hint(field, known)}"
                f"the keys are {sorted(known)}",
            )
    return value


def _application(key: str, value: object) -> dict[str, Any]:
    app = _require_known_keys(key, value, APPLICATION_KEYS, "a Serve application")
    name = app.get("name", DEFAULT_NAME)
    if not isinstance(name, str) or not name:
        raise config_error(f"{key}.name", name, "it must be non-empty text")
    import_path = app.get("import_path")
    if not isinstance(import_path, str) or not _IMPORT_PATH.match(import_path):
        raise config_error(
            f"{key}.import_path",
            import_path,
            "every application needs one: `module:attribute` or `module.attribute` (such as `hello:app`), where "
            "the module is in the image or in the application's runtime_env",
        )
    prefix = app.get("route_prefix", DEFAULT_ROUTE_PREFIX)
    if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/")):
        raise config_error(f"{key}.route_prefix", prefix, "it must start with `/` (or be null: no HTTP route)")
    _require_objects(key, app, _OBJECT_OPTIONS)
    _require_code_locations(f"{key}.runtime_env", app.get("runtime_env") or {})
    if not isinstance(app.get("external_scaler_enabled", False), bool):
        raise config_error(f"{key}.external_scaler_enabled", app["external_scaler_enabled"], "it must be true or false")
    deployments = require_list(f"{key}.deployments", app.get("deployments", []))
    parsed = [_deployment(f"{key}.deployments[{i}]", item) for i, item in enumerate(deployments)]
    names = [deployment["name"] for deployment in parsed]
    for i, deployment_name in enumerate(names):
        if deployment_name in names[:i]:
            raise config_error(f"{key}.deployments[{i}].name", deployment_name, "each deployment's name must be unique")
    return {**app, **({"deployments": parsed} if "deployments" in app else {})}


def _require_objects(key: str, given: Mapping[str, Any], options: tuple[str, ...]) -> None:
    """Options that are objects in Serve's schema (or null: Serve's default)."""
    for option in options:
        if given.get(option) is not None and not isinstance(given[option], dict):
            raise config_error(f"{key}.{option}", given[option], "it must be an object (or null)")


def _require_code_locations(key: str, runtime_env: object) -> None:
    """Code that Serve fetches for every replica, on every node, must be somewhere every node reaches: a URI."""
    if not isinstance(runtime_env, Mapping):
        raise config_error(key, runtime_env, "it must be an object")
    for option in _CODE_LOCATIONS:
        given = runtime_env.get(option)
        locations = given if isinstance(given, list) else [given] if given is not None else []
        for location in locations:
            if not isinstance(location, str) or "://" not in location:
                raise config_error(
                    f"{key}.{option}",
                    given,
                    "it must be a remote URI (https://.../archive.zip, s3://..., gs://...) or a local:// directory "
                    "that exists on every node: no node has a path of the machine that runs `pulumi up`",
                )


def _deployment(key: str, value: object) -> dict[str, Any]:
    deployment = _require_known_keys(key, value, DEPLOYMENT_KEYS, "a Serve deployment")
    name = deployment.get("name")
    if not isinstance(name, str) or not name:
        raise config_error(f"{key}.name", name, "every deployment needs its name, as in the application's code")
    replicas = deployment.get("num_replicas")
    if replicas not in (None, "auto") and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1):
        raise config_error(
            f"{key}.num_replicas", replicas, 'it must be a whole number, 1 or more, or "auto" (or null: the code\'s)'
        )
    _require_objects(key, deployment, _DEPLOYMENT_OBJECT_OPTIONS)
    _require_code_locations(
        f"{key}.ray_actor_options.runtime_env", (deployment.get("ray_actor_options") or {}).get("runtime_env") or {}
    )
    return deployment

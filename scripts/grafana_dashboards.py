#!/usr/bin/env python3
"""Ray's own Grafana dashboards for the pinned Ray, generated into components/dashboards/<name>.json.

The cluster ships Ray's dashboards as ConfigMaps (one per dashboard, labelled `grafana_dashboard: "1"` for the
Grafana sidecar of kube-prometheus-stack). Ray builds them in Python from its panel definitions
(ray.dashboard.modules.metrics.grafana_dashboard_factory, one `generate_<name>_grafana_dashboard()` per
dashboard), so they are generated here from the installed Ray, never copied by hand: every such function the
factory module defines is called (a Ray that adds or drops a dashboard adds or drops a file), and the script
refuses to run unless the installed Ray is the version the default image of Pulumi.yaml pins, so a Ray bump must
regenerate them (tests/test_dashboards.py fails until it does).

    .venv/bin/python scripts/grafana_dashboards.py            # (re)write components/dashboards/*.json
    .venv/bin/python scripts/grafana_dashboards.py --check    # exit 1, naming each file that is not as generated
    .venv/bin/python scripts/grafana_dashboards.py --metrics  # the metric names each dashboard queries

Reproducible output: Ray's factory reads `RAY_GRAFANA_<NAME>_DASHBOARD_UID`, `..._GLOBAL_FILTERS` and
`..._LOG_LINK_URL` from the environment, so every `RAY_GRAFANA_*` variable is unset while it runs. Ray's JSON is
parsed (a repeated key fails rather than being dropped) and written back with its keys in Ray's order (which
does not depend on the process: no sets, no hash order) with a two-space indent: about 30% smaller than Ray's
four, and still a readable diff when Ray changes. Ray tags every dashboard `rayVersion:<version>`; the script
checks that tag rather than writing a version file. A ConfigMap holds at most 1 MiB, so each file must stay below
1,000,000 bytes (the rest is room for the object's metadata).

The PromQL helpers (`expressions`, `substitute`, `selectors`, `metric_names`) read the queries back out of a
generated dashboard as Grafana would send them to Prometheus; the tests use them to have promtool parse every
query and to list the metric names each dashboard needs.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILE = ROOT / "Pulumi.yaml"
DASHBOARDS = ROOT / "components" / "dashboards"
FACTORY_MODULE = "ray.dashboard.modules.metrics.grafana_dashboard_factory"
GENERATOR = re.compile(r"generate_(?P<name>[a-z0-9_]+)_grafana_dashboard")
# What the factory reads from the environment (RAY_GRAFANA_<NAME>_DASHBOARD_UID, ..._GLOBAL_FILTERS, ..._LOG_LINK_URL).
ENVIRONMENT_PREFIX = "RAY_GRAFANA_"
# A ConfigMap's data (and the whole object) must stay below 1 MiB; below this, each file leaves room for the rest.
CONFIGMAP_LIMIT = 1_000_000
VERSION_TAG = "rayVersion:{version}"


class DashboardError(Exception):
    """The installed Ray cannot generate the dashboards this repository ships."""


def pinned_ray_version(project_file: Path = PROJECT_FILE) -> str:
    """The Ray version of the default image (`rayproject/ray:<version>[-suffix]`) Pulumi.yaml declares."""
    image = yaml.safe_load(project_file.read_text())["config"]["image"]["default"]
    tag = str(image).split("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    version = re.match(r"\d+\.\d+\.\d+", tag)
    if not version:
        raise DashboardError(f"{project_file}: the default image {image!r} has no Ray version in its tag")
    return version.group()


def generators() -> dict[str, Callable[[], tuple[str, str]]]:
    """Every `generate_<name>_grafana_dashboard` function the factory module defines, by `<name>`."""
    module = importlib.import_module(FACTORY_MODULE)
    found: dict[str, Callable[[], tuple[str, str]]] = {
        match["name"]: function
        for attribute, function in inspect.getmembers(module, inspect.isfunction)
        if (match := GENERATOR.fullmatch(attribute)) and function.__module__ == module.__name__
    }
    if not found:
        raise DashboardError(f"{FACTORY_MODULE} defines no generate_<name>_grafana_dashboard function")
    return found


@contextmanager
def _without_overrides() -> Iterator[None]:
    """The environment without the RAY_GRAFANA_* variables Ray's factory would apply, restored afterwards."""
    saved = {key: value for key, value in os.environ.items() if key.startswith(ENVIRONMENT_PREFIX)}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise DashboardError(f"Ray's dashboard JSON repeats the keys {repeated}")
    return dict(pairs)


def render(dashboard: dict[str, Any]) -> str:
    """A dashboard as the file holds it: Ray's key order, two-space indent, ASCII, a final newline."""
    return json.dumps(dashboard, indent=2) + "\n"


def generate() -> dict[str, str]:
    """Each dashboard of the installed Ray, as the text of its file (`<name>.json`), in file-name order.

    Raises DashboardError when the installed Ray is not the pinned one, or a dashboard is not what can be shipped.
    """
    import ray

    pinned = pinned_ray_version()
    if ray.__version__ != pinned:
        raise DashboardError(
            f"the installed Ray is {ray.__version__}, but Pulumi.yaml's image pins {pinned}: install "
            f"ray[default]=={pinned} (requirements-dev.txt) to generate its dashboards"
        )
    files: dict[str, str] = {}
    with _without_overrides():
        for name, generator in sorted(generators().items()):
            text, uid = generator()
            dashboard = json.loads(text, object_pairs_hook=_unique_keys)
            if dashboard.get("uid") != uid:
                raise DashboardError(f"{name}: the dashboard's uid {dashboard.get('uid')!r} is not {uid!r}")
            tag = VERSION_TAG.format(version=pinned)
            if tag not in dashboard.get("tags", []):
                raise DashboardError(f"{name}: Ray did not tag the dashboard {tag!r} (tags: {dashboard.get('tags')})")
            rendered = render(dashboard)
            size = len(rendered.encode())
            if size >= CONFIGMAP_LIMIT:
                raise DashboardError(f"{name}: {size} bytes, too large for a ConfigMap (< {CONFIGMAP_LIMIT})")
            files[f"{name}.json"] = rendered
    return files


def differences(directory: Path = DASHBOARDS, generated: dict[str, str] | None = None) -> list[str]:
    """How the dashboard files in `directory` differ from a fresh generation, one line per file; empty if none."""
    expected = generate() if generated is None else generated
    present = {path.name: path for path in directory.glob("*.json")} if directory.is_dir() else {}
    lines = []
    for name in sorted(expected.keys() | present.keys()):
        if name not in present:
            lines.append(f"{name}: missing")
        elif name not in expected:
            lines.append(f"{name}: not generated by Ray {_installed_ray()} (a dashboard Ray no longer has)")
        elif present[name].read_text() != expected[name]:
            lines.append(f"{name}: differs from what Ray {_installed_ray()} generates")
    return lines


def write(directory: Path = DASHBOARDS) -> dict[str, int]:
    """Writes every dashboard into `directory` and removes the JSON files of dashboards Ray no longer has;
    returns each file's size in bytes."""
    files = generate()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (directory / name).write_text(text)
    return {name: len(text.encode()) for name, text in files.items()}


def _installed_ray() -> str:
    import ray

    return str(ray.__version__)


# Grafana's built-in variables, as one query with a one-hour range and a one-minute step would get them.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__from": "1700000000000",
    "__to": "1700003600000",
}
# `$name`, `${name}`, `${name:format}` and `[[name]]`, as Grafana's template service finds them.
_VARIABLE = re.compile(r"\$(?P<plain>\w+)|\$\{(?P<braced>\w+)(?::[^}]*)?\}|\[\[(?P<bracketed>\w+)\]\]")


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """The value Grafana gives each variable of a dashboard when nothing is picked: a variable that includes "All"
    is its `allValue` (or, lacking one, the regex of all its options, `(head|worker)`); any other one is its current
    (default) value. A query variable has no options until Grafana asks Prometheus, so it must have an `allValue`."""
    values = dict(BUILTIN_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        name, current = variable["name"], variable.get("current", {}).get("value")
        options = [str(o["value"]) for o in variable.get("options", []) if o.get("value") != "$__all"]
        if variable["type"] == "datasource":
            values[name] = str(variable["query"])
        elif variable.get("includeAll") and variable.get("allValue"):
            values[name] = str(variable["allValue"])
        elif variable.get("includeAll") and options:
            values[name] = "(" + "|".join(re.escape(option) for option in options) + ")"
        elif isinstance(current, str) and current:
            values[name] = current
        else:
            raise ValueError(f"variable {name!r} has no value Grafana would substitute: {variable}")
    return values


def substitute(expression: str, values: dict[str, str]) -> str:
    """The expression with each Grafana variable replaced by its value. Grafana leaves a name it does not know as it
    is; here that is an error (a typo would query nothing), except for `$1` and the like: a regex group's reference
    (label_replace), which no variable can be named."""

    def value(match: re.Match[str]) -> str:
        name = match["plain"] or match["braced"] or match["bracketed"]
        if name.isdigit():
            return match.group()
        if name not in values:
            raise ValueError(f"unknown Grafana variable {match.group()!r} in {expression!r}")
        return values[name]

    return _VARIABLE.sub(value, expression)


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every panel target (query) of a dashboard, collapsed rows' panels included, with where it is
    (`panel <id> '<title>' <refId>`)."""

    def panels(within: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in within:
            yield panel
            yield from panels(panel.get("panels", []))  # a collapsed row holds its panels

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}", target


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL query of a dashboard as Grafana sends it to Prometheus (variables substituted), with where it
    is: each panel target's `expr`, and the PromQL inside each query variable's `query_result(<query>)` or
    `label_values(<selector>, <label>)` (`variable <name>`)."""
    values = variable_values(dashboard)
    found = [(where, substitute(target["expr"], values)) for where, target in targets(dashboard)]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        inner = re.fullmatch(r"\s*query_result\((.*)\)\s*|\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
        if not inner:
            raise ValueError(f"variable {variable['name']!r}: not a query of Grafana's Prometheus source: {query}")
        found.append((f"variable {variable['name']}", substitute(inner[1] or inner[2], values)))
    return found


@dataclass(frozen=True)
class Selector:
    """A vector selector of a PromQL expression: the metric names it selects (its name, or those a `__name__`
    matcher names) and its label matchers, each `(label, operator, value)` with the value unquoted."""

    metrics: tuple[str, ...]
    matchers: tuple[tuple[str, str, str], ...]


# PromQL's tokens, for finding the vector selectors of an expression that promtool has parsed.
_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      |(?P<comment>\#[^\n]*)
      |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+\b|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                 "quantile", "limitk", "limit_ratio"}  # fmt: skip
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _AGGREGATIONS | _LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
# A `__name__=~` regex whose metric names can be listed: names and groups of alternative names, `a_(b|c)_d`.
_NAME_PART = re.compile(r"(?P<literal>[A-Za-z0-9_:]+)|\((?P<alternatives>[A-Za-z0-9_:]+(?:\|[A-Za-z0-9_:]+)*)\)")
_Token = tuple[str | None, str]


def selectors(expression: str) -> list[Selector]:
    """The vector selectors of a (syntactically valid: promtool checks that) PromQL expression, in order.

    A tokenizer, not a parser. Strings, comments and numbers (durations included) are single tokens; a name is a
    metric name unless it is a keyword or aggregation operator, is followed by `(` (a function), or is inside a
    range or subquery's brackets, a selector's braces (a label) or the label list after `by`, `without`, `on`,
    `ignoring`, `group_left` or `group_right`. A selector without a metric name (`{__name__=~"a_(b|c)"}`) selects
    those its `__name__` matcher names: an equality's value, or each name a regex of alternatives spells out; any
    other `__name__` matcher is an error, since the names it selects cannot be listed.
    """
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expression) if m.lastgroup not in ("space", "comment")]
    found: list[Selector] = []
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if text == "[":
            index = _closing(tokens, index)
        elif text == "{":
            end = _closing(tokens, index)
            matchers = _matchers(tokens[index + 1 : end - 1])
            found.append(Selector(_named_by_matcher(matchers, expression), matchers))
            index = end
        elif kind == "name" and text.lower() in _LABEL_LISTS and following == "(":
            index = _closing(tokens, index + 1)
        elif kind == "name" and text.lower() not in _KEYWORDS and following != "(":
            end = _closing(tokens, index + 1) if following == "{" else index + 1
            found.append(Selector((text,), _matchers(tokens[index + 2 : end - 1])))
            index = end
        else:
            index += 1
    return found


def _closing(tokens: list[_Token], start: int) -> int:
    """The index after the token that closes the bracket at `start`."""
    opening = tokens[start][1]
    closing = {"(": ")", "[": "]", "{": "}"}[opening]
    depth = 0
    for index in range(start, len(tokens)):
        depth += {opening: 1, closing: -1}.get(tokens[index][1], 0)
        if depth == 0:
            return index + 1
    raise ValueError(f"unbalanced {opening!r} in {''.join(text for _, text in tokens)!r}")


def _matchers(tokens: list[_Token]) -> tuple[tuple[str, str, str], ...]:
    """The label matchers between a selector's braces: `label op "value"`, separated by commas."""
    groups: list[list[_Token]] = [[]]
    for token in tokens:
        if token[1] == ",":
            groups.append([])
        else:
            groups[-1].append(token)
    matchers = []
    for group in filter(None, groups):  # PromQL allows a trailing comma
        (label_kind, label), *operator, (value_kind, value) = group
        if label_kind != "name" or value_kind != "string" or not operator:
            raise ValueError(f"not a label matcher: {''.join(text for _, text in group)!r}")
        matchers.append((label, "".join(text for _, text in operator), _unquote(value)))
    return tuple(matchers)


def _unquote(string: str) -> str:
    """A PromQL string's value: a raw string (backquotes) as it is, a quoted one with its escapes (Go's, which are
    Python's for what dashboards hold: `\\\\`, `\\"`, `\\n`)."""
    if string.startswith("`"):
        return string[1:-1]
    value = ast.literal_eval(string)
    if not isinstance(value, str):
        raise ValueError(f"not a string: {string}")
    return value


def _named_by_matcher(matchers: tuple[tuple[str, str, str], ...], expression: str) -> tuple[str, ...]:
    names = [(operator, value) for label, operator, value in matchers if label == "__name__"]
    if names and names[0][0] == "=":
        return (names[0][1],)
    if names and names[0][0] == "=~" and _NAME_PART.sub("", names[0][1]) == "":
        parts = [m["literal"] or m["alternatives"] for m in _NAME_PART.finditer(names[0][1])]
        alternatives = [part.split("|") for part in parts]
        return tuple("".join(combination) for combination in itertools.product(*alternatives))
    raise ValueError(f"a selector whose metric names cannot be listed in {expression!r}")


def metric_names(dashboard: dict[str, Any]) -> set[str]:
    """The metric names a dashboard's queries select (its panels' and its variables')."""
    return {
        name
        for _, expression in expressions(dashboard)
        for selector in selectors(expression)
        for name in selector.metrics
    }


def metric_names_by_dashboard(directory: Path = DASHBOARDS) -> dict[str, set[str]]:
    """The metric names each committed dashboard (`<name>.json` in `directory`) queries, by dashboard name."""
    return {path.stem: metric_names(json.loads(path.read_text())) for path in sorted(directory.glob("*.json"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a file differs from a fresh generation")
    mode.add_argument("--metrics", action="store_true", help="print the metric names each dashboard queries")
    arguments = parser.parse_args(argv)
    try:
        if arguments.check:
            lines = differences()
            for line in lines:
                print(f"{DASHBOARDS.relative_to(ROOT)}/{line}", file=sys.stderr)
            if lines:
                print("regenerate them: .venv/bin/python scripts/grafana_dashboards.py", file=sys.stderr)
            return 1 if lines else 0
        if arguments.metrics:
            for name, text in generate().items():
                print(f"{name}: {' '.join(sorted(metric_names(json.loads(text))))}")
            return 0
        for name, size in write().items():
            print(f"{DASHBOARDS.relative_to(ROOT)}/{name}: {size} bytes")
        return 0
    except DashboardError as error:
        print(f"scripts/grafana_dashboards.py: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

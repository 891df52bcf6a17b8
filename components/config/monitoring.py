"""Whether the cluster declares what Prometheus needs to watch it (`prometheusOperator`), for which Prometheus
(`prometheusRelease`), where its alerts' runbook is (`runbookUrl`), and which Prometheus and Grafana the Ray
dashboard shows metrics from (`prometheusUrl`, `grafanaUrl`, `grafanaIframeUrl`), checked before anything is
declared."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .values import Inputs, config_error, require_label_value

# An http(s) URL of a page, without a fragment (each alert adds its own).
_PAGE_URL = re.compile(r"^https?://[^\s#]+$")
# An http(s) server, as Ray's dashboard takes one (it appends `/api/...` paths).
_SERVER_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


@dataclass(frozen=True)
class Monitoring:
    """The prometheus-operator's objects are declared. `release` is the kube-prometheus-stack Helm release whose
    Prometheus selects them (its default selectors take only objects labelled `release: <release>`), or empty for a
    Prometheus that selects them without it; `runbook_url` is the published README the alerts link into, or empty
    for the README's path in this repository."""

    release: str
    runbook_url: str = ""


def monitoring_settings(inputs: Inputs, metrics_namespaces: tuple[str, ...]) -> Monitoring | None:
    """The monitoring settings, or None when the prometheus-operator's objects are not wanted (a release or a
    runbook given then is refused: it would change nothing). Wanted, they need `metrics_namespaces`
    (allowedMetricsNamespaces): the NetworkPolicies admit nothing else to the metrics ports, so a Prometheus in no
    listed namespace would scrape nothing, and every alert on a missing target would fire."""
    release = require_label_value("prometheusRelease", inputs.text("prometheusRelease"))
    runbook_url = inputs.text("runbookUrl")
    if runbook_url and not _PAGE_URL.match(runbook_url):
        raise config_error("runbookUrl", runbook_url, "it must be an http(s) URL of a page, without a `#` fragment")
    if not inputs.boolean("prometheusOperator"):
        for key, given in (("prometheusRelease", release), ("runbookUrl", runbook_url)):
            if given:
                why = "it is for the prometheus-operator's objects, and prometheusOperator is false"
                raise config_error(key, given, why)
        return None
    if not metrics_namespaces:
        raise config_error(
            "prometheusOperator",
            "true",
            "it needs allowedMetricsNamespaces to hold the namespace Prometheus runs in (e.g. `pulumi config set "
            "--path 'allowedMetricsNamespaces[0]' monitoring`): the NetworkPolicies admit no other namespace to "
            "the metrics ports",
        )
    return Monitoring(release=release, runbook_url=runbook_url)


@dataclass(frozen=True)
class MetricsViews:
    """Where the Ray dashboard's metrics views read from: the Prometheus it queries and the Grafana it checks, both
    as the head pod reaches them, and the Grafana the browser loads the panels from. Empty: Ray's defaults
    (localhost), which show no metrics."""

    prometheus_url: str = ""
    grafana_url: str = ""
    grafana_iframe_url: str = ""


def metrics_views(inputs: Inputs) -> MetricsViews:
    urls = {}
    for key in ("prometheusUrl", "grafanaUrl", "grafanaIframeUrl"):
        url = inputs.text(key)
        if url and not _SERVER_URL.match(url):
            raise config_error(key, url, "it must be an http(s) URL of a server (no query or fragment)")
        urls[key] = url.rstrip("/")
    if urls["grafanaIframeUrl"] and not urls["grafanaUrl"]:
        raise config_error(
            "grafanaIframeUrl", urls["grafanaIframeUrl"], "it is where the browser finds grafanaUrl, which is empty"
        )
    return MetricsViews(urls["prometheusUrl"], urls["grafanaUrl"], urls["grafanaIframeUrl"])

"""Whether the cluster declares what Prometheus needs to watch it (`prometheusOperator`), for which Prometheus
(`prometheusRelease`) and where its alerts' runbook is (`runbookUrl`), checked before anything is declared."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .values import Inputs, config_error, require_label_value

# An http(s) URL of a page, without a fragment (each alert adds its own).
_PAGE_URL = re.compile(r"^https?://[^\s#]+$")


@dataclass(frozen=True)
class Monitoring:
    """The prometheus-operator's objects are declared. `release` is the kube-prometheus-stack Helm release whose
    Prometheus selects them (its default selectors take only objects labelled `release: <release>`), or empty for a
    Prometheus that selects them without it; `runbook_url` is the published README the alerts link into, or empty
    for the README's path in this repository."""

    release: str
    runbook_url: str = ""


def monitoring_settings(inputs: Inputs) -> Monitoring | None:
    """The monitoring settings, or None when the prometheus-operator's objects are not wanted (a release or a
    runbook given then is refused: it would change nothing)."""
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
    return Monitoring(release=release, runbook_url=runbook_url)

"""Whether the cluster declares what Prometheus needs to watch it (`prometheusOperator`), and for which Prometheus
(`prometheusRelease`), checked before anything is declared."""

from __future__ import annotations

from dataclasses import dataclass

from .values import Inputs, config_error, require_label_value


@dataclass(frozen=True)
class Monitoring:
    """The prometheus-operator's objects are declared. `release` is the kube-prometheus-stack Helm release whose
    Prometheus selects them (its default selectors take only objects labelled `release: <release>`), or empty for a
    Prometheus that selects them without it."""

    release: str


def monitoring_settings(inputs: Inputs) -> Monitoring | None:
    """The monitoring settings, or None when the prometheus-operator's objects are not wanted (a release given
    then is refused: it would label nothing)."""
    release = require_label_value("prometheusRelease", inputs.text("prometheusRelease"))
    if not inputs.boolean("prometheusOperator"):
        if release:
            why = "it labels the prometheus-operator's objects, and prometheusOperator is false"
            raise config_error("prometheusRelease", release, why)
        return None
    return Monitoring(release=release)

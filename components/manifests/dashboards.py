"""Ray's own Grafana dashboards for the pinned Ray, as the data of ConfigMaps that Grafana's dashboard sidecar (as
kube-prometheus-stack runs it) loads: one ConfigMap per dashboard, since all of them together exceed one object's
1 MiB. The files are generated from Ray's dashboard factory by scripts/grafana_dashboards.py, never by hand."""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent.parent / "dashboards"
# The sidecar's default label (kube-prometheus-stack's grafana.sidecar.dashboards.label and labelValue).
SIDECAR_LABEL = {"grafana_dashboard": "1"}


def dashboards() -> dict[str, str]:
    """Each dashboard's file name in Grafana (`ray-<name>.json`) and its JSON, by Ray's name for it."""
    return {path.stem: path.read_text() for path in sorted(DIRECTORY.glob("*.json"))}


def file_name(name: str) -> str:
    return f"ray-{name.replace('_', '-')}.json"

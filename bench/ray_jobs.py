"""A rehearsal cluster's Ray head as the benchmarks reach it: its Jobs API with the cluster's token, as `ray job
submit` uses it, and the pods a Deployment keeps. Used by the scripts of this folder."""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any

from components.manifests import ray_node
from tests.rehearsal.cluster import Cluster
from tests.rehearsal.kubelet import Pod


class Dashboard:
    """The new head's Jobs API, as `ray job submit` uses it, with the cluster's token."""

    def __init__(self, head: Pod, token: str) -> None:
        self.base, self.token = f"http://{head.ip}:{ray_node.DASHBOARD_PORT}", token

    def call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def submit(self, script: str, workers: int) -> str:
        code = base64.b64encode(script.encode()).decode()
        entrypoint = f"python -c \"import base64; exec(base64.b64decode('{code}'))\" {workers}"
        answer = self.call("/api/jobs/", {"entrypoint": entrypoint})
        return str(answer["submission_id"])


def active(cluster: Cluster, prefix: str) -> list[Pod]:
    return [pod for name, pod in sorted(cluster.pods.items()) if name.startswith(prefix) and pod.active]

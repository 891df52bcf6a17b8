"""Pure builder for the cluster's alerting rules: the spec of one PrometheusRule (monitoring.coreos.com/v1), as a
Kubernetes dict.

Every expression reads only what the cluster's PodMonitor scrapes (manifests/monitoring.py), narrowed to this
cluster by the labels every one of its series carries (`namespace`, `ray_io_cluster`), so two clusters, or two
stacks, never answer for each other. Each alert says what is wrong and links its entry under the README's
"Alerts", which says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.monitoring import Monitoring
from ..config.settings import ClusterSettings
from . import ray_node
from .ray_node import Manifest

# RayRedisMemoryNearMax: the share of maxmemory past which the stack's Redis is near refusing writes.
REDIS_MEMORY_SHARE = 0.9


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: tuple[tuple[str, str], ...] = ()

    def rule(self, runbook_base: str, cluster_labels: Manifest) -> Manifest:
        """The rule, labelled with its cluster: Alertmanager tells alerts apart by their labels alone, and many
        expressions here aggregate theirs away, so two clusters' alerts would otherwise be one."""
        rule: Manifest = {"alert": self.name, "expr": self.expr}
        if self.for_:
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **cluster_labels, **dict(self.labels)}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{runbook_base}#{self.name.lower()}",
        }
        return rule


def cluster_labels(settings: ClusterSettings) -> dict[str, str]:
    """The labels every series of the cluster carries (the operator's `namespace`, the PodMonitor's cluster)."""
    return {"namespace": settings.namespace, "ray_io_cluster": settings.cluster_name}


def _selector(settings: ClusterSettings, **labels: str) -> str:
    matchers = {**cluster_labels(settings), **labels}
    return "{" + ", ".join(f'{key}="{value}"' for key, value in matchers.items()) + "}"


def alerts(settings: ClusterSettings) -> list[Alert]:
    """The cluster's alerts: its head down, a worker group below its size, demand no node type can meet, and, with
    autoscaling, workers asked for that do not come and an autoscaler that is down or failing; Ray killing workers
    for memory, objects spilled from the object store to disk, and the stack's own Redis near its maxmemory."""
    cluster = f"Ray cluster {settings.cluster_name} in {settings.namespace}"
    head_up = _selector(settings, ray_io_node_type="head", endpoint="metrics")
    infeasible = f"sum(ray_scheduler_unscheduleable_tasks{_selector(settings, Reason='Infeasible')}) > 0"
    if settings.autoscaling:
        # A task for a group at 0 workers (a GPU group from zero) is infeasible until a worker of the group joins:
        # not while the autoscaler waits for workers it added (RayAutoscalerNodesPending watches those).
        infeasible += f" unless on() (sum(autoscaler_pending_nodes{_selector(settings)}) > 0)"
    evictions = f"ray_memory_manager_worker_eviction_total{_selector(settings)}"
    found = [
        Alert(
            "RayHeadDown",
            f"absent(up{head_up} == 1)",
            "2m",
            "critical",
            f"The head of {cluster} is down",
            "Prometheus has not scraped the Ray head for 2 minutes: its jobs, Ray Client and dashboard are "
            "unreachable, and without GCS fault tolerance every running job is lost.",
        ),
        *(
            Alert(
                "RayWorkersMissing",
                f"(count(up{_selector(settings, ray_io_group=group.name, endpoint='metrics')} == 1) or vector(0))"
                f" < {group.replicas}",
                "10m",
                "warning",
                f"Worker group {group.name} of {cluster} has fewer than {group.replicas} workers",
                f"Fewer than the {group.replicas} workers the group {group.name} runs at least have been up for "
                "10 minutes: their pods are Pending, crash-looping or not ready.",
                (("group", group.name),),
            )
            for group in settings.worker_groups
            if group.replicas > 0
        ),
        Alert(
            "RayDemandInfeasible",
            infeasible,
            "5m",
            "warning",
            f"Work on {cluster} asks for resources no node has",
            "Tasks or actors have waited 5 minutes for resources (CPUs, GPUs, memory, custom resources) that no "
            "node of the cluster, nor any worker group the autoscaler may add, offers: they will never run."
            + (" The autoscaler adds no worker for them." if settings.autoscaling else ""),
        ),
        Alert(
            "RayWorkersOOMKilled",
            # Ray exports a count only once its first kill happened (at 1): `increase` needs two samples, so the
            # first kill is seen as a series that was not there 10 minutes before.
            f"sum by (pod) (increase({evictions}[10m])) > 0"
            f" or sum by (pod) ({evictions} unless {evictions} offset 10m) > 0",
            "",
            "warning",
            f"Ray killed workers of {cluster} for memory",
            "Ray's memory monitor killed worker processes on {{ $labels.pod }} in the last 10 minutes, because the "
            "node ran out of memory: their tasks are retried, or fail.",
        ),
        Alert(
            "RayObjectStoreSpilling",
            f"sum by (pod) (delta(ray_spill_manager_objects_bytes{_selector(settings, State='Spilled')}[10m])) > 0",
            "10m",
            "warning",
            f"The object store of {cluster} spills to disk",
            "Objects have been spilled from the object store of {{ $labels.pod }} to its disk for 10 minutes: the "
            "object store is full, and work slows down.",
        ),
    ]
    if settings.own_redis is not None:
        redis_memory = _selector(settings, container="exporter")
        found.append(
            Alert(
                "RayRedisMemoryNearMax",
                f"max(redis_memory_used_bytes{redis_memory} / (redis_memory_max_bytes{redis_memory} > 0))"
                f" > {REDIS_MEMORY_SHARE}",
                "5m",
                "warning",
                f"The Redis of {cluster} is near its maxmemory",
                f"The stack's Redis has held over {REDIS_MEMORY_SHARE:.0%} of its maxmemory for 5 minutes. At "
                "maxmemory it refuses every write (it evicts nothing), and the GCS, which writes the cluster's "
                "state there as it changes, fails.",
            )
        )
    if settings.autoscaling:
        autoscaler_up = _selector(settings, endpoint=ray_node.AUTOSCALER_METRICS_PORT_NAME)
        found += [
            Alert(
                "RayAutoscalerNodesPending",
                f"sum(autoscaler_pending_nodes{_selector(settings)}) > 0",
                "15m",
                "warning",
                f"Workers the autoscaler of {cluster} asked for have not come",
                "Ray's autoscaler has waited 15 minutes for workers it added: their pods are Pending (no room in "
                "Kubernetes, and no cluster autoscaler adding nodes) or failing to start.",
            ),
            Alert(
                "RayAutoscalerDown",
                f"absent(up{autoscaler_up} == 1)",
                "5m",
                "warning",
                f"The autoscaler of {cluster} is down",
                "Prometheus has not scraped Ray's autoscaler for 5 minutes: no worker is added or removed.",
            ),
            Alert(
                "RayAutoscalerFailing",
                f"increase(autoscaler_update_loop_exceptions_total{_selector(settings)}[10m]) > 0",
                "",
                "warning",
                f"The autoscaler of {cluster} fails",
                "Ray's autoscaler failed its update in the last 10 minutes: see `kubectl logs deploy/"
                f"{settings.deployment_name('head')} -c autoscaler`.",
            ),
        ]
    return found


def prometheus_rule_spec(settings: ClusterSettings, monitoring: Monitoring) -> Manifest:
    runbook_base = monitoring.runbook_url or "README.md"
    return {
        "groups": [
            {
                "name": f"ray-cluster.{settings.namespace}.{settings.cluster_name}",
                "rules": [alert.rule(runbook_base, cluster_labels(settings)) for alert in alerts(settings)],
            }
        ]
    }

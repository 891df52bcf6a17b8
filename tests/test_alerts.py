"""The cluster's alerting rules (a PrometheusRule with `prometheusOperator`), run by Debian's real Prometheus tools.

`promtool check rules` parses every expression; `promtool test rules` evaluates each alert over hand-written series
as Prometheus would: it fires on a failing series (after its `for:`), stays silent on a healthy one, and never
answers for another cluster's series. The series are named as the cluster's PodMonitor scrapes them (`up` of each
endpoint, Ray's and the autoscaler's metrics, labelled `namespace`, `ray_io_cluster` and the pod's labels).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.program import Manifest
from tests.program import render_in_place as render

# Prometheus in `monitoring`, as the prometheus-operator needs.
OPERATOR: dict[str, object] = {"prometheusOperator": "true", "allowedMetricsNamespaces": ["monitoring"]}
# A stack whose default group autoscales between 2 and 4 workers, with a Redis of its own (so every alert is
# declared), in `ray-test`.
CONFIG: dict[str, object] = {**OPERATOR, "workers": "2", "maxWorkers": "4", "gcsFaultTolerance": "true"}
OURS = 'namespace="ray-test", ray_io_cluster="ray"'
OTHER = 'namespace="ray-test", ray_io_cluster="other"'


def promtool() -> str:
    return shutil.which("promtool") or pytest.fail(
        "promtool (Debian's prometheus package) is missing: .ci/run installs it"
    )


@pytest.fixture(scope="module")
def rule() -> Manifest:
    [rule] = render(CONFIG).of_kind("PrometheusRule")
    return rule


def rules_by_alert(rule: Manifest) -> dict[str, Manifest]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def write_rules(rule: Manifest, directory: Path) -> Path:
    """The rule file the prometheus-operator writes for Prometheus: the PrometheusRule's groups, as they are."""
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def test_every_expression_parses(rule: Manifest, tmp_path: Path) -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(write_rules(rule, tmp_path))],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules_by_alert(rule))} rules found" in checked.stdout


def test_without_autoscaling_or_a_redis_of_its_own_their_alerts_are_not_declared() -> None:
    expected = ["RayDemandInfeasible", "RayHeadDown", "RayObjectStoreSpilling", "RayWorkersMissing",
                "RayWorkersOOMKilled"]  # fmt: skip
    for config in (OPERATOR, {**OPERATOR, "gcsFaultTolerance": "true", "redisAddress": "redis.example:6379"}):
        [rule] = render(config).of_kind("PrometheusRule")
        assert sorted(rules_by_alert(rule)) == expected


def test_each_alert_links_its_runbook_entry(rule: Manifest) -> None:
    assert rules_by_alert(rule)["RayHeadDown"]["annotations"]["runbook_url"] == "README.md#rayheaddown"
    published = "https://example.com/ray-cluster/README.md"
    [linked] = render({**CONFIG, "runbookUrl": published}).of_kind("PrometheusRule")
    assert {r["annotations"]["runbook_url"] for r in rules_by_alert(linked).values()} == {
        f"{published}#{name.lower()}" for name in rules_by_alert(linked)
    }


# What each alert says in Alertmanager, for the stack CONFIG renders (cluster `ray` in `ray-test`, group `worker`
# with at least 2 workers): its summary, then its description.
SAYS = {
    "RayHeadDown": (
        "The head of Ray cluster ray in ray-test is down",
        "Prometheus has not scraped the Ray head for 2 minutes: its jobs, Ray Client and dashboard are unreachable, "
        "and without GCS fault tolerance every running job is lost.",
    ),
    "RayWorkersMissing": (
        "Worker group worker of Ray cluster ray in ray-test has fewer than 2 workers",
        "Fewer than the 2 workers the group worker runs at least have been up for 10 minutes: their pods are "
        "Pending, crash-looping or not ready.",
    ),
    "RayDemandInfeasible": (
        "Work on Ray cluster ray in ray-test asks for resources no node has",
        "Tasks or actors have waited 5 minutes for resources (CPUs, GPUs, memory, custom resources) that no node of "
        "the cluster, nor any worker group the autoscaler may add, offers: they will never run. The autoscaler adds "
        "no worker for them.",
    ),
    "RayWorkersOOMKilled": (
        "Ray killed workers of Ray cluster ray in ray-test for memory",
        "Ray's memory monitor killed worker processes on {{ $labels.pod }} in the last 10 minutes, because the node "
        "ran out of memory: their tasks are retried, or fail.",
    ),
    "RayObjectStoreSpilling": (
        "The object store of Ray cluster ray in ray-test spills to disk",
        "Objects have been spilled from the object store of {{ $labels.pod }} to its disk for 10 minutes: the "
        "object store is full, and work slows down.",
    ),
    "RayRedisMemoryNearMax": (
        "The Redis of Ray cluster ray in ray-test is near its maxmemory",
        "The stack's Redis has held over 90% of its maxmemory for 5 minutes. At maxmemory it refuses every write "
        "(it evicts nothing), and the GCS, which writes the cluster's state there as it changes, fails.",
    ),
    "RayAutoscalerNodesPending": (
        "Workers the autoscaler of Ray cluster ray in ray-test asked for have not come",
        "Ray's autoscaler has waited 15 minutes for workers it added: their pods are Pending (no room in Kubernetes, "
        "and no cluster autoscaler adding nodes) or failing to start.",
    ),
    "RayAutoscalerDown": (
        "The autoscaler of Ray cluster ray in ray-test is down",
        "Prometheus has not scraped Ray's autoscaler for 5 minutes: no worker is added or removed.",
    ),
    "RayAutoscalerFailing": (
        "The autoscaler of Ray cluster ray in ray-test fails",
        "Ray's autoscaler failed its update in the last 10 minutes: see `kubectl logs deploy/ray-head -c autoscaler`.",
    ),
}


def test_each_alert_says_what_failed_and_what_it_costs(rule: Manifest) -> None:
    assert {
        name: (r["annotations"]["summary"], r["annotations"]["description"]) for name, r in rules_by_alert(rule).items()
    } == SAYS
    assert {frozenset(r["annotations"]) for r in rules_by_alert(rule).values()} == {
        frozenset({"summary", "description", "runbook_url"})
    }


# Per alert: (series that make it fire, when it has fired, the labels it fires with, the same series healthy).
CASES: dict[str, tuple[dict[str, str], str, dict[str, str], dict[str, str]]] = {
    "RayHeadDown": (
        # Our head is not scraped (another cluster's is): down for 2 minutes.
        {f'up{{{OURS}, ray_io_node_type="head", endpoint="metrics"}}': "0x10",
         f'up{{{OTHER}, ray_io_node_type="head", endpoint="metrics"}}': "1x10"},
        "3m", {"severity": "critical"},
        {f'up{{{OURS}, ray_io_node_type="head", endpoint="metrics"}}': "1x10"},
    ),
    "RayWorkersMissing": (
        # One of the group's two workers is up (and another cluster's two are): for 10 minutes.
        {f'up{{{OURS}, ray_io_group="worker", endpoint="metrics", pod="w1"}}': "1x20",
         f'up{{{OURS}, ray_io_group="worker", endpoint="metrics", pod="w2"}}': "0x20",
         f'up{{{OTHER}, ray_io_group="worker", endpoint="metrics", pod="o1"}}': "1x20",
         f'up{{{OTHER}, ray_io_group="worker", endpoint="metrics", pod="o2"}}': "1x20"},
        "11m", {"severity": "warning", "group": "worker"},
        {f'up{{{OURS}, ray_io_group="worker", endpoint="metrics", pod="w1"}}': "1x20",
         f'up{{{OURS}, ray_io_group="worker", endpoint="metrics", pod="w2"}}': "1x20"},
    ),
    "RayDemandInfeasible": (
        # Infeasible for 6 minutes, the autoscaler adding nothing (another cluster's autoscaler adds a worker).
        {f'ray_scheduler_unscheduleable_tasks{{{OURS}, Reason="Infeasible", pod="w1"}}': "2x10",
         f'autoscaler_pending_nodes{{{OURS}, NodeType="gpu", pod="h"}}': "0x10",
         f'autoscaler_pending_nodes{{{OTHER}, NodeType="gpu", pod="o"}}': "1x10"},
        "6m", {"severity": "warning"},
        # Only waiting for resources; another cluster's infeasible; and, infeasible while the autoscaler waits for a
        # worker it added (a GPU group from zero, whose node takes minutes to come).
        {f'ray_scheduler_unscheduleable_tasks{{{OURS}, Reason="Infeasible", pod="w1"}}': "2x10",
         f'ray_scheduler_unscheduleable_tasks{{{OURS}, Reason="WaitingForResources", pod="w1"}}': "5x10",
         f'ray_scheduler_unscheduleable_tasks{{{OTHER}, Reason="Infeasible", pod="o1"}}': "2x10",
         f'autoscaler_pending_nodes{{{OURS}, NodeType="gpu", pod="h"}}': "1x10"},
    ),
    "RayWorkersOOMKilled": (
        # Ray exports the count only from its first kill on, at 1.
        {f"ray_memory_manager_worker_eviction_total{{{OURS}, pod=\"w1\"}}": "_ _ _ 1 1 1 1 1"},
        "5m", {"severity": "warning", "pod": "w1"},
        {f"ray_memory_manager_worker_eviction_total{{{OURS}, pod=\"w1\"}}": "0x7",
         f"ray_memory_manager_worker_eviction_total{{{OTHER}, pod=\"o1\"}}": "0 0 0 1 1 1 1 1"},
    ),
    "RayObjectStoreSpilling": (
        {f'ray_spill_manager_objects_bytes{{{OURS}, State="Spilled", pod="w1"}}': "0+1000x30"},
        "21m", {"severity": "warning", "pod": "w1"},
        {f'ray_spill_manager_objects_bytes{{{OURS}, State="Spilled", pod="w1"}}': "5000x30",
         f'ray_spill_manager_objects_bytes{{{OURS}, State="Pinned", pod="w1"}}': "0+1000x30"},
    ),
    "RayRedisMemoryNearMax": (
        # 95% of maxmemory for 5 minutes (another cluster's Redis is fine).
        {f'redis_memory_used_bytes{{{OURS}, container="exporter", pod="r"}}': "95x10",
         f'redis_memory_max_bytes{{{OURS}, container="exporter", pod="r"}}': "100x10",
         f'redis_memory_used_bytes{{{OTHER}, container="exporter", pod="o"}}': "10x10",
         f'redis_memory_max_bytes{{{OTHER}, container="exporter", pod="o"}}': "100x10"},
        "6m", {"severity": "warning"},
        # 80% of it; and a Redis without maxmemory (0), which never refuses a write for it.
        {f'redis_memory_used_bytes{{{OURS}, container="exporter", pod="r"}}': "80x10",
         f'redis_memory_max_bytes{{{OURS}, container="exporter", pod="r"}}': "100x10",
         f'redis_memory_used_bytes{{{OTHER}, container="exporter", pod="o"}}': "95x10",
         f'redis_memory_max_bytes{{{OTHER}, container="exporter", pod="o"}}': "0x10"},
    ),
    "RayAutoscalerNodesPending": (
        {f'autoscaler_pending_nodes{{{OURS}, NodeType="worker", pod="h"}}': "1x20"},
        "16m", {"severity": "warning"},
        {f'autoscaler_pending_nodes{{{OURS}, NodeType="worker", pod="h"}}': "0x20",
         f'autoscaler_pending_nodes{{{OTHER}, NodeType="worker", pod="o"}}': "1x20"},
    ),
    "RayAutoscalerDown": (
        {f'up{{{OURS}, endpoint="as-metrics"}}': "0x10", f'up{{{OTHER}, endpoint="as-metrics"}}': "1x10"},
        "6m", {"severity": "warning"},
        {f'up{{{OURS}, endpoint="as-metrics"}}': "1x10"},
    ),
    "RayAutoscalerFailing": (
        {f"autoscaler_update_loop_exceptions_total{{{OURS}, pod=\"h\"}}": "0 0 1 1 1"},
        "3m", {"severity": "warning", "pod": "h", "namespace": "ray-test", "ray_io_cluster": "ray"},
        {f"autoscaler_update_loop_exceptions_total{{{OURS}, pod=\"h\"}}": "0x4",
         f"autoscaler_update_loop_exceptions_total{{{OTHER}, pod=\"o\"}}": "0 0 1 1 1"},
    ),
}  # fmt: skip


def expected_annotations(rule: Manifest, labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations as Prometheus expands them: the one template they use is the pod's label."""
    return {
        key: value.replace("{{ $labels.pod }}", labels.get("pod", "")) for key, value in rule["annotations"].items()
    }


def test_every_alert_is_tested() -> None:
    [rule] = render(CONFIG).of_kind("PrometheusRule")
    assert sorted(CASES) == sorted(rules_by_alert(rule))


@pytest.mark.parametrize("alert", sorted(CASES))
def test_the_alert_fires_on_failing_series_and_stays_silent_on_healthy_ones(
    alert: str, rule: Manifest, tmp_path: Path
) -> None:
    failing, fired_at, own_labels, healthy = CASES[alert]
    # Every alert carries its cluster, whatever its expression keeps: Alertmanager tells alerts apart by labels.
    labels = {"namespace": "ray-test", "ray_io_cluster": "ray", **own_labels}
    annotations = expected_annotations(rules_by_alert(rule)[alert], labels)

    def case(series: dict[str, str], alerts: list[dict[str, Any]]) -> Manifest:
        return {
            "interval": "1m",
            "input_series": [{"series": name, "values": values} for name, values in series.items()],
            "alert_rule_test": [{"eval_time": fired_at, "alertname": alert, "exp_alerts": alerts}],
        }

    tests = {
        "rule_files": [str(write_rules(rule, tmp_path))],
        "evaluation_interval": "1m",
        "tests": [case(failing, [{"exp_labels": labels, "exp_annotations": annotations}]), case(healthy, [])],
    }
    test_file = tmp_path / "tests.yml"
    test_file.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_has_an_entry_for_every_alert(rule: Manifest) -> None:
    """Each runbook_url's anchor is a heading of the README's Alerts section."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Alerts", 1)[1].split("\n## ", 1)[0]
    headings = {line.removeprefix("#### ") for line in section.splitlines() if line.startswith("#### ")}
    assert headings == set(rules_by_alert(rule))

"""The retirement Job's decisions (components/in_pod/retire_generations.py), against an API and heads held in memory
and a clock the test moves: which generations it retires, when (drained, quiet, or the drain's time up), and in
what order it deletes them; and its cleanup of a GCS state in a real Redis. Its HTTP and the real API calls run in the
rehearsal (tests/test_rehearsal_upgrades.py)."""

from __future__ import annotations

import dataclasses
import functools
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.config.settings import GENERATION_LABEL
from components.in_pod import retire_generations as program
from components.in_pod.retire_generations import Names, UnansweredError, older_generations
from tests.program import render
from tests.rehearsal.cluster import wait_for
from tests.rehearsal.image import REDIS_SERVER
from tests.variants import SERVE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


OWN, OLD, OLDER, NEWER = "0000000c", "0000000b", "0000000a", "0000000d"
CREATED = {OLDER: "2026-12-07T08:00:00Z", OLD: "2026-12-07T09:00:00Z", OWN: "2026-12-07T10:00:00Z",
           NEWER: "2026-12-07T11:00:00Z"}  # fmt: skip


def deployment(generation: str, group: str) -> dict[str, Any]:
    labels = {"ray.io/cluster": "ray", "ray.io/group": group, GENERATION_LABEL: generation}
    metadata = {"name": f"ray-{group}-{generation}", "labels": labels, "creationTimestamp": CREATED[generation]}
    return {"metadata": metadata}


def test_only_generations_made_before_its_own_are_retired_oldest_first() -> None:
    deployments = [deployment(g, group) for g in (OLD, OWN, NEWER) for group in ("head", "worker")]
    deployments.append(deployment(OLDER, "worker"))  # its head already gone: a retirement stopped half-way
    assert older_generations(deployments, OWN, GENERATION_LABEL) == [OLDER, OLD]
    # A newer `pulumi up` has made its workers and not yet its head (they do not wait for it): still newer.
    making = [d for d in deployments if d["metadata"]["name"] != f"ray-head-{NEWER}"]
    assert older_generations(making, OWN, GENERATION_LABEL) == [OLDER, OLD]
    # Its own not (yet) listed: it cannot tell what is older, so it retires nothing.
    mine = {f"ray-head-{OWN}", f"ray-worker-{OWN}"}
    assert older_generations([d for d in deployments if d["metadata"]["name"] not in mine], OWN, GENERATION_LABEL) == []


STACK = {"upgradeStrategy": "generation", "gcsFaultTolerance": "true", **SERVE}


def rendered_names() -> Names:
    """The names the rendered retirement Job gives its program (a fault-tolerant stack with token auth and Serve)."""
    rendered = render(STACK)
    job = rendered.one("Job", f"ray-{rendered.outputs['generation']}")
    [container] = job["spec"]["template"]["spec"]["containers"]
    return Names.from_environment({item["name"]: item["value"] for item in container["env"] if "value" in item})


def test_the_names_the_program_is_given_are_those_of_the_generations_objects() -> None:
    rendered = render(STACK)
    hex_id = str(rendered.outputs["generation"])
    names = rendered_names()
    rendered.one("Service", names.serve_service)
    assert names.generation == hex_id and names.job == f"ray-{hex_id}"
    rendered.one("Service", names.of(names.head_service, hex_id))
    rendered.one("Service", names.clients_service)
    rendered.one("Secret", names.of(names.token_secret, hex_id))
    assert names.of(names.storage_namespace, hex_id) == rendered.outputs["gcsStorageNamespace"]
    head = rendered.one("Deployment", f"ray-head-{hex_id}")
    labels = head["spec"]["template"]["metadata"]["labels"]
    for selector in (names.selector(hex_id), names.head_selector):
        assert all(labels.get(key) == value for key, value in (term.split("=") for term in selector.split(",")))
    assert names.generation_label in labels


def pod_ip(generation: str, group: str) -> str:
    return f"10.1.{int(generation, 16)}.{('head', 'worker').index(group)}"


class Cluster(program.Kubernetes):
    """The API as the retirement sees it: a generation's Deployments, pods, Jobs, Service and Secret; a Foreground
    delete of a Deployment leaves its pods until the test lets them go."""

    def __init__(self, generations: tuple[str, ...], selected: str = OWN) -> None:
        self.namespace = "ray-test"
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        for generation in generations:
            for group in ("head", "worker"):
                self.objects[("deployments", f"ray-{group}-{generation}")] = deployment(generation, group)
                ready = {"conditions": [{"type": "Ready", "status": "True"}]}
                self.objects[("pods", f"ray-{group}-{generation}-x")] = {
                    **deployment(generation, group),
                    "status": {**ready, "podIP": pod_ip(generation, group)},
                }
            service = deployment(generation, "head")  # labelled and made as the generation's head
            self.objects[("services", f"ray-{generation}")] = {
                "metadata": {**service["metadata"], "name": f"ray-{generation}"},
                "spec": {"clusterIP": f"10.0.0.{int(generation, 16)}"},
            }
            self.objects[("secrets", f"ray-auth-token-{generation}")] = {"data": {"token": "dG9rZW4="}}
        self.objects[("services", "ray-head")] = {"spec": {"selector": {GENERATION_LABEL: selected}}}
        self.calls: list[str] = []
        self.down = False
        self.retirements: dict[str, program.Retirement] = {}

    def request(self, method: str, group_version: str, resource: str, name: str = "", query: str = "") -> Any:
        if self.down:
            raise UnansweredError("the API does not answer")
        if method == "DELETE":
            self.calls.append(f"DELETE {resource}/{name}{query}")
            if resource != "deployments":
                self.objects.pop((resource, name), None)
            return {}
        if name:
            return self.objects.get((resource, name), {})
        terms = query.removeprefix("?labelSelector=").split(",")
        wanted = dict(term.split("=") for term in terms if "=" in term)
        present = {term for term in terms if "=" not in term}  # an existence requirement

        def selected(labels: dict[str, str]) -> bool:
            return wanted.items() <= labels.items() and present <= labels.keys()

        items = [item for (kind, _), item in self.objects.items() if kind == resource]
        return {"items": [item for item in items if selected(item.get("metadata", {}).get("labels", {}))]}

    def pods_gone(self, generation: str) -> None:
        for key in [key for key in self.objects if key[0] in ("pods", "deployments") and generation in key[1]]:
            del self.objects[key]


class Heads:
    """Every generation's Jobs API: the active jobs it lists (or None: it does not answer), the jobs stopped."""

    def __init__(self) -> None:
        self.active: dict[str, list[dict[str, Any]] | None] = {}
        self.stopped: list[str] = []
        self.tokens: list[str | None] = []

    def client(self, url: str, token: str | None) -> Any:
        heads, generation = self, f"{int(url.split('//10.0.0.')[1].split(':')[0]):08x}"
        heads.tokens.append(token)

        class Head:
            def active(self) -> list[dict[str, Any]]:
                jobs = heads.active.get(generation, [])
                if jobs is None:
                    raise UnansweredError(f"{url}: ConnectionError")
                return jobs

            def stop(self, submission_id: str) -> None:
                heads.stopped.append(submission_id)

        return Head()


START = 1000.0


class Clock:
    def __init__(self) -> None:
        self.now = START


@functools.cache
def names() -> Names:
    """The rendered names, as the retirement of generation OWN reads them, without GCS fault tolerance."""
    return dataclasses.replace(rendered_names(), generation=OWN, storage_namespace="")


def passes(cluster: Cluster, heads: Heads, clock: Clock, monkeypatch: pytest.MonkeyPatch, seconds: float) -> bool:
    """Runs the retirement's passes for `seconds` of the clock (PASS_SECONDS apart), from a switch at the clock's
    first reading, with a drain of 60 s: True once it is over."""
    monkeypatch.setattr(program, "HeadJobs", heads.client)
    end = clock.now + seconds
    while clock.now < end:
        if program.retire_pass(cluster, names(), cluster.retirements, START, clock.now, START + 60):
            return True
        clock.now += program.PASS_SECONDS
    return False


def deleted(cluster: Cluster) -> list[str]:
    """What it deleted, in the order it first asked (a delete is asked again on each pass until the pods are gone)."""
    return list(dict.fromkeys(call.split("?")[0].removeprefix("DELETE ") for call in cluster.calls))


def test_a_generation_with_a_running_job_is_kept_until_it_ends_then_deleted_deployments_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, heads, clock = Cluster((OLD, OWN)), Heads(), Clock()
    heads.active[OLD] = [{"submission_id": "raysubmit_1", "status": "RUNNING"}]
    assert not passes(cluster, heads, clock, monkeypatch, 40)
    assert cluster.calls == [] and heads.tokens[-1] == "token"  # the old generation's token, read from its Secret
    heads.active[OLD] = []
    # Its job's client reads the end from the old head for QUIET_SECONDS; then its Deployments go, their pods drain.
    assert not passes(cluster, heads, clock, monkeypatch, program.QUIET_SECONDS - program.PASS_SECONDS)
    assert cluster.calls == []
    assert not passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert deleted(cluster) == [f"deployments/ray-head-{OLD}", f"deployments/ray-worker-{OLD}"]
    assert all(call.endswith("?propagationPolicy=Foreground") for call in cluster.calls)
    cluster.pods_gone(OLD)
    assert passes(cluster, heads, clock, monkeypatch, 4)
    # Its Service last: by it, a retirement that stopped half-way finds the generation again.
    assert deleted(cluster)[-2:] == [f"secrets/ray-auth-token-{OLD}", f"services/ray-{OLD}"]
    assert heads.stopped == [] and ("deployments", f"ray-head-{OWN}") in cluster.objects


def test_an_idle_generation_still_waits_out_the_quiet_seconds_after_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, heads, clock = Cluster((OLD, OWN)), Heads(), Clock()
    assert not passes(cluster, heads, clock, monkeypatch, program.QUIET_SECONDS - program.PASS_SECONDS)
    assert cluster.calls == []
    assert not passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert deleted(cluster)[0] == f"deployments/ray-head-{OLD}"


def test_a_generation_the_serve_service_still_sends_requests_to_waits_until_it_no_longer_does_and_quiet_seconds_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new generation's keeper takes the Serve Service's endpoints over a few passes after the switch (a loaded
    keeper, later): requests the old proxies took until then are given QUIET_SECONDS from that moment."""
    cluster, heads, clock = Cluster((OLD, OWN)), Heads(), Clock()
    serving = {"endpoints": [{"addresses": [pod_ip(OLD, "worker")]}]}
    cluster.objects[("endpointslices", "ray-serve")] = serving
    assert not passes(cluster, heads, clock, monkeypatch, 20)
    assert cluster.calls == []
    serving["endpoints"] = [{"addresses": [pod_ip(OWN, "worker")]}]
    assert not passes(cluster, heads, clock, monkeypatch, program.QUIET_SECONDS - program.PASS_SECONDS)
    assert cluster.calls == []
    assert not passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert deleted(cluster)[0] == f"deployments/ray-head-{OLD}"


def test_once_the_drain_is_over_a_generation_goes_though_the_serve_service_still_holds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new generation whose keeper never takes the Service over (its proxies never healthy) does not keep the old
    one running past the drain."""
    cluster, heads, clock = Cluster((OLD, OWN)), Heads(), Clock()
    cluster.objects[("endpointslices", "ray-serve")] = {"endpoints": [{"addresses": [pod_ip(OLD, "head")]}]}
    assert not passes(cluster, heads, clock, monkeypatch, 60 - program.PASS_SECONDS)
    assert cluster.calls == []
    assert not passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert deleted(cluster)[0] == f"deployments/ray-head-{OLD}"


def test_jobs_still_running_when_the_drain_is_over_are_stopped_and_given_time_to_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, heads, clock = Cluster((OLD, OWN)), Heads(), Clock()
    heads.active[OLD] = [{"submission_id": "raysubmit_1", "status": "RUNNING"}, {"status": "RUNNING"}]  # a driver
    assert not passes(cluster, heads, clock, monkeypatch, 60 + program.STOP_SECONDS - program.PASS_SECONDS)
    assert heads.stopped == ["raysubmit_1"] and cluster.calls == []
    assert not passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert deleted(cluster)[0] == f"deployments/ray-head-{OLD}" and heads.stopped == ["raysubmit_1"]


def test_a_generation_without_a_ready_head_runs_nothing_and_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, heads, clock = Cluster((OLD, OWN)), Heads(), Clock()
    heads.active[OLD] = None
    cluster.objects[("pods", f"ray-head-{OLD}-x")]["status"] = {"conditions": [{"type": "Ready", "status": "False"}]}
    assert not passes(cluster, heads, clock, monkeypatch, program.UNREACHABLE_SECONDS - program.PASS_SECONDS)
    assert cluster.calls == []
    assert not passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert deleted(cluster)[0] == f"deployments/ray-head-{OLD}"


def test_a_ready_head_that_does_not_answer_is_waited_for_until_the_drain_is_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, heads, clock = Cluster((OLD, OWN)), Heads(), Clock()
    heads.active[OLD] = None  # a DNS or network blip, or a busy head: its jobs may still run
    assert not passes(cluster, heads, clock, monkeypatch, 60 - program.PASS_SECONDS)
    assert cluster.calls == []
    assert not passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert deleted(cluster)[0] == f"deployments/ray-head-{OLD}"


def test_it_leaves_everything_to_a_newer_generation_once_the_clients_service_selects_that_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, heads, clock = Cluster((OLD, OWN, NEWER), selected=NEWER), Heads(), Clock()
    assert passes(cluster, heads, clock, monkeypatch, 60)
    assert cluster.calls == [] and heads.tokens == []


def test_a_generation_is_deleted_across_passes_whatever_call_fails_on_the_way(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, heads, clock = Cluster((OLDER, OLD, OWN)), Heads(), Clock()
    assert not passes(cluster, heads, clock, monkeypatch, program.QUIET_SECONDS + program.PASS_SECONDS)
    cluster.down = True
    with pytest.raises(UnansweredError):
        passes(cluster, heads, clock, monkeypatch, program.PASS_SECONDS)
    cluster.down = False
    cluster.pods_gone(OLDER)
    cluster.pods_gone(OLD)
    assert passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert {f"services/ray-{OLDER}", f"services/ray-{OLD}"} <= set(deleted(cluster))
    assert not any(OWN in call for call in cluster.calls)


def test_an_old_generations_gcs_state_goes_from_the_redis_and_no_other_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Ray's own cleanup, against a real Redis (the rehearsal's, Debian's redis-server) holding two generations'
    GCS tables under the keys a head writes (`RAY<storage namespace>@<table>`; the upgrade drill checks them as real
    heads leave them)."""
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", "a-password", "--dir", str(tmp_path)],
        executable=REDIS_SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        cli = ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", "a-password"]
        wait_for(lambda: subprocess.run([*cli, "ping"], capture_output=True, text=True).stdout.strip() == "PONG",
                 20, "Redis")  # fmt: skip
        old, own = "ray-0123abcd-0000000b", "ray-0123abcd-0000000c"
        for storage in (old, own):
            for table in ("NODE", "KV", "JOB"):
                subprocess.run([*cli, "hset", f"RAY{storage}@{table}", "key", "value"], check=True, capture_output=True)

        def keys() -> set[str]:
            return set(subprocess.run([*cli, "--scan"], capture_output=True, text=True, check=True).stdout.split())

        password_file = tmp_path / "password"
        password_file.write_text("a-password\n")
        monkeypatch.setenv("RAY_REDIS_ADDRESS", f"127.0.0.1:{port}")
        monkeypatch.setenv("RETIRE_REDIS_PASSWORD_FILE", str(password_file))
        program.delete_gcs_state(old)
        assert keys() == {f"RAY{own}@{table}" for table in ("NODE", "KV", "JOB")}
    finally:
        redis.terminate()
        redis.wait(timeout=10)


def test_a_generation_that_no_longer_reads_as_older_is_let_go_unless_its_deletion_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, heads, clock = Cluster((OLDER, OLD, OWN)), Heads(), Clock()
    heads.active[OLD] = [{"submission_id": "raysubmit_1", "status": "RUNNING"}]
    assert not passes(cluster, heads, clock, monkeypatch, program.QUIET_SECONDS + program.PASS_SECONDS)
    assert cluster.retirements[OLDER].deleting and not cluster.retirements[OLD].deleting
    # Its own Deployments and Service missing from a listing: nothing reads as older any more.
    mine = {
        key: cluster.objects.pop(key)
        for key in list(cluster.objects)
        if key[0] in ("deployments", "services") and OWN in key[1]
    }
    assert not passes(cluster, heads, clock, monkeypatch, program.PASS_SECONDS)
    assert set(cluster.retirements) == {OLDER}
    cluster.objects |= mine
    assert not passes(cluster, heads, clock, monkeypatch, program.PASS_SECONDS)
    assert set(cluster.retirements) == {OLDER, OLD}


def test_a_generation_with_only_its_service_left_is_found_and_goes_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A retirement stopped after its generation's pods were gone (its pod lost, its Redis cleanup failed): the next
    one finds the generation by its head Service, and finishes the job."""
    cluster, heads, clock = Cluster((OLD, OWN)), Heads(), Clock()
    cluster.pods_gone(OLD)  # its Deployments and pods gone
    heads.active[OLD] = None  # nothing answers at its Service
    assert not passes(cluster, heads, clock, monkeypatch, program.UNREACHABLE_SECONDS - program.PASS_SECONDS)
    assert passes(cluster, heads, clock, monkeypatch, 2 * program.PASS_SECONDS)
    assert deleted(cluster) == [f"secrets/ray-auth-token-{OLD}", f"services/ray-{OLD}"]


def test_a_redis_it_cannot_reach_fails_the_cleanup_to_be_tried_again_not_the_retirement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's C++ client aborts its process on a Redis it cannot reach (at once for a name it cannot resolve, as the
    rehearsal's loaded DNS stand-in once made it; after a minute of retries for a refused connection): in a process
    of its own, that is an error the retirement tries again on its next pass."""
    monkeypatch.setenv("RAY_REDIS_ADDRESS", "redis.invalid:6379")  # a name no resolver knows (RFC 2606)
    monkeypatch.delenv("RETIRE_REDIS_PASSWORD_FILE", raising=False)
    with pytest.raises(UnansweredError, match="did not delete the GCS state ray-0123abcd-0000000b"):
        program.delete_gcs_state("ray-0123abcd-0000000b")

"""components/in_pod/worker_start.py as a worker's Ray container runs it (`python -c <its text> start ...`), against a
stand-in for Ray whose head refuses, then accepts, then has no node of its own yet: the worker waits without exiting,
says why, checks in a child process, and then runs `ray start` with its arguments untouched in its own process.

The real Ray paths are the rehearsal's: every worker there starts this way, a wrong token keeps one waiting, and a
removed worker drains its tasks (tests/test_rehearsal.py). That the checks run in a child is checked here only: run
in the starting process, they made Ray's drain on SIGTERM fail in 2 of 6 tries by hand ("Cancelling all calls", as
the garbage collector frees their GCS clients), which one rehearsal run does not reliably show (it passed once so).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from components.manifests import ray_node
from tests.test_pods import SETTINGS

RESOURCES = SETTINGS.worker_groups[0].resources
ADDRESS = "demo-head.ml.svc:6379"

# The stand-in `ray` package. Each call is recorded (what, its process, its arguments): `cli.main` as the `ray`
# command line's click group is called, and the GCS client's node query. The health check fails in the ways
# HEALTH_CHECKS lists, one per call, then passes; the query then finds no head node HEAD_MISSING times, and fails at
# the calls NODE_QUERY_ERRORS numbers.
FAKE_RECORD = """
import json, os


def record(what, **call):
    path = os.environ["FAKE_RAY_RECORD"]
    with open(path, "a") as calls:
        calls.write(json.dumps({"what": what, "pid": os.getpid(), **call}) + "\\n")
    return sum(1 for line in open(path) if json.loads(line)["what"] == what)
"""
FAKE_SCRIPTS = """
import json, os, sys
from ray.exceptions import AuthenticationError
from ray.record import record


class Cli:
    def main(self, args, prog_name, standalone_mode=True):
        calls = record(args[0], args=args, prog_name=prog_name, standalone=standalone_mode)
        if args[0] == "start":
            print("ray start ran", flush=True)
            sys.exit(0)
        print("Ray's own noise on stderr", file=sys.stderr, flush=True)
        failures = json.loads(os.environ["HEALTH_CHECKS"])
        if calls > len(failures):
            sys.exit(0)
        kind, detail = failures[calls - 1]
        if kind == "raise":
            raise AuthenticationError(detail)
        if kind == "exit":
            sys.exit(detail)
        os.kill(os.getpid(), detail)


cli = Cli()
"""
FAKE_RAYLET = """
import json, os
from ray.record import record


class GcsClient:
    def __init__(self, address):
        self.address = address

    def get_all_node_info(self, timeout, node_selectors, state_filter):
        [selector] = node_selectors
        calls = record(
            "node query", address=self.address, client=id(self), head=selector.is_head_node, state=state_filter
        )
        if calls in json.loads(os.environ["NODE_QUERY_ERRORS"]):
            raise ConnectionError("the GCS went away")
        return {} if calls <= int(os.environ["HEAD_MISSING"]) else {"head": "its info"}
"""
FAKE_MODULES = {
    "record.py": FAKE_RECORD,
    "exceptions.py": "class AuthenticationError(Exception):\n    pass\n",
    "scripts/scripts.py": FAKE_SCRIPTS,
    "_raylet.py": FAKE_RAYLET,
    "core/generated/gcs_pb2.py": "class GcsNodeInfo:\n    class GcsNodeState:\n        ALIVE = 'ALIVE'\n",
    "core/generated/gcs_service_pb2.py": (
        "class GetAllNodeInfoRequest:\n    class NodeSelector:\n"
        "        def __init__(self, is_head_node):\n            self.is_head_node = is_head_node\n"
    ),
}


def worker_start(
    tmp_path: Path, health_checks: list[object], head_missing: int = 0, node_query_errors: tuple[int, ...] = ()
) -> subprocess.Popen[str]:
    for name, text in FAKE_MODULES.items():
        for package in Path("ray", name).parents[:-1]:
            (tmp_path / package).mkdir(parents=True, exist_ok=True)
            (tmp_path / package / "__init__.py").touch()
        (tmp_path / "ray" / name).write_text(text)
    command = ray_node.node_command(SETTINGS, RESOURCES, head=False)
    assert command[:2] == ["python", "-c"]
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(tmp_path),
        "FAKE_RAY_RECORD": str(tmp_path / "record"),
        "HEALTH_CHECKS": json.dumps(health_checks),
        "HEAD_MISSING": str(head_missing),
        "NODE_QUERY_ERRORS": json.dumps(node_query_errors),
    }
    return subprocess.Popen(
        [sys.executable, *command[1:]], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_worker_start(
    tmp_path: Path, health_checks: list[object], head_missing: int = 0, node_query_errors: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    with worker_start(tmp_path, health_checks, head_missing, node_query_errors) as process:
        stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def calls(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "record").read_text().splitlines()]


def test_it_waits_for_the_head_to_accept_it_then_runs_ray_start_in_its_own_process(tmp_path: Path) -> None:
    """Two refusals of different kinds, a head without its node twice, then ready: each reason said once (the
    refusals a second apart, the node asked for five times a second, through one GCS client), the checks' own output
    dropped, and `ray start` run with the pod's arguments as the `ray` command would."""
    started = time.monotonic()
    result = run_worker_start(tmp_path, [["raise", "invalid token"], ["exit", 1]], head_missing=2)
    waited = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"waiting for the Ray head (GCS) at {ADDRESS}: ray.exceptions.AuthenticationError: invalid token",
        f"waiting for the Ray head (GCS) at {ADDRESS}: ray health-check exited with 1",
        f"waiting for the Ray head (GCS) at {ADDRESS}: the head's own node has not registered with its GCS yet",
        f"GCS at {ADDRESS} is ready",
        "ray start ran",
    ]
    assert 2 + 2 * 0.2 <= waited < 4  # a second after each refusal, a fifth after each missing node
    assert "noise" not in result.stderr
    *checks, start = calls(tmp_path)
    assert [(call["what"], call.get("args")) for call in checks] == [
        *[("health-check", ["health-check", f"--address={ADDRESS}"])] * 3,
        *[("node query", None)] * 3,
    ]
    assert {(call["address"], call["head"], call["state"]) for call in checks if call["what"] == "node query"} == {
        (ADDRESS, True, "ALIVE")
    }
    assert all(call["standalone"] is False and call["prog_name"] == "ray" for call in checks[:2])
    assert start["args"] == ray_node.ray_start_args(SETTINGS, RESOURCES, head=False)
    assert start["standalone"] is True and start["prog_name"] == "ray"
    # The checks ran in a child process per try (a refusal ends one), the node's in the last try's, with one client;
    # `ray start` in the process the container runs, none of them.
    tries = [call["pid"] for call in checks if call["what"] == "health-check"]
    assert len(set(tries)) == 3 and start["pid"] not in tries
    queries = [call for call in checks if call["what"] == "node query"]
    assert {call["pid"] for call in queries} == {tries[-1]} and len({call["client"] for call in queries}) == 1


def test_a_check_killed_by_a_signal_is_a_reason_to_wait_too(tmp_path: Path) -> None:
    result = run_worker_start(tmp_path, [["kill", 9]])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"waiting for the Ray head (GCS) at {ADDRESS}: the check ended with -9"
    assert result.stdout.splitlines()[-1] == "ray start ran"


def test_an_unchanged_reason_is_said_again_every_five_seconds(tmp_path: Path) -> None:
    result = run_worker_start(tmp_path, [["raise", "invalid token"]] * 7)
    waiting = [line for line in result.stdout.splitlines() if line.startswith("waiting")]
    assert len(waiting) == 2 and waiting[0] == waiting[1]


def test_a_failure_while_the_head_node_is_awaited_starts_the_next_try_from_the_health_check(tmp_path: Path) -> None:
    result = run_worker_start(tmp_path, [], head_missing=1, node_query_errors=(2,))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"waiting for the Ray head (GCS) at {ADDRESS}: the head's own node has not registered with its GCS yet",
        f"waiting for the Ray head (GCS) at {ADDRESS}: ConnectionError: the GCS went away",
        f"GCS at {ADDRESS} is ready",
        "ray start ran",
    ]
    *checks, _ = calls(tmp_path)
    assert [call["what"] for call in checks] == [
        "health-check",
        "node query",
        "node query",
        "health-check",
        "node query",
    ]
    assert len({call["pid"] for call in checks}) == 2


def test_the_checking_child_ends_soon_after_the_worker_start_is_killed(tmp_path: Path) -> None:
    """A container stopped while its worker waits (SIGKILL at the end of the grace period) leaves no child asking."""
    with worker_start(tmp_path, [], head_missing=1_000_000) as process:
        while not (tmp_path / "record").exists() or "node query" not in (tmp_path / "record").read_text():
            time.sleep(0.05)
        child = int(str(calls(tmp_path)[-1]["pid"]))
        process.kill()
        process.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, ended but not yet reaped by whoever adopted it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

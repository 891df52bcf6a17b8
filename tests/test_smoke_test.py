"""The smoke-test driver's logic (components/in_pod/smoke_test.py) against a fake `ray` and a fake clock.

The script decides whether `pulumi up` succeeds, so every way it can fail must end in exit code 1 with a message
that says what failed and without `Success!`, and only a cluster that worked may end in `Success!` and exit 0.
Each test loads the script afresh, as the Job does (a standalone file, not the `components` package), with a fake
`ray` module in `sys.modules`: a scripted cluster whose nodes, connection and task placement the test chooses.
Time is a fake clock (the script's `time.sleep` only moves it), so waiting out a 600 s deadline takes no time.
Its stdout is a pipe, as in the pod (no PYTHONUNBUFFERED): a line reaches `kubectl logs` only when flushed, and
every run checks that nothing printed is still unflushed when the script waits on Ray or the clock, or returns.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "components" / "in_pod" / "smoke_test.py"
# Each test runs a fresh copy of the script under its own module name (which mutation testing keys mutants by).
MODULE = "components.in_pod.smoke_test"
HEAD_RESOURCE = "node:__internal_head__"
WAIT_SECONDS = 120.0
START = 1000.0  # an arbitrary origin, as monotonic time's is
GROUPS = "cpu=2,gpu=1"  # SMOKE_WORKER_GROUPS as the Job sets it: each worker group's name and replicas

# A placement of the calls of a round: (round number from 1, call number in the round from 0) -> node id. In
# `where.remote(where.remote(()))` the inner call is made first: calls 2k and 2k+1 are one nested pair.
Placement = Callable[[int, int], str]


class Runaway(BaseException):
    """A loop of the script that would not have ended: the test fails instead of hanging. Not an Exception, so
    the script's `except Exception` cannot turn it into a result."""


class Misuse(BaseException):
    """The script used Ray in a way the real Ray would refuse (e.g. before `ray.init`); not an Exception either."""


class LogPipe:
    """The script's stdout in the pod: a pipe, so Python buffers it and a line reaches `kubectl logs` only when
    flushed. The script can hang in any call to Ray (a round whose `ray.get` never returns, Ray's own shutdown at
    exit, which runs before Python flushes stdout) until the Job's deadline kills it, losing what is unflushed:
    each such moment is a checkpoint, which records any output still pending."""

    def __init__(self) -> None:
        self.written = ""
        self.pending = ""
        self.stale: list[str] = []

    def write(self, text: str) -> int:
        self.written += text
        self.pending += text
        return len(text)

    def flush(self) -> None:
        self.pending = ""

    def checkpoint(self, moment: str) -> None:
        if self.pending:
            self.stale.append(f"{self.pending!r} not flushed at {moment}")


class FakeClock:
    """Stands in for the script's `time` module: `sleep` moves the clock, nothing waits."""

    def __init__(self, log: LogPipe | None = None) -> None:
        self.now = START
        self.sleeps: list[float] = []
        self.reads = 0
        self.log = log or LogPipe()

    def monotonic(self) -> float:
        self.reads += 1
        if self.reads > 100_000:
            raise Runaway("time.monotonic read 100000 times")
        return self.now

    def sleep(self, seconds: float) -> None:
        self.log.checkpoint(f"time.sleep({seconds})")
        self.sleeps.append(seconds)
        self.now += seconds
        if self.now > START + 100_000:
            raise Runaway(f"slept until {self.now - START:.0f}s")


@dataclass(frozen=True)
class Node:
    id: str
    address: str
    head: bool = False
    alive: bool = True
    cpus: float = 1.0

    def as_ray(self) -> dict[str, Any]:
        """The node as `ray.nodes()` describes it."""
        resources = {"CPU": self.cpus, "memory": 2.0 * 2**30, f"node:{self.address}": 1.0}
        if self.head:
            resources[HEAD_RESOURCE] = 1.0
        return {"NodeID": self.id, "Alive": self.alive, "NodeManagerAddress": self.address, "Resources": resources}


HEAD = Node("head-id", "10.0.0.1", head=True)


def worker(number: int, *, alive: bool = True) -> Node:
    return Node(f"worker-{number}-id", f"10.0.1.{number}", alive=alive)


def cluster(workers: int) -> list[Node]:
    return [HEAD, *(worker(n) for n in range(1, workers + 1))]


@dataclass(frozen=True)
class Ref:
    value: tuple[str, ...]


@dataclass
class RemoteFunction:
    function: Callable[..., tuple[str, ...]]
    options: dict[str, Any]
    ray: FakeRay

    def remote(self, *args: Any) -> Ref:
        return self.ray.run_task(self.function, args)


class RuntimeContext:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def get_node_id(self) -> str:
        return self.node_id


@dataclass
class Cluster:
    """What the fake Ray does; a test sets what it needs before running the script."""

    # what ray.nodes() returns on its 1st, 2nd, ... call; the last one from then on
    snapshots: list[list[Node]] = field(default_factory=lambda: [cluster(3)])
    # round-robin over every alive node of the last snapshot unless set
    placement: Placement | None = None
    # raised by ray.init on its attempt number n (from 1); None connects
    init_error: Callable[[int], Exception | None] = lambda attempt: None
    # raised by the n-th call (from 1) of ray.nodes
    nodes_errors: dict[int, Exception] = field(default_factory=dict)
    # raised by the n-th call (from 1) of ray.get
    get_errors: dict[int, Exception] = field(default_factory=dict)


class FakeRay(types.ModuleType):
    """The part of `ray` the script uses, with a record of how it was used."""

    def __init__(self, setup: Cluster) -> None:
        super().__init__("ray")
        self.setup = setup
        self.connected = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self.nodes_calls = 0
        self.get_calls = 0
        self.task_calls = 0
        self.remote_options: list[dict[str, Any]] = []
        self.placed: list[str] = []
        self.running_on: str | None = None
        self.log = LogPipe()

    def init(self, *args: Any, **kwargs: Any) -> None:
        self.log.checkpoint("ray.init")
        if self.connected:
            raise Misuse("ray.init called twice without ray.shutdown")
        self.init_calls += 1
        error = self.setup.init_error(self.init_calls)
        if error is not None:
            raise error
        self.connected = True

    def shutdown(self) -> None:
        self.log.checkpoint("ray.shutdown")
        self.shutdown_calls += 1
        self.connected = False

    def _require_connection(self, what: str) -> None:
        self.log.checkpoint(what)
        if not self.connected:
            raise Misuse(f"{what} before ray.init connected")

    def nodes(self) -> list[dict[str, Any]]:
        self._require_connection("ray.nodes")
        self.nodes_calls += 1
        if self.nodes_calls in self.setup.nodes_errors:
            raise self.setup.nodes_errors[self.nodes_calls]
        snapshots = self.setup.snapshots
        return [node.as_ray() for node in snapshots[min(self.nodes_calls, len(snapshots)) - 1]]

    def remote(self, *args: Any, **options: Any) -> Callable[[Callable[..., tuple[str, ...]]], RemoteFunction]:
        if args:
            raise Misuse("the fake supports only @ray.remote(**options)")
        self.remote_options.append(options)
        return lambda function: RemoteFunction(function, options, self)

    def run_task(self, function: Callable[..., tuple[str, ...]], args: Iterable[Any]) -> Ref:
        """Runs a remote call at once on the node the placement chooses; a Ref argument is resolved, as Ray does."""
        self._require_connection("a remote call")
        round_number = self.get_calls + 1
        call = self.task_calls
        self.task_calls += 1
        node = self.place(round_number, call)
        self.placed.append(node)
        resolved = [arg.value if isinstance(arg, Ref) else arg for arg in args]
        self.running_on = node
        try:
            return Ref(function(*resolved))
        finally:
            self.running_on = None

    def place(self, round_number: int, call: int) -> str:
        if self.setup.placement is not None:
            return self.setup.placement(round_number, call)
        alive = [node.id for node in self.setup.snapshots[-1] if node.alive]
        return alive[(round_number * 1000 + call) % len(alive)]

    def get(self, refs: list[Ref]) -> list[tuple[str, ...]]:
        self._require_connection("ray.get")
        self.get_calls += 1
        self.task_calls = 0
        if self.get_calls in self.setup.get_errors:
            raise self.setup.get_errors[self.get_calls]
        return [ref.value for ref in refs]

    def get_runtime_context(self) -> RuntimeContext:
        if self.running_on is None:
            raise Misuse("get_runtime_context().get_node_id() outside a task: the driver's node, not a worker's")
        return RuntimeContext(self.running_on)


@dataclass
class Run:
    code: int
    out: str
    ray: FakeRay
    clock: FakeClock
    script: types.ModuleType

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def waited(self) -> float:
        return self.clock.now - START


@pytest.fixture
def smoke(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    """Runs the script's main() against a fake cluster, expecting that many workers (or, as a third argument, up to
    how many the autoscaler may have added); a fresh script each time.

    Whatever the outcome, every line must have reached the log before each call to Ray or sleep and when main()
    returns (the interpreter's exit runs Ray's shutdown before it flushes stdout)."""

    def run(setup: Cluster, expected_workers: int, most_workers: int | None = None) -> Run:
        fake = FakeRay(setup)
        monkeypatch.setitem(sys.modules, "ray", fake)
        monkeypatch.setenv("SMOKE_EXPECTED_WORKERS", str(expected_workers))
        if most_workers is not None:  # the Job sets it only where Ray's autoscaler may add workers
            monkeypatch.setenv("SMOKE_MOST_WORKERS", str(most_workers))
        monkeypatch.setenv("SMOKE_WORKER_GROUPS", GROUPS)
        monkeypatch.setenv("SMOKE_NODE_WAIT_SECONDS", f"{WAIT_SECONDS:.0f}")
        spec = importlib.util.spec_from_file_location(MODULE, SCRIPT)
        assert spec is not None and spec.loader is not None
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        clock = FakeClock(fake.log)
        monkeypatch.setattr(script, "time", clock)
        with monkeypatch.context() as stdout:
            stdout.setattr(sys, "stdout", fake.log)
            code = script.main()
        fake.log.checkpoint("the return of main()")
        assert fake.log.stale == [], fake.log.written
        assert isinstance(code, int)
        return Run(code, fake.log.written, fake, clock, script)

    return run


Smoke = Callable[..., Run]


def assert_succeeded(run: Run) -> None:
    assert run.code == 0, run.out
    assert run.lines[-1] == "Success!", run.out
    assert run.out.count("Success!") == 1
    assert "FAILED" not in run.out


def assert_failed(run: Run, *reasons: str) -> None:
    """Exit code 1, no `Success!`, and a last line that says the smoke test failed and why."""
    assert run.code == 1, run.out
    assert "Success!" not in run.out
    assert run.lines[-1].startswith("Smoke test FAILED: "), run.out
    for reason in reasons:
        assert reason in run.lines[-1], run.out


def pairs_on_one_node(nodes: list[Node]) -> Placement:
    """Both calls of every nested pair on the same node, the pairs spread over all nodes: nothing moves."""
    return lambda round_number, call: nodes[(call // 2) % len(nodes)].id


# --- success ---------------------------------------------------------------------------------------------------


def test_a_working_cluster_succeeds(smoke: Smoke) -> None:
    run = smoke(Cluster(snapshots=[cluster(3)]), 3)
    assert_succeeded(run)
    assert run.ray.init_calls == 1
    assert run.ray.get_calls == 1  # the first round showed everything
    assert run.ray.task_calls == 0 and len(run.ray.placed) == 16  # 2 nested calls per node: 16 tasks
    round_1 = next(line for line in run.lines if line.startswith("round 1: "))
    assert round_1.startswith("round 1: 8 nested calls in 0.16s, ")  # 16 calls, each sleeping 0.01 s
    assert round_1.endswith(", 4 nodes ran calls, 8 objects moved between nodes")
    ran_on = next(line for line in run.lines if line.startswith("nodes that ran calls: "))
    assert ran_on.split(": ")[1].split() == ["10.0.0.1", "10.0.1.1", "10.0.1.2", "10.0.1.3"]


def test_the_calls_are_spread_over_the_nodes(smoke: Smoke) -> None:
    run = smoke(Cluster(), 3)
    assert_succeeded(run)
    assert run.ray.remote_options == [{"num_cpus": 0, "scheduling_strategy": "SPREAD"}]
    assert isinstance(run.script.where, RemoteFunction)


def test_a_head_only_cluster_succeeds_without_objects_moving(smoke: Smoke) -> None:
    run = smoke(Cluster(snapshots=[[HEAD]]), 0)
    assert_succeeded(run)
    assert set(run.ray.placed) == {HEAD.id}
    assert run.ray.get_calls == 1
    assert "0 workers of 0 expected" in run.out


def test_workers_that_join_late_are_waited_for(smoke: Smoke) -> None:
    snapshots = [[HEAD], cluster(1), cluster(1), cluster(3)]
    run = smoke(Cluster(snapshots=snapshots), 3)
    assert_succeeded(run)
    assert run.ray.nodes_calls >= 4
    assert "1 nodes alive, 0 workers of 3 expected" in run.out
    assert "4 nodes alive, 3 workers of 3 expected" in run.out
    assert run.waited < WAIT_SECONDS


def test_a_node_that_is_no_longer_alive_is_not_counted(smoke: Smoke) -> None:
    """A replaced worker's old node stays in `ray.nodes()` as dead; it is neither expected nor missing."""
    run = smoke(Cluster(snapshots=[[*cluster(3), worker(9, alive=False)]]), 3)
    assert_succeeded(run)
    assert worker(9).id not in run.ray.placed


def test_a_connection_that_comes_on_a_later_try_succeeds(smoke: Smoke) -> None:
    setup = Cluster(init_error=lambda attempt: ConnectionError("no client server") if attempt < 4 else None)
    run = smoke(setup, 3)
    assert_succeeded(run)
    assert run.ray.init_calls == 4
    assert run.ray.shutdown_calls == 3  # each failed try is cleaned up before the next
    assert run.out.count("cannot connect yet (ConnectionError), retrying") == 3


def test_the_first_line_names_the_job_pod_and_the_expected_worker_groups(
    smoke: Smoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kubectl logs` starts with which pod ran the test and which groups (and replicas) it expects."""
    monkeypatch.setattr(socket, "gethostname", lambda: "smoke-test-x7k2p")
    run = smoke(Cluster(), 3)
    assert_succeeded(run)
    assert "smoke-test-x7k2p" in run.lines[0], run.out
    assert GROUPS in run.lines[0], run.out


def test_calls_that_ran_on_every_worker_but_not_the_head_succeed(smoke: Smoke) -> None:
    """The head need not run a call: the test is about the workers, and objects moving between them."""
    nodes = cluster(3)
    workers = nodes[1:]
    run = smoke(Cluster(snapshots=[nodes], placement=lambda r, call: workers[call % len(workers)].id), 3)
    assert_succeeded(run)
    assert run.ray.get_calls == 1
    assert HEAD.id not in run.ray.placed
    assert "3 nodes ran calls, 8 objects moved between nodes" in run.out


def test_a_single_object_that_moved_between_nodes_is_enough(smoke: Smoke) -> None:
    nodes = cluster(3)
    stay = pairs_on_one_node(nodes)

    def placement(round_number: int, call: int) -> str:
        return worker(1).id if (round_number, call) == (1, 1) else stay(round_number, call)  # pair 0: head, then 1

    run = smoke(Cluster(snapshots=[nodes], placement=placement), 3)
    assert_succeeded(run)
    assert run.ray.get_calls == 1
    assert "4 nodes ran calls, 1 objects moved between nodes" in run.out


def test_a_node_gone_from_the_list_after_the_rounds_is_named_by_its_id(smoke: Smoke) -> None:
    """The closing list names nodes by address; one that left `ray.nodes()` meanwhile still ran calls."""
    nodes = cluster(3)
    setup = Cluster(snapshots=[nodes, nodes[:-1]], placement=lambda r, call: nodes[call % len(nodes)].id)
    run = smoke(setup, 3)
    assert_succeeded(run)
    ran_on = next(line for line in run.lines if line.startswith("nodes that ran calls: "))
    assert ran_on.split(": ")[1].split() == ["10.0.0.1", "10.0.1.1", "10.0.1.2", worker(3).id]


def test_the_waits_look_again_within_seconds(smoke: Smoke) -> None:
    """A head or node that becomes ready is noticed within 3 s (connection) and 2 s (nodes), and each look, which
    prints a line, comes no more than once a second, so the log stays readable over a 600 s wait."""
    setup = Cluster(
        snapshots=[[HEAD], cluster(3)], init_error=lambda attempt: ConnectionError("not yet") if attempt == 1 else None
    )
    run = smoke(setup, 3)
    assert_succeeded(run)
    connect_retry, nodes_retry, *rounds = run.clock.sleeps
    assert 1 <= connect_retry <= 3
    assert 1 <= nodes_retry <= 2
    assert set(rounds) == {0.01}  # only the calls' own sleeps follow


def test_a_worker_that_gets_calls_only_in_a_later_round_succeeds(smoke: Smoke) -> None:
    nodes = cluster(3)

    def placement(round_number: int, call: int) -> str:
        reachable = nodes if round_number >= 3 else nodes[:-1]
        return reachable[call % len(reachable)].id

    run = smoke(Cluster(snapshots=[nodes], placement=placement), 3)
    assert_succeeded(run)
    assert run.ray.get_calls == 3


# --- failure ---------------------------------------------------------------------------------------------------


def test_a_worker_that_runs_no_call_in_any_round_fails(smoke: Smoke) -> None:
    nodes = cluster(3)
    reachable = nodes[:-1]
    run = smoke(Cluster(snapshots=[nodes], placement=lambda r, call: reachable[call % len(reachable)].id), 3)
    assert_failed(run, "after 30 rounds", "workers that ran no call", repr([worker(3).id]))
    assert run.ray.get_calls == 30  # every round was tried
    assert worker(3).id not in run.ray.placed


def test_objects_that_never_move_between_nodes_fail(smoke: Smoke) -> None:
    """Every worker ran calls, but each nested pair stayed on one node: objects never travelled."""
    nodes = cluster(3)
    run = smoke(Cluster(snapshots=[nodes], placement=pairs_on_one_node(nodes)), 3)
    assert_failed(run, "after 30 rounds", "workers that ran no call []", "objects moved 0")
    assert set(run.ray.placed) == {node.id for node in nodes}
    assert run.ray.get_calls == 30


def test_all_calls_on_one_node_of_a_multi_node_cluster_fail(smoke: Smoke) -> None:
    run = smoke(Cluster(snapshots=[cluster(2)], placement=lambda r, call: HEAD.id), 2)
    assert_failed(run, repr([worker(1).id, worker(2).id]), "objects moved 0")


def test_one_worker_that_ran_every_call_fails(smoke: Smoke) -> None:
    """A one-worker cluster is multi-node: calls that never left the worker prove nothing about the network."""
    nodes = cluster(1)
    run = smoke(Cluster(snapshots=[nodes], placement=lambda r, call: worker(1).id), 1)
    assert_failed(run, "workers that ran no call []", "objects moved 0")


@pytest.mark.parametrize(
    ("nodes", "joined"),
    [
        pytest.param(cluster(2), "3 nodes alive (2 workers)", id="a worker missing"),
        pytest.param(
            [HEAD, worker(1), worker(2), worker(3, alive=False)], "3 nodes alive (2 workers)", id="a worker dead"
        ),
        pytest.param([HEAD], "1 nodes alive (0 workers)", id="no worker"),
        pytest.param([], "0 nodes alive (0 workers)", id="no node at all"),
    ],
)
def test_fewer_nodes_than_expected_fail_at_the_deadline(smoke: Smoke, nodes: list[Node], joined: str) -> None:
    run = smoke(Cluster(snapshots=[nodes]), 3)
    assert_failed(run, joined, f"not 4 (3 workers), after {WAIT_SECONDS:.0f}s")
    assert WAIT_SECONDS < run.waited <= WAIT_SECONDS + 5  # gave up after the deadline (not at it), not much later
    assert run.ray.nodes_calls > 10  # it kept looking
    assert run.ray.get_calls == 0  # no round on a cluster that is not complete


@pytest.mark.parametrize(
    ("nodes", "joined"),
    [
        pytest.param(cluster(4), "5 nodes alive (4 workers)", id="an extra worker"),
        pytest.param(
            [*cluster(3), Node("old-head-id", "10.0.0.2", head=True)],
            "5 nodes alive (3 workers)",
            id="a second head",
        ),
        pytest.param(
            [Node(HEAD.id, HEAD.address, head=True, alive=False), *cluster(4)[1:]],
            "4 nodes alive (4 workers)",
            id="no head but an extra worker",
        ),
    ],
)
def test_more_nodes_than_expected_fail_at_the_deadline(smoke: Smoke, nodes: list[Node], joined: str) -> None:
    """The count must be exact: an extra node (an old pod's node that lingers) is waited out, then fails."""
    run = smoke(Cluster(snapshots=[nodes]), 3)
    assert_failed(run, joined, f"not 4 (3 workers), after {WAIT_SECONDS:.0f}s")
    assert WAIT_SECONDS < run.waited <= WAIT_SECONDS + 5
    assert run.ray.get_calls == 0


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_with_autoscaling_any_count_of_workers_within_the_bounds_succeeds(smoke: Smoke, workers: int) -> None:
    run = smoke(Cluster(snapshots=[cluster(workers)]), 1, 3)
    assert_succeeded(run)
    assert f"{workers + 1} nodes alive, {workers} workers of 1-3 expected" in run.out
    assert set(run.ray.placed) == {node.id for node in cluster(workers)}


@pytest.mark.parametrize(
    ("nodes", "joined"),
    [
        pytest.param([HEAD], "1 nodes alive (0 workers)", id="below the fewest"),
        pytest.param(cluster(4), "5 nodes alive (4 workers)", id="above the most"),
        pytest.param(
            [*cluster(2), Node("old-head-id", "10.0.0.2", head=True)], "4 nodes alive (2 workers)", id="2 heads"
        ),
    ],
)
def test_with_autoscaling_a_count_outside_the_bounds_fails_at_the_deadline(
    smoke: Smoke, nodes: list[Node], joined: str
) -> None:
    run = smoke(Cluster(snapshots=[nodes]), 1, 3)
    assert_failed(run, joined, f"not 1 head and 1-3 workers, after {WAIT_SECONDS:.0f}s")
    assert run.ray.get_calls == 0


@pytest.mark.parametrize("nodes", [1, 2, 4, 60])
def test_a_round_has_two_calls_per_node_and_at_most_100(smoke: Smoke, nodes: int) -> None:
    """The calls hold no CPU (a Serve replica or a long job may hold every CPU), so only this bound keeps Ray from
    starting a worker process per call in flight on each node, a fault-tolerant head's included."""
    head_without_cpus = Node(HEAD.id, HEAD.address, head=True, cpus=0.0)
    cluster_nodes = [head_without_cpus, *cluster(nodes)[1:nodes]]
    run = smoke(Cluster(snapshots=[cluster_nodes]), nodes - 1)
    assert_succeeded(run)
    rounds = [line for line in run.lines if line.startswith("round ")]
    calls = min(100, 2 * nodes)
    assert rounds and all(line.split(": ")[1].startswith(f"{calls} nested calls in ") for line in rounds), rounds
    assert len(run.ray.placed) == 2 * calls * len(rounds)


def test_with_autoscaling_from_zero_a_head_only_cluster_succeeds(smoke: Smoke) -> None:
    """A group that scales from 0 has no worker at first: the calls run where Ray places them (the head here)."""
    run = smoke(Cluster(snapshots=[[HEAD]]), 0, 2)
    assert_succeeded(run)
    assert "1 nodes alive, 0 workers of 0-2 expected" in run.out


def test_an_extra_node_that_goes_away_in_time_is_waited_out(smoke: Smoke) -> None:
    run = smoke(Cluster(snapshots=[cluster(4), cluster(4), cluster(3)]), 3)
    assert_succeeded(run)
    assert "5 nodes alive, 4 workers of 3 expected" in run.out


def test_a_connection_that_never_comes_fails_at_the_deadline(smoke: Smoke) -> None:
    run = smoke(Cluster(init_error=lambda attempt: ConnectionError("no client server")), 3)
    assert_failed(run, "ConnectionError", "no client server")
    assert WAIT_SECONDS < run.waited <= WAIT_SECONDS + 5  # a try that fails at the deadline itself is retried
    assert run.ray.init_calls > 10
    assert run.ray.nodes_calls == 0 and run.ray.get_calls == 0


def test_the_time_to_connect_counts_against_the_same_deadline(smoke: Smoke) -> None:
    """One bound for the whole wait: a slow connection leaves less time for the nodes, not a fresh deadline."""
    connected_after = WAIT_SECONDS * 3 / 4
    setup = Cluster(
        snapshots=[cluster(2)],
        init_error=lambda attempt: ConnectionError("not yet") if attempt * 3 < connected_after else None,
    )
    run = smoke(setup, 3)
    assert_failed(run, "3 nodes alive (2 workers)")
    assert WAIT_SECONDS <= run.waited <= WAIT_SECONDS + 5


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ValueError("bad address"), id="ValueError"),
        pytest.param(RuntimeError("version mismatch"), id="RuntimeError"),
        pytest.param(PermissionError("token refused"), id="PermissionError"),
    ],
)
def test_an_unexpected_error_while_connecting_fails_at_once(smoke: Smoke, error: Exception) -> None:
    """Only ConnectionError means 'the head is still starting'; anything else is not retried."""
    run = smoke(Cluster(init_error=lambda attempt: error), 3)
    assert_failed(run, type(error).__name__, str(error))
    assert run.ray.init_calls == 1
    assert run.waited == 0


@pytest.mark.parametrize("call", [1, 3], ids=["first look", "while waiting"])
def test_ray_nodes_raising_while_waiting_fails(smoke: Smoke, call: int) -> None:
    run = smoke(Cluster(snapshots=[cluster(1)], nodes_errors={call: RuntimeError("GCS unreachable")}), 3)
    assert_failed(run, "RuntimeError: GCS unreachable")
    assert run.ray.nodes_calls == call
    assert run.ray.get_calls == 0


def test_ray_nodes_raising_after_the_rounds_fails(smoke: Smoke) -> None:
    """The last look at the nodes (to name their addresses) comes after the rounds passed: it must not succeed."""
    run = smoke(Cluster(snapshots=[cluster(3)], nodes_errors={2: RuntimeError("GCS gone")}), 3)
    assert_failed(run, "RuntimeError: GCS gone")
    assert run.ray.get_calls == 1
    assert "nodes that ran calls" not in run.out


class RayTaskError(Exception):
    """Like Ray's own, whose class the driver sees when a task raised."""


@pytest.mark.parametrize("round_number", [1, 2], ids=["first round", "a later round"])
def test_ray_get_raising_fails(smoke: Smoke, round_number: int) -> None:
    nodes = cluster(3)
    setup = Cluster(
        snapshots=[nodes],
        placement=pairs_on_one_node(nodes),  # no round passes, so every round runs
        get_errors={round_number: RayTaskError("where() failed on worker-2")},
    )
    run = smoke(setup, 3)
    assert_failed(run, "RayTaskError: where() failed on worker-2")
    assert run.ray.get_calls == round_number


def test_a_missing_expected_worker_count_fails_loudly(
    smoke: Smoke, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Job always sets SMOKE_EXPECTED_WORKERS; without it the script stops with an error, never `Success!`."""
    run = smoke(Cluster(), 3)  # loads a script
    monkeypatch.delenv("SMOKE_EXPECTED_WORKERS")
    with pytest.raises(KeyError, match="SMOKE_EXPECTED_WORKERS"):
        run.script.main()
    assert "Success!" not in capsys.readouterr().out


def test_without_a_node_wait_the_script_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Job sets the wait (one number, in components/manifests/pods.py); the script has no default of its own."""
    monkeypatch.setitem(sys.modules, "ray", FakeRay(Cluster()))
    monkeypatch.delenv("SMOKE_NODE_WAIT_SECONDS", raising=False)
    spec = importlib.util.spec_from_file_location(MODULE, SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    with pytest.raises(KeyError, match="SMOKE_NODE_WAIT_SECONDS"):
        spec.loader.exec_module(script)

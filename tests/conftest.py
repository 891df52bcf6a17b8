"""The rehearsal's cluster fixture, and the order tests run in: on the test workers, the upgrade drill first beside
modules that take little CPU, then the modules that form clusters, once it is over, then the rest; under mutation
testing (scripts/mutation, docs/mutation.md) the quickest to fail first.

mutmut sets MUTANT_UNDER_TEST for every mutant it runs and stops at the first failing test. The tests of single
builders catch most mutants in milliseconds; the tests that render whole stacks many times catch the rest. So,
under mutmut only, the former run first: the same tests, the same verdicts, in a fraction of the time.
"""

import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadFileScheduling
from xdist.workermanage import WorkerController

from tests.mutation_testing import under_mutmut
from tests.rehearsal.cluster import Cluster

BUILDER_TESTS_FIRST = (
    "test_smoke_test.py",
    "test_node_provider.py",
    "test_autoscaling.py",
    "test_pods.py",
    "test_pod_templates.py",
    "test_settings.py",
    "test_config_errors.py",
    "test_program.py",
    "test_security.py",
    "test_names.py",
)


# The order modules are handed out in, which decides what runs beside what. scripts/test runs the suite on
# pytest-xdist workers, each module whole on one worker (its cluster is module-scoped), handed out in collection order:
# one to each worker at first, then to a worker once two or fewer of its tests are left (xdist's loadfile), so a worker
# takes its next module while its last two tests run.
#
# The upgrade drill goes first, beside modules that take little CPU: its switch needs about 1.6 of this machine's 2
# cores (a job submitted a second starts a Python process of about 1.2 CPU-seconds on the head, its supervisor, and
# 20 Serve requests a second go through two proxies), and every place it had among the heavy modules starved its new
# head somewhere: fifth, behind the four heaviest, it met the next modules' clusters forming as it retired its old
# generation, and its new worker's proxy held requests past the client's timeout; first beside three of them, its
# Serve controller restarted a healthy proxy. Beside it only the harness, the API server's tests (their pods are
# shells; they mostly wait) and the metrics module: with the modules that form no cluster (CPU-bound) beside it too,
# the drill took 186-238 s; with two workers on them, 343 s.
BESIDE_THE_DRILL = (
    "test_rehearsal_upgrades.py",
    "test_docs.py",  # handed out with the drill (ModulePairs)
    "test_rehearsal_harness.py",
    "test_rehearsal_apiserver.py",
    "test_rehearsal_metrics.py",  # 35 CPU-seconds in 3 minutes: its cluster forms beside the drill's, then waits
)
# Then the modules that form Ray clusters, longest first, once the drill is over (the_drills_switch_alone); and last
# every module neither list names, which forms no cluster: their CPU fills the cores as the clusters' modules end,
# where the last clusters' waits left them half idle.
AFTER_THE_DRILL = (
    "test_rehearsal_heals.py",
    "test_rehearsal.py",
    "test_rehearsal_autoscaling.py",
    "test_rehearsal_fault_tolerance.py",
    "test_rehearsal_serve.py",
    "test_serve.py",  # 2-3 minutes, a Ray head on this machine among them
    "test_rehearsal_serve_without_fault_tolerance.py",
)


class ModulePairs(LoadFileScheduling):  # type: ignore[misc]  # xdist ships no type information
    """xdist's loadfile, except that a module of one test goes out together with the module after it. Handed out
    alone, it leaves its worker with one test pending, under loadfile's threshold of two, so the worker takes the
    next module in the queue at once, or a moment later whatever is next then: the harness's 2 minutes, so taken
    behind the drill, ended a run 100 s after the other workers. Paired, the one after it is the one the order says."""

    def _assign_work_unit(self, node: WorkerController) -> None:
        one_test = len(next(iter(self.workqueue.values()))) == 1
        super()._assign_work_unit(node)
        if one_test and self.workqueue:
            super()._assign_work_unit(node)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadFileScheduling | None:
    """ModulePairs for `--dist loadfile` (scripts/test); xdist's own scheduling otherwise."""
    return ModulePairs(config, log) if config.getoption("dist") == "loadfile" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if under_mutmut():
        items.sort(key=lambda item: rank(item.path.name, BUILDER_TESTS_FIRST))
    else:
        items.sort(key=lambda item: (rank(item.path.name, BESIDE_THE_DRILL), rank(item.path.name, AFTER_THE_DRILL)))


def rank(module: str, order: tuple[str, ...]) -> int:
    """A module's place in `order`; those it does not name come after: one rank, to keep their collection order."""
    return order.index(module) if module in order else len(order)


@pytest.fixture(scope="module", autouse=True)
def the_drills_switch_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    """On xdist's workers, the drill's module holds a lock while it runs, and each module of AFTER_THE_DRILL waits
    for it before it starts: handed out after the modules beside the drill, they would otherwise form their clusters
    while the drill retires its old generation (see BESIDE_THE_DRILL). The workers that wait meanwhile lose little:
    the drill alone keeps about 1.6 of the 2 cores busy."""
    run, module = os.environ.get("PYTEST_XDIST_TESTRUNUID"), request.path.name
    if run is None or (module != BESIDE_THE_DRILL[0] and module not in AFTER_THE_DRILL):
        yield
        return
    with open(f"/tmp/ray-cluster-tests-{run}.drill.lock", "a") as lock:
        if module == BESIDE_THE_DRILL[0]:
            fcntl.flock(lock, fcntl.LOCK_EX)
        else:
            fcntl.flock(lock, fcntl.LOCK_SH)
            fcntl.flock(lock, fcntl.LOCK_UN)
        yield


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A one-node Kubernetes for one rehearsal module (tests/rehearsal/), torn down with every pod at its end. Its
    pods run at the module's CLUSTER_NICENESS, or each at its `cluster_niceness(pod name)`, if it sets one (see that
    module)."""
    if os.geteuid() != 0:
        pytest.fail("the rehearsal needs root to create network namespaces; run it as root (CI does)")
    every_pod = getattr(request.module, "CLUSTER_NICENESS", 0)
    niceness = getattr(request.module, "cluster_niceness", lambda pod: every_pod)
    cluster = Cluster(Path(f"/run/ray-rehearsal-{os.getpid()}"), niceness=niceness)
    try:
        yield cluster
    finally:
        cluster.close()


# `CPU_BY_MODULE=<file> scripts/test`: each module's CPU time, its cluster's pods included, appended to <file> as a
# line of JSON (docs/benchmarks.md, "The test suite"). The suite is bound by the machine's two cores, so what each
# module costs in CPU, not in wall time (which its neighbours stretch), says where a run's minutes go.
CPU_BY_MODULE = os.environ.get("CPU_BY_MODULE")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1's CPU accounting, as this machine mounts it


@pytest.fixture(scope="module", autouse=bool(CPU_BY_MODULE))
def cpu_by_module(request: pytest.FixtureRequest, the_drills_switch_alone: None) -> Iterator[None]:
    """The test worker's process, and so every process it starts from now on, in a cgroup of the worker's own: a
    worker runs one module at a time (--dist loadfile), so the cgroup's CPU time across a module is the module's.
    Its wall time starts once the module no longer waits for the drill."""
    assert CPU_BY_MODULE, "only with CPU_BY_MODULE set"
    group = CPUACCT / f"ray-cluster-tests-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    group.mkdir(exist_ok=True)
    (group / "cgroup.procs").write_text(str(os.getpid()))
    used, started = int((group / "cpuacct.usage").read_text()), time.time()
    yield
    cpu = (int((group / "cpuacct.usage").read_text()) - used) / 1e9
    measured = {"module": request.module.__name__, "cpu_seconds": round(cpu, 1),
                "wall_seconds": round(time.time() - started, 1)}  # fmt: skip
    with Path(CPU_BY_MODULE).open("a") as out:
        out.write(json.dumps(measured) + "\n")

"""The rehearsal's cluster fixture, and the order tests run in: the longest modules first on the test workers, and
under mutation testing (scripts/mutation, docs/mutation.md) the quickest to fail first.

mutmut sets MUTANT_UNDER_TEST for every mutant it runs and stops at the first failing test. The tests of single
builders catch most mutants in milliseconds; the tests that render whole stacks many times catch the rest. So,
under mutmut only, the former run first: the same tests, the same verdicts, in a fraction of the time.
"""

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


# The modules that take minutes, in the order that ends a run soonest (their times from the timed runs in
# docs/benchmarks.md). scripts/test runs the suite on pytest-xdist workers, each module whole on one worker (its
# cluster is module-scoped), handed out in collection order: one to each worker at first, then to a worker once two or
# fewer of its tests are left (xdist's loadfile), so a worker takes its next module while its last two tests run. The
# first four are the heaviest; the upgrade drill, one test of 7 minutes and 400-630 CPU-seconds (CPU_BY_MODULE below),
# follows them, as the machine's load then eases (first among them, it ran beside three clusters forming, and its
# Serve controller, starved, restarted a worker's healthy proxy), with the quick test_docs.py (ModulePairs).
LONGEST_FIRST = (
    "test_rehearsal_fault_tolerance.py",
    "test_rehearsal_heals.py",
    "test_rehearsal.py",
    "test_rehearsal_autoscaling.py",
    "test_rehearsal_upgrades.py",
    "test_docs.py",  # handed out with the drill (ModulePairs)
    "test_rehearsal_metrics.py",
    "test_serve.py",  # 2-4 minutes, a Ray head on this machine among them
    "test_rehearsal_serve.py",
    "test_rehearsal_harness.py",
    "test_rehearsal_serve_without_fault_tolerance.py",
    "test_rehearsal_apiserver.py",
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
    order = BUILDER_TESTS_FIRST if under_mutmut() else LONGEST_FIRST
    rank = {name: position for position, name in enumerate(order)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
def cpu_by_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """The test worker's process, and so every process it starts from now on, in a cgroup of the worker's own: a
    worker runs one module at a time (--dist loadfile), so the cgroup's CPU time across a module is the module's."""
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

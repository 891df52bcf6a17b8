"""The rehearsal's cluster fixture, and the order tests run in: the longest modules first on the test workers, and
under mutation testing (scripts/mutation, docs/mutation.md) the quickest to fail first.

mutmut sets MUTANT_UNDER_TEST for every mutant it runs and stops at the first failing test. The tests of single
builders catch most mutants in milliseconds; the tests that render whole stacks many times catch the rest. So,
under mutmut only, the former run first: the same tests, the same verdicts, in a fraction of the time.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
# cluster is module-scoped), handed out in collection order (a worker gets its next module once two or fewer of its
# tests are left): roughly longest first, the quick ones filling in behind them. In f7a0ed8's run the harness and in
# ab9186b's the fault-tolerance module ended it, each started last beside workers with nothing left.
LONGEST_FIRST = (
    "test_rehearsal_autoscaling.py",
    "test_rehearsal_heals.py",
    "test_rehearsal.py",
    "test_rehearsal_metrics.py",
    "test_serve.py",  # 4-6 minutes, a Ray head on this machine among them
    "test_rehearsal_serve.py",
    # Not first: beside three clusters forming, the client's submissions queue on its old head for minutes (109
    # once), which its retirement waits for; it starts once a first module is done.
    "test_rehearsal_upgrades.py",
    # What its worker is handed with it, as the drill is one test: a quick module, which the worker runs after it.
    # (The harness's 2 minutes, handed out here in a run, waited behind the drill's 7 while the other workers had
    # nothing left.)
    "test_docs.py",
    "test_rehearsal_fault_tolerance.py",
    "test_rehearsal_harness.py",
    "test_rehearsal_serve_without_fault_tolerance.py",
    "test_rehearsal_apiserver.py",
)


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

"""Runs in a worker pod's Ray container, never in `pulumi up`: waits until the head's GCS accepts this node, then
starts the node, in one Python process, which ends once the node runs (`ray start` without `--block`; the container's
main process, components/in_pod/ray_node.sh, keeps the container as long as the node and drains it on SIGTERM).

The worker's init container has already waited, in bash, for the GCS port to open. What is left to wait for needs
Ray's own client: that the head accepts this cluster's token and runs this node's Ray version, which is what
`ray health-check` checks, and that the head's own node has registered, which `ray start` needs first (it asks the
GCS for the head's node and the session's name and, if either is not there yet, sleeps 2 s before it asks again).
Running those checks here, through Ray's own code, and then `ray start` in the same process spares a Python start
and `import ray` (about a second while the head boots on the same cores) and those 2 s naps before the node can join
(docs/benchmarks.md, "Time to ready"). A worker that finds a head refusing its token (a rotation under way) keeps
waiting without a restart and says why: at once when the reason changes, and every few seconds while it does not,
as the init container does for the port.
"""

# The image may run an older Python than this repository (`str | None` is evaluated at definition time).
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator

from ray._raylet import GcsClient  # type: ignore[attr-defined]  # _raylet.pyi declares a part only
from ray.core.generated.gcs_pb2 import GcsNodeInfo
from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest
from ray.scripts.scripts import cli

# A head that refuses this node may do so for minutes (until a new token reaches it): a check a second. Its own
# node registers within a second or two of its GCS: a check every fifth of a second.
RETRY_SECONDS = 1.0
HEAD_NODE_POLL_SECONDS = 0.2
HEAD_NODE_MISSING = "the head's own node has not registered with its GCS yet"
REPORT_SECONDS = 5.0


def health_check(address: str) -> str | None:
    """None if `ray health-check --address=<address>` passes (it exits 0), else its exit code."""
    try:
        cli.main(["health-check", f"--address={address}"], prog_name="ray", standalone_mode=False)
    except SystemExit as exit_status:
        if exit_status.code not in (0, None):
            return f"ray health-check exited with {exit_status.code}"
    return None


def head_node_missing(nodes: GcsClient) -> str | None:
    """None once the head's node is registered and alive in its GCS (which has the session's name by then)."""
    head = GetAllNodeInfoRequest.NodeSelector(is_head_node=True)
    alive = GcsNodeInfo.GcsNodeState.ALIVE
    found = nodes.get_all_node_info(timeout=10, node_selectors=[head], state_filter=alive)
    return None if found else HEAD_NODE_MISSING


def check_until_ready(address: str, report: Callable[[str], None]) -> bool:
    """The health check, then the head's node, asked five times a second through one GCS client until it has
    registered: True then. Each reason to wait goes to `report`; at any other reason than the missing node (for an
    error, its last line, as a traceback ends: `ray.exceptions.AuthenticationError: ...` for a token the head
    refuses), False: the next try, a second later, starts again from the health check and Ray's reading of the token.
    """
    try:
        why = health_check(address)
        if why is None:
            nodes = GcsClient(address=address)
            while (why := head_node_missing(nodes)) == HEAD_NODE_MISSING:
                report(why)
                time.sleep(HEAD_NODE_POLL_SECONDS)
            if why is None:
                return True
    except Exception as error:  # noqa: BLE001 - any failure is a reason to wait, said in the log
        why = traceback.format_exception_only(error)[-1].strip()
    report(why)
    return False


def try_in_a_child(address: str) -> Iterator[str]:
    """One try (check_until_ready) in a forked child, which reports each reason back through a pipe as it goes: the
    reasons, then, once the child has ended, "" if the head is ready.

    In this process the check's GCS clients would outlive it until Python's garbage collector frees them, at any
    moment, their gRPC threads with them: `ray start` then forks Ray's processes from a process with gRPC threads,
    the kind of fork that makes Ray Client's proxier lose its children now and then (ray-project/ray#63202), and the
    node's drain on SIGTERM, when it ran in this process (`ray start --block`), failed so ("Cancelling all calls") in 2
    of 6 tries. In a child, the process that runs `ray start` never makes a GCS client of its own. It has imported Ray
    but runs no thread yet, so a fork is safe, and costs neither a Python start nor an import. One child for the whole
    wait for the head's node, with one client, rather than one per check: a check then costs a query, under a
    millisecond of CPU, not a fork and two clients, 20 ms or more, five times a second per worker while the head
    starts (bench/worker_wait_cpu.py; docs/benchmarks.md). The child's own output (Ray's C++ warnings) is dropped; it
    ends at its first report after this process has gone (the pipe is broken then).
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        ready = False
        with os.fdopen(write_end, "w") as reports:

            def report(why: str) -> None:
                reports.write(json.dumps(why) + "\n")
                reports.flush()

            try:
                ready = check_until_ready(address, report)
            finally:
                os._exit(0 if ready else 1)
    os.close(write_end)
    reported = False
    with os.fdopen(read_end) as reports:
        for line in reports:
            reported = True
            yield json.loads(line)
    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    if code == 0:
        yield ""
    elif not reported:
        yield f"the check ended with {code}"


def wait_until_ready(address: str) -> None:
    """Tries until the head is ready, saying why not: at once when the reason changes, and every REPORT_SECONDS while
    it does not."""
    said, said_at = "", 0.0
    while True:
        for why in try_in_a_child(address):
            if not why:
                print(f"GCS at {address} is ready", flush=True)
                return
            if why != said or time.monotonic() - said_at >= REPORT_SECONDS:
                print(f"waiting for the Ray head (GCS) at {address}: {why}", flush=True)
                said, said_at = why, time.monotonic()
        time.sleep(RETRY_SECONDS)


def main(arguments: list[str]) -> None:
    """`arguments`: `ray start`'s, from the word `start` on."""
    [address] = [word.split("=", 1)[1] for word in arguments if word.startswith("--address=")]
    wait_until_ready(address)
    cli.main(arguments, prog_name="ray")


if __name__ == "__main__":
    main(sys.argv[1:])

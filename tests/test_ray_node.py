"""components/in_pod/ray_node.sh, the Ray container's main process, run as a container runs it: as PID 1 of a PID
namespace of its own (with its own /proc, and its own /tmp/ray), defined and called by the rendered command, against
stand-ins for `ray` and for Ray's processes, so that each of its promises can be watched and broken on purpose:
the container lives as long as the node, names the process that ended it, drains on SIGTERM for the time it is
given through the node's own id and GCS address, and stops a start that is still waiting.

The real Ray paths are the rehearsal's: every pod there runs this script against the real Ray, a removed worker
drains its running task (tests/test_rehearsal.py), and a lost GCS or Redis restarts the containers
(tests/test_rehearsal_fault_tolerance.py). Needs root (namespaces), as the rehearsal does; it fails, never skips,
without it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.manifests import ray_node
from tests.test_pods import SETTINGS

NODE_ID = "ab" * 28
GCS_ADDRESS = "10.0.0.9:6379"
# A stand-in for one of Ray's processes: its command name is its file's name (raylet, gcs_server); it records its
# start and its SIGTERM, and exits on SIGTERM.
DAEMON = """#!/bin/bash
echo "$(basename "$0") started $*" >>"$CALLS"
trap 'echo "$(basename "$0") got SIGTERM" >>"$CALLS"; exit 0' TERM
while true; do sleep 0.05; done
"""
# The stand-in `ray`: `start` leaves a raylet (with the node's id) and a GCS running, writes the GCS address as Ray
# does (no newline) and makes a session; `drain-node` records its arguments and, as a drained idle raylet does,
# ends the raylet unless DRAIN=hang (DRAIN=slow: then it does not return).
RAY = f"""#!/bin/bash
echo "ray $*" >>"$CALLS"
case $1 in
start)
  [ -z "$START_SECONDS" ] || sleep "$START_SECONDS"
  mkdir -p /tmp/ray/session_1/logs/events
  ln -sfn /tmp/ray/session_1 /tmp/ray/session_latest
  printf %s {GCS_ADDRESS} >/tmp/ray/ray_current_cluster
  "$FAKES/raylet" --node_id={NODE_ID} --other=1 &
  "$FAKES/gcs_server" &
  sleep 0.2
  ;;
drain-node)
  [ "$DRAIN" = hang ] || pkill -TERM -x raylet
  [ "$DRAIN" != slow ] || sleep 600
  ;;
esac
"""


class Node:
    """The rendered worker command, run as PID 1 of a new PID namespace, against the stand-ins."""

    def __init__(self, tmp_path: Path, drain_seconds: int, events: Path | None = None, **env: str) -> None:
        """`events`: a file the node is to link into its session as the autoscaler's events (as on an autoscaling
        head), the namespace's /tmp/ray holding an older session's link, as a restarted container's does."""
        self.calls = tmp_path / "calls"
        fakes = tmp_path / "fakes"
        fakes.mkdir()
        for name, text in {"raylet": DAEMON, "gcs_server": DAEMON, "ray": RAY}.items():
            (fakes / name).write_text(text)
            (fakes / name).chmod(0o755)
        command = ray_node.ray_container(SETTINGS, SETTINGS.head, "rayproject/ray:2.60.0", head=True)["command"]
        script = command[2].replace("$(RAY_POD_IP)", "10.0.0.2")
        prelude = "mount -t tmpfs ray /tmp/ray"
        if events:
            link = ray_node.autoscaler_events_link().replace(ray_node.AUTOSCALER_EVENTS_FILE, str(events))
            script = script.replace("\nrun_node ", f"\n{link}run_node ")
            prelude += " && mkdir -p /tmp/ray/session_0/logs/events && ln -s /tmp/ray/session_0 /tmp/ray/session_latest"
        Path("/tmp/ray").mkdir(exist_ok=True)  # the mount point of the namespace's own /tmp/ray
        inner = f"{prelude} && exec /bin/bash -c {shlex.quote(script)}"
        namespaces = ["--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private", "--kill-child"]
        self.process = subprocess.Popen(
            ["unshare", *namespaces, "/bin/bash", "-c", inner],
            env={
                "PATH": f"{fakes}:/usr/bin:/bin",
                "CALLS": str(self.calls),
                "FAKES": str(fakes),
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(drain_seconds),
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def said(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def wait_for(self, line: str, timeout: float = 20) -> None:
        """Until a stand-in said `line` (or a line that starts so, if it ends with a space)."""
        deadline = time.monotonic() + timeout
        while not any(said == line or (line.endswith(" ") and said.startswith(line)) for said in self.said()):
            assert time.monotonic() < deadline and self.process.poll() is None, (line, self.said())
            time.sleep(0.05)

    def main_pid(self) -> int:
        """PID 1 of the namespace, as the host sees it: the child of `unshare --fork`."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return int(children[0])

    def pids(self, name: str) -> list[int]:
        found = subprocess.run(["pgrep", "-x", "-P", str(self.main_pid()), name], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def end(self, timeout: float = 30) -> tuple[int, str]:
        output, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, output


@pytest.fixture
def node_runs(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "these tests make PID and mount namespaces: run them as root, as CI does"
    yield tmp_path


def started(tmp_path: Path, drain_seconds: int = 5, events: Path | None = None, **env: str) -> Node:
    node = Node(tmp_path, drain_seconds, events, **env)
    node.wait_for(f"raylet started --node_id={NODE_ID} --other=1")
    node.wait_for("gcs_server started ")
    deadline = time.monotonic() + 10
    while not node.pids("raylet") or not node.pids("gcs_server"):  # adopted by PID 1 once `ray start` has ended
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return node


def test_on_sigterm_the_node_drains_through_its_gcs_then_stops(node_runs: Path) -> None:
    node = started(node_runs, drain_seconds=7)
    os.kill(node.main_pid(), signal.SIGTERM)
    code, output = node.end()
    drain = [line for line in node.said() if line.startswith("ray drain-node")]
    assert drain == [
        f"ray drain-node --address={GCS_ADDRESS} --node-id={NODE_ID} --reason=DRAIN_NODE_REASON_PREEMPTION"
        " --reason-message=its pod is terminating --deadline-remaining-seconds=7"
    ]
    # The drained raylet exited; the GCS was stopped after it.
    assert node.said()[-1] == "gcs_server got SIGTERM" and "the node is drained" in output
    assert code == 0 and "Ray stopped" in output


def test_a_drain_that_does_not_finish_ends_at_its_deadline(node_runs: Path) -> None:
    node = started(node_runs, drain_seconds=2, DRAIN="hang")
    begun = time.monotonic()
    os.kill(node.main_pid(), signal.SIGTERM)
    code, output = node.end()
    assert "did not finish draining within 2 s" in output and code == 0
    assert node.said()[-2:] == ["raylet got SIGTERM", "gcs_server got SIGTERM"]
    assert time.monotonic() - begun < 2 + ray_node.SHUTDOWN_MARGIN_SECONDS


def test_a_node_drained_while_its_drain_is_asked_for_stops_at_once(node_runs: Path) -> None:
    """The autoscaler drains an idle node, then deletes its pod: the SIGTERM finds the node on its way out, and
    whatever the drain request does then, the node stops as soon as its raylet has exited."""
    node = started(node_runs, drain_seconds=60, DRAIN="slow")
    begun = time.monotonic()
    os.kill(node.main_pid(), signal.SIGTERM)
    code, output = node.end()
    assert code == 0 and "the node is drained" in output
    assert time.monotonic() - begun < 10


def test_without_drain_seconds_sigterm_stops_ray_at_once(node_runs: Path) -> None:
    node = started(node_runs, drain_seconds=0)
    os.kill(node.main_pid(), signal.SIGTERM)
    code, _ = node.end()
    assert not any(line.startswith("ray drain-node") for line in node.said()) and code == 0
    assert node.said()[-2:] == ["raylet got SIGTERM", "gcs_server got SIGTERM"]


@pytest.mark.parametrize("lost", ["raylet", "gcs_server"])
def test_the_container_exits_when_a_ray_process_dies_and_names_it(node_runs: Path, lost: str) -> None:
    node = started(node_runs)
    [pid] = node.pids(lost)
    os.kill(pid, signal.SIGKILL)
    code, output = node.end()
    assert code == 1
    assert f"ray-node: Ray's {lost} (pid " in output and "exited: stopping the node" in output
    survivor = {"raylet": "gcs_server", "gcs_server": "raylet"}[lost]
    assert node.said()[-1] == f"{survivor} got SIGTERM"


def test_a_raylet_that_ends_drained_leaves_the_container_waiting_for_its_sigterm(node_runs: Path) -> None:
    """The autoscaler drains an idle node, then deletes its pod: a restart in between would add a new node."""
    node = started(node_runs)
    Path(f"/proc/{node.main_pid()}/root/tmp/ray/session_1/logs/raylet.out").write_text(
        "...\nThe node is drained, continue to shut down raylet...\n"
    )
    [raylet] = node.pids("raylet")
    os.kill(raylet, signal.SIGTERM)
    node.wait_for("gcs_server got SIGTERM")  # what was left of the node, stopped
    time.sleep(2)  # two of the script's checks: it is still there
    assert node.process.poll() is None
    os.kill(node.main_pid(), signal.SIGTERM)
    code, output = node.end()
    assert code == 0 and "its node was drained" in output
    assert not any(line.startswith("ray drain-node") for line in node.said())


def test_sigterm_while_the_node_starts_stops_the_start(node_runs: Path) -> None:
    """A worker may wait minutes for its head: its pod's deletion does not wait for that."""
    node = Node(node_runs, 5, START_SECONDS="600")
    node.wait_for("ray start ")
    time.sleep(0.5)  # into the stand-in's wait
    begun = time.monotonic()
    os.kill(node.main_pid(), signal.SIGTERM)
    code, _ = node.end()
    assert code == 0 and time.monotonic() - begun < 5


def test_the_autoscalers_events_are_linked_into_this_session_once_the_file_exists(node_runs: Path) -> None:
    """The dashboard stats every file in the session's events: a link to a file not yet made would fail its scans."""
    events = node_runs / "event_AUTOSCALER.log"
    node = started(node_runs, events=events)
    root = Path(f"/proc/{node.main_pid()}/root/tmp/ray")
    linked = root / "session_1" / "logs" / "events" / events.name
    time.sleep(2)  # two of the script's checks, without the file
    assert not linked.is_symlink()
    events.write_text("")
    deadline = time.monotonic() + 5
    while not linked.is_symlink():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert os.readlink(linked) == str(events)
    assert not (root / "session_0" / "logs" / "events" / events.name).is_symlink()
    os.kill(node.main_pid(), signal.SIGTERM)
    assert node.end()[0] == 0


def test_the_autoscalers_events_never_go_into_an_older_session(node_runs: Path) -> None:
    """A restarted container's /tmp keeps the older session's link until `ray start` replaces it (here after 3 s),
    and the autoscaler's file is already there."""
    events = node_runs / "event_AUTOSCALER.log"
    events.write_text("")
    node = started(node_runs, events=events, START_SECONDS="3")
    root = Path(f"/proc/{node.main_pid()}/root/tmp/ray")
    deadline = time.monotonic() + 5
    while not (root / "session_1" / "logs" / "events" / events.name).is_symlink():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not (root / "session_0" / "logs" / "events" / events.name).is_symlink()
    os.kill(node.main_pid(), signal.SIGTERM)
    assert node.end()[0] == 0

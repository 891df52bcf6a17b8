"""Time to ready: the rendered cluster (rehearsal harness) against Ray started by hand, side by side.

For 1, 2 and 3 workers it measures, from the moment all pods are started at once, the seconds until every worker
has joined (the GCS logged its registration) and until the smoke test has passed (for ours: `pulumi up` is done),
and the peak memory of all the cluster's processes; then the
same for the floor: the same Ray, in the same kind of network namespaces, started by hand (`ray start --head`,
then the workers, no init containers, no probes, no token) and the same smoke-test script run directly.
Each is measured `--repeat` times, interleaved, and the median is reported. Prints Markdown: the table with the
ratios and how far the worst run lies from its median, where the memory goes (by kind of process), and the raw
runs with each worker's timeline (init container, Ray container, registration) and the floor's (its head's
registration, its workers' start). Needs root, like the rehearsal.

With `--cores-apart`, on both sides the head's processes run on CPU 0 and the workers' on CPU 1 (the smoke test's
driver on either), as when the head's pod and the workers' pods are on nodes of their own: a worker's start then
takes no CPU from the head's. Without it every process shares the machine's cores, as no real cluster's pods do.

    sudo .venv/bin/python bench/time_to_ready.py [--workers 1 2 3] [--repeat 5] [--keep-logs DIR] [--cores-apart]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import in_pod
from components.manifests import ray_node
from tests.program import render
from tests.rehearsal.cluster import Cluster
from tests.rehearsal.kubelet import IMAGE_ROOT, Pod
from tests.rehearsal.network import PodNetwork

SMOKE_TEST = Path(in_pod.__file__).with_name(ray_node.SMOKE_TEST_FILE)
TIMEOUT = 600


# The two measures of a process's memory: its resident set (`VmRSS`: every page it maps, shared or not) and its
# proportional share (`Pss`: a page shared by n processes counts 1/n in each), whose sum over the cluster is the
# physical memory the cluster's processes hold. RSS counts the pages of a library, Ray's `_raylet.so` say, once in
# every process that maps it.
MEASURES = (("rss", Path("status"), "VmRSS:"), ("pss", Path("smaps_rollup"), "Pss:"))


@dataclass
class Peak:
    """The peak of a measure summed over the cluster's processes (KiB), and how much each kind of process held at
    that peak (see `process_kind`)."""

    kib: int = 0
    kib_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def mib(self) -> float:
        return self.kib / 1024


@dataclass
class Run:
    joined: float
    smoke_passed: float
    rss: Peak
    pss: Peak
    timelines: list[str] = field(default_factory=list)


class MemorySampler:
    """Every half second, the memory of every process in the given network namespaces, by kind of process; keeps
    the peak of each measure (MEASURES), to show how much the cluster needs and where it goes."""

    def __init__(self, namespaces: Callable[[], list[str]]) -> None:
        self.namespaces = namespaces
        self.peaks = {measure: Peak() for measure, _, _ in MEASURES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            by_kind: dict[str, dict[str, int]] = {measure: {} for measure in self.peaks}
            for namespace in self.namespaces():
                listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
                for pid in listed.stdout.split():
                    try:
                        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                        files = {name: (Path("/proc", pid) / name).read_text() for _, name, _ in MEASURES}
                    except OSError:
                        continue
                    kind = process_kind([part.decode(errors="replace") for part in command if part])
                    for measure, name, label in MEASURES:
                        lines = files[name].splitlines()
                        kib = next((int(line.split()[1]) for line in lines if line.startswith(label)), 0)
                        by_kind[measure][kind] = by_kind[measure].get(kind, 0) + kib
            for measure, kinds in by_kind.items():
                if sum(kinds.values()) > self.peaks[measure].kib:
                    self.peaks[measure] = Peak(sum(kinds.values()), kinds)

    def stop(self) -> tuple[Peak, Peak]:
        """The peaks of RSS and PSS."""
        self._stop.set()
        self._thread.join()
        return self.peaks["rss"], self.peaks["pss"]


# The kinds of process a Ray cluster runs, by a word of what they run (see `process_kind`; first match wins).
PROCESS_KINDS = (
    # A worker's `ray start` runs as `python -c <components/in_pod/worker_start.py> start ...` (until the node runs):
    # first, as the code names other kinds' words (`raylet`, `health-check`).
    (ray_node.WORKER_START_SOURCE.splitlines()[0], "ray start (until the node runs)"),
    # The Ray container's main process (components/in_pod/ray_node.sh, in bash), and the init container's wait.
    ("bash", "bash (main process, init wait)"),
    ("gcs_server", "gcs_server"),
    ("raylet", "raylet"),
    ("ray-dashboard-", "dashboard modules (a process each)"),
    ("multiprocessing.", "dashboard modules' forkserver"),
    ("dashboard/dashboard.py", "dashboard"),
    ("dashboard/agent.py", "dashboard agent"),
    ("ray::DashboardAgent", "dashboard agent"),
    ("runtime_env/agent", "runtime env agent"),
    ("ray::RuntimeEnvAgent", "runtime env agent"),
    ("log_monitor.py", "log monitor"),
    ("autoscaler/_private/monitor.py", "autoscaler monitor"),
    ("--mode=specific-server", "client server (per client)"),
    ("ray.util.client.server", "client proxier"),
    ("ray::", "worker process"),
    ("default_worker.py", "worker process"),
    ("smoke_test.py", "smoke-test driver"),
    ("health-check", "ray health-check"),
    ("ray start", "ray start (until the node runs)"),
)


def process_kind(command: list[str]) -> str:
    """What a process runs: a binary or a retitled process (`ray::IDLE`, `ray-dashboard-NodeHead-0 (...)`) by its
    first word, a Python process by its script, module or code (its other arguments name sockets and logs of
    other processes, `--raylet-name=...` say), a client server also by its mode."""
    if not command:
        return "?"
    if not Path(command[0]).name.startswith("python"):
        what = command[0]
    else:
        what = " ".join(command[1:3]) + "".join(f" {word}" for word in command if word.startswith("--mode="))
    return next((kind for word, kind in PROCESS_KINDS if word in what), Path(command[0]).name)


# The GCS logs each node it registers, with the node's address: the same moment on both sides, without the
# dashboard's own delay in listing nodes (seconds, and not the same with and without `--block`).
REGISTERED = re.compile(r"^\[(\S+ \S+) .*Registering new node\..* node_address=(\S+)", re.MULTILINE)


def gcs_log(ray_temp_dir: Path) -> Path:
    """The GCS's log in the one session under Ray's temp dir (not through its session_latest link)."""
    [log] = [path for path in ray_temp_dir.glob("session_*/logs/gcs_server.out") if not path.parents[1].is_symlink()]
    return log


def registrations(log: Path, started_wall: float) -> dict[str, float]:
    """When (seconds after `started_wall`, a time.time()) the GCS registered each node address, first time only."""
    registered: dict[str, float] = {}
    for stamp, address in REGISTERED.findall(log.read_text(errors="replace")):
        moment = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        registered.setdefault(address, moment - started_wall)
    return registered


def joined_at(registered: dict[str, float], nodes: int) -> float:
    if len(registered) < nodes:
        raise RuntimeError(f"the GCS registered {len(registered)} nodes, not {nodes}")
    return max(registered.values())


def cores_apart(pod: str) -> str | None:
    """With --cores-apart, the CPUs (taskset's list) of a pod or of the floor's node, by its name: the head on one,
    the workers on the other, the smoke test's driver on either."""
    return "0" if "head" in pod else "1" if "worker" in pod else None


def rendered_cluster(workers: int, keep_logs: Path | None, cores: Callable[[str], str | None]) -> Run:
    rendered = render({"workers": workers})
    cluster = Cluster(Path(f"/run/ray-bench-{os.getpid()}"), cores=cores)
    try:
        sampler = MemorySampler(
            lambda: [p.network_namespace for p in list(cluster.pods.values()) if p.network_namespace]
        )
        started, started_wall = time.monotonic(), time.time()
        up = cluster.up(rendered, timeout=TIMEOUT)  # the smoke test passed, so every worker joined
        [head] = [pod for pod in cluster.pods.values() if pod.name.startswith("ray-head-")]
        registered = registrations(gcs_log(head.directory / "volumes" / "tmp" / "ray"), started_wall)
        # The head's own node first: a worker's `ray start` can do nothing before it has registered.
        timeline = [f"head registered {registered.get(head.ip, math.nan):.1f}"]
        timeline += [worker_timeline(pod, started, registered) for pod in cluster.pods.values() if "worker" in pod.name]
        return Run(joined_at(registered, workers + 1), up, *sampler.stop(), timeline)
    finally:
        if keep_logs:
            save_logs(cluster, keep_logs / time.strftime("%H%M%S"))
        cluster.close()


def worker_timeline(pod: Pod, started: float, registered: dict[str, float]) -> str:
    """When (seconds after the start) each of the worker pod's containers started and exited, with their exit
    codes, and when the GCS registered its node: a late worker shows which of them it waited for."""
    parts = []
    for name, status in pod.statuses.items():
        starts = "/".join(f"{moment - started:.1f}" for moment in status.starts)
        ends = zip(status.exits, status.exit_codes, strict=True)
        exits = "/".join(f"{moment - started:.1f}({code})" for moment, code in ends)
        parts.append(f"{name} {starts}-{exits or '...'}")
    return f"worker {' '.join(parts)} registered {registered.get(pod.ip, math.nan):.1f}"


def save_logs(cluster: Cluster, directory: Path) -> None:
    """Every container's output and Ray's own logs (from each pod's /tmp), to find out afterwards why a run was
    slow."""
    for pod in cluster.pods.values():
        for name in pod.statuses:
            (directory / pod.name).mkdir(parents=True, exist_ok=True)
            (directory / pod.name / f"{name}.log").write_text(pod.logs(name))
        for log in (pod.directory / "volumes" / "tmp").glob("ray/session_*/logs/*"):
            if log.is_file() and log.suffix in (".out", ".err", ".log"):
                shutil.copy(log, directory / pod.name / log.name)


def floor_smoke_env(workers: int, head_ip: str) -> dict[str, str]:
    """The smoke-test Job's own SMOKE_* settings for this many workers, so the floor runs the same test, and the
    floor's head as its Ray Client address."""
    [driver] = render({"workers": workers}).one("Job")["spec"]["template"]["spec"]["containers"]
    smoke = {variable["name"]: variable["value"] for variable in driver["env"] if variable["name"].startswith("SMOKE_")}
    return {**smoke, "RAY_ADDRESS": f"ray://{head_ip}:{ray_node.CLIENT_PORT}"}


def floor(workers: int, cores: Callable[[str], str | None]) -> Run:
    network = PodNetwork(f"rf{os.getpid() % 10000}")
    namespaces: list[str] = []
    try:
        sampler = MemorySampler(lambda: list(namespaces))
        image = {"PATH": f"{IMAGE_ROOT}/bin:/usr/bin:/bin", "HOME": "/root", "RAY_USAGE_STATS_ENABLED": "0"}

        def node(name: str, *args: str, env: dict[str, str] = image) -> tuple[str, subprocess.Popen[bytes]]:
            namespace, ip = network.add_pod(name)
            namespaces.append(namespace)
            placed = ["taskset", "--cpu-list", cpus] if (cpus := cores(name)) else []
            command = [*placed, "ip", "netns", "exec", namespace, "ray", "start", f"--node-ip-address={ip}",
                       f"--temp-dir=/tmp/ray-floor-{name}", "--num-cpus=1", *args]  # fmt: skip
            return ip, subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        started, started_wall = time.monotonic(), time.time()
        # The floor gets the Ray Client fork workaround too: a known bug's workaround is part of Ray done by hand.
        head_env = {**image, ray_node.GRPC_FORK_SUPPORT_ENV: "0"}
        head_ip, head = node(
            "head", "--head", "--port=6379", "--dashboard-host=0.0.0.0", "--disable-usage-stats", env=head_env
        )
        if head.wait(TIMEOUT) != 0:
            raise RuntimeError("ray start --head failed")
        workers_started = time.monotonic() - started
        joiners = [node(f"worker{i}", f"--address={head_ip}:6379")[1] for i in range(workers)]
        if any(process.wait(TIMEOUT) != 0 for process in joiners):
            raise RuntimeError("ray start (worker) failed")
        driver_namespace, _ = network.add_pod("driver")
        namespaces.append(driver_namespace)
        smoke = subprocess.run(
            ["ip", "netns", "exec", driver_namespace, "python", str(SMOKE_TEST)],
            env={**image, **floor_smoke_env(workers, head_ip)},
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        if "Success!" not in smoke.stdout:
            raise RuntimeError(f"floor smoke test failed:\n{smoke.stdout}\n{smoke.stderr}")
        smoke_passed = time.monotonic() - started
        registered = registrations(gcs_log(Path("/tmp/ray-floor-head")), started_wall)
        head_at = registered.get(head_ip, math.nan)
        timeline = f"head registered {head_at:.1f}, the workers' ray start from {workers_started:.1f}"
        return Run(joined_at(registered, workers + 1), smoke_passed, *sampler.stop(), [timeline])
    finally:
        network.close()  # kills what is left in each namespace
        subprocess.run(["sh", "-c", "rm -rf /tmp/ray-floor-*"], check=False)


def raw(workers: int, ours: Run, by_hand: Run) -> str:
    sides = [
        f"{name}: joined {run.joined:5.1f}  smoke {run.smoke_passed:5.1f}  peak {run.rss.mib:5.0f} MiB"
        f" (PSS {run.pss.mib:5.0f})"
        for name, run in (("ours", ours), ("floor", by_hand))
    ]
    return f"{workers} workers  " + "   ".join(sides)


# The medians the table reports, of each side's runs.
MEDIANS: dict[str, Callable[[Run], float]] = {
    "joined": lambda run: run.joined,
    "smoke": lambda run: run.smoke_passed,
    "rss": lambda run: run.rss.mib,
    "pss": lambda run: run.pss.mib,
}


def worst_over_median(values: list[float]) -> float:
    return max(values) / statistics.median(values)


def memory_table(runs: list[tuple[Run, Run]]) -> list[str]:
    """Where the memory goes: each kind of process's mean MiB at the peak, ours against the floor, as RSS and as
    PSS."""
    kinds = sorted({kind for pair in runs for run in pair for kind in run.rss.kib_by_kind})

    def mean_mib(side: int, measure: str, kind: str) -> float:
        peaks: list[Peak] = [getattr(pair[side], measure) for pair in runs]
        return statistics.mean(peak.kib_by_kind.get(kind, 0) for peak in peaks) / 1024

    def row(kind: str) -> tuple[float, ...]:
        return tuple(mean_mib(side, measure, kind) for measure in ("rss", "pss") for side in (0, 1))

    rows = sorted(((row(kind), kind) for kind in kinds), reverse=True)
    return [
        f"| {kind} | {ours:.0f} | {floor_mib:.0f} | {ours - floor_mib:+.0f} "
        f"| {ours_pss:.0f} | {floor_pss:.0f} | {ours_pss - floor_pss:+.0f} |"
        for (ours, floor_mib, ours_pss, floor_pss), kind in rows
    ]


def main() -> None:
    # On SIGTERM (a timeout, Ctrl-C's cousin) unwind normally, so every namespace and process is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep-logs", type=Path, help="save every run's container and Ray logs under this folder")
    parser.add_argument("--cores-apart", action="store_true", help="the head on CPU 0, the workers on CPU 1")
    arguments = parser.parse_args()
    cores: Callable[[str], str | None] = cores_apart if arguments.cores_apart else lambda pod: None  # any CPU
    rows, raws, memory = [], [], []
    for workers in arguments.workers:
        runs = []
        for _ in range(arguments.repeat):
            runs.append((rendered_cluster(workers, arguments.keep_logs, cores), floor(workers, cores)))
            raws.append(raw(workers, *runs[-1]))
            raws += [f"    {timeline}" for timeline in runs[-1][0].timelines]
            raws += [f"    floor: {timeline}" for timeline in runs[-1][1].timelines]
            print("\n".join(raws[-3 - workers :]), file=sys.stderr, flush=True)
        medians = [
            {name: statistics.median(what(run) for run in column) for name, what in MEDIANS.items()}
            for column in zip(*runs, strict=True)
        ]
        ours, by_hand = medians
        spread = max(
            worst_over_median([getattr(pair[side], f) for pair in runs])
            for side in (0, 1)
            for f in ("joined", "smoke_passed")
        )
        cells = [
            f"{ours[name]:{form}} | {by_hand[name]:{form}} | {ours[name] / by_hand[name]:.2f}x"
            for name, form in (("joined", ".1f"), ("smoke", ".1f"), ("rss", ".0f"), ("pss", ".0f"))
        ]
        rows.append(f"| {workers} | {' | '.join(cells)} | {spread:.2f}x |")
        memory += [f"| {workers} " + row for row in memory_table(runs)]
        print(rows[-1], file=sys.stderr, flush=True)
    print("| workers | joined (s) | floor joined (s) | ratio | smoke passed (s) | floor smoke (s) | ratio "
          "| peak RSS MiB | floor | ratio | peak PSS MiB | floor | ratio | worst run / median |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nMemory at the peak, mean MiB by kind of process:\n")
    print("| workers | process | RSS ours | floor | difference | PSS ours | floor | difference |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(memory))
    print("\nRaw runs (seconds; each worker: its containers' start-exit(code) and when the GCS registered its node):\n")
    print("```\n" + "\n".join(raws) + "\n```")


if __name__ == "__main__":
    main()

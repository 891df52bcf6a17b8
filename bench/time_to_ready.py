"""Time to ready: the rendered cluster (rehearsal harness) against Ray started by hand, side by side.

For 1, 2 and 3 workers it measures, from the moment all pods are started at once, the seconds until every worker
has joined and until the smoke test has passed, and the peak memory of all the cluster's processes; then the
same for the floor: the same Ray, in the same kind of network namespaces, started by hand (`ray start --head`,
then the workers, no init containers, no probes, no token) and the same smoke-test script run directly.
Each is measured `--repeat` times, interleaved, and the median is reported. Prints a Markdown table with the
ratios. Needs root, like the rehearsal.

    sudo .venv/bin/python bench/time_to_ready.py [--workers 1 2 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import pods
from tests.program import render
from tests.rehearsal.cluster import Cluster, wait_for
from tests.rehearsal.kubelet import IMAGE_ROOT
from tests.rehearsal.network import PodNetwork

SMOKE_TEST = Path(pods.__file__).with_name(pods.SMOKE_TEST_FILE)
TIMEOUT = 600


@dataclass
class Run:
    joined: float
    smoke_passed: float
    peak_mib: float


class MemorySampler:
    """Peak of the summed resident memory of every process in the given network namespaces."""

    def __init__(self, namespaces: Callable[[], list[str]]) -> None:
        self.namespaces, self.peak_kib = namespaces, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            for namespace in self.namespaces():
                listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
                for pid in listed.stdout.split():
                    try:
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0)
            self.peak_kib = max(self.peak_kib, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def alive_nodes(head_ip: str, token: str) -> int:
    request = urllib.request.Request(
        f"http://{head_ip}:{pods.DASHBOARD_PORT}/nodes?view=summary", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            summary = json.load(response)["data"]["summary"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(node["raylet"]["state"] == "ALIVE" for node in summary)


def rendered_cluster(workers: int) -> Run:
    rendered = render({"workers": workers})
    cluster = Cluster(Path(f"/run/ray-bench-{os.getpid()}"))
    try:
        sampler = MemorySampler(
            lambda: [p.network_namespace for p in list(cluster.pods.values()) if p.network_namespace]
        )
        started = time.monotonic()
        done: dict[str, float] = {}
        thread = threading.Thread(target=lambda: done.setdefault("up", cluster.up(rendered, timeout=TIMEOUT)))
        thread.start()

        token = rendered.one("Secret")["stringData"][pods.AUTH_TOKEN_KEY]
        head_service = rendered.one("Service")["metadata"]
        head_name = f"{head_service['name']}.{head_service['namespace']}.svc.cluster.local"

        def all_joined() -> bool:
            return any(alive_nodes(ip, token) == workers + 1 for ip in cluster.resolve(head_name))

        wait_for(all_joined, TIMEOUT, "every worker joined", interval=0.1)
        joined = time.monotonic() - started
        thread.join(TIMEOUT)
        if "up" not in done:
            raise RuntimeError("pulumi up (rehearsed) did not finish")
        return Run(joined, done["up"], sampler.stop())
    finally:
        cluster.close()


def floor(workers: int) -> Run:
    network = PodNetwork(f"rf{os.getpid() % 10000}")
    namespaces: list[str] = []
    try:
        sampler = MemorySampler(lambda: list(namespaces))
        image = {"PATH": f"{IMAGE_ROOT}/bin:/usr/bin:/bin", "HOME": "/root", "RAY_USAGE_STATS_ENABLED": "0"}

        def node(name: str, *args: str) -> tuple[str, subprocess.Popen[bytes]]:
            namespace, ip = network.add_pod(name)
            namespaces.append(namespace)
            command = ["ip", "netns", "exec", namespace, "ray", "start", f"--node-ip-address={ip}",
                       f"--temp-dir=/tmp/ray-floor-{name}", "--num-cpus=1", *args]  # fmt: skip
            return ip, subprocess.Popen(command, env=image, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        started = time.monotonic()
        head_ip, head = node("head", "--head", "--port=6379", "--dashboard-host=0.0.0.0", "--disable-usage-stats")
        if head.wait(TIMEOUT) != 0:
            raise RuntimeError("ray start --head failed")
        joiners = [node(f"worker{i}", f"--address={head_ip}:6379")[1] for i in range(workers)]
        if any(process.wait(TIMEOUT) != 0 for process in joiners):
            raise RuntimeError("ray start (worker) failed")
        joined = time.monotonic() - started
        driver_namespace, _ = network.add_pod("driver")
        namespaces.append(driver_namespace)
        smoke = subprocess.run(
            ["ip", "netns", "exec", driver_namespace, "python", str(SMOKE_TEST)],
            env={**image, "RAY_ADDRESS": f"ray://{head_ip}:10001", "SMOKE_EXPECTED_WORKERS": str(workers),
                 "SMOKE_NODE_WAIT_SECONDS": str(pods.SMOKE_NODE_WAIT_SECONDS)},
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        if "Success!" not in smoke.stdout:
            raise RuntimeError(f"floor smoke test failed:\n{smoke.stdout}\n{smoke.stderr}")
        return Run(joined, time.monotonic() - started, sampler.stop())
    finally:
        network.close()  # kills what is left in each namespace
        subprocess.run(["sh", "-c", "rm -rf /tmp/ray-floor-*"], check=False)


def main() -> None:
    # On SIGTERM (a timeout, Ctrl-C's cousin) unwind normally, so every namespace and process is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    rows = []
    for workers in arguments.workers:
        runs = [(rendered_cluster(workers), floor(workers)) for _ in range(arguments.repeat)]
        for ours, by_hand in runs:
            print(f"  {workers} workers: {ours} / floor {by_hand}", file=sys.stderr, flush=True)
        ours, by_hand = (
            Run(*(statistics.median(getattr(r, f) for r in column) for f in ("joined", "smoke_passed", "peak_mib")))
            for column in zip(*runs, strict=True)
        )
        rows.append(
            f"| {workers} | {ours.joined:.1f} | {by_hand.joined:.1f} | {ours.joined / by_hand.joined:.2f}x "
            f"| {ours.smoke_passed:.1f} | {by_hand.smoke_passed:.1f} | {ours.smoke_passed / by_hand.smoke_passed:.2f}x "
            f"| {ours.peak_mib:.0f} | {by_hand.peak_mib:.0f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    print("| workers | joined (s) | floor joined (s) | ratio | smoke passed (s) | floor smoke (s) | ratio "
          "| peak MiB | floor peak MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

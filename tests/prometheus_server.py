"""Runs Debian's real Prometheus (2.42.0+ds, /usr/bin/prometheus) on loopback for a test.

So a test can see what Prometheus itself makes of a configuration (relabelings, rules, file_sd targets) instead of
what a model of it says. Startup or reload errors raise PrometheusError with Prometheus' own message and log; a
missing binary fails the test (pytest.fail), never skips it. Only the standard library talks HTTP.

Timing that is Prometheus', not this module's: a change of discovered targets reaches `/api/v1/targets` only after
the discovery manager's 5 s throttle and the scrape manager's 5 s reload tick, so 5 to 10 s; poll with `wait_for`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

PROMETHEUS = Path("/usr/bin/prometheus")
CONFIG_FILE = "prometheus.yml"
LOG_FILE = "prometheus.log"
_T = TypeVar("_T")
# Loopback only: no HTTP(S)_PROXY from the environment may stand between a test and its Prometheus.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(Exception):
    """Prometheus refused a configuration, did not become ready, or answered an API call with an error."""


class PrometheusServer:
    """A running Prometheus: its URL, its directory (configuration, files, data, log) and its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, directory: Path) -> None:
        self.process = process
        self.url = url
        self.directory = directory

    def log(self) -> str:
        """Prometheus' own log (stderr) so far."""
        return (self.directory / LOG_FILE).read_text(errors="replace")

    def targets(self) -> dict[str, Any]:
        """/api/v1/targets: {"activeTargets": [...], "droppedTargets": [...]}."""
        data: dict[str, Any] = self._api("/api/v1/targets")
        return data

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: a vector's samples ({"metric", "value"}); a scalar or string as one sample."""
        data = self._api("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        samples: list[dict[str, Any]] = result
        return samples

    def rules(self) -> list[dict[str, Any]]:
        """/api/v1/rules: the rule groups, with each rule's health and last error."""
        groups: list[dict[str, Any]] = self._api("/api/v1/rules")["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        """/api/v1/alerts: the pending and firing alerts."""
        alerts: list[dict[str, Any]] = self._api("/api/v1/alerts")["alerts"]
        return alerts

    def reload(
        self, config: Mapping[str, Any] | None = None, files: Mapping[str, Any] | Mapping[Path, Any] | None = None
    ) -> None:
        """Writes `files` and `config` (if given), then POST /-/reload, which answers once the reload is done.

        A configuration Prometheus refuses raises PrometheusError with its message (it keeps the previous one).
        """
        _write_files(self.directory, files or {})
        if config is not None:
            _write_yaml(self.directory / CONFIG_FILE, config)
        log_start = len(self.log())
        request = urllib.request.Request(self.url + "/-/reload", method="POST")
        try:
            with _HTTP.open(request, timeout=30) as response:
                response.read()
        except urllib.error.HTTPError as error:
            # The answer only says that something failed; what did is in the log.
            answer = error.read().decode(errors="replace").strip()
            raise PrometheusError(f"{answer}\n{_errors(self.log()[log_start:])}") from None
        info = self._api("/api/v1/status/runtimeinfo")
        if not info["reloadConfigSuccess"]:
            raise PrometheusError(f"the reload was answered, but Prometheus reports it failed:\n{self.log()}")

    def write_targets(self, path: str | Path, groups: Sequence[Mapping[str, Any]]) -> None:
        """Replaces a file_sd file (relative to the directory) at once; Prometheus notices the change by itself."""
        write_file_sd(self.directory / path, groups)

    def wait_for(self, condition: Callable[[], _T | None], what: str, timeout: float = 30.0) -> _T:
        """Polls `condition` until it returns something other than None (or False); fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result is not None and result is not False:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"timed out after {timeout} s waiting for {what}\nPrometheus' log:\n{self.log()}")
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"Prometheus exited ({self.process.returncode}) while waiting for {what}:\n{self.log()}"
                )
            time.sleep(0.2)

    def _api(self, path: str) -> Any:
        try:
            with _HTTP.open(self.url + path, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError):
                message = text
            raise PrometheusError(f"GET {path}: {error.code}: {message}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"GET {path}: {body}")
        return body["data"]


@contextmanager
def prometheus_server(
    directory: Path,
    config: Mapping[str, Any],
    *,
    files: Mapping[str, Any] | Mapping[Path, Any] | None = None,
    binary: Path = PROMETHEUS,
    ready_timeout: float = 30.0,
) -> Iterator[PrometheusServer]:
    """Runs Prometheus on `config` in `directory` until the block ends, then kills it.

    `files` (paths relative to `directory`, which relative paths in `config` are too) are written first: .json as
    JSON, anything else as YAML, e.g. rule files and file_sd target files.
    """
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is missing: install Debian's prometheus package (.ci/run does)")
    directory.mkdir(parents=True, exist_ok=True)
    _write_files(directory, files or {})
    _write_yaml(directory / CONFIG_FILE, config)
    for attempt in range(3):
        # The port is free when picked; another process may take it before Prometheus binds it: then try another.
        port = _free_port()
        with (directory / LOG_FILE).open("wb") as log:
            process = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={directory / CONFIG_FILE}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    "--storage.tsdb.retention.time=1h",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        server = PrometheusServer(process, f"http://127.0.0.1:{port}", directory)
        try:
            try:
                _wait_until_ready(server, ready_timeout)
            except PrometheusError:
                if attempt < 2 and "address already in use" in server.log():
                    continue
                raise
            yield server
            return
        finally:
            process.kill()
            process.wait(timeout=30)


def write_file_sd(path: Path, groups: Sequence[Mapping[str, Any]]) -> None:
    """Writes a file_sd JSON file atomically (rename), so Prometheus never reads half of one."""
    _write_json(path, list(groups))


def _wait_until_ready(server: PrometheusServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            log = server.log()
            raise PrometheusError(
                f"Prometheus exited ({server.process.returncode}) before ready:\n{_errors(log)}\nIts log:\n{log}"
            )
        try:
            with _HTTP.open(server.url + "/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise PrometheusError(f"Prometheus was not ready after {timeout} s:\n{server.log()}")
        time.sleep(0.1)


def _errors(log: str) -> str:
    """The log's error lines (Prometheus logs logfmt: `level=error`)."""
    return "\n".join(line for line in log.splitlines() if " level=error " in line)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_files(directory: Path, files: Mapping[str, Any] | Mapping[Path, Any]) -> None:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            _write_json(path, content)
        else:
            _write_yaml(path, content)


def _write_json(path: Path, content: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=1))
    os.replace(temporary, path)


def _write_yaml(path: Path, content: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(yaml.safe_dump(content, sort_keys=False))
    os.replace(temporary, path)

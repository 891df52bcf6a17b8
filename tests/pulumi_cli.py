"""The Pulumi CLI's stack config, as `pulumi config set` fills it, so tests give the program config the way a
user's commands store it instead of hand-made values.

Rules modelled (pulumi/pulumi 3.x, sdk/go/common/resource/config/map.go and key.go):
- A top-level key stores the text as typed, `--path` or not: `pulumi config set workers 4` stores "4".
- Below the top level (`--path 'a[0].b' v`), "true" and "false" become booleans and whole numbers that
  `strconv.Atoi` accepts become integers, except text of two or more characters starting with "0" ("007"), which
  stays text (adjustObjectValue). Everything else, "1.5" and "1e3" included, stays text.
- Path segments: `name`, `.name`, `[0]` (a list index; the list grows by one at its end) and `["quoted.key"]`.
- The program receives each top-level key as text: objects and lists as JSON.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

_SEGMENT = re.compile(r'\.?(?P<name>[^.\[\]"]+)|\[(?P<index>[0-9]+)\]|\["(?P<quoted>(?:[^"\\]|\\.)*)"\]')
_ATOI = re.compile(r"^[+-]?[0-9]+$")
_INT64 = range(-(2**63), 2**63)


def path_segments(path: str) -> list[str | int]:
    """`workerGroups[0].nodeSelector["nvidia.com/gpu.present"]` -> ["workerGroups", 0, "nodeSelector", "nvidia..."]."""
    segments: list[str | int] = []
    position = 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None or (position == 0 and match["name"] is None) or (position == 0 and path.startswith(".")):
            raise ValueError(f"invalid config path {path!r} at {position}")
        if match["index"] is not None:
            segments.append(int(match["index"]))
        else:
            segments.append(match["name"] if match["name"] is not None else json.loads(f'"{match["quoted"]}"'))
        position = match.end()
    return segments


def typed_value(text: str) -> bool | int | str:
    """What `--path` stores for a value below the top level."""
    if text in ("true", "false"):
        return text == "true"
    if len(text) > 1 and text[0] == "0":
        return text
    if _ATOI.match(text) and int(text) in _INT64:
        return int(text)
    return text


@dataclass
class StackConfig:
    """One stack's `Pulumi.<stack>.yaml` config, built by CLI commands."""

    values: dict[str, Any] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)

    def set(self, key: str, value: str, *, path: bool = False, secret: bool = False) -> StackConfig:
        """`pulumi config set [--path] [--secret] key value`."""
        segments = path_segments(key) if path else [key]
        top = segments[0]
        assert isinstance(top, str)
        if secret:
            self.secrets.add(top)
        if len(segments) == 1:
            self.values[top] = value
            return self
        container: Any = self.values
        for segment, following in itertools.pairwise(segments):
            container = self._child(container, segment, [] if isinstance(following, int) else {})
        self._assign(container, segments[-1], typed_value(value))
        return self

    def run(self, command: str) -> StackConfig:
        """A `pulumi config set ...` command line, as in the README."""
        words = shlex.split(command)
        if words[:3] != ["pulumi", "config", "set"]:
            raise ValueError(f"not a `pulumi config set` command: {command}")
        flags = {word for word in words[3:] if word.startswith("--")}
        arguments = [word for word in words[3:] if not word.startswith("--")]
        if not flags <= {"--path", "--secret"} or len(arguments) != 2:
            raise ValueError(f"unsupported command: {command}")
        return self.set(arguments[0], arguments[1], path="--path" in flags, secret="--secret" in flags)

    def program_config(self) -> dict[str, object]:
        """Top-level keys as tests.program.render takes them: text as it is, objects and lists (which it sends as
        JSON, as the CLI does)."""
        return dict(self.values)

    @staticmethod
    def _child(container: Any, segment: str | int, empty: Any) -> Any:
        if isinstance(segment, int):
            if not isinstance(container, list):
                raise ValueError(f"index [{segment}] into a non-list")
            if segment > len(container):
                raise ValueError(f"index [{segment}] out of range")
            if segment == len(container):
                container.append(empty)
            return container[segment]
        if not isinstance(container, dict):
            raise ValueError(f"key {segment!r} into a non-object")
        return container.setdefault(segment, empty)

    @staticmethod
    def _assign(container: Any, segment: str | int, value: object) -> None:
        if isinstance(segment, int):
            if segment == len(container):
                container.append(value)
            elif segment < len(container):
                container[segment] = value
            else:
                raise ValueError(f"index [{segment}] out of range")
        else:
            container[segment] = value

"""What a worker printed, read as the platform reads it: its JSON lines on stdout."""

from __future__ import annotations

import json


class WorkerOutput:
    """The messages of a worker's `stdout` (a field of the class that mixes this in)."""

    stdout: str

    @property
    def messages(self) -> list[dict]:
        lines = []
        for line in self.stdout.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                lines.append(value)
        return lines

    @property
    def errors(self) -> list[dict]:
        return [m for m in self.messages if m.get("error")]

    @property
    def warnings(self) -> list[dict]:
        return [m for m in self.messages if m.get("warning")]

    @property
    def progress(self) -> list[dict]:
        return [m for m in self.messages if "progress" in m and not m.get("error")]

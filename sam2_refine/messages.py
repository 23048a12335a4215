"""The platform's stdout messages (one JSON object per line), with the token kept out.

The SDK's WorkerContext writes the lines in the platform's format; this adds what a
long job needs: progress that is not repeated needlessly, and redaction of the job's
token from every text that leaves the process.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter

REDACTED = "<token>"


class Redactor:
    def __init__(self, secrets: list[str]):
        self._secrets = [s for s in secrets if s]

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def line(self, text: str | None) -> str | None:
        """Redacted, on one line: the app parses the log line by line."""
        text = self(text)
        return None if text is None else " ".join(text.splitlines())


class Reporter:
    """Progress, warnings and errors for the job log and the app; safe to use from the
    pipeline's threads (each message stays one whole line)."""

    TITLE = "SAM2 Refiner"

    def __init__(self, context, redact: Redactor):
        self._context = context
        self._redact = redact
        self._last_percent = -1
        self._lock = threading.RLock()

    def progress(self, fraction: float, info: str = "", force: bool = False) -> None:
        fraction = min(1.0, max(0.0, fraction))
        percent = int(fraction * 100)
        with self._lock:
            if percent == self._last_percent and not force:
                return
            self._last_percent = percent
            self._context.progress(round(fraction, 4), self.TITLE, self._redact.line(info))

    def warning(self, message: str, info: str | None = None) -> None:
        with self._lock:
            self._context.warning(self._redact.line(message), info=self._redact.line(info))

    def error(self, message: str, info: str | None = None, title: str = "Error") -> None:
        with self._lock:
            self._context.error(self._redact.line(message), title=title, info=self._redact.line(info))

    def log(self, text: str) -> None:
        """A plain line for the job log (stderr); the app ignores it."""
        with self._lock:
            print(self._redact(text), file=sys.stderr, flush=True)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def skipped_summary(reasons: Counter) -> str:
    """'5 empty masks, 3 outside the image' — reasons in order of count."""
    parts = []
    for reason, count in reasons.most_common():
        parts.append(plural(count, reason) if reason.endswith(("mask", "prompt")) else f"{count} {reason}")
    return ", ".join(parts)

"""Errors that end a job with a message the user can act on."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_INVALID_INPUT = 2


class WorkerError(Exception):
    """A failure reported to the user as the platform's error line.

    `message` is the one-line error; `info` tells the user what to do.
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, info: str | None = None, title: str = "Error"):
        super().__init__(message)
        self.message = message
        self.info = info
        self.title = title


class ParameterError(WorkerError):
    """The job's parameters or the dataset rule the job out; nothing was written."""

    exit_code = EXIT_INVALID_INPUT

    def __init__(self, field: str, message: str, fix: str):
        super().__init__(f"{field}: {message}", info=fix, title=f"Invalid {field}")
        self.field = field

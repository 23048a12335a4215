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


def unexpected(error: BaseException) -> WorkerError:
    """A failure the worker has no words of its own for, as the job reports it."""
    return WorkerError(f"Unexpected error: {type(error).__name__}: {error}",
                       info="This is a bug in SAM2 Refiner; the job log has the details.")


class ParameterError(WorkerError):
    """The job's parameters or the dataset rule the job out; nothing was written."""

    exit_code = EXIT_INVALID_INPUT

    def __init__(self, field: str, message: str, fix: str):
        super().__init__(f"{field}: {message}", info=fix, title=f"Invalid {field}")
        self.field = field

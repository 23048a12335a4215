"""SAM2 Refiner: the command line the NimbusImage platform runs.

    python entrypoint.py --apiUrl URL --token TOKEN --request {interface,compute}
                         --parameters JSON [--datasetId ID]

Exit status: 0 done (skipped objects are warnings), 1 the job failed, 2 invalid input,
143 cancelled (SIGTERM, the platform's cancel). Every way the job ends, from the first
line of this file on, ends with the platform's JSON line on stdout (an error, or the
final progress); tracebacks go to stderr.

For `compute`, torch, sam2 and the predictor load in a background thread as soon as the
worker has accepted the parameters (so a refused job never loads torch) while the job
reads its annotations, and the process ends with os._exit once its last message is
flushed: tearing down torch's modules takes about a second and there is nothing left to save.
"""

from __future__ import annotations

import signal


class Cancelled(BaseException):
    """SIGTERM (the platform's cancel); a BaseException so no error handler swallows it."""


_armed = False  # SIGTERM raises Cancelled (once) only after `main` is ready to report it
_cancelled = False


def _on_sigterm(signum, frame):
    global _armed, _cancelled
    _cancelled = True
    if _armed:
        _armed = False  # one Cancelled per process: reporting it cannot be interrupted again
        raise Cancelled()


# First, so that a cancel during the imports below is noted and reported, not a bare kill.
signal.signal(signal.SIGTERM, _on_sigterm)

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from sam2_refine.errors import EXIT_INVALID_INPUT, WorkerError, unexpected  # noqa: E402
from sam2_refine.messages import Redactor  # noqa: E402

EXIT_CANCELLED = 143
CANCEL_MESSAGE = ("The job was cancelled", "Anything saved before the cancel is kept.", "Cancelled")


class _Lines:
    """The platform's JSON lines for this process: through the job's Reporter once there
    is one, written directly (the same format) before that; the token always redacted."""

    def __init__(self) -> None:
        self.reporter = None
        self.redact = Redactor([])  # the job's token, once the command line is read
        self.cancel_reported = False

    def error(self, message: str, info: str | None, title: str) -> None:
        if self.reporter is not None:
            self.reporter.error(message, info=info, title=title)
            return
        line = {"error": self.redact.line(message), "title": title, "info": self.redact.line(info), "type": "error"}
        print(json.dumps(line), flush=True)

    def log(self, text: str) -> None:
        print(self.redact(text), file=sys.stderr, flush=True)

    def cancel(self) -> None:
        """The cancel's line, once; it starts on a line of its own whatever was cut off."""
        if self.cancel_reported:
            return
        self.cancel_reported = True
        sys.stdout.write("\n")
        message, info, title = CANCEL_MESSAGE
        self.error(message, info, title)


LINES = _Lines()


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _Refused(f"Invalid command line: {message}", "The platform passes --apiUrl, --token, --request, "
                                                           "--parameters and --datasetId.")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = _ArgumentParser(description="Refine tagged polygons with SAM2 (a NimbusImage worker).")
    parser.add_argument("--apiUrl", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--request", required=True)
    parser.add_argument("--parameters", required=True)
    parser.add_argument("--datasetId", default=None)
    return parser.parse_args(argv)


def _build_predictor(checkpoint: Path):
    """SAM2, or the predictor factory named by SAM2_REFINE_PREDICTOR ("module:callable"),
    the seam through which tests run the whole worker with a known-mask oracle."""
    factory_name = os.environ.get("SAM2_REFINE_PREDICTOR")
    if factory_name:
        module_name, _, attribute = factory_name.partition(":")
        return getattr(importlib.import_module(module_name), attribute)(checkpoint)
    from sam2_refine.model import Sam2Predictor

    return Sam2Predictor(checkpoint)


class Preload:
    """The predictor for `checkpoint`, built in a background thread from the start of the
    job; `get` waits for it and raises what building it raised."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self._predictor = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, name="preload-predictor", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            self._predictor = _build_predictor(self.checkpoint)
        except BaseException as error:  # re-raised in the main thread by `get`
            self._error = error

    def get(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._predictor


_preload: Preload | None = None
_request: str | None = None  # the parsed --request, for the way the process exits


def start_preload(checkpoint: Path) -> None:
    """Start building the predictor for `checkpoint` in the background; the worker calls
    this once the parameters are accepted, so a refused job never loads torch."""
    global _preload
    _preload = Preload(Path(checkpoint))


def _load_predictor(checkpoint: Path):
    """The predictor for `checkpoint`: the preloaded one when it is for that file."""
    if _preload is not None and Path(checkpoint) == _preload.checkpoint:
        return _preload.get()
    return _build_predictor(Path(checkpoint))


def run(args: argparse.Namespace, parameters: dict, reporter, platform) -> None:
    from sam2_refine import worker

    if args.request == "interface":
        worker.run_interface(platform, str(parameters.get("image") or ""), reporter)
    elif args.request == "compute":
        worker.run_compute(platform, parameters, args.datasetId, reporter, _load_predictor, start_preload)
    else:
        reporter.log(f"request {args.request!r} is not handled by this worker; nothing to do")


def _start(argv: list[str]):
    """The command line, settings and platform connection; raises what stops the job."""
    global _request
    args = parse_arguments(argv)
    LINES.redact = Redactor([args.token])
    _request = args.request
    try:
        parameters = json.loads(args.parameters)
        if not isinstance(parameters, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        raise _Refused(f"--parameters is not a JSON object: {error}",
                       "The platform sends the job's parameters as JSON.") from None

    from sam2_refine import nimbus
    from sam2_refine.messages import Reporter

    nimbus.configure(os.environ)
    try:
        platform = nimbus.Platform(args.apiUrl, args.token, args.datasetId, parameters)
    except ValueError as error:
        raise WorkerError(f"Could not connect to the platform: {error}", info="Check the --apiUrl the platform "
                                                                              "passes.") from error
    LINES.reporter = Reporter(platform.context, LINES.redact)
    return args, parameters, LINES.reporter, platform


class _Refused(Exception):
    """The command line itself is unusable (exit 2)."""

    def __init__(self, message: str, info: str):
        super().__init__(message)
        self.message, self.info = message, info


def main(argv: list[str] | None = None) -> int:
    global _armed
    _armed = True
    if _cancelled:  # SIGTERM arrived while this file was still importing
        _armed = False
        raise Cancelled()
    try:
        args, parameters, reporter, platform = _start(sys.argv[1:] if argv is None else argv)
        run(args, parameters, reporter, platform)
        return 0
    except _Refused as refused:
        LINES.error(refused.message, refused.info, "Error")
        return EXIT_INVALID_INPUT
    except (Cancelled, KeyboardInterrupt):
        LINES.cancel()
        return EXIT_CANCELLED
    except Exception as error:
        LINES.log("".join(traceback.format_exception(error)))
        failure = error if isinstance(error, WorkerError) else unexpected(error)
        LINES.error(failure.message, failure.info, failure.title)
        return failure.exit_code


def exit_process(status: int, fast: bool) -> None:
    """Exit with `status`; `fast`: flush stdout and stderr, then skip interpreter teardown."""
    global _armed
    _armed = False
    if _cancelled:  # a cancel that came while the job's end was being reported
        LINES.cancel()
        status = EXIT_CANCELLED
    if fast:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    try:
        status = main()
    except Cancelled:  # raised between main's own handlers, or while one was reporting
        LINES.cancel()
        status = EXIT_CANCELLED
    exit_process(status, fast=_request == "compute")

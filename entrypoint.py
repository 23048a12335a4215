"""SAM2 Refiner: the command line the NimbusImage platform runs.

    python entrypoint.py --apiUrl URL --token TOKEN --request {interface,compute}
                         --parameters JSON [--datasetId ID]

Exit status: 0 done (skipped objects are warnings), 1 the job failed, 2 invalid input.
Errors go to stdout as the platform's JSON error line; tracebacks go to stderr.

For `compute`, torch, sam2 and the predictor load in a background thread as soon as the
worker has accepted the parameters (so a refused job never loads torch) while the job
reads its annotations, and the process ends with os._exit once its last message is
flushed: tearing down torch's modules takes about a second and there is nothing left to save.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from sam2_refine.errors import EXIT_FAILED, EXIT_INVALID_INPUT, WorkerError
from sam2_refine.messages import Redactor, Reporter

EXIT_CANCELLED = 143


class Cancelled(BaseException):
    """SIGTERM (the platform's cancel); a BaseException so no error handler swallows it."""


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Refine tagged polygons with SAM2 (a NimbusImage worker).")
    parser.add_argument("--apiUrl", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--request", required=True)
    parser.add_argument("--parameters", required=True)
    parser.add_argument("--datasetId", default=None)
    return parser.parse_args(argv)


def _on_sigterm(signum, frame):
    raise Cancelled()


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


def run(args: argparse.Namespace, parameters: dict, reporter: Reporter, platform) -> None:
    from sam2_refine import worker

    if args.request == "interface":
        worker.run_interface(platform, str(parameters.get("image") or ""), reporter)
    elif args.request == "compute":
        worker.run_compute(platform, parameters, args.datasetId, reporter, _load_predictor, start_preload)
    else:
        reporter.log(f"request {args.request!r} is not handled by this worker; nothing to do")


def main(argv: list[str] | None = None) -> int:
    global _request
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    _request = args.request
    redact = Redactor([args.token])
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        parameters = json.loads(args.parameters)
        if not isinstance(parameters, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        print(json.dumps({"error": f"--parameters is not a JSON object: {error}", "title": "Error",
                          "info": "The platform sends the job's parameters as JSON.", "type": "error"}), flush=True)
        return EXIT_INVALID_INPUT

    from sam2_refine.nimbus import Platform

    platform = Platform(args.apiUrl, args.token, args.datasetId, parameters)
    reporter = Reporter(platform.context, redact)
    try:
        run(args, parameters, reporter, platform)
        return 0
    except WorkerError as error:
        reporter.log("".join(traceback.format_exception(error)))
        reporter.error(error.message, info=error.info, title=error.title)
        return error.exit_code
    except (Cancelled, KeyboardInterrupt):
        reporter.error("The job was cancelled", info="Anything saved before the cancel is kept.", title="Cancelled")
        return EXIT_CANCELLED
    except Exception as error:
        reporter.log("".join(traceback.format_exception(error)))
        reporter.error(
            f"Unexpected error: {type(error).__name__}: {error}",
            info="This is a bug in SAM2 Refiner; the job log has the details.",
        )
        return EXIT_FAILED


def exit_process(status: int, fast: bool) -> None:
    """Exit with `status`; `fast`: flush stdout and stderr, then skip interpreter teardown."""
    if fast:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    status = main()
    exit_process(status, fast=_request == "compute")

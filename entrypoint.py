"""SAM2 Refiner: the command line the NimbusImage platform runs.

    python entrypoint.py --apiUrl URL --token TOKEN --request {interface,compute}
                         --parameters JSON [--datasetId ID]

Exit status: 0 done (skipped objects are warnings), 1 the job failed, 2 invalid input.
Errors go to stdout as the platform's JSON error line; tracebacks go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import traceback

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


def _load_predictor(checkpoint):
    """SAM2, or the predictor factory named by SAM2_REFINE_PREDICTOR ("module:callable"),
    the seam through which tests run the whole worker with a known-mask oracle."""
    factory_name = os.environ.get("SAM2_REFINE_PREDICTOR")
    if factory_name:
        module_name, _, attribute = factory_name.partition(":")
        return getattr(importlib.import_module(module_name), attribute)(checkpoint)
    from sam2_refine.model import Sam2Predictor

    return Sam2Predictor(checkpoint)


def run(args: argparse.Namespace, parameters: dict, reporter: Reporter, platform) -> None:
    from sam2_refine import worker

    if args.request == "interface":
        worker.run_interface(platform, str(parameters.get("image") or ""), reporter)
    elif args.request == "compute":
        worker.run_compute(platform, parameters, args.datasetId, reporter, _load_predictor)
    else:
        reporter.log(f"request {args.request!r} is not handled by this worker; nothing to do")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
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


if __name__ == "__main__":
    sys.exit(main())

"""Predictor factories (SAM2_REFINE_PREDICTOR) that cancel the worker at a chosen moment."""

from __future__ import annotations

import os
import signal

from sam2_refine.errors import WorkerError


def fail_and_cancel_while_reporting(checkpoint):
    """Fail to build, and send the cancel as the job starts reporting that failure."""
    from sam2_refine import messages

    report_error = messages.Reporter.error

    def error(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return report_error(self, *args, **kwargs)

    messages.Reporter.error = error
    raise WorkerError(f"Model {checkpoint.name} could not be loaded: broken on purpose", info="reinstall it")

"""Loaded at interpreter start when tests/hooks is on PYTHONPATH: sends this process the
platform's cancel (SIGTERM) the moment the module named by CANCEL_ON_IMPORT is imported,
so a test can cancel the worker at an exact point of its start-up."""

import os
import signal
import sys


class _CancelOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("CANCEL_ON_IMPORT"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None


if os.environ.get("CANCEL_ON_IMPORT"):
    sys.meta_path.insert(0, _CancelOnImport())

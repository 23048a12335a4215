"""How the process ends, as the platform runs it: every start-up error and every cancel
ends with the platform's JSON line and the documented exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, cells, compute_parameters, oracle_env, run_worker, seed

WRITES = ("POST", "PUT", "DELETE")


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_a_setting_that_is_not_a_number_ends_with_the_error_line_not_a_traceback(server, oracle_checkpoint_dir,
                                                                                 tmp_path):
    dataset_id, _ = seed(server)
    run = run_worker(server, "compute", compute_parameters(dataset_id), oracle_checkpoint_dir, dataset_id,
                     extra_env={**oracle_env(tmp_path, cells()), "SAM2_REFINE_HTTP_TIMEOUT": "2m"})
    assert run.returncode == 1
    [error] = json_lines(run.stdout)  # every line of stdout is the platform's JSON
    assert error["title"] == "Invalid setting" and "SAM2_REFINE_HTTP_TIMEOUT is '2m'" in error["error"]
    assert not [entry for entry in server.request_log if entry[0] in WRITES]


def test_a_command_line_missing_an_argument_ends_with_the_error_line(server):
    completed = subprocess.run(
        [sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--request", "compute",
         "--parameters", "{}"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert completed.returncode == 2
    [error] = json_lines(completed.stdout)
    assert "--token" in error["error"] and error["type"] == "error"


def test_a_cancel_while_a_failure_is_reported_ends_as_a_cancel(server, oracle_checkpoint_dir):
    dataset_id, _ = seed(server)
    run = run_worker(server, "compute", compute_parameters(dataset_id), oracle_checkpoint_dir, dataset_id,
                     extra_env={"SAM2_REFINE_PREDICTOR": "tests.cancel_hooks:fail_and_cancel_while_reporting"})
    assert run.returncode == 143, run.stdout + run.stderr
    lines = json_lines(run.stdout)
    assert lines[-1]["title"] == "Cancelled" and lines[-1]["error"] == "The job was cancelled"
    assert "Traceback" not in run.stdout


def test_a_cancel_during_start_up_ends_as_a_cancel(server, oracle_checkpoint_dir):
    dataset_id, _ = seed(server)
    hooks = str(REPO / "tests" / "hooks")
    run = run_worker(server, "compute", compute_parameters(dataset_id), oracle_checkpoint_dir, dataset_id,
                     extra_env={"PYTHONPATH": os.pathsep.join([hooks, os.environ.get("PYTHONPATH", "")]),
                                "CANCEL_ON_IMPORT": "sam2_refine.errors"})
    assert run.returncode == 143, run.stdout + run.stderr
    [cancel] = json_lines(run.stdout)
    assert cancel["title"] == "Cancelled"
    assert not server.request_log  # cancelled before it asked the platform anything


def test_an_unknown_request_writes_nothing(server, oracle_checkpoint_dir):
    dataset_id, _ = seed(server)
    before = server.annotations(dataset_id)
    run = run_worker(server, "preview", compute_parameters(dataset_id), oracle_checkpoint_dir, dataset_id)
    assert run.returncode == 0 and not run.errors
    assert not [entry for entry in server.request_log if entry[0] in WRITES]
    assert server.annotations(dataset_id) == before

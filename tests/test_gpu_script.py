"""benchmarks/gpu.sh and its parts, on the CPU: what can go wrong before a lent GPU's minutes
are spent (issue 26's "Read before any device run").

The script is run as the device tool runs it (bash, $OUT set, PYTHON the interpreter); the
probe is driven with a fake asynchronous GPU; the table, the checks and the wheel set are
judged on what a session with a device would read from them.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import gpu, gpu_record, gpu_table, gpu_wheels, probe
from benchmarks.run import AUTO, EXISTING, WHOLE, Result
from sam2_refine.seam import Window

REPO = Path(__file__).resolve().parents[1]
GPU_SH = REPO / "benchmarks" / "gpu.sh"
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def gpu_sh(tmp_path: Path, *arguments: str, timeout: float = 120, **environment: str) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **environment}
    return subprocess.run(["bash", str(GPU_SH), *arguments], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)


def results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "results.json").read_text())


# --- gpu.sh ------------------------------------------------------------------------------

def test_without_the_carried_wheels_it_refuses_at_once_and_says_how_to_carry_them(tmp_path):
    run = gpu_sh(tmp_path, GPU_WHEELS=str(tmp_path / "not-carried"))
    assert run.returncode == 3, run.stdout + run.stderr
    assert "REFUSED" in run.stdout and "gpu_wheels.sh" in run.stdout and 'carry: [".whl"]' in run.stdout
    assert results(tmp_path)["steps"]["setup"]["status"] == "refused"
    assert "## checks" not in run.stdout  # no step ran
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "setup.log", "summary.md"]


def test_a_module_that_cannot_be_imported_is_named_before_any_step(tmp_path):
    """orjson was missing from the wheels: the device tests and the table died on import."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "orjson.py").write_text("raise ModuleNotFoundError(\"No module named 'orjson'\", name='orjson')\n")
    run = gpu_sh(tmp_path, "--dry-run", PYTHONPATH=str(shadow))
    assert run.returncode == 3, run.stdout + run.stderr
    assert "cannot import: orjson (ModuleNotFoundError" in run.stdout
    # Each of the project's modules that needs it is named too: all that fails is in one reply.
    assert re.search(r"(sam2_refine\.worker|nimbus_server) \(ModuleNotFoundError: No module named 'orjson'", run.stdout)
    assert results(tmp_path)["steps"] == {"setup": {"status": "refused", "seconds": pytest.approx(0, abs=60),
                                                   "budget": 0.0, "log": "setup.log"}}
    assert "device" not in results(tmp_path)


def test_unknown_steps_are_refused_with_the_list_of_steps(tmp_path):
    run = gpu_sh(tmp_path, "--dry-run", "tabel")
    assert run.returncode == 2
    assert "setup checks tests micro table" in run.stderr


def test_the_step_budgets_leave_time_for_a_second_run():
    """Before: 180 + 120 + 300 s of timeouts, the whole 10-minute command limit, install not counted."""
    text = GPU_SH.read_text()
    budgets = dict(re.findall(r"\[(\w+)\]=(\d+)", re.search(r"declare -A BUDGET=\(([^)]*)\)", text).group(1)))
    total = int(re.search(r"TOTAL=\$\{GPU_TOTAL_SECONDS:-(\d+)\}", text).group(1))
    assert set(budgets) == {"setup", "checks", "tests", "micro", "table"}
    assert sum(int(b) for b in budgets.values()) <= total <= 360  # two runs and a start-up within 15 minutes


def test_the_dry_run_writes_each_steps_log_and_the_json_table_as_the_device_tool_brings_them_back(tmp_path):
    """The setup and table steps on the CPU: the files under $OUT, the versions, the table's rows."""
    # The carried wheels' manifest as gpu_wheels.sh writes it (.whl/ itself is git-ignored:
    # a clean clone has none), listing packages the pins do not name.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "MANIFEST.txt").write_text("".join(
        f"{name}=={metadata.version(name)}\n" for name in ("orjson", "pydantic", "typing-extensions")))
    run = gpu_sh(tmp_path, "--dry-run", "setup", "table", timeout=900, GPU_WHEELS=str(wheels))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["results.json", "setup.log", "summary.md", "table.log"]
    assert len(files) <= 8 and all(OUT_NAME.match(name) for name in files)  # what the device tool brings back
    found = results(tmp_path)
    assert found["dry_run"] is True
    assert {name: step["status"] for name, step in found["steps"].items()} == {"setup": "passed", "table": "passed"}
    versions = {v["name"]: v for v in found["versions"]}
    assert {"orjson", "typing-extensions", "pydantic", "sam2", "torch"} <= set(versions)
    assert all(v["installed"] == v["pinned"] for v in versions.values())
    rows = {r["implementation"]: r for r in found["table"]}
    assert set(rows) == {WHOLE, AUTO, EXISTING}
    for r in rows.values():
        assert r["returncode"] == 0 and r["created"] == r["count"] == 20, r
        assert r["objects_per_s_after_startup"] > r["objects_per_s_end_to_end"] > 0
        assert 0 < r["startup_s"] < r["total_s"] and r["model_s"] > 0 and r["job_over_model"] > 0
    assert rows[WHOLE]["encode_windows_per_call"] == [1]  # through the probe's encode_batch
    assert rows[WHOLE]["worker_stages"]["outline"] >= 0 and "vs_existing" in rows[AUTO]
    assert len(found["goals"]) == 2
    summary = (out / "summary.md").read_text()
    assert "## GPU table" in summary and "dry run on the CPU" in summary
    assert summary in run.stdout  # printed last, where the device tool's output_tail shows it


# --- the probe: batched encoding, and CUDA's asynchronous launches -----------------------

class FakeGpu:
    """A GPU whose launches return at once: queued seconds pass on the clock at synchronize."""

    def __init__(self) -> None:
        self.now = 100.0
        self.queued = 0.0

    def launch(self, seconds: float) -> None:
        self.queued += seconds

    def synchronize(self) -> None:
        self.now += self.queued
        self.queued = 0.0


class FakePredictor:
    """encode / decode_low_res over a FakeGpu: encoding queues 5 s, decoding 0.5 s and reads the
    result back (which waits, as .cpu() does)."""

    def __init__(self, fake: FakeGpu) -> None:
        self.gpu = fake
        self.current = None
        self.decode_batch_size = 8

    def encode(self, window_image, window) -> None:
        self.gpu.launch(5.0)
        self.current = window

    def decode_low_res(self, boxes):
        self.gpu.launch(0.5)
        self.gpu.synchronize()
        return np.zeros((len(boxes), 256, 256), np.float32)


class FakeBatchPredictor(FakePredictor):
    def __init__(self, fake: FakeGpu) -> None:
        super().__init__(fake)
        self.encode_batch_size = 1

    def encode_batch(self, window_images, windows):
        self.gpu.launch(5.0 * len(windows))
        self.encode_batch_size = 4  # sized from the first batch's measured peak
        return [("encoding", window) for window in windows]

    def use(self, encoded) -> None:
        self.current = encoded[1]


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fresh probe clock reading the fake GPU's time, and torch.cuda synchronising it."""
    import torch

    fake = FakeGpu()
    monkeypatch.setattr(probe, "CLOCK", probe.Clock())
    monkeypatch.setattr(probe, "time", SimpleNamespace(perf_counter=lambda: fake.now, time=lambda: fake.now))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: fake.synchronize())
    return fake


def test_encoder_time_is_counted_as_encoding_when_the_gpu_runs_asynchronously(fake_gpu):
    timed = probe.TimedPredictor(FakePredictor(fake_gpu), None)
    boxes = np.array([[1, 1, 5, 5]], np.float32)
    timed.encode(np.zeros((8, 8, 3), np.float32), Window(0, 0, 8, 8))
    timed.decode(boxes)
    timed.decode(boxes)
    assert probe.CLOCK.seconds["encode"] == pytest.approx(5.0)
    assert probe.CLOCK.seconds["decode"] == pytest.approx(1.0)


def test_batched_encoding_goes_through_the_probe_as_the_pipeline_uses_it(fake_gpu):
    from sam2_refine.seam import adapt

    inner = FakeBatchPredictor(fake_gpu)
    timed = probe.wrap(inner, None)
    adapted = adapt(timed)
    assert adapted.batches and adapted.encode_batch_size == 1
    windows = [Window(0, 0, 8, 8), Window(8, 0, 8, 8), Window(16, 0, 8, 8)]
    encoded = timed.encode_batch([np.zeros((8, 8, 3), np.float32)] * 3, windows)
    assert adapted.encode_batch_size == 4  # what the real predictor sized after its first batch
    timed.use(encoded[1])
    assert inner.current == windows[1]
    timed.decode(np.array([[1, 1, 5, 5]], np.float32))
    assert probe.CLOCK.seconds["encode"] == pytest.approx(15.0)
    assert probe.CLOCK.seconds["decode"] == pytest.approx(0.5)
    assert probe.CLOCK.values["encode_windows"] == [3]


def test_a_predictor_without_batches_or_sizes_stays_without_them_behind_the_probe(fake_gpu):
    from sam2_refine.seam import adapt

    inner = FakePredictor(fake_gpu)
    del inner.decode_batch_size
    timed = probe.wrap(inner, None)
    assert not adapt(timed).batches
    assert not hasattr(timed, "encode_batch_size") and not hasattr(timed, "device_warning")
    assert adapt(timed).decode_batch_size == adapt(inner).decode_batch_size


def test_the_peak_gpu_memory_reaches_the_table(fake_gpu, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 4 * 2**30)
    monkeypatch.setenv("BENCH_TIMINGS", str(tmp_path / "timings.json"))
    probe.write_timings()
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["values"]["gpu_peak_allocated_mb"] == [3072]
    entry = gpu_table.row(finished_run(WHOLE, total=4.0), "tiny", 2048, 1000, timings, 60)
    assert entry["peak_gpu_mb"] == 3072 and entry["peak_gpu_reserved_mb"] == 4096


# --- the table's figures -----------------------------------------------------------------

def finished_run(implementation: str, total: float, startup: float = 2.0, encode: float = 0.1,
                 decode: float = 0.2) -> Result:
    stages = {"to_first_encode": startup, "model": 1.5, "fetch": 0.1, "encode": encode, "decode": decode,
              "geometry": 0.3, "upload": 0.1, "substitute": 0.05, "stage:outline": 0.3, "stage:write": 0.1}
    return Result("2048² × 1000 tiny", implementation, 1000, 0, total, 900.0, 1000, stages, {"encode": 1, "decode": 16})


def test_the_table_gives_rates_after_start_up_the_model_against_the_job_and_the_goals():
    rows = [gpu_table.row(finished_run(WHOLE, total=2.1), "tiny", 2048, 1000, {}, 60),
            gpu_table.row(finished_run(AUTO, total=3.0, encode=0.2), "tiny", 2048, 1000, {}, 60),
            gpu_table.row(finished_run(EXISTING, total=42.0), "tiny", 2048, 1000, {}, 60)]
    gpu_table.compare_with_existing(rows)
    whole, auto, _ = rows
    assert whole["objects_per_s_after_startup"] == pytest.approx(10000)  # 1000 objects in 0.1 s after start-up
    assert whole["objects_per_s_end_to_end"] == pytest.approx(1000 / 2.1, abs=0.1)
    assert whole["job_over_model"] == pytest.approx(0.1 / 0.3, abs=0.01)
    assert auto["objects_per_s_after_startup"] == pytest.approx(1000)
    assert whole["vs_existing"] == "20.0× as fast" and whole["worker_stages"] == {"outline": 0.3, "write": 0.1}
    goals = gpu_table.goal_lines(rows, 2048, 1000, dry_run=False)
    assert "10000 objects/s (goal >= 5000): MET" in goals[0]
    assert "1000 objects/s (goal >= 2000): MISSED" in goals[1]
    rendered = gpu_record.render({"table": rows, "goals": goals})
    assert "| 2048² × 1000 tiny | ours Whole frame | 10000.0 |" in rendered


def test_a_failed_or_unrun_row_keeps_its_reason():
    failed = Result("2048² × 1000 small", AUTO, 1000, -9, float("nan"), float("nan"), 0, note="exit -9: 'Killed'")
    entry = gpu_table.row(failed, "small", 2048, 1000, {}, 40)
    assert entry["returncode"] == -9 and "Killed" in entry["note"] and "objects_per_s_after_startup" not in entry
    assert "exit -9" in gpu_record.render({"table": [entry]})


# --- the checks: agreement that means something for trained weights, a batch size that can fail ----

def steep_logits(shift: float = 0.0) -> np.ndarray:
    """A trained model's logits around a disc: about 20 per pixel across its outline."""
    rows, cols = np.mgrid[0:80, 0:80] + 0.5
    return (20.0 * (25.0 - np.hypot(rows - 40, cols - 40 - shift))).astype(np.float32)


def test_bf16_rounding_of_steep_logits_agrees_and_a_pixel_shift_does_not():
    import torch

    reference = steep_logits()
    rounded = torch.from_numpy(reference).to(torch.bfloat16).float().numpy()
    assert np.abs(rounded - reference).max() > 0.05  # the old absolute tolerance would call this a failure
    assert gpu.agrees(gpu.agreement([reference] * 20, [rounded] * 20))
    shifted = gpu.agreement([reference] * 20, [steep_logits(shift=1.0)] * 20)
    assert not gpu.agrees(shifted) and shifted["moved_share"] > 0.5


class _Encoder:
    def __init__(self, size: int) -> None:
        self.encode_batch_size = size

    def encode(self, image, window) -> None:
        pass

    def encode_batch(self, images, windows) -> list:
        return [None] * len(images)


@pytest.mark.parametrize(("free_gib", "batch_size", "passes"), [
    (80, 8, True),    # room for 40 windows of 1 GiB in half the free memory, 8 taken
    (80, 1, False),   # room, but one window at a time: the sizing did not happen
    (6, 8, False),    # room for 3: 8 would not fit in half the free memory
    (1.5, 1, True),   # no room for two: one at a time is right
])
def test_the_encoder_batch_check_can_fail(monkeypatch, free_gib, batch_size, passes):
    """Before: `encode_batch_size >= 1`, true of every predictor."""
    import torch

    allocated = {"now": 0, "peak": 0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * 2**30), 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: allocated.update(peak=0))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2**30)  # 1 GiB a window
    checks = gpu.Checks(None)
    gpu.cuda_memory_checks(checks, _Encoder(batch_size), [np.zeros((8, 8, 3), np.float32)], [Window(0, 0, 8, 8)])
    assert checks.found[0]["name"] == "encoder batch sized from the measured peak"
    assert (checks.found[0]["status"] == "pass") is passes, checks.found[0]


# --- the wheel set -----------------------------------------------------------------------

def third_party_modules() -> set[str]:
    """Top-level modules imported anywhere in the code gpu.sh runs, other than the project's own."""
    own = {"sam2_refine", "nimbus_server", "benchmarks", "tests", "demo", "scripts"}
    found = set()
    for folder in ("sam2_refine", "nimbus_server", "benchmarks", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {name for name in found - own if name not in sys.stdlib_module_names}


def test_the_wheels_carry_every_imported_package_the_device_image_does_not_bring():
    carried, left_out = gpu_wheels.plan()
    distributions = metadata.packages_distributions()
    needed = {gpu_wheels.canonicalize_name(distributions[module][0]) for module in third_party_modules()}
    assert needed - set(carried) <= gpu_wheels.DEVICE_STACK, "not carried and not on the device"
    assert carried["orjson"] == "3.13.0"
    # pydantic needs a newer typing-extensions than an image may hold: carried at the venv's version.
    assert carried["typing-extensions"] == metadata.version("typing-extensions")
    assert "torch" in left_out and "torch" not in carried and "nvidia-cublas" not in carried


def test_a_venv_that_does_not_match_the_pins_stops_the_wheel_set():
    with pytest.raises(SystemExit, match="orjson 3.13.0 is installed, requirements pin 3.9.0"):
        gpu_wheels.plan({"orjson": "3.9.0"})


def test_wheel_file_names_give_the_project_names_of_the_manifest():
    assert gpu_wheels.wheel_name("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl") == "pydantic-core"
    assert gpu_wheels.wheel_name("antlr4_python3_runtime-4.9.3-py3-none-any.whl") == "antlr4-python3-runtime"


def test_the_checks_read_cropped_decodes_as_the_engine_does(tiny_checkpoint_dir):
    """gpu.py's agreement checks compare each object's logits over its search area: read
    from the crops a predictor gives (the per-area decode) and from the whole grid, they
    are the same SAM2 mask, as the engine reads them (the checks once read crops as whole
    grids: the dry run's agreement checks failed, and a device run would have too)."""
    from benchmarks.precision import frame_image
    from benchmarks.workload import make_workload
    from sam2_refine.engine import prompt_box
    from sam2_refine.model import Sam2Predictor

    size = 512
    workload = make_workload(size, 12)
    image = frame_image(workload.image)
    boxes = [prompt_box(outline, size, size) for outline in workload.outlines]
    window, members = Window(0, 0, size, size), list(range(len(boxes)))
    predictor = Sam2Predictor(tiny_checkpoint_dir / "sam2.1_hiera_tiny.pt", device="cpu", precision="fp32")
    assert predictor.crop_upscaling  # the CPU decodes each box's area only
    by_area = gpu.logits_by_object(predictor, image, window, boxes, members, size)
    predictor.crop_upscaling = False
    whole = gpu.logits_by_object(predictor, image, window, boxes, members, size)
    stats = gpu.agreement(by_area, whole)
    assert gpu.agrees(stats) and stats["flipped"] == 0, gpu.agreement_text(stats)

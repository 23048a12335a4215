"""Where the model runs: the CPUs a container may use, and why a GPU image found no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from sam2_refine.device import (
    EXPECT_GPU_VARIABLE,
    choose_device,
    cgroup_cpu_quota,
    read_driver_version,
    usable_cpu_count,
    why_no_gpu,
)
from tests.conftest import TINY, cells, compute_parameters, frames, run_worker

EIGHT_CPUS = set(range(8))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cgroup_v2(tmp_path: Path, cpu_max: str, path: str = "/") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    write(root.joinpath(*[p for p in path.split("/") if p], "cpu.max"), cpu_max)
    membership = tmp_path / "proc_self_cgroup"
    write(membership, f"0::{path}\n")
    return root, membership


def test_v2_quota_of_one_and_a_half_cpus_gives_two_threads(tmp_path):
    root, membership = cgroup_v2(tmp_path, "150000 100000\n")
    assert cgroup_cpu_quota(root, membership) == 1.5
    assert usable_cpu_count(root, membership, EIGHT_CPUS) == 2


def test_v2_unlimited_quota_leaves_the_affinity_mask(tmp_path):
    root, membership = cgroup_v2(tmp_path, "max 100000\n")
    assert cgroup_cpu_quota(root, membership) is None
    assert usable_cpu_count(root, membership, EIGHT_CPUS) == 8
    assert usable_cpu_count(root, membership, {2, 5}) == 2


def test_v2_an_ancestors_tighter_quota_wins(tmp_path):
    root, membership = cgroup_v2(tmp_path, "400000 100000\n", path="/kubepods/pod1/container")
    write(root / "kubepods" / "cpu.max", "300000 100000\n")
    assert usable_cpu_count(root, membership, EIGHT_CPUS) == 3


def test_v1_cfs_quota(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "250000\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    membership = tmp_path / "proc_self_cgroup"
    # Without a cgroup namespace the path names the host's hierarchy, absent in the container's mount.
    write(membership, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_quota(root, membership) == 2.5
    assert usable_cpu_count(root, membership, EIGHT_CPUS) == 3


def test_v1_unlimited_quota(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    membership = tmp_path / "proc_self_cgroup"
    write(membership, "2:cpu:/\n")
    assert usable_cpu_count(root, membership, EIGHT_CPUS) == 8


def test_a_tiny_quota_still_gets_one_thread(tmp_path):
    root, membership = cgroup_v2(tmp_path, "10000 100000\n")
    assert usable_cpu_count(root, membership, EIGHT_CPUS) == 1


def test_no_cgroup_files_means_the_affinity_mask(tmp_path):
    assert usable_cpu_count(tmp_path / "none", tmp_path / "missing", {0, 1, 2}) == 3


def test_driver_version_is_read_from_the_kernel_modules_banner(tmp_path):
    banner = tmp_path / "version"
    banner.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.2.0\n"
    )
    assert read_driver_version(banner) == "535.104.05"
    assert read_driver_version(tmp_path / "absent") is None


def test_an_old_driver_is_named_with_the_branch_cuda_needs():
    reason = why_no_gpu("13.2", None, "535.104.05", ["The NVIDIA driver on your system is too old (found version 12020)."])
    assert "CUDA 13.2" in reason and "535.104.05" in reason and "580 or newer" in reason
    assert "too old (found version 12020)" in reason


@pytest.mark.parametrize(
    ("torch_cuda", "visible", "driver", "expected"),
    [
        (None, None, "580.65.06", "CPU-only build"),
        ("13.2", "", "580.65.06", "CUDA_VISIBLE_DEVICES='' hides every GPU"),
        ("13.2", None, None, "no NVIDIA driver is visible inside the container"),
    ],
)
def test_other_reasons_for_no_gpu(torch_cuda, visible, driver, expected):
    assert expected in why_no_gpu(torch_cuda, visible, driver)


def test_this_machine_runs_on_the_cpu_with_its_usable_cpus():
    """Through the installed torch: this project's machines have no GPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    choice = choose_device(environ={})
    assert choice.kind == "cpu"
    assert choice.threads == usable_cpu_count()
    assert choice.description == f"CPU, {choice.threads} thread{'s' if choice.threads != 1 else ''}"
    assert choice.warning is None


def test_a_gpu_image_without_a_gpu_warns_and_says_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    choice = choose_device(environ={EXPECT_GPU_VARIABLE: "1"})
    assert choice.kind == "cpu"
    assert choice.warning is not None
    assert "built for NVIDIA GPUs but found no usable GPU" in choice.warning
    assert why_no_gpu(torch.version.cuda, None, read_driver_version()) in choice.warning


def test_the_job_names_its_device_and_warns_when_the_gpu_image_has_no_gpu(server, tiny_checkpoint_dir):
    """Through the whole worker with real SAM2 (random weights), as the GPU image runs on a
    host that gives it no GPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    dataset_id = server.add_dataset(frames())
    for shape in cells():
        server.add_annotation(dataset_id, shape.rough_outline(), tags=["rough"], location={"XY": 0, "Z": 1, "Time": 0})
    run = run_worker(server, "compute", compute_parameters(dataset_id), tiny_checkpoint_dir, dataset_id,
                     extra_env={EXPECT_GPU_VARIABLE: "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    threads = usable_cpu_count()
    assert any(f"on CPU, {threads} thread" in line.get("info", "") for line in run.progress), run.progress
    gpu_warnings = [w for w in run.warnings if "built for NVIDIA GPUs but found no usable GPU" in w["warning"]]
    assert len(gpu_warnings) == 1, run.warnings
    print(next(line["info"] for line in run.progress if " on CPU" in line.get("info", "")))
    print(gpu_warnings[0])
    assert why_no_gpu(torch.version.cuda, None, read_driver_version()) in gpu_warnings[0]["warning"]


# --- GPU failures named as such (CPU-side, with torch's errors as CUDA raises them) -------

class _NoKernels:
    """torch where CUDA has no kernels for the GPU (a GPU older than the build supports)."""

    class cuda:
        @staticmethod
        def get_device_capability(kind):
            return 3, 5

        @staticmethod
        def get_device_name(kind):
            return "Tesla K80"

        @staticmethod
        def get_arch_list():
            return ["sm_75", "sm_80", "sm_90"]

    @staticmethod
    def ones(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")


def test_a_gpu_torch_has_no_kernels_for_is_named_with_what_the_build_has():
    from sam2_refine.device import missing_kernels

    why = missing_kernels(_NoKernels, "cuda")
    assert "Tesla K80 has compute capability 3.5" in why and "sm_75, sm_80, sm_90" in why


@pytest.mark.parametrize("failure, expected", [
    ("OutOfMemoryError", "did not have the memory to load sam2.1_hiera_tiny.pt"),
    ("RuntimeError: CUDA error: no kernel image is available for execution on the device", "has no kernels"),
])
def test_a_gpu_that_fails_while_the_model_is_built_falls_back_to_the_cpu_and_says_why(
    tiny_checkpoint_dir, monkeypatch, failure, expected
):
    """CUDA out of memory, or no kernels for the GPU, while building: the job goes on on the
    CPU with a warning naming the cause (not a 'truncated checkpoint', not a bug of ours)."""
    from types import SimpleNamespace

    import torch

    from sam2_refine import device, model, sam2_build

    class OutOfMemoryError(RuntimeError):
        pass

    real_build = sam2_build.build_model

    def build(config, checkpoint, where):
        if where.startswith("cuda"):
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") if failure == "OutOfMemoryError" \
                else RuntimeError(failure.split(": ", 1)[1])
        return real_build(config, checkpoint, where)

    gpu = device.DeviceChoice("cuda", "CUDA GPU Fake (CUDA 13.0)", 2)
    monkeypatch.setattr(device, "choose_device", lambda requested=None: gpu)
    monkeypatch.setattr(sam2_build, "build_model", build)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda kind: SimpleNamespace(major=8))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    predictor = model.Sam2Predictor(tiny_checkpoint_dir / TINY)
    assert predictor.device == "cpu"
    assert predictor.device_warning.startswith("The GPU could not be used, so the job runs on the CPU")
    assert expected in predictor.device_warning


# --- on a CUDA machine (benchmarks/gpu.sh runs these there) ----------------------------

def test_on_a_gpu_the_predictor_names_it_with_bf16_and_tf32(tiny_checkpoint_dir):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: benchmarks/gpu.sh runs this on a GPU machine")
    from sam2_refine.model import Sam2Predictor

    predictor = Sam2Predictor(tiny_checkpoint_dir / TINY)
    major, _ = torch.cuda.get_device_capability(0)
    assert predictor.device.startswith("cuda")
    assert torch.cuda.get_device_name(0) in predictor.device_description
    assert "bf16 autocast" in predictor.device_description
    assert ("TF32" in predictor.device_description) == (major >= 8)
    assert predictor.device_warning is None

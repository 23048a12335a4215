"""Where the model runs: the device, the CPU threads this container may use, and why a GPU
image found no GPU.

`choose_device()` is the one entry point: the predictor calls it, sets torch's thread
count from `threads` when the device is the CPU, and the worker reports `description`
and, when set, `warning` in the job's messages.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Set in the GPU image (Dockerfile): a run of that image without a usable GPU is a
# deployment fault worth a warning, not a choice.
EXPECT_GPU_VARIABLE = "SAM2_REFINE_EXPECT_GPU"

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
NVIDIA_DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")

# The oldest Linux driver branch each CUDA major version runs on (NVIDIA's CUDA
# minor-version compatibility table).
MINIMUM_DRIVER_BRANCH = {"11": "450", "12": "525", "13": "580"}


@dataclass(frozen=True)
class DeviceChoice:
    """`kind` is a torch device type ("cuda", "mps", "cpu"); `threads` is the CPU thread
    count to give torch (the CPUs this container may use); `description` names the device
    for the user; `warning` says why a GPU image runs without its GPU (None otherwise)."""

    kind: str
    description: str
    threads: int
    warning: str | None = None

    def on_cpu(self, why: str) -> "DeviceChoice":
        """The CPU instead of this GPU, with a warning saying `why`."""
        return DeviceChoice("cpu", _cpu_description(self.threads), self.threads,
                            f"The GPU could not be used, so the job runs on the CPU: {why}")


def _cpu_description(threads: int) -> str:
    return f"CPU, {threads} thread{'s' if threads != 1 else ''}"


def choose_device(requested: str | None = None, environ: Mapping[str, str] | None = None) -> DeviceChoice:
    """The device to run on: `requested` if given, else CUDA, then MPS, then the CPU."""
    import torch

    environ = os.environ if environ is None else environ
    threads = usable_cpu_count()
    with warnings.catch_warnings(record=True) as cuda_warnings:
        warnings.simplefilter("always")
        cuda_available = torch.cuda.is_available()
    kind = requested or _best_kind(torch, cuda_available)
    if kind.startswith("cuda"):
        choice = DeviceChoice(kind, f"CUDA GPU {torch.cuda.get_device_name(kind)} (CUDA {torch.version.cuda})", threads)
        missing = missing_kernels(torch, kind)
        return choice if missing is None else choice.on_cpu(missing)
    if kind == "mps":
        return DeviceChoice(kind, "Apple GPU (MPS)", threads)
    warning = None
    if not cuda_available and environ.get(EXPECT_GPU_VARIABLE, "") not in ("", "0"):
        reason = why_no_gpu(
            torch.version.cuda,
            environ.get("CUDA_VISIBLE_DEVICES"),
            read_driver_version(),
            [str(w.message) for w in cuda_warnings],
        )
        warning = f"This image is built for NVIDIA GPUs but found no usable GPU: {reason}"
    return DeviceChoice("cpu", _cpu_description(threads), threads, warning)


def is_missing_kernel(error: BaseException) -> bool:
    """Whether a CUDA error says the installed torch has no kernels for this GPU."""
    return "no kernel image" in str(error).lower()


def missing_kernels(torch, kind: str) -> str | None:
    """Why the installed torch cannot run kernels on this GPU (a GPU older, or newer, than
    the build's architectures), or None when a small kernel runs."""
    try:
        (torch.ones(2, device=kind) * 2).sum().item()
    except RuntimeError as error:
        if not is_missing_kernel(error):
            raise
        major, minor = torch.cuda.get_device_capability(kind)
        return (f"{torch.cuda.get_device_name(kind)} has compute capability {major}.{minor}, which this build of "
                f"torch has no kernels for (it has {', '.join(torch.cuda.get_arch_list()) or 'none'}); "
                "use a build for this GPU")
    return None


def _best_kind(torch, cuda_available: bool) -> str:
    if cuda_available:
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def why_no_gpu(
    torch_cuda_version: str | None,
    visible_devices: str | None,
    driver_version: str | None,
    torch_messages: Iterable[str] = (),
) -> str:
    """One sentence on why CUDA is unusable, from what the container can read about itself.

    `torch_cuda_version` is torch.version.cuda (None for a CPU-only torch build),
    `visible_devices` the CUDA_VISIBLE_DEVICES value, `driver_version` the loaded NVIDIA
    kernel driver's version, `torch_messages` what torch warned while probing CUDA.
    """
    if torch_cuda_version is None:
        return "the installed torch is a CPU-only build"
    if visible_devices is not None and visible_devices.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible_devices!r} hides every GPU"
    said_by_torch = " ".join(message.strip() for message in torch_messages if message.strip())
    if driver_version is None:
        reason = (
            "no NVIDIA driver is visible inside the container (was it started with the NVIDIA "
            "container runtime, e.g. `docker run --gpus all`?)"
        )
    else:
        branch = MINIMUM_DRIVER_BRANCH.get(torch_cuda_version.split(".")[0])
        needs = f"; CUDA {torch_cuda_version.split('.')[0]} needs driver {branch} or newer" if branch else ""
        reason = f"torch is built for CUDA {torch_cuda_version} and the NVIDIA driver is {driver_version}{needs}"
    return f"{reason} (torch says: {said_by_torch})" if said_by_torch else reason


def read_driver_version(version_file: Path = NVIDIA_DRIVER_VERSION_FILE) -> str | None:
    """The NVIDIA kernel driver's version, e.g. "535.104.05", or None without a driver.

    The file's first line reads "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  <date>".
    """
    try:
        first_line = version_file.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    words = first_line.split()
    if "Module" in words and words.index("Module") + 1 < len(words):
        return words[words.index("Module") + 1]
    return first_line.strip() or None


def usable_cpu_count(
    cgroup_root: Path = CGROUP_ROOT,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    affinity: set[int] | None = None,
) -> int:
    """The CPUs this process may use: its affinity mask, capped by the cgroup CPU quota
    (rounded up: a quota of 1.5 CPUs gets 2 threads). At least 1."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    count = max(1, len(affinity))
    quota = cgroup_cpu_quota(cgroup_root, proc_self_cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota, in CPUs, of this process's cgroup and its ancestors, under
    cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`); None if unlimited."""
    try:
        membership = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in membership:
        hierarchy_id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy_id == "0" and controllers == "":
            quotas += _quotas_along(cgroup_root, path, _read_v2_quota)
        elif "cpu" in controllers.split(","):
            for mount in _v1_cpu_mounts(cgroup_root, controllers):
                quotas += _quotas_along(mount, path, _read_v1_quota)
    return min(quotas) if quotas else None


def _v1_cpu_mounts(cgroup_root: Path, controllers: str) -> list[Path]:
    names = dict.fromkeys([controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"])
    return [cgroup_root / name for name in names if (cgroup_root / name).is_dir()][:1]


def _quotas_along(mount: Path, path: str, read_quota) -> list[float]:
    """Quotas of the cgroup at `path` under `mount` and of each ancestor up to the mount.

    Inside a container without a cgroup namespace `path` names the host's hierarchy while
    the mount shows the container's own cgroup; the missing directories are skipped.
    """
    parts = [part for part in path.strip("/").split("/") if part]
    quotas = []
    for depth in range(len(parts), -1, -1):
        directory = mount.joinpath(*parts[:depth])
        if directory.is_dir():
            quota = read_quota(directory)
            if quota is not None:
                quotas.append(quota)
    return quotas


def _read_v2_quota(directory: Path) -> float | None:
    """`cpu.max` holds "<quota> <period>" in microseconds, quota "max" meaning unlimited."""
    try:
        fields = (directory / "cpu.max").read_text().split()
        if fields[0] == "max":
            return None
        return int(fields[0]) / int(fields[1])
    except (OSError, IndexError, ValueError, ZeroDivisionError):
        return None


def _read_v1_quota(directory: Path) -> float | None:
    """cfs_quota_us of -1 means unlimited."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period

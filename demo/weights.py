"""The checkpoint `make demo` runs with.

In order: official SAM2 checkpoints already in SAM2_CHECKPOINT_DIR or ./checkpoints; else
sam2.1_hiera_tiny.pt, downloaded once into ./checkpoints by scripts/download_weights.py (the
code of `make weights`: a `.part` file, loaded into its model, then moved into place); else,
when that fails, a random-init checkpoint, with the reason, said loudly.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sam2_refine.sam2_build import OFFICIAL_CONFIGS

REPO = Path(__file__).resolve().parents[1]
# Relative to where the demo runs (`make demo`: the repository root), like `make weights`.
LOCAL_CHECKPOINT_DIR = Path("checkpoints")
DEMO_MODEL = "tiny"
RANDOM_INIT_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@dataclass(frozen=True)
class DemoWeights:
    directory: Path
    description: str  # where the checkpoint came from, for the user
    random_init_reason: str | None = None  # why there are no real weights; None when there are

    @property
    def is_random_init(self) -> bool:
        return self.random_init_reason is not None


def load_download_script() -> ModuleType:
    path = REPO / "scripts" / "download_weights.py"
    spec = importlib.util.spec_from_file_location("download_weights", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def official_checkpoint_dir() -> Path | None:
    """The first of SAM2_CHECKPOINT_DIR and ./checkpoints holding an official checkpoint."""
    configured = os.environ.get("SAM2_CHECKPOINT_DIR")
    for directory in ([Path(configured)] if configured else []) + [LOCAL_CHECKPOINT_DIR]:
        if any((directory / name).is_file() for name in OFFICIAL_CONFIGS):
            return directory
    return None


def why_download_failed(error: BaseException, url: str) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"{url} answered HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"could not reach {url}: {error.reason}"
    if isinstance(error, TimeoutError):
        return f"{url} stopped answering ({error})"
    return str(error)


def fetch_demo_checkpoint(weights: ModuleType, directory: Path) -> Path:
    """Download and verify the demo's checkpoint into `directory` with `weights`
    (scripts/download_weights.py), as `make weights` does.

    Raises what `weights.ensure_checkpoint` raises; a directory made for it is removed again
    when nothing could be kept in it."""
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return weights.ensure_checkpoint(DEMO_MODEL, directory)
    except BaseException:
        if created and not any(directory.iterdir()):
            directory.rmdir()
        raise


def random_init_checkpoint_dir(output: Path) -> Path:
    import torch
    from sam2.build_sam import build_sam2

    directory = output / "random-checkpoints"
    path = directory / "sam2.1_hiera_tiny.pt"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = build_sam2(RANDOM_INIT_CONFIG, None, device="cpu")
        torch.save({"model": model.state_dict()}, path)
    return directory


class WeightsUnavailable(Exception):
    """No official checkpoint here and the download failed; the message says why."""


def real_weights() -> DemoWeights:
    """The official checkpoints found here, or the demo's one fetched now.

    Raises WeightsUnavailable when the download fails: the server unreachable, an error
    answer, or a file that does not load (nothing of it is kept)."""
    found = official_checkpoint_dir()
    if found is not None:
        names = sorted(name for name in OFFICIAL_CONFIGS if (found / name).is_file())
        return DemoWeights(found, f"{', '.join(names)} found in {found}, nothing to download")
    weights = load_download_script()
    checkpoint = weights.CHECKPOINTS[DEMO_MODEL]
    print(
        f"No SAM2 checkpoint in SAM2_CHECKPOINT_DIR or ./{LOCAL_CHECKPOINT_DIR}: fetching "
        f"{checkpoint.file_name} once into ./{LOCAL_CHECKPOINT_DIR} (set {weights.BASE_URL_VARIABLE} for a mirror)",
        flush=True,
    )
    try:
        path = fetch_demo_checkpoint(weights, LOCAL_CHECKPOINT_DIR)
    except (weights.CheckpointError, OSError, ValueError, http.client.HTTPException) as error:
        raise WeightsUnavailable(why_download_failed(error, checkpoint.url)) from error
    return DemoWeights(LOCAL_CHECKPOINT_DIR, f"{path}, downloaded now from {checkpoint.url}")


def random_init_weights(output: Path, reason: str) -> DemoWeights:
    return DemoWeights(random_init_checkpoint_dir(output), "a random-init checkpoint", reason)

#!/usr/bin/env python3
"""Download the official SAM2.1 checkpoints and prove each one loads.

    python scripts/download_weights.py [--models "tiny small base_plus large"] [DIRECTORY]

DIRECTORY defaults to ./checkpoints. A checkpoint already there is kept if it loads;
a new one is downloaded to `<name>.part`, loaded into its model, and only then
renamed into place, so a truncated download never ends up in DIRECTORY.
The Docker builds run this with DIRECTORY=/opt/sam2/checkpoints (`make weights`
uses the default). Exit status: 0 when every requested checkpoint loads, else 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"


@dataclass(frozen=True)
class Checkpoint:
    file_name: str
    config: str  # a Hydra config name inside the sam2 package

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.file_name}"


CHECKPOINTS: dict[str, Checkpoint] = {
    "tiny": Checkpoint("sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml"),
    "small": Checkpoint("sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml"),
    "base_plus": Checkpoint("sam2.1_hiera_base_plus.pt", "configs/sam2.1/sam2.1_hiera_b+.yaml"),
    "large": Checkpoint("sam2.1_hiera_large.pt", "configs/sam2.1/sam2.1_hiera_l.yaml"),
}


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not fit its model."""


def verify_checkpoint(path: Path, config: str) -> None:
    """Build the model for `config` on the CPU with the weights in `path`.

    Raises CheckpointError naming the file and the cause when the file is missing,
    truncated, not a SAM2 checkpoint, or holds weights for another model size.
    """
    if not path.is_file() or path.stat().st_size == 0:
        raise CheckpointError(f"{path}: missing or empty")
    from sam2.build_sam import build_sam2  # slow import; only when verifying

    try:
        build_sam2(config, str(path), device="cpu")
    except Exception as error:  # torch/zip/Hydra errors all mean "not usable"
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        cause = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
        raise CheckpointError(
            f"{path}: not a usable SAM2 checkpoint for {config} ({cause}); "
            "it is probably truncated or for another model size, so delete it and download it again"
        ) from error


def download(url: str, destination: Path) -> None:
    """Stream `url` into `destination`, replacing it."""
    print(f"downloading {url}", flush=True)
    with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def ensure_checkpoint(name: str, directory: Path) -> Path:
    """Make `directory` hold a verified checkpoint for model `name`; return its path."""
    checkpoint = CHECKPOINTS[name]
    target = directory / checkpoint.file_name
    if target.is_file():
        try:
            verify_checkpoint(target, checkpoint.config)
        except CheckpointError as error:
            print(f"replacing invalid checkpoint: {error}", flush=True)
        else:
            print(f"{target}: present and valid, skipped", flush=True)
            return target
    partial = target.with_name(target.name + ".part")
    try:
        download(checkpoint.url, partial)
        verify_checkpoint(partial, checkpoint.config)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    print(f"{target}: downloaded and verified", flush=True)
    return target


def parse_models(text: str) -> list[str]:
    """Split a "tiny small" / "tiny,small" list and check every name."""
    names = text.replace(",", " ").split()
    unknown = [name for name in names if name not in CHECKPOINTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {' '.join(unknown) or '(none given)'}; choose from {' '.join(CHECKPOINTS)}"
        )
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=Path("checkpoints"))
    parser.add_argument(
        "--models",
        type=parse_models,
        default=list(CHECKPOINTS),
        help=f'space- or comma-separated subset of: {" ".join(CHECKPOINTS)} (default: all)',
    )
    args = parser.parse_args(argv)
    args.directory.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.models:
            ensure_checkpoint(name, args.directory)
    except (CheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Download the official SAM2.1 checkpoints and prove each one loads.

    python scripts/download_weights.py [--models "tiny small base_plus large"] [DIRECTORY]

DIRECTORY defaults to ./checkpoints. A checkpoint already there is kept if it loads;
a new one is downloaded to `<name>.part`, loaded into its model, and only then
renamed into place, so a truncated download never ends up in DIRECTORY.
SAM2_WEIGHTS_BASE_URL replaces the official base URL (a mirror; the tests' local server).
The Docker builds run this with DIRECTORY=/opt/sam2/checkpoints (`make weights`
uses the default; `make demo` fetches the tiny one through `ensure_checkpoint`).
Exit status: 0 when every requested checkpoint loads, else 1.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import ssl
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
BASE_URL_VARIABLE = "SAM2_WEIGHTS_BASE_URL"
CONNECT_TIMEOUT = 15.0  # seconds to reach the server; then each read may wait READ_TIMEOUT
READ_TIMEOUT = 60.0


def base_url() -> str:
    return (os.environ.get(BASE_URL_VARIABLE) or BASE_URL).rstrip("/")


@dataclass(frozen=True)
class Checkpoint:
    file_name: str
    config: str  # a Hydra config name inside the sam2 package

    @property
    def url(self) -> str:
        return f"{base_url()}/{self.file_name}"


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
        first_line = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]
        cause = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
        raise CheckpointError(
            f"{path}: not a usable SAM2 checkpoint for {config} ({cause}); "
            "it is probably truncated or for another model size"
        ) from error


class _PatientReads:
    """Makes a connection wait CONNECT_TIMEOUT to connect, then READ_TIMEOUT for each read."""

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(READ_TIMEOUT)


class _HTTPConnection(_PatientReads, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_PatientReads, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, request):
        return self.do_open(_HTTPConnection, request)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, request):
        return self.do_open(_HTTPSConnection, request, context=ssl.create_default_context())


def download(url: str, destination: Path) -> None:
    """Stream `url` into `destination`, replacing it.

    Raises OSError (urllib.error.URLError, TimeoutError, ...) when the server cannot be
    reached or answers with an error, CheckpointError when the transfer stops short of the
    length the server announced.
    """
    print(f"downloading {url}", flush=True)
    opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)
    with opener.open(url, timeout=CONNECT_TIMEOUT) as response, destination.open("wb") as out:
        announced = response.headers.get("Content-Length")
        try:
            shutil.copyfileobj(response, out, length=1 << 20)
        except http.client.IncompleteRead as error:  # a chunked transfer cut short
            raise CheckpointError(f"the download stopped early ({error!r})") from error
        received = out.tell()
    if announced is not None and int(announced) != received:
        raise CheckpointError(f"the download stopped after {received} of {announced} bytes")


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
    except CheckpointError as error:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"refused the download of {checkpoint.url}: {error}; nothing was kept") from error
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

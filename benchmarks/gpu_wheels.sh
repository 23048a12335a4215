#!/usr/bin/env bash
# Wheels for benchmarks/gpu.sh, into .whl/ (ignored by git), where PyPI is reachable:
#   bash benchmarks/gpu_wheels.sh
# The set is benchmarks/gpu_wheels.py's plan: this project's pins and their dependencies as
# installed in .venv, minus what the device's image brings (torch, torchvision, numpy, scipy,
# scikit-image, pillow). Wheels for the device's Python 3.12 on x86-64 (manylinux); the
# packages published only as sdists (sam2, antlr4-python3-runtime, iopath) are built here,
# sam2 without its CUDA extension (SAM2_BUILD_CUDA=0), as everywhere in this project.
# .whl/MANIFEST.txt lists what must be there; gpu.sh refuses to run without it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-40}  # the device tool carries 64 MiB in all, the repository included
export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 SAM2_BUILD_CUDA=0

"$PYTHON" benchmarks/gpu_wheels.py --why > /tmp/gpu-wheels-plan.txt
rm -rf .whl && mkdir .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
sdists=()
while read -r requirement; do
    if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" -d .whl "$requirement" 2>/dev/null; then
        sdists+=("$requirement")
    fi
done < /tmp/gpu-wheels-plan.txt
if [ ${#sdists[@]} -gt 0 ]; then
    echo "built here from sdists: ${sdists[*]}"
    "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl "${sdists[@]}"
fi
for wheel in .whl/*.whl; do
    case "$wheel" in
        *-none-any.whl|*cp312*manylinux*x86_64*.whl|*abi3*manylinux*x86_64*.whl) ;;
        *) echo "not for the device's Python 3.12 on x86-64: $wheel" >&2; exit 1 ;;
    esac
done
cp /tmp/gpu-wheels-plan.txt .whl/MANIFEST.txt
"$PYTHON" - <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from benchmarks.gpu_wheels import wheel_name
wanted = {line.split("==")[0] for line in Path(".whl/MANIFEST.txt").read_text().split()}
found = [wheel_name(p.name) for p in Path(".whl").glob("*.whl")]
missing, doubled = wanted - set(found), {n for n in found if found.count(n) > 1}
if missing or doubled or set(found) - wanted:
    sys.exit(f"wheel set wrong: missing {sorted(missing)}, doubled {sorted(doubled)}, extra {sorted(set(found) - wanted)}")
EOF
ls -l .whl/*.whl | awk '{printf "%9d  %s\n", $5, $9}'
bytes=$(du -cb .whl | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels, $((bytes / 1024)) KiB in .whl/"
if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo ".whl/ is over ${LIMIT_MIB} MiB: the device tool carries 64 MiB in all" >&2
    exit 1
fi

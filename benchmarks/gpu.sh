#!/usr/bin/env bash
# The CUDA path on a lent GPU machine, in one run of under 10 minutes:
#   1. benchmarks/gpu.py: the CUDA checks (device description, bf16 autocast, TF32, decode,
#      batched encoder, whole-grid decode, agreement with the CPU's fp32 masks);
#   2. the device tests that assert the CUDA description instead of skipping;
#   3. the GPU table: objects per second end to end at 2048² x 100 and x 1000, tiny and
#      small, Auto and Whole frame, with the split by stage (benchmarks/run.py --only gpu).
# Run from the repository root:  bash benchmarks/gpu.sh
# The GPU image has torch but not this project's other packages: benchmarks/gpu_wheels.sh,
# run beforehand where PyPI is reachable, puts them in .whl/, which this installs from.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/gpu-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SAM2_BUILD_CUDA=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
status=0
echo "## CUDA checks"
timeout 180 "$PYTHON" benchmarks/gpu.py || status=1
echo "## device tests on the GPU"
timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_device.py -k "gpu or cuda" || status=1
echo "## GPU table"
timeout 300 "$PYTHON" benchmarks/run.py --only gpu || status=1
exit $status

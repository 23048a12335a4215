#!/usr/bin/env bash
# Wheels for benchmarks/gpu.sh: what this project needs beyond the GPU image's own packages
# (it has torch, numpy, scipy, scikit-image, pillow, requests; see the device tool's
# KINDS.md), for its Python 3.12 on x86-64, into .whl/ (ignored by git). sam2 is built here
# from its sdist without its CUDA extension, as everywhere in this project.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    shapely==2.2.0 hydra-core==1.3.8 omegaconf==2.3.1 portalocker==4.4.2 \
    nimbusimage==0.6.3 girder-client==5.0.21 requests-toolbelt==1.0.0 diskcache==5.6.3 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
# Pure-Python packages published only as sdists.
SAM2_BUILD_CUDA=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl \
    sam2==1.1.0 antlr4-python3-runtime==4.9.3 iopath==0.1.10
du -sh .whl

# SAM2 Refiner worker, x86_64 production image (GPU). Build from the repo root:
#   ./build_workers.sh sam2_refine        (tag annotations/sam2_refine_worker:latest)
# Stages: builder (conda env + verified checkpoints) -> app (runtime files only)
#         -> test (app + pytest; `--target test`) and production (the default, last).
#
# CUDA: the torch 2.15.0 wheel on PyPI is built for CUDA 13.2 and brings its own CUDA
# and cuDNN libraries (cuda-toolkit 13.2.2, nvidia-cudnn-cu13), so the base only has
# to match the major version and hand the driver through; a "-cudnn" base would ship
# cuDNN twice. 13.0 rather than 13.2 keeps NVIDIA_REQUIRE_CUDA at "cuda>=13.0", so
# the container starts on any r580+ driver (CUDA minor-version compatibility).
ARG CUDA_IMAGE=nvidia/cuda:13.0.3-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS builder

ARG MINIFORGE_VERSION=25.9.1-0
ADD https://github.com/conda-forge/miniforge/releases/download/${MINIFORGE_VERSION}/Miniforge3-${MINIFORGE_VERSION}-Linux-x86_64.sh /tmp/miniforge.sh
RUN bash /tmp/miniforge.sh -b -p /opt/conda \
    && rm /tmp/miniforge.sh

# requirements.txt is the only pin list; environment.yml installs it with pip.
# SAM2_BUILD_CUDA=0: sam2's CUDA extension only speeds up mask post-processing and
# would need nvcc. PIP_NO_BUILD_ISOLATION=0 means "no build isolation" (pip reads the
# variable as the flag's value): sam2 is an sdist whose isolated build would
# download a second torch; environment.yml provides setuptools instead.
ENV SAM2_BUILD_CUDA=0 \
    PIP_NO_BUILD_ISOLATION=0 \
    PIP_NO_CACHE_DIR=1
COPY environment.yml requirements.txt /build/
RUN /opt/conda/bin/conda env create --file /build/environment.yml \
    && /opt/conda/bin/conda clean --all --yes

# The official SAM2.1 checkpoints; each is loaded into its model, so a truncated
# or wrong file fails the build. Pick a subset with --build-arg SAM2_CHECKPOINTS=...
ARG SAM2_CHECKPOINTS="tiny small base_plus large"
COPY scripts/download_weights.py /build/
RUN /opt/conda/envs/worker/bin/python /build/download_weights.py \
        --models "${SAM2_CHECKPOINTS}" /opt/sam2/checkpoints

FROM ${CUDA_IMAGE} AS app

COPY --from=builder /opt/conda/envs/worker /opt/conda/envs/worker
COPY --from=builder /opt/sam2/checkpoints /opt/sam2/checkpoints
WORKDIR /app
COPY entrypoint.py ./
COPY sam2_refine/ ./sam2_refine/
# SAM2_REFINE_EXPECT_GPU: this image is built for NVIDIA GPUs, so a run that finds none
# warns and says why (sam2_refine/device.py).
ENV SAM2_CHECKPOINT_DIR=/opt/sam2/checkpoints \
    SAM2_REFINE_EXPECT_GPU=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/conda/envs/worker/bin:${PATH}

# `./build_workers.sh --build-and-run-tests sam2_refine` builds and runs this stage.
FROM app AS test

COPY requirements.txt requirements-dev.txt /build/
RUN python -m pip install --no-cache-dir --requirement /build/requirements-dev.txt
COPY pyproject.toml ./
COPY nimbus_server/ ./nimbus_server/
COPY scripts/ ./scripts/
COPY tests/ ./tests/
ENTRYPOINT ["/opt/conda/envs/worker/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]

FROM app AS production

# The platform reads these exact camelCase keys (PLATFORM.md §6); hadolint's DL3048
# wants lowercase ones, which the platform would not find.
# hadolint ignore=DL3048
LABEL isUPennContrastWorker="" \
      isAnnotationWorker="" \
      interfaceName="SAM2 Refiner" \
      interfaceCategory="SAM2" \
      description="Refines rough outlines into cell-hugging polygons with SAM2 box prompts" \
      annotationShape="polygon" \
      defaultToolName="SAM2 Refiner" \
      isGPUWorker="true"

ENTRYPOINT ["/opt/conda/envs/worker/bin/python", "/app/entrypoint.py"]

#!/usr/bin/env bash
# Build the SAM2 Refiner worker image (and optionally its test image) from the repo root.
set -euo pipefail

readonly IMAGE="annotations/sam2_refine_worker:latest"
readonly TEST_IMAGE="annotations/sam2_refine_worker_test:latest"
readonly SERVICES="sam2_refine"

usage() {
    cat <<EOF
Usage: ./build_workers.sh [--no-cache] [--build-and-run-tests] sam2_refine

Builds ${IMAGE} from the repo root with Dockerfile, or with Dockerfile_M1
(CPU-only) on arm64/aarch64 or when MAC_DEVELOPMENT_MODE=true.

Options:
  --no-cache             build without Docker's layer cache
  --build-and-run-tests  also build the Dockerfile's "test" stage as
                         ${TEST_IMAGE} and run the test suite in it
  -h, --help             show this help

Environment:
  SAM2_CHECKPOINTS       checkpoints baked into the image
                         (default "tiny small base_plus large")
  MAC_DEVELOPMENT_MODE   "true" selects Dockerfile_M1
EOF
}

fail_usage() {
    echo "error: $1" >&2
    usage >&2
    exit 2
}

# Print and run a command; on failure, exit with its status.
run() {
    echo "+ $*"
    local status=0
    "$@" || status=$?
    if ((status != 0)); then
        echo "error: '$1 $2' failed with exit status ${status}" >&2
        exit "${status}"
    fi
}

no_cache=false
run_tests=false
service=""
while (($# > 0)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --no-cache) no_cache=true ;;
        --build-and-run-tests) run_tests=true ;;
        -*) fail_usage "unknown option: $1" ;;
        *)
            [[ -z "${service}" ]] || fail_usage "only one service may be given (got '${service}' and '$1')"
            service="$1"
            ;;
    esac
    shift
done
[[ -n "${service}" ]] || fail_usage "no service given"
[[ " ${SERVICES} " == *" ${service} "* ]] || fail_usage "unknown service: ${service} (known: ${SERVICES})"

arch="$(uname -m)"
if [[ "${MAC_DEVELOPMENT_MODE:-false}" == "true" || "${arch}" == "arm64" || "${arch}" == "aarch64" ]]; then
    dockerfile="Dockerfile_M1"
else
    dockerfile="Dockerfile"
fi

# The build context is the repo root, where this script lives.
cd "$(dirname "${BASH_SOURCE[0]}")"

build_args=(-f "${dockerfile}")
if [[ "${no_cache}" == "true" ]]; then
    build_args+=(--no-cache)
fi
if [[ -n "${SAM2_CHECKPOINTS:-}" ]]; then
    build_args+=(--build-arg "SAM2_CHECKPOINTS=${SAM2_CHECKPOINTS}")
fi

echo "Building ${IMAGE} with ${dockerfile} (machine: ${arch})"
run docker build "${build_args[@]}" --target production -t "${IMAGE}" .

if [[ "${run_tests}" == "true" ]]; then
    run docker build "${build_args[@]}" --target test -t "${TEST_IMAGE}" .
    run docker run --rm "${TEST_IMAGE}"
fi

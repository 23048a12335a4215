#!/usr/bin/env bash
# The CUDA path on a lent GPU machine: every result in one run of the device tool.
#   bash benchmarks/gpu.sh [--dry-run] [STEP[=SECONDS] ...]
# Steps, in this order, each with its budget in seconds on the device:
#   setup    40  the device, installed versions against the pins, random-init checkpoints (gpu.py setup)
#   checks   45  the CUDA checks (gpu.py checks)
#   tests    40  the device tests that assert CUDA (tests/test_device.py -k "gpu or cuda")
#   micro    55  decode batches, encoder batches, attention backends (gpu_micro.py)
#   table   150  the GPU table, our worker and the existing algorithm end to end (gpu_table.py)
# Naming steps runs only those (to rerun what failed); STEP=SECONDS gives a step another budget.
# First, always: the wheels carried in .whl/ (benchmarks/gpu_wheels.sh builds them; gpu.sh refuses
# to run without them) installed into /tmp/gpu-site, then one import of every module the steps use
# (refused, naming each module that fails). The run ends by GPU_TOTAL_SECONDS (default 350) after
# it starts, each step cut to what is left: with the device's start-up that leaves room for a
# second run within the 15 minutes of device time.
# Written under $OUT (the device tool's; elsewhere a new /tmp/gpu-out.* unless OUT is set), as each
# step ends: results.json, summary.md, and each step's log (setup.log ... table.log): 7 files of
# the 8 the device tool brings back.
# --dry-run: every step on this machine's CPU at small sizes, with .venv's packages and no wheels
# installed, writing the same files (no figure in them is a GPU's).
# Exit status: 0 every step passed; 1 a step failed or ran out of its time; 2 usage; 3 refused.
set -uo pipefail
cd "$(dirname "$0")/.."

STEPS=(setup checks tests micro table)
declare -A BUDGET=([setup]=40 [checks]=45 [tests]=40 [micro]=55 [table]=150)
TOTAL=${GPU_TOTAL_SECONDS:-350}
DRY_RUN=0
requested=()
for argument in "$@"; do
    case "$argument" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *)
            step=${argument%%=*}
            if [[ ! " ${STEPS[*]} " =~ " $step " ]]; then
                echo "unknown step or option: $argument (steps: ${STEPS[*]}; option: --dry-run)" >&2
                exit 2
            fi
            if [[ "$argument" == *=* && ! "${argument#*=}" =~ ^[0-9]+$ ]]; then
                echo "not whole seconds: $argument" >&2
                exit 2
            fi
            requested+=("$step") ;;
    esac
done
[ ${#requested[@]} -gt 0 ] || requested=("${STEPS[@]}")
if [ "$DRY_RUN" = 1 ]; then  # this machine's CPU is far slower than the device's GPU
    declare -A BUDGET=([setup]=120 [checks]=240 [tests]=240 [micro]=240 [table]=400)
    TOTAL=${GPU_TOTAL_SECONDS:-1300}
    DRY=--dry-run
    PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
else
    DRY=
    PYTHON=${PYTHON:-python3}
fi
for argument in "$@"; do  # STEP=SECONDS wins over either set of budgets
    [[ "$argument" == *=* ]] && BUDGET[${argument%%=*}]=${argument#*=}
done
export OUT=${OUT:-$(mktemp -d /tmp/gpu-out.XXXXXX)}
mkdir -p "$OUT"
started=$SECONDS
"$PYTHON" benchmarks/gpu_record.py start "$OUT" "$0" "$@" || exit 3

refuse() {  # the reason on stdout, in setup.log and in results.json; exit 3
    echo "REFUSED: $1" | tee -a "$OUT/setup.log"
    "$PYTHON" benchmarks/gpu_record.py step "$OUT" setup refused $((SECONDS - started)) 0
    exit 3
}

# The carried wheels: git ignores .whl/, so it travels only when the run call names it in carry.
WHEELS=${GPU_WHEELS:-.whl}
if [ "$DRY_RUN" = 0 ]; then
    if [ ! -f "$WHEELS/MANIFEST.txt" ] || ! compgen -G "$WHEELS/*.whl" > /dev/null; then
        refuse "$WHEELS/ with its MANIFEST.txt was not carried: run 'bash benchmarks/gpu_wheels.sh' here, then the device tool's run with carry: [\".whl\"]"
    fi
    echo "## installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into /tmp/gpu-site" | tee -a "$OUT/setup.log"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site \
        "$WHEELS"/*.whl 2>&1 | tee -a "$OUT/setup.log" || refuse "pip could not install the carried wheels"
    export PYTHONPATH=/tmp/gpu-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SAM2_BUILD_CUDA=0 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 GPU_WHEELS="$WHEELS"

# One import of everything the steps use, each failure named.
MODULES="numpy scipy skimage PIL shapely orjson pydantic typing_extensions nimbusimage girder_client hydra omegaconf
 iopath yaml requests urllib3 pytest torch torchvision sam2.build_sam sam2.sam2_image_predictor sam2_refine.worker
 nimbus_server benchmarks.run benchmarks.probe benchmarks.existing benchmarks.precision"
"$PYTHON" - $MODULES <<'EOF' 2>&1 | tee -a "$OUT/setup.log" || refuse "an import failed (above)"
import importlib
import sys

failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f"{name} ({type(error).__name__}: {error})")
if failed:
    sys.exit("cannot import: " + "; ".join(failed))
print(f"imports: {len(sys.argv) - 1} modules, all found")
EOF
if [ "$DRY_RUN" = 0 ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')" \
        2>&1 | tee -a "$OUT/setup.log" || refuse "no CUDA device"
fi

status=0
run_step() {  # NAME COMMAND...: the command under the step's budget, its output in NAME.log; in the
    # command, @OWN@ becomes the budget less 10 s, by which a Python step stops starting work
    local name=$1 budget=${BUDGET[$1]} left=$((TOTAL - (SECONDS - started) - 5))
    shift
    [ "$budget" -le "$left" ] || budget=$left
    if [ "$budget" -lt 10 ]; then
        echo "## $name: not run, the run's $TOTAL s are spent" | tee -a "$OUT/$name.log"
        "$PYTHON" benchmarks/gpu_record.py step "$OUT" "$name" "not run: time spent" 0 0
        status=1
        return
    fi
    echo "## $name (budget $budget s, $((SECONDS - started)) s into the run)" | tee -a "$OUT/$name.log"
    local step_started=$SECONDS
    timeout --kill-after=5 "$budget" "${@//@OWN@/$((budget > 20 ? budget - 10 : budget))}" 2>&1 \
        | tee -a "$OUT/$name.log"
    local code=${PIPESTATUS[0]} outcome=passed
    case $code in
        0) ;;
        124|137) outcome="out of time" ; status=1 ;;
        *) outcome="failed (exit $code)" ; status=1 ;;
    esac
    echo "## $name: $outcome in $((SECONDS - step_started)) s" | tee -a "$OUT/$name.log"
    "$PYTHON" benchmarks/gpu_record.py step "$OUT" "$name" "$outcome" $((SECONDS - step_started)) "$budget"
}

for step in "${STEPS[@]}"; do
    [[ " ${requested[*]} " =~ " $step " ]] || continue
    case $step in
        setup) run_step setup "$PYTHON" benchmarks/gpu.py setup --out "$OUT" $DRY ;;
        checks) run_step checks "$PYTHON" benchmarks/gpu.py checks --out "$OUT" $DRY ;;
        tests) run_step tests "$PYTHON" -m pytest -q -rA -p no:cacheprovider tests/test_device.py -k "gpu or cuda" ;;
        micro) run_step micro "$PYTHON" benchmarks/gpu_micro.py --out "$OUT" --budget @OWN@ $DRY ;;
        table) run_step table "$PYTHON" benchmarks/gpu_table.py --out "$OUT" --budget @OWN@ $DRY ;;
    esac
done
echo
cat "$OUT/summary.md"
echo "results in $OUT ($(ls "$OUT" | tr '\n' ' ')); $((SECONDS - started)) s"
exit $status

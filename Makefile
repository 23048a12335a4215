# Every target works on a fresh clone with only the package registries.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The machine-wide pip constraint some hosts carry caps torch below our pin; ignore it.
export PIP_CONSTRAINT := /dev/null
# sam2's CUDA extension only fills small mask holes; the worker does not need it.
export SAM2_BUILD_CUDA := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test demo bench bench-quick docs docs-check weights image image-test clean

SAM2_CHECKPOINTS ?= tiny small base_plus large

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest

# The sample dataset refined as the platform runs the worker; with no official checkpoint here it
# downloads sam2.1_hiera_tiny.pt once into ./checkpoints (SAM2_WEIGHTS_BASE_URL: a mirror).
demo: $(STAMP)
	$(PY) demo/run_demo.py

# The tables of benchmarks/RESULTS.md: end to end against the existing algorithm, then
# bf16 against fp32 on this CPU. `bench-quick` is a one-minute smoke run.
bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/precision.py

bench-quick: $(STAMP)
	$(PY) benchmarks/run.py --quick

docs: $(STAMP)
	$(PY) scripts/generate_docs.py

docs-check: $(STAMP)
	$(PY) scripts/generate_docs.py --check

# Official SAM2.1 checkpoints into ./checkpoints, each verified by loading it (needs internet,
# or SAM2_WEIGHTS_BASE_URL naming a mirror).
weights: $(STAMP)
	$(PY) scripts/download_weights.py --models "$(SAM2_CHECKPOINTS)" checkpoints

image:
	./build_workers.sh sam2_refine

image-test:
	./build_workers.sh --build-and-run-tests sam2_refine

clean:
	rm -rf $(VENV) demo-output .pytest_cache

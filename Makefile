# The project's commands. Each creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint demo fuzz bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or run make PYTHON=python3)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo,plot,bench,lint,openvino]'
	touch $(STAMP)

# One pytest worker per core of the project's 2-core machines; a file's tests stay on one worker, so
# the per-session caches of converted models (tests/conftest.py) are shared where they are used.
TEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check onnx_fc2conv tests benchmarks demo models
	$(VENV)/bin/mypy

# The plan tier: matches, reason codes, kernels and inspect, without ONNX Runtime (tests/conftest.py).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m 'not e2e and not fuzz'

demo: $(STAMP)
	$(PY) demo/run_demo.py
	$(PY) demo/run_stride_demo.py

fuzz: $(STAMP)
	FC2CONV_FUZZ_EXAMPLES=$${FC2CONV_FUZZ_EXAMPLES:-2000} $(PY) -m pytest -q -m fuzz -p no:cacheprovider tests/test_properties.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

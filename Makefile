# dbexp — every target that runs code installs first when .venv is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
# make lock: torch pinned to the CPU wheel on this machine's disk (pip finds it through its find-links)
TORCH  ?= torch==2.13.0
LOCK_VENV ?= .venv-lock
PIP_TOOLS ?= pip-tools==7.6.2
# make test-latest: a separate venv with the newest releases pyproject.toml's ranges allow
LATEST_VENV ?= .venv-latest
# make dashboard: the embedded MLflow store (logger=mlflow), or any backend store (MLFLOW_STORE=postgresql://…), and the port
MLFLOW_DB   ?= outputs/mlflow.db
MLFLOW_STORE ?= sqlite:///$(abspath $(MLFLOW_DB))
PORT        ?= 5000
# make optuna-dashboard: a sweep's storage (default: the newest outputs/sweep_*.db) and the port
STORAGE     ?= $(firstword $(shell ls -t outputs/sweep_*.db 2>/dev/null))
OPTUNA_PORT ?= 8080
# make test: pytest workers (pytest-xdist), a test file each at a time, the longest files first (tests/conftest.py;
# --no-loadscope-reorder keeps that order: xdist would otherwise start the files with the most tests first), one
# torch thread each
TEST_WORKERS ?= 2
XDIST        = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install lock train test test-engines test-fast test-sd test-latest lint dashboard optuna-dashboard clean distclean

install: $(STAMP)  ## create .venv from requirements.lock: exactly the locked packages (hash-checked), then dbexp itself

# Nothing is resolved here: every package, torch's local CPU wheel included, comes pinned and hashed from the
# lock (--no-deps: pip installs the lock's list and nothing else). Builds use the lock's setuptools, installed
# first (antlr4-python3-runtime, omegaconf's parser, exists only as an sdist; then dbexp itself), never one
# fetched into an isolated build environment. A changed lock rebuilds the venv, so nothing unlocked survives.
# Byte-compiling: pip does it one file at a time (2 of 3 minutes); compileall on every core instead. Needed up
# front: with PYTHONDONTWRITEBYTECODE set (as on these machines) nothing is cached later, and every process
# would compile torch again (the suite took 29 instead of 12 minutes). Like pip, it goes on past the few files
# that are not valid Python 3.11 (torch's py312_intrinsics.py).
$(STAMP): $(LOCK) pyproject.toml
	python3 -m venv --clear $(VENV)
	awk '/^[^ #]/ {keep = /^setuptools==/} keep && !/^ *#/' $(LOCK) > $(VENV)/build-requirements.txt
	$(PY) -m pip install --no-deps --require-hashes -r $(VENV)/build-requirements.txt
	$(PY) -m pip install --no-deps --require-hashes --no-build-isolation --no-compile -r $(LOCK)
	-$(PY) -m compileall -qq -j 0 $(VENV)/lib
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

lock: $(LOCK_VENV)/bin/pip-compile  ## requirements.lock from pyproject.toml (keeps pins that still fit; UPGRADE=1: all newest; PACKAGE=<name>[==v]: one)
	$(LOCK_VENV)/bin/pip-compile $(if $(UPGRADE),--upgrade) $(if $(PACKAGE),-P "$(PACKAGE)") -P "$(TORCH)" pyproject.toml
	@echo "wrote $(LOCK): review the diff, run make test, commit both files"

$(LOCK_VENV)/bin/pip-compile:
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q "$(PIP_TOOLS)"

train: $(STAMP)  ## the default run: offline, the toy model and a toy subject (~1 min on 2 CPU cores)
	$(PY) -m dbexp.train

test: $(STAMP)  ## the whole suite (slow end-to-end tests included), on TEST_WORKERS workers
	$(PY) -m pytest $(XDIST) -m "not sd and not engines"

test-engines: $(STAMP)  ## the scale-out engines for real on 127.0.0.1: PostgreSQL, MLflow server, SLURM (apt + root for SLURM); CI runs it too
	$(PY) -m pytest -m engines tests/engines

test-fast: $(STAMP)  ## the suite without slow-marked tests
	$(PY) -m pytest $(XDIST) -m "not slow and not sd and not engines"

test-sd: $(STAMP)  ## not in CI: SD1.5 full + LoRA, SD2.1 LoRA, SDXL LoRA (random weights, 64 px) end to end; ~25 min, up to 16 GB and 35 GB of disk
	$(PY) -m pytest -m sd tests/test_sd_architectures.py

test-latest:  ## not in CI: the newest releases the ranges allow (torch stays the CPU wheel), then the fast suite
	python3 -m venv --clear $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	echo "$(TORCH)" > $(LATEST_VENV)/torch-constraint.txt
	$(LATEST_VENV)/bin/python -m pip install -q -c $(LATEST_VENV)/torch-constraint.txt --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pip check
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	@echo "newest allowed versions: $(LATEST_VENV)/versions.txt (compare with $(LOCK))"
	$(LATEST_VENV)/bin/python -m pytest $(XDIST) -m "not slow and not sd and not engines"

lint: $(STAMP)
	$(PY) -m ruff check dbexp hydra_plugins tests
	$(PY) -m ruff format --check dbexp hydra_plugins tests

dashboard: $(STAMP)  ## MLflow UI over the embedded store (or MLFLOW_STORE=postgresql://… a tracking server's database), on http://127.0.0.1:$(PORT)
	@echo "MLflow UI of $(MLFLOW_STORE) on http://127.0.0.1:$(PORT) (Ctrl-C stops it)"
	$(VENV)/bin/mlflow ui --backend-store-uri "$(MLFLOW_STORE)" --host 127.0.0.1 --port $(PORT)

optuna-dashboard: $(STAMP)  ## optuna-dashboard over a sweep's storage (STORAGE=outputs/<sweep>.db | journal file | URL)
	@test -n "$(STORAGE)" || { echo "no outputs/sweep_*.db yet: run a sweep, or give STORAGE=<file or URL>"; exit 2; }
	@echo "optuna-dashboard of $(STORAGE) on http://127.0.0.1:$(OPTUNA_PORT) (Ctrl-C stops it)"
	$(VENV)/bin/optuna-dashboard "$(if $(findstring ://,$(STORAGE)),$(STORAGE),$(if $(filter %.db,$(STORAGE)),sqlite:///$(abspath $(STORAGE)),$(STORAGE)))" --host 127.0.0.1 --port $(OPTUNA_PORT)

clean:  ## build and test leftovers (runs in outputs/ and .venv are kept)
	rm -rf build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean  ## also the virtual environment
	rm -rf $(VENV) $(LOCK_VENV) $(LATEST_VENV)

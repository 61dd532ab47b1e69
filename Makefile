# dbexp — every target that runs code installs first when .venv is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
# make dashboard: the embedded MLflow store (logger=mlflow) and the port
MLFLOW_DB   ?= outputs/mlflow.db
PORT        ?= 5000
# make optuna-dashboard: a sweep's storage (default: the newest outputs/sweep_*.db) and the port
STORAGE     ?= $(firstword $(shell ls -t outputs/sweep_*.db 2>/dev/null))
OPTUNA_PORT ?= 8080
# make test: pytest workers (pytest-xdist), a test file each at a time, one torch thread each (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: install train test test-fast lint dashboard optuna-dashboard clean distclean

install: $(STAMP)  ## create .venv: torch first (the local CPU wheel), then dbexp with dev extras

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev]"
	@! $(PY) -m pip show torchvision >/dev/null 2>&1 || { echo "torchvision got installed: remove whatever pulled it in"; exit 1; }
	touch $(STAMP)

train: $(STAMP)  ## the default run: offline, the toy model and a toy subject (~1 min on 2 CPU cores)
	$(PY) -m dbexp.train

test: $(STAMP)  ## the whole suite (slow end-to-end tests included), on TEST_WORKERS workers
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)  ## the suite without slow-marked tests
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check dbexp hydra_plugins tests
	$(PY) -m ruff format --check dbexp hydra_plugins tests

dashboard: $(STAMP)  ## MLflow UI over the embedded store, on http://127.0.0.1:$(PORT)
	@echo "MLflow UI of $(abspath $(MLFLOW_DB)) on http://127.0.0.1:$(PORT) (Ctrl-C stops it)"
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(abspath $(MLFLOW_DB))" --host 127.0.0.1 --port $(PORT)

optuna-dashboard: $(STAMP)  ## optuna-dashboard over a sweep's storage (STORAGE=outputs/<sweep>.db | journal file | URL)
	@test -n "$(STORAGE)" || { echo "no outputs/sweep_*.db yet: run a sweep, or give STORAGE=<file or URL>"; exit 2; }
	@echo "optuna-dashboard of $(STORAGE) on http://127.0.0.1:$(OPTUNA_PORT) (Ctrl-C stops it)"
	$(VENV)/bin/optuna-dashboard "$(if $(findstring ://,$(STORAGE)),$(STORAGE),$(if $(filter %.db,$(STORAGE)),sqlite:///$(abspath $(STORAGE)),$(STORAGE)))" --host 127.0.0.1 --port $(OPTUNA_PORT)

clean:  ## build and test leftovers (runs in outputs/ and .venv are kept)
	rm -rf build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean  ## also the virtual environment
	rm -rf $(VENV)

# dbexp — every target that runs code installs first when .venv is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: install train test test-fast lint clean distclean

install: $(STAMP)  ## create .venv: torch first (the local CPU wheel), then dbexp with dev extras

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev]"
	@! $(PY) -m pip show torchvision >/dev/null 2>&1 || { echo "torchvision got installed: remove whatever pulled it in"; exit 1; }
	touch $(STAMP)

train: $(STAMP)  ## the default run: offline, tiny model, the bundled subject
	$(PY) -m dbexp.train

test: $(STAMP)  ## the whole suite (slow end-to-end tests included)
	$(PY) -m pytest

test-fast: $(STAMP)  ## the suite without slow-marked tests
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check dbexp hydra_plugins tests
	$(PY) -m ruff format --check dbexp hydra_plugins tests

clean:  ## build and test leftovers (runs in outputs/ and .venv are kept)
	rm -rf build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean  ## also the virtual environment
	rm -rf $(VENV)

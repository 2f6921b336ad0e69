# Two commands: `make demo` (the main job on the bundled data) and `make test`.
# Each creates .venv and installs speechvq on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m speechvq.run hydra.run.dir=runs/demo output.overwrite=true

test: $(STAMP)
	$(BIN)/python -m pytest -n auto  # one worker per core (pytest-xdist)

lint: $(STAMP)
	$(BIN)/ruff check speechvq tests scripts

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/compare_kmeans.py

clean:
	rm -rf runs multirun .pytest_cache

# Every target creates .venv from pyproject.toml when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SIZE ?= S

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

test: lint
	$(BIN)/pytest -q

comma := ,
FIRST_SIZE = $(firstword $(subst $(comma), ,$(SIZE)))

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --size $(SIZE)
	$(BIN)/python benchmarks/daemon_latency.py --size $(FIRST_SIZE) --samples 10 --poll-interval 2s --idle 60s \
		--json benchmarks/.work/daemon-$(FIRST_SIZE).json

clean:
	rm -rf $(VENV) .headwater .demo

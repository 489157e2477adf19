# Every target creates .venv from pyproject.toml when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SIZE ?= S

.PHONY: demo test lint bench clean

# The compiled YAML composer (src/headwater/_compose.c) needs libyaml's headers: Debian's
# libyaml-dev, installed here when missing. The tests check it against the Python one.
$(STAMP): pyproject.toml setup.py src/headwater/_compose.c
	@test -f /usr/include/yaml.h || (apt-get install -y -qq libyaml-dev \
		|| (apt-get update -qq && apt-get install -y -qq libyaml-dev))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@$(BIN)/python -c 'import headwater._compose' || { echo 'the compiled YAML composer did not build: it needs gcc and libyaml-dev' >&2; exit 1; }
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
	rm -rf $(VENV) .headwater .demo build src/headwater/_compose*.so

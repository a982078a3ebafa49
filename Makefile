# Two commands for a fresh machine: `make demo` (a small real search end to end) and `make test`.
# Both create .venv when missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tbray-installed
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-fast ui bench bench-predict gpu-check cluster-local clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# A small real search on the synthetic demo set: tf_efficientnet_lite0 with its bundled ImageNet
# weights, small images, 4 trials, CPU only; 4-6 minutes on 2 cores. The threshold is chosen so that the
# 95% lower bound of validation sensitivity clears 0.90, which the demo's 60 validation TB images allow.
demo: $(STAMP)
	$(PY) tune/search.py --demo --name $(DEMO_NAME) --epochs 4,6 --batch-sizes 16,32 --image-sizes 96,128 \
		--lr-range 1e-4 6e-4 --num-samples 4 --grace-period 2 --gpus-per-trial 0 --threshold-rule lower-bound

# Everything: the tiers below, the searches, the fault-tolerance runs and the real X-rays (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder

# The tests that start no Ray and run no search (markers `ray` and `search`, set in tests/conftest.py).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not ray"

# One run's viewers on 127.0.0.1 (MLflow, optuna-dashboard, TensorBoard); Ctrl-C stops them.
ui: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make ui NAME=<run name under results/>"; exit 2; }
	$(PY) tune/ui.py results/$(NAME)

bench: $(STAMP)
	$(PY) tune/bench.py --demo

# Streaming prediction: images/s and peak memory, PyTorch vs ONNX Runtime, 3,000 synthetic images at 224 px.
bench-predict: $(STAMP)
	$(PY) tune/bench_predict.py

# Where a search's GPU time goes, on one GPU (about 7 minutes): bare-loop and in-search images/s, GPU busy
# share at 1-8 trials per GPU, a 16-trial search against its compute bound. `--smoke` rehearses it on a CPU.
gpu-check: $(STAMP)
	$(PY) tune/gpu_check.py

# cluster/gpu.yaml's autoscaling on this machine (Ray's fake multi-node provider): a head, "GPU" worker
# nodes started as local processes when trials wait, a tiny search on them, the nodes going when idle.
cluster-local: $(STAMP)
	$(PY) tune/cluster_local.py $(if $(KEEP),--keep)

clean-venv:
	rm -rf $(VENV)

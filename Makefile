# Every target sets itself up: the first call creates .venv with a supported Python (3.11-3.13: `python3`
# when it is one, else the newest python3.13/3.12/3.11 found) and installs exactly the versions of the lock
# file for that Python and this machine's accelerator, locks/py3.X-ACCEL.txt, then gptjax itself and, on
# Python 3.11, the reference extra (PyTorch CPU, transformers). The stamp file makes later calls free until
# pyproject.toml or a lock file changes. docs/environment.md has the details.
#   PYTHON=python3.12   the interpreter (an explicit one that differs from .venv's starts .venv afresh)
#   ACCEL=cpu|tpu|cuda|cuda12|cuda13   the JAX build; detected by default (gptjax/environment.py accel), then
#                       kept; an explicit one that differs from .venv's starts .venv afresh
#   LOCKED=0            resolve from pyproject.toml's ranges instead (a platform with no lock file)
PYTHON ?=
ACCEL ?=
LOCKED ?= 1
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME ?= default
ARGS ?=
JOBS ?= 2
# Locks are made for these Pythons (gptjax/environment.py SUPPORTED) and for Linux on x86-64 with glibc
# 2.31 or newer (libtpu's wheels need it).
LOCK_PYTHONS := 3.11 3.12 3.13
LOCK_PLATFORM ?= x86_64-manylinux_2_31
UV ?= $(VENV)/bin/uv
# Where the CPU build of torch 2.13.0 comes from when locking the reference extra: these machines carry
# the wheel; elsewhere PyTorch's CPU index has it.
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*),--find-links /opt/wheels,\
	--index https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

# What .venv holds ("pycmd=... python=3.11 accel=cpu lock=..."); an explicit PYTHON or ACCEL that it does
# not match makes the stamp stale and .venv is built afresh, so no package of the old build stays behind.
INSTALLED := $(file < $(STAMP))
ifneq ($(PYTHON),)
ifeq ($(filter pycmd=$(PYTHON),$(INSTALLED)),)
FRESH := 1
endif
endif
ifneq ($(ACCEL),)
ifeq ($(filter accel=$(ACCEL)%,$(INSTALLED)),)
FRESH := 1
endif
endif
KEPT_ACCEL := $(patsubst accel=%,%,$(filter accel=%,$(INSTALLED)))

.PHONY: install lock experiment sample test test-quick lint clean sweep report describe bench bench-loss bench-sweep \
	bench-sweep-throughput bench-compile bench-generate bench-torch bench-mfu bench-allocator prepare bench-data tensorboard bench-checksum FORCE \
	tpu-setup tpu-sweep tpu-experiment

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard locks/*.txt) $(if $(FRESH),FORCE)
	@set -e; $(if $(FRESH),rm -rf $(VENV);) \
	if [ -x $(PY) ]; then py=$(PY); else py=$$(python3 -I gptjax/environment.py python $(PYTHON)); fi; \
	ver=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	accel=$$(python3 -I gptjax/environment.py accel $(or $(ACCEL),$(KEPT_ACCEL))); \
	lock=locks/py$$ver-$$accel.txt; ref=locks/py$$ver-reference.txt; \
	if [ "$(LOCKED)" = 1 ] && [ ! -f $$lock ]; then \
		echo "no lock file $$lock for this Python and accelerator; make install LOCKED=0 resolves from" \
			"pyproject.toml instead" >&2; exit 2; fi; \
	test -x $(PY) || $$py -m venv $(VENV); \
	echo "installing into $(VENV): Python $$ver, JAX for $$accel, $(if $(filter 1,$(LOCKED)),$$lock,unlocked)"; \
	$(PY) -m pip install --quiet --upgrade pip; \
	if [ "$(LOCKED)" = 1 ]; then \
		$(PY) -m pip install --quiet --no-deps --require-hashes -r $$lock; \
		if [ ! -f $$ref ]; then ref=; \
			echo "the reference extra (PyTorch, transformers) is locked for Python 3.11 only: the" \
				"equality tests against it skip"; \
		elif ! $(PY) -m pip install --quiet --no-deps --require-hashes -r $$ref; then ref=; \
			echo "reference extra not installed (no torch 2.13.0+cpu wheel found; PIP_EXTRA_INDEX_URL=" \
				"https://download.pytorch.org/whl/cpu make install brings it): the equality tests skip"; fi; \
		$(PY) -m pip freeze --exclude-editable | python3 -I gptjax/environment.py surplus $$lock $$ref \
			| xargs -r $(PY) -m pip uninstall --quiet -y; \
		$(PY) -m pip install --quiet --no-deps -e .; \
	else \
		$(PY) -m pip install --quiet -e ".[test$$(test $$accel = cpu || echo ,$$accel)]"; fi; \
	$(PY) -m pip check; \
	echo "pycmd=$(or $(PYTHON),python3) python=$$ver accel=$$accel lock=$(if $(filter 1,$(LOCKED)),$$lock $$ref,none)" > $(STAMP)

FORCE:

# Re-resolve the lock files from pyproject.toml with uv (locks/README.md); existing pins are kept unless
# UPGRADE=1. Each accelerator's lock is constrained by the CPU one, so the builds differ only in JAX's
# accelerator packages.
lock:
	test -x $(UV) || $(MAKE) install
	@set -e; for v in $(LOCK_PYTHONS); do \
		common="--python-version $$v --python-platform $(LOCK_PLATFORM) --generate-hashes \
			--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) --quiet"; \
		eval $(UV) pip compile pyproject.toml --extra test $$common -o locks/py$$v-cpu.txt; \
		for a in tpu cuda12 cuda13; do \
			eval $(UV) pip compile pyproject.toml --extra test --extra $$a -c locks/py$$v-cpu.txt \
				$$common -o locks/py$$v-$$a.txt; done; \
		echo "locked Python $$v: $$(grep -E '^(jax|flax)==' locks/py$$v-cpu.txt | cut -d' ' -f1 | tr '\n' ' ')"; \
	done; \
	eval $(UV) pip compile pyproject.toml --extra test --extra reference $(TORCH_WHEELS) \
		-c locks/py3.11-cpu.txt --python-version 3.11 --python-platform $(LOCK_PLATFORM) --generate-hashes \
		--custom-compile-command "'make lock'" $(if $(UPGRADE),--upgrade) --quiet -o locks/py3.11-reference.txt

# An experiment with get_sweep() (optimizer_comparison) is a comparison: its sweep runs (jobs = cores on a
# CPU) and its report is written; any other experiment trains one run, as `python -m gptjax train`.
experiment: $(STAMP)
	$(PY) -m gptjax experiment $(NAME) $(ARGS)

sample: $(STAMP)
	$(PY) -m gptjax sample runs/$(NAME) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q

# The tests whose numbers depend on the library versions (losses, optimizers and models against their
# references, configs, the environment and lock checks): what CI runs on the highest supported Python,
# where the whole suite would double CI's time (.ci/run, docs/environment.md "CI").
QUICK_TESTS := tests/test_environment.py tests/test_config.py tests/test_losses.py tests/test_optimizers.py \
	tests/test_optimizers_modern.py tests/test_models.py
test-quick: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q $(QUICK_TESTS)

# Tokenize a corpus once into a token store, then train on it with data.source=store:STORE:
# make prepare SOURCE=text:book.txt STORE=stores/book ARGS='data.tokenizer=bpe'
prepare: $(STAMP)
	$(PY) -m gptjax prepare $(SOURCE) $(STORE) $(ARGS)

sweep: $(STAMP)
	$(PY) -m gptjax sweep $(NAME) $(ARGS)

# Parameters, memory, FLOPs and step time of an experiment's model, allocating nothing:
# make describe NAME=default ARGS='model.n_layer=48 model.n_embd=1600 model.n_head=25 --accelerator v5p'
# The viewer for the event files every run writes; not in the lock files (nothing else needs it), so it is
# installed here on first use, at the newest release pip finds. DIR=runs/<experiment> for one sweep.
DIR ?= runs
tensorboard: $(STAMP)
	test -x $(VENV)/bin/tensorboard || $(PY) -m pip install --quiet -e '.[tensorboard]'
	$(VENV)/bin/tensorboard --logdir $(DIR)

describe: $(STAMP)
	$(PY) -m gptjax describe $(NAME) $(ARGS)

report: $(STAMP)
	$(PY) -m gptjax report $(NAME) $(ARGS)

bench-sweep: $(STAMP)
	$(PY) benchmarks/bench_sweep.py

# Trials/hour of the optimizer-comparison sweep per mode (--jobs 1, --jobs <cores>, --vmap, both) against
# nanoGPT-style PyTorch trials one after another (sweep_throughput.json; about an hour on 2 cores, so not
# in `make bench`). ARGS=--quick: 4 short trials, a few minutes (sweep_throughput_quick.json).
bench-sweep-throughput: $(STAMP)
	$(PY) benchmarks/bench_sweep.py --throughput $(ARGS)

bench-loss: $(STAMP)
	$(PY) benchmarks/bench_loss.py

bench-compile: $(STAMP)
	$(PY) benchmarks/bench_compile.py

bench-generate: $(STAMP)
	$(PY) benchmarks/bench_generate.py

# glibc malloc's setting (gptjax/allocator.py) on and off: page faults, system time, tokens/s, peak RSS.
bench-allocator: $(STAMP)
	$(PY) benchmarks/bench_allocator.py

# gptjax against Hugging Face's PyTorch GPT-2 and a nanoGPT-style PyTorch GPT (needs the reference extra).
bench-torch: $(STAMP)
	$(PY) benchmarks/bench_torch.py

# prepare MB/s (byte, BPE), loader tokens/s, start-up and peak RSS on a 2 GB vs a 20 MB store (data.json).
bench-data: $(STAMP)
	$(PY) benchmarks/bench_data.py

# SHA-256 sealing and verifying of a 512 MiB checkpoint against its orbax restore (checksum.json).
bench-checksum: $(STAMP)
	$(PY) benchmarks/bench_checksum.py

# GPT-2 small, T 1024, bfloat16 MFU on a GPU/TPU (benchmarks/results/mfu.json); says so and skips on a CPU.
bench-mfu: $(STAMP)
	$(PY) benchmarks/bench_mfu.py

# Every benchmark, each writing benchmarks/results/<name>.json.
bench: bench-loss bench-sweep bench-compile bench-generate bench-allocator bench-torch bench-mfu bench-checksum

lint: $(STAMP)
	$(VENV)/bin/ruff check gptjax tests experiments benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

# Cloud TPU VMs (docs/tpu-vm.md), from any machine with gcloud: every command runs on every worker.
# make tpu-setup TPU=name ZONE=zone [REPO=url BRANCH=main]
# make tpu-sweep TPU=name ZONE=zone NAME=optimizer_comparison DIR=gs://bucket/sweeps/x [ARGS=...]
# make tpu-experiment TPU=name ZONE=zone NAME=gpt2_adam DIR=gs://bucket/runs/x [ARGS=...]
TPU ?=
ZONE ?=
DIR ?=
BRANCH ?= main
tpu-setup:
	python3 tools/tpu.py setup --tpu "$(TPU)" --zone "$(ZONE)" --branch "$(BRANCH)" $(if $(REPO),--repo "$(REPO)")

tpu-sweep:
	python3 tools/tpu.py sweep --tpu "$(TPU)" --zone "$(ZONE)" --dir "$(DIR)" $(NAME) $(ARGS)

tpu-experiment:
	python3 tools/tpu.py experiment --tpu "$(TPU)" --zone "$(ZONE)" --workdir "$(DIR)" $(NAME) $(ARGS)

# Every target sets itself up: the first call creates .venv and installs gptjax with its test and
# reference (PyTorch, transformers) extras;
# the stamp file makes later calls free until pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME ?= default
ARGS ?=
JOBS ?= 2

.PHONY: install experiment sample test lint clean sweep report describe bench bench-loss bench-sweep bench-compile \
	bench-generate bench-torch bench-mfu bench-allocator prepare bench-data bench-checksum

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,reference]'
	touch $(STAMP)

experiment: $(STAMP)
	$(PY) -m gptjax train $(NAME) $(ARGS)

sample: $(STAMP)
	$(PY) -m gptjax sample runs/$(NAME) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q

# Tokenize a corpus once into a token store, then train on it with data.source=store:STORE:
# make prepare SOURCE=text:book.txt STORE=stores/book ARGS='data.tokenizer=bpe'
prepare: $(STAMP)
	$(PY) -m gptjax prepare $(SOURCE) $(STORE) $(ARGS)

sweep: $(STAMP)
	$(PY) -m gptjax sweep $(NAME) $(ARGS)

# Parameters, memory, FLOPs and step time of an experiment's model, allocating nothing:
# make describe NAME=default ARGS='model.n_layer=48 model.n_embd=1600 model.n_head=25 --accelerator v5p'
describe: $(STAMP)
	$(PY) -m gptjax describe $(NAME) $(ARGS)

report: $(STAMP)
	$(PY) -m gptjax report $(NAME) $(ARGS)

bench-sweep: $(STAMP)
	$(PY) benchmarks/bench_sweep.py

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

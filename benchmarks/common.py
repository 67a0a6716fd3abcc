"""What the benchmark scripts share: the model and batches they time, where results go and how."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import numpy as np

from gptjax import environment
from gptjax.config import PRESETS, DataConfig, Experiment, ModelConfig, TrainConfig
from gptjax.data.packing import Batch

RESULTS = Path(__file__).parent / "results"  # the JSON files docs/benchmarks.md quotes
BYTE_VOCAB = 258  # gptjax's byte tokenizer: 256 bytes, end of text, padding
# (name, layers, heads, width, sequence length, batch): the CPU shapes of the PyTorch comparison.
SHAPES = [("small", 4, 4, 128, 64, 12), ("medium", 6, 6, 384, 256, 8)]


def gpt_experiment(n_layer: int, n_head: int, n_embd: int, seq_len: int, batch: int, *, vocab: int,
                   dtype: str = "float32", data_parallel: int = -1) -> Experiment:
    """A GPT of the given shape trained with AdamW at the gpt3_adamw preset, no dropout; document_mask
    off: plain causal attention over the whole row, as Hugging Face's GPT2LMHeadModel computes it."""
    return Experiment(
        model=ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, context=seq_len, vocab_size=vocab,
                          dropout=0.0, dtype=dtype),
        data=DataConfig(seq_len=seq_len, batch_size=batch, document_mask=False),
        optim=PRESETS["gpt3_adamw"],
        train=TrainConfig(data_parallel=data_parallel, compilation_cache_dir="", progress=False))


def random_batches(count: int, batch: int, seq_len: int, *, high: int, seed: int = 0) -> list[Batch]:
    """`count` batches of uniform random token ids in [0, high), every target counted."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        tokens = rng.integers(0, high, (batch, seq_len + 1), dtype=np.int32)
        ones = np.ones((batch, seq_len), np.int32)
        batches.append(Batch(tokens[:, :-1], tokens[:, 1:], ones.astype(np.float32), ones))
    return batches


def write_json(path: Path | str, result: dict) -> Path:
    """Write `result` as indented JSON (its folder made if missing) and say where. Unless the result
    names its command already, the command line that ran the script goes first, with the time written."""
    path = Path(path)
    script = Path(sys.argv[0])
    command = " ".join(["python", f"{script.parent.name}/{script.name}", *sys.argv[1:]])
    result = {"command": result.get("command", command),
              "written": datetime.datetime.now().isoformat(timespec="minutes"),
              "environment": environment.record(), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")
    return path

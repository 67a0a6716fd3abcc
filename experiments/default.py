"""The default experiment: a small byte-level GPT on Python's own documentation, offline.

    make experiment                      # = python -m gptjax train default
    make experiment ARGS='train.steps=200 optim.preset=gpt2_adam'

Trains a 4-layer, 4-head, d=128 GPT (842,752 parameters) on `pydoc_data.topics`, the text of the
standard library's documentation topics that ships with every CPython, tokenised as bytes, 64 bytes of
context per sequence. AdamW with the gpt3_adamw preset's β and ε but a learning rate suited to this
size (2e-3; the preset's 2.5e-4 is for GPT-3 125M), 30 warmup steps, cosine decay to 10%, global-norm
clipping 1.0 and weight decay 0.1. What it printed (validation loss per step against the unigram
entropy, the sample, the speed): docs/experiments.md, "The default experiment".
"""

import dataclasses

from gptjax.config import PRESETS, DataConfig, Experiment, ModelConfig, SampleConfig, TrainConfig


def get_config() -> Experiment:
    return Experiment(
        model=ModelConfig(n_layer=4, n_head=4, n_embd=128, context=128, dropout=0.0),
        data=DataConfig(source="pydoc", seq_len=64, batch_size=32),
        optim=dataclasses.replace(PRESETS["gpt3_adamw"], lr=2e-3, schedule="cosine", warmup_steps=30,
                                  min_lr_ratio=0.1, grad_clip=1.0, weight_decay=0.1),
        train=TrainConfig(steps=800, eval_every=100, eval_batches=8, log_every=10),
        sample=SampleConfig(prompt="The ", max_new_tokens=120, temperature=0.7),
    )

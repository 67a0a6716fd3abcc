"""The five forum optimizer presets (docs/optimizers.md) on the default GPT, 3 seeds × 2 learning rates each.

    make sweep NAME=optimizer_comparison ARGS='--jobs 2'   # python -m gptjax sweep NAME --jobs 2
    make report NAME=optimizer_comparison                  # runs/optimizer_comparison/report.md and PNGs

Each preset runs exactly as the forum states it (constant lr, no warmup, no clipping) at its own learning
rate and at 10× it, since the forum's rates were chosen for models a thousand times larger and for far
longer runs. Seeds 0, 1, 2 are shared by all presets, so each seed gives every variant the same initial
parameters and batches and the report's paired differences are the optimizers' alone. 100 steps of the
default model (batch 32 × 64 bytes) per variant, evaluated every 20 steps on 4 validation batches: 30
variants. Results: docs/optimizer_comparison/report.md, discussed in docs/experiments.md.
"""

import dataclasses

from gptjax.config import Experiment, load_experiment
from gptjax.sweep import Times, per_optimizer, with_seeds

FORUM_PRESETS = ("bert_adam", "roberta_adam", "t5_adafactor", "gpt2_adam", "gpt3_adamw")
LR_MULTIPLIERS = (1.0, 10.0)
SEEDS = (0, 1, 2)


def get_config() -> Experiment:
    base = load_experiment("default")
    # Short runs: each variant spends ~35 s compiling and measuring before its first step on 1 core.
    return dataclasses.replace(
        base, train=dataclasses.replace(base.train, steps=100, eval_every=20, eval_batches=4, log_every=10,
                                        checkpoint_every=50, keep_checkpoints=1, progress=False),
        sample=dataclasses.replace(base.sample, max_new_tokens=16))


def get_sweep(base: Experiment) -> dict[str, Experiment]:
    # Each preset at its own lr times the multipliers: Adafactor's lr is a relative step, not Adam's scale.
    lrs = {"optim.lr": [Times(m) for m in LR_MULTIPLIERS]}
    return with_seeds(per_optimizer(base, {preset: lrs for preset in FORUM_PRESETS}), SEEDS)

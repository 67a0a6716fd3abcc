"""The default GPT trained with the `gpt3_adamw` preset exactly: AdamW, decoupled weight decay.

    make experiment NAME=gpt3_adamw

docs/optimizers.md, "Presets": lr 2.5e-4 (constant), β 0.9/0.95, ε 1e-8, weight decay 0.01 applied as
θ ← θ − lr·wd·θ beside the Adam step. Pairs with `gpt2_adam` (same seed → same initial parameters and
batches).
"""

import dataclasses

from gptjax.config import PRESETS, Experiment, load_experiment


def get_config() -> Experiment:
    return dataclasses.replace(load_experiment("default"), optim=PRESETS["gpt3_adamw"])

"""The default GPT trained with the `gpt2_adam` preset exactly: Adam with coupled L2 weight decay.

    make experiment NAME=gpt2_adam

docs/optimizers.md, "Presets": lr 2.5e-4 (constant), β 0.9/0.999, ε 1e-8, L2 0.01 added to the
gradient before the moments (the GPT and GPT-2 setting). Compare with `gpt3_adamw`, which differs only
in the update rule and β2: the same seed gives both the same initial parameters and the same batches.
"""

import dataclasses

from gptjax.config import PRESETS, Experiment, load_experiment


def get_config() -> Experiment:
    return dataclasses.replace(load_experiment("default"), optim=PRESETS["gpt2_adam"])

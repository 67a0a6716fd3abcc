"""GPT-1-style fine-tuning: classify documentation passages, with the language model as auxiliary loss.

    make experiment                        # pre-train the default GPT first (runs/default, ~2 min)
    make experiment NAME=gpt1_finetune

Starts from the default experiment's trained GPT (`train.init_from=runs/default`: same shape, same byte
tokenizer) and adds a linear head on the final hidden state of the last token, the end-of-text token
that closes every input and plays GPT-1's "extract" token. The task is the offline classification set
of `gptjax.data.sources.load_examples` (passages of the documentation topics labelled by the group
their topic belongs to; whole topics are held out for validation). Loss L3 = L2 + λ·L1 with λ = 0.5:
L2 the classification cross-entropy, L1 the causal-LM loss on the same inputs (Radford et al. 2018,
§3.2), both logged, with classification accuracy. Optimizer: the gpt2_adam preset (Adam with coupled
L2 0.01, the GPT setting) at GPT-1's fine-tuning learning rate 6.25e-5 with linear decay (§4.1) after a
2-step warmup (the paper's 0.2% of training is under one step here), for 3 epochs.
`train.init_from=` (empty) fine-tunes from scratch for comparison. What both starts printed, against
the majority-class and bag-of-words baselines: docs/experiments.md, "GPT-1 fine-tuning".
"""

import dataclasses

from gptjax.config import PRESETS, DataConfig, Experiment, ObjectiveConfig, TrainConfig, load_experiment


def get_config() -> Experiment:
    pretrained = load_experiment("default")
    return dataclasses.replace(
        pretrained,
        data=DataConfig(source="pydoc", seq_len=128, batch_size=32),
        objective=ObjectiveConfig(name="gpt1_finetune", lm_weight=0.5),
        optim=dataclasses.replace(PRESETS["gpt2_adam"], lr=6.25e-5, schedule="linear", warmup_steps=2),
        # 100 steps of 32 = 3.2 epochs of the 991 training passages (GPT-1 fine-tuned for 3 epochs).
        train=TrainConfig(steps=100, eval_every=25, eval_batches=8, log_every=10, init_from="runs/default"),
    )

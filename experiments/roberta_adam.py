"""RoBERTa pre-training (masked LM with dynamic masking, no NSP) with the `roberta_adam` preset, offline.

    make experiment NAME=roberta_adam
    make experiment NAME=roberta_adam ARGS='objective.static_masking=true'   # BERT's fixed masks

The BERT of `bert_adam` configured as RoBERTa (Liu et al. 2019): no segment embeddings, no NSP, inputs
are contiguous 128-token stretches of the token stream ("FULL-SENTENCES", §4.2), and a fresh mask is
drawn every time a sequence is seen (dynamic masking, §4.1); `objective.static_masking=true` fixes one
mask per sequence instead, for the comparison of the paper's Table 1. Optimizer: the forum's roberta_adam
(Adam, coupled L2 0.01, β 0.9/0.98, ε 1e-6) at the learning rate `bert_adam` uses for this size (1e-3
after 30 warmup steps, not the preset's 1e-4), so the two experiments differ in the objective and β2/ε;
`optim.preset=roberta_adam` restores the preset exactly.
What it printed: docs/experiments.md, "BERT and RoBERTa results".
"""

import dataclasses

from gptjax.config import PRESETS, Experiment, ObjectiveConfig, load_experiment


def get_config() -> Experiment:
    bert = load_experiment("bert_adam")
    return dataclasses.replace(
        bert,
        model=dataclasses.replace(bert.model, layer_norm_eps=1e-5, type_vocab_size=0),
        objective=ObjectiveConfig(name="mlm"),
        optim=dataclasses.replace(PRESETS["roberta_adam"], lr=1e-3, warmup_steps=30),
    )

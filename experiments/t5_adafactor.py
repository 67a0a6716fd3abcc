"""T5 pre-training (span corruption) with the `t5_adafactor` preset, offline.

    make experiment NAME=t5_adafactor
    make experiment NAME=t5_adafactor ARGS='optim.preset=t5_adafactor_paper'

A 3+3-layer, 4-head, d=128 T5 (v1.0 layout: RMS norms without bias, no biases, ReLU MLP, relative
position bias shared across each stack's layers, tied head) on the standard library's documentation
topics with a 4,096-token byte-level BPE (its 100 sentinels included). 15% of each 128-token encoder
input is dropped in spans of mean length 3, each span replaced by a sentinel; the decoder predicts
the sentinels and the dropped spans (Raffel et al. 2020, §3.1.4). Optimizer: the forum's t5_adafactor
exactly (relative step 1e-3 scaled by each parameter's RMS, factored second moment, β1 0.9).
What it printed (the decoder's loss and accuracy against the token-unigram entropy):
docs/experiments.md, "T5 results".
"""

from gptjax.config import PRESETS, DataConfig, Experiment, ModelConfig, ObjectiveConfig, TrainConfig


def get_config() -> Experiment:
    return Experiment(
        model=ModelConfig(family="t5", n_layer=3, n_head=4, n_embd=128, context=128, activation="relu",
                          layer_norm_eps=1e-6, bias=False),
        data=DataConfig(source="pydoc", tokenizer="bpe", tokenizer_vocab=4096, seq_len=128, batch_size=32),
        objective=ObjectiveConfig(name="span_corruption"),
        optim=PRESETS["t5_adafactor"],
        train=TrainConfig(steps=600, eval_every=100, eval_batches=8, log_every=10),
    )

"""BERT pre-training (masked LM + next-sentence prediction) with the `bert_adam` preset, offline.

    make experiment NAME=bert_adam
    make experiment NAME=bert_adam ARGS='optim.preset=roberta_adam'   # any preset swaps in

A 4-layer, 4-head, d=128 BERT (post-LayerNorm, exact GELU, segment embeddings, MLM head tied to the
token embedding, NSP head on [CLS]) on the standard library's documentation topics, tokenised with a
4,096-token byte-level BPE trained on the training split (cached in the workdir). Each example is
`[CLS] A [SEP] B [SEP]` of 128 tokens, B the real next sentences half of the time; 15% of the
non-special tokens are chosen, 80% of those become [MASK], 10% a random token, 10% stay (Devlin et al.
2019, §3.1). Loss = MLM + NSP, both logged. The optimizer is the forum's bert_adam (Adam, coupled L2
0.01, β 0.9/0.999, ε 1e-6) with a learning rate suited to a 1.4M-parameter model trained for a few
hundred steps: 1e-3 after 30 warmup steps (the forum's 2e-5 is a fine-tuning value; at it, or at the
paper's pre-training 1e-4, this model is still learning the token frequencies after 600 steps).
`optim.preset=bert_adam` restores the preset exactly.
What it printed, and why MLM sits near the token-unigram entropy and NSP at chance at this budget:
docs/experiments.md, "BERT and RoBERTa results".
"""

import dataclasses

from gptjax.config import PRESETS, DataConfig, Experiment, ModelConfig, ObjectiveConfig, TrainConfig


def get_config() -> Experiment:
    return Experiment(
        model=ModelConfig(family="bert", n_layer=4, n_head=4, n_embd=128, context=128,
                          activation="gelu_exact", layer_norm_eps=1e-12, type_vocab_size=2),
        data=DataConfig(source="pydoc", tokenizer="bpe", tokenizer_vocab=4096, seq_len=128, batch_size=32),
        objective=ObjectiveConfig(name="mlm_nsp"),
        optim=dataclasses.replace(PRESETS["bert_adam"], lr=1e-3, warmup_steps=30),
        train=TrainConfig(steps=600, eval_every=100, eval_batches=8, log_every=10),
    )

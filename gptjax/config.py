"""Typed experiment configuration: the only home of defaults.

An experiment is a frozen tree of dataclasses. Experiment files in `experiments/` build one with
`get_config()`; the command line replaces fields by dotted path (`train.steps=200`), parsed and
type-checked by OmegaConf against the dataclass fields; `validate()` then checks ranges and
combinations. All of this happens before JAX is imported, so bad input costs nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, get_args

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


class ConfigError(ValueError):
    """Bad user input; the message is one line meant for the terminal."""


# The names of every registry, written here once and nowhere else: the config fields are typed with them
# (an override outside them is refused with the known names, before JAX is imported), and each module that
# implements a registry builds its dict with `registry(Names, {...})`, which refuses at import a dict that
# does not implement exactly these names.
Family = Literal["gpt", "bert", "t5"]  # gptjax/models
Activation = Literal["gelu", "gelu_exact", "relu", "tanh", "sigmoid", "swiglu"]  # gptjax/layers.py
DType = Literal["float32", "bfloat16", "float16"]  # gptjax/models/gpt.py
AttentionImpl = Literal["auto", "xla", "einsum"]  # gptjax/layers.py
Remat = Literal["none", "full", "dots"]  # gptjax/models/gpt.py
TokenizerKind = Literal["byte", "bpe", "hf"]  # gptjax/data/tokenizers.py
ObjectiveName = Literal["causal_lm", "gpt1_finetune", "mlm_nsp", "mlm", "span_corruption"]  # objectives
RuleName = Literal["adam_l2", "adamw", "adafactor", "lamb", "lion", "sophia", "muon", "schedule_free_adamw",
                   "ademamix", "adopt", "nadamw", "prodigy", "soap"]  # gptjax/optimizers.py
ScheduleName = Literal["constant", "linear", "cosine", "rsqrt"]  # gptjax/optimizers.py
DecayMask = Literal["ndim>=2", "all", "none"]  # gptjax/optimizers.py
LossTerm = Literal["ce", "label_smoothing", "z", "kl", "mse", "unlikelihood"]  # gptjax/losses.py
Normalization = Literal["token", "sequence", "sum"]  # gptjax/losses.py
Chunked = Literal["auto", "always", "never"]  # not on/off: YAML would read those as booleans


def known(names) -> tuple[str, ...]:
    """The names of a registry's `Literal` type, in order."""
    return get_args(names)


def registry(names, implementations: dict) -> dict:
    """An implementation registry of the names of the `Literal` type `names`, in their order; a TypeError
    at import if it does not implement exactly those names (so no copy of the names can drift)."""
    if sorted(implementations) != sorted(known(names)):
        raise TypeError(f"a registry implements {sorted(implementations)}, but its names are {known(names)}")
    return {name: implementations[name] for name in known(names)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: Family = "gpt"  # gpt (decoder-only) | bert (encoder-only; RoBERTa too) | t5 (encoder-decoder)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    context: int = 256  # maximum sequence length (learned position embeddings)
    vocab_size: int = 0  # 0: the tokenizer's vocabulary size, filled in by `resolve`
    mlp_ratio: int = 4
    activation: Activation = "gelu"  # gelu (tanh approximation, as GPT-2), relu, tanh, sigmoid, swiglu
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    dtype: DType = "float32"  # activation dtype; parameters stay float32, softmax and loss float32
    # xla: jax.nn.dot_product_attention; einsum: the plain reference path; auto: xla where the backend has
    # a fused kernel (cuDNN on GPU), einsum on CPU (2–7% faster there)
    attention: AttentionImpl = "auto"
    scan_layers: bool = False  # run the layer stack under jax.lax.scan (compile time flat in depth)
    remat: Remat = "none"  # scanned layers only: none | full | dots (what the backward pass recomputes)
    n_classes: int = 0  # gpt: a classification head on the last token (gpt1_finetune); 0: the data's
    type_vocab_size: int = 2  # bert: segment (sentence A/B) embeddings; 0: none (RoBERTa)
    n_decoder_layer: int = 0  # t5: decoder layers; 0: as many as model.n_layer
    relative_buckets: int = 32  # t5: relative position buckets (half per direction in the encoder)
    relative_max_distance: int = 128  # t5: distances beyond this share the last bucket


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "pydoc"  # pydoc | text:PATH | tfds:NAME | store:PATH (made by `python -m gptjax prepare`)
    # byte | bpe (byte-level BPE trained on the training split, kept in the workdir) | hf (import-hf's)
    tokenizer: TokenizerKind = "byte"
    # bpe: vocabulary size, special tokens included; at least 512 when a BPE is trained (an imported
    # checkpoint's vocabulary, recorded here by import-hf, may be smaller)
    tokenizer_vocab: int = 8192
    seq_len: int = 128
    batch_size: int = 32  # global batch, in sequences
    val_fraction: float = 0.1  # share of documents held out for validation
    document_mask: bool = True  # packed documents never attend to each other
    tfds_data_dir: Optional[str] = None  # noqa: UP045 (OmegaConf reads Optional, not X | None)
    tfds_train_split: str = "train"
    tfds_val_split: str = "validation"
    tfds_text_key: str = "text"
    tfds_label_key: str = "label"  # classification sources (gpt1_finetune): the integer label feature
    text_split: str = ""  # prepare, text: document separator, e.g. '\n\n' ("": a file is one document)
    text_field: str = "text"  # prepare, JSON Lines and Parquet: the field holding a record's text


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """An update rule with its hyperparameters; the defaults are the gpt3_adamw preset, and every entry of
    `PRESETS` below is a complete instance. `gptjax/optimizers.py` builds the optax chain from it and
    docs/optimizers.md gives the formulas; `preset` records which preset a config started from."""

    preset: str = "gpt3_adamw"
    rule: RuleName = "adamw"  # adam_l2 (coupled L2), adamw (decoupled), adafactor, or a later rule (RuleName)
    lr: float = 2.5e-4  # peak learning rate; Adafactor: the relative step size ρ
    b1: float = 0.9  # Adafactor: momentum on the final update, 0 for none
    b2: float = 0.95  # Adafactor: a constant β2 with Adam's bias correction (docs/optimizers.md)
    eps: float = 1e-8  # Adam: added to sqrt(v̂); Adafactor: eps**2 is added to g² (its ε1)
    weight_decay: float = 0.01
    schedule: ScheduleName = "constant"  # constant | linear | cosine | rsqrt
    warmup_steps: int = 0  # linear ramp from lr/warmup_steps to lr, for every schedule
    min_lr_ratio: float = 0.0  # floor of linear/cosine decay, as a fraction of lr
    # The step at which linear/cosine decay ends (and AdEMAMix's T_α,β3 when -1); 0: train.steps. Set it
    # to keep a schedule's horizon when a run is resumed with a larger train.steps.
    schedule_steps: int = 0
    rsqrt_timescale: int = 10_000  # rsqrt: lr·sqrt(τ/max(t, τ)), flat for the first τ updates (T5: 10^4)
    grad_clip: float = 0.0  # global-norm clipping threshold; 0 disables
    decay_mask: DecayMask = "ndim>=2"  # which parameters get weight decay: ndim>=2 | all | none
    # Adafactor only (Shazeer & Stern 2018), with the paper's defaults.
    adafactor_decay_exponent: float = 0.0  # c > 0: the paper's β̂2(t) = 1 - t^(-c) replaces b2 (T5: 0.8)
    adafactor_eps_scale: float = 1e-3  # ε2: floor of a parameter's RMS in the relative step
    adafactor_clip: float = 1.0  # d: update clipping, U / max(1, RMS(U)/d); 0 disables
    adafactor_factor_min_dim: int = 128  # factor v when a tensor's two largest dims are both this long
    adafactor_relative_step: bool = True  # step = lr·max(ε2, RMS(θ)); False: lr is the absolute step
    # Rules beyond the forum (gptjax/optimizers_modern.py, docs/optimizers.md "Rules beyond the forum").
    sophia_gamma: float = 0.01  # γ in clip(m / max(γ·h, ε), 1)
    sophia_interval: int = 10  # k: the Hessian diagonal is re-estimated every k updates
    muon_momentum: float = 0.95  # β of Muon's Nesterov momentum (its AdamW part uses b1, b2, eps)
    muon_ns_steps: int = 5  # Newton–Schulz iterations of the orthogonalisation
    muon_adam_lr_ratio: float = 1.0  # the AdamW part's lr as a multiple of lr (Jordan: 3e-4 / 0.02)
    muon_rms_scale: float = 0.0  # 0: Jordan's √max(1, out/in); c > 0: Liu et al.'s c·√max(in, out)
    ademamix_b3: float = 0.9999  # β3 of the slow EMA
    ademamix_alpha: float = 5.0  # α, weight of the slow EMA
    ademamix_warmup_steps: int = -1  # T_α,β3 of the α and β3 warmups; -1: train.steps (the paper's), 0: none
    prodigy_d0: float = 1e-6  # d0, Prodigy's initial under-estimate of the distance to the solution
    soap_precondition_frequency: int = 10  # refresh SOAP's eigenbasis every this many updates
    soap_max_precond_dim: int = 10_000  # a matrix side longer than this is not rotated


# docs/optimizers.md, "Presets". The five presets without a suffix carry exactly the forum's table
# and nothing it does not state (constant schedule, no warmup, no clipping); override the rest per run.
# The `_paper` presets are what the papers' authors ran: the paper's numbers, and where a paper is silent
# or ambiguous (ε, clipping, coupling of the decay) their released code, cited line by line.
# Every preset decays the ndim >= 2 parameters except position embeddings (docs/optimizers.md).
PRESETS: dict[str, OptimConfig] = {
    # Forum table (docs/optimizers.md, "Presets").
    "bert_adam": OptimConfig("bert_adam", "adam_l2", lr=2e-5, b1=0.9, b2=0.999, eps=1e-6,
                             weight_decay=0.01),
    "roberta_adam": OptimConfig("roberta_adam", "adam_l2", lr=1e-4, b1=0.9, b2=0.98, eps=1e-6,
                                weight_decay=0.01),
    # lr is Adafactor's relative step; ε = 1e-6 is on Adam's scale: ε1 = ε² is added inside the root.
    "t5_adafactor": OptimConfig("t5_adafactor", "adafactor", lr=1e-3, b1=0.9, b2=0.999, eps=1e-6,
                                weight_decay=0.0),
    "gpt2_adam": OptimConfig("gpt2_adam", "adam_l2", lr=2.5e-4, b1=0.9, b2=0.999, eps=1e-8,
                             weight_decay=0.01),
    "gpt3_adamw": OptimConfig("gpt3_adamw", "adamw", lr=2.5e-4, b1=0.9, b2=0.95, eps=1e-8,
                              weight_decay=0.01),
    # Devlin et al. 2019, §A.2: "Adam with learning rate of 1e-4, β1 = 0.9, β2 = 0.999, L2 weight decay of
    # 0.01, learning rate warmup over the first 10,000 steps, and linear decay", 1M steps. ε = 1e-6 and
    # global-norm clipping at 1.0 are from google-research/bert optimization.py, whose
    # AdamWeightDecayOptimizer decays decoupled (lr·wd·θ beside the Adam step) and skips bias correction;
    # optax's bias-corrected AdamW is the closest rule here.
    "bert_adam_paper": OptimConfig("bert_adam_paper", "adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-6,
                                   weight_decay=0.01, schedule="linear", warmup_steps=10_000,
                                   grad_clip=1.0),
    # Liu et al. 2019, Table 9 (RoBERTa-base): peak lr 6e-4, β 0.9/0.98, ε 1e-6, weight decay 0.01, 24k
    # warmup steps, linear decay over 500k steps, gradient clipping 0.0. Trained with fairseq, whose
    # `adam` is the AdamW variant (decay lr·wd·θ outside the moments; fairseq/optim/adam.py).
    "roberta_adam_paper": OptimConfig("roberta_adam_paper", "adamw", lr=6e-4, b1=0.9, b2=0.98, eps=1e-6,
                                      weight_decay=0.01, schedule="linear", warmup_steps=24_000),
    # Raffel et al. 2020, §3.1.2: Adafactor, pre-training lr 1/sqrt(max(n, 10^4)), i.e. lr = 0.01 flat for
    # τ = 10^4 steps then rsqrt. The optimizer is Mesh TensorFlow's Adafactor at its defaults: β1 = 0
    # (no momentum), β̂2(t) = 1 - t^-0.8, ε1 = 1e-30 (eps = 1e-15 here), ε2 = 1e-3, clipping d = 1.0,
    # relative step, factoring from 128; no weight decay. (b2 is unused once the exponent is set.)
    "t5_adafactor_paper": OptimConfig("t5_adafactor_paper", "adafactor", lr=1e-2, b1=0.0, b2=0.999,
                                      eps=1e-15, weight_decay=0.0, schedule="rsqrt",
                                      rsqrt_timescale=10_000, adafactor_decay_exponent=0.8),
    # Raffel et al. 2020, §3.1.2: fine-tuning at a constant learning rate of 0.001; same Adafactor.
    "t5_adafactor_finetune_paper": OptimConfig("t5_adafactor_finetune_paper", "adafactor", lr=1e-3, b1=0.0,
                                               b2=0.999, eps=1e-15, weight_decay=0.0,
                                               adafactor_decay_exponent=0.8),
    # Radford et al. 2018 (GPT-1), §4.1: Adam, max lr 2.5e-4 "increased linearly from zero over the first
    # 2000 updates and annealed to 0 using a cosine schedule", "a modified version of L2 regularization
    # proposed in [37] (Loshchilov & Hutter), with w = 0.01 on all non bias or gain weights": decoupled,
    # as openai/finetune-transformer-lm opt.py confirms (p - lrt·(m/(sqrt(v)+e) + l2·p), e = 1e-8). The
    # GPT-2 paper gives no optimizer settings, so GPT-1's stand for both.
    "gpt2_adam_paper": OptimConfig("gpt2_adam_paper", "adamw", lr=2.5e-4, b1=0.9, b2=0.999, eps=1e-8,
                                   weight_decay=0.01, schedule="cosine", warmup_steps=2000),
    # Brown et al. 2020, Table 2.1 and §B (GPT-3 Small, 125M): Adam β 0.9/0.95, ε 1e-8, lr 6e-4, linear
    # warmup over 375M tokens (750 steps of its 0.5M-token batches), cosine decay to 10%, global-norm
    # clipping 1.0, decoupled weight decay 0.1 ([LH17]).
    "gpt3_adamw_paper": OptimConfig("gpt3_adamw_paper", "adamw", lr=6e-4, b1=0.9, b2=0.95, eps=1e-8,
                                    weight_decay=0.1, schedule="cosine", warmup_steps=750,
                                    min_lr_ratio=0.1, grad_clip=1.0),
    # Rules beyond the forum (docs/optimizers.md, "Rules beyond the forum"): each paper's own numbers, and
    # where the paper is silent the authors' released code's defaults; what neither states is said here.
    # You et al. 2019, Algorithm 2 and §4 (BERT): β 0.9/0.999, ε 1e-6, decay 0.01 inside the trust ratio.
    # The paper tunes lr per batch size (with warmup and polynomial decay); 1e-3 is not a paper number but
    # TF-Addons' LAMB default, a starting point for a sweep.
    "lamb_paper": OptimConfig("lamb_paper", "lamb", lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01),
    # Chen et al. 2023, §5: β 0.95/0.98 for language models (0.9/0.99 elsewhere); "a suitable learning rate
    # for Lion is typically 3-10x smaller than that for AdamW" and the decoupled decay "3-10x larger", so
    # that lr·wd stays AdamW's. Here gpt3_adamw_paper's lr 6e-4 ÷ 10 and decay 0.1 × 10, its schedule kept.
    "lion_paper": OptimConfig("lion_paper", "lion", lr=6e-5, b1=0.95, b2=0.98, eps=1e-8, weight_decay=1.0,
                              schedule="cosine", warmup_steps=750, min_lr_ratio=0.1, grad_clip=1.0),
    # Liu et al. 2023, §3.1 (GPT-2 small, 125M): β1 0.96 (code: 0.965), β2 0.99, ε 1e-12, Hessian every k = 10
    # steps, γ = 0.01 for the Hutchinson estimator (Sophia-H), cosine to 0.05·lr after 2k warmup steps,
    # clipping 1.0; lr 6e-4 and decay 0.2 from the authors' README table (Liuhong99/Sophia) for 125M.
    "sophia_paper": OptimConfig("sophia_paper", "sophia", lr=6e-4, b1=0.965, b2=0.99, eps=1e-12,
                                weight_decay=0.2, schedule="cosine", warmup_steps=2000, min_lr_ratio=0.05,
                                grad_clip=1.0, sophia_gamma=0.01, sophia_interval=10),
    # Jordan et al. 2024 (KellerJordan/Muon README): Muon lr 0.02, Nesterov momentum 0.95, 5 Newton–Schulz
    # steps, decay 0.01 for the hidden matrices; AdamW lr 3e-4 (ratio 0.015), β 0.9/0.95, decay 0.01 for the
    # rest. Constant lr as in the README (the speedruns add their own warmup/cooldown).
    "muon_paper": OptimConfig("muon_paper", "muon", lr=0.02, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01,
                              muon_momentum=0.95, muon_ns_steps=5, muon_adam_lr_ratio=0.015),
    # Liu et al. 2025 ("Muon is Scalable", Moonlight), §2.2: decoupled decay 0.1 on every matrix and the
    # update scaled to RMS 0.2·√max(A, B) so that Muon reuses AdamW's lr and decay; AdamW β 0.9/0.95 for the
    # rest. lr and schedule are gpt3_adamw_paper's, as the method intends.
    "muon_moonlight_paper": OptimConfig("muon_moonlight_paper", "muon", lr=6e-4, b1=0.9, b2=0.95, eps=1e-8,
                                        weight_decay=0.1, schedule="cosine", warmup_steps=750,
                                        min_lr_ratio=0.1, grad_clip=1.0, muon_momentum=0.95,
                                        muon_rms_scale=0.2),
    # Defazio et al. 2024, Algorithm 1, with the defaults of the authors' AdamWScheduleFree
    # (facebookresearch/schedule_free): lr 0.0025, β1 0.9 (interpolation), β2 0.999, ε 1e-8, no decay; a
    # constant lr (warmup, if any, via warmup_steps: the paper warms up, the code's default does not).
    "schedule_free_adamw_paper": OptimConfig("schedule_free_adamw_paper", "schedule_free_adamw", lr=0.0025,
                                             b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
    # Pagliardini et al. 2024, Algorithm 1 and §4: β1 0.9, β2 0.999, β3 0.9999, α 5, T_α,β3 = T (the run's
    # length), β_start = β1. The paper keeps its AdamW baseline's lr and decay; gpt3_adamw_paper's here.
    "ademamix_paper": OptimConfig("ademamix_paper", "ademamix", lr=6e-4, b1=0.9, b2=0.999, eps=1e-8,
                                  weight_decay=0.1, schedule="cosine", warmup_steps=750, min_lr_ratio=0.1,
                                  grad_clip=1.0, ademamix_b3=0.9999, ademamix_alpha=5.0,
                                  ademamix_warmup_steps=-1),
    # Taniguchi et al. 2024, §5 and the authors' code (iShohei220/adopt): lr 1e-3, β 0.9/0.9999, ε 1e-6,
    # clipping at t^¼, no decay by default.
    "adopt_paper": OptimConfig("adopt_paper", "adopt", lr=1e-3, b1=0.9, b2=0.9999, eps=1e-6,
                               weight_decay=0.0),
    # Dozat 2016: lr 2e-3, β 0.9/0.999, ε 1e-8 (the defaults Keras and PyTorch take from the paper), with
    # AdamW's decoupled decay; 0.01 is PyTorch's AdamW default, not a paper number.
    "nadamw_paper": OptimConfig("nadamw_paper", "nadamw", lr=2e-3, b1=0.9, b2=0.999, eps=1e-8,
                                weight_decay=0.01),
    # Mishchenko & Defazio 2023 and the authors' prodigyopt defaults: lr 1.0 (a multiplier of the learned
    # step d), β 0.9/0.999, β3 = √β2, d0 1e-6, ε 1e-8, no decay; the paper recommends cosine annealing.
    "prodigy_paper": OptimConfig("prodigy_paper", "prodigy", lr=1.0, b1=0.9, b2=0.999, eps=1e-8,
                                 weight_decay=0.0, schedule="cosine", prodigy_d0=1e-6),
    # Vyas et al. 2024 and the authors' code (nikhilvyas/SOAP): lr 3e-3, β 0.95/0.95 (the preconditioner's
    # decay = β2), ε 1e-8, decoupled decay 0.01, eigenbasis refreshed every 10 steps, sides up to 10000.
    "soap_paper": OptimConfig("soap_paper", "soap", lr=3e-3, b1=0.95, b2=0.95, eps=1e-8, weight_decay=0.01,
                              soap_precondition_frequency=10, soap_max_precond_dim=10_000),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    # The device mesh (docs/sharding.md): data × fsdp × tensor devices; -1 (data or fsdp): all the rest.
    data_parallel: int = -1  # size of the data axis: batch split over it, parameters replicated
    fsdp: int = 1  # size of the fsdp axis: batch split, parameters and optimizer state sharded over it
    tensor: int = 1  # size of the tensor axis: attention heads and MLP hidden units split (Megatron)
    grad_accum: int = 1  # micro-batches per step; the update equals one batch of data.batch_size
    max_nonfinite_steps: int = 5  # stop after this many non-finite (skipped) steps in a row
    progress: bool = True
    # JAX's persistent compilation cache: a repeated run or a sweep's later variants skip compiling.
    compilation_cache_dir: str = ".cache/jax"  # "" disables
    # Multi-host: join a jax.distributed job (TPU VM slices and SLURM describe it themselves).
    distributed: bool = False
    coordinator_address: str = ""  # host:port of process 0, when the cluster does not say
    num_processes: int = 1
    process_id: int = 0
    # Start from another run's parameters (a workdir of this codebase, e.g. a pre-trained GPT for
    # gpt1_finetune, or one written by `import-hf`): parameters present in both are copied, new ones (a
    # classification head) keep their fresh initialisation, the optimizer starts anew. Ignored on resume.
    init_from: str = ""
    # Resume with a changed optimizer (preset, rule, or a field that changes its state's structure):
    # keep the checkpoint's parameters and step, start a fresh optimizer state. It acts only while the
    # checkpoint's optimizer differs from this config's, so the same command resumes exactly after a stop.
    reset_optimizer: bool = False


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    prompt: str = ""
    max_new_tokens: int = 200  # prompt + new tokens must fit the model's context
    temperature: float = 0.8  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What the model is trained to predict; each name is a file in `gptjax/objectives/`."""

    name: ObjectiveName = "causal_lm"  # causal_lm | gpt1_finetune | mlm_nsp | mlm | span_corruption
    # mlm_nsp / mlm (Devlin et al. 2019, §3.1): rate of non-special tokens chosen, and what they become.
    mask_rate: float = 0.15
    mask_token_rate: float = 0.8  # of the chosen: replaced by [MASK]
    random_token_rate: float = 0.1  # of the chosen: replaced by a random token; the rest stay unchanged
    static_masking: bool = False  # mlm: one fixed mask per sequence (BERT), not a fresh one per visit
    nsp_weight: float = 1.0  # mlm_nsp: total = MLM + nsp_weight · NSP (BERT: 1)
    # span_corruption (Raffel et al. 2020, §3.1.4): share of tokens dropped, mean length of a span.
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    # gpt1_finetune (Radford et al. 2018, §3.2): L3 = L2 + λ·L1 with the causal-LM loss L1 as auxiliary.
    lm_weight: float = 0.5


# The terms chunked cross-entropy computes: they need only logsumexp, the target logit and the mean logit.
CHUNKABLE_TERMS = ("ce", "label_smoothing", "z")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The loss as a weighted sum of named terms, each logged (docs/objectives-and-losses.md)."""

    # name → coefficient; on the command line `loss.terms={ce: 1.0, z: 1e-4}` replaces the whole dict,
    # `loss.terms.z=1e-4` adds or changes one term. Known: LossTerm.
    terms: dict[str, float] = dataclasses.field(default_factory=lambda: {"ce": 1.0})
    normalization: Normalization = "token"  # divide summed losses by real target tokens | sequences | nothing
    chunked: Chunked = "auto"  # chunked cross-entropy: always | never | auto (tokens×vocab >= chunked_above)
    chunked_above: int = 2**26  # logits in one (micro-)batch (256 MiB in float32) from which auto chunks
    chunk_tokens: int = 256  # tokens per chunk: one [chunk_tokens × vocab] block is live at a time
    teacher: str = ""  # kl: workdir of a trained model with the same vocabulary, run without gradient
    kl_temperature: float = 1.0  # kl: both distributions softened by T, the term scaled by T²


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str = "default"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = PRESETS["gpt3_adamw"]
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    loss: LossConfig = LossConfig()
    objective: ObjectiveConfig = ObjectiveConfig()


# objective → the model families it trains; anything else is refused with this table's reason.
OBJECTIVE_FAMILIES: dict[str, tuple[str, ...]] = registry(ObjectiveName, {
    "causal_lm": ("gpt",), "gpt1_finetune": ("gpt",), "mlm_nsp": ("bert",), "mlm": ("bert",),
    "span_corruption": ("t5",)})
# Objectives whose inputs need [CLS]/[SEP]/[MASK] or sentinel tokens, which only a trained vocabulary has.
SPECIAL_TOKEN_OBJECTIVES = ("mlm_nsp", "mlm", "span_corruption")


def _one_of(what: str, value: str, names) -> None:
    """`names`: a registry's Literal type, or a tuple of names."""
    names = names if isinstance(names, tuple) else known(names)
    if value not in names:
        raise ConfigError(f"unknown {what} {value!r}; known: {', '.join(names)}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Experiment) -> Experiment:
    """Check ranges and combinations; raise ConfigError with one line naming the field."""
    m, d, o, t, s = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.sample
    _one_of("model.family", m.family, Family)
    _one_of("model.activation", m.activation, Activation)
    _one_of("model.dtype", m.dtype, DType)
    _one_of("model.attention", m.attention, AttentionImpl)
    _one_of("model.remat", m.remat, Remat)
    _check(m.remat == "none" or m.scan_layers, "model.remat needs model.scan_layers=true")
    for field in ("n_layer", "n_head", "n_embd", "context", "mlp_ratio"):
        _check(getattr(m, field) > 0, f"model.{field} must be positive, got {getattr(m, field)}")
    _check(m.vocab_size >= 0, f"model.vocab_size must be >= 0 (0: the tokenizer's), got {m.vocab_size}")
    _check(m.n_embd % m.n_head == 0,
           f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    _check(m.layer_norm_eps > 0, f"model.layer_norm_eps must be positive, got {m.layer_norm_eps}")

    _one_of("data.tokenizer", d.tokenizer, TokenizerKind)
    _check(re.fullmatch(r"pydoc|text:.+|tfds:.+|store:.+", d.source) is not None,
           f"unknown data.source {d.source!r}; use pydoc, text:PATH, tfds:NAME or store:PATH")
    _check(not d.source.startswith("store:") or cfg.objective.name != "gpt1_finetune",
           "data.source=store:... holds unlabelled text; objective gpt1_finetune needs labelled examples "
           "(pydoc or tfds:NAME)")
    _check(d.seq_len >= 2, f"data.seq_len must be at least 2 tokens, got {d.seq_len}")
    _check(d.seq_len <= m.context,
           f"data.seq_len ({d.seq_len}) is longer than the model's context ({m.context})")
    _check(d.batch_size > 0, f"data.batch_size must be positive, got {d.batch_size}")
    _check(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")

    _one_of("optim.preset", o.preset, tuple(PRESETS))
    _one_of("optim.rule", o.rule, RuleName)
    _one_of("optim.schedule", o.schedule, ScheduleName)
    _one_of("optim.decay_mask", o.decay_mask, DecayMask)
    _check(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be positive, got {o.lr}")
    for field in ("b1", "b2"):
        value = getattr(o, field)
        _check(0.0 <= value < 1.0, f"optim.{field} must be in [0, 1), got {value}")
    _check(o.eps > 0, f"optim.eps must be positive, got {o.eps}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    _check(0.0 <= o.min_lr_ratio <= 1.0, f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    _check(o.schedule_steps >= 0,
           f"optim.schedule_steps must be >= 0 (0: train.steps), got {o.schedule_steps}")
    _check(o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 disables), got {o.grad_clip}")
    _check(o.rsqrt_timescale > 0, f"optim.rsqrt_timescale must be positive, got {o.rsqrt_timescale}")
    _check(0.0 <= o.adafactor_decay_exponent <= 1.0,
           f"optim.adafactor_decay_exponent must be in [0, 1] (0: use b2), got {o.adafactor_decay_exponent}")
    _check(o.adafactor_eps_scale >= 0, f"optim.adafactor_eps_scale must be >= 0, got {o.adafactor_eps_scale}")
    _check(o.adafactor_clip >= 0, f"optim.adafactor_clip must be >= 0 (0 disables), got {o.adafactor_clip}")
    _check(o.adafactor_factor_min_dim > 0,
           f"optim.adafactor_factor_min_dim must be positive, got {o.adafactor_factor_min_dim}")
    _check(o.rule != "adafactor" or o.eps >= 1e-18,
           f"optim.eps must be >= 1e-18 for adafactor (eps**2, its ε1, must be a float32), got {o.eps}")
    _check(o.sophia_gamma > 0, f"optim.sophia_gamma must be positive, got {o.sophia_gamma}")
    _check(o.sophia_interval > 0, f"optim.sophia_interval must be positive, got {o.sophia_interval}")
    _check(0.0 <= o.muon_momentum < 1.0, f"optim.muon_momentum must be in [0, 1), got {o.muon_momentum}")
    _check(o.muon_ns_steps > 0, f"optim.muon_ns_steps must be positive, got {o.muon_ns_steps}")
    _check(o.muon_adam_lr_ratio > 0, f"optim.muon_adam_lr_ratio must be positive, got {o.muon_adam_lr_ratio}")
    _check(o.muon_rms_scale >= 0,
           f"optim.muon_rms_scale must be >= 0 (0: Jordan's scaling), got {o.muon_rms_scale}")
    _check(0.0 <= o.ademamix_b3 < 1.0, f"optim.ademamix_b3 must be in [0, 1), got {o.ademamix_b3}")
    _check(o.ademamix_alpha >= 0, f"optim.ademamix_alpha must be >= 0, got {o.ademamix_alpha}")
    _check(o.ademamix_warmup_steps >= -1,
           f"optim.ademamix_warmup_steps must be >= 0, or -1 for train.steps, got {o.ademamix_warmup_steps}")
    _check(o.rule != "ademamix" or o.ademamix_b3 >= o.b1,
           f"optim.ademamix_b3 ({o.ademamix_b3}) must be >= optim.b1 ({o.b1}): β3 warms up from β1")
    _check(o.prodigy_d0 > 0, f"optim.prodigy_d0 must be positive, got {o.prodigy_d0}")
    _check(o.rule != "schedule_free_adamw" or o.b1 > 0,
           "optim.b1 must be > 0 for schedule_free_adamw (the average is recovered by dividing by β1)")
    _check(o.soap_precondition_frequency > 0,
           f"optim.soap_precondition_frequency must be positive, got {o.soap_precondition_frequency}")
    _check(o.soap_max_precond_dim > 0,
           f"optim.soap_max_precond_dim must be positive, got {o.soap_max_precond_dim}")

    for field in ("steps", "eval_every", "eval_batches", "log_every", "checkpoint_every",
                  "keep_checkpoints", "grad_accum", "max_nonfinite_steps", "tensor", "num_processes"):
        _check(getattr(t, field) > 0, f"train.{field} must be positive, got {getattr(t, field)}")
    _check(d.batch_size % t.grad_accum == 0,
           f"data.batch_size ({d.batch_size}) must be divisible by train.grad_accum ({t.grad_accum})")
    for field in ("data_parallel", "fsdp"):
        _check(getattr(t, field) == -1 or getattr(t, field) > 0,
               f"train.{field} must be positive or -1 (every remaining device), got {getattr(t, field)}")
    _check(t.data_parallel != -1 or t.fsdp != -1, "train.data_parallel and train.fsdp cannot both be -1")
    _check(m.n_head % t.tensor == 0,
           f"model.n_head ({m.n_head}) must be divisible by train.tensor ({t.tensor}), which splits heads")
    # n_embd is a multiple of n_head, so the MLP width (a multiple of n_embd) splits over tensor too.

    # Only a GPT generates text; an encoder's sample section is never read.
    _check(m.family != "gpt" or 0 < s.max_new_tokens < m.context,
           f"sample.max_new_tokens must be in [1, model.context), got {s.max_new_tokens}")
    _check(s.temperature >= 0, f"sample.temperature must be >= 0 (0: greedy), got {s.temperature}")
    _check(s.top_k >= 0, f"sample.top_k must be >= 0 (0: off), got {s.top_k}")
    _check(0.0 < s.top_p <= 1.0, f"sample.top_p must be in (0, 1], got {s.top_p}")
    validate_loss(cfg.loss)
    validate_objective(cfg)
    return cfg


def validate_objective(cfg: Experiment) -> None:
    """The objective's numbers, and whether it makes sense with the model, tokenizer and loss terms."""
    ob, m = cfg.objective, cfg.model
    _one_of("objective.name", ob.name, tuple(OBJECTIVE_FAMILIES))
    families = OBJECTIVE_FAMILIES[ob.name]
    _check(m.family in families,
           f"objective {ob.name} trains a {' or '.join(families)} model, not model.family={m.family}: "
           + {"gpt": "a decoder-only model has no encoder for corrupted spans and never sees both sides "
                     "of a mask",
              "bert": "a bidirectional encoder sees the token it would predict next",
              "t5": "an encoder-decoder is trained here with span_corruption only"}[m.family])
    _check(ob.name not in SPECIAL_TOKEN_OBJECTIVES or cfg.data.tokenizer in ("bpe", "hf"),
           f"objective {ob.name} needs [CLS]/[SEP]/[MASK]/sentinel tokens, which data.tokenizer=byte lacks; "
           "set data.tokenizer=bpe")
    _check(ob.name == "causal_lm" or set(cfg.loss.terms) == {"ce"},
           f"loss.terms {sorted(cfg.loss.terms)}: the extra loss terms apply to causal_lm only; "
           f"objective {ob.name} takes loss.terms={{ce: 1.0}}")
    _check(ob.name == "gpt1_finetune" or m.n_classes == 0,
           f"model.n_classes={m.n_classes} is for objective gpt1_finetune only")
    _check(m.n_classes >= 0, f"model.n_classes must be >= 0 (0: the data's), got {m.n_classes}")
    _check(m.type_vocab_size >= 0, f"model.type_vocab_size must be >= 0, got {m.type_vocab_size}")
    _check(m.n_decoder_layer >= 0, f"model.n_decoder_layer must be >= 0, got {m.n_decoder_layer}")
    _check(m.relative_buckets >= 2 and m.relative_max_distance > m.relative_buckets // 2,
           f"model.relative_buckets ({m.relative_buckets}) must be >= 2 and model.relative_max_distance "
           f"({m.relative_max_distance}) larger than half of it")
    _check(m.family == "gpt" or not m.scan_layers, f"model.scan_layers is for the gpt family, not {m.family}")
    _check(0.0 < ob.mask_rate < 1.0, f"objective.mask_rate must be in (0, 1), got {ob.mask_rate}")
    _check(ob.mask_token_rate >= 0 and ob.random_token_rate >= 0
           and ob.mask_token_rate + ob.random_token_rate <= 1.0,
           f"objective.mask_token_rate ({ob.mask_token_rate}) + objective.random_token_rate "
           f"({ob.random_token_rate}) must be non-negative and at most 1")
    _check(ob.nsp_weight >= 0, f"objective.nsp_weight must be >= 0, got {ob.nsp_weight}")
    _check(0.0 < ob.noise_density < 1.0, f"objective.noise_density must be in (0, 1), got {ob.noise_density}")
    _check(ob.mean_span_length >= 1.0, f"objective.mean_span_length must be >= 1, got {ob.mean_span_length}")
    _check(ob.lm_weight >= 0, f"objective.lm_weight must be >= 0, got {ob.lm_weight}")


def validate_loss(lo: LossConfig) -> None:
    """Term names, coefficients and the knobs the chosen terms need; one line per problem."""
    for name, coef in lo.terms.items():
        _check(name in known(LossTerm),
               f"unknown loss term {name!r} in loss.terms; known: {', '.join(known(LossTerm))}")
        _check(math.isfinite(coef) and coef >= 0, f"loss.terms.{name} must be finite and >= 0, got {coef}")
    _check(any(coef > 0 for coef in lo.terms.values()),
           f"loss.terms needs at least one positive coefficient, got {dict(lo.terms)}")
    _one_of("loss.normalization", lo.normalization, Normalization)
    _one_of("loss.chunked", lo.chunked, Chunked)
    unchunkable = [name for name in lo.terms if name not in CHUNKABLE_TERMS]
    _check(lo.chunked != "always" or not unchunkable,
           f"loss.chunked=always cannot compute {', '.join(unchunkable)} (they need the full logits); "
           f"chunkable terms: {', '.join(CHUNKABLE_TERMS)}")
    _check(lo.chunk_tokens > 0, f"loss.chunk_tokens must be positive, got {lo.chunk_tokens}")
    _check(lo.chunked_above > 0, f"loss.chunked_above must be positive, got {lo.chunked_above}")
    _check(lo.kl_temperature > 0, f"loss.kl_temperature must be positive, got {lo.kl_temperature}")
    _check("kl" not in lo.terms or bool(lo.teacher),
           "loss.terms has kl but loss.teacher is empty; set loss.teacher=<workdir of a trained model>")
    _check("kl" in lo.terms or not lo.teacher, "loss.teacher is set but loss.terms has no kl term")


def first_line(error: Exception) -> str:
    """An exception's first line of text, or its type's name if it has none: one-line errors."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def apply_overrides(cfg: Experiment, overrides: list[str]) -> Experiment:
    """Replace fields by dotted path (`optim.lr=3e-4`), type-checked against the dataclasses.

    `optim.preset=NAME` first swaps in the whole preset, so the other `optim.*` overrides of the same
    command refine it whatever their order.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    rest = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=200)")
        if key.strip() == "loss.terms":
            # A whole dict replaces the default terms instead of merging into them ({mse: 1} means
            # mse alone, not ce + mse); `loss.terms.NAME=x` still edits one term.
            cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, terms={}))
            rest.append(item)
        elif key.strip() == "optim.preset":
            _one_of("optimizer preset", value.strip(), tuple(PRESETS))
            cfg = dataclasses.replace(cfg, optim=PRESETS[value.strip()])
        else:
            # `key=` means the empty string (OmegaConf would read it as null).
            rest.append(item if value else f"{key}=''")
    if not rest:
        return cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(rest))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        names = _field_names(str(getattr(e, "full_key", "")))
        if names and getattr(e, "value", None) is not None:  # a registry field: the message validate gives
            _one_of(e.full_key, e.value, names)
        message = first_line(e)
        if "not in" in message and "Did you mean" not in message:
            message += _suggestion(message)
        raise ConfigError(f"bad override: {message}") from None


def _field_names(dotted: str) -> tuple[str, ...]:
    """The registry names a field `section.field` of Experiment is typed with, or () for other fields."""
    cls = Experiment
    for part in dotted.split("."):
        cls = typing.get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
    return known(cls) if typing.get_origin(cls) is Literal else ()


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _suggestion(message: str) -> str:
    match = re.search(r"Key '([^']+)'", message)
    if not match:
        return ""
    leaves = [k.rsplit(".", 1)[-1] for k in _all_keys(Experiment())]
    close = difflib.get_close_matches(match.group(1), leaves, n=1)
    return f" Did you mean: {close[0]!r}?" if close else ""


def known_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.name.startswith("_"))


def experiment_path(name: str) -> Path:
    """Resolve an experiment name in `experiments/`, or a path to an existing `.py` file.

    A name with a path separator, `..` or a `.py` suffix is a path and is never looked up inside
    `experiments/`.
    """
    if "/" in name or "\\" in name or ".." in name or name.endswith(".py"):
        path = Path(name)
        if path.suffix != ".py" or not path.is_file():
            raise ConfigError(f"experiment {name!r} is not an existing .py file "
                              f"(or a name in experiments/: {', '.join(known_experiments())})")
        return path
    known = known_experiments()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(known)}.{hint}")
    return EXPERIMENTS_DIR / f"{name}.py"


def load_experiment(name: str, overrides: list[str] = ()) -> Experiment:
    """Build an experiment's config from its file and the overrides, validated; no JAX involved."""
    path = experiment_path(name)
    spec = importlib.util.spec_from_file_location(f"gptjax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report where it failed, in one line
        raise ConfigError(f"experiment file {path} failed to load: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"experiment file {path} defines no get_config()")
    try:
        cfg = module.get_config()
    except Exception as e:  # the user's code again: where it failed, in one line
        raise ConfigError(f"experiment file {path}: get_config() raised {type(e).__name__}: {e}") from None
    if not isinstance(cfg, Experiment):
        raise ConfigError(f"{path}: get_config() must return gptjax.config.Experiment, "
                          f"got {type(cfg).__name__}")
    cfg = dataclasses.replace(cfg, name=path.stem)
    return validate(apply_overrides(cfg, list(overrides)))


def to_dict(cfg: Experiment) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Experiment:
    """Rebuild an Experiment from `to_dict` output (e.g. a workdir's config.json)."""
    sections = {f.name: f.type for f in dataclasses.fields(Experiment)}
    classes = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig,
               "sample": SampleConfig, "loss": LossConfig, "objective": ObjectiveConfig}
    kwargs = {}
    for key, value in data.items():
        if key not in sections:
            raise ConfigError(f"config has an unknown section {key!r}")
        kwargs[key] = classes[key](**value) if key in classes else value
    return Experiment(**kwargs)

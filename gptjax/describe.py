"""What a model size costs, from shapes alone: parameters by component, memory, FLOPs, step time.

`describe(cfg, accelerator=..., mfu=...)` builds nothing: the parameters come from
`jax.eval_shape` of the model's init (`gptjax.models.abstract_params`) and the optimizer state from
`jax.eval_shape` of the preset's `tx.init` (`gptjax.optimizers.state_bytes`), so the GPT-3 175B shape is
described in seconds on a laptop. The step time is the arithmetic of `gptjax.flops` (FLOPs per token ×
tokens per step) over the chosen accelerator's dense bfloat16 peak at an assumed MFU: an estimate to
decide whether a size is worth booking, not a measurement. With `devices`, the mesh of the config's
`train.data_parallel`, `train.fsdp` and `train.tensor` is laid over that many devices and the bytes one
device holds follow from the same sharding rules training uses (`gptjax.sharding`). Activation memory is
not counted (it depends on batch, remat and the attention kernel).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gptjax.config import ConfigError, Experiment

# --accelerator → (the `gptjax.flops.PEAK_FLOPS` key, memory per device in bytes). Memory from the
# vendors' data sheets: H100 SXM 80 GB, H200 141 GB, A100 80 GB, TPU v4 32 GiB, v5e 16 GiB, v5p 95 GiB.
ACCELERATORS: dict[str, tuple[str, float]] = {
    "h100": ("H100", 80e9), "h200": ("H200", 141e9), "a100": ("A100", 80e9),
    "v4": ("TPU v4", 32 * 2**30), "v5e": ("TPU v5e", 16 * 2**30), "v5p": ("TPU v5p", 95 * 2**30),
    "cpu": ("cpu", 0.0),  # peak measured on this machine; memory not stated
}
COMPONENTS = ("embeddings", "attention", "mlp", "norms", "heads")
# Top-level parameter names that are lookups (token, position, segment embeddings, T5's relative bias).
EMBEDDINGS = ("wte", "wpe", "wtt", "enc_bias", "dec_bias")
# Top-level names holding the layer stacks: unrolled (dicts keyed by layer) or scanned (leading axis).
STACKS = ("blocks", "layers", "encoder", "decoder")


def component(path: tuple) -> str:
    """The row of the parameter at `path` (keys of the pure params dict) in the describe table."""
    top = str(path[0])
    if top in EMBEDDINGS:
        return "embeddings"
    if top in STACKS:
        names = [str(k) for k in path[1:]]
        if any(n in ("attn", "cross") for n in names):
            return "attention"
        if "mlp" in names:
            return "mlp"
        if any(n.startswith("ln") for n in names):
            return "norms"
        raise ValueError(f"parameter {'.'.join(map(str, path))} fits no component")
    if top.startswith("ln") or top.endswith("ln_f"):  # ln_f, ln_e (BERT's embedding norm), enc_/dec_ln_f
        return "norms"
    return "heads"  # lm_head (untied), classification head, BERT's MLM transform and NSP pooler


def resolved_vocab(cfg: Experiment) -> Experiment:
    """`cfg` with model.vocab_size filled in as training would, without reading or training anything."""
    if cfg.model.vocab_size:
        return cfg
    from gptjax.data.tokenizers import ByteTokenizer

    # A BPE tokenizer's vocab_size is the requested size whatever the corpus supports (tokenizers.py).
    sizes = {"byte": ByteTokenizer.vocab_size, "bpe": cfg.data.tokenizer_vocab}
    if cfg.data.tokenizer not in sizes:
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer} has no vocabulary size known without its "
                          "files; set model.vocab_size")
    model = dataclasses.replace(cfg.model, vocab_size=sizes[cfg.data.tokenizer])
    return dataclasses.replace(cfg, model=model)


@dataclasses.dataclass(frozen=True)
class Description:
    """Everything `describe` prints, as numbers (bytes, FLOPs, seconds) for tests and scripts."""

    cfg: Experiment
    params: dict[str, int]  # component → parameter count, "total" included
    per_layer: dict[str, int]  # component → parameters in one layer of the (first) stack
    n_layers: int  # layers in all stacks (encoder + decoder for t5)
    param_bytes: int
    grad_bytes: int
    opt_state_bytes: int
    flops_per_token: float
    tokens_per_step: int
    accelerator: str
    peak_flops: float
    device_memory: float
    devices: int
    mfu: float
    mesh: dict[str, int]  # {data, fsdp, tensor} sizes on `devices` devices
    param_bytes_per_device: int  # what one device holds under the sharding rules (gradients alike)
    opt_state_bytes_per_device: int

    @property
    def state_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.opt_state_bytes

    @property
    def state_bytes_per_device(self) -> int:
        return 2 * self.param_bytes_per_device + self.opt_state_bytes_per_device

    @property
    def step_seconds(self) -> float:
        return self.flops_per_token * self.tokens_per_step / (self.devices * self.peak_flops * self.mfu)


def describe(cfg: Experiment, *, accelerator: str = "h100", mfu: float = 0.4,
             devices: int = 1) -> Description:
    """Parameter counts, memory and compute of `cfg` from abstract shapes; allocates no parameter.

    Bad input (unknown accelerator, MFU outside (0, 1], no vocabulary size) is a ConfigError.
    """
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"unknown accelerator {accelerator!r}; known: {', '.join(ACCELERATORS)}")
    if not 0.0 < mfu <= 1.0:
        raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
    if devices < 1:
        raise ConfigError(f"--devices must be positive, got {devices}")
    cfg = resolved_vocab(cfg)
    import jax
    from flax.traverse_util import flatten_dict

    from gptjax import sharding
    from gptjax.flops import PEAK_FLOPS, flops_per_token, measured_cpu_peak
    from gptjax.models import abstract_model, param_axes, split_params, tree_bytes
    from gptjax.optimizers import STACKED_KEY, build_optimizer

    mesh = sharding.mesh_shape(cfg.train, devices)
    model = abstract_model(cfg.model)
    _, abstract = split_params(model)
    params = dict.fromkeys(COMPONENTS, 0)
    per_layer = dict.fromkeys(COMPONENTS, 0)
    first = _first_stack(abstract)
    for keys, leaf in flatten_dict(abstract).items():
        row = component(keys)
        params[row] += leaf.size
        # One layer of the first stack: unrolled stacks are keyed by layer index 0, 1, …; a scanned stack
        # carries the layer on its leading axis.
        if keys[0] == STACKED_KEY:
            per_layer[row] += leaf.size // leaf.shape[0]
        elif keys[0] == first and keys[1] == 0:
            per_layer[row] += leaf.size
    params["total"] = sum(params[c] for c in COMPONENTS)
    param_bytes = tree_bytes(abstract)
    tx = build_optimizer(cfg.optim, cfg.train.steps)
    abstract_opt = jax.eval_shape(tx.init, abstract)  # what `state_bytes` counts, traced once here
    if devices > 1:
        axes = param_axes(model)
        param_bytes_per_device = sharding.per_device_bytes(
            abstract, sharding.state_specs(abstract, axes, mesh), mesh)
        opt_bytes_per_device = sharding.per_device_bytes(
            abstract_opt, sharding.state_specs(abstract_opt, axes, mesh), mesh)
    else:  # one device holds everything: no rule to apply
        param_bytes_per_device, opt_bytes_per_device = param_bytes, tree_bytes(abstract_opt)
    key, memory = ACCELERATORS[accelerator]
    peak = measured_cpu_peak() if accelerator == "cpu" else PEAK_FLOPS[key]
    m = cfg.model
    return Description(
        cfg=cfg, params=params, per_layer=per_layer,
        n_layers=m.n_layer + ((m.n_decoder_layer or m.n_layer) if m.family == "t5" else 0),
        param_bytes=param_bytes, grad_bytes=param_bytes,  # float32 gradients, one per parameter
        opt_state_bytes=tree_bytes(abstract_opt),
        flops_per_token=flops_per_token(m, cfg.data.seq_len, cfg.objective),
        tokens_per_step=cfg.data.batch_size * cfg.data.seq_len, accelerator=key, peak_flops=peak,
        device_memory=memory, devices=devices, mfu=mfu, mesh=mesh,
        param_bytes_per_device=param_bytes_per_device, opt_state_bytes_per_device=opt_bytes_per_device)


def _first_stack(abstract: dict[str, Any]) -> str:
    return next(name for name in STACKS if name in abstract)


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{int(n)} B"


def _flops(f: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= size:
            return f"{f / size:,.0f} {unit}"
    return f"{f:,.0f} FLOP"


def _seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:,.2f} h"
    if s >= 1:
        return f"{s:,.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:,.1f} ms"
    return f"{s * 1e6:,.1f} µs"


def format_description(d: Description) -> str:
    """The table `python -m gptjax describe` prints."""
    m, total = d.cfg.model, d.params["total"]
    head = (f"{d.cfg.name}: {m.family}, {m.n_layer} layers"
            + (f" + {m.n_decoder_layer or m.n_layer} decoder layers" if m.family == "t5" else "")
            + f", d {m.n_embd}, {m.n_head} heads, MLP {m.mlp_ratio}×{m.activation}, context {m.context}, "
              f"vocab {m.vocab_size:,}, {'tied' if m.tie_embeddings else 'untied'} embeddings")
    lines = [head, "", f"{'parameters':<34}{'count':>16}{'share':>8}{'one layer':>14}"]
    for c in COMPONENTS:
        layer = f"{d.per_layer[c]:,}" if d.per_layer[c] else ""
        lines.append(f"  {c:<32}{d.params[c]:>16,}{d.params[c] / total:>8.1%}{layer:>14}")
    lines.append(f"  {'total':<32}{total:>16,}{'':>8}{sum(d.per_layer.values()):>14,}")
    per_param = d.opt_state_bytes / total
    lines += ["", f"{'memory (no activations)':<34}{'bytes':>16}{'per param':>12}",
              f"  {'parameters':<32}{_bytes(d.param_bytes):>16}{d.param_bytes / total:>12.2f}",
              f"  {'gradients':<32}{_bytes(d.grad_bytes):>16}{d.grad_bytes / total:>12.2f}",
              f"  {'optimizer state (' + d.cfg.optim.preset + ')':<32}{_bytes(d.opt_state_bytes):>16}"
              f"{per_param:>12.2f}",
              f"  {'total':<32}{_bytes(d.state_bytes):>16}{d.state_bytes / total:>12.2f}"]
    if d.devices > 1:
        mesh = " × ".join(f"{axis} {size}" for axis, size in d.mesh.items())
        lines += [f"  per device on {d.devices} devices ({mesh}):",
                  f"    {'parameters':<30}{_bytes(d.param_bytes_per_device):>16}",
                  f"    {'gradients':<30}{_bytes(d.param_bytes_per_device):>16}",
                  f"    {'optimizer state':<30}{_bytes(d.opt_state_bytes_per_device):>16}",
                  f"    {'total':<30}{_bytes(d.state_bytes_per_device):>16}"]
    if d.device_memory:
        shards = math.ceil(d.state_bytes / d.device_memory)
        if d.devices > 1:
            fits = d.state_bytes_per_device <= d.device_memory
            lines.append(f"  fits each {d.accelerator} ({_bytes(d.device_memory)}) on this mesh? "
                         + ("yes, before activations" if fits else
                            f"no; all devices together need at least {shards} devices' memory"))
        else:
            lines.append(f"  fits one {d.accelerator} ({_bytes(d.device_memory)})? "
                         + ("yes, before activations" if shards <= 1 else
                            f"no: needs at least {shards} devices' memory (train.fsdp) before activations"))
    fpt, tokens = d.flops_per_token, d.tokens_per_step
    step, steps = d.step_seconds, d.cfg.train.steps
    formula = {"gpt": "6·N + 12·n_layer·seq_len·d per token",
               "bert": "6·N + 12·n_layer·seq_len·d per token, MLM head on the masked share",
               "t5": "6·N + attention per encoder token, decoder on its span targets"}[d.cfg.model.family]
    lines += ["", f"compute (gptjax.flops: {formula})",
              f"  FLOPs per token (seq_len {d.cfg.data.seq_len}){'':<9}{fpt:>16.4g}",
              f"  tokens per step{'':<17}{tokens:>16,}  (data.batch_size {d.cfg.data.batch_size} × "
              f"seq_len {d.cfg.data.seq_len})",
              f"  FLOPs per step{'':<18}{fpt * tokens:>16.4g}",
              f"  step time at {d.mfu:.0%} MFU on {d.devices} × {d.accelerator} "
              f"({_flops(d.peak_flops)}/s peak{', measured' if d.accelerator == 'cpu' else ''}): "
              f"{_seconds(step)}; {steps:,} steps (train.steps): {_seconds(step * steps)}"]
    return "\n".join(lines)

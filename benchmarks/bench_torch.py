"""Train tokens/s of gptjax against two PyTorch GPTs: Hugging Face's `GPT2LMHeadModel` and one like nanoGPT's.

`python benchmarks/bench_torch.py` writes benchmarks/results/torch.json. Two shapes from issue 10, 4 layers/
4 heads/d 128 at T 64, B 12 and 6/6/384 at T 256, B 8, both with gptjax's byte vocabulary (258 ids: 256
bytes, end of text, padding), tied embeddings, no dropout, the GPT-2 layout on both sides (pre-LayerNorm,
tanh GELU, LayerNorm ε 1e-5, learned positions), float32, plain causal attention, and AdamW with the
gpt3_adamw preset's hyperparameters (lr 2.5e-4, β 0.9/0.95, ε 1e-8, decoupled decay 0.01 on the ndim ≥ 2
weights except the position table). Each side runs a full train step: forward, backward, optimizer update.
The third side (`nanogpt`) is built the way nanoGPT builds its model, written here: no biases anywhere,
`F.scaled_dot_product_attention`, AdamW fused (foreach where the fused CPU kernel is missing); it has the
same shape and batches but no bias parameters, and decays every matrix (the position table too).

gptjax runs its real train step (`gptjax.train.build_steps`, one CPU device, the metrics it logs included);
PyTorch runs eager with `torch.set_num_threads` set to the cores JAX uses, on the same random batches.
After a warm-up, blocks of steps alternate (gptjax, PyTorch, gptjax, …) so that load from other processes
hits both alike; the figures are medians over blocks, with the spread (min, max) beside them. MFU is model
FLOPs per token (gptjax/flops.py, 6N + attention) times tokens/s over a float32 matmul's measured peak.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# PyTorch runs with its own defaults, OpenMP waiting included: what a PyTorch user gets. Its OpenMP threads
# spin for a while before they sleep; on a machine loaded by other jobs a spinning thread can wait on a
# preempted sibling, and a small step then took 2.5 s instead of 40 ms (benchmarks/README.md). The load
# average is recorded beside the figures; `OMP_WAIT_POLICY=PASSIVE make bench-torch` measures PyTorch with
# sleeping waits, which survives a loaded machine but makes its step 1.8x as long on an idle one.

import jax
import torch
from common import BYTE_VOCAB, RESULTS, SHAPES, gpt_experiment, random_batches, write_json

from gptjax.config import PRESETS, Experiment
from gptjax.data.packing import Batch
from gptjax.flops import flops_per_token, measured_cpu_peak
from gptjax.metrics import objective_loss
from gptjax.sharding import put_batch
from gptjax.train import build_steps, resolve

VOCAB = BYTE_VOCAB
OPTIM = PRESETS["gpt3_adamw"]


def experiment(n_layer: int, n_head: int, n_embd: int, seq_len: int, batch: int) -> Experiment:
    return gpt_experiment(n_layer, n_head, n_embd, seq_len, batch, vocab=VOCAB, data_parallel=1)


class JaxSide:
    def __init__(self, cfg: Experiment, batches: list[Batch]):
        self.run = build_steps(resolve(cfg, VOCAB))
        self.state = self.run.init()
        self.batches = [put_batch(b, self.run.mesh) for b in batches]
        self.step_fn = self.run.step.lower(self.state, self.batches[0]).compile()
        self.loss = None

    def steps(self, n: int) -> tuple[float, float]:
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            self.state, metrics = self.step_fn(self.state, self.batches[i % len(self.batches)])
        jax.block_until_ready(self.state)
        self.loss = float(objective_loss(metrics))
        return time.perf_counter() - t, time.process_time() - cpu


class TorchSide:
    """Hugging Face's GPT2LMHeadModel: the same model as gptjax's, parameter for parameter."""

    def __init__(self, cfg: Experiment, batches: list[Batch]):
        from transformers import GPT2Config, GPT2LMHeadModel

        m = cfg.model
        # gelu_new is GPT-2's tanh approximation; bos/eos only silence a check against the small vocabulary.
        config = GPT2Config(vocab_size=VOCAB, n_positions=m.context, n_embd=m.n_embd, n_layer=m.n_layer,
                            n_head=m.n_head, activation_function="gelu_new",
                            layer_norm_epsilon=m.layer_norm_eps, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=256, eos_token_id=256)
        torch.manual_seed(0)
        self.model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").train()
        # The same decay mask as gptjax's ndim>=2 rule: matrices decay, vectors and the position table not.
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "wpe" not in n]
        rest = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "wpe" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPTIM.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}],
                                     lr=OPTIM.lr, betas=(OPTIM.b1, OPTIM.b2), eps=OPTIM.eps)
        self.batches = [(torch.from_numpy(b.inputs).long(), torch.from_numpy(b.targets).long())
                        for b in batches]
        self.loss = None

    def steps(self, n: int) -> tuple[float, float]:
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            inputs, targets = self.batches[i % len(self.batches)]
            logits = self.model(input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.loss = float(loss.detach())
        return time.perf_counter() - t, time.process_time() - cpu


class NanoBlock(torch.nn.Module):
    """One pre-LayerNorm block as nanoGPT builds it with bias=False: no bias in any linear or LayerNorm,
    the three attention projections as one matmul, PyTorch's fused causal attention."""

    def __init__(self, d: int, heads: int, eps: float):
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=eps, bias=False), nn.LayerNorm(d, eps=eps, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, D))
        return x + self.fc_proj(torch.nn.functional.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class NanoSide(TorchSide):
    """A GPT shaped like nanoGPT's (bias=False, tied head, scaled_dot_product_attention, AdamW fused where
    PyTorch has the fused kernel for CPU, else foreach), written here; same shape, batches and AdamW
    hyperparameters as the others, but no biases (about 1% fewer parameters at these sizes)."""

    def __init__(self, cfg: Experiment, batches: list[Batch], seed: int = 0):
        m, nn = cfg.model, torch.nn
        torch.manual_seed(seed)
        self.wte, self.wpe = nn.Embedding(VOCAB, m.n_embd), nn.Embedding(m.context, m.n_embd)
        self.blocks = nn.ModuleList(NanoBlock(m.n_embd, m.n_head, m.layer_norm_eps) for _ in range(m.n_layer))
        self.ln_f = nn.LayerNorm(m.n_embd, eps=m.layer_norm_eps, bias=False)
        self.model = nn.ModuleDict({"wte": self.wte, "wpe": self.wpe, "h": self.blocks, "ln_f": self.ln_f})
        for name, p in self.model.named_parameters():  # GPT-2's init, residual projections scaled down
            if p.ndim >= 2:
                std = 0.02 / (2 * m.n_layer) ** 0.5 if name.endswith("proj.weight") else 0.02
                torch.nn.init.normal_(p, 0.0, std)
        params = list(self.model.parameters())
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": OPTIM.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        kwargs = dict(lr=OPTIM.lr, betas=(OPTIM.b1, OPTIM.b2), eps=OPTIM.eps)
        try:
            self.opt, self.fused = torch.optim.AdamW(groups, fused=True, **kwargs), True
        except (RuntimeError, ValueError):  # an older PyTorch without the fused CPU kernel
            self.opt, self.fused = torch.optim.AdamW(groups, foreach=True, **kwargs), False
        self.batches = [(torch.from_numpy(b.inputs).long(), torch.from_numpy(b.targets).long())
                        for b in batches]
        self.positions = torch.arange(m.context)
        self.loss = None

    def logits(self, inputs):
        x = self.wte(inputs) + self.wpe(self.positions[: inputs.shape[1]])
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T

    def steps(self, n: int) -> tuple[float, float]:
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            inputs, targets = self.batches[i % len(self.batches)]
            loss = torch.nn.functional.cross_entropy(self.logits(inputs).reshape(-1, VOCAB),
                                                     targets.reshape(-1))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.loss = float(loss.detach())
        return time.perf_counter() - t, time.process_time() - cpu


def summary(times: list[tuple[float, float]], steps: int, tokens_per_step: int, flops: float,
            peak: float) -> dict:
    seconds = [wall for wall, _ in times]
    ms = [1e3 * s / steps for s in seconds]
    tok = [tokens_per_step * steps / s for s in seconds]
    median = statistics.median(tok)
    return {"tokens_per_s": median, "ms_per_step": statistics.median(ms),
            "tokens_per_s_min": min(tok), "tokens_per_s_max": max(tok), "mfu": median * flops / peak,
            # CPU time of the whole process (every thread) per step: the work done, which outside load
            # inflates less than wall-clock time.
            "cpu_ms_per_step": statistics.median(1e3 * cpu / steps for _, cpu in times),
            "blocks_ms_per_step": ms}


def bench_shape(name, n_layer, n_head, n_embd, seq_len, batch, *, blocks: int, seconds: float,
                peak: float) -> dict:
    cfg = experiment(n_layer, n_head, n_embd, seq_len, batch)
    batches = random_batches(4, batch, seq_len, high=256)  # byte ids, no special tokens
    sides = {"gptjax": JaxSide(cfg, batches), "torch": TorchSide(cfg, batches),
             "nanogpt": NanoSide(cfg, batches)}
    torch_params = sum(p.numel() for p in sides["torch"].model.parameters())  # tied: the head is wte
    if torch_params != sides["gptjax"].run.n_params:
        raise AssertionError(f"not the same model: {torch_params:,} PyTorch parameters, "
                             f"{sides['gptjax'].run.n_params:,} in gptjax")
    # Warm-up, and a block length of about `seconds` per side from the warm-up's pace.
    per_step = {k: side.steps(3)[0] / 3 for k, side in sides.items()}
    steps = max(2, round(seconds / max(per_step.values())))
    times = {k: [] for k in sides}
    for _ in range(blocks):
        for k, side in sides.items():
            times[k].append(side.steps(steps))
    tokens = batch * seq_len
    flops = flops_per_token(sides["gptjax"].run.cfg.model, seq_len)
    result = {"shape": f"{n_layer} layers, {n_head} heads, d {n_embd}, T {seq_len}, B {batch}",
              "params": sides["gptjax"].run.n_params, "tokens_per_step": tokens, "flops_per_token": flops,
              "nanogpt_params": sum(p.numel() for p in sides["nanogpt"].model.parameters()),
              "nanogpt_adamw": "fused" if sides["nanogpt"].fused else "foreach",
              "steps_per_block": steps, "blocks": blocks}
    for k, side in sides.items():
        result[k] = {**summary(times[k], steps, tokens, flops, peak), "final_loss": side.loss}
    line = []
    for k, label in (("torch", "ratio"), ("nanogpt", "ratio_nanogpt")):
        # The ratio within each pair of neighbouring blocks, so that a burst of outside load cancels out.
        pairs = [t[0] / j[0] for j, t in zip(times["gptjax"], times[k], strict=True)]
        result[label] = result["gptjax"]["tokens_per_s"] / result[k]["tokens_per_s"]
        result[label + "_per_block"] = {"median": statistics.median(pairs), "min": min(pairs),
                                        "max": max(pairs)}
        line.append(f"{k} {result[k]['tokens_per_s']:,.0f} tokens/s ({result[k]['ms_per_step']:.1f} ms/step, "
                    f"MFU {result[k]['mfu']:.1%}, CPU {result[k]['cpu_ms_per_step']:.1f} ms/step): "
                    f"{result[label]:.2f}x (per block {min(pairs):.2f}-{max(pairs):.2f})")
    print(f"{name:>6} ({result['shape']}): gptjax {result['gptjax']['tokens_per_s']:,.0f} tokens/s "
          f"({result['gptjax']['ms_per_step']:.1f} ms/step, MFU {result['gptjax']['mfu']:.1%}, CPU "
          f"{result['gptjax']['cpu_ms_per_step']:.1f} ms/step); " + "; ".join(line), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=7, help="timed blocks per side and shape")
    parser.add_argument("--seconds", type=float, default=3.0, help="about this long per block")
    parser.add_argument("--only", choices=[s[0] for s in SHAPES], help="one shape only (not written)")
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))  # XLA's CPU thread pool takes every core it may run on
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    if load_before[0] > threads / 2:
        print(f"note: load average {load_before[0]:.1f} before the run; other jobs on the machine disturb "
              "both sides, PyTorch's spinning OpenMP threads most (benchmarks/README.md)")
    peak = measured_cpu_peak()
    results = {"command": "make bench-torch", "threads": threads, "cpu_peak_flops": peak,
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}
    for shape in SHAPES:
        if args.only in (None, shape[0]):
            results[shape[0]] = bench_shape(*shape, blocks=args.blocks, seconds=args.seconds, peak=peak)
    results["versions"] = {"jax": jax.__version__, "torch": torch.__version__,
                           "transformers": __import__("transformers").__version__}
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(),
                          "xla_flags": os.environ.get("XLA_FLAGS", ""),
                          "load_average_before": load_before, "load_average_after": os.getloadavg()}
    if args.only:
        return
    write_json(RESULTS / "torch.json", results)


if __name__ == "__main__":
    main()

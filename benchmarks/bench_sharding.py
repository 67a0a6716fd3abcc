"""What each (data, fsdp, tensor) mesh costs: bytes per device and the collectives of the train step.

`python benchmarks/bench_sharding.py` writes benchmarks/results/sharding.json. Two parts, neither timed
(8 host CPU devices on a 2-core machine say nothing about interconnect speed):

- bytes one device holds (parameters, gradients, Adam's state) for GPT-2 small and GPT-2 XL shapes on 8
  devices, from `describe` (the sharding rules applied to abstract shapes);
- the collectives XLA puts into one compiled train step of a 2-layer GPT (d 64, 8 heads, vocabulary 264)
  on 8 host CPU devices, counted by kind in the optimised HLO: data parallelism all-reduces gradients,
  FSDP gathers weights and reduce-scatters gradients, tensor parallelism all-reduces activations.
"""

from __future__ import annotations

import os

_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import re  # noqa: E402

import jax  # noqa: E402
from common import RESULTS, write_json  # noqa: E402

from gptjax.config import load_experiment  # noqa: E402
from gptjax.data import build_data  # noqa: E402
from gptjax.describe import describe  # noqa: E402
from gptjax.sharding import put_batch  # noqa: E402
from gptjax.train import build_steps, resolve  # noqa: E402

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2), (1, 2, 4), (1, 1, 8)]
SHAPES = {"gpt2_small": (12, 768, 12), "gpt2_xl": (48, 1600, 25)}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def mesh_overrides(mesh: tuple[int, int, int]) -> list[str]:
    data, fsdp, tensor = mesh
    return [f"train.data_parallel={data}", f"train.fsdp={fsdp}", f"train.tensor={tensor}"]


def bytes_per_device() -> dict:
    out = {}
    for name, (n_layer, n_embd, n_head) in SHAPES.items():
        for mesh in MESHES:
            if n_head % mesh[2]:
                continue
            cfg = load_experiment("gpt2_adam", [f"model.n_layer={n_layer}", f"model.n_embd={n_embd}",
                                                f"model.n_head={n_head}", "model.vocab_size=50304",
                                                "model.context=1024", *mesh_overrides(mesh)])
            d = describe(cfg, devices=8)
            out[f"{name} {mesh}"] = {
                "params": d.params["total"], "state_bytes_one_device": d.state_bytes,
                "param_bytes_per_device": d.param_bytes_per_device,
                "opt_state_bytes_per_device": d.opt_state_bytes_per_device,
                "state_bytes_per_device": d.state_bytes_per_device,
                "share_of_one_device": d.state_bytes_per_device / d.state_bytes}
    return out


def collectives() -> dict:
    out = {}
    for mesh in MESHES:
        cfg = load_experiment("default", ["model.n_layer=2", "model.n_embd=64", "model.n_head=8",
                                          "model.vocab_size=264", "data.seq_len=64", "data.batch_size=16",
                                          "train.compilation_cache_dir=", *mesh_overrides(mesh)])
        data = build_data(cfg.data, 0)
        run = build_steps(resolve(cfg, data.tokenizer.vocab_size))
        batch = put_batch(data.train_batch(0), run.mesh)
        hlo = run.step.lower(jax.eval_shape(run.init), batch).compile().as_text()
        # Count each op once: its start (async pairs) or the op itself, never the -done half.
        out[str(mesh)] = {kind: len(re.findall(rf"= \S+ {kind}(-start)?\(", hlo)) for kind in COLLECTIVES}
        print(mesh, out[str(mesh)])
    return out


def main() -> None:
    write_json(RESULTS / "sharding.json", {"bytes_per_device_8_devices": bytes_per_device(),
                                           "collectives_per_train_step": collectives()})


if __name__ == "__main__":
    main()

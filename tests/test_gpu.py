"""GPU checks, skipped without a GPU (CI has none). On a GPU machine:

    JAX_PLATFORMS=cuda,cpu .venv/bin/python -m pytest -m gpu tests/test_gpu.py

The reference side of each check runs on the host CPU in float32 with the einsum attention.
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.models import build_model, split_params

pytestmark = pytest.mark.gpu

MODEL = ModelConfig(n_layer=2, n_head=4, n_embd=128, context=256, vocab_size=512, dropout=0.0)


def _gpu():
    return jax.devices("gpu")[0]


def _apply_on(device, cfg, params, tokens):
    graphdef, _ = split_params(nnx.eval_shape(lambda: build_model(cfg, seed=0)))
    params, tokens = jax.device_put((params, tokens), device)
    return np.asarray(jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens), np.float32)


def test_bfloat16_logits_with_the_fused_attention_match_float32_on_the_cpu():
    _, params = split_params(build_model(MODEL, seed=0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (4, 256)), jnp.int32)
    gpu = _apply_on(_gpu(), dataclasses.replace(MODEL, dtype="bfloat16", attention="xla"), params, tokens)
    cpu = _apply_on(jax.devices("cpu")[0], dataclasses.replace(MODEL, attention="einsum"), params, tokens)
    # bfloat16 keeps 8 bits of mantissa: logits of size ~1 agree to a few hundredths.
    np.testing.assert_allclose(gpu, cpu, atol=0.1, rtol=0.05)
    assert np.mean(np.abs(gpu - cpu)) < 0.02


def test_float32_logits_match_the_cpu():
    _, params = split_params(build_model(MODEL, seed=0))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 512, (2, 256)), jnp.int32)
    gpu = _apply_on(_gpu(), dataclasses.replace(MODEL, attention="xla"), params, tokens)
    cpu = _apply_on(jax.devices("cpu")[0], dataclasses.replace(MODEL, attention="einsum"), params, tokens)
    # TF32 matmuls are XLA's GPU default for float32; 1e-2 covers them.
    np.testing.assert_allclose(gpu, cpu, atol=1e-2, rtol=1e-2)


def test_the_mfu_benchmark_runs():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "benchmarks/bench_mfu.py", "--smoke", "--steps", "3"], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MFU" in out.stdout and "ms/step" in out.stdout

"""gptjax/allocator.py: glibc's malloc really keeps freed memory after `import gptjax`, page faults of a
repeated XLA program fall, GPTJAX_MALLOC=off restores glibc's defaults, and losses do not change."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from gptjax import allocator

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def run_child(code: str, setting: str | None) -> str:
    # One CPU device, as a user's run has: with conftest.py's eight fake devices the kept-memory side
    # still makes some 1,300 faults a step (against 13,000), from XLA's per-device machinery.
    env = {k: v for k, v in os.environ.items()
           if k not in allocator.GLIBC_ENV and k not in ("GLIBC_TUNABLES", allocator.ENV, "XLA_FLAGS")}
    if setting is not None:
        env[allocator.ENV] = setting
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


# A 16 MiB block: above glibc's default mmap threshold (128 KiB, and Python's start-up frees no block big
# enough to raise it that far), below the 1 GiB threshold gptjax sets. mallinfo2's hblks counts the blocks
# that malloc currently holds as separate mappings.
MMAPPED_BLOCKS = """
    import ctypes
    import gptjax

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    before = libc.mallinfo2().hblks
    block = libc.malloc(16 << 20)
    print(gptjax.allocator.STATE.split(":")[0], libc.mallinfo2().hblks - before)
    libc.free(ctypes.c_void_p(block))
"""


@glibc_only
def test_import_sets_the_mmap_threshold_and_off_restores_glibc_default():
    assert run_child(MMAPPED_BLOCKS, None) == "on 0"  # from the heap: no mapping of its own
    assert run_child(MMAPPED_BLOCKS, "off") == "off (GPTJAX_MALLOC=off) 1"  # glibc maps it separately


# The real train step at bench_torch.py's small shape (4 layers, d 128, T 64, batch 12), where the effect
# was found: ten steps after three of warm-up, their minor page faults (getrusage) and losses (hex).
STEPS = """
    import resource
    import gptjax
    from gptjax.config import DataConfig, Experiment, ModelConfig, TrainConfig
    from gptjax.data import build_data
    from gptjax.metrics import objective_loss
    from gptjax.train import build_steps, resolve

    cfg = Experiment(model=ModelConfig(n_layer=4, n_head=4, n_embd=128, context=64, dropout=0.0),
                     data=DataConfig(seq_len=64, batch_size=12),
                     train=TrainConfig(steps=13, data_parallel=1, progress=False, compilation_cache_dir=""))
    data = build_data(cfg.data, cfg.train.seed)
    run = build_steps(resolve(cfg, data.tokenizer.vocab_size))
    state, losses = run.init(), []
    for k in range(13):
        if k == 3:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        state, metrics = run.step(state, data.train_batch(k))
        losses.append(float(objective_loss(metrics)).hex())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, " ".join(losses))
"""


@pytest.fixture(scope="module")
def steps_on_off():
    return {s: run_child(STEPS, s).split(" ", 1) for s in ("on", "off")}


@glibc_only
@pytest.mark.slow
def test_page_faults_of_train_steps_fall(steps_on_off):
    on, off = (int(steps_on_off[s][0]) for s in ("on", "off"))
    # glibc's defaults: thousands of fresh pages a step; kept memory: several times fewer (0 vs 13,118 when
    # first measured through the old step object, 13,169 vs 131,466 through build_steps' step).
    assert off > 10 * 1000, off
    assert on < off / 5, (on, off)


@pytest.mark.slow
def test_losses_bitwise_equal_with_and_without(steps_on_off):
    on, off = steps_on_off["on"][1], steps_on_off["off"][1]
    assert on == off
    assert len(set(on.split())) == 13  # thirteen different losses: it trained


def test_off_unknown_environment_and_not_glibc(monkeypatch, capsys):
    def state_with(**env):
        monkeypatch.setattr(allocator, "STATE", "not configured")
        for name in (allocator.ENV, "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return allocator.configure()

    assert state_with(GPTJAX_MALLOC="off").startswith("off")
    assert state_with(GPTJAX_MALLOC="sometimes").startswith("off (unknown")
    assert "GPTJAX_MALLOC='sometimes' is neither on nor off" in capsys.readouterr().err
    assert state_with(MALLOC_TOP_PAD_="0").startswith("left to the environment")
    assert state_with(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0").startswith("left to the environment")
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert state_with().startswith("not glibc")

"""Eight fake CPU devices for every test (must be set before JAX is imported), tiny configs."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# text: sources are prepared into cached stores: the tests' go to a directory of their own, not ~/.cache.
if "GPTJAX_CACHE_DIR" not in os.environ:
    os.environ["GPTJAX_CACHE_DIR"] = __import__("tempfile").mkdtemp(prefix="gptjax-test-cache-")
    _OWN_DIRS = [os.environ["GPTJAX_CACHE_DIR"]]
else:
    _OWN_DIRS = []
# One persistent compilation cache for the whole session: most of the suite's time is XLA compiling the
# same tiny programs again, in each test and in every subprocess a kill, stop or sweep test starts. JAX
# reads these variables at import, so this process, the xdist workers (started after this file is loaded
# by the controller, with its environment) and their children all share the directory; a program is
# compiled once per run. A hit deserialises the executable the first compilation wrote: the same program.
# JAX writes an entry in place, not renamed into it, so a reader racing a writer, or a child killed by a
# kill test mid-write, can meet a truncated entry: zlib refuses it, JAX warns and compiles afresh (tried).
# No JAX_COMPILATION_CACHE_MAX_SIZE: with one, JAX locks the directory around each read and write, but
# each write also stats and reads every entry to decide on evictions, a cost that grows with the square
# of the suite's thousands of entries (0.34 s a write at 3,000). The process that made the directory
# removes it at the end (pytest_unconfigure). A test of the cache itself uses a directory of its own
# (tests/test_train.py test_the_compilation_cache_serves_a_repeated_run drops these variables).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = __import__("tempfile").mkdtemp(prefix="gptjax-test-jax-cache-")
    _OWN_DIRS.append(os.environ["JAX_COMPILATION_CACHE_DIR"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import dataclasses  # noqa: E402

import pytest  # noqa: E402

from gptjax.config import DataConfig, Experiment, ModelConfig, SampleConfig, TrainConfig  # noqa: E402

# The same tiny model as an experiment file, for tests that run the real command line in a subprocess.
TINY_FILE = '''
from gptjax.config import DataConfig, Experiment, ModelConfig, SampleConfig, TrainConfig
def get_config():
    return Experiment(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, context=32),
                      data=DataConfig(seq_len=16, batch_size=4),
                      train=TrainConfig(steps=40, eval_every=1000, eval_batches=1, log_every=1,
                                        checkpoint_every=5, keep_checkpoints=50, data_parallel=1,
                                        progress=False, compilation_cache_dir=""),
                      sample=SampleConfig(max_new_tokens=4))
'''


def tiny_experiment(**train) -> Experiment:
    """A model small enough that a few steps take a fraction of a second on one CPU core."""
    return Experiment(
        name="tiny",
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, context=64),
        data=DataConfig(seq_len=32, batch_size=8),
        train=dataclasses.replace(TrainConfig(steps=6, eval_every=3, eval_batches=2, log_every=2,
                                              checkpoint_every=3, data_parallel=1, progress=False,
                                              compilation_cache_dir=""),
                                  **train),
        sample=SampleConfig(max_new_tokens=16),
    )


@pytest.fixture
def tiny():
    return tiny_experiment()


TRAINED_CFG = tiny_experiment(steps=4, checkpoint_every=2, eval_every=100)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """TRAINED_CFG trained: checkpoints at steps 2 and 4, shared by tests/test_checkpoint.py and
    tests/test_workdir.py. Read it as it is; a test that changes anything works on a copy."""
    from gptjax.train import train

    workdir = tmp_path_factory.mktemp("trained")
    train(TRAINED_CFG, workdir, log=lambda *_: None)
    return workdir


def _has_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a GPU backend (JAX_PLATFORMS=cuda,cpu on a GPU machine); skipped without."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _has_gpu():
        skip = pytest.mark.skip(reason="needs a GPU (JAX_PLATFORMS=cuda,cpu on a GPU machine)")
        for item in gpu_items:
            item.add_marker(skip)


def pytest_unconfigure(config):
    """The session's caches (compilation, prepared text) go with the process that made them (xdist's
    controller); directories given in the environment are left alone."""
    for directory in _OWN_DIRS:
        __import__("shutil").rmtree(directory, ignore_errors=True)

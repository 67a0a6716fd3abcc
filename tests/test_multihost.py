"""Two processes on localhost (CPU collectives over gloo): 4 devices each = one process with 8, and each
reading only its own share of a token store."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptjax.metrics import read_metrics
from gptjax.train import train
from tests.conftest import TINY_FILE

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_four_devices_give_the_losses_of_one_process_of_eight(tmp_path):
    steps = 6
    experiment = tmp_path / "tinyrun.py"
    experiment.write_text(TINY_FILE)
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "gptjax", "train", str(experiment), "--workdir", str(tmp_path / "multi"),
         f"train.steps={steps}", "train.eval_every=3", "train.data_parallel=-1", "data.batch_size=8",
         "train.distributed=true", f"train.coordinator_address=127.0.0.1:{port}",
         "train.num_processes=2", f"train.process_id={i}"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    # The same config on one process with 8 devices (this test process has 8 fake devices).
    from gptjax.config import load_experiment

    cfg = load_experiment(str(experiment), [f"train.steps={steps}", "train.eval_every=3",
                                            "train.data_parallel=8", "data.batch_size=8"])
    train(cfg, tmp_path / "single", log=lambda *_: None)
    for split in ("train", "val"):
        multi = [r["loss"] for r in read_metrics(tmp_path / "multi") if r["split"] == split]
        single = [r["loss"] for r in read_metrics(tmp_path / "single") if r["split"] == split]
        assert len(multi) == len(single) > 0
        np.testing.assert_allclose(multi, single, rtol=1e-5)


# One process of a two-process job: joins it, reads its rows of three global batches from the store
# (counting the tokens it reads), assembles the global arrays and checksums them on the devices.
SHARE_SCRIPT = """
import sys
import jax
import jax.numpy as jnp
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
store, port, index, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=index)
from gptjax import sharding
from gptjax.config import DataConfig, TrainConfig
from gptjax.data.store import addressable_rows, put_rows, store_data
data = store_data(DataConfig(source=f"store:{store}", seq_len=16, batch_size=8), seed=0)
batch_sharding = sharding.batch_sharding(sharding.make_mesh(TrainConfig(data_parallel=-1), 8))
rows = addressable_rows(batch_sharding, 8)
read, original = [], data._train.split.read
data._train.split.read = lambda a, b: read.append(b - a) or original(a, b)
checksum = jax.jit(lambda x: (x * (jnp.arange(8)[:, None] + 1)).sum())
inputs, sums = [], []
for step in range(3):
    batch = data.train_batch(step, rows=rows)
    inputs.append(batch.inputs)
    sums.append(int(checksum(put_rows(batch, rows, batch_sharding, 8).inputs).addressable_data(0)))
np.savez(out, rows=rows, inputs=np.stack(inputs), sums=np.array(sums), read=np.array(read),
         devices=jax.device_count())
"""


def test_two_processes_read_disjoint_shares_of_a_store_that_make_the_one_process_batches(tmp_path):
    from gptjax.config import DataConfig
    from gptjax.data.prepare import prepare
    from gptjax.data.store import store_data

    store = tmp_path / "store"
    prepare("pydoc", store, DataConfig(), workers=1, progress=False, log=lambda *_: None)
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", SHARE_SCRIPT, str(store), str(port), str(i),
                               str(tmp_path / f"{i}.npz")], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    hosts = [np.load(tmp_path / f"{i}.npz") for i in range(2)]
    single = store_data(DataConfig(source=f"store:{store}", seq_len=16, batch_size=8), seed=0)
    assert all(int(h["devices"]) == 4 for h in hosts)
    # Disjoint rows that together are the whole global batch, each host with half of it.
    assert sorted(hosts[0]["rows"].tolist() + hosts[1]["rows"].tolist()) == list(range(8))
    for step in range(3):
        expected = single.train_batch(step).inputs
        for host in hosts:
            np.testing.assert_array_equal(host["inputs"][step], expected[host["rows"]])
            # The global arrays assembled from the two shares are the one-process batch.
            assert host["sums"][step] == int((expected.astype(np.int64) * (np.arange(8)[:, None] + 1)).sum())
    # Each host read only its own windows: 4 rows of 17 tokens per step, nothing else.
    for host in hosts:
        assert host["read"].tolist() == [17] * 12

"""Two processes on localhost (CPU collectives over gloo): 4 devices each = one process with 8, only
process 0 writing anything but its part of the checkpoints, and each reading only its own share of a
token store."""

import collections
import json
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

# Runs the command line with an audit hook (PEP 578) that logs every file the process opens for writing,
# renames, removes or creates under AUDIT_ROOT: what Python does (metrics, TensorBoard, configs, orbax's
# metadata); tensorstore's array files are written from C++ and are orbax's cooperative part.
AUDITED = """
import os, sys
log, root = open(os.environ["AUDIT_LOG"], "w", buffering=1), os.environ["AUDIT_ROOT"]
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        mode, flags = args[1], args[2]
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        path = os.fspath(args[0])
    elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir"):
        path, writes = args[1] if event in ("os.rename", "os.replace") else args[0], True
        path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
    else:
        return
    if writes and os.path.abspath(path).startswith(root):
        log.write(event + " " + os.path.relpath(os.path.abspath(path), root) + "\\n")
sys.addaudithook(hook)
from gptjax.cli import main
sys.exit(main(sys.argv[1:]))
"""


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
        [sys.executable, "-c", AUDITED, "train", str(experiment), "--workdir", str(tmp_path / "multi"),
         f"train.steps={steps}", "train.eval_every=3", "train.data_parallel=-1", "data.batch_size=8",
         "train.distributed=true", f"train.coordinator_address=127.0.0.1:{port}",
         "train.num_processes=2", f"train.process_id={i}"],
        env={**env, "AUDIT_LOG": str(tmp_path / f"writes{i}.txt"), "AUDIT_ROOT": str(tmp_path / "multi")},
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
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

    # Writing: process 0 alone writes the run's records; process 1 writes nothing outside checkpoints/,
    # and no record file is written by both. Every metrics line is whole and written once.
    writes = [[line.split(" ", 1) for line in (tmp_path / f"writes{i}.txt").read_text().splitlines()]
              for i in range(2)]
    outside = [{path for _, path in w if not path.startswith("checkpoints")} for w in writes]
    assert outside[1] == set(), outside[1]
    assert any(path.startswith("checkpoints") for _, path in writes[1])  # its part of each orbax save
    opened = [{path for event, path in w if event == "open"} for w in writes]
    assert opened[0].isdisjoint(opened[1])  # no file written by both
    assert {"metrics.jsonl", "config.json", ".lock"} <= outside[0]
    assert any(p.startswith("tensorboard/events") for p in outside[0])
    lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # a torn line would not parse
    counts = collections.Counter((r["split"], r["step"]) for r in records)
    assert max(counts.values()) == 1 and counts[("train", steps)] == 1

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

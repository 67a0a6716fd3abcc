"""Workdirs, sweeps, reports, stores and corpora in a bucket (gs://), against a real GCS API on 127.0.0.1.

Every result is compared with the same thing done on a local disk: the bucket must change where the
bytes go, never the numbers.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from gptjax import cli, storage
from gptjax.config import ConfigError, DataConfig
from gptjax.data.prepare import prepare
from gptjax.data.store import open_store, store_data
from gptjax.guards import ObjectLock, Preempted, workdir_lock
from gptjax.metrics import read_metrics
from gptjax.train import load_for_inference, train
from tests.conftest import tiny_experiment
from tests.gcs_emulator import gcs  # noqa: F401 (the session's emulator fixture)
from tests.test_data import assert_batches_equal

REPO = Path(__file__).resolve().parent.parent


def _records(workdir):
    return [(r["split"], r["step"], r.get("loss")) for r in read_metrics(workdir) if r["split"] != "setup"]


def _params(workdir):
    return jax.tree_util.tree_leaves(jax.device_get(load_for_inference(workdir)[2]))


@pytest.mark.slow
def test_train_stopped_by_sigterm_and_resumed_in_a_bucket_gives_the_local_runs_losses(gcs, tmp_path, capsys):  # noqa: F811
    cfg = tiny_experiment(steps=6, eval_every=1, log_every=1, checkpoint_every=100)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, schedule="constant"))
    remote = f"{gcs}/train/run"
    sent = []

    def sigterm_at_step_2(line):  # lands during step 2's evaluation: the run stops at step 3
        if line.startswith("step      2  val") and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))

    with pytest.raises(Preempted, match="stopped by SIGTERM at step 3"):
        train(cfg, remote, log=sigterm_at_step_2)
    assert storage.path(f"{remote}/checkpoints/3").is_dir()
    assert not storage.path(f"{remote}/.lock").exists()  # released on the way out
    train(cfg, remote, log=lambda *_: None)  # resumes at 3
    train(cfg, tmp_path / "local", log=lambda *_: None)

    assert _records(remote) == _records(tmp_path / "local") and len(_records(remote)) == 12
    for a, b in zip(_params(remote), _params(tmp_path / "local"), strict=True):
        np.testing.assert_array_equal(a, b)
    names = {p.name for p in storage.path(remote).iterdir()}
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "sample.txt"} <= names
    assert ".lock" not in names
    events = list(storage.path(f"{remote}/tensorboard").iterdir())
    assert events and all(storage.size(e) > 0 for e in events)
    # sample and eval read the bucket's workdir and say what they say of the local one.
    outputs = []
    for workdir in (remote, str(tmp_path / "local")):
        assert cli.main(["sample", workdir, "--max-new-tokens", "8"]) == 0
        assert cli.main(["eval", workdir, "--window", "32"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "perplexity" in outputs[0]


SWEEP_FILE = '''
from gptjax.config import DataConfig, Experiment, ModelConfig, SampleConfig, TrainConfig
from gptjax.sweep import grid
def get_config():
    return Experiment(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, context=32),
                      data=DataConfig(seq_len=16, batch_size=4),
                      train=TrainConfig(steps=4, eval_every=2, eval_batches=1, log_every=1,
                                        checkpoint_every=2, data_parallel=1, progress=False,
                                        compilation_cache_dir=""),
                      sample=SampleConfig(max_new_tokens=4))
def get_sweep(base):
    return grid(base, {"optim.lr": [1e-3, 3e-3]})
'''


@pytest.mark.slow
def test_sweep_and_report_into_a_bucket_match_the_variants_trained_locally(gcs, tmp_path):  # noqa: F811
    experiment = tmp_path / "gsweep.py"
    experiment.write_text(SWEEP_FILE)
    root = f"{gcs}/sweeps/gsweep"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [sys.executable, "-m", "gptjax", "sweep", str(experiment), "--dir", root, "--jobs", "2",
               "--no-vmap"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cli.main(["report", str(experiment), "--dir", root]) == 0
    from gptjax.sweep import load_sweep, read_status

    _, variants = load_sweep(str(experiment))
    assert sorted(p.name for p in storage.path(root).iterdir() if p.is_dir()) == sorted(variants)
    for name, cfg in variants.items():
        assert read_status(f"{root}/{name}")["status"] == "done"
        assert "final validation loss" in storage.path(f"{root}/{name}/log.txt").read_text()
        train(cfg, tmp_path / name, log=lambda *_: None)
        remote, local = _records(f"{root}/{name}"), _records(tmp_path / name)
        assert [r[:2] for r in remote] == [r[:2] for r in local]
        np.testing.assert_allclose([r[2] for r in remote], [r[2] for r in local], rtol=1e-6)
    report = storage.path(f"{root}/report.md").read_text()
    assert "2 of 2 variants finished" in report
    for plot in ("curves.png", "lr_sensitivity.png"):
        assert storage.path(f"{root}/{plot}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_token_store_in_a_bucket_gives_the_local_batches(gcs, tmp_path):  # noqa: F811
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / ".hidden").write_text("never read\n")
    for i in range(12):
        (corpus / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(f"document {i} says\n" * (20 + i))
    with pytest.raises(ConfigError, match="prepared into a store on a local disk"):
        open_store(DataConfig(source=f"text:{gcs}/corpus"))

    local = tmp_path / "store"  # several shards, so reads cross shard boundaries
    prepare(f"text:{corpus}", local, DataConfig(), workers=1, unit_mb=0.001, progress=False,
            log=lambda *_: None)
    remote = f"{gcs}/stores/corpus"
    for file in storage.files_under(local):
        storage.path(f"{remote}/{file.relative_to(local).as_posix()}").write_bytes(file.read_bytes())
    batches = []
    for root in (local, remote):
        data = store_data(DataConfig(source=f"store:{root}", seq_len=32, batch_size=8), seed=3)
        batches.append([data.train_batch(step) for step in (0, 1, 50)] + list(data.val_batches(2)))
    for a, b in zip(*batches, strict=True):
        assert_batches_equal(a, b)


@pytest.mark.slow
def test_import_hf_from_a_bucket_into_a_bucket_equals_the_local_import(gcs, tmp_path):  # noqa: F811
    from gptjax.interop import export_hf, import_hf

    source = tmp_path / "trained"
    train(tiny_experiment(steps=2, eval_every=2, checkpoint_every=2), source, log=lambda *_: None)
    export_hf(source, f"{gcs}/hf/gpt2")  # written through the path library into the bucket
    export_hf(source, tmp_path / "hf")
    import_hf(f"{gcs}/hf/gpt2", f"{gcs}/imported", ["data.tokenizer=byte"])  # a byte model: no tokenizer.json
    import_hf(tmp_path / "hf", tmp_path / "imported", ["data.tokenizer=byte"])
    for a, b in zip(_params(f"{gcs}/imported"), _params(tmp_path / "imported"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_lock_object_admits_one_holder_and_a_stale_one_is_taken_over(gcs):  # noqa: F811
    # Exclusion rests on conditional writes (ifGenerationMatch), which tensorstore sends to the bucket.
    url = f"{gcs}/lockdir"
    first = ObjectLock(url).__enter__()
    with pytest.raises(ConfigError, match=r"in use by pid \d+ on .* \(last heartbeat 0 s ago\)"):
        ObjectLock(url).__enter__()
    # Two processes that both read the lock as stale: only one write of the two can succeed.
    import tensorstore as ts

    store = ts.KvStore.open(url + "/").result()
    seen = store.read(ObjectLock.KEY).result().stamp.generation
    assert store.write(ObjectLock.KEY, b"x", if_equal=seen).result().generation
    assert not store.write(ObjectLock.KEY, b"y", if_equal=seen).result().generation
    first.__exit__(None, None, None)  # its generation is no longer current: it must not delete
    assert store.read(ObjectLock.KEY).result().value == b"x"
    store.write(ObjectLock.KEY, None).result()

    stale = ObjectLock(url)
    stale.__enter__()
    stale._stop.set()  # a holder that died: no more heartbeats
    stale._thread.join()
    taker = ObjectLock(url)
    taker.stale_s = 0.0
    with taker:
        assert json.loads(store.read(ObjectLock.KEY).result().value)["holder"].startswith("pid")
    assert store.read(ObjectLock.KEY).result().state == "missing"

    # The heartbeat keeps a long run's lock fresh.
    beating = ObjectLock(url)
    beating.heartbeat_s = 0.05
    with beating:
        first_beat = json.loads(store.read(ObjectLock.KEY).result().value)["heartbeat"]
        threading.Event().wait(0.5)
        assert json.loads(store.read(ObjectLock.KEY).result().value)["heartbeat"] > first_beat

    # On the emulator: a second run in the same gs:// workdir is refused, the first releases on exit.
    lock = workdir_lock(f"{gcs}/locked")
    assert isinstance(lock, ObjectLock)
    with lock, pytest.raises(ConfigError, match="is in use by"):
        workdir_lock(f"{gcs}/locked").__enter__()
    assert not storage.path(f"{gcs}/locked/.lock").exists()


def test_prepare_refuses_a_bucket_in_one_line_before_reading_anything(capsys, tmp_path):
    assert cli.main(["prepare", "text:gs://b/corpus", str(tmp_path / "s")]) == 2
    assert cli.main(["prepare", "pydoc", "gs://b/stores/pydoc"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: prepare reads local files, not text:gs://b/corpus")
    assert err[1].startswith("error: prepare writes a local store, not gs://b/stores/pydoc")
    assert not (tmp_path / "s").exists()

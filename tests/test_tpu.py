"""Cloud TPU VM workflow without a TPU: the launcher against a fake `gcloud` that records its arguments,
the host index from each environment that sets it (the metadata server is a local HTTP server), and
`sweep --per-host` giving each host its own shard."""

import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gptjax import cli
from gptjax.config import ConfigError
from gptjax.hosts import accelerator_type_of_host, host_shard, local_tpu_env, metadata, per_host_env
from gptjax.sweep import STATUS, load_sweep, shard_variants

REPO = Path(__file__).resolve().parent.parent

FAKE_GCLOUD = """#!/bin/sh
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$GCLOUD_LOG"
"""


@pytest.fixture
def gcloud(tmp_path):
    """PATH with a `gcloud` that appends its argument list (JSON, one call a line) to a log file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "gcloud.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GCLOUD_LOG": str(log)}

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return env, calls


def _make(target, env, **variables):
    assignments = [f"{k}={v}" for k, v in variables.items()]
    return subprocess.run(["make", "--no-print-directory", target, *assignments], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_make_targets_run_the_command_on_every_worker_through_gcloud(gcloud):
    env, calls = gcloud
    done = _make("tpu-sweep", env, TPU="my-v4", ZONE="us-central2-b", NAME="optimizer_comparison",
                 DIR="gs://team/sweeps/oc", ARGS="--jobs 2 train.steps=300")
    assert done.returncode == 0, done.stderr
    done = _make("tpu-experiment", env, TPU="my-v4", ZONE="us-central2-b", NAME="gpt2_adam",
                 DIR="gs://team/runs/g", ARGS="optim.lr=3e-4")
    assert done.returncode == 0, done.stderr
    done = _make("tpu-setup", env, TPU="my-v4", ZONE="us-central2-b", REPO="https://example.org/g.git")
    assert done.returncode == 0, done.stderr
    sweep, experiment, setup = calls()
    prefix = ["compute", "tpus", "tpu-vm", "ssh", "my-v4", "--zone=us-central2-b", "--worker=all"]
    for call in (sweep, experiment, setup):
        assert call[:-1] == prefix and call[-1].startswith("--command=")
    assert sweep[-1] == ("--command=cd ~/gptjax && .venv/bin/python -m gptjax sweep optimizer_comparison "
                         "--per-host --dir gs://team/sweeps/oc --jobs 2 train.steps=300")
    assert experiment[-1] == ("--command=cd ~/gptjax && .venv/bin/python -m gptjax train gpt2_adam --workdir "
                              "gs://team/runs/g train.distributed=true train.data_parallel=-1 optim.lr=3e-4")
    steps = setup[-1].removeprefix("--command=").split(" && ")
    assert steps[0] == "(test -d ~/gptjax || git clone https://example.org/g.git ~/gptjax)"
    assert "make install ACCEL=tpu" in steps and steps[-1].startswith(".venv/bin/python -c 'import jax")


def test_the_launcher_refuses_what_would_go_wrong_on_the_workers(gcloud):
    env, calls = gcloud
    no_tpu = _make("tpu-sweep", env, ZONE="z", NAME="x", DIR="gs://b/x")
    local_dir = _make("tpu-sweep", env, TPU="t", ZONE="z", NAME="x", DIR="runs/x")
    for done in (no_tpu, local_dir):
        assert done.returncode != 0
    assert "--tpu and --zone must not be empty" in no_tpu.stderr
    assert "runs/x is not a bucket path" in local_dir.stderr
    assert calls() == []
    quoted = subprocess.run([sys.executable, "tools/tpu.py", "run", "--tpu", "t", "--zone", "z", "--",
                             "echo", "it's here"], cwd=REPO, env=env, capture_output=True, text=True)
    assert quoted.returncode == 0 and calls()[-1][-1] == "--command=echo 'it'\"'\"'s here'"


def test_the_host_index_comes_from_each_environment_that_sets_it():
    assert host_shard({}, tpu_vm=False) == (0, 1)
    assert host_shard({"GPTJAX_HOST": "2/4", "SLURM_PROCID": "1", "SLURM_NTASKS": "8"}) == (2, 4)
    assert host_shard({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}) == (5, 8)
    gke = {"TPU_WORKER_ID": "3", "TPU_WORKER_HOSTNAMES": "a,b,c,d"}
    assert host_shard(gke) == (3, 4)
    assert host_shard({**gke, "MEGASCALE_SLICE_ID": "1", "MEGASCALE_NUM_SLICES": "2"}) == (7, 8)
    assert host_shard({"CLOUD_TPU_TASK_ID": "1", "TPU_WORKER_HOSTNAMES": "a,b"}) == (1, 2)
    with pytest.raises(ConfigError, match="GPTJAX_HOST must be i/N"):
        host_shard({"GPTJAX_HOST": "4/4"})


def test_a_tpu_vm_reads_its_worker_number_from_the_metadata_server():
    answers = {"agent-worker-number": "2", "worker-network-endpoints": "h0:u:10.0.0.1,h1:u:10.0.0.2,"
               "h2:u:10.0.0.3,h3:u:10.0.0.4", "accelerator-type": "v4-32"}

    class Metadata(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's name)
            key = self.path.rsplit("/", 1)[-1]
            ok = self.headers.get("Metadata-Flavor") == "Google" and key in answers
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(answers.get(key, "").encode() if ok else b"")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"GCE_METADATA_IP": f"127.0.0.1:{server.server_port}"}
        assert metadata("accelerator-type", env) == "v4-32"
        assert host_shard(env, tpu_vm=True) == (2, 4)
        assert per_host_env(4, env, tpu_vm=False) == {}  # not a TPU VM: nothing to confine
    finally:
        server.shutdown()
        server.server_close()  # now nothing listens there
    with pytest.raises(ConfigError, match="set GPTJAX_HOST=i/N"):
        host_shard({"GCE_METADATA_IP": f"127.0.0.1:{server.server_port}"}, tpu_vm=True)


def test_one_host_of_a_slice_is_described_to_the_tpu_runtime_as_a_slice_of_its_own():
    assert accelerator_type_of_host("v4-32", 4) == "v4-8"  # TensorCores: two per chip
    assert accelerator_type_of_host("v5p-64", 4) == "v5p-8"
    assert accelerator_type_of_host("v5litepod-16", 4) == "v5litepod-4"  # chips
    assert accelerator_type_of_host("v6e-16", 4) == "v6e-4"
    env = local_tpu_env("v4-32", 4)
    assert env["TPU_HOST_BOUNDS"] == "1,1,1" and env["TPU_CHIPS_PER_HOST_BOUNDS"] == "2,2,1"
    assert env["TPU_WORKER_HOSTNAMES"] == "localhost" and env["TPU_WORKER_ID"] == "0"
    assert env["TPU_SKIP_MDS_QUERY"] == "1" and env["TPU_ACCELERATOR_TYPE"] == "v4-8"


SWEEP_FILE = '''
from gptjax.config import Experiment, TrainConfig
from gptjax.sweep import grid
def get_config():
    return Experiment(train=TrainConfig(steps=3))
def get_sweep(base):
    return grid(base, {"optim.lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]})
'''


def test_per_host_sweeps_take_the_hosts_shard_and_refuse_a_job_across_hosts(tmp_path, monkeypatch, capsys):
    experiment = tmp_path / "ph.py"
    experiment.write_text(SWEEP_FILE)
    _, variants = load_sweep(str(experiment))
    root = tmp_path / "sweep"
    for name in variants:  # every variant finished already: the test sees the split, trains nothing
        (root / name).mkdir(parents=True)
        (root / name / STATUS).write_text(json.dumps({"status": "done", "steps": 3}))
    monkeypatch.setenv("GPTJAX_HOST", "1/2")
    assert cli.main(["sweep", str(experiment), "--per-host", "--dir", str(root)]) == 0
    mine = shard_variants(list(variants), (1, 2))
    assert len(mine) == 2
    assert "5 variants, 2 in shard 1/2, 2 already done, 0 to run" in capsys.readouterr().out
    assert cli.main(["sweep", str(experiment), "--per-host", "--shard", "0/2", "--dir", str(root)]) == 0
    assert "3 in shard 0/2" in capsys.readouterr().out  # --shard overrides the environment
    assert cli.main(["sweep", str(experiment), "--per-host", "--dir", str(root),
                     "train.distributed=true"]) == 2
    assert "sets train.distributed=true" in capsys.readouterr().err

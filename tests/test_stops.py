"""Stops, sweeps and records: every stop keeps its records, a sweep passes a stop on and shares a directory
with another sweep, `metrics.jsonl` is repaired on resume and read tolerantly, and bad input is one line.

The process tests run the real command line on the tiny model of tests/conftest.py and send real signals.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptjax.checkpoint import checkpoint_steps
from gptjax.cli import main
from gptjax.config import ConfigError, to_dict
from gptjax.guards import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_PREEMPTED
from gptjax.metrics import MetricsWriter, current_records, read_metrics
from gptjax.sweep import read_status
from tests.conftest import TINY_FILE, tiny_experiment

REPO = Path(__file__).resolve().parent.parent
# One variant, so that a sweep is one child process; the base's steps come from the command line.
ONE_VARIANT = TINY_FILE + '''
def get_sweep(base):
    return {"only": base}
'''


def _env():
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user has


def _experiment(tmp_path, text=TINY_FILE, name="tinyrun"):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _wait(condition, proc, what, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (value := condition()):
            return value
        assert proc.poll() is None, f"exited {proc.returncode} before {what}: {proc.communicate()}"
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout} s")


def _keys(workdir, splits=("train", "val")):
    return sorted((r["step"], r["split"]) for r in read_metrics(workdir) if r["split"] in splits)


def _last_train_step(workdir):
    return max((r["step"] for r in read_metrics(workdir) if r["split"] == "train"), default=0)


# --- metrics.jsonl: repaired on resume, read tolerantly ------------------------------------------------

def _lines(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_a_resume_drops_a_torn_line_and_the_records_past_its_step(tmp_path):
    # A run killed at step 6 mid-write, its newest checkpoint at 3 (or 6 damaged and set aside).
    before = ([{"step": 0, "split": "setup"}]
              + [{"step": s, "split": "train", "loss": s} for s in range(1, 7)]
              + [{"step": 3, "split": "val"}, {"step": 6, "split": "val"}])
    (tmp_path / "metrics.jsonl").write_text(_lines(before) + '{"step": 7, "split": "tra')
    writer = MetricsWriter(tmp_path)
    note = writer.resume(3)
    assert "dropped 1 damaged line(s) and 4 record(s) past step 3" in note
    writer.write(3, "setup", {})
    writer.write(4, "train", {"loss": 40})
    writer.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [
        (0, "setup"), (1, "train"), (2, "train"), (3, "train"), (3, "val"), (3, "setup"), (4, "train")]
    assert records[-1]["loss"] == 40
    # A clean file is left as it is, byte for byte.
    text = (tmp_path / "metrics.jsonl").read_bytes()
    writer = MetricsWriter(tmp_path)
    assert writer.resume(4) == ""
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == text


def test_readers_skip_a_torn_last_line_and_name_a_damaged_one_before_it(tmp_path):
    good = [{"step": 0, "split": "setup"}, {"step": 1, "split": "train", "loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text(_lines(good) + '{"step": 2, "spl')
    assert read_metrics(tmp_path) == good
    (tmp_path / "metrics.jsonl").write_text(_lines(good[:1]) + "[]\n" + _lines(good[1:]))
    with pytest.raises(ConfigError, match=r"metrics.jsonl: line 2 is not a metrics record"):
        read_metrics(tmp_path)


def test_a_resume_from_an_older_checkpoint_supersedes_the_records_past_it():
    # As a run that went to step 5, then resumed from its checkpoint at 3, left the file before the repair.
    old = [{"step": s, "split": "train", "old": 1} for s in (1, 2, 3, 4, 5)]
    records = ([{"step": 0, "split": "setup"}, *old, {"step": 3, "split": "setup"}]
               + [{"step": s, "split": "train"} for s in (4, 5)])
    current = current_records(records)
    assert [(r["step"], r["split"]) for r in current] == [
        (0, "setup"), (1, "train"), (2, "train"), (3, "train"), (3, "setup"), (4, "train"), (5, "train")]
    assert [r.get("old") for r in current if r["step"] > 3] == [None, None]


def test_report_reads_a_torn_tail_and_names_a_damaged_file_in_one_line(tmp_path, capsys):
    from gptjax.report import load_runs
    from tests.test_report import _write_sweep

    _write_sweep(tmp_path, unfinished=False)
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    with (runs[0] / "metrics.jsonl").open("a") as f:
        f.write('{"step": 30, "split": "tr')  # a run killed mid-write: the report is made all the same
    (runs[1] / "status.json").write_text("[]")
    assert [len(run.val) for run in load_runs(tmp_path)][:2] == [2, 2]
    cases = [(runs[0] / "metrics.jsonl", "not json at all\n"), (runs[2] / "config.json", "{trunc"),
             (runs[2] / "config.json", "[]"), (tmp_path / "sweep.json", "\x00\x01")]
    for path, damage in cases:
        saved = path.read_text() if path.exists() else None
        path.write_text(path.read_text() + damage if path.name == "metrics.jsonl" else damage)
        if path.name == "metrics.jsonl":  # damage before the last line, not a torn tail
            path.write_text(path.read_text() + json.dumps({"step": 40, "split": "train"}) + "\n")
        assert main(["report", "x", "--dir", str(tmp_path)]) == EXIT_BAD_INPUT, path
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err, err
        if saved is None:
            path.unlink()
        else:
            path.write_text(saved)


# --- small ones: one line, exit 2 ---------------------------------------------------------------------

def test_bad_input_of_every_kind_is_one_line_and_exit_2(tmp_path, capsys):
    raising = _experiment(tmp_path, "def get_config():\n    raise RuntimeError('no GPU here')\n", "raising")
    assert main(["train", str(raising)]) == EXIT_BAD_INPUT
    sweep_raising = _experiment(tmp_path, TINY_FILE + "def get_sweep(base):\n    return 1 / 0\n", "sr")
    assert main(["sweep", str(sweep_raising), "--dir", str(tmp_path / "s")]) == EXIT_BAD_INPUT
    tiny = _experiment(tmp_path)
    regular = tmp_path / "a_file"
    regular.write_text("x")
    workdirs = [regular / "run", "/proc/gptjax-run", "/proc/self/run"]
    if os.geteuid() != 0:  # root writes into a read-only directory; a non-root user must be refused
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        workdirs.append(readonly / "run")
    for workdir in workdirs:
        assert main(["train", str(tiny), "--workdir", str(workdir)]) == EXIT_BAD_INPUT, workdir
    assert main(["sweep", str(sweep_raising.with_name("tinyrun.py")), "--dir", str(regular / "s")]) == 2
    # eval --text on a binary file, refused before any model is loaded (a config.json is all it reads).
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(to_dict(tiny_experiment())))
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)))
    assert main(["eval", str(workdir), "--text", str(binary)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 + len(workdirs) + 2, err
    assert "get_config() raised RuntimeError: no GPU here" in err[0]
    assert "get_sweep() raised ZeroDivisionError" in err[1]
    assert "a_file is a file, not a directory" in err[2] and "/proc" in err[3]
    assert "is not UTF-8 text (byte 0x80 at offset 128)" in err[-1]
    assert not (tmp_path / "s").exists() and not list(Path("/proc").glob("gptjax*"))


# --- stops, through the real command line ---------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_stop_in_the_first_instant_exits_3_with_one_line(tmp_path, sig, command):
    """As soon as the process can catch a signal (before JAX is imported) a stop is exit 3, not 143 or a
    KeyboardInterrupt traceback."""
    path = _experiment(tmp_path, ONE_VARIANT)
    where = ["--workdir" if command == "train" else "--dir", str(tmp_path / "out")]
    proc = subprocess.Popen([sys.executable, "-m", "gptjax", command, str(path), *where], env=_env(),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Python itself catches SIGINT from its start (a KeyboardInterrupt traceback, before any gptjax code
    # can run); SIGTERM it leaves alone: once that is caught, gptjax's handlers are in place.
    _wait(lambda: _catches(proc.pid, signal.SIGTERM), proc, "a handler")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert err.count("\n") == 1 and f"stopped by {sig.name}" in err, err


@pytest.mark.slow
def test_a_stop_at_an_evaluation_and_at_the_last_step_keeps_every_scheduled_record(tmp_path):
    """SIGTERM while step 3's evaluation runs, then while the last step's does: every scheduled train and
    val record is written exactly once, and the run counts as finished (a report does not list it as
    pending)."""
    from gptjax.report import load_runs

    workdir = tmp_path / "sweep" / "run"
    cmd = [sys.executable, "-m", "gptjax", "train", str(_experiment(tmp_path)), "--workdir", str(workdir),
           "train.steps=6", "train.eval_every=3", "train.eval_batches=200", "train.checkpoint_every=100"]

    def stop_after_train_record(step):
        # A step's train record is flushed just before its evaluation: the signal lands in it.
        proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        _wait(lambda: _last_train_step(workdir) >= step, proc, f"step {step}")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out + err

    code, err = stop_after_train_record(3)
    assert code == EXIT_PREEMPTED, err
    stopped = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 3 < stopped < 6
    # On disk: what a run that finished step `stopped` leaves, step 3's evaluation included.
    assert checkpoint_steps(workdir) == [stopped]
    assert _keys(workdir) == sorted([(s, "train") for s in range(1, stopped + 1)] + [(3, "val")])

    code, err = stop_after_train_record(6)
    assert f"resumed from step {stopped}" in err
    if code == EXIT_PREEMPTED:  # the signal came after the loop had let go of it: resume the finished run
        done = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
        code, err = done.returncode, done.stdout + done.stderr
    assert code == 0, err
    assert _keys(workdir) == sorted([(s, "train") for s in range(1, 7)] + [(3, "val"), (6, "val")])
    setups = [r["step"] for r in read_metrics(workdir) if r["split"] == "setup"]
    assert setups[:2] == [0, stopped] and set(setups[2:]) <= {6} and len(setups) == len(set(setups))
    assert (workdir / "sample.txt").is_file()
    assert [run.finished for run in load_runs(workdir.parent)] == [True]


@pytest.mark.slow
def test_a_second_sweep_leaves_a_running_variant_alone_and_a_stopped_sweep_stops_its_child(tmp_path):
    """Two sweeps on one directory: the second says the variant runs elsewhere (exit 5) and writes
    nothing into it. SIGTERM to the first sweep's parent: its child checkpoints and exits, the variant is
    recorded `stopped` at that checkpoint, and the parent exits 3."""
    path = _experiment(tmp_path, ONE_VARIANT, "onevariant")
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "gptjax", "sweep", str(path), "--dir", str(root), "train.steps=100000"]
    first = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    variant = root / "only"
    _wait(lambda: _last_train_step(variant) >= 2, first, "the variant's step 2")
    child = read_status(variant)["pid"]
    status, log = (variant / "status.json").read_bytes(), (variant / "log.txt").read_bytes()

    second = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == EXIT_BUSY, second.stderr
    assert second.stderr.count("\n") == 1 and "busy: 1 variant(s) are being trained by another sweep" in \
        second.stderr and f"pid {first.pid} " in second.stderr, second.stderr
    assert "only: running elsewhere" in second.stdout
    assert (variant / "status.json").read_bytes() == status
    assert (variant / "log.txt").read_bytes().startswith(log)  # only the first sweep's child appends to it

    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == EXIT_PREEMPTED, err
    assert err.count("\n") == 1 and err.startswith("preempted: stopped by SIGTERM"), err
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the child is gone, not training on unsupervised
    recorded = read_status(variant)
    assert recorded["status"] == "stopped" and recorded["step"] == checkpoint_steps(variant)[-1] > 0
    assert "Preempted: stopped by SIGTERM at step" in (variant / "log.txt").read_text()


# --- make experiment -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_make_experiment_sweeps_and_reports_with_get_sweep_and_trains_without(tmp_path, capsys):
    # The file also writes a report of its own after the common one.
    own_report = """
def write_report(root):
    import json
    from gptjax.report import load_runs
    path = root / "own.json"
    path.write_text(json.dumps(sorted(run.name for run in load_runs(root))))
    return path
"""
    sweep = _experiment(tmp_path, ONE_VARIANT.replace("steps=40", "steps=2").replace("eval_every=1000",
                                                                                       "eval_every=2")
                        + own_report, "cmp")
    root = tmp_path / "runs"
    assert main(["experiment", str(sweep), "--workdir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 variants, 1 in shard 0/1, 0 already done, 1 to run" in out and "only: done" in out
    assert "vmap: 0 variants in 0 vmapped group(s)" in out  # one variant: nothing to group it with
    assert f"report written to {root / 'report.md'}\nreport written to {root / 'own.json'}" in out
    assert "1 of 1 variants finished" in (root / "report.md").read_text()
    assert json.loads((root / "own.json").read_text()) == ["only"]
    assert read_status(root / "only")["status"] == "done"
    (root / "own.json").unlink()  # `report` writes both again
    assert main(["report", str(sweep), "--dir", str(root)]) == 0
    assert json.loads((root / "own.json").read_text()) == ["only"]
    # Without get_sweep() it is `train`: its workdir checks, its refusal of sweep options.
    single = _experiment(tmp_path)
    regular = tmp_path / "a_file"
    regular.write_text("")
    assert main(["experiment", str(single), "--workdir", str(regular / "w")]) == EXIT_BAD_INPUT
    assert main(["experiment", str(single), "--jobs", "2"]) == EXIT_BAD_INPUT
    assert main(["experiment", str(sweep), "train.nosuch=1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert "workdir" in err[0] and "is a file, not a directory" in err[0]
    assert "--jobs is for a sweep" in err[1] and "nosuch" in err[2]

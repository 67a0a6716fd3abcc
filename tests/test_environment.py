"""gptjax.environment: the interpreter and accelerator detection `make install` runs (inputs faked: a /dev
folder, an nvidia-smi and Pythons on PATH, a pyenv folder), the environment record every run, benchmark
and report carries, and the one-line warning for an unused accelerator."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import jax
import pytest

from gptjax import environment as env
from gptjax import report
from gptjax.config import to_dict
from tests.conftest import tiny_experiment

ROOT = Path(__file__).resolve().parents[1]


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _fake_python(folder: Path, name: str, major: int, minor: int, venv: bool = True) -> Path:
    """A command that answers the version probe as that Python would."""
    return _script(folder, name, f"echo {major} {minor} {int(venv)}")


def _fake_smi(folder: Path, output: str, status: int = 0) -> Path:
    return _script(folder, "nvidia-smi", f"echo '{output}'; exit {status}")


@pytest.fixture
def dev(tmp_path):
    folder = tmp_path / "dev"
    folder.mkdir()
    return folder


def test_accelerator_detection_from_faked_devices_and_nvidia_smi(tmp_path, dev):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    nothing = (str(tmp_path / "no-libtpu.so"),)

    def detect(requested=""):
        return env.detect_accel(requested, dev=str(dev), path=str(bin_), libtpu_paths=nothing)

    assert detect() == "cpu"
    (dev / "vfio").mkdir()
    (dev / "vfio" / "vfio").touch()  # VFIO's control device alone: any machine with the module loaded
    assert detect() == "cpu"
    (dev / "vfio" / "0").touch()  # a VFIO group: a v5p/v6e TPU VM
    assert detect() == "tpu"
    (dev / "vfio" / "0").unlink()
    (dev / "accel0").touch()  # v4/v5e chips
    assert detect() == "tpu"
    (dev / "accel0").unlink()
    libtpu = tmp_path / "libtpu.so"
    libtpu.touch()
    assert env.detect_accel("", dev=str(dev), path=str(bin_), libtpu_paths=(str(libtpu),)) == "tpu"

    # CUDA where nvidia-smi works; the driver decides between the CUDA 13 and CUDA 12 builds.
    _fake_smi(bin_, "580.65.06")
    assert detect() == detect("cuda") == "cuda13"
    _fake_smi(bin_, "550.54.15\n550.54.15")  # one line per GPU
    assert detect() == detect("cuda") == "cuda12"
    _fake_smi(bin_, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver", 9)
    assert detect() == "cpu"
    assert detect("cuda") == "cuda12"  # asked for, with no working driver to tell which: the older one

    # An explicit choice wins over the evidence; a wrong one is one line and exit 2.
    _fake_smi(bin_, "580.65.06")
    assert detect("cpu") == "cpu" and detect("tpu") == "tpu" and detect("cuda12") == "cuda12"
    with pytest.raises(SystemExit) as stop:
        detect("gpu")
    assert stop.value.code == 2


def test_the_warning_for_an_accelerator_that_jax_does_not_use(tmp_path, dev, monkeypatch):
    assert env.accelerator(str(dev), path=str(tmp_path), libtpu_paths=()) is None
    (dev / "nvidia0").touch()
    assert env.accelerator(str(dev), path=str(tmp_path), libtpu_paths=()) == "gpu"
    (dev / "accel0").touch()
    assert env.accelerator(str(dev), path=str(tmp_path), libtpu_paths=()) == "tpu"

    line = env.cpu_only_warning("cpu", "tpu")
    assert "\n" not in line and "TPU" in line and "make install ACCEL=tpu" in line
    assert "make install ACCEL=cuda" in env.cpu_only_warning("cpu", "gpu")
    assert env.cpu_only_warning("tpu", "tpu") is None  # JAX uses it
    assert env.cpu_only_warning("cpu", None) is None  # nothing to use
    assert env.cpu_only_warning("cpu", "gpu", jax_platforms="cpu") is None  # the CPU on purpose

    fake = {"platform": "cpu", "device_kinds": ["cpu"], "device_count": 8, "python": "3.11.7",
            "jax": "0.10.2"}
    logged = []
    monkeypatch.setenv("JAX_PLATFORMS", "")
    assert env.announce(logged.append, env=fake, present="gpu") == fake
    assert logged == ["platform cpu: 8 device(s) (cpu); Python 3.11.7, jax 0.10.2",
                      env.cpu_only_warning("cpu", "gpu")]
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # as the tests set it
    logged.clear()
    env.announce(logged.append, env=fake, present="gpu")
    assert len(logged) == 1


def test_choose_python_takes_a_supported_one_or_says_in_one_line_what_to_get(tmp_path, capsys):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    old = _fake_python(bin_, "python3.10", 3, 10)
    good = str(_fake_python(bin_, "python3", 3, 12))
    assert env.choose_python(good, path=str(bin_)) == good

    # Too old, nothing better: exit 2, one line naming the versions and how to get one on Ubuntu.
    with pytest.raises(SystemExit) as stop:
        env.choose_python(str(old), path=str(bin_))
    assert stop.value.code == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and "is Python 3.10" in line and "3.11, 3.12 or 3.13" in line
    assert "deadsnakes" in line and "uv python install" in line

    # A pyenv shim for a version pyenv has not selected exits non-zero: it does not count.
    _script(bin_, "python3.13", "echo 'pyenv: python3.13: command not found' >&2; exit 127")
    _fake_python(bin_, "python3.12", 3, 12, venv=False)  # Debian without python3.12-venv
    pyenv = tmp_path / "pyenv"
    (pyenv / "versions" / "3.11.9" / "bin").mkdir(parents=True)
    inside = _fake_python(pyenv / "versions" / "3.11.9" / "bin", "python3.11", 3, 11)
    assert env.supported_pythons(path=str(bin_), pyenv_root=str(pyenv)) == [((3, 11), str(inside))]
    # The default python3 too old: the newest supported one found is used, in one line.
    assert env.choose_python("", path=str(bin_), pyenv_root=str(pyenv), default=str(old)) == str(inside)
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and f"using {inside} (Python 3.11) instead" in line
    # An explicit PYTHON= is never swapped for another: refused, naming one that would do.
    for requested, says in ((str(old), "is Python 3.10"), (str(bin_ / "python3.13"), "does not run")):
        with pytest.raises(SystemExit) as stop:
            env.choose_python(requested, path=str(bin_), pyenv_root=str(pyenv))
        line = capsys.readouterr().err
        assert stop.value.code == 2 and line.count("\n") == 1
        assert says in line and line.rstrip().endswith(f"PYTHON={inside} would do")
    with pytest.raises(SystemExit):
        env.choose_python(str(bin_ / "python3.12"), path=str(bin_), pyenv_root=str(pyenv))
    assert "has no venv module" in capsys.readouterr().err

    # The newest supported one wins.
    _fake_python(bin_, "python3.13", 3, 13)
    assert env.choose_python("", path=str(bin_), pyenv_root=str(pyenv),
                             default=str(old)) == str(bin_ / "python3.13")


def test_the_script_runs_under_the_interpreter_it_judges():
    """The Makefile runs this file with whatever python3 the machine has, before anything is installed."""
    script = ROOT / "gptjax" / "environment.py"
    out = subprocess.run([sys.executable, "-I", str(script), "accel", "cpu"], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "cpu\n")
    out = subprocess.run([sys.executable, "-I", str(script), "python", sys.executable], capture_output=True,
                         text=True)
    assert (out.returncode, out.stdout, out.stderr) == (0, sys.executable + "\n", "")
    out = subprocess.run([sys.executable, "-I", str(script), "accel", "rocm"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stdout == ""


def test_every_supported_python_has_a_lock_for_every_accelerator_and_installs_exactly_it(tmp_path):
    locks = ROOT / "locks"
    for major, minor in env.SUPPORTED:
        for accel in env.ACCELS:
            text = (locks / f"py{major}.{minor}-{accel}.txt").read_text()
            assert "--hash=sha256:" in text and "\njax==" in text and "\njaxlib==" in text
        cuda = (locks / f"py{major}.{minor}-cuda12.txt").read_text()
        assert "\njax-cuda12-plugin==" in cuda and "\nlibtpu==" not in cuda
        assert "\nlibtpu==" in (locks / f"py{major}.{minor}-tpu.txt").read_text()
    expected = [f"py{a}.{b}-{accel}.txt" for a, b in env.SUPPORTED for accel in env.ACCELS]
    assert sorted(p.name for p in locks.glob("*.txt")) == sorted([*expected, "py3.11-reference.txt"])
    # Every dependency pyproject.toml names is pinned in every lock (a new one needs `make lock`).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.match(r"[A-Za-z0-9._-]+", r).group() for r in project["dependencies"] +
             project["optional-dependencies"]["test"]]
    for lock in locks.glob("*.txt"):
        pinned = {env._normal(m) for m in re.findall(r"^([A-Za-z0-9._-]+)==", lock.read_text(), re.M)}
        assert {env._normal(n) for n in names} <= pinned, (lock.name, set(map(env._normal, names)) - pinned)
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK_PYTHONS := " + " ".join(f"{a}.{b}" for a, b in env.SUPPORTED) + "\n" in makefile

    # What `make install` uninstalls after installing a lock: whatever no lock names.
    lock = tmp_path / "lock.txt"
    lock.write_text("jax==0.10.2 \\\n    --hash=sha256:00\n    # via gptjax\nOrbax_Checkpoint==0.12.8\n")
    freeze = ["jax==0.10.2", "orbax-checkpoint==0.12.8", "nvidia-cublas-cu12==12.9.1.4", "-e file:///x"]
    assert env.surplus(freeze, [lock]) == ["nvidia-cublas-cu12"]


def test_this_environment_matches_its_lock():
    """The running .venv holds the versions of the lock for its Python (CPU build), as `make install`
    made it; a hand-installed or drifted package shows up here."""
    lock = ROOT / "locks" / f"py{sys.version_info[0]}.{sys.version_info[1]}-cpu.txt"
    if not lock.is_file():
        pytest.skip(f"no lock for Python {sys.version_info[0]}.{sys.version_info[1]}")
    pins = dict(line.split(" ")[0].split("==") for line in lock.read_text().splitlines() if "==" in line
                and not line.startswith((" ", "#")))
    for name in env.PACKAGES:
        assert metadata.version(name) == pins[name], name


def test_the_record_names_versions_and_devices_and_a_report_names_it(tmp_path):
    """What the record holds, against the packages' metadata and JAX itself; how a report names the
    records its runs wrote. (That training writes it into the setup record: tests/test_train.py.)"""
    record = env.record()
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in env.PACKAGES:
        assert record[name] == metadata.version(name)
    assert record["jax"] == jax.__version__
    assert record["platform"] == jax.default_backend() == "cpu"
    assert record["device_kinds"] == sorted({d.device_kind for d in jax.devices()})
    assert record["device_count"] == 8 and record["process_count"] == 1
    json.dumps(record)  # a results file and metrics.jsonl store it as JSON
    assert env.cpus() == os.cpu_count()

    # One line when the runs agree; one line per environment when they differ (an older run: none).
    config = json.dumps(to_dict(tiny_experiment()))
    recorded = {"environment": record, "devices": 8}
    for name, setup in (("a", recorded), ("b", recorded), ("older", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps({"step": 0, "split": "setup", **setup}))
    line = ", ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in
                     sorted({**record, "devices": 8}.items()))
    assert report.environment(report.load_runs(tmp_path)[:2]) == [f"Environment: {line}."]
    lines = report.environment(report.load_runs(tmp_path))
    assert lines[0] == "Environment: **the runs differ** —" and f"- {line}: 2 run(s), e.g. `a`" in lines
    assert "- not recorded: 1 run(s), e.g. `older`" in lines


def test_make_install_with_a_too_old_python_prints_one_line(tmp_path):
    """`make install PYTHON=python3.10` on a machine with no supported Python: one line, exit 2, no venv."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    old = _fake_python(bin_, "python3.10", 3, 10)
    os.symlink(sys.executable, bin_ / "python3")  # what runs the detection
    for tool in ("make", "sh", "rm"):
        os.symlink(shutil.which(tool), bin_ / tool)
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "install", f"PYTHON={old}",
                          f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True,
                         env={"PATH": str(bin_), "PYENV_ROOT": str(tmp_path / "none"), "HOME": str(tmp_path)})
    errors = [line for line in out.stderr.splitlines() if not line.startswith("make")]
    assert out.returncode != 0 and len(errors) == 1 and "gptjax needs Python 3.11, 3.12 or 3.13" in errors[0]
    assert not (tmp_path / "venv").exists()

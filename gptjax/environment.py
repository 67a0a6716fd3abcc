"""The software and hardware a result came from, and what `make install` needs to know before JAX exists.

`record()` is the environment of this process (Python, jax, jaxlib, flax, optax and orbax-checkpoint
versions, JAX's platform and device kinds); training writes it into metrics.jsonl's `setup` record and
the benchmarks into their results files, and a sweep report names it from the runs' setup records.
`announce` logs the platform a run got, and one warning line when the machine has a TPU or NVIDIA GPU
that JAX does not use. The rest is standard library only, and this file also runs as a script under any
Python 3.7+ (`python3 -I gptjax/environment.py python|pythons|accel|surplus`): the Makefile asks it which
interpreter to build .venv with and which JAX build the accelerator needs. Its inputs (PATH, /dev,
pyenv's folder) are arguments so that tests can fake them.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

SUPPORTED = ((3, 11), (3, 12), (3, 13))  # the Pythons with lock files: locks/py3.X-ACCEL.txt
ACCELS = ("cpu", "tpu", "cuda12", "cuda13")
# CUDA 13 builds of jaxlib need an NVIDIA driver of release 580 or newer; older drivers take CUDA 12.
CUDA13_DRIVER = 580
# Where TPU VM images and the libtpu package put the TPU runtime.
LIBTPU_PATHS = ("/lib/libtpu.so", "/usr/lib/libtpu.so", "/usr/local/lib/libtpu.so")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")
# Reported too where installed: they say which accelerator build of JAX a result came from.
PLUGINS = ("libtpu", "jax-cuda12-plugin", "jax-cuda13-plugin")


def versions() -> dict:
    """Python's version and the installed versions of PACKAGES (and of any PLUGINS present), read from
    the packages' metadata without importing them."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in PACKAGES + PLUGINS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in PACKAGES:
                out[name] = None
    return out


def devices() -> dict:
    """JAX's default platform (cpu, gpu, tpu), the kinds of its devices (e.g. "TPU v5 lite", "NVIDIA
    H100 80GB HBM3", "cpu") and how many devices and processes the run has."""
    import jax

    return {"platform": jax.default_backend(),
            "device_kinds": sorted({d.device_kind for d in jax.devices()}),
            "device_count": jax.device_count(), "process_count": jax.process_count()}


def record() -> dict:
    """versions() and devices() in one dict: what a setup record or a results file stores as
    "environment"."""
    return {**versions(), **devices()}


def cpus() -> int:
    """The machine's CPU count, to read a load average against (the load counts the whole machine)."""
    return os.cpu_count() or 1


def summary(env: dict) -> str:
    """One line for a log: "platform cpu: 8 devices (cpu); Python 3.11.7, jax 0.10.2, ..."."""
    kinds = ", ".join(env.get("device_kinds") or ["?"])
    packages = ", ".join(f"{k} {env[k]}" for k in PACKAGES + PLUGINS if env.get(k))
    return (f"platform {env.get('platform', '?')}: {env.get('device_count', '?')} device(s) ({kinds}); "
            f"Python {env.get('python', '?')}, {packages}")


def accelerator(dev: str = "/dev", path: str | None = None, libtpu_paths=LIBTPU_PATHS) -> str | None:
    """"tpu" or "gpu" where the machine has one (the same evidence as `make install`'s detection:
    TPU devices or runtime, NVIDIA device files or a working nvidia-smi), else None."""
    if tpu_present(dev, libtpu_paths):
        return "tpu"
    if glob.glob(os.path.join(dev, "nvidia[0-9]*")) or nvidia_driver(path) is not None:
        return "gpu"
    return None


def cpu_only_warning(platform_name: str, present: str | None, jax_platforms: str = "") -> str | None:
    """The warning for a run on the CPU of a machine with an accelerator, unless JAX_PLATFORMS chose
    the CPU on purpose."""
    if platform_name != "cpu" or present is None or jax_platforms.strip().lower() == "cpu":
        return None
    build = "tpu" if present == "tpu" else "cuda"
    return (f"warning: this machine has a {present.upper()} but JAX sees only the CPU (its {present} "
            f"build is not installed): `make install ACCEL={build}` installs it")


def announce(log, env: dict | None = None, present: str | None = None) -> dict:
    """Log the platform, device kinds and versions of this run, and the one-line warning when an
    accelerator goes unused; return the environment record. `present` defaults to `accelerator()`,
    looked at only when JAX runs on the CPU."""
    env = record() if env is None else env
    log(summary(env))
    if env.get("platform") == "cpu":
        present = accelerator() if present is None else present
        warning = cpu_only_warning("cpu", present, os.environ.get("JAX_PLATFORMS", ""))
        if warning:
            log(warning)
    return env


# ---- Before installing: which Python, which accelerator (standard library; Python 3.7+ syntax) ----


def _fail(message: str):
    sys.stderr.write(message + "\n")
    sys.exit(2)


def _names(pairs) -> str:
    return ", ".join(f"{a}.{b}" for a, b in pairs[:-1]) + f" or {pairs[-1][0]}.{pairs[-1][1]}"


def interpreter_version(command: str):
    """(major, minor, has_venv) of a Python command, or None where it does not run: a missing command,
    or a pyenv shim for a version pyenv has not selected (it exits non-zero)."""
    probe = ("import sys\ntry:\n import ensurepip, venv; ok = 1\nexcept ImportError:\n ok = 0\n"
             "print(sys.version_info[0], sys.version_info[1], ok)")
    try:
        out = subprocess.check_output([command, "-c", probe], stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor, ok = out.decode().split()
    return int(major), int(minor), ok == "1"


def candidates(path: str | None = None, pyenv_root: str | None = None) -> list:
    """Commands that may be supported Pythons, newest first: python3.13/3.12/3.11 on PATH, and pyenv's
    installed versions (CI machines carry several that pyenv's shims hide until one is selected)."""
    found = []
    for major, minor in reversed(SUPPORTED):
        name = f"python{major}.{minor}"
        where = shutil.which(name, path=path)
        if where:
            found.append(where)
        if pyenv_root:
            pattern = os.path.join(pyenv_root, "versions", f"{major}.{minor}.*", "bin", name)
            found.extend(sorted(glob.glob(pattern), reverse=True))
    return found


def supported_pythons(path: str | None = None, pyenv_root: str | None = None) -> list:
    """[((major, minor), command)] for each supported version that runs here with venv, newest first."""
    seen = {}
    for command in candidates(path, pyenv_root):
        version = interpreter_version(command)
        if version and version[:2] in SUPPORTED and version[2] and version[:2] not in seen:
            seen[version[:2]] = command
    return sorted(seen.items(), reverse=True)


def choose_python(requested: str = "", path: str | None = None, pyenv_root: str | None = None,
                  default: str = "python3") -> str:
    """The command to build .venv with. A requested one (`PYTHON=`) is used if it is a supported version,
    else refused in one line that names one found here that would do; without a request, `default`
    (python3) if supported, else the newest supported one found (said in one line on stderr). With none
    found: exit 2 with one line saying which versions gptjax needs and how to get one on Ubuntu."""
    command = requested or default
    version = interpreter_version(command)
    if version and version[:2] in SUPPORTED and version[2]:
        return command
    found = supported_pythons(path, pyenv_root)
    have = f"{command} is Python {version[0]}.{version[1]}" if version else f"{command} does not run"
    if version and version[:2] in SUPPORTED:
        hint = f" (or PYTHON={found[0][1]})" if found else ""
        _fail(f"{command} has no venv module: on Ubuntu `sudo apt install python{version[0]}."
              f"{version[1]}-venv`, then make install again{hint}")
    if found and requested:
        _fail(f"{have} and gptjax needs {_names(SUPPORTED)}: PYTHON={found[0][1]} would do")
    if found:
        (major, minor), command = found[0]
        sys.stderr.write(f"{have} and gptjax needs {_names(SUPPORTED)}: using {command} "
                         f"(Python {major}.{minor}) instead\n")
        return command
    _fail(f"{have} and gptjax needs Python {_names(SUPPORTED)}, none of which is here; on Ubuntu get one "
          f"with `sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt install python3.12-venv` or "
          f"`pip install uv && uv python install 3.12`, then `make install PYTHON=python3.12`")


def nvidia_driver(path: str | None = None) -> int | None:
    """The NVIDIA driver's major version where an nvidia-smi on PATH runs and lists a GPU, else None."""
    smi = shutil.which("nvidia-smi", path=path)
    if not smi:
        return None
    try:
        out = subprocess.check_output([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                      stderr=subprocess.DEVNULL, timeout=60).decode()
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"\s*(\d+)\.", out)
    return int(match.group(1)) if match else None


def tpu_present(dev: str = "/dev", libtpu_paths=LIBTPU_PATHS) -> bool:
    """A TPU VM: chips as /dev/accel<n> (v2-v5e) or VFIO groups /dev/vfio/<n> (v5p, v6e and later), or
    the TPU runtime installed system-wide. /dev/vfio/vfio alone is VFIO's control device, present on any
    machine with the module loaded, so it does not count."""
    if glob.glob(os.path.join(dev, "accel[0-9]*")):
        return True
    try:
        groups = [name for name in os.listdir(os.path.join(dev, "vfio")) if name.isdigit()]
    except OSError:
        groups = []
    return bool(groups) or any(os.path.exists(p) for p in libtpu_paths)


def detect_accel(requested: str = "", dev: str = "/dev", path: str | None = None,
                 libtpu_paths=LIBTPU_PATHS) -> str:
    """cpu, tpu, cuda12 or cuda13: the requested one (`cuda` takes the CUDA version that the driver
    supports), else CUDA where nvidia-smi works, a TPU where its devices or runtime are present, else the
    CPU. An unknown request exits 2 with one line."""
    if requested and requested not in ACCELS + ("cuda",):
        _fail(f"ACCEL={requested}: expected one of cpu, tpu, cuda, cuda12, cuda13")
    if requested and requested != "cuda":
        return requested
    driver = nvidia_driver(path)
    if driver is not None or requested == "cuda":
        return "cuda13" if driver is not None and driver >= CUDA13_DRIVER else "cuda12"
    return "tpu" if tpu_present(dev, libtpu_paths) else "cpu"


def surplus(freeze_lines, lock_paths) -> list:
    """Installed distributions (`pip freeze` lines) that none of the lock files names: what to uninstall
    so that the environment holds exactly the locks. Editable installs (gptjax itself) are not listed."""
    pinned = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==")
    locked = set()
    for lock in lock_paths:
        with open(lock) as f:
            locked.update(_normal(m.group(1)) for m in map(pinned.match, f) if m)
    return [m.group(1) for m in map(pinned.match, freeze_lines) if m and _normal(m.group(1)) not in locked]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list) -> None:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    if command == "python":
        print(choose_python(args[0] if args else "", pyenv_root=pyenv_root))
    elif command == "pythons":
        for (major, minor), where in reversed(supported_pythons(pyenv_root=pyenv_root)):
            print(f"{major}.{minor} {where}")
    elif command == "accel":
        print(detect_accel(args[0] if args else ""))
    elif command == "surplus":
        print("\n".join(surplus(sys.stdin.read().splitlines(), args)))
    else:
        _fail("usage: environment.py python [COMMAND] | pythons | accel [cpu|tpu|cuda|cuda12|cuda13] | "
              "surplus LOCK... < pip-freeze-output")


if __name__ == "__main__":
    main(sys.argv[1:])

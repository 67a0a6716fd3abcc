"""What `make install` needs to know about this machine before JAX exists on it: which Python to build the
virtual environment with (`python`), which supported Pythons the machine has (`pythons`, for CI), which JAX
build its accelerator needs (`accel`), and which installed packages a lock file no longer lists (`surplus`).
Standard library only, and no syntax newer than Python 3.6, so that it runs under whatever `python3` a
machine has (Ubuntu 22.04's 3.10 included) and can say in one line what to do about it. Inputs (PATH, /dev,
the nvidia-smi found on PATH, pyenv's folder) are arguments or environment variables so that the tests can
fake them."""

import glob
import os
import re
import shutil
import subprocess
import sys

SUPPORTED = ((3, 11), (3, 12), (3, 13))  # the Pythons with lock files (locks/py3.X-*.txt)
ACCELS = ("cpu", "tpu", "cuda12", "cuda13")
# CUDA 13 builds of jaxlib need an NVIDIA driver of release 580 or newer; older drivers take CUDA 12.
CUDA13_DRIVER = 580
# Where TPU VM images and the libtpu package put the TPU runtime.
LIBTPU_PATHS = ("/lib/libtpu.so", "/usr/lib/libtpu.so", "/usr/local/lib/libtpu.so")


def _fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(2)


def _names(versions):
    return ", ".join("%d.%d" % v for v in versions[:-1]) + " or %d.%d" % versions[-1]


def interpreter_version(command):
    """(major, minor, has_venv) of a Python command, or None where it does not run (a missing command, or a
    pyenv shim for a version pyenv has not activated, which exits non-zero)."""
    probe = "import sys\ntry:\n import ensurepip, venv; ok = 1\nexcept ImportError:\n ok = 0\n" \
            "print('%d %d %d' % (sys.version_info[0], sys.version_info[1], ok))"
    try:
        out = subprocess.check_output([command, "-c", probe], stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor, ok = out.decode().split()
    return int(major), int(minor), ok == "1"


def candidates(path=None, pyenv_root=None):
    """Supported interpreters on this machine, newest first: python3.13/3.12/3.11 on PATH, then pyenv's
    installed versions (CI machines carry several that pyenv's shims hide until one is selected)."""
    found = []
    for major, minor in reversed(SUPPORTED):
        name = "python%d.%d" % (major, minor)
        where = shutil.which(name, path=path)
        if where:
            found.append(where)
        pattern = os.path.join(pyenv_root or "", "versions", "%d.%d.*" % (major, minor), "bin", name)
        found.extend(sorted(glob.glob(pattern), reverse=True) if pyenv_root else [])
    return found


def supported_pythons(path=None, pyenv_root=None):
    """[(version, command)] for each supported minor version that runs here, newest first, one each."""
    seen = {}
    for command in candidates(path, pyenv_root):
        version = interpreter_version(command)
        if version and version[:2] in SUPPORTED and version[2] and version[:2] not in seen:
            seen[version[:2]] = command
    return sorted(seen.items(), reverse=True)


def choose_python(requested, path=None, pyenv_root=None):
    """The command to build the virtual environment with: the requested one (default python3) when it is a
    supported version, else the newest supported one found, else exit 2 with one line saying what to get."""
    requested = requested or "python3"
    version = interpreter_version(requested)
    if version and version[:2] in SUPPORTED and version[2]:
        return requested
    found = supported_pythons(path, pyenv_root)
    have = "%s is Python %d.%d" % ((requested,) + version[:2]) if version else "%s does not run" % requested
    if found:
        sys.stderr.write("%s and gptjax needs %s: using %s (Python %d.%d) instead\n"
                         % (have, _names(SUPPORTED), found[0][1], found[0][0][0], found[0][0][1]))
        return found[0][1]
    if version and version[:2] in SUPPORTED:
        _fail("%s has no venv module: on Ubuntu `sudo apt install python%d.%d-venv`, then make install again"
              % (requested, version[0], version[1]))
    _fail("%s and gptjax needs Python %s, none of which is here; on Ubuntu get one with "
          "`sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt install python3.12-venv` or "
          "`pip install uv && uv python install 3.12`, then `make install PYTHON=python3.12`"
          % (have, _names(SUPPORTED)))


def nvidia_driver(path=None):
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


def tpu_present(dev="/dev", libtpu_paths=LIBTPU_PATHS):
    """A TPU VM: TPU chips as /dev/accel* (v2-v5e) or VFIO groups /dev/vfio/<n> (v5p, v6e and later), or
    the TPU runtime library installed system-wide. /dev/vfio/vfio alone is VFIO's control device, on
    any machine with the module loaded, so it does not count."""
    if glob.glob(os.path.join(dev, "accel[0-9]*")):
        return True
    if any(name.isdigit() for name in _listdir(os.path.join(dev, "vfio"))):
        return True
    return any(os.path.exists(p) for p in libtpu_paths)


def _listdir(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []


def detect_accel(requested="", dev="/dev", path=None, libtpu_paths=LIBTPU_PATHS):
    """cpu, tpu, cuda12 or cuda13: the requested one (`cuda` takes the CUDA version the driver supports),
    else CUDA where nvidia-smi works, a TPU where its devices or runtime are present, else the CPU."""
    if requested and requested not in ACCELS + ("cuda",):
        _fail("ACCEL=%s: expected one of cpu, tpu, cuda, cuda12, cuda13" % requested)
    if requested and requested != "cuda":
        return requested
    driver = nvidia_driver(path)
    if driver is not None or requested == "cuda":
        return "cuda13" if driver is not None and driver >= CUDA13_DRIVER else "cuda12"
    return "tpu" if tpu_present(dev, libtpu_paths) else "cpu"


def surplus(freeze_lines, lock_paths):
    """Installed distributions (pip freeze lines) that none of the lock files names, editable installs
    excepted: what to uninstall so that the environment holds exactly the lock."""
    locked = set()
    for lock in lock_paths:
        with open(lock) as f:
            for line in f:
                match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
                if match:
                    locked.add(_normal(match.group(1)))
    out = []
    for line in freeze_lines:
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if match and _normal(match.group(1)) not in locked:
            out.append(match.group(1))
    return out


def _normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv):
    command = argv[0] if argv else ""
    args = argv[1:]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    if command == "python":
        print(choose_python(args[0] if args else "", pyenv_root=pyenv_root))
    elif command == "pythons":
        for version, where in reversed(supported_pythons(pyenv_root=pyenv_root)):
            print("%d.%d %s" % (version[0], version[1], where))
    elif command == "accel":
        print(detect_accel(args[0] if args else ""))
    elif command == "surplus":
        print("\n".join(surplus(sys.stdin.read().splitlines(), args)))
    else:
        _fail("usage: machine.py python [COMMAND] | pythons | accel [cpu|tpu|cuda|cuda12|cuda13] | "
              "surplus LOCK... < pip-freeze")


if __name__ == "__main__":
    main(sys.argv[1:])

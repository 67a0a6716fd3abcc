"""Which host of a multi-host machine this is, and how a process keeps to this host's own accelerators.

`sweep --per-host` gives host i of N the variants of shard i/N, each trained on that host's local devices
with no collective across hosts. The index and count come, in this order, from `GPTJAX_HOST=i/N`
(an explicit choice), SLURM (`SLURM_PROCID`/`SLURM_NTASKS`), the TPU environment variables of GKE and
multislice jobs (`TPU_WORKER_ID` or `CLOUD_TPU_TASK_ID` with `TPU_WORKER_HOSTNAMES`, and
`MEGASCALE_SLICE_ID`/`MEGASCALE_NUM_SLICES`), and on a Cloud TPU VM, where none of these is set in an ssh
shell, the VM's metadata server (`agent-worker-number`, `worker-network-endpoints`; the address can be
changed with `GCE_METADATA_IP`, as JAX allows). Nothing found: one host, (0, 1).
"""

from __future__ import annotations

import glob
import os
import re
import urllib.request
from collections.abc import Callable, Mapping

from gptjax.config import ConfigError


def on_tpu_vm() -> bool:
    """Whether TPU chips are attached (the devices a TPU VM's runtime opens)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def metadata(key: str, environ: Mapping[str, str] = os.environ) -> str:
    """A Cloud TPU VM's instance attribute `key` from its metadata server."""
    host = environ.get("GCE_METADATA_IP", "metadata.google.internal")
    request = urllib.request.Request(f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
                                     headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode().strip()


def _parse(text: str, where: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match.group(2)) > int(match.group(1)) >= 0:
        raise ConfigError(f"{where} must be i/N with 0 <= i < N, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def host_shard(environ: Mapping[str, str] = os.environ, tpu_vm: bool | None = None,
               lookup: Callable[[str], str] | None = None) -> tuple[int, int]:
    """(i, N): this host's index among the N hosts of the job (see the module docstring for the order).

    `tpu_vm` (default: `on_tpu_vm()`) and `lookup` (default: the metadata server) are the inputs a test
    replaces."""
    if "GPTJAX_HOST" in environ:
        return _parse(environ["GPTJAX_HOST"], "GPTJAX_HOST")
    if "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        return _parse(f"{environ['SLURM_PROCID']}/{environ['SLURM_NTASKS']}", "SLURM_PROCID/SLURM_NTASKS")
    slices = int(environ.get("MEGASCALE_NUM_SLICES", "1") or 1)
    slice_id = int(environ.get("MEGASCALE_SLICE_ID", "0") or 0)
    worker = environ.get("TPU_WORKER_ID", environ.get("CLOUD_TPU_TASK_ID"))
    if worker is not None and environ.get("TPU_WORKER_HOSTNAMES"):
        per_slice = len(environ["TPU_WORKER_HOSTNAMES"].split(","))
        return _parse(f"{slice_id * per_slice + int(worker)}/{slices * per_slice}", "the TPU worker id")
    if tpu_vm if tpu_vm is not None else on_tpu_vm():
        lookup = lookup or (lambda key: metadata(key, environ))
        try:
            worker, endpoints = lookup("agent-worker-number"), lookup("worker-network-endpoints")
        except OSError as e:
            raise ConfigError(f"cannot read this TPU VM's worker number from its metadata server ({e}); "
                              "set GPTJAX_HOST=i/N") from None
        per_slice = len(endpoints.split(","))
        return _parse(f"{slice_id * per_slice + int(worker)}/{slices * per_slice}", "the TPU worker id")
    return 0, 1


def accelerator_type_of_host(accelerator_type: str, chips: int) -> str:
    """The accelerator type of one host's `chips` chips of a slice of `accelerator_type`: TPU v2–v4 and
    v5p are named by TensorCores (two per chip), v5e (v5litepod) and v6e by chips."""
    generation = accelerator_type.rsplit("-", 1)[0]
    per_chip = 2 if re.fullmatch(r"v[234]|v5p", generation) else 1
    return f"{generation}-{chips * per_chip}"


def local_tpu_env(accelerator_type: str, chips: int) -> dict[str, str]:
    """The TPU runtime's topology variables that make a process on one host of a multi-host slice use
    that host's `chips` chips as a slice of its own, instead of waiting for the other hosts to join."""
    bounds = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}
    if chips not in bounds:
        raise ConfigError(f"--per-host does not know the chip layout of a host with {chips} TPU chips")
    return {"TPU_SKIP_MDS_QUERY": "1", "TPU_HOST_BOUNDS": "1,1,1", "TPU_CHIPS_PER_HOST_BOUNDS": bounds[chips],
            "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0",
            "TPU_ACCELERATOR_TYPE": accelerator_type_of_host(accelerator_type, chips)}


def per_host_env(hosts: int, environ: Mapping[str, str] = os.environ, tpu_vm: bool | None = None,
                 lookup: Callable[[str], str] | None = None) -> dict[str, str]:
    """What a `--per-host` sweep adds to its children's environment: on a TPU VM of a multi-host slice,
    `local_tpu_env` of this host (its chips counted in /dev, the slice's type from the metadata); elsewhere
    nothing, as a GPU or CPU process sees only its own host's devices unless it joins a job."""
    if hosts == 1 or not (tpu_vm if tpu_vm is not None else on_tpu_vm()):
        return {}
    lookup = lookup or (lambda key: metadata(key, environ))
    chips = len(glob.glob("/dev/accel*")) or len(glob.glob("/dev/vfio/[0-9]*"))
    return local_tpu_env(environ.get("TPU_ACCELERATOR_TYPE") or lookup("accelerator-type"), chips)

"""Run gptjax on every worker of a Cloud TPU VM through `gcloud compute tpus tpu-vm ssh --worker=all`.

Standard library only, so it runs from any machine with `gcloud` (no JAX needed there):

    python3 tools/tpu.py setup      --tpu NAME --zone ZONE [--repo URL] [--branch B]
    python3 tools/tpu.py sweep      --tpu NAME --zone ZONE --dir gs://BUCKET/sweeps/X EXPERIMENT [ARGS…]
    python3 tools/tpu.py experiment --tpu NAME --zone ZONE --workdir gs://BUCKET/runs/X EXPERIMENT [ARGS…]
    python3 tools/tpu.py run        --tpu NAME --zone ZONE -- COMMAND…

`setup` clones (or updates) the repository into ~/gptjax on each worker, installs it with the TPU build of
JAX and prints what each worker's JAX sees. `sweep` runs `sweep --per-host` on every worker (worker i
trains shard i/N on its own chips) into one bucket directory; `experiment` trains one run across the
whole slice (`train.distributed=true`, one JAX process per worker). `make tpu-setup`, `make tpu-sweep`
and `make tpu-experiment` call this with TPU=… ZONE=…; docs/tpu-vm.md walks through a whole session.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

CHECK = ("import jax; print(f'worker {jax.process_index()}: {jax.local_device_count()} local of '"
         "f'{jax.device_count()} {jax.devices()[0].platform} devices ({jax.devices()[0].device_kind})')")


def ssh(args: argparse.Namespace, command: str) -> list[str]:
    """The gcloud command that runs `command` (a shell line) on every worker of the TPU VM."""
    extra = [f"--project={args.project}"] if args.project else []
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}", *extra,
            "--worker=all", f"--command={command}"]


def remote_command(args: argparse.Namespace) -> str:
    """The shell line each worker runs for `args.action`."""
    q = shlex.quote
    if args.action == "setup":
        return " && ".join([
            f"(test -d ~/gptjax || git clone {q(args.repo)} ~/gptjax)",
            f"cd ~/gptjax && git fetch --quiet origin && git checkout --quiet {q(args.branch)}"
            f" && git pull --quiet --ff-only origin {q(args.branch)}",
            "make install ACCEL=tpu",
            # Every worker at once: a slice's JAX starts only when all its workers do.
            f".venv/bin/python -c {q(CHECK)}"])
    if args.action == "run":
        return " ".join(q(a) for a in args.command)
    if args.action == "sweep":
        gptjax = ["sweep", args.experiment, "--per-host", "--dir", args.dir, *args.args]
    else:
        gptjax = ["train", args.experiment, "--workdir", args.workdir, "train.distributed=true",
                  "train.data_parallel=-1", *args.args]
    return "cd ~/gptjax && .venv/bin/python -m gptjax " + " ".join(q(a) for a in gptjax)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/tpu.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tpu", required=True, help="the TPU VM's name (gcloud compute tpus tpu-vm list)")
    common.add_argument("--zone", required=True, help="its zone, e.g. us-central2-b")
    common.add_argument("--project", help="the Google Cloud project (default: gcloud's)")
    common.add_argument("--dry-run", action="store_true", help="print the gcloud command, run nothing")
    s = sub.add_parser("setup", parents=[common], help="clone, install and check devices on every worker")
    s.add_argument("--repo", help="the repository to clone (default: this checkout's origin remote)")
    s.add_argument("--branch", default="main")
    w = sub.add_parser("sweep", parents=[common], help="a sweep, each worker training its own variants")
    w.add_argument("--dir", required=True, help="the sweep directory, gs://… (shared by every worker)")
    w.add_argument("experiment")
    w.add_argument("args", nargs=argparse.REMAINDER, help="passed on to `python -m gptjax sweep`")
    e = sub.add_parser("experiment", parents=[common], help="one run across every worker of the slice")
    e.add_argument("--workdir", required=True, help="the run's workdir, gs://… (shared by every worker)")
    e.add_argument("experiment")
    e.add_argument("args", nargs=argparse.REMAINDER, help="passed on to `python -m gptjax train`")
    r = sub.add_parser("run", parents=[common], help="any command on every worker")
    r.add_argument("command", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.tpu or not args.zone:
        print("error: --tpu and --zone must not be empty (make tpu-… TPU=name ZONE=zone)", file=sys.stderr)
        return 2
    if args.action == "setup" and not args.repo:
        found = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True)
        if found.returncode or not found.stdout.strip():
            print("error: this checkout has no origin remote; give the repository with --repo URL (make "
                  "tpu-setup REPO=URL)", file=sys.stderr)
            return 2
        args.repo = found.stdout.strip()
    if args.action == "run":
        args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not args.command:
            print("error: run needs a command after --", file=sys.stderr)
            return 2
    for where in (getattr(args, "dir", None), getattr(args, "workdir", None)):
        if where is not None and not where.startswith("gs://"):
            print(f"error: {where} is not a bucket path (gs://…): each worker would write its own local "
                  "copy", file=sys.stderr)
            return 2
    if args.action in ("sweep", "experiment") and args.args[:1] == ["--"]:
        args.args = args.args[1:]
    command = ssh(args, remote_command(args))
    if args.dry_run:
        print(shlex.join(command))
        return 0
    try:
        return subprocess.run(command).returncode
    except FileNotFoundError:
        print("error: gcloud is not installed or not on PATH (https://cloud.google.com/sdk)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

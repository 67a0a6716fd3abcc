"""Where a train step's time goes: a `jax.profiler` trace of gptjax's step, summed per XLA operation.

    python benchmarks/profile_step.py medium                  # one of bench_torch.py's shapes
    python benchmarks/profile_step.py small --steps 20 model.attention=xla
    taskset -c 0 python benchmarks/profile_step.py small      # one thread: op times without thread overlap

Traces `--steps` steps after a warm-up (the trace is kept in `--trace-dir`, Perfetto JSON beside
TensorBoard's xplane, for `xprof`/Perfetto), then prints per step: the time of each kind of operation
(fusion kinds with their numbers stripped: `ynn_fusion` = matmuls and reductions handed to YNNPACK,
`dot` = Eigen matmuls, the rest XLA's own loops) and the most expensive operations with the shape and
operands from the compiled HLO. Each operation's duration is its span in the trace; operations that run
concurrently overlap, so with several threads the sum is not the wall-clock step. Under `taskset -c 0`
(one thread) it is, less the runtime's own overhead. The log in benchmarks/README.md quotes it.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax
from ab_step import build
from common import SHAPES

# Trace events that wrap operations rather than being one (runtime, Python, the profiler itself).
WRAPPERS = ("ThunkExecutor", "$", "PjitFunction", "CommonPjRt", "end: ", "ParseArguments", "Handle inputs",
            "SlinkyThreadPool")


def hlo_definitions(hlo_text: str) -> dict[str, str]:
    """Operation name -> its HLO right-hand side (shape, op, operands), without metadata."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*)", line)
        if m:
            out.setdefault(m.group(1), re.sub(r", (metadata|backend_config)=.*", "", m.group(2)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=[s[0] for s in SHAPES])
    parser.add_argument("overrides", nargs="*", help="config overrides, as on the train command line")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25, help="most expensive operations to list")
    parser.add_argument("--trace-dir", help="where the trace goes (default: a temporary folder)")
    args = parser.parse_args()
    shape = next(s for s in SHAPES if s[0] == args.shape)
    v = build(shape, ",".join(args.overrides) or "base")
    state = v["state"]
    for i in range(3):
        state, _ = v["step"](state, v["batches"][i % 2])
    jax.block_until_ready(state)
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="gptjax-profile-")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for i in range(args.steps):
            state, _ = v["step"](state, v["batches"][i % 2])
        jax.block_until_ready(state)
    trace = sorted(Path(trace_dir).rglob("*perfetto_trace.json.gz"))[-1]
    per_op = collections.Counter()
    with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    for event in events:
        if event.get("ph") == "X" and "dur" in event and not event["name"].startswith(WRAPPERS):
            per_op[event["name"]] += event["dur"] / 1e3 / args.steps  # ms per step
    kinds = collections.Counter()
    for name, ms in per_op.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ms
    print(f"{args.shape}: {sum(per_op.values()):.1f} ms of operations per step; trace in {trace_dir}")
    for kind, ms in kinds.most_common(15):
        print(f"  {ms:9.2f} ms  {kind}")
    definitions = hlo_definitions(v["step"].as_text())
    print(f"the {args.top} most expensive operations:")
    for name, ms in per_op.most_common(args.top):
        print(f"  {ms:9.3f} ms  {name:26s} {definitions.get(name, '')[:140]}")


if __name__ == "__main__":
    main()

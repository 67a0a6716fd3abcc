"""The data pipeline at scale: `prepare` throughput, loader throughput, start-up and memory vs store size.

    make bench-data                       # = python benchmarks/bench_data.py
    python benchmarks/bench_data.py --reuse-prepare   # keep the JSON Lines prepare figures, redo the rest

1. A real corpus that ships with Python: the standard library's .py sources of every CPython installed
   beside this one (pyenv keeps several) and the pydoc topics, one JSON Lines record per file, prepared
   with the byte tokenizer and with an 8192-token BPE (trained on the first 16 MB), all cores.
2. A generated multi-GB corpus: that text repeated into one long file (≥ 1 GB), prepared with the byte
   tokenizer into a ≥ 2 GB store (uint16), and a 20 MB store from its first 10 MB.
3. For each store, in a fresh process: start-up (import, open, first training batch and the validation
   batches), loader tokens/s at the default experiment's batch (32 × 64) and at GPT-2's (8 × 1024),
   and peak RSS; then `train default` for 20 steps on each store: wall time, peak RSS, logged tokens/s.

Work files go to $GPTJAX_BENCH_DIR (default: the temp directory)/gptjax-bench-data and are deleted at
the end; results to benchmarks/results/data.json, with the load average before and after (the 2 cores
are shared, so throughput figures are lower bounds on an idle machine).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_json

REPO = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("GPTJAX_BENCH_DIR", tempfile.gettempdir())) / "gptjax-bench-data"
DEFAULT_STEP_TOKENS_PER_S = 17_000  # the default experiment's train step on this 2-core machine, idle


def stdlib_sources() -> list[Path]:
    """The .py files of this CPython's standard library and of every other one installed beside it."""
    here = Path(sysconfig.get_paths()["stdlib"])
    versions = here.parent.parent.parent  # …/versions/3.11.7/lib/python3.11 → …/versions
    libs = sorted({here, *versions.glob("*/lib/python3.*")}) if versions.name == "versions" else [here]
    files = []
    for lib in libs:
        files += sorted(p for p in lib.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    return files


def write_corpus(path: Path) -> tuple[int, int]:
    """The JSON Lines corpus: (records, text bytes)."""
    from pydoc_data.topics import topics

    n, text_bytes = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        for text in [topics[k] for k in sorted(topics)] + [p.read_bytes().decode("utf-8", "replace")
                                                           for p in stdlib_sources()]:
            if text.strip():
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                n, text_bytes = n + 1, text_bytes + len(text.encode("utf-8"))
    return n, text_bytes


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children and theirs: the workers
    return usage.ru_utime + usage.ru_stime


def run_prepare(source: str, store: Path, *args: str) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    start, cpu = time.perf_counter(), _children_cpu_s()
    done = subprocess.run([sys.executable, "-m", "gptjax", "prepare", source, str(store), "--quiet", *args],
                          env=env(), capture_output=True, text=True)
    seconds, cpu_s = time.perf_counter() - start, _children_cpu_s() - cpu
    if done.returncode:
        raise SystemExit(f"prepare failed: {done.stderr.strip()}")
    manifest = json.loads((store / "manifest.json").read_text())
    tokens = sum(manifest["splits"][s]["tokens"] for s in ("train", "val"))
    store_bytes = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return {"seconds": seconds, "cpu_s": cpu_s, "tokens": tokens, "store_bytes": store_bytes,
            "dtype": manifest["dtype"], "log": done.stdout.strip().splitlines()}


def measure_loader(store: str) -> None:
    """In this (fresh) process: start-up, loader tokens/s and peak RSS; printed as one JSON line."""
    t0 = time.perf_counter()
    from gptjax.config import DataConfig
    from gptjax.data.store import store_data

    t_import = time.perf_counter()
    data = store_data(DataConfig(source=f"store:{store}", seq_len=64, batch_size=32), seed=0)
    data.train_batch(0)
    data.val_batches(8)
    t_ready = time.perf_counter()
    result = {"import_s": t_import - t0, "open_first_batch_and_val_s": t_ready - t_import,
              "windows_per_epoch": data.windows_per_epoch}
    for name, (batch, seq_len, steps) in {"default_32x64": (32, 64, 3000),
                                          "gpt2_8x1024": (8, 1024, 1500)}.items():
        data = store_data(DataConfig(source=f"store:{store}", seq_len=seq_len, batch_size=batch), seed=1)
        start = time.perf_counter()
        for step in range(steps):
            data.train_batch(step)
        result[f"loader_tokens_per_s_{name}"] = steps * batch * seq_len / (time.perf_counter() - start)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def loader(store: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--loader", str(store)], env=env(), capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train(store: Path, workdir: Path) -> dict:
    """`train default` for 20 steps on `store` in a child; wall time, its peak RSS, logged tokens/s."""
    shutil.rmtree(workdir, ignore_errors=True)
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "gptjax", "train", "default",
                           f"data.source=store:{store}", "train.steps=20", "train.eval_every=20",
                           "train.log_every=10", "train.checkpoint_every=1000", "train.progress=false",
                           "train.compilation_cache_dir=",  # both runs compile
                           "--workdir", str(workdir)], env=env(), capture_output=True, text=True, check=True)
    wall, rss_kib = done.stdout.split()
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    setup = next(r for r in records if r["split"] == "setup")
    last = [r for r in records if r["split"] == "train"][-1]
    return {"wall_s": float(wall), "peak_rss_mib": int(rss_kib) / 1024, "compile_s": setup["compile_s"],
            "tokens_per_s_logged": last["tokens_per_s"]}


def main(reuse_prepare: bool) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    corpus = WORK / "stdlib.jsonl"
    records, text_bytes = write_corpus(corpus)
    corpus_bytes = corpus.stat().st_size
    result = {"cores": os.cpu_count(), "load_average_before": load_before,
              "corpus": {"what": "the standard-library .py files of every CPython here, pydoc topics; JSONL",
                         "records": records, "text_mb": text_bytes / 1e6, "jsonl_mb": corpus_bytes / 1e6}}
    print(f"corpus: {records} records, {text_bytes / 1e6:.0f} MB of text", flush=True)
    if reuse_prepare:  # the JSON Lines figures of the previous run kept (the BPE pass is the slow part)
        previous = json.loads((RESULTS / "data.json").read_text())
        result.update({k: previous[k] for k in ("prepare_byte", "prepare_bpe")},
                      prepare_jsonl_from=previous["written"])
    else:
        prepare_jsonl(corpus, text_bytes, result)
    generated(corpus, result)
    result["load_average_after"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - t0
    shutil.rmtree(WORK)
    write_json(RESULTS / "data.json", result)


def prepare_jsonl(corpus: Path, text_bytes: int, result: dict) -> None:
    byte = run_prepare(f"jsonl:{corpus}", WORK / "byte")
    result["prepare_byte"] = {**byte, "text_mb_per_s": text_bytes / 1e6 / byte["seconds"],
                              "text_mb_per_cpu_s": text_bytes / 1e6 / byte["cpu_s"]}
    print(f"prepare byte: {result['prepare_byte']['text_mb_per_s']:.1f} MB/s", flush=True)
    bpe = run_prepare(f"jsonl:{corpus}", WORK / "bpe", "data.tokenizer=bpe", "data.tokenizer_vocab=8192",
                      "--tokenizer-sample-mb", "16")
    result["prepare_bpe"] = {**bpe, "text_mb_per_s": text_bytes / 1e6 / bpe["seconds"],
                             "text_mb_per_cpu_s": text_bytes / 1e6 / bpe["cpu_s"],
                             "bytes_per_token": text_bytes / bpe["tokens"]}
    print(f"prepare bpe: {result['prepare_bpe']['text_mb_per_s']:.1f} MB/s", flush=True)
    shutil.rmtree(WORK / "bpe")
    shutil.rmtree(WORK / "byte")


def generated(corpus: Path, result: dict) -> None:
    # The generated corpus: the same text repeated into one long file of at least 1.1 GB.
    big_text = WORK / "big.txt"
    with open(big_text, "w", encoding="utf-8") as out:
        written = 0
        while written < 1.1e9:
            with open(corpus, encoding="utf-8") as f:
                for line in f:
                    text = json.loads(line)["text"]
                    out.write(text)
                    written += len(text.encode("utf-8"))
    big = run_prepare(f"text:{big_text}", WORK / "big", "data.val_fraction=0.001")
    result["prepare_byte_generated"] = {**big, "text_mb": written / 1e6,
                                        "text_mb_per_s": written / 1e6 / big["seconds"],
                                        "text_mb_per_cpu_s": written / 1e6 / big["cpu_s"]}
    print(f"prepare byte, {written / 1e9:.2f} GB: {result['prepare_byte_generated']['text_mb_per_s']:.1f} "
          "MB/s", flush=True)
    small_text = WORK / "small.txt"
    with open(big_text, "rb") as f:
        small_text.write_bytes(f.read(10_000_000))
    result["prepare_byte_small"] = run_prepare(f"text:{small_text}", WORK / "small")
    big_text.unlink()

    for name, prepared in (("small", "prepare_byte_small"), ("big", "prepare_byte_generated")):
        result[f"loader_{name}"] = {"store_mb": result[prepared]["store_bytes"] / 1e6, **loader(WORK / name)}
        print(name, result[f"loader_{name}"], flush=True)
    for name in ("small", "big"):
        result[f"train_{name}"] = train(WORK / name, WORK / f"run_{name}")
        print(name, result[f"train_{name}"], flush=True)
    consumed = max(DEFAULT_STEP_TOKENS_PER_S, result["train_big"]["tokens_per_s_logged"])
    result["default_step_tokens_per_s"] = consumed
    result["loader_over_step"] = result["loader_big"]["loader_tokens_per_s_default_32x64"] / consumed


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loader"]:
        measure_loader(sys.argv[2])
    else:
        main(reuse_prepare="--reuse-prepare" in sys.argv[1:])

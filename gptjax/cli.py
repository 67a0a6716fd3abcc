"""`python -m gptjax {train,experiment,sample,eval,sweep,report,describe,import-hf,prepare} …`: the
command line.

Config problems are found before JAX is imported and reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from gptjax import storage
from gptjax.config import ConfigError, known_experiments, load_experiment
from gptjax.guards import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_PREEMPTED,
    Diverged,
    Preempted,
    check_writable,
    stopped,
)


def _train(args: argparse.Namespace) -> int:
    cfg = load_experiment(args.experiment, args.overrides)
    workdir = storage.path(args.workdir or f"runs/{cfg.name}")
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} exists and is not a directory")
    check_writable(workdir)
    from gptjax.train import train  # JAX is imported only once the input is known to be good

    result = train(cfg, workdir)
    val = result["val"]
    unigram = result["val_unigram_entropy"]
    if cfg.objective.name != "causal_lm":
        shown = ", ".join(f"{key} {value:.4f}" for key, value in val.items() if key not in ("loss", "tokens"))
        print(f"\nfinal validation loss {val['loss']:.4f} at step {result['step']} ({shown}); the validation "
              f"text's unigram entropy is {unigram:.4f} nats/token; run in {workdir}")
        return 0
    gap = 1 - val["ce"] / unigram
    print(f"\nfinal validation cross-entropy {val['ce']:.4f} nats/token (perplexity {val['perplexity']:.2f}) "
          f"at step {result['step']}, {abs(gap):.0%} {'below' if gap >= 0 else 'above'} the validation "
          f"text's unigram entropy ({unigram:.4f}); run in {workdir}")
    print(f"--- sample ({workdir / 'sample.txt'}) ---\n{result['sample']}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    """`make experiment`: an experiment that defines `get_sweep()` is a comparison, so its sweep runs
    (`--jobs`, `--vmap`, by default as `choose_parallelism` picks for the machine) and its report is
    written; any other is trained, as `train` does."""
    from gptjax.sweep import defines_sweep

    load_experiment(args.experiment, args.overrides)  # bad input: one line, before anything runs
    if not defines_sweep(args.experiment):
        if args.jobs is not None or args.vmap is not None:
            flag = "--jobs" if args.jobs is not None else "--vmap/--no-vmap"
            raise ConfigError(f"{flag} is for a sweep; {args.experiment} defines no get_sweep()")
        return _train(args)
    from gptjax.sweep import run_sweep

    name = os.path.basename(args.experiment)[:-3] if args.experiment.endswith(".py") else args.experiment
    root = storage.path(args.workdir or f"runs/{name}")
    results = run_sweep(args.experiment, args.overrides, root=root, jobs=args.jobs, vmap=args.vmap)
    code = sweep_exit_code(results)
    if code in (0, 1):  # a failed variant is in the report's table of unfinished ones
        _write_reports(args.experiment, root)
    return code


def _write_reports(experiment: str, root, target: float | None = None) -> None:
    """The common report of a sweep directory, then the experiment file's own `write_report(root)` if it
    defines one."""
    from gptjax.report import write_report
    from gptjax.sweep import experiment_report

    print(f"report written to {write_report(root, target=target)}")
    try:
        own = experiment_report(experiment)
    except ConfigError:  # `report` of a directory whose experiment file is gone: the common report only
        return
    if own is not None:
        print(f"report written to {own(root)}")


def _language_model(workdir):
    """The config of a workdir holding a GPT (what `sample` and `eval` need), or a one-line error."""
    from gptjax.workdir import read_config

    cfg = read_config(workdir)
    if cfg.model.family != "gpt":
        raise ConfigError(f"{workdir} holds a {cfg.model.family} model trained with {cfg.objective.name}; "
                          "sample and eval need a decoder-only (gpt) language model")
    return cfg


def _tokenizer_line(cfg, tokenizer) -> str:
    """Which tokenizer `sample` and `eval` read with, and a warning when it cannot be the model's own."""
    line = (f"tokenizer: data.tokenizer={cfg.data.tokenizer}, {tokenizer.vocab_size:,} ids "
            f"(the model's vocabulary: {cfg.model.vocab_size:,})")
    if 4 * tokenizer.vocab_size < cfg.model.vocab_size:
        # A model imported without its tokenizer.json and trained on bytes looks like this.
        line += ("; most of the model's ids never occur, so it was likely trained with another tokenizer "
                 "(import-hf takes the checkpoint's tokenizer.json)")
    return line


def _sample(args: argparse.Namespace) -> int:
    workdir = storage.path(args.workdir)
    _language_model(workdir)
    import dataclasses

    from gptjax.config import validate
    from gptjax.generate import sample_text
    from gptjax.train import load_for_inference

    cfg, graphdef, params, tokenizer = load_for_inference(workdir)
    changes = {k: v for k, v in (("prompt", args.prompt), ("max_new_tokens", args.max_new_tokens),
                                 ("temperature", args.temperature), ("top_k", args.top_k),
                                 ("top_p", args.top_p)) if v is not None}
    cfg = validate(dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, **changes)))
    print(_tokenizer_line(cfg, tokenizer), file=sys.stderr)  # stdout holds the text alone
    print(sample_text(cfg, graphdef, params, tokenizer, args.seed))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    workdir = storage.path(args.workdir)
    cfg = _language_model(workdir)
    window = args.window or cfg.data.seq_len  # the length the model was trained on
    stride = args.stride or max(1, window // 2)
    if not 0 < window <= cfg.model.context:
        raise ConfigError(f"--window must be in [1, {cfg.model.context}] (the model's context), got {window}")
    if not 0 < stride <= window:
        raise ConfigError(f"--stride must be in [1, --window = {window}], got {stride}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.text and not storage.path(args.text).is_file():
        raise ConfigError(f"--text {args.text} is not a file")
    if args.text and args.store:
        raise ConfigError("give --text or --store, not both")
    try:  # read now: a binary or unreadable file is bad input, found before the model is loaded
        text = storage.path(args.text).read_bytes().decode("utf-8") if args.text else None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--text {args.text} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); eval scores text files") from None
    except OSError as e:
        raise ConfigError(f"--text {args.text} cannot be read: {e.strerror}") from None
    from gptjax.data import load_documents
    from gptjax.data.packing import pack_documents
    from gptjax.data.store import open_store, read_by_store
    from gptjax.evaluate import streamed_perplexity, windowed_perplexity
    from gptjax.train import build_evaluator, inference_mesh, load_for_inference, load_teacher

    store = None
    if args.store or (read_by_store(cfg.data.source) and not args.text):
        # Opened before the model is loaded: a store of another tokenizer costs nothing. A text source is
        # the store it was prepared into (the same cached one training used).
        data_cfg = dataclasses.replace(cfg.data, source=f"store:{args.store}") if args.store else cfg.data
        opened, _ = open_store(data_cfg, workdir / "tokenizer.json")
        store = args.store or str(opened.path)
    cfg, graphdef, params, tokenizer = load_for_inference(workdir)
    teacher = load_teacher(cfg.loss.teacher, cfg.model.vocab_size) if cfg.loss.teacher else None
    evaluate = build_evaluator(cfg, graphdef, inference_mesh(cfg), teacher=teacher)
    options = {"window": window, "stride": stride, "pad_id": tokenizer.pad_id, "rows": cfg.data.batch_size}
    if store:
        # The store's validation split, read a batch of windows at a time: memory does not grow with it.
        split, what = opened.splits["val"], f"the validation split of store {store}"
        mask = cfg.data.document_mask

        def read(a, b):
            tokens, docs = split.read(a, b)
            return tokens, docs + 1 if mask else None  # +1: text before the first document start is one

        n_tokens = min(split.n_tokens, args.max_tokens + 1) if args.max_tokens else split.n_tokens
        result = streamed_perplexity(evaluate, params, read, n_tokens, **options)
    else:
        if args.text:
            docs, what = [text], args.text
        else:
            docs, what = load_documents(cfg.data).val, "the validation split"
        stream_S, doc_S = pack_documents([tokenizer.encode(d) for d in docs], tokenizer.eot_id)
        if args.max_tokens:  # the first N targets, and the token before them
            stream_S, doc_S = stream_S[:args.max_tokens + 1], doc_S[:args.max_tokens + 1]
        result = windowed_perplexity(evaluate, params, stream_S, doc_S if cfg.data.document_mask else None,
                                     **options)
    print(_tokenizer_line(cfg, tokenizer))
    print(f"{what}: {int(result['tokens']):,} tokens scored in {result['windows']} windows of {window} "
          f"(stride {stride}): loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.3f}, "
          f"accuracy {result['accuracy']:.3f}")
    if not args.text and not store:
        # Training's validation scores the split's first eval_batches batches, windows of seq_len at stride
        # seq_len; a window of seq_len at stride seq_len over those tokens is the same computation. (A
        # store's validation batches are read another way; no such line is claimed for them.)
        L, t = cfg.data.seq_len, cfg.train
        n = min(t.eval_batches * cfg.data.batch_size * L, len(stream_S) - 1)
        print(f"training's validation loss scored the first {n:,} tokens of the split (train.eval_batches="
              f"{t.eval_batches} batches of {cfg.data.batch_size} rows of {L}) at window = stride = {L}; "
              f"--window {L} --stride {L} --max-tokens {n} reproduces it")
    print(json.dumps(result))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from gptjax.sweep import parse_shard, run_sweep

    shard = parse_shard(args.shard) if args.shard else (0, 1)
    child_env = None
    if args.per_host:
        from gptjax.hosts import host_shard, per_host_env

        shard = shard if args.shard else host_shard()
        child_env = per_host_env(shard[1])
    # SIGTERM/SIGINT: run_sweep passes it to the running variants, records them stopped, raises Preempted.
    results = run_sweep(args.experiment, args.overrides, root=args.dir and storage.path(args.dir),
                        jobs=args.jobs, shard=shard, vmap=args.vmap, per_host=args.per_host,
                        child_env=child_env)
    return sweep_exit_code(results)


def sweep_exit_code(results: dict) -> int:
    """1 when a variant failed; else `EXIT_BUSY` (with one line) when another sweep was training some of
    them, which are neither done nor failed here; else 0."""
    if any(s.get("status") == "failed" for s in results.values()):
        return 1
    elsewhere = sorted(name for name, s in results.items() if s.get("status") == "running elsewhere")
    if elsewhere:
        holder = results[elsewhere[0]].get("holder", "another process")
        print(f"busy: {len(elsewhere)} variant(s) are being trained by another sweep ({holder}): "
              f"{', '.join(elsewhere)}; not failed, run the same command once it has finished",
              file=sys.stderr)
        return EXIT_BUSY
    return 0


def _report(args: argparse.Namespace) -> int:
    # An experiment given as a path sweeps into runs/<its stem>, as `sweep` does.
    name = os.path.basename(args.experiment)[:-3] if args.experiment.endswith(".py") else args.experiment
    _write_reports(args.experiment, storage.path(args.dir or f"runs/{name}"), target=args.target)
    return 0


def _describe(args: argparse.Namespace) -> int:
    cfg = load_experiment(args.experiment, args.overrides)
    from gptjax.describe import describe, format_description

    print(format_description(describe(cfg, accelerator=args.accelerator, mfu=args.mfu, devices=args.devices)))
    return 0


def _import_hf(args: argparse.Namespace) -> int:
    from gptjax.interop import experiment_file, finetune_command, import_hf

    workdir = storage.path(args.workdir)
    cfg = import_hf(storage.path(args.hf_dir), workdir, args.overrides)
    tokenizer = ("the checkpoint's tokenizer.json (data.tokenizer=hf)" if cfg.data.tokenizer == "hf" else
                 f"data.tokenizer={cfg.data.tokenizer}, as asked (not the checkpoint's tokenizer)")
    print(f"imported {args.hf_dir} as {cfg.name} ({cfg.model.family}, {cfg.model.n_layer} layers, "
          f"d {cfg.model.n_embd}, vocabulary {cfg.model.vocab_size:,}) into {workdir}: parameters at step 0, "
          f"tokenizer {tokenizer}")
    print(f"experiment file: {experiment_file(workdir)} (the model, with gptjax's pre-training defaults for "
          f"the rest: data.source={cfg.data.source}, train.steps={cfg.train.steps}, {cfg.optim.preset} at "
          f"lr {cfg.optim.lr:g}, dropout {cfg.model.dropout:g})")
    print(f"fine-tune it on a text file:\n  {finetune_command(cfg, workdir)}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pathlib import Path  # a store is prepared on a local disk (its shards are renamed into place)

    from gptjax.data.prepare import prepare, prepare_config

    if "://" in args.source:
        raise ConfigError(f"prepare reads local files, not {args.source}: copy the corpus to a local disk "
                          "first (gcloud storage cp -r)")
    if storage.is_remote(args.store):
        raise ConfigError(f"prepare writes a local store, not {args.store}: prepare it on a local disk, then "
                          f"copy it (gcloud storage cp -r STORE {args.store}) and train with "
                          f"data.source=store:{args.store}")
    cfg = prepare_config(args.overrides)
    try:
        manifest = prepare(args.source, Path(args.store), cfg, workers=args.workers, unit_mb=args.unit_mb,
                           tokenizer_file=args.tokenizer and Path(args.tokenizer),
                           tokenizer_sample_mb=args.tokenizer_sample_mb, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    print(f"{args.store}: {train['tokens']:,} training tokens in {train['documents']:,} documents, "
          f"{val['tokens']:,} validation tokens in {val['documents']:,}, {manifest['dtype']}; train with "
          f"data.source=store:{args.store} data.tokenizer={manifest['tokenizer']['kind']}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gptjax", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) an experiment")
    t.add_argument("experiment", help=f"a name in experiments/ ({', '.join(known_experiments())}) "
                                      "or a path to such a .py file")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="replace config fields by dotted path, e.g. train.steps=200 optim.lr=3e-4")
    t.add_argument("--workdir", help="where checkpoints and metrics go (default: runs/<experiment>)")
    t.set_defaults(func=_train)

    x = sub.add_parser("experiment", help="what `make experiment` runs: an experiment with get_sweep() is "
                                          "swept and reported, any other trained")
    x.add_argument("experiment", help="a name in experiments/ or a path to such a .py file")
    x.add_argument("overrides", nargs="*", metavar="key=value", help="as for train (a sweep's base config)")
    x.add_argument("--workdir", help="the run's workdir, or the sweep's directory (default: "
                                     "runs/<experiment>)")
    x.add_argument("--jobs", type=int, help="a sweep's variants trained at once (default: every core on a "
                                            "CPU, each child on its own core; 1 on an accelerator)")
    x.add_argument("--vmap", action=argparse.BooleanOptionalAction,
                   help="a sweep's variants that differ only in lr/b1/b2/eps/weight_decay of one update rule "
                        "trained as one vmapped program each (default: on)")
    x.set_defaults(func=_experiment)

    s = sub.add_parser("sample", help="generate text from a trained workdir")
    s.add_argument("workdir")
    s.add_argument("--prompt")
    s.add_argument("--max-new-tokens", type=int)
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sample)

    e = sub.add_parser("eval", help="perplexity of a long text under a sliding context window")
    e.add_argument("workdir")
    e.add_argument("--window", type=int, help="tokens of context per window (default: data.seq_len, the "
                                              "length the model was trained on)")
    e.add_argument("--stride", type=int, help="tokens between window starts (default: window // 2)")
    e.add_argument("--text", help="a text file to score as one document (default: the validation split)")
    e.add_argument("--max-tokens", type=int, help="score only the first N tokens (default: all)")
    e.add_argument("--store", help="a token store whose validation split to score, streamed (default for a "
                   "run trained on data.source=store:PATH: that store)")
    e.set_defaults(func=_evaluate)

    w = sub.add_parser("sweep", help="train every variant of an experiment's get_sweep() into runs/<name>/")
    w.add_argument("experiment", help="a name in experiments/ or a path to a .py file defining get_sweep()")
    w.add_argument("overrides", nargs="*", metavar="key=value", help="applied to the base config first")
    w.add_argument("--jobs", type=int, help="variants trained at once, one process each (default: every "
                                            "core on a CPU, each child on its own core; 1 on an accelerator)")
    w.add_argument("--shard", help="i/N: run only every N-th variant starting at i (0 <= i < N), for N hosts")
    w.add_argument("--dir", help="sweep directory, local or gs://bucket/… (default: runs/<experiment>)")
    w.add_argument("--per-host", action="store_true",
                   help="on a multi-host machine (TPU slice, SLURM job), run this host's shard of the "
                        "variants on its own devices; the shard i/N comes from the environment unless "
                        "--shard is given")
    w.add_argument("--vmap", action=argparse.BooleanOptionalAction,
                   help="train variants that differ only in lr/b1/b2/eps/weight_decay of one update rule as "
                        "one vmapped program each; shards then split these groups (the same on every host; "
                        "default: on)")
    w.set_defaults(func=_sweep)

    r = sub.add_parser("report", help="tables and plots of a sweep, from its metrics.jsonl files")
    r.add_argument("experiment", help="the sweep's experiment name (its runs are in runs/<experiment>)")
    r.add_argument("--dir", help="sweep directory (default: runs/<experiment>)")
    r.add_argument("--target", type=float, help="validation loss for 'steps to reach' (default: the worst "
                                                "optimizer's best mean final loss)")
    r.set_defaults(func=_report)

    d = sub.add_parser("describe", help="parameters, memory, FLOPs and step time of an experiment's model, "
                                        "from shapes alone (allocates nothing)")
    d.add_argument("experiment", help="a name in experiments/ or a path to a .py file")
    d.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. model.n_layer=96 model.n_embd=12288")
    d.add_argument("--accelerator", default="h100", help="h100 | h200 | a100 | v4 | v5e | v5p | cpu "
                                                         "(default: h100)")
    d.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default: 0.4)")
    d.add_argument("--devices", type=int, default=1, help="devices sharing each step (default: 1)")
    d.set_defaults(func=_describe)

    h = sub.add_parser("import-hf", help="convert a Hugging Face GPT-2/BERT/T5 directory (config.json + "
                                         "model.safetensors) into a gptjax workdir at step 0")
    h.add_argument("hf_dir", help="local directory with config.json and model.safetensors")
    h.add_argument("workdir", help="the gptjax workdir to create")
    h.add_argument("overrides", nargs="*", metavar="key=value",
                   help="applied to the imported config, e.g. data.seq_len=512 optim.preset=gpt3_adamw")
    h.set_defaults(func=_import_hf)

    q = sub.add_parser("prepare", help="tokenize a corpus once into a token store for data.source=store:PATH")
    q.add_argument("source", help="pydoc | text:PATH (file, directory or glob) | jsonl:PATH | parquet:PATH | "
                                  "tfds:NAME; a bare path is text unless it ends in .jsonl or .parquet")
    q.add_argument("store", help="the store directory to create (or to resume)")
    q.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data.* fields, e.g. data.tokenizer=bpe data.val_fraction=0.01 data.text_field=body")
    q.add_argument("--workers", type=int, help="tokenizing processes (default: every core)")
    q.add_argument("--unit-mb", type=float, default=32.0,
                   help="input MB per work unit and shard (default 32)")
    q.add_argument("--tokenizer",
                   help="the tokenizer file to use: bpe, one saved by gptjax; hf, a tokenizer.json")
    q.add_argument("--tokenizer-sample-mb", type=float, default=64.0,
                   help="bpe without --tokenizer: MB of training text it is trained on (default 64)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # Overrides may follow options (`train x --workdir w a=1`): argparse leaves those over.
    args, extra = p.parse_known_args(argv)
    takes_overrides = getattr(args, "command", None) in ("train", "experiment", "sweep", "describe",
                                                         "import-hf", "prepare")
    if extra and (not takes_overrides or any(x.startswith("-") for x in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen below and not at exit
        return code
    except BrokenPipeError:
        # The reader stopped reading (`… | head -1`): what it wanted was written. Later writes (the
        # interpreter's last flush) go nowhere instead of raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Preempted, Diverged) as e:
        print(f"{type(e).__name__.lower()}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # a stop outside the training loop (`Interrupted`, or Ctrl-C)
        return stopped(e, "outside the training loop: checkpoints and records are those of the last "
                          "finished step, run the same command again to go on" if args.command == "train"
                       else f"before {args.command} finished")

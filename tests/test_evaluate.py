"""Context-window evaluation: every token scored once with enough context, stride = window reproduces
the validation loss, and `python -m gptjax eval` runs on a trained workdir."""

import json

import numpy as np
import pytest

from gptjax.cli import main
from gptjax.data import build_data
from gptjax.evaluate import context_windows, windowed_perplexity
from gptjax.metrics import read_metrics
from gptjax.train import build_evaluator, inference_mesh, load_for_inference, train
from tests.conftest import tiny_experiment


@pytest.mark.parametrize("total, window, stride", [(50, 8, 8), (50, 8, 3), (50, 8, 1), (9, 8, 4), (5, 8, 2),
                                                   (101, 16, 5)])
def test_each_token_is_scored_once_with_at_least_window_minus_stride_of_context(total, window, stride):
    stream = np.arange(total, dtype=np.int32) + 10  # token value = position + 10
    batch = context_windows(stream, None, window, stride, pad_id=0)
    scored = batch.targets[batch.weights > 0]
    assert sorted(scored.tolist()) == list(range(11, total + 10))  # positions 1 … total − 1, once each
    for r, j in zip(*np.nonzero(batch.weights), strict=True):
        context = j + 1  # inputs 0 … j of the row
        assert context == window or context >= window - stride or r == 0
        assert batch.inputs[r, j] + 1 == batch.targets[r, j]  # targets are the next token


def test_documents_are_kept_apart_by_segment_ids():
    stream = np.arange(20, dtype=np.int32)
    docs = np.repeat([1, 2], 10).astype(np.int32)
    batch = context_windows(stream, docs, 8, 4, pad_id=0)
    assert set(np.unique(batch.segment_ids[batch.weights > 0])) <= {1, 2}
    assert (batch.segment_ids[0] == [1] * 8).all() and (batch.segment_ids[2] == [1, 1] + [2] * 6).all()


def test_bad_stride_is_refused():
    with pytest.raises(ValueError, match="stride"):
        context_windows(np.arange(10), None, 4, 5, pad_id=0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(tiny_experiment(steps=3, eval_every=3, eval_batches=4), path, log=lambda *_: None)
    return path


def test_stride_equal_to_sequence_length_reproduces_the_validation_loss(workdir):
    cfg, graphdef, params, tokenizer = load_for_inference(workdir)
    evaluate = build_evaluator(cfg, graphdef, inference_mesh(cfg))
    data = build_data(cfg.data, cfg.train.seed)
    val = [r for r in read_metrics(workdir) if r["split"] == "val"][-1]
    from gptjax.data.packing import pack_documents

    stream, docs = pack_documents([tokenizer.encode(d) for d in data.val_docs], tokenizer.eot_id)
    assert (stream == data.val_tokens).all()
    L = cfg.data.seq_len
    # The validation loss covers the first 4 batches of 8 rows of L targets: the same stretch here.
    n = 4 * 8 * L
    stream, docs = stream[:n + 1], docs[:n + 1]
    result = windowed_perplexity(evaluate, params, stream, docs, window=L, stride=L, pad_id=tokenizer.pad_id,
                                 rows=cfg.data.batch_size)
    assert result["tokens"] == val["tokens"] == n
    assert result["loss"] == pytest.approx(val["ce"], rel=1e-5)
    # More context per token (stride < window) changes the number of windows, not the tokens scored.
    overlapped = windowed_perplexity(evaluate, params, stream, docs, window=L, stride=L // 4,
                                     pad_id=tokenizer.pad_id, rows=cfg.data.batch_size)
    assert overlapped["tokens"] == result["tokens"] and overlapped["windows"] > result["windows"]


def test_eval_command(workdir, capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    assert main(["eval", str(workdir), "--window", "32", "--stride", "8", "--text", str(text)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["window"] == 32 and result["stride"] == 8 and result["tokens"] == 900
    assert main(["eval", str(workdir), "--window", "65"]) == 2
    assert "--window must be in [1, 64]" in capsys.readouterr().err
    assert main(["eval", str(workdir), "--window", "16", "--stride", "17"]) == 2


def test_eval_defaults_to_the_trained_length_and_says_how_to_reproduce_validation(workdir, capsys):
    """The default window is data.seq_len (32 here; the model's context is 64), and the flags the command
    prints score what training's validation scored: the same loss."""
    assert main(["eval", str(workdir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("tokenizer: data.tokenizer=byte, 258 ids")
    result = json.loads(lines[-1])
    assert (result["window"], result["stride"]) == (32, 16)
    flags = lines[-2].split("--window")[1].split(" reproduces")[0]
    assert flags.endswith("--stride 32 --max-tokens 1024")  # 4 batches of 8 rows of 32
    assert main(["eval", str(workdir), "--window", *flags.split()]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    val = [r for r in read_metrics(workdir) if r["split"] == "val"][-1]
    assert result["tokens"] == val["tokens"] == 1024
    assert result["loss"] == pytest.approx(val["ce"], rel=1e-5)


@pytest.mark.parametrize("command", [["eval", "--window", "16"], ["sample", "--max-new-tokens", "4"]])
def test_a_closed_pipe_ends_the_command_quietly(workdir, command):
    """`python -m gptjax eval … | head -1` or `sample … | true`: the reader is gone before the output is
    written, and the command exits 0 without a BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "gptjax", command[0], str(workdir), *command[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `| true` does
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert "BrokenPipeError" not in err and "Traceback" not in err, err


def test_eval_of_a_store_run_streams_the_stores_validation_split(workdir, capsys, tmp_path):
    import shutil

    from gptjax.config import DataConfig
    from gptjax.data.prepare import prepare
    from gptjax.data.store import TokenStore

    text = tmp_path / "book.txt"
    text.write_text("".join(f"Line {i}: the {i % 7} cats sat on {i % 5} mats.\n" for i in range(200)))
    prepare(f"text:{text}", tmp_path / "store", DataConfig(val_fraction=0.1), workers=1, progress=False,
            log=lambda *_: None)
    # The trained model as if trained on the store (same tokenizer): eval then scores the store's split.
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["source"] = f"store:{tmp_path / 'store'}"
    (run / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(run), "--window", "32", "--stride", "16"]) == 0
    out = capsys.readouterr().out
    assert "validation split of store" in out
    streamed = json.loads(out.strip().splitlines()[-1])
    # The split read whole into memory and scored at once gives the same numbers.
    cfg, graphdef, params, tokenizer = load_for_inference(run)
    stream, docs = TokenStore(tmp_path / "store").splits["val"].read(0, int(streamed["tokens"]) + 1)
    whole = windowed_perplexity(build_evaluator(cfg, graphdef, inference_mesh(cfg)), params, stream, docs + 1,
                                window=32, stride=16, pad_id=tokenizer.pad_id, rows=cfg.data.batch_size)
    assert streamed["tokens"] == whole["tokens"] == len(stream) - 1 > 500
    assert streamed["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert main(["eval", str(run), "--store", str(tmp_path / "nowhere")]) == 2

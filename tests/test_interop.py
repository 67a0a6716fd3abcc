"""import-hf: small random `transformers` models (PyTorch CPU, built from config objects, no download) are
saved, imported, and must give the same logits and loss in gptjax at float32 (atol 1e-4); plus the
refusals (unused or misshapen tensors), the exported round trip and the tokenizer wrapper."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import cli
from gptjax.checkpoint import restore_params
from gptjax.config import ConfigError
from gptjax.data.tokenizers import HfTokenizer
from gptjax.describe import describe
from gptjax.interop import export_hf, import_hf
from gptjax.losses import TERMS, score, weighted_sum

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow
ATOL = 1e-4


def save(model, path):
    model.eval()
    model.save_pretrained(path)
    return path


def ours(workdir, forward):
    """`forward(model, *arrays)` on the imported model, jitted: one compilation instead of many
    op-by-op ones, which dominate the time of these tiny models."""
    from flax import nnx

    _, graphdef, params = restore_params(workdir)
    run = jax.jit(lambda params, *arrays: forward(nnx.merge(graphdef, params), *arrays))
    return lambda *arrays: jax.tree_util.tree_map(np.asarray, run(params, *map(jnp.asarray, arrays)))


def loss_of(logits, targets, weights):
    weights = jnp.asarray(weights, jnp.float32)
    ce = TERMS["ce"](score(jnp.asarray(logits), jnp.asarray(targets)))
    return float(weighted_sum(ce, weights) / jnp.sum(weights))


def assert_exports_back(model_class, hf_dir, tmp_path):
    """export-hf of the imported workdir loads in `transformers` with every tensor equal to the original's."""
    export_hf(tmp_path / "w", tmp_path / "back")
    a = model_class.from_pretrained(hf_dir).state_dict()
    b = model_class.from_pretrained(tmp_path / "back").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    return save(transformers.GPT2LMHeadModel(config), tmp_path_factory.mktemp("hf") / "tiny-gpt2")


def test_gpt2_logits_and_loss_equal_pytorch(gpt2_dir, tmp_path):
    cfg = import_hf(gpt2_dir, tmp_path / "w", ["data.tokenizer=byte"])
    m = cfg.model
    assert (cfg.name, m.n_layer, m.context, m.activation) == ("w", 2, 64, "gelu")
    assert cfg.optim.preset == "gpt2_adam" and cfg.model.tie_embeddings
    model = ours(tmp_path / "w", lambda m, tokens, segments: (m(tokens), m(tokens, segment_ids_BL=segments)))
    tokens = np.random.default_rng(0).integers(0, 300, (2, 24))
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    assert describe(cfg).params["total"] == hf.num_parameters()
    with torch.no_grad():
        out = hf(torch.tensor(tokens), labels=torch.tensor(tokens))
    segments = np.ones_like(tokens)
    segments[1, 16:] = 0  # row 1 padded after 16 tokens: the real positions must not see the padding
    logits, logits_pad = model(tokens, segments)
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=ATOL, rtol=0)
    with torch.no_grad():
        padded = hf(torch.tensor(tokens), attention_mask=torch.tensor(segments)).logits.numpy()
    real = segments.astype(bool)
    np.testing.assert_allclose(logits_pad[real], padded[real], atol=ATOL, rtol=0)
    loss = loss_of(logits[:, :-1], tokens[:, 1:], np.ones((2, 23)))
    assert abs(loss - float(out.loss)) < ATOL


def test_gpt2_import_samples_and_exports_back(gpt2_dir, tmp_path, capsys):
    assert cli.main(["import-hf", str(gpt2_dir), str(tmp_path / "w"), "train.steps=7",
                     "data.tokenizer=byte"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer data.tokenizer=byte, as asked (not the checkpoint's tokenizer)" in out
    # The experiment file is named after the workdir, and its path printed.
    assert f"experiment file: {tmp_path / 'w' / 'w.py'}" in out and (tmp_path / "w" / "w.py").is_file()
    assert json.loads((tmp_path / "w" / "config.json").read_text())["train"]["steps"] == 7
    assert cli.main(["sample", str(tmp_path / "w"), "--prompt", "ab", "--max-new-tokens", "5"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ab") and "tokenizer: data.tokenizer=byte, 258 ids" in err
    assert_exports_back(transformers.GPT2LMHeadModel, gpt2_dir, tmp_path)


def test_unused_and_misshapen_tensors_are_refused(gpt2_dir, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "extra"
    shutil.copytree(gpt2_dir, bad)
    tensors = load_file(bad / "model.safetensors")
    save_file({**tensors, "transformer.h.0.attn.rotary.weight": np.zeros(4, np.float32)},
              bad / "model.safetensors")
    assert cli.main(["import-hf", str(bad), str(tmp_path / "w1"), "data.tokenizer=byte"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensor h.0.attn.rotary.weight" in err and "not used" in err
    save_file({**tensors, "transformer.h.1.mlp.c_fc.weight": np.zeros((32, 64), np.float32)},
              bad / "model.safetensors")
    with pytest.raises(ConfigError, match=r"blocks\.1\.mlp\.c_fc\.kernel has shape \(32, 128\)"):
        import_hf(bad, tmp_path / "w2", ["data.tokenizer=byte"])
    del tensors["transformer.ln_f.bias"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(ConfigError, match="tensor ln_f.bias is missing"):
        import_hf(bad, tmp_path / "w3", ["data.tokenizer=byte"])
    with pytest.raises(ConfigError, match="not empty"):
        import_hf(gpt2_dir, tmp_path)


def test_bfloat16_checkpoint_is_widened_to_float32(gpt2_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    half = tmp_path / "bf16"
    shutil.copytree(gpt2_dir, half)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(gpt2_dir / "model.safetensors").items()}
    save_file(tensors, half / "model.safetensors")
    import_hf(half, tmp_path / "w", ["data.tokenizer=byte"])
    _, _, params = restore_params(tmp_path / "w")
    wte = np.asarray(params["wte"]["embedding"])
    assert wte.dtype == np.float32
    np.testing.assert_array_equal(wte, tensors["transformer.wte.weight"].float().numpy())


def test_bert_mlm_nsp_logits_and_loss_equal_pytorch(tmp_path):
    torch.manual_seed(1)
    config = transformers.BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32,
                                     intermediate_size=64, max_position_embeddings=40, vocab_size=600,
                                     type_vocab_size=2, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    hf_dir = save(transformers.BertForPreTraining(config), tmp_path / "tiny-bert")
    cfg = import_hf(hf_dir, tmp_path / "w", ["data.tokenizer=bpe"])
    assert (cfg.model.family, cfg.model.activation, cfg.model.mlp_ratio) == ("bert", "gelu_exact", 2)
    assert cfg.model.layer_norm_eps == 1e-12 and cfg.objective.name == "mlm_nsp"

    def forward(m, tokens, segments, types):
        x = m.hidden(tokens, segment_ids_BL=segments, type_ids_BL=types)
        return m.mlm_logits(x), m.nsp_logits(x)

    model = ours(tmp_path / "w", forward)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 600, (2, 12))
    types = np.concatenate([np.zeros((2, 6), int), np.ones((2, 6), int)], axis=1)
    segments = np.ones_like(tokens)
    segments[1, 8:] = 0  # row 1: four padding positions
    real = segments.astype(bool)
    labels = np.where((rng.random((2, 12)) < 0.3) & real, tokens, -100)  # -100: not an MLM target (HF)
    labels[0, 1] = tokens[0, 1]  # at least one MLM target
    nsp = np.array([0, 1])
    hf = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
    assert describe(cfg).params["total"] == hf.num_parameters()
    with torch.no_grad():
        out = hf(torch.tensor(tokens), attention_mask=torch.tensor(segments),
                 token_type_ids=torch.tensor(types), labels=torch.tensor(labels),
                 next_sentence_label=torch.tensor(nsp))
    mlm, nsp_logits = model(tokens, segments, types)
    np.testing.assert_allclose(mlm[real], out.prediction_logits.numpy()[real], atol=ATOL, rtol=0)
    np.testing.assert_allclose(nsp_logits, out.seq_relationship_logits.numpy(), atol=ATOL, rtol=0)
    loss = (loss_of(mlm, np.maximum(labels, 0), labels >= 0)
            + loss_of(nsp_logits[:, None], nsp[:, None], np.ones((2, 1))))
    assert abs(loss - float(out.loss)) < ATOL
    assert_exports_back(transformers.BertForPreTraining, hf_dir, tmp_path)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_import_of_a_vocabulary_below_the_bpe_minimum(tmp_path, family):
    """A checkpoint's vocabulary is imported as it is, whatever its size; only training a BPE of that
    size (what data.tokenizer=bpe asks for, the checkpoint having no tokenizer.json) is refused."""
    from gptjax.config import validate
    from gptjax.data import build_tokenizer

    if family == "bert":
        model = transformers.BertForPreTraining(transformers.BertConfig(
            num_hidden_layers=1, num_attention_heads=2, hidden_size=16, intermediate_size=32,
            max_position_embeddings=40, vocab_size=300))
    else:
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(
            num_layers=1, num_heads=2, d_model=16, d_kv=8, d_ff=32, vocab_size=300,
            feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0))
    cfg = import_hf(save(model, tmp_path / family), tmp_path / "w", ["data.tokenizer=bpe"])
    assert (cfg.model.vocab_size, cfg.data.tokenizer, cfg.data.tokenizer_vocab) == (300, "bpe", 300)
    assert validate(cfg) == cfg
    with pytest.raises(ConfigError, match="data.tokenizer_vocab must be >= 512 to train a BPE, got 300"):
        build_tokenizer(cfg.data, ["some text"])


def test_t5_decoder_logits_and_loss_equal_pytorch(tmp_path):
    torch.manual_seed(2)
    config = transformers.T5Config(num_layers=2, num_decoder_layers=2, num_heads=2, d_model=32, d_kv=16,
                                   d_ff=64, vocab_size=600, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20, dropout_rate=0.0,
                                   feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0)
    hf_dir = save(transformers.T5ForConditionalGeneration(config), tmp_path / "tiny-t5")
    cfg = import_hf(hf_dir, tmp_path / "w", ["data.tokenizer=bpe"])
    assert (cfg.model.family, cfg.model.relative_buckets, cfg.model.relative_max_distance) == ("t5", 8, 20)
    model = ours(tmp_path / "w", lambda m, enc, dec, segments: m(
        enc, dec, enc_segment_ids_BL=segments, dec_segment_ids_BT=jnp.ones_like(dec)))
    rng = np.random.default_rng(2)
    enc = rng.integers(2, 600, (2, 30))  # longer than max_distance: the far buckets are used too
    enc_segments = np.ones_like(enc)
    enc_segments[1, 21:] = 0
    labels = rng.integers(2, 600, (2, 25))
    dec = np.concatenate([np.zeros((2, 1), int), labels[:, :-1]], axis=1)  # shifted right, start id 0
    hf = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    assert describe(cfg).params["total"] == hf.num_parameters()
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc_segments),
                 decoder_input_ids=torch.tensor(dec), labels=torch.tensor(labels))
    logits = model(enc, dec, enc_segments)
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=ATOL, rtol=0)
    assert abs(loss_of(logits, labels, np.ones_like(labels)) - float(out.loss)) < ATOL
    assert_exports_back(transformers.T5ForConditionalGeneration, hf_dir, tmp_path)


def test_tokenizer_json_is_copied_and_wrapped(gpt2_dir, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf_tok = Tokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    hf_tok.train_from_iterator(["hello world, hello gptjax"] * 20, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_dir = tmp_path / "with-tokenizer"
    shutil.copytree(gpt2_dir, hf_dir)
    hf_tok.save(str(hf_dir / "tokenizer.json"))
    assert import_hf(hf_dir, tmp_path / "w").data.tokenizer == "hf"
    tokenizer = HfTokenizer.load(tmp_path / "w" / "tokenizer.json")
    assert tokenizer.eot_id == tokenizer.pad_id == 0 and list(tokenizer.special_ids) == [0]
    assert tokenizer.vocab_size == hf_tok.get_vocab_size()
    ids = tokenizer.encode("hello world")
    assert ids.dtype == np.int32 and tokenizer.decode(ids) == "hello world"
    assert tokenizer.decode(np.array([0, *ids, 0])) == "hello world"
    tokenizer.save(tmp_path / "again.json")
    assert list(HfTokenizer.load(tmp_path / "again.json").encode("hello world")) == list(ids)
    with pytest.raises(ConfigError, match="cannot load the tokenizer"):
        HfTokenizer.load(tmp_path / "w" / "config.json")


def test_tokenizer_wrapper_finds_bert_and_t5_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bert = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    bert.pre_tokenizer = pre_tokenizers.Whitespace()
    bert.train_from_iterator(["the cat sat on the mat"] * 5, trainers.WordPieceTrainer(
        vocab_size=100, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    bert.save(str(tmp_path / "bert.json"))
    tokenizer = HfTokenizer.load(tmp_path / "bert.json")
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (0, 2, 3, 4)
    assert tokenizer.eot_id == 3 and list(tokenizer.special_ids) == [0, 1, 2, 3, 4]
    t5 = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "<extra_id_1>": 4,
                                     "<extra_id_0>": 5}, unk_token="<unk>"))
    t5.save(str(tmp_path / "t5.json"))
    tokenizer = HfTokenizer.load(tmp_path / "t5.json")
    assert (tokenizer.pad_id, tokenizer.eot_id, list(tokenizer.sentinel_ids)) == (0, 1, [5, 4])


def test_import_without_a_tokenizer_is_refused_unless_one_is_named(gpt2_dir, tmp_path, capsys):
    """Byte ids fed to GPT-2's embeddings train, sample and evaluate without an error, meaninglessly: an
    import without the checkpoint's tokenizer.json says how to supply it, and writes nothing."""
    assert cli.main(["import-hf", str(gpt2_dir), str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no tokenizer.json" in err and "data.tokenizer=byte" in err
    assert not (tmp_path / "w").exists()
    with pytest.raises(ConfigError, match="data.tokenizer=hf needs .*tokenizer.json"):
        import_hf(gpt2_dir, tmp_path / "w", ["data.tokenizer=hf"])


def test_the_printed_fine_tune_command_is_accepted(gpt2_dir, tmp_path, capsys, monkeypatch):
    """import-hf prints a command that fine-tunes the imported model on a text file, which `train` accepts
    as printed (a text file in place of YOUR_TEXT)."""
    import shlex

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf_tok = Tokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    hf_tok.train_from_iterator(["hello world"] * 5, trainers.BpeTrainer(
        vocab_size=270, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_dir = tmp_path / "hf"
    shutil.copytree(gpt2_dir, hf_dir)
    hf_tok.save(str(hf_dir / "tokenizer.json"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["import-hf", "hf", "gpt2-import"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer the checkpoint's tokenizer.json (data.tokenizer=hf)" in out
    command = shlex.split(out.split("fine-tune it on a text file:\n")[1].strip())
    assert command[:4] == ["python", "-m", "gptjax", "train"]
    assert command[4] == "gpt2-import/gpt2-import.py" and "train.init_from=gpt2-import" in command
    # What `train` does with it before any work: parse it, load the experiment with the overrides, check
    # that init_from accepts the import (same family and tokenizer). Training from init_from is tested in
    # test_train_objectives.
    from gptjax.config import load_experiment
    from gptjax.workdir import check_init_from

    args, extra = cli.parser().parse_known_args([a.replace("YOUR_TEXT", "my.txt") for a in command[3:]])
    assert args.workdir == "runs/gpt2-import-finetuned"
    cfg = load_experiment(args.experiment, [*args.overrides, *extra])
    assert (cfg.data.source, cfg.data.tokenizer, cfg.train.steps) == ("text:my.txt", "hf", 300)
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.model.n_embd) == (1e-4, "cosine", 32)
    check_init_from(cfg, None)

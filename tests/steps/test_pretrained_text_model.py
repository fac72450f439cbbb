"""A pretrained GPT-2 of text runs the language-model steps unchanged, by construction: a tiny
random GPT-2 and a GPT-2-style tokenizer for it (``<|endoftext|>`` last, as GPT-2's 50256),
saved with ``save_pretrained``, are wired by the workflow's own params into import_pretrained and
make_text_dataset (``tokenizer:`` the model), then scored, sampled, read with the logit lens and
direct logit attribution, each checked against the Hugging Face model itself."""

import copy
import json
import shlex
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from mechflow.artifacts import file_sha256, read_table
from mechflow.data.text import EOT, decode, encode, load_tokenizer, read_pretrained_tokenizer
from mechflow.data.tokens import load_tokens, spread_rows
from mechflow.steps import (
    apply_logit_lens,
    attribute_logits,
    compare_baselines,
    import_pretrained,
    make_text_dataset,
    sample_text,
)
from mechflow.wiring import Workflow, config_problems

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "workflow/schemas"
VOCAB = 400  # the tokenizer's, <|endoftext|> (id 399) included
STDLIB = Path(sysconfig.get_paths()["stdlib"])
SAMPLING = {
    "prompts": ["def", "import"], "max_new_tokens": 8, "temperature": 0.8, "top_k": 5,
    "top_p": 0.9, "beams": 3, "seed": 0,
}  # fmt: skip


def tiny_gpt2(out: Path) -> Path:
    """A seeded 2-layer GPT2LMHeadModel and its byte-level BPE (trained on a few stdlib
    modules), both saved with save_pretrained in ``out``; the same ``slow/`` as vocab.json +
    merges.txt only (an older GPT-2 save)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    texts = [(STDLIB / name).read_text() for name in ("textwrap.py", "string.py", "shlex.py")]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.add_special_tokens([EOT])  # after the merges: the last id, as in GPT-2
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT)
    assert len(tokenizer) == VOCAB and tokenizer.convert_tokens_to_ids(EOT) == VOCAB - 1
    torch.manual_seed(0)
    # no n_ctx (transformers 5 does not write it; TL 3.9 reads it: the import falls back to
    # n_positions)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=VOCAB,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    slow = out / "slow"
    slow.mkdir()
    bpe.model.save(str(slow))  # vocab.json (the model's, without EOT: rewritten) + merges.txt
    (slow / "vocab.json").write_text(json.dumps(bpe.get_vocab(with_added_tokens=True)))
    return out


def lm_config(model_dir: Path) -> dict:
    """The test config with the tiny GPT-2 in the language-model experiment, evaluated on
    30 kB of the stdlib tokenized by its own tokenizer."""
    config = copy.deepcopy(yaml.safe_load((ROOT / "config/test.yaml").read_text()))
    config["models"]["tiny_gpt2"] = {
        "source": "pretrained", "name": "tiny_gpt2", "path": str(model_dir),
    }  # fmt: skip
    config["datasets"]["tiny_text"] = {
        "kind": "text", "tokenizer": "tiny_gpt2", "seq_len": 32, "max_bytes": 30_000,
        "validation_fraction": 0.2,
    }  # fmt: skip
    lm = config["experiments"]["language_model"]
    lm["models"].append("tiny_gpt2")
    lm["eval_datasets"] = {"tiny_gpt2": "tiny_text"}
    return config


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The workflow's params (checked config) run into import_pretrained and
    make_text_dataset: paths of the model dir, the HF dir, the dataset, the Workflow."""
    root = tmp_path_factory.mktemp("pretrained_lm")
    hf_dir = tiny_gpt2(root / "hf")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # no results/ of the repo's
        config = lm_config(hf_dir)
        problems, _ = config_problems(config, SCHEMAS)
        assert problems == []
        workflow = Workflow(config)
    data, model = SimpleNamespace(dataset="tiny_text"), SimpleNamespace(model="tiny_gpt2")
    paths = {
        "hf": hf_dir,
        "model": root / "tiny_gpt2",
        "train": root / "tiny_text.npy",
        "validation": root / "tiny_text.validation.npy",
        "tokenizer": root / "tiny_text.tokenizer.json",
        "provenance": root / "tiny_text.json",
        "workflow": workflow,
    }
    import_pretrained.main([
        "--name", workflow.pretrained_name(model),
        *shlex.split(workflow.pretrained_path_flag(model)),
        "--out-dir", str(paths["model"]),
    ])  # fmt: skip
    make_text_dataset.main([
        "--spec", workflow.dataset_spec(data), *shlex.split(workflow.text_tokenizer_flags(data)),
        "--out", str(paths["train"]), "--validation-out", str(paths["validation"]),
        "--tokenizer-out", str(paths["tokenizer"]), "--provenance-out", str(paths["provenance"]),
    ])  # fmt: skip
    return paths


def hf_log_probs(hf_dir: Path, rows: np.ndarray) -> torch.Tensor:
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.inference_mode():
        return hf(torch.from_numpy(rows.astype(np.int64))).logits.log_softmax(-1)


def test_the_workflow_reads_the_models_tokenizer(lm):
    workflow = lm["workflow"]
    dataset = workflow.datasets["tiny_text"]
    assert dataset["d_vocab"] == VOCAB  # filled in from the tokenizer, for check_fits
    flags = workflow.text_tokenizer_flags(SimpleNamespace(dataset="tiny_text"))
    assert flags == f"--tokenizer-path {lm['hf']}"
    assert workflow.text_tokenizer_flags(SimpleNamespace(dataset="stdlib_text")) == ""


def test_the_dataset_is_tokenized_by_the_models_tokenizer(lm):
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(lm["hf"])
    tokenizer = load_tokenizer(lm["tokenizer"])
    assert tokenizer.get_vocab_size() == VOCAB and tokenizer.token_to_id(EOT) == VOCAB - 1
    for split in ("train", "validation"):
        rows = load_tokens(lm[split])
        assert rows.shape[1] == 32 and (rows[:, 0] == VOCAB - 1).all()  # GPT-2's BOS
        assert rows.max() == VOCAB - 1 and rows.min() >= 0  # files are joined by it too
    text = "def wrap(text, width=70):\n    return [line.strip() for line in text]  # ü\n"
    assert encode(tokenizer, text) == hf_tokenizer(text)["input_ids"]
    assert decode(tokenizer, encode(tokenizer, text)) == text
    provenance = json.loads(lm["provenance"].read_text())
    recorded = provenance["tokenizer"]
    assert recorded["type"] == "pretrained" and recorded["model"] == "tiny_gpt2"
    assert recorded["path"] == str(lm["hf"]) and recorded["eot_id"] == VOCAB - 1
    assert recorded["files"] == {"tokenizer.json": file_sha256(lm["hf"] / "tokenizer.json")}
    assert recorded["sha256"] == file_sha256(lm["tokenizer"])
    assert provenance["spec"]["tokenizer"] == "tiny_gpt2"


def test_a_dataset_longer_than_the_models_context_fails_before_any_job(lm, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = lm_config(lm["hf"])
    config["datasets"]["tiny_text"]["seq_len"] = 65  # the tiny GPT-2's n_positions is 64
    problems, _ = config_problems(config, SCHEMAS)
    assert problems == [
        "datasets.tiny_text.seq_len: 65 makes sequences of length 65, longer than "
        "models.tiny_gpt2 (its config.json).n_ctx=64 (experiments.language_model.eval_datasets."
        "tiny_gpt2 feeds it to that model)"
    ]


def test_the_model_is_imported_with_its_tokenizer(lm, tmp_path):
    """Run.tokenizer of a pretrained model is the model's own (saved beside its weights), and
    an import without one leaves none behind."""
    import shutil

    from mechflow.results import Run

    results = tmp_path / "results" / "models"
    shutil.copytree(lm["model"], results / "tiny_gpt2")
    tokenizer = Run(tmp_path).tokenizer("tiny_gpt2")
    text = "def wrap(text):\n    return text"
    assert tokenizer.encode(text).ids == load_tokenizer(lm["tokenizer"]).encode(text).ids

    bare = tmp_path / "bare_hf"
    shutil.copytree(
        lm["hf"], bare, ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "merges*", "slow")
    )
    out = results / "tiny_gpt2"
    import_pretrained.main(["--name", "tiny_gpt2", "--path", str(bare), "--out-dir", str(out)])
    assert not (out / "tokenizer.json").exists()  # the earlier import's is gone
    assert Run(tmp_path).tokenizer("tiny_gpt2") is None


def test_vocab_and_merges_read_as_transformers_reads_them(lm):
    """A GPT-2 directory without tokenizer.json: the same tokens as transformers' tokenizer of
    those two files, and as the tokenizer.json they were saved from."""
    from transformers import GPT2TokenizerFast  # transformers 5: GPT2Tokenizer, tokenizers-backed

    slow = lm["hf"] / "slow"
    read = read_pretrained_tokenizer("tiny_gpt2", "tiny_gpt2", str(slow))
    assert set(read.provenance["files"]) == {"vocab.json", "merges.txt"}
    assert read.eot_id == VOCAB - 1 and read.tokenizer.get_vocab_size() == VOCAB
    hf_tokenizer = GPT2TokenizerFast.from_pretrained(slow)
    fast = load_tokenizer(lm["tokenizer"])
    text = (STDLIB / "textwrap.py").read_text()[:4000] + f" {EOT} naïve 日本 🤗\r\n\t end"
    ids = encode(read.tokenizer, text)
    assert ids == hf_tokenizer(text, split_special_tokens=True)["input_ids"]
    assert ids == encode(fast, text) and decode(read.tokenizer, ids) == text


def test_the_imported_model_computes_what_hugging_face_does(lm):
    from mechflow.models.build import load_model

    rows = spread_rows(load_tokens(lm["validation"]), 6)
    model = load_model(lm["model"])
    with torch.inference_mode():
        ours = model(torch.from_numpy(rows.astype(np.int64))).log_softmax(-1)
    torch.testing.assert_close(ours, hf_log_probs(lm["hf"], rows), atol=1e-4, rtol=0)
    assert model.cfg.normalization_type == "LNPre"  # TransformerLens folded the LayerNorms


def test_the_baselines_use_the_tokenizers_vocabulary(lm, tmp_path):
    out = tmp_path / "losses.csv"
    compare_baselines.main([
        "--model-dir", str(lm["model"]), "--tokens", str(lm["train"]),
        "--validation-tokens", str(lm["validation"]), "--tokenizer", str(lm["tokenizer"]),
        "--sequences", "8", "--batch-size", "4", "--unigram-alpha", "0.1",
        "--bigram-lambda", "0.9", "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    df = read_table(out).set_index("name")
    assert df.loc["uniform", "loss"] == pytest.approx(np.log(VOCAB))
    rows = spread_rows(load_tokens(lm["validation"]), 8)
    log_probs = hf_log_probs(lm["hf"], rows)[:, :-1]
    nxt = torch.from_numpy(rows[:, 1:].astype(np.int64))
    hf_loss = -log_probs.gather(-1, nxt[..., None]).mean()
    assert df.loc["tiny_gpt2", "loss"] == pytest.approx(float(hf_loss), abs=1e-4)
    # an untrained model is about uniform; the text's frequencies are not
    assert df.loc["bigram", "loss"] < df.loc["unigram", "loss"] < df.loc["uniform", "loss"]


def test_samples_are_text_after_the_models_own_bos(lm, tmp_path):
    out = tmp_path / "samples.csv"
    sample_text.main([
        "--model-dir", str(lm["model"]), "--tokenizer", str(lm["tokenizer"]),
        "--sampling", json.dumps(SAMPLING), "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    df = read_table(out)
    assert len(df) == 2 * 5
    assert df["completion"].map(lambda text: isinstance(text, str) and len(text) > 0).all()

    from mechflow.models.build import load_model

    model = load_model(lm["model"])
    tokenizer = load_tokenizer(lm["tokenizer"])
    ids = torch.tensor([[VOCAB - 1, *encode(tokenizer, "def")]])
    prompt_len = ids.shape[1]
    with torch.inference_mode():
        for _ in range(SAMPLING["max_new_tokens"]):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    greedy = df[(df["strategy"] == "greedy") & (df["prompt"] == "def")]["completion"].item()
    assert greedy == decode(tokenizer, ids[0, prompt_len:].tolist())


def test_the_logit_lens_ends_at_the_models_log_probs(lm, tmp_path):
    out = tmp_path / "lens.csv"
    apply_logit_lens.main([
        "--model-dir", str(lm["model"]), "--tokens", str(lm["validation"]),
        "--sequences", "6", "--batch-size", "4", "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    df = read_table(out)
    assert df["layer"].tolist() == [0, 1, 2]
    last = df.iloc[-1]
    assert last["kl_to_final"] == pytest.approx(0, abs=1e-6) and last["top1_agreement"] == 1
    rows = spread_rows(load_tokens(lm["validation"]), 6)
    nxt = torch.from_numpy(rows[:, 1:].astype(np.int64))
    hf_loss = -hf_log_probs(lm["hf"], rows)[:, :-1].gather(-1, nxt[..., None]).mean()
    assert last["loss"] == pytest.approx(float(hf_loss), abs=1e-4)


def test_direct_attributions_sum_to_the_logit_minus_the_unembedding_bias(lm, tmp_path):
    """TransformerLens centred the imported unembedding (its logits are Hugging Face's less each
    position's mean): the attributions add up to what the imported model computes."""
    out = tmp_path / "dla.csv"
    attribute_logits.main([
        "--model-dir", str(lm["model"]), "--tokens", str(lm["validation"]),
        "--sequences", "6", "--batch-size", "4", "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    df = read_table(out)
    assert (df["kind"] == "head").sum() == 2 * 4
    assert "ln_bias" not in set(df["kind"])  # folded into the unembedding

    from mechflow.models.build import load_model

    model = load_model(lm["model"])
    rows = spread_rows(load_tokens(lm["validation"]), 6)
    tokens = torch.from_numpy(rows.astype(np.int64))
    nxt = tokens[:, 1:]
    with torch.inference_mode():
        logits = model(tokens)[:, :-1]
        target = (logits.gather(-1, nxt[..., None])[..., 0] - model.b_U[nxt]).mean()
    assert df["mean"].sum() == pytest.approx(float(target), abs=1e-4)

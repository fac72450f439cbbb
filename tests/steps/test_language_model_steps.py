"""The language-model experiment's steps through their main([...]), on a tiny model trained on a
slice of the stdlib: baselines on the model's own validation tokens, seeded samples decoded to
text, the logit lens and direct logit attribution, and a subset dataset."""

import json

import numpy as np
import pytest
import torch

from mechflow.artifacts import file_sha256, read_table
from mechflow.data.text import EOT_ID, load_tokenizer
from mechflow.data.tokens import load_tokens, save_tokens, spread_rows
from mechflow.steps import (
    apply_logit_lens,
    attribute_logits,
    compare_baselines,
    make_text_dataset,
    sample_text,
    select_sequences,
    train_model,
)

SAMPLING = {
    "prompts": ["def", "import"],
    "max_new_tokens": 8,
    "temperature": 0.8,
    "top_k": 5,
    "top_p": 0.9,
    "beams": 3,
    "seed": 0,
}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A 2-layer model (with MLPs) trained 60 steps on 200 kB of the stdlib: paths of its
    dataset, tokenizer and model directory."""
    root = tmp_path_factory.mktemp("lm")
    spec = {
        "source": "stdlib", "pattern": "*.py", "include_tests": False, "d_vocab": 300,
        "seq_len": 32, "validation_fraction": 0.2, "max_bytes": 200_000,
    }  # fmt: skip
    paths = {
        "train": root / "text.npy",
        "validation": root / "text.validation.npy",
        "tokenizer": root / "text.tokenizer.json",
    }
    make_text_dataset.main([
        "--spec", json.dumps(spec), "--out", str(paths["train"]),
        "--validation-out", str(paths["validation"]), "--tokenizer-out", str(paths["tokenizer"]),
        "--provenance-out", str(root / "text.json"),
    ])  # fmt: skip
    arch = {
        "n_layers": 2, "d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 64, "n_ctx": 32,
        "d_vocab": 300, "act_fn": "gelu_new", "normalization_type": "LN",
    }  # fmt: skip
    training = {
        "steps": 60, "batch_size": 16, "lr": 0.01, "warmup_steps": 10, "lr_schedule": "cosine",
        "seed": 0, "checkpoints": [60],
    }  # fmt: skip
    paths["model"] = root / "tiny_lm"
    train_model.main([
        "--architecture", json.dumps(arch), "--training", json.dumps(training),
        "--tokens", str(paths["train"]), "--device", "cpu", "--out-dir", str(paths["model"]),
    ])  # fmt: skip
    return paths


def test_the_model_and_the_baselines_are_scored_on_the_same_tokens(text_model, tmp_path):
    out = tmp_path / "losses.csv"
    compare_baselines.main([
        "--model-dir", str(text_model["model"]), "--tokens", str(text_model["train"]),
        "--validation-tokens", str(text_model["validation"]),
        "--tokenizer", str(text_model["tokenizer"]), "--sequences", "20", "--batch-size", "8",
        "--unigram-alpha", "0.1", "--bigram-lambda", "0.9", "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    df = read_table(out).set_index("name")
    assert df.loc["tiny_lm", "kind"] == "model"
    assert df.loc[["uniform", "unigram", "bigram"], "kind"].eq("baseline").all()
    assert df.loc["uniform", "loss"] == pytest.approx(np.log(300))
    model_loss = df.loc["tiny_lm", "loss"]
    np.testing.assert_allclose(df["margin"], df["loss"] - model_loss, atol=1e-9)
    assert df["tokens"].eq(20 * 31).all()
    # 60 steps learn more than nothing, and the baselines rank as frequencies imply
    assert model_loss < df.loc["uniform", "loss"] - 1
    assert df.loc["bigram", "loss"] < df.loc["unigram", "loss"] < df.loc["uniform", "loss"]

    # a tokenizer that is not there is named
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        compare_baselines.run(
            text_model["model"], text_model["train"], text_model["validation"],
            tmp_path / "none.json", out, sequences=4, batch_size=4, unigram_alpha=0.1,
            bigram_lambda=0.9, device="cpu",
        )  # fmt: skip


def test_samples_are_text_seeded_and_greedy_is_the_argmax(text_model, tmp_path):
    outs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for out in outs:
        sample_text.main([
            "--model-dir", str(text_model["model"]), "--tokenizer", str(text_model["tokenizer"]),
            "--sampling", json.dumps(SAMPLING), "--device", "cpu", "--out", str(out),
        ])  # fmt: skip
    assert file_sha256(outs[0]) == file_sha256(outs[1])  # seeded: the same samples
    df = read_table(outs[0])
    assert len(df) == 2 * 5
    assert set(df["strategy"]) == {"greedy", "temperature", "top-k", "top-p", "beam"}
    assert df["completion"].map(lambda text: isinstance(text, str) and len(text) > 0).all()

    from mechflow.data.text import encode
    from mechflow.models.build import load_model

    model = load_model(text_model["model"])
    tokenizer = load_tokenizer(text_model["tokenizer"])
    ids = torch.tensor([[EOT_ID, *encode(tokenizer, "def")]])
    prompt_len = ids.shape[1]
    with torch.inference_mode():
        for _ in range(SAMPLING["max_new_tokens"]):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    greedy = df[(df["strategy"] == "greedy") & (df["prompt"] == "def")]["completion"].item()
    assert greedy == tokenizer.decode(ids[0, prompt_len:].tolist(), skip_special_tokens=False)
    # each completion's log-probability under the model (beam search need not beat greedy)
    assert np.isfinite(df["logprob"]).all() and (df["logprob"] < 0).all()

    with pytest.raises(ValueError, match="n_ctx"):
        sample_text.run(
            text_model["model"], text_model["tokenizer"], {**SAMPLING, "max_new_tokens": 40},
            tmp_path / "c.csv", device="cpu",
        )  # fmt: skip


def test_the_logit_lens_ends_at_the_model(text_model, tmp_path):
    out = tmp_path / "lens.csv"
    apply_logit_lens.main([
        "--model-dir", str(text_model["model"]), "--tokens", str(text_model["validation"]),
        "--sequences", "12", "--batch-size", "5", "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    df = read_table(out)
    assert df["layer"].tolist() == [0, 1, 2]
    assert df["hook"].tolist() == [
        "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post",
    ]  # fmt: skip
    last = df.iloc[-1]
    assert last["kl_to_final"] == pytest.approx(0, abs=1e-6)
    assert last["top1_agreement"] == 1
    assert df.iloc[0]["kl_to_final"] > 0.1  # the embeddings alone are not the model


def test_direct_attributions_sum_to_the_logit_minus_the_unembedding_bias(text_model, tmp_path):
    out = tmp_path / "dla.csv"
    attribute_logits.main([
        "--model-dir", str(text_model["model"]), "--tokens", str(text_model["validation"]),
        "--sequences", "12", "--batch-size", "5", "--device", "cpu", "--out", str(out),
    ])  # fmt: skip
    df = read_table(out)
    assert (df["kind"] == "head").sum() == 2 * 4
    assert set(df["kind"]) == {"embed", "pos_embed", "head", "attn_bias", "mlp", "ln_bias"}

    from mechflow.models.build import load_model

    model = load_model(text_model["model"])
    rows = spread_rows(load_tokens(text_model["validation"]), 12)  # as the step reads them
    tokens = torch.from_numpy(rows.astype(np.int64))
    nxt = tokens[:, 1:]
    with torch.inference_mode():
        logits = model(tokens)[:, :-1]
        target = (logits.gather(-1, nxt[..., None])[..., 0] - model.b_U[nxt]).mean()
    assert df["mean"].sum() == pytest.approx(float(target), abs=1e-4)


def test_a_subset_draws_rows_without_replacement_in_order(text_model, tmp_path):
    out = tmp_path / "subset.npy"
    select_sequences.main([
        "--source", str(text_model["validation"]), "--n-sequences", "5", "--seed", "3",
        "--out", str(out),
    ])  # fmt: skip
    source, subset = load_tokens(text_model["validation"]), load_tokens(out)
    rows = [int(np.flatnonzero((source == row).all(axis=1))[0]) for row in subset]
    assert len(subset) == 5 and rows == sorted(set(rows))
    with pytest.raises(ValueError, match="--n-sequences 100000"):
        select_sequences.main([
            "--source", str(out), "--n-sequences", "100000", "--seed", "0",
            "--out", str(tmp_path / "x.npy"),
        ])  # fmt: skip
    assert not (tmp_path / "x.npy").exists()
    save_tokens(subset, tmp_path / "again.npy")

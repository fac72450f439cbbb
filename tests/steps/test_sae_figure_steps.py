"""summarize_sae_latents and the SAE figures (plot_figure --figure saes.*): CLI -> tidy tables ->
PNG + SVG; refusals name the flag and write nothing."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest

from mechflow.artifacts import write_table
from mechflow.steps.plot_figure import main as figure_main
from mechflow.steps.summarize_sae_latents import main as summarize_main

HOOK = "blocks.0.hook_resid_post"
OTHER_HOOK = "blocks.1.hook_resid_post"


def cache(root, model, tokens, hook, name):
    from mechflow.steps.cache_activations import main as cache_main

    out = root / name
    cache_main(
        ["--model-dir", str(model), "--tokens", str(tokens), "--hook", hook, "--out", str(out),
         "--batch-size", "8", "--chunk-size", "8", "--threads", "1", "--device", "cpu",
         "--dtype", "float32", "--compression", "none"]
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny model, stores of two hooks and a tiny ReLU SAE trained by the train_sae step."""
    from mechflow.data.induction import repeated_random
    from mechflow.data.tokens import save_tokens
    from mechflow.models.build import build_model, save_model
    from mechflow.models.config import Architecture
    from mechflow.runtime import seed_everything, set_threads
    from mechflow.steps.train_sae import main as train_main

    seed_everything(0)
    set_threads(1)
    root = tmp_path_factory.mktemp("sae_figures")
    arch = Architecture(
        n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=24, d_vocab=20, attn_only=True
    )
    save_model(build_model(arch, seed=0), root / "model")
    save_model(build_model(arch, seed=5), root / "other_model")
    tokens = root / "tokens.npy"
    save_tokens(repeated_random(n_sequences=16, half_len=8, d_vocab=20, seed=1), tokens)
    store = cache(root, root / "model", tokens, HOOK, "acts.zarr")
    config = {
        "architecture": "relu", "d_sae": 32, "l1_coefficient": 0.1, "batch_size": 64,
        "total_tokens": 2048, "lr": 3e-3, "shuffle_buffer_tokens": 128, "log_every": 16,
    }  # fmt: skip
    train_main(
        ["--store", str(store), "--hook", HOOK, "--sae-config", json.dumps(config),
         "--out", str(root / "sae"), "--log", str(root / "sae.csv"), "--threads", "1",
         "--device", "cpu"]
    )  # fmt: skip
    return {
        "root": root,
        "model": root / "model",
        "other_model": root / "other_model",
        "tokens": tokens,
        "store": store,
        "sae": root / "sae",
    }


def summarize_argv(lab, out, *, sae=None, store=None, model=None, n_latents=4, extra=()):
    return [
        "--sae", str(sae or lab["sae"]), "--store", str(store or lab["store"]),
        "--model-dir", str(model or lab["model"]), "--n-latents", str(n_latents),
        "--threads", "1", "--device", "cpu",
        "--contexts", str(out / "contexts.csv"), "--histograms", str(out / "histograms.csv"),
        "--logits", str(out / "logits.csv"), *extra,
    ]  # fmt: skip


def svg_texts(png) -> list[str]:
    """The text lines of a figure (matplotlib writes each as a comment in the SVG)."""
    svg = png.with_suffix(".svg").read_text(encoding="utf-8")
    return [html.unescape(text) for text in re.findall(r"<!-- (.*?) -->", svg)]


def assert_figure(png):
    assert png.is_file() and png.stat().st_size > 0
    assert png.with_suffix(".svg").is_file()
    assert not list(png.parent.glob(".*.tmp"))


def test_summarize_then_plot_dashboard(lab, tmp_path):
    out = tmp_path / "latents"
    summarize_main(
        summarize_argv(
            lab, out, n_latents=3, extra=["--top-k", "4", "--context", "3", "--bins", "10",
                                          "--n-logits", "5", "--batch-size", "4"]
        )
    )  # fmt: skip
    contexts = pd.read_csv(out / "contexts.csv")
    histograms = pd.read_csv(out / "histograms.csv")
    logits = pd.read_csv(out / "logits.csv")
    assert list(contexts.columns) == [
        "latent", "rank", "seq", "pos", "activation", "token", "text", "context"
    ]  # fmt: skip
    assert list(histograms.columns) == ["latent", "bin_left", "bin_right", "count", "frequency"]
    assert list(logits.columns) == ["latent", "sign", "rank", "token", "text", "value"]
    assert (
        contexts["text"].astype(str) == contexts["token"].astype(str)
    ).all()  # ids: no tokenizer
    latents = list(dict.fromkeys(histograms["latent"]))
    assert len(latents) == 3 and set(contexts["latent"]) == set(latents)
    assert contexts.groupby("latent").size().max() <= 4
    assert (contexts["pos"] >= 1).all()  # the SAE was trained without BOS
    assert (histograms.groupby("latent").size() == 10).all()
    assert (histograms["frequency"] < 0.5).all()  # dense latents are not chosen first
    assert (logits.groupby(["latent", "sign"]).size() == 5).all()
    for latent, rows in logits.groupby("latent"):
        pos = rows[rows["sign"] == "positive"].sort_values("rank")["value"]
        assert pos.is_monotonic_decreasing, latent

    png = tmp_path / "figs" / "dashboard.png"
    figure_main(
        ["--figure", "saes.latent_dashboard",
         "--table", f"contexts={out / 'contexts.csv'}",
         "--table", f"histograms={out / 'histograms.csv'}",
         "--table", f"logits={out / 'logits.csv'}",
         "--out", str(png), "--title", "tiny SAE"]
    )  # fmt: skip
    assert_figure(png)
    # the tables do not say which SAE they summarise: the rule's options name it in the title
    named = tmp_path / "figs" / "named.png"
    figure_main(
        ["--figure", "saes.latent_dashboard",
         "--table", f"contexts={out / 'contexts.csv'}",
         "--table", f"histograms={out / 'histograms.csv'}",
         "--table", f"logits={out / 'logits.csv'}",
         "--option", "model=tiny_2l", "--option", f"hook={HOOK}", "--option", "sae=relu_0.1",
         "--out", str(named)]
    )  # fmt: skip
    assert f"tiny_2l {HOOK}: SAE relu_0.1 latents" in " ".join(svg_texts(named))


def test_summarize_explicit_latents(lab, tmp_path):
    out = tmp_path / "chosen"
    summarize_main(summarize_argv(lab, out, extra=["--latents", "7", "2"]))
    histograms = pd.read_csv(out / "histograms.csv")
    assert list(dict.fromkeys(histograms["latent"])) == [7, 2]


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("store_without_hook", r"--store .*has no hook 'blocks\.0\.hook_resid_post'"),
        ("store_of_another_model", r"--store .*another model than --model-dir"),
        ("sae_of_another_model", r"--sae .*another model than --model-dir"),
        ("latent_out_of_range", r"--latents \[99\]: out of range"),
        ("bad_top_k", r"--top-k must be >= 1"),
    ],
)
def test_summarize_refuses(lab, tmp_path, case, match):
    from mechflow.saes.relu import ReluSAE
    from mechflow.saes.saelens_format import save_sae

    kwargs, extra = {}, []
    if case == "store_without_hook":
        kwargs["store"] = cache(tmp_path, lab["model"], lab["tokens"], OTHER_HOOK, "other.zarr")
    elif case == "store_of_another_model":
        # an SAE without provenance: only the store can tell the model apart
        kwargs["sae"] = save_sae(ReluSAE(16, 32), tmp_path / "bare_sae", hook_name=HOOK)
        kwargs["model"] = lab["other_model"]
    elif case == "sae_of_another_model":
        kwargs["model"] = lab["other_model"]
    elif case == "latent_out_of_range":
        extra = ["--latents", "99"]
    else:
        extra = ["--top-k", "0"]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        summarize_main(summarize_argv(lab, out, extra=extra, **kwargs))
    assert not out.exists()


def metrics_table(arch: str, hook: str, points: list[tuple[float, float, float]]) -> pd.DataFrame:
    rows = []
    for i, (l0, ce, fvu) in enumerate(points):
        name = f"{arch}_{i}"
        for metric, value in (("l0", l0), ("ce_recovered_zero", ce), ("fvu", fvu),
                              ("frac_dead", 0.0)):  # fmt: skip
            rows.append((name, hook, arch, metric, value))
    return pd.DataFrame(rows, columns=["sae", "hook", "architecture", "metric", "value"])


def test_frontier_figure_from_two_metrics_tables(tmp_path):
    from mechflow.experiments.saes.figures import sae_frontier_figure

    relu = metrics_table("relu", HOOK, [(20.0, 0.95, 0.05), (3.0, 0.6, 0.4), (8.0, 0.8, 0.2)])
    topk = metrics_table("topk", HOOK, [(4.0, 0.75, 0.3), (16.0, 0.97, 0.04)])
    paths = [tmp_path / "relu.csv", tmp_path / "topk.csv"]
    write_table(relu, paths[0])
    write_table(topk, paths[1])
    png = tmp_path / "frontier.png"
    figure_main(
        ["--figure", "saes.sae_frontier", "--table", f"metrics={paths[0]}",
         "--table", f"metrics={paths[1]}", "--out", str(png)]
    )  # fmt: skip
    assert_figure(png)

    fig = sae_frontier_figure(pd.concat([relu, topk]))
    ce_ax, fvu_ax = fig.axes[:2]
    assert ce_ax.get_xscale() == "log" and fvu_ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ce_ax.lines if not line.get_label().startswith("_")}
    assert set(lines) == {"relu", "topk"}
    np.testing.assert_array_equal(lines["relu"].get_xdata(), [3.0, 8.0, 20.0])  # sorted by L0
    np.testing.assert_array_equal(lines["relu"].get_ydata(), [0.6, 0.8, 0.95])
    fvu = {line.get_label(): line for line in fvu_ax.lines}
    np.testing.assert_array_equal(fvu["topk"].get_ydata(), [0.3, 0.04])
    # the step drew this very figure from the two files
    from mechflow.plots.style import save_figure

    expected = tmp_path / "expected" / "frontier.png"
    expected.parent.mkdir()
    save_figure(fig, expected)
    assert expected.read_bytes() == png.read_bytes()
    assert expected.with_suffix(".svg").read_bytes() == png.with_suffix(".svg").read_bytes()
    # the metrics name the hook, the rule's option the model
    named = tmp_path / "named.png"
    figure_main(
        ["--figure", "saes.sae_frontier", "--table", f"metrics={paths[0]}",
         "--option", "model=tiny_2l", "--out", str(named)]
    )  # fmt: skip
    assert f"tiny_2l: SAE sparsity–fidelity frontier ({HOOK}, 3 SAEs)" in svg_texts(named)


def test_frontier_refuses_bad_tables(tmp_path):
    table = metrics_table("relu", HOOK, [(20.0, 0.95, 0.05)])
    write_table(table.drop(columns="architecture"), tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"bad\.csv.*'architecture'"):
        figure_main(
            ["--figure", "saes.sae_frontier", "--table", f"metrics={tmp_path / 'bad.csv'}",
             "--out", str(tmp_path / "f.png")]
        )  # fmt: skip
    write_table(table, tmp_path / "a.csv")
    with pytest.raises(ValueError, match="more than one row"):
        figure_main(
            ["--figure", "saes.sae_frontier", "--table", f"metrics={tmp_path / 'a.csv'}",
             "--table", f"metrics={tmp_path / 'a.csv'}", "--out", str(tmp_path / "f.png")]
        )  # fmt: skip
    assert not (tmp_path / "f.png").exists()


def test_toy_recovery_figure(tmp_path):
    from mechflow.experiments.saes.figures import toy_recovery_figure

    table = pd.DataFrame(
        {
            "sae": "topk_1",
            "feature": range(6),
            "importance": 0.9 ** np.arange(6),
            "norm": [1.0, 1.0, 0.98, 0.9, 0.01, 0.0],
            "represented": [True, True, True, True, False, False],
            "max_cosine": [0.99, 0.95, 0.7, 0.92, 0.3, 0.1],
            "best_latent": [3, 0, 5, 1, 2, 2],
            "recovered": [True, True, False, True, False, False],  # the step's, at 0.9
        }
    )
    write_table(table, tmp_path / "recovery.csv")
    png = tmp_path / "recovery.png"
    figure_main(
        ["--figure", "saes.toy_recovery", "--table", f"table={tmp_path / 'recovery.csv'}",
         "--option", "model=toy_5", "--option", "threshold=0.9", "--out", str(png)]
    )  # fmt: skip
    assert_figure(png)
    assert "toy_5: feature recovery by SAE topk_1" in svg_texts(png)  # option, table's sae
    assert any("(75%, max cosine ≥ 0.9)" in text for text in svg_texts(png))
    # the figure counts what the table says was recovered (the configured threshold), not 0.9
    strict = toy_recovery_figure(
        table.assign(recovered=[True, False, False, False, False, False]), threshold=0.96
    )
    assert "1/4 represented features recovered (25%, max cosine ≥ 0.96)" in strict.get_suptitle()
    fig = toy_recovery_figure(pd.read_csv(tmp_path / "recovery.csv"))
    assert "3/4 represented features recovered (75%" in fig.get_suptitle()
    assert fig.get_suptitle().startswith("feature recovery by SAE topk_1\n")
    with pytest.raises(ValueError, match=r"r\.csv: expected rows of one SAE"):
        toy_recovery_figure(table.assign(sae=["a", "b"] * 3), source="r.csv")
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], table["max_cosine"])
    with pytest.raises(ValueError, match="'best_latent'"):
        toy_recovery_figure(table.drop(columns="best_latent"), source="r.csv")

"""Latent dashboards: streamed top contexts and histograms against brute force, logit effects
against W_dec @ W_U, deterministic latent choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechflow.saes import dashboard as dash

HOOK = "blocks.1.hook_resid_post"
Z_HOOK = "blocks.0.attn.hook_z"
N_SEQ, HALF = 24, 8


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny untrained model, a store of two hooks cached from it, a tiny trained ReLU SAE."""
    from mechflow.data.induction import repeated_random
    from mechflow.data.tokens import save_tokens
    from mechflow.models.build import build_model, save_model
    from mechflow.models.config import Architecture
    from mechflow.runtime import seed_everything, set_threads
    from mechflow.saes.saelens_format import load_sae
    from mechflow.steps.cache_activations import main as cache_main
    from mechflow.steps.train_sae import main as train_main
    from mechflow.store.reader import open_store

    seed_everything(0)
    set_threads(1)
    root = tmp_path_factory.mktemp("dashboard")
    arch = Architecture(
        n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=24, d_vocab=20, attn_only=True
    )
    save_model(build_model(arch, seed=0), root / "model")
    tokens = repeated_random(n_sequences=N_SEQ, half_len=HALF, d_vocab=20, seed=1)
    save_tokens(tokens, root / "tokens.npy")
    cache_main(
        ["--model-dir", str(root / "model"), "--tokens", str(root / "tokens.npy"),
         "--hook", HOOK, "--hook", Z_HOOK, "--out", str(root / "acts.zarr"),
         "--batch-size", "8", "--chunk-size", "8", "--threads", "1", "--device", "cpu",
         "--dtype", "float32", "--compression", "none"]
    )  # fmt: skip
    config = {
        "architecture": "relu", "d_sae": 32, "l1_coefficient": 0.1, "batch_size": 64,
        "total_tokens": 4096, "lr": 3e-3, "shuffle_buffer_tokens": 128, "log_every": 16,
    }  # fmt: skip
    train_main(
        ["--store", str(root / "acts.zarr"), "--hook", HOOK, "--sae-config", json.dumps(config),
         "--out", str(root / "sae"), "--log", str(root / "sae.csv"), "--threads", "1",
         "--device", "cpu"]
    )  # fmt: skip
    from mechflow.models.build import load_model

    sae, _ = load_sae(root / "sae")
    return {
        "model": load_model(root / "model"),
        "store": open_store(root / "acts.zarr"),
        "sae": sae,
        "tokens": tokens,
    }


def brute_force_acts(lab, skip_bos=True) -> torch.Tensor:
    x = lab["store"].torch(HOOK)  # seq pos d_model
    if skip_bos:
        x = x[:, 1:]
    with torch.no_grad():
        return lab["sae"].encode(x)  # seq pos d_sae


def test_statistics_match_brute_force(lab):
    acts = brute_force_acts(lab)
    stats = dash.latent_statistics(lab["sae"], lab["store"], HOOK, batch_size=5)
    assert stats.n_tokens == N_SEQ * 2 * HALF
    flat = acts.reshape(-1, acts.shape[-1])
    np.testing.assert_array_equal(stats.fires, (flat != 0).sum(0).numpy())
    np.testing.assert_allclose(stats.max_activation, flat.max(0).values.numpy(), rtol=1e-6)
    live = stats.fires > 0
    assert live.sum() >= 4  # enough live latents for the default dashboard
    low = flat.masked_fill(flat == 0, float("inf")).min(0).values.numpy()
    np.testing.assert_allclose(stats.min_nonzero[live], low[live], rtol=1e-6)


def test_top_contexts_and_histograms_match_brute_force(lab):
    acts = brute_force_acts(lab)  # seq pos-1 d_sae
    tokens = lab["tokens"]
    summary = dash.summarize_latents(
        lab["sae"], lab["store"], HOOK, lab["model"], n_latents=3, top_k=5, context=3,
        after=1, bins=7, batch_size=5,
    )  # fmt: skip
    assert len(summary.latents) == 3
    for latent in summary.latents:
        values = acts[..., latent]
        rows = summary.contexts[summary.contexts["latent"] == latent].sort_values("rank")
        assert list(rows["rank"]) == list(range(len(rows)))
        expected = torch.sort(values.flatten(), descending=True).values
        expected = expected[expected > 0][:5]
        np.testing.assert_allclose(rows["activation"], expected.numpy(), rtol=1e-5)
        top = rows.iloc[0]
        seq, pos = divmod(int(values.flatten().argmax()), values.shape[1])
        assert (top["seq"], top["pos"]) == (seq, pos + 1)  # pos counts BOS
        for row in rows.itertuples():
            assert float(acts[row.seq, row.pos - 1, latent]) == pytest.approx(row.activation)
            assert row.token == tokens[row.seq, row.pos]
            assert f"[{tokens[row.seq, row.pos]}]" in row.context
            assert row.context == dash.format_context(list(tokens[row.seq]), row.pos, 3, 1)

        hist = summary.histograms[summary.histograms["latent"] == latent]
        n_nonzero = int((values != 0).sum())
        assert len(hist) == 7 and hist["count"].sum() == n_nonzero
        assert hist["frequency"].iloc[0] == pytest.approx(n_nonzero / values.numel())
        nonzero = values[values != 0]
        assert hist["bin_left"].min() == pytest.approx(float(nonzero.min()))
        assert hist["bin_right"].max() == pytest.approx(float(nonzero.max()))
        assert (hist["bin_right"] >= hist["bin_left"]).all()


def test_batch_size_does_not_change_the_tables(lab):
    kwargs = {"latents": [0, 3, 5], "top_k": 6, "bins": 5}
    a = dash.summarize_latents(lab["sae"], lab["store"], HOOK, lab["model"], batch_size=1, **kwargs)
    b = dash.summarize_latents(
        lab["sae"], lab["store"], HOOK, lab["model"], batch_size=64, **kwargs
    )
    # matmuls of other batch shapes may differ in the last bit: activations are compared close
    assert a.contexts.drop(columns="activation").equals(b.contexts.drop(columns="activation"))
    np.testing.assert_allclose(a.contexts["activation"], b.contexts["activation"], rtol=1e-6)
    assert a.histograms["count"].sum() == b.histograms["count"].sum()
    assert a.logits.equals(b.logits)


def test_logit_effect_is_decoder_row_times_unembedding(lab):
    model, sae = lab["model"], lab["sae"]
    latent = 3
    table = dash.direct_logit_effects(model, HOOK, sae, [latent], n_logits=4)
    expected = sae.W_dec[latent].detach() @ model.W_U.detach()  # d_vocab
    effects = dash.logit_effects(model, HOOK, sae.W_dec.detach())
    torch.testing.assert_close(effects[latent], expected)
    pos = table[table["sign"] == "positive"].sort_values("rank")
    neg = table[table["sign"] == "negative"].sort_values("rank")
    top = torch.topk(expected, 4)
    bottom = torch.topk(-expected, 4)
    assert list(pos["token"]) == top.indices.tolist()
    torch.testing.assert_close(torch.tensor(pos["value"].to_numpy()), top.values.double())
    assert list(neg["token"]) == bottom.indices.tolist()
    torch.testing.assert_close(torch.tensor(neg["value"].to_numpy()), -bottom.values.double())


def test_residual_directions_through_W_O_and_W_out(lab):
    from mechflow.models.build import build_model
    from mechflow.models.config import Architecture

    model = lab["model"]
    gen = torch.Generator().manual_seed(0)
    W_z = torch.randn(5, 16, generator=gen)  # heads (2) x d_head (8) concatenated
    expected = sum(W_z[:, h * 8 : (h + 1) * 8] @ model.blocks[0].attn.W_O[h] for h in range(2))
    torch.testing.assert_close(dash.residual_directions(model, Z_HOOK, W_z), expected)
    W_result = torch.randn(5, 32, generator=gen)  # heads x d_model
    torch.testing.assert_close(
        dash.residual_directions(model, "blocks.0.attn.hook_result", W_result),
        W_result[:, :16] + W_result[:, 16:],
    )
    mlp_model = build_model(
        Architecture(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=20, d_mlp=32),
        seed=0,
    )
    W_mlp = torch.randn(5, 32, generator=gen)
    torch.testing.assert_close(
        dash.residual_directions(mlp_model, "blocks.0.mlp.hook_post", W_mlp),
        W_mlp @ mlp_model.blocks[0].mlp.W_out,
    )
    with pytest.raises(ValueError, match="hook_pattern.*no direct path"):
        dash.residual_directions(model, "blocks.0.attn.hook_pattern", W_z)


def test_select_latents_prefers_frequent_sparse_live_latents():
    fires = np.array([0, 90, 10, 40, 40, 60, 5])  # of 100 tokens
    stats = dash.LatentStatistics(
        n_tokens=100, fires=fires, max_activation=np.ones(7), min_nonzero=np.ones(7)
    )
    assert dash.select_latents(stats, 3) == [3, 4, 2]  # ties by index; dense and dead skipped
    assert dash.select_latents(stats, 6) == [3, 4, 2, 6, 5, 1]  # dense last, least dense first
    assert dash.select_latents(stats, 10) == [3, 4, 2, 6, 5, 1]  # never a dead latent
    assert dash.select_latents(stats, 2, max_frequency=0.95) == [1, 5]
    with pytest.raises(ValueError, match="n_latents"):
        dash.select_latents(stats, 0)


def test_format_context_brackets_the_token_and_clips_at_the_edges():
    ids = [0, 12, 87, 45, 3, 9]
    assert dash.format_context(ids, 3, before=2, after=1) == "12 87 [45] 3"
    assert dash.format_context(ids, 0, before=6, after=2) == "[0] 12 87"
    assert dash.format_context(ids, 5, before=1, after=2) == "3 [9]"


def test_a_dead_latent_gets_an_empty_histogram_and_no_contexts(lab):
    import copy

    from mechflow.experiments.saes.figures import latent_dashboard_figure

    sae = copy.deepcopy(lab["sae"])
    with torch.no_grad():
        sae.b_enc[0] = -1e6  # never fires
    summary = dash.summarize_latents(sae, lab["store"], HOOK, lab["model"], latents=[0, 3])
    assert summary.stats.fires[0] == 0
    assert 0 not in set(summary.contexts["latent"]) and 3 in set(summary.contexts["latent"])
    dead = summary.histograms[summary.histograms["latent"] == 0]
    assert len(dead) == 1 and dead["count"].iloc[0] == 0
    fig = latent_dashboard_figure(summary.contexts, summary.histograms, summary.logits)
    assert len(fig.axes) == 6


def test_with_a_tokenizer_a_context_is_text_with_line_breaks_shown():
    pieces = {1: "def", 2: " f", 3: "(x):", 4: "\n", 5: "    return", 6: " x"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    assert dash.format_context([1, 2, 3, 4, 5, 6], 4, before=2, after=1, decode=decode) == (
        "(x):⏎«    return» x"
    )
    assert dash.token_text(4, decode) == "⏎" and dash.token_text(4, None) == "4"

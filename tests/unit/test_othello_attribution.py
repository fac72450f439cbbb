"""OthelloGPT attribution: DLA is exact and agrees with TransformerLens, move swaps are legal
games that differ where they say, patching hits its end points, neuron cosines equal a loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch.testing import assert_close

from mechflow.data import othello
from mechflow.experiments.othello import attribution as A
from mechflow.experiments.othello.labels import BOS, label_games, othello_games, probe_positions
from mechflow.models.build import build_model
from mechflow.models.config import Architecture
from mechflow.patching import activation_patching, normalised
from mechflow.probes.config import ProbeConfig
from mechflow.probes.linear import Probes

SIZE, MOVE = 6, 12


@pytest.fixture(scope="module")
def model():
    """2 layers with MLPs for 6x6 games; every bias and norm weight random, so no term vanishes."""
    arch = Architecture(
        n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=33, d_vocab=33, d_mlp=32, act_fn="gelu"
    )
    model = build_model(arch, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "w":
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=g))
            elif leaf.startswith("b"):
                param.copy_(0.3 * torch.randn(param.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def games():
    tokens = othello_games(40, SIZE, seed=3)
    return tokens, label_games(tokens, SIZE)


def _slow_logit_difference(logits, legal, game, pos):
    """``logit[top-1 move] - mean(logit[legal moves])`` of one row, square by square."""
    row = logits[game, pos]
    top = int(row[1:].argmax()) + 1
    squares = np.flatnonzero(legal[game, pos] == 1)
    return row[top] - row[othello.square_to_token(squares, SIZE)].mean()


@torch.no_grad()
def test_attributions_sum_to_the_logit_difference(model, games):
    tokens, labels = games
    batch = torch.as_tensor(tokens[:6], dtype=torch.long)
    allowed = torch.as_tensor(A.legal_tokens(labels["legal"][:6], 33))
    attributions, difference = A.move_attributions(model, batch, allowed)
    assert attributions.shape == (len(A.dla_components(model)), 6, 33)
    assert_close(attributions.sum(0), difference, atol=1e-4, rtol=0)
    logits = model(batch)
    for game, pos in [(0, 0), (1, 7), (5, 20)]:
        expected = _slow_logit_difference(logits, labels["legal"], game, pos)
        assert_close(difference[game, pos], expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_attributions_match_transformer_lens(model, games):
    """TL's ``apply_ln_to_stack`` centres and divides by the cached scale but leaves out
    ``ln_final.w`` (it assumes a folded norm), so its stack is multiplied by w here."""
    tokens, labels = games
    batch = torch.as_tensor(tokens[:5], dtype=torch.long)
    allowed = torch.as_tensor(A.legal_tokens(labels["legal"][:5], 33))
    attributions, difference = A.move_attributions(model, batch, allowed)
    logits, cache = model.run_with_cache(batch)
    top = logits[..., 1:].argmax(-1) + 1
    share = allowed.float() / allowed.sum(-1, keepdim=True).clamp_min(1)
    direction = model.W_U.T[top] - share @ model.W_U.T  # batch pos d_model
    w = model.ln_final.w

    def tl(stack):
        return ((stack * w) * direction).sum(-1)

    resid, resid_labels = cache.decompose_resid(apply_ln=True, return_labels=True)
    heads, head_labels = cache.stack_head_results(layer=-1, apply_ln=True, return_labels=True)
    ours = dict(zip([c.label for c in A.dla_components(model)], attributions, strict=True))
    assert_close(ours["embed"], tl(resid[resid_labels.index("embed")]), atol=1e-5, rtol=0)
    assert_close(ours["pos_embed"], tl(resid[resid_labels.index("pos_embed")]), atol=1e-5, rtol=0)
    for label, stack in zip(head_labels, heads, strict=True):
        assert_close(ours[label], tl(stack), atol=1e-5, rtol=0)
    for layer in range(2):
        mlp = resid[resid_labels.index(f"{layer}_mlp_out")]
        assert_close(ours[f"L{layer}.mlp_out"], tl(mlp), atol=1e-5, rtol=0)
        attn = resid[resid_labels.index(f"{layer}_attn_out")]
        layer_heads = sum(ours[f"L{layer}H{h}"] for h in range(2))
        assert_close(ours[f"L{layer}.b_O"] + layer_heads, tl(attn), atol=1e-5, rtol=0)
    biases = direction @ model.ln_final.b + model.b_U[top] - share @ model.b_U
    assert_close(tl(resid).sum(0) + biases, difference, atol=1e-4, rtol=0)


def test_table_means_sum_to_the_mean_logit_difference(model, games):
    tokens, labels = games
    mask = probe_positions(labels["valid"], 5, 5)
    one = A.direct_logit_attribution(model, tokens, labels["legal"], mask, batch_size=7)
    many = A.direct_logit_attribution(model, tokens, labels["legal"], mask, batch_size=100)
    assert list(one.columns) == A.DLA_COLUMNS
    assert (one["rows"] == mask.sum()).all()
    assert one["component"].iloc[[0, 1, 2, -2, -1]].tolist() == [
        "embed", "pos_embed", "L0H0", "ln_final.b", "b_U",
    ]  # fmt: skip
    pd.testing.assert_frame_equal(one, many, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        logits = model(torch.as_tensor(tokens, dtype=torch.long))
    rows = np.argwhere(mask)
    diffs = [float(_slow_logit_difference(logits, labels["legal"], g, p)) for g, p in rows]
    assert one["mean"].sum() == pytest.approx(np.mean(diffs), abs=1e-4)


def test_table_refuses_rows_without_a_next_move(model, games):
    tokens, labels = games
    with pytest.raises(ValueError, match="no legal next move"):
        A.direct_logit_attribution(model, tokens, labels["legal"], labels["valid"] == 1)
    with pytest.raises(ValueError, match="mask"):
        A.direct_logit_attribution(model, tokens, labels["legal"], labels["valid"][:, :5] == 1)


def _padded(rows):
    out = np.full((len(rows), 1 + SIZE * SIZE - 4), BOS, dtype=np.int64)
    out[:, : rows.shape[1]] = rows
    return out


def test_move_pairs_swap_one_legal_move(games):
    tokens, _ = games
    pairs = A.move_pairs(tokens, move=MOVE, n_games=10, seed=0)
    n = len(pairs.games)
    assert 0 < n <= 10
    assert pairs.clean.shape == pairs.corrupted.shape == (n, MOVE + 1)
    np.testing.assert_array_equal(pairs.clean, tokens[pairs.games, : MOVE + 1])
    differs = pairs.clean != pairs.corrupted
    assert differs[:, MOVE].all() and not differs[:, :MOVE].any()
    clean = label_games(_padded(pairs.clean), SIZE)["legal"][:, MOVE]  # both replay as games
    corrupted = label_games(_padded(pairs.corrupted), SIZE)["legal"][:, MOVE]
    for i in range(n):
        only_clean = np.flatnonzero((clean[i] == 1) & (corrupted[i] != 1))
        only_corrupted = np.flatnonzero((corrupted[i] == 1) & (clean[i] != 1))
        assert pairs.correct[i] == othello.square_to_token(only_clean[0], SIZE)
        assert pairs.wrong[i] == othello.square_to_token(only_corrupted[0], SIZE)
    again = A.move_pairs(tokens, move=MOVE, n_games=10, seed=0)
    np.testing.assert_array_equal(again.corrupted, pairs.corrupted)


def test_move_pairs_refuse_a_move_outside_the_game(games):
    tokens, _ = games
    for move in (0, tokens.shape[1] - 1):
        with pytest.raises(ValueError, match=f"move {move} is outside the game"):
            A.move_pairs(tokens, move=move, n_games=5, seed=0)


def test_move_patching_end_points(model, games):
    tokens, _ = games
    table = A.move_patching(model, tokens, move=MOVE, n_games=8, seed=0, batch_size=50)
    assert list(table.columns) == A.PATCH_COLUMNS
    assert set(table["kind"]) == set(A.PATCH_KINDS)
    pairs = A.move_pairs(tokens, move=MOVE, n_games=8, seed=0)
    metric = pairs.metric()
    with torch.no_grad():
        clean = float(metric(model(torch.as_tensor(pairs.clean))))
        corrupted = float(metric(model(torch.as_tensor(pairs.corrupted))))
    assert abs(clean - corrupted) > 1e-2  # the normalisation is well defined
    assert table["clean_score"].iloc[0] == pytest.approx(clean, abs=1e-5)
    assert table["corrupted_score"].iloc[0] == pytest.approx(corrupted, abs=1e-5)
    resid = table[table["kind"] == "resid_pre"].set_index(["layer", "position"])["effect"]
    assert resid[(1, MOVE)] == pytest.approx(1, abs=1e-4)  # the whole clean stream at P
    earlier = resid[resid.index.get_level_values("position") < MOVE]
    np.testing.assert_allclose(earlier, 0, atol=1e-4)  # the same tokens: patching nothing
    assert normalised(torch.tensor(corrupted), clean, corrupted) == 0
    # sublayers: the engine's (layer, pos) at the swapped move
    mlp = activation_patching(
        model, torch.as_tensor(pairs.clean), torch.as_tensor(pairs.corrupted), "mlp_out", metric
    )
    ours = table[table["kind"] == "mlp_out"].sort_values("layer")["effect"].to_numpy()
    np.testing.assert_allclose(ours, normalised(mlp[:, MOVE], clean, corrupted), atol=1e-5)


SQUARES = (0, 9, 14, 35)  # 8 directions: a proper subspace of d_model 16


def _probes(d_model=16, hooks=("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")):
    """Relative probes of a few squares, and one of another label (not a relative probe)."""
    g = torch.Generator().manual_seed(2)
    names = (*[f"relative.{s}" for s in SQUARES], "flipped.3")
    return Probes(
        weight=torch.randn(len(hooks), len(names), d_model, 3, generator=g),
        bias=torch.randn(len(hooks), len(names), 3, generator=g),
        mean=torch.randn(len(hooks), d_model, generator=g),
        std=0.5 + torch.rand(len(hooks), d_model, generator=g),
        hook_names=tuple(hooks),
        target_names=names,
        class_names=("empty", "mine", "theirs"),
        config=ProbeConfig(n_classes=3),
    )


def test_neuron_cosines_equal_a_loop(model):
    probes = _probes()
    table = A.neurons_in_probe_basis(model, probes, layer=1, n_neurons=3)
    assert list(table.columns) == A.NEURON_COLUMNS
    assert len(table) == 3 * 2 * len(SQUARES)
    assert set(table["square"]) == set(SQUARES)
    w = (probes.weight / probes.std[:, None, :, None])[1, :4]  # square d_model class: raw space
    directions = {
        "theirs_minus_mine": w[..., 2] - w[..., 1],
        "empty": w[..., 0] - (w[..., 1] + w[..., 2]) / 2,
    }
    w_out = model.blocks[1].mlp.W_out.detach()
    basis = torch.cat(list(directions.values())).T  # d_model directions
    scores = []
    for n in range(w_out.shape[0]):  # the share of |W_out[n]|^2 in the probes' span
        coef = torch.linalg.lstsq(basis, w_out[n, :, None]).solution
        scores.append(float((basis @ coef).square().sum() / w_out[n].square().sum()))
    top = np.argsort(scores)[::-1][:3]
    assert table.drop_duplicates("rank")["neuron"].tolist() == top.tolist()
    for row in table.itertuples():
        d = directions[row.direction][SQUARES.index(row.square)]
        cos = torch.dot(w_out[row.neuron], d) / (w_out[row.neuron].norm() * d.norm())
        assert row.cosine == pytest.approx(float(cos), abs=1e-5)
        assert row.score == pytest.approx(scores[row.neuron], abs=1e-4)


def test_neurons_refuse_probes_without_the_hook(model):
    with pytest.raises(ValueError, match="blocks.1.hook_resid_post"):
        A.neurons_in_probe_basis(model, _probes(hooks=("blocks.0.hook_resid_pre",)), layer=1)
    with pytest.raises(ValueError, match="layer 5"):
        A.neurons_in_probe_basis(model, _probes(), layer=5)
    colours = dataclasses.replace(_probes(), class_names=("empty", "black", "white"))
    with pytest.raises(ValueError, match="'mine', 'theirs'"):
        A.neurons_in_probe_basis(model, colours, layer=1)
    flips = dataclasses.replace(_probes(), target_names=tuple(f"flipped.{s}" for s in range(5)))
    with pytest.raises(ValueError, match="relative"):
        A.neurons_in_probe_basis(model, flips, layer=1)


def test_activation_by_state_equals_a_loop(model, games):
    tokens, labels = games
    mask = probe_positions(labels["valid"], 5, 5)
    table = A.neuron_activation_by_state(
        model, tokens, labels, mask, layer=0, neurons=[3, 7], batch_size=16
    )
    assert list(table.columns) == A.STATE_COLUMNS
    _, cache = model.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    acts = cache["blocks.0.mlp.hook_post"][torch.as_tensor(mask)]  # row d_mlp
    states = labels["relative"][mask]  # row square
    for row in table.sample(20, random_state=1).itertuples():
        state = ("empty", "mine", "theirs").index(row.state)
        rows = states[:, row.square] == state
        assert row.rows == rows.sum()
        if rows.any():
            expected = float(acts[torch.as_tensor(rows), row.neuron].mean())
            assert row.mean_activation == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="'colour'"):
        A.neuron_activation_by_state(
            model, tokens, labels, mask, layer=0, neurons=[0], label="colour"
        )


def test_move_pairs_read_later_keep_the_later_moves_legal_in_both(games):
    tokens, _ = games
    later = 2
    pairs = A.move_pairs(tokens, move=MOVE, n_games=10, seed=0, later=later)
    read = MOVE + later
    assert pairs.read_at == read and pairs.clean.shape[1] == read + 1
    np.testing.assert_array_equal(pairs.clean, tokens[pairs.games, : read + 1])
    differs = pairs.clean != pairs.corrupted
    assert differs[:, MOVE].all() and differs.sum() == len(pairs.games)  # the one swapped move
    clean = label_games(_padded(pairs.clean), SIZE)["legal"][:, read]  # both replay as games
    corrupted = label_games(_padded(pairs.corrupted), SIZE)["legal"][:, read]
    rows = np.arange(len(pairs.games))
    at = othello.token_to_square
    assert (clean[rows, at(pairs.correct, SIZE)] == 1).all()
    assert (corrupted[rows, at(pairs.correct, SIZE)] != 1).all()
    assert (corrupted[rows, at(pairs.wrong, SIZE)] == 1).all()
    assert (clean[rows, at(pairs.wrong, SIZE)] != 1).all()


def test_move_patching_read_later_restores_at_the_swapped_move(model, games):
    tokens, _ = games
    table = A.move_patching(model, tokens, move=MOVE, n_games=8, seed=0, batch_size=50, later=2)
    resid = table[table["kind"] == "resid_pre"].set_index(["layer", "position"])["effect"]
    earlier = resid[resid.index.get_level_values("position") < MOVE]
    np.testing.assert_allclose(earlier, 0, atol=1e-4)  # the same tokens: patching nothing
    # the clean token embedding at the swapped move makes the whole run clean again
    assert resid[(0, MOVE)] == pytest.approx(1, abs=1e-4)
    assert (table.loc[table["kind"] == "mlp_out", "position"] == MOVE + 2).all()

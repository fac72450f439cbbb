"""Probe-direction edits of OthelloGPT's board (Nanda 2023): the edit's geometry, the sampled
board edits against the rules, and the batched run against one edit at a time."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from mechflow.data import othello
from mechflow.experiments.othello import interventions as iv
from mechflow.experiments.othello.labels import label_games, othello_games, probe_positions
from mechflow.models.build import build_model
from mechflow.models.config import Architecture
from mechflow.probes.config import ProbeConfig
from mechflow.probes.linear import Probes, predict_logits

SIZE = 6
D_MODEL = 16
HOOKS = ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
CLASSES = ("empty", "mine", "theirs")


@pytest.fixture(scope="module")
def games():
    tokens = othello_games(16, SIZE, seed=0)
    labels = label_games(tokens, SIZE)
    return tokens, labels, probe_positions(labels["valid"], 5, 5)


@pytest.fixture(scope="module")
def model():
    arch = Architecture(
        n_layers=2, d_model=D_MODEL, n_heads=2, d_head=8, n_ctx=othello.d_vocab(SIZE),
        d_vocab=othello.d_vocab(SIZE), d_mlp=32,
    )  # fmt: skip
    return build_model(arch, seed=0)


def make_probes(
    target_names=tuple(f"relative.{s}" for s in range(SIZE * SIZE)), class_names=CLASSES
) -> Probes:
    """Random probes with a non-trivial standardisation, so raw and standardised spaces differ."""
    gen = torch.Generator().manual_seed(1)
    H, T, C = len(HOOKS), len(target_names), len(class_names)
    return Probes(
        weight=torch.randn(H, T, D_MODEL, C, generator=gen),
        bias=torch.randn(H, T, C, generator=gen),
        mean=torch.randn(H, D_MODEL, generator=gen),
        std=torch.rand(H, D_MODEL, generator=gen) + 0.5,
        hook_names=HOOKS,
        target_names=tuple(target_names),
        class_names=tuple(class_names),
        config=ProbeConfig(n_classes=C),
    )


@pytest.fixture(scope="module")
def edits(games):
    _, labels, mask = games
    return iv.sample_edits(
        labels["relative"], labels["legal"], labels["to_move"], mask, SIZE, 40, seed=0
    )


# --- the edit's geometry -----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 4.0])
def test_flip_edit_sets_the_probe_margin_and_nothing_orthogonal(scale):
    probes = make_probes()
    squares = np.array([0, 7, 14, 21, 35])
    v, k = iv.probe_directions(probes, HOOKS[1], squares)
    x = torch.randn(len(squares), D_MODEL, dtype=torch.float64) * 3
    v, k = v.double(), k.double()
    edited = iv.flip_edit(x, v, k, scale)

    # the margin as the probes themselves compute it, through their standardisation
    def probe_margin(acts):
        acts = acts.float()[None].expand(len(HOOKS), -1, -1)
        logits = predict_logits(probes, acts)[1, torch.arange(len(squares)), squares]
        return (logits[:, 2] - logits[:, 1]).double()

    torch.testing.assert_close(probe_margin(x), iv.margin(x, v, k), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iv.margin(edited, v, k), scale * iv.margin(x, v, k).abs())
    torch.testing.assert_close(
        probe_margin(edited), scale * probe_margin(x).abs(), atol=1e-3, rtol=1e-3
    )
    step = edited - x
    unit = v / v.norm(dim=-1, keepdim=True)
    orthogonal = step - (step * unit).sum(-1, keepdim=True) * unit
    torch.testing.assert_close(orthogonal, torch.zeros_like(x))
    # a stone the probe already reads as the opponent's is pushed further that way, not back
    already = iv.margin(x, v, k) > 0
    assert already.any() and (iv.margin(edited, v, k)[already] >= 0).all()


def test_random_edit_moves_as_far_as_the_probe_edit_along_its_direction():
    x, v, k = torch.randn(6, D_MODEL), torch.randn(6, D_MODEL), torch.randn(6)
    directions = iv.random_directions(6, D_MODEL, seed=3)
    for scale in (0.5, 1.0, 8.0):
        step = iv.random_edit(x, v, k, scale, directions) - x
        torch.testing.assert_close(
            step.norm(dim=-1), (iv.flip_edit(x, v, k, scale) - x).norm(dim=-1)
        )
        torch.testing.assert_close(step, step.norm(dim=-1, keepdim=True) * directions)


def test_random_directions_are_unit_and_seeded():
    a = iv.random_directions(5, D_MODEL, seed=0)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(iv.random_directions(5, D_MODEL, seed=0), a)
    assert not torch.allclose(iv.random_directions(5, D_MODEL, seed=1), a)
    # one direction per edit, whatever else is drawn: the first rows do not depend on n
    torch.testing.assert_close(iv.random_directions(9, D_MODEL, seed=0)[:5], a)


# --- the edited boards ---------------------------------------------------------------------------


def rules_legal(board_colours, to_move, square):
    """The mover's legal set after the mover's stone on ``square`` turns the opponent's, from
    the colour board (not the relative one the module reads)."""
    board = board_colours.copy()
    board[square] = othello.WHITE if to_move == 0 else othello.BLACK
    black, white = othello.to_bitboards(board[None])
    return othello.legal_moves(black, white, np.array([to_move]), size=SIZE)[0]


def test_relative_legal_reproduces_the_labels(games):
    _, labels, mask = games
    got = iv.relative_legal(labels["relative"][mask], labels["to_move"][mask], SIZE)
    np.testing.assert_array_equal(got, labels["legal"][mask] == 1)


def test_sampled_edits_flip_a_mine_square_and_change_the_legal_set(games, edits):
    _, labels, mask = games
    assert len(edits) == 40
    assert len({(g, p) for g, p in zip(edits.game, edits.position, strict=True)}) == len(edits)
    for i in range(len(edits)):
        g, p, s = edits.game[i], edits.position[i], edits.square[i]
        assert mask[g, p]
        assert labels["relative"][g, p, s] == othello.MINE
        np.testing.assert_array_equal(edits.original[i], labels["legal"][g, p] == 1)
        expected = rules_legal(labels["board"][g, p], labels["to_move"][g, p], s)
        np.testing.assert_array_equal(edits.legal[i], expected)
        assert (edits.legal[i] != edits.original[i]).any() and edits.legal[i].any()


def test_sample_edits_is_seeded(games, edits):
    _, labels, mask = games
    args = (labels["relative"], labels["legal"], labels["to_move"], mask, SIZE, 40)
    again = iv.sample_edits(*args, seed=0)
    for name in ("game", "position", "square", "legal", "original"):
        np.testing.assert_array_equal(getattr(again, name), getattr(edits, name))
    other = iv.sample_edits(*args, seed=1)
    assert not np.array_equal(other.game * 100 + other.position, edits.game * 100 + edits.position)


def test_sample_edits_returns_fewer_when_the_mask_runs_out(games, caplog):
    _, labels, mask = games
    one = np.zeros_like(mask)
    g, p = np.argwhere(mask)[0]
    one[g, p] = True
    args = (labels["relative"], labels["legal"], labels["to_move"])
    with caplog.at_level(logging.WARNING):
        got = iv.sample_edits(*args, one, SIZE, 5, seed=0)
    assert len(got) <= 1 and "edits" in caplog.text
    assert set(zip(got.game, got.position, strict=True)) <= {(g, p)}
    empty = iv.sample_edits(*args, np.zeros_like(mask), SIZE, 5, seed=0)
    assert len(empty) == 0 and empty.legal.shape == (0, SIZE * SIZE)


# --- the model's moves ---------------------------------------------------------------------------


def test_top_k_reads_square_tokens_only():
    squares = np.zeros((2, SIZE * SIZE), bool)
    squares[:, [0, 1, 8]] = True
    tokens = othello.square_to_token(np.array([0, 1, 8]), SIZE)
    logits = torch.zeros(2, othello.d_vocab(SIZE))
    logits[:, 0] = 100.0  # the BOS/PAD never counts as a move
    logits[0, tokens] = torch.tensor([3.0, 2.0, 1.0])
    logits[1, tokens[:2]] = 2.0
    logits[1, othello.square_to_token(np.array([5]), SIZE)] = 1.0  # beats square 8
    np.testing.assert_array_equal(iv.top_k_equals(logits, squares, SIZE), [True, False])
    np.testing.assert_array_equal(iv.top_k_errors(logits, squares, SIZE), [0, 1])


def test_batched_run_equals_one_edit_at_a_time(model, games, edits):
    tokens = torch.as_tensor(games[0], dtype=torch.long)
    v, k = iv.probe_directions(make_probes(), HOOKS[1], edits.square)
    game, pos = torch.as_tensor(edits.game), torch.as_tensor(edits.position)
    scale = 2.0
    logits, resid = iv.edited_run(
        model, tokens, game, pos, HOOKS[1], lambda x, i: iv.flip_edit(x, v[i], k[i], scale), 7
    )
    for i in range(len(edits)):
        p = int(pos[i])

        def edit_one(act, hook, i=i, p=p):
            act[0, p] = iv.flip_edit(act[0, p][None], v[i : i + 1], k[i : i + 1], scale)[0]
            return act

        with torch.no_grad():
            out = model.run_with_hooks(tokens[game[i]][None], fwd_hooks=[(HOOKS[1], edit_one)])
        torch.testing.assert_close(logits[i], out[0, p])
    # the residual it reports is the edited one
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[game], names_filter=[HOOKS[1]])
    clean = cache[HOOKS[1]][torch.arange(len(edits)), pos]
    torch.testing.assert_close(resid, iv.flip_edit(clean, v, k, scale))


def run(model, games, edits, **kwargs):
    args = {"hook": HOOKS[1], "scales": [0.5, 2.0], "seed": 0, "batch_size": 64, "size": SIZE}
    return iv.run_interventions(model, games[0], make_probes(), edits, **(args | kwargs))


def test_table_does_not_depend_on_the_batch_size(model, games, edits):
    table = run(model, games, edits)
    assert list(table.columns) == iv.TABLE_COLUMNS
    assert list(table.condition) == ["none", "random", "random", "probe", "probe"]
    assert table.scale.isna().tolist() == [True, False, False, False, False]
    assert (table.edits == len(edits)).all() and (table.hook == HOOKS[1]).all()
    pd.testing.assert_frame_equal(run(model, games, edits, batch_size=5), table, rtol=1e-5)


def test_edit_scales_set_the_probe_margin(model, games, edits):
    table = run(model, games, edits, scales=[0.0, 1.0])
    none = table.iloc[0]
    table = table.set_index(["condition", "scale"])
    assert table.loc[("probe", 0.0)].mean_margin == pytest.approx(0, abs=1e-4)
    assert table.loc[("probe", 1.0)].mean_margin >= abs(none.mean_margin) - 1e-4
    assert 0 <= none.success <= 1 and 0 <= none.unchanged <= 1


# --- refusals ------------------------------------------------------------------------------------


def test_unknown_hook_target_or_class_is_named(model, games, edits):
    with pytest.raises(ValueError, match="blocks.7.hook_resid_post"):
        iv.probe_directions(make_probes(), "blocks.7.hook_resid_post", edits.square)
    missing = int(edits.square[0])
    targets = [f"relative.{s}" for s in range(SIZE * SIZE) if s != missing]
    with pytest.raises(ValueError, match=f"relative.{missing}"):
        iv.probe_directions(make_probes(target_names=targets), HOOKS[1], edits.square)
    with pytest.raises(ValueError, match="theirs"):
        iv.probe_directions(make_probes(class_names=("empty", "mine", "other")), HOOKS[1], [0])
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
        run(model, games, edits, hook="blocks.9.hook_resid_post")

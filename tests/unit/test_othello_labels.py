"""Othello token rows and their labels: replayed by the rules, aligned with the positions."""

from __future__ import annotations

import numpy as np
import pytest

from mechflow.data import othello
from mechflow.experiments.othello import labels as L


def rows_of(games: othello.Games) -> np.ndarray:
    return np.concatenate([np.zeros((len(games.length), 1), int), games.tokens], axis=1)


@pytest.mark.parametrize("size", [6, 8])
def test_labels_replay_the_generators_games_one_position_later(size):
    games = othello.random_games(300, size=size, seed=5)
    rows = rows_of(games)
    got = L.label_games(rows, size)
    n = games.moves.shape[1]
    pad = np.arange(n)[None] >= games.length[:, None]
    for name in L.SQUARE_LABELS:
        ref = getattr(games, name).astype(np.int8)
        after = got[name][:, 1:]  # position p holds the board after move p
        assert (after[~pad] == ref[~pad]).all(), name
        assert (after[pad] == L.IGNORE).all(), name
    assert (got["to_move"][:, 1:][~pad] == games.next_player[~pad]).all()
    np.testing.assert_array_equal(L.game_lengths(got["valid"]), games.length)


def test_the_bos_position_holds_the_start_board():
    rows = L.othello_games(4, 6, seed=0)
    got = L.label_games(rows, 6)
    black, white, _ = othello.start_position(4, 6)
    board = othello.from_bitboards(black, white, size=6)
    np.testing.assert_array_equal(got["board"][:, 0], board)
    np.testing.assert_array_equal(got["relative"][:, 0], board)  # black to move: black is mine
    assert (got["to_move"][:, 0] == 0).all() and (got["flipped"][:, 0] == 0).all()
    legal = othello.legal_moves(black, white, 0, size=6)
    np.testing.assert_array_equal(got["legal"][:, 0] == 1, legal)
    # the first move is always one of them
    first = othello.token_to_square(rows[:, 1], 6)
    assert legal[np.arange(4), first].all()


def test_relative_follows_the_side_to_move_through_passes():
    games = othello.random_games(3000, size=6, seed=2)
    passed = (games.player[:, 1:] == games.player[:, :-1]) & (games.player[:, 1:] >= 0)
    assert passed.any(), "some game should contain a pass"
    got = L.label_games(rows_of(games), 6)
    g, t = np.argwhere(passed)[0]  # move t+1 was made by the player of move t: a pass between
    p = t + 1  # the position after move t (1-based move t + 1)
    mover = got["to_move"][g, p]
    assert mover == games.player[g, t]  # the same side moves again
    mine = othello.BLACK if mover == 0 else othello.WHITE
    board, rel = got["board"][g, p], got["relative"][g, p]
    np.testing.assert_array_equal(rel == 1, board == mine)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.__setitem__((0, 0), 5), "position 0 must be the BOS"),
        (lambda r: r.__setitem__((1, slice(3, None)), 0) or r.__setitem__((1, 8), 1),
         "after the game ended"),
        (lambda r: r.__setitem__((2, 2), r[2, 1]), "not a legal move"),
    ],
)  # fmt: skip
def test_rows_that_are_no_game_are_refused_naming_the_row(edit, message):
    rows = L.othello_games(3, 6, seed=0).copy()
    edit(rows)
    with pytest.raises(ValueError, match=message):
        L.label_games(rows, 6)


def test_games_are_played_in_chunks_each_seeded_on_its_own(monkeypatch):
    monkeypatch.setattr(L, "GAMES_PER_CHUNK", 7)
    rows = L.othello_games(20, 6, seed=4)
    assert rows.shape == (20, 33) and (rows[:, 0] == L.BOS).all()
    np.testing.assert_array_equal(L.othello_games(9, 6, seed=4), rows[:9])  # a prefix
    assert not np.array_equal(rows[:7], rows[7:14])  # the chunks' seeds differ
    assert not np.array_equal(L.othello_games(20, 6, seed=5), rows)
    L.label_games(rows, 6)  # every game is legal


def test_a_row_length_names_its_board():
    assert L.board_size_of(33) == 6 and L.board_size_of(61) == 8
    with pytest.raises(ValueError, match="no Othello board"):
        L.board_size_of(40)
    with pytest.raises(ValueError, match="a 8x8 game takes 61"):
        L.label_games(L.othello_games(2, 6, 0), 8)


def test_probe_positions_are_the_middle_of_each_game():
    valid = np.zeros((2, 33), np.int8)
    valid[0, :33] = 1  # 32 moves
    valid[1, :21] = 1  # 20 moves
    mask = L.probe_positions(valid, 5, 5)
    assert np.flatnonzero(mask[0]).tolist() == list(range(5, 28))
    assert np.flatnonzero(mask[1]).tolist() == list(range(5, 16))


def test_legal_move_targets_mark_the_legal_tokens():
    rows = L.othello_games(50, 6, seed=3)
    targets = L.legal_move_targets(rows, 33)
    legal = L.label_games(rows, 6)["legal"] == 1
    assert not targets[..., 0].any()  # the BOS/pad token is never a move
    squares = othello.token_to_square(np.arange(1, 33), 6)
    np.testing.assert_array_equal(targets[..., 1:], legal[..., squares])
    # every move played is a target of the position before it
    played = rows[:, 1:] > 0
    g, p = np.nonzero(played)
    assert targets[g, p, rows[g, p + 1]].all()
    with pytest.raises(ValueError, match="d_vocab=20"):
        L.legal_move_targets(rows, 20)

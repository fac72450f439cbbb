"""Othello games as token rows, and their board labels aligned with those rows.

A row is ``[BOS] + moves``: ``BOS`` (token 0, also the padding after a game ends) at position
0, move ``k`` (1-based) at position ``k``. Passes are not tokens: a side with no legal move is
skipped, so the player to move is not the parity of the position (it is stored, ``to_move``).

Labels are indexed like the tokens, so a probe pairs the activation at ``(game, position)``
with the labels at the same index: at position ``p`` the model has read moves ``1..p`` and
predicts move ``p + 1``, so ``board``/``relative`` are the board after move ``p`` (the start
board at the BOS), ``legal`` the squares where move ``p + 1`` may go, ``flipped`` the stones move
``p`` flipped. Arrays are ``(game, position, square)`` int8 (``to_move`` and ``valid``:
``(game, position)``), -1 where the game has ended (the probes' ``ignore_index``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Int

from mechflow.data import othello

BOS = othello.PAD
# array -> (its classes, what it says); every one (game, position, square) but the last two
CLASSES = {
    "relative": (("empty", "mine", "theirs"), "the board from the side to move (Nanda 2023)"),
    "board": (("empty", "black", "white"), "the board in colours (Li et al. 2023)"),
    "legal": (("no", "yes"), "squares where the next move may go"),
    "flipped": (("no", "yes"), "stones the last move flipped"),
    "to_move": (("black", "white"), "the side that makes the next move (per position)"),
    "valid": (("no", "yes"), "the position holds the BOS or a move (per position)"),
}
SQUARE_LABELS = ("relative", "board", "legal", "flipped")
DIMS = {k: ("seq", "pos", "square") if k in SQUARE_LABELS else ("seq", "pos") for k in CLASSES}
IGNORE = -1


def seq_len(size: int) -> int:
    """Positions of a row: the BOS and the ``size**2 - 4`` moves a game has at most."""
    return 1 + size * size - 4


GAMES_PER_CHUNK = 50_000  # random_games holds ~15 KiB of labels per 8x8 game while it plays


def othello_games(n_sequences: int, board_size: int, seed: int) -> Int[np.ndarray, "game pos"]:
    """Token rows of ``n_sequences`` uniformly random legal games (the ``othello`` dataset kind),
    played in chunks of :data:`GAMES_PER_CHUNK` (chunk c seeded by ``(seed, c)``), so millions
    of games take the memory of one chunk's labels."""
    rows = np.full((n_sequences, seq_len(board_size)), BOS, dtype=np.int32)
    for c, start in enumerate(range(0, n_sequences, GAMES_PER_CHUNK)):
        n = min(GAMES_PER_CHUNK, n_sequences - start)
        chunk_seed = int(np.random.SeedSequence([seed, c]).generate_state(1)[0])
        rows[start : start + n, 1:] = othello.random_games(
            n, size=board_size, seed=chunk_seed
        ).tokens
    return rows


def board_size_of(n_positions: int) -> int:
    """The board a row length belongs to (6x6: 33 positions, 8x8: 61)."""
    for size in othello.SIZES:
        if seq_len(size) == n_positions:
            return size
    known = {size: seq_len(size) for size in othello.SIZES}
    raise ValueError(
        f"rows of {n_positions} positions are no Othello board's (board size: positions {known})"
    )


def label_games(
    tokens: Int[np.ndarray, "game pos"], size: int, only: tuple[str, ...] = SQUARE_LABELS
) -> dict[str, Int[np.ndarray, "game pos *square"]]:
    """Replay token rows with the rules: every label array of :data:`CLASSES` (of the square
    labels, those in ``only``: 100k 6x6 games take 119 MB each).

    Refuses a row that is no game: a first token that is not the BOS, a move after padding,
    or an illegal move (named by row and position).
    """
    tokens = np.asarray(tokens)
    n_games, n_pos = tokens.shape
    if n_pos != seq_len(size):
        raise ValueError(f"rows of {n_pos} positions; a {size}x{size} game takes {seq_len(size)}")
    if (tokens[:, 0] != BOS).any():
        bad = np.flatnonzero(tokens[:, 0] != BOS)[:5].tolist()
        raise ValueError(f"rows {bad}: position 0 must be the BOS (token {BOS})")
    squares = othello.token_to_square(tokens[:, 1:], size)  # game move; -1 after the end
    played = squares >= 0
    after_end = played[:, 1:] & ~played[:, :-1]
    if after_end.any():
        row, col = np.argwhere(after_end)[0]
        raise ValueError(f"row {row}: a move at position {col + 2} after the game ended")
    n_sq = size * size
    out = {k: np.full((n_games, n_pos, n_sq), IGNORE, np.int8) for k in only}
    to_move_out = np.full((n_games, n_pos), IGNORE, np.int8)
    black, white, to_move = othello.start_position(n_games, size)
    black, white = black.copy(), white.copy()
    to_move = np.array(np.broadcast_to(to_move, (n_games,)), dtype=np.int8)
    flipped = np.zeros((n_games, n_sq), bool)
    alive = np.ones(n_games, bool)
    for p in range(n_pos):
        if p:
            move = np.where(played[:, p - 1], squares[:, p - 1], -1)
            legal_now = othello.legal_moves(black, white, to_move, size=size)
            bad = played[:, p - 1] & ~legal_now[np.arange(n_games), np.maximum(move, 0)]
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"row {row}, position {p}: square {int(move[row])} is not a legal move"
                )
            black, white, flipped = othello.apply_moves(black, white, to_move, move, size=size)
            alive = played[:, p - 1]
            to_move = np.where(alive, _next_side(black, white, to_move, size), to_move)
        legal = othello.legal_moves(black, white, to_move, size=size)
        board = othello.from_bitboards(black, white, size=size)
        mine = np.where(to_move[:, None] == 1, othello.WHITE, othello.BLACK)
        relative = np.where(board == othello.EMPTY, othello.EMPTY, np.where(board == mine, 1, 2))
        for name, value in (("board", board), ("relative", relative), ("legal", legal),
                            ("flipped", flipped if p else np.zeros_like(flipped))):  # fmt: skip
            if name in out:
                out[name][alive, p] = value[alive]
        to_move_out[alive, p] = to_move[alive]
    valid = np.zeros((n_games, n_pos), np.int8)
    valid[:, 0] = 1
    valid[:, 1:] = played
    return {**out, "to_move": to_move_out, "valid": valid}


def legal_move_targets(tokens: Int[np.ndarray, "game pos"], d_vocab: int) -> np.ndarray:
    """``(game, pos, d_vocab)`` bool: the tokens of the moves legal after each position, the
    targets of ``SoftTargetNextMove`` (none after a game's last move, so it is not scored)."""
    size = board_size_of(tokens.shape[1])
    if d_vocab < othello.d_vocab(size):
        raise ValueError(
            f"d_vocab={d_vocab} cannot hold the {othello.d_vocab(size)} tokens of {size}x{size} games"
        )
    legal = label_games(tokens, size, only=("legal",))["legal"] == 1
    square_of = othello.token_to_square(np.arange(othello.d_vocab(size)), size)
    targets = np.zeros((*tokens.shape, d_vocab), dtype=bool)
    targets[..., 1 : othello.d_vocab(size)] = legal[..., square_of[1:]]
    return targets


def _next_side(black, white, mover, size: int) -> np.ndarray:
    """Who moves after ``mover`` played: the opponent, unless they must pass; after the last
    move, the opponent (no one can move; Games' ``next_player`` says the same)."""
    opponent = (mover ^ 1).astype(np.int8)
    can = othello.legal_moves(black, white, opponent, size=size).any(1)
    mover_can = othello.legal_moves(black, white, mover, size=size).any(1)
    return np.where(~can & mover_can, mover, opponent).astype(np.int8)


def game_lengths(valid: np.ndarray) -> np.ndarray:
    """Moves of each game (positions after the BOS that hold one)."""
    return valid[:, 1:].sum(1)


def probe_positions(valid: np.ndarray, first: int, last_from_end: int) -> np.ndarray:
    """``(game, position)`` bool: the middle of each game, moves ``first .. n - last_from_end``
    (position = move number; ARENA probes moves 5 to n-5), where boards are neither the
    near-constant opening nor the crowded end."""
    n = game_lengths(valid)[:, None]
    p = np.arange(valid.shape[1])[None, :]
    return (p >= first) & (p <= n - last_from_end) & valid.astype(bool)


def label_provenance(dataset: str, tokens_sha256: str, size: int) -> dict[str, Any]:
    """What a label store records of its games (the activation stores record the same hash)."""
    return {
        "model": "othello rules",
        "model_hash": f"othello-{size}x{size}",
        "dataset": dataset,
        "dataset_sha256": tokens_sha256,
        "board_size": size,
        "classes": {k: list(v[0]) for k, v in CLASSES.items()},
        "alignment": "position p: after move p (position 0: the BOS, the start board)",
        "pass_is_a_token": False,
    }


def read_labels(
    path, *, games_sha256: str | None = None, games_from: str = "the games"
) -> tuple[dict[str, np.ndarray], int]:
    """A label store's arrays and board size; with ``games_sha256``, refused unless its games
    are those (the sha256 of the token file that ``games_from`` names)."""
    from mechflow.store import open_store

    store = open_store(path)
    prov = store.provenance
    if prov.get("model") != "othello rules":
        raise ValueError(f"{path}: not an Othello label store (made by {prov.get('model')!r})")
    if games_sha256 is not None and prov["dataset_sha256"] != games_sha256:
        raise ValueError(
            f"{path}: labels of other games than {games_from} (dataset {prov['dataset']!r}, "
            f"sha256 {prov['dataset_sha256'][:12]}... vs {games_sha256[:12]}...)"
        )
    arrays = {name: store.numpy(name) for name in prov["hooks"]}
    arrays["tokens"] = store.tokens()
    return arrays, int(prov["board_size"])

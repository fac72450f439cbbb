"""Othello rules and random legal games, vectorised over games, for OthelloGPT-style experiments.

Boards are pairs of uint64 bitboards (``black``, ``white``), bit ``row * size + col`` set where
that side has a stone, so the rules cost a few dozen numpy operations per move for all games
at once (8 directions as shifts with edge masks) instead of a Python walk per square per game.
``size`` is the side of the board: even, 6 or 8 (4×4 is degenerate, and a board above 8×8 does
not fit in 64 bits).

Start position: the 4 centre squares, white on the main diagonal (d4 and e5 on 8×8, squares 27
and 36), black on the other two; black moves first. A side with no legal move passes
implicitly (passes are not moves or tokens, as in Li et al. 2023); the game ends when neither
side can move. Players are 0 (black) and 1 (white); board labels are ``EMPTY``/``BLACK``/``WHITE``
and ``EMPTY``/``MINE``/``THEIRS``.

Token vocabulary: id 0 (``PAD``) is free, for padding or a BOS a model may want; the
``size * size - 4`` playable squares (every square but the 4 centre ones, which are never
played) take ids 1.. in square order, so ``d_vocab(8) == 61`` (Li et al.'s 61 is 60 squares +
pass; here the pass slot is the pad, since passes are not tokens).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Int, UInt64

EMPTY, BLACK, WHITE = 0, 1, 2
MINE, THEIRS = 1, 2
PAD = 0
SIZES = (6, 8)
Bitboards = UInt64[np.ndarray, " games"]

# (d_row, d_col) of the 8 rays: the first 4 move to higher square indices (left shifts).
_DIRECTIONS = ((0, 1), (1, -1), (1, 0), (1, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1))


@dataclass(frozen=True)
class _Geometry:
    """Per-size constants: masks that drop bits a shift wraps across an edge or off the board."""

    size: int
    n_squares: int
    full: np.uint64
    shifts: np.ndarray  # (2, 4, 1) uint64: left shifts, then right shifts
    dest: np.ndarray  # (2, 4, 1) uint64: squares a stone may land on in each direction
    centre: tuple[int, ...]


@functools.cache
def _geometry(size: int) -> _Geometry:
    if not isinstance(size, int | np.integer) or size not in SIZES:
        raise ValueError(
            f"size must be an even board side in {SIZES} (4x4 is degenerate, above 8x8 does "
            f"not fit a uint64 bitboard), got size={size!r}"
        )
    size = int(size)
    n = size * size
    full = (1 << n) - 1
    col0 = sum(1 << (r * size) for r in range(size))
    col_last = col0 << (size - 1)
    shifts, dest = [], []
    for dr, dc in _DIRECTIONS:
        shifts.append(abs(dr * size + dc))
        # A step east lands a stone from the last column in column 0 of the next row: drop it.
        dest.append(full & ~(col0 if dc == 1 else col_last if dc == -1 else 0))
    half = (2, 4, 1)
    mid = size // 2
    centre = tuple(r * size + c for r in (mid - 1, mid) for c in (mid - 1, mid))
    return _Geometry(
        size=size,
        n_squares=n,
        full=np.uint64(full),
        shifts=np.array(shifts, dtype=np.uint64).reshape(half),
        dest=np.array(dest, dtype=np.uint64).reshape(half),
        centre=centre,
    )


def _shift(x: np.ndarray, half: int, g: _Geometry) -> np.ndarray:
    """One step along each of the 4 directions of ``half`` (0: towards higher squares)."""
    return (x << g.shifts[half] if half == 0 else x >> g.shifts[half]) & g.dest[half]


def _legal(own: np.ndarray, opp: np.ndarray, g: _Geometry) -> np.ndarray:
    """Bitboard of empty squares from which some ray of ``opp`` stones ends on an ``own`` stone."""
    empty = ~(own | opp) & g.full
    moves = np.zeros_like(own)
    for half in (0, 1):
        ray = _shift(own, half, g) & opp  # (4, games): opp stones next to own, per direction
        for _ in range(g.size - 3):  # a ray holds at most size - 2 opp stones
            ray |= _shift(ray, half, g) & opp
        moves |= np.bitwise_or.reduce(_shift(ray, half, g), axis=0)
    return moves & empty


def _flips(move: np.ndarray, own: np.ndarray, opp: np.ndarray, g: _Geometry) -> np.ndarray:
    """Bitboard of the stones that playing the one-bit ``move`` for ``own`` flips."""
    flips = np.zeros_like(own)
    for half in (0, 1):
        ray = _shift(move, half, g) & opp
        for _ in range(g.size - 3):
            ray |= _shift(ray, half, g) & opp
        closed = (_shift(ray, half, g) & own) != 0
        flips |= np.bitwise_or.reduce(np.where(closed, ray, np.uint64(0)), axis=0)
    return flips


def _unpack(bits: np.ndarray, n_squares: int) -> np.ndarray:
    """(...,) uint64 bitboards -> (..., n_squares) uint8 0/1, square i = bit i."""
    as_bytes = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8).reshape(*bits.shape, 8)
    unpacked = np.unpackbits(as_bytes, axis=-1, bitorder="little")
    return unpacked if n_squares == 64 else np.ascontiguousarray(unpacked[..., :n_squares])


def _pack(mask: np.ndarray) -> np.ndarray:
    """(..., n_squares) bool -> (...,) uint64 bitboards."""
    weights = np.uint64(1) << np.arange(mask.shape[-1], dtype=np.uint64)
    return np.bitwise_or.reduce(np.where(mask, weights, np.uint64(0)), axis=-1)


def _sides(black, white, to_move):
    """(own, opp) bitboards of the player to move (0 black, 1 white), and where white moves."""
    to_move = np.asarray(to_move)
    if not np.isin(to_move, (0, 1)).all():
        raise ValueError("to_move must be 0 (black) or 1 (white)")
    black, white, white_moves = np.broadcast_arrays(
        np.asarray(black, dtype=np.uint64), np.asarray(white, dtype=np.uint64), to_move == 1
    )
    return np.where(white_moves, white, black), np.where(white_moves, black, white), white_moves


def start_position(
    n_games: int, size: int
) -> tuple[Bitboards, Bitboards, Int[np.ndarray, " games"]]:
    """(black, white, to_move) of ``n_games`` fresh games: black to move."""
    g = _geometry(size)
    a, b, c, d = g.centre  # (mid-1, mid-1), (mid-1, mid), (mid, mid-1), (mid, mid)
    black = np.full(n_games, (1 << b) | (1 << c), dtype=np.uint64)
    white = np.full(n_games, (1 << a) | (1 << d), dtype=np.uint64)
    return black, white, np.zeros(n_games, dtype=np.int8)


def to_bitboards(
    board: Int[np.ndarray, "*batch squares"],
) -> tuple[UInt64[np.ndarray, "*batch"], UInt64[np.ndarray, "*batch"]]:
    """(black, white) bitboards of EMPTY/BLACK/WHITE boards, for building positions by hand."""
    board = np.asarray(board)
    size = int(round(board.shape[-1] ** 0.5))
    if size * size != board.shape[-1]:
        raise ValueError(f"boards of {board.shape[-1]} squares are not square (size x size)")
    _geometry(size)
    return _pack(board == BLACK), _pack(board == WHITE)


def from_bitboards(black, white, *, size: int) -> Int[np.ndarray, "*batch squares"]:
    """EMPTY/BLACK/WHITE int8 boards of bitboards."""
    g = _geometry(size)
    black, white = np.asarray(black, dtype=np.uint64), np.asarray(white, dtype=np.uint64)
    return (_unpack(black, g.n_squares) + 2 * _unpack(white, g.n_squares)).astype(np.int8)


def legal_moves(black, white, to_move, *, size: int) -> Bool[np.ndarray, "games squares"]:
    """Where the player to move (0 black, 1 white; scalar or per game) may play."""
    g = _geometry(size)
    own, opp, _ = _sides(black, white, to_move)
    return _unpack(_legal(own, opp, g), g.n_squares).view(bool)


def apply_moves(
    black, white, to_move, moves, *, size: int
) -> tuple[Bitboards, Bitboards, Bool[np.ndarray, "games squares"]]:
    """Play one move per game: new (black, white) and the flipped squares.

    A move of -1 leaves that game unchanged (a finished game in a batch); an illegal move is
    refused, since silently placing a stone that flips nothing corrupts every later label.
    """
    g = _geometry(size)
    own, opp, white_moves = _sides(black, white, to_move)
    moves = np.broadcast_to(np.asarray(moves), own.shape)
    if ((moves < -1) | (moves >= g.n_squares)).any():
        raise ValueError(f"moves must be squares in [0, {g.n_squares}) or -1, got {moves}")
    one = np.uint64(1)
    bit = np.where(moves >= 0, one << np.maximum(moves, 0).astype(np.uint64), np.uint64(0))
    flips = _flips(bit, own, opp, g)
    bad = (bit != 0) & (((bit & (own | opp)) != 0) | (flips == 0))
    if bad.any():
        games = np.flatnonzero(bad)
        raise ValueError(f"illegal move in game(s) {games[:10].tolist()}: {moves[bad][:10]}")
    own, opp = own | bit | flips, opp & ~flips
    black_new, white_new = np.where(white_moves, opp, own), np.where(white_moves, own, opp)
    return black_new, white_new, _unpack(flips, g.n_squares).view(bool)


@dataclass(frozen=True)
class Games:
    """Random games with per-move labels; index ``t`` of every per-move array is move ``t``.

    Passes are implicit, so ``player`` (who made move t) is not move-number parity: a side
    that cannot move is skipped and the other side moves twice in a row.

    ``next_player[g, t]`` is the side that makes move t + 1 (after any pass); after a game's last
    move (no one can move) it is the opponent of ``player[g, t]``. ``relative`` is the board
    after move t from that side's view (Nanda 2023's basis: mine = the player about to move,
    whose move the model predicts next), and ``legal`` its legal moves (all False after the
    last move). Entries at t >= ``length`` are padding: -1 in the int arrays, False in masks.

    Args:
        size: board side.
        moves: (games, moves) int8 squares ``row * size + col``, -1 padded.
        length: (games,) number of moves made.
        player: (games, moves) int8, 0 black / 1 white made move t.
        next_player: (games, moves) int8, the side "mine" refers to in ``relative``.
        board: (games, moves, squares) int8 EMPTY/BLACK/WHITE after move t.
        relative: (games, moves, squares) int8 EMPTY/MINE/THEIRS after move t.
        legal: (games, moves, squares) bool, legal squares for move t + 1.
        flipped: (games, moves, squares) bool, stones that move t flipped.
    """

    size: int
    moves: Int[np.ndarray, "games moves"]
    length: Int[np.ndarray, " games"]
    player: Int[np.ndarray, "games moves"]
    next_player: Int[np.ndarray, "games moves"]
    board: Int[np.ndarray, "games moves squares"]
    relative: Int[np.ndarray, "games moves squares"]
    legal: Bool[np.ndarray, "games moves squares"]
    flipped: Bool[np.ndarray, "games moves squares"]

    @property
    def tokens(self) -> Int[np.ndarray, "games moves"]:
        """The moves as token ids (``PAD`` after the game ends)."""
        return square_to_token(self.moves, self.size)


def _select(legal: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Index of the ``r``-th (from 0) set bit of each bitboard, by binary search on popcounts."""
    pos = np.zeros(legal.shape, dtype=np.uint64)
    r = r.astype(np.uint64)
    for width in (32, 16, 8, 4, 2, 1):
        low = np.bitwise_count((legal >> pos) & np.uint64((1 << width) - 1)).astype(np.uint64)
        skip = r >= low
        pos += np.where(skip, np.uint64(width), np.uint64(0))
        r -= np.where(skip, low, np.uint64(0))
    return pos


def _resolve(black, white, to_move, done, g):
    """Legal moves of the side to move next, passing for a side that has none; ends games."""
    own, opp, _ = _sides(black, white, to_move)
    legal = np.where(done, np.uint64(0), _legal(own, opp, g))
    stuck = np.flatnonzero((legal == 0) & ~done)
    if stuck.size:
        other = _legal(opp[stuck], own[stuck], g)
        passes = other != 0
        to_move[stuck[passes]] ^= 1
        legal[stuck] = other
        done[stuck[~passes]] = True
    return legal


def random_games(
    n_games: int,
    size: int = 8,
    seed: int = 0,
    *,
    start: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Games:
    """``n_games`` games of uniformly random legal moves, from the start position or ``start``.

    ``start`` is (black, white, to_move) per game, for positions built by hand (tests). Game i
    depends only on (size, seed, i, its start), not on ``n_games``: each game draws from its own
    row of uniforms. The labels take ~15 KiB per 8×8 game (5 KiB on 6×6): make millions of
    games in chunks, a seed per chunk.
    """
    g = _geometry(size)
    black, white, to_move = start if start is not None else start_position(n_games, size)
    black = np.array(np.broadcast_to(black, (n_games,)), dtype=np.uint64)
    white = np.array(np.broadcast_to(white, (n_games,)), dtype=np.uint64)
    to_move = np.array(np.broadcast_to(to_move, (n_games,)), dtype=np.int8)
    if ((black & white) != 0).any() or (((black | white) & ~g.full) != 0).any():
        raise ValueError("start boards overlap or have stones off the board")
    empties = np.bitwise_count(~(black | white) & g.full)
    n_moves = g.n_squares - 4 if start is None else int(empties.max(initial=0))
    uniforms = np.random.default_rng(seed).random((n_games, n_moves))

    hist = np.zeros((4, n_moves, n_games), dtype=np.uint64)  # black, white, flipped, legal
    moves = np.full((n_moves, n_games), -1, dtype=np.int8)
    player = np.full((n_moves, n_games), -1, dtype=np.int8)
    next_player = np.full((n_moves, n_games), -1, dtype=np.int8)
    length = np.zeros(n_games, dtype=np.int32)
    done = np.zeros(n_games, dtype=bool)
    legal = _resolve(black, white, to_move, done, g)
    for t in range(n_moves):
        active = ~done
        if not active.any():
            break
        count = np.bitwise_count(legal)
        square = _select(legal, np.floor(uniforms[:, t] * count))
        bit = np.where(active, np.uint64(1) << square, np.uint64(0))
        own, opp, white_moves = _sides(black, white, to_move)
        flips = _flips(bit, own, opp, g)
        own, opp = own | bit | flips, opp & ~flips
        black, white = np.where(white_moves, opp, own), np.where(white_moves, own, opp)
        moves[t] = np.where(active, square.astype(np.int8), -1)
        player[t] = np.where(active, to_move, -1)
        length += active
        to_move[active] ^= 1
        legal = _resolve(black, white, to_move, done, g)
        next_player[t] = np.where(active, to_move, -1)
        hist[:, t] = black, white, flips, legal

    n = g.n_squares
    hist = hist.transpose(0, 2, 1)  # (4, games, moves)
    white_next = next_player.T == 1
    mine = np.where(white_next, hist[1], hist[0])
    theirs = np.where(white_next, hist[0], hist[1])
    padding = np.arange(n_moves) >= length[:, None]  # games moves
    board = _unpack(hist[0], n) + 2 * _unpack(hist[1], n)
    relative = _unpack(mine, n) + 2 * _unpack(theirs, n)
    board[padding] = relative[padding] = 255  # -1 as int8
    return Games(
        size=g.size,
        moves=moves.T.copy(),
        length=length,
        player=player.T.copy(),
        next_player=next_player.T.copy(),
        board=board.view(np.int8),
        relative=relative.view(np.int8),
        legal=_unpack(hist[3], n).view(bool),
        flipped=_unpack(hist[2], n).view(bool),
    )


@functools.cache
def _vocabulary(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(token of each square, -1 for the centre; square of each token, -1 for PAD)."""
    g = _geometry(size)
    playable = np.array([s for s in range(g.n_squares) if s not in g.centre])
    token_of = np.full(g.n_squares, -1, dtype=np.int64)
    token_of[playable] = np.arange(1, playable.size + 1)
    square_of = np.concatenate([[-1], playable]).astype(np.int64)
    return token_of, square_of


def d_vocab(size: int) -> int:
    """Token ids in use: ``PAD`` plus the ``size * size - 4`` playable squares."""
    return _geometry(size).n_squares - 3


def square_to_token(squares, size: int) -> np.ndarray:
    """Token ids of squares (-1, a padded move, becomes ``PAD``); centre squares are refused."""
    squares = np.asarray(squares)
    token_of, _ = _vocabulary(size)
    if ((squares < -1) | (squares >= token_of.size)).any():
        raise ValueError(f"squares must be in [-1, {token_of.size})")
    tokens = np.where(squares >= 0, token_of[np.maximum(squares, 0)], PAD)
    if (tokens < 0).any():
        raise ValueError("the 4 centre squares are never played and have no token")
    return tokens.astype(np.int64)


def token_to_square(tokens, size: int) -> np.ndarray:
    """Squares of token ids (``PAD`` becomes -1)."""
    tokens = np.asarray(tokens)
    _, square_of = _vocabulary(size)
    if ((tokens < 0) | (tokens >= square_of.size)).any():
        raise ValueError(f"tokens must be in [0, {square_of.size})")
    return square_of[tokens]

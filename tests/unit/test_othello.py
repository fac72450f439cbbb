"""Othello rules and random games, against a plain per-square reference that walks the 8 rays."""

import numpy as np
import pytest

from mechflow.data.othello import (
    BLACK,
    EMPTY,
    MINE,
    PAD,
    THEIRS,
    WHITE,
    apply_moves,
    d_vocab,
    from_bitboards,
    legal_moves,
    random_games,
    square_to_token,
    start_position,
    to_bitboards,
    token_to_square,
)

RAYS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


# --- the slow reference: a list of EMPTY/BLACK/WHITE per square, stone = player + 1 ------------


def ref_start(size):
    board = [EMPTY] * (size * size)
    m = size // 2
    board[(m - 1) * size + m - 1] = board[m * size + m] = WHITE
    board[(m - 1) * size + m] = board[m * size + m - 1] = BLACK
    return board


def ref_flips(board, size, square, stone):
    """Stones flipped by ``stone`` playing ``square``: each ray of opponent stones closed by ours."""
    if board[square] != EMPTY:
        return []
    other = BLACK + WHITE - stone
    row, col = divmod(square, size)
    flips = []
    for dr, dc in RAYS:
        r, c, ray = row + dr, col + dc, []
        while 0 <= r < size and 0 <= c < size and board[r * size + c] == other:
            ray.append(r * size + c)
            r, c = r + dr, c + dc
        if ray and 0 <= r < size and 0 <= c < size and board[r * size + c] == stone:
            flips += ray
    return flips


def ref_legal(board, size, stone):
    return [s for s in range(size * size) if ref_flips(board, size, s, stone)]


def ref_play(board, size, square, stone):
    flips = ref_flips(board, size, square, stone)
    assert flips, "reference: illegal move"
    board = list(board)
    for s in [square, *flips]:
        board[s] = stone
    return board, flips


def mask(squares, n):
    out = np.zeros(n, dtype=bool)
    out[list(squares)] = True
    return out


def bitboards(board):
    black, white = to_bitboards(np.array([board]))
    return black, white


def check_games(games, size, start=None):
    """Replay every game with the reference; every label must equal the reference's."""
    n = size * size
    for g in range(len(games.length)):
        if start is None:
            board, to_move = ref_start(size), 0
        else:
            board, to_move = list(start[0][g]), int(start[1][g])
        length = int(games.length[g])
        legal = ref_legal(board, size, to_move + 1)
        if not legal:
            to_move ^= 1
            legal = ref_legal(board, size, to_move + 1)
        for t in range(length):
            assert legal, f"game {g} moves at {t} though no one can move"
            square = int(games.moves[g, t])
            assert square in legal and games.player[g, t] == to_move
            board, flips = ref_play(board, size, square, to_move + 1)
            np.testing.assert_array_equal(games.flipped[g, t], mask(flips, n))
            np.testing.assert_array_equal(games.board[g, t], board)
            to_move ^= 1
            legal = ref_legal(board, size, to_move + 1)
            if not legal:  # pass, or the end of the game (then "next" is by alternation)
                other = ref_legal(board, size, 2 - to_move)
                if other:
                    to_move, legal = to_move ^ 1, other
            assert games.next_player[g, t] == to_move
            if t + 1 < length:
                assert games.player[g, t + 1] == to_move
            np.testing.assert_array_equal(games.legal[g, t], mask(legal, n))
            mine = BLACK if to_move == 0 else WHITE
            want = np.where(np.array(board) == EMPTY, EMPTY, THEIRS)
            want[np.array(board) == mine] = MINE
            np.testing.assert_array_equal(games.relative[g, t], want)
        assert not ref_legal(board, size, BLACK) and not ref_legal(board, size, WHITE)
        assert (games.moves[g, length:] == -1).all() and (games.player[g, length:] == -1).all()
        assert (games.board[g, length:] == -1).all() and (games.relative[g, length:] == -1).all()
        assert not games.legal[g, length:].any() and not games.flipped[g, length:].any()


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [(8, {19, 26, 37, 44}), (6, {8, 13, 22, 27})])
def test_opening_moves(size, expected):
    black, white, to_move = start_position(3, size)
    np.testing.assert_array_equal(from_bitboards(black, white, size=size)[0], ref_start(size))
    legal = legal_moves(black, white, to_move, size=size)
    assert legal.shape == (3, size * size) and legal.dtype == bool
    assert set(np.flatnonzero(legal[0])) == expected == set(ref_legal(ref_start(size), size, BLACK))
    # White's view of the same position: the mirror image.
    assert set(np.flatnonzero(legal_moves(black, white, 1, size=size)[0])) == set(
        ref_legal(ref_start(size), size, WHITE)
    )


@pytest.mark.parametrize("size", [6, 8])
@pytest.mark.parametrize(("dr", "dc"), RAYS)
def test_flips_along_each_ray(size, dr, dc):
    n = size * size
    row = col = 2 if size == 6 else 3
    move = row * size + col
    # As many white stones as fit before the edge, closed by black; then a single stone.
    steps = min(
        (size - 1 - row) if dr == 1 else row if dr == -1 else size,
        (size - 1 - col) if dc == 1 else col if dc == -1 else size,
    )
    for n_white in sorted({1, steps - 1}):
        board = [EMPTY] * n
        ray = [(row + k * dr) * size + col + k * dc for k in range(1, n_white + 2)]
        for s in ray[:-1]:
            board[s] = WHITE
        board[ray[-1]] = BLACK
        black, white = bitboards(board)
        assert set(np.flatnonzero(legal_moves(black, white, 0, size=size)[0])) == {move} | set(
            ref_legal(board, size, BLACK)
        )
        new_black, new_white, flipped = apply_moves(black, white, 0, move, size=size)
        np.testing.assert_array_equal(flipped[0], mask(ray[:-1], n))
        after, _ = ref_play(board, size, move, BLACK)
        np.testing.assert_array_equal(from_bitboards(new_black, new_white, size=size)[0], after)
        # The same ray run into the edge (no closing stone) flips nothing: not a move.
        board[ray[-1]] = WHITE if n_white + 1 == steps else EMPTY
        black, white = bitboards(board)
        assert not legal_moves(black, white, 0, size=size)[0, move]
        with pytest.raises(ValueError, match="illegal"):
            apply_moves(black, white, 0, move, size=size)


def test_one_move_flips_several_rays_and_leaves_open_ones():
    size, n = 8, 64
    move = 4 * 8 + 3  # (4, 3)
    board = [EMPTY] * n
    closed = {(0, 1): 3, (1, 0): 2, (-1, -1): 1, (1, 1): 2, (-1, 1): 3}  # ray -> white stones
    flipped = []
    for (dr, dc), k in closed.items():
        squares = [(4 + i * dr) * size + 3 + i * dc for i in range(1, k + 2)]
        for s in squares[:-1]:
            board[s] = WHITE
        board[squares[-1]] = BLACK
        flipped += squares[:-1]
    board[3 * 8 + 3] = WHITE  # (-1, 0): white then empty: open, not flipped
    board[4 * 8 + 2] = board[4 * 8 + 1] = WHITE  # (0, -1): two whites, then empty (4, 0): open
    black, white = bitboards(board)
    new_black, new_white, flips = apply_moves(black, white, 0, move, size=size)
    assert set(np.flatnonzero(flips[0])) == set(flipped) == set(ref_flips(board, size, move, BLACK))
    after, _ = ref_play(board, size, move, BLACK)
    np.testing.assert_array_equal(from_bitboards(new_black, new_white, size=size)[0], after)


@pytest.mark.parametrize("size", [6, 8])
def test_rays_do_not_wrap_around_edges(size):
    n = size * size
    # Squares adjacent by index but on opposite edges: (r, size-1) and (r+1, 0).
    for r in range(size - 1):
        right, left = r * size + size - 1, (r + 1) * size
        for move, line in ((left, [right, right - 1]), (right, [left, left + 1])):
            board = [EMPTY] * n
            board[line[0]], board[line[1]] = WHITE, BLACK
            black, white = bitboards(board)
            assert not legal_moves(black, white, 0, size=size)[0, move]
            assert move not in ref_legal(board, size, BLACK)


@pytest.mark.parametrize("size", [6, 8])
def test_random_positions_match_reference(size):
    """Legal moves of both sides and the flips of every legal move, on random crowded boards."""
    rng = np.random.default_rng(size)
    n = size * size
    boards = rng.choice([EMPTY, BLACK, WHITE], p=[0.4, 0.3, 0.3], size=(200, n))
    black, white = to_bitboards(boards)
    for player in (0, 1):
        legal = legal_moves(black, white, player, size=size)
        for board, row in zip(boards.tolist(), legal, strict=True):
            assert set(np.flatnonzero(row)) == set(ref_legal(board, size, player + 1))
        # Play the first legal move of every game that has one (-1: leave the game be).
        first = np.where(legal.any(1), legal.argmax(1), -1)
        new_black, new_white, flipped = apply_moves(black, white, player, first, size=size)
        after = from_bitboards(new_black, new_white, size=size)
        for i, board in enumerate(boards.tolist()):
            if first[i] < 0:
                np.testing.assert_array_equal(after[i], board)
                assert not flipped[i].any()
                continue
            want, flips = ref_play(board, size, int(first[i]), player + 1)
            np.testing.assert_array_equal(after[i], want)
            assert set(np.flatnonzero(flipped[i])) == set(flips)


def test_forced_pass_repeats_the_player():
    size, n = 8, 64
    board = [EMPTY] * n
    board[0], board[1] = BLACK, WHITE  # row 0: B W .
    board[56], board[57] = BLACK, WHITE  # row 7: B W . (55 -> 56 -> 57 would wrap)
    black, white = bitboards(board)
    assert set(np.flatnonzero(legal_moves(black, white, 0, size=size)[0])) == {2, 58}
    assert not legal_moves(black, white, 1, size=size).any()
    games = random_games(8, size, seed=0, start=(black, white, 0))
    assert (games.length == 2).all()
    np.testing.assert_array_equal(games.player[:, :2], 0)  # black, white passes, black
    np.testing.assert_array_equal(games.next_player[:, 0], 0)  # mine = black after the pass
    assert {tuple(sorted(m[:2])) for m in games.moves} == {(2, 58)}
    assert (games.relative[:, 0][games.board[:, 0] == BLACK] == MINE).all()
    check_games(games, size, start=([board] * 8, [0] * 8))
    # White to move at the start passes at once: black makes the first move.
    games = random_games(4, size, seed=1, start=(black, white, 1))
    np.testing.assert_array_equal(games.player[:, :2], 0)
    check_games(games, size, start=([board] * 4, [1] * 4))


def test_finished_games():
    size, n = 6, 36
    full = [BLACK] * n
    full[5] = WHITE
    only_black = [EMPTY] * n
    for s in (14, 15, 20, 21):
        only_black[s] = BLACK
    for board in (full, only_black):  # full, and not full but neither side has a stone to flank
        black, white = bitboards(board)
        assert not legal_moves(black, white, 0, size=size).any()
        assert not legal_moves(black, white, 1, size=size).any()
        games = random_games(3, size, seed=0, start=(black, white, 0))
        assert (games.length == 0).all() and (games.moves == -1).all()
    # One empty square left that black can fill: one move, then no one can move.
    board = [BLACK] * n
    board[0], board[1] = EMPTY, WHITE
    black, white = bitboards(board)
    for to_move in (0, 1):  # white cannot move here, so black moves either way
        games = random_games(2, size, seed=0, start=(black, white, to_move))
        assert (games.length == 1).all() and (games.moves[:, 0] == 0).all()
        assert (games.player[:, 0] == 0).all() and (games.next_player[:, 0] == 1).all()
        assert not games.legal.any() and (games.board[:, 0] == BLACK).all()


@pytest.mark.parametrize("size", [6, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_games_replay_under_reference(size, seed):
    games = random_games(200, size, seed=seed)
    n_moves, n = size * size - 4, size * size
    assert games.moves.shape == games.player.shape == (200, n_moves)
    assert games.board.shape == games.relative.shape == games.legal.shape == (200, n_moves, n)
    assert games.board.dtype == games.relative.dtype == np.int8 and games.legal.dtype == bool
    check_games(games, size)


def test_random_games_have_passes_and_early_ends():
    """The cases the replay checks are really there: passes, and games ending before full."""
    for size in (6, 8):
        games = random_games(300, size, seed=0)
        p = games.player
        passed = ((p[:, 1:] == p[:, :-1]) & (p[:, 1:] >= 0)).any(1)
        assert 0.2 < passed.mean() < 0.6
        assert (games.length < size * size - 4).any()


def test_moves_are_uniform_among_legal():
    games = random_games(4000, 8, seed=5)
    counts = np.bincount(games.moves[:, 0], minlength=64)[[19, 26, 37, 44]]
    assert counts.sum() == 4000 and (abs(counts - 1000) < 150).all()
    # Later plies: the chosen move's rank among the legal ones, over its count, is uniform.
    t = 20
    playing = np.flatnonzero(games.length > t)
    legal = games.legal[playing, t - 1]
    chosen = games.moves[playing, t]
    rank = (np.cumsum(legal, 1)[np.arange(playing.size), chosen] - 0.5) / legal.sum(1)
    assert abs(rank.mean() - 0.5) < 0.03


def test_seeded_and_independent_of_batch():
    a, b = random_games(40, 8, seed=3), random_games(40, 8, seed=3)
    fields = ("moves", "length", "player", "next_player", "board", "relative", "legal", "flipped")
    for field in fields:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.moves, random_games(40, 8, seed=4).moves)
    np.testing.assert_array_equal(random_games(10, 8, seed=3).board, a.board[:10])


@pytest.mark.parametrize("size", [5, 7, 4, 10])
def test_bad_sizes_refused(size):
    for call in (
        lambda: random_games(2, size, seed=0),
        lambda: start_position(2, size),
        lambda: legal_moves(0, 0, 0, size=size),
        lambda: d_vocab(size),
        lambda: square_to_token([0], size),
        lambda: to_bitboards(np.zeros((1, size * size), dtype=np.int8)),
    ):
        with pytest.raises(ValueError, match="size"):
            call()


@pytest.mark.parametrize("size", [6, 8])
def test_token_vocabulary(size):
    n = size * size
    centre = {s for s, v in enumerate(ref_start(size)) if v != EMPTY}
    playable = [s for s in range(n) if s not in centre]
    assert d_vocab(size) == n - 3 == len(playable) + 1
    tokens = square_to_token(playable, size)
    np.testing.assert_array_equal(tokens, np.arange(1, n - 3))
    np.testing.assert_array_equal(token_to_square(tokens, size), playable)
    assert square_to_token(-1, size) == PAD and token_to_square(PAD, size) == -1
    for s in centre:
        with pytest.raises(ValueError, match="centre"):
            square_to_token(s, size)
    games = random_games(20, size, seed=0)
    np.testing.assert_array_equal(token_to_square(games.tokens, size), games.moves)
    valid = games.moves >= 0
    assert (games.tokens[valid] >= 1).all() and (games.tokens[~valid] == PAD).all()
    if size == 8:
        assert square_to_token([0, 26, 37, 63], 8).tolist() == [1, 27, 34, 60]

"""How fast does mechflow generate random legal Othello games, against a per-square Python loop?

Side by side in one process, interleaved and rotated over ``--repeats`` (5), for each board size:

- ours: ``mechflow.data.othello.random_games(--games, size, seed)``, all games at once on
  uint64 bitboards, with every label the OthelloGPT experiment reads (boards after each move
  in black/white and mine/theirs, next legal moves, flips, players).
- baseline: a plain Python generator in the style of the tests' reference (and of
  othello_world): a list per board, the 8 rays walked from each square, one game at a time;
  it produces the move sequence only, so it does less work than ours.

Games/s is the median over repeats (best beside it); the ratio is the median of the per-repeat
ratios. Both print the share of games with a pass and the mean game length, which must agree
(same rules, different code). Target (OthelloGPT issue): >= 10,000 games/s on 8x8.

    .venv/bin/python benchmarks/othello_games.py            # both sizes, ~10 s on 2 cores
    .venv/bin/python benchmarks/othello_games.py --size 8 --repeats 9
    .venv/bin/python benchmarks/othello_games.py --quick    # smoke run, ~1 s
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

RAYS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
BASELINE_GAMES = {8: 300, 6: 1000}  # about 1 s each
TARGET = {8: 10_000.0}


def python_flips(board: list[int], size: int, square: int, stone: int) -> list[int]:
    if board[square]:
        return []
    other = 3 - stone
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


def python_game(size: int, rng: random.Random) -> list[tuple[int, int]]:
    """One random game as (player, square) pairs; a side with no move passes."""
    board = [0] * (size * size)
    m = size // 2
    board[(m - 1) * size + m - 1] = board[m * size + m] = 2
    board[(m - 1) * size + m] = board[m * size + m - 1] = 1
    player, moves, passed = 0, [], False
    while True:
        legal = {}
        for square in range(size * size):
            flips = python_flips(board, size, square, player + 1)
            if flips:
                legal[square] = flips
        if not legal:
            if passed:
                return moves
            player, passed = 1 - player, True
            continue
        square = rng.choice(sorted(legal))
        for s in [square, *legal[square]]:
            board[s] = player + 1
        moves.append((player, square))
        player, passed = 1 - player, False


def python_games(n_games: int, size: int, seed: int) -> list[list[tuple[int, int]]]:
    rng = random.Random(seed)
    return [python_game(size, rng) for _ in range(n_games)]


def stats_ours(games) -> tuple[float, float]:
    p = games.player
    passed = ((p[:, 1:] == p[:, :-1]) & (p[:, 1:] >= 0)).any(1)
    return float(passed.mean()), float(games.length.mean())


def stats_python(games) -> tuple[float, float]:
    passed = [any(a[0] == b[0] for a, b in zip(g, g[1:], strict=False)) for g in games]
    return float(np.mean(passed)), float(np.mean([len(g) for g in games]))


def run_size(size: int, args) -> None:
    from mechflow.data.othello import random_games

    n_base = args.baseline_games or BASELINE_GAMES[size]
    variants = {
        "ours": (args.games, lambda seed: random_games(args.games, size, seed=seed)),
        "python per-square [baseline]": (n_base, lambda seed: python_games(n_base, size, seed)),
    }
    random_games(args.games, size, seed=0)  # warm-up: the first call faults its memory in
    rate: dict[str, list[float]] = {name: [] for name in variants}
    last = {}
    names = list(variants)
    for repeat in range(args.repeats):
        for name in names[repeat % 2 :] + names[: repeat % 2]:
            n, fn = variants[name]
            last.pop(name, None)  # free the last result first: its memory is reused, not faulted
            t0 = time.perf_counter()
            last[name] = fn(repeat)
            rate[name].append(n / (time.perf_counter() - t0))
    ratios = [
        o / b for o, b in zip(rate["ours"], rate["python per-square [baseline]"], strict=True)
    ]
    ours_games = last["ours"]
    nbytes = sum(
        getattr(ours_games, f).nbytes for f in ("moves", "player", "next_player", "board")
    ) + sum(getattr(ours_games, f).nbytes for f in ("relative", "legal", "flipped", "length"))
    print(f"\n{size}x{size}: ours {args.games} games per call, baseline {n_base} games per call")
    print(f"{'variant':30} {'games/s':>10} {'best':>10} {'with pass':>10} {'mean len':>9}")
    for name, (passed, mean_len) in (
        ("ours", stats_ours(ours_games)),
        ("python per-square [baseline]", stats_python(last["python per-square [baseline]"])),
    ):
        med, best = statistics.median(rate[name]), max(rate[name])
        print(f"{name:30} {med:10.0f} {best:10.0f} {passed:10.1%} {mean_len:9.2f}")
    med_ours, ratio = statistics.median(rate["ours"]), statistics.median(ratios)
    target = TARGET.get(size)
    verdict = (
        f" (target >= {target:,.0f}: {'met' if med_ours >= target else 'MISSED'})" if target else ""
    )
    print(
        f"{size}x{size}: ours {med_ours:,.0f} games/s{verdict}, {ratio:.0f}x the per-square "
        f"baseline (per-repeat ratios {min(ratios):.0f}-{max(ratios):.0f}x); "
        f"labels {nbytes / args.games / 1024:.0f} KiB per game"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("6", "8", "both"), default="both")
    parser.add_argument("--games", type=int, default=10_000, help="games per call of ours")
    parser.add_argument(
        "--baseline-games", type=int, default=None, help="games per baseline call (~1 s)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, few games")
    args = parser.parse_args(argv)
    if args.quick:
        args.games, args.baseline_games, args.repeats = 1000, 30, 1

    from mechflow import runtime

    runtime.retain_freed_memory()  # as every step does: big label arrays are not re-faulted
    print(f"numpy {np.__version__}")
    for size in (8, 6) if args.size == "both" else (int(args.size),):
        run_size(size, args)


if __name__ == "__main__":
    main()

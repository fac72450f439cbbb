"""Edit the world model along a probe direction and see whether the moves follow (Nanda 2023).

At one hook and one position, the residual stream is moved along the relative probe of one
square so the probe reads that square as the opponent's instead of the mover's. If the model
computes its moves from that linear board, its predicted legal set should become the edited
board's. Two controls: no edit (how often the model already agrees with the edited board) and
an edit of the same size along a random direction (how much any push of that size does).

Only position ``p`` is edited, never the positions after it, so the logits at ``p`` are the
only ones read (and the rows are cut after the last edited position: the model is causal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from mechflow.data import othello
from mechflow.probes.linear import Probes

log = logging.getLogger(__name__)

CONDITIONS = ("none", "random", "probe")
TABLE_COLUMNS = [
    "hook", "condition", "scale", "edits", "success", "unchanged", "errors", "gained_log_prob",
    "lost_log_prob", "mean_margin",
]  # fmt: skip
MINE, THEIRS = "mine", "theirs"
_CHUNK_POSITIONS = 1024  # candidate positions whose flips are tried together

# x (batch, d_model) and the indices of its edits -> the edited x
EditFn = Callable[
    [Float[torch.Tensor, "batch d_model"], Int[torch.Tensor, " batch"]],
    Float[torch.Tensor, "batch d_model"],
]


@dataclass(frozen=True, eq=False)  # arrays: no elementwise ==
class Edits:
    """Board edits: flip ``square`` (the mover's) to the opponent's at ``(game, position)``.

    ``legal``: the edited board's legal set for the mover, ``original``: the unedited one
    (both ``(edit, square)`` bool, and never equal).
    """

    game: Int[np.ndarray, " edit"]
    position: Int[np.ndarray, " edit"]
    square: Int[np.ndarray, " edit"]
    legal: Bool[np.ndarray, "edit square"]
    original: Bool[np.ndarray, "edit square"]

    def __len__(self) -> int:
        return len(self.game)


# --- the edits: pure tensor functions -----------------------------------------------------------


def margin(
    x: Float[torch.Tensor, "batch d_model"],
    v: Float[torch.Tensor, "batch d_model"],
    k: Float[torch.Tensor, " batch"],
) -> Float[torch.Tensor, " batch"]:
    """The probe's logit(theirs) - logit(mine): negative where it reads the mover's stone."""
    return (x * v).sum(-1) + k


def flip_edit(
    x: Float[torch.Tensor, "batch d_model"],
    v: Float[torch.Tensor, "batch d_model"],
    k: Float[torch.Tensor, " batch"],
    scale: float,
) -> Float[torch.Tensor, "batch d_model"]:
    """Move x along v until the margin is ``scale`` times its size, on the opponent's side (1:
    a stone read as mine is mirrored across the boundary, 0: onto it); nothing orthogonal to v
    changes. Setting the sign, not negating the margin, keeps an edit from pushing towards
    "mine" where the probe already misreads the mover's stone as the opponent's."""
    return x + _step(x, v, k, scale)[:, None] * v


def _step(x, v, k, scale: float) -> Float[torch.Tensor, " batch"]:
    """How far along v (in units of v) the margin moves to ``scale * |margin|``."""
    m = margin(x, v, k)
    return (scale * m.abs() - m) / (v * v).sum(-1)


def random_edit(
    x: Float[torch.Tensor, "batch d_model"],
    v: Float[torch.Tensor, "batch d_model"],
    k: Float[torch.Tensor, " batch"],
    scale: float,
    directions: Float[torch.Tensor, "batch d_model"],
) -> Float[torch.Tensor, "batch d_model"]:
    """The control: :func:`flip_edit`'s displacement norm along unit ``directions`` instead."""
    length = _step(x, v, k, scale).abs() * (v * v).sum(-1).sqrt()
    return x + length[:, None] * directions


def random_directions(n: int, d_model: int, seed: int) -> Float[torch.Tensor, "n d_model"]:
    """Uniform unit vectors, one per edit, the same for every scale and batch size."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d_model, generator=gen, dtype=torch.float64)
    return (u / u.norm(dim=-1, keepdim=True)).float()


def probe_directions(
    probes: Probes, hook: str, squares: Int[np.ndarray, " edit"]
) -> tuple[Float[torch.Tensor, "edit d_model"], Float[torch.Tensor, " edit"]]:
    """(v, k) of each square's relative probe at ``hook``, in raw activation space."""
    h = _index(probes.hook_names, hook, "hook", "probes")
    mine = _index(probes.class_names, MINE, "class", "probes")
    theirs = _index(probes.class_names, THEIRS, "class", "probes")
    rows = [_index(probes.target_names, f"relative.{int(s)}", "target", "probes") for s in squares]
    w, b = probes.raw_weights()
    w, b = w[h, rows], b[h, rows]  # edit d_model class, edit class
    return w[..., theirs] - w[..., mine], b[:, theirs] - b[:, mine]


def _index(names: Sequence[str], name: str, what: str, where: str) -> int:
    if name not in names:
        shown = list(names) if len(names) <= 12 else [*names[:12], "..."]
        raise ValueError(f"no {what} {name!r} in the {where} (they have {shown})")
    return list(names).index(name)


# --- the edited boards ----------------------------------------------------------------------------


def relative_legal(
    relative: Int[np.ndarray, "board square"], to_move: Int[np.ndarray, " board"], size: int
) -> Bool[np.ndarray, "board square"]:
    """The mover's legal moves on mine/theirs boards, by the rules (mine is black when black
    moves)."""
    mover = np.where(to_move == 0, othello.BLACK, othello.WHITE)[:, None]
    other = othello.BLACK + othello.WHITE - mover
    board = np.where(
        relative == othello.MINE, mover, np.where(relative == othello.THEIRS, other, 0)
    )
    black, white = othello.to_bitboards(board.astype(np.int8))
    return othello.legal_moves(black, white, to_move, size=size)


def sample_edits(
    relative: Int[np.ndarray, "game pos square"],
    legal: Int[np.ndarray, "game pos square"],
    to_move: Int[np.ndarray, "game pos"],
    mask: Bool[np.ndarray, "game pos"],
    size: int,
    n_edits: int,
    seed: int,
) -> Edits:
    """Up to ``n_edits`` random edits, at most one per masked position: a mover's square whose
    flip changes the legal set (positions without one are skipped), since an edit the moves
    cannot show is no test of the world model. Fewer when the mask runs out (logged)."""
    rng = np.random.default_rng(seed)
    where = np.argwhere(mask)
    where = where[rng.permutation(len(where))]
    none, n_sq = np.zeros(0, np.int64), relative.shape[-1]
    found = [(none, none, none, np.zeros((0, n_sq), bool), np.zeros((0, n_sq), bool))]
    n_found = 0
    for start in range(0, len(where), _CHUNK_POSITIONS):
        if n_found >= n_edits:
            break
        g, p = where[start : start + _CHUNK_POSITIONS].T
        chosen = _flips_that_change(relative[g, p], to_move[g, p], legal[g, p] == 1, size, rng)
        pick, square, edited = (a[: n_edits - n_found] for a in chosen)
        found.append((g[pick], p[pick], square, edited, legal[g[pick], p[pick]] == 1))
        n_found += len(pick)
    if n_found < n_edits:
        log.warning(
            "only %d of %d edits: too few positions with a flip that matters", n_found, n_edits
        )
    game, position, square, edited, original = (np.concatenate(a) for a in zip(*found, strict=True))
    return Edits(game=game, position=position, square=square, legal=edited, original=original)


def _flips_that_change(
    relative: Int[np.ndarray, "board square"],
    to_move: Int[np.ndarray, " board"],
    legal: Bool[np.ndarray, "board square"],
    size: int,
    rng: np.random.Generator,
) -> tuple[Int[np.ndarray, " pick"], Int[np.ndarray, " pick"], Bool[np.ndarray, "pick square"]]:
    """(board, square, edited legal set) of one random useful flip per board that has one,
    boards in their order; useful: the legal set changes and stays non-empty (an empty set
    is a pass, which no top-k of moves can express)."""
    board, square = np.nonzero(relative == othello.MINE)  # pair
    flipped = relative[board].copy()
    flipped[np.arange(len(board)), square] = othello.THEIRS
    edited = relative_legal(flipped, to_move[board], size)  # pair square
    useful = (edited != legal[board]).any(1) & edited.any(1)
    board, square, edited = board[useful], square[useful], edited[useful]
    order = np.lexsort((rng.random(len(board)), board))  # random order within each board
    _, first = np.unique(board[order], return_index=True)
    keep = order[first]
    return board[keep], square[keep], edited[keep]


# --- running the edits ----------------------------------------------------------------------------


@torch.no_grad()
def edited_run(
    model,
    tokens: Int[torch.Tensor, "game pos"],
    game: Int[torch.Tensor, " edit"],
    position: Int[torch.Tensor, " edit"],
    hook: str,
    edit: EditFn,
    batch_size: int,
) -> tuple[Float[torch.Tensor, "edit d_vocab"], Float[torch.Tensor, "edit d_model"]]:
    """Logits at each edit's position, and the residual it was edited to, with ``edit`` applied
    at ``hook`` to that one position of its game's row (many edits per forward pass)."""
    logits, resid = [], []
    for start in range(0, len(game), batch_size):
        index = torch.arange(start, min(start + batch_size, len(game)), device=tokens.device)
        rows = torch.arange(len(index), device=tokens.device)
        pos = position[index]
        seen: list[torch.Tensor] = []

        def apply(act, hook, index=index, rows=rows, pos=pos, seen=seen):
            act[rows, pos] = edit(act[rows, pos], index).to(act.dtype)
            seen.append(act[rows, pos].clone())
            return act

        batch = tokens[game[index], : int(pos.max()) + 1]
        out = model.run_with_hooks(batch, fwd_hooks=[(hook, apply)])
        logits.append(out[rows, pos])
        resid.append(seen[0])
    return torch.cat(logits), torch.cat(resid)


def top_k_sets(
    logits: Float[torch.Tensor, "edit d_vocab"], squares: Bool[np.ndarray, "edit square"], size: int
) -> tuple[Bool[torch.Tensor, "edit move"], Bool[torch.Tensor, "edit move"]]:
    """(the model's top-|set| moves, the set) over the square tokens ``1..`` (never the
    BOS/PAD), ``move`` = token - 1."""
    want = torch.as_tensor(squares[:, _token_squares(size)], device=logits.device)
    moves = logits[:, 1 : othello.d_vocab(size)]
    order = moves.argsort(dim=1, descending=True)
    ranks = torch.arange(moves.shape[1], device=logits.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    return rank < want.sum(1, keepdim=True), want


def top_k_equals(
    logits: Float[torch.Tensor, "edit d_vocab"], squares: Bool[np.ndarray, "edit square"], size: int
) -> Bool[np.ndarray, " edit"]:
    """Whether the model's top-|set| moves are exactly each row's set of squares."""
    predicted, want = top_k_sets(logits, squares, size)
    return (predicted == want).all(1).cpu().numpy()


def top_k_errors(
    logits: Float[torch.Tensor, "edit d_vocab"], squares: Bool[np.ndarray, "edit square"], size: int
) -> Int[np.ndarray, " edit"]:
    """Squares of the top-|set| moves outside the set (Li et al. 2023's error count)."""
    predicted, want = top_k_sets(logits, squares, size)
    return (predicted & ~want).sum(1).cpu().numpy()


def move_log_probs(
    logits: Float[torch.Tensor, "edit d_vocab"], size: int
) -> Float[torch.Tensor, "edit move"]:
    """Log-probabilities over the square tokens only, the moves top-k ranks."""
    return torch.log_softmax(logits[:, 1 : othello.d_vocab(size)].double(), dim=-1)


def _token_squares(size: int) -> Int[np.ndarray, " move"]:
    return othello.token_to_square(np.arange(1, othello.d_vocab(size)), size)


@torch.no_grad()
def run_interventions(
    model,
    tokens: Int[np.ndarray, "game pos"] | Int[torch.Tensor, "game pos"],
    probes: Probes,
    edits: Edits,
    *,
    hook: str,
    scales: Sequence[float],
    seed: int,
    batch_size: int,
    size: int,
) -> pd.DataFrame:
    """One row per (condition, scale; ``none`` has scale NaN) over the same edits.

    ``success``: share whose top-|legal'| moves are exactly the edited legal set;
    ``unchanged``: share whose top-|original| moves are still the original set; ``errors``:
    mean count of top-|legal'| moves outside it; ``gained_log_prob`` / ``lost_log_prob``: mean
    log-probability shift (against no edit) of the squares the edit makes legal / illegal,
    which show a push too weak to reorder the top moves; ``mean_margin``: the edited probe's
    mean logit(theirs) - logit(mine) after the edit (positive: it reads the opponent's stone).
    """
    if hook not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook!r}")
    if not len(edits):
        raise ValueError("no edits to run")
    device = model.cfg.device
    v, k = (t.to(device) for t in probe_directions(probes, hook, edits.square))
    directions = random_directions(len(edits), probes.d_model, seed).to(device)
    run = partial(
        edited_run,
        model,
        torch.tensor(np.asarray(tokens), dtype=torch.long, device=device),
        torch.as_tensor(edits.game, device=device),
        torch.as_tensor(edits.position, device=device),
        hook,
        batch_size=batch_size,
    )
    unedited = run(_edit_fn("none", float("nan"), v, k, directions))
    base = unedited[0]
    rows = [_summary(hook, "none", float("nan"), unedited, base, v, k, edits, size)]
    for condition in ("random", "probe"):
        for scale in map(float, scales):
            out = run(_edit_fn(condition, scale, v, k, directions))
            rows.append(_summary(hook, condition, scale, out, base, v, k, edits, size))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _summary(hook, condition, scale, out, base, v, k, edits: Edits, size: int) -> dict:
    """One table row; the log-probability shifts are against the unedited run ``base``."""
    logits, resid = out
    shift = (move_log_probs(logits, size) - move_log_probs(base, size)).cpu().numpy()
    token_squares = _token_squares(size)
    gained = (edits.legal & ~edits.original)[:, token_squares]
    lost = (edits.original & ~edits.legal)[:, token_squares]
    return {
        "hook": hook, "condition": condition, "scale": scale, "edits": len(edits),
        "success": top_k_equals(logits, edits.legal, size).mean(),
        "unchanged": top_k_equals(logits, edits.original, size).mean(),
        "errors": top_k_errors(logits, edits.legal, size).mean(),
        "gained_log_prob": shift[gained].mean() if gained.any() else float("nan"),
        "lost_log_prob": shift[lost].mean() if lost.any() else float("nan"),
        "mean_margin": float(margin(resid.float(), v, k).mean()),
    }  # fmt: skip


def _edit_fn(condition: str, scale: float, v, k, directions) -> EditFn:
    if condition == "none":
        return lambda x, i: x
    if condition == "probe":
        return lambda x, i: flip_edit(x, v[i], k[i], scale)
    if condition == "random":
        return lambda x, i: random_edit(x, v[i], k[i], scale, directions[i])
    raise ValueError(f"unknown condition {condition!r} (known: {list(CONDITIONS)})")

"""What OthelloGPT's components do for its next move, read three ways (Nanda 2023; ARENA 1.5.3).

- Direct logit attribution: how much each component writes, straight through the final norm,
  towards the model's top-1 move against the mean legal move (logits are shift-invariant, so a
  move's logit only means something against the others').
- Activation patching of one move: the game with move ``P`` swapped for another legal move that
  changes where move ``P + 1`` may go, scored by the logit of a square that only the clean move
  makes legal minus one that only the swapped move makes legal.
- Neurons in the probe basis: an MLP neuron's output weights read as "theirs - mine" and
  "empty" per square, through the relative-board probes of the residual stream it writes into.

Every analysis returns a tidy table (one row per component, patch, or neuron x square).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechflow.analysis.logit_attribution import (
    AttributionAccumulator,
    Component,
    cache_names,
    components,
    direct_attributions,
)
from mechflow.data import othello
from mechflow.experiments.othello.labels import (
    BOS,
    CLASSES,
    SQUARE_LABELS,
    board_size_of,
    label_games,
)
from mechflow.patching import LogitDifference, activation_patching, normalised

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from mechflow.probes.linear import Probes

log = logging.getLogger(__name__)

UNEMBED_BIAS = Component("b_U", "unembed_bias")
DLA_COLUMNS = ["component", "kind", "layer", "head", "mean", "sd", "rows"]
PATCH_KINDS = ("resid_pre", "attn_out", "mlp_out", "z")
PATCH_COLUMNS = ["move", "kind", "layer", "head", "position", "effect", "games",
                 "clean_score", "corrupted_score"]  # fmt: skip
DIRECTIONS = ("theirs_minus_mine", "empty")
NEURON_COLUMNS = ["layer", "neuron", "rank", "score", "square", "direction", "cosine"]
STATE_COLUMNS = ["layer", "neuron", "label", "square", "state", "mean_activation", "rows"]


def _device(model: HookedTransformer) -> torch.device:
    return next(model.parameters()).device


# --- direct logit attribution ------------------------------------------------------------------


def _size_of_squares(n_squares: int) -> int:
    size = round(n_squares**0.5)
    if size not in othello.SIZES or size * size != n_squares:
        raise ValueError(f"legal: {n_squares} squares is no Othello board's ({othello.SIZES})")
    return size


def legal_tokens(
    legal: Int[np.ndarray, "game pos square"], d_vocab: int
) -> Bool[np.ndarray, "game pos d_vocab"]:
    """Legality per token id instead of per square, so it lines up with the logits (BOS: never)."""
    size = _size_of_squares(legal.shape[-1])
    n_tokens = othello.d_vocab(size)
    if d_vocab < n_tokens:
        raise ValueError(
            f"a model of d_vocab {d_vocab} cannot name the {n_tokens} tokens of {size}x{size}"
        )
    squares = othello.token_to_square(np.arange(1, n_tokens), size)
    out = np.zeros((*legal.shape[:2], d_vocab), bool)
    out[..., 1:n_tokens] = legal[..., squares] == 1
    return out


@torch.inference_mode()
def move_attributions(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    legal: Bool[Tensor, "batch pos d_vocab"],
) -> tuple[Float[Tensor, "component batch pos"], Float[Tensor, "batch pos"]]:
    """Each component's direct attribution to ``logit[top-1] - mean(logit[legal])`` (components
    of :func:`dla_components`; they sum to it exactly), and that logit difference itself."""
    logits, cache = model.run_with_cache(tokens, names_filter=cache_names(model))
    predicted = logits[..., 1:].argmax(-1) + 1  # batch pos: the BOS is never a move
    share = legal.float() / legal.sum(-1, keepdim=True).clamp_min(1)  # batch pos d_vocab
    direction = model.W_U.T[predicted] - share @ model.W_U.T  # batch pos d_model
    bias = model.b_U[predicted] - share @ model.b_U  # batch pos
    attributions = torch.cat([direct_attributions(model, cache, direction), bias[None]])
    difference = logits.gather(-1, predicted[..., None])[..., 0] - (share * logits).sum(-1)
    return attributions, difference


def dla_components(model: HookedTransformer) -> list[Component]:
    """The shared decomposition's components, and the unembedding bias (a logit difference of
    two moves has one)."""
    return [*components(model), UNEMBED_BIAS]


def direct_logit_attribution(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "game pos"],
    legal: Int[np.ndarray, "game pos square"],
    mask: Bool[np.ndarray, "game pos"],
    *,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Mean and sd over the ``mask``'s (game, position) rows of every component's attribution
    to the top-1 move against the mean legal move (:data:`DLA_COLUMNS`); the means sum to the
    mean logit difference.

    ``legal`` is :func:`~mechflow.experiments.othello.labels.label_games`'s (where move p + 1
    may go); ``mask`` e.g. ``labels.probe_positions``, every row of it with a legal move.
    """
    tokens, legal, mask = np.asarray(tokens), np.asarray(legal), np.asarray(mask, bool)
    if legal.shape[:2] != tokens.shape or mask.shape != tokens.shape:
        raise ValueError(
            f"tokens {tokens.shape}, legal {legal.shape} and mask {mask.shape} must share "
            "their (game, pos) axes"
        )
    allowed = legal_tokens(legal, model.cfg.d_vocab_out)
    stuck = mask & ~allowed.any(-1)
    if stuck.any():
        game, pos = np.argwhere(stuck)[0]
        raise ValueError(f"mask: game {game}, position {pos} has no legal next move")
    if not mask.any():
        raise ValueError("mask selects no (game, position) row")
    games = np.flatnonzero(mask.any(1))
    device, acc = _device(model), AttributionAccumulator()
    for start in range(0, len(games), batch_size):
        batch = games[start : start + batch_size]
        attributions, _ = move_attributions(
            model,
            torch.as_tensor(tokens[batch], dtype=torch.long, device=device),
            torch.as_tensor(allowed[batch], device=device),
        )
        acc.update(attributions, torch.as_tensor(mask[batch], device=device))
    stats = acc.result()
    table = pd.DataFrame(
        [(c.label, c.kind, c.layer, c.head) for c in dla_components(model)],
        columns=DLA_COLUMNS[:4],
    )
    table["mean"] = stats["mean"].numpy()
    table["sd"] = stats["std"].numpy()
    table["rows"] = acc.count
    return table


# --- activation patching of one move -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MovePairs:
    """Clean games cut ``later`` moves after move ``move``, the same with that move swapped (the
    later moves unchanged, and legal in both), and the two squares whose legality for the next
    move tells them apart there.

    Args:
        move: the swapped move's number (its position in the rows).
        read_at: the position the metric is read at (``move + later``).
        games: each pair's row in the token array.
        clean, corrupted: ``(pair, read_at + 1)`` token rows, the BOS first.
        correct: the token of a square legal next in the clean game only (the first such).
        wrong: the token of one legal next in the corrupted game only (the first such).
    """

    move: int
    read_at: int
    games: Int[np.ndarray, " pair"]
    clean: Int[np.ndarray, "pair pos"]
    corrupted: Int[np.ndarray, "pair pos"]
    correct: Int[np.ndarray, " pair"]
    wrong: Int[np.ndarray, " pair"]

    def metric(self) -> LogitDifference:
        """``logit[correct] - logit[wrong]`` at ``read_at``, mean over pairs."""
        return LogitDifference(
            positions=torch.full((len(self.games),), self.read_at),
            correct=torch.as_tensor(self.correct),
            wrong=torch.as_tensor(self.wrong),
        )


def _alternatives(
    tokens: np.ndarray, labels: dict[str, np.ndarray], move: int, later: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every other legal move ``move`` of every game that played one, followed by the game's
    next ``later`` moves where each is still legal: (game, its rows cut there, the squares
    legal next there), one entry per alternative."""
    played = othello.token_to_square(tokens[:, move], size)  # -1: the game had ended
    options = (labels["legal"][:, move - 1] == 1) & (played >= 0)[:, None]
    options[np.flatnonzero(played >= 0), played[played >= 0]] = False
    game, square = np.nonzero(options)
    rows = np.full_like(tokens[game], BOS)
    rows[:, :move] = tokens[game, :move]
    rows[:, move] = othello.square_to_token(square, size)
    legal = label_games(rows, size, only=("legal",))["legal"]
    for p in range(move + 1, move + later + 1):
        nxt = othello.token_to_square(tokens[game, p], size)  # the clean game's move p
        keep = (nxt >= 0) & (legal[np.arange(len(game)), p - 1, np.maximum(nxt, 0)] == 1)
        game, rows = game[keep], rows[keep]
        rows[:, p] = tokens[game, p]
        legal = label_games(rows, size, only=("legal",))["legal"]
    return game, rows, legal[:, move + later] == 1


def move_pairs(
    tokens: Int[np.ndarray, "game pos"], *, move: int, n_games: int, seed: int, later: int = 0
) -> MovePairs:
    """The first ``n_games`` games (in row order) with an alternative move ``move`` after which
    the game's next ``later`` moves stay legal and, after them, some square is legal next in one
    game and another in the other: one such alternative each, drawn with ``seed``. With
    ``later`` > 0 the swapped move is no longer the last token read, so the residual stream by
    position shows where its information travels."""
    if n_games < 1:
        raise ValueError(f"n_games must be >= 1, got {n_games}")
    tokens = np.asarray(tokens)
    size = board_size_of(tokens.shape[1])
    last = tokens.shape[1] - 1
    if later < 0:
        raise ValueError(f"later must be >= 0, got {later}")
    if not 1 <= move < last - later:
        raise ValueError(
            f"move {move} is outside the game: moves 1..{last - 1 - later} have {later} more "
            "moves and a next one"
        )
    labels = label_games(tokens, size, only=("legal",))
    read_at = move + later
    game, rows, alt_legal = _alternatives(tokens, labels, move, later, size)
    clean_legal = labels["legal"][game, read_at] == 1
    gained, lost = clean_legal & ~alt_legal, alt_legal & ~clean_legal
    ok = np.flatnonzero(gained.any(1) & lost.any(1))
    if not len(ok):
        raise ValueError(
            f"no game has an alternative move {move} that changes the legal set {later} moves on"
        )
    keys = np.random.default_rng(seed).random(len(ok))
    ok = ok[np.lexsort((keys, game[ok]))]  # by game, a random alternative first
    chosen = ok[np.unique(game[ok], return_index=True)[1]][:n_games]
    if len(chosen) < n_games:
        log.warning(
            "move %d: %d games of %d asked have a fitting alternative", move, len(chosen), n_games
        )
    return MovePairs(
        move=move,
        read_at=read_at,
        games=game[chosen],
        clean=tokens[game[chosen], : read_at + 1].astype(np.int64),
        corrupted=rows[chosen, : read_at + 1].astype(np.int64),
        correct=othello.square_to_token(gained[chosen].argmax(1), size),
        wrong=othello.square_to_token(lost[chosen].argmax(1), size),
    )


def _patch_records(
    kind: str, effect: Float[Tensor, "layer index"], read_at: int
) -> list[tuple[str, int, int, int, float]]:
    """(kind, layer, head, position, effect) rows: heads at every position (position -1), the
    residual stream per position, sublayer outputs where the metric is read."""
    out = []
    for layer, values in enumerate(effect.tolist()):
        if kind == "z":
            out += [(kind, layer, head, -1, value) for head, value in enumerate(values)]
        elif kind == "resid_pre":
            out += [(kind, layer, -1, pos, value) for pos, value in enumerate(values)]
        else:
            out.append((kind, layer, -1, read_at, values[read_at]))
    return out


def move_patching(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "game pos"],
    *,
    move: int,
    n_games: int,
    seed: int,
    kinds: Sequence[str] = PATCH_KINDS,
    batch_size: int = 64,
    later: int = 0,
) -> pd.DataFrame:
    """The normalised logit difference (clean 1, corrupted 0; means over games) after patching
    each of ``kinds`` from the clean run into the one with move ``move`` swapped, read ``later``
    moves on (:func:`move_pairs`); columns :data:`PATCH_COLUMNS`."""
    kinds = [k for k in kinds if not (k == "mlp_out" and model.cfg.attn_only)]
    unknown = sorted(set(kinds) - set(PATCH_KINDS))
    if unknown:
        raise ValueError(f"patch kinds {unknown} are not reported; allowed: {list(PATCH_KINDS)}")
    pairs = move_pairs(tokens, move=move, n_games=n_games, seed=seed, later=later)
    clean, corrupted = torch.as_tensor(pairs.clean), torch.as_tensor(pairs.corrupted)
    metric = pairs.metric()
    device = _device(model)
    with torch.inference_mode():
        scores = [float(metric(model(t.to(device)))) for t in (clean, corrupted)]
    if scores[0] <= scores[1]:
        log.warning(
            "move %d: the clean logit difference %.3g is not above the corrupted %.3g",
            move,
            *scores,
        )
    records = []
    for kind in kinds:
        out = activation_patching(model, clean, corrupted, kind, metric, batch_size=batch_size)
        records += _patch_records(kind, normalised(out, *scores), pairs.read_at)
    table = pd.DataFrame(records, columns=["kind", "layer", "head", "position", "effect"])
    table.insert(0, "move", move)
    table["games"], table["clean_score"], table["corrupted_score"] = len(pairs.games), *scores
    return table[PATCH_COLUMNS]


# --- neurons in the probe basis ----------------------------------------------------------------


def probe_directions(
    probes: Probes, hook: str
) -> tuple[list[int], Float[Tensor, "direction square d_model"]]:
    """The squares of the relative probes of ``hook`` and, per square, the raw-space directions
    of :data:`DIRECTIONS`: ``w[theirs] - w[mine]`` and ``w[empty] - (w[mine] + w[theirs]) / 2``
    (a softmax probe's logits mean something only against each other)."""
    if hook not in probes.hook_names:
        raise ValueError(f"the probes have no hook {hook!r}; they have {list(probes.hook_names)}")
    missing = [c for c in CLASSES["relative"][0] if c not in probes.class_names]
    if missing:
        raise ValueError(f"the probes' classes {list(probes.class_names)} lack {missing}")
    targets = [
        (i, name) for i, name in enumerate(probes.target_names) if name.startswith("relative.")
    ]
    if not targets:
        raise ValueError(
            f"the probes have no 'relative.<square>' target: {list(probes.target_names)[:5]}"
        )
    w, _ = probes.raw_weights()
    w = w[probes.hook_names.index(hook), [i for i, _ in targets]]  # square d_model class
    empty, mine, theirs = (w[..., probes.class_names.index(c)] for c in CLASSES["relative"][0])
    squares = [int(name.split(".", 1)[1]) for _, name in targets]
    return squares, torch.stack([theirs - mine, empty - (mine + theirs) / 2])


def span_fraction(
    vectors: Float[Tensor, "n d_model"], directions: Float[Tensor, "k d_model"]
) -> Float[Tensor, " n"]:
    """Share of each vector's squared norm that lies in the span of ``directions``."""
    _, s, vh = torch.linalg.svd(directions, full_matrices=False)
    basis = vh[s > s.max() * 1e-6]  # rank d_model: orthonormal rows
    return (vectors @ basis.T).square().sum(-1) / vectors.square().sum(-1).clamp_min(1e-30)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


@torch.inference_mode()
def neurons_in_probe_basis(
    model: HookedTransformer, probes: Probes, *, layer: int | None = None, n_neurons: int = 2
) -> pd.DataFrame:
    """Cosines of the ``n_neurons`` most board-like neurons' output weights of MLP ``layer``
    (default the middle one) with each square's probe directions (:data:`NEURON_COLUMNS`).

    The neurons are those whose ``W_out`` row has the largest share of its norm in the span of
    all the probe directions of ``blocks.{layer}.hook_resid_post``, the stream it writes into
    (``score``; a random direction's share is about rank / d_model).
    """
    layer = model.cfg.n_layers // 2 if layer is None else layer
    if model.cfg.attn_only:
        raise ValueError("an attention-only model has no neurons")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer}: the model has MLPs in layers 0..{model.cfg.n_layers - 1}")
    squares, directions = probe_directions(probes, f"blocks.{layer}.hook_resid_post")
    w_out = model.blocks[layer].mlp.W_out.detach().float().to(directions.device)  # d_mlp d_model
    directions = directions.flatten(0, 1)
    if torch.linalg.matrix_rank(directions) >= w_out.shape[1]:
        log.warning("layer %d: the probe directions span the whole stream; every score is 1", layer)
    score = span_fraction(w_out, directions)
    top = score.argsort(descending=True)[:n_neurons]
    directions = directions.view(len(DIRECTIONS), len(squares), -1)
    cosine = torch.einsum("nm,dsm->nds", _unit(w_out[top]), _unit(directions))  # top dir square
    n, d, s = cosine.shape
    table = pd.DataFrame(
        {
            "layer": layer,
            "neuron": np.repeat(top.cpu().numpy(), d * s),
            "rank": np.repeat(np.arange(n), d * s),
            "score": np.repeat(score[top].cpu().numpy(), d * s),
            "square": np.tile(squares, n * d),
            "direction": np.tile(np.repeat(DIRECTIONS, s), n),
            "cosine": cosine.flatten().cpu().numpy(),
        }
    )
    return table[NEURON_COLUMNS]


@torch.inference_mode()
def neuron_activation_by_state(
    model: HookedTransformer,
    tokens: Int[np.ndarray, "game pos"],
    labels: dict[str, np.ndarray],
    mask: Bool[np.ndarray, "game pos"],
    *,
    layer: int,
    neurons: Sequence[int],
    label: str = "relative",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Mean activation (``mlp.hook_post``) of ``neurons`` over the ``mask``'s rows, per square
    and state of one of ``label_games``'s square labels (:data:`STATE_COLUMNS`): what on the
    board turns a neuron on."""
    if label not in SQUARE_LABELS or label not in labels:
        raise ValueError(
            f"labels: no square label {label!r}; have {sorted(labels)} "
            f"(square labels: {list(SQUARE_LABELS)})"
        )
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    if labels[label].shape[:2] != tokens.shape or mask.shape != tokens.shape:
        raise ValueError(
            f"tokens {tokens.shape}, labels[{label!r}] {labels[label].shape} and mask "
            f"{mask.shape} must share their (game, pos) axes"
        )
    hook = f"blocks.{layer}.mlp.hook_post"
    if hook not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook!r}")
    states = CLASSES[label][0]
    onehot = np.eye(len(states), dtype=np.float32)[np.maximum(labels[label][mask], 0)]
    onehot *= (labels[label][mask] >= 0)[..., None]  # row square state
    acts = []
    device, neurons = _device(model), list(neurons)
    for start in range(0, len(tokens), batch_size):
        batch = torch.as_tensor(tokens[start : start + batch_size], dtype=torch.long, device=device)
        _, cache = model.run_with_cache(batch, names_filter=[hook], stop_at_layer=layer + 1)
        rows = torch.as_tensor(mask[start : start + batch_size], device=device)
        acts.append(cache[hook][rows][:, neurons].cpu())  # row neuron
    acts = torch.cat(acts).double().numpy()  # row neuron
    counts = onehot.sum(0)  # square state
    means = np.einsum("rn,rsc->nsc", acts, onehot) / np.maximum(counts, 1)
    n, s, c = means.shape
    return pd.DataFrame(
        {
            "layer": layer,
            "neuron": np.repeat(neurons, s * c),
            "label": label,
            "square": np.tile(np.repeat(np.arange(s), c), n),
            "state": np.tile(states, n * s),
            "mean_activation": np.where(counts > 0, means, np.nan).flatten(),
            "rows": np.tile(counts.flatten().astype(np.int64), n),
        }
    )[STATE_COLUMNS]

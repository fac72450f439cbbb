"""A hand-built two-layer attention-only model that solves IOI with a known circuit: the case the
circuit-finding measurements must recover exactly.

The residual stream holds a one-hot of the token, a one-hot of the position and one "flag"
dimension; there is no LayerNorm and no bias, and attention is unscaled, so every head does
exactly what its weights say:

- head 0.0, a **duplicate-token head**: from a name, attends to an earlier copy of the same name
  (the same token, not itself), else to ``<bos>``; it raises the flag where a name is repeated,
  i.e. at S2.
- head 1.0, a **name mover**: from any position, attends to the names without the flag (IO and
  S1, half each) and copies their identity to the logits.
- head 1.1, an **S suppressor**: attends to the flagged name (S2) and writes minus its identity,
  so S loses and IO wins. (GPT-2's S-inhibition heads do this through the name movers' queries;
  a small model trained here was measured to do it this way, directly.)
- head 0.1 does nothing (zero weights).

At END the logits of IO and S are ``+scale/2`` and ``+scale/2 - scale``: a logit difference of
``scale``, on every prompt.
"""

from __future__ import annotations

import warnings

import torch

from mechflow.experiments.ioi.prompts import BOS, NAMES, Vocabulary

MATCH, SELF, BASE = 20.0, 20.0, 10.0  # duplicate-token scores: same name, itself, <bos>
NAME_KEY, FLAG_KEY = 10.0, 30.0  # layer-1 scores: any name, the flag


def planted_ioi_model(vocabulary: Vocabulary, n_ctx: int, scale: float = 10.0):
    """The model above, as a HookedTransformer (``vocabulary``: the prompts' word-level one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import transformer_lens as tl

        return _build(tl, vocabulary, n_ctx, scale)


def _build(tl, vocabulary: Vocabulary, n_ctx: int, scale: float):
    n_vocab = len(vocabulary)
    d_model = n_vocab + n_ctx + 1
    flag = d_model - 1
    d_head = n_vocab + n_ctx + 1
    const = d_head - 1  # a query dimension every position has
    cfg = tl.HookedTransformerConfig(
        n_layers=2, d_model=d_model, n_heads=2, d_head=d_head, n_ctx=n_ctx, d_vocab=n_vocab,
        attn_only=True, normalization_type=None, use_attn_scale=False, positional_embedding_type="standard",
        seed=0, device="cpu",
    )  # fmt: skip
    model = tl.HookedTransformer(cfg)
    names = [vocabulary.ids[n] for n in NAMES if n in vocabulary.ids]
    bos = vocabulary.ids[BOS]
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.W_E[:, :n_vocab] = torch.eye(n_vocab)
        model.W_pos[:, n_vocab : n_vocab + n_ctx] = torch.eye(n_ctx)
        pos = slice(n_vocab, n_vocab + n_ctx)
        # 0.0: same name scores MATCH, itself -SELF, <bos> BASE
        attn = [block.attn for block in model.blocks]  # (model.W_Q etc. are stacked copies)
        w_q, w_k = attn[0].W_Q[0], attn[0].W_K[0]  # d_model d_head
        for t in names:
            w_q[t, t] = MATCH**0.5
            w_k[t, t] = MATCH**0.5
        w_q[pos, n_vocab : n_vocab + n_ctx] = SELF**0.5 * torch.eye(n_ctx)
        w_k[pos, n_vocab : n_vocab + n_ctx] = -(SELF**0.5) * torch.eye(n_ctx)
        w_q[pos, const] = 1.0
        w_k[bos, const] = BASE
        attn[0].W_V[0][names, const] = 1.0  # any name -> the flag
        attn[0].W_O[0][const, flag] = 1.0
        # 1.0: names score NAME_KEY, flagged positions -FLAG_KEY; copies names
        # 1.1: flagged positions score FLAG_KEY; copies names negatively
        for head, flag_score, sign in ((0, -FLAG_KEY, 0.5), (1, FLAG_KEY, -0.5)):
            w_q, w_k = attn[1].W_Q[head], attn[1].W_K[head]
            w_q[pos, const] = 1.0
            w_k[flag, const] = flag_score
            if head == 0:
                w_k[names, const] = NAME_KEY
            for t in names:
                attn[1].W_V[head][t, t] = 1.0
                attn[1].W_O[head][t, t] = 2 * sign * scale
        model.W_U[names, names] = 1.0
    return model.eval()

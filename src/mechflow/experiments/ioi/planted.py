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
BACKUP_BASE = 5.0  # the backup name mover's score for <bos>: above IO once IO is at END


def planted_ioi_model(vocabulary: Vocabulary, n_ctx: int, scale: float = 10.0):
    """The model above, as a HookedTransformer (``vocabulary``: the prompts' word-level one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import transformer_lens as tl

        return _build(tl, vocabulary, n_ctx, scale)


def _blank(tl, vocabulary: Vocabulary, n_ctx: int, n_layers: int, extra: int):
    """A zeroed attention-only model whose residual stream is a one-hot token, a one-hot position,
    the flag and ``extra`` more dimensions; d_head holds a token, a position and a constant."""
    n_vocab = len(vocabulary)
    d_head = n_vocab + n_ctx + 1
    cfg = tl.HookedTransformerConfig(
        n_layers=n_layers, d_model=n_vocab + n_ctx + 1 + extra, n_heads=2, d_head=d_head,
        n_ctx=n_ctx, d_vocab=n_vocab, attn_only=True, normalization_type=None,
        use_attn_scale=False, positional_embedding_type="standard", seed=0, device="cpu",
    )  # fmt: skip
    model = tl.HookedTransformer(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.W_E[:, :n_vocab] = torch.eye(n_vocab)
        model.W_pos[:, n_vocab : n_vocab + n_ctx] = torch.eye(n_ctx)
    return model


def _layout(vocabulary: Vocabulary, n_ctx: int):
    """(names' ids, position slice, flag dimension, constant d_head dimension)."""
    n_vocab = len(vocabulary)
    names = [vocabulary.ids[n] for n in NAMES if n in vocabulary.ids]
    return names, slice(n_vocab, n_vocab + n_ctx), n_vocab + n_ctx, n_vocab + n_ctx


@torch.no_grad()
def _duplicate_token_head(attn, vocabulary: Vocabulary, n_ctx: int) -> None:
    """Head 0 of ``attn``: from a name, an earlier copy of it scores MATCH, itself -SELF and
    ``<bos>`` BASE; it writes 1 to the flag where a copy was found (S2)."""
    names, pos, flag, const = _layout(vocabulary, n_ctx)
    n_vocab = len(vocabulary)
    w_q, w_k = attn.W_Q[0], attn.W_K[0]  # d_model d_head
    for t in names:
        w_q[t, t] = MATCH**0.5
        w_k[t, t] = MATCH**0.5
    w_q[pos, n_vocab : n_vocab + n_ctx] = SELF**0.5 * torch.eye(n_ctx)
    w_k[pos, n_vocab : n_vocab + n_ctx] = -(SELF**0.5) * torch.eye(n_ctx)
    w_q[pos, const] = 1.0
    w_k[vocabulary.ids[BOS], const] = BASE
    attn.W_V[0][names, const] = 1.0  # any name -> the flag
    attn.W_O[0][const, flag] = 1.0


def _build(tl, vocabulary: Vocabulary, n_ctx: int, scale: float):
    model = _blank(tl, vocabulary, n_ctx, n_layers=2, extra=0)
    names, pos, flag, const = _layout(vocabulary, n_ctx)
    attn = [block.attn for block in model.blocks]  # (model.W_Q etc. are stacked copies)
    with torch.no_grad():
        _duplicate_token_head(attn[0], vocabulary, n_ctx)
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


def planted_paper_ioi_model(
    vocabulary: Vocabulary, n_ctx: int, scale: float = 10.0, backup: bool = False
):
    """A three-layer version shaped like GPT-2's circuit (Wang et al. 2022), each head's class
    needed for the logit difference:

    - head 0.0, **duplicate-token**: raises the flag at S2 (as above);
    - head 1.0, **S-inhibition**: from END attends the flagged name (S2) and writes its identity
      into a "suppress" copy of the token space;
    - head 2.0, **name mover**: its query reads that copy, which lowers the keys of S1 and S2,
      so it attends IO alone and copies it: logit(IO) = ``scale``, logit(S) = 0;
    - heads 0.1, 1.1, 2.1 do nothing.

    With ``backup``, a fourth layer holds a **backup name mover**, head 3.0: it would attend IO
    as 2.0 does, but a name already in the residual stream at END lowers that name's key (as
    copy suppression does), so while 2.0 works it attends ``<bos>`` and writes nothing; with
    2.0 knocked out (its mean output spreads over every name) it attends IO and copies it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import transformer_lens as tl

        n_layers = 4 if backup else 3
        model = _blank(tl, vocabulary, n_ctx, n_layers=n_layers, extra=len(vocabulary))
    names, pos, flag, const = _layout(vocabulary, n_ctx)
    suppress = flag + 1  # the suppress copy of token t is dimension suppress + t
    attn = [block.attn for block in model.blocks]
    with torch.no_grad():
        _duplicate_token_head(attn[0], vocabulary, n_ctx)
        # 1.0: the flagged position scores FLAG_KEY; names -> their suppress copy
        attn[1].W_Q[0][pos, const] = 1.0
        attn[1].W_K[0][flag, const] = FLAG_KEY
        for t in names:
            attn[1].W_V[0][t, t] = 1.0
            attn[1].W_O[0][t, suppress + t] = 1.0
        # 2.0: names score NAME_KEY, minus 2 NAME_KEY where the suppress copy names them
        movers = attn[2:] if backup else attn[2:3]
        for layer, mover in enumerate(movers):
            mover.W_Q[0][pos, const] = 1.0
            for t in names:
                mover.W_K[0][t, const] = NAME_KEY
                mover.W_Q[0][suppress + t, t] = -2 * NAME_KEY
                mover.W_K[0][t, t] = 1.0
                mover.W_V[0][t, t] = 1.0
                mover.W_O[0][t, t] = scale
                if layer == 1:  # 3.0: a name copied to END (scale) lowers its key by 2 scale
                    mover.W_Q[0][t, t] -= 2 * NAME_KEY / scale
            if layer == 1:
                mover.W_K[0][vocabulary.ids[BOS], const] = BACKUP_BASE
        model.W_U[names, names] = 1.0
    return model.eval()

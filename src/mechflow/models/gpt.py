"""A GPT-2 of our own in plain torch, with a KV cache, that converts exactly to a HookedTransformer.

Why it exists: the analyses read ``HookedTransformer``s (hook names, ``run_with_cache``), but
a HookedTransformer is slow to sample from (at batch 1 its einsums copy ``W_U`` and the per-head
weights on every forward: ~80% of a GPT-2-small decoding step on CPU, ~7x slower than this
model's) and TransformerLens 3.9's cached ``generate`` is wrong for models without a tokenizer
(see ``mechflow.models.sampling``). This module is the model we train and sample from:
nanoGPT-sized and readable (pre-LayerNorm blocks, causal
multi-head attention through ``F.scaled_dot_product_attention``, a GELU MLP, learned positions,
an unembedding with a bias) plus a preallocated KV cache. ``to_hooked``/``from_hooked`` copy
weights to and from TransformerLens's layout, so a model trained here is analysed there with the
same logits (tests check ≤ 1e-4) and TransformerLens's random or pretrained GPT-2s run here.

TransformerLens is imported only inside the conversion functions (``import transformer_lens``
costs ~5 s).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from mechflow.models.config import Architecture

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

# TransformerLens's names for the MLP activations we implement. GPT-2's ``gelu_new`` is the tanh
# approximation of GELU, which is what ``approximate="tanh"`` computes; ``gelu_pytorch_tanh`` is
# TransformerLens's name for that same kernel (its ``gelu_new`` composes it from five ops).
ACT_FNS = {
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}
INIT_STD = 0.02  # GPT-2's initializer_range


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """Sizes of a GPT-2-style model, named as in HookedTransformerConfig.

    Args:
        n_layers, d_model, n_heads, d_head, n_ctx, d_vocab: sizes.
        d_mlp: MLP width; required unless attn_only.
        attn_only: blocks without MLP (and without their LayerNorm), as in TransformerLens.
        layer_norm_eps: LayerNorm epsilon (TransformerLens's ``eps``).
        act_fn: MLP activation, one of ``ACT_FNS``.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_ctx: int
    d_vocab: int
    d_mlp: int | None = None
    attn_only: bool = False
    layer_norm_eps: float = 1e-5
    act_fn: str = "gelu_new"

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.attn_only:
            if self.d_mlp is not None:
                raise ValueError("GPTConfig.d_mlp must be None when attn_only")
        elif not isinstance(self.d_mlp, int) or self.d_mlp < 1:
            raise ValueError(f"GPTConfig.d_mlp must be a positive integer, got {self.d_mlp!r}")
        if self.act_fn not in ACT_FNS:
            raise ValueError(
                f"GPTConfig.act_fn must be one of {sorted(ACT_FNS)}, got {self.act_fn!r}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"GPTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @classmethod
    def from_architecture(cls, arch: Architecture, layer_norm_eps: float = 1e-5) -> Self:
        """Our model for an ``Architecture``; raises ``ValueError`` naming what it cannot express."""
        problems = []
        if arch.normalization_type != "LN":
            problems.append(
                f"normalization_type {arch.normalization_type!r} (ours always has LayerNorm "
                "with learned weights: 'LN')"
            )
        if arch.positional_embedding_type != "standard":
            problems.append(
                f"positional_embedding_type {arch.positional_embedding_type!r} "
                "(ours has learned positions: 'standard')"
            )
        if arch.attention_dir != "causal":
            problems.append(f"attention_dir {arch.attention_dir!r} (ours is 'causal')")
        if arch.d_vocab_out not in (None, arch.d_vocab):
            problems.append(f"d_vocab_out {arch.d_vocab_out} != d_vocab {arch.d_vocab}")
        if arch.act_fn not in ACT_FNS:
            problems.append(f"act_fn {arch.act_fn!r} (ours has {sorted(ACT_FNS)})")
        if problems:
            raise ValueError(
                "this architecture cannot be expressed by mechflow's GPT: "
                + "; ".join(problems)
                + "; build it as a HookedTransformer (mechflow.models.build.build_model)"
            )
        return cls(
            n_layers=arch.n_layers,
            d_model=arch.d_model,
            n_heads=arch.n_heads,
            d_head=arch.d_head,
            n_ctx=arch.n_ctx,
            d_vocab=arch.d_vocab,
            d_mlp=None if arch.attn_only else arch.d_mlp,
            attn_only=arch.attn_only,
            layer_norm_eps=layer_norm_eps,
            act_fn=arch.act_fn,
        )

    def to_architecture(self) -> Architecture:
        return Architecture(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            n_ctx=self.n_ctx,
            d_vocab=self.d_vocab,
            attn_only=self.attn_only,
            d_mlp=self.d_mlp,
            act_fn=self.act_fn,
            normalization_type="LN",
        )


@dataclass
class KVCache:
    """Keys and values of every layer so far, preallocated to ``capacity`` positions.

    Positions ``[0, pos)`` are filled; the next forward pass writes its keys and values at
    ``pos`` and reads its positional embeddings from ``pos`` on. Writing into preallocated
    tensors instead of concatenating keeps a generation step free of allocations that grow.
    """

    keys: list[Float[Tensor, "batch head_index capacity d_head"]]
    values: list[Float[Tensor, "batch head_index capacity d_head"]]
    pos: int = 0

    @classmethod
    def empty(
        cls,
        cfg: GPTConfig,
        batch: int,
        capacity: int | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Self:
        """An empty cache for ``batch`` sequences of up to ``capacity`` (default n_ctx) tokens."""
        capacity = cfg.n_ctx if capacity is None else capacity
        if not 1 <= capacity <= cfg.n_ctx:
            raise ValueError(f"cache capacity must be in [1, n_ctx={cfg.n_ctx}], got {capacity}")
        shape = (batch, cfg.n_heads, capacity, cfg.d_head)
        return cls(
            keys=[torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)],
            values=[torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)],
        )

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reorder(self, index: Int[Tensor, " new_batch"]) -> None:
        """Keep the rows ``index`` picks, in that order (beam search), repeats allowed."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class Linear(nn.Module):
    """``x @ W + b`` with ``W`` stored ``[d_in, d_out]``, as TransformerLens stores ``W_in`` and
    ``W_U`` (nn.Linear stores ``[d_out, d_in]`` and computes ``x @ W.T``). Measured on CPU, a
    batch-1 decoding step of the GPT-2-small shape, which only streams the weights from memory,
    took 19.0 ms this way against 20.5 ms with nn.Linear."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(d_in, d_out))
        self.b = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        return x @ self.W + self.b


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        inner = cfg.n_heads * cfg.d_head
        self.qkv = Linear(cfg.d_model, 3 * inner)  # columns: q, k, v; within each, head-major
        self.out = Linear(inner, cfg.d_model)

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        cache_k: Float[Tensor, "batch head_index capacity d_head"] | None = None,
        cache_v: Float[Tensor, "batch head_index capacity d_head"] | None = None,
        start: int = 0,
    ) -> Float[Tensor, "batch pos d_model"]:
        batch, pos, _ = x.shape
        # [3, batch, head_index, pos, d_head]
        q, k, v = self.qkv(x).view(batch, pos, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        if cache_k is not None:
            end = start + pos
            cache_k[:, :, start:end] = k
            cache_v[:, :, start:end] = v
            k, v = cache_k[:, :, :end], cache_v[:, :, :end]
        if pos == 1:  # one new query sees every cached key: no mask
            z = F.scaled_dot_product_attention(q, k, v)
        elif start == 0:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # queries at start..start+pos-1 over keys 0..start+pos-1 (is_causal aligns top-left)
            key_pos = torch.arange(start + pos, device=x.device)
            query_pos = torch.arange(start, start + pos, device=x.device)
            mask = key_pos[None, :] <= query_pos[:, None]  # [pos, key_pos]
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # z: [batch, head_index, pos, d_head] -> [batch, pos, head_index * d_head]
        return self.out(z.transpose(1, 2).reshape(batch, pos, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = Linear(cfg.d_model, cfg.d_mlp)
        self.act = ACT_FNS[cfg.act_fn]
        self.proj = Linear(cfg.d_mlp, cfg.d_model)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        if not cfg.attn_only:
            self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
            self.mlp = MLP(cfg)
        self.attn_only = cfg.attn_only

    def forward(self, x, cache_k=None, cache_v=None, start: int = 0):
        x = x + self.attn(self.ln1(x), cache_k, cache_v, start)
        if not self.attn_only:
            x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    """GPT-2: token + learned positional embeddings, pre-LN blocks, final LN, unembedding.

    Module names follow TransformerLens (``embed``, ``pos_embed``, ``blocks.{i}.ln1``, ``attn``,
    ``ln2``, ``mlp``, ``ln_final``, ``unembed``) so the conversion reads line by line. No
    dropout: TransformerLens has none, and our models are small enough not to need it.
    """

    def __init__(self, cfg: GPTConfig, seed: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.unembed = Linear(cfg.d_model, cfg.d_vocab)
        self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """GPT-2's init: N(0, 0.02), residual-stream writers scaled by 1/sqrt(2 n_layers)."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        residual_std = INIT_STD / math.sqrt(2 * self.cfg.n_layers)

        def normal_(param: Tensor, std: float) -> None:
            if not param.is_meta:  # a meta model is built to be loaded into (from_hooked)
                # drawn on the CPU so a seed gives the same weights on every device
                param.copy_(torch.randn(param.shape, generator=generator) * std)

        for name, module in self.named_modules():
            if isinstance(module, Linear):
                writes_residual = name.endswith((".attn.out", ".mlp.proj"))
                normal_(module.W, residual_std if writes_residual else INIT_STD)
                module.b.zero_()
            elif isinstance(module, nn.Embedding):
                normal_(module.weight, INIT_STD)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def new_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        """An empty cache on this model's device and dtype."""
        weight = self.embed.weight
        return KVCache.empty(self.cfg, batch, capacity, device=weight.device, dtype=weight.dtype)

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        past: KVCache | None = None,
        *,
        return_cache: bool = False,
        last_only: bool = False,
    ) -> Float[Tensor, "batch pos d_vocab"] | tuple[Float[Tensor, "batch pos d_vocab"], KVCache]:
        """Logits of ``tokens``, which continue ``past`` when given.

        ``past`` is updated in place (its keys and values written, its ``pos`` advanced);
        ``return_cache`` returns ``(logits, cache)``, with a new cache of n_ctx positions when
        ``past`` is None. ``last_only`` computes the logits of the last position only, as
        generation needs (the unembedding is a large share of a small model's cost).
        """
        batch, pos = tokens.shape
        start = 0
        if past is None and return_cache:
            past = self.new_cache(batch)
        if past is not None:
            start = past.pos
            if batch != past.batch:
                raise ValueError(f"tokens have batch {batch} but the cache has {past.batch}")
            if start + pos > past.capacity:
                raise ValueError(
                    f"{start} cached + {pos} new positions exceed the cache's capacity of "
                    f"{past.capacity} (n_ctx is {self.cfg.n_ctx})"
                )
        if start + pos > self.cfg.n_ctx:
            raise ValueError(
                f"{start + pos} positions exceed the model's context of n_ctx={self.cfg.n_ctx}"
            )
        x = self.embed(tokens) + self.pos_embed.weight[start : start + pos]  # [batch, pos, d_model]
        if past is None:
            for block in self.blocks:
                x = block(x)
        else:
            for block, cache_k, cache_v in zip(self.blocks, past.keys, past.values, strict=True):
                x = block(x, cache_k, cache_v, start)
            past.pos = start + pos
        if last_only and pos > 1:
            x = x[:, -1:]
        logits = self.unembed(self.ln_final(x))
        return (logits, past) if return_cache else logits


# ---------------------------------------------------------------------------------------------
# Conversion to and from TransformerLens's layout.
#
# TransformerLens keeps per-head matrices (W_Q: [n_heads, d_model, d_head], W_O: [n_heads,
# d_head, d_model]); our fused qkv.W is [d_model, 3 * n_heads * d_head], its columns q, k, v,
# each head-major, and out.W is [n_heads * d_head, d_model]. W_in, W_out and W_U are ours as is.


def _hooked_state(gpt: GPT) -> dict[str, Tensor]:
    cfg, sd = gpt.cfg, gpt.state_dict()
    heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
    out = {
        "embed.W_E": sd["embed.weight"],
        "pos_embed.W_pos": sd["pos_embed.weight"],
        "ln_final.w": sd["ln_final.weight"],
        "ln_final.b": sd["ln_final.bias"],
        "unembed.W_U": sd["unembed.W"],
        "unembed.b_U": sd["unembed.b"],
    }
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        qkv_w = sd[p + "attn.qkv.W"].view(d_model, 3, heads, d_head)
        qkv_b = sd[p + "attn.qkv.b"].view(3, heads, d_head)
        for j, name in enumerate("QKV"):
            out[p + f"attn.W_{name}"] = qkv_w[:, j].permute(1, 0, 2)  # [heads, d_model, d_head]
            out[p + f"attn.b_{name}"] = qkv_b[j]
        out[p + "attn.W_O"] = sd[p + "attn.out.W"].view(heads, d_head, d_model)
        out[p + "attn.b_O"] = sd[p + "attn.out.b"]
        for ln in ("ln1",) if cfg.attn_only else ("ln1", "ln2"):
            out[p + f"{ln}.w"] = sd[p + f"{ln}.weight"]
            out[p + f"{ln}.b"] = sd[p + f"{ln}.bias"]
        if not cfg.attn_only:
            out[p + "mlp.W_in"] = sd[p + "mlp.fc.W"]
            out[p + "mlp.b_in"] = sd[p + "mlp.fc.b"]
            out[p + "mlp.W_out"] = sd[p + "mlp.proj.W"]
            out[p + "mlp.b_out"] = sd[p + "mlp.proj.b"]
    return out


def to_hooked(gpt: GPT) -> HookedTransformer:
    """A HookedTransformer computing the same function, weights copied (not shared)."""
    from mechflow.models.build import hooked_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import transformer_lens as tl

        hcfg = hooked_config(gpt.cfg.to_architecture())
        hcfg.eps = gpt.cfg.layer_norm_eps
        hcfg.dtype = gpt.embed.weight.dtype
        hcfg.device = str(gpt.embed.weight.device)
        model = tl.HookedTransformer(hcfg)
    state = model.state_dict()
    ours = {k: v.contiguous() for k, v in _hooked_state(gpt).items()}
    missing = sorted(k for k, v in state.items() if k not in ours and v.numel() > 1)
    if missing:  # only buffers (the empty mask, IGNORE) come from TransformerLens
        raise RuntimeError(f"to_hooked: no value for {missing}")
    model.load_state_dict({**state, **ours}, strict=True)
    model.eval()
    return model


def _gpt_config_from_hooked(hcfg: Any) -> tuple[GPTConfig, bool]:
    """Our config for a HookedTransformerConfig, and whether its LayerNorms are folded (LNPre)."""
    problems = []

    def expect(field: str, wanted, why: str) -> None:
        value = getattr(hcfg, field, wanted)
        if value != wanted:
            problems.append(f"{field}={value!r} ({why})")

    if hcfg.normalization_type not in ("LN", "LNPre"):
        problems.append(f"normalization_type={hcfg.normalization_type!r} (ours needs LN or LNPre)")
    if hcfg.act_fn not in ACT_FNS:
        problems.append(f"act_fn={hcfg.act_fn!r} (ours has {sorted(ACT_FNS)})")
    expect("positional_embedding_type", "standard", "ours has learned positions")
    expect("attention_dir", "causal", "ours is causal")
    expect("n_key_value_heads", None, "grouped-query attention")
    expect("gated_mlp", False, "gated MLP")
    expect("parallel_attn_mlp", False, "parallel attention and MLP")
    expect("use_local_attn", False, "local attention")
    expect("use_qk_norm", False, "query/key norms")
    expect("final_rms", False, "RMS norm")
    expect("post_embedding_ln", False, "LayerNorm after the embedding")
    expect("scale_attn_by_inverse_layer_idx", False, "per-layer attention scale")
    expect("use_normalization_before_and_after", False, "extra norms")
    expect("use_attn_scale", True, "ours divides scores by sqrt(d_head)")
    expect("d_vocab_out", hcfg.d_vocab, "a separate output vocabulary")
    if (
        getattr(hcfg, "attn_scores_soft_cap", -1.0) > 0
        or getattr(hcfg, "output_logits_soft_cap", -1.0) > 0
    ):
        problems.append("soft-capped scores or logits")
    if not math.isclose(float(hcfg.attn_scale), math.sqrt(hcfg.d_head)):
        problems.append(f"attn_scale={hcfg.attn_scale} (ours is sqrt(d_head))")
    if problems:
        raise ValueError("this HookedTransformer cannot be converted: " + "; ".join(problems))
    cfg = GPTConfig(
        n_layers=hcfg.n_layers,
        d_model=hcfg.d_model,
        n_heads=hcfg.n_heads,
        d_head=hcfg.d_head,
        n_ctx=hcfg.n_ctx,
        d_vocab=hcfg.d_vocab,
        d_mlp=None if hcfg.attn_only else hcfg.d_mlp,
        attn_only=hcfg.attn_only,
        layer_norm_eps=hcfg.eps,
        act_fn=hcfg.act_fn,
    )
    return cfg, hcfg.normalization_type == "LNPre"


def from_hooked(model: HookedTransformer) -> GPT:
    """Our GPT computing the same function as a GPT-2-style HookedTransformer.

    Accepts TransformerLens's ``LN`` models exactly and ``LNPre`` ones (``from_pretrained``
    folds the LayerNorm weights into the next layer): an ``LNPre`` norm is a LayerNorm with
    weight 1 and bias 0, which is what ours gets. Raises ``ValueError`` for anything else
    GPT-2 does not have (rotary, GQA, gated MLPs, ...).
    """
    cfg, folded = _gpt_config_from_hooked(model.cfg)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
    weight = sd["embed.W_E"]

    def ln(prefix: str) -> tuple[Tensor, Tensor]:
        if folded:
            return torch.ones_like(weight[0]), torch.zeros_like(weight[0])
        return sd[prefix + ".w"], sd[prefix + ".b"]

    state = {
        "embed.weight": sd["embed.W_E"],
        "pos_embed.weight": sd["pos_embed.W_pos"],
        "unembed.W": sd["unembed.W_U"],
        "unembed.b": sd["unembed.b_U"],
    }
    state["ln_final.weight"], state["ln_final.bias"] = ln("ln_final")
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        # [heads, d_model, d_head] -> [d_model, heads * d_head], then q, k, v side by side
        w = [sd[p + f"attn.W_{n}"].permute(1, 0, 2).reshape(d_model, -1) for n in "QKV"]
        state[p + "attn.qkv.W"] = torch.cat(w, dim=1)
        state[p + "attn.qkv.b"] = torch.cat([sd[p + f"attn.b_{n}"].reshape(-1) for n in "QKV"])
        state[p + "attn.out.W"] = sd[p + "attn.W_O"].reshape(heads * d_head, d_model)
        state[p + "attn.out.b"] = sd[p + "attn.b_O"]
        state[p + "ln1.weight"], state[p + "ln1.bias"] = ln(p + "ln1")
        if not cfg.attn_only:
            state[p + "ln2.weight"], state[p + "ln2.bias"] = ln(p + "ln2")
            state[p + "mlp.fc.W"] = sd[p + "mlp.W_in"]
            state[p + "mlp.fc.b"] = sd[p + "mlp.b_in"]
            state[p + "mlp.proj.W"] = sd[p + "mlp.W_out"]
            state[p + "mlp.proj.b"] = sd[p + "mlp.b_out"]
    with torch.device("meta"):
        gpt = GPT(cfg)
    # clone: copies, never views of the HookedTransformer's parameters
    gpt.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    gpt.eval()
    return gpt

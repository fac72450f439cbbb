"""How fast does our GPT generate, with and without its KV cache, against TransformerLens and HF?

Greedy generation, batch 1, a random ``--prompt``-token prompt (64), ``--new-tokens`` new tokens
(192), on two random-init shapes:

- ``default``: 4 layers, d_model 128, 4 heads, d_mlp 512, n_ctx 256, d_vocab 4096 (the
  language model's default shape; per-token overhead dominates);
- ``gpt2``: GPT-2 small (12 layers, d_model 768, 12 heads, d_mlp 3072, n_ctx 1024, d_vocab
  50257; reading the weights from memory dominates a cached step).

Variants, timed side by side in one process, interleaved and rotated over ``--repeats``:

- ``ours-cache`` / ``ours-nocache``: ``mechflow.models.sampling.generate`` on our GPT, with its
  preallocated KV cache or recomputing the prefix every step (last-position logits only);
- ``tl-cache``: the same ``generate`` on ``to_hooked(ours)``, driving TransformerLens's
  ``TransformerLensKeyValueCache`` directly (TL 3.9's own cached ``generate`` is wrong for models
  without a tokenizer; see ``mechflow.models.sampling``);
- ``hf-cache`` / ``hf-nocache``: ``transformers.GPT2LMHeadModel.generate`` (same shape, its own
  random weights, ``do_sample=False``, ``use_cache=True/False``).

New tokens/s is the median over repeats (best beside it); each ratio is the median of per-repeat
ratios. Ours and TL run the same weights, so their tokens must agree (checked); HF's cached and
uncached runs must agree with each other. Not a test: prints a table. See benchmarks/README.md.

    .venv/bin/python benchmarks/generation.py                  # both shapes, ~7 min on 2 cores
    .venv/bin/python benchmarks/generation.py --shape default  # ~15 s
    .venv/bin/python benchmarks/generation.py --quick          # smoke run, ~5 s
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

SHAPES = {
    "default": {"n_layers": 4, "d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512,
                "n_ctx": 256, "d_vocab": 4096},
    "gpt2": {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_head": 64, "d_mlp": 3072,
             "n_ctx": 1024, "d_vocab": 50257},
}  # fmt: skip
VARIANTS = ("ours-cache", "ours-nocache", "tl-cache", "hf-cache", "hf-nocache")
# (numerator, denominator, {shape: target}) from the issue
RATIOS = (
    ("ours-cache", "ours-nocache", {"gpt2": 5.0}),
    ("ours-cache", "hf-cache", {"default": 2.0, "gpt2": 1.0}),
    ("tl-cache", "ours-cache", {}),
    ("hf-cache", "hf-nocache", {}),
)


def build(shape: str, variants: tuple[str, ...]):
    """One generation function per variant: ``fn(prompt, new_tokens) -> tokens``."""
    import torch

    from mechflow.models.gpt import GPT, GPTConfig, to_hooked
    from mechflow.models.sampling import generate

    cfg = GPTConfig(**SHAPES[shape], act_fn="gelu_new")
    ours = GPT(cfg, seed=0).eval()
    fns = {
        "ours-cache": lambda p, n: generate(ours, p, n, temperature=0),
        "ours-nocache": lambda p, n: generate(ours, p, n, temperature=0, use_cache=False),
    }
    if "tl-cache" in variants:
        hooked = to_hooked(ours)
        fns["tl-cache"] = lambda p, n: generate(hooked, p, n, temperature=0)
    if {"hf-cache", "hf-nocache"} & set(variants):
        import transformers

        transformers.logging.set_verbosity_error()
        hf_cfg = transformers.GPT2Config(
            n_layer=cfg.n_layers, n_embd=cfg.d_model, n_head=cfg.n_heads, n_inner=cfg.d_mlp,
            n_positions=cfg.n_ctx, vocab_size=cfg.d_vocab, activation_function="gelu_new",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(hf_cfg).eval()

        def hf_generate(prompt, n, use_cache):
            with torch.inference_mode():
                return hf.generate(
                    prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                    do_sample=False, use_cache=use_cache,
                )  # fmt: skip

        fns["hf-cache"] = lambda p, n: hf_generate(p, n, True)
        fns["hf-nocache"] = lambda p, n: hf_generate(p, n, False)
    return {name: fns[name] for name in variants}, cfg


def run_shape(shape: str, args) -> None:
    import torch

    new = args.new_tokens
    fns, cfg = build(shape, args.variants)
    prompt = torch.randint(
        0, cfg.d_vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0)
    )
    for fn in fns.values():  # warm-up: first touch of the weights, allocator, kernels
        fn(prompt, 4)
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    outputs = {}
    names = tuple(fns)
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            start = time.perf_counter()
            out = fns[name](prompt, new)
            seconds[name].append(time.perf_counter() - start)
            if out.shape != (1, args.prompt + new):
                raise RuntimeError(f"{name} returned shape {tuple(out.shape)}")
            outputs[name] = out
        print(
            f"  repeat {rep + 1}: "
            + ", ".join(f"{n} {new / seconds[n][-1]:.1f}" for n in names)
            + " new tokens/s",
            flush=True,
        )

    print(f"\n{shape}: {args.prompt}-token prompt + {new} new tokens, greedy, batch 1")
    print(f"  {'variant':14s} {'new tok/s (median)':>19s} {'best':>9s}")
    for name in names:
        rates = [new / s for s in seconds[name]]
        print(f"  {name:14s} {statistics.median(rates):19.1f} {max(rates):9.1f}")
    for num, den, targets in RATIOS:
        if num not in seconds or den not in seconds:
            continue
        ratios = [d / n for n, d in zip(seconds[num], seconds[den], strict=True)]
        target = targets.get(shape)
        verdict = "" if target is None else f"  target >= {target:.1f}x: "
        if target is not None:
            verdict += "met" if statistics.median(ratios) >= target else "MISSED"
        print(
            f"  {num} / {den}: {statistics.median(ratios):.2f}x "
            f"(per repeat {', '.join(f'{x:.2f}' for x in ratios)}){verdict}"
        )
    same = [n for n in ("ours-nocache", "tl-cache") if n in outputs]
    if "ours-cache" in outputs and same:
        agree = all(torch.equal(outputs["ours-cache"], outputs[n]) for n in same)
        print(f"  ours-cache tokens == {', '.join(same)}: {agree}")
    if "hf-cache" in outputs and "hf-nocache" in outputs:
        print(
            f"  hf-cache tokens == hf-nocache: {torch.equal(outputs['hf-cache'], outputs['hf-nocache'])}"
        )
    print(flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=(*SHAPES, "both"), default="both")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="a subset"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: default shape, 16 new tokens, 1 repeat"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.new_tokens, args.repeats, args.prompt = "default", 16, 1, 16
    args.variants = tuple(v for v in VARIANTS if v in args.variants)

    from mechflow import runtime

    runtime.go_offline()
    runtime.set_threads(args.threads)
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    for shape in SHAPES if args.shape == "both" else (args.shape,):
        run_shape(shape, args)


if __name__ == "__main__":
    main()

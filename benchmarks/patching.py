"""How fast is mechflow's patching engine against TransformerLens's one-forward-per-index patching?

Side by side in one process, on the same random-init model and prompts (``--prompts`` clean
prompts of ``--pos`` tokens, each corrupted at one position; a logit difference at the last
position), interleaved over ``--repeats``:

- head x position activation patching (every (layer, pos, head)): ``mechflow.patching.
  activation_patching(kind="z", by_pos=True)`` against TransformerLens 3.9's
  ``patching.get_act_patch_attn_head_out_by_pos``. TransformerLens runs one forward pass per
  index, so it is timed on ``--tl-indices`` sampled indices (``generic_activation_patch`` with
  an ``index_df``) and extrapolated to all of them; its values on those indices must equal ours
  (<= 1e-4, checked).
- path patching of every sender head to the logits: ``mechflow.patching.path_patching`` against
  one forward per sender (ARENA's algorithm, as a loop of ``run_with_hooks``); checked equal.
- attribution patching of every (layer, pos, head): two forwards and a backward; printed in
  forward-equivalents (its time over one forward of the prompts) beside the exact sweep's.

Shapes: ``gpt2`` (GPT-2 small: 12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257),
``ioi`` (the offline IOI model's architecture, read from config/config.yaml: 3 attention-only
layers, d_model 64, 4 heads, its 141-word vocabulary). Targets (issue 12): >= 10x on gpt2 and
>= 20x on the IOI model, on this CPU.

    .venv/bin/python benchmarks/patching.py --shape ioi              # ~1 min on 2 cores
    .venv/bin/python benchmarks/patching.py --shape gpt2 --repeats 5  # ~12 min
    .venv/bin/python benchmarks/patching.py --quick                   # smoke run, ~10 s
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def ioi_architecture() -> dict:
    """The default config's first IOI model's architecture (its one source), less n_ctx."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    model = config["models"][config["experiments"]["ioi"]["models"][0]]
    return {k: v for k, v in model["architecture"].items() if k not in ("n_ctx",)}


SHAPES = {
    "ioi": ioi_architecture,
    "gpt2": lambda: {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_head": 64, "d_mlp": 3072,
                     "d_vocab": 50257, "act_fn": "gelu_new", "normalization_type": "LN"},
}  # fmt: skip
TARGETS = {"ioi": 20.0, "gpt2": 10.0}


def build(shape: str, n_prompts: int, n_pos: int, seed: int = 0):
    import torch
    import transformer_lens as tl

    from mechflow.patching import LogitDifference

    cfg = tl.HookedTransformerConfig(
        **SHAPES[shape](), n_ctx=max(n_pos, 16), seed=seed, device="cpu"
    )
    model = tl.HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    vocab = cfg.d_vocab
    clean = torch.randint(0, vocab, (n_prompts, n_pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, n_pos // 3] = torch.randint(0, vocab, (n_prompts,), generator=g)
    metric = LogitDifference(
        positions=torch.full((n_prompts,), n_pos - 1),
        correct=torch.randint(0, vocab, (n_prompts,), generator=g),
        wrong=torch.randint(0, vocab, (n_prompts,), generator=g),
    )
    return model, clean, corrupted, metric


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def tl_sampled_head_by_pos(model, clean, corrupted, metric, n_indices: int, seed: int):
    """TransformerLens on ``n_indices`` sampled (layer, pos, head) indices, and those indices."""
    import pandas as pd
    import torch
    from transformer_lens import patching

    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    total = cfg.n_layers * clean.shape[1] * cfg.n_heads
    picks = torch.randperm(total, generator=g)[: min(n_indices, total)]
    layer, rest = picks // (clean.shape[1] * cfg.n_heads), picks % (clean.shape[1] * cfg.n_heads)
    pos, head = rest // cfg.n_heads, rest % cfg.n_heads
    index_df = pd.DataFrame({"layer": layer, "pos": pos, "head_index": head})
    _, clean_cache = model.run_with_cache(clean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = patching.generic_activation_patch(
            model, corrupted, clean_cache, metric, patching.layer_pos_head_vector_patch_setter,
            "z", index_df=index_df,
        )  # fmt: skip
    return values, (layer, pos, head), total


def run_shape(shape: str, args) -> None:
    import torch

    from mechflow.patching import activation_patching, attribution_patching, path_patching
    from mechflow.patching.path import path_patching_loop

    model, clean, corrupted, metric = build(shape, args.prompts, args.pos)
    cfg = model.cfg
    print(
        f"\n{shape}: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
        f"{args.prompts} prompt(s) of {args.pos} tokens, batch {args.batch_size}",
        flush=True,
    )
    variants = {
        "ours head x pos": lambda: activation_patching(
            model, clean, corrupted, "z", metric, by_pos=True, batch_size=args.batch_size
        ),
        "tl head x pos (sampled)": lambda: tl_sampled_head_by_pos(
            model, clean, corrupted, metric, args.tl_indices, seed=0
        ),
        "ours path (all senders)": lambda: path_patching(
            model, clean, corrupted, metric, batch_size=args.batch_size
        ),
        "loop path (one pass per sender)": lambda: path_patching_loop(
            model, clean, corrupted, metric
        ),
        "attribution head x pos": lambda: attribution_patching(
            model, clean, corrupted, "z", metric, by_pos=True
        ),
        "one forward": lambda: model(clean),
    }
    for fn in variants.values():  # warm-up (allocator, kernels); also the results to check
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    results = {}
    names = list(variants)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            with torch.inference_mode(name != "attribution head x pos"):
                seconds, results[name] = timed(variants[name])
            times[name].append(seconds)

    ours = results["ours head x pos"]
    tl_values, (layer, pos, head), total = results["tl head x pos (sampled)"]
    err = float((ours[layer, pos, head] - tl_values).abs().max())
    path_err = float(
        (results["ours path (all senders)"] - results["loop path (one pass per sender)"])
        .abs()
        .max()
    )
    med = {name: statistics.median(ts) for name, ts in times.items()}
    tl_full = med["tl head x pos (sampled)"] * total / len(tl_values)
    print(f"{'variant':34} {'median s':>10} {'best s':>10}")
    for name, ts in times.items():
        print(f"{name:34} {med[name]:10.3f} {min(ts):10.3f}")
    print(
        f"TransformerLens on all {total} indices (extrapolated from {len(tl_values)}): "
        f"{tl_full:.1f} s"
    )
    speedup = tl_full / med["ours head x pos"]
    target = TARGETS[shape]
    print(
        f"{shape}: head x pos activation patching, ours vs TransformerLens: {speedup:.1f}x "
        f"(target >= {target:.0f}x: {'met' if speedup >= target else 'MISSED'}); "
        f"max |difference| on the sampled indices {err:.2e} (<= 1e-4: {err <= 1e-4})"
    )
    print(
        f"{shape}: path patching to the logits, ours vs one pass per sender: "
        f"{med['loop path (one pass per sender)'] / med['ours path (all senders)']:.1f}x; "
        f"max |difference| {path_err:.2e}"
    )
    print(
        f"{shape}: forward-equivalents for every (layer, pos, head): attribution "
        f"{med['attribution head x pos'] / med['one forward']:.1f}, our exact sweep "
        f"{med['ours head x pos'] / med['one forward']:.1f}, TransformerLens's {total}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=(*SHAPES, "both"), default="both")
    parser.add_argument("--prompts", type=int, default=1, help="clean prompts per sweep")
    parser.add_argument("--pos", type=int, default=15, help="tokens per prompt")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per forward")
    parser.add_argument(
        "--tl-indices", type=int, default=200, help="indices TransformerLens is timed on"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: ioi, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.repeats, args.tl_indices = "ioi", 1, 20

    from mechflow import runtime

    runtime.go_offline()
    runtime.set_threads(args.threads)
    runtime.retain_freed_memory()
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    for shape in SHAPES if args.shape == "both" else (args.shape,):
        run_shape(shape, args)


if __name__ == "__main__":
    main()

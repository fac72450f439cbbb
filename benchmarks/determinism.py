"""What deterministic mode costs: language-model training time with and without it.

Times ``mechflow.models.train.train`` on the default config's ``attn_only_2l`` architecture
(2 layers, d_model 64, 4 heads, d_head 16, n_ctx 64, d_vocab 128, attention-only, LN; batch 32,
AdamW with warm-up) for ``--steps`` steps, in three variants:

- ``default``       : torch's defaults (what steps ran before ``runtime.start`` made them
  deterministic);
- ``algorithms``    : ``torch.use_deterministic_algorithms(True)`` alone;
- ``deterministic`` : what ``runtime.start`` now does: deterministic algorithms plus MKL's
  strict reproducibility mode (``MKL_CBWR=AUTO,STRICT``), which MKL reads once, at the first
  matrix product, so every run is a fresh subprocess.

Runs are interleaved and rotated over ``--repeats``; each variant's time is the median (best
beside it) and the ratio is the median over repeats of deterministic / default time in the same
repeat. The hashes column lists the distinct final weights a variant produced over its repeats:
one hash means its runs agreed bit for bit. Not a test: prints a table. See benchmarks/README.md.

    .venv/bin/python benchmarks/determinism.py                  # ~2.5 min on 2 cores
    .venv/bin/python benchmarks/determinism.py --steps 100 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("default", "algorithms", "deterministic")
ARCHITECTURE = {
    "n_layers": 2, "d_model": 64, "n_heads": 4, "d_head": 16, "n_ctx": 64, "d_vocab": 128,
    "attn_only": True, "normalization_type": "LN",
}  # fmt: skip
TRAINING = {"batch_size": 32, "lr": 0.003, "weight_decay": 0.01, "warmup_steps": 100, "seed": 0}


def child(variant: str, steps: int, threads: int, device: str) -> None:
    """One timed training in this (fresh) process; prints seconds and the weights' hash."""
    from mechflow import runtime

    if variant == "deterministic":
        runtime.deterministic_env()  # before torch runs its first matrix product
    runtime.go_offline()
    runtime.set_threads(threads)
    import torch

    if variant == "deterministic":
        runtime.use_deterministic()
    elif variant == "algorithms":
        torch.use_deterministic_algorithms(True)

    from mechflow.data.induction import repeated_spans
    from mechflow.models.build import build_model
    from mechflow.models.config import Architecture, TrainingConfig
    from mechflow.models.train import train

    tokens = repeated_spans(
        n_sequences=2000, seq_len=64, d_vocab=128, span_len=(4, 20), spans_per_seq=2, seed=0
    )
    arch = Architecture(**ARCHITECTURE)
    dev = runtime.pick_device(device)
    # warm-up: allocator, kernels, and on CUDA the context and cuBLAS handle
    warm = build_model(arch, seed=1).to(dev)
    train(warm, tokens, TrainingConfig(steps=5, **TRAINING), progress=False)
    runtime.seed_everything(0)
    model = build_model(arch, seed=0).to(dev)
    cfg = TrainingConfig(steps=steps, **TRAINING)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(model, tokens, cfg, progress=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    print(json.dumps({"seconds": seconds, "sha256": digest.hexdigest()[:12]}))


def timed_run(variant: str, args) -> dict:
    env = dict(os.environ)
    env.pop("MKL_CBWR", None)  # the child sets it, for the deterministic variant only
    cmd = [
        sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
        "--threads", str(args.threads), "--device", args.device,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{variant} run failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.threads, args.device)
        return

    print(
        f"attn_only_2l, batch 32 x 64 tokens, {args.steps} steps per run, {args.threads} "
        f"thread(s), device {args.device}; a fresh process per run"
    )
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for rep in range(args.repeats):
        order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
        for name in order:
            runs[name].append(timed_run(name, args))
        print(
            f"repeat {rep + 1}: "
            + ", ".join(f"{n} {runs[n][-1]['seconds']:.2f}s" for n in VARIANTS),
            flush=True,
        )

    print()
    print(f"{'variant':14s} {'s/run (median)':>15s} {'best':>8s} {'steps/s':>8s}  hashes")
    for name in VARIANTS:
        seconds = [r["seconds"] for r in runs[name]]
        hashes = sorted({r["sha256"] for r in runs[name]})
        median = statistics.median(seconds)
        print(
            f"{name:14s} {median:15.2f} {min(seconds):8.2f} {args.steps / median:8.1f}  "
            f"{len(hashes)}: {' '.join(hashes)}"
        )
    base = [r["seconds"] for r in runs["default"]]
    for name in VARIANTS[1:]:
        ratios = [r["seconds"] / b for r, b in zip(runs[name], base, strict=True)]
        print(
            f"{name} / default: {statistics.median(ratios):.2f}x "
            f"(per repeat {', '.join(f'{x:.2f}' for x in ratios)})"
        )


if __name__ == "__main__":
    main()

"""How fast is the batched probe engine against one scikit-learn LogisticRegression per probe?

An OthelloGPT-shaped sweep on synthetic planted-direction data (so accuracy means something):
``--hooks`` (8) hooks x ``--targets`` (64) targets x ``--classes`` (3) classes, d_model 512,
20,000 training rows plus a validation split of whole groups (``--rows-per-group`` 60, a
game's moves). Hook h carries a share ``signal[h]`` of a Gaussian latent whose planted linear
functions decide each target's class (argmax), label noise 10%; hook 0 is pure noise.

- ours: ``mechflow.probes.train.train_probes`` on the in-memory activations: every probe in
  one batched AdamW optimisation with per-probe early stopping, standardisation, the final
  accuracy passes and the results table included.
- sklearn **[baseline]**: ``LogisticRegression()`` (lbfgs, C=1.0, max_iter 100: its defaults)
  fitted per (hook, target) on the same training rows (float32, which it keeps), timed on
  ``--sklearn-pairs`` (32) sampled pairs, 4 per hook, and extrapolated to all of them.

Repeats are interleaved (ours, then sklearn, order alternating; one untimed warm-up of each
first); times are medians (best beside them), the ratio is the median of per-repeat ratios.
``--sklearn-repeats`` (5) may be set lower for long sklearn runs (larger shapes). Mean
validation accuracy must agree within 1 point on the sampled pairs (both printed, and ours
over every probe). Threads: torch uses ``--threads`` (2); sklearn's lbfgs loss and gradient
are single-threaded Cython, its matrix products go through numpy's OpenBLAS, limited to the
same ``--threads`` with threadpoolctl. Target (OthelloGPT issue): >= 10x faster at equal mean
accuracy.

    .venv/bin/python benchmarks/probes.py              # full sweep, ~1.5 min on 2 cores
    .venv/bin/python benchmarks/probes.py --small      # 4 x 16 probes, d_model 128, ~10 s
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings

import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hooks", type=int, default=8)
    p.add_argument("--targets", type=int, default=64)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--train-rows", type=int, default=20_000)
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--rows-per-group", type=int, default=60)
    p.add_argument("--label-noise", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sklearn-repeats", type=int, default=5)
    p.add_argument("--sklearn-pairs", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="4 hooks x 16 targets, d_model 128")
    args = p.parse_args(argv)
    if args.small:
        args.hooks, args.targets, args.d_model, args.train_rows = 4, 16, 128, 5_000
        args.sklearn_pairs = 8
    return args


def signal_shares(n_hooks: int) -> list[float]:
    """Hook 0 pure noise, then more and more of the latent, the last hooks all of it."""
    return [0.0] + [min(1.0, i / max(1, n_hooks - 2)) for i in range(1, n_hooks)]


def sample_pairs(n_hooks: int, n_targets: int, n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """About the same number of targets from every hook."""
    rng = np.random.default_rng(seed)
    per_hook = -(-n_pairs // n_hooks)
    pairs = [(h, int(t)) for h in range(n_hooks) for t in rng.permutation(n_targets)[:per_hook]]
    return pairs[:n_pairs]


def run_ours(data, cfg):
    from mechflow.probes.train import train_probes

    start = time.perf_counter()
    result = train_probes(data.acts, data.labels, cfg, groups=data.groups, progress=False)
    return time.perf_counter() - start, result


def run_sklearn(data, validation, pairs, threads):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    times, accuracy, predictions, unconverged = [], [], [], 0
    train = ~validation
    with threadpool_limits(limits=threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for h, t in pairs:
            x, y = data.acts[h][train], data.labels[train, t]
            start = time.perf_counter()
            model = LogisticRegression().fit(x, y)  # lbfgs, C=1.0
            times.append(time.perf_counter() - start)
            pred = model.predict(data.acts[h][validation])
            predictions.append(pred)
            accuracy.append(float((pred == data.labels[validation, t]).mean()))
        unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return times, accuracy, predictions, unconverged


def main(argv=None) -> None:
    from mechflow import runtime
    from mechflow.probes.config import ProbeConfig
    from mechflow.probes.linear import predict
    from mechflow.probes.synthetic import planted_probe_data

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runtime.retain_freed_memory()  # as every step does: the activation buffer is not re-faulted
    H, T = args.hooks, args.targets
    n_rows = round(args.train_rows / (1 - args.validation_fraction))
    data = planted_probe_data(
        n_rows=n_rows, d_model=args.d_model, n_targets=T, n_classes=args.classes,
        signal=signal_shares(H), label_noise=args.label_noise,
        rows_per_group=args.rows_per_group, class_offset=0.5, seed=args.seed,
    )  # fmt: skip
    cfg = ProbeConfig(
        n_classes=args.classes, validation_fraction=args.validation_fraction, seed=args.seed
    )
    pairs = sample_pairs(H, T, args.sklearn_pairs, args.seed)
    print(
        f"{H} hooks x {T} targets x {args.classes} classes, d_model {args.d_model}, "
        f"{n_rows} rows in groups of {args.rows_per_group}, torch threads {args.threads}"
    )
    print(f"signal shares {[round(s, 2) for s in signal_shares(H)]}; {cfg}")

    run_ours(data, dataclasses.replace(cfg, max_epochs=1))  # warm-up, untimed
    run_sklearn(data, result_validation(data, cfg), pairs[:1], args.threads)
    ours_times, sk_totals, ratios = [], [], []
    result = sk = None
    for r in range(args.repeats):
        runs = ["ours", "sklearn"] if r % 2 == 0 else ["sklearn", "ours"]
        for which in runs:
            if which == "ours":
                elapsed, result = run_ours(data, cfg)
                ours_times.append(elapsed)
                print(f"repeat {r}: ours {elapsed:.2f} s", flush=True)
            elif r < args.sklearn_repeats:
                sk = run_sklearn(data, result_validation(data, cfg), pairs, args.threads)
                total = sum(sk[0]) * H * T / len(pairs)
                sk_totals.append(total)
                print(
                    f"repeat {r}: sklearn {sum(sk[0]):.2f} s on {len(pairs)} pairs "
                    f"-> {total:.1f} s extrapolated to {H * T}",
                    flush=True,
                )
        if r < args.sklearn_repeats:
            ratios.append(sk_totals[-1] / ours_times[-1])

    table = result.table
    ours_acc = table["validation_accuracy"].to_numpy().reshape(H, T)
    ours_pairs = float(np.mean([ours_acc[h, t] for h, t in pairs]))
    sk_pairs = float(np.mean(sk[1]))
    preds = predict(result.probes, data.acts[:, result.validation]).numpy()
    agree = np.mean([(p == preds[h, :, t]).mean() for (h, t), p in zip(pairs, sk[2], strict=True)])
    print()
    print(f"ours     {statistics.median(ours_times):8.2f} s (best {min(ours_times):.2f})")
    print(
        f"sklearn  {statistics.median(sk_totals):8.1f} s extrapolated (best {min(sk_totals):.1f}; "
        f"{statistics.median(sk_totals) / (H * T):.2f} s per probe; "
        f"{sk[3]} of {len(pairs)} fits hit max_iter)"
    )
    print(
        f"ratio    {statistics.median(ratios):8.1f}x sklearn / ours "
        f"(min {min(ratios):.1f}, max {max(ratios):.1f}; target >= 10)"
    )
    print(
        f"validation accuracy on the {len(pairs)} sampled pairs: ours {ours_pairs:.4f}, "
        f"sklearn {sk_pairs:.4f} (diff {100 * (ours_pairs - sk_pairs):+.2f} points; target "
        f"within 1); predictions agree on {100 * agree:.1f}% of validation rows"
    )
    print(
        f"ours over all {H * T} probes: validation {ours_acc.mean():.4f}, baseline "
        f"{table['baseline_accuracy'].mean():.4f}, epochs mean {table['epochs'].mean():.1f} "
        f"(max {table['epochs'].max()})"
    )
    by_hook = table.groupby("hook", sort=False)[["validation_accuracy", "baseline_accuracy"]]
    print(by_hook.mean().round(4).to_string())


def result_validation(data, cfg) -> np.ndarray:
    from mechflow.probes.split import split_by_group

    return split_by_group(data.groups, cfg.validation_fraction, cfg.seed)


if __name__ == "__main__":
    main()

"""SAE training throughput: mechflow's trainer reading a zarr store vs an in-memory loop vs SAELens.

Side by side, in one process, on the same activations and the same SAE (ReLU, d_in 128 ->
d_sae 1024, L1 weighted by decoder norms, Adam, batch 4096 tokens, fp32): training tokens/s of

- ``mechflow`` : ``mechflow.saes.training.train_sae`` streaming from a zarr v3 activation store
  (chunk reads, cross-chunk shuffle, background prefetch, logging and dead-latent tracking
  included; fixed costs such as the input-scale estimate are inside its time);
- ``minimal``  : a plain PyTorch loop over an in-memory tensor (the same loss, autograd, Adam);
- ``saelens``  : SAELens's ``SAETrainer`` with a ``StandardTrainingSAE`` fed batches from memory
  (only when ``sae_lens`` imports; wandb and evals off).

The activations are random but structured (sparse sums of 4096 random unit directions plus
noise), written once into a store by this script. Runs are interleaved and rotated over
``--repeats``; tokens/s is the median (best beside it), and each ratio is the median over
repeats of the per-repeat ratio. Also prints the store's read rate alone. Not a test.

    .venv/bin/python benchmarks/sae_training.py                # ~2 min on 2 busy cores
    .venv/bin/python benchmarks/sae_training.py --steps 100 --repeats 5 --threads 2

sae-lens is in the ``test`` and ``saelens`` extras (``pip install -e '.[saelens]'``); without
it the SAELens column is left out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mechflow.runtime import go_offline, set_threads

HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE = 128, 1024
L1 = 2.0
LR = 4e-4


def make_store(path: Path, n_seq: int, n_pos: int, seed: int = 0) -> torch.Tensor:
    """Write a store in the layout ``mechflow.store`` reads; return the activations too."""
    from mechflow.saes.synthetic import sparse_feature_data
    from mechflow.store.writer import write_array_store

    data = sparse_feature_data(
        n_tokens=n_seq * n_pos, d_in=D_IN, n_features=4096, p_active=0.004, seed=seed, noise=0.05
    )
    acts = data.acts.reshape(n_seq, n_pos, D_IN).contiguous()  # seq pos d_model
    provenance = {"model": "synthetic", "model_hash": "synthetic", "dataset_sha256": f"bench{seed}"}
    write_array_store(path, {HOOK: acts.numpy()}, provenance=provenance)
    return acts.reshape(-1, D_IN)


def sae_config(steps: int, batch: int):
    from mechflow.saes.config import SAEConfig

    return SAEConfig(
        architecture="relu",
        d_in=D_IN,
        d_sae=D_SAE,
        hook_name=HOOK,
        l1_coefficient=L1,
        lr=LR,
        batch_size=batch,
        total_tokens=steps * batch,
        decoder_norm="free",  # SAELens "standard": L1 weighted by decoder norms
        normalize_activations="none",  # SAELens's default too
        dead_latents="none",
        skip_bos=False,
        checkpoint_every=0,
        log_every=50,
    )


def run_mechflow(store: Path, steps: int, batch: int) -> float:
    from mechflow.saes.training import StoreSource, train_sae
    from mechflow.store import open_store

    source = StoreSource(open_store(store), HOOK, skip_bos=False)
    start = time.perf_counter()
    train_sae(sae_config(steps, batch), source, progress=False)
    return time.perf_counter() - start


def run_minimal(acts: torch.Tensor, steps: int, batch: int) -> float:
    """What one would write first: autograd on the textbook loss, batches sliced from memory."""
    gen = torch.Generator().manual_seed(0)
    W_dec = torch.randn(D_SAE, D_IN, generator=gen)
    W_dec = 0.1 * W_dec / W_dec.norm(dim=1, keepdim=True)
    W_dec = W_dec.requires_grad_()
    W_enc = W_dec.detach().t().clone().requires_grad_()
    b_enc = torch.zeros(D_SAE, requires_grad=True)
    b_dec = torch.zeros(D_IN, requires_grad=True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=LR)
    n = acts.shape[0] // batch
    start = time.perf_counter()
    for step in range(steps):
        x = acts[(step % n) * batch : (step % n + 1) * batch]
        f = torch.relu((x - b_dec) @ W_enc + b_enc)
        x_hat = f @ W_dec + b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        l1 = (f * W_dec.norm(dim=1)).sum(-1).mean()
        loss = mse + L1 * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def run_saelens(acts: torch.Tensor, steps: int, batch: int) -> float:
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = StandardTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, l1_coefficient=L1, dtype="float32", device="cpu"
    )
    sae = StandardTrainingSAE(cfg)
    n = acts.shape[0] // batch

    def provider():
        step = 0
        while True:
            yield acts[(step % n) * batch : (step % n + 1) * batch]
            step += 1

    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr=LR,
        lr_end=LR,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider())
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def read_rate(store: Path) -> float:
    """Tokens/s of the shuffled stream alone (store reads, shuffle, batch slicing)."""
    from mechflow.saes.training import ShuffledBatches, StoreSource
    from mechflow.store import open_store

    source = StoreSource(open_store(store), HOOK, skip_bos=False)
    stream = iter(ShuffledBatches(source, 4096, seed=0, buffer_tokens=262_144))
    n = 2 * source.n_tokens // 4096
    start = time.perf_counter()
    for _ in range(n):
        next(stream)
    return n * 4096 / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40, help="training steps per timed run")
    parser.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=1024, help="store rows (x 128 pos)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tmpdir", type=Path, default=None)
    args = parser.parse_args(argv)
    go_offline()
    set_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        import sae_lens  # noqa: F401

        have_saelens = True
    except ImportError:
        have_saelens = False
        print("sae_lens is not importable here: its column is skipped")

    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        store = Path(tmp) / "bench.zarr"
        acts = make_store(store, args.sequences, 128)
        tokens = args.steps * args.batch_size
        print(
            f"{acts.shape[0]} tokens x d_in {D_IN} in the store; ReLU SAE d_sae {D_SAE}; "
            f"{args.steps} steps x {args.batch_size} tokens per run; {args.threads} thread(s)"
        )
        print(f"store read + shuffle alone: {read_rate(store):,.0f} tokens/s")
        variants = {
            "mechflow (zarr store)": lambda steps: run_mechflow(store, steps, args.batch_size),
            "minimal in-memory loop": lambda steps: run_minimal(acts, steps, args.batch_size),
        }
        if have_saelens:
            variants["saelens SAETrainer (in-memory)"] = lambda steps: run_saelens(
                acts, steps, args.batch_size
            )
        names = list(variants)
        for fn in variants.values():  # warm-up: imports, allocator, BLAS
            fn(2)
        times: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                times[name].append(variants[name](args.steps))
            print(f"repeat {rep + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names))

    print()
    print(f"{'variant':34s} {'tokens/s (median)':>18s} {'best':>10s}")
    for name in names:
        rates = [tokens / t for t in times[name]]
        print(f"{name:34s} {statistics.median(rates):18,.0f} {max(rates):10,.0f}")
    mech = times["mechflow (zarr store)"]
    for other in names[1:]:
        ratios = [o / m for o, m in zip(times[other], mech, strict=True)]
        print(f"mechflow / {other}: {statistics.median(ratios):.2f}x (per-repeat {ratios})")
    if have_saelens:
        sl = times["saelens SAETrainer (in-memory)"]
        mini = times["minimal in-memory loop"]
        ratios = [m / s for m, s in zip(mini, sl, strict=True)]
        print(f"saelens / minimal: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()

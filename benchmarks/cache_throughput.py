"""Caching throughput and memory: is writing activations (nearly) free next to the forward pass?

Side by side, in one process, on the same batches: tokens/s of a bare forward pass and of
``mechflow.store.write_activation_store`` (the writer the ``cache_activations`` step runs)
caching ``hook_resid_post`` of every layer into a zarr v3 store, for fp32 and fp16 stores, and
for an fp32 store whose chunk rows the batch size does not divide (batches straddle chunks; the
writer still writes whole aligned chunks), and two floors under any store: the same hooks'
activations collected, and those activations written with plain ``write()`` to a file each
(no zarr, no checksums): on a file system whose writes cost, no store beats the second. The writer stops after the last hooked block (TL 3
``stop_at_layer``), so the baseline is the bare forward with ``stop_at_layer=n_layers``; the
full forward (with the unembed) is shown too. Two more fp32 variants answer how the step should
use a CPU: the write path the writer does not pick at this thread count (inline or on its
writer thread), and, with ``--threads`` > 1, one torch thread fewer handed to the writer thread.
Each variant runs next to a baseline run of its own; ``ratio`` is the median over repeats of
baseline time / variant time of each pair (``CPU ratio`` the same for process CPU time, all
threads: what the variant costs on a machine with no idle core).
Then peak RSS of caching N and 10*N sequences, each in a fresh subprocess.

Scenarios: ``gpt2`` (GPT-2-small architecture, random init: the model dominates on CPU),
``small`` (2 layers, d_model 128, vocab 1k: ~46 MB/s of activations on CPU, so the write path
matters) and ``text`` (the default text model: 4 layers, d_model 128, n_ctx and sequences 256,
vocab 4096). Not a test: prints a table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch

from mechflow.artifacts import file_sha256
from mechflow.data.tokens import load_tokens, save_tokens
from mechflow.models.build import build_model
from mechflow.models.config import Architecture
from mechflow.runtime import go_offline, pick_device, retain_freed_memory, set_threads
from mechflow.store import write_activation_store
from mechflow.store.writer import auto_chunk_rows, background_writes

SCENARIOS = {
    "gpt2": Architecture(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
        d_vocab=50257, act_fn="gelu_new",
    ),
    "small": Architecture(
        n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=1024,
        d_vocab=1000, act_fn="gelu_new",
    ),
    "text": Architecture(
        n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=256,
        d_vocab=4096, act_fn="gelu_new", normalization_type="LN",
    ),
}  # fmt: skip
# Default batches per timed run and N for the RSS runs (10*N is the large one), per scenario:
# GPT-2 small on 2 CPU threads is ~300 tokens/s, the small model ~45k tokens/s.
BASELINE = "bare forward, stop_at_layer [baseline]"
STRADDLING = "cache_activations fp32, batches straddle chunks"
FLOOR = "floor fp32: plain write() of the activations, no store"
COLLECT = "floor fp32: activations collected, not written"
DEFAULT_BATCHES = {"gpt2": 4, "small": 100, "text": 50}
DEFAULT_RSS_BATCHES = {"gpt2": 2, "small": 20, "text": 10}
# Tokens per sequence: the text model reads 256-token rows (its n_ctx).
DEFAULT_POS = {"gpt2": 128, "small": 128, "text": 256}


def positions(args, name: str) -> int:
    return args.pos or DEFAULT_POS[name]


def resid_hooks(arch: Architecture) -> list[str]:
    return [f"blocks.{layer}.hook_resid_post" for layer in range(arch.n_layers)]


def make_tokens(path: Path, n_seq: int, n_pos: int, d_vocab: int, seed: int = 0) -> np.ndarray:
    """Saved and memory-mapped, as the step reads them."""
    rng = np.random.default_rng(seed)
    save_tokens(rng.integers(0, d_vocab, size=(n_seq, n_pos), dtype=np.int32), path)
    return load_tokens(path)


def make_model(arch: Architecture, device: torch.device):
    model = build_model(arch, seed=0)
    return model.to(device, print_details=False).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(model, tokens, batch_size: int, device: torch.device, stop_at_layer) -> None:
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            batch = torch.from_numpy(np.array(tokens[start : start + batch_size])).to(device).long()
            model(batch, stop_at_layer=stop_at_layer)
    sync(device)


def plain_writes(model, tokens, out: Path, hooks, batch_size: int, device, write: bool) -> None:
    """The floor under any store: the same forward pass and hooks, each batch's activations
    copied to numpy and, with ``write``, ``write()``n to a new file per hook and batch (no zarr,
    no checksums, no manifest). Without ``write``: what collecting the activations costs."""
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            batch = torch.from_numpy(np.array(tokens[start : start + batch_size])).to(device).long()
            _, acts = model.run_with_cache(
                batch, names_filter=hooks, return_cache_object=False,
                stop_at_layer=model.cfg.n_layers,
            )  # fmt: skip
            for i, hook in enumerate(hooks):
                values = acts[hook].cpu().numpy()
                if write:
                    with open(out / f"{start}_{i}", "wb") as fh:
                        fh.write(values)


def cache(
    model, tokens, out: Path, hooks, batch_size: int, dtype: str, compression: str,
    chunk_size: int | None = None, background: bool | None = None,
) -> None:  # fmt: skip
    provenance = {
        "model": "benchmark", "model_hash": f"random-init-{id(model)}",
        "dataset": str(tokens.filename), "dataset_sha256": file_sha256(tokens.filename),
    }  # fmt: skip
    write_activation_store(
        model, tokens, out, hooks, batch_size=batch_size, chunk_size=chunk_size, dtype=dtype,
        compression=compression, provenance=provenance, progress=False, background=background,
    )  # fmt: skip


def with_threads(threads: int, run: Callable[[], None]) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run()
    finally:
        torch.set_num_threads(before)


def straddling_rows(rows: int, batch_size: int) -> int:
    """Chunk rows next to ``rows`` that ``batch_size`` does not divide (when any exist)."""
    return rows + 1 if batch_size > 1 and rows % batch_size == 0 else rows


def throughput(args, name: str, workdir: Path) -> list[dict]:
    arch = SCENARIOS[name]
    device = pick_device(args.device)
    batches = args.batches or DEFAULT_BATCHES[name]
    model = make_model(arch, device)
    hooks = resid_hooks(arch)
    n_pos = positions(args, name)
    tokens = make_tokens(workdir / f"{name}.npy", batches * args.batch_size, n_pos, arch.d_vocab)
    n_tokens = tokens.size
    row_bytes = arch.n_layers * n_pos * arch.d_model * 4  # fp32
    rows = auto_chunk_rows(row_bytes, tokens.shape[0])
    odd_rows = straddling_rows(rows, args.batch_size)
    print(f"{name}: {rows} rows per fp32 chunk by default, {odd_rows} in the straddling variant")
    bs, comp, stop = args.batch_size, args.compression, arch.n_layers
    variants = {
        "bare forward, full (with unembed)": lambda out: bare_forward(model, tokens, bs, device, None),
        BASELINE: lambda out: bare_forward(model, tokens, bs, device, stop),
        "cache_activations fp32": lambda out: cache(model, tokens, out, hooks, bs, "float32", comp),
        "cache_activations fp16": lambda out: cache(model, tokens, out, hooks, bs, "float16", comp),
        STRADDLING: lambda out: cache(model, tokens, out, hooks, bs, "float32", comp, odd_rows),
        FLOOR: lambda out: plain_writes(model, tokens, out, hooks, bs, device, write=True),
        COLLECT: lambda out: plain_writes(model, tokens, out, hooks, bs, device, write=False),
    }  # fmt: skip
    # The write path the writer does not pick at this thread count, and (on a CPU with threads
    # to spare) one core handed from torch to the writer thread: which should the step use?
    auto = background_writes(device)
    variants[f"cache_activations fp32, forced {'inline' if auto else 'writer thread'}"] = (
        lambda out: cache(model, tokens, out, hooks, bs, "float32", comp, background=not auto)
    )
    if device.type == "cpu" and args.threads > 1:
        fewer = args.threads - 1
        variants[f"cache_activations fp32, {fewer} torch thread(s) + writer thread"] = lambda out: (
            with_threads(
                fewer,
                lambda: cache(model, tokens, out, hooks, bs, "float32", comp, background=True),
            )
        )
    if args.only:  # the baseline always runs: every ratio is against it
        variants = {
            label: run for label, run in variants.items()
            if label == BASELINE or any(part in label for part in args.only)
        }  # fmt: skip
    # warm-up: allocator, kernels, zarr's event loop
    warm = make_tokens(workdir / "warm.npy", args.batch_size, n_pos, arch.d_vocab)
    bare_forward(model, warm, args.batch_size, device, arch.n_layers)
    cache(model, warm, workdir / "warm.zarr", hooks, args.batch_size, "float32", args.compression)
    shutil.rmtree(workdir / "warm.zarr")

    def timed(label: str, out: Path) -> tuple[float, float, float]:
        t0, c0, k0 = time.perf_counter(), time.process_time(), os.times().system
        variants[label](out)
        sync(device)
        return time.perf_counter() - t0, time.process_time() - c0, os.times().system - k0

    # Each variant runs right next to a baseline run of its own (before it in one repeat, after
    # it in the next), and the variants' order rotates: drifting machine load hits every pair
    # alike. Ratios are per pair, so a slow spell hits both of its runs.
    others = [label for label in variants if label != BASELINE]
    wall: dict[str, list[float]] = {label: [] for label in variants}
    cpu: dict[str, list[float]] = {label: [] for label in variants}
    kernel: dict[str, list[float]] = {label: [] for label in variants}
    ratios: dict[str, list[float]] = {label: [] for label in others}
    cpu_ratios: dict[str, list[float]] = {label: [] for label in others}
    for repeat in range(args.repeats):
        order = others[repeat % len(others) :] + others[: repeat % len(others)]
        for i, label in enumerate(order):
            pair = [BASELINE, label] if (repeat + i) % 2 == 0 else [label, BASELINE]
            result = {}
            for run in pair:
                out = workdir / f"{name}_{repeat}.zarr"
                result[run] = timed(run, out)
                shutil.rmtree(out, ignore_errors=True)
            for run, (w, c, k) in result.items():
                wall[run].append(w)
                cpu[run].append(c)
                kernel[run].append(k)
            ratios[label].append(result[BASELINE][0] / result[label][0])
            cpu_ratios[label].append(result[BASELINE][1] / result[label][1])
    ratios[BASELINE] = cpu_ratios[BASELINE] = [1.0]

    rows = []
    for label, ts in wall.items():
        median = statistics.median(ts)
        mb = 0.0
        if label.startswith(("cache", FLOOR)):
            itemsize = 4 if "fp32" in label else 2
            mb = n_tokens * arch.n_layers * arch.d_model * itemsize / 1e6
        rows.append({
            "scenario": name, "variant": label, "tokens": n_tokens,
            "tokens_per_s": n_tokens / median, "best_tokens_per_s": n_tokens / min(ts),
            "act_mb_per_s": mb / median,
            "ratio_vs_baseline": statistics.median(ratios[label]),
            "ratio_spread": f"{min(ratios[label]):.3f}-{max(ratios[label]):.3f}",
            "cpu_ratio": statistics.median(cpu_ratios[label]),
            "kernel_s": statistics.median(kernel[label]),
        })  # fmt: skip
    return rows


def process_peak_rss_mb() -> float:
    """This process's peak RSS. ``VmHWM`` where Linux has it: ``ru_maxrss`` survives exec, so a
    child spawned by a parent holding GPT-2 would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(args) -> None:
    """Runs in a subprocess: cache ``--batches`` batches and report memory as JSON."""
    (name,) = args.scenario
    arch = SCENARIOS[name]
    device = pick_device(args.device)
    workdir = Path(tempfile.mkdtemp(dir=args.tmpdir))
    try:
        model = make_model(arch, device)
        tokens = make_tokens(
            workdir / "t.npy",
            args.batches * args.batch_size,
            positions(args, name),
            arch.d_vocab,
        )
        proc = psutil.Process()
        before = proc.memory_info().rss
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.wait(0.005):
                peak[0] = max(peak[0], proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cache(
            model,
            tokens,
            workdir / "s.zarr",
            resid_hooks(arch),
            args.batch_size,
            "float32",
            args.compression,
        )
        done.set()
        sampler.join()
        print(json.dumps({
            "peak_rss_mb": process_peak_rss_mb(),
            "rss_before_caching_mb": before / 2**20,
            "peak_rss_caching_mb": peak[0] / 2**20,
        }))  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def peak_rss(args, name: str) -> list[dict]:
    n = args.rss_batches or DEFAULT_RSS_BATCHES[name]
    rows = []
    for batches in (n, 10 * n):
        cmd = [
            sys.executable, __file__, "--rss-child", "--scenario", name,
            "--batches", str(batches), "--batch-size", str(args.batch_size),
            "--pos", str(positions(args, name)),
            "--threads", str(args.threads), "--device", args.device,
            "--compression", args.compression,
        ]  # fmt: skip
        if args.default_malloc:
            cmd.append("--default-malloc")
        if args.tmpdir is not None:
            cmd += ["--tmpdir", str(args.tmpdir)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"RSS child failed:\n{result.stderr}")
        stats = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "scenario": name,
                "batches": batches,
                "tokens": batches * args.batch_size * positions(args, name),
                **stats,
            }
        )
    return rows


def print_table(rows: list[dict], columns: dict[str, str]) -> None:
    widths = {c: max(len(h), *(len(fmt_cell(r[c])) for r in rows)) for c, h in columns.items()}
    print("  ".join(h.ljust(widths[c]) for c, h in columns.items()))
    for row in rows:
        print("  ".join(fmt_cell(row[c]).ljust(widths[c]) for c in columns))


def fmt_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"
    return str(value)


def scenario_names(picked: list[str]) -> list[str]:
    aliases = {"all": list(SCENARIOS), "both": ["gpt2", "small"]}
    return list(dict.fromkeys(n for p in picked for n in aliases.get(p, [p])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "both", "all"],
        help="repeatable; 'both' is gpt2 and small, 'all' (the default) every scenario",
    )
    parser.add_argument("--small", action="store_true", help="only the small-model scenario")
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help=f"batches per timed run (default {DEFAULT_BATCHES})",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--pos", type=int, default=None, help=f"tokens per sequence (default {DEFAULT_POS})"
    )
    parser.add_argument(
        "--repeats", type=int, default=4, help="timed runs per variant (median reported)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compression", default="none", choices=("none", "zstd", "blosc"))
    parser.add_argument(
        "--rss-batches",
        type=int,
        default=None,
        help=f"N for the RSS runs (default {DEFAULT_RSS_BATCHES})",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="time only the variants whose label contains TEXT (repeatable; e.g. 'fp16', "
        "'cache_activations fp32'); the baseline always runs",
    )
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="where stores are written (default: system temp)"
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds alone (the cache_activations step fixes them: "
        "mechflow.runtime.retain_freed_memory)",
    )
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    go_offline()
    set_threads(args.threads)
    retained = not args.default_malloc and retain_freed_memory()  # as the step does
    if args.rss_child:
        rss_child(args)
        return
    names = scenario_names(["small"] if args.small else args.scenario or ["all"])
    device = pick_device(args.device)
    pos = {name: positions(args, name) for name in names}
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size} x "
          f"{pos} tokens, compression {args.compression}, cpu count {os.cpu_count()}, "
          f"freed memory {'retained' if retained else 'returned to the kernel (glibc default)'}")  # fmt: skip
    tp_rows, rss_rows = [], []
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        for name in names:
            if not args.no_rss:  # first, before this process holds a model
                print(f"measuring RSS of {name} ...", flush=True)
                rss_rows += peak_rss(args, name)
        for name in names:
            print(f"timing {name} ...", flush=True)
            tp_rows += throughput(args, name, Path(tmp))
    print(
        "\nThroughput (median of repeats; ratio = median over repeats of baseline time / variant "
        "time, each variant paired with a baseline run beside it; CPU ratio: the same for CPU time):"
    )
    print_table(tp_rows, {
        "scenario": "scenario", "variant": "variant", "tokens": "tokens", "tokens_per_s": "tokens/s",
        "best_tokens_per_s": "best tokens/s", "act_mb_per_s": "activations MB/s",
        "ratio_vs_baseline": "ratio", "ratio_spread": "ratio min-max", "cpu_ratio": "CPU ratio",
        "kernel_s": "kernel CPU s",
    })  # fmt: skip
    if rss_rows:
        print("\nRSS of caching N and 10*N batches (fresh subprocess each, fp32 store):")
        print_table(rss_rows, {
            "scenario": "scenario", "batches": "batches", "tokens": "tokens",
            "peak_rss_mb": "process peak MB", "rss_before_caching_mb": "before caching MB",
            "peak_rss_caching_mb": "peak while caching MB",
        })  # fmt: skip
        for name in names:
            small, large = [r for r in rss_rows if r["scenario"] == name]
            for key, label in (
                ("peak_rss_mb", "process peak"),
                ("peak_rss_caching_mb", "peak while caching"),
            ):
                print(
                    f"{name}: {label} RSS ratio 10N/N = {large[key] / small[key]:.3f} (target <= 1.2)"
                )
    for name in names:
        for row in tp_rows:
            if row["scenario"] == name and row["variant"].startswith("cache"):
                print(
                    f"{name}: {row['variant']} / bare stop_at_layer = {row['ratio_vs_baseline']:.3f} "
                    f"(min-max {row['ratio_spread']}, {args.repeats} repeats; target >= 0.95)"
                )
        ratio = {r["variant"]: r["ratio_vs_baseline"] for r in tp_rows if r["scenario"] == name}
        if FLOOR in ratio and COLLECT in ratio:
            print(
                f"{name}: the floor on this file system: collecting the activations "
                f"{ratio[COLLECT]:.3f}, plus writing them with plain write() {ratio[FLOOR]:.3f} "
                "(no store can beat the second)"
            )
        if STRADDLING in ratio and "cache_activations fp32" in ratio:
            print(
                f"{name}: straddling / default chunks = "
                f"{ratio[STRADDLING] / ratio['cache_activations fp32']:.3f} (whole-chunk writes either way: ~1)"
            )


if __name__ == "__main__":
    main()

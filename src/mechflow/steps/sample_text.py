"""Sample text from a language model with every decoding strategy, seeded.

For each prompt (tokenized with the model's tokenizer after ``<|endoftext|>``, the BOS), one
continuation per strategy: greedy, temperature, top-k, top-p (each at ``temperature``: the
sampled ones draw from one ``torch.Generator`` seeded with ``seed``, reset per strategy) and beam
search. Writes ``strategy, settings, prompt, completion, new_tokens, logprob`` (``logprob``: the
model's log-probability of the completion given the prompt, summed over its tokens), so the
report shows what the model learnt as text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from mechflow.analysis.inputs import read_model_config
from mechflow.artifacts import write_table
from mechflow.runtime import add_runtime_flags, pick_device
from mechflow.steps import json_object, parse_and_run, step_parser

log = logging.getLogger(__name__)

COLUMNS = ["strategy", "settings", "prompt", "completion", "new_tokens", "logprob"]
SAMPLING_KEYS = {"prompts", "max_new_tokens", "temperature", "top_k", "top_p", "beams", "seed"}


def strategies(s: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, settings as text, ``generate`` keywords, or ``beams``) of each strategy."""
    t = s["temperature"]
    return [
        ("greedy", "temperature 0", {"temperature": 0.0}),
        ("temperature", f"temperature {t:g}", {"temperature": t}),
        ("top-k", f"k {s['top_k']}, temperature {t:g}", {"temperature": t, "top_k": s["top_k"]}),
        ("top-p", f"p {s['top_p']:g}, temperature {t:g}", {"temperature": t, "top_p": s["top_p"]}),
        ("beam", f"{s['beams']} beams", {"beams": s["beams"]}),
    ]


def completion_logprob(model, tokens, prompt_len: int) -> float:
    """Sum of log p(token | prefix) over the tokens after the prompt."""
    import torch

    with torch.inference_mode():
        logprobs = model(tokens).log_softmax(dim=-1)[0, :-1]  # pos-1 d_vocab
        picked = logprobs.gather(-1, tokens[0, 1:, None])[:, 0]
    return float(picked[prompt_len - 1 :].sum())


def run(
    model_dir: Path,
    tokenizer_path: Path,
    sampling: dict[str, Any],
    out: Path,
    *,
    device: str = "auto",
) -> pd.DataFrame:
    import torch

    from mechflow.data.text import EOT, EOT_ID, decode, encode, load_tokenizer
    from mechflow.models.build import load_model
    from mechflow.models.sampling import beam_search, generate

    unknown = set(sampling) - SAMPLING_KEYS
    if unknown:
        raise ValueError(
            f"--sampling: unknown keys {sorted(unknown)}; allowed {sorted(SAMPLING_KEYS)}"
        )
    cfg = read_model_config(model_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    bos = tokenizer.token_to_id(EOT)
    bos = EOT_ID if bos is None else bos
    new = sampling["max_new_tokens"]
    dev = pick_device(device)
    model = load_model(model_dir, device=dev)
    rows = []
    for prompt in sampling["prompts"]:
        ids = [bos, *encode(tokenizer, prompt)]
        if len(ids) + new > cfg["n_ctx"]:
            raise ValueError(
                f"--sampling: prompt {prompt!r} ({len(ids)} tokens) + max_new_tokens {new} "
                f"exceeds n_ctx={cfg['n_ctx']}"
            )
        tokens = torch.tensor([ids], device=dev)
        for name, settings, kwargs in strategies(sampling):
            if "beams" in kwargs:
                out_tokens, _ = beam_search(model, tokens, new, beams=kwargs["beams"])
            else:
                generator = torch.Generator(device=dev).manual_seed(sampling["seed"])
                out_tokens = generate(model, tokens, new, generator=generator, **kwargs)
            rows.append(
                {
                    "strategy": name,
                    "settings": settings,
                    "prompt": prompt,
                    "completion": decode(tokenizer, out_tokens[0, len(ids) :].tolist()),
                    "new_tokens": new,
                    "logprob": completion_logprob(model, out_tokens, len(ids)),
                }
            )
            log.info("%s %r -> %r", name, prompt, rows[-1]["completion"][:60])
    df = pd.DataFrame(rows, columns=COLUMNS)
    write_table(df, out)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__, "model_dir")
    parser.add_argument("--tokenizer", dest="tokenizer_path", required=True, type=Path)
    parser.add_argument(
        "--sampling", required=True, type=json_object, help="experiments.language_model.sampling"
    )
    add_runtime_flags(parser, device=True)
    parser.add_argument("--out", required=True, type=Path, help="samples.csv")
    parse_and_run(parser, run, argv)


if __name__ == "__main__":
    main()

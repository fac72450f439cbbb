"""Step modules: one per Snakemake rule, each runnable as ``python -m mechflow.steps.<rule>``."""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def keyword_mismatch(func: Callable[..., Any], given: Iterable[str]) -> tuple[list[str], list[str]]:
    """The keywords in ``given`` that ``func`` does not take, and its required ones not given."""
    params = inspect.signature(func).parameters
    given = set(given)
    unknown = sorted(given - set(params))
    missing = sorted(
        name
        for name, param in params.items()
        if param.default is param.empty
        and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        and name not in given
    )
    return unknown, missing


def run_with_flags(
    run: Callable[..., Any], args: argparse.Namespace, *, machine: Iterable[str] = ("threads",)
) -> Any:
    """Call ``run(**flags)``: each parsed flag (its argparse ``dest``) is the run() parameter of
    the same name, less the ``machine`` flags that ``runtime.start`` already consumed.

    One place maps flags to parameters instead of a hand-written call per step, and the match is
    checked both ways: a flag with no parameter, or a required parameter with no flag, raises a
    TypeError naming the step, so nothing a rule passes is silently dropped.
    """
    skip = set(machine)
    kwargs = {name: value for name, value in vars(args).items() if name not in skip}
    step = f"{run.__module__}.{run.__qualname__}"
    unknown, missing = keyword_mismatch(run, kwargs)
    if unknown:
        raise TypeError(f"{step}: flags {unknown} match no run() parameter (use dest=)")
    if missing:
        raise TypeError(f"{step}: run() parameters {missing} have no flag")
    return run(**kwargs)


def parse_and_run(
    parser: argparse.ArgumentParser, run: Callable[..., Any], argv: list[str] | None
) -> Any:
    """The whole tail of a step's main(): parse, ``runtime.start`` (with ``--threads`` when the
    step has that flag, so light steps leave torch alone), then ``run_with_flags``."""
    from mechflow.runtime import start

    args = parser.parse_args(argv)
    start(getattr(args, "threads", None))
    return run_with_flags(run, args)


class ChecksFailed(RuntimeError):
    """A run did not show what it must (the checks table the step wrote names which check)."""


def report_checks(checks, out, *, enforce: bool, what: str) -> None:
    """Write a checks table, log each check, and raise ChecksFailed (after the write, so the
    evidence is kept) when ``enforce`` and one failed (of those the table's ``enforced`` column
    marks, when it has one); ``what`` names them in the error."""
    import logging

    from mechflow.artifacts import write_table

    write_table(checks, out)
    log = logging.getLogger(__name__)
    for row in checks.itertuples():
        log.info("%s %s: %.4g (threshold %.4g)", "PASS" if row.passed else "FAIL", row.check,
                 row.value, row.threshold)  # fmt: skip
    # a table may mark checks as reported only (``enforced`` False): they never stop the run
    enforced = checks["enforced"] if "enforced" in checks else True
    failed = checks.loc[~checks["passed"] & enforced, "check"].tolist()
    if failed and enforce:
        raise ChecksFailed(f"{what} checks failed: {failed}; see {out}")


def parse_and_check(
    parser: argparse.ArgumentParser, run: Callable[..., Any], argv: list[str] | None
) -> Any:
    """:func:`parse_and_run` for a checks step: a failed check ends the step with one error line
    and exit status 1, not a traceback (the table it wrote first keeps the evidence)."""
    import logging
    import sys

    try:
        return parse_and_run(parser, run, argv)
    except ChecksFailed as err:
        logging.getLogger(run.__module__).error("%s", err)
        sys.exit(1)


def json_object(text: str) -> dict[str, Any]:
    """argparse ``type=`` of a flag that carries a config section as JSON (a rule's params)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text[:80]!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:80]!r}")
    return value


# Inputs several steps share, declared once: name -> [(flags, argparse keywords), ...].
SHARED_INPUTS: dict[str, list[tuple[tuple[str, ...], dict[str, Any]]]] = {
    "model_dir": [
        (
            ("--model-dir",),
            {"required": True, "type": Path, "help": "model.safetensors + config.json"},
        )
    ],
    "repeated_tokens": [
        (
            ("--tokens",),
            {"dest": "tokens_path", "required": True, "type": Path, "help": "[BOS]+r+r .npy"},
        ),
        (("--half-len",), {"required": True, "type": int, "help": "len(r)"}),
    ],
    "text_sample": [  # held-out text the language-model analyses read
        (("--tokens",), {"dest": "tokens_path", "required": True, "type": Path}),
        (
            ("--sequences",),
            {"required": True, "type": int, "help": "sequences read, spread over --tokens"},
        ),
        (("--batch-size",), {"required": True, "type": int}),
    ],
    "sae": [
        (
            ("--sae",),
            {
                "dest": "sae_dir",
                "required": True,
                "type": Path,
                "help": "SAE directory (SAELens layout)",
            },
        ),
        (("--store",), {"required": True, "type": Path, "help": "activation store (.zarr)"}),
    ],
}


def step_parser(doc: str | None, *inputs: str) -> argparse.ArgumentParser:
    """A step's parser (its module docstring as the description) with the shared ``inputs``
    (keys of SHARED_INPUTS), so a flag several steps take is declared in one place."""
    parser = argparse.ArgumentParser(description=doc)
    for name in inputs:
        for flags, kwargs in SHARED_INPUTS[name]:
            parser.add_argument(*flags, **kwargs)
    return parser

"""One source for every value: what a rule passes to a step has its default in the schema only.

Every ``python -m mechflow.steps.<step>`` command the dry runs of config/config.yaml and
config/test.yaml print is checked against the step's own parser: a flag a rule passes must not
carry a default of its own (which could silently differ from the schema's, and would be used
when a rule forgets the flag), and a flag the step requires must be passed by every rule.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
from collections import defaultdict

import pytest
from workflow_helpers import copy_workflow, snakemake

CONFIGS = ("config/config.yaml", "config/test.yaml")
PREFIX = "python -m mechflow.steps."
# Machine settings, not experiment values: a rule passes the job's cores (--threads), the device
# its `gpu` resource gives it (--device), and cache_activations' --batch-size is a Snakemake
# resource the profiles set per machine. None is in the config schema (config describes the
# experiment, never the machine), so the step's default, used when a job is rerun by hand on
# another machine, is the only one there is.
MACHINE_FLAGS = {"--threads", "--device"}
MACHINE_STEP_FLAGS = {("cache_activations", "--batch-size")}


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def _capture(parser: argparse.ArgumentParser, *args, **kwargs):
    raise _Parsed(parser)


def step_parser(step: str) -> argparse.ArgumentParser:
    """The step's parser, taken from its main() at parse time, before it does any work."""
    module = importlib.import_module(f"mechflow.steps.{step}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", _capture)
        with pytest.raises(_Parsed) as caught:
            module.main([])
    return caught.value.parser


def has_no_value(default) -> bool:
    """None, a store_true's False or an empty list; by identity, since 0 == False."""
    return default is None or default is False or (isinstance(default, list) and not default)


def passed_flags(argv: list[str]) -> set[str]:
    return {token.split("=", 1)[0] for token in argv if token.startswith("--")}


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict[str, list[tuple[str, list[str]]]]:
    """step -> [(config, argv)] for every job of both dry runs."""
    work = copy_workflow(tmp_path_factory.mktemp("one_source"))
    found = defaultdict(list)
    for config in CONFIGS:
        out = snakemake(
            work, "-n", "-p", "--forceall", "--cores", "2", "--configfile", config
        ).stdout
        for line in out.splitlines():
            if PREFIX not in line:
                continue
            tokens = shlex.split(line[line.index(PREFIX) :])
            if ">" in tokens:  # the job's `> {log} 2>&1`
                tokens = tokens[: tokens.index(">")]
            step = tokens[2].removeprefix("mechflow.steps.")
            found[step].append((config, tokens[3:]))
    assert found, "the dry runs printed no step command"
    return dict(found)


@pytest.fixture(scope="module")
def parsers(commands) -> dict[str, argparse.ArgumentParser]:
    return {step: step_parser(step) for step in commands}


def test_both_dry_runs_reach_the_experiment_steps(commands):
    for step in ("ablate_heads", "track_phase_change", "evaluate_toy_sae", "analyze_superposition"):
        assert {config for config, _ in commands[step]} == set(CONFIGS), step


def test_every_passed_flag_exists_and_has_no_default_of_its_own(commands, parsers):
    unknown, defaulted = set(), set()
    for step, jobs in commands.items():
        actions = parsers[step]._option_string_actions  # flag -> argparse action, aliases too
        for config, argv in jobs:
            for flag in passed_flags(argv):
                action = actions.get(flag)
                if action is None:
                    unknown.add(f"{step} {flag} ({config})")
                elif flag in MACHINE_FLAGS or (step, flag) in MACHINE_STEP_FLAGS:
                    continue
                elif not action.required and not has_no_value(action.default):
                    defaulted.add(f"{step} {flag} (default {action.default!r})")
    assert not unknown, f"rules pass flags their step does not know: {sorted(unknown)}"
    assert not defaulted, (
        "rules pass these flags, but the step has its own default, which could silently differ "
        f"from the schema's (make them required=True): {sorted(defaulted)}"
    )


def test_every_required_flag_is_passed_by_every_rule(commands, parsers):
    missing = set()
    for step, jobs in commands.items():
        required = [
            action for action in parsers[step]._actions if action.required and action.option_strings
        ]
        for config, argv in jobs:
            flags = passed_flags(argv)
            for action in required:
                if not flags & set(action.option_strings):
                    missing.add(f"{step} {action.option_strings[0]} ({config})")
    assert not missing, f"required flags a rule does not pass: {sorted(missing)}"


def test_every_rule_command_parses(commands, parsers):
    for step, jobs in commands.items():
        for config, argv in jobs:
            try:
                parsers[step].parse_args(argv)
            except SystemExit:
                pytest.fail(f"{step} rejects the command of {config}: {shlex.join(argv)}")

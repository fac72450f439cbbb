"""The default config's IOI setting, trained here with a seed the default run does not use:
it must solve held-out combinations (>= the configured accuracy), have name movers, and a
circuit more faithful than random ones, as the checks the default run enforces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mechflow.artifacts import read_table
from mechflow.steps import (
    check_ioi,
    classify_ioi_heads,
    evaluate_ioi,
    make_dataset,
    make_ioi_prompts,
    train_model,
)
from mechflow.wiring import Workflow, config_problems, training_config

ROOT = Path(__file__).resolve().parents[2]
SEED = 3  # the default run trains seeds 0, 1 and 2


@pytest.mark.slow
def test_the_default_ioi_setting_solves_ioi_with_name_movers(tmp_path):
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    problems, _ = config_problems(config, ROOT / "workflow/schemas")
    assert problems == []
    ioi = Workflow(config).experiments["ioi"].settings
    model = config["models"][ioi["models"][0]]
    dataset = config["datasets"][model["training"]["dataset"]]
    spec = {k: v for k, v in dataset.items() if k not in ("kind", "d_vocab")}
    tokens = tmp_path / "train.npy"
    make_dataset.main(["--kind", "ioi", "--spec", json.dumps(spec), "--out", str(tokens)])
    training = {**training_config(model["training"]), "seed": SEED}
    out = tmp_path / "model"
    train_model.main([
        "--architecture", json.dumps(model["architecture"]), "--training", json.dumps(training),
        "--tokens", str(tokens), "--threads", "2", "--out-dir", str(out),
    ])  # fmt: skip
    prompts = tmp_path / "prompts.npz"
    make_ioi_prompts.main([
        "--spec", json.dumps(dataset), "--prompts", str(ioi["prompts"]),
        "--aligned-prompts", str(ioi["aligned_prompts"]), "--seed", str(ioi["seed"]),
        "--training-tokens", str(tokens), "--out", str(prompts),
    ])  # fmt: skip
    args = ["--model-dir", str(out), "--prompts", str(prompts)]
    evaluate_ioi.main([*args, "--batch-size", "64", "--out", str(tmp_path / "accuracy.csv")])
    tables = {t: tmp_path / f"{t}.csv" for t in ("classes", "knockouts", "faithfulness")}
    classify_ioi_heads.main([
        *args, "--attention-threshold", str(ioi["attention_threshold"]),
        "--share", str(ioi["share"]), "--min-effect", str(ioi["min_effect"]),
        "--random-circuits", str(ioi["random_circuits"]), "--seed", str(ioi["seed"]),
        "--batch-size", "64", *[f for t, p in tables.items() for f in (f"--{t}-out", str(p))],
    ])  # fmt: skip
    checks = tmp_path / "checks.csv"
    check_ioi.main([
        "--accuracy", str(tmp_path / "accuracy.csv"), "--classes", str(tables["classes"]),
        "--faithfulness", str(tables["faithfulness"]), "--reference", "trained",
        "--min-accuracy", str(ioi["min_accuracy"]), "--out", str(checks),
    ])  # fmt: skip
    table = read_table(checks)
    assert table["passed"].all(), table.to_string()

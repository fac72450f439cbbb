"""The IOI steps on a planted GPT-2-shaped circuit (duplicate-token 0.0 -> S-inhibition 1.0 ->
name mover 2.0), saved like a trained model: the steps recover it exactly, the sharded sweep
equals the unsharded one, and a missing or killed shard leaves nothing to gather."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from pandas.testing import assert_frame_equal

from mechflow.artifacts import read_table
from mechflow.data.tokens import save_tokens
from mechflow.experiments.ioi.planted import planted_paper_ioi_model
from mechflow.experiments.ioi.prompt_set import load_prompt_set
from mechflow.experiments.ioi.prompts import ioi_sentences, vocabulary_of
from mechflow.models.build import save_model
from mechflow.steps import (
    check_ioi,
    classify_ioi_heads,
    evaluate_ioi,
    gather_sweep,
    make_ioi_prompts,
    patch_ioi,
)

SPEC = {"kind": "ioi", "n_sequences": 400, "seq_len": 32, "held_out_templates": 3, "seed": 0}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ioi_steps")
    vocabulary = vocabulary_of(SPEC)
    save_model(planted_paper_ioi_model(vocabulary, n_ctx=32), root / "planted")
    train = root / "train.npy"
    spec = {k: v for k, v in SPEC.items() if k != "kind"}
    save_tokens(ioi_sentences(**spec), train)
    make_ioi_prompts.main([
        "--spec", json.dumps(SPEC), "--prompts", "60", "--aligned-prompts", "30",
        "--seed", "7", "--training-tokens", str(train), "--out", str(root / "prompts.npz"),
    ])  # fmt: skip
    return root


def model_args(root):
    return ["--model-dir", str(root / "planted"), "--prompts", str(root / "prompts.npz")]


def test_the_sample_never_draws_a_training_row(planted, tmp_path):
    """A training set holding the sample's own rows: every such prompt is drawn again."""
    first = load_prompt_set(planted / "prompts.npz").prompts["combinations"]
    rows = np.full((len(first), 32), vocabulary_of(SPEC).pad_id, dtype=np.int32)
    rows[:, :31] = first.tokens
    rows[np.arange(len(first)), first.positions["END"] + 1] = first.io
    save_tokens(rows, tmp_path / "train.npy")
    out = tmp_path / "prompts.npz"
    make_ioi_prompts.main([
        "--spec", json.dumps(SPEC), "--prompts", "60", "--aligned-prompts", "30", "--seed", "7",
        "--training-tokens", str(tmp_path / "train.npy"), "--out", str(out),
    ])  # fmt: skip
    again = load_prompt_set(out).prompts["combinations"]
    drawn = {row.tobytes() for row in again.tokens}
    assert not drawn & {row.tobytes() for row in first.tokens}


def test_accuracy_per_split(planted, tmp_path):
    table = evaluate_ioi.run(
        planted / "planted", planted / "prompts.npz", tmp_path / "acc.csv", batch_size=16
    )
    assert list(table["split"]) == ["combinations", "templates", "aligned"]
    assert (table["accuracy"] == 1.0).all()  # the planted circuit solves every template
    assert (table["abc_logit_diff"].abs() < 0.1).all()


def test_the_classify_step_recovers_the_planted_circuit(planted, tmp_path):
    out = {k: tmp_path / f"{k}.csv" for k in ("classes", "knockouts", "faithfulness")}
    classify_ioi_heads.main([
        *model_args(planted), "--attention-threshold", "0.3", "--share", "0.3",
        "--min-effect", "0.05", "--random-circuits", "5", "--seed", "0", "--batch-size", "32",
        "--classes-out", str(out["classes"]), "--knockouts-out", str(out["knockouts"]),
        "--faithfulness-out", str(out["faithfulness"]),
    ])  # fmt: skip
    classes = read_table(out["classes"]).fillna({"class": ""})
    found = {(r["layer"], r["head"]): r["class"] for _, r in classes.iterrows() if r["class"]}
    assert found == {(0, 0): "duplicate-token", (1, 0): "S-inhibition", (2, 0): "name mover"}
    faithful = read_table(out["faithfulness"]).iloc[0]
    assert faithful["faithfulness"] == pytest.approx(1.0, abs=1e-3)
    assert faithful["circuit"] == "0.0 1.0 2.0"
    knocked = read_table(out["knockouts"]).set_index("ablated")["fraction"]
    assert knocked["none"] == 1.0 and knocked["name mover"] < 0.1  # each class is needed
    evaluate_ioi.run(planted / "planted", planted / "prompts.npz", tmp_path / "acc.csv",
                     batch_size=32)  # fmt: skip
    check_ioi.main([
        "--accuracy", str(tmp_path / "acc.csv"), "--classes", str(out["classes"]),
        "--faithfulness", str(out["faithfulness"]), "--reference", "trained",
        "--min-accuracy", "0.95", "--enforce", "--out", str(tmp_path / "checks.csv"),
    ])  # fmt: skip
    assert read_table(tmp_path / "checks.csv")["passed"].all()
    with pytest.raises(SystemExit) as exit_:  # an accuracy no model reaches: the run stops
        check_ioi.main([
            "--accuracy", str(tmp_path / "acc.csv"), "--classes", str(out["classes"]),
            "--faithfulness", str(out["faithfulness"]), "--reference", "trained",
            "--min-accuracy", "1.01", "--enforce", "--out", str(tmp_path / "failed.csv"),
        ])  # fmt: skip
    assert exit_.value.code == 1
    failed = read_table(tmp_path / "failed.csv").set_index("check")["passed"]
    assert (
        not failed["heldout_combination_accuracy"]
        and failed.drop("heldout_combination_accuracy").all()
    )  # the evidence is written before the step fails


def _shards(planted, where, n: int) -> list:
    where.mkdir(exist_ok=True)
    paths = [where / f"shard_{i}_of_{n}.csv" for i in range(n)]
    for i, path in enumerate(paths):
        patch_ioi.main([*model_args(planted), "--shard", str(i), "--shards", str(n),
                        "--batch-size", "32", "--out", str(path)])  # fmt: skip
    return paths


def test_a_sharded_sweep_equals_the_unsharded_one(planted, tmp_path):
    gather_sweep.main(["--shards", *map(str, _shards(planted, tmp_path, 1)),
                       "--out", str(tmp_path / "one.csv")])  # fmt: skip
    gather_sweep.main(["--shards", *map(str, _shards(planted, tmp_path, 3)),
                       "--out", str(tmp_path / "three.csv")])  # fmt: skip
    one, three = read_table(tmp_path / "one.csv"), read_table(tmp_path / "three.csv")
    assert_frame_equal(one, three, check_exact=False, atol=1e-6, rtol=0)
    assert set(one["kind"]) == {"resid_pre", "attn_out", "z", "path_logits"}  # attention-only
    z = one[one["kind"] == "z"].set_index(["layer", "head"])["value"]
    assert z[2, 0] == pytest.approx(1.0, abs=0.02)  # the name mover's output is the answer
    labels = one[one["kind"] == "resid_pre"].drop_duplicates("pos")["position"].tolist()
    assert {"IO", "S1", "S1+1", "S2", "END"} <= set(labels) and labels[-1] == "END"


def test_a_gather_refuses_a_missing_repeated_or_foreign_shard(planted, tmp_path):
    paths = _shards(planted, tmp_path, 3)
    out = tmp_path / "gathered.csv"
    with pytest.raises(ValueError, match=r"shards \[1\] of 3 are missing"):
        gather_sweep.main(["--shards", str(paths[0]), str(paths[2]), "--out", str(out)])
    with pytest.raises(ValueError, match="shard 0 again"):
        gather_sweep.main(["--shards", str(paths[0]), str(paths[0]), "--out", str(out)])
    (other,) = _shards(planted, tmp_path / "one", 1)
    with pytest.raises(ValueError, match="different sweeps"):
        gather_sweep.main(["--shards", *map(str, paths), str(other), "--out", str(out)])
    assert not out.exists()


def test_a_shard_count_beyond_the_layers_is_refused(planted, tmp_path):
    with pytest.raises(ValueError, match="shards: 4; allowed 1 to 3"):
        patch_ioi.main([*model_args(planted), "--shard", "0", "--shards", "4",
                        "--batch-size", "32", "--out", str(tmp_path / "s.csv")])  # fmt: skip


@pytest.mark.slow
def test_a_killed_shard_leaves_nothing_to_gather(planted, tmp_path):
    """SIGKILL while the shard computes: no shard file (only its hidden temporary, at most),
    and the gather of the shards that finished refuses to run."""
    out = tmp_path / "shard_1_of_2.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mechflow.steps.patch_ioi", *model_args(planted), "--shard", "1",
         "--shards", "2", "--batch-size", "1", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(4.0)  # torch and the model loaded, the sweep under way (batch 1: ~10 s)
    assert proc.poll() is None, f"the shard finished before the kill: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    first = tmp_path / "shard_0_of_2.csv"
    patch_ioi.main([*model_args(planted), "--shard", "0", "--shards", "2", "--batch-size", "32",
                    "--out", str(first)])  # fmt: skip
    with pytest.raises(ValueError, match=r"shards \[1\] of 2 are missing"):
        gather_sweep.main(["--shards", str(first), "--out", str(tmp_path / "g.csv")])
    assert not (tmp_path / "g.csv").exists()

"""The OthelloGPT steps end to end on a tiny model: games, labels, legal play, probes (with the
shuffled-label control), interventions, attribution, checks; and what they refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechflow.artifacts import file_sha256, read_json, read_table, write_table
from mechflow.experiments.othello import checks as oc
from mechflow.experiments.othello.probing import probe_hooks, summarise
from mechflow.probes.io import load_probes
from mechflow.steps import (
    attribute_othello,
    cache_activations,
    check_othello,
    evaluate_othello,
    initialise_model,
    intervene_othello,
    label_othello_games,
    make_dataset,
    probe_othello,
    summarize_othello_probes,
    train_model,
)
from mechflow.store import open_store

ARCH = {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64, "n_ctx": 33,
        "d_vocab": 33}  # fmt: skip
HOOKS = probe_hooks(2)
PROBES = {"max_epochs": 3, "batch_size": 256}


def games(root, name, n, seed):
    out = root / f"{name}.npy"
    spec = {"n_sequences": n, "board_size": 6, "seed": seed}
    make_dataset.main(["--kind", "othello", "--spec", json.dumps(spec), "--out", str(out)])
    label_othello_games.main(["--tokens", str(out), "--board-size", "6", "--dataset", name,
                              "--out", str(root / f"{name}.zarr")])  # fmt: skip
    return out, root / f"{name}.zarr"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("othello_steps")
    train, _ = games(root, "train", 300, 0)
    tokens, labels = games(root, "heldout", 60, 1)
    training = {"steps": 30, "batch_size": 16, "lr": 0.003, "objective": "legal_moves", "seed": 0}
    train_model.main(["--architecture", json.dumps(ARCH), "--training", json.dumps(training),
                      "--tokens", str(train), "--out-dir", str(root / "model")])  # fmt: skip
    store = root / "acts.zarr"
    cache_activations.main(
        ["--model-dir", str(root / "model"), "--tokens", str(tokens), "--dtype", "float32",
         "--compression", "none", "--batch-size", "32", "--out", str(store)]
        + [f for h in HOOKS for f in ("--hook", h)]
    )  # fmt: skip
    probe_othello.main(
        ["--store", str(store), "--labels", str(labels), "--probe-config", json.dumps(PROBES),
         "--first-move", "5", "--last-from-end", "5", "--shuffled-control",
         "--example-positions", "3", "--out-dir", str(root / "probes"),
         "--accuracy-out", str(root / "accuracy.csv"), "--boards-out", str(root / "boards.csv")]
        + [f for h in HOOKS for f in ("--hook", h)]
    )  # fmt: skip
    return root, tokens, labels, store


def test_labels_are_a_store_of_the_games_named_by_axis(run):
    root, tokens, labels, store = run
    lab = open_store(labels)
    assert lab.dims("relative") == ("seq", "pos", "square")
    assert lab.dims("to_move") == ("seq", "pos")
    assert lab.provenance["dataset_sha256"] == file_sha256(tokens)
    assert lab.provenance["pass_is_a_token"] is False
    np.testing.assert_array_equal(lab.tokens(), np.load(tokens))
    assert lab.provenance["dataset_sha256"] == open_store(store).provenance["dataset_sha256"]


def test_the_legal_moves_objective_is_recorded_with_the_model(run):
    root = run[0]
    assert read_json(root / "model" / "config.json")["training"]["objective"] == "legal_moves"
    log = read_table(root / "model" / "train_log.csv")
    assert np.isfinite(log["loss"]).all() and log["loss"].iloc[-1] < log["loss"].iloc[0]


def test_legal_play_is_scored_at_every_position_with_a_next_move(run, tmp_path):
    root, tokens, labels, _ = run
    out, by_pos = tmp_path / "legal.csv", tmp_path / "by_position.csv"
    evaluate_othello.main(["--model-dir", str(root / "model"), "--tokens", str(tokens),
                           "--labels", str(labels), "--batch-size", "16", "--out", str(out),
                           "--by-position-out", str(by_pos)])  # fmt: skip
    summary = read_table(out).iloc[0]
    n_moves = (np.load(tokens)[:, 1:] > 0).sum()
    assert summary["positions"] == n_moves  # each move's position before it has a legal set
    assert 0 <= summary["top1_legal"] <= 1 and summary["kl_to_uniform_legal"] >= -1e-5
    table = read_table(by_pos)
    assert table["positions"].sum() == n_moves and table["position"].iloc[0] == 0


def test_probes_are_saved_per_label_with_the_shuffled_control(run):
    root = run[0]
    accuracy = read_table(root / "accuracy.csv")
    assert set(accuracy["condition"]) == {"trained", "shuffled labels"}
    assert set(accuracy["label"]) == {"relative", "board", "legal", "flipped"}
    assert sorted(accuracy["layer"].unique()) == [0, 1, 2]
    shuffled = summarise(accuracy[accuracy["condition"] == "shuffled labels"])
    assert (shuffled["accuracy"] - shuffled["baseline"]).abs().max() < 0.03  # per layer, label
    probes = load_probes(root / "probes" / "relative")
    assert probes.hook_names == tuple(HOOKS) and probes.class_names == ("empty", "mine", "theirs")
    legal = load_probes(root / "probes" / "legal")
    assert all(t.startswith("legal.") for t in legal.target_names)
    # the centre squares are never legal: no probe is trained for them
    assert "legal.14" not in legal.target_names and "relative.14" in probes.target_names
    boards = read_table(root / "boards.csv")
    assert boards["game"].nunique() == 1 and boards["position"].nunique() == 3
    p = boards[["p_empty", "p_mine", "p_theirs"]].sum(axis=1)
    np.testing.assert_allclose(p, 1, atol=1e-5)


def test_interventions_and_attribution_write_their_tables(run, tmp_path):
    root, tokens, labels, _ = run
    common = ["--model-dir", str(root / "model"), "--tokens", str(tokens), "--labels",
              str(labels), "--probes", str(root / "probes" / "relative"), "--seed", "0",
              "--first-move", "5", "--last-from-end", "5", "--batch-size", "16"]  # fmt: skip
    intervene_othello.main(common + ["--layer", "1", "--scales", "1", "4", "--edits", "30",
                                     "--out", str(tmp_path / "iv.csv")])  # fmt: skip
    table = read_table(tmp_path / "iv.csv")
    assert table["condition"].tolist() == ["none", "random", "random", "probe", "probe"]
    assert (table["hook"] == "blocks.0.hook_resid_post").all()
    probe = table[table["condition"] == "probe"]
    assert (probe["mean_margin"] > 0).all()  # the probe now reads the opponent's stone
    outs = {k: tmp_path / f"{k}.csv" for k in ("attribution", "patching", "neurons", "activations")}
    attribute_othello.main(
        common + ["--move", "14", "--later", "2", "--games", "10", "--neuron-layer", "1", "--neurons", "2"]
        + [f for k, v in outs.items() for f in (f"--{k}-out", str(v))]
    )  # fmt: skip
    assert read_table(outs["neurons"])["neuron"].nunique() == 2
    assert set(read_table(outs["patching"])["kind"]) >= {"resid_pre", "attn_out", "mlp_out"}
    assert (read_table(outs["attribution"])["rows"] > 0).all()


def test_labels_of_other_games_or_a_missing_hook_are_refused(run, tmp_path):
    root, tokens, labels, store = run
    _, other = games(tmp_path, "other", 20, 7)
    common = ["--probe-config", "{}", "--first-move", "5", "--last-from-end", "5",
              "--example-positions", "3", "--out-dir", str(tmp_path / "p"), "--accuracy-out",
              str(tmp_path / "a.csv"), "--boards-out", str(tmp_path / "b.csv")]  # fmt: skip
    with pytest.raises(ValueError, match=r"other\.zarr: labels of other games"):
        probe_othello.main(["--store", str(store), "--labels", str(other), "--hook", HOOKS[0]]
                           + common)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"acts\.zarr: no hook\(s\) \['blocks\.5\.hook_resid_post'\]"
    ):
        probe_othello.main(["--store", str(store), "--labels", str(labels), "--hook",
                            "blocks.5.hook_resid_post"] + common)  # fmt: skip
    assert not (tmp_path / "a.csv").exists()
    with pytest.raises(ValueError, match="labels of other games"):
        evaluate_othello.main(["--model-dir", str(root / "model"), "--tokens", str(tokens),
                               "--labels", str(other), "--batch-size", "8", "--out",
                               str(tmp_path / "l.csv"), "--by-position-out",
                               str(tmp_path / "lp.csv")])  # fmt: skip


def test_an_untrained_control_is_its_architecture_at_step_zero(tmp_path):
    initialise_model.main(["--architecture", json.dumps(ARCH), "--seed", "3",
                           "--out-dir", str(tmp_path / "init")])  # fmt: skip
    config = read_json(tmp_path / "init" / "config.json")
    assert config["source"] == "initialised" and config["seed"] == 3


# --- the checks: a broken pipeline fails them ---------------------------------------------------

THRESHOLDS = {"min_top1_legal": 0.9, "basis_margin": 0.05, "control_margin": 0.05,
              "shuffled_tolerance": 0.02, "intervention_margin": 0.2}  # fmt: skip


def accuracy_rows(condition, relative, board, baseline=0.55, layers=5):
    rows = []
    for layer in range(layers):
        for label, acc in (("relative", relative[layer]), ("board", board[layer])):
            for square in range(3):
                rows.append({"condition": condition, "hook": f"h{layer}", "layer": layer,
                             "label": label, "square": square, "accuracy": acc,
                             "baseline": baseline, "train_accuracy": acc, "epochs": 3,
                             "n_validation": 100})  # fmt: skip
    return rows


def write_inputs(root, *, relative, board, shuffled, control, probe, random_, top1=0.95):
    trained = accuracy_rows("trained", relative, board)
    shuffled_rows = accuracy_rows("shuffled labels", shuffled, shuffled)
    write_table(pd.DataFrame(trained + shuffled_rows), root / "acc.csv")
    write_table(pd.DataFrame(accuracy_rows("trained", control, control)), root / "control.csv")
    write_table(pd.DataFrame([{"model": "m", "top1_legal": top1}]), root / "legal.csv")
    iv = [{"condition": "none", "scale": np.nan, "success": 0.1}]
    iv += [{"condition": c, "scale": s, "success": v}
           for c, vals in (("probe", probe), ("random", random_)) for s, v in zip((1, 4), vals, strict=True)]  # fmt: skip
    write_table(pd.DataFrame(iv), root / "iv.csv")


def checks(root, enforce=False, report_only=()):
    summarize_othello_probes.main(["--accuracy", str(root / "acc.csv"), "--control-accuracy",
                                   str(root / "control.csv"), "--out", str(root / "summary.csv")])  # fmt: skip
    argv = ["--legal", str(root / "legal.csv"), "--summary", str(root / "summary.csv"),
            "--interventions", str(root / "iv.csv"), "--thresholds", json.dumps(THRESHOLDS),
            "--out", str(root / "checks.csv")]  # fmt: skip
    argv += [f for c in report_only for f in ("--report-only", c)]
    check_othello.main(argv + (["--enforce"] if enforce else []))
    return read_table(root / "checks.csv").set_index("check")["passed"]


GOOD = dict(relative=[0.6, 0.9, 0.92, 0.92, 0.9], board=[0.58, 0.75, 0.76, 0.76, 0.75],
            shuffled=[0.55] * 5, control=[0.6, 0.7, 0.7, 0.7, 0.7], probe=[0.5, 0.6],
            random_=[0.2, 0.2])  # fmt: skip


def test_the_checks_pass_on_the_papers_pattern(tmp_path):
    write_inputs(tmp_path, **GOOD)
    assert checks(tmp_path, enforce=True).all()
    summary = read_table(tmp_path / "summary.csv")
    assert set(summary["condition"]) == {"trained", "shuffled labels", oc.CONTROL}


@pytest.mark.parametrize(
    ("broken", "failing"),
    [
        ({"relative": [0.6, 0.75, 0.76, 0.76, 0.75]}, "mine_theirs_over_black_white"),
        ({"control": [0.6, 0.9, 0.92, 0.92, 0.9]}, "trained_over_random_init"),  # untrained
        ({"shuffled": [0.55, 0.62, 0.6, 0.6, 0.55]}, "shuffled_off_majority"),  # leaked labels
        ({"probe": [0.25, 0.3]}, "probe_edit_over_random"),
        ({"top1": 0.5}, "top1_legal"),
    ],
)
def test_a_broken_pipeline_fails_its_check(tmp_path, broken, failing):
    write_inputs(tmp_path, **(GOOD | broken))
    passed = checks(tmp_path)
    assert not passed[failing] and passed.drop(failing).all()
    with pytest.raises(SystemExit):
        checks(tmp_path, enforce=True)
    assert (tmp_path / "checks.csv").exists()  # the evidence is kept


def test_a_report_only_check_is_shown_failing_but_stops_nothing(tmp_path):
    write_inputs(tmp_path, **(GOOD | {"probe": [0.25, 0.3]}))
    passed = checks(tmp_path, enforce=True, report_only=["probe_edit_over_random"])
    assert not passed["probe_edit_over_random"]
    table = read_table(tmp_path / "checks.csv").set_index("check")
    assert not table.loc["probe_edit_over_random", "enforced"] and table["enforced"].sum() == 4
    with pytest.raises(ValueError, match=r"report-only checks \['no_such_check'\]"):
        checks(tmp_path, report_only=["no_such_check"])


def test_the_schema_lists_the_checks_the_step_writes():
    import yaml

    from mechflow.experiments.othello.checks import CHECKS

    root = Path(__file__).resolve().parents[2]
    schema = yaml.safe_load((root / "workflow/schemas/othello.schema.yaml").read_text())
    assert tuple(schema["properties"]["report_only"]["items"]["enum"]) == CHECKS

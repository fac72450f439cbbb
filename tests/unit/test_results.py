"""mechflow.results on a tiny run built by the steps' main([...]) in the workflow's layout: each
call gives what the underlying loader gives, and a missing or ambiguous request lists the options."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mechflow.artifacts import file_sha256, read_json
from mechflow.results import AmbiguousResultError, MissingResultError, Run, provenance
from mechflow.steps import (
    cache_activations,
    make_dataset,
    score_copying,
    train_grokking_model,
    train_model,
    train_sae,
    train_toy_model,
)

HOOK = "blocks.0.hook_resid_post"
P = 5  # the grokking modulus


def lm_arch(n_layers):
    return {"n_layers": n_layers, "d_model": 16, "n_heads": 2, "d_head": 8, "n_ctx": 13,
            "d_vocab": 20, "attn_only": True}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workflow directory whose results/ holds one of each artifact, at the rules' paths."""
    root = tmp_path_factory.mktemp("workflow")
    res = root / "results"
    probe = {"n_sequences": 6, "half_len": 6, "d_vocab": 20, "seed": 1}
    spans = {"n_sequences": 32, "seq_len": 13, "d_vocab": 20, "span_len": [2, 4],
             "spans_per_seq": 1, "seed": 0}  # fmt: skip
    for kind, spec, name in (
        ("repeated_spans", spans, "train"),
        ("repeated_random", probe, "probe"),
    ):
        make_dataset.main(["--kind", kind, "--spec", json.dumps(spec),
                           "--out", str(res / f"datasets/{name}.npy")])  # fmt: skip
    training = {"steps": 10, "batch_size": 4, "lr": 0.01, "seed": 0, "log_every": 5,
                "checkpoints": [0, 5, 10]}  # fmt: skip
    for name, n_layers in (("lm", 2), ("lm1", 1)):
        train_model.main(
            ["--architecture", json.dumps(lm_arch(n_layers)), "--training", json.dumps(training),
             "--tokens", str(res / "datasets/train.npy"), "--threads", "1",
             "--out-dir", str(res / "models" / name)]
        )  # fmt: skip
        score_copying.main(
            ["--model-dir", str(res / "models" / name),
             "--out", str(res / "induction" / name / "copying.csv")]
        )  # fmt: skip
    store = res / "activations/lm/probe.zarr"
    cache_activations.main(
        ["--model-dir", str(res / "models/lm"), "--tokens", str(res / "datasets/probe.npy"),
         "--hook", HOOK, "--dtype", "float32", "--compression", "none", "--threads", "1",
         "--device", "cpu", "--out", str(store)]
    )  # fmt: skip
    sae = {"architecture": "topk", "d_sae": 32, "k": 4, "batch_size": 32, "total_tokens": 640,
           "shuffle_buffer_tokens": 64}  # fmt: skip
    sae_dir = res / "saes/lm" / HOOK / "topk_4"
    train_sae.main(
        ["--store", str(store), "--hook", HOOK, "--sae-config", json.dumps(sae),
         "--out", str(sae_dir), "--log", str(sae_dir.parent / "topk_4_train_log.csv"),
         "--threads", "1", "--device", "cpu"]
    )  # fmt: skip
    grok_arch = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32,
                 "normalization_type": None}  # fmt: skip
    grok_training = {"epochs": 10, "lr": 0.01, "weight_decay": 1.0, "log_every": 5,
                     "checkpoints": [0, 5, 10]}  # fmt: skip
    train_grokking_model.main(
        ["--modulus", str(P), "--train-fraction", "0.5", "--data-seed", "0",
         "--architecture", json.dumps(grok_arch), "--training", json.dumps(grok_training),
         "--device", "cpu", "--out-dir", str(res / "grokking/models/mod5")]
    )  # fmt: skip
    toy = {"n_features": 5, "d_hidden": 2, "n_instances": 2, "feature_probability": [1.0, 0.1],
           "steps": 20, "batch_size": 16, "log_every": 10, "seed": 0}  # fmt: skip
    train_toy_model.main(
        ["--config", json.dumps(toy), "--threads", "1",
         "--out-dir", str(res / "superposition/models/toy")]
    )  # fmt: skip
    return Run(root)


def test_a_missing_results_folder_says_what_to_run(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="has no results/ folder: run the workflow.*snakemake"
    ):
        Run(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Run(tmp_path / "nowhere")


def test_listings_name_what_exists(run):
    assert run.models() == ["lm", "lm1", "mod5"]
    assert run.models("grokking") == ["mod5"]
    assert run.toy_models() == ["toy"]
    assert run.datasets() == ["probe", "train"]
    assert run.stores() == [("lm", "probe")]
    assert run.saes() == [("lm", HOOK, "topk_4")]
    assert run.checkpoints("lm") == [0, 5, 10] and run.checkpoints("mod5") == [0, 5, 10]
    assert run.tables("induction") == ["lm/copying.csv", "lm1/copying.csv"]


def test_model_is_load_model_in_eval_mode(run):
    from mechflow.models.build import load_model, model_fingerprint

    model_dir = run.results / "models/lm"
    model = run.model("lm")
    assert not model.training
    tokens = torch.from_numpy(np.array(run.dataset("probe"))).long()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), load_model(model_dir)(tokens))
    prov = provenance(model)
    assert prov["sha256"] == model_fingerprint(model_dir)  # what a store records as model_hash
    assert prov["config"] == read_json(model_dir / "config.json") and prov["checkpoint"] is None
    assert prov["snakemake"] is None  # no Snakemake metadata in this hand-built run
    assert run.model("models/lm").state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    ("name", "unit", "path"),
    [("lm", "step", "models/lm/checkpoints/step_000005.safetensors"),
     ("mod5", "epoch", "grokking/models/mod5/checkpoints/epoch_000005.safetensors")],
)  # fmt: skip
def test_a_checkpoint_has_the_file_weights(run, name, unit, path):
    model = run.model(name, **{unit: 5})
    weights = load_file(str(run.results / path))
    state = model.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value)
    assert not torch.equal(model.W_E, run.model(name).W_E)  # not the final weights
    assert provenance(model)["checkpoint"] == {"unit": unit, "index": 5}


def test_model_errors_list_what_exists(run):
    with pytest.raises(MissingResultError, match=r"no model 'gpt2'.*\['lm', 'lm1', 'mod5'\]"):
        run.model("gpt2")
    with pytest.raises(MissingResultError, match="toy model: use toy_model"):
        run.model("toy")
    with pytest.raises(
        MissingResultError, match=r"no checkpoint at step 7; saved steps: \[0, 5, 10\]"
    ):
        run.model("lm", step=7)
    with pytest.raises(ValueError, match=r"by epoch, not step: pass epoch=.*\[0, 5, 10\]"):
        run.model("mod5", step=5)
    with pytest.raises(ValueError, match="not both"):
        run.model("lm", step=5, epoch=5)


def test_a_model_of_text_has_its_datasets_tokenizer(tmp_path):
    from mechflow.data.text import EOT_ID, encode
    from mechflow.steps import make_text_dataset

    corpus, res = tmp_path / "texts", tmp_path / "results"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"{i}.txt").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    spec = {"source": str(corpus), "pattern": "*.txt", "include_tests": False, "d_vocab": 280,
            "seq_len": 12, "validation_fraction": 0.3, "max_bytes": None}  # fmt: skip
    data = res / "datasets"
    make_text_dataset.main(
        ["--spec", json.dumps(spec), "--out", str(data / "code.npy"),
         "--validation-out", str(data / "code.validation.npy"),
         "--tokenizer-out", str(data / "code.tokenizer.json"),
         "--provenance-out", str(data / "code.json")]
    )  # fmt: skip
    arch = {**lm_arch(1), "d_vocab": 280}
    train_model.main(
        ["--architecture", json.dumps(arch), "--training", json.dumps({"steps": 2, "batch_size": 2}),
         "--tokens", str(data / "code.npy"), "--threads", "1", "--out-dir", str(res / "models/m")]
    )  # fmt: skip
    tokenizer = Run(tmp_path).tokenizer("m")
    ids = [EOT_ID, *encode(tokenizer, "def f1(x):")]
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|endoftext|>def f1(x):"


def test_tokenizer_is_none_for_models_on_token_ids(run):
    assert run.tokenizer("lm") is None and run.model("lm").tokenizer is None
    with pytest.raises(MissingResultError, match="no model 'nope'"):
        run.tokenizer("nope")


def test_store_is_open_store_with_the_model_and_dataset_hashes(run):
    from mechflow.models.build import model_fingerprint
    from mechflow.store.reader import open_store

    path = run.results / "activations/lm/probe.zarr"
    store = run.store("lm", "probe", hooks=[HOOK])
    reference = open_store(path)
    torch.testing.assert_close(store.torch(HOOK), reference.torch(HOOK))
    np.testing.assert_array_equal(store.tokens(), np.asarray(run.dataset("probe")))
    attrs = provenance(store)["attrs"]
    assert attrs == reference.provenance
    assert attrs["model_hash"] == model_fingerprint(run.results / "models/lm")
    assert attrs["dataset_sha256"] == file_sha256(run.results / "datasets/probe.npy")
    with pytest.raises(MissingResultError, match=r"no activation store.*\[\('lm', 'probe'\)\]"):
        run.store("lm", "train")


def test_store_refuses_one_cached_from_other_tokens(run, tmp_path):
    from mechflow.data.tokens import save_tokens
    from mechflow.store.reader import ProvenanceMismatchError

    shutil.copytree(run.results, tmp_path / "results")
    other = Run(tmp_path)
    tokens = np.asarray(other.dataset("probe"))
    save_tokens(tokens[::-1], tmp_path / "results/datasets/probe.npy")  # the dataset was remade
    with pytest.raises(ProvenanceMismatchError, match="dataset_sha256"):
        other.store("lm", "probe")


def test_sae_is_load_sae_and_saelens_reads_the_same(run):
    from mechflow.saes.saelens_format import load_sae

    path = run.results / "saes/lm" / HOOK / "topk_4"
    sae = run.sae("lm", HOOK, "topk_4")
    reference, cfg = load_sae(path)
    x = torch.randn(20, 16)
    with torch.no_grad():
        torch.testing.assert_close(sae(x).reconstruction, reference(x).reconstruction)
    assert provenance(sae)["cfg"] == cfg == read_json(path / "cfg.json")
    with pytest.raises(MissingResultError, match=r"no SAE 'topk_8'.*'topk_4'"):
        run.sae("lm", HOOK, "topk_8")
    pytest.importorskip("sae_lens")
    theirs = run.sae("lm", HOOK, "topk_4", saelens=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), sae(x).reconstruction, atol=1e-5, rtol=1e-5)
    assert provenance(theirs)["path"] == str(path)


def test_table_is_read_csv_picked_by_folder(run):
    path = run.results / "induction/lm1/copying.csv"
    df = run.table("induction", "copying", model="lm1")
    pd.testing.assert_frame_equal(df, pd.read_csv(path))
    assert provenance(df) == {"kind": "table", "path": str(path), "sha256": file_sha256(path),
                              "snakemake": None}  # fmt: skip
    log = run.table("grokking", "train_log")  # results/grokking/models/mod5/train_log.csv
    pd.testing.assert_frame_equal(
        log, pd.read_csv(run.results / "grokking/models/mod5/train_log.csv")
    )


def test_table_errors_list_the_candidates(run):
    both = r"\['induction/lm/copying.csv', 'induction/lm1/copying.csv'\]"
    with pytest.raises(AmbiguousResultError, match=f"2 tables 'copying'.*{both}"):
        run.table("induction", "copying")
    with pytest.raises(MissingResultError, match=f"matches {{'model': 'lm2'}}; candidates: {both}"):
        run.table("induction", "copying", model="lm2")
    with pytest.raises(MissingResultError, match=r"no table 'head_scores'.*\['copying'\]"):
        run.table("induction", "head_scores")
    with pytest.raises(
        MissingResultError, match=r"experiments with results: \['induction', 'grokking'"
    ):
        run.table("brackets", "copying")


def test_grokking_inputs_are_the_rows_it_trained_on(run):
    from mechflow.experiments.grokking.inputs import read_run

    task = read_run(run.results / "grokking/models/mod5")
    a, b = np.divmod(np.arange(P * P), P)
    torch.testing.assert_close(run.grokking_inputs("mod5", a, b), task.inputs)
    assert run.grokking_run("mod5").modulus == P
    assert run.grokking_inputs("mod5", 2, 3).tolist() == [[2, 3, P]]
    assert run.grokking_inputs("mod5", [1, 4], 0).tolist() == [[1, 0, P], [4, 0, P]]
    with pytest.raises(ValueError, match=r"b must lie in \[0, 5\), got \[5\]"):
        run.grokking_inputs("mod5", 1, 5)
    with pytest.raises(ValueError, match="not a grokking model"):
        run.grokking_run("lm")


def test_toy_model_is_load_toy_model(run):
    from mechflow.experiments.superposition.toy_model import load_toy_model

    model, cfg = run.toy_model("toy")
    reference, reference_cfg = load_toy_model(run.results / "superposition/models/toy")
    assert cfg == reference_cfg and not model.training
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert provenance(model)["config"]["toy_model_config"] == cfg.to_dict()
    with pytest.raises(MissingResultError, match=r"no toy model 'lm'.*is a model: use model"):
        run.toy_model("lm")


def test_provenance_refuses_what_no_run_returned():
    with pytest.raises(TypeError, match="carries no provenance"):
        provenance(pd.DataFrame())


def test_importing_it_does_not_import_torch():
    code = "import sys, mechflow.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

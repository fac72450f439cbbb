"""IOI on a pretrained GPT-2, by construction: the tiny random GPT-2 of
test_pretrained_text_model (its byte-level BPE read as the IOI vocabulary), given words that are
single tokens of it, is wired by the workflow's own params into every IOI step; a word of several
tokens, or more shards than layers, is refused before any job. Then the checks each reference
holds a model to, on constructed tables (GPT-2 small's heads, a trained model's accuracy)."""

import copy
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from pandas.testing import assert_frame_equal

from mechflow.artifacts import read_table
from mechflow.data.text import EOT, encode, load_tokenizer
from mechflow.experiments.ioi.checks import ioi_checks
from mechflow.experiments.ioi.prompt_set import SPLITS, load_prompt_set
from mechflow.experiments.ioi.prompts import PREFIXES, TEMPLATES, words
from mechflow.steps import (
    check_ioi,
    classify_ioi_heads,
    evaluate_ioi,
    gather_sweep,
    import_pretrained,
    make_ioi_prompts,
    patch_ioi,
)
from mechflow.wiring import Workflow, config_problems
from tests.steps.test_pretrained_text_model import VOCAB, tiny_gpt2

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "workflow/schemas"
MODEL = SimpleNamespace(model="tiny_gpt2")  # the rules' wildcards
N_LAYERS, N_HEADS = 2, 4  # tiny_gpt2's


def single_token_words(tokenizer) -> list[str]:
    """Lowercase words that are one token with their leading space ("Ġ" + letters), none a word
    of the built-in templates or prefixes (a name "the" would read as the article)."""
    taken = {w for text in (*TEMPLATES, *PREFIXES) for w in words(text)}
    found = [
        token[1:]
        for token in tokenizer.get_vocab()
        if token.startswith("Ġ") and re.fullmatch("[a-z]{2,}", token[1:])
    ]
    return sorted(w for w in found if w not in taken and len(encode(tokenizer, " " + w)) == 1)


def ioi_config(hf_dir: Path, names: list[str], places: list[str], objects: list[str]) -> dict:
    """The test config with the tiny GPT-2 in the IOI experiment, its prompts from the built-in
    templates and the given words; 40 prompts per split, 20 aligned, 2 shards."""
    config = copy.deepcopy(yaml.safe_load((ROOT / "config/test.yaml").read_text()))
    config["models"]["tiny_gpt2"] = {
        "source": "pretrained", "name": "tiny_gpt2", "path": str(hf_dir),
    }  # fmt: skip
    config["datasets"]["tiny_words"] = {
        "kind": "ioi", "n_sequences": 8, "seq_len": 40, "names": names, "places": places,
        "objects": objects,
    }  # fmt: skip
    config["experiments"].setdefault("ioi", {}).update({
        "models": ["tiny_gpt2"], "pretrained_words": "tiny_words", "prompts": 40,
        "aligned_prompts": 20, "shards": 2, "random_circuits": 3, "batch_size": 32, "seed": 3,
    })  # fmt: skip
    return config


class Input(dict):
    """Snakemake's named input files as a rule's params function reads them."""

    __getattr__ = dict.__getitem__


@pytest.fixture(scope="module")
def ioi(tmp_path_factory):
    """The workflow's params (checked config) run into import_pretrained and every IOI step,
    under a results/ of its own; the paths, the IOI wiring and the words."""
    root = tmp_path_factory.mktemp("ioi_pretrained")
    hf_dir = tiny_gpt2(root / "hf")
    chosen = single_token_words(load_tokenizer(hf_dir / "tokenizer.json"))
    assert len(chosen) >= 13, chosen  # 7 names, 3 places, 3 objects
    lists = {"names": chosen[:7], "places": chosen[7:10], "objects": chosen[10:13]}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # no results/ of the repo's
        config = ioi_config(hf_dir, **lists)
        problems, _ = config_problems(config, SCHEMAS)
        assert problems == []
        workflow = Workflow(config)
    IOI = workflow.experiments["ioi"]
    model_dir = root / "results/models/tiny_gpt2"
    import_pretrained.main([
        "--name", workflow.pretrained_name(MODEL),
        *shlex.split(workflow.pretrained_path_flag(MODEL)), "--out-dir", str(model_dir),
    ])  # fmt: skip
    out = root / "results/ioi/tiny_gpt2"
    paths = {k: out / f"{k}.csv" for k in ("accuracy", "classes", "knockouts", "faithfulness")}
    paths |= {"prompts": out / "prompts.npz", "patching": out / "patching.csv"}
    inputs = Input({k: str(root / v) for k, v in IOI.prompt_inputs(MODEL).items()})
    make_ioi_prompts.main([
        "--spec", IOI.spec_json(MODEL), *shlex.split(IOI.prompt_flags(MODEL, inputs)),
        "--prompts", str(IOI.setting("prompts")),
        "--aligned-prompts", str(IOI.setting("aligned_prompts")),
        "--seed", str(IOI.setting("seed")), "--out", str(paths["prompts"]),
    ])  # fmt: skip
    reads = ["--model-dir", str(model_dir), "--prompts", str(paths["prompts"])]
    batch = ["--batch-size", str(IOI.setting("batch_size"))]
    evaluate_ioi.main([*reads, *batch, "--out", str(paths["accuracy"])])
    shards = [root / f for f in IOI.shard_files(MODEL)]
    for i, shard in enumerate(shards):
        patch_ioi.main([*reads, "--shard", str(i), "--shards", str(len(shards)), *batch,
                        "--out", str(shard)])  # fmt: skip
    gather_sweep.main(["--shards", *map(str, shards), "--out", str(paths["patching"])])
    classify_ioi_heads.main([
        *reads, "--attention-threshold", str(IOI.setting("attention_threshold")),
        "--share", str(IOI.setting("share")), "--min-effect", str(IOI.setting("min_effect")),
        "--random-circuits", str(IOI.setting("random_circuits")),
        "--seed", str(IOI.setting("seed")), *batch, "--classes-out", str(paths["classes"]),
        "--knockouts-out", str(paths["knockouts"]),
        "--faithfulness-out", str(paths["faithfulness"]),
    ])  # fmt: skip
    paths["checks"] = out / "checks.csv"
    check_ioi.main([
        "--accuracy", str(paths["accuracy"]), "--classes", str(paths["classes"]),
        "--faithfulness", str(paths["faithfulness"]), "--reference", IOI.reference(MODEL),
        "--min-accuracy", str(IOI.setting("min_accuracy")), *shlex.split(IOI.enforce_flag(MODEL)),
        "--out", str(paths["checks"]),
    ])  # fmt: skip
    return SimpleNamespace(
        root=root, hf=hf_dir, model_dir=model_dir, paths=paths, IOI=IOI, inputs=inputs, **lists
    )


def test_the_workflow_wires_the_pretrained_model(ioi):
    IOI = ioi.IOI
    assert IOI.prompt_inputs(MODEL) == {"tokenizer": "results/models/tiny_gpt2/tokenizer.json"}
    assert IOI.prompt_flags(MODEL, ioi.inputs) == f"--tokenizer {ioi.inputs.tokenizer}"
    assert IOI.reference(MODEL) == "none"  # its TransformerLens name is not GPT-2 small's
    assert IOI.words_spec("tiny_gpt2")["names"] == ioi.names
    assert IOI.n_layers("tiny_gpt2") == N_LAYERS  # from its config.json, before any job


def test_the_names_are_single_tokens_at_their_positions(ioi):
    tokenizer = load_tokenizer(ioi.model_dir / "tokenizer.json")
    bos = tokenizer.token_to_id(EOT)
    assert bos == VOCAB - 1
    ids = {name: encode(tokenizer, " " + name) for name in ioi.names}
    assert all(len(v) == 1 for v in ids.values())
    name_ids = sorted(v[0] for v in ids.values())
    prompt_set = load_prompt_set(ioi.paths["prompts"])
    assert sorted(prompt_set.name_ids.tolist()) == name_ids
    assert list(prompt_set.prompts) == list(SPLITS)
    for split, drawn in prompt_set.prompts.items():
        rows, pos = np.arange(len(drawn)), drawn.positions
        assert len(drawn) == (20 if split == "aligned" else 40)
        assert np.isin(drawn.io, name_ids).all() and np.isin(drawn.s, name_ids).all()
        assert (drawn.io != drawn.s).all()
        assert (drawn.tokens[:, 0] == bos).all()
        assert (drawn.tokens[rows, pos["IO"]] == drawn.io).all(), split
        assert (drawn.tokens[rows, pos["S1"]] == drawn.s).all(), split
        assert (drawn.tokens[rows, pos["S2"]] == drawn.s).all(), split
        assert (pos["S1+1"] == pos["S1"] + 1).all()
        after = np.arange(drawn.tokens.shape[1]) > pos["END"][:, None]
        assert (drawn.tokens[after] == bos).all()  # END is the last real token: padding follows
        assert (drawn.tokens[rows, pos["END"]] != bos).all()
        assert drawn.tokens.shape[1] <= 64  # within the tiny GPT-2's n_ctx
        corrupted = prompt_set.corrupted[split]
        for name in ("IO", "S1", "S2"):  # the ABC names: other names, in the same places
            swapped = corrupted[rows, pos[name]]
            assert np.isin(swapped, name_ids).all()
            assert (swapped != drawn.io).all() and (swapped != drawn.s).all()
        keep = np.ones_like(corrupted, dtype=bool)
        for name in ("IO", "S1", "S2"):
            keep[rows, pos[name]] = False
        assert (corrupted[keep] == drawn.tokens[keep]).all()


def gpt2_text(drawn, i: int, name_of: dict[int, str], places, objects) -> str:
    """The sentence of prompt ``i`` as GPT-2 text, joined here from its template, prefix and
    words: no space before punctuation, the first word capitalised, unless it is a name (then
    it keeps its space: " Mary and John were ...", the single token " Mary")."""
    io, s = name_of[int(drawn.io[i])], name_of[int(drawn.s[i])]
    n1, n2 = (io, s) if drawn.order[i] == "ABBA" else (s, io)
    fill = {"[N1]": n1, "[N2]": n2, "[S]": s, "[PLACE]": places[drawn.place[i]],
            "[OBJECT]": objects[drawn.object[i]]}  # fmt: skip
    sentence = words(PREFIXES[drawn.prefix[i]]) + words(TEMPLATES[drawn.template[i]])
    text = re.sub(r" ([,.])", r"\1", " " + " ".join(fill.get(w, w) for w in sentence))
    return text if sentence[0] in fill else text[1].upper() + text[2:]


def test_the_prompts_are_the_tokenizers_encoding_of_their_text(ioi):
    """BOS and then exactly what the Hugging Face tokenizer makes of the sentence as text."""
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(ioi.hf)
    tokenizer = load_tokenizer(ioi.model_dir / "tokenizer.json")
    name_of = {encode(tokenizer, " " + n)[0]: n for n in ioi.names}
    prompt_set = load_prompt_set(ioi.paths["prompts"])
    name_first = 0
    for drawn in prompt_set.prompts.values():
        for i in range(len(drawn)):
            end = int(drawn.positions["END"][i])
            text = gpt2_text(drawn, i, name_of, ioi.places, ioi.objects)
            expected = [VOCAB - 1, *hf_tokenizer(text)["input_ids"]]
            assert drawn.tokens[i, : end + 1].tolist() == expected, text
            assert hf_tokenizer.decode(drawn.tokens[i, 1 : end + 1]) == text
            name_first += text.startswith(" ")
    assert name_first > 0  # the sample holds sentences that start with a name (no prefix)


def test_the_tables_have_a_row_per_head(ioi):
    accuracy = read_table(ioi.paths["accuracy"])
    assert accuracy["split"].tolist() == list(SPLITS)
    assert accuracy["prompts"].tolist() == [40, 40, 20]
    assert (accuracy["model"] == "tiny_gpt2").all()
    assert accuracy[["accuracy", "logit_diff", "abc_logit_diff"]].notna().all().all()
    heads = [(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS)]
    classes = read_table(ioi.paths["classes"])
    assert list(zip(classes["layer"], classes["head"], strict=True)) == heads
    assert classes[["dla_io", "dla_s", "dla_diff", "att_end_io", "to_logits"]].notna().all().all()
    patching = read_table(ioi.paths["patching"])
    for kind in ("z", "path_logits"):
        part = patching[patching["kind"] == kind]
        assert list(zip(part["layer"], part["head"], strict=True)) == heads
    n_pos = int(load_prompt_set(ioi.paths["prompts"]).prompts["aligned"].positions["END"][0]) + 1
    for kind in ("resid_pre", "attn_out", "mlp_out"):  # GPT-2 has MLPs
        part = patching[patching["kind"] == kind]
        assert len(part) == N_LAYERS * n_pos and (part["head"] == -1).all()
    assert read_table(ioi.paths["knockouts"])["ablated"].iloc[0] == "none"
    faithful = read_table(ioi.paths["faithfulness"])
    assert len(faithful) == 1 and faithful["random_circuits"].item() == 3
    checks = read_table(ioi.paths["checks"])  # reference none: nothing to hold it to
    assert checks.empty and {"model", "check", "passed"} <= set(checks.columns)


def test_the_sharded_sweep_equals_one_shard(ioi, tmp_path):
    one = tmp_path / "shard_0_of_1.csv"
    patch_ioi.main([
        "--model-dir", str(ioi.model_dir), "--prompts", str(ioi.paths["prompts"]),
        "--shard", "0", "--shards", "1", "--batch-size", "32", "--out", str(one),
    ])  # fmt: skip
    gather_sweep.main(["--shards", str(one), "--out", str(tmp_path / "one.csv")])
    assert_frame_equal(
        read_table(ioi.paths["patching"]), read_table(tmp_path / "one.csv"),
        check_exact=False, atol=1e-6, rtol=0,
    )  # fmt: skip


def test_a_word_of_several_tokens_or_too_many_shards_fails_before_any_job(
    ioi, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    tokenizer = load_tokenizer(ioi.hf / "tokenizer.json")
    word = "afternoon"
    assert len(encode(tokenizer, " " + word)) > 1
    config = ioi_config(ioi.hf, [*ioi.names, word], ioi.places, ioi.objects)
    problems, _ = config_problems(config, SCHEMAS)
    assert problems == [
        "datasets.tiny_words.names: models.tiny_gpt2's tokenizer: words that are not one token "
        f"of the tokenizer: [{word!r}]"
    ]
    config = ioi_config(ioi.hf, ioi.names, ioi.places, ioi.objects)
    config["experiments"]["ioi"]["shards"] = 3
    problems, _ = config_problems(config, SCHEMAS)
    assert problems == [
        "experiments.ioi.shards: 3, but models.tiny_gpt2 has 2 layers to shard the sweeps over; "
        "allowed 1 to 2"
    ]
    config = ioi_config(ioi.hf, ioi.names, ioi.places, ioi.objects)
    config["datasets"]["tiny_words"].update(prefixes=[" ".join(["the"] * 30) + " ,"], seq_len=64)
    problems, _ = config_problems(config, SCHEMAS)
    assert len(problems) == 1 and problems[0].startswith("datasets.tiny_words: the longest prompt")
    assert "more than its n_ctx=64" in problems[0]


# --- the checks of each reference, on constructed tables ------------------------------------
def head_table(dla_diff: dict, via_movers_q: dict, classes: dict | None = None) -> pd.DataFrame:
    """GPT-2 small's 12 x 12 heads, every value small but those given."""
    heads = [(layer, head) for layer in range(12) for head in range(12)]
    rng = np.random.default_rng(0)
    table = pd.DataFrame(heads, columns=["layer", "head"])
    table["class"] = [(classes or {}).get(h, "") for h in heads]
    table["dla_diff"] = rng.uniform(-0.5, 0.5, len(heads))
    table["via_movers_q"] = rng.uniform(0, 0.2, len(heads))
    for column, given in (("dla_diff", dla_diff), ("via_movers_q", via_movers_q)):
        for (layer, head), value in given.items():
            table.loc[layer * 12 + head, column] = value
    return table


def accuracy_table(accuracy: float = 1.0, logit_diff: float = 3.0) -> pd.DataFrame:
    return pd.DataFrame({
        "split": list(SPLITS), "accuracy": [accuracy, 1.0, 1.0],
        "logit_diff": [logit_diff, 2.0, 2.0],
    })  # fmt: skip


FAITHFUL = pd.DataFrame({"faithfulness": [0.8], "random_faithfulness": [0.1]})
GPT2_DLA = {(9, 9): 3.0, (9, 6): 2.5, (11, 2): -2.0}  # 11.2: a negative name mover
GPT2_VIA_Q = {(8, 10): 0.6, (7, 9): 0.5, (8, 6): 0.4}


def failed(checks: pd.DataFrame) -> set[str]:
    return set(checks.loc[~checks["passed"], "check"])


def test_gpt2_small_passes_as_the_paper_found_it():
    checks = ioi_checks(accuracy_table(), head_table(GPT2_DLA, GPT2_VIA_Q), FAITHFUL,
                        reference="gpt2")  # fmt: skip
    assert checks["check"].tolist() == [
        "logit_diff_in_range", "name_movers_in_top3_dla", "s_inhibition_ranked_first",
    ]  # fmt: skip
    assert checks["passed"].all()
    assert checks.set_index("check").loc["name_movers_in_top3_dla", "value"] == 2


@pytest.mark.parametrize(
    ("accuracy", "dla", "via_q", "fails"),
    [
        (accuracy_table(logit_diff=5.0), GPT2_DLA, GPT2_VIA_Q, "logit_diff_in_range"),
        (accuracy_table(logit_diff=2.0), GPT2_DLA, GPT2_VIA_Q, "logit_diff_in_range"),
        (accuracy_table(), {**GPT2_DLA, (0, 1): 4.0, (5, 5): 3.5, (11, 3): 3.2}, GPT2_VIA_Q,
         "name_movers_in_top3_dla"),
        (accuracy_table(), {**GPT2_DLA, (0, 1): 4.0, (5, 5): 2.8}, GPT2_VIA_Q,
         "name_movers_in_top3_dla"),  # one mover left in the top three: not two
        (accuracy_table(), GPT2_DLA, {**GPT2_VIA_Q, (6, 0): 0.7}, "s_inhibition_ranked_first"),
    ],
    ids=["logit_diff_5", "logit_diff_2", "movers_out_of_top3", "one_mover_in_top3",
         "other_head_first"],
)  # fmt: skip
def test_each_gpt2_check_fails_on_its_own(accuracy, dla, via_q, fails):
    checks = ioi_checks(accuracy, head_table(dla, via_q), FAITHFUL, reference="gpt2")
    assert failed(checks) == {fails}


def test_the_trained_checks_fail_on_low_accuracy_and_on_no_name_mover():
    movers = {(1, 0): "name mover", (0, 1): "S-inhibition"}
    table = head_table({}, {}, movers)
    passing = ioi_checks(accuracy_table(0.97), table, FAITHFUL, reference="trained")
    assert passing["passed"].all() and len(passing) == 3
    low = ioi_checks(accuracy_table(0.9), table, FAITHFUL, reference="trained")
    assert failed(low) == {"heldout_combination_accuracy"}
    none = ioi_checks(accuracy_table(0.97), head_table({}, {}, {(0, 1): "S-inhibition"}),
                      FAITHFUL, reference="trained")  # fmt: skip
    assert failed(none) == {"name_movers"}
    unfaithful = pd.DataFrame({"faithfulness": [0.1], "random_faithfulness": [0.2]})
    assert failed(ioi_checks(accuracy_table(0.97), table, unfaithful, reference="trained")) == {
        "faithfulness_over_random"
    }
    no_reference = ioi_checks(accuracy_table(0.1), table, unfaithful, reference="none")
    assert no_reference.empty
    with pytest.raises(ValueError, match="reference 'gpt3'"):
        ioi_checks(accuracy_table(), table, FAITHFUL, reference="gpt3")

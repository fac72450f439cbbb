"""The real workflow: lint, dry runs, a bad config, and a tiny end-to-end run with science checks.

The end-to-end run trains real models on config/test.yaml, so its checks are scientific: a broken
data generator, trainer, cache, score or ablation fails them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_helpers import ROOT, copy_workflow, snakemake

from mechflow.experiments.othello.workflow import TABLES as OTHELLO_TABLES


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def test_lint_is_clean(workflow_copy):
    proc = snakemake(workflow_copy, "--lint")
    assert "Congratulations" in proc.stdout + proc.stderr


def test_dry_run_of_the_default_config_plans_every_figure(workflow_copy):
    out = snakemake(workflow_copy, "-n", "--quiet", "rules").stdout
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    # two attention-only models, the text model, three seeds of the IOI model, OthelloGPT
    assert counts["train_model"] == 7
    # the induction probes of three models, the SAE train/eval caches of the text model, and
    # the held-out games of OthelloGPT and of its untrained control
    assert counts["cache_activations"] == 3 + 2 + 2
    assert counts["make_text_dataset"] == 1 and counts["select_sequences"] == 2
    assert counts["plot_composition"] == 2  # the one-layer model has no composition
    assert counts["plot_phase_change"] == 3
    assert counts["train_grokking_model"] == 1
    assert counts["measure_progress"] == 1 and counts["check_grokking"] == 1
    for figure in ("grokking_curves", "embedding_fourier", "activation_maps", "progress_measures"):
        assert counts[f"plot_{figure}"] == 1
    assert counts["train_toy_model"] == 2 and counts["plot_dimensionality"] == 2
    assert counts["map_superposition_phases"] == 1
    assert counts["train_sae"] == 12 + 1  # the sweep on the text model and the toy SAE
    assert counts["evaluate_sae"] == 12 and counts["evaluate_toy_sae"] == 1
    assert counts["plot_sae_frontier"] == 1 and counts["plot_latent_dashboard"] == 1
    for rule in ("compare_baselines", "sample_text", "apply_logit_lens", "attribute_logits"):
        assert counts[rule] == 1, rule
    for figure in ("loss_curve", "logit_lens", "logit_attribution"):
        assert counts[f"plot_{figure}"] == 1
    for rule in ("make_ioi_prompts", "evaluate_ioi", "patch_ioi", "classify_ioi_heads",
                 "check_ioi", "plot_ioi_circuit", "plot_ioi_patching"):  # fmt: skip
        assert counts[rule] == 3, rule  # one shard per sweep by default
    # OthelloGPT: its games, their labels, its untrained control; legal play and probes of both
    assert counts["make_dataset"] >= 2 and counts["label_othello_games"] == 1
    assert counts["initialise_model"] == 1
    assert counts["evaluate_othello"] == 2 and counts["probe_othello"] == 2
    for rule in ("intervene_othello", "attribute_othello", "summarize_othello_probes",
                 "check_othello", "plot_othello_boards", "plot_othello_interventions"):  # fmt: skip
        assert counts[rule] == 1, rule


def test_bad_config_stops_before_any_job_naming_the_key(workflow_copy, tmp_path):
    cfg = yaml.safe_load((workflow_copy / "config/test.yaml").read_text())
    cfg["activations"]["extra_hooks"]["attn_only_2l"] = ["blocks.5.hook_resid_post"]
    cfg["models"]["attn_only_1l"]["architecture"]["n_ctx"] = 16
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_copy, "--cores", "1", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "blocks.5.hook_resid_post" in message
    assert "models.attn_only_1l.architecture.n_ctx=16" in message
    assert not (workflow_copy / "results").exists()


def test_bad_grokking_task_stops_before_any_job(workflow_copy, tmp_path):
    cfg = yaml.safe_load((workflow_copy / "config/test.yaml").read_text())
    run = cfg["experiments"]["grokking"]["runs"]["modadd_37"]
    run["modulus"] = 35
    run["training"]["checkpoint_every"] = 400
    bad = tmp_path / "bad_grokking.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_copy, "--cores", "1", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "experiments.grokking.runs.modadd_37: modulus must be an odd prime" in message
    assert not (workflow_copy / "results").exists()
    run["modulus"] = 37
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_copy, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "modadd_37.training: checkpoints (3 in range) do not cover" in proc.stdout + proc.stderr


def test_schema_error_names_the_key(workflow_copy, tmp_path):
    cfg = yaml.safe_load((workflow_copy / "config/test.yaml").read_text())
    cfg["models"]["attn_only_2l"]["training"]["steps"] = -5
    bad = tmp_path / "bad_schema.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_copy, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "models.attn_only_2l.training.steps: -5 is less than the minimum of 1" in message
    assert not (workflow_copy / "results").exists()


def test_schema_error_in_an_experiment_section_names_the_section(workflow_copy, tmp_path):
    cfg = yaml.safe_load((workflow_copy / "config/test.yaml").read_text())
    cfg["experiments"]["superposition"]["toy_models"]["n5_m2"]["steps"] = 0
    bad = tmp_path / "bad_section.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_copy, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert (
        "experiments.superposition.toy_models.n5_m2.steps: 0 is less than the minimum of 1"
        in message
    )


DUMMY_WIRING = """
from mechflow.experiments.base import Experiment
from mechflow.wiring import RESULTS


class Wiring(Experiment):
    name = "dummy"

    def check(self, problems):
        if len(set(self.settings["items"])) != len(self.settings["items"]):
            problems.append("experiments.dummy.items: repeated item")

    def wildcards(self):
        return {"item": list(self.settings["items"]) if self.enabled else []}

    def targets(self):
        return [f"{RESULTS}/dummy/{item}.txt" for item in self.settings["items"]]
"""

DUMMY_RULES = """
DUMMY = EXPERIMENT["dummy"]


rule count_dummy:
    output:
        f"{RESULTS}/dummy/{{item}}.txt",
    params:
        n=DUMMY.setting("n"),
    conda:
        "../../environment.yml"
    log:
        "logs/count_dummy/{item}.log",
    shell:
        "echo {wildcards.item} {params.n} > {output:q} 2> {log:q}"
"""

DUMMY_SCHEMA = """
$schema: "https://json-schema.org/draft/2020-12/schema"
type: object
additionalProperties: false
required: [items]
properties:
  items: {type: array, items: {$ref: "config.schema.yaml#/$defs/slug"}}
  n: {$ref: "config.schema.yaml#/$defs/positive_int", default: 3}
"""


def test_a_registered_experiment_runs_through_its_own_files_and_one_registry_line(tmp_path):
    """Adding an experiment: its package, rule file and schema, plus its name in EXPERIMENTS."""
    work = copy_workflow(tmp_path / "wf")
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src/mechflow", src / "mechflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    registry = src / "mechflow/experiments/__init__.py"
    text = registry.read_text()
    assert '"othello",\n)' in text
    registry.write_text(text.replace('"othello",\n)', '"othello", "dummy",\n)'))
    (src / "mechflow/experiments/dummy").mkdir()
    (src / "mechflow/experiments/dummy/__init__.py").write_text("")
    (src / "mechflow/experiments/dummy/workflow.py").write_text(DUMMY_WIRING)
    (work / "workflow/rules/dummy.smk").write_text(DUMMY_RULES)
    (work / "workflow/schemas/dummy.schema.yaml").write_text(DUMMY_SCHEMA)
    cfg = yaml.safe_load((work / "config/test.yaml").read_text())
    cfg["experiments"]["dummy"] = {"items": ["a", "b"]}
    (work / "dummy.yaml").write_text(yaml.safe_dump(cfg))
    env = {"PYTHONPATH": str(src)}

    out = snakemake(work, "-n", "--quiet", "rules", "--configfile", "dummy.yaml", env=env).stdout
    assert re.search(r"^count_dummy\s+2$", out, re.M), out
    lint = snakemake(work, "--lint", "--configfile", "dummy.yaml", env=env)
    assert "Congratulations" in lint.stdout + lint.stderr
    snakemake(work, "results/dummy/b.txt", "--cores", "1", "--configfile", "dummy.yaml", env=env)
    assert (work / "results/dummy/b.txt").read_text().split() == ["b", "3"]  # the schema default

    cfg["experiments"]["dummy"] = {"items": ["a", "a"]}
    (work / "dummy.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(work, "-n", "--configfile", "dummy.yaml", env=env, check=False)
    assert (
        proc.returncode != 0
        and "experiments.dummy.items: repeated item" in proc.stdout + proc.stderr
    )

    # without the registry line the section is refused, naming the registered experiments
    registry.write_text(text)
    proc = snakemake(work, "-n", "--configfile", "dummy.yaml", env=env, check=False)
    assert proc.returncode != 0
    assert (
        "experiments.dummy: unknown experiment; registered: grokking, induction, ioi, "
        "language_model, othello, saes, superposition" in proc.stdout + proc.stderr
    )


# --- the real tiny end-to-end run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("e2e"))
    snakemake(workdir, "--cores", "2", "--configfile", "config/test.yaml")
    return workdir


def table(run: Path, model: str, name: str) -> pd.DataFrame:
    return pd.read_csv(run / "results/induction" / model / f"{name}.csv")


@pytest.mark.slow
def test_every_figure_is_built_and_a_second_run_does_nothing(tiny_run):
    figures = sorted(
        p.relative_to(tiny_run / "results/figures").as_posix()
        for p in (tiny_run / "results/figures").rglob("*.png")
    )
    # induction: 11 for the attention-only models, 6 for the text model; grokking, superposition,
    # SAEs, the language model, IOI, OthelloGPT
    assert len(figures) == 11 + 6 + 4 + 3 + 3 + 3 + 5 + 6, figures
    for png in (tiny_run / "results/figures").rglob("*.png"):
        assert png.stat().st_size > 10_000 and png.with_suffix(".svg").stat().st_size > 10_000
    proc = snakemake(tiny_run, "-n", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_report_gathers_the_figures(tiny_run):
    import base64

    from mechflow.steps.render_table import format_value

    snakemake(tiny_run, "--configfile", "config/test.yaml", "--report", "report.html")
    html = (tiny_run / "report.html").read_text(errors="replace")
    assert "head_scores.png" in html and "phase_change.png" in html
    assert "progress_measures.png" in html and "activation_maps.png" in html
    # The headline tables are HTML results, which the report shows inline (a CSV would only be a
    # download link); it embeds each as a base64 data URI. Pages by their heading:
    pages = {}
    for data in re.findall(r"data:text/html;charset=utf8;filename=[^;]+;base64,([\w+/=]+)", html):
        page = base64.b64decode(data).decode()
        pages[re.search(r"<h1>(.*?)</h1>", page).group(1)] = page
    assert sorted(pages) == sorted(
        [
            *(f"{m}: {what}" for m in ("attn_only_1l", "attn_only_2l", "gpt_2l")
              for what in ("attention-pattern head scores",
                           "loss increase (nats) from ablating one head")),
            "modadd_37: the paper&#x27;s claims, checked",
            "modadd_37: key frequencies",
            "n5_m2: superposition per instance (feature probability)",
            "gpt_2l blocks.0.hook_resid_post: SAE sweep metrics",
            "gpt_2l: validation loss against the baselines (nats/token)",
            "gpt_2l: samples",
            "gpt_2l: logit lens per layer",
            "ioi_2l: IOI accuracy and logit difference per split",
            "ioi_2l: every head, its IOI class and the measurements it was found from",
            "ioi_2l: IOI checks",
            *(f"othello_2l: {title}" for title, _ in OTHELLO_TABLES.values()),
        ]
    )  # fmt: skip

    def cell(value) -> str:
        return f">{format_value(float(value))}</td>"

    accuracy = pd.read_csv(tiny_run / "results/ioi/ioi_2l/accuracy.csv")
    page = pages["ioi_2l: IOI accuracy and logit difference per split"]
    assert all(cell(v) in page for v in accuracy.logit_diff)

    # the run's own numbers are in the tables: the best induction head, marked as found
    scores = table(tiny_run, "attn_only_2l", "head_scores")
    best = scores[scores.score == "induction"].nlargest(1, "value").iloc[0]
    heads = pages["attn_only_2l: attention-pattern head scores"]
    assert f'<td class="num mark">{format_value(float(best.value))}</td>' in heads
    assert re.search(r"<td>[\w, ]*induction</td>", heads)  # named in the column of marks
    ablation = pages["attn_only_2l: loss increase (nats) from ablating one head"]
    assert all(cell(v) in ablation for v in table(tiny_run, "attn_only_2l", "head_ablation").delta)
    checks = pages["modadd_37: the paper&#x27;s claims, checked"]
    for row in grokking_table(tiny_run, "checks").itertuples():
        assert f"<td>{row.check}</td>" in checks and cell(row.value) in checks
        assert cell(row.threshold) in checks
    keys = pages["modadd_37: key frequencies"]
    assert all(cell(v) in keys for v in grokking_table(tiny_run, "key_frequencies").embedding_share)
    instances = pd.read_csv(tiny_run / "results/superposition/n5_m2/instances.csv")
    page = pages["n5_m2: superposition per instance (feature probability)"]
    assert all(cell(v) in page for v in instances.dims_per_feature)
    metrics = sae_metrics(tiny_run)
    page = pages["gpt_2l blocks.0.hook_resid_post: SAE sweep metrics"]
    for metric in ("l0", "explained_variance", "ce_recovered_zero"):
        assert all(cell(v) in page for v in metrics[metrics.metric == metric].value)
    # each table's caption says what its numbers mean
    assert "The claims of Nanda et al. (2023), checked on run" in html
    assert "The heads found in <tt" in html and "The SAE sweep on <tt" in html


@pytest.mark.slow
def test_induction_heads_form_in_layer_1_with_a_previous_token_head_in_layer_0(tiny_run):
    scores = table(tiny_run, "attn_only_2l", "head_scores")
    induction = scores[scores.score == "induction"]
    previous = scores[scores.score == "previous_token"]
    assert induction[induction.layer == 1].value.max() > 0.4
    assert induction[induction.layer == 0].value.max() < 0.2
    assert previous[previous.layer == 0].value.max() > 0.3


@pytest.mark.slow
def test_one_layer_model_has_no_induction_head(tiny_run):
    scores = table(tiny_run, "attn_only_1l", "head_scores")
    assert scores[scores.score == "induction"].value.max() < 0.2


@pytest.mark.slow
def test_the_repeated_half_is_predicted(tiny_run):
    loss = table(tiny_run, "attn_only_2l", "loss_by_position")
    first = loss[loss.half == "first"].loss.mean()
    second = loss[loss.half == "second"].loss.mean()
    assert first > 4.0  # ~ln(127): random tokens are unpredictable
    assert second < 0.5 * first
    one_layer = table(tiny_run, "attn_only_1l", "loss_by_position")
    assert one_layer[one_layer.half == "second"].loss.mean() > 0.8 * first


@pytest.mark.slow
def test_ablating_the_best_induction_head_hurts(tiny_run):
    scores = table(tiny_run, "attn_only_2l", "head_scores")
    best = scores[scores.score == "induction"].sort_values("value").iloc[-1]
    ablation = table(tiny_run, "attn_only_2l", "head_ablation")
    row = ablation[
        (ablation["layer"] == best["layer"])
        & (ablation["head"] == best["head"])
        & (ablation["ablation"] == "zero")
    ]
    assert float(row["delta"].iloc[0]) > 0.1
    # Ablating the layer-0 previous-token head hurts most: induction needs K-composition with it.
    layer0 = ablation[(ablation["layer"] == 0) & (ablation["ablation"] == "mean")]
    assert layer0["delta"].max() > 0.5


@pytest.mark.slow
def test_k_composition_dominates(tiny_run):
    comp = table(tiny_run, "attn_only_2l", "composition")
    mean = comp.groupby("kind")["score"].mean()
    baseline = comp["baseline"].iloc[0]
    assert mean["K"] > 1.3 * baseline
    assert mean["K"] > 1.5 * max(mean["Q"], mean["V"])
    # The previous-token head is the one the induction heads K-compose with most.
    scores = table(tiny_run, "attn_only_2l", "head_scores")
    previous = scores[(scores.score == "previous_token") & (scores["layer"] == 0)]
    prev_head = int(previous.sort_values("value")["head"].iloc[-1])
    k = comp[comp.kind == "K"]
    assert k[k.head_from == prev_head]["score"].mean() >= mean["K"]


@pytest.mark.slow
def test_phase_change_is_visible_across_checkpoints(tiny_run):
    phase = table(tiny_run, "attn_only_2l", "phase_change")
    ind = phase[phase.metric == "induction_score"].sort_values("step")
    assert ind.value.iloc[0] < 0.1 and ind.value.iloc[-1] > 0.4
    icl = phase[phase.metric == "icl_score"].sort_values("step")
    assert icl.value.iloc[-1] < icl.value.iloc[0] - 0.3


@pytest.mark.slow
def test_activation_store_is_complete_with_provenance(tiny_run):
    from mechflow.store.reader import open_store

    store = open_store(tiny_run / "results/activations/attn_only_2l/repeated_random.zarr")
    assert "blocks.1.hook_resid_post" in store.hooks and "blocks.1.attn.hook_pattern" in store.hooks
    assert store.n_sequences == 64
    assert store.provenance["model_hash"]


# --- grokking (config/test.yaml: p = 37, which groks within the test budget) ---------------------


def grokking_table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run / "results/grokking/modadd_37" / f"{name}.csv")


@pytest.mark.slow
def test_grokking_run_reproduces_the_papers_claims(tiny_run):
    checks = grokking_table(tiny_run, "checks").set_index("check")
    assert checks.passed.all(), checks  # enforce_checks: the run would have failed anyway
    log = pd.read_csv(tiny_run / "results/grokking/models/modadd_37/train_log.csv")
    memorised = log.loc[log.train_accuracy >= 1.0, "epoch"].min()
    generalised = log.loc[log.test_accuracy >= 0.99, "epoch"].min()
    assert memorised < 0.5 * generalised


@pytest.mark.slow
def test_grokked_model_computes_on_a_few_key_frequencies(tiny_run):
    keys = grokking_table(tiny_run, "key_frequencies")
    assert 1 <= len(keys) <= 8
    assert keys.embedding_share.sum() > 0.5
    assert keys.key_fraction.iloc[0] > 0.8  # neurons are explained by the key frequencies
    progress = grokking_table(tiny_run, "progress").pivot(
        index="epoch", columns="metric", values="value"
    )
    final = progress.iloc[-1]
    assert final.test_accuracy > 0.99
    assert final.restricted_loss < 0.1 < final.excluded_loss


# --- superposition (config/test.yaml: n = 5 features in m = 2 dimensions) -----------------------


@pytest.mark.slow
def test_toy_model_superposes_only_sparse_features(tiny_run):
    instances = pd.read_csv(tiny_run / "results/superposition/n5_m2/instances.csv")
    dense = instances.sort_values("feature_probability").iloc[-1]
    sparse = instances.sort_values("feature_probability").iloc[0]
    assert dense.feature_probability == 1.0 and sparse.feature_probability < 0.1
    assert dense.dims_per_feature > 0.9  # about one dimension per represented feature
    assert sparse.n_represented > sparse.d_hidden  # more features than dimensions
    assert sparse.dims_per_feature < 0.5
    phases = pd.read_csv(tiny_run / "results/superposition/phase_map.csv")
    cell = phases.set_index(["feature_probability", "relative_importance"])["phase"]
    assert cell[(1.0, 0.1)] == "not represented"
    assert cell[(1.0, 10.0)] == "dedicated dimension"
    assert cell[(phases.feature_probability.min(), 10.0)] == "superposition"


# --- sparse autoencoders (config/test.yaml: one SAE per architecture, and a toy SAE) -------------


def sae_metrics(run: Path) -> pd.DataFrame:
    folder = run / "results/saes/gpt_2l/blocks.0.hook_resid_post"
    return pd.concat(pd.read_csv(p) for p in sorted(folder.glob("*_metrics.csv")))


@pytest.mark.slow
def test_saes_reconstruct_and_recover_the_loss(tiny_run):
    metrics = sae_metrics(tiny_run).pivot(index="sae", columns="metric", values="value")
    assert sorted(metrics.index) == ["batchtopk_8", "jumprelu_0.3", "relu_0.3", "topk_8"]
    assert metrics.loc["topk_8", "l0"] == pytest.approx(8.0)  # TopK hits its k exactly
    assert metrics.loc["batchtopk_8", "l0"] < 16  # k on average, through its threshold
    for sae, row in metrics.iterrows():
        assert 0.0 <= row.ce_recovered_zero <= 1.05, sae
        assert row.fvu < 0.5, sae
        assert row.l0 < 0.5 * 512, sae  # sparse: d_sae = 8 * 64
    assert metrics.loc["topk_8", "ce_recovered_zero"] > 0.7  # measured 0.87


@pytest.mark.slow
def test_sae_is_in_the_layout_saelens_loads(tiny_run):
    sae_dir = tiny_run / "results/saes/gpt_2l/blocks.0.hook_resid_post/topk_8"
    cfg = yaml.safe_load((sae_dir / "cfg.json").read_text())
    assert cfg["d_in"] == 64 and cfg["d_sae"] == 512 and cfg["architecture"] == "topk"
    assert (sae_dir / "sae_weights.safetensors").stat().st_size > 0


@pytest.mark.slow
def test_toy_sae_recovers_the_true_features(tiny_run):
    recovery = pd.read_csv(tiny_run / "results/saes/n5_m2/hook_hidden/topk_1_recovery.csv")
    represented = recovery[recovery.represented]
    assert len(represented) >= 4  # the sparsest instance packs 5 features into 2 dimensions
    assert represented.recovered.mean() >= 0.9
    assert represented.max_cosine.min() > 0.8


@pytest.mark.slow
def test_the_readme_notebook_example_runs_on_the_tiny_run(tiny_run):
    """README's "Results in a notebook" block, run as written from the run's directory."""
    import subprocess
    import sys

    section = (ROOT / "README.md").read_text().split("\n## Results in a notebook\n", 1)[1]
    (block,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    proc = subprocess.run(
        [sys.executable, "-"],
        input=block,
        cwd=tiny_run,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


# --- the language model of text (config/test.yaml: gpt_2l on 400 kB of the stdlib) ------------


def lm_table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run / f"results/language_model/gpt_2l/{name}.csv", keep_default_na=False)


@pytest.mark.slow
def test_the_text_model_beats_the_frequency_baselines(tiny_run):
    losses = lm_table(tiny_run, "losses").set_index("name")
    model = losses.loc["gpt_2l", "loss"]
    assert model < losses.loc["uniform", "loss"] - 2
    assert model < losses.loc["unigram", "loss"] - 0.5
    # (300 steps reach the bigram's loss, 3.91 vs 3.94 measured; the default run's 600-step
    # 4-layer model is the one held below it, in the note)
    log = pd.read_csv(tiny_run / "results/models/gpt_2l/train_log.csv")
    val = log.dropna(subset=["val_loss"])["val_loss"]
    assert val.iloc[-1] < val.iloc[0] - 0.3  # it kept falling after step 100 (4.36 -> 3.88)


@pytest.mark.slow
def test_samples_are_decoded_text_in_the_report(tiny_run):
    samples = lm_table(tiny_run, "samples")
    assert set(samples["strategy"]) == {"greedy", "temperature", "top-k", "top-p", "beam"}
    assert samples["completion"].str.len().min() > 0
    page = (tiny_run / "results/language_model/gpt_2l/samples.html").read_text()
    import html

    greedy = samples[samples["strategy"] == "greedy"]["completion"].iloc[0]
    assert html.escape(greedy) in page and 'class="text"' in page


@pytest.mark.slow
def test_the_logit_lens_converges_to_the_model(tiny_run):
    lens = lm_table(tiny_run, "logit_lens").sort_values("layer")
    assert lens["kl_to_final"].iloc[-1] < 1e-5 and lens["top1_agreement"].iloc[-1] == 1
    assert lens["kl_to_final"].iloc[0] > lens["kl_to_final"].iloc[-2] > lens["kl_to_final"].iloc[-1]
    assert lens["loss"].iloc[-1] < lens["loss"].iloc[0]


@pytest.mark.slow
def test_direct_attribution_credits_the_components_that_write_the_logit(tiny_run):
    dla = lm_table(tiny_run, "logit_attribution")
    losses = lm_table(tiny_run, "losses").set_index("name")
    assert len(dla[dla["kind"] == "head"]) == 2 * 4
    # the correct token's logit is pushed up overall, by more than the embeddings alone
    assert dla["mean"].sum() > 0
    assert dla[dla["kind"].isin(["head", "mlp"])]["mean"].sum() > 0
    assert np.isfinite(losses["loss"]).all()


@pytest.mark.slow
def test_text_sae_dashboards_show_decoded_contexts(tiny_run):
    folder = tiny_run / "results/saes/gpt_2l/blocks.0.hook_resid_post/topk_8_latents"
    contexts = pd.read_csv(folder / "contexts.csv", keep_default_na=False)
    assert contexts["context"].str.contains("«").all()  # text, the activating token marked
    assert not contexts["context"].str.fullmatch(r"[\d\s\[\]]+").any()  # not lists of ids
    logits = pd.read_csv(folder / "logits.csv", keep_default_na=False)
    assert (logits["text"].astype(str) != logits["token"].astype(str)).any()


@pytest.mark.slow
def test_the_ioi_sweep_ran_in_shards_and_every_head_was_measured(tiny_run):
    """The test config's IOI model is too short-trained to solve IOI: its checks are reported
    (enforce_checks: false), and every table is complete."""
    folder = tiny_run / "results/ioi/ioi_2l"
    shards = sorted(p.name for p in (folder / "patching").glob("*.csv"))
    assert shards == ["shard_0_of_2.csv", "shard_1_of_2.csv"]
    patching = pd.read_csv(folder / "patching.csv")
    assert "shard" not in patching
    heads = patching[patching["kind"] == "z"]
    assert sorted(zip(heads["layer"], heads["head"])) == [(lay, h) for lay in range(2) for h in range(4)]
    classes = pd.read_csv(folder / "head_classes.csv")
    assert len(classes) == 8 and np.isfinite(classes["dla_diff"]).all()
    checks = pd.read_csv(folder / "checks.csv")
    assert list(checks["check"]) == [
        "heldout_combination_accuracy", "name_movers", "faithfulness_over_random",
    ]  # fmt: skip
    accuracy = pd.read_csv(folder / "accuracy.csv").set_index("split")
    assert set(accuracy.index) == {"combinations", "templates", "aligned"}


# --- what a job's log shows while it runs -------------------------------------------------------


@pytest.mark.slow
def test_training_logs_report_progress(tiny_run):
    text = (tiny_run / "logs/train_model/attn_only_2l.log").read_text()
    lines = [line for line in text.splitlines() if "train attn_only_2l: step " in line]
    assert len(lines) >= 2, text[-2000:]  # at least the first step and the last
    steps = [re.search(r"step (\d+)/(\d+) \(\d+%\)", line).groups() for line in lines]
    assert steps[-1][0] == steps[-1][1]  # the last line is the last step
    assert re.search(r" loss \d+\.\d{3} \| \d+(\.\d+)? tokens/s \| .* elapsed$", lines[-1])
    assert not list((tiny_run / "results").rglob("*.partial.csv"))  # live tables removed

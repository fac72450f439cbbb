"""The workflow through a real single-node SLURM (scripts/slurm/setup_single_node.sh).

One SLURM run of tests/workflow/slurm_config.yaml with one rule broken on purpose: Snakemake must
report the failed SLURM job and exit non-zero; after the fix, a rerun finishes the rest. The jobs
must be real SLURM jobs, and the outputs identical to a local run of the same config.

The cluster is stopped when the module ends; the stop script parks slurm.conf so that the SLURM
clients left on PATH fail at once: otherwise every later Snakemake start waits ~10 s for a
controller (the plugin runs `scontrol` at import).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import ROOT, copy_workflow, snakemake

SETUP = ROOT / "scripts/slurm/setup_single_node.sh"
STOP = ROOT / "scripts/slurm/stop_single_node.sh"
CONFIG = Path(__file__).with_name("slurm_config.yaml")
GPU_RULES = ("train_model", "cache_activations", "ablate_heads", "track_phase_change")
BROKEN = "mechflow.steps.ablate_heads_broken"
TABLES = ("head_scores", "loss_by_position", "head_ablation", "copying", "phase_change")
IOI_TABLES = ("accuracy", "patching", "head_classes", "faithfulness")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("the real-SLURM test installs and starts SLURM: needs root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no apt-get to install SLURM with")
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and shutil.which("slurmctld") is None:
        pytest.skip(f"apt-get could not install SLURM:\n{proc.stderr[-2000:]}")
    try:
        assert proc.returncode == 0, proc.stderr
        yield
    finally:
        subprocess.run(["bash", str(STOP)], check=True, timeout=120)


def slurm_snakemake(workdir: Path, *args: str, check: bool = True):
    """The slurm profile, with test-speed polling; `timeout` because Snakemake traps SIGTERM."""
    no_gpu = [f"{rule}:gpu=0" for rule in GPU_RULES]  # the profile asks for GPUs this node lacks
    flags = [
        "--workflow-profile", "workflow/profiles/slurm",
        "--configfile", str(CONFIG),
        "--jobs", "2", "--retries", "0", "--latency-wait", "5",
        # a group job sums its members' threads: cap it at the node's 2 CPUs (else 3 CPUs are
        # requested and SLURM keeps it pending with reason PartitionConfig forever)
        "--cores", "2",
        "--set-resources", *no_gpu,
        "--slurm-status-command", "squeue",  # no slurmdbd here: sacct would wait forever
        "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1",
        "--slurm-keep-successful-logs",
    ]  # fmt: skip
    proc = subprocess.run(
        ["timeout", "-k", "15", "600", sys.executable, "-m", "snakemake", *flags, *args],
        cwd=workdir,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    if proc.returncode in (124, 137):  # timed out: Snakemake leaves its SLURM jobs behind
        subprocess.run(["scancel", *job_ids(proc)], check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def job_ids(proc) -> list[str]:
    return re.findall(r"SLURM jobid (\d+)", proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """Only what test_outputs_match_a_local_run compares: the tables (and so datasets, model)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("local"))
    tables = [f"results/induction/attn_only_1l/{t}.csv" for t in TABLES]
    tables += [f"results/ioi/ioi_2l/{t}.csv" for t in IOI_TABLES]
    snakemake(workdir, *tables, "--cores", "2", "--configfile", str(CONFIG))  # nargs+ flag last
    return workdir


@pytest.fixture(scope="module")
def slurm_runs(slurm, tmp_path_factory):
    """A first SLURM run with ablate_heads broken, then a rerun after the fix."""
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm"))
    rules = workdir / "workflow/rules/induction.smk"
    good = rules.read_text()
    rules.write_text(good.replace("mechflow.steps.ablate_heads", BROKEN))
    failed = slurm_snakemake(workdir, check=False)
    rules.write_text(good)
    rerun = slurm_snakemake(workdir)
    return workdir, failed, rerun


def test_a_failing_rule_is_reported_and_the_run_exits_non_zero(slurm_runs):
    workdir, failed, _ = slurm_runs
    log = failed.stdout + failed.stderr
    assert failed.returncode != 0, log[-3000:]
    assert re.search(r"SLURM-job '\d+' failed", log), log[-3000:]
    assert "ablate_heads" in log
    # keep-going: everything not downstream of the broken rule was built in the same run
    assert (workdir / "results/induction/attn_only_1l/head_scores.csv").exists()
    assert (workdir / "results/figures/induction/attn_only_1l/phase_change.png").exists()


def test_the_rerun_after_the_fix_finishes_only_the_rest(slurm_runs):
    workdir, _, rerun = slurm_runs
    log = rerun.stdout + rerun.stderr
    assert "rule ablate_heads" in log
    assert "rule train_model" not in log  # done in the first run, not redone
    assert (workdir / "results/figures/induction/attn_only_1l/head_ablation.png").exists()
    dry = slurm_snakemake(workdir, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_jobs_ran_as_slurm_jobs(slurm_runs):
    workdir, failed, rerun = slurm_runs
    ids = job_ids(failed) + job_ids(rerun)
    # first run: 4 datasets, 2 trainings, cache, ablate (fails), track, one group of the quick
    # analyses, and IOI's prompts, evaluation, 2 sweep shards and classification; the rerun:
    # ablate
    assert len(ids) == 16, ids
    states = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    finished = {line.split()[0]: line.split()[1] for line in states if line.strip()}
    assert set(finished) == set(ids), (finished, ids)
    assert sorted(set(finished.values())) == ["COMPLETED", "FAILED"], finished
    # sbatch --output names each job's log after its SLURM job id, under rule_<rule>/ or
    # group_<group>_<rules>/ (plugin's layout)
    logs = list((workdir / "logs/slurm").rglob("*.log"))
    assert sorted(p.stem for p in logs) == sorted(ids), (logs, ids)
    top = {p.relative_to(workdir / "logs/slurm").parts[0] for p in logs}
    assert {"rule_train_model", "rule_cache_activations", "rule_ablate_heads"} <= top, top
    # the three quick analyses of the model ran as ONE SLURM job
    groups = [d for d in top if d.startswith("group_induction_attn_only_1l")]
    assert groups == [
        "group_induction_attn_only_1l_measure_loss_by_position_score_copying_score_heads"
    ]
    # each shard of the IOI sweep was a SLURM job of its own; the gather ran on the submit host
    assert len(list((workdir / "logs/slurm/rule_patch_ioi").rglob("*.log"))) == 2
    assert "rule_gather_ioi_patching" not in top
    # plots are localrules: no SLURM job for them
    assert not any(d.startswith("rule_plot_") for d in top), top


def test_outputs_match_a_local_run(slurm_runs, local_run):
    """Same threads in both runs (the rule's), so even trained weights agree bit for bit."""
    workdir = slurm_runs[0]
    datasets = sorted((local_run / "results/datasets").glob("*.npy"))
    models = sorted((local_run / "results/models").rglob("*.safetensors"))
    # weights + 3 checkpoints of the induction model, the IOI model's weights
    assert len(datasets) == 4 and len(models) == 5, (datasets, models)
    for path in datasets + models:
        assert path.read_bytes() == (workdir / path.relative_to(local_run)).read_bytes(), path
    paths = [local_run / "results/induction/attn_only_1l" / f"{t}.csv" for t in TABLES]
    paths += [local_run / "results/ioi/ioi_2l" / f"{t}.csv" for t in IOI_TABLES]
    for path in paths:
        want = pd.read_csv(path)
        got = pd.read_csv(workdir / path.relative_to(local_run))
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=1e-7)

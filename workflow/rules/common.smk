# What every experiment shares: validation, the registry loop, generic wildcards, devices.
# An experiment's own checks, targets and params live in mechflow.experiments.<name>.workflow.
import shutil
from pathlib import Path

from mechflow.experiments import EXPERIMENTS
from mechflow.wiring import RESULTS, Workflow, alternation, option_flags, table_flags, validate_config


validate_config(config, Path(workflow.basedir) / "workflow/schemas")  # shared, then per experiment

W = Workflow(config)
W.check()
EXPERIMENT = W.experiments  # name -> its wiring, for the experiment's rule file


wildcard_constraints:
    **W.wildcard_constraints(),


# A job runs on CUDA exactly when it holds a `gpu` resource, so the resource always matches what
# the step uses. Rules whose steps profit from a GPU ask for one when the host evaluating the
# rule has one (a local run on a GPU workstation); cluster profiles set `gpu` per rule with
# `set-resources`, and `--set-resources train_model:gpu=0` forces a rule onto the CPU.
GPU_HERE = int(shutil.which("nvidia-smi") is not None)  # NVIDIA driver on this host


def get_device(wildcards, resources):
    return "cuda" if int(resources.get("gpu", 0)) > 0 else "cpu"


# Every plot rule runs the generic figure step; params.figure is `<experiment>.<figure>`, and
# params.options (PLOT_OPTIONS_SHELL) the figure's settings as `--option NAME=VALUE` flags.
PLOT_SHELL = (
    "python -m mechflow.steps.plot_figure --figure {params.figure} {params.tables}"
    " --out {output.png:q} > {log:q} 2>&1"
)
PLOT_OPTIONS_SHELL = (
    "python -m mechflow.steps.plot_figure --figure {params.figure} {params.tables}"
    " {params.options} --out {output.png:q} > {log:q} 2>&1"
)

# What every experiment shares: validation, the registry loop, generic wildcards, devices.
# An experiment's own checks, targets and params live in mechflow.experiments.<name>.workflow.
import shutil
import sys
from pathlib import Path

from mechflow.experiments import EXPERIMENTS
from mechflow.wiring import RESULTS, Workflow, alternation, config_problems, format_problems
from mechflow.wiring import option_flags, table_flags


# Every problem at once, one line each, before any job; no traceback (a config typo is not a bug).
_problems, _warnings = config_problems(config, Path(workflow.basedir) / "workflow/schemas")
for _warning in _warnings:
    print(f"mechflow: warning: {_warning}", file=sys.stderr)
if _problems:
    print(format_problems(_problems, workflow.config_settings.configfiles), file=sys.stderr)
    sys.exit(1)

W = Workflow(config)
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

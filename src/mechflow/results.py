"""A finished run's results in a notebook: models, checkpoints, stores, SAEs and tables by name.

The workflow writes everything under ``results/`` in one path scheme (the Snakefile's comment
block); this module knows that scheme and the loaders the steps use, so a notebook names things
instead of files::

    from mechflow.results import Run, provenance

    run = Run(".")                                # the workflow directory holding results/
    model = run.model("attn_only_2l", step=1000)  # a HookedTransformer in eval mode
    store = run.store("attn_only_2l", "repeated_random")
    sae = run.sae("attn_only_2l", "blocks.0.hook_resid_post", "topk_8")
    scores = run.table("induction", "head_scores", model="attn_only_2l")
    provenance(scores)                            # path, sha256, the job that wrote it

Plural methods (``models``, ``stores``, ``saes``, ``tables``, ...) list what exists; singular
ones load one thing and, when it does not exist, say what does. Nothing here writes a file, and
torch is only imported by the methods that load tensors.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechflow.artifacts import file_sha256, read_json
from mechflow.experiments import EXPERIMENTS
from mechflow.models import WEIGHTS_FILE
from mechflow.wiring import RESULTS, activation_store, dataset_path, tokenizer_path

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from mechflow.experiments.grokking.inputs import ModularRun
    from mechflow.experiments.superposition.toy_model import ToyModel, ToyModelConfig
    from mechflow.saes.base import SparseAutoencoder
    from mechflow.store.reader import ActivationStore

__all__ = ["AmbiguousResultError", "MissingResultError", "Run", "provenance"]

# The results path scheme (Snakefile), relative to results/.
SHARED_MODELS = "models"  # models/{model}/: trained or imported LMs
OWNED_MODELS = "models"  # {experiment}/models/{name}/: an experiment's own models
TOY_MODELS = "superposition/models"  # superposition/models/{toy}/: not HookedTransformers
SAES = "saes"  # saes/{model or toy}/{hook}/{sae}/: SAELens layout
ACTIVATIONS = "activations"  # activations/{model}/{dataset}.zarr
DATASETS = "datasets"  # datasets/{dataset}.npy
# Top-level results/ folders that are shared stages, not an experiment's own.
_SHARED_DIRS = {SHARED_MODELS, ACTIVATIONS, DATASETS, "figures"}
_PROVENANCE = "mechflow_provenance"  # the attribute (DataFrame: attrs key) it rides on


class MissingResultError(FileNotFoundError):
    """The run has no such artifact; the message lists the ones it has."""


class AmbiguousResultError(ValueError):
    """More than one artifact answers the request; the message lists them."""


def provenance(obj: Any) -> dict[str, Any]:
    """Where something a :class:`Run` returned comes from: its path, content hash, config or
    attrs, and (when Snakemake's metadata has it) the rule, shell command and times of the job
    that wrote it. A copy: changing it changes nothing."""
    attrs = getattr(obj, "attrs", None)  # pandas keeps user metadata in DataFrame.attrs
    found = attrs.get(_PROVENANCE) if isinstance(attrs, dict) else None
    found = found or getattr(obj, _PROVENANCE, None)
    if found is None:
        raise TypeError(
            f"{type(obj).__name__} carries no provenance: only what a mechflow.results.Run "
            "returns does"
        )
    return copy.deepcopy(found)


class Run:
    """A finished (or partly finished) run: the workflow directory whose ``results/`` the
    workflow wrote. Every path below is the one the rules write; see the Snakefile."""

    def __init__(self, root: str | os.PathLike = "."):
        self.root = Path(root).resolve()
        self.results = self.root / RESULTS
        if not self.results.is_dir():
            where = "does not exist" if not self.root.is_dir() else f"has no {RESULTS}/ folder"
            raise FileNotFoundError(
                f"{self.root} {where}: run the workflow there first (`snakemake --cores all`, "
                "or `snakemake --cores all --configfile config/test.yaml` for the tiny run), "
                "or pass the workflow directory that holds results/ as root"
            )

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    # --- models -------------------------------------------------------------------------------
    def models(self, experiment: str | None = None) -> list[str]:
        """Names of the finished HookedTransformers: the shared ones (``results/models/``) and
        the experiments' own (``results/<experiment>/models/``, e.g. grokking runs); with
        ``experiment``, only that experiment's."""
        return sorted({path.name for path in self._model_dirs(experiment)})

    def model(
        self,
        name: str,
        step: int | None = None,
        epoch: int | None = None,
        device: str = "cpu",
    ) -> HookedTransformer:
        """A trained or imported model in eval mode, at its final weights or at a checkpoint:
        ``step=`` for language models (``checkpoints/step_<N>.safetensors``), ``epoch=`` for
        grokking runs (``epoch_<N>``). ``name`` is a model's name, or its folder under
        ``results/`` (``grokking/models/modadd_37``) where two experiments use the same name."""
        from mechflow.models.build import load_model

        model_dir = self._model_dir(name)
        if step is not None and epoch is not None:
            raise ValueError("give step or epoch, not both")
        weights, checkpoint = model_dir / WEIGHTS_FILE, None
        if step is not None or epoch is not None:
            asked, index = ("step", step) if step is not None else ("epoch", epoch)
            unit, saved = self._checkpoints(model_dir)
            if unit is None:
                raise MissingResultError(f"model {name!r} saved no checkpoints ({model_dir})")
            if unit != asked:
                raise ValueError(
                    f"model {name!r} saves checkpoints by {unit}, not {asked}: pass {unit}=...; "
                    f"saved {unit}s: {sorted(saved)}"
                )
            if index not in saved:
                raise MissingResultError(
                    f"model {name!r} has no checkpoint at {unit} {index}; "
                    f"saved {unit}s: {sorted(saved)}"
                )
            weights, checkpoint = saved[index], {"unit": unit, "index": index}
        model = load_model(model_dir, weights=weights, device=device)
        _attach(
            model,
            {
                "kind": "model",
                "name": model_dir.name,
                "path": str(model_dir),
                "weights": str(weights),
                "sha256": file_sha256(weights),  # for the final weights: a store's model_hash
                "checkpoint": checkpoint,
                "config": read_json(model_dir / "config.json"),
                "snakemake": self._job(weights),
            },
        )
        return model

    def checkpoints(self, name: str) -> list[int]:
        """The steps (or, for grokking runs, epochs) at which ``name``'s weights were saved."""
        return sorted(self._checkpoints(self._model_dir(name))[1])

    def tokenizer(self, name: str) -> Any:
        """The ``tokenizers.Tokenizer`` of the model's text: a pretrained model's own (saved
        beside its weights on import), else that of the text it was trained on (its dataset's
        ``tokenizer.json``); None for a model of synthetic token ids (tasks such as induction or
        grokking read ids, not text). ``decode(ids, skip_special_tokens=False)`` shows text."""
        from mechflow.data.text import load_tokenizer
        from mechflow.models.build import TOKENIZER_FILE

        model_dir = self._model_dir(name)
        if (model_dir / TOKENIZER_FILE).is_file():
            return load_tokenizer(model_dir / TOKENIZER_FILE)
        dataset = read_json(model_dir / "config.json").get("dataset") or {}
        if "path" not in dataset:
            return None
        path = self.root / tokenizer_path(Path(dataset["path"]).stem)
        return load_tokenizer(path) if path.is_file() else None

    def toy_models(self) -> list[str]:
        """Names of the toy models of superposition (``results/superposition/models/``)."""
        base = self.results / TOY_MODELS
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "cfg.json").is_file())

    def toy_model(self, name: str) -> tuple[ToyModel, ToyModelConfig]:
        """A toy model of superposition (all its instances, eval mode) and its config: not a
        HookedTransformer (``x' = ReLU(WᵀW x + b)``), and the config says what each instance is."""
        from mechflow.experiments.superposition.toy_model import WEIGHTS_FILE, load_toy_model

        if name not in self.toy_models():
            raise MissingResultError(
                f"no toy model {name!r} in {self.results / TOY_MODELS}; toy models: "
                f"{self.toy_models()}" + self._hint(name)
            )
        model_dir = self.results / TOY_MODELS / name
        model, cfg = load_toy_model(model_dir)
        _attach(
            model,
            {
                "kind": "toy_model",
                "name": name,
                "path": str(model_dir),
                "sha256": file_sha256(model_dir / WEIGHTS_FILE),
                "config": read_json(model_dir / "cfg.json"),
                "snakemake": self._job(model_dir / WEIGHTS_FILE),
            },
        )
        return model, cfg

    # --- datasets and activation stores -------------------------------------------------------
    def datasets(self) -> list[str]:
        """Names of the token datasets (``results/datasets/{name}.npy``; a text dataset's
        held-out split, ``{name}.validation.npy``, is ``dataset("{name}.validation")``)."""
        files = (self.results / DATASETS).glob("*.npy")
        return sorted(p.stem for p in files if "." not in p.stem)

    def dataset(self, name: str) -> np.ndarray:
        """A token dataset, ``(seq, pos)`` integer ids, memory-mapped (read on slicing)."""
        from mechflow.data.tokens import load_tokens

        path = self.root / dataset_path(name)
        if not path.is_file():
            raise MissingResultError(f"no dataset {name!r} ({path}); datasets: {self.datasets()}")
        tokens = load_tokens(path)
        _attach(
            tokens,
            {
                "kind": "dataset",
                "name": name,
                "path": str(path),
                "sha256": file_sha256(path),
                "snakemake": self._job(path),
            },
        )
        return tokens

    def stores(self) -> list[tuple[str, str]]:
        """``(model, dataset)`` of every activation store (``results/activations/``)."""
        base = self.results / ACTIVATIONS
        if not base.is_dir():
            return []
        return sorted((p.parent.name, p.stem) for p in base.glob("*/*.zarr") if p.is_dir())

    def store(
        self, model: str, dataset: str, hooks: Iterable[str] | None = None
    ) -> ActivationStore:
        """The activations of ``model`` on ``dataset``, opened only if the store is complete and
        was cached from exactly these weights and tokens (the sha256s the cache step records:
        ``model_hash``, ``dataset_sha256``) and, with ``hooks``, holds those hooks."""
        from mechflow.models.build import model_fingerprint
        from mechflow.store.reader import open_store

        path = self.root / activation_store(model, dataset)
        if not path.is_dir():
            raise MissingResultError(
                f"no activation store of {model!r} on {dataset!r} ({path}); stores "
                f"(model, dataset): {self.stores()}"
            )
        tokens = self.root / dataset_path(dataset)
        if not tokens.is_file():
            raise MissingResultError(f"{path} was cached from {tokens}, which is missing")
        expect: dict[str, Any] = {
            "model": model,  # names the model in a mismatch message
            "model_hash": model_fingerprint(self._model_dir(model)),
            "dataset_sha256": file_sha256(tokens),
        }
        if hooks is not None:
            expect["hooks"] = list(hooks)
        store = open_store(path, expect=expect)
        _attach(
            store,
            {
                "kind": "store",
                "path": str(path),
                "attrs": dict(store.provenance),
                "snakemake": self._job(path),
            },
        )
        return store

    # --- SAEs ---------------------------------------------------------------------------------
    def saes(self, model: str | None = None) -> list[tuple[str, str, str]]:
        """``(model, hook, sae)`` of every SAE (``results/saes/{model}/{hook}/{sae}/``); toy
        models' SAEs are there too, under the toy's name and its hook ``hook_hidden``."""
        base = self.results / SAES
        if not base.is_dir():
            return []
        found = [
            (p.parts[-3], p.parts[-2], p.parts[-1])
            for p in base.glob(f"{model or '*'}/*/*")
            if (p / "cfg.json").is_file() and (p / "sae_weights.safetensors").is_file()
        ]
        return sorted(found)

    def sae(
        self, model: str, hook: str, name: str, saelens: bool = False, device: str = "cpu"
    ) -> SparseAutoencoder | SAE:
        """An SAE trained on ``model``'s ``hook`` (a full TransformerLens hook name), in eval
        mode: ours (``mechflow.saes``), or with ``saelens=True`` an SAELens ``SAE`` read from the
        same directory (``pip install -e '.[saelens]'``). Both give the same reconstruction."""
        from mechflow.saes.saelens_format import CFG_FILE, WEIGHTS_FILE, load_sae

        path = self.results / SAES / model / hook / name
        if (model, hook, name) not in self.saes(model):
            raise MissingResultError(
                f"no SAE {name!r} on {model!r} {hook!r} ({path}); SAEs (model, hook, sae): "
                f"{self.saes(model) or self.saes()}"
            )
        if saelens:
            try:
                from sae_lens import SAE
            except ImportError as err:
                raise ImportError(
                    "saelens=True needs SAELens: pip install -e '.[saelens]'"
                ) from err
            sae = SAE.load_from_disk(str(path), device=device)
        else:
            sae, _ = load_sae(path, device=device)
        _attach(
            sae,
            {
                "kind": "sae",
                "path": str(path),
                "sha256": file_sha256(path / WEIGHTS_FILE),
                "cfg": read_json(path / CFG_FILE),
                "snakemake": self._job(path),
            },
        )
        return sae

    # --- tables -------------------------------------------------------------------------------
    def tables(self, experiment: str) -> list[str]:
        """Every table (CSV) an experiment wrote, as paths under ``results/<experiment>/``."""
        base = self._experiment_dir(experiment)
        return [p.relative_to(base).as_posix() for p in self._csvs(experiment)]

    def table(self, experiment: str, name: str, **where: str) -> pd.DataFrame:
        """The experiment's table ``<name>.csv``, found anywhere under ``results/<experiment>/``.

        Where several match (one per model, run or hook), each keyword value must be one folder
        of the path (``model="attn_only_2l"``, ``run="modadd_37"``, ``hook=...``); the keyword's
        name is for the reader. No match or several matches raise, listing the candidates.
        """
        from mechflow.artifacts import read_table

        base = self._experiment_dir(experiment)
        named = [p for p in self._csvs(experiment) if p.stem == name]
        if not named:
            stems = sorted({p.stem for p in self._csvs(experiment)})
            raise MissingResultError(
                f"no table {name!r} under {base}; tables there: {stems}" + self._hint(name)
            )
        wanted = [str(v) for v in where.values()]
        matches = [p for p in named if all(v in p.relative_to(base).parent.parts for v in wanted)]
        candidates = [p.relative_to(self.results).as_posix() for p in named]
        if not matches:
            raise MissingResultError(
                f"no table {name!r} under {base} matches {where}; candidates: {candidates}"
            )
        if len(matches) > 1:
            raise AmbiguousResultError(
                f"{len(matches)} tables {name!r} under {base}"
                + (f" match {where}" if where else "")
                + ": pick one with keywords naming its folders (e.g. model='...'); candidates: "
                + str([p.relative_to(self.results).as_posix() for p in matches])
            )
        (path,) = matches
        df = read_table(path)
        _attach(
            df,
            {
                "kind": "table",
                "path": str(path),
                "sha256": file_sha256(path),
                "snakemake": self._job(path),
            },
        )
        return df

    # --- experiment inputs --------------------------------------------------------------------
    def grokking_run(self, name: str) -> ModularRun:
        """A grokking run's task: the modulus p, all p² inputs ``[a, b, =]`` with their labels,
        and the rows it trained and tested on (its ``split.npz``)."""
        from mechflow.experiments.grokking.inputs import read_run

        return read_run(self._model_dir(name))

    def grokking_inputs(self, name: str, a: Any, b: Any) -> torch.Tensor:
        """The tokens grokking run ``name`` was trained on for the pairs (a, b): rows
        ``[a, b, p]`` (token p is ``=``); ints or arrays, broadcast, one row per pair."""
        return self.grokking_run(name).encode(a, b)

    def provenance(self, obj: Any) -> dict[str, Any]:
        """:func:`provenance`, for the object one of this run's methods returned."""
        return provenance(obj)

    # --- internals ----------------------------------------------------------------------------
    def _model_dirs(self, experiment: str | None = None) -> list[Path]:
        if experiment is None:
            bases = [self.results / SHARED_MODELS] + [
                p / OWNED_MODELS
                for p in sorted(self.results.iterdir())
                if p.is_dir() and p.name not in _SHARED_DIRS
            ]
        else:
            bases = [self.results / experiment / OWNED_MODELS]
        return [
            d for base in bases if base.is_dir() for d in sorted(base.iterdir()) if _is_model(d)
        ]

    def _model_dir(self, name: str) -> Path:
        if "/" in name:  # a folder under results/, for names two experiments share
            found = [self.results / name] if _is_model(self.results / name) else []
        else:
            found = [d for d in self._model_dirs() if d.name == name]
        if not found:
            raise MissingResultError(
                f"no model {name!r} in {self.results}; models: {self.models()}" + self._hint(name)
            )
        if len(found) > 1:
            raise AmbiguousResultError(
                f"{len(found)} models are named {name!r}: pass one's folder under results/: "
                f"{[d.relative_to(self.results).as_posix() for d in found]}"
            )
        return found[0]

    def _checkpoints(self, model_dir: Path) -> tuple[str | None, dict[int, Path]]:
        """The unit (``step`` for LMs, ``epoch`` for grokking) and the saved weights by index."""
        from mechflow.experiments.grokking.inputs import CHECKPOINT_UNIT
        from mechflow.models.checkpoints import list_checkpoints

        for unit in ("step", CHECKPOINT_UNIT):  # train_model saves by step
            try:
                return unit, dict(list_checkpoints(model_dir / "checkpoints", unit))
            except (FileNotFoundError, ValueError):
                continue
        return None, {}

    def _experiment_dir(self, experiment: str) -> Path:
        base = self.results / experiment
        if experiment in _SHARED_DIRS or not base.is_dir():
            have = [e for e in EXPERIMENTS if (self.results / e).is_dir()]
            raise MissingResultError(
                f"no results of experiment {experiment!r} in {self.results}; experiments with "
                f"results: {have}"
            )
        return base

    def _csvs(self, experiment: str) -> list[Path]:
        found = []
        for folder, dirs, files in os.walk(self._experiment_dir(experiment)):
            # skip hidden folders and zarr stores (thousands of chunk files, never a table)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".zarr"))
            # a live loss table (*.partial.csv) is a job still running, not a result
            found += [
                Path(folder) / f
                for f in sorted(files)
                if f.endswith(".csv") and not f.endswith(".partial.csv")
            ]
        return found

    def _hint(self, name: str) -> str:
        """Where else ``name`` is, when the caller asked the wrong method."""
        if name in self.toy_models():
            return f" ({name!r} is a toy model: use toy_model)"
        if name in self.models():
            return f" ({name!r} is a model: use model)"
        return ""

    def _job(self, path: Path) -> dict[str, Any] | None:
        """The Snakemake job that wrote ``path`` (or the directory output holding it), from
        Snakemake's file-based metadata (``.snakemake/metadata/``): rule, shell command, start
        and end. None where there is no record (another persistence backend, a hand-run step)."""
        meta = self.root / ".snakemake" / "metadata"
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return None
        if not meta.is_dir():
            return None
        try:
            width = os.pathconf(meta, "PC_NAME_MAX") - 1
        except (OSError, ValueError):
            width = 254
        while rel.parts[:1] == (RESULTS,):
            record = _read_job_record(meta, rel.as_posix(), width)
            if record is not None:
                return {
                    "rule": record.get("rule"),
                    "shellcmd": record.get("shellcmd"),
                    "start": _iso(record.get("starttime")),
                    "end": _iso(record.get("endtime")),
                }
            rel = rel.parent
        return None


def _is_model(path: Path) -> bool:
    """A finished HookedTransformer directory (a toy model's is ``cfg.json``, not ``config.json``).

    The file names are mechflow.models.build's, spelt out: importing it imports torch."""
    config = path / "config.json"
    if not (config.is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    try:
        return "hooked_transformer_config" in read_json(config)
    except (OSError, ValueError):
        return False


def _attach(obj: Any, record: dict[str, Any]) -> None:
    if hasattr(obj, "attrs") and isinstance(obj.attrs, dict):  # a DataFrame
        obj.attrs[_PROVENANCE] = record
    else:
        setattr(obj, _PROVENANCE, record)


def _read_job_record(meta: Path, key: str, width: int) -> dict[str, Any] | None:
    """Snakemake's file backend: urlsafe base64 of the output path, split into ``@``-prefixed
    folders where it is longer than a file name may be."""
    b64 = base64.urlsafe_b64encode(key.encode()).decode()
    parts = [b64[i : i + width] for i in range(0, len(b64), width)]
    path = meta.joinpath(*["@" + p for p in parts[:-1]], parts[-1])
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")

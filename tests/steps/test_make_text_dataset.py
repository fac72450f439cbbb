"""make_text_dataset through its main([...]): the four artifacts, byte-identical on a rerun and on
another thread count, and the rule's command accepted by the step's parser."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mechflow.artifacts import file_sha256
from mechflow.data.text import EOT_ID, CorpusError, decode, load_tokenizer
from mechflow.data.tokens import load_tokens
from mechflow.steps import make_text_dataset

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = {
    "--out": "corpus.npy",
    "--validation-out": "corpus.validation.npy",
    "--tokenizer-out": "corpus.tokenizer.json",
    "--provenance-out": "corpus.json",
}


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    root = tmp_path / "texts"
    root.mkdir()
    for i in range(12):
        (root / f"file_{i:02d}.txt").write_text(f"Chapter {i}: déjà vu, naïve café.\n" * (i + 2))
    return root


def spec_for(source: Path, **overrides) -> dict:
    return {
        "source": str(source),
        "pattern": "*.txt",
        "include_tests": False,
        "d_vocab": 300,
        "seq_len": 16,
        "validation_fraction": 0.25,
        "max_bytes": None,
        **overrides,
    }


def argv(spec: dict, out_dir: Path, *extra: str) -> list[str]:
    flags = [arg for flag, name in OUTPUTS.items() for arg in (flag, str(out_dir / name))]
    return ["--spec", json.dumps(spec), *flags, *extra]


def test_it_writes_both_splits_the_tokenizer_and_the_provenance(corpus_dir, tmp_path):
    out = tmp_path / "a"
    make_text_dataset.main(argv(spec_for(corpus_dir), out))
    provenance = json.loads((out / "corpus.json").read_text())
    tokenizer = load_tokenizer(out / "corpus.tokenizer.json")
    for split, name in (("train", "corpus.npy"), ("validation", "corpus.validation.npy")):
        tokens = load_tokens(out / name)
        assert tokens.dtype == np.int32 and tokens.shape[1] == 16
        assert (tokens[:, 0] == EOT_ID).all() and tokens.max() < 300
        stats = provenance["splits"][split]
        assert stats["sequences"] == len(tokens) and stats["files"] > 0
        assert {"bytes", "tokens", "dropped_tokens", "sha256"} <= set(stats)
        assert "Chapter" in decode(tokenizer, tokens[0])
    assert provenance["kind"] == "text" and provenance["spec"] == spec_for(corpus_dir)
    assert provenance["tokenizer"]["sha256"] == file_sha256(out / "corpus.tokenizer.json")
    assert provenance["tokenizer"]["vocab_size"] == tokenizer.get_vocab_size() <= 300
    assert provenance["corpus"]["source"] == str(corpus_dir)


def test_a_rerun_and_another_thread_count_write_the_same_bytes(corpus_dir, tmp_path):
    spec = spec_for(corpus_dir)
    make_text_dataset.main(argv(spec, tmp_path / "a", "--threads", "1"))
    make_text_dataset.main(argv(spec, tmp_path / "b", "--threads", "1"))
    # a fresh process: tokenizers reads its thread count once per process
    subprocess.run(
        [sys.executable, "-m", "mechflow.steps.make_text_dataset"]
        + argv(spec, tmp_path / "c", "--threads", "2"),
        check=True,
        capture_output=True,
    )
    for name in OUTPUTS.values():
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), name
        assert first == (tmp_path / "c" / name).read_bytes(), name


def test_a_bad_source_fails_naming_the_key(tmp_path):
    with pytest.raises(CorpusError, match=r"^source: .* does not exist"):
        make_text_dataset.main(argv(spec_for(tmp_path / "missing"), tmp_path))
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_the_rules_command_parses_and_names_every_output(corpus_dir, tmp_path):
    """config.yaml and test.yaml declare no text dataset (tests/workflow/test_one_source.py
    cannot see this rule): a dry run of one, each printed flag checked against the parser."""
    work = tmp_path / "workflow"
    work.mkdir()
    for name in ("Snakefile", "environment.yml"):
        shutil.copy(ROOT / name, work)
    for name in ("workflow", "config"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    entry = {"kind": "text", "seq_len": 16, "source": str(corpus_dir), "pattern": "*.txt"}
    config["datasets"]["corpus"] = {**entry, "validation_fraction": 0.25}
    (work / "text.yaml").write_text(yaml.safe_dump(config))
    target = "results/datasets/corpus.validation.npy"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2"]
        + ["--configfile", "text.yaml", "--", target],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefix = "python -m mechflow.steps.make_text_dataset "
    line = next(line for line in proc.stdout.splitlines() if prefix in line)
    tokens = shlex.split(line[line.index(prefix) + len(prefix) :])
    tokens = tokens[: tokens.index(">")]
    passed = {t for t in tokens if t.startswith("--")}
    assert passed == {"--spec", "--threads", *OUTPUTS}
    spec = json.loads(tokens[tokens.index("--spec") + 1])
    assert spec["source"] == str(corpus_dir) and spec["d_vocab"] == 4096  # the schema's default
    assert "kind" not in spec
    assert tokens[tokens.index("--validation-out") + 1] == target
    assert "make_dataset" not in proc.stdout.replace("make_text_dataset", "")  # not both rules

"""make_text_dataset through its main([...]): the four artifacts, byte-identical on a rerun and on
another thread count, a pretrained model's tokenizer read instead of training one, and the rule's
command accepted by the step's parser."""

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
from mechflow.data.text import EOT, EOT_ID, CorpusError, decode, encode, load_tokenizer
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
        "tokenizer": None,
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


def pretrained_dir(path: Path, *, eot: bool = True) -> Path:
    """A save_pretrained-like directory whose tokenizer.json is GPT-2's kind: the 256 byte
    tokens, a few merges, then <|endoftext|> (the last id, as GPT-2's 50256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("C", "h"), ("Ch", "a"), ("Ġ", "v")]  # Ġ: the byte of a space
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if eot:
        tokenizer.add_special_tokens([EOT])
    path.mkdir()
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "config.json").write_text("{}")
    return path


def test_a_pretrained_models_tokenizer_replaces_the_trained_one(corpus_dir, tmp_path):
    source = pretrained_dir(tmp_path / "gpt")
    spec = spec_for(corpus_dir, tokenizer="gpt", d_vocab=None)
    out = tmp_path / "out"
    make_text_dataset.main(argv(spec, out, "--tokenizer-path", str(source)))
    tokenizer = load_tokenizer(out / "corpus.tokenizer.json")
    assert tokenizer.to_str() == load_tokenizer(source / "tokenizer.json").to_str()
    eot = tokenizer.token_to_id(EOT)
    assert eot == tokenizer.get_vocab_size() - 1 == 259
    provenance = json.loads((out / "corpus.json").read_text())
    for name in ("corpus.npy", "corpus.validation.npy"):
        rows = load_tokens(out / name)
        assert (rows[:, 0] == eot).all()  # not EOT_ID: 0 is a byte here
        stream = rows[:, 1:].ravel()
        text = decode(tokenizer, stream)
        assert text.count(EOT) == (stream == eot).sum() > 0  # between files
        assert "Chapter" in text and " déjà" in text
    assert encode(tokenizer, "Cha vu")[:2] == [257, 258]  # its merges, not a BPE trained here
    recorded = provenance["tokenizer"]
    assert recorded["type"] == "pretrained" and recorded["path"] == str(source)
    assert recorded["eot_id"] == eot and recorded["vocab_size"] == 260
    assert recorded["sha256"] == file_sha256(out / "corpus.tokenizer.json")
    # the size the workflow fills in is accepted; another is refused before the corpus is read
    make_text_dataset.main(argv({**spec, "d_vocab": 260}, tmp_path / "again", "--tokenizer-path",
                                str(source)))  # fmt: skip
    with pytest.raises(
        CorpusError, match=r"^d_vocab: 4096, but the tokenizer of models.gpt has 260"
    ):
        make_text_dataset.main(
            argv({**spec, "d_vocab": 4096}, tmp_path / "x", "--tokenizer-path", str(source))
        )
    assert not (tmp_path / "x").exists()


def test_a_pretrained_tokenizer_that_cannot_be_read_is_refused(corpus_dir, tmp_path):
    spec = spec_for(corpus_dir, tokenizer="gpt", d_vocab=None)
    no_eot = pretrained_dir(tmp_path / "no_eot", eot=False)
    with pytest.raises(CorpusError, match=f"^tokenizer: the tokenizer of models.gpt has no {EOT}"):
        make_text_dataset.main(argv(spec, tmp_path / "a", "--tokenizer-path", str(no_eot)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no tokenizer.json"):
        make_text_dataset.main(
            argv(spec, tmp_path / "a", "--tokenizer-path", str(tmp_path / "empty"))
        )
    with pytest.raises(ValueError, match="give its --tokenizer-path"):
        make_text_dataset.main(argv(spec, tmp_path / "a"))
    with pytest.raises(ValueError, match="--spec has no tokenizer"):
        make_text_dataset.main(
            argv(spec_for(corpus_dir), tmp_path / "a", "--tokenizer-name", "gpt2")
        )
    assert not (tmp_path / "a").exists()


def test_without_weights_the_tokenizer_says_where_to_put_them(corpus_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = spec_for(corpus_dir, tokenizer="gpt2", d_vocab=None)
    with pytest.raises(CorpusError) as err:
        make_text_dataset.main(argv(spec, tmp_path / "a", "--tokenizer-name", "gpt2"))
    assert str(err.value).startswith(
        "tokenizer: reads the tokenizer of models.gpt2; the weights of pretrained model 'gpt2'"
    )
    assert "hf download gpt2" in str(err.value) and "models.gpt2.path" in str(err.value)


def test_a_bad_source_fails_naming_the_key(tmp_path):
    with pytest.raises(CorpusError, match=r"^source: .* does not exist"):
        make_text_dataset.main(argv(spec_for(tmp_path / "missing"), tmp_path))
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_the_rules_command_parses_and_names_every_output(corpus_dir, tmp_path):
    """config.yaml and test.yaml declare no text dataset (tests/workflow/test_one_source.py
    cannot see this rule): a dry run of two, one reading a pretrained model's tokenizer, each
    printed flag checked against the parser."""
    work = tmp_path / "workflow"
    work.mkdir()
    for name in ("Snakefile", "environment.yml"):
        shutil.copy(ROOT / name, work)
    for name in ("workflow", "config"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    entry = {"kind": "text", "seq_len": 16, "source": str(corpus_dir), "pattern": "*.txt"}
    config["datasets"]["corpus"] = {**entry, "validation_fraction": 0.25}
    config["datasets"]["corpus_gpt"] = {**entry, "validation_fraction": 0.25, "tokenizer": "gpt"}
    source = pretrained_dir(tmp_path / "gpt")
    config["models"]["gpt"] = {"source": "pretrained", "name": "gpt", "path": str(source)}
    (work / "text.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/datasets/{name}.validation.npy" for name in ("corpus", "corpus_gpt")]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2"]
        + ["--configfile", "text.yaml", "--", *targets],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefix = "python -m mechflow.steps.make_text_dataset "
    lines = [line for line in proc.stdout.splitlines() if prefix in line]
    assert len(lines) == 2
    commands = {}
    for line in lines:
        tokens = shlex.split(line[line.index(prefix) + len(prefix) :])
        tokens = tokens[: tokens.index(">")]
        commands[Path(tokens[tokens.index("--out") + 1]).stem] = tokens
    tokens = commands["corpus"]
    passed = {t for t in tokens if t.startswith("--")}
    assert passed == {"--spec", "--threads", *OUTPUTS}
    spec = json.loads(tokens[tokens.index("--spec") + 1])
    assert spec["source"] == str(corpus_dir) and spec["d_vocab"] == 4096  # the schema's default
    assert spec["tokenizer"] is None
    assert "kind" not in spec
    assert tokens[tokens.index("--validation-out") + 1] == targets[0]
    assert "make_dataset" not in proc.stdout.replace("make_text_dataset", "")  # not both rules
    tokens = commands["corpus_gpt"]
    assert {t for t in tokens if t.startswith("--")} == {
        "--spec", "--tokenizer-path", "--threads", *OUTPUTS
    }  # fmt: skip
    assert tokens[tokens.index("--tokenizer-path") + 1] == str(source)
    spec = json.loads(tokens[tokens.index("--spec") + 1])
    assert (spec["tokenizer"], spec["d_vocab"]) == ("gpt", 260)  # filled in from the tokenizer
    out = tmp_path / "run"
    make_text_dataset.main(
        [t if not t.startswith("results/datasets/") else str(out / Path(t).name) for t in tokens]
    )  # the printed command runs as printed
    assert load_tokens(out / "corpus_gpt.npy")[0, 0] == 259

"""Text datasets: a deterministic corpus split by file, a byte-level BPE that round-trips every
byte, packed rows with <|endoftext|> between files, and bad inputs refused naming their key."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mechflow.data import text
from mechflow.data.text import (
    EOT,
    EOT_ID,
    CorpusError,
    TextSpec,
    build_text_dataset,
    corpus_files,
    decode,
    encode,
    encode_documents,
    load_tokenizer,
    pack,
    read_corpus,
    save_tokenizer,
    split_files,
    train_tokenizer,
    validation_score,
)
from mechflow.wiring import config_problems

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "workflow/schemas"
UNICODE = "naïve café — 日本語 テキスト, emoji 🤗🐍, tabs\tand\r\nCRLF, NUL \x00 end\n"


def make_spec(source, **overrides) -> TextSpec:
    fields = dict(
        source=str(source),
        pattern="*.txt",
        include_tests=False,
        d_vocab=320,
        seq_len=16,
        validation_fraction=0.3,
        max_bytes=None,
    )
    return TextSpec(**{**fields, **overrides})


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    """Twelve small text files (one non-ASCII, one nested), plus files the pattern skips."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for i in range(10):
        (root / f"doc{i:02d}.txt").write_text(f"def function_{i}(x):\n    return x + {i}\n" * 3)
    (root / "sub" / "nested.txt").write_text("a nested file, read too\n")
    (root / "unicode.txt").write_text(UNICODE, newline="")
    (root / "notes.md").write_text("not matched by *.txt\n")
    (root / "empty.txt").write_text("")
    (root / ".git").mkdir()
    (root / ".git" / "hidden.txt").write_text("a hidden directory is not read\n")
    return root


def test_files_are_sorted_matched_by_pattern_and_empty_ones_skipped(corpus_dir):
    root, files = corpus_files(str(corpus_dir), "*.txt", include_tests=False)
    assert root == corpus_dir
    assert files == sorted(files) and len(files) == 12
    assert "sub/nested.txt" in files and "empty.txt" not in files and "notes.md" not in files
    assert ".git/hidden.txt" not in files
    assert corpus_files(str(corpus_dir), "sub/*.txt", False)[1] == ["sub/nested.txt"]


def test_the_split_is_by_file_deterministic_and_stable_when_a_file_is_added():
    files = sorted(f"dir/file_{i}.py" for i in range(200))
    splits = split_files(files, 0.25)
    assert splits == split_files(files, 0.25)
    assert 30 < len(splits["validation"]) < 70  # ~ 0.25 of 200
    assert all(splits[s] == sorted(splits[s]) for s in splits)
    grown = split_files([*files, "dir/new.py"], 0.25)
    for split in ("train", "validation"):
        assert set(splits[split]) <= set(grown[split])  # no other file moved
    assert all(0 <= validation_score(f) < 1 for f in files)


def test_the_corpus_records_its_provenance(corpus_dir):
    (corpus_dir / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    documents, corpus = read_corpus(make_spec(corpus_dir))
    assert corpus["skipped_not_utf8"] == ["latin1.txt"]
    assert corpus["root"] == str(corpus_dir) and "python" not in corpus  # stdlib only
    paths = [d.path for split in documents.values() for d in split]
    _, files = corpus_files(str(corpus_dir), "*.txt", False)
    assert sorted(paths) == [f for f in files if f != "latin1.txt"]
    for split, docs in documents.items():
        stats = corpus["splits"][split]
        assert stats["files"] == len(docs) > 0
        assert stats["bytes"] == sum(len(d.text.encode()) for d in docs)
        assert [d.path for d in docs] == sorted(d.path for d in docs)
    unicode_doc = next(d for docs in documents.values() for d in docs if d.path == "unicode.txt")
    assert unicode_doc.text == UNICODE  # read as bytes: \r\n kept
    # the content hash covers paths and bytes
    assert read_corpus(make_spec(corpus_dir))[1]["sha256"] == corpus["sha256"]
    (corpus_dir / "doc03.txt").write_text("changed\n")
    assert read_corpus(make_spec(corpus_dir))[1]["sha256"] != corpus["sha256"]


def test_max_bytes_caps_each_split_at_its_share_cutting_at_a_character(corpus_dir):
    spec = make_spec(corpus_dir, max_bytes=101, validation_fraction=0.3)
    assert spec.budgets() == {"train": 71, "validation": 30}
    documents, corpus = read_corpus(spec)
    for split, budget in spec.budgets().items():
        assert 0 < corpus["splits"][split]["bytes"] <= budget
    assert read_corpus(spec) == (documents, corpus)


def test_a_cap_inside_a_character_drops_that_character(tmp_path):
    path = tmp_path / "jp.txt"
    path.write_text("日本語" * 100)  # 3 bytes a character, no line break
    spec = make_spec(path, validation_fraction=0.5, max_bytes=101)
    assert spec.budgets() == {"train": 51, "validation": 50}
    documents, corpus = read_corpus(spec)
    assert documents["train"][0].text == ("日本語" * 6)[:17]  # 51 bytes
    assert corpus["splits"]["validation"]["bytes"] == 48  # 16 characters, not 50 bytes


def test_a_single_file_is_split_at_its_end_on_a_line_start(tmp_path):
    path = tmp_path / "book.txt"
    lines = [f"line {i} of the book, ü\n" for i in range(100)]
    path.write_text("".join(lines))
    documents, corpus = read_corpus(make_spec(path, validation_fraction=0.1))
    train, validation = documents["train"][0].text, documents["validation"][0].text
    assert train + validation == "".join(lines)
    assert validation.startswith("line ") and 8 <= validation.count("\n") <= 11
    assert corpus["root"] == str(path)


def test_the_tokenizer_round_trips_every_byte_and_is_deterministic(corpus_dir):
    documents, _ = read_corpus(make_spec(corpus_dir))
    texts = [d.text for d in documents["train"]]
    tokenizer = train_tokenizer(texts, d_vocab=320)
    assert tokenizer.token_to_id(EOT) == EOT_ID == 0
    assert tokenizer.get_vocab_size() <= 320
    unseen = "Ωμέγα ✓ \x7f\x01 " + EOT + " literal, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 "
    for sample in [UNICODE, unseen, "  leading spaces", "", *texts]:
        ids = encode(tokenizer, sample)
        assert decode(tokenizer, ids) == sample
        assert EOT_ID not in ids  # text is read literally, EOT never comes from it
    assert train_tokenizer(texts, d_vocab=320).to_str() == tokenizer.to_str()


def test_the_saved_tokenizer_is_byte_identical_and_loads(corpus_dir, tmp_path):
    texts = [d.text for d in read_corpus(make_spec(corpus_dir))[0]["train"]]
    first = save_tokenizer(train_tokenizer(texts, 320), tmp_path / "a.json")
    second = save_tokenizer(train_tokenizer(texts, 320), tmp_path / "b.json")
    assert first == second
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    loaded = load_tokenizer(tmp_path / "a.json")
    assert decode(loaded, encode(loaded, UNICODE)) == UNICODE
    assert json.loads((tmp_path / "a.json").read_text())["added_tokens"][0]["content"] == EOT
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "missing.json")


def test_rows_start_with_eot_and_files_are_joined_by_it(corpus_dir):
    spec = make_spec(corpus_dir, seq_len=8)
    dataset = build_text_dataset(spec)
    documents, _ = read_corpus(spec)
    for split in ("train", "validation"):
        rows = dataset.tokens[split]
        assert rows.dtype == np.int32 and rows.ndim == 2 and rows.shape[1] == 8
        assert (rows[:, 0] == EOT_ID).all()
        stream = encode_documents(dataset.tokenizer, documents[split])
        expected = np.concatenate(
            [np.array([*encode(dataset.tokenizer, d.text), EOT_ID]) for d in documents[split]]
        )
        np.testing.assert_array_equal(stream, expected)
        assert (stream == EOT_ID).sum() == len(documents[split])  # one after every file
        body = rows[:, 1:].ravel()
        np.testing.assert_array_equal(body, stream[: len(body)])
        stats = dataset.provenance["splits"][split]
        assert stats["tokens"] == len(stream) and stats["sequences"] == len(rows)
        assert stats["dropped_tokens"] == len(stream) - len(body) < 7
    assert dataset.provenance["tokenizer"]["vocab_size"] == dataset.tokenizer.get_vocab_size()
    assert dataset.provenance["spec"]["d_vocab"] == 320


def test_pack_drops_the_tail_that_does_not_fill_a_row():
    rows = pack(np.arange(1, 12, dtype=np.int32), seq_len=4)  # 11 tokens, 3 per row
    np.testing.assert_array_equal(rows, [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 8, 9]])


def test_a_pretrained_tokenizers_own_eot_starts_rows_and_ends_files(corpus_dir):
    """GPT-2's <|endoftext|> is its last id (50256), not 0: rows and files use the given one."""
    rows = pack(np.arange(1, 8, dtype=np.int32), seq_len=4, eot_id=50256)
    np.testing.assert_array_equal(rows, [[50256, 1, 2, 3], [50256, 4, 5, 6]])
    documents, _ = read_corpus(make_spec(corpus_dir))
    tokenizer = train_tokenizer([d.text for d in documents["train"]], d_vocab=300)
    stream = encode_documents(tokenizer, documents["train"][:2], eot_id=299)
    first = encode(tokenizer, documents["train"][0].text)
    assert stream[len(first)] == 299 and stream[-1] == 299 and (stream == 299).sum() == 2
    assert EOT_ID not in stream


def test_a_spec_reads_a_pretrained_tokenizer_or_trains_one(tmp_path):
    spec = make_spec(tmp_path, tokenizer="gpt2", d_vocab=None)
    assert spec.tokenizer == "gpt2" and spec.d_vocab is None
    assert make_spec(tmp_path, tokenizer="gpt2", d_vocab=50257).d_vocab == 50257  # filled in
    with pytest.raises(CorpusError, match="^d_vocab: needed to train a tokenizer here"):
        make_spec(tmp_path, d_vocab=None)
    with pytest.raises(ValueError, match="give its pretrained tokenizer"):
        build_text_dataset(spec)


def test_the_stdlib_source_skips_site_packages_caches_and_tests():
    root, files = corpus_files(text.STDLIB, "*.py", include_tests=False)
    parts = {part for f in files for part in Path(f).parts[:-1]}
    assert not parts & {"site-packages", "__pycache__", "encodings", "test", "tests", "idle_test"}
    assert "os.py" in files and "json/__init__.py" in files
    _, with_tests = corpus_files(text.STDLIB, "*.py", include_tests=True)
    assert set(files) < set(with_tests)
    assert any(f.startswith("test/") for f in with_tests)
    assert not any("site-packages" in Path(f).parts for f in with_tests)


def test_a_small_stdlib_dataset_builds(tmp_path):
    spec = make_spec(
        text.STDLIB,
        pattern="*.py",
        d_vocab=300,
        seq_len=32,
        validation_fraction=0.1,
        max_bytes=40_000,
    )
    dataset = build_text_dataset(spec)
    corpus = dataset.provenance["corpus"]
    assert corpus["python"].count(".") == 2 and corpus["source"] == "stdlib"
    splits = dataset.provenance["splits"]
    assert 36_000 - 3 <= splits["train"]["bytes"] <= 36_000  # a cut character at most
    assert 4_000 - 3 <= splits["validation"]["bytes"] <= 4_000
    assert dataset.tokens["train"].shape[1] == 32 and len(dataset.tokens["validation"]) > 0
    assert dataset.tokenizer.get_vocab_size() == 300


# --- bad inputs: refused with the key to change -------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"d_vocab": 256}, "d_vocab"),
        ({"seq_len": 1}, "seq_len"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_bytes": 3}, "max_bytes"),  # 0.3 of 3 bytes: validation gets none
    ],
)
def test_bad_settings_are_refused_naming_the_key(tmp_path, fields, key):
    with pytest.raises(CorpusError) as err:
        make_spec(tmp_path, **fields)
    assert err.value.key == key and str(err.value).startswith(f"{key}: ")


def test_bad_corpora_are_refused_naming_the_key(corpus_dir, tmp_path):
    def refused(spec) -> CorpusError:
        with pytest.raises(CorpusError) as err:
            build_text_dataset(spec)
        return err.value

    assert refused(make_spec(tmp_path / "nope")).key == "source"
    assert "does not exist" in str(refused(make_spec(tmp_path / "nope")))
    assert refused(make_spec(corpus_dir, pattern="*.rst")).key == "pattern"
    empty_dir = tmp_path / "empties"
    empty_dir.mkdir()
    (empty_dir / "a.txt").write_text("")
    assert "only 1 empty" in str(refused(make_spec(empty_dir)))
    (tmp_path / "empty.txt").write_text("")
    assert refused(make_spec(tmp_path / "empty.txt")).key == "source"
    scores = [validation_score(f) for f in corpus_files(str(corpus_dir), "*.txt", False)[1]]
    err = refused(make_spec(corpus_dir, validation_fraction=min(scores) / 2))
    assert (
        err.key == "validation_fraction"
        and "none in validation (the split is by file); raise it" in str(err)
    )
    err = refused(make_spec(corpus_dir, validation_fraction=max(scores) + 1e-9))
    assert (
        err.key == "validation_fraction"
        and "none in train (the split is by file); lower it" in str(err)
    )
    assert refused(make_spec(corpus_dir, seq_len=10_000)).key == "seq_len"
    latin = tmp_path / "latin"
    latin.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (latin / name).write_bytes("\xe9t\xe9\n".encode("latin-1"))
    assert refused(make_spec(latin, validation_fraction=0.5)).key == "source"
    with pytest.raises(ValueError, match="unknown key"):
        TextSpec.from_dict({**make_spec(corpus_dir).__dict__, "seed": 0})


# --- the workflow refuses them before any job ----------------------------------------------------
@pytest.fixture(scope="module")
def test_config():
    return yaml.safe_load((ROOT / "config/test.yaml").read_text())


def with_text_dataset(config, **entry):
    bad = copy.deepcopy(config)
    bad["datasets"]["corpus"] = {"kind": "text", "seq_len": 16, **entry}
    return config_problems(bad, SCHEMAS)[0]


def test_a_text_dataset_passes_the_config_checks(test_config, corpus_dir):
    assert with_text_dataset(test_config) == []  # the stdlib, all defaults
    assert with_text_dataset(test_config, source=str(corpus_dir), pattern="*.txt") == []


def test_a_missing_source_is_refused_before_any_job(test_config, tmp_path):
    missing = str(tmp_path / "missing")
    assert with_text_dataset(test_config, source=missing) == [
        f"datasets.corpus.source: {missing!r} does not exist; allowed: 'stdlib', a text file "
        "or a directory"
    ]


def test_an_empty_validation_split_is_refused_before_any_job(test_config, corpus_dir):
    lowest = min(validation_score(f) for f in corpus_files(str(corpus_dir), "*.txt", False)[1])
    lines = with_text_dataset(
        test_config, source=str(corpus_dir), pattern="*.txt", validation_fraction=lowest / 2
    )
    assert lines == [
        f"datasets.corpus.validation_fraction: {lowest / 2} puts all 12 files in train, none in "
        "validation (the split is by file); raise it, or add files"
    ]


def test_a_text_dataset_must_fit_the_model_that_trains_on_it(test_config):
    config = copy.deepcopy(test_config)
    arch = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "n_ctx": 8, "d_vocab": 300}
    config["models"]["text_model"] = {
        "source": "trained",
        "architecture": {**arch, "attn_only": True},
        "training": {"dataset": "corpus", "steps": 1, "batch_size": 1},
    }
    lines = with_text_dataset(config, d_vocab=512)
    assert "datasets.corpus.seq_len: 16 makes sequences of length 16, longer than " in lines[0]
    assert lines[1].startswith("datasets.corpus.d_vocab: 512 is larger than models.text_model.")

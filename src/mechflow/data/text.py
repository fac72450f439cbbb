"""Token datasets from local text: a corpus of files, a byte-level BPE tokenizer trained on its
train split, and both splits packed into ``(seq, pos)`` rows.

No corpus can be downloaded, and mechflow cannot ship someone else's; one natural corpus is on
every machine that runs it: the Python standard library's own source (code, comments and
docstrings, rich in repeated identifiers). A file or a directory of the user's own text works too.

Everything is deterministic: files in relative-path order, the validation split chosen by a hash
of each file's path (adding a file moves no other), the ``max_bytes`` cap applied in path order,
and the tokenizer (``tokenizers``' BPE trainer breaks count ties by token id and serialises the
vocabulary in id order; measured byte-identical on 1 and 2 threads).

Layout of a row: ``<|endoftext|>`` (id 0, the BOS of every mechflow dataset) and then
``seq_len - 1`` tokens of the split's stream, in which every file is followed by
``<|endoftext|>``, as GPT-2's training data was.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import platform
import sysconfig
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from jaxtyping import Int

from mechflow.artifacts import atomic_path, file_sha256
from mechflow.models.config import strict_from_dict
from mechflow.progress import Progress

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

STDLIB = "stdlib"
EOT = "<|endoftext|>"
EOT_ID = 0  # the first special token: also the BOS at position 0 (mechflow.data.induction.BOS)
N_BYTES = 256  # the byte-level alphabet, always in the vocabulary: every byte round-trips
MIN_D_VOCAB = N_BYTES + 1  # the bytes and <|endoftext|>, no merge
MIN_FREQUENCY = 2  # a pair seen once is not worth a token
SPLITS = ("train", "validation")
# In the stdlib: third-party packages and bytecode caches are not the stdlib's text; its test
# packages (test/, */tests/, idlelib/idle_test/: 19.4 of 31.5 MB in 3.11) are optional.
STDLIB_EXCLUDED = frozenset({"site-packages", "__pycache__"})
STDLIB_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
ENCODE_BATCH = 64  # files per encode_batch call: ~300 MB peak on the stdlib instead of ~1.3 GB


class CorpusError(ValueError):
    """A text dataset that cannot be built; ``key`` is the setting to change."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@dataclass(frozen=True, kw_only=True)
class TextSpec:
    """A text dataset (``datasets.<name>`` of kind ``text``, less the kind; defaults: the schema).

    Args:
        source: ``"stdlib"`` (this Python's standard library source) or a text file or directory.
        pattern: the files read: a glob of their paths relative to the directory or the stdlib
            (``fnmatch``: ``*`` crosses ``/``); not used for a single file.
        include_tests: stdlib only: keep its test packages.
        d_vocab: BPE vocabulary size, the 256 bytes and ``<|endoftext|>`` included.
        seq_len: positions per row, the leading ``<|endoftext|>`` included.
        validation_fraction: share of the files held out (a single file: the share of its end).
        max_bytes: cap on the corpus, or None; validation gets ``validation_fraction`` of it.
    """

    source: str
    pattern: str
    include_tests: bool
    d_vocab: int
    seq_len: int
    validation_fraction: float
    max_bytes: int | None

    def __post_init__(self):
        if self.d_vocab < MIN_D_VOCAB:
            raise CorpusError("d_vocab", f"{self.d_vocab} < {MIN_D_VOCAB} (256 bytes + {EOT})")
        if self.seq_len < 2:
            raise CorpusError("seq_len", f"{self.seq_len} < 2 ({EOT} and one token)")
        if not 0 < self.validation_fraction < 1:
            raise CorpusError("validation_fraction", f"{self.validation_fraction} is not in (0, 1)")
        if self.max_bytes is not None:
            if self.max_bytes < 1:
                raise CorpusError("max_bytes", f"{self.max_bytes} < 1; or null for no cap")
            if self.budgets()["validation"] < 1:
                raise CorpusError(
                    "max_bytes",
                    f"{self.max_bytes} leaves validation no byte (validation_fraction "
                    f"{self.validation_fraction} of it); raise max_bytes",
                )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return strict_from_dict(cls, data, "text dataset")

    def budgets(self) -> dict[str, int | None]:
        """Bytes each split may take: the cap shared by validation_fraction (None: no cap)."""
        if self.max_bytes is None:
            return dict.fromkeys(SPLITS)
        validation = int(self.max_bytes * self.validation_fraction)
        return {"train": self.max_bytes - validation, "validation": validation}


@dataclass(frozen=True)
class Document:
    """One file (or, for a single-file source, one split's part of it)."""

    path: str  # relative to the corpus root, POSIX
    text: str


def source_root(source: str) -> Path:
    """The stdlib's directory, or the user's file or directory."""
    root = Path(sysconfig.get_paths()["stdlib"]) if source == STDLIB else Path(source)
    if not root.exists():
        raise CorpusError(
            "source", f"{source!r} does not exist; allowed: {STDLIB!r}, a text file or a directory"
        )
    return root


def corpus_files(source: str, pattern: str, include_tests: bool) -> tuple[Path, list[str]]:
    """(root, relative paths in sorted order) of the non-empty files a corpus reads: those whose
    path relative to the root matches ``pattern`` (``fnmatch``: ``*`` crosses ``/`` too), outside
    hidden directories (``.git``, ``.venv``). A single-file source is its own root, and its name
    the one path."""
    root = source_root(source)
    if root.is_file():
        if root.stat().st_size == 0:
            raise CorpusError("source", f"{source!r} is empty")
        return root, [root.name]
    pruned = frozenset()
    if source == STDLIB:
        pruned = STDLIB_EXCLUDED | (frozenset() if include_tests else STDLIB_TEST_DIRS)
    found, empty = [], 0
    for folder, dirs, names in os.walk(root):
        # never walks the stdlib's site-packages (130 MB here), nor .git or .venv
        dirs[:] = [d for d in dirs if d not in pruned and not d.startswith(".")]
        rel_folder = Path(folder).relative_to(root)
        for name in names:
            rel = (rel_folder / name).as_posix()
            if not fnmatch.fnmatchcase(rel, pattern):
                continue
            path = Path(folder, name)
            if not path.is_file():
                continue
            if path.stat().st_size == 0:
                empty += 1
            else:
                found.append(rel)
    if not found:
        where = "the stdlib" if source == STDLIB else repr(source)
        also = f" (only {empty} empty ones)" if empty else ""
        raise CorpusError(
            "pattern",
            f"{pattern!r} matches no non-empty file in {where}{also}; give a glob of paths "
            "relative to it, e.g. '*.txt' or 'docs/*.md'",
        )
    return root, sorted(found)


def validation_score(path: str) -> float:
    """A stable number in [0, 1) per relative path: a file is held out when below the fraction."""
    digest = hashlib.sha256(path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_files(files: list[str], validation_fraction: float) -> dict[str, list[str]]:
    """Files per split, each split in path order; refuses a split left empty."""
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for path in files:
        held_out = validation_score(path) < validation_fraction
        splits["validation" if held_out else "train"].append(path)
    for split, other, hint in (("validation", "train", "raise"), ("train", "validation", "lower")):
        if not splits[split]:
            raise CorpusError(
                "validation_fraction",
                f"{validation_fraction} puts all {len(files)} files in {other}, none in {split} "
                f"(the split is by file); {hint} it, or add files",
            )
    return splits


def plan_corpus(spec: TextSpec) -> tuple[Path, dict[str, list[str]] | None]:
    """(root, files per split) without reading a file; the split is None for a single-file
    source, which is split by position when read. Raises CorpusError naming the key to change.
    Cheap enough for the workflow's checks before any job (~20 ms for the stdlib)."""
    root, files = corpus_files(spec.source, spec.pattern, spec.include_tests)
    if root.is_file():
        return root, None
    return root, split_files(files, spec.validation_fraction)


def _read(path: Path, shown: str, not_utf8: list[str]) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        not_utf8.append(shown)
        return None


def _split_by_position(path: str, text: str, validation_fraction: float) -> dict[str, Document]:
    """A single file: its end is the validation split, cut at the start of a line when one
    follows the cut point (else at the character)."""
    target = round(len(text) * (1 - validation_fraction))
    line = text.find("\n", target) + 1
    cut = line if 0 < line < len(text) else target
    parts = {"train": text[:cut], "validation": text[cut:]}
    for split, part in parts.items():
        if not part:
            raise CorpusError(
                "validation_fraction",
                f"{validation_fraction} leaves {split} empty in the {len(text)} characters of "
                f"{path!r}; change it, or use a longer file",
            )
    return {split: Document(path, part) for split, part in parts.items()}


def _capped(documents: Iterable[Document], budget: int | None) -> Iterator[Document]:
    """The documents until ``budget`` UTF-8 bytes, the last cut at a character boundary."""
    left = budget
    for doc in documents:
        if left is None:
            yield doc
            continue
        data = doc.text.encode()
        if len(data) < left:
            left -= len(data)
            yield doc
            continue
        text = data[:left].decode("utf-8", errors="ignore")  # drops a cut character's bytes
        if text:
            yield Document(doc.path, text)
        return


def content_sha256(documents: dict[str, list[Document]]) -> str:
    """sha256 of the corpus: each split's name, then each document's path, length and bytes."""
    digest = hashlib.sha256()
    for split, docs in documents.items():
        digest.update(f"{split}\0".encode())
        for doc in docs:
            data = doc.text.encode()
            digest.update(f"{doc.path}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()


def read_corpus(spec: TextSpec) -> tuple[dict[str, list[Document]], dict[str, Any]]:
    """(documents per split, provenance of the corpus). Files that are not UTF-8 are skipped
    (and listed in the provenance): the tokenizer reads text, and every byte of text round-trips.
    """
    root, splits = plan_corpus(spec)
    not_utf8: list[str] = []
    if splits is None:  # a single file
        text = _read(root, root.name, not_utf8)
        if text is None:
            raise CorpusError("source", f"{spec.source!r} is not UTF-8 text")
        parts = _split_by_position(root.name, text, spec.validation_fraction)
        candidates = {split: iter([parts[split]]) for split in SPLITS}
    else:

        def readable(paths: list[str]) -> Iterator[Document]:
            for path in paths:
                text = _read(root / path, path, not_utf8)
                if text:
                    yield Document(path, text)

        candidates = {split: readable(splits[split]) for split in SPLITS}
    budgets = spec.budgets()
    documents = {split: list(_capped(candidates[split], budgets[split])) for split in SPLITS}
    for split in SPLITS:
        if not documents[split]:
            raise CorpusError(
                "source",
                f"the {split} split has no UTF-8 text (not UTF-8: {not_utf8[:5]}); give UTF-8 "
                "text files",
            )
    if not_utf8:
        log.warning("skipped %d files that are not UTF-8: %s", len(not_utf8), not_utf8[:10])
    provenance: dict[str, Any] = {
        "source": spec.source,
        "root": str(root),
        "sha256": content_sha256(documents),
        "skipped_not_utf8": sorted(not_utf8),
        "splits": {
            split: {
                "files": len(docs),
                "bytes": sum(len(doc.text.encode()) for doc in docs),
                "sha256": content_sha256({split: docs}),
            }
            for split, docs in documents.items()
        },
    }
    if spec.source == STDLIB:
        provenance["python"] = platform.python_version()
        provenance["implementation"] = platform.python_implementation()
    return documents, provenance


# --- the tokenizer -----------------------------------------------------------------------------
def set_tokenizer_threads(threads: int) -> None:
    """Threads of ``tokenizers`` (a rayon pool, one thread per CPU by default: on a shared node,
    far more than the job's cores). Read when the pool starts, at the first parallel call, so
    this must come before any; the tokenizer and the tokens do not depend on it."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    os.environ["RAYON_NUM_THREADS"] = str(threads)


def _empty_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE())
    # GPT-2's: bytes as characters, its split regex, no space added in front of the text
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: list[str], d_vocab: int) -> Tokenizer:
    """A byte-level BPE tokenizer of at most ``d_vocab`` tokens: ``<|endoftext|>`` (id 0), the 256
    bytes (seen or not), then merges of pairs seen at least MIN_FREQUENCY times (fewer tokens when
    a small corpus runs out of such pairs)."""
    from tokenizers import pre_tokenizers, trainers

    tokenizer = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=d_vocab,
        min_frequency=MIN_FREQUENCY,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    if tokenizer.token_to_id(EOT) != EOT_ID:  # the trainer numbers special tokens first
        raise RuntimeError(f"{EOT} got id {tokenizer.token_to_id(EOT)}, expected {EOT_ID}")
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike) -> str:
    """Write ``tokenizer.json`` atomically; return its sha256 (for the provenance)."""
    with atomic_path(path) as tmp:
        tokenizer.save(str(tmp), pretty=True)
        digest = file_sha256(tmp)
    return digest


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    return Tokenizer.from_file(str(path))


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` read literally: a ``<|endoftext|>`` inside it is text, not the token,
    so that ``decode(tokenizer, encode(tokenizer, text)) == text``; append EOT_ID yourself."""
    return encode_batch(tokenizer, [text])[0]


def encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """:func:`encode` of several texts, in parallel (``set_tokenizer_threads``)."""
    before = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        return [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        tokenizer.encode_special_tokens = before


def decode(tokenizer: Tokenizer, ids: Iterable[int]) -> str:
    """Text of token ids, ``<|endoftext|>`` kept (an id sequence cut inside a multi-byte
    character decodes to U+FFFD there)."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


# --- token datasets ----------------------------------------------------------------------------
def encode_documents(
    tokenizer: Tokenizer, documents: list[Document], desc: str = "encode"
) -> Int[np.ndarray, " token"]:
    """One stream: every document's tokens followed by ``<|endoftext|>``."""
    parts: list[np.ndarray] = []
    eot = np.array([EOT_ID], dtype=np.int32)
    with Progress(total=len(documents), desc=desc, unit="file", logger=log) as bar:
        for start in range(0, len(documents), ENCODE_BATCH):
            batch = [doc.text for doc in documents[start : start + ENCODE_BATCH]]
            for ids in encode_batch(tokenizer, batch):
                parts += [np.asarray(ids, dtype=np.int32), eot]
            bar.update(len(batch))
    return np.concatenate(parts)


def pack(stream: Int[np.ndarray, " token"], seq_len: int) -> Int[np.ndarray, "seq pos"]:
    """Rows of ``<|endoftext|>`` + ``seq_len - 1`` consecutive stream tokens; the tail that does
    not fill a row is dropped."""
    body = seq_len - 1
    n_rows = len(stream) // body
    rows = stream[: n_rows * body].reshape(n_rows, body)  # seq (pos - 1)
    bos = np.full((n_rows, 1), EOT_ID, dtype=np.int32)
    return np.concatenate([bos, rows], axis=1).astype(np.int32)  # seq pos


@dataclass(frozen=True)
class TextDataset:
    tokenizer: Tokenizer
    tokens: dict[str, Int[np.ndarray, "seq pos"]]  # split -> rows
    provenance: dict[str, Any]


def build_text_dataset(spec: TextSpec) -> TextDataset:
    """Read the corpus, train the tokenizer on its train split, encode and pack both splits."""
    documents, corpus = read_corpus(spec)
    for split in SPLITS:
        stats = corpus["splits"][split]
        log.info("%s: %d files, %d bytes", split, stats["files"], stats["bytes"])
    started = time.perf_counter()
    tokenizer = train_tokenizer([doc.text for doc in documents["train"]], spec.d_vocab)
    log.info(
        "trained a %d-token BPE tokenizer in %.1fs",
        tokenizer.get_vocab_size(),
        time.perf_counter() - started,
    )
    if tokenizer.get_vocab_size() < spec.d_vocab:
        log.warning(
            "the train split has pairs for only %d of d_vocab %d tokens",
            tokenizer.get_vocab_size(),
            spec.d_vocab,
        )
    tokens = {}
    for split in SPLITS:
        started = time.perf_counter()
        stream = encode_documents(tokenizer, documents[split], desc=f"encode {split}")
        tokens[split] = pack(stream, spec.seq_len)
        if len(tokens[split]) == 0:
            raise CorpusError(
                "seq_len",
                f"the {split} split has {len(stream)} tokens, fewer than one row of seq_len "
                f"{spec.seq_len}; lower seq_len, or give {split} more text (max_bytes, "
                "validation_fraction)",
            )
        stats = corpus["splits"][split]
        stats["tokens"] = len(stream)
        stats["sequences"] = len(tokens[split])
        stats["dropped_tokens"] = len(stream) - len(tokens[split]) * (spec.seq_len - 1)
        log.info(
            "%s: %d tokens (%.2f bytes/token) -> %d rows of %d in %.1fs",
            split,
            len(stream),
            stats["bytes"] / len(stream),
            len(tokens[split]),
            spec.seq_len,
            time.perf_counter() - started,
        )
    provenance = {
        "kind": "text",
        "spec": asdict(spec),
        "splits": corpus.pop("splits"),  # files, bytes, sha256, tokens, sequences per split
        "corpus": corpus,
        "tokenizer": {
            "type": "byte-level BPE",
            "vocab_size": tokenizer.get_vocab_size(),
            "eot_token": EOT,
            "eot_id": EOT_ID,
            "min_frequency": MIN_FREQUENCY,
            "tokenizers": metadata.version("tokenizers"),
        },
    }
    return TextDataset(tokenizer, tokens, provenance)

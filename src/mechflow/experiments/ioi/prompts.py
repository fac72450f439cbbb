"""Indirect-object-identification prompts (Wang et al. 2022) in a word-level vocabulary of their own.

"When Mary and John went to the store , John gave a drink to" -> " Mary": the two names of the
first clause are the indirect object (IO) and the subject (S); S comes back, and the answer is
the name that did not. ABBA prompts name IO first, BABA prompts S first. Every word, name and
punctuation mark is one token, so every name is one token and positions can be named: S1 (the
first S), S1+1, IO, S2 (the second S) and END (the last token, where the answer is read). A
prefix of 0 to 8 words moves all of them, so position alone cannot solve the task.

The corrupted (ABC) prompt of a clean one keeps its template, prefix, place and object and
replaces its three name slots by three different names: it carries the sentence without the
IO/S information. Everything is drawn from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
from jaxtyping import Int

# The second clause repeats S; the answer (after the last word) is IO. N1 and N2 are the first
# clause's names: (IO, S) in ABBA prompts, (S, IO) in BABA ones.
TEMPLATES = (
    "when [N1] and [N2] went to the [PLACE] , [S] gave the [OBJECT] to",
    "after [N1] and [N2] arrived at the [PLACE] , [S] handed a [OBJECT] to",
    "[N1] and [N2] were working at the [PLACE] . [S] decided to give a [OBJECT] to",
    "while [N1] and [N2] were sitting in the [PLACE] , [S] passed the [OBJECT] to",
    "[N1] and [N2] found a [OBJECT] at the [PLACE] . [S] gave it to",
    "[N1] and [N2] had a long talk at the [PLACE] . [S] offered the [OBJECT] to",
    "[N1] and [N2] walked to the [PLACE] together . later , [S] threw the [OBJECT] to",
    "at the [PLACE] , [N1] and [N2] got a [OBJECT] . [S] sent it to",
    "the [PLACE] was quiet when [N1] and [N2] met . [S] showed the [OBJECT] to",
    "[N1] and [N2] cleaned the [PLACE] . afterwards , [S] lent a [OBJECT] to",
    "on the way to the [PLACE] , [N1] and [N2] stopped . [S] sold the [OBJECT] to",
    "[N1] and [N2] were waiting near the [PLACE] , and [S] returned the [OBJECT] to",
    "in the morning [N1] and [N2] left the [PLACE] . [S] mailed the [OBJECT] to",
    "[N1] and [N2] laughed at the [PLACE] , then [S] tossed the [OBJECT] to",
    "it was late at the [PLACE] when [N1] and [N2] talked , so [S] gave a [OBJECT] to",
    "[N1] and [N2] were at the [PLACE] , where [S] handed the [OBJECT] to",
    "when [N1] met [N2] at the [PLACE] , [S] brought a [OBJECT] to",
    "[N1] and [N2] spent the day at the [PLACE] , and [S] left the [OBJECT] with",
)
PREFIXES = (
    "",
    "then ,",
    "today ,",
    "one day ,",
    "last week ,",
    "earlier this year ,",
    "on a cold morning ,",
    "after a very long day ,",
    "just before the rain started ,",
    "on a quiet and sunny afternoon in june ,",
)
NAMES = (
    "Mary", "John", "Alice", "Bob", "Sarah", "James", "Emma", "David", "Laura", "Peter",
    "Anna", "Mark", "Julia", "Paul", "Kate", "Tom", "Lucy", "Sam", "Rose", "Jack",
    "Grace", "Adam", "Nora", "Ben", "Clara", "Leo", "Ella", "Max", "Ruth", "Dan",
)  # fmt: skip
PLACES = (
    "store", "park", "school", "garden", "office", "station", "market", "library", "house",
    "kitchen", "beach", "hospital", "restaurant", "museum", "church", "farm",
)  # fmt: skip
OBJECTS = (
    "drink", "book", "ring", "key", "bag", "letter", "basket", "ball", "snack", "pen", "cup",
    "box", "hat", "phone", "map", "flower",
)  # fmt: skip
BOS, PAD = "<bos>", "<pad>"
POSITIONS = ("IO", "S1", "S1+1", "S2", "END")


def words(text: str) -> list[str]:
    """The word-level tokenisation: split on spaces (punctuation is spaced in the templates)."""
    return text.split()


@dataclass(frozen=True)
class Vocabulary:
    """Every word of the templates, prefixes, names, places and objects, one id each;
    ``<bos>`` is 0 and ``<pad>`` is 1."""

    words: tuple[str, ...]
    ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "ids", {word: i for i, word in enumerate(self.words)})

    @classmethod
    def build(
        cls,
        templates: Sequence[str] = TEMPLATES,
        prefixes: Sequence[str] = PREFIXES,
        names: Sequence[str] = NAMES,
        places: Sequence[str] = PLACES,
        objects: Sequence[str] = OBJECTS,
    ) -> Vocabulary:
        found = set(names) | set(places) | set(objects)
        for text in (*templates, *prefixes):
            found.update(w for w in words(text) if not _is_slot(w))
        return cls((BOS, PAD, *sorted(found)))

    def encode(self, tokens: Sequence[str]) -> list[int]:
        unknown = [t for t in tokens if t not in self.ids]
        if unknown:
            raise KeyError(f"words not in the IOI vocabulary: {unknown}")
        return [self.ids[t] for t in tokens]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[int(i)] for i in ids if int(i) != self.ids[PAD])

    def encode_sentence(
        self, sentence: Sequence[str], slots: Collection[int] = ()
    ) -> tuple[list[int], list[int]]:
        """The ids of a ``<bos>``-led word list, and where each word's token starts (every word
        one token here, wherever it stands: ``slots`` change nothing)."""
        return self.encode(sentence), list(range(len(sentence)))

    @property
    def pad_id(self) -> int:
        return self.ids[PAD]

    def __len__(self) -> int:
        return len(self.words)


PUNCTUATION = frozenset(",.;:!?")


@dataclass(frozen=True)
class TextVocabulary:
    """A pretrained model's tokenizer read as the IOI vocabulary (GPT-2's BPE): the words join
    into text as GPT-2 reads it ("When Mary and John went to the store, John gave ..."),
    every name, place and object a single token with its leading space (" Mary"). ``<bos>``
    and padding are ``<|endoftext|>``, as TransformerLens's ``prepend_bos`` puts it."""

    tokenizer: object  # tokenizers.Tokenizer
    bos_id: int

    def piece(self, word: str, first: bool) -> str:
        if word in PUNCTUATION:
            return word
        return word[:1].upper() + word[1:] if first else " " + word

    def _ids(self, text: str) -> list[int]:
        from mechflow.data.text import encode

        return encode(self.tokenizer, text)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Single words (names, places, objects) as the one token each is mid-sentence."""
        out, multi = [], []
        for word in tokens:
            ids = self._ids(self.piece(word, first=False))
            (out if len(ids) == 1 else multi).append(ids[0] if len(ids) == 1 else word)
        if multi:
            raise KeyError(f"words that are not one token of the tokenizer: {multi}")
        return out

    def encode_sentence(
        self, sentence: Sequence[str], slots: Collection[int] = ()
    ) -> tuple[list[int], list[int]]:
        """``slots``: where the template's names, places and objects stand (indices into
        ``sentence``). Each is the one token it is mid-sentence even where it starts the
        sentence (" Mary and John were ..."): "Mary" is another token of GPT-2's, and a word's
        sentence-initial form may be several, so its position would not hold its id."""
        ids, starts = [self.bos_id], [0]
        for j, word in enumerate(sentence[1:], start=1):
            starts.append(len(ids))
            ids += self._ids(self.piece(word, first=j == 1 and j not in slots))
        return ids, starts

    def decode(self, ids: Sequence[int]) -> str:
        from mechflow.data.text import decode

        return decode(self.tokenizer, ids)

    @property
    def pad_id(self) -> int:
        return self.bos_id


def _is_slot(word: str) -> bool:
    return word.startswith("[") and word.endswith("]")


def check_words(kind: str, values: Sequence[str]) -> None:
    """Names, places and objects must each be one word (one token), and distinct."""
    multi = [v for v in values if len(words(v)) != 1]
    if multi:
        raise ValueError(f"{kind}: every entry must be one word (one token), got {multi}")
    if len(set(values)) != len(values):
        raise ValueError(f"{kind}: entries repeat")


def check_template(template: str) -> None:
    """A template names N1, N2 and S once each, ends where the answer is read, and puts S
    after both N1 and N2."""
    slots = [w for w in words(template) if _is_slot(w)]
    for slot in ("[N1]", "[N2]", "[S]"):
        if slots.count(slot) != 1:
            raise ValueError(f"template {template!r}: needs {slot} exactly once")
    order = words(template)
    if not order.index("[S]") > max(order.index("[N1]"), order.index("[N2]")):
        raise ValueError(f"template {template!r}: [S] must come after [N1] and [N2]")
    if _is_slot(order[-1]):
        raise ValueError(f"template {template!r}: must end with a word (the answer follows it)")


@dataclass(frozen=True)
class Prompts:
    """Right-padded IOI prompts and what reading them needs.

    ``tokens``: ``(prompt, pos)`` ids starting with ``<bos>``; ``io``/``s``: the ids of each
    prompt's indirect object (the answer) and subject; ``positions``: each named position per
    prompt (``END`` is the last real token); ``template``, ``prefix``, ``order`` (``"ABBA"`` or
    ``"BABA"``), ``place``, ``object``: what each prompt was made from (indices into the lists).
    """

    tokens: Int[np.ndarray, "prompt pos"]
    io: Int[np.ndarray, " prompt"]
    s: Int[np.ndarray, " prompt"]
    positions: dict[str, Int[np.ndarray, " prompt"]]
    template: Int[np.ndarray, " prompt"]
    prefix: Int[np.ndarray, " prompt"]
    order: np.ndarray
    place: Int[np.ndarray, " prompt"]
    object: Int[np.ndarray, " prompt"]

    def __len__(self) -> int:
        return len(self.tokens)


def make_prompts(
    n: int,
    *,
    seed: int,
    vocabulary: Vocabulary | TextVocabulary,
    templates: Sequence[str] = TEMPLATES,
    prefixes: Sequence[str] = PREFIXES,
    names: Sequence[str] = NAMES,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
    template_ids: Sequence[int] | None = None,
    prefix_ids: Sequence[int] | None = None,
    seq_len: int | None = None,
) -> Prompts:
    """``n`` prompts, half ABBA and half BABA (alternating), each of a uniformly drawn template
    (among ``template_ids``, default all), prefix (among ``prefix_ids``), two different names,
    place and object.
    ``seq_len`` pads every prompt to that length (default: the longest)."""
    for kind, values in (("names", names), ("places", places), ("objects", objects)):
        check_words(kind, values)
    if len(names) < 3:
        raise ValueError("names: at least three are needed (the ABC corruption uses three)")
    for template in templates:
        check_template(template)
    rng = np.random.default_rng(seed)
    pool = np.arange(len(templates)) if template_ids is None else np.asarray(template_ids)
    template = rng.choice(pool, size=n)
    prefix_pool = np.arange(len(prefixes)) if prefix_ids is None else np.asarray(prefix_ids)
    prefix = rng.choice(prefix_pool, size=n)
    pair = np.stack([rng.choice(len(names), size=2, replace=False) for _ in range(n)])
    place = rng.integers(len(places), size=n)
    obj = rng.integers(len(objects), size=n)
    order = np.where(np.arange(n) % 2 == 0, "ABBA", "BABA")
    rows, named = [], {p: np.empty(n, dtype=np.int64) for p in POSITIONS}
    vocabulary.encode(list(names))  # every name one token (a KeyError names those that are not)
    for i in range(n):
        io, s = names[pair[i, 0]], names[pair[i, 1]]
        n1, n2 = (io, s) if order[i] == "ABBA" else (s, io)
        fill = {"[N1]": n1, "[N2]": n2, "[S]": s, "[PLACE]": places[place[i]],
                "[OBJECT]": objects[obj[i]]}  # fmt: skip
        sentence = [BOS, *words(prefixes[prefix[i]]), *words(templates[template[i]])]
        slots = [j for j, w in enumerate(sentence) if _is_slot(w)]
        row, starts = vocabulary.encode_sentence([fill.get(w, w) for w in sentence], slots)
        slot_at = {w: starts[j] for j, w in enumerate(sentence) if _is_slot(w)}
        io_slot, s1_slot = ("[N1]", "[N2]") if order[i] == "ABBA" else ("[N2]", "[N1]")
        named["IO"][i], named["S1"][i] = slot_at[io_slot], slot_at[s1_slot]
        named["S1+1"][i] = slot_at[s1_slot] + 1
        named["S2"][i], named["END"][i] = slot_at["[S]"], len(row) - 1
        rows.append(row)
    length = max(map(len, rows)) if seq_len is None else seq_len
    if max(map(len, rows)) > length:
        raise ValueError(f"seq_len {length}: the longest prompt has {max(map(len, rows))} tokens")
    tokens = np.full((n, length), vocabulary.pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    ids = np.asarray(vocabulary.encode(names))
    return Prompts(
        tokens=tokens, io=ids[pair[:, 0]], s=ids[pair[:, 1]], positions=named,
        template=template, prefix=prefix, order=order, place=place, object=obj,
    )  # fmt: skip


def corrupt_abc(
    prompts: Prompts,
    *,
    seed: int,
    vocabulary: Vocabulary | TextVocabulary,
    names: Sequence[str] = NAMES,
) -> Int[np.ndarray, "prompt pos"]:
    """The ABC prompts: each prompt with its IO, S1 and S2 slots replaced by three names
    different from each other and from the prompt's own IO and S (same template, prefix,
    place and object; same positions)."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(vocabulary.encode(names))
    out = prompts.tokens.copy()
    rows = np.arange(len(prompts))
    for i in rows:
        others = ids[~np.isin(ids, [prompts.io[i], prompts.s[i]])]
        if len(others) < 3:
            raise ValueError("names: the ABC corruption needs three names besides IO and S")
        a, b, c = rng.choice(others, size=3, replace=False)
        out[i, prompts.positions["IO"][i]] = a
        out[i, prompts.positions["S1"][i]] = b
        out[i, prompts.positions["S2"][i]] = c
    return out


def vocabulary_of(spec: dict) -> Vocabulary:
    """The vocabulary of an ``ioi`` dataset spec (its word lists, or the built-in ones)."""
    return Vocabulary.build(**word_lists(spec))


def word_lists(spec: dict) -> dict[str, Sequence[str]]:
    """An ``ioi`` spec's word lists, the built-in ones where it gives none."""
    defaults = {"templates": TEMPLATES, "prefixes": PREFIXES, "names": NAMES, "places": PLACES,
                "objects": OBJECTS}  # fmt: skip
    return {key: spec.get(key) or value for key, value in defaults.items()}


def longest_prompt(vocabulary: Vocabulary | TextVocabulary, lists: dict) -> int:
    """Tokens of the longest prompt (``<bos>`` included) any template and prefix of ``lists``
    make, their slots filled with the first name, place and object (each one token)."""
    fill = {"[N1]": lists["names"][0], "[N2]": lists["names"][1], "[S]": lists["names"][0],
            "[PLACE]": lists["places"][0], "[OBJECT]": lists["objects"][0]}  # fmt: skip
    longest = 0
    for prefix in lists["prefixes"]:
        for template in lists["templates"]:
            sentence = [BOS, *words(prefix), *words(template)]
            slots = [j for j, w in enumerate(sentence) if _is_slot(w)]
            row, _ = vocabulary.encode_sentence([fill.get(w, w) for w in sentence], slots)
            longest = max(longest, len(row))
    return longest


def training_templates(n_templates: int, held_out: int) -> list[int]:
    """The templates a model trains on: all but the last ``held_out`` (their accuracy is
    reported apart, as generalisation to sentences never seen)."""
    if not 0 <= held_out < n_templates:
        raise ValueError(f"held_out_templates must be in [0, {n_templates - 1}], got {held_out}")
    return list(range(n_templates - held_out))


def ioi_sentences(
    *,
    n_sequences: int,
    seq_len: int,
    held_out_templates: int,
    seed: int,
    templates: Sequence[str] | None = None,
    prefixes: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    places: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
    d_vocab: int | None = None,
) -> Int[np.ndarray, "seq pos"]:
    """Training rows: each an IOI prompt followed by its answer, right-padded with ``<pad>``
    (the ``ioi`` dataset kind). ``d_vocab``, when given (the workflow fills it in), must be
    the vocabulary's size."""
    lists = word_lists({"templates": templates, "prefixes": prefixes, "names": names,
                         "places": places, "objects": objects})  # fmt: skip
    vocabulary = Vocabulary.build(**lists)
    if d_vocab is not None and d_vocab != len(vocabulary):
        raise ValueError(f"d_vocab {d_vocab}, but the word lists make {len(vocabulary)} tokens")
    prompts = make_prompts(
        n_sequences, seed=seed, vocabulary=vocabulary, seq_len=seq_len - 1,
        template_ids=training_templates(len(lists["templates"]), held_out_templates), **lists,
    )  # fmt: skip
    rows = np.full((n_sequences, seq_len), vocabulary.ids[PAD], dtype=np.int32)
    rows[:, : seq_len - 1] = prompts.tokens
    rows[np.arange(n_sequences), prompts.positions["END"] + 1] = prompts.io
    return rows

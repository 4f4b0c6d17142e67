"""Tagged data for token classification: sentences of words with one tag each, read, checked, cut into windows.

- `is_token_task(cfg)`: whether a fine-tuning run tags tokens (--task, a .conll/.iob/.bio file, or a table whose
  words column holds lists);
- `tagged_data(cfg)`: the training and evaluation sentences, tag names (saved as `config.id2label`) and the tag
  scheme, every sentence checked before a model is loaded. Sources: CoNLL-style column files (word first, tag
  last, blank lines between sentences, -DOCSTART- skipped), JSON Lines / JSON / parquet with a list-of-words and
  a list-of-tags column (tag strings, or ids with `datasets` ClassLabel names), or a `datasets` name (`ner_tags`);
- `windows(...)`: model inputs and labels; a sentence longer than the model's length is cut by the tokenizer into
  overlapping windows (`stride`), never truncated, and each word's prediction is read from the window where it
  sits furthest from an edge (`word_predictions`).

Importing it stays light (numpy): the CLI validates data before anything heavy is loaded.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmkit.console import log
from llmkit.data.sources import expand_files, files_in, is_data_file, is_local, open_binary, pick_column, suffixes
from llmkit.errors import DataError, ModelError

if TYPE_CHECKING:
    from llmkit.config import DataConfig, RunConfig

TAGGED_SUFFIXES = (".conll", ".iob", ".bio")
WORD_COLUMN_GUESSES = ("tokens", "words")
TAG_COLUMN_GUESSES = ("tags", "ner_tags", "labels")
PREFIXES = "BIES"  # B-egin, I-nside, E-nd, S-ingle: BIO (IOB2) uses B and I, BIOES all four
IGNORED = -100  # the label of pieces that are not trained on (transformers' ignore index)


@dataclass
class Tagged:
    """Sentences as words with their tags, and where each sentence starts (for messages)."""

    words: list[list[str]]
    tags: list[list[str]]
    source: str
    where: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.words)

    def select(self, index: Sequence[int]) -> "Tagged":
        return Tagged([self.words[i] for i in index], [self.tags[i] for i in index], self.source,
                      [self.where[i] for i in index])


# ---------------------------------------------------------------- which task


def is_tagged_file(path: Path) -> bool:
    return suffixes(path)[0] in TAGGED_SUFFIXES


def is_token_task(cfg: RunConfig) -> bool:
    """--task as given; auto: CoNLL-style files, or a table whose words column (--text-column, else tokens/words)
    holds lists of strings."""
    if cfg.finetune.task != "auto":
        return cfg.finetune.task == "token-classification"
    local = [Path(s).expanduser() for s in cfg.data.train if is_local_source(s)]
    if any(is_tagged_file(p) for p in local):
        return True
    files = [f for p in local for f in ((p, ) if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else ())
             if f.is_file() and (is_tagged_file(f) or is_data_file(f))]
    if any(is_tagged_file(f) for f in files):
        return True
    if files:
        source, group = str(files[0]), [files[0]]
        if suffixes(files[0])[0] not in (".jsonl", ".json", ".parquet"):
            return False
    elif cfg.data.train and not local:  # a `datasets` name
        source, group = cfg.data.train[0], None
    else:  # nothing readable here: the classification path says what is missing
        return False
    from llmkit.data.labeled import load_table

    table = load_table(source, group, cfg.data)
    wanted = [cfg.data.text_column] if cfg.data.text_column else list(WORD_COLUMN_GUESSES)
    return any(_is_word_list(table.features.get(c)) for c in wanted)


def is_local_source(source: str) -> bool:
    return is_local(source) or suffixes(Path(source))[0] in TAGGED_SUFFIXES


def _is_word_list(feature: Any) -> bool:
    inner = getattr(feature, "feature", None)
    return inner is not None and getattr(inner, "dtype", None) in ("string", "large_string")


def check_sources(cfg_data: DataConfig) -> None:
    """Local training and evaluation files exist, are readable and of a supported type (cheap, nothing imported)."""
    for sources in (cfg_data.train, cfg_data.eval):
        local = [s for s in sources if is_local_source(s)]
        if local:
            tagged_files(local)


def tagged_files(sources: Sequence[str]) -> list[Path]:
    """Local files: CoNLL-style ones checked here, the rest (and folders) as every fine-tuning file is."""
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            files += files_in(path, is_tagged_file) or expand_files([source])
        elif is_tagged_file(path) and path.is_file():
            if not os.access(path, os.R_OK):
                raise DataError(f"Data file '{path}' is not readable (permission denied). Fix its permissions.")
            if path.stat().st_size == 0:
                raise DataError(f"Data file '{path}' is empty. Give a file with at least one tagged sentence.")
            files.append(path)
        else:
            files += expand_files([source])
    return files


# ---------------------------------------------------------------- reading


def tagged_data(cfg: RunConfig) -> tuple[Tagged, Tagged, list[str], str]:
    """(training sentences, evaluation sentences, tag names, tag scheme), all checked."""
    from llmkit.data.labeled import stratified_sample

    train, class_order = load_tagged(cfg.data.train, cfg.data, None)
    names = tag_names(train, class_order)
    scheme = tag_scheme(names, train.source)
    if cfg.data.eval or cfg.data.eval_split:
        held_out, _ = load_tagged(cfg.data.eval or cfg.data.train, cfg.data, cfg.data.eval_split)
        held_out = check_eval_tags(held_out, names, cfg.finetune.unseen_eval_labels)
    else:
        if len(train) < 2:
            raise DataError(f"Need at least 2 sentences to hold some out for evaluation, found {len(train)} in "
                            f"{train.source}. Add data or pass --eval-data.")
        held = set(stratified_sample([0] * len(train), cfg.data.eval_fraction, cfg.seed))
        train, held_out = (train.select([i for i in range(len(train)) if i not in held]),
                           train.select(sorted(held)))
    if cfg.data.max_eval_samples and len(held_out) > cfg.data.max_eval_samples:
        held_out = held_out.select(stratified_sample([0] * len(held_out), cfg.data.max_eval_samples / len(held_out),
                                                     cfg.seed))
    return train, held_out, names, scheme


def load_tagged(sources: Sequence[str], cfg_data: DataConfig, split: str | None) -> tuple[Tagged, list[str] | None]:
    """The sentences of CoNLL files, tables or `datasets` names, and the tag order of a ClassLabel if one gave it."""
    from llmkit.data.labeled import load_table

    local = [s for s in sources if is_local_source(s)]
    files = tagged_files(local) if local else []
    out, order = Tagged([], [], ", ".join(sources)), None
    for f in files:
        if not is_tagged_file(f):
            continue
        part = read_conll(f, str(f))
        out.words += part.words
        out.tags += part.tags
        out.where += part.where
    groups: dict[str, list[Path]] = {}
    for f in files:
        if not is_tagged_file(f):
            groups.setdefault(suffixes(f)[0], []).append(f)
    tables = [(str(g[0]) if len(g) == 1 else f"{g[0].parent} ({len(g)} files)", g) for g in groups.values()]
    tables += [(s, None) for s in sources if s not in local]
    for name, group in tables:
        if group and suffixes(group[0])[0] in (".csv", ".tsv", ".txt", ".text", ".md"):
            raise DataError(f"'{name}' cannot hold a list of words per row; token classification reads CoNLL files "
                            f"(.conll/.iob/.bio: a word and its tag per line) or JSON Lines / JSON / parquet with a "
                            f"list-of-words and a list-of-tags column.")
        table = load_table(name, group, cfg_data, split)
        part, names = read_table(table, name, cfg_data)
        order = order or names
        out.words += part.words
        out.tags += part.tags
        out.where += part.where
    if not out.words:
        raise DataError(f"No tagged sentences found in {out.source}. Give data with at least one sentence.")
    return out, order


def read_conll(path: Path, name: str) -> Tagged:
    """CoNLL-style columns: a word per line, its tag in the last column (tab- or space-separated; middle columns,
    e.g. POS and chunk tags, are skipped), a blank line between sentences, -DOCSTART- lines skipped."""
    try:
        with open_binary(path, suffixes(path)[1]) as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"'{name}' is not valid UTF-8 (byte offset {e.start}). Convert it to UTF-8.") from None
    out = Tagged([], [], name)
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def flush() -> None:
        if words:
            out.words.append(list(words))
            out.tags.append(list(tags))
            out.where.append(f"{name}:{start}")
            words.clear()
            tags.clear()

    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts if p.strip()]
        if not parts or parts[0] == "-DOCSTART-":
            flush()
            continue
        if len(parts) < 2:
            raise DataError(f"{name}:{number}: expected a word and its tag (columns separated by tabs or spaces, the "
                            f"tag last), found {line.strip()[:60]!r}. Add the missing tag, or put a blank line "
                            f"between sentences.")
        if not words:
            start = number
        words.append(parts[0])
        tags.append(parts[-1])
    flush()
    if not out.words:
        raise DataError(f"'{name}' has no tagged sentences (only blank or -DOCSTART- lines). Give a word and its "
                        f"tag per line.")
    return out


def read_table(table: Any, source: str, cfg_data: DataConfig) -> tuple[Tagged, list[str] | None]:
    """A list-of-words and a list-of-tags column (auto-detected or --text-column / --label-column), every row
    checked: words are strings, as many tags as words, none empty. Also the ClassLabel names, if any."""
    from llmkit.data.labeled import class_names

    columns = table.column_names
    words_column = pick_column(columns, cfg_data.text_column, WORD_COLUMN_GUESSES, "words (a list per row)",
                               source, "--text-column")
    tags_column = pick_column(columns, cfg_data.label_column, TAG_COLUMN_GUESSES, "tags (a list per row)", source,
                              "--label-column")
    if cfg_data.text_column is None or cfg_data.label_column is None:
        log(f"columns of {source}: words '{words_column}', tags '{tags_column}' (auto-detected; set them with "
            f"--text-column, --label-column)")
    feature = table.features.get(tags_column)
    inner = getattr(feature, "feature", None)
    order = list(inner.names) if hasattr(inner, "names") else None
    words, tags = list(table[words_column]), class_names(list(table[tags_column]), feature)
    problems: dict[str, list[int]] = {}
    for row, (w, t) in enumerate(zip(words, tags), 1):
        if not isinstance(w, list) or not all(isinstance(x, str) and x.strip() for x in w):
            problems.setdefault(f"column '{words_column}' is not a list of non-blank words", []).append(row)
        elif not w:
            problems.setdefault("the sentence is empty", []).append(row)
        elif not isinstance(t, list) or len(t) != len(w):
            found = len(t) if isinstance(t, list) else "no list of"
            problems.setdefault(f"{len(w)} words but {found} tags", []).append(row)
        elif not all(isinstance(x, str) and x.strip() for x in t):
            problems.setdefault("a tag is not a name (ids need ClassLabel names; give tag strings such as "
                                "'B-PER')", []).append(row)
    if problems:
        shown = "; ".join(f"row {rows[0]}: {what}" + (f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else "")
                          for what, rows in problems.items())
        raise DataError(f"'{source}': {shown}. Each row needs a list of words and a list of as many tags.")
    out = Tagged([list(w) for w in words], [[x.strip() for x in t] for t in tags], source,
                 [f"{source} row {i}" for i in range(1, len(words) + 1)])
    return out, order


# ---------------------------------------------------------------- tags


def tag_names(train: Tagged, order: Sequence[str] | None = None) -> list[str]:
    """The tags of the training data: in a ClassLabel's order when the data gave one, else O first, then by entity
    type and B, I, E, S."""
    found = Counter(t for tags in train.tags for t in tags)
    if order is not None:
        extra = sorted(set(found) - set(order))
        if extra:
            raise DataError(f"{train.source}: the tags {', '.join(extra[:5])} are not among the ClassLabel names "
                            f"{', '.join(order[:8])}{' ...' if len(order) > 8 else ''} that give the tag order; use one "
                            f"kind of source, or give every source the same tag names.")
        return list(order)

    def key(tag: str) -> tuple:
        prefix, _, kind = tag.partition("-")
        return (tag != "O", kind, PREFIXES.find(prefix) if len(prefix) == 1 else 9, tag)

    return sorted(found, key=key)


def tag_scheme(names: Sequence[str], source: str) -> str:
    """BIO (IOB2; also IOB1 data, as seqeval reads it) or BIOES, from the tag names; DataError for tags without a
    scheme prefix, prefixes of no scheme, or a mixture."""
    plain = [t for t in names if t != "O" and not _prefixed(t)]
    prefixed = [t for t in names if _prefixed(t)]
    example = "O, B-PER, I-PER (BIO/IOB2) or O, B-PER, I-PER, E-PER, S-PER (BIOES)"
    if plain and prefixed:
        raise DataError(f"The tags of {source} mix schemes: {', '.join(prefixed[:3])} carry a B-/I- prefix but "
                        f"{', '.join(repr(t) for t in plain[:3])} do not. Expected tags like {example}; convert them "
                        f"to one scheme.")
    if plain:
        raise DataError(f"Unknown tag scheme in {source}: tags such as {', '.join(repr(t) for t in plain[:3])} have "
                        f"no B-/I-/E-/S- prefix. Expected tags like {example}.")
    if not prefixed:
        raise DataError(f"Every tag in {source} is 'O': there are no entities to learn. Give data with tagged "
                        f"entities ({example}).")
    return "BIOES" if any(t[0] in "ES" for t in prefixed) else "BIO"


def _prefixed(tag: str) -> bool:
    prefix, sep, kind = tag.partition("-")
    return bool(sep) and len(prefix) == 1 and prefix in PREFIXES and bool(kind)


def check_eval_tags(held_out: Tagged, names: Sequence[str], policy: str) -> Tagged:
    """Evaluation tags must be training tags: an error, or with policy 'drop' those sentences are dropped (said)."""
    known = set(names)
    unseen = Counter(t for tags in held_out.tags for t in tags if t not in known)
    if not unseen:
        return held_out
    first = next(w for w, tags in zip(held_out.where, held_out.tags) if any(t not in known for t in tags))
    shown = ", ".join(f"'{k}' ({n}x)" for k, n in sorted(unseen.items())[:8])
    if policy == "error":
        raise DataError(f"Evaluation tags not in the training data: {shown}, first at {first}; the model can only "
                        f"predict the {len(names)} training tags. Add sentences with them to the training data, or "
                        f"pass --set finetune.unseen_eval_labels=drop to evaluate without those sentences.")
    keep = [i for i, tags in enumerate(held_out.tags) if all(t in known for t in tags)]
    if not keep:
        raise DataError(f"Every evaluation sentence of {held_out.source} has a tag not in the training data "
                        f"({shown}). Give evaluation data with the training tags.")
    log(f"dropped {len(held_out) - len(keep):,} evaluation sentence(s) with tags not in the training data: {shown}")
    return held_out.select(keep)


def describe(tagged: Tagged, names: Sequence[str], scheme: str) -> str:
    kinds = Counter(t.partition("-")[2] for tags in tagged.tags for t in tags if t[0] in "BS" and t != "O")
    shown = ", ".join(f"{k} {n:,}" for k, n in kinds.most_common(8)) + (", ..." if len(kinds) > 8 else "")
    return f"{scheme} tags, {len(names)} tags, entities: {shown}"


# ---------------------------------------------------------------- windows


@dataclass
class Windows:
    """Model inputs cut from sentences: `features` (input ids, ..., labels) per window, the sentence of each window,
    and per window the (position, word index) of every word piece that starts a word."""

    features: list[dict[str, list[int]]]
    sentence: list[int]
    firsts: list[list[tuple[int, int]]]
    words: list[int]  # words per sentence


def windows(tokenizer: Any, words: Sequence[Sequence[str]], tags: Sequence[Sequence[str]] | None,
            names: Sequence[str], max_length: int, stride: int, label_all_pieces: bool = False) -> Windows:
    """The tokenizer's own windows (`return_overflowing_tokens`, `stride`) of words split into pieces; each word's
    tag on its first piece (`label_all_pieces`: on every piece, B- continued as I-), IGNORED elsewhere."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("Token classification needs a fast tokenizer (tokenizer.json): it maps word pieces back to "
                         "words. Use a checkpoint with a fast tokenizer.")
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    if stride >= max_length - specials:
        raise DataError(f"finetune.stride ({stride}) must be smaller than the {max_length - specials} word pieces a "
                        f"window holds (data.max_seq_length {max_length}). Lower --set finetune.stride.")
    encoded = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=True, max_length=max_length,
                        stride=stride, return_overflowing_tokens=True)
    index = {n: i for i, n in enumerate(names)}
    inside = {i: index.get("I-" + n[2:], i) for n, i in index.items() if n.startswith("B-")}
    out = Windows([], list(encoded["overflow_to_sample_mapping"]), [], [len(w) for w in words])
    previous: list[int | None] = []
    for k, sentence in enumerate(out.sentence):
        word_ids = encoded.word_ids(k)
        content = [j for j, w in enumerate(word_ids) if w is not None]
        continued = k > 0 and out.sentence[k - 1] == sentence  # an overflow window of the same sentence
        before = None
        if continued and content:  # the piece before this window's first one, in the previous window
            earlier = [w for w in previous if w is not None]
            before = earlier[len(earlier) - stride - 1] if len(earlier) > stride else None
        firsts, labels = [], [IGNORED] * len(word_ids)
        for n, j in enumerate(content):
            w = word_ids[j]
            prior = word_ids[content[n - 1]] if n else before
            first = w != prior
            if first:
                firsts.append((j, w))
            if tags is not None and (first or label_all_pieces):
                tag = index[tags[sentence][w]]
                labels[j] = tag if first else inside.get(tag, tag)
        feature = {name: list(encoded[name][k]) for name in ("input_ids", "attention_mask", "token_type_ids")
                   if name in encoded}
        if tags is not None:
            feature["labels"] = labels
        out.features.append(feature)
        out.firsts.append(firsts)
        previous = word_ids
    return out


def word_predictions(win: Windows, logits: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per sentence, the tag probabilities of each word [words, tags], read at its first piece in the window where
    that piece sits furthest from the window's edges; a word with no piece (the tokenizer dropped it) gets NaN."""
    tags = logits[0].shape[-1] if len(logits) else 0
    out = [np.full((n, tags), np.nan, dtype=np.float32) for n in win.words]
    margin = [np.full(n, -1, dtype=np.int64) for n in win.words]
    for k, sentence in enumerate(win.sentence):
        if not win.firsts[k]:
            continue
        row = np.asarray(logits[k], dtype=np.float32)
        low, high = win.firsts[k][0][0], win.firsts[k][-1][0]
        for j, w in win.firsts[k]:
            edge = min(j - low, high - j)
            if edge > margin[sentence][w]:
                shifted = np.exp(row[j] - row[j].max())
                out[sentence][w] = shifted / shifted.sum()
                margin[sentence][w] = edge
    return out


def predicted_tags(probabilities: np.ndarray, names: Sequence[str]) -> tuple[list[str], list[float]]:
    """Tag names and their probabilities per word; a word without a prediction is 'O' with score 0."""
    tags, scores = [], []
    for row in probabilities:
        if np.isnan(row).any():
            tags.append("O")
            scores.append(0.0)
        else:
            best = int(row.argmax())
            tags.append(names[best])
            scores.append(float(row[best]))
    return tags, scores

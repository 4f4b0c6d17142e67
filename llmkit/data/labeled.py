"""Labeled data for fine-tuning, and texts to classify: tables read through `datasets`, checked, tokenized.

- `labeled_data(cfg)`: the training and evaluation sets of a fine-tuning run (CSV, TSV, JSON Lines, JSON, parquet
  or a `datasets` name), columns picked or auto-detected, every label checked, the problem type decided;
- `input_batches(...)`: the texts (and text pairs) for `llmkit predict`, from arguments, any table format that
  fine-tuning reads, plain text lines, or stdin (streamed);
- `features(...)`: tokenized examples, cached on disk like pretraining data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmkit.console import log
from llmkit.data.corpus import cache_root
from llmkit.data.sources import (TABLE_LOADERS, TEXT_SUFFIXES, expand_files, guesses, is_local, is_number, json_object,
                                 pick_column, suffixes)
from llmkit.data.sources import load_table as load_dataset_table
from llmkit.errors import DataError

if TYPE_CHECKING:
    import datasets

    from llmkit.config import DataConfig, RunConfig

FEATURES_VERSION = 3  # bump when the layout of cached features changes


def load_table(source: str, files: list[Path] | None, cfg_data: DataConfig, split: str | None = None) -> "datasets.Dataset":
    """A table from local files (all of one format) or from a `datasets` name."""
    import datasets

    if files is None:  # a `datasets` name
        return load_dataset_table(source, cfg_data.dataset_config, split or cfg_data.train_split)
    formats = {suffixes(f)[0] for f in files}
    if len(formats) > 1:
        raise DataError(f"Data files of '{source}' mix formats ({', '.join(sorted(formats))}). Give files of one format.")
    fmt = formats.pop()
    builder, kwargs = TABLE_LOADERS[fmt]
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as e:  # noqa: BLE001 - parsers raise many kinds; all mean "malformed file"
        cause = e.__cause__ or e
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise DataError(f"Cannot read '{source}' as {fmt[1:].upper()}: {msg[:300]}. Check the file's format.") from None


def texts_fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def cached_arrays(key: dict[str, Any], cfg_data: DataConfig, build: Callable[[], dict[str, np.ndarray]],
                  log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """`build()` (named numpy arrays), cached on disk under a hash of `key`.

    In a multi-process run the main process builds and writes the cache first (`main_process_first`) and
    the others load it. The folder appears atomically, so a reader never sees half-written arrays.
    """
    digest = hashlib.sha256(json.dumps({"v": FEATURES_VERSION, **key}, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_root(cfg_data) / "features" / digest
    names = folder / "names.json"
    if names.is_file():
        try:
            arrays = {name: np.load(folder / f"{name}.npy") for name in json.loads(names.read_text())}
            if log:
                log(f"using cached features {folder}")
            return arrays
        except (OSError, ValueError):  # damaged: rebuilt and replaced below
            shutil.rmtree(folder, ignore_errors=True)
    arrays = build()
    try:
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "names.json").write_text(json.dumps(sorted(arrays)))
        if folder.exists():  # another process cached the same features meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except OSError as e:  # a read-only cache must not stop a run
        log(f"could not write the feature cache ({e}); continuing without it")
    return arrays


# ---------------------------------------------------------------- labeled examples


LABEL_COLUMN_GUESSES = ("label", "labels")
PAIR_GUESSES = {"sentence1": "sentence2", "premise": "hypothesis", "question1": "question2"}


@dataclass
class Labeled:
    """Texts (and second texts of pairs) with their raw labels, as read."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    source: str

    def select(self, index: Sequence[int]) -> "Labeled":
        return Labeled([self.texts[i] for i in index], None if self.pairs is None else [self.pairs[i] for i in index],
                       [self.labels[i] for i in index], self.source)


# ---------------------------------------------------------------- data


def labeled_data(cfg: RunConfig) -> tuple[Labeled, Labeled, str, list[str]]:
    """(training set, evaluation set, problem type, label names), every label checked."""
    train, held_out = load_data(cfg)
    problem = problem_type(train.labels, cfg.finetune.problem_type)
    train.labels = normalize_labels(train.labels, problem, train.source)
    names = label_names(train.labels, problem, train.source)
    if held_out is None:
        train, held_out = stratified_split(train, problem, cfg.data.eval_fraction, cfg.seed)
    else:
        held_out.labels = normalize_labels(held_out.labels, problem, held_out.source)
        held_out = check_eval_labels(held_out, names, problem, cfg.finetune.unseen_eval_labels)
    if cfg.data.max_eval_samples and len(held_out.texts) > cfg.data.max_eval_samples:  # a seeded, stratified subset
        strata = held_out.labels if problem == "single_label" else [0] * len(held_out.labels)
        held_out = held_out.select(stratified_sample(strata, cfg.data.max_eval_samples / len(strata), cfg.seed))
    return train, held_out, problem, names


def check_sources(cfg_data: DataConfig) -> None:
    """Local training and evaluation files exist, are readable and of a supported type (cheap, nothing imported)."""
    for sources in (cfg_data.train, cfg_data.eval):
        local = [s for s in sources if is_local(s)]
        if local:
            expand_files(local)


def load_data(cfg: RunConfig) -> tuple[Labeled, Labeled | None]:
    """The training set and the evaluation set (None: to be split off the training set)."""
    train = load_labeled(cfg.data.train, cfg.data, None)
    if cfg.data.eval:
        return train, load_labeled(cfg.data.eval, cfg.data, cfg.data.eval_split)
    if cfg.data.eval_split:
        return train, load_labeled(cfg.data.train, cfg.data, cfg.data.eval_split)
    return train, None


def load_labeled(sources: Sequence[str], cfg_data: DataConfig, split: str | None) -> Labeled:
    """Texts, pairs and labels of local tables (CSV/TSV/JSON Lines/JSON/parquet) or `datasets` names.

    The columns are the configured ones or auto-detected (reported on stderr); every problem found in the rows
    (missing texts or labels) is reported at once.
    """
    local = [s for s in sources if is_local(s)]
    files = expand_files(local) if local else []
    text_files = [f for f in files if suffixes(f)[0] in TEXT_SUFFIXES]
    if text_files:
        raise DataError(f"'{text_files[0]}' is plain text, but fine-tuning needs a label for each text. Give a CSV, "
                        f"TSV, JSON Lines, JSON or parquet file with a text and a label column.")
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(suffixes(f)[0], []).append(f)
    tables = [(str(g[0]) if len(g) == 1 else f"{g[0].parent} ({len(g)} files)", g) for g in groups.values()]
    tables += [(s, None) for s in sources if s not in local]
    out = Labeled([], None, [], ", ".join(name for name, _ in tables))
    for name, group in tables:
        table = load_table(name, group, cfg_data, split)
        texts, pairs, labels = read_columns(table, name, cfg_data)
        if out.texts and (out.pairs is None) != (pairs is None):
            raise DataError(f"'{name}' has a second text column but the data before it has none (or the reverse). "
                            f"Give tables with the same columns.")
        out.texts += texts
        out.labels += labels
        out.pairs = None if pairs is None else (out.pairs or []) + pairs
    if not out.texts:
        raise DataError(f"No examples found in {out.source}. Give data with at least one labeled text.")
    return out


def read_columns(table: Any, source: str, cfg_data: DataConfig) -> tuple[list[str], list[str] | None, list[Any]]:
    columns = table.column_names
    strings = [c for c, f in table.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    text, pair, detected = pick_text_columns(columns, cfg_data.text_column, cfg_data.text_pair_column, source,
                                             [c for c in strings if c not in LABEL_COLUMN_GUESSES])
    label = pick_column(columns, cfg_data.label_column, LABEL_COLUMN_GUESSES, "label", source, "--label-column")
    if detected or cfg_data.label_column is None:
        log(f"columns of {source}: text '{text}'" + (f", text pair '{pair}'" if pair else "") + f", label '{label}'"
            f" (auto-detected; set them with --text-column, --text-pair-column, --label-column)")
    if label in (text, pair):
        raise DataError(f"Column '{label}' of '{source}' cannot be both a text and the label. Pass --label-column "
                        f"or --text-column with different columns.")
    texts, labels = list(table[text]), class_names(list(table[label]), table.features.get(label))
    pairs = list(table[pair]) if pair else None
    problems = []
    for column, values in ((text, texts), (pair, pairs)):
        bad = [i for i, v in enumerate(values or [], 1) if not isinstance(v, str)]
        if bad:
            problems.append(f"column '{column}' has no text in {len(bad)} row(s) (first: row {bad[0]})")
    missing = [i for i, v in enumerate(labels, 1) if v is None or (isinstance(v, float) and math.isnan(v))
               or (isinstance(v, str) and not v.strip())]
    if missing:
        problems.append(f"column '{label}' has no label in {len(missing)} row(s) (first: row {missing[0]})")
    if problems:
        raise DataError(f"'{source}': " + "; ".join(problems) + ". Fill them in or drop those rows.")
    return texts, pairs, labels


def class_names(values: list[Any], feature: Any) -> list[Any]:
    """`datasets` class labels (ClassLabel ids, or lists of them) as their names; -1 (unlabeled) as missing."""
    import datasets

    def name(feature: Any, v: Any) -> Any:
        return feature.int2str(v) if isinstance(v, int) and v >= 0 else None

    if isinstance(feature, datasets.ClassLabel):
        return [name(feature, v) for v in values]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return [None if v is None else [name(inner, x) for x in v] for v in values]
    return values


# ---------------------------------------------------------------- labels


def problem_type(labels: Sequence[Any], requested: str) -> str:
    """single_label, multi_label or regression: as requested, else from the labels (as HF's run_classification):
    lists are multi-label, floats are regression, strings, integers and booleans are classes."""
    if requested != "auto":
        return requested
    if any(isinstance(v, (list, tuple)) for v in labels):
        return "multi_label"
    if any(isinstance(v, float) for v in labels) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in labels):
        return "regression"
    return "single_label"


def normalize_labels(labels: Sequence[Any], problem: str, source: str) -> list[Any]:
    """Labels in one form per problem type: class names (str), lists of class names, or floats."""
    if problem == "regression":
        out, bad = [], []
        for i, v in enumerate(labels, 1):
            try:
                value = float(v)
            except (TypeError, ValueError):
                value = float("nan")
            if isinstance(v, bool) or not math.isfinite(value):
                bad.append((i, v))
            out.append(value)
        if bad:
            raise DataError(f"Regression needs a finite number as each label; '{source}' has {len(bad)} other(s) "
                            f"(first: row {bad[0][0]}: {bad[0][1]!r}). Fix those labels, or drop "
                            f"--set finetune.problem_type=regression to classify.")
        return out
    if problem == "multi_label":
        # a list per row; a string is split on commas ("news,sports"), as CSV files cannot hold lists
        return [[_name(x) for x in (v if isinstance(v, (list, tuple)) else str(v).split(",")) if _name(x)]
                for v in labels]
    if any(isinstance(v, (list, tuple)) for v in labels):
        raise DataError(f"'{source}' has list labels, which mean multi-label classification; drop "
                        f"--set finetune.problem_type=single_label or give one label per row.")
    return [_name(v) for v in labels]


def _name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def label_names(labels: Sequence[Any], problem: str, source: str) -> list[str]:
    """The sorted label set of the training data (numbers in numeric order); empty for regression."""
    if problem == "regression":
        return []
    found = Counter(x for v in labels for x in (v if problem == "multi_label" else [v]))
    if len(found) < 2:
        only = f"one label ('{next(iter(found))}')" if found else "no labels"
        hint = (" For a numeric target, pass --set finetune.problem_type=regression."
                if found and is_number(next(iter(found))) else "")
        raise DataError(f"The training data in {source} has {only}: classification needs at least 2 classes. Add "
                        f"examples of the other classes.{hint}")
    if all(is_number(n) for n in found):
        return sorted(found, key=float)
    return sorted(found)


def encode_labels(labels: Sequence[Any], problem: str, names: Sequence[str]) -> list[Any]:
    """Model targets: class ids (single-label), multi-hot float vectors (multi-label) or floats (regression)."""
    if problem == "regression":
        return [float(v) for v in labels]
    index = {n: i for i, n in enumerate(names)}
    if problem == "multi_label":
        out = []
        for v in labels:
            row = [0.0] * len(names)
            for x in v:
                row[index[x]] = 1.0
            out.append(row)
        return out
    return [index[v] for v in labels]


def check_eval_labels(held_out: Labeled, names: Sequence[str], problem: str, policy: str) -> Labeled:
    """Evaluation labels must be training labels: an error, or with policy 'drop' those rows are dropped (said)."""
    if problem == "regression":
        return held_out
    known = set(names)
    unseen = Counter(x for v in held_out.labels for x in (v if problem == "multi_label" else [v]) if x not in known)
    if not unseen:
        return held_out
    shown = ", ".join(f"'{k}' ({n} row{'s' if n > 1 else ''})" for k, n in sorted(unseen.items())[:8])
    if policy == "error":
        raise DataError(f"Evaluation labels not in the training data: {shown} in {held_out.source}; the model can only "
                        f"predict the {len(names)} training labels. Add examples of them to the training data, or "
                        f"pass --set finetune.unseen_eval_labels=drop to evaluate without those rows.")
    keep = [i for i, v in enumerate(held_out.labels)
            if all(x in known for x in (v if problem == "multi_label" else [v]))]
    if not keep:
        raise DataError(f"Every evaluation row of {held_out.source} has a label not in the training data ({shown}). "
                        f"Give evaluation data with the training labels.")
    log(f"dropped {len(held_out.labels) - len(keep):,} evaluation row(s) whose labels are not in the training data: "
        f"{shown}")
    return held_out.select(keep)


def describe_labels(labels: Sequence[Any], problem: str, names: Sequence[str]) -> str:
    if problem == "regression":
        values = np.asarray(labels, dtype=float)
        return f"regression, labels from {values.min():g} to {values.max():g} (mean {values.mean():.3g})"
    counts = Counter(x for v in labels for x in (v if problem == "multi_label" else [v]))
    shown = ", ".join(f"{n} {counts[n]:,}" for n in names[:10]) + (", ..." if len(names) > 10 else "")
    kind = "multi-label" if problem == "multi_label" else "single-label"
    return f"{kind} classification, {len(names)} labels ({shown})"


def stratified_split(train: Labeled, problem: str, fraction: float, seed: int) -> tuple[Labeled, Labeled]:
    """A seeded held-out split; single-label: stratified (each class keeps its share, as far as counts allow)."""
    n = len(train.labels)
    if n < 2:
        raise DataError(f"Need at least 2 examples to hold some out for evaluation, found {n}. Add data or pass "
                        f"--eval-data.")
    strata = train.labels if problem == "single_label" else [0] * n
    eval_index = stratified_sample(strata, fraction, seed)
    held = set(eval_index)
    return train.select([i for i in range(n) if i not in held]), train.select(eval_index)


def stratified_sample(strata: Sequence[Any], fraction: float, seed: int) -> list[int]:
    """Indices of a seeded sample of about `fraction` of the rows, in row order, with each stratum represented in
    proportion (largest remainders get the rounding); every stratum keeps at least one row out of the sample."""
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    keys = sorted(groups, key=str)
    total = max(1, round(len(strata) * fraction))
    exact = np.array([len(groups[k]) * fraction for k in keys])
    take = np.floor(exact).astype(int)
    order = sorted(range(len(keys)), key=lambda j: (-(exact[j] - take[j]), rng.random()))
    for j in order[:max(0, total - int(take.sum()))]:
        take[j] += 1
    picked: list[int] = []
    for j, key in enumerate(keys):
        members = groups[key]
        count = min(int(take[j]), len(members) - 1)
        picked += rng.permutation(members)[:count].tolist()
    if not picked:  # tiny data: hold out one row of the largest stratum
        largest = max(keys, key=lambda k: len(groups[k]))
        picked = [int(rng.choice(groups[largest]))]
    return sorted(picked)


def pick_text_columns(columns: Sequence[str], text_column: str | None, pair_column: str | None, source: str,
                      string_columns: Sequence[str] = ()) -> tuple[str, str | None, bool]:
    """(text column, pair column or None, whether they were auto-detected): given ones are checked, otherwise
    the usual names are tried (text, sentence, ...; sentence1/sentence2 as a pair), then a lone string column."""
    if text_column is not None:
        text = pick_column(columns, text_column, (), "text", source, "--text-column")
    else:
        candidates = guesses(string_columns, extra=("premise", "question1"))
        text = pick_column(columns, None, candidates, "text", source, "--text-column")
    if pair_column is not None:
        pair = pick_column(columns, pair_column, (), "second text", source, "--text-pair-column")
    else:
        pair = PAIR_GUESSES.get(text) if text_column is None and PAIR_GUESSES.get(text) in columns else None
    return text, pair, text_column is None


def input_batches(texts: Sequence[str], input_file: str | None, text_column: str | None, pair_column: str | None,
                  cfg_data: DataConfig, size: int = 256) -> Iterator[tuple[list[str], list[str] | None]]:
    """(texts, text pairs or None) to classify, in batches: the arguments, a table in any format fine-tuning reads
    or plain-text lines (one text per line), all in one batch; stdin ('-') in batches of at most `size` as its
    lines arrive (JSON Lines when the first starts with '{', else one text per line), so a stream is answered
    while it runs, in bounded memory."""
    if input_file == "-" and not texts:
        yield from _stdin_batches(text_column, pair_column, size)
        return
    if texts and input_file:
        raise DataError("Give texts as arguments or with --input-file, not both.")
    if texts:
        if pair_column:
            raise DataError("--text-pair-column needs a table given with --input-file (CSV, TSV, JSON Lines, ...).")
        yield list(texts), None
        return
    if input_file is None:
        raise DataError("No texts to classify. Give TEXT arguments, or --input-file FILE ('-' reads stdin).")
    yield _inputs_from_file(Path(input_file), input_file, text_column, pair_column, cfg_data)


def _stdin_batches(text_column: str | None, pair_column: str | None,
                   size: int) -> Iterator[tuple[list[str], list[str] | None]]:
    from llmkit import inference

    json_lines: bool | None = None  # decided by the first line: JSON Lines when it starts with '{'
    columns: tuple[str, str | None] | None = None  # JSON Lines: (text, pair) picked from the first record
    read = 0
    for lines in inference.line_batches(sys.stdin.buffer.fileno(), "stdin", size):
        if not lines:
            continue
        if json_lines is None:
            json_lines = lines[0].lstrip().startswith("{")
            if not json_lines and (text_column or pair_column):
                raise DataError("--text-column/--text-pair-column need JSON Lines on stdin; it is read as plain "
                                "text, one text per line.")
        if not json_lines:
            yield [" ".join(line.split()) for line in lines], None
        else:
            records = [json_object(line, "stdin", read + i) for i, line in enumerate(lines, 1)]
            if columns is None:
                columns = _json_columns(records[0], text_column, pair_column)
            text, pair = columns
            texts = [_json_text(r, text, read + i) for i, r in enumerate(records, 1)]
            yield texts, [_json_text(r, pair, read + i) for i, r in enumerate(records, 1)] if pair else None
        read += len(lines)
    if read == 0:
        raise DataError("'stdin' has no text. Give one text per line, or JSON Lines.")


def _json_columns(first: dict[str, Any], text_column: str | None, pair_column: str | None) -> tuple[str, str | None]:
    strings = [k for k, v in first.items() if isinstance(v, str)]
    text, pair, _ = pick_text_columns(list(first), text_column, pair_column, "stdin", strings)
    return text, pair


def _json_text(record: dict[str, Any], column: str, number: int) -> str:
    value = record.get(column)
    if not isinstance(value, str):
        found = type(value).__name__ if column in record else "no such field"
        raise DataError(f"Line {number} of stdin has no text in '{column}' (found {found}). Give every line that "
                        f"field, or pass --text-column with another one.")
    return value


def _inputs_from_file(path: Path, name: str, text_column: str | None, pair_column: str | None,
                      cfg_data: DataConfig) -> tuple[list[str], list[str] | None]:
    (file,) = expand_files([str(path)])
    if suffixes(file)[0] in TEXT_SUFFIXES:
        if text_column or pair_column:
            raise DataError(f"--text-column/--text-pair-column need a table (CSV, TSV, JSON Lines, JSON, parquet); "
                            f"'{name}' is read as plain text, one text per line.")
        lines = [" ".join(line.split()) for line in _read_text(file, name).splitlines() if line.strip()]
        if not lines:
            raise DataError(f"'{name}' has no text. Give one text per line.")
        return lines, None
    table = load_table(name, [file], cfg_data)
    strings = [c for c, f in table.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    text, pair, _ = pick_text_columns(table.column_names, text_column, pair_column, name, strings)
    columns = [(text, "--text-column")] + ([(pair, "--text-pair-column")] if pair else [])
    values = []
    for column, flag in columns:
        found = list(table[column])
        missing = [i for i, v in enumerate(found, 1) if not isinstance(v, str)]
        if missing:
            raise DataError(f"Column '{column}' of '{name}' has no text in {len(missing)} row(s) (first: row "
                            f"{missing[0]}). Fill them in or drop those rows, or pass {flag} with another column.")
        values.append(found)
    if not values[0]:
        raise DataError(f"'{name}' has no rows. Give a file with at least one text.")
    return values[0], values[1] if pair else None


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"'{name}' is not valid UTF-8 (byte offset {e.start}). Convert it to UTF-8.") from None


# ---------------------------------------------------------------- features


def features(tokenizer: Any, labeled: Labeled, targets: Sequence[Any], cfg_data: DataConfig) -> list[dict[str, Any]]:
    """One dict per example (input ids, attention mask, ..., labels), truncated to `max_seq_length`, not padded.

    The tokenized arrays are cached like pretraining features (keyed on texts, pairs, tokenizer and length).
    """
    def build() -> dict[str, np.ndarray]:
        encoded = tokenizer(labeled.texts, labeled.pairs, truncation=True, max_length=cfg_data.max_seq_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        arrays = {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)}
        for name, rows in encoded.items():
            arrays[name] = np.fromiter((v for row in rows for v in row), dtype=np.int64, count=sum(lengths))
        return arrays

    from llmkit.data.prepared import tokenizer_fingerprint

    key = {"kind": "classification", "texts": texts_fingerprint(labeled.texts),
           "pairs": texts_fingerprint(labeled.pairs) if labeled.pairs is not None else None,
           "tok": tokenizer_fingerprint(tokenizer), "len": cfg_data.max_seq_length}
    arrays = cached_arrays(key, cfg_data, build, log)
    offsets = arrays.pop("offsets")
    return [{**{name: column[offsets[i]:offsets[i + 1]].tolist() for name, column in arrays.items()},
             "labels": targets[i]} for i in range(len(labeled.texts))]

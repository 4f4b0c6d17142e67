"""Where documents come from: files, folders and `datasets` names, read as a stream in bounded chunks.

A corpus is planned as a list of `Unit`s, the pieces of work that tokenization runs in parallel (on every
core, and on every rank of a launched run). The plan is a function of the data alone (never of the number
of processes), so every process and every rerun sees the same units in the same order:

- a plain-text or JSON Lines file is cut into byte ranges of about `unit_bytes` at document boundaries,
  so one large file is read by many processes at once;
- a parquet file is cut into runs of row groups; a `datasets` table into row ranges; a streamed
  `datasets` source (`data.streaming=true`) into its shards (usually its files);
- a compressed file (.gz, .bz2, .xz, .zst), a CSV/TSV file and a JSON array file are one unit each
  (they cannot be entered in the middle).

`documents(unit, ...)` yields a unit's documents one at a time, reading at most a few MB at once.
Documents of a text file are its blank-line-separated paragraphs when it has blank lines (in its first MB),
else its lines (`data.txt_unit` forces either); white space inside a document is folded to single spaces.
Planning reads little (that first MB, a few KB around each cut, 1 MB of samples for the fingerprint), so a
rerun on prepared data does not read the corpus again.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from llmkit import hf_compat
from llmkit.errors import DataError, did_you_mean

TEXT_SUFFIXES = {".txt", ".text", ".md"}
# suffix -> (`datasets` builder, its arguments): the one map from a table file to the loader that reads it
TABLE_LOADERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".jsonl": ("json", {}), ".json": ("json", {}), ".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}),
    ".parquet": ("parquet", {})}
TABLE_SUFFIXES = set(TABLE_LOADERS)
COMPRESSIONS = {".gz", ".bz2", ".xz", ".zst"}
TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "document", "review", "body", "sentence1", "question")
SNIFF_BYTES = 1 << 20  # a text file's document rule is decided from its first MB
CHUNK_BYTES = 4 << 20  # read at most this much at a time
BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
MIN_UNIT_BYTES, MAX_UNIT_BYTES, UNITS_WANTED = 1 << 20, 64 << 20, 64


@dataclass(frozen=True)
class Unit:
    """One piece of a corpus: a byte range, row groups, rows or a stream shard of one source."""

    source: str  # a file path or a `datasets` name
    kind: str  # txt | jsonl | json | csv | tsv | parquet | table (a `datasets` table) | stream
    start: int = 0  # first byte / row group / row / shard
    stop: int = -1  # end (exclusive); -1: to the end
    size: int = 0  # bytes it covers (estimated for tables and streams): progress and balance between ranks
    compression: str | None = None
    rule: str | None = None  # txt: "paragraph" or "line"
    column: str | None = None  # tables: the text column
    options: tuple[tuple[str, Any], ...] = ()  # `datasets` sources: (config name, split, streaming, ...)


@dataclass
class Plan:
    """The units of a corpus, what they were planned from, and a fingerprint that changes with the data."""

    units: list[Unit]
    description: str
    fingerprint: str
    total_bytes: int
    notes: list[str] = field(default_factory=list)  # decisions worth telling the user (document rules, columns)


# ---------------------------------------------------------------- files


def suffixes(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression suffix or None): `a.jsonl.gz` -> ('.jsonl', '.gz')."""
    parts = [s.lower() for s in path.suffixes[-2:]]
    if parts and parts[-1] in COMPRESSIONS:
        return (parts[-2] if len(parts) == 2 else ""), parts[-1]
    return (parts[-1] if parts else ""), None


def is_data_file(path: Path) -> bool:
    fmt, compression = suffixes(path)
    return fmt in TEXT_SUFFIXES or fmt in TABLE_SUFFIXES and not (fmt == ".parquet" and compression)


def is_local(source: str) -> bool:
    """A path on this machine (existing, or written like a path), as opposed to a `datasets` name."""
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")):
        return True
    fmt, _ = suffixes(path)
    if fmt in TEXT_SUFFIXES | TABLE_SUFFIXES:
        return True
    parts = source.split("/")
    return os.sep in source and not (len(parts) == 2 and all(parts))  # org/name is a hub name


def files_in(folder: Path, keep: Callable[[Path], bool]) -> list[Path]:
    """The files below `folder` (recursively, sorted) that `keep` accepts, hidden files and folders left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and keep(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def expand_files(sources: Sequence[str]) -> list[Path]:
    """Files named directly, or found (recursively, sorted) in folders; each checked to exist and be readable."""
    expected = "Expected .txt, .jsonl, .json, .csv, .tsv or .parquet files (text and JSON may be .gz/.bz2/.xz/.zst)"
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found = files_in(path, is_data_file)
            if not found:
                raise DataError(f"Folder '{source}' has no data files. {expected} in it.")
            files.extend(found)
        elif path.is_file():
            if not is_data_file(path):
                raise DataError(f"Data file '{source}' has an unsupported type '{''.join(path.suffixes[-2:])}'. "
                                f"{expected}.")
            files.append(path)
        elif path.exists():
            raise DataError(f"Data path '{source}' is neither a file nor a folder.")
        else:
            raise DataError(f"Data file '{source}' does not exist. Check the path (relative paths start from "
                            f"{Path.cwd()}).")
    for f in files:
        if not os.access(f, os.R_OK):
            raise DataError(f"Data file '{f}' is not readable (permission denied). Fix its permissions.")
        if f.stat().st_size == 0:
            raise DataError(f"Data file '{f}' is empty. Give a file with at least one text.")
    return files


def open_binary(path: Path, compression: str | None) -> IO[bytes]:
    """A file's bytes, decompressed as its suffix says (.zst needs the `zstandard` package, as for `datasets`)."""
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"'{path}' is zstd-compressed, which needs the zstandard package: pip install "
                            f"zstandard (or decompress it).") from None
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def file_fingerprint(path: Path) -> str:
    """Changes when the file does: its size, modification time and 16 windows of its content.

    Reading samples instead of the whole file keeps a rerun on a terabyte corpus from re-reading it.
    """
    stat = path.stat()
    h = hashlib.blake2b(f"{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=16)
    with open(path, "rb") as f:
        for k in range(16):
            f.seek(stat.st_size * k // 16)
            h.update(f.read(65536))
    return h.hexdigest()


# ---------------------------------------------------------------- planning


def plan(sources: Sequence[str], cfg_data: Any, split: str | None = None) -> Plan:
    """The units of all `sources` (files, folders or `datasets` names), with their rules and text columns."""
    local = [s for s in sources if is_local(s)]
    files = expand_files(local) if local else []
    if cfg_data.streaming:
        entries = [_plan_stream(str(f), cfg_data, split, f) for f in files]
        entries += [_plan_stream(s, cfg_data, split) for s in sources if s not in local]
    else:
        total = sum(f.stat().st_size for f in files)
        unit_bytes = min(MAX_UNIT_BYTES, max(MIN_UNIT_BYTES, total // UNITS_WANTED))
        entries = [_plan_file(f, cfg_data, unit_bytes) for f in files]
        entries += [_plan_table(s, cfg_data, split) for s in sources if s not in local]
    units = [u for units, _, _ in entries for u in units]
    notes = [note for _, note, _ in entries if note]
    digest = hashlib.sha256(json.dumps([key for _, _, key in entries]).encode())
    described = ([", ".join(map(str, files))] if len(files) <= 3 else [f"{len(files)} files ({files[0]}, ...)"]) \
        if files else []
    described += [f"datasets:{s}" for s in sources if s not in local]
    return Plan(units, ", ".join(described), digest.hexdigest()[:24], sum(u.size for u in units), notes)


def _plan_file(path: Path, cfg_data: Any, unit_bytes: int) -> tuple[list[Unit], str | None, Any]:
    fmt, compression = suffixes(path)
    size = path.stat().st_size
    note = None
    rule = column = None
    if fmt in TEXT_SUFFIXES:
        kind = "txt"
        rule = cfg_data.txt_unit
        if rule == "auto":
            rule = "paragraph" if _has_blank_line(path, compression) else "line"
            note = f"{path}: one document per {rule}" + ("" if rule == "paragraph" else " (it has no blank lines)")
    elif fmt == ".parquet":
        kind, column = "parquet", _parquet_column(path, cfg_data.text_column)
    else:
        kind = fmt[1:]
        if kind == "json" and _json_is_lines(path, compression):
            kind = "jsonl"
        column = _table_column(path, kind, compression, cfg_data.text_column)
    key = [str(kind), rule, column, file_fingerprint(path)]
    base = Unit(str(path), kind, size=size, compression=compression, rule=rule, column=column)
    if kind == "parquet":
        return _parquet_units(path, base, unit_bytes), note, key
    if kind in ("txt", "jsonl") and compression is None and size > unit_bytes:
        cuts = _cuts(path, size, unit_bytes, rule == "paragraph")
        return [Unit(str(path), kind, a, b, b - a, None, rule, column) for a, b in zip(cuts, cuts[1:])], note, key
    return [base], note, key


def _has_blank_line(path: Path, compression: str | None) -> bool:
    with open_binary(path, compression) as f:
        head = f.read(SNIFF_BYTES)
    return BLANK_LINE.search(head.replace(b"\r\n", b"\n").decode("utf-8", "replace")) is not None


def _cuts(path: Path, size: int, unit_bytes: int, paragraphs: bool) -> list[int]:
    """Byte offsets that cut a file into ranges of about `unit_bytes`, each at a document boundary."""
    cuts = [0]
    with open(path, "rb") as f:
        for nominal in range(unit_bytes, size, unit_bytes):
            if nominal <= cuts[-1]:
                continue
            cut = _next_boundary(f, nominal, size, paragraphs)
            if cut < size:
                cuts.append(cut)
    return cuts + [size]


def _next_boundary(f: IO[bytes], position: int, size: int, paragraphs: bool) -> int:
    """The first document start at or after `position`: after a newline (lines) or a blank line (paragraphs)."""
    pattern = re.compile(rb"\n[ \t\r\f\v]*\n") if paragraphs else re.compile(rb"\n")
    f.seek(max(0, position - 1))
    window_start, carry, size_ = max(0, position - 1), b"", 4096
    while True:
        block = f.read(size_)
        size_ = min(2 * size_, 1 << 20)
        if not block:
            return size
        text = carry + block
        match = pattern.search(text)
        if match:
            return window_start - len(carry) + match.end()
        carry = text[-256:]  # a blank line may straddle two reads
        window_start += len(block)


def _json_is_lines(path: Path, compression: str | None) -> bool:
    """A .json file holding one object per line is read as JSON Lines (`datasets` does the same)."""
    with open_binary(path, compression) as f:
        head = f.read(1 << 16).lstrip()
    if head.startswith(b"["):
        return False
    first = head.split(b"\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _table_column(path: Path, kind: str, compression: str | None, wanted: str | None) -> str:
    """The text column of a JSON / CSV file, from its first record: the given one, or the usual names."""
    with open_binary(path, compression) as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        if kind in ("csv", "tsv"):
            header = next(csv.reader(stream, delimiter="\t" if kind == "tsv" else ","), [])
            row = next(csv.reader(stream, delimiter="\t" if kind == "tsv" else ","), [])
            record = dict(zip(header, row))
            strings = [c for c, v in record.items() if not is_number(v)]
        elif kind == "jsonl":
            record = next((json_object(line, path, n) for n, line in enumerate(stream, 1) if line.strip()), {})
            strings = [c for c, v in record.items() if isinstance(v, str)]
        else:
            record, strings = _json_array_head(path, compression)
    return pick_column(list(record), wanted, guesses(strings), "text", str(path), "--text-column")


def _json_array_head(path: Path, compression: str | None) -> tuple[dict[str, Any], list[str]]:
    rows = read_json_array(path, compression)
    record = rows[0] if rows else {}
    return record, [c for c, v in record.items() if isinstance(v, str)]


def read_json_array(path: Path, compression: str | None) -> list[dict[str, Any]]:
    """A JSON file holding a list of objects (read whole: use JSON Lines for large data)."""
    with open_binary(path, compression) as f:
        try:
            rows = json.loads(f.read().decode("utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"Cannot read '{path}' as JSON: {str(e).splitlines()[0][:200]}. Check the file's "
                            f"format.") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"'{path}' must hold a JSON list of objects (or one object per line), e.g. "
                        f"[{{\"text\": \"...\"}}].")
    return rows


def json_object(line: str, path: Any, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise DataError(f"Line {number} of '{path}' is not valid JSON ({str(e).splitlines()[0][:100]}). Give one "
                        f"JSON object per line.") from None
    if not isinstance(record, dict):
        raise DataError(f"Line {number} of '{path}' is not a JSON object. Give one object per line, e.g. "
                        f"{{\"text\": \"...\"}}.")
    return record


def is_number(value: str) -> bool:
    """Whether `value` parses as a float (numeric-looking columns and labels)."""
    try:
        float(value)
        return True
    except ValueError:
        return False


def guesses(string_columns: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """Column names to try for the text: the usual ones (and `extra`), then the only string column if there is one."""
    return [*TEXT_COLUMN_GUESSES, *extra] + (list(string_columns[:1]) if len(string_columns) == 1 else [])


def pick_column(columns: Sequence[str], wanted: str | None, candidates: Iterable[str], what: str, source: str,
                flag: str) -> str:
    """`wanted` if it is a column (else a "did you mean" error), or the first candidate that is one."""
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"Column '{wanted}' not found in '{source}'.{did_you_mean(wanted, columns)} "
                            f"Columns are: {', '.join(columns)}. Pass {flag} with one of them.")
        return wanted
    for guess in candidates:
        if guess in columns:
            return guess
    raise DataError(f"Cannot tell which column of '{source}' holds the {what} (columns: {', '.join(columns)}). "
                    f"Pass {flag} COLUMN.")


def _parquet_column(path: Path, wanted: str | None) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"Cannot read '{path}' as parquet: {str(e).splitlines()[0][:200]}. Check the file.") from None
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    return pick_column(schema.names, wanted, guesses(strings), "text", str(path), "--text-column")


def _parquet_units(path: Path, base: Unit, unit_bytes: int) -> list[Unit]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    units, start, size = [], 0, 0
    for group in range(meta.num_row_groups):
        size += meta.row_group(group).total_byte_size
        if size >= unit_bytes or group == meta.num_row_groups - 1:
            units.append(Unit(base.source, "parquet", start, group + 1, size, None, None, base.column))
            start, size = group + 1, 0
    return units or [base]


def _plan_table(name: str, cfg_data: Any, split: str | None) -> tuple[list[Unit], str | None, Any]:
    """A `datasets` name, downloaded and converted to memory-mapped Arrow by `datasets`, cut into row ranges."""
    table = load_table(name, cfg_data.dataset_config, split or cfg_data.train_split)
    strings = [c for c, f in table.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    column = pick_column(table.column_names, cfg_data.text_column, guesses(strings), "text", name, "--text-column")
    rows, nbytes = len(table), max(1, table.data.nbytes)
    per_unit = max(1, rows * MAX_UNIT_BYTES // nbytes)
    options = (("config", cfg_data.dataset_config), ("split", split or cfg_data.train_split))
    units = [Unit(name, "table", a, min(a + per_unit, rows), nbytes * (min(a + per_unit, rows) - a) // max(rows, 1),
                  column=column, options=options) for a in range(0, rows, per_unit)]
    return units, None, [name, options, column, hf_compat.fingerprint(table)]


def _plan_stream(name: str, cfg_data: Any, split: str | None, path: Path | None = None) -> tuple[
        list[Unit], str | None, Any]:
    """A source streamed by `datasets` (`data.streaming=true`): nothing is downloaded or converted first."""
    options = (("config", cfg_data.dataset_config), ("split", split or cfg_data.train_split), ("streaming", True),
               ("rule", cfg_data.txt_unit))
    stream = open_stream(name, dict(options))
    features = stream.features or {}
    columns = list(features) or list(next(iter(stream), {}))
    strings = [c for c, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    column = pick_column(columns, cfg_data.text_column, guesses(strings or columns), "text", name, "--text-column")
    size = path.stat().st_size if path is not None else 0
    shards = stream.num_shards
    units = [Unit(name, "stream", k, k + 1, size // shards, column=column, options=options) for k in range(shards)]
    key = [name, options, column, file_fingerprint(path) if path is not None else None]
    return units, f"{name}: streamed by datasets in {shards} shard(s)", key


def load_table(name: str, config_name: str | None, split: str) -> Any:
    """A `datasets` name as a (memory-mapped) `datasets.Dataset`; failures become one clear line."""
    import datasets

    try:
        return datasets.load_dataset(name, config_name, split=split)
    except Exception as e:  # noqa: BLE001 - any failure here means "this is not a loadable dataset"
        raise _load_error(name, e) from None


def open_stream(source: str, options: dict[str, Any]) -> Any:
    """A `datasets.IterableDataset` over a `datasets` name or a local file (text rule kept for .txt)."""
    import datasets

    path = Path(source)
    try:
        if path.is_file():
            fmt, _ = suffixes(path)
            builder, given = TABLE_LOADERS.get(fmt, (fmt.lstrip("."), {}))
            kwargs = dict(given)
            if fmt in TEXT_SUFFIXES:
                builder = "text"
                rule = options.get("rule")
                if rule == "auto":
                    rule = "paragraph" if _has_blank_line(path, suffixes(path)[1]) else "line"
                kwargs["sample_by"] = rule
            return datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True, **kwargs)
        return datasets.load_dataset(source, options.get("config"), split=options.get("split"), streaming=True)
    except Exception as e:  # noqa: BLE001
        raise _load_error(source, e) from None


def _load_error(name: str, error: Exception) -> DataError:
    cause = error.__cause__ or error
    message = (str(cause).splitlines() or [type(cause).__name__])[0]
    return DataError(f"'{name}' is not a local file or folder, and loading it as a `datasets` name failed: "
                     f"{message[:300]}. Check the path, or the dataset name and your network.")


# ---------------------------------------------------------------- reading


def documents(unit: Unit, errors: str = "strict", skipped: list[int] | None = None) -> Iterator[str]:
    """The documents of a unit, in order, white space folded, empty ones dropped.

    `skipped`, if given, gets one count per value that is not a text (None, numbers, ...) in a table.
    """
    if unit.kind == "txt":
        for text in _text_documents(unit, errors):
            folded = " ".join(text.split())
            if folded:
                yield folded
        return
    for value in _table_values(unit, errors):
        if isinstance(value, str):
            folded = " ".join(value.split())
            if folded:
                yield folded
        elif skipped is not None:
            skipped[0] += 1


def _regions(unit: Unit, errors: str) -> Iterator[str]:
    """Decoded text of the unit in pieces that end at line boundaries (the last piece may end anywhere)."""
    with open_binary(Path(unit.source), unit.compression) as f:
        if unit.start:
            f.seek(unit.start)
        remaining = (unit.stop - unit.start) if unit.stop >= 0 else -1
        offset, carry = unit.start, b""
        while remaining != 0:
            block = f.read(CHUNK_BYTES if remaining < 0 else min(CHUNK_BYTES, remaining))
            if not block:
                break
            remaining = remaining - len(block) if remaining > 0 else remaining
            data = carry + block
            cut = data.rfind(b"\n") + 1 if remaining != 0 else len(data)
            if cut == 0:  # no line end yet: keep reading
                carry = data
                continue
            region, carry = data[:cut], data[cut:]
            yield _decode(region, offset, unit.source, errors)
            offset += len(region)
        if carry:
            yield _decode(carry, offset, unit.source, errors)


def _decode(raw: bytes, offset: int, source: str, errors: str) -> str:
    if offset == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw, offset = raw[3:], 3
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        at = offset + e.start
        raise DataError(f"'{source}' is not valid UTF-8 (byte offset {at}: {raw[e.start:e.start + 4]!r}). Convert it "
                        f"to UTF-8, or pass --set data.encoding_errors=replace.") from None


def _text_documents(unit: Unit, errors: str) -> Iterator[str]:
    if unit.rule == "line":
        for region in _regions(unit, errors):
            yield from region.split("\n")
        return
    carry = ""
    for region in _regions(unit, errors):
        parts = BLANK_LINE.split(carry + region.replace("\r\n", "\n"))
        carry = parts.pop()  # may continue in the next region
        yield from parts
    yield carry


def _table_values(unit: Unit, errors: str) -> Iterator[Any]:
    column = unit.column
    if unit.kind == "jsonl":
        number = 0
        for region in _regions(unit, errors):
            for line in region.split("\n"):
                number += 1
                if line.strip():
                    yield json_object(line, unit.source, number).get(column)
    elif unit.kind == "json":
        yield from (row.get(column) for row in read_json_array(Path(unit.source), unit.compression))
    elif unit.kind in ("csv", "tsv"):
        yield from _csv_values(unit, errors)
    elif unit.kind == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(unit.source)
        for batch in parquet.iter_batches(row_groups=range(unit.start, unit.stop), columns=[column], batch_size=8192):
            yield from batch.column(0).to_pylist()
    elif unit.kind == "table":
        options = dict(unit.options)
        table = load_table(unit.source, options["config"], options["split"]).select_columns([column])
        for start in range(unit.start, unit.stop, 8192):
            yield from table[start:min(start + 8192, unit.stop)][column]
    elif unit.kind == "stream":
        stream = open_stream(unit.source, dict(unit.options))
        for example in stream.shard(num_shards=stream.num_shards, index=unit.start):
            yield example.get(column)


def _csv_values(unit: Unit, errors: str) -> Iterator[Any]:
    csv.field_size_limit(1 << 30)
    with open_binary(Path(unit.source), unit.compression) as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")
        reader = csv.DictReader(stream, delimiter="\t" if unit.kind == "tsv" else ",")
        try:
            for row in reader:
                yield row.get(unit.column)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"Cannot read '{unit.source}' as {unit.kind.upper()} (line {reader.line_num}): "
                            f"{str(e)[:200]}. Check the file's format.") from None

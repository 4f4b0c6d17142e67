"""Data: load texts and tables, validate them, tokenize, pack, cache.

Loading returns a `datasets.Dataset`; tokenized pretraining features are a flat token array plus
block offsets (`Blocks`), cached on disk under a key that covers the texts, the tokenizer and the
block plan, so a changed tokenizer or max length never reuses old features.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmkit.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import datasets

TEXT_SUFFIXES = {".txt", ".text", ".md"}
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "document", "review", "body", "sentence1", "question")
FEATURES_VERSION = 2  # bump when the layout of cached features changes


# ---------------------------------------------------------------- the built-in sample corpus


def builtin_corpus(cache_dir: Path | None = None) -> list[str]:
    """Docstrings of the Python standard library: real English prose present on every machine.

    Read with `ast` from the source files (nothing is imported or executed), one document per
    docstring paragraph, in a fixed order so every machine with the same Python gets the same corpus.
    About 1.5 MB of text; built once (a few seconds) and cached.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    cached = (cache_dir or cache_root(None)) / f"corpus-stdlib-{sys.version_info[0]}.{sys.version_info[1]}.jsonl"
    if cached.is_file():
        return [json.loads(line) for line in cached.read_text(encoding="utf-8").splitlines()]
    docs: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3", "turtledemo") or "tests" in rel:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docs.extend(_paragraphs(doc, min_words=6))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        os.replace(tmp, cached)
    except OSError:
        pass  # no writable cache: rebuild next time
    return docs


def _paragraphs(text: str, min_words: int = 1) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        para = " ".join(block.split())
        if para and len(para.split()) >= min_words:
            out.append(para)
    return out


# ---------------------------------------------------------------- loading


def is_local(source: str) -> bool:
    path = Path(source)
    return path.exists() or path.suffix.lower() in TEXT_SUFFIXES | set(TABLE_BUILDERS) or source.startswith(
        (".", "/", "~")) or os.sep in source and not _looks_like_hub_name(source)


def _looks_like_hub_name(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not Path(source).exists()


def expand_files(sources: Sequence[str]) -> list[Path]:
    """Files named directly, or found (recursively, sorted) in folders; validated for existence."""
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in TEXT_SUFFIXES | set(TABLE_BUILDERS)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"Folder '{source}' has no data files. Expected .txt, .jsonl, .json, .csv, .tsv "
                                f"or .parquet files in it.")
            files.extend(found)
        elif path.is_file():
            if _suffix(path) not in TEXT_SUFFIXES | set(TABLE_BUILDERS):
                raise DataError(f"Data file '{source}' has an unsupported type '{path.suffix}'. Expected .txt, "
                                f".jsonl, .json, .csv, .tsv or .parquet.")
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


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_text_file(path: Path, unit: str = "paragraph", errors: str = "strict") -> list[str]:
    """Documents of a plain-text file: one per blank-line-separated paragraph, or one per line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(f"'{path}' is not valid UTF-8 (byte offset {e.start}: {raw[e.start:e.start + 4]!r}). "
                        f"Convert it to UTF-8, or pass --set data.encoding_errors=replace.") from None
    text = text.replace("\r\n", "\n")
    if unit == "line":
        return [" ".join(line.split()) for line in text.split("\n") if line.strip()]
    return _paragraphs(text)


def load_table(source: str, files: list[Path] | None, cfg_data: Any, split: str | None = None) -> "datasets.Dataset":
    """A table from local files (all of one format) or from a `datasets` name."""
    import datasets

    if files is None:  # a `datasets` name
        try:
            return datasets.load_dataset(source, cfg_data.dataset_config, split=split or cfg_data.train_split)
        except Exception as e:  # noqa: BLE001 - any failure here means "this is not a loadable dataset"
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"'{source}' is not a local file or folder, and loading it as a `datasets` name "
                            f"failed: {msg[:300]}. Check the path, or the dataset name and your network.") from None
    suffixes = {_suffix(f) for f in files}
    if len(suffixes) > 1:
        raise DataError(f"Data files of '{source}' mix formats ({', '.join(sorted(suffixes))}). Give files of one format.")
    suffix = suffixes.pop()
    builder = TABLE_BUILDERS[suffix]
    kwargs: dict[str, Any] = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as e:  # noqa: BLE001 - parsers raise many kinds; all mean "malformed file"
        cause = e.__cause__ or e
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise DataError(f"Cannot read '{source}' as {suffix[1:].upper()}: {msg[:300]}. Check the file's format.") from None


def pick_column(columns: Sequence[str], wanted: str | None, guesses: Iterable[str], what: str, source: str,
                flag: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"Column '{wanted}' not found in '{source}'.{did_you_mean(wanted, columns)} "
                            f"Columns are: {', '.join(columns)}. Pass {flag} with one of them.")
        return wanted
    for guess in guesses:
        if guess in columns:
            return guess
    raise DataError(f"Cannot tell which column of '{source}' holds the {what} (columns: {', '.join(columns)}). "
                    f"Pass {flag} COLUMN.")


def load_texts(sources: Sequence[str], cfg_data: Any, split: str | None = None) -> tuple[list[str], str]:
    """All documents of the given sources as a list of strings, plus a short description of where from."""
    texts: list[str] = []
    described = []
    local = [s for s in sources if is_local(s)]
    files = expand_files(local) if local else []
    txt_files = [f for f in files if _suffix(f) in TEXT_SUFFIXES]
    for f in txt_files:
        texts.extend(read_text_file(f, cfg_data.txt_unit, cfg_data.encoding_errors))
    if txt_files:
        described.append(f"{len(txt_files)} text file(s)")
    table_files = [f for f in files if _suffix(f) not in TEXT_SUFFIXES]
    by_suffix: dict[str, list[Path]] = {}
    for f in table_files:
        by_suffix.setdefault(TABLE_BUILDERS[_suffix(f)] + ("tsv" if _suffix(f) == ".tsv" else ""), []).append(f)
    for group in by_suffix.values():
        name = str(group[0]) if len(group) == 1 else f"{group[0].parent} ({len(group)} files)"
        texts.extend(_table_texts(load_table(name, group, cfg_data), name, cfg_data))
        described.append(name)
    for source in sources:
        if source not in local:
            texts.extend(_table_texts(load_table(source, None, cfg_data, split), source, cfg_data))
            described.append(f"datasets:{source}")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError(f"No text found in {', '.join(sources)} (after dropping empty texts). Give data with at "
                        f"least one non-empty text.")
    return texts, ", ".join(described)


def _table_texts(table: "datasets.Dataset", source: str, cfg_data: Any) -> list[str]:
    column = cfg_data.text_column
    if column is None:
        string_columns = [c for c, f in table.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        guesses = list(TEXT_COLUMN_GUESSES) + (string_columns[:1] if len(string_columns) == 1 else [])
        column = pick_column(table.column_names, None, guesses, "text", source, "--text-column")
    else:
        column = pick_column(table.column_names, column, (), "text", source, "--text-column")
    return [t for t in table[column] if isinstance(t, str)]


# ---------------------------------------------------------------- splitting


def split_eval(texts: list[str], fraction: float, seed: int, max_docs: int | None = None) -> tuple[list[str], list[str]]:
    """Seeded document-level held-out split (documents never straddle train and eval)."""
    if len(texts) < 2:
        raise DataError(f"Need at least 2 texts to hold some out for evaluation, found {len(texts)}. Add data or "
                        f"pass --eval-data.")
    order = np.random.default_rng(seed).permutation(len(texts))
    n_eval = max(1, int(round(len(texts) * fraction)))
    if max_docs is not None:
        n_eval = min(n_eval, max_docs)
    n_eval = min(n_eval, len(texts) - 1)
    eval_idx = set(order[:n_eval].tolist())
    train = [t for i, t in enumerate(texts) if i not in eval_idx]
    held = [texts[i] for i in sorted(eval_idx)]
    return train, held


# ---------------------------------------------------------------- tokenization and packing


class Blocks:
    """Token blocks stored as one flat array plus offsets: cheap to cache, cheap to index."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, special_ids: Sequence[int],
                 char_offsets: np.ndarray | None = None):
        self.ids, self.offsets, self.char_offsets = ids, offsets, char_offsets
        self.special = np.zeros(int(ids.max(initial=0)) + 1, dtype=bool)
        self.special[[i for i in special_ids if i < len(self.special)]] = True

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        ids = self.ids[lo:hi]
        item = {"input_ids": ids.tolist(), "special_tokens_mask": self.special[ids].astype(np.int64).tolist(),
                "index": i}  # keys the batch's masks (training.SeededMasking)
        if self.char_offsets is not None:
            item["offset_mapping"] = self.char_offsets[lo:hi].tolist()
        return item

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def select(self, n: int) -> "Blocks":
        n = min(n, len(self))
        sub = Blocks.__new__(Blocks)
        sub.ids, sub.offsets, sub.special = self.ids[: self.offsets[n]], self.offsets[: n + 1], self.special
        sub.char_offsets = None if self.char_offsets is None else self.char_offsets[: self.offsets[n]]
        return sub


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    else:  # without the truncation/padding state, which a tokenizer call leaves behind
        payload = json.dumps({k: v for k, v in json.loads(backend.to_str()).items()
                              if k not in ("truncation", "padding")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def texts_fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def cache_root(cfg_data: Any | None) -> Path:
    if cfg_data is not None and cfg_data.cache_dir:
        return Path(cfg_data.cache_dir)
    base = os.environ.get("LLMKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "llmkit")
    return Path(base).expanduser()


def encode(tokenizer: Any, texts: Sequence[str], max_length: int | None, with_offsets: bool = False):
    """Token ids (and character offsets) of each text with special tokens, using the Rust batch encoder.

    `max_length`: truncate each text to it; None: keep whole texts (they are packed afterwards).
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a private copy: settings below stay local
    backend.no_padding()
    if max_length is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(max_length)
    ids: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    for start in range(0, len(texts), 8192):
        for enc in backend.encode_batch(list(texts[start:start + 8192]), add_special_tokens=True):
            ids.append(np.asarray(enc.ids, dtype=np.int32))
            if with_offsets:
                offsets.append(np.asarray(enc.offsets, dtype=np.int32).reshape(-1, 2))
    return ids, (offsets if with_offsets else None)


def build_blocks(tokenizer: Any, texts: Sequence[str], max_seq_length: int, packing: bool,
                 with_offsets: bool = False) -> Blocks:
    """Tokenize texts; packing: concatenate all tokens in order and cut into `max_seq_length` blocks
    (the last one may be shorter: no token is dropped); otherwise one truncated block per text."""
    ids, offs = encode(tokenizer, texts, None if packing else max_seq_length, with_offsets)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    char_offsets = np.concatenate(offs) if with_offsets and offs else None
    if packing:
        total = len(flat)
        offsets = np.append(np.arange(0, total, max_seq_length, dtype=np.int64), total)
    else:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Blocks(flat, offsets, tokenizer.all_special_ids, char_offsets)


def cached_arrays(key: dict[str, Any], cfg_data: Any, build: Callable[[], dict[str, np.ndarray]],
                  log=None) -> dict[str, np.ndarray]:
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
        print(f"llmkit: could not write the feature cache ({e}); continuing without it", file=sys.stderr)
    return arrays


def cached_blocks(tokenizer: Any, texts: Sequence[str], cfg_data: Any, with_offsets: bool, log=None) -> Blocks:
    """`build_blocks`, cached on disk by (texts, tokenizer, max length, packing, offsets)."""
    def build() -> dict[str, np.ndarray]:
        blocks = build_blocks(tokenizer, texts, cfg_data.max_seq_length, cfg_data.packing, with_offsets)
        arrays = {"ids": blocks.ids, "offsets": blocks.offsets}
        if with_offsets:
            arrays["chars"] = blocks.char_offsets
        return arrays

    key = {"kind": "blocks", "texts": texts_fingerprint(texts), "tok": tokenizer_fingerprint(tokenizer),
           "len": cfg_data.max_seq_length, "pack": cfg_data.packing, "offsets": with_offsets}
    arrays = cached_arrays(key, cfg_data, build, log)
    return Blocks(arrays["ids"], arrays["offsets"], tokenizer.all_special_ids, arrays.get("chars"))

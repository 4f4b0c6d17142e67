"""Prepared data: a corpus tokenized once into memory-mapped token shards, plus a small manifest.

    PREPARED_DIR/
      manifest.json         what was prepared from what: sources, tokenizer, dtype, documents, tokens, shards
      tokenizer/            the tokenizer the tokens belong to
      train/NNNNNN.tokens   one unit's training documents: token ids, concatenated, in the smallest dtype
      train/NNNNNN.docs.npy where each document starts and ends in that file (int64, documents + 1)
      eval/...              the held-out documents, the same way
      units/NNNNNN.json     a unit is done (written last): its counts. A rerun skips done units.

Each unit of the plan (`sources.plan`) becomes one shard per split, written by whichever process took it,
so preparation uses every core (`data.num_proc` worker processes) and every rank of a launched run; an
interrupted preparation continues where it stopped. Documents are held out for evaluation by a seeded hash
of their text (`held_out`): the same decision on every rank and in any order, with no list of documents.
Tokens are stored as uint16 when the vocabulary has at most 65,536 entries, else uint32; blocks are cut at
read time (`blocks.TokenBlocks`), so one prepared corpus serves any block length, packed or not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.console import clock
from llmkit.data.sources import Plan, Unit, documents
from llmkit.data.tokenize import ChunkMismatch, Encoder, TokenizerFiles
from llmkit.errors import DataError

FORMAT, VERSION = "llmkit-prepared", 1
MANIFEST, SETTINGS = "manifest.json", "prepare.json"
SPLITS = ("train", "eval")
BATCH_CHARS = 1 << 20  # documents tokenized per call: about 1 MB of text


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def is_prepared(path: str | Path) -> bool:
    return (Path(path).expanduser() / MANIFEST).is_file()


def held_out(text: str, fraction: float, seed: int) -> bool:
    """Whether a document belongs to the held-out split: a seeded hash of its text, below `fraction`.

    Decided per document from its text alone, so it streams, agrees on every rank, and puts identical
    documents on the same side.
    """
    return fraction > 0.0 and split_hash(text, seed) < fraction * 2.0 ** 64


def split_hash(text: str, seed: int) -> int:
    """A 64-bit keyed hash of a document's text (BLAKE2b keyed with the split seed)."""
    key = f"llmkit-split-{seed}".encode()
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest(),
                          "little")


@dataclass(frozen=True)
class Settings:
    """What a tokenizing process needs (picklable): the tokenizer, the split, where to write."""

    folder: str
    tokenizer_json: str
    dtype: str
    eval_fraction: float
    split_seed: int
    encoding_errors: str
    hold_one_out: bool  # a one-unit corpus always holds out at least one document (if it has two)

    def key(self) -> str:
        parts = {k: v for k, v in asdict(self).items() if k not in ("folder", "tokenizer_json")}
        parts["tokenizer"] = hashlib.sha256(self.tokenizer_json.encode()).hexdigest()[:16]
        return json.dumps(parts, sort_keys=True)


# ---------------------------------------------------------------- one unit (runs in a worker process)


class _ShardWriter:
    """Appends documents' tokens to one shard file; `close` moves it into place with its document index."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype):
        self.path, self.dtype = folder / f"{name}.tokens", dtype
        self.tmp = folder / f".{name}.tokens.tmp-{os.getpid()}"
        self.file = None
        self.lengths: list[int] = []

    def add(self, ids: list[np.ndarray]) -> None:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.tmp, "wb")
        self.file.write(np.concatenate(ids).astype(self.dtype, copy=False).tobytes())
        self.lengths.extend(len(x) for x in ids)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
            self.file = None

    def close(self) -> dict[str, int]:
        if self.file is None:
            return {"documents": 0, "tokens": 0}
        self.file.close()
        offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        docs_tmp = self.tmp.with_name(self.tmp.name + ".docs.npy")
        np.save(docs_tmp, offsets)
        os.replace(docs_tmp, self.path.with_name(self.path.name[:-len(".tokens")] + ".docs.npy"))
        os.replace(self.tmp, self.path)
        return {"documents": len(self.lengths), "tokens": int(offsets[-1])}


_ENCODERS: dict[str, Encoder] = {}


def _encoder(tokenizer_json: str, dtype: str) -> Encoder:
    """This process's encoder (built once per process and tokenizer), without truncation or padding."""
    if tokenizer_json not in _ENCODERS:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer_json)
        backend.no_truncation()
        backend.no_padding()
        _ENCODERS.clear()
        _ENCODERS[tokenizer_json] = Encoder(backend, tokenizer_json, dtype)
    return _ENCODERS[tokenizer_json]


def tokenize_unit(job: tuple[int, Unit, Settings]) -> dict[str, Any]:
    """Tokenize one unit into its train and eval shards; returns (and records) its counts."""
    index, unit, settings = job
    folder, name = Path(settings.folder), f"{index:06d}"
    encoder, dtype = _encoder(settings.tokenizer_json, settings.dtype), np.dtype(settings.dtype)
    try:
        counts, skipped = _tokenize(unit, folder, name, encoder, dtype, settings)
    except ChunkMismatch:  # the encoder now tokenizes whole documents: do the unit again that way
        counts, skipped = _tokenize(unit, folder, name, encoder, dtype, settings)
    meta = {"unit": index, "source": unit.source, "bytes": unit.size, "skipped": skipped, **counts}
    _write_json(folder / "units" / f"{name}.json", meta)
    return meta


def _tokenize(unit: Unit, folder: Path, name: str, encoder: Encoder, dtype: np.dtype,
              settings: Settings) -> tuple[dict[str, dict[str, int]], int]:
    writers = {split: _ShardWriter(folder / split, name, dtype) for split in SPLITS}
    skipped, batch, chars = [0], [], 0
    smallest: tuple[int, int] = (2 ** 64, -1)  # (hash, train document) kept out if nothing else is
    try:
        for text in documents(unit, settings.encoding_errors, skipped):
            batch.append(text)
            chars += len(text)
            if chars >= BATCH_CHARS:
                smallest = min(smallest, _encode(encoder, batch, writers, settings))
                batch, chars = [], 0
        if batch:
            smallest = min(smallest, _encode(encoder, batch, writers, settings))
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    counts = {split: writer.close() for split, writer in writers.items()}
    if settings.hold_one_out and settings.eval_fraction > 0 and not counts["eval"]["documents"] and \
            counts["train"]["documents"] >= 2:
        counts = _move_to_eval(folder, name, smallest[1], dtype)
    return counts, skipped[0]


def _encode(encoder: Encoder, texts: list[str], writers: dict[str, _ShardWriter], settings: Settings) -> tuple[int, int]:
    """Tokenize a batch of documents into the writers of their split; returns the smallest (hash, train index)."""
    parts: dict[str, list[np.ndarray]] = {"train": [], "eval": []}
    smallest, before = (2 ** 64, -1), len(writers["train"].lengths)
    for text, ids in zip(texts, encoder.encode(texts)):
        if settings.eval_fraction > 0:
            value = split_hash(text, settings.split_seed)
            if value < settings.eval_fraction * 2.0 ** 64:
                parts["eval"].append(ids)
                continue
            if settings.hold_one_out and value < smallest[0]:
                smallest = (value, before + len(parts["train"]))
        parts["train"].append(ids)
    for split, ids in parts.items():
        if ids:
            writers[split].add(ids)
    return smallest


def _move_to_eval(folder: Path, name: str, document: int, dtype: np.dtype) -> dict[str, dict[str, int]]:
    """Move one training document of a (small, one-unit) corpus to the held-out split."""
    tokens = np.fromfile(folder / "train" / f"{name}.tokens", dtype=dtype)
    offsets = np.load(folder / "train" / f"{name}.docs.npy")
    lo, hi = int(offsets[document]), int(offsets[document + 1])
    lengths = np.diff(offsets).tolist()
    train = _ShardWriter(folder / "train", name, dtype)
    train.add([tokens[:lo], tokens[hi:]])
    train.lengths = lengths[:document] + lengths[document + 1:]
    held = _ShardWriter(folder / "eval", name, dtype)
    held.add([tokens[lo:hi]])
    return {"train": train.close(), "eval": held.close()}


# ---------------------------------------------------------------- a whole corpus


def assign(units: list[Unit], world: int) -> list[list[int]]:
    """Unit indices per rank, balanced by size (largest first to the least loaded rank): deterministic."""
    loads = [0] * world
    share: list[list[int]] = [[] for _ in range(world)]
    for index in sorted(range(len(units)), key=lambda i: (-units[i].size, i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        share[rank].append(index)
        loads[rank] += max(units[index].size, 1)
    return [sorted(s) for s in share]


def prepare(plan: Plan, tokenizer: Any, folder: Path, settings: Settings, *, num_proc: int, rank: int = 0,
            world: int = 1, barrier: Callable[[], None] = lambda: None,
            log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Tokenize every unit of `plan` into `folder` (ranks share the units) and return the manifest.

    Every rank calls it; each tokenizes its share with `num_proc` processes, then all wait for each other
    (`barrier`), rank 0 writes the manifest, and all read it. Units already done are skipped.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        start(folder, plan, tokenizer, settings)
    barrier()
    mine = assign(plan.units, world)[rank]
    todo = [i for i in mine if not (folder / "units" / f"{i:06d}.json").is_file()]
    if todo:
        _run(todo, plan, settings, num_proc, log if rank == 0 else (lambda m: None))
    barrier()
    if rank == 0:
        write_manifest(folder, plan, tokenizer, settings)
    barrier()
    return read_manifest(folder)


def start(folder: Path, plan: Plan, tokenizer: Any, settings: Settings) -> None:
    """Record the settings a preparation started with; refuse a folder started with other settings."""
    recorded = folder / SETTINGS
    if not recorded.is_file():
        tokenizer.save_pretrained(str(folder / "tokenizer"))
        _write_json(recorded, {"key": settings.key(), "data": plan.fingerprint})
    elif not same_settings(folder, plan, settings):
        raise DataError(f"'{folder}' holds a preparation of other data or with other settings (tokenizer, held-out "
                        f"split). Choose another output folder, or pass --overwrite to replace it.")


def same_settings(folder: Path, plan: Plan, settings: Settings) -> bool:
    try:
        recorded = json.loads((folder / SETTINGS).read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("key") == settings.key() and recorded.get("data") == plan.fingerprint


def _run(todo: list[int], plan: Plan, settings: Settings, num_proc: int, log: Callable[[str], None]) -> None:
    jobs = [(i, plan.units[i], settings) for i in todo]
    total = sum(max(plan.units[i].size, 1) for i in todo)
    progress = _Progress(total, len(jobs), log)
    if num_proc > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(num_proc, len(jobs)), initializer=_quiet_worker) as pool:
            for meta in pool.imap_unordered(tokenize_unit, jobs):
                progress.done(meta)
    else:  # in this process; the Rust tokenizer's threads use the cores this rank may use
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if num_proc > 1 else "false"
        try:
            for job in jobs:
                progress.done(tokenize_unit(job))
        finally:
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before


def _quiet_worker() -> None:
    """One thread per worker process: the processes are the parallelism."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


class _Progress:
    """Progress lines while preparing: units, MB/s, tokens/s and the time left (at most one line every 10 s)."""

    def __init__(self, total_bytes: int, units: int, log: Callable[[str], None]):
        self.total, self.units, self.log = total_bytes, units, log
        self.bytes = self.tokens = self.count = 0
        self.start = self.last = time.perf_counter()

    def done(self, meta: dict[str, Any]) -> None:
        self.count += 1
        self.bytes += max(meta["bytes"], 1)
        self.tokens += meta["train"]["tokens"] + meta["eval"]["tokens"]
        now = time.perf_counter()
        if now - self.last >= 10 or self.count == self.units:
            self.last = now
            elapsed = now - self.start
            rate = self.bytes / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.bytes) / rate if rate > 0 else 0.0
            self.log(f"prepare: {self.count}/{self.units} units, {self.bytes / 1e6:,.1f} of {self.total / 1e6:,.1f} MB, "
                     f"{rate / 1e6:.1f} MB/s, {self.tokens / elapsed / 1e6:.2f}M tokens/s, elapsed {clock(elapsed)}, "
                     f"ETA {clock(left)}")


# ---------------------------------------------------------------- the manifest


def write_manifest(folder: Path, plan: Plan, tokenizer: Any, settings: Settings) -> None:
    """Gather the units' counts into manifest.json (written last: its presence marks a finished preparation)."""
    metas = []
    for index in range(len(plan.units)):
        path = folder / "units" / f"{index:06d}.json"
        if not path.is_file():
            raise DataError(f"Unit {index} of the preparation in '{folder}' is missing: it was written by another "
                            f"machine that this one cannot see. Put the cache on a shared filesystem (--set "
                            f"data.cache_dir=DIR or LLMKIT_CACHE), or run `llmkit prepare` first and copy its folder.")
        metas.append(json.loads(path.read_text()))
    splits = {}
    for split in SPLITS:
        shards = [{"name": f"{m['unit']:06d}", "documents": m[split]["documents"], "tokens": m[split]["tokens"]}
                  for m in metas if m[split]["tokens"]]
        splits[split] = {"documents": sum(s["documents"] for s in shards), "tokens": sum(s["tokens"] for s in shards),
                         "shards": shards}
    files = [p for split in SPLITS for p in (folder / split).glob("*") if (folder / split).is_dir()]
    manifest = {
        "format": FORMAT, "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sources": plan.description, "fingerprint": plan.fingerprint, "input_bytes": plan.total_bytes,
        "units": len(plan.units),
        "tokenizer": {"path": "tokenizer", "class": tokenizer_class(tokenizer), "vocab_size": len(tokenizer),
                      "fingerprint": tokenizer_fingerprint(tokenizer)},
        "dtype": settings.dtype,
        "held_out": {"fraction": settings.eval_fraction, "seed": settings.split_seed},
        "skipped_values": sum(m["skipped"] for m in metas),
        "bytes_on_disk": sum(p.stat().st_size for p in files),
        "splits": splits,
    }
    _write_json(folder / MANIFEST, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    """manifest.json of a prepared folder, checked: format, version and every shard's size."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"'{path}' cannot be read ({e}). Prepare the data again (llmkit prepare ... --overwrite).") \
            from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"'{folder}' is not an llmkit prepared folder of version {VERSION} (format "
                        f"{manifest.get('format')!r}, version {manifest.get('version')!r}). Prepare the data again "
                        f"with this llmkit.")
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            tokens = folder / split / f"{shard['name']}.tokens"
            docs = folder / split / f"{shard['name']}.docs.npy"
            size = tokens.stat().st_size if tokens.is_file() else -1
            if size != shard["tokens"] * itemsize or not docs.is_file():
                found = "is missing" if size < 0 or not docs.is_file() else f"has {size:,} bytes, expected " \
                                                                           f"{shard['tokens'] * itemsize:,}"
                raise DataError(f"Prepared shard '{tokens}' {found}: the prepared data is damaged. Prepare it again "
                                f"(llmkit prepare ... --overwrite, or delete the folder).")
    return manifest


def tokenizer_class(tokenizer: Any) -> str:
    """The transformers class name of a tokenizer (also of one read as `tokenize.TokenizerFiles`)."""
    return tokenizer.name if isinstance(tokenizer, TokenizerFiles) else type(tokenizer).__name__


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what the tokenizer does (its vocabulary, rules and special tokens), ignoring the truncation and
    padding state that a tokenizer call leaves behind."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    else:
        payload = json.dumps({k: v for k, v in json.loads(backend.to_str()).items()
                              if k not in ("truncation", "padding")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)

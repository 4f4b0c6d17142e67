"""A pretraining corpus from the recipes' point of view: plan it, sample it, prepare it, read its blocks.

    corpus = plan_corpus(cfg.data)                      # cheap: sources checked, units planned
    texts = tokenizer_sample(corpus, cfg.data)          # a bounded, seeded sample to train a tokenizer on
    prepared = prepare_corpus(corpus, tokenizer, ...)   # tokenized once into the cache (or a given folder)
    train, held = open_blocks(prepared, cfg.data, tokenizer)

`--data` may also name a folder written by `llmkit prepare`: then nothing is read or tokenized again.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import keyed
from llmkit.data import prepared as prep
from llmkit.data.blocks import Selection, TokenBlocks
from llmkit.data.sources import Plan, documents, plan
from llmkit.errors import DataError

BUILTIN = "the built-in sample corpus (Python standard library docstrings)"


def cache_root(cfg_data: Any | None) -> Path:
    if cfg_data is not None and cfg_data.cache_dir:
        return Path(cfg_data.cache_dir).expanduser()
    base = os.environ.get("LLMKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "llmkit")
    return Path(base).expanduser()


def default_num_proc(local_processes: int = 1) -> int:
    """Tokenizing processes per rank: the cores this process may use, shared by the ranks of the machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))


# ---------------------------------------------------------------- the built-in corpus


def builtin_corpus_file(cache_dir: Path | None = None) -> Path:
    """Docstrings of the Python standard library as a text file, one paragraph per document.

    Real English prose present on every machine: read with `ast` from the source files (nothing imported or
    executed), in a fixed order, so every machine with the same Python gets the same corpus (about 1.5 MB).
    Built once (a few seconds) into the cache.
    """
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    path = (cache_dir or cache_root(None)) / f"corpus-stdlib-{version}.txt"
    if path.is_file():
        return path
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for source in sorted(stdlib.rglob("*.py")):
        rel = source.relative_to(stdlib).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3", "turtledemo") or "tests" in rel:
            continue
        docs.extend(docstring_paragraphs(source, min_words=6))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(d + "\n\n" for d in docs), encoding="utf-8")
    os.replace(tmp, path)
    return path


def builtin_corpus(cache_dir: Path | None = None) -> list[str]:
    """The built-in corpus as a list of documents."""
    return paragraphs(builtin_corpus_file(cache_dir).read_text(encoding="utf-8"))


def docstring_paragraphs(path: Path, min_words: int = 1) -> list[str]:
    """The paragraphs (white space folded) of at least `min_words` words of every docstring in a Python file,
    in `ast.walk` order; none for a file that does not parse."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return []
    return [para for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            for para in paragraphs(ast.get_docstring(node) or "", min_words)]


def paragraphs(text: str, min_words: int = 1) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        para = " ".join(block.split())
        if para and len(para.split()) >= min_words:
            out.append(para)
    return out


# ---------------------------------------------------------------- planning


@dataclass
class Corpus:
    """Training data (a plan, or a prepared folder) and optional separate evaluation data."""

    train: Plan | None
    description: str
    folder: Path | None = None  # a prepared folder given as --data
    eval: Plan | None = None  # --eval-data, or data.eval_split of a `datasets` name


def plan_corpus(cfg_data: Any) -> Corpus:
    """Check and plan the corpus of a run: no tokenizer, no model, nothing written but the built-in corpus."""
    sources = list(cfg_data.train) or [str(builtin_corpus_file(cache_root(cfg_data)))]
    prepared = [s for s in sources if prep.is_prepared(s)]
    held = None
    if cfg_data.eval:
        held = plan(cfg_data.eval, cfg_data)
    elif cfg_data.eval_split:
        held = plan(sources, cfg_data, split=cfg_data.eval_split)
    if prepared:
        if len(sources) > 1:
            raise DataError(f"'{prepared[0]}' is a prepared folder; give it alone as --data (prepare other sources "
                            f"together with `llmkit prepare`).")
        folder = Path(prepared[0]).expanduser()
        manifest = prep.read_manifest(folder)
        return Corpus(None, f"prepared data in {folder} ({manifest['sources']})", folder, held)
    train = plan(sources, cfg_data)
    return Corpus(train, BUILTIN if not cfg_data.train else train.description, None, held)


def tokenizer_sample(corpus: Corpus, budget: int, seed: int) -> Iterator[str]:
    """Documents to train a tokenizer on: all of them if the corpus is within `budget` bytes, else about
    `budget` bytes drawn from units spread over the corpus (a seeded choice of units, each read from its start)."""
    units = corpus.train.units
    first = next((text for unit in units for text in documents(unit)), None)
    if first is None:
        raise DataError(f"No text found in {corpus.train.description} (every document was empty or not a text). "
                        f"Give data with at least one non-empty text.")
    if corpus.train.total_bytes <= budget:
        for unit in units:
            yield from documents(unit)
        return
    order = keyed.permutation(np.arange(len(units)), len(units), seed, 0).tolist()
    per_unit, taken = max(budget // len(units), 1 << 16), 0
    for i in order:
        got = 0
        for text in documents(units[i]):
            yield text
            got += len(text)
            if got >= per_unit:
                break
        taken += got
        if taken >= budget:
            return


# ---------------------------------------------------------------- preparing


@dataclass
class Prepared:
    """Where a run's training and evaluation tokens are."""

    folder: Path
    manifest: dict[str, Any]
    eval_folder: Path
    eval_manifest: dict[str, Any]
    eval_split: str  # "eval" (held out of the training data) or "train" (of separate evaluation data)


def prepare_corpus(corpus: Corpus, tokenizer: Any, cfg_data: Any, *, rank: int = 0, world: int = 1,
                   local_world: int = 1, barrier: Callable[[], None] = lambda: None,
                   log: Callable[[str], None] = lambda m: None) -> Prepared:
    """Tokenize the corpus into the cache, once, shared by all ranks (or use the prepared folder given)."""
    num_proc = cfg_data.num_proc or default_num_proc(local_world)
    common = dict(num_proc=num_proc, rank=rank, world=world, barrier=barrier, log=log)
    if corpus.folder is not None:
        folder, manifest = corpus.folder, prep.read_manifest(corpus.folder)
        check_tokenizer(folder, manifest, tokenizer)
    else:
        fraction = 0.0 if corpus.eval is not None else cfg_data.eval_fraction
        folder, manifest = _cached(corpus.train, tokenizer, cfg_data, fraction, common, log)
    if corpus.eval is None:
        return Prepared(folder, manifest, folder, manifest, "eval")
    eval_folder, eval_manifest = _cached(corpus.eval, tokenizer, cfg_data, 0.0, common, log)
    return Prepared(folder, manifest, eval_folder, eval_manifest, "train")


def settings(plan_: Plan, tokenizer: Any, cfg_data: Any, fraction: float, folder: Path) -> prep.Settings:
    return prep.Settings(str(folder), tokenizer.backend_tokenizer.to_str(), prep.token_dtype(len(tokenizer)).name,
                         fraction, cfg_data.split_seed, cfg_data.encoding_errors, len(plan_.units) == 1)


def _cached(plan_: Plan, tokenizer: Any, cfg_data: Any, fraction: float, common: dict[str, Any],
            log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    probe = settings(plan_, tokenizer, cfg_data, fraction, Path())
    key = hashlib.sha256(f"{prep.VERSION}|{plan_.fingerprint}|{probe.key()}".encode()).hexdigest()[:24]
    folder = cache_root(cfg_data) / "prepared" / key
    if prep.is_prepared(folder):
        try:
            manifest = prep.read_manifest(folder)
            log(f"using prepared data {folder}")
            return folder, manifest
        except DataError as e:
            log(f"{e} Preparing it again.")
            common["barrier"]()
            if common["rank"] == 0:
                prep.remove(folder)
            common["barrier"]()
    for note in plan_.notes:
        log(note)
    manifest = prep.prepare(plan_, tokenizer, folder, settings(plan_, tokenizer, cfg_data, fraction, folder), **common)
    return folder, manifest


def check_tokenizer(folder: Path, manifest: dict[str, Any], tokenizer: Any) -> None:
    """A prepared folder is read only with the tokenizer it was made with."""
    if prep.tokenizer_fingerprint(tokenizer) != manifest["tokenizer"]["fingerprint"]:
        raise DataError(f"'{folder}' was prepared with another tokenizer ({manifest['tokenizer']['class']}, "
                        f"{manifest['tokenizer']['vocab_size']:,} tokens) than this run's ({prep.tokenizer_class(tokenizer)}, "
                        f"{len(tokenizer):,} tokens). Omit --tokenizer to use its own ({folder / 'tokenizer'}), or "
                        f"prepare the data again with this tokenizer.")


def prepared_tokenizer_path(corpus: Corpus) -> Path | None:
    return corpus.folder / "tokenizer" if corpus.folder is not None else None


# ---------------------------------------------------------------- reading


def open_blocks(prepared: Prepared, cfg_data: Any, tokenizer: Any) -> tuple[TokenBlocks, Selection]:
    """The training blocks and a seeded, evenly spread sample of at most `max_eval_samples` held-out blocks."""
    keep_last = ends_with_special(tokenizer)
    train = TokenBlocks(prepared.folder, "train", prepared.manifest, cfg_data.max_seq_length, cfg_data.packing,
                        keep_last)
    if len(train) == 0:
        raise DataError(f"No text found in {prepared.manifest['sources']} (every document was empty or not a text). "
                        f"Give data with at least one non-empty text.")
    held = TokenBlocks(prepared.eval_folder, prepared.eval_split, prepared.eval_manifest, cfg_data.max_seq_length,
                       cfg_data.packing, keep_last)
    if len(held) == 0:
        documents_ = prepared.manifest["splits"]["train"]["documents"]
        raise DataError(f"No document was held out for evaluation: data.eval_fraction="
                        f"{prepared.manifest['held_out']['fraction']} of {documents_:,} documents, chosen by a hash of "
                        f"each document, picked none. Raise --set data.eval_fraction, add documents, or pass "
                        f"--eval-data.")
    return train, held.sample(cfg_data.max_eval_samples, cfg_data.split_seed)


def ends_with_special(tokenizer: Any) -> bool:
    """Whether the tokenizer closes a text with a special token ([SEP], </s>), which truncation must keep."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[-1] in set(tokenizer.all_special_ids)


def describe(manifest: dict[str, Any]) -> str:
    train, held = manifest["splits"]["train"], manifest["splits"]["eval"]
    return (f"{train['documents']:,} training documents ({train['tokens']:,} tokens), {held['documents']:,} held out "
            f"({held['tokens']:,} tokens), {manifest['dtype']}, {manifest['bytes_on_disk'] / 1e6:,.1f} MB on disk")

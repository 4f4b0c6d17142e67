"""Labeled tables for fine-tuning and prediction: local files or `datasets` names, and cached features."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmkit.console import log as console_log
from llmkit.data.corpus import cache_root
from llmkit.data.sources import load_table as load_dataset_table
from llmkit.data.sources import suffixes
from llmkit.errors import DataError

if TYPE_CHECKING:
    import datasets

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
FEATURES_VERSION = 3  # bump when the layout of cached features changes


def load_table(source: str, files: list[Path] | None, cfg_data: Any, split: str | None = None) -> "datasets.Dataset":
    """A table from local files (all of one format) or from a `datasets` name."""
    import datasets

    if files is None:  # a `datasets` name
        return load_dataset_table(source, cfg_data.dataset_config, split or cfg_data.train_split)
    formats = {suffixes(f)[0] for f in files}
    if len(formats) > 1:
        raise DataError(f"Data files of '{source}' mix formats ({', '.join(sorted(formats))}). Give files of one format.")
    fmt = formats.pop()
    kwargs: dict[str, Any] = {"delimiter": "\t"} if fmt == ".tsv" else {}
    try:
        return datasets.load_dataset(BUILDERS[fmt], data_files=[str(f) for f in files], split="train", **kwargs)
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


def cached_arrays(key: dict[str, Any], cfg_data: Any, build: Callable[[], dict[str, np.ndarray]],
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
        console_log(f"could not write the feature cache ({e}); continuing without it")
    return arrays

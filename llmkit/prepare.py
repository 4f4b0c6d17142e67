"""`llmkit prepare`: tokenize a corpus once into a folder that `llmkit pretrain --data FOLDER` trains from.

Run it where the CPUs are (every core tokenizes; under torchrun or accelerate launch, every rank of every
machine takes a share of the corpus), then train from the folder as often as wanted, on any number of
GPUs. An interrupted preparation continues where it stopped when run again with the same settings.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from llmkit import data
from llmkit.config import RunConfig
from llmkit.console import log
from llmkit.data import prepared as prep
from llmkit.errors import ConfigError, OutputError


def run(cfg: RunConfig, output: str | None, overwrite: bool = False) -> dict[str, Any]:
    """Prepare `cfg.data.train` into `output`; returns the summary (also in the folder's manifest.json)."""
    # 1. validate: options, the corpus, the output folder
    if not output:
        raise ConfigError("llmkit prepare needs an output folder: pass -o PREPARED_DIR.")
    if cfg.data.eval or cfg.data.eval_split:
        raise ConfigError("llmkit prepare holds documents out by a hash of their text (data.eval_fraction); give "
                          "separate evaluation data to `llmkit pretrain --eval-data` instead.")
    corpus = data.plan_corpus(cfg.data)
    if corpus.folder is not None:
        raise ConfigError(f"'{corpus.folder}' is already prepared. Train from it: llmkit pretrain --data {corpus.folder}")
    folder = Path(output).expanduser()
    check_output(folder, overwrite)

    # 2. placement: under a launcher the ranks share the units
    rank, world, barrier = process_group()
    try:
        return _prepare(cfg, corpus, folder, overwrite, rank, world, barrier)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _prepare(cfg: RunConfig, corpus: data.Corpus, folder: Path, overwrite: bool, rank: int, world: int,
             barrier: Any) -> dict[str, Any]:
    # 3. tokenizer: the given one or the model's, or one trained on a sample of the corpus
    from llmkit import pretrain

    tokenizer = pretrain.tokenizer_for(cfg, corpus, rank, world, barrier, files_only=True)
    settings = data.corpus.settings(corpus.train, tokenizer, cfg.data, cfg.data.eval_fraction, folder)
    if prep.is_prepared(folder) and prep.same_settings(folder, corpus.train, settings):
        log(f"{folder} is already prepared with these data and settings")
        return summary(folder, prep.read_manifest(folder), cfg, 0.0)
    if overwrite and rank == 0 and (folder / prep.SETTINGS).is_file() and not prep.same_settings(
            folder, corpus.train, settings):
        shutil.rmtree(folder)
    barrier()

    # 4. tokenize every unit into the folder (continuing an interrupted preparation), then the manifest
    for note in corpus.train.notes:
        log(note)
    start = time.perf_counter()
    manifest = prep.prepare(corpus.train, tokenizer, folder, settings, num_proc=cfg.data.num_proc or
                            data.default_num_proc(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))), rank=rank,
                            world=world, barrier=barrier, log=log)
    result = summary(folder, manifest, cfg, time.perf_counter() - start)
    log(f"prepared {folder}: {data.describe(manifest)}; train with: llmkit pretrain --data {folder}")
    return result


def check_output(folder: Path, overwrite: bool) -> None:
    """An output folder is new, empty, or an llmkit preparation (continued, or replaced with --overwrite)."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"Output path '{folder}' is a file. Give a folder path.")
    if not folder.exists() or not any(folder.iterdir()):
        return
    if not (folder / prep.SETTINGS).is_file():
        raise OutputError(f"Output folder '{folder}' is not empty and holds no llmkit preparation. Choose another "
                          f"-o folder.")


def process_group() -> tuple[int, int, Any]:
    """(rank, world size, barrier): a gloo group when launched with several processes, else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, lambda: None
    from datetime import timedelta

    import torch.distributed as dist

    from llmkit.distributed import DATA_TIMEOUT_S

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=DATA_TIMEOUT_S))
    return dist.get_rank(), dist.get_world_size(), dist.barrier


def summary(folder: Path, manifest: dict[str, Any], cfg: RunConfig, seconds: float) -> dict[str, Any]:
    train, held = manifest["splits"]["train"], manifest["splits"]["eval"]
    length = cfg.data.max_seq_length
    return {
        "prepared_dir": str(folder.resolve()),
        "documents": train["documents"], "tokens": train["tokens"],
        "blocks": -(-train["tokens"] // length), "block_length": length,
        "eval_documents": held["documents"], "eval_tokens": held["tokens"],
        "dtype": manifest["dtype"], "bytes_on_disk": manifest["bytes_on_disk"], "input_bytes": manifest["input_bytes"],
        "tokenizer": manifest["tokenizer"]["class"], "vocab_size": manifest["tokenizer"]["vocab_size"],
        "seconds": round(seconds, 2),
    }

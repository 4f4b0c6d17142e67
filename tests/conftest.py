"""Shared fixtures: offline libraries, a private cache, tiny real models and a runner for the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false"}

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("llmkit-cache")
    saved = dict(os.environ)
    os.environ.update(OFFLINE)
    os.environ["LLMKIT_CACHE"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    yield cache
    os.environ.clear()
    os.environ.update(saved)


def toy_corpus(n: int = 400) -> list[str]:
    """A learnable corpus: each line counts up through the Greek alphabet from a random start."""
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(n):
        start = rng.randrange(len(WORDS))
        length = rng.randrange(6, 14)
        lines.append(" ".join(WORDS[(start + i) % len(WORDS)] for i in range(length)))
    return lines


@pytest.fixture(scope="session")
def toy_corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "greek.txt"
    path.write_text("\n\n".join(toy_corpus()) + "\n", encoding="utf-8")
    return path


def make_tiny_mlm(folder: Path, texts: list[str] | None = None, vocab_size: int = 200, hidden: int = 32) -> Path:
    """A real BertForMaskedLM (2 layers, hidden 32) with a WordPiece tokenizer trained on `texts`."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    torch.manual_seed(0)
    tokenizer = BertTokenizer(do_lower_case=True).train_new_from_iterator(
        texts or toy_corpus(), vocab_size=vocab_size, show_progress=False)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory) -> Path:
    return make_tiny_mlm(tmp_path_factory.mktemp("tiny-mlm"))


def prepare_texts(tmp_path: Path, tokenizer, texts: list[str], name: str = "prepared", fraction: float = 0.0,
                  num_proc: int = 1, **data_settings):
    """(folder, manifest): `texts` (one paragraph each) tokenized into a prepared folder, as a run prepares them."""
    from llmkit import config, data
    from llmkit.data import prepared

    corpus, text = tmp_path / f"{name}.txt", "\n\n".join(texts) + "\n"
    if not corpus.is_file() or corpus.read_text(encoding="utf-8") != text:  # rewriting would change the data's key
        corpus.write_text(text, encoding="utf-8")
    cfg = config.build("pretrain").data
    for key, value in data_settings.items():
        setattr(cfg, key, value)
    plan = data.plan([str(corpus)], cfg)
    folder = tmp_path / name
    settings = data.corpus.settings(plan, tokenizer, cfg, fraction, folder)
    return folder, prepared.prepare(plan, tokenizer, folder, settings, num_proc=num_proc)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """The real `llmkit` CLI in a subprocess (python -m llmkit), offline."""
    full_env = {**os.environ, **OFFLINE, **(env or {})}
    full_env.pop("LLMKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "llmkit", *map(str, args)], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout, input=stdin)


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON result on stdout: {stdout!r}"
    return json.loads(lines[-1])


def crashed_after(run: Path, checkpoint: str, to: Path) -> Path:
    """The directory a run leaves when it crashes right after saving `checkpoint`: that checkpoint and the
    start record, nothing else."""
    import shutil

    (to / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / checkpoint, to / "checkpoints" / checkpoint)
    shutil.copy(run / "checkpoints" / "llmkit-run.yaml", to / "checkpoints" / "llmkit-run.yaml")
    return to


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    """The saved models of two run directories hold the same tensors, to `atol`."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=atol, msg=key)

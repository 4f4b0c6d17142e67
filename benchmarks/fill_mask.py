"""Benchmark: `llmkit fill-mask` versus `pipeline("fill-mask")`, side by side on the same model and inputs.

    python benchmarks/fill_mask.py                      # mini BERT (4x256) built here, 1,000 sentences, 3 repeats
    python benchmarks/fill_mask.py --model runs/mlm     # an llmkit pretrain run (or any masked-LM folder)
    python benchmarks/fill_mask.py --quick              # 200 sentences, fewer repeats: a smoke run

The model gets an `llmkit export` first (its time is printed). Measures, as medians of a few repeats:
1. throughput (sentences/s) on N real sentences (Python standard library docstrings, one word masked each),
   model already loaded: the plain HF way (`pipeline("fill-mask")` called per sentence; also given the whole
   list with batch_size, for reference) versus `llmkit.fill_mask` on transformers' model in fp32 and in bf16
   autocast and on ONNX Runtime (fp32), with the top-1 agreement and the largest score difference against the
   per-sentence pipeline, and ONNX Runtime's top-1 against the torch path in fp32;
2. cold start: one prediction from a fresh process (wall time and peak RSS), `llmkit fill-mask` on each runtime
   versus a plain script that loads `pipeline` and answers one line;
3. whole process on a file of 3,000 sentences (`--whole N`): `llmkit fill-mask MODEL --input-file F --json`
   on each runtime versus the same plain script, which calls the pipeline per line and prints JSON: wall time
   and peak RSS.
Without --model, a `mini` BERT (4 layers x 256 hidden) is built from a config, with a 16k WordPiece tokenizer
trained on the same docstrings; its weights are random, which does not change the speed. Figures on a shared
machine are indicative.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.offline_and_quiet(TOKENIZERS_PARALLELISM="false")

COLD_TEXT = "The function returns a [MASK] of the values."


def build_mini_model(folder: Path) -> Path:
    """A `mini` BERT (4 x 256, llmkit's size preset) with a 16k WordPiece tokenizer trained on the built-in corpus."""
    import torch

    from llmkit import data, modeling

    tokenizer = modeling.train_tokenizer(data.builtin_corpus(), vocab_size=16000, lowercase=True)
    torch.manual_seed(0)
    model = modeling.build_mlm("bert", "mini", tokenizer, max_seq_length=128)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def masked_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` sentences of 8-40 words from the built-in corpus, each with one word (not the first) masked."""
    from llmkit import data

    rng = random.Random(seed)
    sentences = []
    for doc in data.builtin_corpus():
        for sentence in re.split(r"(?<=[.!?])\s+", doc):
            words = sentence.split()
            if 8 <= len(words) <= 40 and any(w.isalpha() for w in words[1:]):
                sentences.append(words)
    rng.shuffle(sentences)
    if len(sentences) < n:
        raise SystemExit(f"only {len(sentences)} sentences in the corpus, asked for {n}")
    out = []
    for words in sentences[:n]:
        at = rng.choice([i for i, w in enumerate(words) if i > 0 and w.isalpha()])
        out.append(" ".join(words[:at] + ["[MASK]"] + words[at + 1:]))
    return out


def interleaved_medians(jobs: dict[str, callable], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per job, running the jobs in turn each round (`common.interleaved`)."""
    times, results = common.interleaved(jobs, repeats)
    return {name: statistics.median(t) for name, t in times.items()}, results


def agreement(ours: list[dict], reference: list[list[dict]]) -> tuple[float, float, float, float]:
    """Against the pipeline: share of texts with the same top-1 token; with the same top-k list in the same order;
    share of the pipeline's top-k tokens that are in ours (in any order); the largest |score difference| of a
    token both list."""
    top1, topk, overlap, worst = 0, 0, 0, 0.0
    for result, ref in zip(ours, reference):
        candidates = result["masks"][0]["candidates"]
        top1 += candidates[0]["token_id"] == ref[0]["token"]
        topk += [c["token_id"] for c in candidates] == [c["token"] for c in ref]
        overlap += len({c["token_id"] for c in candidates} & {c["token"] for c in ref}) / len(ref)
        by_id = {c["token"]: c["score"] for c in ref}
        worst = max([worst] + [abs(c["score"] - by_id[c["token_id"]]) for c in candidates if c["token_id"] in by_id])
    return top1 / len(ours), topk / len(ours), overlap / len(ours), worst


def llmkit_commands(model: str, inputs: Path, no_onnx: bool = False) -> dict[str, list[str]]:
    """The plain pipeline script and `llmkit fill-mask` on each runtime, each reading `inputs`."""
    ours = [sys.executable, "-m", "llmkit", "fill-mask", model, "--input-file", str(inputs), "--json"]
    commands = {"python script: pipeline per line": [sys.executable, "-c", WHOLE_SCRIPT, model, str(inputs)],
                "llmkit fill-mask --runtime torch": [*ours, "--runtime", "torch", "--device", "cpu"]}
    if not no_onnx:
        commands["llmkit fill-mask --runtime onnx"] = [*ours, "--runtime", "onnx"]
    return commands


def export(model: str) -> float:
    """`llmkit export MODEL` (replacing an older export); its wall seconds."""
    import subprocess
    import time

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llmkit", "export", model], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llmkit export failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


WHOLE_SCRIPT = common.pipeline_script("fill-mask", ", top_k=5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="masked-LM folder (e.g. an llmkit pretrain run); default: a mini BERT "
                                        "built here")
    parser.add_argument("--n", type=int, default=1000, help="number of sentences (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement; the median is reported")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--whole", type=int, default=3000, help="sentences in the whole-process file (0: skip)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 sentences, 2 repeats")
    parser.add_argument("--no-onnx", action="store_true", help="the torch runtime only (no export; e.g. on a GPU "
                                                                "machine without onnxscript)")
    args = parser.parse_args()
    n, repeats = (200, 2) if args.quick else (args.n, args.repeats)

    import torch
    from transformers import pipeline

    from llmkit import fillmask as fm
    from llmkit import modeling

    with tempfile.TemporaryDirectory(prefix="llmkit-bench-") as tmp:
        model = args.model or str(build_mini_model(Path(tmp) / "mini"))
        export_seconds = None if args.no_onnx else export(model)
        texts = masked_sentences(n)

        # 1. throughput, model loaded once on each side
        device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = pipeline("fill-mask", model=model, device=device)
        shape = modeling.describe(pipe.model)
        auto_filler = fm.load(model, device=device, precision="auto", runtime="torch")
        auto = auto_filler.precision
        fillers = {precision: fm.load(model, device=device, precision=precision, runtime="torch")
                   for precision in ("fp32", "bf16")}
        if not args.no_onnx:
            fillers["onnx"] = fm.load(model, runtime="onnx")
        for filler in fillers.values():
            fm.fill_mask(filler, texts[:args.batch_size], top_k=5)  # warm-up: first-call allocations
        jobs = {
            'pipeline("fill-mask") per sentence': lambda: [pipe(t, top_k=5) for t in texts],
            f"pipeline(texts, batch_size={args.batch_size})": lambda: pipe(texts, top_k=5, batch_size=args.batch_size),
        }
        for precision, filler in fillers.items():
            label = "llmkit fill_mask onnx (fp32)" if precision == "onnx" else \
                f"llmkit fill_mask {precision}" + (" (auto here)" if precision == auto else "")
            jobs[label] = (lambda f: lambda: fm.fill_mask(f, texts, top_k=5, batch_size=args.batch_size))(filler)
        seconds, outputs = interleaved_medians(jobs, repeats)
        reference = outputs['pipeline("fill-mask") per sentence']
        rows = []
        for label, took in seconds.items():
            if label.startswith("llmkit"):
                top1, top5, overlap, worst = agreement(outputs[label], reference)
                rows.append((label, n / took, f"{top1:.1%}", f"{top5:.1%}", f"{overlap:.1%}", f"{worst:.1e}"))
            else:
                rows.append((label, n / took, "-", "-", "-", "-"))

        onnx_vs_torch = None if args.no_onnx else agreement(outputs["llmkit fill_mask onnx (fp32)"], [
            [{"token_str": c["token"], "token": c["token_id"], "score": c["score"]} for c in r["masks"][0]["candidates"]]
            for r in outputs[next(k for k in outputs if k.startswith("llmkit fill_mask fp32"))]])

        # 2. cold start: one prediction from a fresh process
        one = Path(tmp) / "one.txt"
        one.write_text(COLD_TEXT + "\n", encoding="utf-8")
        cold = common.whole_process(llmkit_commands(model, one, args.no_onnx), 1, repeats, Path(tmp) / "out.jsonl")

        # 3. a whole file, each side in a fresh process
        whole = {}
        if args.whole:
            inputs = Path(tmp) / "inputs.txt"
            inputs.write_text("\n".join(masked_sentences(args.whole, seed=1)) + "\n", encoding="utf-8")
            whole = common.whole_process(llmkit_commands(model, inputs, args.no_onnx), args.whole, repeats,
                                         Path(tmp) / "out.jsonl")

    base = rows[0][1]
    print(f"\nfill-mask benchmark: {shape['architecture']} {shape['layers']}x{shape['hidden_size']}, vocabulary "
          f"{shape['vocab_size']:,}, {shape['parameters'] / 1e6:.1f}M parameters; {n:,} sentences, top_k 5; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {repeats} interleaved runs. "
          f"Indicative: the machine may be shared.\nauto precision here: {auto} ({auto_filler.why})\n")
    print(f"{'throughput (model loaded)':<40} {'sentences/s':>12} {'vs per-sentence':>16} {'same top-1':>11} "
          f"{'same top-5':>11} {'top-5 shared':>13} {'max |dscore|':>13}")
    for label, rate, top1, top5, overlap, worst in rows:
        print(f"{label:<40} {rate:>12,.1f} {rate / base:>15.1f}x {top1:>11} {top5:>11} {overlap:>13} {worst:>13}")
    if onnx_vs_torch is not None:
        print(f"\nONNX Runtime against the torch path in fp32: same top-1 {onnx_vs_torch[0]:.1%}, same top-5 "
              f"{onnx_vs_torch[1]:.1%}, max |dscore| {onnx_vs_torch[3]:.1e}; llmkit export took {export_seconds:.1f} s")
    print_ratios("cold start (one prediction, new process)", cold)
    if whole:
        print_ratios(f"whole process, {args.whole:,} sentences", whole)
    common.write_results("fill-mask", {"model": shape, "sentences": n, "throughput": rows, "cold": cold,
                                       "whole": whole, "onnx_vs_torch_fp32": onnx_vs_torch,
                                       "export_seconds": export_seconds})


def print_ratios(title: str, results: dict[str, tuple[float, float]]) -> None:
    """Wall time and peak RSS of each command, and both as a fraction of the first (the pipeline script)."""
    print(f"\n{title:<40} {'wall s':>10} {'time vs pipeline':>17} {'peak RSS MB':>12} {'RSS vs pipeline':>16}")
    base_wall, base_peak = next(iter(results.values()))
    for name, (wall, peak) in results.items():
        print(f"{name:<40} {wall:>10.2f} {wall / base_wall:>16.2f}x {peak:>12,.0f} {peak / base_peak:>15.2f}x")


if __name__ == "__main__":
    main()

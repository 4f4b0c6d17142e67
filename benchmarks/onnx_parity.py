"""Benchmark: torch against ONNX Runtime on trained models of every family llmkit builds.

    python benchmarks/onnx_parity.py                    # bert modernbert roberta deberta-v2 distilbert
    python benchmarks/onnx_parity.py --archs bert,modernbert --steps 20

For each family: a tiny masked LM pretrained here (`llmkit pretrain --arch A --size tiny`) on the built-in corpus,
and a classifier fine-tuned from it (`llmkit finetune`, 3x the steps) on sentences of the same corpus labelled by whether they
mention "return" (learnable, so the classifier is a trained one); both exported with `llmkit export --quantize
int8`. Then, on held-out texts: fill-mask's top-1 on transformers' model in fp32 against ONNX Runtime (same top-1,
largest |score difference|) and the int8 export's agreement; the classifier's labels and largest |logit
difference|, and the int8 export's label agreement and accuracy. Results: benchmarks/results/onnx-parity-*.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.offline_and_quiet()

ARCHS = ("bert", "modernbert", "roberta", "deberta-v2", "distilbert")


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "llmkit", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llmkit {' '.join(map(str, args[:2]))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def sentences(n: int, seed: int) -> list[str]:
    from llmkit.data import corpus

    rng = random.Random(seed)
    pool = [" ".join(p.split()[:24]) for p in corpus.builtin_corpus() if len(p.split()) >= 8]
    return rng.sample(pool, n)


def train(arch: str, tmp: Path, steps: int, corpus_file: Path, labeled: Path) -> tuple[Path, Path]:
    mlm, clf = tmp / f"{arch}-mlm", tmp / f"{arch}-clf"
    cli("pretrain", "--arch", arch, "--size", "tiny", "--data", corpus_file, "-o", mlm, "--max-steps", steps,
        "--max-seq-length", 64, "--set", "model.vocab_size=4000", "--set", "training.eval_strategy=no",
        "--set", "data.max_eval_samples=64")
    cli("finetune", "--model", mlm, "--data", labeled, "-o", clf, "--max-steps", 3 * steps,
        "--set", "training.learning_rate=5e-4")
    for folder in (mlm, clf):
        cli("export", folder, "--quantize", "int8")
    return mlm, clf


def compare_mlm(mlm: Path, texts: list[str]) -> dict:
    from llmkit import fillmask as fm

    torch_side = fm.fill_mask(mlm, texts, precision="fp32", runtime="torch")
    onnx_side = fm.fill_mask(mlm, texts, runtime="onnx")
    int8_side = fm.fill_mask(mlm, texts, runtime="onnx-int8")
    best = [[m["candidates"][0]["token_id"] for m in r["masks"]] for r in torch_side]
    worst = max(abs(a["score"] - b["score"]) for r, s in zip(torch_side, onnx_side)
                for m, n in zip(r["masks"], s["masks"]) for a, b in zip(m["candidates"], n["candidates"]))
    return {"texts": len(texts),
            "same_top1_onnx": sum(b == [m["candidates"][0]["token_id"] for m in r["masks"]]
                                  for b, r in zip(best, onnx_side)) / len(texts),
            "max_abs_score_diff_onnx": worst,
            "same_top1_int8": sum(b == [m["candidates"][0]["token_id"] for m in r["masks"]]
                                  for b, r in zip(best, int8_side)) / len(texts),
            "export": json.loads((mlm / "onnx" / "llmkit-export.json").read_text())}


def compare_clf(clf: Path, texts: list[str], labels: list[str]) -> dict:
    import numpy as np

    from llmkit import inference

    sides = {r: inference.load(clf, "text-classification", "cpu", "fp32" if r == "torch" else "auto", runtime=r)
             for r in ("torch", "onnx", "onnx-int8")}
    logits = {r: inference.classify(loaded, texts) for r, loaded in sides.items()}
    names = sides["torch"].label_names
    predicted = {r: [names[i] for i in v.argmax(-1)] for r, v in logits.items()}
    return {"texts": len(texts), "max_abs_logit_diff_onnx": float(np.abs(logits["onnx"] - logits["torch"]).max()),
            "same_label_onnx": float(np.mean(logits["onnx"].argmax(-1) == logits["torch"].argmax(-1))),
            "same_label_int8": float(np.mean(logits["onnx-int8"].argmax(-1) == logits["torch"].argmax(-1))),
            "accuracy": {r: float(np.mean([p == gold for p, gold in zip(v, labels)])) for r, v in predicted.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--steps", type=int, default=60, help="pretraining and fine-tuning steps per family")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmkit-parity-") as tmp:
        tmp = Path(tmp)
        corpus_file = tmp / "corpus.txt"
        corpus_file.write_text("\n\n".join(sentences(3000, 0)) + "\n", encoding="utf-8")
        rows_ = sentences(900, 1)
        label = ["yes" if "return" in t.lower() else "no" for t in rows_]
        labeled = tmp / "train.csv"
        import csv

        with labeled.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *zip(rows_[:600], label[:600])])
        held_out, gold = rows_[600:], label[600:]
        majority = max(gold.count(v) for v in set(gold)) / len(gold)
        masked = [" ".join(w if i != len(w) % max(1, len(t.split())) else "[MASK]"
                           for i, w in enumerate(t.split())) for t in held_out]
        masked = [t if "[MASK]" in t else "[MASK] " + t for t in masked]
        for arch in args.archs.split(","):
            common.log(f"{arch}: pretrain, finetune, export")
            mlm, clf = train(arch, tmp, args.steps, corpus_file, labeled)
            rows.append({"arch": arch, "fill_mask": compare_mlm(mlm, masked), "classifier":
                         compare_clf(clf, held_out, gold)})
    print(f"\ntorch (fp32) against ONNX Runtime, trained tiny models ({args.steps} pretraining, {3 * args.steps} "
          f"fine-tuning steps), {rows[0]['classifier']['texts']} held-out texts; majority-class accuracy "
          f"{majority:.3f}\n")
    print(f"{'family':<12} {'mlm export diff':>15} {'same top-1':>10} {'max dscore':>10} {'int8 top-1':>10} "
          f"{'clf max dlogit':>14} {'same label':>10} {'int8 label':>10} {'acc torch/onnx/int8':>20}")
    for r in rows:
        f, c = r["fill_mask"], r["classifier"]
        acc = "/".join(f"{c['accuracy'][k]:.3f}" for k in ("torch", "onnx", "onnx-int8"))
        print(f"{r['arch']:<12} {f['export']['max_abs_diff']:>15.1e} {f['same_top1_onnx']:>10.1%} "
              f"{f['max_abs_score_diff_onnx']:>10.1e} {f['same_top1_int8']:>10.1%} "
              f"{c['max_abs_logit_diff_onnx']:>14.1e} {c['same_label_onnx']:>10.1%} {c['same_label_int8']:>10.1%} "
              f"{acc:>20}")
    common.write_results("onnx-parity", {"rows": rows, "steps": args.steps})


if __name__ == "__main__":
    main()

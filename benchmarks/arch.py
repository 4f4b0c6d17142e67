"""Benchmark: BERT-mini against ModernBERT of the same size, pretrained from scratch on the same text, then fine-tuned.

    python benchmarks/arch.py                 # ~25 min on 2 cores: 5 MB of text, 800 steps of 32 x 128 tokens each
    python benchmarks/arch.py --steps 100     # a smoke run

All train through the real `llmkit pretrain` with their family's recipe: BERT as `cpu-context` trains it (15%
masking, no dropout, linear decay), ModernBERT as `modernbert-cpu` does (30% masking, no dropout,
warmup-stable-decay, AdamW beta2 0.98), and a third run trains BERT with ModernBERT's recipe, to tell the
architecture from the recipe; the same tokenizer, blocks, batch and number of tokens. ModernBERT gets 6 layers x
256 (5.47M parameters with an 8,000-token vocabulary) to match BERT-mini (4 x 256, 5.41M): its family is deep and
narrow. Every `--eval-every` steps each model is scored on the same held-out blocks with the same fixed 15%
masks (so the two masking rates do not make the numbers incomparable): loss and masked-token accuracy against
training tokens and against wall time. Then each final model is fine-tuned on the same 8-topic classification
set (benchmarks/finetune.py's data) and its test accuracy reported. The runs take turns on the machine (one after the other, alternating order
is not needed: nothing else runs); results go to benchmarks/results/arch-*.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.offline_and_quiet()

WORK = common.RESULTS / "work-arch"
SEQ, BATCH, VOCAB = 128, 32, 8000
FAMILIES = {
    "bert-mini": ("cpu-context", ["model.size=mini", "model.dropout=0.0"]),
    # BERT with ModernBERT's recipe: separates what the architecture does from what the recipe does
    "bert-mini, modernbert recipe": ("modernbert-cpu", ["model.arch=bert", "model.size=mini", "model.dropout=0.0",
                                                         "model.config_overrides=initializer_range=0.05"]),
    "modernbert-6x256": ("modernbert-cpu", ["model.size=mini", "model.config_overrides=num_hidden_layers=6"]),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--corpus-mb", type=float, default=5.0)
    a = p.parse_args(argv)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    host = common.machine()
    common.log(f"{host['cpu']}, {host['cores']} cores, load average {host['load_average'][0]:.1f}")
    corpus = WORK / "corpus.txt"
    docs = common.docstring_corpus(int(a.corpus_mb * 1e6))
    corpus.write_text("".join(d + "\n\n" for d in docs), encoding="utf-8")
    tokenizer = shared_tokenizer(docs, WORK / "tokenizer")
    batches = fixed_eval_batches(corpus, tokenizer)
    runs = {}
    for name in FAMILIES:
        runs[name] = common.in_fresh_process(pretrain, name, str(corpus), str(tokenizer), a.steps, a.eval_every,
                                             str(batches))
        common.log(f"{name}: {runs[name]['tokens_per_s']:,.0f} tok/s, final loss {runs[name]['curve'][-1]['loss']:.3f}, "
                   f"accuracy {runs[name]['curve'][-1]['accuracy']:.3f}")
        runs[name]["finetune"] = common.in_fresh_process(finetune, str(WORK / name))
        common.log(f"{name}: fine-tuned accuracy {runs[name]['finetune']['accuracy']:.3f}")
    report = {"benchmark": "arch", "machine": {**host, "load_average_end": os.getloadavg()}, "steps": a.steps,
              "tokens": a.steps * BATCH * SEQ, "runs": runs}
    path = common.write_results("arch", report)
    print_report(report)
    print(f"\nresults: {path}")


def shared_tokenizer(docs: list[str], folder: Path) -> Path:
    from llmkit import modeling

    modeling.train_tokenizer(docs, VOCAB, True).save_pretrained(str(folder))
    return folder


def fixed_eval_batches(corpus: Path, tokenizer: Path) -> Path:
    """256 held-out blocks (documents the runs hold out too: the same hash split) with fixed 15% masks."""
    import torch
    from transformers import AutoTokenizer

    from llmkit import data
    from llmkit.masking import KeyedMasking

    tok = AutoTokenizer.from_pretrained(tokenizer)
    held = [d for d in data.paragraphs(corpus.read_text(encoding="utf-8")) if data.held_out(d, 0.05, 0)]
    stream = [i for ids in tok(held)["input_ids"] for i in ids]
    blocks = [stream[k:k + SEQ] for k in range(0, len(stream) - SEQ + 1, SEQ)][:256]
    collate = KeyedMasking(tokenizer=tok, mlm_probability=0.15, key=1234)
    batches = [collate([{"input_ids": b, "index": k + j} for j, b in enumerate(blocks[k:k + 64])])
               for k in range(0, len(blocks), 64)]
    path = WORK / "eval_batches.pt"
    torch.save(batches, path)
    return path


def pretrain(name: str, corpus: str, tokenizer: str, steps: int, eval_every: int, batches_path: str) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback

    from llmkit import config, pretrain as recipe

    batches = torch.load(batches_path)
    curve: list[dict[str, float]] = []
    shape: dict[str, int] = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.model, self.start, self.paused = model, time.perf_counter(), 0.0
            shape["parameters"] = sum(p.numel() for p in model.parameters())

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % eval_every == 0 or state.global_step == state.max_steps:
                paused = time.perf_counter()
                curve.append({"step": state.global_step, "tokens": state.global_step * BATCH * SEQ,
                              "seconds": paused - self.start - self.paused, **score(self.model, batches)})
                self.paused += time.perf_counter() - paused

    recipe_name, sets = FAMILIES[name]
    cfg = config.build("pretrain", recipe_name, flags={"data.train": [corpus], "model.tokenizer": tokenizer,
                                                       "output_dir": str(WORK / name)},
                       sets=[*sets, f"training.max_steps={steps}", f"training.per_device_train_batch_size={BATCH}",
                             f"data.max_seq_length={SEQ}", "training.eval_strategy=no", "training.save_strategy=no",
                             "training.logging_steps=50", "data.max_eval_samples=64"]
                       + ([f"training.lr_scheduler_kwargs={{num_decay_steps: {max(1, steps // 10)}}}"]
                          if recipe_name == "modernbert-cpu" else []))
    metrics = recipe.run(cfg, overwrite=True, callbacks=[Probe()])
    return {"curve": curve, "tokens_per_s": metrics["tokens_per_second"], **shape}


def score(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Loss and accuracy at the masked positions of the fixed batches (full head, fp32, eval mode)."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            where = b["labels"].ne(-100)
            loss += F.cross_entropy(logits[where], b["labels"][where], reduction="sum").item()
            correct += int(logits[where].argmax(-1).eq(b["labels"][where]).sum())
            count += int(where.sum())
    model.train(was_training)
    return {"loss": loss / count, "accuracy": correct / count}


def finetune(model: str) -> dict[str, Any]:
    """The 8-topic docstring classification set of benchmarks/finetune.py, 2 epochs, through `llmkit finetune`."""
    import finetune as ft

    from llmkit import config, finetune as recipe

    folder = Path(model + "-clf-data")
    folder.mkdir(exist_ok=True)
    train, test, _ = ft.write_split(ft.topic_examples(ft.TOPICS, 120 + 40, seed=0), 40, folder)
    cfg = config.build("finetune", flags={"data.train": [str(train)], "data.eval": [str(test)],
                                          "model.name": model, "output_dir": model + "-clf"},
                       sets=["training.num_train_epochs=4", "training.learning_rate=5e-4", "data.max_seq_length=128"])
    metrics = recipe.run(cfg, overwrite=True)
    return {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"]}


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nBERT vs ModernBERT from scratch: {report['tokens']:,} training tokens each; {m['cpu']}, {m['cores']} cores, "
          f"load average {m['load_average'][0]:.1f} -> {m['load_average_end'][0]:.1f}")
    names = list(report["runs"])
    print(f"{'':28}" + "".join(f"{n[:28]:>30}" for n in names))
    print(f"{'training tokens/s':28}" + "".join(f"{report['runs'][n]['tokens_per_s']:>30,.0f}" for n in names))
    for point in range(len(report["runs"][names[0]]["curve"])):
        row = [report["runs"][n]["curve"][point] for n in names]
        label = "after %.2fM tokens" % (row[0]["tokens"] / 1e6)
        cells = ["%.3f / %.3f (%.0f s)" % (r["loss"], r["accuracy"], r["seconds"]) for r in row]
        print(f"{label:28}" + "".join(f"{c:>30}" for c in cells))
    print(f"{'fine-tuned test accuracy':28}" + "".join(f"{report['runs'][n]['finetune']['accuracy']:>30.3f}"
                                                      for n in names))


if __name__ == "__main__":
    main()

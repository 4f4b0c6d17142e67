"""Benchmark: does the README's first command give, within 5 minutes on a CPU, a model whose guesses use context?

    python benchmarks/first_run.py                       # the README's first recipe (cpu-quick), cold cache
    python benchmarks/first_run.py --recipe cpu-context  # another recipe
    python benchmarks/first_run.py --recipe cpu-quick --set training.max_steps=2000 --set mlm.probability=0.4

The recipe runs through the real `llmkit pretrain` on the built-in corpus, from a new, empty cache (the tokenizer is
trained and the corpus tokenized inside the measured time), in a fresh process. At 1, 3 and 5 minutes of wall time
since the process started (and at the end), the model as it is then fills the masks of PROBES: docstring-style
sentences written for this benchmark (none occurs in the corpus), each masking a content word: a noun, verb or
adjective that the rest of the sentence determines. A probe counts when its word is among the top 5 guesses.
The answers differ from probe to probe, so guessing frequent words scores about 2 of 16. Probing pauses the clock.
Results: benchmarks/results/first_run-*.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.offline_and_quiet()

PROBES = [
    ("Close the [MASK] and release the underlying resources.", "file"),
    ("Raise a ValueError if the [MASK] is negative.", "value"),
    ("Convert the string to an [MASK] and return it.", "integer"),
    ("The timeout is given in [MASK] and may be a float.", "seconds"),
    ("Send the bytes to the remote [MASK].", "socket"),
    ("Wait until the child [MASK] terminates.", "process"),
    ("Return True if the [MASK] is an absolute path.", "path"),
    ("Return a copy of the [MASK] with all characters converted to lowercase.", "string"),
    ("This method is called when the [MASK] is closed.", "connection"),
    ("Remove the file from the [MASK].", "directory"),
    ("Return the current [MASK] in seconds since the epoch.", "time"),
    ("The [MASK] must be a positive integer.", "argument"),
    ("Encode the string using the given [MASK].", "encoding"),
    ("Return a new [MASK] containing the items of the sequence.", "list"),
    ("Start the [MASK] and wait for it to finish.", "thread"),
    ("Look up the [MASK] in the dictionary and return its value.", "key"),
]
CHECKPOINTS_S = (60, 180, 300)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="cpu-quick", help="the recipe to run (default: the README's first command's)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set items")
    a = p.parse_args(argv)
    host = common.machine()
    common.log(f"{host['cpu']}, {host['cores']} cores, load average {host['load_average'][0]:.1f}")
    result = common.in_fresh_process(run, a.recipe, a.sets, time.time())
    report = {"benchmark": "first_run", "recipe": a.recipe, "sets": a.sets, "machine":
              {**host, "load_average_end": os.getloadavg()}, **result}
    path = common.write_results("first_run", report)
    print(f"\n{a.recipe} {' '.join(a.sets)}: {result['steps']} steps in {result['wall_s']:.0f} s "
          f"({result['tokens_per_s']:,.0f} tokens/s while training)")
    for point in result["probes"]:
        print(f"  after {point['seconds']:5.0f} s (step {point['step']:>5}): right word in the top 5 for "
              f"{point['top5']:>2} of {len(PROBES)} probes, top 1 for {point['top1']}; eval loss {point['eval_loss']}")
    print(f"results: {path}")


def run(recipe: str, sets: list[str], started: float) -> dict[str, Any]:
    from transformers import TrainerCallback

    from llmkit import config, pretrain

    work = Path(tempfile.mkdtemp(prefix="llmkit-first-run-"))
    os.environ["LLMKIT_CACHE"] = str(work / "cache")  # cold: tokenizer and data prepared inside the time
    probes: list[dict[str, Any]] = []
    paused = [0.0]

    def clock() -> float:
        return time.time() - started - paused[0]

    class Probe(TrainerCallback):
        def __init__(self):
            self.due = list(CHECKPOINTS_S)

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if self.due and clock() >= self.due[0]:
                self.due.pop(0)
                probes.append(probe(model, processing_class, state, clock(), work, paused))

    cfg = config.build("pretrain", recipe, flags={"output_dir": str(work / "run")}, sets=sets)
    metrics = pretrain.run(cfg, callbacks=[Probe()])
    wall = clock()
    final = score(str(work / "run"))
    probes.append({"seconds": wall, "step": metrics["steps"], "eval_loss": round(metrics["eval_loss"], 3), **final})
    shutil.rmtree(work, ignore_errors=True)
    return {"wall_s": wall, "steps": metrics["steps"], "tokens_per_s": metrics["tokens_per_second"],
            "eval_loss": metrics["eval_loss"], "probes": probes}


def probe(model: Any, tokenizer: Any, state: Any, seconds: float, work: Path, paused: list[float]) -> dict[str, Any]:
    start = time.time()
    folder = work / f"probe-{state.global_step}"
    was_training = model.training
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model.train(was_training)
    losses = [e["eval_loss"] for e in state.log_history if "eval_loss" in e]
    result = {"seconds": seconds, "step": state.global_step,
              "eval_loss": round(losses[-1], 3) if losses else None, **score(str(folder))}
    shutil.rmtree(folder, ignore_errors=True)
    paused[0] += time.time() - start
    return result


def score(folder: str) -> dict[str, Any]:
    from llmkit import fillmask

    results = fillmask.fill_mask(folder, [text for text, _ in PROBES], top_k=5, device="cpu")
    guesses = [[c["token"].strip() for c in r["masks"][0]["candidates"]] for r in results]
    return {"top5": sum(word in g for (_, word), g in zip(PROBES, guesses)),
            "top1": sum(g[0] == word for (_, word), g in zip(PROBES, guesses)),
            "guesses": {text: g for (text, _), g in zip(PROBES, guesses)}}


if __name__ == "__main__":
    main()

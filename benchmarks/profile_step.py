"""Where a pretraining step's time goes: the torch profiler over real `llmkit pretrain` steps, grouped by kind of op.

    python benchmarks/profile_step.py          # mini BERT, batch 32 x 128, as benchmarks/pretrain.py trains it
    python benchmarks/profile_step.py --set model.cheap_dropout=false --set precision=fp32

The run is the real `llmkit.pretrain.run` on the built-in corpus; after --warmup steps, --steps steps are profiled
(CPU activities, self time per op). Ops are grouped by name into matmuls, dropout and random draws, dtype casts,
the loss, attention softmax, normalisation, activations, the optimizer and the rest (elementwise ops such as
dropout's compare and multiply land in the rest); each group's share of the profiled self time is printed, with
its top ops. Results: benchmarks/results/profile_step-*.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.offline_and_quiet()

GROUPS = [  # first match wins: (group, substrings of the op name)
    ("dropout and random draws", ("dropout", "bernoulli", "random_", "rand")),
    ("matmuls", ("mm", "matmul", "linear", "mkldnn")),
    ("dtype casts and copies", ("copy_", "_to_copy", "aten::to", "clone", "contiguous")),
    ("loss", ("cross_entropy", "nll", "log_softmax")),
    ("attention softmax", ("softmax",)),
    ("normalisation", ("layer_norm", "norm")),
    ("activations", ("gelu", "tanh", "silu")),
    ("optimizer", ("_foreach", "adam", "lerp", "addcdiv", "addcmul", "sqrt")),
]


def group_of(name: str) -> str:
    lowered = name.lower()
    return next((group for group, keys in GROUPS if any(k in lowered for k in keys)), "other")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set items")
    a = p.parse_args(argv)
    import torch
    from transformers import TrainerCallback

    from llmkit import config, pretrain

    class Profile(TrainerCallback):
        def __init__(self):
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == a.warmup:
                self.profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == a.warmup + a.steps:
                self.profiler.__exit__(None, None, None)

    profile = Profile()
    with tempfile.TemporaryDirectory(prefix="llmkit-profile-") as tmp:
        sets = ["training.per_device_train_batch_size=32", "data.max_seq_length=128", "training.eval_steps=100000",
                "training.save_steps=100000", f"training.max_steps={a.warmup + a.steps}", *a.sets]
        cfg = config.build("pretrain", flags={"output_dir": str(Path(tmp) / "run")}, sets=sets)
        pretrain.run(cfg, callbacks=[profile])

    events = [e for e in profile.profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = defaultdict(float)
    tops: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for e in events:
        groups[group_of(e.key)] += e.self_cpu_time_total
        tops[group_of(e.key)].append((e.key, e.self_cpu_time_total))
    print(f"\nprofile of {a.steps} training steps (after {a.warmup}), {' '.join(a.sets) or 'as shipped'}: "
          f"{total / 1e3 / a.steps:.1f} ms of op self time per step")
    report = {"benchmark": "profile_step", "machine": common.machine(), "sets": a.sets, "steps": a.steps,
              "ms_per_step": total / 1e3 / a.steps, "groups": {}}
    for group, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        top = ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(tops[group], key=lambda kv: -kv[1])[:3])
        print(f"  {group:26} {t / total:6.1%}   {top}")
        report["groups"][group] = {"share": t / total, "top": sorted(tops[group], key=lambda kv: -kv[1])[:5]}
    print(f"results: {common.write_results('profile_step', report)}")


if __name__ == "__main__":
    main()

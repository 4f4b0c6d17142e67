"""Benchmark: time to collate and mask one batch, llmkit's keyed masking against the per-sample way and plain HF.

    python benchmarks/collation.py            # batch 32 x 128 and 256 x 512, median of 200 batches each

- "per-sample generator": what llmkit did before: `DataCollatorForLanguageModeling` called once per sample with a
  torch generator seeded from (seed, epoch, sample index) by `numpy.random.SeedSequence`, then the rows padded
  together (masks keyed per sample, so resume and 1-vs-N processes agree, but one collator call per sample);
- "keyed, vectorised": `llmkit.masking.KeyedMasking`: the same keying, the whole batch drawn at once;
- "plain HF": `DataCollatorForLanguageModeling` on the batch with the global generator (not reproducible per sample).
All on the same blocks, in this process; results in benchmarks/results/collation-*.json.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import DataCollatorForLanguageModeling

    from llmkit import data, modeling
    from llmkit.masking import KeyedMasking

    tokenizer = modeling.train_tokenizer(data.builtin_corpus()[:20000], 16000, True)
    rng = np.random.default_rng(0)

    def per_sample(collator, examples, seed=42, epoch=0):
        rows = []
        for example in examples:
            entropy = np.random.SeedSequence([seed, epoch + 1, example["index"]]).generate_state(2, np.uint32)
            collator.generator = torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
            rows.append(collator([{"input_ids": example["input_ids"]}]))
        width = max(r["input_ids"].shape[1] for r in rows)
        return {k: torch.cat([F.pad(r[k], (0, width - r[k].shape[1]), value=-100 if k == "labels" else 0)
                              for r in rows]) for k in rows[0]}

    keyed = KeyedMasking(tokenizer=tokenizer, key=42)
    hf = DataCollatorForLanguageModeling(tokenizer=tokenizer)
    report = {"machine": common.machine(), "shapes": {}}
    for batch, length in ((32, 128), (256, 512)):
        blocks = [{"input_ids": rng.integers(5, len(tokenizer), length).tolist(), "index": i} for i in range(batch)]
        plain = [{"input_ids": b["input_ids"]} for b in blocks]
        jobs = {"per-sample generator (before)": lambda: per_sample(hf, blocks),
                "keyed, vectorised (llmkit)": lambda: keyed(blocks),
                "plain HF (global RNG)": lambda: hf(plain)}
        times = {name: [] for name in jobs}
        for _ in range(200 if batch == 32 else 40):
            for name, job in jobs.items():  # interleaved
                start = time.perf_counter()
                job()
                times[name].append(time.perf_counter() - start)
        medians = {name: 1000 * statistics.median(t) for name, t in times.items()}
        report["shapes"][f"{batch}x{length}"] = medians
        print(f"\nbatch {batch} x {length}: median ms per batch")
        for name, ms in medians.items():
            print(f"  {name:32} {ms:8.2f} ms")
    print(f"\nresults: {common.write_results('collation', report)}")


if __name__ == "__main__":
    main()

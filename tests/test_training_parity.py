"""llmkit's fine-tuning loop against the stock `Trainer`: the same losses, gradients and weights, step by step.

The llmkit side is built the way `llmkit finetune` builds it (`finetune.classifier`, `training.training_arguments`,
`finetune.make_trainer`), with its speed levers on: dynamic padding, length-grouped batches,
eager attention on the CPU, llmkit's loss averaging. The plain side is a stock `Trainer` with SDPA attention and
every text padded to the maximum length, fed the same examples in the same batches in the same order. Dropout is
off on both sides: its masks are random by design (llmkit's CPU masks are checked in test_dropout.py). A speed
change that alters what the model learns fails here, long before a benchmark would notice.
"""

from __future__ import annotations

import copy
import platform
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

SEQ, STEPS = 48, 4


class Recorder(TrainerCallback):
    """Keeps each step's loss and the gradient vector just before each optimizer step."""

    def __init__(self):
        self.losses, self.grads = [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(torch.cat([p.grad.detach().flatten().clone() for p in model.parameters()
                                     if p.grad is not None]))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def texts_and_labels(n: int = 64) -> tuple[list[str], list[str]]:
    """Texts of 2 to 40 words whose label goes with their length: the case where length grouping matters."""
    import random

    from tests.conftest import WORDS

    rng = random.Random(1)
    texts, labels = [], []
    for _ in range(n):
        k = rng.randrange(2, 41)
        texts.append(" ".join(rng.choice(WORDS) for _ in range(k)))
        labels.append("long" if k > 20 else "short" if k < 10 else "middle")
    return texts, labels


def llmkit_side(tiny_mlm, tmp_path, batch: int, accumulation: int):
    from llmkit import config, finetune, metrics, training
    from llmkit.data import labeled

    texts, labels = texts_and_labels()
    names = sorted(set(labels))
    cfg = config.build("finetune", sets=[
        f"model.name={tiny_mlm}", "model.dropout=0.0", f"data.max_seq_length={SEQ}", f"output_dir={tmp_path / 'run'}",
        f"training.max_steps={STEPS}", f"training.per_device_train_batch_size={batch}",
        f"training.gradient_accumulation_steps={accumulation}", "training.logging_steps=1",
        'training.eval_strategy="no"', 'training.save_strategy="no"', "training.load_best_model_at_end=false",
        "training.dataloader_num_workers=0", "training.learning_rate=1e-3"])
    args = training.training_arguments(cfg, tmp_path / "checkpoints", "fp32")
    attention = "eager"  # what llmkit picks for training on a CPU (modeling.resolve_attention)
    tokenizer, model = finetune.classifier(cfg, "single_label", names, attention)
    data = labeled.Labeled(texts, None, labels, "test")
    features = labeled.features(tokenizer, data, labeled.encode_labels(labels, "single_label", names), cfg.data)
    trainer, _, _ = finetune.make_trainer(cfg, args, model, tokenizer, features, features, "single_label", names,
                                          metrics.check_metric("f1_macro", "single_label", len(names)))
    return cfg, trainer, tokenizer, features


def plain_side(tiny_mlm, tmp_path, llmkit_model, tokenizer, ordered: list[dict], batch: int):
    """A stock Trainer (sequential order over `ordered`, which is llmkit's order), texts padded to SEQ."""
    from transformers import (AutoModelForSequenceClassification, Trainer, TrainingArguments,
                              default_data_collator, set_seed)

    set_seed(42)
    config = copy.deepcopy(llmkit_model.config)
    config._attn_implementation = "sdpa"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_mlm, config=config, attn_implementation="sdpa")
    padded = [{k: v + [tokenizer.pad_token_id if k == "input_ids" else 0] * (SEQ - len(v)) if isinstance(v, list)
               else v for k, v in f.items()} for f in ordered]
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), max_steps=STEPS, per_device_train_batch_size=batch,
                             learning_rate=1e-3, warmup_steps=0.1, weight_decay=0.01, seed=42, report_to="none",
                             save_strategy="no", disable_tqdm=True, logging_steps=1, use_cpu=True,
                             train_sampling_strategy="sequential", dataloader_num_workers=0)
    return Trainer(model=model, args=args, train_dataset=padded, data_collator=default_data_collator)


def llmkit_order(trainer, features: list[dict]) -> list[dict]:
    """The features in the order llmkit's trainer trains on them (its dataloader's batches, unpadded)."""
    order = []
    by_ids = {tuple(f["input_ids"]): f for f in features}
    for batch in trainer.get_train_dataloader():
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
            order.append(by_ids[tuple(i for i, m in zip(ids, mask) if m)])
    return order


@pytest.mark.parametrize("batch,accumulation", [(8, 1), (4, 2)])
def test_finetune_steps_match_plain_trainer(tiny_mlm, tmp_path, batch, accumulation):
    """Same losses and gradients for the first steps, same weights after them. With accumulation, llmkit's two
    micro-batches of 4 must equal the plain Trainer's one batch of 8: the loss is averaged over the examples of
    the optimizer step either way."""
    cfg, trainer, tokenizer, features = llmkit_side(tiny_mlm, tmp_path, batch, accumulation)
    assert len({tuple(f["input_ids"]) for f in features}) == len(features)  # the order can be read back
    ordered = llmkit_order(trainer, features)
    lengths = [len(f["input_ids"]) for f in ordered]
    assert sorted(lengths) != lengths and len(set(lengths)) > 10  # a real length-grouped order, not sorted
    plain = plain_side(tiny_mlm, tmp_path, trainer.model, tokenizer, ordered, batch * accumulation)
    for name, p in plain.model.state_dict().items():  # the same fresh head from the same seed
        torch.testing.assert_close(p, trainer.model.state_dict()[name], rtol=0, atol=0, msg=name)

    ours, theirs = Recorder(), Recorder()
    trainer.add_callback(ours)
    plain.add_callback(theirs)
    trainer.train()
    plain.train()

    assert len(ours.losses) == len(theirs.losses) == STEPS and len(ours.grads) == STEPS
    assert ours.losses == pytest.approx(theirs.losses, rel=1e-4)
    assert ours.losses[-1] < ours.losses[0]  # it learns
    for step, (a, b) in enumerate(zip(ours.grads, theirs.grads)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=f"gradients at step {step + 1}")
    for name, p in plain.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], p, rtol=1e-3, atol=1e-5, msg=name)


def test_default_order_is_the_trainers_length_grouped_order_index_for_index():
    """The default order is transformers' own `group_by_length` order (reseeded per epoch): the same indices."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from llmkit.training import LengthGroupedBatches

    g = torch.Generator().manual_seed(0)
    for n, batch in ((1000, 32), (333, 8), (40, 16)):
        lengths = torch.randint(3, 129, (n,), generator=g).tolist()
        for epoch in (0, 3):
            sampler = LengthGroupedBatches(lengths, batch=batch, seed=7)
            sampler.set_epoch(epoch)
            expected = get_length_grouped_indices(lengths, batch,
                                                  generator=torch.Generator().manual_seed(7 * 1_000_003 + epoch))
            assert list(sampler) == expected


def test_shuffled_length_grouped_batches_cover_each_epoch_in_random_batch_order():
    """Every example once per epoch, full batches of similar length in a seeded random order (not long-to-short
    runs), the longest batch first and the short one last, a different order each epoch, the same on a rerun."""
    from llmkit.training import LengthGroupedBatches

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 129, (1000,), generator=g).tolist()
    sampler = LengthGroupedBatches(lengths, batch=32, seed=7, window=8, shuffle_batches=True)
    batches = sampler.batches()
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))
    assert [len(b) for b in batches] == [32] * 31 + [8]
    assert max(lengths[i] for i in batches[0]) == max(lengths)
    longest = [max(lengths[i] for i in b) for b in batches[:-1]]
    descents = sum(a > b for a, b in zip(longest, longest[1:]))
    assert 8 < descents < 23  # random batch order; sorted runs would descend ~27 times
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.25 * sum(lengths)  # random order pads ~2x here
    first = list(sampler)
    assert list(LengthGroupedBatches(lengths, batch=32, seed=7, window=8, shuffle_batches=True)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap setting is glibc's (mallopt)")
@pytest.mark.parametrize("keep", [True, False])
def test_a_large_freed_tensor_stays_in_the_heap_for_the_next_step(keep):
    """Kept: the memory of a freed 64 MB tensor stays with the process (no unmap, no page faults next time);
    glibc's default unmaps it at once."""
    code = ("import torch\nfrom llmkit import devices\n"
            f"if {keep}:\n    assert devices.keep_freed_memory()\n"
            "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
            "x = torch.ones(16 << 20)\nheld = rss()\ndel x\nprint(held - rss())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    released_mb = int(out.split()[-1])
    assert (released_mb < 8) if keep else (released_mb > 56), released_mb

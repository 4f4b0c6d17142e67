"""The MLM loss llmkit trains with equals Hugging Face's: masked-positions-only head, gradient accumulation, evaluation.

All in fp32 on tiny real BERTs; each test states the exact tolerance it holds to.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llmkit import data, training
from llmkit.modeling import train_tokenizer
from tests.conftest import prepare_texts, toy_corpus

VOCAB, SEQ = 120, 16


def tiny_bert(seed: int = 0, dropout: float = 0.0):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    config._attn_implementation = "sdpa"
    return BertForMaskedLM(config)


def premasked_batch(masked_per_row: list[int], seed: int = 1) -> dict[str, torch.Tensor]:
    """A fixed MLM batch: row i has `masked_per_row[i]` labelled positions; the rest are -100."""
    g = torch.Generator().manual_seed(seed)
    rows = len(masked_per_row)
    ids = torch.randint(5, VOCAB, (rows, SEQ), generator=g)
    labels = torch.full_like(ids, -100)
    for i, n in enumerate(masked_per_row):
        where = torch.randperm(SEQ - 2, generator=g)[:n] + 1  # never [CLS]/[SEP] slots
        labels[i, where] = ids[i, where]
        ids[i, where] = 4  # the "[MASK]" id of this toy vocabulary
    attention = torch.ones_like(ids)
    attention[0, -3:] = 0  # one padded row: padding must not change anything either
    labels[0, -3:] = -100
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no",
                disable_tqdm=True, seed=0, logging_nan_inf_filter=False)
    return TrainingArguments(**{**base, **kw})


# ---------------------------------------------------------------- masked-positions head == full head


def test_sparse_head_gives_hf_loss_logits_and_gradients(tmp_path):
    batch = premasked_batch([3, 1, 5, 2, 4, 2])
    full = tiny_bert(dropout=0.1)
    sparse = copy.deepcopy(full)
    full.train(), sparse.train()

    torch.manual_seed(7)  # dropout: both forwards draw the same encoder masks
    reference = full(**batch)  # BertForMaskedLM's own mean CE over labelled tokens
    reference.loss.backward()

    trainer = training.MLMTrainer(model=sparse, args=args(tmp_path))
    assert trainer.masked_head.available
    sparse.train()
    torch.manual_seed(7)
    loss = trainer.compute_loss(sparse, batch)
    loss.backward()

    assert abs(loss.item() - reference.loss.item()) <= 1e-5
    expected, got = grads(full), grads(sparse)
    assert expected.keys() == got.keys() and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)

    # the head really ran on the labelled rows only, and its logits are the full head's at those rows
    positions = batch["labels"].ne(-100)
    with torch.no_grad():
        full.eval(), sparse.eval()
        logits, labels, index = training.mlm_logits(sparse, batch, trainer.masked_head)
        full_logits = full(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # the collator's flat positions (computed on the CPU: no device sync) give the same
        given = training.mlm_logits(sparse, {**batch, "masked_index": index}, trainer.masked_head)
    assert logits.shape == (int(positions.sum()), VOCAB)
    torch.testing.assert_close(logits, full_logits[positions], rtol=1e-5, atol=1e-5)
    assert torch.equal(labels, batch["labels"][positions])
    assert torch.equal(index, positions.flatten().nonzero()[:, 0])
    assert torch.equal(given[0], logits) and torch.equal(given[1], labels)
    assert trainer.masked_head.positions is None  # nothing left armed for the next caller


def test_masked_index_padded_to_a_few_shapes_changes_no_loss_gradient_or_metric(tmp_path):
    import numpy as np

    from llmkit.masking import INDEX_MULTIPLE, masked_index

    batch = premasked_batch([3, 1, 5, 2, 4, 2])
    labels = batch["labels"].numpy()
    exact = np.flatnonzero(labels.ravel() != -100)
    padded = masked_index(labels)
    assert len(padded) % INDEX_MULTIPLE == 0 and len(padded) > len(exact)
    assert np.array_equal(padded[:len(exact)], exact) and (labels.ravel()[padded[len(exact):]] == -100).all()
    assert np.array_equal(masked_index(np.arange(6).reshape(2, 3)), np.arange(6))  # all labelled: left as is

    model = tiny_bert()
    trainer = training.MLMTrainer(model=model, args=args(tmp_path))
    results = []
    for index in (exact, padded):
        model.zero_grad()
        loss = trainer.compute_loss(model, {**batch, "masked_index": torch.from_numpy(index)})
        loss.backward()
        model.eval()
        _, stats, _ = trainer.prediction_step(model, {**batch, "masked_index": torch.from_numpy(index)}, False)
        model.train()
        results.append((loss.item(), grads(model), stats))
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = results
    assert abs(loss_a - loss_b) <= 1e-6
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(stats_b, stats_a)
    assert stats_b[:, 2].tolist() == batch["labels"].ne(-100).sum(1).float().tolist()  # padding not counted


def test_loss_normalised_by_num_items_in_batch_is_the_accumulated_token_mean(tmp_path):
    batch = premasked_batch([3, 1, 5, 2])
    model = tiny_bert()
    trainer = training.MLMTrainer(model=model, args=args(tmp_path))
    total = int(batch["labels"].ne(-100).sum())
    with torch.no_grad():
        mean = trainer.compute_loss(model, batch).item()
        over_more = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(3 * total)).item()
    assert over_more == pytest.approx(mean / 3, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_gives_plain_cross_entropy_loss_and_gradient(dtype):
    """Several chunks of rows (V = 9,000: 58 rows a chunk), padded rows (-100), a scaled backward pass."""
    g = torch.Generator().manual_seed(3)
    rows, vocab = 150, 9000
    assert training.SummedCrossEntropy.chunk_rows(torch.empty(1, vocab)) < rows / 2
    x = (torch.randn(rows, vocab, generator=g) * 4).to(dtype)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[[0, 57, 58, 149]] = -100

    results = []
    for loss_of in (lambda z: F.cross_entropy(z.float(), labels, reduction="sum"),
                    lambda z: training.SummedCrossEntropy.apply(z, labels)):
        z = x.clone().requires_grad_()
        loss = loss_of(z)
        (loss / 77).backward()
        results.append((loss.item(), z.grad))
    (expected, expected_grad), (loss, grad) = results
    assert loss == pytest.approx(expected, rel=1e-6)
    assert grad.dtype == dtype and not grad[[0, 57, 58, 149]].any()
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=1e-5 if dtype == torch.float32 else 8e-3,
                               atol=1e-10)  # fp32: rounding of the softmax; bf16: at most one bf16 rounding step
    if dtype == torch.bfloat16:  # after rounding to bf16, nearly all are the same bits
        assert grad.eq(expected_grad).float().mean() > 0.999


def test_trainer_loss_is_the_same_with_and_without_chunks(tmp_path):
    batch = premasked_batch([3, 1, 5, 2, 4, 2])
    results = []
    for chunked in (True, False):
        model = tiny_bert()
        trainer = training.MLMTrainer(model=model, args=args(tmp_path), chunked_loss=chunked)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results.append((loss.item(), grads(model)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- gradient accumulation


class RecordingTrainer(training.MLMTrainer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen_items: list[int] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen_items.append(None if num_items_in_batch is None else int(num_items_in_batch))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def one_sgd_step(tmp_path, batch, per_device: int, accumulation: int) -> tuple[dict, RecordingTrainer]:
    """Parameters after one optimizer step of the real MLMTrainer (SGD, lr 1, nothing else): -gradient."""
    from transformers import default_data_collator

    model = tiny_bert()
    rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]
    trainer = RecordingTrainer(
        model=model, train_dataset=rows, data_collator=default_data_collator,
        args=args(tmp_path, optim="sgd", learning_rate=1.0, weight_decay=0.0, max_grad_norm=0.0,
                  lr_scheduler_type="constant", warmup_steps=0, max_steps=1, per_device_train_batch_size=per_device,
                  gradient_accumulation_steps=accumulation, logging_strategy="no"))
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, trainer


def test_gradient_accumulation_gives_the_same_step_as_one_big_batch(tmp_path):
    # Uneven masked counts (1..9 per row): any 4+4 split has unequal token counts, so averaging
    # per-micro-batch means (the classic accumulation bug) would give a different step.
    batch = premasked_batch([9, 1, 1, 2, 1, 3, 1, 1])
    total = int(batch["labels"].ne(-100).sum())

    # reference: one HF full-head loss over the whole batch, one SGD step by hand
    model = tiny_bert()
    model(**batch).loss.backward()
    expected = {n: (p - p.grad).detach() for n, p in model.named_parameters()}

    one, t1 = one_sgd_step(tmp_path / "ga1", batch, per_device=8, accumulation=1)
    two, t2 = one_sgd_step(tmp_path / "ga2", batch, per_device=4, accumulation=2)
    assert t1.seen_items == [total]
    assert t2.seen_items == [total, total]  # each micro-batch is normalised by the whole step's tokens
    for name in expected:
        torch.testing.assert_close(one[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(two[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)

    # the test can tell: the mean of per-micro-batch means moves the parameters elsewhere
    naive = tiny_bert()
    for half in (slice(0, 4), slice(4, 8)):
        (naive(**{k: v[half] for k, v in batch.items()}).loss / 2).backward()
    gap = max((p.grad - (p0 - e)).abs().max().item() for (n, p), (_, p0), e in
              zip(naive.named_parameters(), tiny_bert().named_parameters(), expected.values()))
    assert gap > 1e-3


# ---------------------------------------------------------------- precision


def test_bf16_on_the_cpu_is_real_autocast(tmp_path):
    """precision bf16 on the CPU runs the matmuls in bf16 with fp32 master weights: not a flag the Trainer ignores."""
    from transformers import default_data_collator

    from llmkit import config

    cfg = config.build("pretrain")
    cfg.training = {"max_steps": 1, "per_device_train_batch_size": 4, "report_to": "none", "save_strategy": "no",
                    "logging_strategy": "no"}
    model = tiny_bert()
    seen = []
    model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batch = premasked_batch([2, 3, 1, 2])
    trainer = training.MLMTrainer(model=model, args=training.training_arguments(cfg, tmp_path, "bf16"),
                                  train_dataset=[{k: v[i] for k, v in batch.items()} for i in range(4)],
                                  data_collator=default_data_collator)
    trainer.train()
    assert seen == [torch.bfloat16]
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ---------------------------------------------------------------- evaluation


class RecordingCollator:
    """Wraps a collator and keeps a copy of every batch it makes."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return batch


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(toy_corpus(), vocab_size=VOCAB, lowercase=True)


def test_evaluation_is_token_mean_with_exact_accuracy_and_fixed_masks(tmp_path, tokenizer):
    from llmkit.masking import KeyedMasking

    folder, manifest = prepare_texts(tmp_path, tokenizer, toy_corpus(60))
    blocks = data.TokenBlocks(folder, "train", manifest, SEQ)
    assert len(blocks) > 20 and len(blocks.ids(len(blocks) - 1)) < SEQ  # several batches, the last one padded
    collator = RecordingCollator(KeyedMasking(tokenizer=tokenizer))
    model = tiny_bert(seed=3)
    trainer = training.MLMTrainer(model=model, args=args(tmp_path, per_device_eval_batch_size=8, remove_unused_columns=False),
                                  data_collator=collator, eval_dataset=blocks, processing_class=tokenizer)

    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    first = trainer.evaluate()
    assert torch.equal(torch.get_rng_state(), rng_before)  # training randomness untouched
    first_batches, collator.batches = collator.batches, []
    second = trainer.evaluate()
    assert len(first_batches) == len(collator.batches) == -(-len(blocks) // 8)
    for a, b in zip(first_batches, collator.batches):
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert second["eval_loss"] == first["eval_loss"]

    # direct computation on the same masked batches, with the plain full head
    loss_sum, correct, count, batch_means = 0.0, 0, 0, []
    model.eval()
    with torch.no_grad():
        for batch in first_batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits  # none:
            where = batch["labels"].ne(-100)  # full packed blocks
            token_loss = F.cross_entropy(logits[where], batch["labels"][where], reduction="none")
            loss_sum += token_loss.sum().item()
            correct += int(logits[where].argmax(-1).eq(batch["labels"][where]).sum())
            count += int(where.sum())
            batch_means.append(token_loss.mean().item())
    assert first["eval_masked_tokens"] == count
    assert first["eval_loss"] == pytest.approx(loss_sum / count, rel=1e-5)
    assert first["eval_masked_accuracy"] == correct / count
    # token-level, not the mean of per-batch means (which differ here because batches mask different counts)
    assert abs(sum(batch_means) / len(batch_means) - loss_sum / count) > 1e-4

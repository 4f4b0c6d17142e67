"""Masked-LM batches: `DataCollatorForLanguageModeling`'s masking, with masks keyed on each sample.

HF's collator draws its masks from a generator whose state depends on every batch collated before, which a
resumed run cannot reproduce and N processes cannot share. `KeyedMasking` keeps the collator's settings and
semantics (`mlm_probability`; of the selected tokens `mask_replace_prob` become the mask token,
`random_replace_prob` a random token, the rest stay; special tokens and padding never; whole-word masking
selects words and masks every piece with the mask token, as HF's does) but draws each decision from
`keyed.uniform(seed, epoch, sample index, position)`. So a sample's masks are the same whatever batch it is
in, on 1 or N processes, in a resumed run; every evaluation uses the same masks (epoch -1); and a batch is
masked in one vectorised pass (no per-sample generator). The batch also carries `masked_index`, the flat
positions of the labels, so the masked-positions loss gathers them without a device-to-host sync. Its length is
rounded up to a multiple of `INDEX_MULTIPLE` with a position that has no label (label -100, so it adds nothing to
the loss or the metrics): the head's matrix shapes then take a few values instead of a new one at every step,
which on a CPU kept the allocator's and oneDNN's caches growing by megabytes per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

from llmkit import keyed

SELECT, HOW, RANDOM_TOKEN = 0, 1, 2  # the three independent draws per position
INDEX_MULTIPLE = 64  # masked_index lengths are multiples of this (padded with an unlabelled position)


def masked_index(labels: np.ndarray) -> np.ndarray:
    """Flat positions of the labels, padded to a multiple of INDEX_MULTIPLE with an unlabelled position."""
    flat = labels.ravel() != -100
    index = np.flatnonzero(flat)
    short = -len(index) % INDEX_MULTIPLE
    unlabelled = int(np.argmin(flat))  # the first position without a label, if there is one
    if short and not flat[unlabelled]:
        index = np.concatenate([index, np.full(short, unlabelled, dtype=index.dtype)])
    return index


@dataclass
class KeyedMasking(DataCollatorForLanguageModeling):
    """Pads a batch of {"input_ids", "index"} examples and masks it; see the module docstring."""

    key: int = 0  # the run's seed
    epoch: int = 0  # set by `training.MaskingEpochCallback`; -1 while evaluating

    def __post_init__(self):
        super().__post_init__()
        tokenizer = self.tokenizer
        size = max(len(tokenizer), max(tokenizer.all_special_ids, default=0) + 1)
        self.special = np.zeros(size, dtype=bool)
        self.special[tokenizer.all_special_ids] = True
        self.starts = word_starts(tokenizer, size) if self.whole_word_mask else None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.mask_id = tokenizer.mask_token_id

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int64, count=len(examples))
        width = int(lengths.max(initial=1))
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = np.full((len(examples), width), self.pad_id, dtype=np.int64)
        for row, example in enumerate(examples):
            ids[row, :lengths[row]] = example["input_ids"]
        attention = np.arange(width)[None, :] < lengths[:, None]
        index = np.fromiter((int(e["index"]) for e in examples), dtype=np.int64, count=len(examples))
        inputs, labels = self.mask(ids, self.special[ids] | ~attention, index)
        # Where the labels are, as flat indices computed here on the CPU: the loss gathers the masked positions
        # with them, and the accelerator never has to report how many there are (no host sync per step).
        batch = {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
                 "masked_index": torch.from_numpy(masked_index(labels))}
        if not attention.all():  # full packed blocks carry no mask: the model would check one on the device per step
            batch["attention_mask"] = torch.from_numpy(attention.astype(np.int64))
        return batch

    def mask(self, ids: np.ndarray, special: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) for token ids [batch, length]; `special` marks positions never masked."""
        positions = np.arange(ids.shape[1])[None, :]
        draw = lambda stream: keyed.uniform(self.key, self.epoch + 1, index[:, None], positions, stream)  # noqa: E731
        chosen = draw(SELECT) < self.mlm_probability
        if self.starts is not None:  # select whole words: the draw at each word's first piece decides for all
            after_special = np.concatenate([np.ones_like(special[:, :1]), special[:, :-1]], axis=1)
            start = self.starts[ids] | after_special | special
            first = np.maximum.accumulate(np.where(start, positions, 0), axis=1)
            chosen = np.take_along_axis(chosen & start, first, axis=1)
        chosen &= ~special
        labels = np.where(chosen, ids, -100)
        how = draw(HOW)
        inputs = ids.copy()
        inputs[chosen & (how < self.mask_replace_prob)] = self.mask_id
        randomised = chosen & (how >= self.mask_replace_prob) & (how < self.mask_replace_prob + self.random_replace_prob)
        if randomised.any():
            random_ids = (draw(RANDOM_TOKEN) * len(self.tokenizer)).astype(np.int64)
            inputs[randomised] = random_ids[randomised]
        return inputs, labels


def word_starts(tokenizer: Any, size: int) -> np.ndarray:
    """Which vocabulary entries begin a word: WordPiece marks the other pieces ("##ing"); byte-level BPE and
    SentencePiece mark word starts ("Ġword", "▁word"). Special tokens count as starts."""
    table = np.zeros(size, dtype=bool)
    model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {}) if tokenizer.is_fast else {}
    prefix = model.get("continuing_subword_prefix") or ("##" if model.get("type") in (None, "WordPiece") else None)
    for token, i in tokenizer.get_vocab().items():
        if i < size:
            table[i] = (not token.startswith(prefix)) if prefix else token.startswith(("Ġ", "▁"))
    table[tokenizer.all_special_ids] = True
    return table

"""Entities in texts from a token classifier, as `pipeline("token-classification", aggregation_strategy="simple")`
gives them, on either runtime `inference.load` chooses (transformers' model or ONNX Runtime).

- `find(loaded, texts)`: per text, the entities {entity_group, score, word, start, end}: each word piece takes its
  most probable tag, adjacent pieces of one type join (a B- tag starts a new entity), the score is the mean of
  theirs, 'O' is left out. A text longer than the model's window is read in overlapping windows (the tokenizer's
  stride, as the pipeline's `stride=`) and overlapping entities are resolved as the pipeline resolves them. The
  steps are transformers' `TokenClassificationPipeline` (gather_pre_entities, group_entities,
  aggregate_overlapping_entities) on numpy arrays, so tests compare the two on the same model;
- `window_logits(loaded, windows)`: raw logits of padded-free windows in input order, batched by length (the
  evaluation of a fine-tuning run and `find` share it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmkit import inference
from llmkit.errors import ConfigError


def window_logits(loaded: Any, ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None,
                  batch_size: int = 64) -> list[np.ndarray]:
    """Logits [length, tags] of each window of input ids (with special tokens), in input order."""
    out: list[np.ndarray] = [np.zeros((0, 0), dtype=np.float32)] * len(ids)
    with loaded.running():
        for index in inference.by_length([len(row) for row in ids], batch_size):
            batch = inference.pad([ids[i] for i in index], [types[i] for i in index] if types else None,
                                  loaded.tokenizer.pad_token_id)
            logits = inference.to_numpy(loaded.logits(batch))
            for r, i in enumerate(index):
                out[i] = logits[r, :len(ids[i])]
    return out


def default_stride(window: int) -> int:
    """The overlap of windows over a long text: a quarter of the window (the pipeline needs one below it)."""
    return max(0, window // 4)


def find(loaded: Any, texts: Sequence[str], batch_size: int = 64, stride: int | None = None,
         ignore_labels: Sequence[str] = ("O",)) -> list[list[dict[str, Any]]]:
    """The entities of each text (see the module's docstring)."""
    tokenizer = loaded.tokenizer
    room = loaded.window - tokenizer.backend_tokenizer.num_special_tokens_to_add(False) - 1
    if stride is None:
        stride = min(default_stride(loaded.window), max(0, room))
    elif stride > room:  # the tokenizer needs at least one new piece per window to move on
        raise ConfigError(f"stride {stride} leaves no room in the model's window of {loaded.window} pieces; "
                          f"give a stride of at most {max(0, room)}")
    encoder = inference.backend(tokenizer, loaded.window, stride)
    chunks, owner = [], []
    for t, encoding in enumerate(encoder.encode_batch(list(texts), add_special_tokens=True)):
        for chunk in [encoding, *encoding.overflowing]:
            chunks.append(chunk)
            owner.append(t)
    with_types = "token_type_ids" in tokenizer.model_input_names
    logits = window_logits(loaded, [c.ids for c in chunks], [c.type_ids for c in chunks] if with_types else None,
                           batch_size)
    id2label = loaded.model.config.id2label
    found: list[list[list[dict[str, Any]]]] = [[] for _ in texts]
    for chunk, row, t in zip(chunks, logits, owner):
        entities = group_entities(pre_entities(tokenizer, texts[t], chunk, softmax(row)), id2label, tokenizer)
        found[t].append([e for e in entities if e["entity_group"] not in ignore_labels])
    return [merge_overlapping([e for part in parts for e in part]) if len(parts) > 1 else parts[0]
            for parts in found]


def softmax(logits: np.ndarray) -> np.ndarray:
    """In float32, as the pipeline computes it."""
    logits = logits.astype(np.float32, copy=False)
    shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def pre_entities(tokenizer: Any, text: str, chunk: Any, scores: np.ndarray) -> list[dict[str, Any]]:
    """The pipeline's `gather_pre_entities` for the simple strategy: each non-special piece, its text span and
    scores (an unknown piece shows the text it covers)."""
    out = []
    for idx, (token_id, special, (start, end)) in enumerate(zip(chunk.ids, chunk.special_tokens_mask,
                                                                chunk.offsets)):
        if special:
            continue
        word = text[start:end] if token_id == tokenizer.unk_token_id else tokenizer.convert_ids_to_tokens(token_id)
        out.append({"word": word, "scores": scores[idx], "start": start, "end": end})
    return out


def _tag(name: str) -> tuple[str, str]:
    """(position, type) of a tag name: B-, I-, and BIOES's E- (an entity's last piece) and S- (an entity of one
    piece); any other name is a continuation of its own type, as the pipeline reads it."""
    if name[:2] in ("B-", "I-", "E-", "S-"):
        return name[0], name[2:]
    return "I", name


def group_entities(pieces: list[dict[str, Any]], id2label: dict[int, str], tokenizer: Any) -> list[dict[str, Any]]:
    """Adjacent pieces with the same type join unless the next one is B- (the pipeline's `group_entities`).
    With BIOES tags an entity also ends at an E- or S- piece and an S- piece starts one: the pipeline would read
    E-PER and S-PER as types of their own and split every entity before its last piece."""
    tagged = []
    for p in pieces:
        best = int(p["scores"].argmax())
        tagged.append({**p, "entity": id2label[best], "score": p["scores"][best]})
    groups, current = [], []
    for entity in tagged:
        if current:
            position, kind = _tag(entity["entity"])
            last_position, last = _tag(current[-1]["entity"])
            if kind == last and position in ("I", "E") and last_position not in ("E", "S"):
                current.append(entity)
                continue
            groups.append(_group(current, tokenizer))
        current = [entity]
    if current:
        groups.append(_group(current, tokenizer))
    return groups


def _group(entities: list[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
            "score": float(np.mean(np.nanmean([e["score"] for e in entities]))),
            "word": tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
            "start": int(entities[0]["start"]), "end": int(entities[-1]["end"])}


def merge_overlapping(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entities of overlapping windows: of those that overlap, the longer wins, then the more confident (the
    pipeline's `aggregate_overlapping_entities`)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    out, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or length == previous_length and entity["score"] > previous["score"]:
                previous = entity
        else:
            out.append(previous)
            previous = entity
    out.append(previous)
    return out


def spans(words: Sequence[str], tags: Sequence[str], scores: Sequence[float] | None = None,
          delimiter: str = " ") -> list[dict[str, Any]]:
    """Entity spans of tagged words (seqeval's reading of BIO/IOB1/BIOES): type, words [word_start, word_end), the
    characters [start, end) in the words joined by `delimiter`, and the mean word score if scores are given."""
    from seqeval.metrics.sequence_labeling import get_entities

    starts, position = [], 0
    for w in words:
        starts.append(position)
        position += len(w) + len(delimiter)
    out = []
    for kind, first, last in get_entities(list(tags)):
        span = {"entity_group": kind, "word": delimiter.join(words[first:last + 1]), "word_start": first,
                "word_end": last + 1, "start": starts[first], "end": starts[last] + len(words[last])}
        if scores is not None:
            span["score"] = round(float(np.mean(scores[first:last + 1])), 6)
        out.append(span)
    return out

"""`llmkit fill-mask`: masked-token predictions, fast and scriptable.

    llmkit fill-mask runs/mlm "The function returns a [MASK] of the values."
    cat texts.txt | llmkit fill-mask runs/mlm --input-file - --json > predictions.jsonl

    import llmkit
    llmkit.fill_mask("runs/mlm", ["The function returns a [MASK]."], top_k=3)   # -> list of dicts below

Input. Each text holds one or more masks, written `[MASK]`, `<mask>` (any letter case) or as the model's own
mask token; all spellings are normalised to the model's. A text without a mask is an error that names the
mask token. Texts longer than the model's window keep the window of tokens centred on their masks (a warning
on stderr says which). From a file or stdin: one text per line; blank lines are skipped.

Output. One result per input text, in input order. `--json` prints one JSON object per line, and the Python
API returns the same objects; the keys are fixed (values may be null where stated):

    {"text":      str,            the input text as given
     "truncated": bool,           true when only a window of the text fitted the model
     "masks": [                   one entry per mask, left to right
        {"position": int,         token index of the mask in the model input
         "start":     int | null, character span of the mask in "text" (null if it cannot be mapped)
         "end":       int | null,
         "candidates": [          best first; `top_k` of them (fewer when fewer targets)
            {"token":    str,     the predicted token, decoded as pipeline("fill-mask") does
             "token_id": int,
             "score":    float,   probability of the token at this mask given the text (softmax over the
                                  whole vocabulary, also with --targets: scores are not renormalised)
             "sequence": str,     the decoded input with this token filled in, as pipeline("fill-mask") gives
                                  it (other masks left as masks; the tokenizer's spacing, e.g. "人 生 得 意")
             "filled":   str | null}]}], "text" as written with this token in place of the mask ("人生得意")
     "best": {                    the joint best filling of all masks (see below)
        "tokens":    [str], "token_ids": [int],  one per mask, left to right
        "score":     float,       product of the chosen tokens' probabilities, each given the tokens fixed before it
        "sequence":  str,         the decoded input with every mask filled
        "filled":    str | null}} "text" as written with every mask filled

Per-mask candidates are scored independently (every other mask still masked), as `pipeline("fill-mask")`
does; for a single mask they are the pipeline's results. The joint best filling is greedy, most confident
mask first: predict all open masks, fix the one whose best token is most probable, predict the rest again
given it, and so on (one forward pass per mask; Mask-Predict-style ordering, which never commits an uncertain
early mask before a confident later one as left-to-right order would). With one mask it is the top candidate.

`--targets a,b,c` scores only those words. A word that is not one vocabulary token is scored by its first
piece, with a warning (as the pipeline does).

Speed: the model is loaded once (`inference.load`); texts are tokenized in one call per batch, sorted by
length and run in dynamically padded batches under `torch.inference_mode`; the vocabulary head runs only at
mask positions (`modeling.MaskedPositionsHead`). From a file or stdin, results are written as each batch is
done (memory stays bounded on an endless stream). Precision (`--precision`, `devices.precision`): `auto` is
bf16 where the hardware has it, fp32 elsewhere; in bf16/fp16 the encoder runs under autocast and the vocabulary
head in fp32, which keeps the candidates those of fp32 (scores within ~1e-4; see `_head_in_fp32` and
benchmarks/fill_mask.py). `fp32` gives the pipeline's numbers exactly (within 1e-5).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import devices, inference
from llmkit.console import log, warn
from llmkit.errors import ConfigError, DataError

# `[MASK]` (BERT family) and `<mask>` (RoBERTa family), any letter case; the model's own token is added per model.
COMMON_MASK_SPELLINGS = (r"\[mask\]", r"<mask>")
NO_TEXTS = "No input texts. Give texts with a mask, e.g. \"Paris is the [MASK] of France.\""


# ---------------------------------------------------------------- the command


def main(model: str, texts: Sequence[str], input_file: str | None = None, top_k: int = 5,
         targets: str | Sequence[str] | None = None, as_json: bool = False, batch_size: int = 64,
         device: str | None = None, precision: str = "auto", runtime: str = "auto") -> None:
    """`llmkit fill-mask`: predictions for every input text on stdout (a table, or JSON Lines with `as_json`),
    written as each batch is done."""
    # 1. options, the runtime, the tokenizer and the first texts checked before the model is loaded
    check_options(top_k, batch_size, precision)
    chosen, _ = inference.choose_runtime(model, runtime, device, precision)
    if chosen == "torch":
        devices.precision(precision, devices.device(device).type)
    batches = (b for b in inference.text_batches(texts, input_file, size=max(4 * batch_size, 2048)) if b)
    first = next(batches, None)
    if first is None:
        where = {None: "", "-": " in stdin"}.get(input_file, f" in '{input_file}'")
        raise DataError(NO_TEXTS.replace("No input texts.", f"No input texts{where}."))
    tokenizer, config = _tokenizer_and_config(model, chosen)
    encoded = encode(tokenizer, first, inference.window(config, tokenizer))
    target_ids = resolve_targets(tokenizer, targets) if targets is not None else None

    # 2. the model, once
    filler = load(model, device, precision, tokenizer=tokenizer, config=config, runtime=runtime)
    log(f"fill-mask: {filler.describe()}")

    # 3. results on stdout, batch by batch
    results = _fill(filler, first, encoded, top_k, target_ids, batch_size)
    while _write(format_json(results) if as_json else format_table(results)):
        batch = next(batches, None)
        if batch is None:
            return
        results = fill_mask(filler, batch, top_k=top_k, target_ids=target_ids, batch_size=batch_size)


def _write(text: str) -> bool:
    """Write to stdout now; False once the reader has gone (`llmkit fill-mask ... | head`)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False


def check_options(top_k: int, batch_size: int, precision: str) -> None:
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}.")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
    devices.check_precision(precision)


def _tokenizer_and_config(model: str | Path, runtime: str) -> tuple[Any, Any]:
    return inference.load_tokenizer_and_config(str(model), "fill-mask", runtime=runtime)


# ---------------------------------------------------------------- the Python API


@dataclass
class MaskFiller(inference.Loaded):
    """A masked-LM loaded once for prediction; pass it to `fill_mask` instead of a name to reuse it."""

    head: Any = None  # modeling.MaskedPositionsHead


def load(model: str | Path, device: str | None = None, precision: str = "auto", tokenizer: Any = None,
         config: Any = None, trust_remote_code: bool = False, runtime: str = "auto") -> MaskFiller:
    """Load a masked-LM checkpoint (a path, an llmkit run or a hub name) for `fill_mask`; `runtime`: auto | torch |
    onnx | onnx-int8 (`inference.choose_runtime`)."""
    loaded = inference.load(model, "fill-mask", device, precision, trust_remote_code, tokenizer, config, runtime)
    if loaded.runtime != "torch":
        return MaskFiller(**vars(loaded))
    from llmkit import modeling

    filler = MaskFiller(**vars(loaded), head=modeling.MaskedPositionsHead(loaded.model))
    # DistilBERT-style heads are several sibling modules: only the first would leave autocast.
    whole_head = filler.head.available and filler.head.head is not getattr(filler.model, "vocab_transform", None)
    if filler.precision != "fp32" and whole_head:
        _head_in_fp32(filler.head.head)
        decoder = getattr(filler.model, "decoder", None)  # ModernBERT: the vocabulary projection is the head's sibling
        if decoder is not None and decoder is not filler.head.head:
            _head_in_fp32(decoder)
        filler.why += "; encoder in autocast, vocabulary head in fp32"
    elif filler.precision != "fp32" and precision == "auto":
        filler.precision = "fp32"
        filler.why = f"the vocabulary head of {type(filler.model).__name__} cannot run in fp32 apart from the encoder"
    elif filler.precision != "fp32":
        filler.why += "; vocabulary head in autocast too"
    return filler


def fill_mask(model: str | Path | MaskFiller, texts: str | Sequence[str], top_k: int = 5,
              targets: str | Sequence[str] | None = None, batch_size: int = 64, device: str | None = None,
              precision: str = "auto", target_ids: list[int] | None = None,
              runtime: str = "auto") -> list[dict[str, Any]]:
    """Predictions for each text, in input order, as plain data (schema in the module docstring).

    `model`: a path, hub name or a `MaskFiller` from `load` (then `device` and `precision` are the filler's).
    `targets`: words to score instead of the whole vocabulary (a list, or one comma-separated string).
    `precision`: auto | fp32 | bf16 (| fp16 on CUDA). `runtime`: auto | torch | onnx | onnx-int8.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    # 1. everything cheap first: options, inputs, the model folder, tokenizer, masks, targets
    check_options(top_k, batch_size, precision)
    if not texts:
        raise DataError(NO_TEXTS)
    wrong = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if wrong is not None:
        raise DataError(f"Texts must be strings; text {wrong + 1} is a {type(texts[wrong]).__name__}.")
    filler = model if isinstance(model, MaskFiller) else None
    if filler is None:
        chosen, _ = inference.choose_runtime(model, runtime, device, precision)
    tokenizer, config = (filler.tokenizer, None) if filler else _tokenizer_and_config(model, chosen)
    window = filler.window if filler else inference.window(config, tokenizer)
    encoded = encode(tokenizer, texts, window)
    if targets is not None:
        target_ids = resolve_targets(tokenizer, targets)

    # 2. the model, once
    if filler is None:
        filler = load(model, device, precision, tokenizer=tokenizer, config=config, runtime=runtime)
    return _fill(filler, texts, encoded, top_k, target_ids, batch_size)


def _fill(filler: MaskFiller, texts: list[str], encoded: list[Encoded], top_k: int, target_ids: list[int] | None,
          batch_size: int) -> list[dict[str, Any]]:
    """The results of texts already encoded (`encode`), in input order."""
    window, tokenizer = filler.window, filler.tokenizer
    truncated = [i for i, e in enumerate(encoded) if e.truncated]
    if truncated:
        shown = ", ".join(str(i + 1) for i in truncated[:10]) + (", ..." if len(truncated) > 10 else "")
        warn(f"{len(truncated)} text{'s are' if len(truncated) > 1 else ' is'} longer than the model's window of "
             f"{window} tokens and kept only the {window} tokens around the masks (text {shown}).")

    # 3. length-sorted, dynamically padded batches; results back in input order
    results: list[dict[str, Any]] = [{} for _ in texts]
    words: dict[int, str] = {}
    for chunk in inference.by_length([len(e.ids) for e in encoded], batch_size, _token_budget(filler, batch_size)):
        for i, result in zip(chunk, predict_batch(filler, [encoded[i] for i in chunk], top_k, target_ids)):
            results[i] = {"text": texts[i], "truncated": encoded[i].truncated, **result}
            place_in_text(results[i], encoded[i].spans, tokenizer, words)
    return results


ONNX_LOGITS_BYTES = 64 << 20  # an export computes logits at every position: [batch, length, vocabulary] fp32


def _token_budget(filler: MaskFiller, batch_size: int) -> int | None:
    """Padded tokens per batch: the default, except on ONNX Runtime, whose export returns the vocabulary logits of
    every position (without its masked-positions graph), bounded here to ONNX_LOGITS_BYTES per batch."""
    if filler.runtime == "torch" or filler.model.takes_positions:
        return None
    vocabulary = int(getattr(filler.model.config, "vocab_size", 0) or len(filler.tokenizer))
    return max(1, min(batch_size * inference.TOKENS_PER_TEXT, ONNX_LOGITS_BYTES // (4 * vocabulary)))


def place_in_text(result: dict[str, Any], spans: list[tuple[int | None, int | None]], tokenizer: Any,
                  words: dict[int, str] | None = None) -> None:
    """Add each mask's character span, and "filled": the text as written with the predicted tokens in place.
    `words`: token id -> its text, shared between calls."""
    text = result["text"]
    words = {} if words is None else words

    def word(token_id: int) -> str:
        if token_id not in words:
            words[token_id] = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token_id)]).strip()
        return words[token_id]

    def filled(fills: dict[int, int]) -> str | None:
        if any(spans[m][0] is None for m in fills):
            return None
        out, end = [], len(text)
        for m in sorted(fills, reverse=True):
            start, stop = spans[m]
            out.append(word(fills[m]) + text[stop:end])
            end = start
        return text[:end] + "".join(reversed(out))

    for n, (mask, (start, stop)) in enumerate(zip(result["masks"], spans)):
        mask["start"], mask["end"] = start, stop
        for candidate in mask["candidates"]:
            candidate["filled"] = filled({n: candidate["token_id"]})
    result["best"]["filled"] = filled(dict(enumerate(result["best"]["token_ids"])))


# ---------------------------------------------------------------- settings


def _head_in_fp32(module: Any) -> None:
    """Run a module of the vocabulary head outside autocast, on fp32 hidden states.

    In bf16 the head's rounding alone reorders close candidates (on a pretrained mini BERT, 1 in 4 top-5 lists);
    with the encoder in bf16 and the head in fp32, top-5 lists match fp32 on >99% of texts, scores within ~1e-4,
    and most of the speed-up remains (the encoder is most of the work once the head runs only at the masks).
    torch's public module hooks do it: the pre-hook leaves autocast and casts the input, the forward hook (run even
    when the forward raises) restores autocast.
    """
    import torch

    entered: list[Any] = []

    def leave_autocast(module: Any, args: tuple) -> tuple:
        context = torch.autocast(args[0].device.type, enabled=False)
        context.__enter__()
        entered.append(context)
        return (args[0].float(), *args[1:])

    def restore_autocast(module: Any, args: tuple, output: Any) -> None:
        if entered:
            entered.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(leave_autocast)
    module.register_forward_hook(restore_autocast, always_call=True)


# ---------------------------------------------------------------- tokenizing


@dataclass
class Encoded:
    ids: list[int]
    type_ids: list[int] | None
    masks: list[int]  # token positions of the masks
    spans: list[tuple[int | None, int | None]]  # character spans of the masks in the input text
    truncated: bool


def mask_pattern(tokenizer: Any) -> re.Pattern[str]:
    spellings = {re.escape(tokenizer.mask_token), *COMMON_MASK_SPELLINGS}
    return re.compile("|".join(sorted(spellings, key=len, reverse=True)), re.IGNORECASE)


def encode(tokenizer: Any, texts: Sequence[str], window: int) -> list[Encoded]:
    """Tokenize all texts in one call, with every mask spelling normalised to the model's mask token.

    Raises DataError naming the texts without a mask; texts longer than `window` keep the tokens around their masks.
    """
    pattern = mask_pattern(tokenizer)
    spans = [[m.span() for m in pattern.finditer(text)] for text in texts]
    normalised = [pattern.sub(lambda _: tokenizer.mask_token, text) for text in texts]
    with_types = "token_type_ids" in tokenizer.model_input_names
    batch = _tokenize(tokenizer, normalised)
    mask_id = tokenizer.mask_token_id
    out, missing = [], []
    for i, ids in enumerate(batch["input_ids"]):
        masks = [p for p, t in enumerate(ids) if t == mask_id]
        if not masks:
            missing.append(i)
            continue
        types = batch["token_type_ids"][i] if with_types else None
        text_spans = spans[i] if len(spans[i]) == len(masks) else [(None, None)] * len(masks)
        if len(ids) > window:
            ids, types, masks = _crop(ids, types, batch["special_tokens_mask"][i], masks, window, texts[i], i)
            out.append(Encoded(ids, types, masks, text_spans, True))
        else:
            out.append(Encoded(ids, types, masks, text_spans, False))
    if missing:
        shown = "; ".join(f"text {i + 1}: {_clip(texts[i])!r}" for i in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{len(missing)} of {len(texts)} text{'s have' if len(missing) > 1 else ' has'} no mask token "
                        f"{tokenizer.mask_token} ({shown}{more}). Mark the words to predict with "
                        f"{tokenizer.mask_token} (or [MASK] / <mask>).")
    return out


def _tokenize(tokenizer: Any, texts: list[str]) -> dict[str, list[list[int]]]:
    """input_ids, token_type_ids and special_tokens_mask of each text, with special tokens, untruncated.

    A fast tokenizer's Rust pipeline is called directly (on a private copy without truncation or padding): the
    same encodings as `tokenizer(...)`, without the per-text Python conversion into a BatchEncoding."""
    if not getattr(tokenizer, "is_fast", False):
        return tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False,
                         return_token_type_ids=True, return_special_tokens_mask=True, verbose=False)
    encodings = inference.backend(tokenizer).encode_batch(texts, add_special_tokens=True)
    return {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings],
            "special_tokens_mask": [e.special_tokens_mask for e in encodings]}


def _crop(ids: list[int], types: list[int] | None, special: list[int], masks: list[int], window: int, text: str,
          index: int) -> tuple[list[int], list[int] | None, list[int]]:
    """Keep the special tokens at both ends and the `window` - specials tokens centred on the masks."""
    prefix = next((p for p, s in enumerate(special) if not s), len(special))
    suffix = next((p for p, s in enumerate(reversed(special)) if not s), 0)
    body = window - prefix - suffix
    first, last = masks[0], masks[-1]
    if last - first + 1 > body:
        raise DataError(f"Text {index + 1} ({_clip(text)!r}) has masks {last - first} tokens apart, more than the "
                        f"model's window of {window} tokens. Split it into shorter texts.")
    low, high = max(prefix, last - body + 1), min(first, len(ids) - suffix - body)
    start = min(max((first + last) // 2 - body // 2, low), high)
    keep = list(range(prefix)) + list(range(start, start + body)) + list(range(len(ids) - suffix, len(ids)))
    return ([ids[p] for p in keep], [types[p] for p in keep] if types is not None else None,
            [p - start + prefix for p in masks])


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def resolve_targets(tokenizer: Any, targets: str | Iterable[str]) -> list[int]:
    """Vocabulary ids of the target words (order kept, duplicates dropped); a word of several pieces is scored by
    its first piece, with a warning, as `pipeline("fill-mask")` does."""
    words = targets.split(",") if isinstance(targets, str) else list(targets)
    words = [w.strip() for w in words if w and w.strip()]
    if not words:
        raise DataError("--targets is empty. Give comma-separated words, e.g. --targets tea,coffee.")
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    for word in words:
        if word in vocab:
            ids.append(vocab[word])
            continue
        pieces = tokenizer.backend_tokenizer.encode(word, add_special_tokens=False).ids if tokenizer.is_fast else \
            tokenizer(word, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        if not pieces:
            warn(f"target '{word}' has no tokens in this vocabulary; it is ignored.")
            continue
        names = tokenizer.convert_ids_to_tokens(pieces)
        if len(pieces) > 1:
            warn(f"target '{word}' is not one token of the vocabulary ({' '.join(names)}); "
                 f"scoring its first piece '{names[0]}' only.")
        elif pieces[0] == tokenizer.unk_token_id:
            warn(f"target '{word}' is not in the vocabulary; it is scored as {tokenizer.unk_token}.")
        ids.append(pieces[0])
    if not ids:
        raise DataError(f"None of the targets ({', '.join(words)}) is in the model's vocabulary.")
    return list(dict.fromkeys(ids))


# ---------------------------------------------------------------- predicting


def _forward(filler: MaskFiller, inputs: dict[str, np.ndarray], at: np.ndarray) -> np.ndarray:
    """Logits at the positions `at` (a [batch, length] boolean mask), in row-major order: [n, vocabulary], fp32.
    With torch the vocabulary head runs only there (`modeling.MaskedPositionsHead`)."""
    if filler.runtime != "torch" and filler.model.takes_positions:
        return filler.model(inputs, positions=np.flatnonzero(at)).astype(np.float32, copy=False)
    if filler.runtime != "torch":
        return filler.logits(inputs)[at].astype(np.float32, copy=False)
    import torch

    with filler.running():
        where = torch.from_numpy(at).to(filler.device)
        with filler.head.at(where if filler.head.available else None):
            logits = filler.logits(inputs)
        return inference.to_numpy(logits if filler.head.available else logits[where])


def _top(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices) of the k largest values per row, largest first."""
    k = min(k, probs.shape[-1])
    part = np.argpartition(-probs, k - 1, axis=-1)[:, :k]
    values = np.take_along_axis(probs, part, axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")
    return np.take_along_axis(values, order, axis=-1), np.take_along_axis(part, order, axis=-1)


def predict_batch(filler: MaskFiller, batch: list[Encoded], top_k: int,
                  target_ids: list[int] | None) -> list[dict[str, Any]]:
    """Candidates per mask and the joint best filling for a batch of encoded texts (one padded batch)."""
    inputs = inference.pad([e.ids for e in batch], [e.type_ids for e in batch] if batch[0].type_ids is not None
                           else None, filler.tokenizer.pad_token_id)
    targets = np.asarray(target_ids, dtype=np.int64) if target_ids is not None else None
    # 1. every mask scored with all the others still masked (the pipeline's per-mask candidates)
    at = inputs["input_ids"] == filler.tokenizer.mask_token_id
    probs = inference.softmax(_forward(filler, inputs, at))
    if targets is not None:
        probs = probs[:, targets]
    scores, choices = _top(probs, top_k)
    if targets is not None:
        choices = targets[choices]
    # 2. the joint best filling: greedy, most confident open mask first
    best = _greedy_fill(filler, inputs, at, probs, targets)
    return _records(batch, scores.tolist(), choices.tolist(), best, filler.tokenizer)


def _records(batch: list[Encoded], scores: list[list[float]], choices: list[list[int]],
             best: list[tuple[list[int], float]], tokenizer: Any) -> list[dict[str, Any]]:
    """The result records of a batch (schema in the module docstring; spans and "filled" come later)."""
    special = set(tokenizer.all_special_ids)
    tokens = sorted({t for row in choices for t in row} | {t for ids, _ in best for t in ids})
    text = dict(zip(tokens, inference.decode(tokenizer, [[t] for t in tokens])))  # as the pipeline decodes token_str
    results, sequences, flat = [], {}, 0  # sequences: token ids -> their place in one decode call
    order = []  # per record: the key of each candidate's sequence, then the best filling's
    for row, e in enumerate(batch):
        masks, keys = [], []
        for position in e.masks:
            candidates = [{"token": text[token], "token_id": token, "score": score, "sequence": None}
                          for score, token in zip(scores[flat], choices[flat])]
            for token in choices[flat]:  # the text with this mask filled, the others left open
                key = tuple(_filled(e.ids, {position: token}, e.masks, special))
                keys.append(sequences.setdefault(key, len(sequences)))
            masks.append({"position": position, "start": None, "end": None, "candidates": candidates})
            flat += 1
        ids, score = best[row]
        key = tuple(_filled(e.ids, dict(zip(e.masks, ids)), e.masks, special))
        keys.append(sequences.setdefault(key, len(sequences)))
        order.append(keys)
        results.append({"masks": masks, "best": {"tokens": [text[t] for t in ids], "token_ids": list(ids),
                                                 "score": score, "sequence": None}})
    decoded = inference.decode(tokenizer, [list(key) for key in sequences])
    for result, keys in zip(results, order):
        places = iter(keys)
        for mask in result["masks"]:
            for candidate in mask["candidates"]:
                candidate["sequence"] = decoded[next(places)]
        result["best"]["sequence"] = decoded[next(places)]
    return results


def _filled(ids: list[int], fills: dict[int, int], masks: list[int], special: set[int]) -> list[int]:
    """`ids` with `fills` written in, special tokens dropped except the masks left open."""
    open_masks = set(masks) - set(fills)
    out = []
    for p, t in enumerate(ids):
        t = fills.get(p, t)
        if t not in special or p in open_masks:
            out.append(t)
    return out


def _greedy_fill(filler: MaskFiller, inputs: dict[str, np.ndarray], at: np.ndarray, probs: np.ndarray,
                 targets: np.ndarray | None) -> list[tuple[list[int], float]]:
    """(token ids left to right, score) per row: fix the most confident open mask, re-predict the rest, repeat."""
    rows = np.argwhere(at).tolist()  # [(row, position)] in the order of `probs`
    filled: list[dict[int, int]] = [{} for _ in range(at.shape[0])]
    score = [1.0] * at.shape[0]
    current, open_at = inputs["input_ids"].copy(), at.copy()
    while True:
        top, token = probs.max(-1), probs.argmax(-1)
        if targets is not None:
            token = targets[token]
        best_of_row: dict[int, tuple[float, int, int]] = {}
        for (row, position), p, t in zip(rows, top.tolist(), token.tolist()):
            if row not in best_of_row or p > best_of_row[row][0]:
                best_of_row[row] = (p, position, t)
        for row, (p, position, t) in best_of_row.items():
            filled[row][position] = t
            score[row] *= p
            current[row, position] = t
            open_at[row, position] = False
        keep = np.flatnonzero(open_at.any(-1))
        if not len(keep):
            break
        rows = [(int(keep[r]), c) for r, c in np.argwhere(open_at[keep]).tolist()]
        sub = {k: (current if k == "input_ids" else v)[keep] for k, v in inputs.items()}
        probs = inference.softmax(_forward(filler, sub, open_at[keep]))
        if targets is not None:
            probs = probs[:, targets]
    return [([f[p] for p in sorted(f)], s) for f, s in zip(filled, score)]


# ---------------------------------------------------------------- the table


def format_json(results: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A readable table per text: rank, token, score and the filled sequence, per mask; the joint best filling."""
    blocks = []
    for result in results:
        lines = [result["text"] + ("   (truncated to the model's window)" if result["truncated"] else "")]
        width = max([len("token")] + [len(c["token"]) for m in result["masks"] for c in m["candidates"]])
        many = len(result["masks"]) > 1
        for n, mask in enumerate(result["masks"], 1):
            if many:
                lines.append(f"  mask {n} of {len(result['masks'])}")
            lines.append(f"  {'#':>2}  {'token':<{width}}  {'score':>6}  sequence")
            for rank, c in enumerate(mask["candidates"], 1):
                lines.append(f"  {rank:>2}  {c['token']:<{width}}  {c['score']:6.4f}  {c['filled'] or c['sequence']}")
        if many:
            best = result["best"]
            lines.append(f"  best filling ({', '.join(best['tokens'])}; score {best['score']:.4f}): "
                         f"{best['filled'] or best['sequence']}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)

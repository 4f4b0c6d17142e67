"""Running a trained model on texts: loading, device, precision, batching by length, reading inputs, results.

One path for `llmkit fill-mask`, `llmkit predict`, fine-tuning's evaluation predictions and `llmkit serve`:

- `load(name, task)`: the checkpoint's tokenizer and model, weights in fp32 whatever dtype they were saved in,
  on the chosen device, in eval mode; the precision decided once (`devices.precision`: bf16 autocast where the
  hardware has it, else fp32; fp16 on CUDA when asked), on the runtime `choose_runtime` picks: transformers' own
  model class (torch), or ONNX Runtime on the run's verified export (`llmkit.ort`: no torch or transformers
  import, so a cold start on a CPU takes a fraction of the time);
- `by_length`: batches of similar length, longest first, bounded in texts and padded tokens (little padding; an
  out-of-memory error comes early);
- `tokenize` / `pad` / `decode` / `backend`: encodings and decodings straight through a fast tokenizer's Rust
  pipeline, and padded batches;
- `classify` / `interpret`: classification logits in input order, and label names with scores (token
  classifiers: `llmkit.entities`, on the same loading, batching and runtimes);
- `text_batches`: texts from arguments, a file or stdin, one per line, in bounded batches as they arrive.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import devices
from llmkit.errors import ConfigError, DataError, ModelError, did_you_mean

TASKS = ("fill-mask", "text-classification", "token-classification")
PROBLEM_TYPES = {"single_label_classification": "single_label", "multi_label_classification": "multi_label",
                 "regression": "regression"}


RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")


@dataclass
class Loaded:
    """A model ready for inference (see `load`)."""

    name: str
    task: str
    model: Any  # a transformers model, or an `ort.Model`
    tokenizer: Any
    device: Any  # torch.device; "cpu" for ONNX Runtime
    precision: str  # bf16 | fp16 | fp32 | int8: the compute precision of the forward pass
    why: str  # why that precision
    window: int  # the longest input the model takes, in tokens
    runtime: str = "torch"  # torch (transformers' model) | onnx | onnx-int8 (ONNX Runtime on the run's export)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Where forward passes run: `torch.inference_mode` and the precision's autocast for torch; nothing to set
        for ONNX Runtime."""
        if self.runtime != "torch":
            yield
            return
        import torch

        with torch.inference_mode(), devices.autocast(self.precision, self.device):
            yield

    @property
    def label_names(self) -> list[str]:
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(self.model.config.num_labels)]

    @property
    def problem_type(self) -> str:
        config = self.model.config
        return PROBLEM_TYPES.get(config.problem_type or "", "regression" if config.num_labels == 1 else "single_label")

    def describe(self) -> str:
        """What runs, where and in what precision, for the log."""
        if self.runtime == "torch":
            return f"{type(self.model).__name__} (transformers) on {self.device}, {self.precision} ({self.why})"
        architecture = (self.model.config.architectures or ["model"])[0]
        return f"{architecture} (ONNX Runtime, {self.model.file.name}) on cpu, {self.precision} ({self.why})"

    def logits(self, inputs: dict[str, np.ndarray]) -> Any:
        """The model's logits for a padded numpy batch (`pad`): a numpy array from ONNX Runtime, a tensor on the
        device from torch (call inside `running()`)."""
        if self.runtime != "torch":
            return self.model(inputs)
        import torch

        return self.model(**{k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}).logits


def choose_runtime(name: str | Path, requested: str = "auto", device: str | None = None,
                   precision: str = "auto", trust_remote_code: bool = False) -> tuple[str, str]:
    """(runtime, why): where a model runs for inference.

    torch runs transformers' own model class (any checkpoint, any device, bf16 autocast where the hardware has it).
    onnx runs ONNX Runtime on the run's export in fp32 (onnx-int8: its int8 export), on the CPU, without importing
    torch or transformers; an export is used only while it is fresh (made from the weights the folder holds now).
    auto: onnx on a CPU when a fresh export is there and nothing asks for torch; else torch, saying why."""
    from llmkit import ort

    if requested not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got '{requested}'."
                          f"{did_you_mean(requested, RUNTIMES)}")
    if requested == "torch":
        return "torch", "--runtime torch"
    gpu = device if (device or "cpu") != "cpu" else (devices.visible_accelerator() if device is None else "")
    if requested == "auto" and (gpu or precision not in ("auto", "fp32") or trust_remote_code):
        return "torch", f"a {gpu} device" if gpu else ("remote code" if trust_remote_code else f"{precision} asked")
    if gpu and device:
        raise ConfigError(f"--runtime {requested} runs on the CPU; --device {device} needs --runtime torch.")
    if precision not in ("auto", "fp32"):
        raise ConfigError(f"--runtime {requested} computes in {'int8' if requested == 'onnx-int8' else 'fp32'}; "
                          f"--precision {precision} needs --runtime torch.")
    if (Path(name).expanduser() / "config.json").is_file():
        fresh, why = ort.status(name, quantized=requested == "onnx-int8")
    else:
        fresh, why = False, f"'{name}' is not a local model folder"
    if requested == "auto":
        return ("onnx", why) if fresh else ("torch", why)
    if not fresh:
        raise ModelError(f"Cannot use --runtime {requested}: {why}.")
    return requested, why


def load(name: str | Path, task: str, device: str | None = None, precision: str = "auto",
         trust_remote_code: bool = False, tokenizer: Any = None, config: Any = None,
         runtime: str = "auto") -> Loaded:
    """Load a checkpoint (a path, a run directory or a hub name) for `task`: fill-mask, text- or
    token-classification.
    `runtime`: auto | torch | onnx | onnx-int8 (see `choose_runtime`)."""
    name = str(name)
    devices.check_precision(precision)
    chosen_runtime, because = choose_runtime(name, runtime, device, precision, trust_remote_code)
    if config is None or tokenizer is None:
        tokenizer, config = load_tokenizer_and_config(name, task, trust_remote_code, tokenizer, chosen_runtime)
    if task == "text-classification":
        check_classifier(name, config)
    if task == "token-classification":
        check_tagger(name, config)
    if chosen_runtime != "torch":
        from llmkit import ort

        masked = Path(name).expanduser() / ort.EXPORT_DIR / ort.MASKED_FILE
        use_masked = task == "fill-mask" and chosen_runtime == "onnx" and masked.is_file()
        model = ort.Model(name, quantized=chosen_runtime == "onnx-int8", file=masked if use_masked else None)
        return Loaded(name, task, model, tokenizer, "cpu", "int8" if model.quantized else "fp32",
                      because, window(config, tokenizer), chosen_runtime)
    from llmkit import modeling, ort

    target = devices.device(device)
    chosen, why = devices.precision(precision, target.type)
    if task == "fill-mask":
        model = modeling.load_trained_mlm(name, config, trust_remote_code)
    else:
        auto = "AutoModelForTokenClassification" if task == "token-classification" else \
            "AutoModelForSequenceClassification"
        model, _, _ = modeling.load_pretrained(auto, name, config, "sdpa", trust_remote_code)
    if runtime == "auto" and (Path(name).expanduser() / ort.EXPORT_DIR).is_dir():  # an unused export: say why
        why += f"; not ONNX Runtime: {because}"
    return Loaded(name, task, model.to(target).eval(), tokenizer, target, chosen, why, window(config, tokenizer),
                  "torch")


def load_tokenizer_and_config(name: str, task: str, trust_remote_code: bool = False, tokenizer: Any = None,
                              runtime: str = "torch") -> tuple[Any, Any]:
    """(tokenizer, config) of a checkpoint: transformers' for torch; read from the files for ONNX Runtime (no
    torch or transformers import). A tokenizer given is used as is."""
    from llmkit import modeling

    name = str(name)
    modeling.check_model_path(name)
    if runtime != "torch":
        from llmkit import ort

        inputs = (ort.manifest(name) or {}).get("inputs")
        return check_tokenizer(name, task, tokenizer or ort.Tokenizer(name, inputs)), ort.read_config(name)
    config = modeling.read_config(name, trust_remote_code)
    return tokenizer or load_tokenizer(name, task, trust_remote_code), config


def load_tokenizer(name: str, task: str, trust_remote_code: bool = False) -> Any:
    from llmkit import modeling

    return check_tokenizer(name, task, modeling.load_tokenizer(name, trust_remote_code))


def check_tokenizer(name: str, task: str, tokenizer: Any) -> Any:
    if task == "fill-mask" and (tokenizer.mask_token is None or tokenizer.mask_token_id is None):
        raise ModelError(f"The tokenizer of '{name}' has no mask token, so it cannot fill masks. Use a masked-LM "
                         f"checkpoint (BERT, RoBERTa, ...; e.g. an llmkit pretrain run).")
    return tokenizer


def check_classifier(name: str, config: Any) -> None:
    architectures = config.architectures or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(f"'{name}' is a {', '.join(architectures)}, not a sequence classifier. Fine-tune it first: "
                         f"llmkit finetune --model {name} --data TRAIN.")


def check_tagger(name: str, config: Any) -> None:
    architectures = config.architectures or []
    if architectures and not any(a.endswith("ForTokenClassification") for a in architectures):
        raise ModelError(f"'{name}' is a {', '.join(architectures)}, not a token classifier. Fine-tune it first: "
                         f"llmkit finetune --task token-classification --model {name} --data TRAIN.conll.")


def task_of(architectures: Sequence[str] | None) -> str:
    """The inference task of a checkpoint's architectures: text-, token-classification or fill-mask."""
    for suffix, task in (("ForSequenceClassification", "text-classification"),
                         ("ForTokenClassification", "token-classification")):
        if any(a.endswith(suffix) for a in architectures or ()):
            return task
    return "fill-mask"


def model_task(name: str | Path, trust_remote_code: bool = False) -> str:
    """The task of a checkpoint, from its config (read from the file for a local folder: no torch import)."""
    from llmkit import modeling, ort

    modeling.check_model_path(str(name))
    local = (Path(name).expanduser() / "config.json").is_file()
    config = ort.read_config(name) if local else modeling.read_config(str(name), trust_remote_code)
    return task_of(config.architectures)


def window(config: Any, tokenizer: Any) -> int:
    """The longest input the model takes: its position table, or the tokenizer's limit when smaller."""
    from llmkit import modeling

    limits = [modeling.max_positions(config) or 512]
    if 0 < (tokenizer.model_max_length or 0) < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    return min(limits)


TOKENS_PER_TEXT = 64  # a batch holds at most batch_size x this many (padded) tokens


def by_length(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices in batches of similar length, longest first: at most `batch_size` texts and, for long texts, at most
    `max_tokens` (default batch_size x TOKENS_PER_TEXT) padded tokens (one text at least), so memory per batch stays
    bounded whatever the lengths (a batch of 64 texts of 512 tokens held ~150 MB of fp32 temporaries) and typical
    texts still fill it."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget, batches, start = max_tokens or batch_size * TOKENS_PER_TEXT, [], 0
    while start < len(order):
        size = max(1, min(batch_size, budget // max(1, lengths[order[start]])))  # the first is the longest
        batches.append(order[start:start + size])
        start += size
    return batches


# ---------------------------------------------------------------- classification


def classify(loaded: Loaded, texts: Sequence[str], pairs: Sequence[str] | None = None,
             batch_size: int = 64) -> np.ndarray:
    """Raw outputs [N, num_labels] in input order."""
    tokenizer = loaded.tokenizer
    ids, types = tokenize(tokenizer, texts, pairs, loaded.window)
    out = np.zeros((len(texts), loaded.model.config.num_labels), dtype=np.float32)
    with loaded.running():
        for index in by_length([len(row) for row in ids], batch_size):
            batch = pad([ids[i] for i in index], [types[i] for i in index] if types else None,
                        tokenizer.pad_token_id)
            out[index] = to_numpy(loaded.logits(batch))
    return out


def to_numpy(values: Any) -> np.ndarray:
    """fp32 numpy of a tensor (any device, any dtype) or of an array."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float32, copy=False)
    return values.float().cpu().numpy()


def tokenize(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None,
             max_length: int) -> tuple[list[list[int]], list[list[int]] | None]:
    """(input ids, token type ids or None) per text (and pair), truncated to `max_length` as
    `tokenizer(texts, pairs, truncation=True, max_length=max_length)` truncates. A fast tokenizer's Rust pipeline
    is called directly (a private copy with that truncation): the same encodings, without building a BatchEncoding."""
    with_types = "token_type_ids" in tokenizer.model_input_names
    if not getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                            max_length=max_length, return_token_type_ids=with_types)
        return encoded["input_ids"], encoded["token_type_ids"] if with_types else None
    inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
    encodings = backend(tokenizer, max_length).encode_batch(inputs, add_special_tokens=True)
    return [e.ids for e in encodings], [e.type_ids for e in encodings] if with_types else None


_BACKENDS: "weakref.WeakKeyDictionary[Any, dict[tuple[int | None, int], Any]]" = weakref.WeakKeyDictionary()


def backend(tokenizer: Any, truncate_to: int | None = None, stride: int = 0) -> Any:
    """A private copy of a fast tokenizer's Rust pipeline, without padding, truncating to `truncate_to` tokens
    (longest_first, on the tokenizer's truncation side; with `stride`, the rest in overlapping `overflowing`
    encodings) or not at all; made once per tokenizer, length and stride."""
    copies = _BACKENDS.setdefault(tokenizer, {})
    if (truncate_to, stride) not in copies:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        copy.no_padding()
        if truncate_to is None:
            copy.no_truncation()
        else:
            copy.enable_truncation(truncate_to, stride=stride, strategy="longest_first",
                                   direction=getattr(tokenizer, "truncation_side", "right"))
        copies[truncate_to, stride] = copy
    return copies[truncate_to, stride]


def decode(tokenizer: Any, sequences: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
    """`tokenizer.batch_decode(sequences)`, for a fast tokenizer straight through its Rust decoder (the per-id
    Python checks of batch_decode cost more than the decoding), then its clean-up as `decode` applies it."""
    if not getattr(tokenizer, "is_fast", False):
        return tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)
    texts = tokenizer.backend_tokenizer.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
    bpe = type(tokenizer.backend_tokenizer.model).__name__ == "BPE"
    if tokenizer.clean_up_tokenization_spaces and (not bpe or getattr(
            tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)):
        texts = [tokenizer.clean_up_tokenization(t) for t in texts]
    return texts


PAD_MULTIPLE = 8  # padded lengths are rounded up to this: fewer distinct shapes, smaller kernel caches


def pad(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None,
        pad_id: int | None) -> dict[str, np.ndarray]:
    """Model inputs for a batch as int64 numpy arrays, right-padded (as `tokenizer.pad` pads) to its longest row
    rounded up to PAD_MULTIPLE."""
    length = -(-max(len(row) for row in ids) // PAD_MULTIPLE) * PAD_MULTIPLE
    padded = np.full((len(ids), length), pad_id if pad_id is not None else 0, dtype=np.int64)
    attention = np.zeros((len(ids), length), dtype=np.int64)
    for r, row in enumerate(ids):
        padded[r, :len(row)] = row
        attention[r, :len(row)] = 1
    batch = {"input_ids": padded, "attention_mask": attention}
    if types is not None:
        batch["token_type_ids"] = np.zeros((len(ids), length), dtype=np.int64)
        for r, row in enumerate(types):
            batch["token_type_ids"][r, :len(row)] = row
    return batch


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def interpret(problem_type: str, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-text results: single_label {label, score, scores}; multi_label {labels, scores} (sigmoid > 0.5);
    regression {score} (the predicted value)."""
    logits = logits.astype(np.float64)
    if problem_type == "regression":
        return [{"score": float(v)} for v in logits[:, 0]]
    if problem_type == "multi_label":
        probs = 1.0 / (1.0 + np.exp(-logits))
        return [{"labels": [n for n, p in zip(label_names, row) if p > 0.5],
                 "scores": {n: round(float(p), 6) for n, p in zip(label_names, row)}} for row in probs]
    probs = softmax(logits)
    return [{"label": label_names[b], "score": round(float(row[b]), 6),
             "scores": {n: round(float(p), 6) for n, p in zip(label_names, row)}}
            for b, row in zip(probs.argmax(-1), probs)]


# ---------------------------------------------------------------- input texts


def text_batches(texts: Sequence[str], input_file: str | None, size: int = 256) -> Iterator[list[str]]:
    """Non-blank texts in batches of at most `size`: the arguments, or a file / stdin ('-') one text per line.

    Lines are read as they arrive: a batch is handed on as soon as the input pauses, so an interactive or slow
    stream gets its results line by line, and an endless one is processed in bounded memory.
    """
    if texts and input_file:
        raise DataError("Give texts as arguments or with --input-file, not both.")
    if input_file is None:
        lines = [t for t in texts if t.strip()]
        for start in range(0, len(lines), size):
            yield lines[start:start + size]
        return
    if input_file == "-":
        yield from line_batches(sys.stdin.buffer.fileno(), "stdin", size)
        return
    path = Path(input_file).expanduser()
    if not path.exists() or path.is_dir():  # not `is_file()`: a named pipe, e.g. <(command), is fine
        found = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(f"Input file '{input_file}' {found}. Give a text file with one text per line, or '-' for "
                        f"stdin.")
    fd = os.open(path, os.O_RDONLY)
    try:
        yield from line_batches(fd, f"'{input_file}'", size)
    finally:
        os.close(fd)


def line_batches(fd: int, where: str, size: int) -> Iterator[list[str]]:
    """Batches of lines from `fd`. From a pipe or terminal a batch goes on whenever a read ends (the input paused);
    a regular file never pauses, so it is read in full batches (fewer, better-sorted batches)."""
    whole = stat.S_ISREG(os.fstat(fd).st_mode)
    carry, offset, pending = b"", 0, []
    while True:
        chunk = os.read(fd, 1 << 16)  # what is there (a pipe returns as soon as anything arrived)
        if not chunk:
            break
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        for line in lines:
            pending.append(_decode_line(line, offset, where))
            offset += len(line) + 1
            if len(pending) == size:
                yield [t for t in pending if t.strip()]
                pending = []
        if pending and not whole:
            yield [t for t in pending if t.strip()]
            pending = []
    if carry:
        pending.append(_decode_line(carry, offset, where))
    if pending:
        yield [t for t in pending if t.strip()]


def _decode_line(raw: bytes, offset: int, where: str) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r").lstrip("\ufeff") if offset == 0 else raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        raise DataError(f"Input {where} is not UTF-8 text ({e.reason} at byte {offset + e.start}).") from None

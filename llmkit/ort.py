"""ONNX Runtime: predictions from a run's ONNX export, without importing torch or transformers.

`llmkit export RUN` (llmkit.export) writes RUN/onnx/ in optimum's layout (model.onnx, its weights in
model.onnx.data, optionally model_quantized.onnx) and a manifest, llmkit-export.json, holding the hash of the
weights it was made from and how closely it matched transformers' logits. Here:

- `status(folder)`: whether a fresh export is present (its source weights' hash is the current weights' hash);
- `Model`: an ONNX Runtime session over it, called with numpy inputs, returning the logits as numpy;
- `read_config` / `Tokenizer`: config.json and the tokenizer as inference uses them, read from the files
  (tokenizer.json runs in the same `tokenizers` pipeline transformers' fast tokenizers run).

`import onnxruntime, tokenizers` takes ~0.3 s; torch alone ~1.2 s and transformers' model code ~2 s more: for a
one-shot `llmkit fill-mask` or `predict` on a CPU, the import is most of the time.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

EXPORT_DIR = "onnx"
MANIFEST = "llmkit-export.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"  # the name optimum and transformers.js give a quantized model
# A masked LM's second graph, for fill-mask: the same model with an input `positions` (flat indices into
# [batch x length]) and the vocabulary logits at those positions only (`modeling.MaskedPositionsHead`); the
# vocabulary projection at every position is most of the work of a small model.
MASKED_FILE = "masked_positions.onnx"
WEIGHTS = "model.safetensors"
NO_LIMIT = int(1e30)  # transformers' "no maximum length" model_max_length


# ---------------------------------------------------------------- is there a fresh export


def weights_hash(folder: str | Path) -> str:
    """sha256 of the checkpoint's weights (what an export records and `status` compares); read once per process
    while the file is unchanged."""
    path = (Path(folder).expanduser() / WEIGHTS).resolve()
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder).expanduser() / EXPORT_DIR / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def status(folder: str | Path, quantized: bool = False) -> tuple[bool, str]:
    """(fresh, why): a usable export of these very weights, or the reason there is none."""
    folder = Path(folder).expanduser()
    found = manifest(folder)
    if found is None:
        return False, f"no ONNX export in {folder} (make one with: llmkit export {folder})"
    wanted = INT8_FILE if quantized else FP32_FILE
    if not (folder / EXPORT_DIR / wanted).is_file():
        how = " --quantize int8" if quantized else ""
        return False, f"no {EXPORT_DIR}/{wanted} in {folder} (make it with: llmkit export {folder}{how})"
    if not (folder / WEIGHTS).is_file():
        return False, f"no {WEIGHTS} in {folder} to check the export against"
    if found.get("source_sha256") != weights_hash(folder):
        return False, (f"the ONNX export in {folder} was made from other weights than {WEIGHTS} now holds "
                       f"(re-export with: llmkit export {folder})")
    return True, f"ONNX export of these weights (max |logit difference| from transformers "\
                 f"{found.get('max_abs_diff', float('nan')):.1e})"


# ---------------------------------------------------------------- the model


class Model:
    """An ONNX Runtime session over RUN/onnx/model.onnx (or the int8 one), with the run's config."""

    def __init__(self, folder: str | Path, quantized: bool = False, threads: int | None = None,
                 file: Path | None = None):
        import onnxruntime

        folder = Path(folder).expanduser()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
        if threads:
            options.intra_op_num_threads = threads
        path = file or folder / EXPORT_DIR / (INT8_FILE if quantized else FP32_FILE)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = read_config(folder)
        self.quantized = quantized or path.name == INT8_FILE
        self.file = path

    @property
    def takes_positions(self) -> bool:
        return "positions" in self.input_names

    def __call__(self, inputs: dict[str, np.ndarray], positions: np.ndarray | None = None) -> np.ndarray:
        """Logits for numpy int64 inputs (input_ids, attention_mask[, token_type_ids]); with `positions` (flat
        indices, for a MASKED_FILE graph), the logits at those positions only."""
        feed = {name: inputs[name] for name in self.input_names if name in inputs}
        if positions is not None:
            feed["positions"] = positions.astype(np.int64, copy=False)
        if "token_type_ids" in self.input_names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(inputs["input_ids"])
        return self.session.run(None, feed)[0]


# ---------------------------------------------------------------- config and tokenizer from the files


class Config(SimpleNamespace):
    """config.json as attributes, with the defaults transformers gives the keys inference reads."""


def read_config(folder: str | Path) -> Config:
    raw = json.loads((Path(folder).expanduser() / "config.json").read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"a JSON object of settings was expected, found a {type(raw).__name__}")
    if isinstance(raw.get("id2label"), dict):  # JSON keys are strings; transformers' config gives ints
        raw["id2label"] = {int(k): v for k, v in raw["id2label"].items()}
    raw.setdefault("problem_type", None)
    raw.setdefault("architectures", None)
    config = Config(**raw)
    config.num_labels = len(getattr(config, "id2label", None) or {0: 0, 1: 1})  # transformers: 2 without labels
    return config


class Tokenizer:
    """The parts of a transformers fast tokenizer that inference uses, read from tokenizer.json and
    tokenizer_config.json as transformers' `TokenizersBackend` reads them. `model_input_names` are the export's."""

    is_fast = True
    SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

    def __init__(self, folder: str | Path, input_names: list[str] | None = None):
        from tokenizers import Tokenizer as Backend

        folder = Path(folder).expanduser()
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.backend_tokenizer = Backend.from_file(str(folder / "tokenizer.json"))
        self.model_input_names = list(input_names or config.get("model_input_names") or
                                      ["input_ids", "attention_mask"])
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.model_max_length = int(config.get("model_max_length", NO_LIMIT))
        self.truncation_side = config.get("truncation_side", "right")
        names = {}
        for key in self.SPECIAL:
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            setattr(self, key, value)
            setattr(self, f"{key}_id", self.backend_tokenizer.token_to_id(value) if value is not None else None)
            if value is not None:
                names[value] = None
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        for value in (extra.values() if isinstance(extra, dict) else extra):
            names[value.get("content") if isinstance(value, dict) else value] = None
        self.all_special_tokens = list(names)
        self.all_special_ids = [i for i in map(self.backend_tokenizer.token_to_id, names) if i is not None]

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self.backend_tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """transformers' `clean_up_tokenization`, applied when the tokenizer asks for it."""
        for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                              (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(before, after)
        return text

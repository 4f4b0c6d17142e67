"""`llmkit export RUN`: an ONNX export of a run's model, verified against transformers before it is kept.

    llmkit export runs/mlm                  # RUN/onnx/model.onnx (+ llmkit-export.json)
    llmkit export runs/clf --quantize int8  # also RUN/onnx/model_quantized.onnx, with its measured agreement

The layout is optimum's and transformers.js's: RUN/onnx/model.onnx (weights inside, or in model.onnx.data past
2 GB) beside the run's config.json and tokenizer files, inputs input_ids / attention_mask (/ token_type_ids) with
dynamic batch and sequence axes, output `logits`; `ORTModelForMaskedLM.from_pretrained(RUN, subfolder="onnx")`,
`ORTModelForSequenceClassification` and `ORTModelForTokenClassification` load it. The graph comes from
transformers' own model class through
`torch.export` and `torch.onnx.export` (the dynamo exporter), nothing written by hand.

Before the export replaces RUN/onnx it must give transformers' logits on probe batches (texts of several lengths
padded together, and one long text): the largest absolute difference is printed and recorded in
onnx/llmkit-export.json, with the sha256 of the weights it was made from (`ort.status` compares it, so `--runtime
auto` never uses a stale export). int8 (ONNX Runtime's dynamic quantization) is measured against fp32 on the same
probes: top-1 and top-5 agreement (fill-mask), label agreement (classifiers) or tag agreement per token (token
classifiers), and masked-token accuracy.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import inference, ort, outputs
from llmkit.console import log
from llmkit.errors import ConfigError, ModelError, RunError

TOLERANCE = 1e-3  # largest |logit difference| from transformers an fp32 export may show (measured: ~1e-6)
PROBES = 32  # probe texts
PROBE_LONG = 300  # tokens of the long probe (at most the model's window): reaches ModernBERT's sliding window


def main(run: str, quantize: str | None = None, data: str | None = None) -> dict[str, Any]:
    """Export, verify and (optionally) quantize; the manifest written to RUN/onnx/llmkit-export.json."""
    # 1. everything cheap first: the folder, the task, the options, the probe texts
    folder = Path(run).expanduser()
    task = check_run(folder)
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize takes int8, got '{quantize}'.")
    texts = probe_texts(data)

    # 2. transformers' model, in fp32 on the CPU: the reference
    loaded = inference.load(folder, task, "cpu", "fp32", runtime="torch")
    batches = probe_batches(loaded, texts)

    # 3. export aside, check it, then put it in place
    with tempfile.TemporaryDirectory(dir=folder, prefix=".onnx-") as staging:
        staging = Path(staging)
        log(f"export: {type(loaded.model).__name__} -> ONNX (torch.export + torch.onnx dynamo exporter)")
        expected = [reference(loaded, batch) for batch in batches]
        names = write_onnx(loaded, batches[0], staging / ort.FP32_FILE)
        diff = checked(folder, verify(loaded, batches, expected, staging / ort.FP32_FILE), len(texts), ort.FP32_FILE)
        record = manifest(folder, loaded, names, diff, len(texts))
        if task == "fill-mask":
            write_onnx(loaded, batches[0], staging / ort.MASKED_FILE, masked_positions=True)
            record["masked_positions"] = {"file": ort.MASKED_FILE, "max_abs_diff": checked(
                folder, verify(loaded, batches, expected, staging / ort.MASKED_FILE), len(texts), ort.MASKED_FILE)}
        if quantize:
            record["int8"] = quantize_int8(loaded, batches, staging)
        outputs.write_json(staging / ort.MANIFEST, record)
        replace_dir(staging, folder / ort.EXPORT_DIR)
    log(f"export: wrote {folder / ort.EXPORT_DIR} (fill-mask / predict / serve use it with --runtime auto|onnx)")
    return record


def checked(folder: Path, diff: float, probes: int, file: str) -> float:
    """`diff`, logged, once it is within TOLERANCE; else RunError (the staging folder goes, nothing is kept)."""
    log(f"export: {file}: max |logit difference| from transformers on {probes} probe texts: {diff:.2e}")
    if not diff <= TOLERANCE:
        raise RunError(f"The ONNX export of '{folder}' differs from transformers by {diff:.2e} (more than "
                       f"{TOLERANCE:g}); it was not kept. Run with --runtime torch, or report the model config.")
    return diff


def check_run(folder: Path) -> str:
    """The task of a model folder that can be exported; ModelError saying why not."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"'{folder}' is not a model folder (no config.json). Give a run directory, e.g. runs/mlm.")
    for needed in (ort.WEIGHTS, "tokenizer.json"):
        if not (folder / needed).is_file():
            raise ModelError(f"'{folder}' has no {needed}; llmkit export needs a checkpoint saved by transformers "
                             f"(save_pretrained with safetensors and a fast tokenizer), as llmkit runs are.")
    architectures = ort.read_config(folder).architectures or []
    if any(a.endswith(("ForSequenceClassification", "ForTokenClassification", "ForMaskedLM"))
           for a in architectures):
        return inference.task_of(architectures)
    raise ModelError(f"'{folder}' is a {', '.join(architectures) or 'model without architectures'}; llmkit export "
                     f"takes masked LMs, sequence and token classifiers.")


def probe_texts(data: str | None) -> list[str]:
    """Texts for the checks: the lines of `data`, or paragraphs of the built-in corpus."""
    if data is not None:
        texts = [t for batch in inference.text_batches([], data) for t in batch]
        if not texts:
            raise ConfigError(f"--data '{data}' has no texts. Give a text file with one text per line.")
        return texts[:PROBES]
    from llmkit.data import corpus

    return [p[:400] for p in corpus.builtin_corpus()[:PROBES * 50:50]]


# ---------------------------------------------------------------- probes


def probe_batches(loaded: inference.Loaded, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """Padded numpy batches of the probe texts: several lengths per batch, and one long text alone. For a masked
    LM every 7th word piece is masked (what agreement and masked accuracy are measured on); labels in "labels"."""
    tokenizer = loaded.tokenizer
    ids, types = inference.tokenize(tokenizer, texts, None, loaded.window)
    long_ids, long_types = inference.tokenize(tokenizer, [" ".join(texts)], None, min(loaded.window, PROBE_LONG))
    groups = [list(range(i, min(i + 8, len(ids)))) for i in range(0, len(ids), 8)]
    batches = [inference.pad([ids[i] for i in g], [types[i] for i in g] if types else None, tokenizer.pad_token_id)
               for g in groups]
    batches.append(inference.pad(long_ids, long_types, tokenizer.pad_token_id))
    if loaded.task == "fill-mask":
        special = np.asarray(sorted(tokenizer.all_special_ids))
        for batch in batches:
            words = (batch["attention_mask"] == 1) & ~np.isin(batch["input_ids"], special)
            chosen = words & (np.cumsum(words, axis=1) % 7 == 3)
            batch["labels"] = np.where(chosen, batch["input_ids"], -100)
            batch["input_ids"] = np.where(chosen, tokenizer.mask_token_id, batch["input_ids"])
    return batches


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in batch.items() if k != "labels"}


def reference(loaded: inference.Loaded, batch: dict[str, np.ndarray]) -> np.ndarray:
    with loaded.running():
        return inference.to_numpy(loaded.logits(model_inputs(batch)))


# ---------------------------------------------------------------- export and checks


def write_onnx(loaded: inference.Loaded, sample: dict[str, np.ndarray], path: Path,
               masked_positions: bool = False) -> list[str]:
    """Export the model to `path`; its input names. Batch and sequence axes are dynamic (`Dim.AUTO`: torch.export
    finds the ranges the model allows); `strict=False` traces the Python as it runs. `masked_positions`: the
    masked LM with an input `positions` and logits there only (ort.MASKED_FILE)."""
    import torch

    takes = inspect.signature(loaded.model.forward).parameters  # DistilBERT has no token_type_ids
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample and k in takes]
    kwargs = {k: torch.from_numpy(sample[k]) for k in names}
    dims = {k: {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO} for k in names}
    model = loaded.model
    if masked_positions:
        model = MaskedPositions(loaded.model)
        kwargs["positions"] = torch.from_numpy(np.flatnonzero(sample["labels"] != -100))
        dims["positions"] = {0: torch.export.Dim.AUTO}
    try:
        with quiet():
            program = torch.export.export(model, (), kwargs=kwargs, dynamic_shapes=dims, strict=False)
            onnx = torch.onnx.export(program, (), kwargs=kwargs, input_names=list(kwargs), output_names=["logits"],
                                     dynamo=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - an exporter failure is reported, nothing is written
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise RunError(f"Exporting {type(loaded.model).__name__} to ONNX failed ({type(e).__name__}: {first}). "
                       f"Nothing was written; the torch runtime still serves this model.") from e
    onnx.save(str(path))
    return list(kwargs)


def MaskedPositions(model: Any) -> Any:
    """`model` as a module taking `positions` too, its vocabulary head run only there."""
    import torch

    from llmkit import modeling

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.head = model, modeling.MaskedPositionsHead(model)

        def forward(self, input_ids, attention_mask, token_type_ids=None, positions=None):
            types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            with self.head.at(positions):
                return self.model(input_ids=input_ids, attention_mask=attention_mask, **types).logits

    return Wrapper()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters' advice for their developers (deprecations, optional packages, pre-processing hints) kept off
    the user's terminal; errors still show."""
    root, exporter = logging.getLogger(), logging.getLogger("torch.onnx")
    levels = root.level, exporter.level
    root.setLevel(logging.ERROR)
    exporter.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(levels[0])
        exporter.setLevel(levels[1])


def verify(loaded: inference.Loaded, batches: list[dict[str, np.ndarray]], expected: list[np.ndarray],
           path: Path) -> float:
    """Largest |logit difference| between the export (on ONNX Runtime) and transformers' logits `expected` for
    `batches`, over attended positions."""
    model = ort.Model(loaded.name, file=path)
    worst = 0.0
    for batch, theirs in zip(batches, expected):
        if model.takes_positions:  # logits at the masked positions only
            at = batch["labels"] != -100
            theirs, ours = theirs[at], model(model_inputs(batch), positions=np.flatnonzero(at))
        else:
            ours = model(model_inputs(batch))
        if ours.shape != theirs.shape:
            return float("inf")
        per_token = loaded.task == "token-classification" or loaded.task == "fill-mask" and not model.takes_positions
        attended = batch["attention_mask"].astype(bool) if per_token else slice(None)
        worst = max(worst, float(np.abs(ours[attended] - theirs[attended]).max()))
    return worst


def quantize_int8(loaded: inference.Loaded, batches: list[dict[str, np.ndarray]], staging: Path) -> dict[str, Any]:
    """model_quantized.onnx (dynamic int8 weights, ONNX Runtime's quantize_dynamic) and its agreement with fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(staging / ort.FP32_FILE), str(staging / ort.INT8_FILE), weight_type=QuantType.QInt8)
    fp32 = ort.Model(loaded.name, file=staging / ort.FP32_FILE)
    int8 = ort.Model(loaded.name, file=staging / ort.INT8_FILE)
    pairs = [(fp32(model_inputs(b)), int8(model_inputs(b)), b) for b in batches]
    if loaded.task == "fill-mask":
        picked = [(a[b["labels"] != -100], q[b["labels"] != -100], b["labels"][b["labels"] != -100])
                  for a, q, b in pairs]
        a, q, gold = (np.concatenate(x) for x in zip(*picked))
        top5 = np.argsort(-q, axis=-1)[:, :5]
        result = {"masks": int(len(gold)), "top1_agreement": float((a.argmax(-1) == q.argmax(-1)).mean()),
                  "top5_agreement": float((top5 == a.argmax(-1)[:, None]).any(-1).mean()),
                  "masked_accuracy_fp32": float((a.argmax(-1) == gold).mean()),
                  "masked_accuracy_int8": float((q.argmax(-1) == gold).mean())}
    elif loaded.task == "token-classification":  # attended tokens only
        a, q = (np.concatenate(x) for x in zip(*[(a[b["attention_mask"] == 1], q[b["attention_mask"] == 1])
                                                 for a, q, b in pairs]))
        result = {"tokens": int(len(a)), "tag_agreement": float((a.argmax(-1) == q.argmax(-1)).mean()),
                  "max_abs_diff": float(np.abs(a - q).max())}
    else:
        a, q = (np.concatenate(x) for x in zip(*[(a, q) for a, q, _ in pairs]))
        result = {"texts": int(len(a)), "label_agreement": float((a.argmax(-1) == q.argmax(-1)).mean()),
                  "max_abs_diff": float(np.abs(a - q).max())}
    result["bytes"] = (staging / ort.INT8_FILE).stat().st_size
    log("export: int8 against fp32: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in result.items()))
    return result


def manifest(folder: Path, loaded: inference.Loaded, names: list[str], diff: float, probes: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"source_sha256": ort.weights_hash(folder), "source_weights": ort.WEIGHTS, "task": loaded.task,
            "architecture": type(loaded.model).__name__, "file": ort.FP32_FILE, "inputs": names,
            "outputs": ["logits"], "max_abs_diff": diff, "tolerance": TOLERANCE, "probe_texts": probes,
            "exporter": "torch.export + torch.onnx.export (dynamo)",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}}


def replace_dir(staging: Path, target: Path) -> None:
    """Move the checked export into place; an older export is removed only once the new one is there."""
    fresh = staging.with_name(staging.name + "-done")
    os.replace(staging, fresh)
    staging.mkdir()  # the TemporaryDirectory context removes it again
    old = target.with_name(f".{target.name}-old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(fresh, target)
    target.chmod(0o777 & ~_umask())  # a temporary directory is private; an export is shared like the run
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

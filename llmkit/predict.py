"""`llmkit predict`: classify texts with a fine-tuned model; label names and scores, in input order.

Inputs are read by `data.labeled.read_inputs` (arguments, any table format fine-tuning reads, plain-text lines,
stdin); the model runs through `inference` (loaded once, batched by length; transformers' model under
`torch.inference_mode` with bf16 autocast where the hardware has it, or ONNX Runtime on the run's export, which
imports neither torch nor transformers: `--runtime`). This module does not import the `Trainer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmkit import inference, outputs
from llmkit.config import DataConfig
from llmkit.console import log
from llmkit.data import labeled
from llmkit.errors import DataError


def main(model: str, texts: Sequence[str], input_file: str | None = None, output: str | None = None,
         as_json: bool = False, text_column: str | None = None, text_pair_column: str | None = None,
         batch_size: int = 64, device: str | None = None, runtime: str = "auto") -> list[dict[str, Any]]:
    """Classify `texts` (or the texts of `input_file`) and print or write the predictions."""
    # 1. inputs and output checked before the model loads
    rows, pairs = labeled.read_inputs(texts, input_file, text_column, text_pair_column, DataConfig())
    if output is not None:
        outputs.check_predictions_path(output)
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}.")

    # 2. model, loaded once
    classifier = inference.load(model, "text-classification", device, runtime=runtime)
    log(f"predict: {classifier.describe()}")

    # 3. predictions in input order
    logits = inference.classify(classifier, rows, pairs, batch_size)
    results = inference.interpret(classifier.problem_type, logits, classifier.label_names)
    records = [with_inputs(r, t, p) for r, t, p in zip(results, rows, pairs or [None] * len(rows))]

    # 4. stdout (a table or JSON Lines) or a file
    if output is not None:
        outputs.write_predictions(Path(output), records)
        log(f"wrote {len(records):,} predictions to {output}")
    elif as_json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        print(table(records))
    return records


def with_inputs(result: dict[str, Any], text: str, pair: str | None) -> dict[str, Any]:
    return {"text": text, **({"text_pair": pair} if pair is not None else {}), **result}


def table(records: Sequence[dict[str, Any]], width: int = 80) -> str:
    rows = [outputs.prediction_row(r) for r in records]
    has_label = any("label" in r for r in rows)
    label_width = max([5] + [len(str(r.get("label", ""))) for r in rows])
    score_width = max([5] + [len(_score(r["score"])) for r in rows])
    head = (f"{'label':<{label_width}}  " if has_label else "") + f"{'score':>{score_width}}  text"
    lines = [head]
    for r in rows:
        text = r["text"] + (f" | {r['text_pair']}" if "text_pair" in r else "")
        text = " ".join(text.split())
        text = text if len(text) <= width else text[:width - 1] + "…"
        label = f"{r.get('label', ''):<{label_width}}  " if has_label else ""
        lines.append(f"{label}{_score(r['score']):>{score_width}}  {text}")
    return "\n".join(lines)


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)

"""`llmkit predict`: classify texts with a fine-tuned model; label names and scores, in input order. A token
classifier gives each text's entities instead, as `pipeline("token-classification", aggregation_strategy="simple")`
gives them (`llmkit.entities`).

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
         batch_size: int = 64, device: str | None = None, runtime: str = "auto",
         precision: str = "auto") -> list[dict[str, Any]]:
    """Classify `texts` (or the texts of `input_file`) and print or write the predictions."""
    # 1. inputs and output checked before the model loads
    rows, pairs = labeled.read_inputs(texts, input_file, text_column, text_pair_column, DataConfig())
    if output is not None:
        outputs.check_predictions_path(output)
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}.")

    # 2. model, loaded once
    task = inference.model_task(model)
    if task == "token-classification" and pairs is not None:
        raise DataError("A token classifier tags one text at a time; drop --text-pair-column.")
    classifier = inference.load(model, "text-classification" if task == "fill-mask" else task, device,
                                precision=precision, runtime=runtime)
    log(f"predict: {classifier.describe()}")
    if task == "token-classification":
        return tag(classifier, rows, output, as_json, batch_size)

    # 3. predictions in input order
    logits = inference.classify(classifier, rows, pairs, batch_size)
    results = inference.interpret(classifier.problem_type, logits, classifier.label_names)
    records = [with_inputs(r, t, p) for r, t, p in zip(results, rows, pairs or [None] * len(rows))]

    # 4. stdout (a table or JSON Lines) or a file
    emit(records, output, as_json, table, lambda path: outputs.write_predictions(path, records),
         f"{len(records):,} predictions")
    return records


def emit(records: list[dict[str, Any]], output: str | None, as_json: bool, show: Any, write: Any, what: str) -> None:
    """Predictions to the `output` file (`write(path)`), or to stdout as JSON Lines or as `show(records)`."""
    if output is not None:
        write(Path(output).expanduser())
        log(f"wrote {what} to {output}")
    elif as_json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        print(show(records))


def tag(tagger: inference.Loaded, rows: list[str], output: str | None, as_json: bool,
        batch_size: int) -> list[dict[str, Any]]:
    """Each text's entities: printed as a table or JSON Lines ({"text", "entities"}), or written to a file (JSON
    Lines as printed; CSV/TSV one row per entity)."""
    from llmkit import entities

    records = [{"text": text, "entities": found} for text, found in zip(rows, entities.find(tagger, rows, batch_size))]
    def write(path: Path) -> None:  # JSON Lines: full records, as for every prediction file
        (outputs.write_predictions if path.suffix.lower() == ".jsonl" else write_entity_table)(path, records)

    emit(records, output, as_json, entity_table, write, f"the entities of {len(records):,} texts")
    return records


ENTITY_COLUMNS = ("text", "entity_group", "score", "word", "start", "end")


def write_entity_table(path: Path, records: Sequence[dict[str, Any]]) -> None:
    import csv

    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        writer.writerow(ENTITY_COLUMNS)
        for r in records:
            for e in r["entities"]:
                writer.writerow([r["text"], e["entity_group"], f"{e['score']:.4f}", e["word"], e["start"], e["end"]])


def entity_table(records: Sequence[dict[str, Any]], width: int = 80) -> str:
    """Per text: the text, then one line per entity (type, score, characters, the words)."""
    lines = []
    for r in records:
        text = " ".join(r["text"].split())
        lines.append(text if len(text) <= width else text[:width - 1] + "…")
        kind = max([6] + [len(e["entity_group"]) for e in r["entities"]])
        for e in r["entities"]:
            lines.append(f"  {e['entity_group']:<{kind}}  {e['score']:.4f}  {e['start']:>4}-{e['end']:<4}  {e['word']}")
        if not r["entities"]:
            lines.append("  (no entities)")
    return "\n".join(lines)


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

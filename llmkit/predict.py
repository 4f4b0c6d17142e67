"""`llmkit predict`: classify texts with a fine-tuned model; label names and scores, in input order. A token
classifier gives each text's entities instead, as `pipeline("token-classification", aggregation_strategy="simple")`
gives them (`llmkit.entities`).

Inputs are read by `data.labeled.input_batches` (arguments, any table format fine-tuning reads, plain-text lines,
or stdin in batches as it arrives); the model runs through `inference` (loaded once, batched by length;
transformers' model under `torch.inference_mode` with bf16 autocast where the hardware has it, or ONNX Runtime on
the run's export, which imports neither torch nor transformers: `--runtime`). This module does not import the
`Trainer`.
"""

from __future__ import annotations

import itertools
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
    """Classify `texts` (or the texts of `input_file`) and print or write the predictions; returns them (from
    stdin without `output`: none, each batch is printed as it is done and not kept)."""
    # 1. inputs and output checked before the model loads (stdin: its first batch)
    if output is not None:
        outputs.check_predictions_path(output)
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}.")
    batches = labeled.input_batches(texts, input_file, text_column, text_pair_column, DataConfig(),
                                    size=max(4 * batch_size, 256))
    first = next(batches)

    # 2. model, loaded once
    task = inference.model_task(model)
    if task == "token-classification" and first[1] is not None:
        raise DataError("A token classifier tags one text at a time; drop --text-pair-column.")
    classifier = inference.load(model, "text-classification" if task == "fill-mask" else task, device,
                                precision=precision, runtime=runtime)
    log(f"predict: {classifier.describe()}")
    tags = task == "token-classification"

    # 3. predictions in input order, batch by batch: on stdout as each batch is done (a table or JSON Lines)
    kept: list[dict[str, Any]] = []
    keep = output is not None or input_file != "-" or bool(texts)
    for number, (rows, pairs) in enumerate(itertools.chain([first], batches)):
        records = entity_records(classifier, rows, batch_size) if tags else \
            label_records(classifier, rows, pairs, batch_size)
        if output is None and not as_json:
            print(entity_table(records) if tags else table(records, header=number == 0), flush=True)
        elif output is None:
            print("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), end="", flush=True)
        if keep:
            kept.extend(records)

    # 4. or a file
    if output is not None:
        path = Path(output).expanduser()
        if not tags or path.suffix.lower() == ".jsonl":  # JSON Lines: full records, as for every prediction file
            outputs.write_predictions(path, kept)
        else:
            write_entity_table(path, kept)
        log(f"wrote the {'entities of' if tags else 'predictions for'} {len(kept):,} texts to {output}")
    return kept


def label_records(classifier: inference.Loaded, rows: list[str], pairs: list[str] | None,
                  batch_size: int) -> list[dict[str, Any]]:
    """Each text's label(s) and scores, with the text (and its pair)."""
    logits = inference.classify(classifier, rows, pairs, batch_size)
    results = inference.interpret(classifier.problem_type, logits, classifier.label_names)
    return [with_inputs(r, t, p) for r, t, p in zip(results, rows, pairs or [None] * len(rows))]


def entity_records(tagger: inference.Loaded, rows: list[str], batch_size: int) -> list[dict[str, Any]]:
    """Each text's entities ({"text", "entities"}), as `pipeline(aggregation_strategy="simple")` gives them."""
    from llmkit import entities

    return [{"text": text, "entities": found} for text, found in zip(rows, entities.find(tagger, rows, batch_size))]


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


def table(records: Sequence[dict[str, Any]], width: int = 80, header: bool = True) -> str:
    rows = [outputs.prediction_row(r) for r in records]
    has_label = any("label" in r for r in rows)
    label_width = max([5] + [len(str(r.get("label", ""))) for r in rows])
    score_width = max([5] + [len(_score(r["score"])) for r in rows])
    head = (f"{'label':<{label_width}}  " if has_label else "") + f"{'score':>{score_width}}  text"
    lines = [head] if header else []
    for r in rows:
        text = r["text"] + (f" | {r['text_pair']}" if "text_pair" in r else "")
        text = " ".join(text.split())
        text = text if len(text) <= width else text[:width - 1] + "…"
        label = f"{r.get('label', ''):<{label_width}}  " if has_label else ""
        lines.append(f"{label}{_score(r['score']):>{score_width}}  {text}")
    return "\n".join(lines)


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)

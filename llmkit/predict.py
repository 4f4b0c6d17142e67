"""`llmkit predict`: classify texts with a fine-tuned model; label names and scores, in input order.

Inference is batched over texts sorted by length (little padding), runs under `torch.inference_mode`, with
bf16 autocast where the hardware has it, and loads the model once. This module does not import the
`Trainer`, so `llmkit predict` starts quickly; `llmkit finetune` uses it to write `predictions.csv`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import data
from llmkit.errors import DataError, ModelError, OutputError

PAIR_GUESSES = {"sentence1": "sentence2", "premise": "hypothesis", "question1": "question2"}
OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl")
PROBLEM_TYPES = {"single_label_classification": "single_label", "multi_label_classification": "multi_label",
                 "regression": "regression"}


# ---------------------------------------------------------------- the command


def main(model: str, texts: Sequence[str], input_file: str | None = None, output: str | None = None,
         as_json: bool = False, text_column: str | None = None, text_pair_column: str | None = None,
         batch_size: int = 64, device: str | None = None) -> list[dict[str, Any]]:
    """Classify `texts` (or the texts of `input_file`) and print or write the predictions."""
    # 1. inputs and output checked before the model loads
    rows, pairs = read_inputs(texts, input_file, text_column, text_pair_column)
    if output is not None:
        check_output(output)
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}.")

    # 2. model, loaded once
    classifier = load(model, device)

    # 3. predictions in input order
    results = classifier.predict(rows, pairs, batch_size=batch_size)
    records = [with_inputs(r, t, p) for r, t, p in zip(results, rows, pairs or [None] * len(rows))]

    # 4. stdout (a table or JSON Lines) or a file
    if output is not None:
        write_records(Path(output), records)
        print(f"llmkit: wrote {len(records):,} predictions to {output}", file=sys.stderr)
    elif as_json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        print(table(records))
    return records


# ---------------------------------------------------------------- inputs


def read_inputs(texts: Sequence[str], input_file: str | None, text_column: str | None,
                text_pair_column: str | None) -> tuple[list[str], list[str] | None]:
    """(texts, text pairs or None) from the arguments, a table file, plain-text lines or stdin ('-')."""
    if texts and input_file:
        raise DataError("Give texts as arguments or with --input-file, not both.")
    if texts:
        if text_pair_column:
            raise DataError("--text-pair-column needs a table given with --input-file (CSV, TSV or JSON Lines).")
        return list(texts), None
    if input_file is None:
        raise DataError("No texts to classify. Give TEXT arguments, or --input-file FILE ('-' reads stdin).")
    if input_file == "-":
        raw, name, suffix = sys.stdin.read(), "stdin", ""
        stripped = raw.lstrip()
        if stripped.startswith("{"):
            suffix = ".jsonl"
    else:
        path = Path(input_file).expanduser()
        if not path.is_file():
            raise DataError(f"Input file '{input_file}' does not exist. Check the path (relative paths start from "
                            f"{Path.cwd()}).")
        try:
            raw = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataError(f"'{input_file}' is not valid UTF-8 (byte offset {e.start}). Convert it to UTF-8.") from None
        name, suffix = input_file, path.suffix.lower()
    if suffix in (".csv", ".tsv", ".jsonl", ".json"):
        table = read_table(raw, suffix, name)
        if not table:
            raise DataError(f"'{name}' has no rows. Give a file with at least one text.")
        columns = list(table[0])
        strings = [c for c in columns if isinstance(table[0][c], str)]
        text, pair, _ = pick_text_columns(columns, text_column, text_pair_column, name, strings)
        out_texts = column_values(table, text, name, "--text-column")
        out_pairs = column_values(table, pair, name, "--text-pair-column") if pair else None
        return out_texts, out_pairs
    if text_column or text_pair_column:
        raise DataError(f"--text-column/--text-pair-column need a CSV, TSV or JSON Lines input; '{name}' is read as "
                        f"plain text, one text per line.")
    lines = [" ".join(line.split()) for line in raw.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"'{name}' has no text. Give one text per line.")
    return lines, None


def read_table(raw: str, suffix: str, name: str) -> list[dict[str, Any]]:
    if suffix in (".csv", ".tsv"):
        try:
            return list(csv.DictReader(io.StringIO(raw), delimiter="\t" if suffix == ".tsv" else ","))
        except csv.Error as e:
            raise DataError(f"Cannot read '{name}' as {suffix[1:].upper()}: {e}. Check the file's format.") from None
    if suffix == ".json" and raw.lstrip().startswith("["):
        try:
            rows = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"Cannot read '{name}' as JSON: {e}. Check the file's format.") from None
    else:
        rows = []
        for number, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"Line {number} of '{name}' is not valid JSON ({e.msg}). Give one JSON object "
                                    f"per line.") from None
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"'{name}' must hold JSON objects (one per line), e.g. {{\"text\": \"...\"}}.")
    return rows


def pick_text_columns(columns: Sequence[str], text_column: str | None, pair_column: str | None, source: str,
                      string_columns: Sequence[str] = ()) -> tuple[str, str | None, bool]:
    """(text column, pair column or None, whether they were auto-detected): given ones are checked, otherwise
    the usual names are tried (text, sentence, ...; sentence1/sentence2 as a pair), then a lone string column."""
    if text_column is not None:
        text = data.pick_column(columns, text_column, (), "text", source, "--text-column")
    else:
        guesses = list(data.TEXT_COLUMN_GUESSES) + ["premise", "question1"]
        guesses += list(string_columns[:1]) if len(string_columns) == 1 else []
        text = data.pick_column(columns, None, guesses, "text", source, "--text-column")
    if pair_column is not None:
        pair = data.pick_column(columns, pair_column, (), "second text", source, "--text-pair-column")
    else:
        pair = PAIR_GUESSES.get(text) if text_column is None and PAIR_GUESSES.get(text) in columns else None
    return text, pair, text_column is None


def column_values(table: list[dict[str, Any]], column: str, source: str, flag: str) -> list[str]:
    values = [row.get(column) for row in table]
    missing = [i for i, v in enumerate(values, 1) if not isinstance(v, str)]
    if missing:
        raise DataError(f"Column '{column}' of '{source}' has no text in {len(missing)} row(s) (first: row "
                        f"{missing[0]}). Fill them in or drop those rows, or pass {flag} with another column.")
    return values


def check_output(output: str) -> None:
    path = Path(output).expanduser()
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"--output '{output}' must end in {', '.join(OUTPUT_SUFFIXES)} (the format follows the "
                          f"suffix).")
    if path.is_dir():
        raise OutputError(f"--output '{output}' is a directory. Give a file path.")
    if not path.parent.is_dir():
        raise OutputError(f"The folder of --output '{output}' does not exist. Create it first.")


# ---------------------------------------------------------------- the model


@dataclass
class Classifier:
    """A sequence-classification model ready for batched inference (see `load`)."""

    model: Any
    tokenizer: Any
    device: Any
    precision: str  # bf16 | fp16 | fp32: the autocast dtype of the forward pass
    problem_type: str  # single_label | multi_label | regression
    max_length: int

    @property
    def label_names(self) -> list[str]:
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(self.model.config.num_labels)]

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64) -> np.ndarray:
        """Raw outputs [N, num_labels] in input order; texts are batched by length to minimise padding."""
        import torch

        encoded = self.tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                                 max_length=self.max_length)
        features = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))  # longest first: OOM early
        out = np.zeros((len(features), self.model.config.num_labels), dtype=np.float32)
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                batch = self.tokenizer.pad([features[i] for i in index], return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                out[index] = self.model(**batch).logits.float().cpu().numpy()
        return out

    def autocast(self) -> Any:
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                batch_size: int = 64) -> list[dict[str, Any]]:
        return interpret(self.problem_type, self.logits(texts, pairs, batch_size), self.label_names)


def load(name: str, device: str | None = None, precision: str = "auto") -> Classifier:
    """A fine-tuned classifier (an llmkit finetune run, or any sequence-classification checkpoint) on `device`."""
    import torch

    from llmkit import modeling

    modeling.check_model_path(name)
    config = modeling.read_config(name)
    architectures = config.architectures or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(f"'{name}' is a {', '.join(architectures)}, not a sequence classifier. Fine-tune it first: "
                         f"llmkit finetune --model {name} --data TRAIN.")
    try:
        target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as e:
        raise ModelError(f"Unknown --device '{device}': {e}. Use cpu, cuda or cuda:N.") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device} asks for a GPU but none is visible. Use --device cpu.")
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr stays for llmkit's own messages
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name, config=config)
    except Exception as e:  # noqa: BLE001 - many loaders, one meaning: not a usable classifier
        raise ModelError(f"Cannot load '{name}' as a sequence classifier: {str(e).strip().splitlines()[0][:200]}. "
                         f"Give the output directory of `llmkit finetune`.") from None
    tokenizer = modeling.load_tokenizer(name)
    if precision == "auto":
        if target.type == "cpu":
            precision = "bf16" if modeling.cpu_has_bf16() else "fp32"
        else:
            precision, _ = modeling.resolve_precision("auto")
    positions = modeling.max_positions(config) or 512
    max_length = min(positions, tokenizer.model_max_length or positions)
    kind = PROBLEM_TYPES.get(config.problem_type or "", "regression" if config.num_labels == 1 else "single_label")
    return Classifier(model.to(target).eval(), tokenizer, target, precision, kind, max_length)


# ---------------------------------------------------------------- results


def interpret(problem_type: str, logits: np.ndarray, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-text results: single_label {label, score, scores}; multi_label {labels, scores} (sigmoid > 0.5);
    regression {score} (the predicted value)."""
    if problem_type == "regression":
        return [{"score": float(v)} for v in logits[:, 0]]
    if problem_type == "multi_label":
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return [{"labels": [n for n, p in zip(label_names, row) if p > 0.5],
                 "scores": {n: round(float(p), 6) for n, p in zip(label_names, row)}} for row in probs]
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    best = probs.argmax(-1)
    return [{"label": label_names[b], "score": round(float(row[b]), 6),
             "scores": {n: round(float(p), 6) for n, p in zip(label_names, row)}} for b, row in zip(best, probs)]


def with_inputs(result: dict[str, Any], text: str, pair: str | None) -> dict[str, Any]:
    return {"text": text, **({"text_pair": pair} if pair is not None else {}), **result}


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """A record as one table row: text, [text_pair], [gold], label, score (multi-label: ';'-joined)."""
    row = {k: record[k] for k in ("text", "text_pair", "gold") if k in record}
    if "labels" in record:
        row["label"] = ";".join(record["labels"])
        row["score"] = ";".join(f"{record['scores'][n]:.4f}" for n in record["labels"])
    else:
        if "label" in record:
            row["label"] = record["label"]
        row["score"] = record["score"]
    return row


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """CSV/TSV (one row per text, see `flat`) or JSON Lines (full records), by the file's suffix."""
    path = path.expanduser()
    with path.open("w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".jsonl":
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        rows = [flat(r) for r in records]
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["text", "label", "score"],
                                delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)


def table(records: Sequence[dict[str, Any]], width: int = 80) -> str:
    rows = [flat(r) for r in records]
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

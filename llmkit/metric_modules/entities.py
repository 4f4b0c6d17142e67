"""Entity-level metrics of tag sequences, computed by seqeval: a local `evaluate` module (loads offline).

    evaluate.load("<path>/entities.py").compute(references=[["B-PER", "I-PER", "O"]],
                                                predictions=[["B-PER", "O", "O"]])

An entity counts as found only when its type and both ends match exactly (seqeval's default mode, conlleval's
semantics: BIO, IOB1 and BIOES tags). Returns entity_f1, entity_precision and entity_recall over all entities (micro-averaged), token
accuracy, and with `report=True` a per-entity-type table (precision, recall, f1, support).
"""

import datasets
import evaluate

_DESCRIPTION = "Entity precision, recall and F1 (exact span and type), token accuracy, per-type report (seqeval)."
_KWARGS = """
Args:
    predictions, references: one list of tag strings per sentence (same lengths).
    report (bool): add per_type: {TYPE: {precision, recall, f1, support}}.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Entities(evaluate.Metric):
    def _info(self):
        tags = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": tags, "references": tags}))

    def _compute(self, predictions, references, report=False):
        from seqeval import metrics as sq

        out = {"entity_f1": float(sq.f1_score(references, predictions, zero_division=0)),
               "entity_precision": float(sq.precision_score(references, predictions, zero_division=0)),
               "entity_recall": float(sq.recall_score(references, predictions, zero_division=0)),
               "token_accuracy": float(sq.accuracy_score(references, predictions))}
        if report:
            table = sq.classification_report(references, predictions, output_dict=True, zero_division=0)
            out["per_type"] = {kind: {"precision": float(row["precision"]), "recall": float(row["recall"]),
                                      "f1": float(row["f1-score"]), "support": int(row["support"])}
                               for kind, row in table.items() if not kind.endswith(" avg")}
        return out

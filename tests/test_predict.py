"""`llmkit predict`: input formats, batching by length with input order kept, outputs, errors, no Trainer import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llmkit import inference, predict
from llmkit.errors import DataError, ModelError, OutputError
from tests.conftest import OFFLINE

TEXTS = ["alpha", "beta gamma delta epsilon zeta eta theta iota kappa", "mu nu", "omega psi chi phi upsilon tau"]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, tiny_mlm):
    return make_classifier(tmp_path_factory.mktemp("tiny-clf"), tiny_mlm)


def make_classifier(folder, tiny_mlm):
    """A real (untrained) BertForSequenceClassification with label names, saved like a finetune run."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
                        problem_type="single_label_classification", architectures=["BertForSequenceClassification"])
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load(folder, **kwargs):
    return inference.load(str(folder), "text-classification", device="cpu", **kwargs)


def test_batches_sorted_by_length_keep_input_order(tiny_classifier):
    classifier = load(tiny_classifier, precision="fp32")
    one_by_one = np.concatenate([inference.classify(classifier, [t], batch_size=1) for t in TEXTS])
    batched = inference.classify(classifier, TEXTS, batch_size=3)  # batches mix lengths; padding changes nothing
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert len({tuple(row) for row in batched.round(5)}) == len(TEXTS)  # different texts, different outputs


def test_auto_precision_follows_the_hardware(tiny_classifier):
    from llmkit import devices

    classifier = load(tiny_classifier)
    assert classifier.precision == ("bf16" if devices.cpu_has_bf16() else "fp32")
    exact = load(tiny_classifier, precision="fp32")
    np.testing.assert_allclose(inference.classify(classifier, TEXTS), inference.classify(exact, TEXTS),
                               atol=0.05)  # bf16 autocast is close


def test_interpret_each_problem_type():
    single = inference.interpret("single_label", np.array([[0.0, np.log(3.0)]]), ["neg", "pos"])
    assert single == [{"label": "pos", "score": 0.75, "scores": {"neg": 0.25, "pos": 0.75}}]
    multi = inference.interpret("multi_label", np.array([[np.log(3.0), 0.0, -np.log(3.0)]]), ["a", "b", "c"])
    assert multi == [{"labels": ["a"], "scores": {"a": 0.75, "b": 0.5, "c": 0.25}}]  # strictly above 0.5
    assert inference.interpret("regression", np.array([[2.5]]), ["LABEL_0"]) == [{"score": 2.5}]


def test_table_json_and_files(tiny_classifier, tmp_path, capsys):
    records = predict.main(str(tiny_classifier), TEXTS, device="cpu")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["label", "score", "text"] and len(table) == 1 + len(TEXTS)
    assert [line.split()[0] for line in table[1:]] == [r["label"] for r in records]
    assert [line.split(maxsplit=2)[2] for line in table[1:]] == TEXTS  # input order

    predict.main(str(tiny_classifier), TEXTS[:2], as_json=True, device="cpu")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == TEXTS[:2] and set(lines[0]) == {"text", "label", "score", "scores"}
    assert lines[0]["scores"][lines[0]["label"]] == lines[0]["score"]

    source = tmp_path / "in.tsv"
    source.write_text("id\tbody\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    predict.main(str(tiny_classifier), [], input_file=str(source), output=str(tmp_path / "out.jsonl"), device="cpu")
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in written] == TEXTS  # 'body' is the only string column: auto-detected
    assert [r["label"] for r in written] == [r["label"] for r in records]


def test_pairs_from_jsonl(tiny_classifier, tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps({"sentence1": t, "sentence2": "alpha beta"}) + "\n" for t in TEXTS))
    records = predict.main(str(tiny_classifier), [], input_file=str(source), as_json=True, device="cpu")
    assert records[0]["text_pair"] == "alpha beta"
    classifier = load(tiny_classifier)
    logits = inference.classify(classifier, TEXTS, ["alpha beta"] * len(TEXTS))
    expected = inference.interpret(classifier.problem_type, logits, classifier.label_names)
    assert [r["score"] for r in records] == pytest.approx([e["score"] for e in expected])


def test_bad_inputs_fail_before_the_model_loads(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("sentence,label\nhello,a\n", encoding="utf-8")
    missing_model = str(tmp_path / "no-model")  # never reached: inputs are checked first
    with pytest.raises(DataError, match="Did you mean 'sentence'"):
        predict.main(missing_model, [], input_file=str(source), text_column="sentense")
    with pytest.raises(DataError, match="not both"):
        predict.main(missing_model, ["x"], input_file=str(source))
    with pytest.raises(DataError, match="No texts"):
        predict.main(missing_model, [])
    with pytest.raises(OutputError, match=r"\.csv, \.tsv, \.jsonl"):
        predict.main(missing_model, ["x"], output=str(tmp_path / "out.xlsx"))
    with pytest.raises(ModelError, match="does not exist"):
        predict.main(missing_model, ["x"])


def test_mlm_checkpoint_is_refused(tiny_mlm):
    with pytest.raises(ModelError, match="BertForMaskedLM, not a sequence classifier.*llmkit finetune"):
        predict.main(str(tiny_mlm), ["hello"])


def test_cli_reads_stdin_and_does_not_import_the_trainer(tiny_classifier):
    """The real CLI (the `llmkit` entry point's app) in a fresh process: stdin lines in, JSON Lines out."""
    code = ("import sys\nfrom llmkit.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('EXIT', e.code, 'TRAINER', 'transformers.trainer' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, "predict", str(tiny_classifier), "--input-file", "-",
                             "--json"], input="mu nu\n\nalpha beta gamma\n", capture_output=True, text=True,
                            env={**os.environ, **OFFLINE})
    assert "EXIT 0 TRAINER False" in result.stderr, result.stderr
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["mu nu", "alpha beta gamma"]


def test_stdin_is_streamed_json_lines_and_plain_lines_alike(tiny_classifier):
    """Each stdin line is answered before the next is sent (stdin still open), JSON Lines with their pair column as
    well as plain lines, with the scores of the same texts given as arguments; a bad line later on is one error."""
    expected = {r["text"]: r["score"] for r in predict.main(str(tiny_classifier), TEXTS, device="cpu",
                                                            precision="fp32")}
    paired = predict.main(str(tiny_classifier), [], input_file=str(write_pairs(tiny_classifier.parent)),
                          device="cpu", precision="fp32")
    for lines in ([json.dumps({"sentence1": t, "sentence2": "alpha beta", "id": i}) for i, t in enumerate(TEXTS)],
                  TEXTS):
        proc = subprocess.Popen([sys.executable, "-m", "llmkit", "predict", str(tiny_classifier), "--input-file", "-",
                                 "--json", "--device", "cpu", "--precision", "fp32"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **OFFLINE})
        try:
            for i, line in enumerate(lines):
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
                record = json.loads(proc.stdout.readline())  # out while stdin is still open
                assert record["text"] == TEXTS[i]
                if lines is TEXTS:
                    assert record["score"] == pytest.approx(expected[TEXTS[i]], abs=1e-5)
                else:
                    assert record["text_pair"] == "alpha beta"
                    assert record["score"] == pytest.approx(paired[i]["score"], abs=1e-5)
            proc.stdin.write('{"sentence1": 3}\n' if lines is not TEXTS else "")
            proc.stdin.close()
            code = proc.wait(timeout=60)
            error = proc.stderr.read()
            if lines is TEXTS:
                assert code == 0 and proc.stdout.read() == ""
            else:
                assert code == 2 and "Line 5 of stdin has no text in 'sentence1'" in error.splitlines()[-1]
        finally:
            proc.kill()


def write_pairs(folder):
    path = folder / "pairs-for-stdin.jsonl"
    path.write_text("".join(json.dumps({"sentence1": t, "sentence2": "alpha beta"}) + "\n" for t in TEXTS))
    return path


def test_reads_every_format_that_finetune_reads(tiny_classifier, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"sentence": t, "label": "neg"} for t in TEXTS]
    files = {"csv": "sentence,label\n" + "".join(f"{t},neg\n" for t in TEXTS),
             "tsv": "sentence\tlabel\n" + "".join(f"{t}\tneg\n" for t in TEXTS),
             "jsonl": "".join(json.dumps(r) + "\n" for r in rows), "json": json.dumps(rows)}
    for suffix, text in files.items():
        (tmp_path / f"in.{suffix}").write_text(text, encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    expected = [r["label"] for r in predict.main(str(tiny_classifier), TEXTS, device="cpu")]
    for suffix in (*files, "parquet"):
        records = predict.main(str(tiny_classifier), [], input_file=str(tmp_path / f"in.{suffix}"), device="cpu")
        assert [r["text"] for r in records] == TEXTS and [r["label"] for r in records] == expected, suffix


def test_half_precision_checkpoint_predicts_like_fp32(tiny_classifier, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    half = tmp_path / "bf16"
    AutoModelForSequenceClassification.from_pretrained(tiny_classifier).to(torch.bfloat16).save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_classifier).save_pretrained(half)
    loaded = load(half, precision="fp32")
    assert next(loaded.model.parameters()).dtype == torch.float32  # weights in fp32 whatever they were saved in
    np.testing.assert_allclose(inference.classify(loaded, TEXTS), inference.classify(load(tiny_classifier,
                               precision="fp32"), TEXTS), atol=0.02)  # only the bf16 rounding of the weights

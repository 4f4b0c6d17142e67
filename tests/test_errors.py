"""Bad input through the real CLI: exit 2, one line saying what was expected/found/what to do, nothing written.
Plus a non-finite loss during a real run (interruption and crashes: tests/test_resume.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

TINY = ["--size", "tiny", "--set", "model.vocab_size=200", "--max-seq-length", "32", "--max-steps", "2",
        "--set", "training.per_device_train_batch_size=8"]


def assert_refused(result, *phrases: str, out: Path | None = None) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("llmkit: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line, last: {result.stderr}"
    assert all(line.startswith("llmkit: ") for line in lines), "only llmkit's own progress lines before it"
    assert "Traceback" not in result.stderr
    line = errors[0]
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    if out is not None:
        assert not out.exists(), "nothing may be written for bad input"
    return line


@pytest.fixture()
def out(tmp_path) -> Path:
    return tmp_path / "run"


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("labeled")
    rows = [("good fine great", "pos"), ("bad awful poor", "neg")] * 6
    (folder / "train.csv").write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    (folder / "one_class.csv").write_text("text,label\n" + "".join(f"{t},pos\n" for t, _ in rows))
    (folder / "dev_unseen.csv").write_text("text,label\ngood,pos\nmeh,neutral\n")
    return folder


# ---------------------------------------------------------------- data


def test_missing_data_file(out, tmp_path):
    assert_refused(run_cli("pretrain", "--data", tmp_path / "nope.txt", "-o", out, *TINY),
                   "does not exist", "nope.txt", out=out)


def test_empty_data_file(out, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_refused(run_cli("pretrain", "--data", empty, "-o", out, *TINY), "is empty", out=out)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_data_file(out, tmp_path):
    locked = tmp_path / "locked.txt"
    locked.write_text("text")
    locked.chmod(0)
    assert_refused(run_cli("pretrain", "--data", locked, "-o", out, *TINY), "not readable", out=out)


def test_non_utf8_reports_offset_and_option(out, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"plain text first\n\nthen caf\xe9\n")
    assert_refused(run_cli("pretrain", "--data", bad, "-o", out, *TINY),
                   "not valid UTF-8", "byte offset 26", "data.encoding_errors=replace", out=out)


def test_empty_corpus_after_filtering(out, tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": "  "}) + "\n" + json.dumps({"text": ""}) + "\n")
    assert_refused(run_cli("pretrain", "--data", blank, "-o", out, *TINY), "No text found", out=out)


def test_missing_column_did_you_mean(out, tmp_path):
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"body": "some text", "n": 1}) + "\n")
    assert_refused(run_cli("pretrain", "--data", table, "-o", out, *TINY, "--set", "data.text_column=bdy"),
                   "Column 'bdy' not found", "Did you mean 'body'?", out=out)


def test_finetune_missing_column_did_you_mean(out, labeled, tiny_mlm):
    assert_refused(run_cli("finetune", "--data", labeled / "train.csv", "--model", tiny_mlm, "-o", out,
                           "--label-column", "lable"), "Did you mean 'label'?", out=out)


def test_single_class_labels(out, labeled, tiny_mlm):
    line = assert_refused(run_cli("finetune", "--data", labeled / "one_class.csv", "--model", tiny_mlm, "-o", out),
                          out=out)
    assert "pos" in line and "class" in line.lower()


def test_eval_label_unseen_in_training(out, labeled, tiny_mlm):
    line = assert_refused(run_cli("finetune", "--data", labeled / "train.csv", "--eval-data",
                                  labeled / "dev_unseen.csv", "--model", tiny_mlm, "-o", out), "neutral", out=out)
    assert "unseen_eval_labels" in line or "drop" in line


# ---------------------------------------------------------------- models


def test_model_path_that_is_not_a_model(out, tmp_path, toy_corpus_file):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hi")
    assert_refused(run_cli("pretrain", "--data", toy_corpus_file, "--model", folder, "-o", out, *TINY),
                   "is not a model", "readme.txt", out=out)
    assert_refused(run_cli("fill-mask", folder, "a [MASK] b"), "is not a model")


def test_text_without_mask(tiny_mlm):
    assert_refused(run_cli("fill-mask", tiny_mlm, "no mask here"), "[MASK]")


def test_fill_mask_on_model_without_mask_token(tmp_path):
    """A classifier-only checkpoint whose tokenizer has no mask token cannot get an MLM head."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "a": 2, "b": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    model = BertForSequenceClassification(BertConfig(vocab_size=4, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=1, intermediate_size=8))
    model.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    line = assert_refused(run_cli("fill-mask", tmp_path / "clf", "a [MASK] b"))
    assert "mask" in line.lower()


def test_tokenizer_model_vocabulary_mismatch(out, tmp_path, tiny_mlm, toy_corpus_file):
    from tests.conftest import make_tiny_mlm, toy_corpus

    bigger = make_tiny_mlm(tmp_path / "bigger", toy_corpus() + [f"word{i}" for i in range(400)], vocab_size=600)
    assert_refused(run_cli("pretrain", "--data", toy_corpus_file, "--model", tiny_mlm, "--tokenizer", bigger,
                           "-o", out, "--max-steps", "2"), "tokens but model", "embedding rows", out=out)


def test_max_length_beyond_model_positions(out, tiny_mlm, toy_corpus_file):
    assert_refused(run_cli("pretrain", "--data", toy_corpus_file, "--model", tiny_mlm, "-o", out,
                           "--max-seq-length", "4096", "--max-steps", "2"),
                   "exceeds the 128 positions", "--max-seq-length 128", out=out)


# ---------------------------------------------------------------- configuration


def test_malformed_yaml(out, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: pretrain\ntraining: {max_steps: 2\n")
    assert_refused(run_cli("pretrain", bad, "-o", out), "not valid YAML", "line", out=out)


def test_unknown_recipe_key(out, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("command: pretrain\nmodel:\n  sise: tiny\n")
    assert_refused(run_cli("pretrain", recipe, "-o", out), "Unknown setting 'model.sise'", "Did you mean 'size'?",
                   out=out)


def test_unknown_recipe_name(out):
    assert_refused(run_cli("pretrain", "cpu-quik", "-o", out), "No recipe named 'cpu-quik'",
                   "Did you mean 'cpu-quick'?", out=out)


@pytest.mark.parametrize("setting, phrase", [
    ("training.learning_rate=-0.001", "training.learning_rate must be > 0"),
    ("mlm.probability=1.2", "mlm.probability must be in (0, 1)"),
    ("training.max_steps=ten", "must be an integer, got 'ten'"),
])
def test_wrong_type_or_out_of_range(out, setting, phrase):
    assert_refused(run_cli("pretrain", "-o", out, "--set", setting), phrase, out=out)


def test_recipe_cannot_write_outside_output_dir(tmp_path):
    """Checkpoints, logs and the final model all live under OUTPUT_DIR; llmkit owns those paths."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"command: pretrain\ntraining:\n  output_dir: {tmp_path / 'elsewhere'}\n")
    assert_refused(run_cli("pretrain", recipe, "-o", tmp_path / "run"), "training.output_dir", "--output-dir",
                   out=tmp_path / "run")
    recipe.write_text(f"command: pretrain\ntraining:\n  logging_dir: {tmp_path / 'elsewhere'}\n")
    result = run_cli("pretrain", recipe, "-o", tmp_path / "run2")
    assert result.returncode == 2 and "training.logging_dir" in result.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_existing_output_dir(tmp_path, toy_corpus_file):
    existing = tmp_path / "run"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_refused(run_cli("pretrain", "--data", toy_corpus_file, "-o", existing, *TINY),
                   "already exists", "--resume", "--overwrite")
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------- interruption and non-finite loss


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, toy_corpus_file):
    out = tmp_path / "nan"
    result = run_cli("pretrain", "--data", toy_corpus_file, "-o", out, "--size", "tiny", "--set",
                     "model.vocab_size=200", "--max-seq-length", "32", "--max-steps", "30",
                     "--set", "training.per_device_train_batch_size=8", "--set", "training.logging_steps=1",
                     "--set", "training.save_steps=2", "--set", "training.learning_rate=1e12",
                     "--set", "training.max_grad_norm=0", "--set", "training.warmup_steps=0", "--precision", "fp32")
    assert result.returncode == 1, result.stderr
    assert "NaN/inf" in result.stderr and "Last good checkpoint" in result.stderr
    assert not (out / "config.json").exists()

"""End-to-end runs of the real `llmkit finetune` / `llmkit predict` CLI on a tiny model and separable toy tasks."""

from __future__ import annotations

import csv
import json
import random

import pytest

from tests.conftest import WORDS, last_json, run_cli

pytestmark = pytest.mark.slow

# Three topics, each with its own words: a bag-of-words task a 2-layer, hidden-32 model learns in a few steps.
POOLS = {"low": WORDS[:8], "mid": WORDS[8:16], "high": WORDS[16:]}
FAST = ["--max-seq-length", "32", "--set", "training.per_device_train_batch_size=16",
        "--set", "training.logging_steps=5"]


def topic_rows(n: int, seed: int, topics=tuple(POOLS)) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        rows.append({"sentence": " ".join(rng.choice(POOLS[topic]) for _ in range(rng.randrange(3, 10))),
                     "label": topic})
    rng.shuffle(rows)
    return rows


def write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_csv(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_mlm):
    """One 3-class run with string labels: 96 training and 30 evaluation examples, 8 epochs of 12 steps.

    A random-init encoder separates the topics only after a few epochs (1-4 depending on the seed)."""
    folder = tmp_path_factory.mktemp("clf")
    train = write_csv(folder / "train.csv", topic_rows(96, seed=1))
    dev = write_csv(folder / "dev.csv", topic_rows(30, seed=2))
    out = folder / "run"
    result = run_cli("finetune", "--data", train, "--eval-data", dev, "--model", tiny_mlm, "-o", out,
                     "--epochs", "8", "--set", "training.learning_rate=2e-3", *FAST,
                     "--set", "training.per_device_train_batch_size=8")
    assert result.returncode == 0, result.stderr
    return out, result, dev


def test_learns_a_separable_task(classifier):
    out, result, _ = classifier
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.95 and metrics["f1_macro"] >= 0.95, metrics
    assert metrics["train_examples"] == 96 and metrics["eval_examples"] == 30 and metrics["steps"] == 96
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [e for e in history if "eval_accuracy" in e]
    assert [e["epoch"] for e in evals] == [float(e) for e in range(1, 9)]  # evaluated every epoch
    assert metrics["best_metric"]["value"] == max(e["eval_f1_macro"] for e in evals)  # best model kept
    printed = last_json(result.stdout)
    assert printed["accuracy"] == metrics["accuracy"] and result.stdout.count("\n") == 1
    assert "fresh classification head for 3 labels" in result.stderr  # said on stderr
    assert "text 'sentence', label 'label' (auto-detected" in result.stderr


def test_run_directory_contract(classifier):
    out, _, _ = classifier
    for name in ("config.json", "model.safetensors", "tokenizer.json", "llmkit.yaml", "metrics.json",
                 "trainer_state.json", "loss.png", "confusion_matrix.png", "README.md", "predictions.csv"):
        assert (out / name).is_file(), name
    assert not (out / "training_args.bin").exists()
    assert not any(p.name.startswith(".staging") for p in out.iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    best = metrics["best_metric"]["checkpoint"].rsplit("/", 1)[-1]
    kept = {p.name for p in (out / "checkpoints").iterdir() if p.is_dir()}
    assert kept == {best, "checkpoint-96"}  # save_total_limit=2 keeps the last and the best
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["labels"] == ["high", "low", "mid"]
    assert set(metrics["per_class"]) == {"high", "low", "mid"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 30
    assert sum(c["support"] for c in metrics["per_class"].values()) == 30
    card = (out / "README.md").read_text()
    assert 'pipeline("text-classification"' in card and "high, low, mid" in card and "llmkit finetune llmkit.yaml" in card
    assert "training.learning_rate" in card  # non-default settings are listed
    from huggingface_hub import ModelCard

    hub = ModelCard.load(out / "README.md")
    assert hub.data.pipeline_tag == "text-classification" and {"accuracy", "f1_macro"} <= set(hub.data.metrics)


def test_string_labels_round_trip_into_config_and_pipeline(classifier):
    out, _, _ = classifier
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "high", "1": "low", "2": "mid"}
    assert config["label2id"] == {"high": 0, "low": 1, "mid": 2}
    assert config["problem_type"] == "single_label_classification"
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out), device="cpu")
    got = classify([" ".join(POOLS["low"][:5]), " ".join(POOLS["high"][:5])])
    assert [g["label"] for g in got] == ["low", "high"]


def test_predictions_csv_matches_llmkit_predict(classifier, tmp_path):
    out, _, dev = classifier
    saved = read_csv(out / "predictions.csv")
    gold = read_csv(dev)
    assert [r["text"] for r in saved] == [r["sentence"] for r in gold]  # evaluation order kept
    assert [r["gold"] for r in saved] == [r["label"] for r in gold]
    assert sum(r["gold"] == r["label"] for r in saved) / len(saved) == json.loads((out / "metrics.json").read_text())["accuracy"]
    result = run_cli("predict", out, "--input-file", dev, "--output", tmp_path / "p.csv")
    assert result.returncode == 0, result.stderr
    predicted = read_csv(tmp_path / "p.csv")
    assert [r["text"] for r in predicted] == [r["text"] for r in saved]
    assert [r["label"] for r in predicted] == [r["label"] for r in saved]
    assert [float(r["score"]) for r in predicted] == pytest.approx([float(r["score"]) for r in saved], abs=1e-4)


def test_bad_column_fails_before_anything_is_written(tiny_mlm, tmp_path):
    train = write_csv(tmp_path / "train.csv", topic_rows(12, seed=3))
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", train, "--model", tiny_mlm, "-o", out, "--text-column", "sentense")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line
    assert "Column 'sentense' not found" in result.stderr and "Did you mean 'sentence'?" in result.stderr
    assert not out.exists()


def test_unseen_eval_label_and_single_class_are_clear_errors(tiny_mlm, tmp_path):
    train = write_csv(tmp_path / "train.csv", topic_rows(12, seed=4, topics=("low", "mid")))
    dev = write_csv(tmp_path / "dev.csv", topic_rows(6, seed=5))
    result = run_cli("finetune", "--data", train, "--eval-data", dev, "--model", tiny_mlm, "-o", tmp_path / "a")
    assert result.returncode == 2
    assert "Evaluation labels not in the training data: 'high' (2 rows)" in result.stderr
    assert "finetune.unseen_eval_labels=drop" in result.stderr
    single = write_csv(tmp_path / "single.csv", topic_rows(8, seed=6, topics=("low",)))
    result = run_cli("finetune", "--data", single, "--model", tiny_mlm, "-o", tmp_path / "b")
    assert result.returncode == 2 and "one label ('low')" in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_regression_run(tiny_mlm, tmp_path):
    rng = random.Random(7)
    rows = []
    for _ in range(48):  # the target is the share of "high" words
        n_high = rng.randrange(0, 6)
        words = [rng.choice(POOLS["high"]) for _ in range(n_high)] + [rng.choice(POOLS["low"]) for _ in range(5 - n_high)]
        rows.append({"text": " ".join(words), "score": n_high / 5})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", train, "--model", tiny_mlm, "-o", out, "--label-column", "score",
                     "--max-steps", "6", *FAST)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem_type"] == "regression" and metrics["eval_examples"] == 5  # 10% held out
    assert {"mse", "pearson", "spearman", "eval_loss"} <= set(metrics) and "accuracy" not in metrics
    assert metrics["mse"] == pytest.approx(metrics["eval_loss"], rel=1e-6)  # the model's loss is the MSE
    assert json.loads((out / "config.json").read_text())["problem_type"] == "regression"
    assert metrics["best_metric"]["metric"] == "eval_mse"
    predictions = read_csv(out / "predictions.csv")
    assert list(predictions[0]) == ["text", "gold", "score"] and len(predictions) == 5
    assert not (out / "confusion_matrix.png").exists()


def test_multi_label_run(tiny_mlm, tmp_path):
    rng = random.Random(8)
    rows = []
    for _ in range(40):
        topics = sorted(rng.sample(list(POOLS), rng.randrange(1, 3)))
        rows.append({"text": " ".join(rng.choice(POOLS[t]) for t in topics for _ in range(3)), "labels": topics})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", train, "--model", tiny_mlm, "-o", out, "--max-steps", "6", *FAST)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem_type"] == "multi_label" and metrics["labels"] == ["high", "low", "mid"]
    assert {"accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_macro"} <= set(metrics)
    assert "confusion_matrix" not in metrics and set(metrics["per_class"]) == {"high", "low", "mid"}
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["id2label"]["1"] == "low"
    predictions = read_csv(out / "predictions.csv")
    assert len(predictions) == 4 and all(";" in r["gold"] or r["gold"] in POOLS for r in predictions)


def test_a_run_takes_callbacks_and_a_trainer_subclass_from_python(tiny_mlm, tmp_path):
    """`finetune.run(cfg, callbacks=..., trainer_class=...)`: a user's callback sees every step and their
    subclass trains the run, with llmkit's own callbacks still in place; anything else is refused up front."""
    import transformers

    from llmkit import config as config_lib
    from llmkit import finetune, pretrain, training
    from llmkit.errors import ConfigError

    class Steps(transformers.TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    class CountingTrainer(training.SeededTrainer):
        losses = 0

        def compute_loss(self, *args, **kwargs):
            type(self).losses += 1
            return super().compute_loss(*args, **kwargs)

    train = write_csv(tmp_path / "train.csv", topic_rows(48, seed=1))
    flags = {"data.train": [str(train)], "model.name": str(tiny_mlm), "output_dir": str(tmp_path / "run"),
             "training.max_steps": 4, "data.max_seq_length": 32}
    cfg = config_lib.build("finetune", flags=flags, sets=["training.per_device_train_batch_size=8"])
    steps = Steps()
    summary = finetune.run(cfg, callbacks=[steps], trainer_class=CountingTrainer)
    assert steps.steps == [1, 2, 3, 4] and summary["steps"] == 4
    assert CountingTrainer.losses >= 4  # every training step (and the evaluations) went through the subclass
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 4  # llmkit's own outputs

    for command, run, base in (("finetune", finetune.run, "SeededTrainer"), ("pretrain", pretrain.run, "MLMTrainer")):
        cfg = config_lib.build(command, flags={**flags, "output_dir": str(tmp_path / "no")})
        with pytest.raises(ConfigError, match=f"subclass of llmkit.training.{base}"):
            run(cfg, trainer_class=transformers.Trainer)
        assert not (tmp_path / "no").exists()

"""Labeled data for finetune: columns, problem type, label sets, unseen labels and the stratified split."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from llmkit import config
from llmkit.errors import ConfigError, DataError
from llmkit.data.labeled import (Labeled, check_eval_labels, encode_labels, label_names, load_labeled,
                                 normalize_labels, problem_type, stratified_sample, stratified_split)


def labels_of(raw, requested="auto"):
    problem = problem_type(raw, requested)
    labels = normalize_labels(raw, problem, "data")
    return problem, labels, label_names(labels, problem, "data")


def test_problem_type_follows_the_label_values():
    assert labels_of(["pos", "neg", "pos"]) == ("single_label", ["pos", "neg", "pos"], ["neg", "pos"])
    assert labels_of([10, 2, 1, 2]) == ("single_label", ["10", "2", "1", "2"], ["1", "2", "10"])  # numeric order
    assert labels_of([True, False])[2] == ["False", "True"]
    assert labels_of([0.5, 1, 2.25])[0:2] == ("regression", [0.5, 1.0, 2.25])
    assert labels_of([["a", "b"], [], ["c"]]) == ("multi_label", [["a", "b"], [], ["c"]], ["a", "b", "c"])


def test_requested_problem_type_wins():
    assert labels_of([0.0, 1.0, 1.0], "single_label")[1:] == (["0", "1", "1"], ["0", "1"])
    assert labels_of(["1.5", "2"], "regression")[1] == [1.5, 2.0]
    # CSV files cannot hold lists: a multi-label string is split on commas
    assert labels_of(["news, sports", "sports", ""], "multi_label")[1:] == (
        [["news", "sports"], ["sports"], []], ["news", "sports"])
    with pytest.raises(DataError, match=r"finite number.*row 2: 'high'"):
        labels_of([1.0, "high"], "regression")


def test_single_class_training_set_is_refused():
    with pytest.raises(DataError, match=r"one label \('spam'\).*at least 2 classes"):
        labels_of(["spam", "spam"])
    with pytest.raises(DataError, match="problem_type=regression"):  # a numeric target: suggest regression
        labels_of([3, 3, 3])


def test_encode_labels():
    assert encode_labels(["b", "a", "b"], "single_label", ["a", "b"]) == [1, 0, 1]
    assert encode_labels([["b"], [], ["a", "b"]], "multi_label", ["a", "b"]) == [[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert encode_labels([1.5, 2.0], "regression", []) == [1.5, 2.0]


def test_unseen_evaluation_labels_error_or_drop(capsys):
    held = Labeled(["t1", "t2", "t3", "t4"], None, ["a", "x", "b", "x"], "dev.csv")
    with pytest.raises(DataError) as error:
        check_eval_labels(held, ["a", "b"], "single_label", "error")
    message = str(error.value)
    assert "'x' (2 rows)" in message and "finetune.unseen_eval_labels=drop" in message and "\n" not in message
    kept = check_eval_labels(held, ["a", "b"], "single_label", "drop")
    assert kept.texts == ["t1", "t3"] and kept.labels == ["a", "b"]
    assert "dropped 2 evaluation row(s)" in capsys.readouterr().err
    multi = Labeled(["t1", "t2"], None, [["a"], ["a", "z"]], "dev.jsonl")
    assert check_eval_labels(multi, ["a", "b"], "multi_label", "drop").texts == ["t1"]


def test_stratified_split_is_proportional_seeded_and_keeps_every_class_in_training():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 9 + ["d"]
    picked = stratified_sample(labels, 0.1, seed=42)
    assert len(picked) == 10
    counts = Counter(labels[i] for i in picked)
    assert counts["a"] == 6 and counts["b"] == 3 and counts["d"] == 0  # d's only example stays in training
    assert counts["c"] == 1  # the remaining slot goes to the largest remainder (c: 0.9)
    assert picked == stratified_sample(labels, 0.1, seed=42)  # reproducible
    assert picked != stratified_sample(labels, 0.1, seed=7)
    train, held = stratified_split(Labeled([str(i) for i in range(100)], None, labels, "d"), "single_label", 0.1, 42)
    assert len(train.texts) == 90 and len(held.texts) == 10 and set(train.labels) == {"a", "b", "c", "d"}
    assert not set(train.texts) & set(held.texts)


def test_columns_auto_detected_from_csv_and_jsonl(tmp_path, capsys):
    cfg = config.build("finetune")
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("id,sentence,label\n1,good film,pos\n2,bad film,neg\n", encoding="utf-8")
    got = load_labeled([str(csv_file)], cfg.data, None)
    assert (got.texts, got.pairs, got.labels) == (["good film", "bad film"], None, ["pos", "neg"])
    assert "text 'sentence'" in capsys.readouterr().err
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sentence1": f"a{i}", "sentence2": f"b{i}", "labels": ["x", "y"][:i + 1]})
                             + "\n" for i in range(2)), encoding="utf-8")
    got = load_labeled([str(pairs)], cfg.data, None)
    assert got.pairs == ["b0", "b1"] and got.labels == [["x"], ["x", "y"]]


def test_bad_columns_and_missing_values_are_reported(tmp_path):
    cfg = config.build("finetune", sets=["data.label_column=lable"])
    data_file = tmp_path / "train.csv"
    data_file.write_text("text,label\nhello,a\n,b\nworld,\n", encoding="utf-8")
    with pytest.raises(DataError, match="Column 'lable' not found.*Did you mean 'label'"):
        load_labeled([str(data_file)], cfg.data, None)
    with pytest.raises(DataError) as error:
        load_labeled([str(data_file)], config.build("finetune").data, None)
    # both problems at once, with the first row of each
    assert "no text in 1 row(s) (first: row 2)" in str(error.value)
    assert "no label in 1 row(s) (first: row 3)" in str(error.value)


def test_datasets_class_labels_become_their_names(tmp_path):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    table = datasets.Dataset.from_dict({"sentence": ["meh", "great", "awful"], "label": [0, 1, 0]}, features=features)
    table.to_parquet(str(tmp_path / "sst.parquet"))
    got = load_labeled([str(tmp_path / "sst.parquet")], config.build("finetune").data, None)
    assert got.labels == ["negative", "positive", "negative"]


def test_best_model_selection_arguments_are_valid_training_arguments(tmp_path):
    from llmkit import training
    from llmkit.supervised import check_settings, selection_arguments

    cfg = config.build("finetune", "glue-sst2")  # evaluates every 500 steps; saves per epoch by default
    extra = selection_arguments(cfg, "accuracy")
    assert extra == {"metric_for_best_model": "accuracy", "greater_is_better": True, "save_strategy": "steps",
                     "save_steps": 500}
    args = training.training_arguments(cfg, tmp_path, "fp32", **extra)  # HF accepts the combination
    assert args.load_best_model_at_end and args.save_steps == args.eval_steps == 500
    # a classifier uses every parameter each step: DDP must not search for unused ones (an extra pass per step)
    assert args.ddp_find_unused_parameters is False
    assert selection_arguments(config.build("finetune"), "mse")["greater_is_better"] is False
    with pytest.raises(ConfigError, match="use --set finetune.metric"):
        check_settings(config.build("finetune", sets=["training.metric_for_best_model=accuracy"]))
    with pytest.raises(ConfigError, match="load_best_model_at_end"):
        check_settings(config.build("finetune", sets=["finetune.early_stopping_patience=2",
                                                      "training.load_best_model_at_end=false"]))


def test_held_out_split_and_max_eval_samples(tmp_path):
    from llmkit.data.labeled import labeled_data

    rows = "".join(f"text {i},{'ab'[i % 4 == 0]}\n" for i in range(40))  # 10 'b', 30 'a'
    (tmp_path / "train.csv").write_text("text,label\n" + rows, encoding="utf-8")
    cfg = config.build("finetune", flags={"data.train": [str(tmp_path / "train.csv")]},
                       sets=["data.eval_fraction=0.5", "data.max_eval_samples=8"])
    train, held, problem, names = labeled_data(cfg)
    assert (problem, names, len(train.texts)) == ("single_label", ["a", "b"], 20)
    assert Counter(held.labels) == {"a": 6, "b": 2}  # 8 of the 20 held out, in the classes' 3:1 proportion


def test_an_eval_split_of_a_local_file_is_refused(tmp_path):
    """A local file has one split: --set data.eval_split would have evaluated on the training data."""
    from llmkit import finetune

    data = tmp_path / "train.csv"
    data.write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    cfg = config.build("finetune", sets=[f"model.name={tmp_path}", f"data.train=[{str(data)!r}]",
                                         "data.eval_split=validation"])
    with pytest.raises(ConfigError, match="pass the evaluation file with --eval-data"):
        finetune.check_settings(cfg)

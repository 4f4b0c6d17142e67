"""Token classification: every data form, tag schemes and bad input, word-piece alignment and windows, entity
metrics against hand-computed spans, entities against transformers' own pipeline (CJK included), and one real
`llmkit finetune --task token-classification` run whose model is predicted, served and loaded by the pipeline."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.conftest import WORDS, last_json, make_tiny_mlm, run_cli, toy_corpus

PER, LOC = WORDS[:4], WORDS[4:8]
CHINESE = ["北京是中国的首都", "王小明住在上海", "李华去了广州和深圳", "今天天气很好"]
CJK_PLACES = set("北京上海广州深圳中国")


def sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Greek-letter sentences: PER words and LOC words are entities; adjacent ones of a type form one entity."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randrange(4, 12)):
            w = rng.choice(WORDS)
            kind = "PER" if w in PER else "LOC" if w in LOC else None
            previous = tags[-1] if tags else "O"
            tags.append("O" if kind is None else ("I-" if previous.endswith(kind) else "B-") + kind)
            words.append(w)
        out.append((words, tags))
    return out


def chinese_sentences() -> list[tuple[list[str], list[str]]]:
    """One character per word; place-name characters tagged LOC."""
    out = []
    for line in CHINESE:
        chars, tags = list(line), []
        for c in chars:
            previous = tags[-1] if tags else "O"
            tags.append(("I-LOC" if previous != "O" else "B-LOC") if c in CJK_PLACES else "O")
        out.append((chars, tags))
    return out


def write_conll(path, rows, header: bool = True):
    body = "\n\n".join("\n".join(f"{w} NN I-NP {t}" for w, t in zip(*r)) for r in rows)
    path.write_text(("-DOCSTART- -X- -X- O\n\n" if header else "") + body + "\n", encoding="utf-8")
    return path


def data_config(**settings):
    from llmkit import config

    return config.build("finetune", flags={"model.name": "m", **{f"data.{k}": v for k, v in settings.items()}})


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """A tiny WordPiece tokenizer (and MLM) that knows the Greek words and the Chinese characters."""
    return make_tiny_mlm(tmp_path_factory.mktemp("tag-mlm"), toy_corpus(300) + CHINESE * 20, vocab_size=240)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_folder)


# ---------------------------------------------------------------- data forms


def test_conll_columns_docstart_and_blank_lines(tmp_path):
    from llmkit.data import tagged

    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nPeter\tNNP\tB-PER\nBlackburn\tNNP\tI-PER\n",
                    encoding="utf-8")
    out = tagged.read_conll(path, "a.conll")
    assert out.words == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert out.tags == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert out.where == ["a.conll:3", "a.conll:7"]


@pytest.mark.parametrize("text, phrase", [
    ("EU B-ORG\nrejects\n", "a.conll:2: expected a word and its tag"),
    ("-DOCSTART- -X- O\n\n\n", "has no tagged sentences"),
])
def test_conll_errors_name_the_file_and_line(tmp_path, text, phrase):
    from llmkit.data import tagged
    from llmkit.errors import DataError

    path = tmp_path / "a.conll"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=phrase):
        tagged.read_conll(path, "a.conll")


def test_tables_jsonl_and_parquet_with_classlabel_names(tmp_path):
    import datasets

    from llmkit.data import tagged

    rows = sentences(6, 0)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"tokens": w, "ner_tags": t}) + "\n" for w, t in rows), encoding="utf-8")
    train, _, names, scheme = tagged.tagged_data(data_config(train=[str(jsonl)], eval=[str(jsonl)]))
    assert train.words == [w for w, _ in rows] and train.tags == [t for _, t in rows] and scheme == "BIO"
    assert names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"][:len(names)] or names[0] == "O"

    order = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]  # a ClassLabel's order is kept: ids mean the same
    features = datasets.Features({"words": datasets.List(datasets.Value("string")),
                                  "labels": datasets.List(datasets.ClassLabel(names=order))})
    table = datasets.Dataset.from_dict({"words": [w for w, _ in rows], "labels": [[order.index(x) for x in t]
                                                                                 for _, t in rows]}, features)
    table.to_parquet(tmp_path / "t.parquet")
    cfg = data_config(train=[str(tmp_path / "t.parquet")], eval=[str(tmp_path / "t.parquet")])
    assert tagged.is_token_task(cfg)
    train, _, names, _ = tagged.tagged_data(cfg)
    assert names == order and train.tags == [t for _, t in rows]

    from llmkit.errors import DataError

    other = write_conll(tmp_path / "more.conll", [(["x", "y"], ["B-ORG", "O"])])  # a tag the ClassLabel lacks
    with pytest.raises(DataError, match="B-ORG are not among the ClassLabel names"):
        tagged.tagged_data(data_config(train=[str(tmp_path / "t.parquet"), str(other)], eval=[str(jsonl)]))


def test_the_task_is_detected_from_files_and_columns(tmp_path):
    from llmkit.data import tagged

    conll = write_conll(tmp_path / "a.iob", sentences(2, 0))
    text = tmp_path / "a.jsonl"
    text.write_text(json.dumps({"text": "a b", "label": "x"}) + "\n", encoding="utf-8")
    assert tagged.is_token_task(data_config(train=[str(conll)]))
    assert not tagged.is_token_task(data_config(train=[str(text)]))
    forced = data_config(train=[str(text)])
    forced.finetune.task = "token-classification"
    assert tagged.is_token_task(forced)


@pytest.mark.parametrize("rows, phrase", [
    ([{"tokens": ["a", "b"], "tags": ["O"]}], r"row 1: 2 words but 1 tags"),
    ([{"tokens": ["a"], "tags": ["B-X"]}, {"tokens": [], "tags": []}], r"row 2: the sentence is empty"),
    ([{"tokens": ["a"], "tags": [3]}], r"ids need ClassLabel names"),
])
def test_bad_rows_are_named(tmp_path, rows, phrase):
    from llmkit.data import tagged
    from llmkit.errors import DataError

    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=phrase):
        tagged.tagged_data(data_config(train=[str(path)]))


@pytest.mark.parametrize("names, expected", [
    (["O", "B-PER", "I-PER"], "BIO"),
    (["O", "B-PER", "I-PER", "E-PER", "S-LOC"], "BIOES"),
    (["O", "B-PER", "PER"], "mix schemes"),
    (["O", "PER", "LOC"], "Unknown tag scheme"),
    (["O", "X-PER"], "Unknown tag scheme"),
    (["O"], "no entities to learn"),
])
def test_tag_schemes(names, expected):
    from llmkit.data import tagged
    from llmkit.errors import DataError

    if expected in ("BIO", "BIOES"):
        assert tagged.tag_scheme(names, "d") == expected
    else:
        with pytest.raises(DataError, match=expected):
            tagged.tag_scheme(names, "d")


def test_a_tag_only_in_eval_data_is_refused_or_dropped(tmp_path):
    from llmkit.data import tagged
    from llmkit.errors import DataError

    train = write_conll(tmp_path / "train.conll", [(["a", "b"], ["B-PER", "O"])])
    dev = write_conll(tmp_path / "dev.conll", [(["a"], ["B-PER"]), (["c"], ["B-ORG"])], header=False)
    cfg = data_config(train=[str(train)], eval=[str(dev)])
    with pytest.raises(DataError, match=r"'B-ORG' \(1x\), first at .*dev.conll:3"):
        tagged.tagged_data(cfg)
    cfg.finetune.unseen_eval_labels = "drop"
    assert tagged.tagged_data(cfg)[1].words == [["a"]]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tokenizer_folder):
    bad = tmp_path / "bad.conll"
    bad.write_text("EU B-ORG\n\nrejects VBZ O\nGerman\n", encoding="utf-8")
    result = run_cli("finetune", "--data", bad, "--model", tokenizer_folder, "-o", tmp_path / "run")
    assert result.returncode == 2 and "bad.conll:4: expected a word and its tag" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- alignment and windows


def test_first_pieces_are_labelled_and_all_pieces_on_request(tokenizer):
    from llmkit.data import tagged

    names = ["O", "B-PER", "I-PER"]
    words, tags = [["alphabeta", "mu", "zzzq"]], [["B-PER", "O", "O"]]
    pieces = tokenizer(words[0], is_split_into_words=True)
    assert len(pieces["input_ids"]) > 5  # the words split into several pieces
    first = tagged.windows(tokenizer, words, tags, names, 64, 0)
    word_ids = pieces.word_ids()
    expected = [-100 if w is None or (j and word_ids[j - 1] == w) else names.index(tags[0][w])
                for j, w in enumerate(word_ids)]
    assert first.features[0]["labels"] == expected
    assert first.firsts[0] == [(j, w) for j, w in enumerate(word_ids) if expected[j] != -100]
    every = tagged.windows(tokenizer, words, tags, names, 64, 0, label_all_pieces=True).features[0]["labels"]
    assert every == [-100 if w is None else 0 if w else (1 if word_ids.index(0) == j else 2)
                     for j, w in enumerate(word_ids)]  # B- continued as I- on later pieces


def test_long_sentences_become_overlapping_windows_and_every_word_is_read_once(tokenizer):
    from llmkit.data import tagged

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rows = sentences(3, 5) + [(w * 6, t * 6) for w, t in sentences(2, 6)]  # two sentences of 24-70 words
    words = [[w if i % 2 else w + w[::-1] for i, w in enumerate(ws)] for ws, _ in rows]  # multi-piece words
    tags = [t for _, t in rows]
    win = tagged.windows(tokenizer, words, tags, names, 16, 4)
    assert len(win.features) > len(rows) and max(len(f["input_ids"]) for f in win.features) <= 16
    assert sorted(set(win.sentence)) == list(range(len(rows)))
    # a model that is right everywhere: one-hot logits of the gold label at each labelled piece
    logits = []
    for f in win.features:
        row = np.zeros((len(f["input_ids"]), len(names)), dtype=np.float32)
        for j, label in enumerate(f["labels"]):
            if label >= 0:
                row[j, label] = 10.0
        logits.append(row)
    predicted = [tagged.predicted_tags(p, names)[0] for p in tagged.word_predictions(win, logits)]
    assert predicted == tags  # every word found, in order, across the windows
    starts = [sum(1 for j, _ in f) for f in win.firsts]
    assert sum(starts) > sum(len(w) for w in words)  # words in the overlaps are seen twice, read once
    cut = [k for k, f in enumerate(win.features) if k and win.sentence[k - 1] == win.sentence[k]
           and (not win.firsts[k] or win.firsts[k][0][0] > 1)]
    assert cut  # some window starts inside a word: its first piece there is not taken for the word's start


# ---------------------------------------------------------------- metrics


def test_entity_metrics_against_hand_computed_spans():
    from llmkit import entities, metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-PER"], ["O", "B-LOC", "O", "O"]]
    # gold spans: PER(0-1), LOC(3), LOC(1-2); predicted: PER(0-1) right, PER(3) wrong type, LOC(1) wrong end
    out = metrics.entities(gold, pred, report=True)
    assert out["entity_precision"] == pytest.approx(1 / 3) and out["entity_recall"] == pytest.approx(1 / 3)
    assert out["entity_f1"] == pytest.approx(1 / 3) and out["token_accuracy"] == pytest.approx(6 / 8)
    assert out["per_type"]["PER"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert out["per_type"]["LOC"]["support"] == 2 and out["per_type"]["LOC"]["f1"] == 0.0
    bioes = metrics.entities([["S-PER", "B-LOC", "E-LOC", "S-LOC"]], [["S-PER", "B-LOC", "E-LOC", "O"]])
    assert bioes["entity_recall"] == pytest.approx(2 / 3) and bioes["entity_precision"] == 1.0
    assert entities.spans(["Ada", "Lovelace", "in", "London"], ["B-PER", "I-PER", "O", "B-LOC"], [0.9, 0.7, 1, 1]) \
        == [{"entity_group": "PER", "word": "Ada Lovelace", "word_start": 0, "word_end": 2, "start": 0, "end": 12,
             "score": 0.8},
            {"entity_group": "LOC", "word": "London", "word_start": 3, "word_end": 4, "start": 16, "end": 22,
             "score": 1.0}]


# ---------------------------------------------------------------- entities as the pipeline gives them


@pytest.fixture(scope="module")
def random_tagger(tokenizer_folder, tmp_path_factory):
    """A token classifier with random weights (its tags vary from piece to piece: every grouping case occurs), a
    24-token window."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("random-tagger")
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    tokenizer.model_max_length = 24
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, id2label=dict(enumerate(names)),
                        label2id={n: i for i, n in enumerate(names)})
    BertForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_entities_match_the_pipeline_on_latin_cjk_unknown_and_long_texts(random_tagger):
    from transformers import pipeline

    from llmkit import entities, inference

    texts = ["alpha beta gamma, delta!", "Zeta ETA theta iota kappa", "北京是中国的首都", "王小明 ☃ 住在上海 ✈",
             " ".join(WORDS)]  # the last is longer than the window: read in overlapping windows
    loaded = inference.load(random_tagger, "token-classification", "cpu", "fp32", runtime="torch")
    theirs = pipeline("token-classification", model=str(random_tagger), aggregation_strategy="simple", device="cpu")
    for stride in (None, 6):
        ours = entities.find(loaded, texts, stride=stride or entities.default_stride(loaded.window))
        for text, found in zip(texts, ours):
            expected = theirs(text, stride=stride or entities.default_stride(loaded.window))
            assert [{k: e[k] for k in ("entity_group", "word", "start", "end")} for e in found] == \
                [{k: e[k] for k in ("entity_group", "word", "start", "end")} for e in expected], text
            assert [e["score"] for e in found] == pytest.approx([float(e["score"]) for e in expected], abs=1e-5)
    assert sum(len(found) for found in ours) > 5


def test_bioes_entities_end_at_e_and_s_pieces(tokenizer_folder):
    """B-/I-/E- join into one entity and S- is one on its own (the pipeline would split before each E-/S-);
    a BIO tag set groups as the pipeline does."""
    import numpy as np
    from transformers import AutoTokenizer

    from llmkit import entities

    names = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "S-LOC"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    words = ["alpha", "beta", "gamma", "delta", "eta", "zeta", "theta", "iota"]
    tags = ["B-PER", "I-PER", "E-PER", "S-PER", "S-PER", "O", "E-PER", "S-LOC"]
    pieces, start = [], 0
    for word, tag in zip(words, tags):
        scores = np.full(len(names), 0.02, dtype=np.float32)
        scores[names.index(tag)] = 0.9
        pieces.append({"word": word, "scores": scores, "start": start, "end": start + len(word)})
        start += len(word) + 1
    found = [e for e in entities.group_entities(pieces, dict(enumerate(names)), tokenizer) if e["entity_group"] != "O"]
    assert [(e["entity_group"], e["word"]) for e in found] == [
        ("PER", "alpha beta gamma"), ("PER", "delta"), ("PER", "eta"), ("PER", "theta"), ("LOC", "iota")]
    assert found[0]["start"] == 0 and found[0]["end"] == len("alpha beta gamma")


def test_a_stride_without_room_in_the_window_is_refused(random_tagger):
    from llmkit import entities, inference
    from llmkit.errors import ConfigError

    loaded = inference.load(random_tagger, "token-classification", "cpu", "fp32", runtime="torch")
    assert entities.find(loaded, [" ".join(WORDS)], stride=21)  # 24 - [CLS] - [SEP] - 1
    with pytest.raises(ConfigError, match="stride 22 leaves no room in the model's window of 24 pieces; give a "
                                          "stride of at most 21"):
        entities.find(loaded, ["alpha beta"], stride=22)


# ---------------------------------------------------------------- one real run


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, tokenizer_folder):
    """`llmkit finetune` on CoNLL files of Greek-letter and Chinese per-character sentences (auto-detected task)."""
    folder = tmp_path_factory.mktemp("ner")
    long = [(w * 3, t * 3) for w, t in sentences(4, 3)]  # over 16 pieces: windows
    train = write_conll(folder / "train.conll", sentences(64, 1) + long + chinese_sentences() * 3)
    dev = write_conll(folder / "dev.conll", sentences(16, 2) + chinese_sentences())
    out = folder / "run"
    result = run_cli("finetune", "--data", train, "--eval-data", dev, "--model", tokenizer_folder, "-o", out,
                     "--epochs", "4", "--max-seq-length", "16", "--set", "training.learning_rate=3e-3",
                     "--set", "training.per_device_train_batch_size=8", "--set", "training.logging_steps=20")
    assert result.returncode == 0, result.stderr
    return out, result


def test_finetune_learns_entities_and_writes_predictions(ner_run):
    out, result = ner_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["entity_f1"] >= 0.4 and metrics["token_accuracy"] >= 0.8, metrics  # 44 steps: learning, not done
    assert metrics["best_metric"]["metric"] == "eval_entity_f1" and set(metrics["per_type"]) == {"PER", "LOC"}
    assert metrics["train_windows"] > metrics["train_examples"]  # long sentences were windowed, not truncated
    assert last_json(result.stdout)["entity_f1"] == metrics["entity_f1"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"] and config["id2label"]["0"] == "O"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 20 and {"words", "gold", "predicted", "entities", "gold_entities"} <= set(rows[0])
    chinese = rows[-4]  # per-character words: one prediction per character
    assert chinese["words"] == list(CHINESE[0]) and len(chinese["predicted"]) == len(CHINESE[0])
    for e in rows[0]["gold_entities"]:
        assert rows[0]["text"][e["start"]:e["end"]] == " ".join(rows[0]["words"][e["word_start"]:e["word_end"]])
    card = (out / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and "aggregation_strategy" in card


def test_predict_gives_the_pipeline_entities_and_serve_answers_the_inference_api(ner_run, monkeypatch, capsys,
                                                                                   tmp_path):
    from huggingface_hub import InferenceClient, constants
    from transformers import pipeline

    from llmkit import predict
    from tests.test_serve import post, start_server

    out, _ = ner_run
    proc, port, _ = start_server(out)
    try:
        texts = ["gamma gamma mu zeta kappa alpha", "北京是中国的首都", "tau"]
        predict.main(str(out), texts, as_json=True, runtime="torch", device="cpu", precision="fp32")
        printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        tagger = pipeline("token-classification", model=str(out), aggregation_strategy="simple", device="cpu")
        for text, record in zip(texts, printed):
            expected = tagger(text)
            assert record["text"] == text
            assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in record["entities"]] == \
                [(e["entity_group"], e["word"], e["start"], e["end"]) for e in expected]
            assert [e["score"] for e in record["entities"]] == \
                pytest.approx([float(e["score"]) for e in expected], abs=1e-4)

        predict.main(str(out), texts, output=str(tmp_path / "e.jsonl"), runtime="torch", device="cpu",
                     precision="fp32")
        assert [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()] == printed
        predict.main(str(out), texts, output=str(tmp_path / "e.csv"), runtime="torch", device="cpu")
        table = (tmp_path / "e.csv").read_text(encoding="utf-8").splitlines()
        assert table[0] == "text,entity_group,score,word,start,end"
        assert len(table) == 1 + sum(len(r["entities"]) for r in printed)

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # a local URL
        client = InferenceClient(base_url=f"http://127.0.0.1:{port}/models/{out.name}")
        served = client.token_classification(texts[0])
        assert [(e.entity_group, e.word, e.start, e.end) for e in served] == \
            [(e["entity_group"], e["word"], e["start"], e["end"]) for e in printed[0]["entities"]]
        status, body = post(f"http://127.0.0.1:{port}/models/{out.name}", {"inputs": texts[:2]})
        assert status == 200 and [[e["word"] for e in found] for found in body] == \
            [[e["word"] for e in r["entities"]] for r in printed[:2]]
        status, body = post(f"http://127.0.0.1:{port}/", {"inputs": "x", "parameters": {"aggregation_strategy":
                                                                                        "max"}})
        assert status == 400 and "simple" in body["error"]
    finally:
        proc.kill()

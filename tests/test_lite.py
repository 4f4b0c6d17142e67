"""`llmkit.lite` (BERT and ModernBERT masked-LMs without importing transformers) against transformers itself: the
same logits, tokenizer and predictions for each family option it takes; everything else goes to transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import toy_corpus
from llmkit import fillmask as fm
from llmkit import inference, lite

TEXTS = ["alpha beta [MASK] delta", "[MASK] " + " ".join(toy_corpus(3)) * 2, "中文 [MASK] 测试 é ü", "x [MASK]"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(do_lower_case=True).train_new_from_iterator(toy_corpus() + ["中文 测试 é ü"], vocab_size=240,
                                                                     show_progress=False)


def save(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bert(folder, tokenizer, head="BertForMaskedLM", **options):
    """A tiny random BERT with transformers' `head` class (2 x 32), saved with the tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(**{**dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64,
                                                max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id),
                                         **options})
    return save(folder, getattr(transformers, head)(config), tokenizer)


def modernbert(folder, tokenizer, head="ModernBertForMaskedLM", **options):
    """A tiny random ModernBERT with transformers' `head` class (4 x 32), norms and biases moved away from their
    1/0 initialisation so that a wrongly placed one shows; saved with the tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.ModernBertConfig(**{**dict(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id), **options})
    model = getattr(transformers, head)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return save(folder, model, tokenizer)


VARIANTS = {
    "bert": (bert, {}),
    "bert-relu": (bert, {"hidden_act": "relu"}),
    "bert-gelu_new": (bert, {"hidden_act": "gelu_new"}),
    # local layers see 4 tokens each side: the test texts are longer, so the window matters
    "modernbert-local": (modernbert, {"local_attention": 8}),
    "modernbert-biases": (modernbert, {"local_attention": 8, "norm_bias": True, "attention_bias": True,
                                       "mlp_bias": True, "classifier_bias": True, "decoder_bias": False,
                                       "global_attn_every_n_layers": 2}),
    "modernbert-untied": (modernbert, {"tie_word_embeddings": False, "hidden_activation": "gelu_pytorch_tanh",
                                       "global_rope_theta": 80000.0, "local_rope_theta": 5000.0}),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory, tokenizer):
    build, options = VARIANTS[request.param]
    return build(tmp_path_factory.mktemp(request.param), tokenizer, **options)


def hf_logits_and_ours(folder, precision):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    theirs = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    ours = lite.load_model(folder, lite.read_config(folder))
    encoded = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True,
                                                   return_tensors="pt", return_token_type_ids=False)
    real = encoded["attention_mask"].bool()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        a = theirs(**encoded).logits.float()
        b = ours(**encoded).logits.float()
    return a[real], b[real]


def test_same_logits_as_transformers_in_fp32(checkpoint):
    assert lite.unsupported(checkpoint) is None
    a, b = hf_logits_and_ours(checkpoint, "fp32")
    assert (a - b).abs().max().item() < 1e-5


def test_same_logits_as_transformers_in_bf16_autocast(checkpoint):
    a, b = hf_logits_and_ours(checkpoint, "bf16")
    assert (a - b).abs().max().item() < 1e-2 * a.abs().max().item()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.95


def test_same_tokenizer_as_transformers(checkpoint):
    from transformers import AutoTokenizer

    theirs, ours = AutoTokenizer.from_pretrained(checkpoint), lite.Tokenizer(checkpoint)
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(theirs.backend_tokenizer.to_str())
    for key in ("mask_token", "mask_token_id", "pad_token_id", "unk_token", "cls_token_id", "sep_token_id",
                "clean_up_tokenization_spaces", "model_input_names", "model_max_length"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    assert len(ours) == len(theirs) and ours.get_vocab() == theirs.get_vocab()
    pieces = theirs.convert_ids_to_tokens(list(range(len(theirs))))
    assert ours.convert_ids_to_tokens(list(range(len(ours)))) == pieces
    assert ours.convert_tokens_to_string(pieces[5:40]) == theirs.convert_tokens_to_string(pieces[5:40])
    text = "hello , world . it 's a test ! "
    assert ours.clean_up_tokenization(text) == theirs.clean_up_tokenization(text)
    texts, pairs = ["alpha beta [MASK] 中文", " ".join(toy_corpus(20))], ["gamma", "delta é"]
    for kwargs in ({}, {"truncation": True, "max_length": 24}):
        assert ours(texts, pairs, **kwargs) == {k: v for k, v in theirs(texts, pairs, **kwargs).items()}
        assert ours(texts[0], **kwargs) == {k: v for k, v in theirs(texts[0], **kwargs).items()}
    ids = theirs(texts)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
        assert ours.decode(ids[0], skip_special_tokens=skip) == theirs.decode(ids[0], skip_special_tokens=skip)


def test_same_predictions_as_the_transformers_path(checkpoint):
    """The whole fill-mask result (candidates, scores, sequences, joint filling) through lite and transformers."""
    from transformers import AutoConfig

    texts = TEXTS + ["[MASK] beta [MASK] delta [MASK]"]
    ours = fm.load(checkpoint, device="cpu", precision="fp32")
    assert ours.runtime == "llmkit.lite"
    tokenizer = inference.load_tokenizer(str(checkpoint), "fill-mask")
    theirs = fm.load(checkpoint, device="cpu", precision="fp32", tokenizer=tokenizer,
                     config=AutoConfig.from_pretrained(checkpoint))
    assert theirs.runtime == "transformers"
    a, b = fm.fill_mask(ours, texts, top_k=4, batch_size=2), fm.fill_mask(theirs, texts, top_k=4, batch_size=2)
    for x, y in zip(a, b):
        for mx, my in zip(x["masks"], y["masks"]):
            assert [c["token_id"] for c in mx["candidates"]] == [c["token_id"] for c in my["candidates"]]
            assert [c["sequence"] for c in mx["candidates"]] == [c["sequence"] for c in my["candidates"]]
            assert max(abs(c["score"] - d["score"]) for c, d in zip(mx["candidates"], my["candidates"])) < 1e-5
        assert x["best"]["token_ids"] == y["best"]["token_ids"]


def test_what_lite_does_not_take_goes_to_transformers(tmp_path, tokenizer):
    import torch
    from transformers import BertConfig, BertForPreTraining

    relative = bert(tmp_path / "relative", tokenizer, position_embedding_type="relative_key")
    assert "position_embedding_type" in lite.unsupported(relative)
    assert fm.load(relative, device="cpu", precision="fp32").runtime == "transformers"

    pickled = bert(tmp_path / "pickled", tokenizer)  # weights in pytorch_model.bin, as older checkpoints have them
    from safetensors.torch import load_file
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    assert lite.unsupported(pickled) == "no single model.safetensors"
    assert fm.load(pickled, device="cpu", precision="fp32").runtime == "transformers"

    torch.manual_seed(0)
    pretraining = BertForPreTraining(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=64))
    assert "BertForPreTraining" in lite.unsupported(save(tmp_path / "pretraining", pretraining, tokenizer))

    folder = bert(tmp_path / "old-tokenizer", tokenizer)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["backend"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert "tokenizer" in lite.unsupported(folder)

    folder = bert(tmp_path / "extra-weight", tokenizer)
    from safetensors.torch import save_file
    weights = load_file(folder / "model.safetensors")
    weights["bert.encoder.layer.0.attention.self.distance_embedding.weight"] = torch.zeros(3, 32)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert "unexpected bert.encoder.layer.0.attention.self.distance_embedding.weight" in lite.unsupported(folder)

    assert lite.unsupported("some-org/some-model") == "not a local model folder"


def test_fill_mask_cli_does_not_import_transformers(tiny_mlm):
    """A cold `llmkit fill-mask` on a BERT checkpoint imports neither transformers nor torch's compiler."""
    script = (f"import sys; from llmkit import fillmask; "
              f"fillmask.main({str(tiny_mlm)!r}, ['alpha [MASK] gamma'], as_json=True); "
              f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'transformers', 'scipy', 'sklearn'}}), "
              f"'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, last = done.stdout.strip().splitlines()
    assert json.loads(first)["masks"][0]["candidates"]
    assert last == "[] False"
    assert "(llmkit.lite)" in done.stderr


# ---------------------------------------------------------------- sequence classification (llmkit predict)

LABELS = {"id2label": {0: "neg", 1: "pos", 2: "mixed"}, "label2id": {"neg": 0, "pos": 1, "mixed": 2}}


def bert_classifier(folder, tokenizer, **options):
    return bert(folder, tokenizer, "BertForSequenceClassification", max_position_embeddings=48, **LABELS, **options)


def modernbert_classifier(folder, tokenizer, **options):
    return modernbert(folder, tokenizer, "ModernBertForSequenceClassification", num_hidden_layers=3,
                      max_position_embeddings=48, local_attention=8, **LABELS, **options)


CLASSIFIERS = {
    "bert": (bert_classifier, {}),
    "bert-multi-label": (bert_classifier, {"problem_type": "multi_label_classification"}),
    "modernbert-cls": (modernbert_classifier, {}),
    "modernbert-mean": (modernbert_classifier, {"classifier_pooling": "mean", "norm_bias": True}),
}


@pytest.fixture(scope="module", params=list(CLASSIFIERS))
def classifier(request, tmp_path_factory, tokenizer):
    build, options = CLASSIFIERS[request.param]
    return build(tmp_path_factory.mktemp(request.param), tokenizer, **options)


def test_classifier_same_outputs_as_the_transformers_path(classifier):
    """Texts, pairs and texts longer than the 48-token window (truncated as transformers truncates them)."""
    from transformers import AutoConfig

    texts = [t.replace("[MASK]", "gamma") for t in TEXTS] + [" ".join(toy_corpus(30))]
    pairs = ["beta", "alpha gamma", "中文", " ".join(toy_corpus(20)), "x"]
    ours = inference.load(classifier, "text-classification", "cpu", "fp32")
    assert ours.runtime == "llmkit.lite" and ours.label_names == ["neg", "pos", "mixed"]
    theirs = inference.load(classifier, "text-classification", "cpu", "fp32",
                            tokenizer=inference.load_tokenizer(str(classifier), "text-classification"),
                            config=AutoConfig.from_pretrained(classifier))
    assert theirs.runtime == "transformers" and ours.problem_type == theirs.problem_type
    for second in (None, pairs):
        a = inference.classify(ours, texts, second, batch_size=2)
        b = inference.classify(theirs, texts, second, batch_size=2)
        assert abs(a - b).max() < 1e-5
        assert len({tuple(row) for row in a}) == len(texts)  # the inputs matter


def test_classifier_tokenization_equals_the_tokenizer_call(classifier):
    """`inference.tokenize` (the Rust pipeline directly) gives what `tokenizer(texts, pairs, truncation=True)` gives."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(classifier)
    long = " ".join(toy_corpus(30))
    texts, pairs = ["alpha beta", long, long, "中文 é"], ["gamma", "delta", long, long]
    for tokenizer in (hf, lite.Tokenizer(classifier)):
        ids, types = inference.tokenize(tokenizer, texts, pairs, 48)
        expected = hf(texts, pairs, truncation=True, max_length=48)
        assert ids == expected["input_ids"] and max(map(len, ids)) == 48
        assert types == (expected["token_type_ids"] if "token_type_ids" in hf.model_input_names else None)


def test_predict_cli_does_not_import_transformers(classifier):
    script = (f"import sys; from llmkit import predict; "
              f"predict.main({str(classifier)!r}, ['alpha beta gamma'], as_json=True); "
              f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'transformers', 'scipy', 'sklearn'}}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, last = done.stdout.strip().splitlines()
    record = json.loads(first)
    assert set(record["scores"]) == {"neg", "pos", "mixed"}
    assert last == "[]"


def assert_cast_weights_give_the_autocast_results(folder, task):
    """`cast_for_autocast` does once what autocast does per forward pass: the outputs are bit-identical."""
    import torch

    cast = inference.load(folder, task, "cpu", "bf16")
    plain = lite.load_model(folder, lite.read_config(folder))
    assert {p.dtype for n, p in cast.model.named_parameters() if n.endswith(("Wqkv.weight", "query.weight"))} == \
        {torch.bfloat16}
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cast.model(input_ids=ids, attention_mask=mask).logits,
                           plain(input_ids=ids, attention_mask=mask).logits)


def test_masked_lm_weights_in_bf16_give_exactly_the_autocast_results(checkpoint):
    assert_cast_weights_give_the_autocast_results(checkpoint, "fill-mask")


def test_classifier_weights_in_bf16_give_exactly_the_autocast_results(classifier):
    assert_cast_weights_give_the_autocast_results(classifier, "text-classification")

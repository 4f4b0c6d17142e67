"""The two runtimes: transformers' own model (torch) and ONNX Runtime on `llmkit export`'s verified export.

The export's logits match transformers' (fill-mask and classifier, BERT and ModernBERT past its sliding window),
fill-mask and predict give the same answers on both, the ONNX path imports neither torch nor transformers, `auto`
uses only a fresh export (the weights' hash), and every misuse is one line with exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import OFFLINE, run_cli, toy_corpus
from llmkit import fillmask, inference, ort
from tests.test_errors import assert_refused
from tests.test_predict import make_classifier

pytestmark = pytest.mark.slow

TEXTS = ["alpha beta [MASK] delta", "[MASK] " + " ".join(toy_corpus(3)) * 2, "中文 [MASK] 测试 é ü",
         "gamma [MASK] epsilon [MASK] eta", "x [MASK]"]


def exported(folder) -> dict:
    result = run_cli("export", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mlm(tiny_mlm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime") / "mlm"
    shutil.copytree(tiny_mlm, folder)
    exported(folder)
    return folder


@pytest.fixture(scope="module")
def classifier(tiny_mlm, tmp_path_factory):
    folder = make_classifier(tmp_path_factory.mktemp("runtime") / "clf", tiny_mlm)
    result = run_cli("export", folder, "--quantize", "int8")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_export_is_in_optimums_layout_and_records_its_check(mlm):
    files = sorted(p.name for p in (mlm / "onnx").iterdir())
    assert files == ["llmkit-export.json", "masked_positions.onnx", "model.onnx"]
    record = json.loads((mlm / "onnx" / "llmkit-export.json").read_text())
    assert record["max_abs_diff"] < 1e-5 and record["masked_positions"]["max_abs_diff"] < 1e-5
    assert record["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert record["source_sha256"] == ort.weights_hash(mlm) and record["architecture"] == "BertForMaskedLM"
    import onnxruntime

    session = onnxruntime.InferenceSession(str(mlm / "onnx" / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert all(isinstance(d, str) for i in session.get_inputs() for d in i.shape)  # batch and length are dynamic


def test_fill_mask_is_the_same_on_both_runtimes(mlm):
    torch_results = fillmask.fill_mask(mlm, TEXTS, top_k=5, precision="fp32", runtime="torch")
    onnx_filler = fillmask.load(mlm, runtime="onnx")
    assert onnx_filler.runtime == "onnx" and onnx_filler.precision == "fp32"
    onnx_results = fillmask.fill_mask(onnx_filler, TEXTS, top_k=5)
    for ours, theirs in zip(onnx_results, torch_results):
        for a, b in zip(ours["masks"], theirs["masks"]):
            assert [c["token_id"] for c in a["candidates"]] == [c["token_id"] for c in b["candidates"]]
            np.testing.assert_allclose([c["score"] for c in a["candidates"]], [c["score"] for c in b["candidates"]],
                                       atol=1e-5)
        assert ours["best"]["token_ids"] == theirs["best"]["token_ids"] and ours["truncated"] == theirs["truncated"]
    targeted = [fillmask.fill_mask(mlm, TEXTS[0], targets="alpha,beta,gamma", precision="fp32", runtime=r)[0]
                for r in ("torch", "onnx")]
    assert [c["token"] for c in targeted[0]["masks"][0]["candidates"]] == \
        [c["token"] for c in targeted[1]["masks"][0]["candidates"]]


def test_predict_is_the_same_on_both_runtimes(classifier):
    texts = TEXTS + ["plain text without masks", "中文"]
    on_torch = inference.load(classifier, "text-classification", "cpu", "fp32", runtime="torch")
    on_onnx = inference.load(classifier, "text-classification", runtime="onnx")
    assert on_onnx.label_names == on_torch.label_names == ["neg", "pos"] and on_onnx.problem_type == "single_label"
    np.testing.assert_allclose(inference.classify(on_onnx, texts, batch_size=3),
                               inference.classify(on_torch, texts, batch_size=3), atol=1e-5)
    pairs = ["alpha beta"] * len(texts)
    np.testing.assert_allclose(inference.classify(on_onnx, texts, pairs), inference.classify(on_torch, texts, pairs),
                               atol=1e-5)


def test_the_onnx_path_imports_neither_torch_nor_transformers(mlm, classifier):
    script = ("import sys; from llmkit import cli; sys.argv = ['llmkit', *{cmd}]\n"
              "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
              "print('LOADED', sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)")
    for command in (["fill-mask", str(mlm), "alpha [MASK] gamma"], ["predict", str(classifier), "alpha beta"]):
        result = subprocess.run([sys.executable, "-c", script.replace("{cmd}", repr(command))], text=True,
                                capture_output=True, env={**OFFLINE, "PATH": "/usr/bin:/bin"}, timeout=120)
        assert "(ONNX Runtime, " in result.stderr, result.stderr
        assert "LOADED []" in result.stderr and result.stdout.strip(), result.stderr


def test_auto_uses_only_a_fresh_export(mlm, tmp_path):
    stale = tmp_path / "stale"
    shutil.copytree(mlm, stale)
    assert inference.choose_runtime(stale, "auto", "cpu")[0] == "onnx"
    assert inference.choose_runtime(stale, "auto", "cpu", "bf16")[0] == "torch"
    from safetensors.numpy import load_file, save_file

    weights = load_file(stale / "model.safetensors")
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name] = weights[name] + 0.5
    save_file(weights, stale / "model.safetensors", metadata={"format": "pt"})
    chosen, why = inference.choose_runtime(stale, "auto", "cpu")
    assert chosen == "torch" and "made from other weights" in why
    result = run_cli("fill-mask", stale, "alpha [MASK]", "--device", "cpu")
    assert result.returncode == 0 and "(transformers)" in result.stderr and "made from other weights" in result.stderr
    assert_refused(run_cli("fill-mask", stale, "alpha [MASK]", "--runtime", "onnx"), "made from other weights",
                   "llmkit export")


def test_runtime_misuse_is_one_line(mlm, tiny_mlm):
    assert_refused(run_cli("fill-mask", mlm, "a [MASK]", "--runtime", "onnx", "--precision", "bf16"),
                   "--precision bf16 needs --runtime torch")
    assert_refused(run_cli("fill-mask", mlm, "a [MASK]", "--runtime", "onnx", "--device", "cuda"),
                   "--device cuda needs --runtime torch")
    assert_refused(run_cli("fill-mask", mlm, "a [MASK]", "--runtime", "onxx"), "--runtime must be one of",
                   "Did you mean 'onnx'")
    assert_refused(run_cli("fill-mask", tiny_mlm, "a [MASK]", "--runtime", "onnx"), "no ONNX export",
                   f"llmkit export {tiny_mlm}")
    assert_refused(run_cli("fill-mask", mlm, "a [MASK]", "--runtime", "onnx-int8"), "--quantize int8")
    assert_refused(run_cli("export", mlm.parent / "nothing-here"), "not a model folder")
    assert_refused(run_cli("export", mlm, "--quantize", "int4"), "--quantize takes int8")


def test_export_refuses_what_it_cannot_check(tmp_path, tiny_mlm):
    folder = tmp_path / "no-fast-tokenizer"
    shutil.copytree(tiny_mlm, folder)
    (folder / "tokenizer.json").unlink()
    assert_refused(run_cli("export", folder), "no tokenizer.json", out=folder / "onnx")


def test_int8_export_reports_its_agreement_and_runs(classifier):
    record = json.loads((classifier / "onnx" / "llmkit-export.json").read_text())
    assert record["int8"]["texts"] > 0 and record["int8"]["label_agreement"] >= 0.9
    sizes = {name: (classifier / "onnx" / name).stat().st_size for name in ("model_quantized.onnx", "model.onnx")}
    assert sizes["model_quantized.onnx"] < sizes["model.onnx"]
    result = run_cli("predict", classifier, "alpha beta", "gamma", "--runtime", "onnx-int8", "--json")
    assert result.returncode == 0, result.stderr
    assert "model_quantized.onnx" in result.stderr and "int8" in result.stderr
    assert [json.loads(line)["label"] in ("neg", "pos") for line in result.stdout.splitlines()] == [True, True]


def test_reexport_replaces_the_old_one(mlm, tmp_path):
    folder = tmp_path / "again"
    shutil.copytree(mlm, folder)
    before = (folder / "onnx" / "model.onnx").stat().st_ino
    exported(folder)
    assert (folder / "onnx" / "model.onnx").stat().st_ino != before
    assert not [p for p in folder.iterdir() if p.name.startswith(".onnx")]  # no staging left behind


def test_modernbert_export_matches_past_its_sliding_window(tmp_path, tiny_mlm):
    import torch
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm)
    torch.manual_seed(0)
    config = ModernBertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                              intermediate_size=48, max_position_embeddings=512, global_attn_every_n_layers=3,
                              local_attention=16, pad_token_id=tokenizer.pad_token_id,
                              cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                              bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    folder = tmp_path / "modernbert"
    ModernBertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    record = exported(folder)
    assert record["architecture"] == "ModernBertForMaskedLM" and record["max_abs_diff"] < 1e-5
    long_text = "[MASK] " + " ".join(toy_corpus(12)) + " [MASK]"  # far more tokens than the 16-token window
    a, b = (fillmask.fill_mask(folder, [long_text, TEXTS[0]], precision="fp32", runtime=r) for r in ("torch", "onnx"))
    assert [m["candidates"][0]["token_id"] for r in a for m in r["masks"]] == \
        [m["candidates"][0]["token_id"] for r in b for m in r["masks"]]


def test_optimum_loads_the_export(mlm, classifier):
    optimum = pytest.importorskip("optimum.onnxruntime", reason="optimum is not installed (optimum-onnx 0.1 "
                                  "requires transformers<4.58)")
    model = optimum.ORTModelForMaskedLM.from_pretrained(mlm, subfolder="onnx", file_name="model.onnx")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(mlm)
    logits = model(**tokenizer(["alpha beta [MASK] delta"], return_tensors="np")).logits
    theirs = fillmask.fill_mask(mlm, "alpha beta [MASK] delta", precision="fp32", runtime="torch")[0]
    assert int(np.asarray(logits)[0, 3].argmax()) == theirs["masks"][0]["candidates"][0]["token_id"]
    assert optimum.ORTModelForSequenceClassification.from_pretrained(classifier, subfolder="onnx",
                                                                      file_name="model.onnx") is not None


def test_serve_answers_from_onnx_runtime(mlm, classifier):
    from tests.test_serve import post, start_server

    proc, port, lines = start_server(mlm, classifier, "--runtime", "onnx")
    try:
        assert sum("(ONNX Runtime, " in line for line in lines) == 2, "".join(lines)
        status, body = post(f"http://127.0.0.1:{port}/models/{mlm.name}", {"inputs": TEXTS[0]})
        [expected] = fillmask.fill_mask(mlm, TEXTS[0], precision="fp32", runtime="torch")
        assert status == 200 and [c["token"] for c in body] == [c["token_id"] for c in expected["masks"][0]["candidates"]]
        status, body = post(f"http://127.0.0.1:{port}/models/{classifier.name}", {"inputs": ["alpha", "beta"]})
        assert status == 200 and len(body) == 2 and {r["label"] for r in body[0]} == {"neg", "pos"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)

"""Beyond BERT: every family llmkit builds from scratch goes pretrain -> fill-mask -> finetune -> predict through the real
CLI (tiny models), ModernBERT also in Chinese and on 2 processes; bad --arch / --size / --model combinations."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import last_json, run_cli, toy_corpus
from tests.test_errors import assert_refused

pytestmark = pytest.mark.slow

TINY = ["--size", "tiny", "--set", "model.vocab_size=200", "--max-seq-length", "32", "--max-steps", "6",
        "--set", "training.per_device_train_batch_size=16", "--set", "data.max_eval_samples=16",
        "--set", "training.eval_strategy=no"]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arch-labeled")
    rows = [(" ".join(toy_corpus(60)[i].split()[:6]), "ab"[i % 2]) for i in range(60)]
    (folder / "train.csv").write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows), encoding="utf-8")
    return folder / "train.csv"


@pytest.mark.parametrize("arch, model_class", [("modernbert", "ModernBertForMaskedLM"),
                                               ("roberta", "RobertaForMaskedLM"),
                                               ("deberta-v2", "DebertaV2ForMaskedLM"),
                                               ("distilbert", "DistilBertForMaskedLM")])
def test_family_from_scratch_to_predictions(arch, model_class, tmp_path, toy_corpus_file, labeled):
    from transformers import AutoModelForMaskedLM, pipeline

    mlm = tmp_path / "mlm"
    result = run_cli("pretrain", "--arch", arch, "--data", toy_corpus_file, "-o", mlm, *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model: {model_class}" in result.stderr and math.isfinite(last_json(result.stdout)["eval_loss"])
    assert type(AutoModelForMaskedLM.from_pretrained(mlm)).__name__ == model_class
    assert len(pipeline("fill-mask", model=str(mlm), device="cpu")("alpha beta [MASK] delta", top_k=3)) == 3
    import llmkit  # in-process: the commands' own code, without two more interpreter starts per family

    filled = llmkit.fill_mask(str(mlm), ["alpha beta [MASK] delta"], top_k=3, device="cpu")
    assert len(filled[0]["masks"][0]["candidates"]) == 3
    clf = tmp_path / "clf"
    tuned = run_cli("finetune", "--data", labeled, "--model", mlm, "-o", clf, "--epochs", "1")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert model_class.replace("MaskedLM", "SequenceClassification") in tuned.stderr
    assert pipeline("text-classification", model=str(clf), device="cpu")("alpha beta gamma")[0]["label"] in {"a", "b"}
    card = (mlm / "README.md").read_text()
    assert f"from scratch, {arch} tiny" in card


def test_modernbert_in_chinese(tmp_path):
    corpus = tmp_path / "zh.txt"  # one document per line, no spaces: the CJK rule splits per character
    corpus.write_text("\n".join(["人生得意须尽欢", "莫使金樽空对月", "天生我材必有用", "千金散尽还复来"] * 60) + "\n",
                      encoding="utf-8")
    mlm = tmp_path / "mlm"
    result = run_cli("pretrain", "--arch", "modernbert", "--data", corpus, "-o", mlm, *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    filled = run_cli("fill-mask", mlm, "人生得[MASK]须尽欢", "--json")
    assert filled.returncode == 0, filled.stderr
    candidate = json.loads(filled.stdout)["masks"][0]["candidates"][0]
    assert candidate["filled"] == "人生得" + candidate["token"] + "须尽欢"  # one character, no spaces inserted


def test_modernbert_on_two_processes_equals_one(tmp_path, toy_corpus_file):
    import os
    import subprocess
    import sys

    from tests.conftest import OFFLINE

    common = ["pretrain", "--arch", "modernbert", "--data", str(toy_corpus_file), "--precision", "fp32",
              "--size", "tiny", "--set", "model.vocab_size=200", "--max-seq-length", "32", "--max-steps", "6",
              "--set", "data.max_eval_samples=16", "--set", "training.eval_strategy=no"]
    env = {**os.environ, **OFFLINE, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "LLMKIT_CACHE": str(tmp_path / "cache")}
    one = subprocess.run([sys.executable, "-m", "llmkit", *common, "-o", str(tmp_path / "one"), "--set",
                          "training.per_device_train_batch_size=16"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "llmkit", *common, "-o", str(tmp_path / "two"), "--set",
                          "training.per_device_train_batch_size=8"], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert b["processes"] == 2 and a["effective_batch_size"] == b["effective_batch_size"] == 16
    for key in ("eval_loss", "train_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key


def test_family_presets_and_special_tokens_fit_the_tokenizer():
    from llmkit.config import ARCHS
    from llmkit.modeling import arch_config, train_tokenizer

    tokenizer = train_tokenizer(toy_corpus(), vocab_size=150, lowercase=True)
    for arch in ARCHS:
        config = arch_config(arch, "tiny", tokenizer, 64)
        ids = [getattr(config, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id",
                                                    "sep_token_id")]
        assert all(i is None or i < len(tokenizer) for i in ids), (arch, ids)  # within the small vocabulary
    base = arch_config("modernbert", "base", tokenizer, 1024)
    assert (base.num_hidden_layers, base.hidden_size, base.intermediate_size) == (22, 768, 1152)
    large = arch_config("modernbert", "large", tokenizer, 1024)
    assert (large.num_hidden_layers, large.hidden_size, large.intermediate_size) == (28, 1024, 2624)
    assert arch_config("modernbert", "tiny", tokenizer, 2048).max_position_embeddings >= 2048  # long context


@pytest.mark.parametrize("args, phrase", [
    (["--arch", "gpt2"], "model.arch (--arch) must be one of bert, roberta, deberta-v2, distilbert, modernbert"),
    (["--arch", "distilbert", "--size", "large"], "'large' is not a preset of distilbert"),
    (["--arch", "modernbert", "--model", "some/checkpoint"], "keeps its own family (drop --arch)"),
])
def test_bad_arch_settings_are_one_line_errors(args, phrase, tmp_path):
    out = tmp_path / "run"
    assert_refused(run_cli("pretrain", *args, "-o", out), phrase, out=out)

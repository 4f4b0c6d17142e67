"""End-to-end runs of the real `llmkit pretrain` CLI on a tiny model and a learnable toy corpus."""

from __future__ import annotations

import json

import pytest

from tests.conftest import WORDS, last_json, run_cli

pytestmark = pytest.mark.slow

TINY = ["--size", "tiny", "--set", "model.vocab_size=200", "--max-seq-length", "32",
        "--set", "training.per_device_train_batch_size=16", "--set", "training.logging_steps=5",
        "--set", "data.max_eval_samples=64"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_corpus_file):
    """One from-scratch run: 60 steps, evaluated at the start and every 20 steps."""
    out = tmp_path_factory.mktemp("runs") / "mlm"
    result = run_cli("pretrain", "--data", toy_corpus_file, "-o", out, "--max-steps", "60", *TINY,
                     "--set", "training.eval_steps=20", "--set", "training.save_steps=20",
                     "--set", "training.eval_on_start=true", "--set", "training.learning_rate=2e-3")
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_directory_contract(trained):
    out, result = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "llmkit.yaml", "metrics.json",
                 "trainer_state.json", "loss.png", "README.md"):
        assert (out / name).is_file(), name
    assert not (out / "training_args.bin").exists()
    assert not any(p.name.startswith(".staging") for p in out.iterdir())
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["checkpoint-40", "checkpoint-60"]  # bounded by save_total_limit=2
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"eval_loss", "perplexity", "masked_accuracy", "tokens_per_second",
                            "effective_batch_size", "train_tokens"}
    assert metrics["steps"] == 60 and metrics["effective_batch_size"] == 16
    assert abs(metrics["perplexity"] - 2.718281828 ** metrics["eval_loss"]) < 1e-6 * metrics["perplexity"]
    assert last_json(result.stdout)["eval_loss"] == pytest.approx(metrics["eval_loss"])
    card = (out / "README.md").read_text()
    assert "perplexity" in card.lower() and "pipeline(\"fill-mask\"" in card
    assert "training.max_steps" in card  # non-default settings are listed
    from huggingface_hub import ModelCard

    hub = ModelCard.load(out / "README.md")  # front matter the Hub indexes, round-tripped
    assert hub.data.library_name == "transformers" and hub.data.pipeline_tag == "fill-mask"
    assert "llmkit" in hub.data.tags and "perplexity" in hub.data.metrics and hub.data.base_model is None
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.count("\n") == 1, "stdout holds only the result; progress goes to stderr"
    # CI has no GPU: CPU training picks eager attention; the saved model still loads with any implementation
    assert "; attention: eager" in result.stderr
    assert "attn_implementation" not in json.loads((out / "config.json").read_text())


def test_eval_loss_decreases_on_learnable_corpus(trained):
    out, _ = trained
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    assert len(evals) >= 4
    assert evals[-1] < evals[0] - 1.0, evals  # the Greek-alphabet sequences are predictable from context
    assert evals[-1] < 3.4  # below uniform over the 24 corpus words (ln 24 = 3.18) plus noise: words learned


def test_output_loads_into_pipeline_and_automodel(trained):
    from transformers import AutoModelForMaskedLM, pipeline

    out, _ = trained
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert type(model).__name__ == "BertForMaskedLM"
    fill = pipeline("fill-mask", model=str(out))
    guesses = fill("alpha beta gamma [MASK] epsilon zeta")
    assert len(guesses) == 5
    assert guesses[0]["token_str"] in WORDS  # a corpus word, not a special or random token
    assert sum(g["score"] for g in guesses) <= 1.0 + 1e-6


def test_rerun_from_saved_config_and_clobber_refused(trained, tmp_path):
    out, _ = trained
    refused = run_cli("pretrain", out / "llmkit.yaml")  # same output_dir: must not clobber it
    assert refused.returncode == 2
    assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_overwrite_replaces_only_llmkit_runs(tmp_path, toy_corpus_file):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = run_cli("pretrain", "--data", toy_corpus_file, "-o", precious, "--overwrite", "--max-steps", "2", *TINY)
    assert result.returncode == 2 and "not an llmkit run directory" in result.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_same_seed_same_metrics(tmp_path, toy_corpus_file):
    args = ["--data", toy_corpus_file, "--max-steps", "6", *TINY, "--set", "training.eval_steps=100"]
    first = run_cli("pretrain", "-o", tmp_path / "a", *args)
    second = run_cli("pretrain", "-o", tmp_path / "b", *args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    for key in ("eval_loss", "masked_accuracy", "train_loss"):
        assert ma[key] == mb[key], key


def test_chinese_corpus_end_to_end(tmp_path):
    """CJK text: the trained tokenizer splits per character, and fill-mask answers with characters."""
    import random

    from transformers import AutoTokenizer, pipeline

    digits = "一二三四五六七八九十"
    rng = random.Random(0)
    lines = []
    for _ in range(300):
        start = rng.randrange(10)
        lines.append("".join(digits[(start + i) % 10] for i in range(rng.randrange(5, 10))) + "。")
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "zh"
    result = run_cli("pretrain", "--data", corpus, "--set", "data.txt_unit=line", "-o", out, "--max-steps", "20",
                     *TINY)
    assert result.returncode == 0, result.stderr
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.tokenize("三四五") == ["三", "四", "五"]
    guesses = pipeline("fill-mask", model=str(out))("一二[MASK]四五")
    assert all(g["token_str"] in digits + "。" for g in guesses[:3]), guesses

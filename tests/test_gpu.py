"""On a CUDA GPU (skipped elsewhere; CI has none): placement, precision, the masked-positions head, end-to-end runs,
resume, FSDP with one rank, half-precision checkpoints, loader workers, host syncs, Ctrl-C under torchrun.

Run them with `benchmarks/gpu_check.sh` (which also runs the GPU benchmarks), or `python -m pytest -m gpu`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import OFFLINE, last_json, run_cli, toy_corpus

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY = ["--size", "tiny", "--set", "model.vocab_size=200", "--max-seq-length", "32",
        "--set", "training.per_device_train_batch_size=16", "--set", "data.max_eval_samples=32"]
RECIPES = Path(__file__).resolve().parents[1] / "llmkit" / "recipes"


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory, toy_corpus_file):
    out = tmp_path_factory.mktemp("gpu") / "mlm"
    result = run_cli("pretrain", "--data", toy_corpus_file, "-o", out, "--max-steps", "20", *TINY,
                     "--set", "training.save_steps=10", "--set", "training.eval_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_devices_and_precision_on_cuda():
    from llmkit import devices

    assert devices.device().type == "cuda" and devices.has_accelerator()
    precision, why = devices.precision("auto", "cuda")
    native = torch.cuda.get_device_capability() >= (8, 0)
    assert precision == ("bf16" if native else "fp16"), why
    assert devices.precision("fp16", "cuda")[0] == "fp16"
    if not native:
        from llmkit.errors import ConfigError

        with pytest.raises(ConfigError, match="emulates bf16"):
            devices.precision("bf16", "cuda")


def test_pretrain_runs_on_the_gpu_in_bf16(gpu_run):
    out, result = gpu_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == devices_auto() and metrics["processes"] == 1
    assert "attention: sdpa (" in result.stderr or "attention: flash_attention_2 (" in result.stderr  # not eager
    assert metrics["eval_loss"] < 6 and metrics["steps"] == 20


def devices_auto() -> str:
    from llmkit import devices

    return devices.precision("auto", "cuda")[0]


def test_masked_positions_head_equals_full_head_under_cuda_bf16():
    import copy

    import torch.nn.functional as F
    from transformers import BertConfig, BertForMaskedLM

    from llmkit import training
    from llmkit.modeling import MaskedPositionsHead

    torch.manual_seed(0)
    config = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    full = BertForMaskedLM(config).cuda()
    sparse = copy.deepcopy(full)
    ids = torch.randint(5, 500, (8, 64), device="cuda")
    labels = torch.where(torch.rand(8, 64, device="cuda") < 0.15, ids, torch.full_like(ids, -100))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = full(input_ids=ids, labels=labels).loss
        logits, target, _ = training.mlm_logits(sparse, {"input_ids": ids, "labels": labels},
                                                MaskedPositionsHead(sparse))
        loss = F.cross_entropy(logits.float(), target)
    reference.backward()
    loss.backward()
    assert abs(loss.item() - reference.item()) < 2e-2
    for (name, a), (_, b) in zip(full.named_parameters(), sparse.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=5e-2, atol=5e-3, msg=name)


def test_fp16_training_with_the_grad_scaler(tmp_path, toy_corpus_file):
    result = run_cli("pretrain", "--data", toy_corpus_file, "-o", tmp_path / "fp16", "--max-steps", "10",
                     "--precision", "fp16", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "fp16" / "metrics.json").read_text())["precision"] == "fp16"


def test_fill_mask_and_predict_on_cuda_match_cpu_fp32(gpu_run, tmp_path, toy_corpus_file):
    """Same precision on both devices (fp32: kernels differ in summation order only), compared by scores with a
    tolerance, never by argmax across precisions (a bf16 run may swap two close candidates: flaky by design)."""
    from llmkit import fillmask, inference

    out, _ = gpu_run
    texts = ["alpha beta [MASK] delta", "gamma [MASK] epsilon zeta"]
    cpu = fillmask.fill_mask(out, texts, top_k=3, device="cpu", precision="fp32")
    gpu = fillmask.fill_mask(out, texts, top_k=3, device="cuda", precision="fp32")
    for a, b in zip(cpu, gpu):
        scores = {c["token"]: c["score"] for c in b["masks"][0]["candidates"]}
        top = a["masks"][0]["candidates"][0]
        assert top["score"] == pytest.approx(scores.get(top["token"], -1.0), abs=1e-3), (a, b)
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t},{'a' if i % 2 else 'b'}\n"
                                              for i, t in enumerate(toy_corpus(64))), encoding="utf-8")
    clf = tmp_path / "clf"
    result = run_cli("finetune", "--data", train, "--model", out, "-o", clf, "--epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    on_cpu = inference.classify(inference.load(clf, "text-classification", "cpu", "fp32"), texts)
    on_gpu = inference.classify(inference.load(clf, "text-classification", "cuda", "fp32"), texts)
    assert abs(np.asarray(on_cpu) - np.asarray(on_gpu)).max() < 1e-3


def test_half_precision_checkpoints_round_trip_on_cuda(gpu_run, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from llmkit import fillmask

    out, _ = gpu_run
    for dtype in (torch.bfloat16, torch.float16):
        folder = tmp_path / str(dtype)
        AutoModelForMaskedLM.from_pretrained(out).to(dtype).save_pretrained(folder)
        AutoTokenizer.from_pretrained(out).save_pretrained(folder)
        [result] = fillmask.fill_mask(folder, "alpha beta [MASK] delta", top_k=2, device="cuda", precision="fp32")
        assert len(result["masks"][0]["candidates"]) == 2


def test_resume_on_one_gpu_equals_uninterrupted(gpu_run, tmp_path, toy_corpus_file):
    from tests.conftest import assert_same_weights, crashed_after

    out, _ = gpu_run
    resumed = crashed_after(out, "checkpoint-10", tmp_path / "resumed")
    result = run_cli("pretrain", "--data", toy_corpus_file, "-o", resumed, "--max-steps", "20", *TINY,
                     "--set", "training.save_steps=10", "--set", "training.eval_steps=10", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(out, resumed, atol=1e-5)  # GPU kernels: bitwise equality is not promised


def test_fsdp_with_one_rank(tmp_path, toy_corpus_file):
    """The shipped FSDP2 config, one GPU: the tied masked-LM head stays in one group; the result loads."""
    env = {**os.environ, **OFFLINE}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(RECIPES / "accelerate" / "fsdp.yaml"), "--num_processes", "1", "-m", "llmkit", "pretrain",
               "--data", str(toy_corpus_file), "-o", str(tmp_path / "fsdp"), "--max-steps", "10", *TINY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(tmp_path / "fsdp"), device=0)
    assert len(fill("alpha beta [MASK] delta", top_k=2)) == 2


def test_loader_workers_do_not_change_the_training(tmp_path, toy_corpus_file):
    metrics = []
    for workers in (0, 4):
        out = tmp_path / f"w{workers}"
        result = run_cli("pretrain", "--data", toy_corpus_file, "-o", out, "--max-steps", "10", "--precision",
                         "fp32", "--set", "model.dropout=0", *TINY, "--set",
                         f"training.dataloader_num_workers={workers}")
        assert result.returncode == 0, result.stderr[-3000:]
        metrics.append(last_json(result.stdout))
    assert metrics[0]["eval_loss"] == pytest.approx(metrics[1]["eval_loss"], rel=1e-4)


def test_a_training_step_does_not_wait_for_the_gpu(tmp_path):
    """No device-to-host synchronisation inside llmkit's part of a step (torch.cuda.set_sync_debug_mode)."""
    from transformers import BertConfig, BertForMaskedLM

    from llmkit import training
    from llmkit.masking import KeyedMasking
    from llmkit.modeling import train_tokenizer

    tokenizer = train_tokenizer(toy_corpus(), vocab_size=200, lowercase=True)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64)).cuda()
    args = training.TrainingArguments(output_dir=str(tmp_path), report_to="none", remove_unused_columns=False)
    trainer = training.MLMTrainer(model=model, args=args, processing_class=tokenizer)
    collate = KeyedMasking(tokenizer=tokenizer)
    examples = [{"input_ids": tokenizer(t)["input_ids"], "index": i} for i, t in enumerate(toy_corpus(16))]
    batch = {k: v.cuda() for k, v in collate(examples).items()}
    count = torch.tensor(int((batch["labels"] != -100).sum()), device="cuda")
    trainer.compute_loss(model, batch, num_items_in_batch=count)  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.compute_loss(model, batch, num_items_in_batch=count).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ours = [w for w in caught if "llmkit" in str(w.filename)]
    assert not ours, [f"{w.filename}:{w.lineno} {w.message}" for w in ours]


def test_ctrl_c_under_torchrun_checkpoints_within_the_grace_period(tmp_path, toy_corpus_file):
    """torchrun forwards SIGINT, then kills the workers 30 s later: the checkpoint must be written by then."""
    env = {**os.environ, **OFFLINE}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "llmkit",
               "pretrain", "--data", str(toy_corpus_file), "-o", str(tmp_path / "run"), "--max-steps", "100000",
               *TINY, "--set", "training.logging_steps=1"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "step 3/" in line:
            break
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    took = time.perf_counter() - sent
    checkpoints = list((tmp_path / "run" / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    assert checkpoints and took < 30, (took, checkpoints)


def test_more_processes_than_gpus_is_refused():
    gpus = torch.cuda.device_count()
    result = run_cli("pretrain", "--num-processes", str(gpus + 1), "--max-steps", "1")
    assert result.returncode == 2 and f"more processes than the {gpus} visible GPU" in result.stderr

"""Resume is exact after any crash: real processes killed (SIGKILL, SIGTERM) at each named moment of a run, a
checkpoint that cannot be written, damaged checkpoints, and a second run on a directory that one is training in.

Each chain kills a run at one moment after another, resuming it each time, and ends with the same weights (bit for
bit) and metrics as a run that was never interrupted (tests/crash.py makes the moments deterministic). They replace
the single-crash resume tests that test_pretrain_e2e, test_finetune_e2e and test_errors (SIGTERM) had."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests import crash
from tests.conftest import assert_same_weights, last_json

PRETRAIN = ["--size", "tiny", "--set", "model.vocab_size=200", "--max-seq-length", "32", "--max-steps", "12",
            "--set", "training.per_device_train_batch_size=16", "--set", "data.max_eval_samples=64",
            "--set", "training.logging_steps=3", "--set", "training.save_steps=4", "--set", "training.eval_steps=6",
            "--set", "training.save_total_limit=3"]


def checkpoints(run) -> list[str]:
    folder = run / "checkpoints"
    return sorted((p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")),
                  key=lambda n: int(n.split("-")[1]))


def metrics_of(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_pretrain_killed_at_every_moment_resumes_to_the_uninterrupted_run(tmp_path, toy_corpus_file):
    logs = tmp_path / "logs"
    args = ["pretrain", "--data", toy_corpus_file, *PRETRAIN]
    reference = crash.run([*args, "-o", tmp_path / "reference"], logs)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    fresh, resume = [*args, "-o", out], [*args, "-o", out, "--resume"]

    # SIGTERM in step 3: it finishes the step, checkpoints and says how to resume
    first = crash.run(fresh, logs, "sigterm@2")
    assert first.returncode == 1, first.stderr
    assert "Interrupted (SIGTERM)" in first.stderr and "--resume" in first.stderr
    assert checkpoints(out) == ["checkpoint-3"] and not (out / "config.json").exists()

    # SIGKILL mid-step (after checkpoint-4), then during an evaluation: the lock they leave is taken over
    assert crash.run(resume, logs, "step@5").returncode == -signal.SIGKILL
    assert checkpoints(out) == ["checkpoint-3", "checkpoint-4"]
    during_eval = crash.run(resume, logs, "evaluate@6")
    assert during_eval.returncode == -signal.SIGKILL
    assert "resuming from" in during_eval.stderr and "checkpoint-4" in during_eval.stderr
    assert "ended without releasing it" in during_eval.stderr

    # SIGKILL while checkpoint-8 is written: the next run skips it, naming it, and resumes from checkpoint-4
    assert crash.run(resume, logs, "checkpoint-write@8").returncode == -signal.SIGKILL
    assert not (out / "checkpoints" / "checkpoint-8" / "trainer_state.json").exists()

    # checkpoint-8 cannot be written (disk full): one line naming it and the free space; checkpoint-4 intact
    full = crash.run(resume, logs, "disk-full@8")
    assert full.returncode == 1, full.stderr
    assert "skipping checkpoint" in full.stderr and "checkpoint-8: incomplete" in full.stderr
    error = full.stderr.strip().splitlines()[-1]
    assert "Could not write checkpoint" in error and "checkpoint-8" in error and "No space left on device" in error
    assert "free there" in error and "checkpoint-4" in error and "--resume" in error
    from llmkit.outputs import checkpoint_problem

    assert checkpoint_problem(out / "checkpoints" / "checkpoint-4") is None

    # SIGKILL after the last checkpoint (step 12 of 12); its weights then truncated (a bad copy): skipped, named
    assert crash.run(resume, logs, "checkpoint@12").returncode == -signal.SIGKILL
    assert checkpoints(out) == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert not (out / "metrics.json").exists()
    truncate(out / "checkpoints" / "checkpoint-12" / "model.safetensors")
    during_save = crash.run(resume, logs, "final-save")  # SIGKILL during the final save
    assert during_save.returncode == -signal.SIGKILL and not (out / "config.json").exists()
    assert "skipping checkpoint" in during_save.stderr and "checkpoint-12: model.safetensors is damaged" in \
        during_save.stderr and "checkpoint-8" in during_save.stderr and "step 13" not in during_save.stderr

    # A second run on the directory while one is going, with --resume or --overwrite, is refused at once
    last = crash.start(resume, logs, "pause")
    last.wait_stopped()
    try:
        for flag in ("--resume", "--overwrite"):
            second = crash.run([*args, "-o", out, flag], logs)
            assert second.returncode == 2, second.stderr
            assert "is in use by a run that is still going" in second.stderr and f"pid {last.process.pid}" in \
                second.stderr
            assert len(second.stderr.strip().splitlines()) == 1
    finally:
        os.kill(last.process.pid, signal.SIGCONT)
    assert last.wait().returncode == 0, last.stderr
    assert "checkpoint-12" in last.stderr and "step " not in last.stderr, "resumed at step 12: nothing to train"

    # The same model and metrics as the uninterrupted run; throughput over all the segments
    assert_same_weights(tmp_path / "reference", out, atol=0)
    a, b = metrics_of(tmp_path / "reference"), metrics_of(out)
    for key in ("steps", "eval_loss", "masked_accuracy", "train_tokens", "epochs"):
        assert a[key] == b[key], key
    assert b["steps"] == 12 and last_json(last.stdout)["steps"] == 12
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)  # the SIGTERM's log sums differently
    state12 = json.loads((out / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    trained = state12["stateful_callbacks"]["ExactResume"]["attributes"]["elapsed"]
    assert b["train_runtime_s"] >= trained > 0.2 * a["train_runtime_s"]
    assert b["tokens_per_second"] == pytest.approx(b["train_tokens"] / b["train_runtime_s"])
    assert not list(tmp_path.glob(".run.llmkit-lock")), "a clean exit releases the lock"

    # Resuming the finished run says so; a changed configuration is refused with the differing keys
    again = crash.run(resume, logs)
    assert again.returncode == 0 and "already finished" in again.stderr
    (out / "config.json").unlink()
    changed = crash.run([*resume, "--set", "training.learning_rate=1e-2"], logs)
    assert changed.returncode == 2 and "training.learning_rate" in changed.stderr


@pytest.mark.slow
def test_finetune_killed_at_every_moment_resumes_to_the_uninterrupted_run(tmp_path, tiny_mlm):
    from tests.test_finetune_e2e import FAST, read_csv, topic_rows, write_csv

    logs = tmp_path / "logs"
    train = write_csv(tmp_path / "train.csv", topic_rows(96, seed=1))
    dev = write_csv(tmp_path / "dev.csv", topic_rows(30, seed=2))
    # 6 steps an epoch: evaluated, checkpointed and the best kept at steps 6 and 10 (the last, mid-epoch)
    args = ["finetune", "--data", train, "--eval-data", dev, "--model", tiny_mlm, "--max-steps", "10", *FAST,
            "--set", "training.learning_rate=2e-3"]
    reference = crash.run([*args, "-o", tmp_path / "reference"], logs)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "run"
    resume = [*args, "-o", out, "--resume"]

    assert crash.run([*args, "-o", out], logs, "step@7").returncode == -signal.SIGKILL  # mid-step
    assert checkpoints(out) == ["checkpoint-6"]
    assert crash.run(resume, logs, "evaluate@10").returncode == -signal.SIGKILL  # during the last evaluation
    assert crash.run(resume, logs, "checkpoint-write@10").returncode == -signal.SIGKILL  # mid-checkpoint
    after = crash.run(resume, logs, "checkpoint@10")  # after the last checkpoint, before the final save
    assert after.returncode == -signal.SIGKILL
    assert "skipping checkpoint" in after.stderr and "checkpoint-6" in after.stderr
    during_save = crash.run(resume, logs, "final-save")  # during the final save
    assert during_save.returncode == -signal.SIGKILL and "step 11" not in during_save.stderr
    last = crash.run(resume, logs)
    assert last.returncode == 0, last.stderr
    assert "step 11" not in last.stderr

    assert_same_weights(tmp_path / "reference", out, atol=0)
    a, b = metrics_of(tmp_path / "reference"), metrics_of(out)
    for key in ("accuracy", "f1_macro", "eval_loss", "steps", "epochs", "per_class"):
        assert a[key] == b[key], key
    assert b["steps"] == 10
    best_a, best_b = (m["best_metric"] for m in (a, b))
    assert best_a["value"] == best_b["value"] and best_b["checkpoint"] == str(out / "checkpoints" / "checkpoint-6")
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
    assert read_csv(tmp_path / "reference" / "predictions.csv") == read_csv(out / "predictions.csv")


# ---------------------------------------------------------------- checkpoints verified, the lock, failed writes


def fake_checkpoint(folder, step: int):
    """A checkpoint with the files a Trainer writes (tiny tensors): weights, optimizer, scheduler, RNG, state."""
    import torch
    from safetensors.torch import save_file

    path = folder / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(path / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, path / "rng_state.pth")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


def truncate(file, keep: float = 0.5):
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage, expected", [
    (lambda c: truncate(c / "model.safetensors"), "model.safetensors is damaged"),
    (lambda c: truncate(c / "optimizer.pt", 0.9), "optimizer.pt is damaged"),
    (lambda c: (c / "optimizer.pt").unlink(), "no optimizer.pt"),
    (lambda c: truncate(c / "rng_state.pth"), "rng_state.pth is damaged"),
    (lambda c: (c / "trainer_state.json").write_text('{"global_step": 4, "log_'), "trainer_state.json is unreadable"),
    (lambda c: (c / "trainer_state.json").write_text('{"global_step": 3}'), "at step 3, not 4"),
    (lambda c: (c / "trainer_state.json").unlink(), "incomplete"),
    (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_good_one(tmp_path, damage, expected):
    from llmkit.outputs import checkpoint_problem, usable_checkpoint

    good, newest = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    assert checkpoint_problem(good) is None and checkpoint_problem(newest) is None
    damage(newest)
    warnings = []
    assert usable_checkpoint(tmp_path, warnings.append) == str(good)
    assert len(warnings) == 1 and str(newest) in warnings[0] and expected in warnings[0], warnings


def test_no_good_checkpoint_is_a_clear_error_and_nothing_is_deleted(tmp_path):
    from llmkit.errors import OutputError
    from llmkit.outputs import check_output_dir

    for step in (2, 4):
        truncate(fake_checkpoint(tmp_path, step) / "model.safetensors")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(OutputError) as error:
        check_output_dir(str(tmp_path), resume=True, overwrite=False)
    message = str(error.value)
    assert "no checkpoint is usable" in message and "checkpoint-4 (" in message and "checkpoint-2 (" in message
    assert "Nothing was deleted" in message and "--overwrite" in message and "\n" not in message
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_output_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path, capsys):
    from llmkit.errors import OutputError
    from llmkit.outputs import lock_path, output_lock

    out = tmp_path / "new" / "run"
    with output_lock(str(out)):
        assert f"pid {os.getpid()}" in lock_path(out).read_text()
        with pytest.raises(OutputError, match="is in use by a run that is still going"):
            with output_lock(str(out)):
                pass
    assert not (tmp_path / "new").exists(), "the folder made for the lock goes with it: nothing was written"
    out.parent.mkdir()
    lock_path(out).write_text("pid 999999 on elsewhere, started 2026-01-01 00:00:00")  # its holder was killed
    with output_lock(str(out)):
        pass
    assert "pid 999999 on elsewhere" in capsys.readouterr().err and not lock_path(out).exists()
    with pytest.raises(OutputError, match="Cannot create the lock file .*writable folder"):
        with output_lock("/proc/llmkit/run"):  # a folder nobody, root included, can create
            pass


def test_a_final_save_that_cannot_be_written_names_the_path_and_the_free_space(tmp_path):
    import errno

    from llmkit.errors import RunError
    from llmkit.outputs import RunDir, final_write

    fake_checkpoint(tmp_path, 4)
    with pytest.raises(RunError) as error:
        with final_write(RunDir(tmp_path)):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # torch.save
    assert f"Could not write the final model to {tmp_path}" in str(error.value)
    assert "free there" in str(error.value) and "checkpoint-4" in str(error.value)
    with pytest.raises(ValueError):  # not a write failure: left alone
        with final_write(RunDir(tmp_path)):
            raise ValueError("a bug")
    truncate(tmp_path / "checkpoints" / "checkpoint-4" / "model.safetensors")  # no usable checkpoint left
    with pytest.raises(RunError, match="No space left on device.*last: none"):
        with final_write(RunDir(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

"""Resume is exact after any crash: damaged checkpoints are found before a resume uses them, a write that fails
says where and how much room is left, and one run at a time holds an output directory."""

from __future__ import annotations

import json
import os

import pytest


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
    with pytest.raises(RunError, match="No space left on device"):
        with final_write(RunDir(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

"""Real crashes at named moments: `llmkit ARGS` in a process that kills itself (a real signal) at one moment.

The processes are forked from a server that has imported torch, transformers and llmkit once (multiprocessing's
forkserver), so a run costs its own work and not 5 s of imports; each is a real process, and the kill is a real
SIGKILL / SIGTERM / SIGSTOP it sends itself when the run reaches the moment:

  sigterm@N           SIGTERM in the training step after step N (the run checkpoints and stops)
  step@N              SIGKILL in the training step after step N
  evaluate@N          SIGKILL during the evaluation at step N
  checkpoint-write@N  SIGKILL while checkpoint-N is written (its weights are written, its optimizer is not)
  checkpoint@N        SIGKILL right after checkpoint-N is written (and older ones rotated out)
  disk-full@N         writing checkpoint-N's optimizer state fails: "No space left on device"
  final-save          SIGKILL while the final files are moved into the run directory (after two of them)
  pause               SIGSTOP just before the final save; the test sends SIGCONT
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

WARM = ["torch", "transformers", "llmkit.training", "llmkit.pretrain", "llmkit.finetune", "llmkit.cli"]


@dataclass
class Run:
    process: multiprocessing.process.BaseProcess
    out: Path
    err: Path

    def wait(self, timeout: float = 300) -> "Run":
        self.process.join(timeout)
        assert self.process.exitcode is not None, f"still running after {timeout} s: {self.stderr}"
        return self

    @property
    def returncode(self) -> int:
        return self.process.exitcode  # -N: killed by signal N

    @property
    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8")

    @property
    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8")

    def wait_stopped(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()[0]
            if state == "T":
                return
            assert self.process.exitcode is None, self.stderr
            time.sleep(0.05)
        raise AssertionError(f"never paused: {self.stderr}")


def start(args: list, logs: Path, moment: str | None = None) -> Run:
    """Start `llmkit ARGS` (killed at `moment`, if given); its stdout and stderr go to files in `logs`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WARM)
    logs.mkdir(parents=True, exist_ok=True)
    name = f"{time.monotonic_ns()}-{moment or 'run'}".replace("@", "-")
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    process = context.Process(target=_main, args=([str(a) for a in args], moment, str(out), str(err)))
    process.start()
    return Run(process, out, err)


def run(args: list, logs: Path, moment: str | None = None) -> Run:
    return start(args, logs, moment).wait()


def _main(args: list[str], moment: str | None, out: str, err: str) -> None:
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    code = 1
    try:
        import torch

        torch.set_num_threads(1)  # the same in every run (and no oversubscribed cores): bitwise equal results
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # the CLI asks for it through the environment, read when the server imported it
        os.environ.pop("LLMKIT_DEBUG", None)
        if moment:
            _arm(moment)
        from llmkit import cli

        sys.argv = ["llmkit", *args]
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _arm(moment: str) -> None:
    """Patch the place where `moment` happens so that the process signals itself there."""
    import torch
    from transformers import Trainer

    from llmkit import outputs

    what, _, at = moment.partition("@")
    step = int(at) if at else None

    def kill(sig=signal.SIGKILL):
        os.kill(os.getpid(), sig)

    def wrap(owner, name, before=None, after=None):
        original = getattr(owner, name)

        def patched(*args, **kwargs):
            if before:
                before(*args, **kwargs)
            result = original(*args, **kwargs)
            if after:
                after(*args, **kwargs)
            return result

        setattr(owner, name, patched)

    def at_step(sig=signal.SIGKILL):
        return lambda trainer, *a, **k: kill(sig) if trainer.state.global_step == step else None

    if what in ("step", "sigterm"):
        sent = []

        def once(trainer, *a, **k):
            if trainer.state.global_step == step and not sent:
                sent.append(1)
                kill(signal.SIGTERM if what == "sigterm" else signal.SIGKILL)

        wrap(Trainer, "training_step", before=once)
    elif what == "evaluate":
        wrap(Trainer, "evaluation_loop", before=at_step())
    elif what == "checkpoint-write":
        wrap(Trainer, "_save_optimizer_and_scheduler", before=at_step())
    elif what == "checkpoint":
        wrap(Trainer, "_save_checkpoint", after=at_step())
    elif what == "disk-full":
        def full(obj, f, *a, **k):
            if str(f).endswith(f"checkpoint-{step}{os.sep}optimizer.pt"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

        wrap(torch, "save", before=full)
    elif what == "final-save":
        moved = []

        def count(src, dst, *a, **k):
            if ".staging" in str(src):
                moved.append(src)
                if len(moved) == 3:
                    kill()

        wrap(os, "replace", before=count)
    elif what == "pause":
        wrap(outputs, "stage_model", before=lambda *a, **k: kill(signal.SIGSTOP))
    else:
        raise ValueError(f"unknown moment {moment!r}")

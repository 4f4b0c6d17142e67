"""Progress and diagnostics on stderr, from the main process only (light: no torch, no transformers)."""

from __future__ import annotations

import os
import sys


def log(message: str) -> None:
    """Progress and diagnostics go to stderr (stdout is for results); only the main process speaks."""
    if is_main_process():
        print(f"llmkit: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr (main process only)."""
    log(f"warning: {message}")


def is_main_process() -> bool:
    """Rank 0 of a launched run (accelerate launch / torchrun set RANK and LOCAL_RANK), or a plain run."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") in ("0", "-1")


def clock(seconds: float) -> str:
    """A duration as m:ss, or h:mm:ss from an hour."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"

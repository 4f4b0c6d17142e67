"""The run directory: refusing to clobber, resuming, the atomic final save, metrics, plots and the model card."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import OutputError

RUN_CONFIG = "llmkit.yaml"
CHECKPOINTS = "checkpoints"
STARTED = "llmkit-run.yaml"  # written into checkpoints/ when a run starts; compared on --resume
FINAL_LAST = ("config.json", RUN_CONFIG)  # renamed into place last: their presence marks a finished run


@dataclass
class RunDir:
    path: Path
    resume_from: str | None = None  # checkpoint to resume from
    previous: Path | None = None  # an overwritten run, moved aside until the new one finishes

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS


def is_finished(path: Path) -> bool:
    return all((path / name).is_file() for name in FINAL_LAST)


def looks_like_run(path: Path) -> bool:
    return (path / RUN_CONFIG).is_file() or (path / CHECKPOINTS / STARTED).is_file()


def last_checkpoint(path: Path) -> str | None:
    folder = path / CHECKPOINTS
    if not folder.is_dir():
        return None
    steps = []
    for child in folder.iterdir():
        if child.is_dir() and child.name.startswith("checkpoint-") and child.name[11:].isdigit() and \
                (child / "trainer_state.json").is_file():
            steps.append((int(child.name[11:]), child))
    return str(max(steps)[1]) if steps else None


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> RunDir:
    """Decide what to do with OUTPUT_DIR before anything is loaded; never touches an existing directory."""
    path = Path(output_dir).expanduser()
    if resume and overwrite:
        raise OutputError("--resume and --overwrite contradict each other. Pick one.")
    if path.exists() and not path.is_dir():
        raise OutputError(f"Output path '{path}' is a file. Give a directory path.")
    empty = not path.exists() or not any(path.iterdir())
    if resume:
        if empty:
            raise OutputError(f"Nothing to resume in '{path}': it is empty or missing. Run without --resume.")
        checkpoint = last_checkpoint(path)
        if checkpoint is None and not is_finished(path):
            raise OutputError(f"Nothing to resume in '{path}': no checkpoint in {path / CHECKPOINTS}. "
                              f"Run with --overwrite to start over.")
        return RunDir(path, resume_from=checkpoint)
    if empty:
        return RunDir(path)
    if not overwrite:
        raise OutputError(f"Output directory '{path}' already exists and is not empty. Pass --resume to continue "
                          f"it, --overwrite to replace it, or choose another --output-dir.")
    if not looks_like_run(path):
        raise OutputError(f"Refusing to overwrite '{path}': it is not an llmkit run directory (no {RUN_CONFIG}). "
                          f"Choose another --output-dir.")
    return RunDir(path, previous=path)


def start(run: RunDir, config_yaml: str) -> None:
    """Create the run directory (moving an overwritten run aside) and record the config the run started with."""
    if run.previous is not None:
        aside = run.path.with_name(f".{run.path.name}.replaced-{int(time.time())}")
        os.replace(run.path, aside)
        run.previous = aside
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    (run.checkpoints / STARTED).write_text(config_yaml, encoding="utf-8")


def finish_replacement(run: RunDir) -> None:
    if run.previous is not None and run.previous != run.path and run.previous.exists():
        shutil.rmtree(run.previous, ignore_errors=True)
        run.previous = None


def stage(run: RunDir) -> Path:
    staging = run.path / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(run: RunDir, staging: Path) -> None:
    """Move staged files into the run directory; the files that mark a finished run go last."""
    names = sorted(p.name for p in staging.iterdir())
    for name in [n for n in names if n not in FINAL_LAST] + [n for n in FINAL_LAST if n in names]:
        target = run.path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def loss_plot(log_history: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Training and evaluation loss against steps, as a PNG."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), label="evaluation loss", color="#d62728", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def model_card(*, title: str, summary: str, data: str, model: dict[str, Any], changed: dict[str, Any],
               metrics: dict[str, Any], usage: str) -> str:
    """README.md of a run: what was trained on what, how, how well, and how to use it."""
    lines = [f"# {title}", "", summary, "", "## Data", "", data, "", "## Model", ""]
    lines += [f"- {k}: {v:,}" if isinstance(v, int) else f"- {k}: {v}" for k, v in model.items() if v is not None]
    lines += ["", "## Settings that differ from the defaults", ""]
    lines += [f"- `{k}`: `{v}`" for k, v in changed.items()] or ["- none"]
    lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v:,} |")
    lines += ["", "## Use", "", "```python", usage.strip(), "```", "",
              "The full configuration is in `llmkit.yaml`; rerun it with `llmkit "
              f"{'pretrain' if 'Masked' in title or 'pretrain' in title.lower() else 'finetune'} llmkit.yaml`.", ""]
    return "\n".join(lines)


def changed_settings(resolved: dict[str, Any], default: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in resolved.items():
        ref = default.get(key) if isinstance(default, dict) else None
        if isinstance(value, dict) and key != "training":
            out.update(changed_settings(value, ref or {}, f"{prefix}{key}."))
        elif isinstance(value, dict):
            for k, v in value.items():
                if (ref or {}).get(k, object()) != v:
                    out[f"{prefix}{key}.{k}"] = v
        elif value != ref:
            out[f"{prefix}{key}"] = value
    return out

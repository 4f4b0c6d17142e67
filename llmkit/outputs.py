"""The run directory: refusing to clobber, resuming, the atomic final save, metrics, plots and the model card."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llmkit.errors import ConfigError, OutputError, RunError

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
    """The newest complete checkpoint: transformers' ordering, skipping one whose save was interrupted (the
    Trainer writes trainer_state.json last)."""
    from transformers.trainer_utils import sort_checkpoints

    folder = path / CHECKPOINTS
    if not folder.is_dir():
        return None
    complete = [c for c in sort_checkpoints(str(folder)) if (Path(c) / "trainer_state.json").is_file()]
    return complete[-1] if complete else None


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
        if is_finished(path):
            return RunDir(path)
        from llmkit.console import warn

        checkpoint = usable_checkpoint(path, warn)
        if checkpoint is None:
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


def check_run_dir(cfg: Any, resume: bool, overwrite: bool, resumable_changes: set[str],
                  log: Callable[[str], None]) -> tuple[RunDir, dict[str, Any] | None]:
    """The output directory a training recipe may use, and on --resume an unchanged configuration (cheap: nothing
    heavy is imported). Returns (run dir, metrics if the run already finished)."""
    run_dir = check_output_dir(cfg.output_dir, resume, overwrite)
    if resume:
        if is_finished(run_dir.path):
            log(f"the run in {run_dir.path} already finished; nothing to resume (metrics in metrics.json)")
            return run_dir, json.loads((run_dir.path / "metrics.json").read_text())
        check_resumable(run_dir, cfg, resumable_changes)
        log(f"resuming from {run_dir.resume_from}")
    return run_dir, None


def check_resumable(run_dir: RunDir, cfg: Any, resumable_changes: set[str]) -> None:
    """A run resumes only with the configuration it started with (up to `resumable_changes`; a moved
    run directory resumes too)."""
    from llmkit import config as config_lib

    started = run_dir.checkpoints / STARTED
    if not started.is_file():
        return
    before = _flatten(config_lib.read_yaml(started))
    now = _flatten(cfg.to_dict())
    differ = sorted(k for k in before.keys() | now.keys()
                    if before.get(k) != now.get(k) and k not in resumable_changes and k != "output_dir")
    if differ:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in differ[:6])
        raise ConfigError(f"Cannot resume {run_dir.path}: the configuration differs from the one it started with: "
                          f"{shown}. Resume with the same settings, or start over with --overwrite.")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def record_start(run: RunDir, config_yaml: str) -> None:
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


def stage_model(run: RunDir, trainer: Any, tokenizer: Any) -> Path | None:
    """Save the trained model and tokenizer into OUTPUT_DIR/.staging; returns it on the main process, else None.

    Every process must call it: FSDP/DeepSpeed gather the weights collectively. The final files are added by
    `write_final` and moved into place by `move_into_place`, so a crash never leaves a directory that looks
    finished.
    """
    staging = run.path / ".staging"
    with final_write(run):
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(staging))
        if not trainer.is_world_process_zero():
            return None
        tokenizer.save_pretrained(str(staging))
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; llmkit.yaml records the settings
    return staging


def write_final(run: RunDir, staging: Path, trainer: Any, cfg: Any, metrics: dict[str, Any], plot_title: str,
                card: dict[str, Any]) -> None:
    """Add the run's records to the staged model (trainer_state.json, metrics.json, loss.png, README.md, then
    llmkit.yaml) and move them into place; `card` holds `model_card`'s arguments."""
    from llmkit import config as config_lib

    changed = changed_settings(cfg.to_dict(), config_lib.defaults(cfg.command))
    changed.pop("output_dir", None)
    with final_write(run):
        trainer.state.save_to_json(str(staging / "trainer_state.json"))
        write_json(staging / "metrics.json", metrics)
        loss_plot(trainer.state.log_history, staging / "loss.png", plot_title)
        (staging / "README.md").write_text(model_card(**card, changed=changed, metrics=metrics, command=cfg.command),
                                           encoding="utf-8")
        (staging / RUN_CONFIG).write_text(config_lib.dump(cfg), encoding="utf-8")
        move_into_place(run, staging)
    finish_replacement(run)


def move_into_place(run: RunDir, staging: Path) -> None:
    """Move staged files into the run directory; the files that mark a finished run go last."""
    names = sorted(p.name for p in staging.iterdir())
    for name in [n for n in names if n not in FINAL_LAST] + [n for n in FINAL_LAST if n in names]:
        target = run.path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()


# ---------------------------------------------------------------- checkpoints: verified before a resume uses them

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
           "adapter_model.safetensors")


def usable_checkpoint(path: Path, warn: Callable[[str], None]) -> str | None:
    """The newest checkpoint of the run in `path` that `checkpoint_problem` finds nothing wrong with; each newer
    one is skipped with a warning naming it. None when there is no checkpoint; an error when none is usable."""
    from transformers.trainer_utils import sort_checkpoints

    folder = path / CHECKPOINTS
    found = sort_checkpoints(str(folder)) if folder.is_dir() else []
    problems = []
    for checkpoint in reversed(found):
        problem = checkpoint_problem(Path(checkpoint))
        if problem is None:
            return checkpoint
        warn(f"skipping checkpoint {checkpoint}: {problem}")
        problems.append(f"{Path(checkpoint).name} ({problem})")
    if problems:
        raise OutputError(f"Cannot resume {path}: no checkpoint is usable: {'; '.join(problems)}. Nothing was "
                          f"deleted. Restore a good copy into {folder}, or start over with --overwrite.")
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What keeps a Trainer checkpoint from resuming the run exactly, or None: its trainer state must be readable
    and at the step it is named for, and its weights (safetensors headers cover the whole file), optimizer,
    scheduler and random states complete (zip archives whose CRCs match). Sharded layouts (FSDP, DeepSpeed) are
    checked for presence."""
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        return "incomplete, no trainer_state.json (its save was interrupted)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"trainer_state.json is unreadable ({e})"
    step = checkpoint.name.rpartition("-")[2]
    if not isinstance(state, dict) or str(state.get("global_step")) != step:
        return f"trainer_state.json is at step {state.get('global_step') if isinstance(state, dict) else '?'}, " \
               f"not {step}"
    sharded = [p.name for p in checkpoint.iterdir() if p.is_dir() and any(p.iterdir())]
    weights = [name for name in WEIGHTS if (checkpoint / name).is_file()]
    if not weights and not sharded:
        return "no model weights"
    for name in weights:
        problem = weights_problem(checkpoint, name)
        if problem:
            return problem
    if not sharded:
        for name in ("optimizer.pt", "scheduler.pt"):
            if not (checkpoint / name).is_file():
                return f"no {name} (the run would go on with a fresh one)"
    for file in sorted(checkpoint.glob("*.pt")) + sorted(checkpoint.glob("*.pth")):
        problem = archive_problem(file)
        if problem:
            return problem
    return None


def weights_problem(checkpoint: Path, name: str) -> str | None:
    if name.endswith(".bin"):
        return archive_problem(checkpoint / name)
    if name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads((checkpoint / name).read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{name} is unreadable ({e})"
        for shard in shards:
            if not (checkpoint / shard).is_file():
                return f"{shard}, listed in {name}, is missing"
            problem = weights_problem(checkpoint, shard)
            if problem:
                return problem
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(checkpoint / name), "pt") as f:  # checks that the header covers the whole file
            f.keys()
    except (OSError, SafetensorError) as e:
        return f"{name} is damaged ({str(e).strip().splitlines()[0]})"
    return None


def archive_problem(file: Path) -> str | None:
    """torch.save writes zip archives: a truncated one has no central directory, a damaged member a bad CRC."""
    import zipfile

    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as e:
        return f"{file.name} is damaged ({e})"
    return f"{file.name} is damaged (bad CRC in {bad})" if bad else None


# ---------------------------------------------------------------- writes that fail: a full disk, a read-only one


def is_write_failure(error: BaseException) -> bool:
    """An OSError, or torch.save's RuntimeError when its zip writer fails (a full disk: "unexpected pos")."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and any(
        mark in str(error) for mark in ("PytorchStreamWriter", "inline_container", "file write failed")))


def write_failure(what: str, path: Path, error: BaseException, run_path: Path) -> str:
    """The one line for a checkpoint or final save that could not be written (disk full, read-only, ...)."""
    reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
    try:
        last = usable_checkpoint(run_path, lambda _: None)
    except OutputError:  # none of them is usable
        last = None
    return (f"Could not write {what} {path}: {reason} ({free_space(path)} free there). The checkpoints before it "
            f"are intact (last: {last or 'none'}). Make room (or make it writable) and run the same command with "
            f"--resume.")


@contextlib.contextmanager
def final_write(run: RunDir):
    """The final save's writes: one that fails (disk full, read-only) stops the run with `write_failure`'s line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not is_write_failure(e):
            raise
        raise RunError(write_failure("the final model to", run.path, e, run.path)) from None


def free_space(path: Path) -> str:
    for folder in [path, *path.parents]:
        if folder.exists():
            free = shutil.disk_usage(folder).free
            return f"{free / 1e9:.1f} GB" if free >= 1e8 else f"{free / 1e6:.1f} MB"
    return "unknown"


# ---------------------------------------------------------------- one run at a time in an output directory


def lock_path(output_dir: Path) -> Path:
    """Beside OUTPUT_DIR, not in it: --overwrite moves the old directory aside while the new run holds the lock."""
    return output_dir.parent / f".{output_dir.name}.llmkit-lock"


@contextlib.contextmanager
def output_lock(output_dir: str):
    """Hold OUTPUT_DIR for this run: a second run on it (--resume, --overwrite, or a fresh one) is refused at once.

    An exclusive `fcntl.flock` on a file beside the directory, taken by the main process: the kernel releases it
    on any exit, kill -9 included, so a lock left by a dead run is taken over (and said so). The file names the
    holder (pid, host, start time) for the refusal message; a clean exit removes it."""
    from llmkit.console import is_main_process, log, warn

    if not is_main_process():
        yield
        return
    import socket

    path = Path(output_dir).expanduser().absolute()
    lock = lock_path(path)
    created = [p for p in [lock.parent, *lock.parent.parents] if not p.exists()]
    fd = locked(lock, path)
    if fd is None:
        warn(f"the filesystem of {lock.parent} has no file locks: a second run on {path} would not be stopped")
        yield
        return
    try:
        previous = os.read(fd, 500).decode("utf-8", "replace").strip()
        if previous:
            log(f"the run that held {path} ({previous}) ended without releasing it and is gone; taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        yield
    finally:
        try:  # removed while still held: a run that opens it next finds it gone and makes its own (see above)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
        finally:
            os.close(fd)
        for folder in created:  # made only to hold the lock, and still empty: nothing was written
            with contextlib.suppress(OSError):
                folder.rmdir()


def locked(lock: Path, path: Path) -> int | None:
    """A descriptor of `lock` holding its exclusive flock (None: the filesystem has no locks); held by another
    run: refused, naming the holder."""
    import errno
    import fcntl

    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"Cannot create the lock file {lock} of --output-dir '{path}': {e.strerror or e}. "
                              f"Choose an --output-dir in a writable folder.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 500).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise OutputError(f"'{path}' is in use by a run that is still going ({holder}). Wait for it to finish or "
                              f"stop it, or choose another --output-dir.") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            return None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file between our open and flock: take the new one


def holds_output_dir(recipe: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a recipe's `run(cfg, ...)`: it holds `output_lock(cfg.output_dir)` while it runs."""

    @functools.wraps(recipe)
    def run(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        with output_lock(cfg.output_dir):
            return recipe(cfg, *args, **kwargs)

    return run


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


def confusion_plot(matrix: Any, labels: list[str], path: Path, title: str) -> None:
    """A confusion matrix (rows: true labels, columns: predictions) as a PNG heat map with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(matrix)
    n = len(labels)
    size = min(16.0, 3.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=100)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    short = [label if len(label) <= 18 else label[:17] + "…" for label in labels]
    ax.set_xticks(range(n), short, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:  # counts stay legible
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:g}", ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(*, title: str, summary: str, data: str, model: dict[str, Any], changed: dict[str, Any],
               metrics: dict[str, Any], usage: str, command: str = "pretrain", base_model: str | None = None,
               pipeline_tag: str = "fill-mask", datasets: list[str] | None = None) -> str:
    """README.md of a run: YAML front matter the Hub indexes (`huggingface_hub.ModelCardData`), then what was
    trained on what, how, how well, and how to use it."""
    from huggingface_hub import ModelCard, ModelCardData

    from llmkit.data import is_local

    hub_datasets = [d for d in datasets or [] if not is_local(d)]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, tags=["llmkit", command],
        base_model=base_model if base_model and not is_local(base_model) else None,
        datasets=hub_datasets or None,
        metrics=[k for k, v in metrics.items() if isinstance(v, float) and k in KNOWN_METRICS] or None)
    lines = [f"# {title}", "", summary, "", "## Data", "", data, "", "## Model", ""]
    lines += [f"- {k}: {v:,}" if isinstance(v, int) else f"- {k}: {v}" for k, v in model.items() if v is not None]
    lines += ["", "## Settings that differ from the defaults", ""]
    lines += [f"- `{k}`: `{v}`" for k, v in changed.items()] or ["- none"]
    lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v:,} |")
    lines += ["", "## Use", "", "```python", usage.strip(), "```", "",
              f"The full configuration is in `llmkit.yaml`; rerun it with `llmkit {command} llmkit.yaml`.", ""]
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)))


# Metric ids the Hub knows, among the keys of metrics.json.
KNOWN_METRICS = {"accuracy", "perplexity", "f1_macro", "f1_micro", "precision_macro", "recall_macro", "roc_auc",
                 "mse", "pearson", "spearman"}


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


# ---------------------------------------------------------------- prediction files (predict, finetune)

PREDICTION_SUFFIXES = (".csv", ".tsv", ".jsonl")


def check_predictions_path(output: str) -> None:
    path = Path(output).expanduser()
    if path.suffix.lower() not in PREDICTION_SUFFIXES:
        raise OutputError(f"--output '{output}' must end in {', '.join(PREDICTION_SUFFIXES)} (the format follows the "
                          f"suffix).")
    if path.is_dir():
        raise OutputError(f"--output '{output}' is a directory. Give a file path.")
    if not path.parent.is_dir():
        raise OutputError(f"The folder of --output '{output}' does not exist. Create it first.")


def prediction_row(record: dict[str, Any]) -> dict[str, Any]:
    """A prediction as one table row: text, [text_pair], [gold], label, score (multi-label: ';'-joined)."""
    row = {k: record[k] for k in ("text", "text_pair", "gold") if k in record}
    if "labels" in record:
        row["label"] = ";".join(record["labels"])
        row["score"] = ";".join(f"{record['scores'][n]:.4f}" for n in record["labels"])
    else:
        if "label" in record:
            row["label"] = record["label"]
        row["score"] = record["score"]
    return row


def write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    """CSV/TSV (one row per text, see `prediction_row`) or JSON Lines (full records), by the file's suffix."""
    import csv

    path = path.expanduser()
    with path.open("w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".jsonl":
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        rows = [prediction_row(r) for r in records]
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["text", "label", "score"],
                                delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)

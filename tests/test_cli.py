"""CLI wiring: help, start-up cost, recipes, exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from llmkit import config
from llmkit.cli import app

runner = CliRunner()


def test_help_does_not_import_torch_or_transformers():
    code = ("import sys; from llmkit.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize("argv, phrase", [
    (["pretrain", "--data", "missing.txt"], "does not exist"),
    (["pretrain", "--max-steps", "-5"], "must be positive, or -1"),
    (["finetune", "--data", "missing.csv", "--model", "m"], "does not exist"),
    (["prepare", "--data", "missing.txt", "-o", "out"], "does not exist"),
])
def test_bad_input_fails_fast_without_importing_torch(tmp_path, argv, phrase):
    """Paths, formats, config keys and values are checked before torch or transformers are imported."""
    code = ("import sys, time\nfrom llmkit.cli import app\nstart = time.perf_counter()\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules]\n"
            "print('EXIT', code, 'HEAVY', heavy, 'SECONDS', round(time.perf_counter() - start, 3), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert "EXIT 2 HEAVY []" in result.stderr, result.stderr
    assert phrase in result.stderr.splitlines()[0]


def test_a_misspelt_training_setting_fails_before_anything_is_written(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llmkit", "pretrain", "-o", "run", "--set",
                             "training.learnig_rate=1e-4"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == ("llmkit: error: Unknown setting 'training.learnig_rate': not a "
                                             "TrainingArguments field. Did you mean 'learning_rate'?")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["prepare", "pretrain", "finetune", "fill-mask", "predict"])
def test_every_command_help_has_examples(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert f"llmkit {command}" in result.output


def test_recipes_ls_show_cp(tmp_path):
    result = runner.invoke(app, ["recipes", "ls"])
    assert result.exit_code == 0
    for name in config.recipe_names():
        assert name in result.output
    shown = runner.invoke(app, ["recipes", "show", "cpu-quick"])
    assert shown.exit_code == 0 and shown.output.startswith("# llmkit pretrain cpu-quick")
    copied = runner.invoke(app, ["recipes", "cp", "cpu-quick", str(tmp_path)])
    assert copied.exit_code == 0
    assert (tmp_path / "cpu-quick.yaml").read_text() == config.recipe_path("cpu-quick").read_text()
    again = runner.invoke(app, ["recipes", "cp", "cpu-quick", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_unknown_recipe_exit_2_with_suggestion():
    result = runner.invoke(app, ["recipes", "show", "cpu-quik"])
    assert result.exit_code == 2
    assert "Did you mean 'cpu-quick'?" in result.output


def test_unknown_set_key_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["pretrain", "-o", str(tmp_path / "run"), "--set", "training.learnin_rate=1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("llmkit: error: Unknown setting 'training.learnin_rate'")
    assert "Did you mean 'learning_rate'?" in lines[0]
    assert not (tmp_path / "run").exists()


def test_env_prints_plan():
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0
    for word in ("versions:", "precision:", "placement:", "accelerate:"):
        assert word in result.output
    import torch

    expected = "sdpa" if torch.cuda.is_available() else "eager"
    assert f"attention:  {expected} for training" in result.output


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "llmkit", "--version"], capture_output=True, text=True, check=True)
    from llmkit import __version__

    assert out.stdout.strip() == __version__

"""The transformers / accelerate internals that llmkit.hf_compat relies on still exist in the installed versions.

If one of these fails after an upgrade, fix llmkit/hf_compat.py: it is the only place that touches them."""

from __future__ import annotations

import inspect
from pathlib import Path

from llmkit import config, hf_compat


def test_trainer_internals_llmkit_uses_exist(tmp_path):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert hasattr(args, "_n_gpu") and args.n_gpu == args._n_gpu  # n_gpu is the property over it
    hf_compat.use_one_gpu(args)
    assert args.n_gpu == 1
    params = list(inspect.signature(Trainer.evaluation_loop).parameters)
    assert "metric_key_prefix" in params
    assert hf_compat.metric_key_prefix(("dl", "desc", None, None, "test"), {}) == "test"
    assert hf_compat.metric_key_prefix(("dl", "desc"), {"metric_key_prefix": "dev"}) == "dev"
    assert hf_compat.metric_key_prefix(("dl", "desc"), {}) == "eval"
    assert "_train_batch_size" in inspect.getsource(Trainer.__init__)
    assert "_get_train_sampler" in dict(inspect.getmembers(Trainer))


def test_accelerate_reads_mixed_precision_from_the_environment(monkeypatch):
    import accelerate.state

    source = Path(inspect.getsourcefile(accelerate.state)).read_text()
    assert hf_compat.MIXED_PRECISION_ENV in source
    monkeypatch.setenv(hf_compat.MIXED_PRECISION_ENV, "fp16")
    assert hf_compat.set_launch_precision("bf16") == "fp16"
    import os

    assert os.environ[hf_compat.MIXED_PRECISION_ENV] == "bf16"


def test_training_fields_read_from_source_equal_the_dataclass():
    import dataclasses
    import typing

    from transformers import TrainingArguments

    real = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    assert set(config.training_fields()) == real
    hints = typing.get_type_hints(TrainingArguments)
    for name in ("learning_rate", "max_steps", "bf16", "eval_strategy", "warmup_steps"):
        simple = config.SIMPLE_TYPES.get(config.training_fields()[name].replace(" | None", "").split(" | ")[0])
        assert simple is None or simple in (typing.get_args(hints[name]) or (hints[name],)), name

"""Typed, strict run configuration.

A run's configuration is built from layers, each overriding the one before:
defaults < recipe YAML < command-line flags < ``--set key=value``.
Unknown keys and wrong types fail at once, naming the key and the closest valid one.
The ``training`` section is passed to ``transformers.TrainingArguments`` untouched (its keys are
checked against ``TrainingArguments`` when the run starts), so Hugging Face's documentation stays true.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from llmkit.errors import ConfigError, did_you_mean

RECIPES_DIR = Path(__file__).parent / "recipes"  # also at the repository root as recipes/

# Size presets per architecture: (layers, hidden, FFN width); heads = hidden / 64.
_BERT_SHAPES = {"tiny": (2, 128, 512), "mini": (4, 256, 1024), "small": (4, 512, 2048), "medium": (8, 512, 2048),
                "base": (12, 768, 3072), "large": (24, 1024, 4096)}  # the published BERT miniatures, base, large
ARCHS: dict[str, dict[str, tuple[int, int, int]]] = {
    "bert": _BERT_SHAPES,
    "roberta": _BERT_SHAPES,  # RoBERTa-base/large have BERT's shapes
    "deberta-v2": _BERT_SHAPES,  # DeBERTa-v3-base/large too
    "distilbert": {k: _BERT_SHAPES[k] for k in ("tiny", "mini", "small")} | {"base": (6, 768, 3072)},
    # ModernBERT-base 22 x 768 (GeGLU FFN 1,152), -large 28 x 1,024 (2,624); smaller ones keep its FFN ratio 1.5
    "modernbert": {"tiny": (2, 128, 192), "mini": (4, 256, 384), "small": (4, 512, 768), "medium": (8, 512, 768),
                   "base": (22, 768, 1152), "large": (28, 1024, 2624)},
}
SIZES = {name: shape[:2] for name, shape in _BERT_SHAPES.items()}  # BERT's (layers, hidden)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # files, folders or a `datasets` name; empty: built-in corpus
    eval: list[str] = field(default_factory=list)  # held-out data; empty: split `eval_fraction` off `train`
    dataset_config: str | None = None  # `datasets` configuration name (hub datasets only)
    train_split: str = "train"
    eval_split: str | None = None  # a split of the same `datasets` name to evaluate on
    text_column: str | None = None  # None: auto-detect (text, sentence, content, ...)
    text_pair_column: str | None = None
    label_column: str | None = None
    # .txt documents: blank-line-separated paragraphs if the file has blank lines, else lines (auto); or forced
    txt_unit: Literal["auto", "paragraph", "line"] = "auto"
    streaming: bool = False  # read sources through `datasets` streaming (no download or Arrow conversion first)
    max_seq_length: int = 128
    packing: bool = True  # pretrain: pack texts into full blocks; False: one example per text, truncated
    eval_fraction: float = 0.05  # pretrain: documents held out by a seeded hash of their text
    split_seed: int = 0  # the held-out split's seed (not the training seed: reruns share prepared data)
    max_eval_samples: int | None = 2000
    encoding_errors: Literal["strict", "replace"] = "strict"
    num_proc: int | None = None  # tokenization processes per rank; None: every core (shared by a node's ranks)
    tokenizer_sample_bytes: int = 100_000_000  # from scratch: train the tokenizer on at most this much text
    cache_dir: str | None = None  # prepared-data cache; None: ~/.cache/llmkit (or $LLMKIT_CACHE)

    def problems(self) -> list[str]:
        out = []
        if not 8 <= self.max_seq_length <= 65536:
            out.append(f"data.max_seq_length must be between 8 and 65536, got {self.max_seq_length}")
        if not 0.0 < self.eval_fraction < 1.0:
            out.append(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            out.append(f"data.max_eval_samples must be >= 1, got {self.max_eval_samples}")
        if self.num_proc is not None and self.num_proc < 1:
            out.append(f"data.num_proc must be >= 1, got {self.num_proc}")
        if self.tokenizer_sample_bytes < 1_000_000:
            out.append(f"data.tokenizer_sample_bytes must be at least 1000000 (1 MB), got {self.tokenizer_sample_bytes}")
        return out


@dataclass
class ModelConfig:
    name: str | None = None  # checkpoint to start from (local path or hub name); None: from scratch
    tokenizer: str | None = None  # None: the model's, or one trained on the corpus when from scratch
    arch: str = "bert"  # from scratch: the model family (ARCHS); a checkpoint keeps its own
    size: str = "mini"  # from scratch: a preset of the family (ARCHS[arch])
    vocab_size: int = 16000  # for a tokenizer trained on the corpus
    lowercase: bool = True
    trust_remote_code: bool = False
    attn_implementation: str = "auto"  # auto: eager when training on a CPU (faster there), sdpa elsewhere
    dropout: float | None = None  # every dropout probability of the model; None: the checkpoint's (presets: 0.1)
    cheap_dropout: bool = True  # training on a CPU: dropout masks from 15 random bits per element (llmkit.dropout)
    keep_freed_memory: bool = True  # training on a CPU: large tensors reuse the heap (devices.keep_freed_memory)
    config_overrides: str | None = None  # from scratch: "key=value,..." applied to the preset's config

    def problems(self) -> list[str]:
        out = []
        if self.arch not in ARCHS:
            hint = did_you_mean(self.arch, ARCHS).strip()
            out.append(f"model.arch (--arch) must be one of {', '.join(ARCHS)}, got '{self.arch}'"
                       + (f" ({hint[0].lower()}{hint[1:]})" if hint else ""))
        elif self.size not in ARCHS[self.arch]:
            out.append(f"model.size (--size) '{self.size}' is not a preset of {self.arch}; its presets are "
                       f"{', '.join(f'{k} {l}x{h}' for k, (l, h, _) in ARCHS[self.arch].items())}")
        if self.name and self.arch != "bert":
            out.append(f"--arch {self.arch} is for a model built from scratch; --model '{self.name}' keeps its own "
                       f"family (drop --arch)")
        if not 100 <= self.vocab_size <= 1_000_000:
            out.append(f"model.vocab_size must be between 100 and 1000000, got {self.vocab_size}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            out.append(f"model.dropout must be in [0, 1), got {self.dropout}")
        return out


@dataclass
class MLMConfig:
    probability: float = 0.15
    mask_replace_prob: float = 0.8  # of the selected tokens: replaced by [MASK] ...
    random_replace_prob: float = 0.1  # ... by a random token; the rest are kept
    whole_word_mask: bool = False
    sparse_head: bool = True  # run the vocabulary head only at masked positions (same loss, much faster)
    chunked_loss: bool = True  # cross-entropy a cache-sized chunk of rows at a time (same loss, no fp32 logits)

    def problems(self) -> list[str]:
        out = []
        if not 0.0 < self.probability < 1.0:
            out.append(f"mlm.probability must be in (0, 1), got {self.probability}")
        for name in ("mask_replace_prob", "random_replace_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                out.append(f"mlm.{name} must be in [0, 1], got {value}")
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-9:
            out.append("mlm.mask_replace_prob + mlm.random_replace_prob must not exceed 1")
        return out


@dataclass
class FinetuneOptions:
    problem_type: Literal["auto", "single_label", "multi_label", "regression"] = "auto"
    unseen_eval_labels: Literal["error", "drop"] = "error"  # eval labels absent from training
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    metric: str | None = None  # metric that picks the best model; None: f1_macro (regression: mse; tokens: f1)
    # training.train_sampling_strategy=group_by_length: batches of similar length from sorted windows of this many
    # batches (None: the Trainer's rule, up to 50), in each window's order (the Trainer's) or shuffled over the epoch
    group_window: int | None = None
    shuffle_batches: bool = False
    # token-classification: tags per word (auto: for .conll/.iob/.bio files and list-of-words columns)
    task: Literal["auto", "text-classification", "token-classification"] = "auto"
    label_all_pieces: bool = False  # tokens: every piece of a word gets its tag (default: the first; run_ner's)
    # tokens: overlap of the windows a sentence longer than data.max_seq_length is cut into; None: a quarter of
    # data.max_seq_length, at most 32
    stride: int | None = None

    def problems(self) -> list[str]:
        out = []
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            out.append(f"finetune.early_stopping_patience must be >= 1, got {self.early_stopping_patience}")
        if self.group_window is not None and self.group_window < 1:
            out.append(f"finetune.group_window must be >= 1 (batches per length-sorted window), got {self.group_window}")
        if self.stride is not None and self.stride < 0:
            out.append(f"finetune.stride must be >= 0, got {self.stride}")
        return out


@dataclass
class RunConfig:
    command: Literal["pretrain", "finetune"] = "pretrain"
    output_dir: str = "runs/pretrain"
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mlm: MLMConfig = field(default_factory=MLMConfig)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    training: dict[str, Any] = field(default_factory=dict)  # passed to TrainingArguments

    def problems(self) -> list[str]:
        out = self.data.problems() + self.model.problems()
        out += self.mlm.problems() if self.command == "pretrain" else self.finetune.problems()
        if self.model.config_overrides and (self.model.name or self.command == "finetune"):
            out.append("model.config_overrides applies to a model built from scratch (pretrain without --model); a "
                       "checkpoint keeps its architecture (its dropout: model.dropout)")
        lr = self.training.get("learning_rate")
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr <= 0:
            out.append(f"training.learning_rate must be > 0, got {lr}")
        steps = self.training.get("max_steps")
        if isinstance(steps, int) and not isinstance(steps, bool) and (steps == 0 or steps < -1):
            out.append(f"training.max_steps (--max-steps) must be positive, or -1 to train for num_train_epochs "
                       f"(--epochs), got {steps}")
        epochs = self.training.get("num_train_epochs")
        if isinstance(epochs, (int, float)) and epochs <= 0:
            out.append(f"training.num_train_epochs must be > 0, got {epochs}")
        batch = self.training.get("per_device_train_batch_size")
        if isinstance(batch, int) and batch < 1:
            out.append(f"training.per_device_train_batch_size must be >= 1, got {batch}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Defaults per command, chosen for a short, useful run on a laptop CPU; recipes and flags override them.
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 64,
        "learning_rate": 5e-4,
        "weight_decay": 0.01,
        "warmup_steps": 0.06,
        "num_train_epochs": 1.0,
        "max_steps": -1,
        "logging_steps": 25,
        "eval_strategy": "steps",
        "eval_steps": 200,
        "save_strategy": "steps",
        "save_steps": 200,
        "save_total_limit": 2,
        "report_to": "none",
    },
    "finetune": {
        # 8, the Trainer's and run_classification.py's own default: at a budget of epochs a larger batch takes
        # fewer optimizer steps, and in short runs on small sets that costs accuracy the plain script keeps
        # (benchmarks/quality.py, 5 seeds: 640 texts of 16 classes, 2 epochs: batch 16 3.0 points below batch 8,
        # 3.5 below the plain script; batch 8 within 0.5 +- 1.1 of it). A larger batch is a --set away.
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 64,
        "learning_rate": 5e-5,
        "weight_decay": 0.01,
        "warmup_steps": 0.1,
        "num_train_epochs": 3.0,
        "max_steps": -1,
        "logging_steps": 25,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "save_total_limit": 2,
        "load_best_model_at_end": True,
        "train_sampling_strategy": "group_by_length",
        "report_to": "none",
    },
}

# Keys llmkit sets itself; a user setting them would break the run directory contract.
RESERVED_TRAINING_KEYS = {"output_dir", "seed", "bf16", "fp16", "push_to_hub", "hub_token"}


def defaults(command: str) -> dict[str, Any]:
    cfg = RunConfig(command=command, output_dir=f"runs/{command}").to_dict()
    cfg["training"] = copy.deepcopy(TRAINING_DEFAULTS[command])
    if command == "finetune":
        cfg["data"]["eval_fraction"] = 0.1
        cfg["data"]["max_eval_samples"] = None
    return cfg


# ---------------------------------------------------------------- recipes


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """A recipe given as a path, or as the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if path.is_dir() and (path / "llmkit.yaml").is_file():
            return path / "llmkit.yaml"
        raise ConfigError(f"Recipe file '{name_or_path}' does not exist. Give a YAML path or one of: "
                          f"{', '.join(recipe_names())}.")
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"No recipe named '{name_or_path}'.{did_you_mean(name_or_path, recipe_names())} "
                      f"Shipped recipes: {', '.join(recipe_names())} (see `llmkit recipes ls`).")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Cannot read recipe '{path}': {e}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"Recipe '{path}' is not valid YAML{where}: {problem}. Fix the YAML syntax.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe '{path}' must be a YAML mapping of settings, found a {type(data).__name__}.")
    return data


# ---------------------------------------------------------------- building


def parse_set(item: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (``key.sub``, value parsed as a YAML scalar/list; typed by the setting it reaches)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. --set training.learning_rate=1e-4), got '{item}'.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "training":
            _merge(base[key], value)
        elif isinstance(value, dict) and key == "training" and isinstance(base.get(key), dict):
            base[key].update(value)
        else:
            base[key] = value


def _dotted_to_nested(key: str, value: Any) -> dict[str, Any]:
    parts = key.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def build(command: str, recipe: str | None = None, flags: dict[str, Any] | None = None,
          sets: list[str] | None = None) -> RunConfig:
    """Resolve defaults < recipe < flags < --set into a validated RunConfig: unknown keys, wrong types and
    invalid values (training.* against TrainingArguments' fields) fail here, before anything heavy is imported."""
    cfg = defaults(command)
    if recipe is not None:
        layer = read_yaml(recipe_path(recipe))
        recipe_command = layer.pop("command", command)
        if recipe_command != command:
            raise ConfigError(f"Recipe '{recipe}' is for `llmkit {recipe_command}`, not `llmkit {command}`. "
                              f"Run `llmkit {recipe_command} {recipe}`.")
        if isinstance(layer.get("data"), dict) and layer["data"].get("cache_dir") is not None:
            # A shared recipe must not pick where llmkit writes outside the run directory.
            raise ConfigError(f"Recipe '{recipe}' sets data.cache_dir; recipes may not choose paths outside the run "
                              f"directory. Pass --set data.cache_dir=DIR or set LLMKIT_CACHE instead.")
        _merge(cfg, layer)
    for key, value in (flags or {}).items():
        if value is not None:
            _merge(cfg, _dotted_to_nested(key, value))
    for item in sets or []:
        _merge(cfg, _dotted_to_nested(*parse_set(item)))
    cfg["command"] = command
    run = _construct(RunConfig, cfg, "")
    check_training_keys(run.training)
    problems = run.problems()
    if problems:
        raise ConfigError("Invalid configuration: " + "; ".join(problems) + ".")
    return run


def _construct(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        kwargs[f.name] = _coerce(values[f.name], hints[f.name], f"{where}{f.name}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"Unknown setting '{where}{unknown[0]}'.{did_you_mean(unknown[0], valid)} Valid keys here: "
                          f"{', '.join(sorted(valid))}.")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, found {value!r}.")
        return _construct(tp, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"'{key}' must be one of {_type_name(tp)}, got {value!r}.{did_you_mean(value, args)}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {value!r}.")
        return [_coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {value!r}.")
    if tp in (int, float):
        number = _number(value)
        if tp is float and number is not None:
            return float(number)
        if tp is int and number is not None and float(number).is_integer():
            return int(number)
        raise ConfigError(f"'{key}' must be {'an integer' if tp is int else 'a number'}, got {value!r}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{key}' must be a string, got {value!r}.")
    return value


def _number(value: Any) -> int | float | None:
    """A number from a number, or from a string such as "1e-4" (YAML 1.1 reads exponents without a dot as text)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def check_training_keys(training: dict[str, Any]) -> None:
    """Every ``training`` key must be a TrainingArguments field that llmkit does not manage itself, and
    simple-typed values (numbers, booleans, strings) must have the field's type; numbers are coerced in place.
    Keys outside `COMMON_TRAINING_FIELDS` are looked up in TrainingArguments itself, which imports transformers
    (1-3 s), still before anything is written."""
    fields = COMMON_TRAINING_FIELDS if set(training) <= set(COMMON_TRAINING_FIELDS) else training_fields()
    for key in list(training):
        if key in RESERVED_TRAINING_KEYS or key == "logging_dir":
            hint = {"output_dir": "--output-dir", "seed": "--set seed=N", "logging_dir": "--output-dir",
                    "bf16": "--set precision=bf16", "fp16": "--set precision=fp16"}.get(key, "llmkit's own option")
            raise ConfigError(f"'training.{key}' is set by llmkit; use {hint} instead.")
        if key not in fields:
            raise ConfigError(f"Unknown setting 'training.{key}': not a TrainingArguments field."
                              f"{did_you_mean(key, fields)}")
        simple = SIMPLE_TYPES.get(fields[key].replace(" | None", "").replace("None | ", ""))
        kinds = [k.strip() for k in fields[key].split("|")]
        if training[key] is False and "str" in kinds and "bool" not in kinds:
            training[key] = "no"  # YAML 1.1 reads `eval_strategy: no` as false
        elif simple is not None and not (training[key] is None and "None" in fields[key]):
            training[key] = _coerce(training[key], simple, f"training.{key}")


SIMPLE_TYPES = {"int": int, "float": float, "bool": bool, "str": str}

# The TrainingArguments fields that llmkit's defaults, flags and recipes set, with their types as
# `training_fields()` gives them (tests/test_config.py compares the two): the usual settings are checked
# without importing transformers, so a bad value fails in a fraction of a second.
COMMON_TRAINING_FIELDS = {
    "per_device_train_batch_size": "int", "per_device_eval_batch_size": "int", "gradient_accumulation_steps": "int",
    "learning_rate": "float", "weight_decay": "float", "warmup_steps": "float", "max_grad_norm": "float",
    "adam_beta1": "float", "adam_beta2": "float", "adam_epsilon": "float",
    "lr_scheduler_type": "SchedulerType | str", "lr_scheduler_kwargs": "dict | str | None",
    "num_train_epochs": "float", "max_steps": "int", "logging_steps": "float",
    "eval_strategy": "IntervalStrategy | str", "eval_steps": "float | None", "save_strategy": "SaveStrategy | str",
    "save_steps": "float", "save_total_limit": "int | None", "load_best_model_at_end": "bool",
    "metric_for_best_model": "str | None", "greater_is_better": "bool | None", "train_sampling_strategy": "str",
    "dataloader_num_workers": "int", "data_seed": "int | None", "report_to": "None | str | list[str]",
}


@functools.cache
def training_fields() -> dict[str, str]:
    """TrainingArguments' init fields and their types, written as in its source ("int | None", "dict | str")."""
    from transformers import TrainingArguments

    return {f.name: type_name(f.type) for f in dataclasses.fields(TrainingArguments) if f.init}


def type_name(tp: Any) -> str:
    """`int | None` for int | None (or Optional[int]), a class's name for a class, the written form otherwise."""
    if isinstance(tp, str):
        return tp
    if tp is type(None):
        return "None"
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(type_name(arg) for arg in typing.get_args(tp))
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def dump(run: RunConfig) -> str:
    return yaml.safe_dump(run.to_dict(), sort_keys=False, allow_unicode=True)

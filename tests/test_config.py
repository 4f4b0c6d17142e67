"""Config: precedence, strictness, types, ranges, recipes."""

from __future__ import annotations

import pytest
import yaml

from llmkit import config
from llmkit.errors import ConfigError


def test_defaults_build_and_validate():
    cfg = config.build("pretrain")
    assert cfg.command == "pretrain"
    assert cfg.model.size == "mini"
    assert cfg.training["learning_rate"] == 5e-4
    assert cfg.data.max_seq_length == 128


def test_precedence_defaults_recipe_flags_set(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"command": "pretrain", "model": {"size": "tiny", "vocab_size": 500},
                                      "training": {"max_steps": 10, "learning_rate": 1e-3}}))
    cfg = config.build("pretrain", str(recipe), {"training.max_steps": 20, "model.size": None},
                       ["training.max_steps=30", "model.vocab_size=700"])
    assert cfg.model.size == "tiny"  # recipe beats default; a None flag does not override
    assert cfg.training["learning_rate"] == 1e-3  # recipe
    assert cfg.training["max_steps"] == 30  # --set beats the flag (20) which beats the recipe (10)
    assert cfg.model.vocab_size == 700
    assert cfg.training["weight_decay"] == 0.01  # defaults survive a partial training section


def test_unknown_set_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"Unknown setting 'model\.sise'\. Did you mean 'size'\?"):
        config.build("pretrain", sets=["model.sise=tiny"])
    with pytest.raises(ConfigError, match=r"Unknown setting 'daat'\. Did you mean 'data'\?"):
        config.build("pretrain", sets=["daat.max_seq_length=64"])


def test_unknown_training_key_suggests_trainingarguments_field():
    with pytest.raises(ConfigError, match=r"training\.learning_rat.*Did you mean 'learning_rate'"):
        config.check_training_keys({"learning_rat": 1e-4})
    with pytest.raises(ConfigError, match="--output-dir"):
        config.check_training_keys({"output_dir": "x"})
    config.check_training_keys({"learning_rate": 1e-4, "gradient_accumulation_steps": 2})


@pytest.mark.parametrize("item, message", [
    ("mlm.probability=1.5", r"mlm\.probability must be in \(0, 1\), got 1\.5"),
    ("mlm.probability=0", r"mlm\.probability must be in \(0, 1\)"),
    ("training.learning_rate=-1e-4", r"training\.learning_rate must be > 0"),
    ("data.max_seq_length=abc", r"'data\.max_seq_length' must be an integer, got 'abc'"),
    ("model.size=huge", r"'huge' is not a preset of bert; its presets are tiny 2x128, mini 4x256"),
    ("data.packing=maybe", r"'data\.packing' must be true or false"),
    ("precision=fp8", r"'precision' must be one of"),
    ("model.dropout=1", r"model\.dropout must be in \[0, 1\), got 1"),
])
def test_wrong_type_or_range_is_refused(item, message):
    with pytest.raises(ConfigError, match=message):
        config.build("pretrain", sets=[item])


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        config.build("pretrain", sets=["mlm.probability=2", "data.eval_fraction=0"])
    assert "mlm.probability" in str(info.value) and "data.eval_fraction" in str(info.value)


def test_set_parses_scientific_notation_and_lists():
    # YAML 1.1 reads 1e-4 as a string; the setting's type (here TrainingArguments.learning_rate: float) decides
    cfg = config.build("pretrain", sets=["training.learning_rate=1e-4", "mlm.probability=3e-1",
                                         "training.max_steps=1e3"])
    assert cfg.training["learning_rate"] == 1e-4 and cfg.mlm.probability == 0.3 and cfg.training["max_steps"] == 1000
    assert config.parse_set("data.train=[a.txt, b.txt]") == ("data.train", ["a.txt", "b.txt"])
    assert config.parse_set("training.report_to=none") == ("training.report_to", "none")
    with pytest.raises(ConfigError, match="key=value"):
        config.parse_set("training.learning_rate")


def test_malformed_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: pretrain\nmodel: {size: tiny\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        config.build("pretrain", str(bad))


def test_recipe_for_other_command_is_refused(tmp_path):
    recipe = tmp_path / "ft.yaml"
    recipe.write_text("command: finetune\n")
    with pytest.raises(ConfigError, match="llmkit finetune"):
        config.build("pretrain", str(recipe))


def test_unknown_recipe_name_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'cpu-quick'"):
        config.recipe_path("cpu-quik")


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("command: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.build("pretrain", str(evil))


@pytest.mark.parametrize("name", config.recipe_names())
def test_every_shipped_recipe_loads(name):
    path = config.recipe_path(name)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# llmkit "), "a recipe starts with the command that runs it"
    command = yaml.safe_load(path.read_text())["command"]
    cfg = config.build(command, name)
    config.check_training_keys(cfg.training)
    assert f"llmkit {command}" in first


def test_resolved_config_round_trips(tmp_path):
    cfg = config.build("pretrain", sets=["model.size=tiny", "training.max_steps=7"])
    saved = tmp_path / "llmkit.yaml"
    saved.write_text(config.dump(cfg))
    again = config.build("pretrain", str(saved))
    assert again == cfg


def test_recipe_cannot_choose_a_cache_outside_the_run(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"command: pretrain\ndata:\n  cache_dir: {tmp_path / 'elsewhere'}\n")
    with pytest.raises(ConfigError, match="recipes may not choose paths outside"):
        config.build("pretrain", str(recipe))
    cfg = config.build("pretrain", sets=[f"data.cache_dir={tmp_path / 'mine'}"])  # the user's own choice
    assert cfg.data.cache_dir == str(tmp_path / "mine")


def test_training_fields_are_the_dataclass_init_fields_with_their_types():
    import dataclasses
    from typing import Optional, Union

    from transformers import TrainingArguments

    fields = config.training_fields()
    assert set(fields) == {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    assert "_n_gpu" not in fields  # init=False
    assert (fields["learning_rate"], fields["max_steps"], fields["bf16"]) == ("float", "int", "bool")
    assert fields["lr_scheduler_kwargs"] == "dict | str | None"
    assert {k: fields[k] for k in config.COMMON_TRAINING_FIELDS} == config.COMMON_TRAINING_FIELDS
    assert config.type_name(Optional[int]) == config.type_name(int | None) == "int | None"
    assert config.type_name(Union[dict[str, int], str]) == "dict[str, int] | str"


def test_typed_training_values_are_coerced_and_checked():
    training = {"learning_rate": "1e-4", "max_steps": 10.0, "warmup_steps": 0.1, "torch_compile": None}
    with pytest.raises(ConfigError, match=r"'training\.torch_compile' must be true or false, got None"):
        config.check_training_keys(training)
    with pytest.raises(ConfigError, match=r"'training\.bf16' is set by llmkit; use --set precision=bf16"):
        config.check_training_keys({"bf16": True, **training})
    training["torch_compile"] = False
    config.check_training_keys(training)
    assert training == {"learning_rate": 1e-4, "max_steps": 10, "warmup_steps": 0.1, "torch_compile": False}
    with pytest.raises(ConfigError, match=r"'training\.max_steps' must be an integer, got 2\.5"):
        config.check_training_keys({"max_steps": 2.5})


def test_yaml_no_means_the_string_no_for_strategy_fields():
    training = {"eval_strategy": False, "save_strategy": "steps"}
    config.check_training_keys(training)
    assert training == {"eval_strategy": "no", "save_strategy": "steps"}


def test_config_overrides_only_for_a_model_built_from_scratch():
    cfg = config.build("pretrain", sets=["model.config_overrides=initializer_range=0.05,num_hidden_layers=2"])
    assert cfg.model.config_overrides == "initializer_range=0.05,num_hidden_layers=2"
    with pytest.raises(ConfigError, match=r"config_overrides applies to a model built from scratch"):
        config.build("pretrain", flags={"model.name": "bert-base-uncased"},
                     sets=["model.config_overrides=initializer_range=0.05"])


def test_dropout_and_config_overrides_reach_the_model():
    from transformers import BertConfig

    from llmkit import modeling
    from llmkit.errors import ConfigError as Error
    from tests.conftest import toy_corpus

    tokenizer = modeling.train_tokenizer(toy_corpus(50), vocab_size=150, lowercase=True)
    model = modeling.build_mlm("bert", "tiny", tokenizer, 64, dropout=0.0, config_overrides="initializer_range=0.05")
    assert model.config.hidden_dropout_prob == 0.0 and model.config.attention_probs_dropout_prob == 0.0
    assert model.config.initializer_range == 0.05
    assert abs(float(model.bert.encoder.layer[0].attention.self.query.weight.detach().std()) - 0.05) < 0.005
    with pytest.raises(Error, match=r"key nope isn't in the original config dict.*initializer_range=0\.05"):
        modeling.build_mlm("bert", "tiny", tokenizer, 64, config_overrides="nope=1")
    checkpoint = BertConfig(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, classifier_dropout=None)
    modeling.set_dropout(checkpoint, 0.3)
    assert checkpoint.hidden_dropout_prob == 0.3 and checkpoint.attention_probs_dropout_prob == 0.3
    assert checkpoint.classifier_dropout is None  # unset: follows hidden_dropout_prob
    written_as_int = BertConfig(hidden_dropout_prob=0, attention_probs_dropout_prob=0)  # "0" in a config.json
    modeling.set_dropout(written_as_int, 0.2)
    assert written_as_int.hidden_dropout_prob == 0.2 and written_as_int.attention_probs_dropout_prob == 0.2


def test_attention_auto_is_eager_for_cpu_training_and_sdpa_elsewhere():
    from llmkit.modeling import resolve_attention

    assert config.build("pretrain").model.attn_implementation == "auto"
    assert resolve_attention("auto", "cpu")[0] == "eager"
    assert resolve_attention("auto", "mps", "bert")[0] == resolve_attention("auto", "mps")[0] == "sdpa"
    assert resolve_attention("auto", "mps", "deberta-v2")[0] == "eager"  # no fused kernel in transformers
    assert resolve_attention("sdpa", "cpu")[0] == "sdpa" and resolve_attention("eager", "cuda")[0] == "eager"

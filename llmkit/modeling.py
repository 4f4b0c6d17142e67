"""Tokenizers and models: load a checkpoint, or train a WordPiece tokenizer and build a BERT of a preset size."""

from __future__ import annotations

import contextlib

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llmkit import hf_compat
from llmkit.config import ARCHS
from llmkit.errors import ConfigError, ModelError


def _hub_or_path_error(name: str, what: str, error: Exception) -> ModelError:
    path = Path(name).expanduser()
    if path.exists():
        found = sorted(p.name for p in path.iterdir())[:8] if path.is_dir() else [path.name]
        return ModelError(f"'{name}' is not a {what}: expected a folder with config.json and weights (as written by "
                          f"save_pretrained), found {', '.join(found) or 'an empty folder'}. Give a model folder or a hub name.")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelError(f"Cannot load {what} '{name}': no such local folder, and as a hub name it failed ({first[:200]}). "
                      f"Check the path, or the model name and your network.")


def check_model_path(name: str) -> None:
    """Fail before any heavy loading when a local path is clearly not a model folder."""
    path = Path(name).expanduser()
    if path.exists() and not (path.is_dir() and (path / "config.json").is_file()):
        raise _hub_or_path_error(name, "model", FileNotFoundError(name))
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelError(f"Model folder '{name}' does not exist. Check the path (relative paths start from {Path.cwd()}).")


def check_model(cfg: Any) -> None:
    """The checkpoint to start from, checked before anything heavy loads: a model folder (or a hub name), with
    enough positions for data.max_seq_length. A local config.json is read as JSON (no transformers import)."""
    if not cfg.model.name:
        return
    check_model_path(cfg.model.name)
    path = Path(cfg.model.name).expanduser() / "config.json"
    if path.is_file():
        from llmkit import ort

        try:
            config = ort.read_config(path.parent)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise ModelError(f"'{path}' is not a valid config.json ({e}). Give a model folder written by "
                             f"save_pretrained.") from None
    else:
        config = read_config(cfg.model.name, cfg.model.trust_remote_code)
    positions = max_positions(config)
    if positions is not None and cfg.data.max_seq_length > positions:
        raise ConfigError(f"data.max_seq_length {cfg.data.max_seq_length} exceeds the {positions} positions of "
                          f"'{cfg.model.name}'. Pass --max-seq-length {positions} or less.")


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - many loaders, one meaning: not a usable tokenizer
        raise _hub_or_path_error(name, "tokenizer", e) from None


def train_tokenizer(texts: Sequence[str], vocab_size: int, lowercase: bool) -> Any:
    """A BERT WordPiece tokenizer trained on the corpus (BERT normalisation: CJK characters split one per token)."""
    from transformers import BertTokenizer

    base = BertTokenizer(do_lower_case=lowercase, tokenize_chinese_chars=True)
    return base.train_new_from_iterator(texts, vocab_size=vocab_size, show_progress=False)


def arch_config(arch: str, size: str, tokenizer: Any, max_seq_length: int) -> Any:
    """The config of a new masked LM of family `arch` and preset `size` (config.ARCHS), sized to the tokenizer,
    with the tokenizer's special token ids (a family's defaults, e.g. ModernBERT's 50,281-50,283, would point
    past a small vocabulary)."""
    from transformers import AutoConfig

    layers, hidden, ffn = ARCHS[arch][size]
    heads = max(1, hidden // 64)
    pad, cls, sep = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id
    common = dict(vocab_size=len(tokenizer), pad_token_id=pad)
    if arch == "distilbert":
        return AutoConfig.for_model(arch, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn,
                                    max_position_embeddings=max(512, max_seq_length), **common)
    shape = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn)
    if arch == "modernbert":  # rotary positions: no table to size; every third layer attends globally
        return AutoConfig.for_model(arch, **shape, **common, max_position_embeddings=max(8192, max_seq_length),
                                    bos_token_id=cls, cls_token_id=cls, eos_token_id=sep, sep_token_id=sep)
    if arch == "roberta":  # positions start after the padding index
        return AutoConfig.for_model(arch, **shape, **common, max_position_embeddings=max(512, max_seq_length) + pad + 1,
                                    bos_token_id=cls, eos_token_id=sep, type_vocab_size=1)
    if arch == "deberta-v2":  # DeBERTa-v3's attention: relative positions, no absolute position input
        return AutoConfig.for_model(arch, **shape, **common, max_position_embeddings=max(512, max_seq_length),
                                    relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
                                    position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
                                    type_vocab_size=0)
    return AutoConfig.for_model(arch, **shape, **common, max_position_embeddings=max(512, max_seq_length))


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "hidden_dropout", "classifier_dropout", "embedding_dropout", "mlp_dropout")


def set_dropout(config: Any, dropout: float | None) -> Any:
    """Set every dropout probability the config has (BERT, RoBERTa, DistilBERT, ... spellings); None: keep."""
    if dropout is not None:
        for key in DROPOUT_KEYS:
            value = getattr(config, key, None)  # unset (None) ones fall back to one of these
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(config, key, dropout)
    return config


def build_mlm(arch: str, size: str, tokenizer: Any, max_seq_length: int, attn_implementation: str = "sdpa",
              dropout: float | None = None, config_overrides: str | None = None) -> Any:
    """A new masked LM of family `arch` and preset `size`; `config_overrides` in run_mlm.py's format."""
    from transformers import AutoModelForMaskedLM

    config = set_dropout(arch_config(arch, size, tokenizer, max_seq_length), dropout)
    if config_overrides:
        try:  # the format of run_mlm.py's --config_overrides
            config.update_from_string(config_overrides)
        except ValueError as e:
            raise ConfigError(f"model.config_overrides='{config_overrides}' could not be applied ({e}). Expected "
                              f"'key=value,...' with {type(config).__name__} keys, e.g. "
                              f"'initializer_range=0.05'.") from None
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and len(layer_types) != config.num_hidden_layers:  # derived at init (ModernBERT)
            config = type(config)(**{**config.to_dict(), "layer_types": None})
    return AutoModelForMaskedLM.from_config(config, attn_implementation=attn_implementation)


def read_config(name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise _hub_or_path_error(name, "model", e) from None


def load_pretrained(auto_class: str, name: str, config: Any, attention: str, trust_remote_code: bool = False,
                    **kwargs: Any) -> tuple[Any, dict[str, Any], str | None]:
    """(model, loading info, note): `transformers.<auto_class>.from_pretrained` with weights in fp32 (training and
    inference cast deliberately, whatever dtype the checkpoint was saved in) and the attention implementation
    asked for; a model type without it loads with its default, and the note says so."""
    import torch
    import transformers

    loader = getattr(transformers, auto_class)
    common = dict(config=config, trust_remote_code=trust_remote_code, dtype=torch.float32, output_loading_info=True,
                  **kwargs)
    note = None
    try:
        try:
            model, info = loader.from_pretrained(name, attn_implementation=attention, **common)
        except ValueError as e:
            if "attn_implementation" not in str(e) and attention not in str(e).lower():
                raise
            model, info = loader.from_pretrained(name, **common)
            note = f"{config.model_type} does not support {attention} attention; using its default"
    except ValueError as e:
        raise ModelError(f"'{name}' ({config.model_type}) cannot be loaded as {auto_class[9:]}: "
                         f"{str(e).splitlines()[0][:200]}. Use an encoder checkpoint (BERT, RoBERTa, ...).") from None
    except OSError as e:
        raise _hub_or_path_error(name, "model", e) from None
    return model, info, note


def load_mlm(name: str, trust_remote_code: bool = False, attn_implementation: str = "sdpa",
             dropout: float | None = None) -> tuple[Any, list[str]]:
    """A masked-LM model to train from a checkpoint; one without an MLM head gets a fresh one. Returns the model
    and notes to show (a fresh head, an attention fallback)."""
    config = set_dropout(read_config(name, trust_remote_code), dropout)
    notes = []
    if not any(a.endswith("ForMaskedLM") or a.endswith("ForPreTraining") for a in (config.architectures or [])):
        notes.append(f"'{name}' has no masked-LM head ({', '.join(config.architectures or ['no architecture'])}); "
                     f"a fresh MLM head is added and trained.")
    model, _, note = load_pretrained("AutoModelForMaskedLM", name, config, attn_implementation, trust_remote_code)
    return model, notes + ([note] if note else [])


def load_trained_mlm(name: str, config: Any = None, trust_remote_code: bool = False,
                     attn_implementation: str = "sdpa") -> Any:
    """A masked-LM model for inference: unlike `load_mlm`, a checkpoint without a trained MLM head is an error
    (a fresh head would predict random tokens)."""
    config = config if config is not None else read_config(name, trust_remote_code)
    model, info, _ = load_pretrained("AutoModelForMaskedLM", name, config, attn_implementation, trust_remote_code)
    prefix = f"{model.base_model_prefix}."
    head_missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix))
    if head_missing:
        found = ", ".join(config.architectures or ["no architecture"])
        raise ModelError(f"'{name}' has no trained masked-LM head ({found}; missing {head_missing[0]}"
                         f"{f' and {len(head_missing) - 1} more' if len(head_missing) > 1 else ''}). Use a masked-LM "
                         f"checkpoint, e.g. an llmkit pretrain run.")
    return model.eval()


def check_vocab(model: Any, tokenizer: Any, model_name: str, tokenizer_name: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(f"Tokenizer '{tokenizer_name}' has {len(tokenizer)} tokens but model '{model_name}' has only "
                         f"{rows} embedding rows. Use the model's own tokenizer (omit --tokenizer).")


def max_positions(config: Any) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    if value is None:
        return None
    # RoBERTa-style models reserve padding_idx + 1 positions.
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        value -= (getattr(config, "pad_token_id", None) or 0) + 1
    return int(value)


# ---------------------------------------------------------------- attention


def resolve_attention(requested: str, device_type: str, model_type: str | None = None) -> tuple[str, str]:
    """(implementation, why): the one place where a run's attention kernel is chosen, for a model built from
    scratch and for a checkpoint alike (`model_type`: the family, e.g. from its config.json).

    `auto`: eager for CPU training, where it beats SDPA's CPU kernels for BERT-sized heads and short sequences
    (benchmarks/pretrain.py, variant llmkit-sdpa). On a CUDA GPU: FlashAttention-2 when transformers finds a
    usable flash-attn (`is_flash_attn_2_available`: installed, a supported version, CUDA) and the family supports
    it; else, for ModernBERT, flex_attention (its sliding-window layers get a block mask, where SDPA would
    materialise an S x S mask per local layer); else SDPA; eager for a family that has none of these.
    Other values as given."""
    if requested != "auto":
        return requested, "model.attn_implementation"
    if device_type == "cpu":
        return "eager", "fastest for training on a CPU"
    supports = attention_support(model_type)
    if device_type == "cuda":
        from transformers.utils import is_flash_attn_2_available

        if supports.get("flash") and is_flash_attn_2_available():
            return "flash_attention_2", "flash-attn is installed and usable"
        if model_type == "modernbert" and supports.get("flex"):
            return "flex_attention", "no usable flash-attn; block masks for the sliding-window layers (no S x S mask)"
    if supports.get("sdpa", True):
        return "sdpa", "PyTorch's fused attention" + (" (no usable flash-attn)" if device_type == "cuda" else "")
    return "eager", f"{model_type} has no fused attention in transformers"


def attention_support(model_type: str | None) -> dict[str, bool]:
    """Which attention implementations transformers' masked-LM class of `model_type` supports (its flags)."""
    if not model_type:
        return {}
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_class = getattr(transformers, MODEL_FOR_MASKED_LM_MAPPING_NAMES.get(model_type, ""), None)
    if model_class is None:
        return {}
    return hf_compat.attention_flags(model_class)


def model_type(cfg: Any) -> str:
    """The family a run trains: the checkpoint's (its config.json) or the one built from scratch (--arch)."""
    if not cfg.model.name:
        return cfg.model.arch
    return read_config(cfg.model.name, cfg.model.trust_remote_code).model_type


def fsdp_units(model: Any) -> list[str]:
    """The classes FSDP wraps one unit each: those of the model's `_no_split_modules` that repeat once per layer
    (the encoder layers; the embeddings stay with the tied head in the root unit), or, for a family that names
    none, the class of its layer list's items."""
    import torch

    layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layers", None)
    counts: dict[str, int] = {}
    for module in model.modules():
        counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    named = [name for name in hf_compat.no_split_modules(model) if counts.get(name) == layers]
    if named:
        return named
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers and
             len({type(x) for x in m}) == 1]
    if not lists:
        raise ModelError(f"{type(model).__name__} names no layer class in _no_split_modules and has no list of "
                         f"{layers} layers: set fsdp_transformer_layer_cls_to_wrap in the Accelerate config.")
    return [type(lists[0][0]).__name__]


def describe(model: Any) -> dict[str, Any]:
    cfg = model.config
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "heads": getattr(cfg, "num_attention_heads", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
    }


# ---------------------------------------------------------------- masked-positions-only MLM head

# Attributes that hold the per-token prediction head of common masked-LM classes (BERT, RoBERTa, ALBERT,
# DistilBERT); gathering their input at masked positions is exact because these heads act per token.
MLM_HEAD_ATTRIBUTES = ("cls", "lm_head", "predictions", "vocab_transform", "head")  # "head": ModernBERT's,
# before its decoder: gathering the head's input gathers the decoder's too


class MaskedPositionsHead:
    """Makes an MLM model's prediction head run only on the positions selected for the current step.

    The vocabulary projection dominates the cost of small BERTs; computing it only where labels exist
    (~15% of tokens) gives the same loss and gradients. A forward pre-hook (torch's public module hook) gathers
    the head's input, so the model's parameters, methods, state dict, `save_pretrained` and distributed wrappers
    are untouched.
    """

    def __init__(self, model: Any):
        import torch

        self.head = None
        for name in MLM_HEAD_ATTRIBUTES:
            module = getattr(model, name, None)
            if isinstance(module, torch.nn.Module):
                self.head = module
                break
        self.positions: Any = None
        if self.head is not None:
            self.head.register_forward_pre_hook(self._gather, with_kwargs=True)

    def _gather(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        import torch

        if self.positions is None:
            return None
        positions = self.positions  # flat indices (no sync), or a boolean mask

        def gathered(hidden_states: Any) -> Any:
            return hidden_states[positions] if positions.dtype == torch.bool else \
                hidden_states.flatten(0, -2).index_select(0, positions)

        if args:
            return (gathered(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": gathered(kwargs["hidden_states"])}

    @property
    def available(self) -> bool:
        return self.head is not None

    @contextlib.contextmanager
    def at(self, positions: Any) -> Iterator[None]:
        """The head runs only at `positions` (flat indices or a boolean mask) inside the block; everywhere after."""
        self.positions = positions
        try:
            yield
        finally:
            self.positions = None

"""Quick predictions without importing transformers: BERT and ModernBERT in plain torch.

A cold `llmkit fill-mask` on a small model spends most of its time importing transformers' model code (~1.8 s:
it pulls in torch.distributed.tensor, torch._dynamo and scipy), more than loading the weights and predicting.
For the two families llmkit trains, a local checkpoint as transformers 5 saves it (safetensors weights and a
tokenizer.json written with `"backend": "tokenizers"`) is read here directly: the same weights, the same tokenizer
(the `tokenizers` pipeline transformers itself runs), the same computation at every position: the masked-LM
(fill-mask) and the sequence classifier (predict) of each family. Two things differ in how, not what: the masked-LM's
last layer runs its feed-forward part only where logits are asked for, and the rotary step is written in fewer
passes. tests/test_lite.py holds this path and
transformers' to the same logits (1e-5 in fp32), encodings and predictions, for each option handled here.

Anything else loads through transformers, with a reason (`unsupported`): another family or head, a config option
not handled here (relative positions, a rope scaling, ...), a hub name, .bin or sharded weights, a tokenizer
saved another way, or weights that do not match the config key for key.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

WEIGHTS = "model.safetensors"
ARCHITECTURES = {("bert", "fill-mask"): "BertForMaskedLM", ("modernbert", "fill-mask"): "ModernBertForMaskedLM",
                 ("bert", "text-classification"): "BertForSequenceClassification",
                 ("modernbert", "text-classification"): "ModernBertForSequenceClassification"}
ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh")
TOKENIZER_CLASSES = ("BertTokenizer", "BertTokenizerFast", "TokenizersBackend", "PreTrainedTokenizerFast")
NO_LIMIT = int(1e30)  # transformers' "no maximum length" model_max_length


# ---------------------------------------------------------------- what is handled here


def unsupported(name: str | Path, task: str = "fill-mask") -> str | None:
    """None when `name` loads here (cheap: reads two JSON files and the weights' header); else why not."""
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file():
        return "not a local model folder"
    if not (folder / WEIGHTS).is_file():
        return f"no single {WEIGHTS}"
    try:
        config = read_config(folder)
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"unreadable config ({type(e).__name__})"
    try:
        return _config_problem(config, task) or _tokenizer_problem(folder, tokenizer_config) or \
            _weights_problem(folder, config)
    except Exception as e:  # noqa: BLE001 - whatever does not fit here loads through transformers, which explains
        return f"not readable here ({type(e).__name__}: {e})"


def _config_problem(c: Any, task: str) -> str | None:
    family = getattr(c, "model_type", None)
    wanted = ARCHITECTURES.get((family, task))
    if wanted is None or list(getattr(c, "architectures", None) or []) != [wanted]:
        known = [a for (_, t), a in ARCHITECTURES.items() if t == task]
        return f"{family} {getattr(c, 'architectures', None)} is not one of {', '.join(known)}"
    if task == "text-classification" and getattr(c, "problem_type", None) not in (
            None, "single_label_classification", "multi_label_classification", "regression"):
        return f"problem_type {c.problem_type}"
    if family == "bert":
        if (getattr(c, "position_embedding_type", None) or "absolute") != "absolute":
            return f"position_embedding_type {c.position_embedding_type}"
        if getattr(c, "is_decoder", False) or getattr(c, "add_cross_attention", False):
            return "a BERT decoder"
        if c.hidden_act not in ACTIVATIONS:
            return f"hidden_act {c.hidden_act}"
        return None
    for key in ("hidden_activation", "classifier_activation"):
        if getattr(c, key, "gelu") not in ACTIVATIONS:
            return f"{key} {getattr(c, key)}"
    types = _layer_types(c)
    if len(types) != c.num_hidden_layers or set(types) - {"full_attention", "sliding_attention"}:
        return f"layer_types {types}"
    rope = getattr(c, "rope_parameters", None) or {}
    for kind in set(types):
        params = rope.get(kind) or {}
        if params.get("rope_type", "default") != "default" or "rope_theta" not in params:
            return f"rope_parameters {rope}"
    if getattr(c, "head_dim", None) not in (None, c.hidden_size // c.num_attention_heads):
        return f"head_dim {c.head_dim}"
    if getattr(c, "classifier_pooling", "cls") not in ("cls", "mean"):
        return f"classifier_pooling {c.classifier_pooling}"
    return None


def _tokenizer_problem(folder: Path, config: dict[str, Any]) -> str | None:
    if config.get("backend") != "tokenizers" or not (folder / "tokenizer.json").is_file():
        return "a tokenizer not saved as tokenizer.json by transformers 5"
    if "auto_map" in config:
        return "a tokenizer with remote code"
    if config.get("tokenizer_class") not in TOKENIZER_CLASSES:
        return f"tokenizer_class {config.get('tokenizer_class')}"
    return None


def _weights_problem(folder: Path, config: Any) -> str | None:
    from safetensors import safe_open

    with safe_open(folder / WEIGHTS, "pt") as f:
        found = set(f.keys())
    expected = set(_build(config).state_dict())
    tied = {_tied_key(config)} if _tied_key(config) and getattr(config, "tie_word_embeddings", True) else set()
    missing = expected - found - tied
    extra = found - expected - _ignored(config)
    if missing or extra:
        what = f"missing {sorted(missing)[0]}" if missing else f"unexpected {sorted(extra)[0]}"
        return f"weights do not match the config ({what})"
    return None


def _ignored(config: Any) -> set[str]:
    """Weights a checkpoint may hold that transformers does not load into this architecture either."""
    pooler = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} if _is_mlm(config) else set()
    return pooler | {"bert.embeddings.position_ids"}


def _is_mlm(config: Any) -> bool:
    return config.architectures[0].endswith("ForMaskedLM")


def _tied_key(config: Any) -> str | None:
    """The masked-LM decoder's weight, which a checkpoint leaves out when tied to the input embeddings."""
    if not _is_mlm(config):
        return None
    return "cls.predictions.decoder.weight" if config.model_type == "bert" else "decoder.weight"


# ---------------------------------------------------------------- loading


class Config(SimpleNamespace):
    """config.json as attributes (what `read_config` returns)."""


def is_lite(config: Any) -> bool:
    return isinstance(config, Config)


def read_config(folder: str | Path) -> Any:
    """config.json as attributes, with transformers' defaults for the keys the families here read."""
    raw = json.loads((Path(folder).expanduser() / "config.json").read_text(encoding="utf-8"))
    if isinstance(raw.get("id2label"), dict):  # JSON keys are strings; transformers' config gives ints
        raw["id2label"] = {int(k): v for k, v in raw["id2label"].items()}
    raw.setdefault("problem_type", None)
    defaults = {"bert": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu",
                             max_position_embeddings=512),
                "modernbert": dict(vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                                   intermediate_size=1152, norm_eps=1e-5, norm_bias=False, attention_bias=False,
                                   mlp_bias=False, classifier_bias=False, decoder_bias=True, hidden_activation="gelu",
                                   classifier_activation="gelu", local_attention=128, max_position_embeddings=8192)}
    config = Config(**{**defaults.get(raw.get("model_type"), {}), "tie_word_embeddings": True, **raw})
    config.num_labels = len(getattr(config, "id2label", None) or {0: 0, 1: 1})  # transformers: 2 without labels
    return config


def load_model(folder: str | Path, config: Any) -> Any:
    """The model of a folder that `unsupported` accepted for its task, weights in fp32, in eval mode."""
    from safetensors.torch import load_file

    ignored = _ignored(config)
    weights = {k: v.float() for k, v in load_file(Path(folder).expanduser() / WEIGHTS).items() if k not in ignored}
    model = _build(config)
    if _tied_key(config) and _tied_key(config) not in weights:
        embeddings = "bert.embeddings.word_embeddings.weight" if config.model_type == "bert" else \
            "model.embeddings.tok_embeddings.weight"
        weights[_tied_key(config)] = weights[embeddings]
    model.load_state_dict(weights, strict=True, assign=True)
    if config.model_type == "modernbert":
        model.model.rotary = _rotary_tables(config)
    return model.eval().requires_grad_(False)


def cast_for_autocast(model: Any, precision: str) -> None:
    """Store the encoder's (and a classifier's) linear weights in the autocast dtype of `precision`: what autocast
    casts them to on every forward pass, done once (the same results; less work and memory per batch). A
    masked-LM head stays fp32: fill-mask runs it outside autocast."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return
    head = {"cls", "head", "decoder"} if _is_mlm(model.config) else set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[0] not in head:
            module.to(dtype)


def _build(config: Any) -> Any:
    """The model of `config` on the meta device (no memory, no initialisation)."""
    return _models()[config.architectures[0]](config)


class Tokenizer:
    """The parts of a transformers fast tokenizer that inference uses, read from tokenizer.json and
    tokenizer_config.json as `TokenizersBackend` reads them."""

    is_fast = True
    SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer as Backend

        folder = Path(folder).expanduser()
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.backend_tokenizer = Backend.from_file(str(folder / "tokenizer.json"))
        model_type = read_config(folder).model_type if (folder / "config.json").is_file() else None
        self.model_input_names = ["input_ids", "attention_mask"]  # as AutoTokenizer gives them per family
        if model_type == "bert":
            self.model_input_names.insert(1, "token_type_ids")
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.model_max_length = int(config.get("model_max_length", NO_LIMIT))
        self.truncation_side = config.get("truncation_side", "right")
        names = {}
        for key in self.SPECIAL:
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            setattr(self, key, value)
            setattr(self, f"{key}_id", self.backend_tokenizer.token_to_id(value) if value is not None else None)
            if value is not None:
                names[value] = None
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        for value in (extra.values() if isinstance(extra, dict) else extra):
            names[value.get("content") if isinstance(value, dict) else value] = None
        self.all_special_tokens = list(names)
        self.all_special_ids = [i for i in map(self.backend_tokenizer.token_to_id, names) if i is not None]

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self.backend_tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def __call__(self, text: str | list[str], text_pair: str | list[str] | None = None, add_special_tokens: bool = True,
                 truncation: bool = False, max_length: int | None = None, **_: Any) -> dict[str, Any]:
        """input_ids, (token_type_ids,) attention_mask as lists, like a fast tokenizer's call without padding."""
        single = isinstance(text, str)
        texts, pairs = ([text], [text_pair] if text_pair is not None else None) if single else (text, text_pair)
        backend = self.backend_tokenizer
        if truncation:
            from llmkit import inference

            backend = inference.backend(self, max_length or self.model_max_length)
        inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
        encodings = backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encodings]}
        if "token_type_ids" in self.model_input_names:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        out["attention_mask"] = [e.attention_mask for e in encodings]
        return {k: v[0] for k, v in out.items()} if single else out

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.batch_decode([ids], skip_special_tokens)[0]

    def batch_decode(self, sequences: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        from llmkit import inference

        return inference.decode(self, sequences, skip_special_tokens)

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                              (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(before, after)
        return text


# ---------------------------------------------------------------- the models

# Module names follow transformers' classes, so the checkpoint's state dict loads key for key (strict).


def _activation(name: str) -> Any:
    import torch

    def gelu_new(x):  # transformers' NewGELUActivation, written out as it is there
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

    functional = torch.nn.functional
    return {"gelu": functional.gelu, "relu": functional.relu, "silu": functional.silu, "swish": functional.silu,
            "gelu_new": gelu_new, "gelu_pytorch_tanh": lambda x: functional.gelu(x, approximate="tanh")}[name]


class _Output(SimpleNamespace):
    logits: Any


_MODELS: dict[str, Any] = {}


def _models() -> dict[str, Any]:
    """The model classes by architecture name, defined on first use (importing this module does not import torch)."""
    if not _MODELS:
        _MODELS.update(_define_models())
    return _MODELS


def _define_models() -> dict[str, Any]:
    import torch
    from torch import nn
    from torch.nn import functional as F

    # Modules are made on the meta device and not initialised: the checkpoint's weights are assigned after. (Random
    # initialisation, even of meta tensors, would import torch's compiler: ~0.9 s of a cold start.)
    def uninitialised(cls):
        return functools.partial(type(cls.__name__, (cls,), {"reset_parameters": lambda self: None}), device="meta")

    Linear, Embedding, LayerNorm = uninitialised(nn.Linear), uninitialised(nn.Embedding), uninitialised(nn.LayerNorm)

    def key_padding(attention_mask: Any) -> Any:
        return attention_mask.bool()[:, None, None, :]

    # ---- BERT (transformers' BertForMaskedLM, SDPA attention)

    class BertEmbeddings(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.word_embeddings = Embedding(c.vocab_size, c.hidden_size)
            self.position_embeddings = Embedding(c.max_position_embeddings, c.hidden_size)
            self.token_type_embeddings = Embedding(c.type_vocab_size, c.hidden_size)
            self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

        def forward(self, input_ids, token_type_ids):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
            x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
            return self.LayerNorm(x + self.position_embeddings(positions))

    class BertSelfAttention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.heads, self.head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
            self.query = Linear(c.hidden_size, c.hidden_size)
            self.key = Linear(c.hidden_size, c.hidden_size)
            self.value = Linear(c.hidden_size, c.hidden_size)

        def forward(self, x, mask):
            shape = (x.shape[0], x.shape[1], self.heads, self.head_dim)
            q, k, v = (layer(x).view(shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
            return out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)

    class BertDenseNorm(nn.Module):  # BertSelfOutput and BertOutput: dense, residual, LayerNorm
        def __init__(self, c, width):
            super().__init__()
            self.dense = Linear(width, c.hidden_size)
            self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

        def forward(self, x, residual):
            return self.LayerNorm(self.dense(x) + residual)

    class BertAttention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.self = BertSelfAttention(c)
            self.output = BertDenseNorm(c, c.hidden_size)

        def forward(self, x, mask):
            return self.output(self.self(x, mask), x)

    class BertIntermediate(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dense = Linear(c.hidden_size, c.intermediate_size)
            self.act = _activation(c.hidden_act)

        def forward(self, x):
            return self.act(self.dense(x))

    class BertLayer(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.attention = BertAttention(c)
            self.intermediate = BertIntermediate(c)
            self.output = BertDenseNorm(c, c.intermediate_size)

        def forward(self, x, mask, keep=None):
            x = self.attention(x, mask)
            if keep is not None:  # only these positions' outputs are wanted: the rest of the layer runs on them
                x = x[keep]
            return self.output(self.intermediate(x), x)

    class BertEncoder(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.num_hidden_layers))

    class BertPooler(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dense = Linear(c.hidden_size, c.hidden_size)

        def forward(self, x):
            return torch.tanh(self.dense(x[:, 0]))

    class BertModel(nn.Module):
        def __init__(self, c, pooler: bool):
            super().__init__()
            self.embeddings = BertEmbeddings(c)
            self.encoder = BertEncoder(c)
            if pooler:
                self.pooler = BertPooler(c)

        def forward(self, input_ids, attention_mask, token_type_ids, positions=None):
            x = self.embeddings(input_ids, token_type_ids)
            mask = key_padding(attention_mask)
            for i, layer in enumerate(self.encoder.layer):
                x = layer(x, mask, positions if i == len(self.encoder.layer) - 1 else None)
            return x

    class BertTransform(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dense = Linear(c.hidden_size, c.hidden_size)
            self.act = _activation(c.hidden_act)
            self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

        def forward(self, x):
            return self.LayerNorm(self.act(self.dense(x)))

    class BertPredictions(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.transform = BertTransform(c)
            self.decoder = Linear(c.hidden_size, c.vocab_size, bias=False)
            self.bias = nn.Parameter(torch.zeros(c.vocab_size, device="meta"))

        def forward(self, x):
            return F.linear(self.transform(x), self.decoder.weight, self.bias)

    class BertHead(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.predictions = BertPredictions(c)

        def forward(self, x):
            return self.predictions(x)

    class BertForMaskedLM(nn.Module):
        """transformers' BertForMaskedLM for inference (absolute positions, SDPA attention)."""

        def __init__(self, c):
            super().__init__()
            self.config = c
            self.bert = BertModel(c, pooler=False)
            self.cls = BertHead(c)

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, positions=None):
            """`positions` ([batch, length] booleans): logits only there, [n, vocabulary] in row-major order; the
            last layer then runs its feed-forward part on those positions alone."""
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            return _Output(logits=self.cls(self.bert(input_ids, attention_mask, token_type_ids, positions)))

    class BertForSequenceClassification(nn.Module):
        """transformers' BertForSequenceClassification for inference: the pooled [CLS] state, then the classifier."""

        def __init__(self, c):
            super().__init__()
            self.config = c
            self.bert = BertModel(c, pooler=True)
            self.classifier = Linear(c.hidden_size, c.num_labels)

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            pooled = self.bert.pooler(self.bert(input_ids, attention_mask, token_type_ids))
            return _Output(logits=self.classifier(pooled))

    # ---- ModernBERT (transformers' ModernBertForMaskedLM, SDPA attention)

    def norm(c):
        return LayerNorm(c.hidden_size, eps=c.norm_eps, bias=c.norm_bias)

    class ModernBertEmbeddings(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.tok_embeddings = Embedding(c.vocab_size, c.hidden_size)
            self.norm = norm(c)

        def forward(self, input_ids):
            return self.norm(self.tok_embeddings(input_ids))

    class ModernBertAttention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.heads, self.head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
            self.Wqkv = Linear(c.hidden_size, 3 * c.hidden_size, bias=c.attention_bias)
            self.Wo = Linear(c.hidden_size, c.hidden_size, bias=c.attention_bias)

        def forward(self, x, mask, cos, sin):
            batch, length = x.shape[:2]
            qkv = self.Wqkv(x).view(batch, length, 3, self.heads, self.head_dim)
            q, k = rotate(qkv[:, :, :2], cos, sin).permute(2, 0, 3, 1, 4)  # queries and keys in one pass
            v = qkv[:, :, 2].transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
            return self.Wo(out.transpose(1, 2).reshape(batch, length, -1))

    def rotate(x, cos, sin):
        """transformers' apply_rotary_pos_emb on [batch, length, ..., head_dim], in fp32, with its two halves written
        out and each rounded straight into the output: the same products and sums (bit for bit) in fewer passes."""
        half, out = x.shape[-1] // 2, torch.empty_like(x)
        x = x.float()
        x1, x2 = x[..., :half], x[..., half:]
        torch.sub(x1 * cos, x2 * sin, out=out[..., :half])
        torch.add(x2 * cos, x1 * sin, out=out[..., half:])
        return out

    class ModernBertMLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.Wi = Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
            self.act = _activation(c.hidden_activation)
            self.Wo = Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

        def forward(self, x):
            value, gate = self.Wi(x).chunk(2, dim=-1)
            return self.Wo(self.act(value) * gate)

    class ModernBertEncoderLayer(nn.Module):
        def __init__(self, c, index):
            super().__init__()
            self.attn_norm = norm(c) if index > 0 else nn.Identity()
            self.attn = ModernBertAttention(c)
            self.mlp_norm = norm(c)
            self.mlp = ModernBertMLP(c)
            self.kind = _layer_types(c)[index]

        def forward(self, x, masks, rotary, keep=None):
            attention = self.attn(self.attn_norm(x), masks[self.kind], *rotary[self.kind])
            x = x + attention if keep is None else x[keep] + attention[keep]  # keep: only these positions wanted
            return x + self.mlp(self.mlp_norm(x))

    class ModernBertModel(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.config = c
            self.embeddings = ModernBertEmbeddings(c)
            self.layers = nn.ModuleList(ModernBertEncoderLayer(c, i) for i in range(c.num_hidden_layers))
            self.final_norm = norm(c)
            self.rotary: dict[str, Any] = {}  # layer type -> inverse frequencies (`_rotary_tables`)

        def forward(self, input_ids, attention_mask, positions=None):
            x = self.embeddings(input_ids)
            length = input_ids.shape[1]
            padding = key_padding(attention_mask)
            masks = {"full_attention": padding}
            if "sliding_attention" in self.rotary:
                index = torch.arange(length, device=x.device)
                near = (index[:, None] - index[None, :]).abs() <= self.config.local_attention // 2
                masks["sliding_attention"] = padding & near[None, None]
            where = torch.arange(length, device=x.device)[None].float()
            rotary = {}
            for kind, inverse in self.rotary.items():  # one half of transformers' cat((angles, angles))
                angles = where[..., None] * inverse.to(x.device)
                cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # as transformers: in x's dtype
                rotary[kind] = (cos[0, :, None, None].float(), sin[0, :, None, None].float())  # [length, 1, 1, half]
            for i, layer in enumerate(self.layers):
                x = layer(x, masks, rotary, positions if i == len(self.layers) - 1 else None)
            return self.final_norm(x)

    class ModernBertPredictionHead(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dense = Linear(c.hidden_size, c.hidden_size, bias=c.classifier_bias)
            self.act = _activation(c.classifier_activation)
            self.norm = norm(c)

        def forward(self, x):
            return self.norm(self.act(self.dense(x)))

    class ModernBertForMaskedLM(nn.Module):
        """transformers' ModernBertForMaskedLM for inference (SDPA attention, local and global layers)."""

        def __init__(self, c):
            super().__init__()
            self.config = c
            self.model = ModernBertModel(c)
            self.head = ModernBertPredictionHead(c)
            self.decoder = Linear(c.hidden_size, c.vocab_size, bias=c.decoder_bias)

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, positions=None):
            """`positions`: as BertForMaskedLM's."""
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            return _Output(logits=self.decoder(self.head(self.model(input_ids, attention_mask, positions))))

    class ModernBertForSequenceClassification(nn.Module):
        """transformers' ModernBertForSequenceClassification for inference: [CLS] or mean pooling, the prediction
        head, then the classifier."""

        def __init__(self, c):
            super().__init__()
            self.config = c
            self.model = ModernBertModel(c)
            self.head = ModernBertPredictionHead(c)
            self.classifier = Linear(c.hidden_size, c.num_labels)

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            hidden = self.model(input_ids, attention_mask)
            if getattr(self.config, "classifier_pooling", "cls") == "cls":
                hidden = hidden[:, 0]
            else:
                hidden = (hidden * attention_mask.unsqueeze(-1)).sum(dim=1) / attention_mask.sum(dim=1, keepdim=True)
            return _Output(logits=self.classifier(self.head(hidden)))

    return {cls.__name__: cls for cls in (BertForMaskedLM, BertForSequenceClassification, ModernBertForMaskedLM,
                                          ModernBertForSequenceClassification)}


def _layer_types(c: Any) -> list[str]:
    types = getattr(c, "layer_types", None)
    if types is None:  # older configs: every n-th layer global, starting with the first
        every = getattr(c, "global_attn_every_n_layers", 3)
        types = ["sliding_attention" if i % every else "full_attention" for i in range(c.num_hidden_layers)]
    return list(types)


def _rotary_tables(c: Any) -> dict[str, Any]:
    """Inverse rotary frequencies per layer type, as transformers' compute_default_rope_parameters makes them."""
    import torch

    dim = c.hidden_size // c.num_attention_heads
    return {kind: 1.0 / (c.rope_parameters[kind]["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            for kind in sorted(set(_layer_types(c)))}

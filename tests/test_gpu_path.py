"""The GPU path, checked on the CPU: the attention choice per family and device, flex_attention against eager,
FSDP's wrap units per family, and the attention mask of packed batches."""

from __future__ import annotations

import pytest
import torch

from llmkit import modeling

FAMILIES = ("bert", "modernbert", "roberta", "deberta-v2", "distilbert")


@pytest.mark.parametrize("flash", [False, True], ids=["no-flash-attn", "flash-attn"])
def test_attention_choice_table(monkeypatch, flash):
    """family x device x installed kernels -> implementation (the table in the README)."""
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: flash)
    table = {(family, device): modeling.resolve_attention("auto", device, family)[0]
             for family in FAMILIES for device in ("cpu", "cuda")}
    fast = "flash_attention_2" if flash else None
    assert table == {
        ("bert", "cpu"): "eager", ("bert", "cuda"): fast or "sdpa",
        ("modernbert", "cpu"): "eager", ("modernbert", "cuda"): fast or "flex_attention",
        ("roberta", "cpu"): "eager", ("roberta", "cuda"): fast or "sdpa",
        ("deberta-v2", "cpu"): "eager", ("deberta-v2", "cuda"): "eager",  # transformers has no fused kernel for it
        ("distilbert", "cpu"): "eager", ("distilbert", "cuda"): fast or "sdpa",
    }
    assert modeling.resolve_attention("sdpa", "cuda", "modernbert") == ("sdpa", "model.attn_implementation")


def test_a_checkpoint_run_gets_its_familys_attention(tmp_path, monkeypatch):
    """--model runs take the family from the checkpoint's config.json (pretrain and finetune call model_type)."""
    import transformers.utils
    from transformers import ModernBertConfig

    from llmkit import config

    ModernBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64).save_pretrained(tmp_path)
    cfg = config.build("pretrain", None, {"model.name": str(tmp_path)}, None)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert modeling.resolve_attention("auto", "cuda", modeling.model_type(cfg))[0] == "flex_attention"


def tiny_tokenizer():
    from llmkit.modeling import train_tokenizer
    from tests.conftest import toy_corpus

    return train_tokenizer(toy_corpus(100), vocab_size=120, lowercase=True)


def test_flex_attention_equals_eager_for_modernbert_on_cpu(monkeypatch):
    """ModernBERT's global and sliding-window layers under flex_attention (block masks) give eager's outputs,
    padding included. transformers compiles flex_attention with inductor (minutes on this CPU); here it is
    called as PyTorch's own eager flex_attention, which takes the same block masks."""
    import transformers.integrations.flex_attention as hf_flex

    import transformers.masking_utils as hf_masks

    monkeypatch.setattr(hf_flex, "is_torchdynamo_compiling", lambda: True)  # transformers' "no inductor" branch
    build = hf_masks.create_block_mask
    monkeypatch.setattr(hf_masks, "create_block_mask", lambda *a, **k: build(*a, **{**k, "_compile": False}))
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    eager = modeling.build_mlm("modernbert", "tiny", tokenizer, 64, "eager", dropout=0.0,
                               config_overrides="local_attention=8").eval()
    flex = modeling.build_mlm("modernbert", "tiny", tokenizer, 64, "flex_attention", dropout=0.0,
                              config_overrides="local_attention=8").eval()
    flex.load_state_dict(eager.state_dict())
    ids = torch.randint(5, len(tokenizer), (2, 32))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.no_grad():
        expected = eager(input_ids=ids, attention_mask=mask).logits
        got = flex(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp_wraps_one_unit_per_layer_for_every_family(family):
    """accelerate's FSDP2 wrap policy with the classes llmkit derives (modeling.fsdp_units) wraps exactly the
    encoder layers: nothing for most families with a BertLayer name, never the embeddings apart from the head."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    model = modeling.build_mlm(family, "tiny", tiny_tokenizer(), 64, "eager")
    units = modeling.fsdp_units(model)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=units)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(m).__name__ for m in model.modules() if policy(m)]
    layers = getattr(model.config, "num_hidden_layers", None) or model.config.n_layers
    assert len(wrapped) == layers == 2 and set(wrapped) == set(units), wrapped
    assert not any("Embedding" in name for name in wrapped)
    print(f"{family}: {len(wrapped)} units of {units[0]}")


def test_packed_full_batches_carry_no_attention_mask():
    from llmkit.masking import KeyedMasking

    tokenizer = tiny_tokenizer()
    collate = KeyedMasking(tokenizer=tokenizer)
    full = collate([{"input_ids": list(range(5, 21)), "index": i} for i in range(3)])
    assert "attention_mask" not in full  # transformers would check an all-ones mask on the device every step
    ragged = collate([{"input_ids": list(range(5, 21)), "index": 0}, {"input_ids": [5, 6, 7], "index": 1}])
    assert ragged["attention_mask"].tolist()[1] == [1, 1, 1] + [0] * 13


def test_an_fsdp_trainer_wraps_the_models_layers_and_reduces_in_fp32():
    """hf_compat.fsdp_per_layer_units on accelerate's own plugin, as the shipped fsdp.yaml (no class named) and
    bf16 leave it."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin

    from llmkit import hf_compat

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    plugin.set_mixed_precision("bf16")
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16  # accelerate's default
    prepared = []
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), prepare=lambda *o: prepared.extend(o))
    trainer = SimpleNamespace(accelerator=accelerator, is_fsdp_enabled=True)
    hf_compat.fsdp_per_layer_units(trainer, modeling.fsdp_units)
    model = modeling.build_mlm("modernbert", "tiny", tiny_tokenizer(), 64, "eager")
    trainer.accelerator.prepare(model)
    assert prepared == [model] and plugin.transformer_cls_names_to_wrap == ["ModernBertEncoderLayer"]
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)


def test_modernbert_fill_mask_runs_its_decoder_in_fp32_under_bf16(tmp_path):
    """The README's promise for every family: encoder in autocast, the whole vocabulary head (ModernBERT: head and
    its sibling decoder) in fp32."""
    from llmkit import fillmask

    tokenizer = tiny_tokenizer()
    model = modeling.build_mlm("modernbert", "tiny", tokenizer, 64, "eager")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    filler = fillmask.load(tmp_path, device="cpu", precision="bf16", runtime="torch")
    seen = {}
    filler.model.decoder.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype))
    fillmask.fill_mask(filler, ["alpha beta [MASK] delta"], top_k=2)
    assert seen["dtype"] == torch.float32 and "vocabulary head in fp32" in filler.why

"""llmkit.dropout: 15-bit dropout masks on CPUs, and the function mode that routes F.dropout to them."""

import pytest
import torch
import torch.nn.functional as F

from llmkit.dropout import CheapDropout, drop_probability, dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_p_and_scales_the_rest_exactly(dtype):
    torch.manual_seed(0)
    x = torch.rand(1001, 999, dtype=dtype) + 0.5  # odd numel: the last 32-bit draw is half used
    out = dropout(x, 0.1)
    kept = out != 0
    assert out.dtype == dtype and out.shape == x.shape
    dropped = (~kept).flatten().float()
    for share in (dropped, dropped[0::2], dropped[1::2]):  # both 15-bit halves of every 31-bit draw
        assert abs(share.mean().item() - drop_probability(0.1)) < 0.002  # 0.5M draws: sd 0.0004
    scale = 1 / (1 - drop_probability(0.1))
    torch.testing.assert_close(out[kept], (x[kept] * scale).to(dtype))
    assert abs(out.float().mean().item() / x.float().mean().item() - 1) < 0.003
    assert drop_probability(0.1) == 3277 / 32768


def test_gradient_is_the_kept_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    out = dropout(x, 0.25)
    out.sum().backward()
    expected = (out != 0).float() / (1 - drop_probability(0.25))
    torch.testing.assert_close(x.grad, expected)


def test_masks_follow_torch_seed():
    x = torch.ones(4096)
    torch.manual_seed(7)
    first, second = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(7)
    assert torch.equal(dropout(x, 0.5), first) and not torch.equal(first, second)
    assert 0.45 < (first == 0).float().mean().item() < 0.55


def test_mode_routes_training_dropout_on_cpu_only():
    x = torch.randn(8, 16, 32)
    layer = torch.nn.Dropout(0.1)
    torch.manual_seed(3)
    with CheapDropout():
        from_module = layer(x)  # nn.Dropout calls F.dropout
        functional = F.dropout(x, p=0.3, training=True)
        not_training = F.dropout(x, p=0.3, training=False)
        zero = F.dropout(x, p=0.0, training=True)
    torch.manual_seed(3)
    assert torch.equal(from_module, dropout(x, 0.1)) and torch.equal(functional, dropout(x, 0.3))
    assert torch.equal(not_training, x) and torch.equal(zero, x)
    torch.manual_seed(3)
    native = layer(x)  # outside the mode: torch's own masks
    assert not torch.equal(native, from_module)


def test_model_training_step_under_the_mode_is_seeded_and_learns():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)

    def step() -> tuple[float, torch.Tensor]:
        torch.manual_seed(0)
        model = BertForMaskedLM(config)
        model.config._attn_implementation = "eager"  # attention-probability dropout through F.dropout
        model.train()
        ids = torch.randint(5, 100, (4, 20))
        with CheapDropout():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return loss.item(), model.bert.embeddings.word_embeddings.weight.grad.clone()

    (loss_a, grad_a), (loss_b, grad_b) = step(), step()
    assert loss_a == loss_b and torch.equal(grad_a, grad_b) and grad_a.abs().sum() > 0

"""Fold-free outlook attention equals the published unfold/fold path (values and gradients)."""
import pytest
import torch

from vitlab.attention.outlook import (OutlookAttention, neighbourhood_weights, outlook_attention,
                                      outlook_attention_reference)

# (H, W, kernel, padding, stride, heads): the VOLO setting, odd and non-square maps, K=5, stride 3/4,
# an even kernel, and the published stride-1 variant
CASES = [
    (8, 8, 3, 1, 2, 2), (7, 9, 3, 1, 2, 1), (14, 14, 3, 1, 2, 3), (11, 13, 3, 1, 2, 2), (9, 9, 5, 2, 2, 2),
    (10, 10, 3, 1, 3, 2), (12, 12, 5, 2, 3, 1), (12, 12, 3, 1, 4, 2), (9, 10, 2, 0, 2, 1), (8, 8, 4, 1, 2, 1),
    (8, 8, 3, 1, 1, 2), (7, 6, 5, 2, 1, 1),
]
GRAD_CASES = [(6, 6, 3, 1, 2, 2), (5, 7, 3, 1, 2, 1), (5, 5, 3, 1, 1, 1), (6, 5, 2, 0, 2, 1)]


def _inputs(H, W, K, p, s, heads, d=4, batch=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = H * W if s == 1 else ((H + 2 * p - K) // s + 1) * ((W + 2 * p - K) // s + 1)
    v = torch.randn(batch, H, W, heads * d, generator=g, dtype=dtype)
    attn = torch.randn(batch, heads, n, K * K, K * K, generator=g, dtype=dtype).mul(3).softmax(-1)
    return v, attn


@pytest.mark.parametrize("H,W,K,p,s,heads", CASES)
def test_fold_free_equals_unfold_fold(H, W, K, p, s, heads):
    v, attn = _inputs(H, W, K, p, s, heads)
    ref = outlook_attention_reference(v, attn, heads, K, p, s)
    out = outlook_attention(v, attn, heads, K, p, s, implementation="torch")
    assert out.shape == ref.shape == v.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("H,W,K,p,s,heads", CASES[:6] + CASES[-2:])
def test_gradients_match_reference_fp32(H, W, K, p, s, heads):
    v, attn = _inputs(H, W, K, p, s, heads, seed=1)
    grads = []
    for impl in ("reference", "torch"):
        vv, aa = v.clone().requires_grad_(), attn.clone().requires_grad_()
        out = outlook_attention(vv, aa, heads, K, p, s, implementation=impl)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        grads.append((vv.grad, aa.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("H,W,K,p,s,heads", GRAD_CASES)
def test_gradcheck_float64(H, W, K, p, s, heads):
    v, attn = _inputs(H, W, K, p, s, heads, d=2, batch=1, dtype=torch.float64)
    v.requires_grad_()
    attn.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: outlook_attention(a, b, heads, K, p, s, implementation="torch"),
                                    (v, attn), fast_mode=True)


def test_neighbourhood_weights_keep_total_mass():
    """Each window's rows sum to 1, so a pixel's 5x5 weights sum to the number of windows covering it."""
    H = W = 8
    _, attn = _inputs(H, W, 3, 1, 2, 2)
    weights = neighbourhood_weights(attn, H, W, 3, 1, 2)
    assert weights.shape == (25, 2, H, W, 2)
    # windows cover rows 2i-1..2i+1 (i < 4): odd rows lie in two windows, except the last row
    cover = torch.tensor([2.0 if y % 2 and y < H - 1 else 1.0 for y in range(H)])
    expected = cover[:, None] * cover[None, :]
    torch.testing.assert_close(weights.sum(0)[0, :, :, 0], expected)


def test_module_implementations_agree_and_keep_state_dict():
    torch.manual_seed(0)
    module = OutlookAttention(24, num_heads=3, kernel_size=3, padding=1, stride=2).eval()
    x = torch.randn(2, 9, 11, 24)
    outs = {}
    for impl in ("reference", "torch", "auto"):
        module.implementation = impl
        outs[impl] = module(x)
    torch.testing.assert_close(outs["torch"], outs["reference"], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs["auto"], outs["reference"], atol=1e-5, rtol=0)
    assert set(module.state_dict()) == {"v.weight", "attn.weight", "attn.bias", "proj.weight", "proj.bias"}


def test_bf16_autocast_close_to_fp32():
    v, attn = _inputs(14, 14, 3, 1, 2, 2)
    ref = outlook_attention_reference(v, attn, 2, 3, 1, 2)
    out = outlook_attention(v.bfloat16(), attn.bfloat16(), 2, 3, 1, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=2e-2)


def test_bad_inputs_have_clear_errors():
    v, attn = _inputs(8, 8, 3, 1, 2, 2)
    with pytest.raises(ValueError, match="implementation must be one of"):
        outlook_attention(v, attn, 2, implementation="cuda")
    with pytest.raises(ValueError, match="windows"):
        outlook_attention(v[:, :6], attn, 2, 3, 1, 2)
    with pytest.raises(ValueError, match="heads"):
        outlook_attention(v, attn, 4, 3, 1, 2)
    with pytest.raises(ValueError, match=r"v \(B, H, W, C\)"):
        outlook_attention(v[0], attn, 2)

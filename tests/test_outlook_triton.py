"""Triton outlook kernels (forward and both gradients) against the unfold/fold reference.

On a machine without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set
before triton is imported; about half a minute of CPU, hence slow). Skipped when triton is not installed.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="triton is not installed")

SCRIPT = textwrap.dedent("""
    import torch
    from vitlab.attention.outlook import outlook_attention
    from vitlab.attention import outlook_triton
    assert outlook_triton.is_available()
    worst = 0.0
    for H, W, K, p, s, heads, d in [(8, 8, 3, 1, 2, 2, 4), (7, 9, 3, 1, 2, 1, 3), (6, 6, 3, 1, 1, 2, 4),
                                    (9, 9, 5, 2, 3, 1, 8)]:
        g = torch.Generator().manual_seed(H * W + K)
        n = H * W if s == 1 else ((H + 2 * p - K) // s + 1) * ((W + 2 * p - K) // s + 1)
        v = torch.randn(2, H, W, heads * d, generator=g).requires_grad_()
        attn = torch.randn(2, heads, n, K * K, K * K, generator=g).softmax(-1).requires_grad_()
        grad = torch.randn(2, H, W, heads * d, generator=g)
        results = []
        for impl in ("reference", "triton"):
            v.grad = attn.grad = None
            out = outlook_attention(v, attn, heads, K, p, s, implementation=impl)
            out.backward(grad)
            results.append((out.detach(), v.grad.clone(), attn.grad.clone()))
        for ref, got in zip(*results):
            worst = max(worst, (ref - got).abs().max().item())
            assert ref.abs().max() > 0
    print("WORST", worst)
""")


@pytest.mark.slow
def test_triton_kernels_match_reference_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = float(proc.stdout.split("WORST")[-1])
    assert worst < 1e-5


def test_triton_path_refuses_clearly_without_a_device(monkeypatch):
    import torch

    from vitlab.attention import outlook_triton
    from vitlab.attention.outlook import outlook_attention

    monkeypatch.setattr(outlook_triton, "is_available", lambda: False)
    v, attn = torch.randn(1, 4, 4, 4), torch.randn(1, 1, 4, 9, 9).softmax(-1)
    with pytest.raises(RuntimeError, match="implementation='torch'"):
        outlook_attention(v, attn, 1, 3, 1, 2, implementation="triton")

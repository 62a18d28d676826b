"""Every family compiles without graph breaks, runs channels-last and under bf16 autocast.

Discovers the test-sized configurations by ``vitlab.list_models("*_micro")``. Dynamo tracing is
slow on a small CPU, so only VOLO's trace is in the fast suite; the other families' traces and the
full ``torch.compile`` runs are marked slow.
"""
import pytest
import torch

import vitlab

MICROS = vitlab.list_models("*_micro")


def _model_and_input(name: str):
    torch.manual_seed(0)
    model = vitlab.create_model(name).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    return model, x


def _first_tensor(out):
    """Outputs may be a tensor, a list of maps (dense backbones) or a dict (segmentation heads in training)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    return _first_tensor(out[0])


def _graph_breaks(name: str):
    torch._dynamo.reset()
    model, x = _model_and_input(name)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x[:1])
    reasons = [f"{r.reason.splitlines()[0]} at {r.user_stack[-1] if r.user_stack else '?'}"
               for r in explanation.break_reasons]
    return explanation.graph_break_count, reasons


def test_micro_configurations_are_registered():
    assert "volo_micro" in MICROS


def test_volo_traces_without_graph_breaks():
    count, reasons = _graph_breaks("volo_micro")
    assert count == 0, reasons


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MICROS if n != "volo_micro"])
def test_family_traces_without_graph_breaks(name):
    count, reasons = _graph_breaks(name)
    assert count == 0, reasons


@pytest.mark.parametrize("name", MICROS)
def test_channels_last_forward_matches(name):
    model, x = _model_and_input(name)
    if x.ndim != 4:
        pytest.skip("channels-last is a 2-D image layout")
    with torch.no_grad():
        ref = _first_tensor(model(x))
        out = _first_tensor(model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last)))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MICROS)
def test_bf16_autocast_forward(name):
    model, x = _model_and_input(name)
    with torch.no_grad():
        ref = _first_tensor(model(x)).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _first_tensor(model(x)).float()
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    # bf16 keeps ~3 significant digits; the outputs must still agree to a few percent of their scale
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max() + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["torch", "reference"])
def test_volo_compiles_and_trains_with_two_threads(implementation):
    """The unfold/fold reference keeps F.fold eager (inductor's col2im lowering corrupts the heap on
    CPU with more than one thread); the default path has no fold at all. Both must compile and train."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch._dynamo.reset()
        model, x = _model_and_input("volo_micro")
        for m in model.modules():
            if hasattr(m, "implementation"):
                m.implementation = implementation
        model.train()
        compiled = torch.compile(model.forward_train)
        out = compiled(x)
        (out.logits.square().mean() + out.aux_logits.square().mean()).backward()
        eager = model.forward_train(x)
        torch.testing.assert_close(out.logits, eager.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.aux_logits, eager.aux_logits, atol=1e-4, rtol=1e-4)
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        torch.set_num_threads(threads)

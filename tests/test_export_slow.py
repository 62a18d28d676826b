"""ONNX export of one full-size model per family (slow: minutes on CPU), dynamic batch, verified in onnxruntime."""
import pytest
import torch

import vitlab
from vitlab.export import example_inputs, export_onnx, load_model, onnx_op_types, verify_onnx
from vitlab.models.registry import get_entry

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# the variant exported for each family (others: their first registered full-size variant)
REPRESENTATIVE = {"volo": "volo_d1", "uniformer": "uniformer_small", "uniformer_video": "uniformer_video_small",
                  "uniformer_light": "uniformer_xs", "pale": "pale_tiny", "swin": "swin_tiny",
                  "vit": "vit_base_patch16", "segvit": "segvit_vit_base"}


def _full_size_models() -> list[str]:
    by_family: dict[str, list[str]] = {}
    for name in vitlab.list_models():
        if not name.endswith("_micro"):
            by_family.setdefault(get_entry(name).family, []).append(name)
    picks = []
    for family, names in by_family.items():
        pick = REPRESENTATIVE.get(family)
        picks.append(pick if pick in names else names[0])
    return sorted(picks)


# Evo-ViT token pruning (light UniFormer) keeps the top-k tokens by attention score: near-equal scores swap
# under 1e-7 rounding differences, so even PyTorch fp32 vs fp64 outputs differ by ~0.04 on random weights.
ILL_CONDITIONED = {"uniformer_light": "top-k token pruning flips under rounding (PyTorch fp32 vs fp64 differ too)"}


def _params():
    out = []
    for name in _full_size_models():
        reason = ILL_CONDITIONED.get(get_entry(name).family)
        out.append(pytest.param(name, marks=pytest.mark.xfail(reason=reason, strict=False)) if reason else name)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_full_size_onnx_export_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = load_model(name)
    inputs = example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, inputs, tmp_path / f"{name}.onnx", opset=18, dynamic_batch=True)
    result = verify_onnx(model, path, inputs, dynamic_batch=True, seed=1)
    print(f"{name}: max |onnx - torch| = {result.max_abs_diff:.3g} on batches {result.batch_sizes}")
    assert result.batch_sizes == [2, 3] and result.ok(1e-4), f"{name}: {result.max_abs_diff_per_output}"
    if get_entry(name).family == "volo":
        assert "Col2Im" not in onnx_op_types(path)

"""UperNet and Semantic FPN over the hierarchical backbones' ``forward_intermediates``."""
import pytest
import torch

import vitlab
from vitlab.heads.fpn import SemanticFPNHead
from vitlab.heads.uper import UPerHead

BACKBONES = [n for n in ("volo_micro", "pale_micro", "swin_micro", "uniformer_micro") if vitlab.list_models(n)]
DECODERS = {"upernet": dict(channels=32, aux_channels=16), "semantic_fpn": dict(fpn_channels=32, channels=16)}


PAIRS = [(b, "upernet" if i % 2 == 0 else "semantic_fpn") for i, b in enumerate(BACKBONES)]
PAIRS += [(b, "semantic_fpn" if i % 2 == 0 else "upernet") for i, b in enumerate(BACKBONES)]


@pytest.mark.parametrize("backbone,decoder", [PAIRS[0], *PAIRS[1:len(BACKBONES)],
                                              *[pytest.param(*p, marks=pytest.mark.slow) for p in PAIRS[len(BACKBONES):]]])
def test_decoder_on_backbone_trains_and_predicts(decoder, backbone):
    torch.manual_seed(0)
    model = vitlab.create_model(decoder, backbone=backbone, num_classes=4, **DECODERS[decoder])
    size = model.pretrained_cfg["input_size"][-1]
    img, label = torch.randn(2, 3, size, size), torch.randint(0, 4, (2, size, size))
    label[:, :2] = 255
    losses = model.loss(img, label)
    assert ("loss_aux" in losses) == (decoder == "upernet")
    losses["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("decode_head.") and p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    probs = model(torch.randn(1, 3, size, size))
    assert probs.shape == (1, 4, size, size)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, size, size))


def test_uperhead_shapes_and_layout():
    head = UPerHead([16, 32, 64, 128], num_classes=3, channels=24).eval()
    feats = [torch.randn(1, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate([16, 32, 64, 128])]
    assert head(feats).shape == (1, 3, 32, 32)
    keys = set(head.state_dict())
    assert {"psp_modules.3.1.conv.weight", "bottleneck.bn.running_mean", "lateral_convs.2.conv.weight",
            "fpn_bottleneck.conv.weight", "conv_seg.bias"} <= keys
    with pytest.raises(ValueError, match="built for 4 maps"):
        head(feats[:3])


def test_semantic_fpn_upsampling_stages_follow_strides():
    head = SemanticFPNHead([8, 8, 8, 8], [4, 8, 16, 32], num_classes=2, fpn_channels=8, channels=8)
    n_convs = [sum(isinstance(m, torch.nn.Conv2d) for m in h.modules()) for h in head.scale_heads]
    assert n_convs == [1, 1, 2, 3]
    feats = [torch.randn(1, 8, 16 // 2 ** i, 16 // 2 ** i) for i in range(4)]
    assert head(feats).shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match="fine -> coarse"):
        SemanticFPNHead([8, 8], [16, 8], num_classes=2)


@pytest.mark.slow
def test_upernet_micro_fits_a_batch():
    torch.manual_seed(0)
    model = vitlab.create_model("upernet_micro", num_classes=3)
    img = torch.randn(2, 3, 64, 64)
    label = (img[:, 0] > 0).long() + (img[:, 1] > 1).long()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(10):
        loss = model.loss(img, label)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.85 * first

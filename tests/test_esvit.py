"""EsViT pieces: DINO head, multi-crop grouping, view/region losses, centring, schedules, EMA."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.heads.dino import DINOHead, cancel_last_layer_gradients
from vitlab.ssl.esvit import (EsViTLoss, build_esvit_network, collapse_diagnostics, cosine_schedule, ema_update,
                              group_by_resolution, match_regions, multicrop_forward, region_pair_loss,
                              teacher_temperature_schedule, view_loss)


def test_dino_head_weight_norm_and_frozen_magnitude():
    head = DINOHead(16, 32, hidden_dim=8, bottleneck_dim=4)
    assert not head.last_layer.weight_g.requires_grad
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(32))
    free = DINOHead(16, 32, norm_last_layer=False, hidden_dim=8, bottleneck_dim=4)
    assert free.last_layer.weight_g.requires_grad
    y = free(torch.randn(5, 16))
    y.sum().backward()
    assert y.shape == (5, 32) and free.last_layer.weight_g.grad is not None
    cancel_last_layer_gradients(free)
    assert free.last_layer.weight_g.grad is None and free.mlp[0].weight.grad is not None
    assert list(free.state_dict())[-2:] == ["last_layer.weight_g", "last_layer.weight_v"]


def test_multicrop_groups_consecutive_equal_sizes():
    crops = [torch.zeros(1, 3, 8, 8)] * 2 + [torch.zeros(1, 3, 4, 4)] * 3 + [torch.zeros(1, 3, 8, 8)]
    assert group_by_resolution(crops) == [(0, 2), (2, 5), (5, 6)]
    torch.manual_seed(0)
    net = build_esvit_network(vitlab.create_model("swin_micro", num_classes=0), out_dim=16, hidden_dim=8,
                              bottleneck_dim=4).eval()
    g = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    loc = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    cls, dense, feats, npatch = multicrop_forward(net, g + loc)
    assert npatch == [4, 1] and cls.shape == (8, 16) and feats.shape == (2 * 2 * 4 + 2 * 2 * 1, 128)
    alone = net.forward_features(loc[1])  # crop-major rows: the last crop's tokens are the last rows
    torch.testing.assert_close(feats[-2:], alone.reshape(2, 128), atol=1e-5, rtol=0)
    torch.testing.assert_close(cls[2:4], net.head(net.forward_features(g[1]).mean(1)), atol=1e-5, rtol=0)


def test_view_loss_matches_explicit_dino_sum():
    torch.manual_seed(0)
    t = [F.softmax(torch.randn(3, 10), -1) for _ in range(2)]
    s = [F.log_softmax(torch.randn(3, 10), -1) for _ in range(4)]
    expected = np.mean([(-(t[i] * s[v]).sum(-1)).mean().item() for i in range(2) for v in range(4) if v != i])
    assert abs(view_loss(t, s).item() - expected) < 1e-6


def test_region_matching_uses_backbone_features():
    torch.manual_seed(0)
    teacher_feats = torch.randn(2, 5, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    student_feats = teacher_feats[:, perm] * 2.0  # cosine ignores the scale
    assert torch.equal(match_regions(student_feats, teacher_feats), perm.expand(2, -1))
    t_probs = F.softmax(torch.randn(2, 5, 6), -1)
    s_logp = F.log_softmax(torch.randn(2, 5, 6), -1)
    expected = (-(t_probs[:, perm] * s_logp).sum(-1)).mean()
    torch.testing.assert_close(region_pair_loss(t_probs, teacher_feats, s_logp, student_feats), expected)


def test_loss_centres_update_without_process_group_and_region_weight():
    torch.manual_seed(0)
    b, n_g, n_l, k, c = 2, 4, 1, 6, 5
    student = (torch.randn(4 * b, k), torch.randn(2 * b * n_g + 2 * b * n_l, k), torch.randn(2 * b * n_g + 2 * b * n_l, c),
               [n_g, n_l])
    teacher = (torch.randn(2 * b, k), torch.randn(2 * b * n_g, k), torch.randn(2 * b * n_g, c), [n_g])
    crit = EsViTLoss(k, 4, 0.04, 0.07, 2, 4)
    full = crit(student, teacher, 1)
    torch.testing.assert_close(crit.center, 0.1 * teacher[0].mean(0, keepdim=True))
    torch.testing.assert_close(crit.center_grid, 0.1 * teacher[1].mean(0, keepdim=True))
    assert set(crit.last) >= {"view", "region", "teacher_entropy", "kl_to_uniform"}
    assert abs(full.item() - 0.5 * crit.last["view"] - 0.5 * crit.last["region"]) < 1e-5
    view_only = EsViTLoss(k, 4, 0.04, 0.07, 2, 4, region_weight=0.0)
    view_only(student, teacher, 1)
    assert "region" not in view_only.last and torch.equal(view_only.center_grid, torch.zeros(1, k))


def test_schedules():
    temps = teacher_temperature_schedule(0.04, 0.07, 3, 5)
    np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07, 0.07])
    mom = cosine_schedule(0.996, 1.0, 2, 10)
    assert len(mom) == 20 and mom[0] == pytest.approx(0.996) and mom[-1] == pytest.approx(1.0, abs=1e-4)
    assert np.all(np.diff(mom) >= 0)
    lr = cosine_schedule(1.0, 0.0, 3, 4, warmup_epochs=1)
    assert lr[0] == 0.0 and lr[3] == pytest.approx(1.0) and lr[4] == pytest.approx(1.0) and lr[-1] < 0.05


def test_ema_update():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight.detach(), expected)


def test_collapse_diagnostics():
    uniform = collapse_diagnostics(torch.zeros(4, 8), torch.zeros(1, 8), 0.1)
    assert uniform["teacher_entropy"] == pytest.approx(math.log(8)) and uniform["kl_to_uniform"] == pytest.approx(0)
    onehot = collapse_diagnostics(torch.eye(8)[[0, 0, 0, 0]] * 50, torch.zeros(1, 8), 0.1)
    assert onehot["teacher_entropy"] < 1e-3 and onehot["kl_to_uniform"] == pytest.approx(math.log(8), rel=1e-3)


def test_sinkhorn_targets_are_balanced_distributions_even_for_collapsed_logits():
    from vitlab.ssl.esvit import sinkhorn_knopp
    torch.manual_seed(0)
    q = sinkhorn_knopp(torch.randn(64, 8), 0.5, iterations=20)
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    torch.testing.assert_close(q.sum(0), torch.full((8,), 8.0), rtol=1e-3, atol=1e-3)  # 64 samples / 8 outputs
    # every sample pushed to one output (mode collapse) or all outputs equal: targets stay balanced and finite
    collapsed = sinkhorn_knopp(torch.zeros(16, 4).index_fill_(1, torch.tensor([0]), 40.0), 0.04)
    assert torch.isfinite(collapsed).all()
    torch.testing.assert_close(collapsed.sum(0), torch.full((4,), 4.0))


def test_sinkhorn_centering_in_the_loss():
    torch.manual_seed(0)
    b, k = 4, 6
    student = (torch.randn(4 * b, k), None, torch.randn(4 * b, 5), [1])
    teacher = (torch.randn(2 * b, k), None, torch.randn(2 * b, 5), [1])
    crit = EsViTLoss(k, 4, 0.04, 0.07, 0, 4, region_weight=0.0, centering="sinkhorn")
    targets = crit.teacher_targets(teacher[0], crit.center, 0.07)
    torch.testing.assert_close(targets.sum(1), torch.ones(2 * b))
    assert crit(student, teacher, 0).isfinite()
    with pytest.raises(ValueError, match="centering must be"):
        EsViTLoss(k, 4, 0.04, 0.07, 0, 4, centering="mean")

"""RPN proposals and targets, box/mask head losses and targets, mask pasting: hand-made cases."""
import math

import pytest
import torch

from vitlab.detection.assign import RandomSampler
from vitlab.detection.mask_rcnn import RPN_TRAIN, build_rpn_head
from vitlab.heads.bbox_head import ConvFCBBoxHead, Shared2FCBBoxHead, WeightedLoss, multiclass_nms
from vitlab.heads.fpn_neck import FPN
from vitlab.heads.mask_head import FCNMaskHead, mask_targets, paste_masks
from vitlab.ops import DeltaXYWHBBoxCoder, box_iou


def small_rpn(train=True):
    cfg = dict(type="RPNHead", in_channels=8, feat_channels=8,
               anchor_generator=dict(type="AnchorGenerator", scales=[4], ratios=[0.5, 1.0, 2.0], strides=[8, 16]))
    return build_rpn_head(cfg, RPN_TRAIN if train else None)


def level_maps(flat: torch.Tensor, sizes, per_anchor: int, A: int = 3):
    """Inverse of the RPN's permute(0, 2, 3, 1).reshape: (B, N * per_anchor) -> per-level (B, A * per_anchor, H, W)."""
    out, start = [], 0
    for h, w in sizes:
        n = h * w * A * per_anchor
        out.append(flat[:, start:start + n].reshape(flat.shape[0], h, w, A * per_anchor).permute(0, 3, 1, 2))
        start += n
    return out


# --- FPN ------------------------------------------------------------------------------------------------------
def test_fpn_shapes_and_p6():
    fpn = FPN([8, 16, 32, 64], 12, num_outs=5)
    x = [torch.randn(2, c, 64 // 2 ** i, 48 // 2 ** i) for i, c in enumerate([8, 16, 32, 64])]
    outs = fpn(x)
    assert [tuple(o.shape) for o in outs] == [(2, 12, 64, 48), (2, 12, 32, 24), (2, 12, 16, 12), (2, 12, 8, 6),
                                              (2, 12, 4, 3)]
    torch.testing.assert_close(outs[4], outs[3][:, :, ::2, ::2])   # P6 = max_pool2d(P5, 1, stride 2)
    # top-down: P4 = fpn_conv(lateral(C4) + nearest-up(lateral(C5)))
    lat4, lat5 = fpn.lateral_convs[2](x[2]), fpn.lateral_convs[3](x[3])
    up = lat5.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(outs[2], fpn.fpn_convs[2](lat4 + up))
    sim = FPN([8, 16, 32, 64], 12, num_outs=5, type="SimFPN")
    torch.testing.assert_close(sim(x)[2], sim.fpn_convs[2](sim.lateral_convs[2](x[2])))


# --- RPN ------------------------------------------------------------------------------------------------------
def test_rpn_proposals_shape_order_and_nms():
    torch.manual_seed(0)
    rpn = small_rpn(train=False)
    sizes = [(8, 8), (4, 4)]
    scores = [torch.randn(2, 3, h, w) for h, w in sizes]
    deltas = [torch.randn(2, 12, h, w) * 0.1 for h, w in sizes]
    metas = [{"img_shape": (60, 64)}, {"img_shape": (64, 50)}]
    cfg = dict(nms_pre=50, max_per_img=40, nms=dict(iou_threshold=0.7), min_bbox_size=0)
    props = rpn.get_proposals(scores, deltas, metas, cfg)
    assert len(props) == 2
    for p, m, b in zip(props, metas, range(2)):
        assert p.shape[1] == 5 and 0 < p.shape[0] <= 40
        assert (p[:, 4][1:] <= p[:, 4][:-1]).all()                 # by decreasing score
        assert (p[:, 0] >= 0).all() and (p[:, 2] <= m["img_shape"][1]).all() and (p[:, 3] <= m["img_shape"][0]).all()
        all_scores = torch.cat([s[b].permute(1, 2, 0).reshape(-1) for s in scores]).sigmoid()
        assert torch.isin(p[:, 4], all_scores).all()
        assert p[0, 4] == all_scores.max()                          # the best anchor always survives
    # no deltas: the top proposal is the best-scoring anchor, clipped to the image
    zero = [torch.zeros_like(d) for d in deltas]
    best = torch.zeros(2, 3, 8, 8)
    best[0, 1, 2, 3] = 5.0                                          # level 0, cell (y=2, x=3), anchor 1 (ratio 1)
    p = rpn.get_proposals([best, torch.zeros(2, 3, 4, 4)], zero, metas, cfg)[0]
    torch.testing.assert_close(p[0, :4], torch.tensor([24.0 - 16, 16 - 16, 24 + 16, 16 + 16]).clamp(min=0))
    torch.testing.assert_close(p[0, 4], torch.sigmoid(torch.tensor(5.0)))
    # within a level no two kept boxes overlap above the NMS threshold
    p = props[0]
    ious = box_iou(p[:, :4], p[:, :4]).fill_diagonal_(0)
    lvl = torch.tensor([bool(torch.isin(s, torch.cat([scores[0][0].permute(1, 2, 0).reshape(-1).sigmoid()])))
                        for s in p[:, 4]])
    same = lvl[:, None] == lvl[None, :]
    assert (ious[same] <= 0.7 + 1e-6).all()
    # nms_pre caps each level before NMS
    few = rpn.get_proposals(scores, deltas, metas, dict(cfg, nms_pre=3, max_per_img=100))
    assert all(f.shape[0] <= 6 for f in few)


def _perfect_rpn_outputs(rpn, sizes, gt, metas):
    """Scores +-20 and the exact deltas for every anchor the assigner makes positive."""
    anchors = torch.cat(rpn.prior_generator.grid_priors(sizes))
    flat_scores, flat_deltas = [], []
    for b, g in enumerate(gt):
        res = rpn.assigner.assign(anchors, g)
        pos = res.gt_inds > 0
        s = torch.full((anchors.shape[0],), -20.0)
        s[pos] = 20.0
        d = torch.zeros(anchors.shape[0], 4)
        d[pos] = rpn.bbox_coder.encode(anchors[pos], g[res.gt_inds[pos] - 1])
        flat_scores.append(s)
        flat_deltas.append(d.reshape(-1))
    return level_maps(torch.stack(flat_scores), sizes, 1), level_maps(torch.stack(flat_deltas), sizes, 4)


def test_rpn_loss_values():
    torch.manual_seed(0)
    rpn = small_rpn()
    sizes = [(8, 8), (4, 4)]
    metas = [{"img_shape": (64, 64), "pad_shape": (64, 64)}] * 2
    gt = [torch.tensor([[8.0, 8, 40, 40]]), torch.tensor([[20.0, 10, 60, 30], [0, 40, 20, 64]])]
    zeros = [torch.zeros(2, 3, h, w) for h, w in sizes], [torch.zeros(2, 12, h, w) for h, w in sizes]
    losses = rpn.loss(*zeros, gt, metas)
    # logits 0 on every sampled anchor: BCE = ln 2 averaged over the sampled anchors
    assert losses["loss_rpn_cls"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert losses["loss_rpn_bbox"].item() > 0.01
    scores, deltas = _perfect_rpn_outputs(rpn, sizes, gt, metas)
    perfect = rpn.loss(scores, deltas, gt, metas)
    assert perfect["loss_rpn_cls"].item() < 1e-6 and perfect["loss_rpn_bbox"].item() < 1e-6
    # a gradient reaches the inputs
    s = [t.clone().requires_grad_() for t in zeros[0]]
    rpn.loss(s, zeros[1], gt, metas)["loss_rpn_cls"].backward()
    assert s[0].grad.abs().sum() > 0


def test_rpn_targets_sample_256_half_positive():
    rpn = small_rpn()
    rpn.sampler = RandomSampler(num=16, pos_fraction=0.5, add_gt_as_proposals=False)
    sizes = [(8, 8), (4, 4)]
    anchors = torch.cat(rpn.prior_generator.grid_priors(sizes))
    valid = [torch.ones(anchors.shape[0], dtype=torch.bool)]
    targets, num_pos, num_neg = rpn.get_targets(anchors, valid, [torch.tensor([[8.0, 8, 40, 40]])], [(64, 64)])
    labels, weights, _, bbox_w = targets[0]
    assert int(weights.sum()) == 16 and num_pos == int(labels.sum()) and num_pos + num_neg == 16
    assert 1 <= num_pos <= 8 and (bbox_w.sum(1) > 0).sum() == num_pos


# --- box head -------------------------------------------------------------------------------------------------
class _Res:  # the SamplingResult attributes the heads read
    def __init__(self, pos, neg, gt, labels):
        self.pos_bboxes, self.neg_bboxes, self.pos_gt_bboxes, self.pos_gt_labels = pos, neg, gt, labels
        self.pos_assigned_gt_inds = torch.arange(len(pos))

    @property
    def bboxes(self):
        return torch.cat([self.pos_bboxes, self.neg_bboxes])


def test_bbox_head_layout_and_losses():
    head = Shared2FCBBoxHead(in_channels=4, fc_out_channels=16, roi_feat_size=7, num_classes=2)
    assert [(k, tuple(v.shape)) for k, v in head.state_dict().items()] == [
        ("shared_fcs.0.weight", (16, 196)), ("shared_fcs.0.bias", (16,)), ("shared_fcs.1.weight", (16, 16)),
        ("shared_fcs.1.bias", (16,)), ("fc_cls.weight", (3, 16)), ("fc_cls.bias", (3,)), ("fc_reg.weight", (8, 16)),
        ("fc_reg.bias", (8,))]
    pos = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 30]])
    gt = torch.tensor([[1.0, 1, 11, 12], [18, 20, 40, 33]])
    res = _Res(pos, torch.tensor([[50.0, 50, 60, 60], [0, 30, 5, 40]]), gt, torch.tensor([1, 0]))
    labels, lw, targets, tw = head.get_targets([res])
    assert labels.tolist() == [1, 0, 2, 2] and lw.tolist() == [1, 1, 1, 1] and tw.sum(1).tolist() == [4, 4, 0, 0]
    torch.testing.assert_close(targets[:2], head.bbox_coder.encode(pos, gt))
    rois = torch.cat([torch.zeros(4, 1), res.bboxes], 1)
    cls = torch.zeros(4, 3)
    reg = torch.randn(4, 8)                                   # class-specific: only the gt class's 4 deltas count
    reg.view(4, 2, 4)[0, 1] = targets[0]
    reg.view(4, 2, 4)[1, 0] = targets[1]
    out = head.loss(cls, reg, rois, labels, lw, targets, tw)
    assert out["loss_cls"].item() == pytest.approx(math.log(3), rel=1e-5)   # uniform logits over K + 1 = 3
    assert out["loss_bbox"].item() < 1e-6
    reg.view(4, 2, 4)[0, 1] += 0.5
    reg.view(4, 2, 4)[1, 0] -= 0.5
    # L1: 8 coordinates off by 0.5, divided by the 4 sampled RoIs (mmdet's avg_factor)
    assert head.loss(cls, reg, rois, labels, lw, targets, tw)["loss_bbox"].item() == pytest.approx(1.0, rel=1e-5)
    cls_good = torch.tensor([[-9.0, 9, -9], [9, -9, -9], [-9, -9, 9], [-9, -9, 9]])
    assert head.loss(cls_good, reg, rois, labels, lw, targets, tw)["loss_cls"].item() < 1e-3


def test_decoded_giou_and_smooth_l1_losses():
    head = ConvFCBBoxHead(num_shared_convs=1, num_shared_fcs=1, in_channels=4, conv_out_channels=4, fc_out_channels=8,
                          num_classes=1, reg_class_agnostic=True, reg_decoded_bbox=True, norm_cfg=dict(type="BN"),
                          loss_bbox=dict(type="GIoULoss", loss_weight=10.0))
    assert "shared_convs.0.bn.running_mean" in head.state_dict() and "shared_convs.0.conv.bias" not in head.state_dict()
    pos = torch.tensor([[0.0, 0, 10, 10]])
    gt = torch.tensor([[0.0, 0, 10, 20]])
    res = _Res(pos, torch.tensor([[50.0, 50, 60, 60]]), gt, torch.tensor([0]))
    labels, lw, targets, tw = head.get_targets([res])
    torch.testing.assert_close(targets[0], gt[0])             # reg_decoded_bbox: the gt box itself
    rois = torch.cat([torch.zeros(2, 1), res.bboxes], 1)
    cls = torch.zeros(2, 2)
    zero = torch.zeros(2, 4)                                  # decodes to the proposal: IoU 0.5 = GIoU (enclosed)
    assert head.loss(cls, zero, rois, labels, lw, targets, tw)["loss_bbox"].item() == pytest.approx(10 * 0.5 / 2,
                                                                                                     rel=1e-5)
    exact = torch.zeros(2, 4)
    exact[0] = head.bbox_coder.encode(pos, gt)[0]
    assert head.loss(cls, exact, rois, labels, lw, targets, tw)["loss_bbox"].item() < 1e-5
    smooth = WeightedLoss("SmoothL1Loss", beta=1.0 / 9.0)
    pred, tgt = torch.tensor([0.05, 0.5]), torch.zeros(2)
    # 0.05 < beta: 0.5 * 0.05^2 * 9; 0.5 >= beta: 0.5 - beta / 2
    assert smooth(pred, tgt).item() == pytest.approx((0.5 * 0.05 ** 2 * 9 + 0.5 - 1 / 18) / 2, rel=1e-5)


def test_multiclass_nms_and_refinement():
    bboxes = torch.tensor([[0.0, 0, 10, 10, 0, 0, 10, 10], [1, 1, 10, 10, 1, 1, 10, 10], [30, 30, 40, 40, 0, 0, 1, 1]])
    scores = torch.tensor([[0.9, 0.6, 0.0], [0.8, 0.1, 0.1], [0.04, 0.7, 0.26]])
    dets, labels = multiclass_nms(bboxes, scores, score_thr=0.05, iou_threshold=0.5, max_num=100)
    # class 0: box 1 overlaps box 0 (IoU 0.81) and goes; box 2's 0.04 is below the threshold
    assert labels.tolist() == [0, 1, 1] and dets[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.6])
    torch.testing.assert_close(dets[1, :4], torch.tensor([0.0, 0, 1, 1]))
    assert multiclass_nms(bboxes, scores, 0.05, 0.5, max_num=2)[0].shape == (2, 5)
    head = Shared2FCBBoxHead(in_channels=4, fc_out_channels=16, num_classes=2)
    rois = torch.tensor([[0.0, 0, 0, 10, 10], [0, 5, 5, 20, 20], [1, 0, 0, 8, 8]])
    deltas = torch.zeros(3, 8)
    deltas[:, 4] = 10.0  # class 1: shift x by one box width (10 x the x std 0.1)
    refined = head.refine_bboxes(rois, torch.tensor([1, 0, 1]), deltas, [torch.tensor([True]), torch.tensor([False])],
                                 [(100, 100), (100, 100)])
    assert refined[0].shape == (1, 4)                                  # image 0's first RoI was a gt: dropped
    torch.testing.assert_close(refined[0][0], torch.tensor([5.0, 5, 20, 20]))    # class 0 has no deltas
    torch.testing.assert_close(refined[1][0], torch.tensor([8.0, 0, 16, 8]))


# --- mask head ------------------------------------------------------------------------------------------------
def test_mask_targets_from_a_known_mask():
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 10:20, 10:30] = 1      # gt 0: x in [10, 30), y in [10, 20)
    masks[1, 40:60, 0:64] = 1
    props = torch.tensor([[10.0, 10, 30, 20],    # exactly gt 0's box -> all ones
                          [10, 10, 50, 20],      # twice as wide -> left half ones
                          [10, 0, 30, 20],       # twice as tall, gt in the bottom half
                          [-20, 40, 84, 60]])    # gt 1, beyond the image: clipped to [0, 64] first
    t = mask_targets([props], [torch.tensor([0, 0, 0, 1])], [masks], 28)
    assert t.shape == (4, 28, 28) and set(t.unique().tolist()) <= {0.0, 1.0}
    assert t[0].all()
    assert t[1][:, :14].all() and not t[1][:, 14:].any()
    assert t[2][14:].all() and not t[2][:14].any()
    assert t[3].all()
    assert mask_targets([props[:0]], [torch.zeros(0, dtype=torch.long)], [masks], 28).shape == (0, 28, 28)


def test_mask_head_layout_loss_and_paste():
    head = FCNMaskHead(num_convs=2, in_channels=8, conv_out_channels=8, num_classes=3)
    assert [(k, tuple(v.shape)) for k, v in head.state_dict().items()] == [
        ("convs.0.conv.weight", (8, 8, 3, 3)), ("convs.0.conv.bias", (8,)), ("convs.1.conv.weight", (8, 8, 3, 3)),
        ("convs.1.conv.bias", (8,)), ("upsample.weight", (8, 8, 2, 2)), ("upsample.bias", (8,)),
        ("conv_logits.weight", (3, 8, 1, 1)), ("conv_logits.bias", (3,))]
    assert head(torch.randn(5, 8, 14, 14)).shape == (5, 3, 28, 28)
    target = torch.zeros(2, 28, 28)
    target[0, :, :14] = 1
    logits = torch.full((2, 3, 28, 28), 30.0)
    logits[0, 2] = torch.where(target[0] > 0, 20.0, -20.0)   # only the gt class's channel counts
    logits[1, 0] = -20.0
    assert head.loss(logits, target, torch.tensor([2, 0]))["loss_mask"].item() < 1e-6
    assert head.loss(torch.zeros(2, 3, 28, 28), target, torch.tensor([2, 0]))["loss_mask"].item() == \
        pytest.approx(math.log(2), rel=1e-5)
    probs = torch.zeros(2, 28, 28)
    probs[0] = 1.0
    probs[1, :, :14] = 1.0
    boxes = torch.tensor([[10.0, 10, 30, 20], [0, 20, 20, 40]])
    out = paste_masks(probs, boxes, 40, 40)
    expected = torch.zeros(2, 40, 40, dtype=torch.bool)
    expected[0, 10:20, 10:30] = True    # pixels whose centres lie in the box
    expected[1, 20:40, 0:10] = True     # the left half of the box
    assert torch.equal(out, expected)
    seg = head.get_seg_masks(torch.zeros(1, 3, 28, 28).index_fill_(1, torch.tensor([1]), 9.0),
                             torch.tensor([[20.0, 20, 60, 40, 0.9]]), torch.tensor([1]), (20, 40),
                             scale_factor=(2, 2, 2, 2))
    assert seg.shape == (1, 20, 40) and seg[0].sum() == 20 * 10 and seg[0, 10:20, 10:30].all()   # box / 2


def test_bbox_coder_round_trip_used_by_the_heads():
    coder = DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))
    p, g = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[2.0, 3, 12, 18]])
    torch.testing.assert_close(coder.decode(p, coder.encode(p, g)), g)

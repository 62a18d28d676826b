"""MaxIoUAssigner and RandomSampler (mmdet's rules) on hand-made IoU cases."""
import pytest
import torch

from vitlab.detection.assign import MaxIoUAssigner, RandomSampler, box_iof

GT = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
#                          IoU with gt0 / gt1
BOXES = torch.tensor([[0.0, 0, 10, 10],     # 1.0  / 0     -> positive gt0
                      [0, 0, 10, 5],        # 0.5  / 0     -> between the thresholds: ignored
                      [0, 0, 10, 2],        # 0.2  / 0     -> negative
                      [20, 20, 30, 30],     # 0    / 0     -> negative
                      [50, 50, 60, 55],     # 0    / 0.5   -> gt1's best: a low-quality positive
                      [50, 55, 60, 60]])    # 0    / 0.5   -> ties with it


def rpn_assigner(**kw):
    return MaxIoUAssigner(**{"pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": 0.3, "match_low_quality": True,
                             **kw})


def test_thresholds_and_low_quality_matches():
    res = rpn_assigner().assign(BOXES, GT, gt_labels=torch.tensor([3, 5]))
    assert res.gt_inds.tolist() == [1, -1, 0, 0, 2, 2]   # both boxes tying at gt1's best IoU take it
    assert res.labels.tolist() == [3, -1, -1, -1, 5, 5]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([1.0, 0.5, 0.2, 0.0, 0.5, 0.5]))
    assert rpn_assigner(gt_max_assign_all=False).assign(BOXES, GT).gt_inds.tolist() == [1, -1, 0, 0, 2, -1]
    assert rpn_assigner(match_low_quality=False).assign(BOXES, GT).gt_inds.tolist() == [1, -1, 0, 0, -1, -1]
    # gt1's best IoU (0.5) is below min_pos_iou: no low-quality match
    assert rpn_assigner(min_pos_iou=0.6).assign(BOXES, GT).gt_inds.tolist() == [1, -1, 0, 0, -1, -1]
    # R-CNN setting: 0.5 / 0.5 -> IoU 0.5 counts as positive
    rcnn = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5).assign(BOXES, GT)
    assert rcnn.gt_inds.tolist() == [1, 1, 0, 0, 2, 2]
    # a (lo, hi) negative range: IoU 0 is not negative any more
    assert rpn_assigner(neg_iou_thr=(0.1, 0.3)).assign(BOXES, GT).gt_inds.tolist() == [1, -1, 0, -1, 2, 2]


def test_low_quality_match_overrides_and_later_gt_wins():
    gt = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 8]])
    boxes = torch.tensor([[0.0, 0, 10, 9]])   # IoU 0.9 with gt0, 0.889 with gt1: its best gt is gt0
    res = rpn_assigner().assign(boxes, gt)
    # step 2 gives it to gt0; step 3 loops over gts in order and gt1's only (best) box is this one
    assert res.gt_inds.tolist() == [2]


def test_no_gt_and_no_boxes():
    res = rpn_assigner().assign(BOXES, torch.zeros((0, 4)), gt_labels=torch.zeros(0, dtype=torch.long))
    assert res.gt_inds.tolist() == [0] * 6 and res.labels.tolist() == [-1] * 6 and res.num_gts == 0
    assert rpn_assigner().assign(torch.zeros((0, 4)), GT).gt_inds.numel() == 0


def test_crowd_regions_are_ignored():
    crowd = torch.tensor([[15.0, 15, 40, 40]])
    torch.testing.assert_close(box_iof(BOXES[3:4], crowd), torch.tensor([[1.0]]))
    res = rpn_assigner(ignore_iof_thr=0.5).assign(BOXES, GT, gt_bboxes_ignore=crowd)
    assert res.gt_inds.tolist() == [1, -1, 0, -1, 2, 2]   # box 3 lies inside the crowd region
    # mmdet's configs use ignore_iof_thr=-1: crowd boxes are then not used at all
    assert rpn_assigner().assign(BOXES, GT, gt_bboxes_ignore=crowd).gt_inds.tolist() == [1, -1, 0, 0, 2, 2]


def _assigned(num_pos: int, num_neg: int, num_ignored: int = 0):
    from vitlab.detection.assign import AssignResult
    gt_inds = torch.tensor([1] * num_pos + [0] * num_neg + [-1] * num_ignored)
    labels = torch.where(gt_inds > 0, torch.tensor(2), torch.tensor(-1))
    return AssignResult(1, gt_inds, torch.zeros(len(gt_inds)), labels)


def test_sampler_counts():
    boxes = torch.rand(40, 4) * 10
    boxes[:, 2:] += boxes[:, :2]
    gt, labels = torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([2])
    sampler = RandomSampler(num=8, pos_fraction=0.5, add_gt_as_proposals=False,
                            generator=torch.Generator().manual_seed(0))
    res = sampler.sample(_assigned(10, 20, 10), boxes, gt, labels)
    assert len(res.pos_inds) == 4 and len(res.neg_inds) == 4
    assert (res.pos_inds < 10).all() and ((res.neg_inds >= 10) & (res.neg_inds < 30)).all()
    assert res.pos_inds.tolist() == sorted(res.pos_inds.tolist()) and len(set(res.neg_inds.tolist())) == 4
    res = sampler.sample(_assigned(2, 20), boxes[:22], gt, labels)   # few positives: negatives fill up
    assert len(res.pos_inds) == 2 and len(res.neg_inds) == 6
    assert res.bboxes.shape == (8, 4) and torch.equal(res.bboxes[:2], boxes[:2])
    ub = RandomSampler(num=8, pos_fraction=0.5, neg_pos_ub=1, add_gt_as_proposals=False)
    res = ub.sample(_assigned(2, 20), boxes[:22], gt, labels)
    assert len(res.pos_inds) == 2 and len(res.neg_inds) == 2
    # the draw is uniform: over many draws every positive is picked
    seen = set()
    for _ in range(50):
        seen |= set(sampler.sample(_assigned(10, 20), boxes[:30], gt, labels).pos_inds.tolist())
    assert seen == set(range(10))


def test_sampler_adds_gt_as_proposals():
    gt, labels = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]), torch.tensor([3, 5])
    assign = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5).assign(BOXES, gt, gt_labels=labels)
    res = RandomSampler(num=512, pos_fraction=0.25).sample(assign, BOXES, gt, labels)
    # the two gts are prepended (indices 0, 1) as their own positives; the proposals shift by 2
    assert res.pos_inds.tolist() == [0, 1, 2, 3, 6, 7] and res.neg_inds.tolist() == [4, 5]
    assert res.pos_is_gt.tolist() == [True, True, False, False, False, False]
    assert res.pos_assigned_gt_inds.tolist() == [0, 1, 0, 0, 1, 1]
    assert res.pos_gt_labels.tolist() == [3, 5, 3, 3, 5, 5]
    torch.testing.assert_close(res.pos_gt_bboxes, gt[[0, 1, 0, 0, 1, 1]])
    torch.testing.assert_close(res.pos_bboxes[:2], gt)
    with pytest.raises(ValueError, match="gt_labels"):
        RandomSampler(num=8, pos_fraction=0.5).sample(assign, BOXES, gt, None)

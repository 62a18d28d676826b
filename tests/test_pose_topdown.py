"""The top-down model: loss terms, flip test, predictions in image pixels, a few training steps, OKS evaluation."""
import numpy as np
import pytest
import torch

from vitlab.pose.data import TopDownCocoKeypoints, collate_topdown
from vitlab.pose.decode import flip_back, keypoints_from_heatmaps
from vitlab.pose.evaluation import evaluate_keypoints, keypoint_results, rescore_and_nms
from vitlab.pose.topdown import build_topdown, joints_mse_loss, pose_pck_accuracy

from test_pose_utils import write_people

SMALL = dict(input_size=(96, 128), heatmap_size=(24, 32))


def _micro(**kwargs):
    torch.manual_seed(0)
    return build_topdown("uniformer_micro", dict(dense=True), num_deconv_filters=(32, 32, 32),
                         input_size=(96, 128), **kwargs)


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    return write_people(tmp_path_factory.mktemp("people"), num_images=4, seed=2)


def test_joints_mse_loss_and_pck_match_mmpose_definitions():
    g = torch.Generator().manual_seed(0)
    out, tgt = torch.rand(2, 3, 8, 6, generator=g), torch.rand(2, 3, 8, 6, generator=g)
    w = torch.tensor([[[1.0], [0.0], [1.0]], [[1.0], [1.0], [0.0]]])
    per_joint = [torch.nn.functional.mse_loss(out[:, j].reshape(2, -1) * w[:, j], tgt[:, j].reshape(2, -1) * w[:, j])
                 for j in range(3)]
    assert joints_mse_loss(out, tgt, w) == pytest.approx(float(sum(per_joint) / 3))
    assert pose_pck_accuracy(tgt, tgt, w[..., 0] > 0) == 1.0
    shifted = torch.roll(tgt, shifts=4, dims=-1)
    assert pose_pck_accuracy(shifted, tgt, torch.ones(2, 3, dtype=torch.bool)) < 1.0


def test_loss_terms_and_shape_errors():
    model = _micro()
    x = torch.randn(2, 3, 128, 96)
    target, weight = torch.rand(2, 17, 32, 24), torch.ones(2, 17, 1)
    losses = model.loss(x, target, weight)
    assert set(losses) == {"loss_mse", "loss", "acc_pose"} and losses["loss"] is losses["loss_mse"]
    assert losses["loss"].requires_grad and not losses["acc_pose"].requires_grad
    with pytest.raises(ValueError, match="heatmap size"):
        model.loss(x, torch.rand(2, 17, 64, 48), weight)


def test_flip_test_is_consistent():
    model = _micro().eval()
    model.keypoint_head.final_layer.weight.data.normal_(0, 0.5)  # a head that is not ~0 everywhere
    x = torch.randn(2, 3, 128, 96)
    plain = model.predict_heatmaps(x, flip=False)
    assert torch.allclose(plain, model(x).float())
    # without the shift, the flip test is exactly flip-equivariant: predicting on the mirror = mirroring back
    model.shift_heatmap = False
    assert torch.allclose(model.predict_heatmaps(x.flip(-1)), flip_back(model.predict_heatmaps(x), shift=False),
                          atol=1e-6)
    # ... so a horizontally symmetric input gets left/right-symmetric heatmaps
    sym = torch.cat([x[..., :48], x[..., :48].flip(-1)], dim=-1)
    hm = model.predict_heatmaps(sym)
    assert torch.allclose(hm, flip_back(hm, shift=False), atol=1e-6)
    # with mmpose's shift the flipped pass is moved one column right before averaging
    model.shift_heatmap = True
    shifted = model.predict_heatmaps(sym)
    back = flip_back(model(sym.flip(-1)).float(), shift=True)
    assert torch.allclose(shifted, 0.5 * (model(sym).float() + back), atol=1e-6)


def test_predict_returns_image_pixels_and_box_scores(people):
    model = _micro().eval()
    ds = TopDownCocoKeypoints(*people, train=False, **SMALL)
    (images, metas), _, _ = collate_topdown([ds[i] for i in range(3)])
    metas[1]["bbox_score"] = 0.5
    kps, box_scores = model.predict(images, metas, flip=True)
    assert kps.shape == (3, 17, 3) and box_scores.tolist() == [1.0, 0.5, 1.0]
    center, scale = torch.tensor([m["center"] for m in metas]), torch.tensor([m["scale"] for m in metas])
    expected, scores = keypoints_from_heatmaps(model.predict_heatmaps(images), center, scale)
    assert torch.allclose(kps[..., :2], expected) and torch.allclose(kps[..., 2:], scores)
    for kp, m in zip(kps, metas):  # the crop (center +- scale * 100) contains every prediction
        c, s = np.array(m["center"]), np.array(m["scale"]) * 200
        assert (np.abs(kp[:, :2].numpy() - c) <= s / 2 + 1e-3).all()
    with pytest.raises(ValueError, match="metas"):
        model.predict(images, metas[:2])


def test_micro_model_trains_with_decreasing_loss(people):
    model = _micro().train()
    ds = TopDownCocoKeypoints(*people, train=True, **SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch = collate_topdown([ds[(i, 7)] for i in range(len(ds))])
    (images, _), (targets, weights), _ = batch
    losses = []
    for _ in range(12):
        out = model.loss(images, targets, weights)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]) and losses[-1] < losses[0], losses


def test_oks_evaluation_of_predictions(people):
    json_path, _ = people
    ds = TopDownCocoKeypoints(*people, train=False, **SMALL)
    (images, metas), (targets, weights), _ = collate_topdown([ds[i] for i in range(len(ds))])
    # the ground-truth heatmaps as an oracle prediction
    xy, sc = keypoints_from_heatmaps(targets, torch.tensor([m["center"] for m in metas]),
                                     torch.tensor([m["scale"] for m in metas]))
    oracle = rescore_and_nms(keypoint_results(torch.cat([xy, sc], -1), metas))
    assert len(oracle) == len(ds) and oracle[0]["score"] == pytest.approx(1.0)
    good = evaluate_keypoints(json_path, oracle)
    assert good["AP"] > 60 and "Average Precision" in good.summary
    model = _micro().eval()
    kps, box_scores = model.predict(images, metas)
    untrained = evaluate_keypoints(ds.coco, rescore_and_nms(keypoint_results(kps, metas, box_scores)))
    assert 0.0 <= untrained["AP"] < good["AP"]

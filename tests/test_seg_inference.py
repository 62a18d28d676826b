"""Whole / sliding-window / multi-scale+flip inference and mIoU / mAcc / aAcc accumulation."""
import math

import pytest
import torch

from vitlab.segmentation.inference import predict, slide_inference, window_starts
from vitlab.segmentation.metrics import SegmentationMetric, format_table


def test_window_starts_cover_the_image_and_end_flush():
    assert window_starts(512, 512, 341) == [0]
    assert window_starts(700, 512, 341) == [0, 188]
    assert window_starts(1000, 512, 341) == [0, 341, 488]


def test_slide_inference_averages_overlaps():
    calls = []

    def score_fn(x):  # scores = each window's own offset marker, to check placement and averaging
        calls.append(x.shape)
        return x[:, :1].clone()

    img = torch.arange(12.0).repeat(1, 1, 4, 1).expand(1, 1, 4, 12).clone()
    out = slide_inference(score_fn, img, crop_size=(4, 8), stride=(4, 4))
    torch.testing.assert_close(out, img)  # a position-wise score function is reproduced exactly
    assert calls == [torch.Size([2, 1, 4, 8])]  # both windows ran in one batch


def test_slide_inference_matches_manual_average():
    torch.manual_seed(0)
    w = torch.randn(3, 1, 3, 3)
    score_fn = lambda x: torch.nn.functional.conv2d(x, w, padding=1)  # noqa: E731  (context-dependent)
    img = torch.randn(2, 1, 6, 10)
    out = slide_inference(score_fn, img, crop_size=6, stride=4)
    left, right = score_fn(img[..., :6]), score_fn(img[..., 4:])
    want = torch.zeros(2, 3, 6, 10)
    want[..., :6] += left
    want[..., 4:] += right
    want[..., 4:6] /= 2
    torch.testing.assert_close(out, want)


def test_multiscale_flip_returns_input_size_and_flip_is_averaged():
    score_fn = lambda x: torch.stack([x[:, 0], -x[:, 0]], 1)  # noqa: E731
    img = torch.randn(1, 3, 16, 24)
    out = predict(score_fn, img, scales=(0.5, 1.0, 1.5), flip=True)
    assert out.shape == (1, 2, 16, 24)
    torch.testing.assert_close(predict(score_fn, img, flip=True), score_fn(img))  # flip-equivariant fn
    with pytest.raises(ValueError, match="crop_size and stride"):
        predict(score_fn, img, mode="slide")


def test_metric_accumulates_areas_over_the_set():
    m = SegmentationMetric(3, ignore_index=255, class_names=["sky", "road", "car"])
    m.update(torch.tensor([[0, 0], [1, 2]]), torch.tensor([[0, 1], [1, 255]]))
    m.update(torch.tensor([[1, 1]]), torch.tensor([[1, 0]]))
    r = m.compute()
    # class 0: I=1, pred=2, label=2 -> IoU 1/3 ; class 1: I=2, pred=3, label=3 -> 2/4 ; class 2: absent (pred only at ignore)
    # every value in percent, as mmseg reports them
    assert r["per_class"]["sky"]["IoU"] == pytest.approx(100 / 3)
    assert r["per_class"]["road"]["IoU"] == pytest.approx(50.0)
    assert math.isnan(r["per_class"]["car"]["IoU"])
    assert r["mIoU"] == pytest.approx(100 * (1 / 3 + 0.5) / 2)
    assert r["mAcc"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert r["aAcc"] == pytest.approx(60.0)
    table = format_table(r)
    assert "road" in table and "50.00" in table and "nan" in table
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m.update(torch.tensor([0]), torch.tensor([7]))


def test_metric_is_not_a_mean_of_per_image_scores():
    m = SegmentationMetric(2)
    m.update(torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, 10, dtype=torch.long))  # perfect big image
    m.update(torch.tensor([[1]]), torch.tensor([[0]]))  # one wrong pixel
    assert m.compute()["per_class"]["0"]["IoU"] == pytest.approx(100 * 10 / 11)

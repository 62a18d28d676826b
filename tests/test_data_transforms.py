"""Pure-torch transforms: sizes, ranges, seeded determinism, RandAugment strings, eval transform from pretrained_cfg."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitlab.data.randaugment import OPS, RAND_OPS, RAND_OPS_INCREASING, RandAugment, equalize, posterize, rotate
from vitlab.data.transforms import (RandomErasing, RandomResizedCrop, ResizeCenterCrop, build_eval_transform,
                                    build_train_transform, to_tensor)


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _image(h=40, w=48):
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, h, w), dtype=np.uint8))


def test_train_transform_is_a_function_of_the_seed():
    t = build_train_transform(32, (0.5,) * 3, (0.25,) * 3, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5,
                              color_jitter=0.4)
    img = _image()
    a, b, c = t(img, _gen(1)), t(img, _gen(1)), t(img, _gen(2))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_resized_crop_box_respects_scale_and_ratio():
    crop = RandomResizedCrop(16, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    for seed in range(50):
        top, left, h, w = crop.box(100, 120, _gen(seed))
        assert 0 <= top <= 100 - h and 0 <= left <= 120 - w
        assert 0.2 * 12000 < h * w < 0.55 * 12000 and 0.45 < w / h < 2.2


def test_eval_transform_follows_pretrained_cfg():
    cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
           "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    t = build_eval_transform(cfg)
    out = t(torch.full((3, 300, 400), 128, dtype=torch.uint8))
    assert out.shape == (3, 224, 224)
    expected = (128 / 255 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])
    assert torch.allclose(out[:, 100, 100], expected, atol=1e-4)
    # resize short side to 224 / 0.875 = 256, then centre crop: a centred marker keeps its position
    img = torch.zeros(1, 256, 256)
    img[:, 128 - 8:128 + 8, 128 - 8:128 + 8] = 1
    crop = ResizeCenterCrop(224, 0.875, "bilinear")(img)
    assert crop.shape == (1, 224, 224) and crop[0, 112, 112] > 0.99 and crop[0, 0, 0] == 0


def test_random_erasing_erases_a_box_only():
    img = torch.zeros(3, 32, 32)
    out = RandomErasing(prob=1.0, mode="const")(img + 1, _gen(0))
    erased = (out == 0).all(0)
    assert 0 < erased.sum() < 32 * 32 / 2
    rows, cols = erased.nonzero(as_tuple=True)
    assert erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle


@pytest.mark.parametrize("name", sorted(set(RAND_OPS) | set(RAND_OPS_INCREASING)))
def test_every_randaugment_op_keeps_shape_and_range(name):
    op, arg = OPS[name]
    img = to_tensor(_image())
    out = op(img, arg(9.0, _gen(0)))
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1 + 1e-6


def test_randaugment_ops_do_what_they_say():
    img = to_tensor(_image())
    assert torch.allclose(rotate(rotate(img, 90), -90)[:, 8:-8, 8:-8], img[:, 8:-8, 8:-8], atol=0.1)
    assert len(torch.unique(posterize(img, 2))) <= 4
    flat = equalize(torch.linspace(0.2, 0.4, 4096).view(1, 64, 64))
    assert flat.min() < 0.05 and flat.max() > 0.95


def test_randaugment_strings():
    ra = RandAugment.from_string("rand-m9-mstd0.5-inc1")
    assert (ra.magnitude, ra.magnitude_std, ra.num_ops, ra.ops) == (9.0, 0.5, 2, RAND_OPS_INCREASING)
    ra = RandAugment.from_string("rand-m7-n3-p1.0")
    assert (ra.magnitude, ra.num_ops, ra.prob, ra.ops) == (7.0, 3, 1.0, RAND_OPS)
    with pytest.raises(ValueError, match="must start with 'rand'"):
        RandAugment.from_string("auto-m9")
    with pytest.raises(ValueError, match="unknown auto-augment part 'x3'"):
        RandAugment.from_string("rand-m9-x3")


def test_to_tensor_accepts_pil_numpy_and_uint8():
    from PIL import Image
    arr = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    a = to_tensor(Image.fromarray(arr))
    b = to_tensor(arr)
    c = to_tensor(torch.from_numpy(arr).permute(2, 0, 1))
    assert a.shape == (3, 10, 12) and torch.equal(a, b) and torch.equal(b, c)

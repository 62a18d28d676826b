"""vitlab's RandAugment against timm 1.0.31's (``timm.data.auto_augment``): parsed config strings, every level
function, and every op applied to the same image (timm on PIL, vitlab on a tensor)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from vitlab.data import randaugment as ra
from vitlab.data.randaugment import OPS, RAND_OPS, RAND_OPS_INCREASING, RandAugment

SPECS = ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-m7-n2", "rand-m9-n3-mstd0.5-inc1-p1.0",
         "rand-m12-mmax15-mstd1", "rand-mstd101", "rand-n1", "rand-inc0-m5"]
LEVELS = [0.0, 2.4, 2.5, 3.0, 4.99, 6.3, 9.0, 10.0]
COLOUR = sorted(n for n in OPS if n not in ra.GEOMETRIC)
GEOMETRIC = sorted(ra.GEOMETRIC)


@pytest.fixture(scope="module")
def aa():
    from conftest import import_timm
    return import_timm().data.auto_augment


def _array(h=36, w=44, seed=0):
    """Noise on a smooth gradient: edges for the geometric ops, a full histogram for the colour ops."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 200 / w, yy * 180 / h + 40, (xx + yy) * 120 / (h + w) + 60], -1)
    return np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _pil(arr):
    from PIL import Image
    return Image.fromarray(arr)


def _tensor(arr):
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _back(pil_img):
    return _tensor(np.array(pil_img))


def _both_signs(monkeypatch, aa, negate: bool):
    monkeypatch.setattr(aa, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
    monkeypatch.setattr(ra, "_signed", (lambda v, g: -v) if negate else (lambda v, g: v))


@pytest.mark.parametrize("spec", SPECS)
def test_parsed_config_matches_timm(aa, spec):
    theirs = aa.rand_augment_transform(spec, {})
    ours = RandAugment.from_string(spec)
    op0 = theirs.ops[0]
    assert [op.name for op in theirs.ops] == ours.ops
    assert theirs.num_layers == ours.num_ops
    assert {op.prob for op in theirs.ops} == {ours.prob}
    assert op0.magnitude == ours.magnitude
    assert op0.magnitude_std == ours.magnitude_std
    assert op0.magnitude_max == ours.magnitude_max
    assert ours.increasing == (ours.ops is RAND_OPS_INCREASING)


def test_op_lists_are_timms(aa):
    assert RAND_OPS == aa._RAND_TRANSFORMS and RAND_OPS_INCREASING == aa._RAND_INCREASING_TRANSFORMS
    assert set(RAND_OPS) | set(RAND_OPS_INCREASING) | {"PosterizeOriginal"} == set(OPS)


@pytest.mark.parametrize("negate", [False, True])
def test_level_functions_match_timm(aa, monkeypatch, negate):
    _both_signs(monkeypatch, aa, negate)
    hp = dict(aa._HPARAMS_DEFAULT)
    for name, (_, level_fn) in OPS.items():
        for m in LEVELS + [12.0, 15.0]:  # above 10: what mmax lets through
            theirs = aa.LEVEL_TO_ARG[name]
            expected = theirs(m, hp)[0] if theirs is not None else None
            got = level_fn(m, None)
            assert got == pytest.approx(expected, abs=1e-12) if expected is not None else got is None, (name, m)


def _timm_op(aa, name, img, arg, **kwargs):
    fn = aa.NAME_TO_OP[name]
    return fn(img, arg, **kwargs) if arg is not None else fn(img, **kwargs)


@pytest.mark.parametrize("name", COLOUR)
def test_colour_ops_match_pil_on_uint8_and_float(aa, monkeypatch, name):
    arr = _array()
    low = (arr // 2 + 40).astype(np.uint8)  # a narrow histogram: autocontrast / equalize have work to do
    for negate in (False, True) if name.endswith("Increasing") else (False,):
        _both_signs(monkeypatch, aa, negate)
        for src in (arr, low):
            for m in LEVELS:
                arg = OPS[name][1](m, None)
                try:
                    ref = _back(_timm_op(aa, name, _pil(src), arg))
                except ValueError:  # Pillow >= 12 refuses posterize(0); older Pillow (and timm's intent): black
                    assert name.startswith("Posterize") and arg == 0
                    ref = torch.zeros_like(_tensor(src))
                out = OPS[name][0](_tensor(src), arg)
                assert out.dtype == torch.uint8 and torch.equal(out, ref), (name, m, arg)
                out_f = OPS[name][0](_tensor(src).float() / 255, arg)
                assert out_f.dtype == torch.float32
                # float images skip PIL's uint8 rounding (grey / mean / smooth image, truncated blend): <= 1.5 levels
                assert (out_f * 255 - ref.float()).abs().max() <= 1.5, (name, m, arg)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_match_pil(aa, monkeypatch, name, interpolation):
    from PIL import Image
    resample = Image.BILINEAR if interpolation == "bilinear" else Image.BICUBIC
    fill = (124, 116, 104)  # timm's create_transform: round(255 * IMAGENET_MEAN)
    arr = _array()
    for negate in (False, True):
        _both_signs(monkeypatch, aa, negate)
        for m in (3.0, 9.0, 10.0):
            arg = OPS[name][1](m, None)
            ref = _back(_timm_op(aa, name, _pil(arr), arg, fillcolor=fill, resample=resample)).float()
            out = OPS[name][0](_tensor(arr), arg, fill=fill, interpolation=interpolation)
            diff = (out.float() - ref).abs()
            # same sampling points, same fill: all but a rare float rounding to the other side of a level
            assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, (name, m, arg)
            out_f = OPS[name][0](_tensor(arr).float() / 255, arg, fill=fill, interpolation=interpolation)
            diff_f = (out_f * 255 - ref).abs()
            assert diff_f.max() <= 1 + 1e-3 and diff_f.mean() < 1, (name, m, arg)


def test_shear_is_about_the_top_left_corner_like_pil():
    img = _tensor(_array()).float()

    def moved(a, b):
        return (a - b).abs().mean()

    out = ra.shear_x(img, 0.3)  # row y samples x + 0.3 (y + 0.5): row 0 moves 0.15 px, the middle row 5.5 px
    assert moved(out[:, 0], img[:, 0]) < moved(out[:, 18], img[:, 18]) / 3
    out = ra.shear_y(img, 0.3)
    assert moved(out[:, :, 0], img[:, :, 0]) < moved(out[:, :, 22], img[:, :, 22]) / 3


def test_magnitude_noise_and_clipping_follow_timm():
    g = torch.Generator().manual_seed(0)
    ours = RandAugment.from_string("rand-m9-mstd0.5")
    ms = torch.tensor([ours.sample_magnitude(g) for _ in range(4000)])
    assert ms.max() == 10.0 and ms.min() > 6 and abs(ms.mean() - 9) < 0.05  # N(9, 0.5) clipped at 10
    ms = torch.tensor([RandAugment.from_string("rand-m12-mmax15-mstd1").sample_magnitude(g) for _ in range(2000)])
    assert 11.8 < ms.mean() < 12.2 and ms.max() > 14
    ms = torch.tensor([RandAugment.from_string("rand-m8-mstd101").sample_magnitude(g) for _ in range(2000)])
    assert ms.min() >= 0 and ms.max() <= 8 and abs(ms.mean() - 4) < 0.25  # uniform in [0, m]
    assert RandAugment.from_string("rand-m20").sample_magnitude(g) == 10.0


def test_randaugment_runs_on_uint8_and_float_and_is_seeded():
    img = _tensor(_array())
    for spec in SPECS[:3]:
        t = RandAugment.from_string(spec)
        for x in (img, img.float() / 255):
            a = t(x, torch.Generator().manual_seed(3))
            b = t(x, torch.Generator().manual_seed(3))
            assert a.dtype == x.dtype and a.shape == x.shape and torch.equal(a, b)
    t = RandAugment.from_string("rand-m9-n4-p1.0")
    changed = sum(not torch.equal(t(img, torch.Generator().manual_seed(s)), img) for s in range(10))
    assert changed >= 9
    with pytest.raises(ValueError, match="unknown auto-augment part 'tweights'"):
        RandAugment.from_string("rand-m9-tweights")


def test_train_transform_passes_timms_hparams():
    """build_train_transform gives RandAugment timm's create_transform hparams: the mean colour as fill and the
    train interpolation."""
    from vitlab.data.randaugment import RandAugment
    from vitlab.data.transforms import build_train_transform
    t = build_train_transform(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), auto_augment="rand-m9-mstd0.5-inc1",
                              interpolation="bicubic")
    [ra] = [s for s in t.transforms if isinstance(s, RandAugment)]
    assert tuple(ra.fill) == (124, 116, 104) and ra.interpolation == "bicubic"

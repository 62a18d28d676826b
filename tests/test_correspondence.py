"""Region correspondence accuracy (EsViT Sec. 5) on cases with a known answer."""
import math

import pytest
import torch
from torch import nn

from vitlab.ssl.correspondence import (evaluate_correspondence, locate_in_view, pair_scores, token_centres,
                                       true_matches)


def test_token_centres_follow_the_crop_and_the_flip():
    box = torch.tensor([10.0, 20.0, 40.0, 80.0])                     # top, left, h, w
    c = token_centres(box, False, (8, 8), (2, 2))
    assert torch.allclose(c[0], torch.tensor([20.0, 40.0], dtype=torch.float64))    # (10 + 10, 20 + 20)
    assert torch.allclose(c[3], torch.tensor([40.0, 80.0], dtype=torch.float64))
    flipped = token_centres(box, True, (8, 8), (2, 2))
    assert torch.allclose(flipped[0], c[1]) and torch.allclose(flipped[1], c[0])   # columns swap


def test_locate_inverts_token_centres_for_every_flip():
    box = torch.tensor([3.0, 5.0, 30.0, 45.0])
    for flip in (False, True):
        idx, inside = locate_in_view(token_centres(box, flip, (12, 12), (3, 4)), box, flip, (12, 12), (3, 4))
        assert inside.all() and idx.tolist() == list(range(12))


def test_true_matches_of_a_view_and_its_mirror():
    box = torch.tensor([0.0, 0.0, 32.0, 32.0])
    target, valid = true_matches({"box": box, "flip": 0.0}, {"box": box, "flip": 1.0}, (32, 32), (32, 32),
                                 (4, 4), (4, 4))
    assert valid.all()
    assert target.view(4, 4).tolist() == [[r * 4 + 3 - c for c in range(4)] for r in range(4)]


def test_points_outside_the_other_crop_are_not_scored():
    a = {"box": torch.tensor([0.0, 0.0, 32.0, 64.0]), "flip": 0.0}
    b = {"box": torch.tensor([0.0, 32.0, 32.0, 32.0]), "flip": 0.0}                # right half only
    target, valid = true_matches(a, b, (32, 32), (32, 32), (4, 4), (4, 4))
    assert valid.view(4, 4)[:, :2].logical_not().all() and valid.view(4, 4)[:, 2:].all()
    assert target.view(4, 4)[0, 2:].tolist() == [1, 3]                              # columns 2, 3 of A -> 1, 3 of B


def test_perfect_features_score_one_and_random_features_score_chance():
    box_a, box_b = torch.tensor([0.0, 0.0, 64.0, 64.0]), torch.tensor([16.0, 8.0, 48.0, 48.0])
    ga, gb = {"box": box_a, "flip": 0.0}, {"box": box_b, "flip": 1.0}
    ca, cb = token_centres(box_a, False, (64, 64), (8, 8)), token_centres(box_b, True, (48, 48), (6, 6))
    centres = torch.linspace(0, 64, 33)
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), -1).view(-1, 2).double()

    def embed(p):                                                                   # RBF of the position
        return torch.exp(-((p[:, None] - grid[None]) ** 2).sum(-1) / 8.0)
    perfect = pair_scores(embed(ca), embed(cb), ga, gb, (64, 64), (48, 48), (8, 8), (6, 6))
    assert perfect["exact"].mean() == 1.0 and perfect["distance_px"].max() < 8 * 0.71
    torch.manual_seed(0)
    random = pair_scores(torch.randn(64, 16), torch.randn(36, 16), ga, gb, (64, 64), (48, 48), (8, 8), (6, 6))
    assert random["exact"].mean() < 0.2
    assert float(random["chance"][0]) == pytest.approx(1 / 36)


class PositionBackbone(nn.Module):
    """A 'backbone' whose tokens are RBF embeddings of the original-image position each pixel encodes
    (channel 0 = y / H, channel 1 = x / W): the ideal correspondence features."""
    feature_info = [{"reduction": 8}]

    def __init__(self):
        super().__init__()
        c = torch.linspace(0, 1, 17)
        self.register_buffer("grid", torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).view(-1, 2))

    def forward_features(self, x):
        pos = nn.functional.avg_pool2d(x[:, :2], 8).flatten(2).transpose(1, 2)     # B, N, 2 (a Swin-like layout)
        return torch.exp(-((pos[:, :, None] - self.grid) ** 2).sum(-1) / 0.005)

    def forward_head(self, x, pre_logits=False):
        return x.mean(1)


def test_evaluator_on_position_encoding_images():
    h = w = 96
    yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    image = (torch.stack([yy, xx, torch.zeros_like(xx)]) * 255).round().to(torch.uint8)
    dataset = [(image, 0)] * 6
    res = evaluate_correspondence(PositionBackbone(), dataset, mean=(0, 0, 0), std=(1, 1, 1), in_chans=3,
                                  view_size=64, pairs=6, photometric=False)
    assert res["pairs"] == 6 and res["images"] == 6 and res["grid"] == "8x8"
    assert res["exact"] > 90.0 and res["within_one"] == 100.0
    assert res["chance"] == pytest.approx(100 / 64)
    assert math.isfinite(res["distance_px"])
    more = evaluate_correspondence(PositionBackbone(), dataset, mean=(0, 0, 0), std=(1, 1, 1), in_chans=3,
                                   view_size=64, pairs=9, photometric=False)
    assert more["pairs"] == 9 and more["images"] == 6 and more["tokens"] > res["tokens"]


def test_region_scores_on_a_two_texture_image():
    labels = torch.zeros(32, 32, dtype=torch.long)
    labels[:, 16:] = 1                                                              # left half 0, right half 1
    labels[:8, 8:16] = 255                                                          # unlabelled: token 1
    geom = {"box": torch.tensor([0.0, 0.0, 32.0, 32.0]), "flip": 0.0}
    cols = torch.arange(16) % 4
    by_class = nn.functional.one_hot((cols >= 2).long(), 2).double()               # knows the texture only
    s = pair_scores(by_class, by_class, geom, geom, (32, 32), (32, 32), (4, 4), (4, 4), label_map=labels)
    assert len(s["exact"]) == 16 and len(s["same_region"]) == 15                  # the unlabelled token is left out
    assert s["same_region"].mean() == 1.0
    oracle = torch.tensor([1 / 7] * 7 + [1 / 8] * 8, dtype=torch.float64)         # 7 (8) tokens of class 0 (1)
    assert torch.allclose(s["label_oracle"].sort().values, oracle.sort().values)
    wrong = by_class.flip(1)                                                        # swapped textures
    s = pair_scores(by_class, wrong, geom, geom, (32, 32), (32, 32), (4, 4), (4, 4), label_map=labels)
    assert s["same_region"].mean() == 0.0 and s["exact"].mean() == 0.0


def test_label_maps_of_another_size_are_refused():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"label map 0 is \(16, 16\), expected the image's height x width"):
        evaluate_correspondence(PositionBackbone(), [(image, 0)], mean=(0, 0, 0), std=(1, 1, 1), in_chans=3,
                                view_size=32, pairs=1, label_maps=torch.zeros(1, 16, 16, dtype=torch.long))

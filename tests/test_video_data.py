"""Video data: frame sampling, clip transforms, PyAV round trip, multi-view testing, synthetic motion set."""
import numpy as np
import pytest
import torch

from vitlab.data.registry import DataRequest, build_dataset, get_dataset_entry
from vitlab.data.video import (ClipTransform, VideoClipDataset, dense_indices, multi_view_predict, read_video_frames,
                               uniform_indices, video_frame_count)

av = pytest.importorskip("av")
from vitlab.data.synthetic_video import CLASSES, render_video, write_video  # noqa: E402


def test_dense_sampling_stride_and_test_clips():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = dense_indices(100, 8, stride=4, generator=g)
        assert torch.equal(idx.diff(), torch.full((7,), 4)) and 0 <= idx[0] and idx[-1] <= 99
    clips = [dense_indices(100, 8, 4, clip_index=c, num_clips=4) for c in range(4)]
    starts = [int(c[0]) for c in clips]
    assert starts == [0, 24, 47, 71] and clips[-1][-1] == 99  # evenly spaced over the whole video
    assert int(dense_indices(100, 8, 4, clip_index=0, num_clips=1)[0]) == (100 - 29) // 2  # one clip: centred
    short = dense_indices(5, 8, 2, clip_index=0)
    assert short.tolist() == [0, 2, 4, 4, 4, 4, 4, 4]  # a short video repeats its last frame


def test_uniform_sampling_one_frame_per_segment():
    g = torch.Generator().manual_seed(1)
    idx = uniform_indices(40, 8, generator=g)
    assert torch.equal(idx // 5, torch.arange(8))
    a = uniform_indices(40, 8, clip_index=0, num_clips=2)
    b = uniform_indices(40, 8, clip_index=1, num_clips=2)
    assert a.tolist() == [1, 6, 11, 16, 21, 26, 31, 36] and b.tolist() == [3, 8, 13, 18, 23, 28, 33, 38]
    with pytest.raises(ValueError, match="'dense' or 'uniform'"):
        VideoClipDataset([], [], ClipTransform(32, True), sampling="random")


def test_clip_transforms_shapes_crops_and_normalisation():
    frames = torch.zeros(4, 48, 96, 3, dtype=torch.uint8)
    frames[:, :, :32] = 255  # left third white
    train = ClipTransform(32, train=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    g = torch.Generator().manual_seed(0)
    clip = train(frames, g)
    assert clip.shape == (3, 4, 32, 32) and clip.min() >= -1 - 1e-5 and clip.max() <= 1 + 1e-5
    test = ClipTransform(32, train=False, mean=(0.5,) * 3, std=(0.5,) * 3, num_crops=3)
    views = test(frames)
    assert views.shape == (3, 3, 4, 32, 32)
    means = views.mean((1, 2, 3, 4))  # white on the left: left crop brightest, right crop all black
    assert means[0] > 0.2 and means[0] > means[1] > means[2] and means[2] < -0.99
    torch.testing.assert_close(train(frames, torch.Generator().manual_seed(7)),
                               train(frames, torch.Generator().manual_seed(7)))


def test_pyav_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = render_video(0, rng, frames=6, size=32)
    path = tmp_path / "clip.mp4"
    write_video(path, frames)
    assert video_frame_count(path) == 6
    back = read_video_frames(path)
    assert back.shape == (6, 32, 32, 3)
    assert (back.float() - torch.from_numpy(frames).float()).abs().mean() < 12
    picked = read_video_frames(path, torch.tensor([5, 0, 5]))
    torch.testing.assert_close(picked[1], back[0])
    torch.testing.assert_close(picked[0], back[5])


def _centroid(frame: np.ndarray) -> np.ndarray:
    mask = frame.astype(np.int32).sum(-1) > 3 * 130  # the shape is brighter than any background
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_synthetic_classes_live_in_time(label):
    video = render_video(label, np.random.default_rng([3, label]), frames=16, size=64)
    again = render_video(label, np.random.default_rng([3, label]), frames=16, size=64)
    assert np.array_equal(video, again)  # deterministic
    motion = _centroid(video[-1]) - _centroid(video[0])
    name = CLASSES[label]
    expected = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}.get(name)
    if expected is None:  # turning in place: the centroid stays, the pixels change
        assert np.abs(motion).max() < 4 and np.abs(video[-1].astype(int) - video[0]).max() > 100
    else:
        across = motion[1] if expected[0] else motion[0]
        assert np.dot(motion, expected) > 15 and abs(across) < 2


def _video_folder(root, per_class=2, frames=12):
    for split in ("train", "val"):
        for label, name in enumerate(CLASSES[:2]):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                video = render_video(label, np.random.default_rng([label, i, split == "val"]), frames, 48)
                write_video(root / split / name / f"{i}.mp4", video)
    return root


def test_video_folder_dataset_multi_view_and_seeded_training(tmp_path):
    root = _video_folder(tmp_path / "videos")
    req = DataRequest(name="video-folder", root=str(root), input_size=(3, 32, 32),
                      options={"num_frames": 4, "stride": 2, "test_clips": 2, "test_crops": 3})
    bundle = build_dataset(req)
    assert bundle.input_kind == "video" and bundle.class_names == list(CLASSES[:2])
    views, label = bundle.val[3]
    assert views.shape == (6, 3, 4, 32, 32) and label == 1
    a, _ = bundle.train[(1, 1234)]
    b, _ = bundle.train[(1, 1234)]
    c, _ = bundle.train[(1, 99)]
    assert a.shape == (3, 4, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert get_dataset_entry("video-folder").input_kind == "video"
    from vitlab.tasks import task_class
    assert task_class("video").name == "video"


def test_multi_view_predict_averages_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    views = torch.randn(2, 3, 3, 2, 4, 4)
    out = multi_view_predict(model, views)
    probs = torch.stack([model(views[:, v]).softmax(-1) for v in range(3)], 1).mean(1)
    torch.testing.assert_close(out.exp(), probs)
    torch.testing.assert_close(multi_view_predict(model, views[:, 0]), model(views[:, 0]))

"""The dataset layouts of the paper recipes, on tiny datasets written here: video lists (Kinetics CSVs with
class orders, Something-Something V2 JSON, frame folders), segmentation layouts (ADE20K, COCO-Stuff-10K
with .mat files, PASCAL-Context 59/60), ``dataset.json`` and the refusals."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data.folder import Skipped
from vitlab.data.registry import DataRequest, build_dataset, get_dataset_entry, parse_data_spec
from vitlab.errors import DataError

av = pytest.importorskip("av")
from vitlab.data.synthetic_video import render_video, write_video  # noqa: E402

OPTS = {"num_frames": 4, "stride": 1}


def _req(spec, **kw):
    name, root = parse_data_spec(spec)
    return DataRequest(name=name, root=root, input_size=kw.pop("input_size", (3, 32, 32)),
                       options={**OPTS, **kw.pop("options", {})}, **kw)


def _video(path, label=0, frames=8, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, render_video(label, np.random.default_rng([seed, label]), frames, 32))


# ---- video lists ---------------------------------------------------------------------------------------------

def test_path_label_lists_follow_the_class_order_file(tmp_path):
    for i in range(3):
        _video(tmp_path / "clips" / f"v{i}.mp4", i % 2, seed=i)
    (tmp_path / "train.csv").write_text("clips/v0.mp4,2\nclips/v1.mp4,0\n")      # UniFormer: path,label
    (tmp_path / "val.csv").write_text("clips/v2.mp4 1\n")                        # SlowFast: path label
    (tmp_path / "classes.txt").write_text("zumba\t0\nabseiling\t1\nyoga\t2\n")   # name<TAB>index, not sorted
    bundle = build_dataset(_req(f"video-list:{tmp_path}", options={"test_clips": 2}))
    assert bundle.class_names == ["zumba", "abseiling", "yoga"] and bundle.input_kind == "video"
    assert bundle.train.labels == [2, 0] and bundle.val.labels == [1]
    clip, label = bundle.train[(0, 7)]
    assert clip.shape == (3, 4, 32, 32) and label == 2
    views, label = bundle.val[0]
    assert views.shape == (2, 3, 4, 32, 32) and label == 1
    assert "classes.txt (3 classes)" in bundle.info["class_order"]
    (tmp_path / "val.csv").write_text("clips/v2.mp4 3\n")
    with pytest.raises(DataError, match=r"val\.csv line 1: label 3 is outside the class order .*classes\.txt"):
        build_dataset(_req(f"video-list:{tmp_path}"))


def test_kinetics_csv_uses_the_released_class_order_and_skips_missing_videos(tmp_path):
    """The official CSV with class names -> UniFormer's K400 indices (not alphabetical: the near-zero accuracy)."""
    _video(tmp_path / "train" / "abseiling" / "AAAAAAAAAAA_000010_000020.mp4", 0)        # ActivityNet downloader
    _video(tmp_path / "train" / "BBBBBBBBBBB_000001_000011.mp4", 1)                       # the CVDF copy (flat)
    _video(tmp_path / "val" / "CCCCCCCCCCC.mp4", 0)                                       # <id>.mp4
    head = "label,youtube_id,time_start,time_end,split,is_cc\n"
    (tmp_path / "train.csv").write_text(head + "abseiling,AAAAAAAAAAA,10,20,train,0\n"
                                        "air drumming,BBBBBBBBBBB,1,11,train,0\n"
                                        "passing American football (in game),DDDDDDDDDDD,5,15,train,0\n")
    (tmp_path / "val.csv").write_text(head + "abseiling,CCCCCCCCCCC,3,13,val,0\n")
    bundle = build_dataset(_req(f"kinetics400:{tmp_path}"))
    assert bundle.num_classes == 400 and bundle.class_names[341] == "abseiling"
    assert bundle.train.labels == [341, 158, 175] and bundle.val.labels == [341]
    assert bundle.info["class_order"] == "uniformer-k400 (400 classes)"
    assert bundle.train[0][1] == 341 and bundle.val[0][0].shape == (3, 4, 32, 32)
    missing = bundle.train[2]  # DDDDDDDDDDD was never downloaded: skipped and named, as an unreadable image
    assert isinstance(missing, Skipped) and "DDDDDDDDDDD_000005_000015.mp4" in missing.path
    assert "train.csv line 4" in missing.reason and "\n" not in str(missing)
    (tmp_path / "val" / "CCCCCCCCCCC.mp4").write_bytes(b"not a video")  # undecodable: skipped too, with the reason
    broken = build_dataset(_req(f"kinetics400:{tmp_path}", splits=("val",))).val[0]
    assert isinstance(broken, Skipped) and broken.path.endswith("CCCCCCCCCCC.mp4") and "Invalid data" in broken.reason
    _video(tmp_path / "val" / "CCCCCCCCCCC.mp4", 0)
    # the same CSV read alphabetically (what gave accuracy ~0 with the released weights)
    alpha = build_dataset(_req(f"kinetics400:{tmp_path}", options={"class_order": "alphabetical"}))
    assert alpha.class_names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert alpha.train.labels == [0, 1, 2]
    k600 = build_dataset(_req(f"kinetics600:{tmp_path}"))  # underscore names of UniFormer's K600 lists match too
    assert k600.num_classes == 600 and k600.train.labels == [199, 274, 192]
    (tmp_path / "val.csv").write_text(head + "abseilling,CCCCCCCCCCC,3,13,val,0\n")
    with pytest.raises(DataError, match=r"^val\.csv line 2: label 'abseilling' is not in the class order "
                                        r"uniformer-k400 \(400 classes\); did you mean 'abseiling'\?$"):
        build_dataset(_req(f"kinetics400:{tmp_path}"))


@pytest.mark.parametrize("text, message", [
    ("yoga\nzumba\nyoga\n", r"lists 'yoga' twice \(entries 0 and 2\)"),
    ("yoga 0\nzumba 1\nabseiling 1\n", r"gives index 1 to both 'zumba' \(line 2\) and 'abseiling' \(line 3\)"),
    ("yoga 0\nzumba 2\n", r"indices must run 0\.\.1; 1 missing"),
    ("Yoga\nyoga\n", "twice"),  # names compare without case, underscores or brackets
])
def test_class_order_file_refusals(tmp_path, text, message):
    _video(tmp_path / "a.mp4")
    (tmp_path / "train.csv").write_text("a.mp4 0\n")
    (tmp_path / "order.txt").write_text(text)
    with pytest.raises(DataError, match=message) as e:
        build_dataset(_req(f"video-list:{tmp_path}", splits=("train",), options={"class_order": "order.txt"}))
    assert "\n" not in str(e.value) and "order.txt" in str(e.value)


def test_ssv2_json_pair_and_template_lookup(tmp_path):
    labels = {"Pushing something from left to right": "0", "Pushing something from right to left": "1",
              "Putting something, something and something on the table": "2"}
    (tmp_path / "something-something-v2-labels.json").write_text(json.dumps(labels))
    entry = lambda vid, template: {"id": vid, "label": template.lower(), "template": template,  # noqa: E731
                                   "placeholders": ["a pen"]}
    (tmp_path / "something-something-v2-train.json").write_text(json.dumps([
        entry("11", "Pushing [something] from right to left"),
        entry("12", "Putting [something], [something] and [something] on the table")]))
    (tmp_path / "something-something-v2-validation.json").write_text(json.dumps([
        entry("13", "Pushing [something] from left to right")]))
    for vid in ("11", "12", "13"):
        _video(tmp_path / "20bn-something-something-v2" / f"{vid}.mp4", int(vid) % 2, frames=10)
    bundle = build_dataset(_req(f"ssv2:{tmp_path}"))
    assert bundle.class_names == list(labels) and bundle.train.labels == [1, 2] and bundle.val.labels == [0]
    assert bundle.info["sampling"] == "uniform" and bundle.val.sampling == "uniform"  # the SS protocol
    assert bundle.train[(1, 3)][0].shape == (3, 4, 32, 32)
    # a class order with the bracketed templates (UniFormer's category.txt style) matches the same entries
    (tmp_path / "category.txt").write_text("Putting [something], [something] and [something] on the table\n"
                                           "Pushing [something] from left to right\n"
                                           "Pushing [something] from right to left\n")
    again = build_dataset(_req(f"ssv2:{tmp_path}", options={"class_order": "category.txt"}))
    assert again.train.labels == [2, 0] and again.val.labels == [1]
    assert build_dataset(_req(f"ssv2:{tmp_path}")).train.labels == [1, 2]  # never found by itself: labels.json rules
    (tmp_path / "something-something-v2-validation.json").write_text(json.dumps([entry("13", "Juggling [something]")]))
    with pytest.raises(DataError, match=r"something-something-v2-validation\.json entry 0: label 'Juggling something' "
                                        r"is not in the class order .*labels\.json \(3 classes\)"):
        build_dataset(_req(f"ssv2:{tmp_path}"))


def test_frame_folders_with_an_id_frames_label_list(tmp_path):
    rng = np.random.default_rng(0)
    for vid, n in (("100", 6), ("101", 5)):
        (tmp_path / "frames" / vid).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(tmp_path / "frames" / vid /
                                                                                  f"{i:05d}.jpg")
    (tmp_path / "category.txt").write_text("Holding something\nClosing something\n")
    (tmp_path / "train.txt").write_text("100 6 1\n404 9 0\n")
    (tmp_path / "val.txt").write_text("101 5 0\n")
    bundle = build_dataset(_req(f"frame-list:{tmp_path}", options={"test_crops": 3}))
    assert bundle.class_names == ["Holding something", "Closing something"] and bundle.train.labels == [1, 0]
    clip, label = bundle.train[(0, 5)]
    assert clip.shape == (3, 4, 32, 32) and label == 1
    views, label = bundle.val[0]
    assert views.shape == (3, 3, 4, 32, 32) and label == 0
    gone = bundle.train[1]
    assert isinstance(gone, Skipped) and gone.path.endswith("frames/404") and "train.txt line 2" in gone.reason
    (tmp_path / "val.txt").write_text("101 5 2\n")
    with pytest.raises(DataError, match=r"val\.txt line 1: label 2 is outside the class order"):
        build_dataset(_req(f"frame-list:{tmp_path}"))


def test_video_folder_follows_dataset_json(tmp_path):
    for split in ("train", "val"):
        for label, name in enumerate(("run", "jump")):
            _video(tmp_path / split / name / "0.mp4", label, frames=6)
    (tmp_path / "dataset.json").write_text(json.dumps({"class_order": ["swim", "jump", "run"]}))
    bundle = build_dataset(_req(f"video-folder:{tmp_path}"))
    assert bundle.class_names == ["swim", "jump", "run"] and bundle.train.labels == [1, 2]
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["swim", "jump"]}))
    with pytest.raises(DataError, match=r"class folder .*train/run: label 'run' is not in the class order"):
        build_dataset(_req(f"video-folder:{tmp_path}"))
    (tmp_path / "train.csv").write_text("train/run/0.mp4 0\n")
    (tmp_path / "dataset.json").write_text(json.dumps({"layout": "video-list", "class_order": "alphabetical"}))
    listed = build_dataset(_req(f"video-folder:{tmp_path}", splits=("train",)))  # the layout picks the reader
    assert listed.info["layout"] == "video-list" and listed.train.labels == [0]


# ---- dataset.json ---------------------------------------------------------------------------------------------

def test_dataset_json_is_checked_in_one_line(tmp_path):
    (tmp_path / "images/validation").mkdir(parents=True)
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a", "b"], "palete": [[1, 2, 3]],
                                                       "reduce_zero_label": "yes", "ignore_index": -1,
                                                       "seed": 3, "name": "mine"}))
    with pytest.raises(DataError) as e:
        build_dataset(_req(f"ade20k:{tmp_path}"))
    msg = str(e.value)
    assert "\n" not in msg and "dataset.json" in msg and "unknown key 'palete'" in msg
    assert "'reduce_zero_label' must be true or false, got 'yes'" in msg and "'ignore_index' must be" in msg
    assert "'seed'" not in msg and "'name'" not in msg  # descriptive keys are fine
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a", "b"], "palette": [[1, 2, 3]],
                                                       "layout": "cityscapes"}))
    with pytest.raises(DataError, match=r"'palette' has 1 colours for 2 classes.*'layout' must be one of|"
                                        r"'layout' must be one of .*'palette' has 1 colours for 2 classes"):
        build_dataset(_req(f"ade20k:{tmp_path}"))
    (tmp_path / "dataset.json").write_text(json.dumps({"layout": "pascal-context"}))
    with pytest.raises(DataError, match="says layout 'pascal-context', but this reader takes ade20k"):
        build_dataset(_req(f"ade20k:{tmp_path}"))


# ---- segmentation layouts -------------------------------------------------------------------------------------

def _image(path, h=6, w=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode="L").save(path)


ROW = [0, 1, 2, 150, 255, 3, 1, 0]


def test_ade20k_layout_by_name(tmp_path):
    for split in ("training", "validation"):
        _image(tmp_path / "images" / split / "ADE_x.jpg")
        _png(tmp_path / "annotations" / split / "ADE_x.png", [ROW] * 6)
    bundle = build_dataset(_req(f"ade20k:{tmp_path}", input_size=(3, 16, 16)))
    assert bundle.input_kind == "mask" and bundle.num_classes == 150 and bundle.class_names[:3] == ["wall", "building",
                                                                                                   "sky"]
    assert len(bundle.info["palette"]) == 150 and bundle.info["reduce_zero_label"] is True
    img, label = bundle.val[0]
    assert img.shape == (3, 6, 8) and label[0].tolist() == [255, 0, 1, 149, 255, 2, 0, 255]
    img, label = bundle.train[(0, 1)]
    assert img.shape == (3, 16, 16) and label.shape == (16, 16)  # a crop padded with the ignore label
    assert get_dataset_entry("ade20k").input_kind == "mask"


def test_coco_stuff10k_mat_files_and_their_conversion(tmp_path):
    from scipy.io import savemat
    from vitlab.data.seg_layouts import convert_coco_stuff10k
    raw = tmp_path / "cocostuff-10k"
    ids = np.array([[0, 1, 11, 13, 27, 92, 182, 1]] * 6, np.uint16)  # 0 unlabelled, COCO ids 1..182
    for split, name in (("train", "COCO_train2014_000000000077"), ("test", "COCO_train2014_000000000078")):
        _image(raw / "images" / f"{name}.jpg")
        (raw / "annotations").mkdir(exist_ok=True)
        savemat(raw / "annotations" / f"{name}.mat", {"S": ids, "names": np.array(["x"], dtype=object)})
        (raw / "imageLists").mkdir(exist_ok=True)
        (raw / "imageLists" / f"{split}.txt").write_text(name + "\n")
    expected = [255, 0, 10, 11, 24, 80, 170, 0]  # mmseg's clsID_to_trID, then reduce_zero_label
    bundle = build_dataset(_req(f"coco-stuff10k:{raw}"))
    assert bundle.num_classes == 171 and bundle.class_names[0] == "person" and bundle.class_names[80] == "banner"
    assert bundle.val[0][1][0].tolist() == expected and bundle.train.labels[0].suffix == ".mat"
    out = convert_coco_stuff10k(raw, tmp_path / "converted")
    png = np.asarray(Image.open(out / "annotations/train2014/COCO_train2014_000000000077_labelTrainIds.png"))
    assert png[0].tolist() == [0, 1, 11, 12, 25, 81, 171, 1]  # the converter's 0..171
    converted = build_dataset(_req(f"coco-stuff10k:{out}"))
    assert converted.val[0][1][0].tolist() == expected and converted.train.labels[0].suffix == ".png"
    savemat(raw / "annotations" / "COCO_train2014_000000000078.mat", {"T": ids})
    with pytest.raises(DataError, match=r"000078\.mat: expected a 2-D label matrix 'S'"):
        build_dataset(_req(f"coco-stuff10k:{raw}", splits=("val",))).val[0]


def test_pascal_context_59_and_60(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    for split, name in (("train", "2008_000002"), ("val", "2008_000003")):
        _image(voc / "JPEGImages" / f"{name}.jpg")
        _png(voc / "SegmentationClassContext" / f"{name}.png", [[0, 1, 2, 58, 59, 0, 1, 2]] * 6)
        (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text(name + "\n")
    sixty = build_dataset(_req(f"pascal-context:{tmp_path}"))
    assert sixty.num_classes == 60 and sixty.class_names[:2] == ["background", "aeroplane"]
    assert sixty.val[0][1][0].tolist() == [0, 1, 2, 58, 59, 0, 1, 2]
    fifty_nine = build_dataset(_req(f"pascal-context-59:{voc}"))
    assert fifty_nine.num_classes == 59 and fifty_nine.class_names[0] == "aeroplane"
    assert fifty_nine.class_names[-1] == "wood" and fifty_nine.info["palette"][0] == [180, 120, 120]
    assert fifty_nine.val[0][1][0].tolist() == [255, 0, 1, 57, 58, 255, 0, 1]
    # what `vitlab segment train --data PATH` does: a SegmentationFolder on a folder whose dataset.json names the layout
    from vitlab.data.segmentation import SegmentationFolder
    (voc / "dataset.json").write_text(json.dumps({"layout": "pascal-context-59", "name": "my copy"}))
    probe = SegmentationFolder(voc, "validation")
    assert probe.meta["reduce_zero_label"] is True and probe.num_classes == 59
    assert probe[0][1][0].tolist() == [255, 0, 1, 57, 58, 255, 0, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not in the PASCAL-Context layout"):
        build_dataset(_req(f"pascal-context:{tmp_path / 'empty'}"))


def test_dataset_json_overrides_layout_defaults(tmp_path):
    for split in ("training", "validation"):
        _image(tmp_path / "images" / split / "a.png")
        _png(tmp_path / "annotations" / split / "a.png", [[0, 1, 2, 3, 0, 1, 2, 3]] * 6)
    (tmp_path / "dataset.json").write_text(json.dumps({"layout": "ade20k", "classes": ["sky", "sea", "sand"],
                                                       "ignore_index": 254}))
    bundle = build_dataset(_req(f"ade20k:{tmp_path}", splits=("val",)))
    assert bundle.class_names == ["sky", "sea", "sand"] and bundle.info["palette"] is None  # ADE's 150 colours dropped
    assert bundle.val.ignore_index == 254 and bundle.val[0][1][0].tolist() == [254, 0, 1, 2, 254, 0, 1, 2]
    assert torch.is_tensor(bundle.val[0][0])


def test_segment_train_reads_a_layout_by_name(tmp_path, capsys):
    """`vitlab segment train --data pascal-context-59:PATH`: the layout's classes and reduce_zero_label reach the run."""
    from vitlab.cli.main import main
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    for split, names in (("train", ["2008_000002", "2008_000004"]), ("val", ["2008_000003"])):
        for name in names:
            _image(voc / "JPEGImages" / f"{name}.jpg", 32, 32)
            _png(voc / "SegmentationClassContext" / f"{name}.png", [[0, 1, 2, 58, 59, 0, 1, 2] * 4] * 32)
        (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(names) + "\n")
    run = tmp_path / "run"
    assert main(["segment", "train", "--model", "segvit_micro", "--data", f"pascal-context-59:{tmp_path}",
                 "--steps", "2", "--batch-size", "2", "--crop-size", "32", "--threads", "1", "-o", str(run),
                 "--json"]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["num_classes"] == 59 and config["dataset"]["reduce_zero_label"] is True
    assert config["label_names"][0] == "aeroplane" and config["label_names"][-1] == "wood"
    assert main(["segment", "train", "--model", "segvit_micro", "--data", f"pascal-context-59:{tmp_path / 'nope'}",
                 "--steps", "2", "-o", str(tmp_path / "run2")]) == 2
    assert "pascal-context-59:PATH" in capsys.readouterr().err

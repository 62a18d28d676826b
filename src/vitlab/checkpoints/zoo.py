"""The model zoo: every released official checkpoint that loads into a registered vitlab model.

Names are ``<registered model>.<tag>``: the part before the dot is the vitlab model the file loads into
(``vitlab models``), the tag says what it was trained on and how (``in1k``, ``in1k_tl`` token labeling,
``in1k_tl_384`` fine-tuned at 384, ``k400_16x4`` 16 frames with stride 4, ``coco_3x_ms``, ``ade20k``,
``esvit_in1k`` view + region tasks ...). A registered model name alone means its first entry here
(:func:`pretrained_entry`), so ``volo_d1`` is ``volo_d1.in1k``.

Every URL and number was read from the official README named in ``source`` (the commit read is in the
link): sail-sg/volo, Sense-X/UniFormer (image, video, detection and pose READMEs), zbwxp/SegVit,
microsoft/esvit. ``crop_pct`` is what the official evaluation code uses (VOLO ``models/volo.py`` default
configs; UniFormer ``datasets.py`` resize 256/224; token labeling: timm's ``_cfg()`` 0.9; EsViT
``eval_knn.py`` 256 -> 224); None where evaluation is not a centre crop (video, detection, pose,
segmentation). ``sha256`` is None everywhere: no README publishes hashes, so the first download's hash is
recorded and checked afterwards (:mod:`vitlab.checkpoints.download`). Google Drive links
(``direct=False``) cannot be fetched by a script: download them in a browser and ``vitlab weights add``.

Not listed (released, but vitlab has no variant for them): UniFormer video XXS/XS, Mask R-CNN XXS/XS,
the UniFormer Semantic FPN / UperNet segmentation models, EsViT's ResNet-50, ViL and CvT. Pale Transformer:
no official checkpoints have been published.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vitlab.errors import VitlabError

VOLO_README = "https://github.com/sail-sg/volo/blob/cf35775276a887ccd749ad82c3ba0ac034020cc9/README.md"
_UNIFORMER = "https://github.com/Sense-X/UniFormer/blob/52a0415e4e0dda880fab8ffbc710e4d8e171149d/"
UNIFORMER_IMAGE_README = _UNIFORMER + "image_classification/README.md"
UNIFORMER_VIDEO_README = _UNIFORMER + "video_classification/README.md"
UNIFORMER_DETECTION_README = _UNIFORMER + "object_detection/README.md"
UNIFORMER_POSE_README = _UNIFORMER + "pose_estimation/README.md"
SEGVIT_README = "https://github.com/zbwxp/SegVit/blob/763137e687ab830dd4e7352b80ab27e54e0b07e4/README.md"
ESVIT_README = "https://github.com/microsoft/esvit/blob/2d6becd92be61860697faabf35f88e0698e24379/README.md"

# The EsViT README: "The data is on Azure Storage Blob, a SAS with Read permission is provided. Please append
# the following SAS at the end of each link to download" (public, read-only, valid until 3023).
ESVIT_SAS = ("sp=r&st=2023-08-28T01:36:35Z&se=3023-08-28T09:36:35Z&sv=2022-11-02&sr=c"
             "&sig=coos9vSl4Xk6S6KvqZffkVCUb7Ug%2FFR9cfyc3xacMJI%3D")

# models with no official checkpoint, and why (named in the error for them)
UNRELEASED = {"pale": "no official Pale Transformer checkpoints have been published"}


class UnknownWeightsError(VitlabError, KeyError):
    """A name that is neither a zoo entry nor a model with one; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint. ``results`` are (metric, value) pairs as the README reports them;
    ``kwargs`` are the ``create_model`` overrides it needs (classes, size, frames, head_dim);
    ``resolution`` is a side, or (height, width); ``frames`` the clip length of video models."""

    name: str
    model: str
    url: str
    source: str
    dataset: str
    results: tuple[tuple[str, float], ...]
    resolution: int | tuple[int, int]
    crop_pct: float | None
    sha256: str | None = None
    direct: bool = True
    kwargs: tuple[tuple[str, Any], ...] = ()
    frames: int | None = None
    query: str = ""
    notes: str = ""

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def download_url(self) -> str:
        """The URL fetched: a Hugging Face ``/blob/`` page link becomes its ``/resolve/`` file link (the Hub's
        documented raw-file form); ``query`` (EsViT's SAS) is appended."""
        url = self.url
        if self.host == "huggingface.co" and "/blob/" in url:
            url = url.replace("/blob/", "/resolve/", 1)
        return f"{url}?{self.query}" if self.query else url

    @property
    def filename(self) -> str:
        """The file name in the cache: the entry name plus the URL's extension (``.pth`` when it has none)."""
        base = urlsplit(self.url).path.rsplit("/", 1)[-1]
        ext = ".pth.tar" if base.endswith(".pth.tar") else ("." + base.rsplit(".", 1)[-1] if "." in base else "")
        return self.name + (ext if ext in (".pth", ".pth.tar", ".pt", ".bin", ".safetensors") else ".pth")

    @property
    def input_text(self) -> str:
        """``224``, ``256x192`` (height x width) or ``16x224`` (frames x side)."""
        side = "x".join(map(str, self.resolution)) if isinstance(self.resolution, tuple) else str(self.resolution)
        return f"{self.frames}x{side}" if self.frames else side

    @property
    def result_text(self) -> str:
        return ", ".join(f"{metric} {value:.1f}" for metric, value in self.results)

    def row(self) -> dict[str, Any]:
        """A JSON-ready summary (``vitlab models --zoo --json``, ``vitlab weights list --json``)."""
        return {"name": self.name, "model": self.model, "dataset": self.dataset, "input": self.input_text,
                "crop_pct": self.crop_pct, "results": dict(self.results), "url": self.url, "host": self.host,
                "direct": self.direct, "sha256": self.sha256, "kwargs": self.model_kwargs, "source": self.source,
                "notes": self.notes}


def _gdrive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"


# --- VOLO (sail-sg/volo README, "2. VOLO Models"; GitHub release assets) ---------------------------------

def _volo(model: str, file: str, res: int, top1: float, crop: float) -> ZooEntry:
    return ZooEntry(f"{model}.in1k", model, f"https://github.com/sail-sg/volo/releases/download/volo_1/{file}",
                    VOLO_README, "ImageNet-1k", (("top-1", top1),), res, crop,
                    notes="trained with token labeling" + (f"; fine-tuned at {res}" if res != 224 else ""))


VOLO = (
    _volo("volo_d1", "d1_224_84.2.pth.tar", 224, 84.2, 0.96),
    _volo("volo_d1_384", "d1_384_85.2.pth.tar", 384, 85.2, 0.96),
    _volo("volo_d2", "d2_224_85.2.pth.tar", 224, 85.2, 0.96),
    _volo("volo_d2_384", "d2_384_86.0.pth.tar", 384, 86.0, 0.96),
    _volo("volo_d3", "d3_224_85.4.pth.tar", 224, 85.4, 0.96),
    _volo("volo_d3_448", "d3_448_86.3.pth.tar", 448, 86.3, 0.96),
    _volo("volo_d4", "d4_224_85.7.pth.tar", 224, 85.7, 1.15),
    _volo("volo_d4_448", "d4_448_86.79.pth.tar", 448, 86.8, 1.15),
    _volo("volo_d5", "d5_224_86.10.pth.tar", 224, 86.1, 1.15),
    _volo("volo_d5_448", "d5_448_87.0.pth.tar", 448, 87.0, 1.15),
    _volo("volo_d5_512", "d5_512_87.07.pth.tar", 512, 87.1, 1.15),
)


# --- UniFormer image classification (image_classification/README.md; Google Drive) ----------------------

def _uniformer(name: str, file_id: str, top1: float, crop: float = 0.875, res: int = 224, notes: str = "",
               **kwargs) -> ZooEntry:
    if res != 224:
        kwargs["img_size"] = res
    return ZooEntry(name, name.split(".")[0], _gdrive(file_id), UNIFORMER_IMAGE_README, "ImageNet-1k",
                    (("top-1", top1),), res, crop, direct=False, kwargs=tuple(kwargs.items()), notes=notes)


_TL = 0.9  # token-labeling models are evaluated with timm's _cfg() crop (tlt/models/uniformer.py)
UNIFORMER_IMAGE = (
    _uniformer("uniformer_small.in1k", "1-uepH3Q3BhTmWU6HK-sGAGQC_MpfIiPD", 82.9),
    _uniformer("uniformer_small_plus.in1k", "10IN5ULcjz0Ld_lDokkTGOSmRFXLzUkEs", 83.4, notes="head_dim 32"),
    _uniformer("uniformer_small_plus.in1k_dim64", "178ipRvMBKeAP_Fzy6fEr2HQkIQWdgEY6", 83.4,
               notes="re-trained with head_dim 64 for downstream tasks", head_dim=64),
    _uniformer("uniformer_base.in1k", "1-wT39QazTGELxgrQIu6J12D3qcla3hui", 83.8),
    _uniformer("uniformer_base_ls.in1k", "10FnwzMVgGL8bPO3EMZ7oG4vDvqnPoBK5", 83.9, notes="layer scale"),
    _uniformer("uniformer_small_token_labeling.in1k_tl", "16wjfeyqQFZ2x9W91EXf0Py1bfv4Fydfr", 83.4, _TL),
    _uniformer("uniformer_small_plus_token_labeling.in1k_tl", "16rgtEVEeX3jVTQaiLsojBQP5sRaj_2aZ", 83.9, _TL),
    _uniformer("uniformer_base_token_labeling.in1k_tl", "16nsTjawiYZuoCHBRarr58zA7vCFcmQmL", 85.1, _TL),
    _uniformer("uniformer_large_ls.in1k_tl", "173e2qaJhOwbuC_DbNQSH47Oo_04mSfDj", 85.6, _TL),
    _uniformer("uniformer_small_token_labeling.in1k_tl_dim64", "17NC5qqAWCT2gI_jY_cJnFTOqRQTSwsoz", 83.4, _TL,
               notes="head_dim 64", head_dim=64),
    _uniformer("uniformer_small_plus_token_labeling.in1k_tl_dim64", "17OfoDWt2_nA0BYN0OuLPpG8mHJDTluQQ", 83.6, _TL,
               notes="head_dim 64", head_dim=64),
    _uniformer("uniformer_base_token_labeling.in1k_tl_dim64", "17MneG9CnZG6zBvXYUr4WUXoTYc4rjJj5", 84.8, _TL,
               notes="head_dim 64", head_dim=64),
    _uniformer("uniformer_small_token_labeling.in1k_tl_384", "16p4CXzuXC5J4_SJK67dsvnc8gTKmtKN1", 84.6, _TL, 384),
    _uniformer("uniformer_small_plus_token_labeling.in1k_tl_384", "16wJT87vTc43Dt1q2sXrxZRUuEdrNdFdk", 84.9, _TL,
               384),
    _uniformer("uniformer_base_token_labeling.in1k_tl_384", "16kZlIarIwf9ldkCdHVKTQfFmDgfkucQ7", 86.0, _TL, 384),
    _uniformer("uniformer_large_ls.in1k_tl_384", "174rcA6rNzYVG9Ya9ik-NwTGoxW1M79ez", 86.3, _TL, 384),
    # lightweight models (600 epochs): one checkpoint per training resolution
    _uniformer("uniformer_xxs.in1k", "1Cw9r_3c30N-esFI8RFYa6rQXJrr1rAHY", 80.6),
    _uniformer("uniformer_xxs.in1k_128", "1Cr7uB5hUck1BHioEROWZjfLpYRwg4Zps", 76.8, res=128),
    _uniformer("uniformer_xxs.in1k_160", "1CsXCzfVFPyM2mY8BA_1fO3q_VBngnF44", 79.1, res=160),
    _uniformer("uniformer_xxs.in1k_192", "1CjrCEnZCk2aLrN7nVG8vFvu3FAUL4_Y_", 79.9, res=192),
    _uniformer("uniformer_xs.in1k", "1CwQ91fjuAu3Rhn3zV4vjAmQ8v36AfYPT", 82.0),
    _uniformer("uniformer_xs.in1k_192", "1Ce2Dk9-k_-sHt5dXp-gfNOEK37Jdcffv", 81.5, res=192),
)


# --- UniFormer video (video_classification/README.md; Google Drive) -------------------------------------

_VIDEO_DATA = {"k400": ("Kinetics-400", 400), "k600": ("Kinetics-600", 600), "ssv1": ("Something-Something V1", 174),
               "ssv2": ("Something-Something V2", 174), "ucf101": ("UCF101", 101), "hmdb51": ("HMDB51", 51)}


def _video(name: str, file_id: str, top1: float, frames: int, views: str, notes: str = "") -> ZooEntry:
    model, tag = name.split(".")
    dataset, classes = _VIDEO_DATA[tag.split("_")[0]]
    kwargs = {**({"num_classes": classes} if classes != 400 else {}),
              **({"num_frames": frames} if frames != 16 else {})}
    return ZooEntry(name, model, _gdrive(file_id), UNIFORMER_VIDEO_README, dataset, (("top-1", top1),), 224, None,
                    direct=False, kwargs=tuple(kwargs.items()), frames=frames,
                    notes=f"{views} views (frames x crops x clips)" + (f"; {notes}" if notes else ""))


UNIFORMER_VIDEO = (
    _video("uniformer_video_small.k400_16x4", "1-jGZIIuTM5IYIpqkNTojhGhfMc7Gu9Kt", 80.8, 16, "16x1x4"),
    _video("uniformer_video_small.k400_8x8", "1-kitVTkWErHXI_x-sLItvK9-sOmb53j6", 78.4, 8, "8x1x4"),
    _video("uniformer_video_small.k400_16x8", "174muWZJcZHieABDZMKiJ0tNeFLoEkJLx", 80.8, 16, "16x1x4"),
    _video("uniformer_video_base.k400_16x4", "15ipzFaZdTt-aHv7jcr_h_vgYD2X7D6AD", 82.0, 16, "16x1x4"),
    _video("uniformer_video_base.k400_8x8", "1hBxGU-QE8hGRBjSNCymJ7Au06LhluvTv", 79.8, 8, "8x1x4"),
    _video("uniformer_video_base.k400_16x8", "1VoZcpFZbk9lEyRQ7gqRgT4CsnVt9g7uk", 81.7, 16, "16x1x4"),
    _video("uniformer_video_base.k400_32x4", "1gHxx8cr1H0CNvngj1kB9ArgcPfJtqjCV", 82.9, 32, "32x1x4"),
    _video("uniformer_video_small.k600_16x4", "1-dqzjm5RZVspWHQLRD4S1vo4_6jyVltb", 82.8, 16, "16x1x4"),
    _video("uniformer_video_small.k600_16x8", "1-c835NJjg_015WxLBQF-1cPdQsyWMWfY", 82.7, 16, "16x1x4"),
    _video("uniformer_video_base.k600_16x4", "1nBQCBCsCflhZ4OGUoGB3pAkc_GDau7vd", 84.0, 16, "16x1x4"),
    _video("uniformer_video_base.k600_16x8", "1aidHdSd-h65-_EUkfNOdMMw0ZB8G5maY", 83.4, 16, "16x1x4"),
    _video("uniformer_video_base.k600_32x4", "1-DwdVf8w8lYj-iFpU40pfEpog9VE5PQB", 84.5, 32, "32x1x4",
           "trained on several nodes; the README says the result is lower for lack of tuning"),
    _video("uniformer_video_small.ssv1_k400_16", "1-bdFsmXt2Ztf43lrVgmqS8_VYJ8tub6J", 57.2, 16, "16x3x1", "K400 init"),
    _video("uniformer_video_small.ssv1_k600_16", "1-YbYGjM15MDtQnrmCeZ9H2ybNdYTFkgO", 57.6, 16, "16x3x1", "K600 init"),
    _video("uniformer_video_small.ssv1_k400_32", "1-Y5ADssqM2C8o_1jix48fQM788mVGWQ3", 58.8, 32, "32x3x1", "K400 init"),
    _video("uniformer_video_small.ssv1_k600_32", "1-XEgaGqXGp1EGzFl63ctApnvU54X27WP", 59.9, 32, "32x3x1", "K600 init"),
    _video("uniformer_video_base.ssv1_k400_16", "1uMq4W5lf17vOHUmccNjYLeTMqaWHSh6v", 59.1, 16, "16x3x1", "K400 init"),
    _video("uniformer_video_base.ssv1_k600_16", "1xpiL8zEDWYHFR55gOsbQiI41YEjTD89J", 58.8, 16, "16x3x1", "K600 init"),
    _video("uniformer_video_base.ssv1_k400_32", "18A3FuUUbdQ8ehMQ0D78qTTtm6YmIVWaO", 60.9, 32, "32x3x1", "K400 init"),
    _video("uniformer_video_base.ssv1_k600_32", "1xE1aJYAYFOlXOkpiIbJFHu_jSrr8reKm", 61.0, 32, "32x3x1", "K600 init"),
    _video("uniformer_video_small.ssv2_k400_16", "1-Wq22024HB7tT8kPX6eSMn2GUNMI-_gY", 67.7, 16, "16x3x1", "K400 init"),
    _video("uniformer_video_small.ssv2_k600_16", "1-V1mQp4fIIYhaXUWCgZXkJ0H6ne0Z8rz", 69.4, 16, "16x3x1", "K600 init"),
    _video("uniformer_video_small.ssv2_k400_32", "1-5Q5S-NRmHFkIBygaRYpJLT7aI9cpmky", 69.0, 32, "32x3x1", "K400 init"),
    _video("uniformer_video_small.ssv2_k600_32", "1-1K5R3Ed4t8d_DZnJ62xysIt1dBNmx96", 70.4, 32, "32x3x1", "K600 init"),
    _video("uniformer_video_base.ssv2_k400_16", "1s78JBpnykyJ7pYEGRDK8BZL9seIRIUlC", 70.4, 16, "16x3x1", "K400 init"),
    _video("uniformer_video_base.ssv2_k600_16", "16nCBGWzMM8n8Vr_EY0UmvgzLG0S_QYef", 70.2, 16, "16x3x1", "K600 init"),
    _video("uniformer_video_base.ssv2_k400_32", "1-rpMARXnyvyj6YUJkIvVqtna86egpjoS", 71.1, 32, "32x3x1", "K400 init"),
    _video("uniformer_video_base.ssv2_k600_32", "1-lkRB3546l_ECuObN_IrHws1C9a-qKPr", 71.2, 32, "32x3x1", "K600 init"),
    _video("uniformer_video_small.ucf101_k400_16x4", "1Ey8JIGcP8G2H0bKxyNnD61lvHV1eerVt", 98.3, 16, "16x3x5",
           "K400 init"),
    _video("uniformer_video_small.hmdb51_k400_16x4", "1Es4xtcEvQSomnbp6Eo7TC3JejIwHf5yS", 77.5, 16, "16x3x5",
           "K400 init"),
)


# --- UniFormer detection and pose (object_detection/, pose_estimation/ READMEs; Google Drive) -----------

def _detection(name: str, file_id: str, box: float, mask: float, notes: str) -> ZooEntry:
    return ZooEntry(name, name.split(".")[0], _gdrive(file_id), UNIFORMER_DETECTION_README, "COCO 2017",
                    (("box AP", box), ("mask AP", mask)), (800, 1333), None, direct=False, notes=notes)


def _pose(name: str, file_id: str, ap: float, height: int, width: int) -> ZooEntry:
    kwargs = (("input_size", (width, height)),) if (height, width) != (256, 192) else ()
    return ZooEntry(name, name.split(".")[0], _gdrive(file_id), UNIFORMER_POSE_README, "COCO 2017 keypoints",
                    (("AP", ap),), (height, width), None, direct=False, kwargs=kwargs)


UNIFORMER_DENSE = (
    _detection("mask_rcnn_uniformer_small_h14.coco_1x", "13KhBYkHKQg-CyhAgn1LQM1K0R4bwSpWT", 45.6, 41.6, "1x schedule"),
    _detection("mask_rcnn_uniformer_small_h14.coco_3x_ms", "13O6P-spXbWuXgUjLw8AyRITYTwhdOwuD", 48.2, 43.4,
               "3x schedule, multi-scale training"),
    _detection("mask_rcnn_uniformer_base_h14.coco_1x", "13YrVEiqFraSuX1NzdhPnhw7bFXTvEii1", 47.4, 43.1, "1x schedule"),
    _detection("mask_rcnn_uniformer_base_h14.coco_3x_ms", "12xyS2xqFSYMkHUiVYVGVW7gaLIxuK2q6", 50.3, 44.8,
               "3x schedule, multi-scale training"),
    _detection("cascade_mask_rcnn_uniformer_small_h14.coco_3x_ms", "13IhpRkh2hE8WfDyw-5-NXSUVZjn9DX20", 52.1, 45.2,
               "3x schedule, multi-scale training"),
    _detection("cascade_mask_rcnn_uniformer_base_h14.coco_3x_ms", "13G9wc73CmS1Kb-kVelFSDlK-ezUBadzQ", 53.8, 46.4,
               "3x schedule, multi-scale training"),
    _pose("topdown_uniformer_small.coco_256x192", "162R0JuTpf3gpLe1IK6oxRoQK7JSj4ylx", 74.0, 256, 192),
    _pose("topdown_uniformer_small.coco_384x288", "163vuFkpcgVOthC05jCwjGzo78Nr0eikW", 75.9, 384, 288),
    _pose("topdown_uniformer_small.coco_448x320", "165nQRsT58SXJegcttksHwDn46Fme5dGX", 76.2, 448, 320),
    _pose("topdown_uniformer_base.coco_256x192", "15tzJaRyEzyWp2mQhpjDbBzuGoyCaJJ-2", 75.0, 256, 192),
    _pose("topdown_uniformer_base.coco_384x288", "15qtUaOR_C7-vooheJE75mhA9oJQt3gSx", 76.7, 384, 288),
    _pose("topdown_uniformer_base.coco_448x320", "156iNxetiCk8JJz41aFDmFh9cQbCaMk3D", 77.4, 448, 320),
)


# --- SegViT (zbwxp/SegVit README "Results"; Hugging Face Akide/SegViTv1) --------------------------------

_SEG_DATA = {"ade20k": ("ADE20K", 150, 640), "cocostuff10k": ("COCO-Stuff-10K", 171, 512),
             "pascal_context": ("PASCAL-Context", 60, 480)}


def _segvit(name: str, file: str, miou: float, ms: float, res: int | None = None) -> ZooEntry:
    model, tag = name.split(".")
    dataset, classes, side = _SEG_DATA[tag]
    side = res or side
    kwargs = {**({"num_classes": classes} if classes != 150 else {}),
              **({"img_size": side} if tag != "ade20k" else {})}
    notes = "59-class mIoU; the official config builds 60 classes" if tag == "pascal_context" else ""
    return ZooEntry(name, model, f"https://huggingface.co/Akide/SegViTv1/blob/main/{file}", SEGVIT_README, dataset,
                    (("mIoU", miou), ("mIoU MS", ms)), side, None, kwargs=tuple(kwargs.items()), notes=notes)


SEGVIT = (
    _segvit("segvit_vit_base.ade20k", "ade_51.3.pth", 51.3, 53.0, res=512),
    _segvit("segvit_vit_large.ade20k", "ade_54.6.pth", 54.6, 55.2),
    _segvit("segvit_vit_large_shrunk.ade20k", "ade_shrunk_53.9.pth", 53.9, 55.1),
    _segvit("segvit_vit_large.cocostuff10k", "COCOstuff_49.9.pth", 49.9, 50.3),
    _segvit("segvit_vit_large_shrunk.cocostuff10k", "COCOstuff10k_shrunk_49.1.pth", 49.1, 49.4),
    _segvit("segvit_vit_large.pascal_context", "PC59cls_64.1.pth", 64.1, 65.3),
    _segvit("segvit_vit_large_shrunk.pascal_context", "PC59cls_62.3.pth", 62.3, 63.7),
)


# --- EsViT (microsoft/esvit README "Pretrained models"; Azure blob + the README's SAS) -------------------

def _esvit(name: str, path: str, linear: float, knn: float, dataset: str = "ImageNet-1k", notes: str = "") -> ZooEntry:
    return ZooEntry(name, name.split(".")[0], f"https://chunyleu.blob.core.windows.net/output/ckpts/esvit/swin/{path}",
                    ESVIT_README, dataset, (("linear", linear), ("k-NN", knn)), 224, 0.875,
                    kwargs=(("num_classes", 0),), query=ESVIT_SAS,
                    notes="self-supervised full checkpoint (student + teacher + heads); " + (notes or
                                                                                            "view + region tasks"))


ESVIT = (
    _esvit("swin_tiny.esvit_in1k", "swin_tiny/bl_lr0.0005_gpu16_bs32_dense_multicrop_epoch300/checkpoint_best.pth",
           78.0, 75.7),
    _esvit("swin_small.esvit_in1k", "swin_small/bl_lr0.0005_gpu16_bs32_dense_multicrop_epoch300/checkpoint_best.pth",
           79.5, 77.7),
    _esvit("swin_base.esvit_in1k", "swin_base/bl_lr0.0005_gpu16_bs32_multicrop_epoch300_dino_aug/"
           "continued_from0200_dense/checkpoint_best.pth", 80.4, 78.9),
    _esvit("swin_tiny_w14.esvit_in1k", "swin_tiny/bl_lr0.0005_gpu16_bs32_multicrop_epoch300_dino_aug_window14/"
           "continued_from0200_dense/checkpoint_best.pth", 78.7, 77.0),
    _esvit("swin_small_w14.esvit_in1k", "swin_small/bl_lr0.0005_gpu16_bs16_multicrop_epoch300_dino_aug_window14/"
           "continued_from0180_dense/checkpoint_best.pth", 80.8, 79.1),
    _esvit("swin_base_w14.esvit_in1k", "swin_base/bl_lr0.0005_nodes4_gpu16_bs8_multicrop_epoch300_dino_aug_window14_lv/"
           "continued_from_epoch0200_dense_norm_true/checkpoint_best.pth", 81.3, 79.3),
    _esvit("swin_tiny.esvit_in1k_view", "swin_tiny/bl_lr0.0005_gpu16_bs32_multicrop_epoch300_dino_aug_window7/"
           "checkpoint.pth", 77.0, 74.2, notes="view-level task only"),
    _esvit("swin_small.esvit_in1k_view", "swin_small/bl_lr0.0005_gpu16_bs32_multicrop_epoch300/checkpoint.pth",
           79.2, 76.9, notes="view-level task only"),
    _esvit("swin_base.esvit_in1k_view", "swin_base/bl_lr0.0005_gpu16_bs32_multicrop_epoch300_dino_aug/checkpoint.pth",
           79.6, 77.7, notes="view-level task only"),
    _esvit("swin_tiny.esvit_in1k_view_bs1024", "swin_tiny/bl_lr0.0005_gpu16_bs64_multicrop_epoch300/checkpoint.pth",
           77.1, 73.7, notes="view-level task only, batch size 1024"),
    _esvit("swin_tiny.esvit_webvision1_view", "swin_tiny/bl_lr0.0005_gpu16_bs64_multicrop_epoch150_dino_aug_window7_"
           "webvision1_debug/checkpoint.pth", 75.4, 69.4, "WebVision-v1",
           "view-level task only, batch size 1024; ImageNet-1k linear / k-NN"),
    _esvit("swin_tiny.esvit_openimages4_view", "swin_tiny/bl_lr0.0005_gpu16_bs64_multicrop_epoch150_dino_aug_window7_"
           "openimages_v4_debug/checkpoint.pth", 69.6, 60.3, "OpenImages-v4",
           "view-level task only, batch size 1024; ImageNet-1k linear / k-NN"),
    _esvit("swin_tiny.esvit_in22k_view", "swin_tiny/bl_lr0.0005_gpu16_bs64_multicrop_epoch300_dino_aug_window7_"
           "imagenet22k_debug/checkpoint.pth", 73.5, 66.1, "ImageNet-22k",
           "view-level task only, batch size 1024; ImageNet-1k linear / k-NN"),
)

ZOO: tuple[ZooEntry, ...] = (*VOLO, *UNIFORMER_IMAGE, *UNIFORMER_VIDEO, *UNIFORMER_DENSE, *SEGVIT, *ESVIT)


def _by_name() -> dict[str, ZooEntry]:
    return {e.name: e for e in ZOO}


def zoo_names(model: str | None = None, pattern: str = "*") -> list[str]:
    """Entry names in table order; only those loading into ``model`` when given; fnmatch ``pattern``."""
    return [e.name for e in ZOO if (model is None or e.model == model) and fnmatch.fnmatchcase(e.name, pattern)]


def pretrained_entry(model: str) -> ZooEntry:
    """The checkpoint ``create_model(model, pretrained=True)`` loads: the model's first entry in the table."""
    for e in ZOO:
        if e.model == model:
            return e
    raise UnknownWeightsError(_unknown_message(model))


def zoo_entry(name: str) -> ZooEntry:
    """The entry called ``name``; a registered model name means its first entry (:func:`pretrained_entry`)."""
    entry = _by_name().get(name)
    if entry is not None:
        return entry
    if "." not in name:
        return pretrained_entry(name)
    raise UnknownWeightsError(_unknown_message(name))


def _unknown_message(name: str) -> str:
    model = name.split(".")[0]
    for prefix, why in UNRELEASED.items():
        if model.startswith(prefix):
            return f"no official weights for {name!r}: {why}. `vitlab weights list` lists the {len(ZOO)} checkpoints."
    known = [*_by_name(), *dict.fromkeys(e.model for e in ZOO)]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    same_model = [e.name for e in ZOO if e.model == model][:5]
    suggestions = list(dict.fromkeys(close + same_model))[:8]
    hint = f" Closest names: {', '.join(suggestions)}." if suggestions else ""
    return f"no checkpoint {name!r} in the model zoo.{hint} `vitlab weights list` lists all {len(ZOO)}."

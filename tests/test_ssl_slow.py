"""Slow self-supervised checks: two-process DDP (gloo) pretraining and the Animal-MNIST experiment."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vitlab.ssl.pretrain import SMALL_DATA_PRESET, PretrainConfig, pretrain

DDP_CFG = dict(model="swin_micro", data="digits", global_size=16, local_size=8, n_local=2, out_dim=32,
               head_hidden_dim=16, head_bottleneck_dim=8, batch_size=8, max_iters_per_epoch=2, epochs=1,
               knn_every=0, held_out=300, figures=False, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    metrics = pretrain(PretrainConfig(**{**DDP_CFG, "output": out}))
    results[rank] = metrics["param_norm"]
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_two_processes_stay_in_sync(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), results), nprocs=2, join=True)
    assert results[0] == results[1]  # gradients were all-reduced: both students are identical
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and all(k.startswith("module.") for k in ckpt["student"])


def random_init_knn_top1() -> float:
    """k-NN top-1 of ``swin_micro`` at its seeded random initialisation (77.20% here)."""
    from vitlab.ssl.data import load_image_set
    from vitlab.ssl.evaluation import load_backbone
    from vitlab.ssl.knn import extract_features, knn_accuracy
    data = load_image_set("animal-mnist")
    rnd = load_backbone(None, model="swin_micro", img_size=32, in_chans=1)
    feats = [extract_features(rnd.backbone, data.images[i], 32, (0.5,), (0.5,))
             for i in (data.train_idx, data.held_out_idx)]
    return knn_accuracy(feats[0], data.labels[data.train_idx], feats[1], data.labels[data.held_out_idx])["top1"]


EXPERIMENT = dict(SMALL_DATA_PRESET, model="swin_micro", data="animal-mnist", loss="view", epochs=80, knn_every=80,
                  figures=False)


@pytest.mark.slow
def test_animal_mnist_small_preset_learns_features_that_beat_raw_pixels(tmp_path):
    """The README's run: ``--preset small`` (no local crops), view loss, 80 epochs = 10,000 steps
    (about 27 minutes with 2 threads on an idle 2-core machine).

    Measured: k-NN 89.45% against 83.50% on raw pixels and 77.20% at random init. The test asserts
    learned features (at least 3 points above the raw pixels, which are above random init) and the
    absence of collapse (teacher entropy well below ln K).
    """
    from vitlab.ssl.data import load_image_set
    from vitlab.ssl.knn import knn_accuracy, raw_pixel_features
    torch.set_num_threads(2)
    metrics = pretrain(PretrainConfig(**{**EXPERIMENT, "output": str(tmp_path / "run")}))
    assert metrics["teacher_entropy"] < 0.5 * metrics["teacher_entropy_max"]
    data = load_image_set("animal-mnist")
    bank, queries = data.images[data.train_idx], data.images[data.held_out_idx]
    pixels = knn_accuracy(raw_pixel_features(bank, 32), data.labels[data.train_idx],
                          raw_pixel_features(queries, 32), data.labels[data.held_out_idx])["top1"]
    assert pixels > random_init_knn_top1()
    assert metrics["knn_top1"] > pixels + 3.0, (metrics["knn_top1"], pixels)

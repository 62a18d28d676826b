"""Slow self-supervised checks: two-process DDP (gloo) pretraining and the Animal-MNIST experiment."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vitlab.ssl.pretrain import PretrainConfig, pretrain

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


EXPERIMENT = dict(model="swin_micro", data="animal-mnist", global_size=32, local_size=16, n_local=4,
                  local_scale=(0.1, 0.4), out_dim=1024, head_hidden_dim=256, head_bottleneck_dim=64, epochs=7,
                  batch_size=64, lr=1e-3, min_lr=1e-5, momentum_teacher=0.99, teacher_temp=0.04,
                  drop_path_rate=0.0, knn_every=7, figures=False)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="not reached at this budget: 7 epochs (~7 CPU-min) gave 75.4% k-NN vs 77.2% "
                   "at random init, with the teacher drifting towards a uniform output (see README, EsViT)")
def test_animal_mnist_pretraining_beats_random_init(tmp_path):
    """The README experiment (~7 CPU-minutes): k-NN of the pretrained teacher vs the same network at random init."""
    from vitlab.ssl.evaluation import load_backbone
    from vitlab.ssl.data import load_image_set
    from vitlab.ssl.knn import extract_features, knn_accuracy
    torch.set_num_threads(2)
    metrics = pretrain(PretrainConfig(**{**EXPERIMENT, "output": str(tmp_path / "run")}))
    data = load_image_set("animal-mnist")
    rnd = load_backbone(None, model="swin_micro", img_size=32, in_chans=1)
    feats = [extract_features(rnd.backbone, data.images[i], 32, (0.5,), (0.5,))
             for i in (data.train_idx, data.held_out_idx)]
    random_init = knn_accuracy(feats[0], data.labels[data.train_idx], feats[1], data.labels[data.held_out_idx])
    assert metrics["kl_to_uniform"] > 0.0 and "teacher_entropy" in metrics  # collapse diagnostics are recorded
    assert metrics["knn_top1"] > random_init["top1"] + 3.0, (metrics["knn_top1"], random_init["top1"])

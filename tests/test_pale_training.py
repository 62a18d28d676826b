"""A micro Pale Transformer learns the built-in digits set: the loss falls and held-out accuracy beats chance."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.data.builtin import load_digits


def _tensors(images: np.ndarray, labels: np.ndarray, size: int):
    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    return x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels)


@pytest.fixture
def one_thread():
    """Tiny ops gain nothing from a second thread, and a busy machine makes it spin; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_micro_pale_learns_digits(one_thread):
    torch.manual_seed(0)
    images, labels = load_digits()
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1400], order[1400:]
    x_train, y_train = _tensors(images[train], labels[train], 16)
    x_test, y_test = _tensors(images[test], labels[test], 16)

    model = vitlab.create_model("pale_micro", num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    for step in range(60):
        idx = torch.randint(len(x_train), (64,), generator=gen)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.6 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    assert accuracy > 0.5, f"held-out accuracy {accuracy:.3f} (chance is 0.1)"

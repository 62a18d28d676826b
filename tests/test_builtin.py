"""Built-in datasets: Animal-MNIST read without importing its package, digits, duplicate-free and stratified splits."""
import pickle
import sys

import numpy as np
import pytest

from vitlab.data.builtin import (clean_split, image_hashes, load_animal_mnist, load_digits, load_numpy_pickle,
                                 stratified_limit)
from vitlab.data.registry import DataRequest, build_dataset
from vitlab.errors import DataError


def test_animal_mnist_is_read_without_importing_the_package():
    images, labels = load_animal_mnist()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    assert "animal_mnist" not in sys.modules and "tensorflow" not in sys.modules


def test_unpickler_allows_arrays_only(tmp_path):
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert np.array_equal(load_numpy_pickle(pickle.dumps(arr, protocol=4)), arr)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(pickle.UnpicklingError, match="only NumPy arrays"):
        load_numpy_pickle(pickle.dumps(Payload()))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="expected a NumPy array"):
        load_numpy_pickle(pickle.dumps([1, 2]))


def test_digits():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.max() == 255 and set(labels) == set(range(10))


def test_clean_split_keeps_duplicates_on_one_side():
    images, _ = load_animal_mnist()
    split = clean_split(images, held_out=2000, seed=0)
    assert len(split.held_out) == 2000 and len(split.train) == 8000
    assert len(np.intersect1d(split.train, split.held_out)) == 0
    hashes = image_hashes(images)
    train_hashes = {hashes[i] for i in split.train}
    assert not any(hashes[i] in train_hashes for i in split.held_out)
    # a naive split of the same permutation leaks duplicates; the clean split reports what it moved
    perm = np.random.default_rng(0).permutation(len(images))
    naive_train = {hashes[i] for i in perm[2000:]}
    leaked = sum(hashes[i] in naive_train for i in perm[:2000])
    assert leaked > 0 and split.moved == leaked
    again = clean_split(images, held_out=2000, seed=0)
    assert np.array_equal(again.held_out, split.held_out)
    with pytest.raises(ValueError, match="held_out must be between"):
        clean_split(images, held_out=0)


def test_train_limit_keeps_every_class():
    req = DataRequest("digits", options={"train_limit": 100, "split_seed": 1})
    bundle = build_dataset(req)
    counts = np.bincount(bundle.train.labels, minlength=10)
    assert len(bundle.train) == 100 and counts.min() >= 9 and counts.max() <= 11, counts
    again = build_dataset(req)
    assert np.array_equal(again.train.images, bundle.train.images)  # deterministic
    other = build_dataset(DataRequest("digits", options={"train_limit": 100, "split_seed": 2}))
    assert not np.array_equal(other.train.images, bundle.train.images)
    # the limited set is drawn from the training split only: nothing of the held-out set leaks in
    val = {im.tobytes() for im in bundle.val.images}
    assert not val & {im.tobytes() for im in bundle.train.images}
    with pytest.raises(DataError, match="train_limit"):
        build_dataset(DataRequest("digits", options={"train_limit": -5}))


def test_train_limit_on_animal_mnist_trains_on_all_classes():
    full = build_dataset(DataRequest("animal-mnist", splits=("val",)))
    bundle = build_dataset(DataRequest("animal-mnist", options={"train_limit": 1500}))
    counts = np.bincount(bundle.train.labels, minlength=10)
    # each class keeps its share of the 8,000-image training split (which is not exactly balanced)
    held = np.bincount(full.val.labels, minlength=10)
    share = (1000 - held) * 1500 / 8000
    assert len(bundle.train) == 1500 and np.abs(counts - share).max() <= 1, (counts, share)
    assert bundle.info["train_classes"] == 10


def test_stratified_limit_keeps_unbalanced_shares():
    labels = np.array([0] * 80 + [1] * 20)
    idx = np.arange(100)
    kept = stratified_limit(idx, labels, 10, seed=0)
    assert np.bincount(labels[kept]).tolist() == [8, 2] and np.all(np.diff(kept) > 0)
    assert np.array_equal(stratified_limit(idx, labels, 1000), idx)

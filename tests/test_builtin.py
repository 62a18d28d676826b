"""Built-in datasets: Animal-MNIST read without importing its package, digits, duplicate-free splits."""
import pickle
import sys

import numpy as np
import pytest

from vitlab.data.builtin import clean_split, image_hashes, load_animal_mnist, load_digits, load_numpy_pickle


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

"""The classifier loop's data path: DataLoader workers over a memmap, device transfer, augmentation."""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.format import open_memmap

from medsyn.evaluate.classifier import light_augment, read_batches, to_device
from medsyn.evaluate.data import RowView


def test_worker_batches_equal_in_process_batches(tmp_path):
    images = open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(37, 1, 8, 8))
    images[:] = np.random.default_rng(0).integers(0, 255, images.shape, dtype=np.uint8)
    view = RowView(images, np.arange(3, 37))
    order = np.random.default_rng(1).permutation(len(view))
    direct = list(read_batches(view, order, 5, workers=0))
    workers = list(read_batches(view, order, 5, workers=2))
    assert len(direct) == len(workers) == 7
    for (a, ia), (b, ib) in zip(direct, workers, strict=True):
        assert isinstance(b, np.ndarray) and b.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(a, images[3 + ia])


def test_augmentation_draws_the_same_parameters_wherever_the_images_are():
    x = to_device(np.random.default_rng(0).integers(0, 255, (4, 1, 16, 16), dtype=np.uint8), torch.device("cpu"))
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0
    a = light_augment(x, torch.Generator().manual_seed(3))
    b = light_augment(x.clone(), torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, x)

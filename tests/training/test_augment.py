from __future__ import annotations

import numpy as np

from leafid_train.augment import augment, greyscale


def test_augment_shape_dtype_and_seeded() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    a = augment(arr, 32, np.random.default_rng(5))
    b = augment(arr, 32, np.random.default_rng(5))
    c = augment(arr, 32, np.random.default_rng(6))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_greyscale_keeps_three_equal_channels_and_brightness() -> None:
    arr = np.zeros((4, 5, 3), dtype=np.uint8)
    arr[..., 1] = 200  # pure green: luma 0.587 * 200
    grey = greyscale(arr)
    assert grey.shape == arr.shape and grey.dtype == np.uint8
    assert (grey == grey[..., :1]).all()
    assert abs(int(grey[0, 0, 0]) - round(0.587 * 200)) <= 1

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_spec
from leafid.preprocess import preprocess, resize_and_crop


def test_uint8_output_shape_and_type():
    arr = preprocess(Image.new("RGB", (100, 50), (10, 20, 30)), tiny_spec())
    assert arr.dtype == np.uint8 and arr.shape == (32, 32, 3)
    assert (arr == (10, 20, 30)).all()


def test_centre_crop_keeps_the_centre():
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (100, 0, 200, 100))  # red centre third
    out = np.asarray(resize_and_crop(img, tiny_spec()))
    # resize to 108x36, centre crop 32x32 -> roughly the middle third, all red
    assert out[..., 0].min() > 200 and out[..., 2].max() < 60


def test_float_format_is_normalised_nchw():
    spec = tiny_spec(input_format="float32_nchw", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    arr = preprocess(Image.new("RGB", (40, 40), (255, 0, 255)), spec)
    assert arr.dtype == np.float32 and arr.shape == (3, 32, 32)
    np.testing.assert_allclose(arr[:, 0, 0], [1.0, -1.0, 1.0], atol=1e-6)


def test_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        preprocess(Image.new("L", (40, 40)), tiny_spec())

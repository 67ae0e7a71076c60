"""Shared fixtures: a tiny ONNX model with valid leafid metadata, and image makers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from leafid.spec import METADATA_KEY, ClassInfo, ModelSpec

TINY_CLASSES = (
    ClassInfo("rubra", "Planta rubra", "red plant"),
    ClassInfo("viridis", "Planta viridis", "green plant"),
    ClassInfo("caerulea", "Planta caerulea", "blue plant"),
)
TINY_COLOURS = {"rubra": (220, 30, 30), "viridis": (30, 200, 40), "caerulea": (30, 40, 210)}
# rubra and viridis share a genus; all three share a family
TINY_TAXA = {
    "rubra": ("Planta", "Plantaceae"),
    "viridis": ("Planta", "Plantaceae"),
    "caerulea": ("Caerula", "Plantaceae"),
}


def tiny_spec(**changes: object) -> ModelSpec:
    spec = ModelSpec(
        model_name="tiny-test",
        model_version="0.0.1-test",
        classes=TINY_CLASSES,
        input_size=32,
        resize_size=36,
        unknown_threshold=0.5,
    )
    return spec.replace(**changes) if changes else spec


def tiny_taxonomy_spec(**changes: object) -> ModelSpec:
    """:func:`tiny_spec` with genus and family per class (:data:`TINY_TAXA`) and back-off."""
    classes = tuple(c.filled(*TINY_TAXA[c.slug]) for c in TINY_CLASSES)
    spec = tiny_spec(classes=classes, taxon_thresholds={"genus": 0.6, "family": 0.9})
    return spec.replace(**changes) if changes else spec


def make_tiny_model(
    path: Path,
    spec: ModelSpec | None = None,
    *,
    metadata: str | None = None,
    with_metadata: bool = True,
    embedding: bool = False,
) -> Path:
    """Write an ONNX model: mean colour of the image -> linear layer -> logits.

    A saturated red/green/blue image is scored strongly as its colour's class; a grey
    image scores all classes equally (and so is unknown at threshold 0.5). With
    ``embedding``, the graph is shaped as exported models are: the mean colour is the
    ``embedding`` output, a Gemm makes the logits from it, and a 1x1 Conv with the same
    (unsqueezed) weights makes ``class_maps`` from the image.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = spec or tiny_spec()
    n = len(spec.classes)
    size = spec.input_size
    weight = np.zeros((3, n), dtype=np.float32)
    for i in range(n):
        weight[i % 3, i] = 12.0 / 255.0
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "W"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n])]
    initializers = [numpy_helper.from_array(weight, "W")]
    if embedding:
        nodes = [
            helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x"], ["embedding"], axes=[1, 2], keepdims=0),
            helper.make_node("Gemm", ["embedding", "W", "b"], ["logits"], transB=1),
            helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Unsqueeze", ["W", "axes"], ["W4"]),
            helper.make_node("Conv", ["nchw", "W4", "b"], ["class_maps"]),
        ]
        outputs += [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info(
                "class_maps", TensorProto.FLOAT, ["batch", n, size, size]
            ),
        ]
        initializers = [
            numpy_helper.from_array(np.ascontiguousarray(weight.T), "W"),
            numpy_helper.from_array(np.zeros(n, np.float32), "b"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        helper.set_model_props(
            model, {METADATA_KEY: metadata if metadata is not None else spec.to_json()}
        )
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def noisy(
    colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), seed: int = 0
) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="session")
def evidence_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the ``embedding`` and ``class_maps`` outputs of newer models."""
    return make_tiny_model(tmp_path_factory.mktemp("model") / "evidence.onnx", embedding=True)


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder with one JPEG per tiny class (named after the class) and a grey one."""
    root = tmp_path / "photos"
    root.mkdir()
    for slug, colour in TINY_COLOURS.items():
        noisy(colour).save(root / f"{slug}.jpg", quality=90)
    solid((128, 128, 128)).save(root / "grey.png")
    return root


ODD_SIZE = (13, 11)


@pytest.fixture
def odd_image(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A PNG whose decoding raises an exception Pillow does not document (IndexError).

    Malformed files can upset Pillow in such unplanned ways; this one does it on purpose
    while the fixture is active (images of other sizes decode as usual).
    """
    from PIL import ImageOps

    real = ImageOps.exif_transpose

    def transpose(img: Image.Image, **kwargs: Any) -> Image.Image | None:
        if img.size == ODD_SIZE:
            raise IndexError("tile index out of range")
        return real(img, **kwargs)

    monkeypatch.setattr(ImageOps, "exif_transpose", transpose)
    return encode(Image.new("RGB", ODD_SIZE, (220, 30, 30)), "PNG")

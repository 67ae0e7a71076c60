from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from conftest import TINY_COLOURS, noisy, tiny_spec  # noqa: E402
from leafid import Classifier  # noqa: E402
from leafid.errors import InvalidRequestError  # noqa: E402
from leafid.preprocess import preprocess  # noqa: E402
from leafid.spec import ModelSpec  # noqa: E402
from leafid_train.backbone import LeafNet  # noqa: E402
from leafid_train.export import export_onnx, onnx_logits, save_onnx  # noqa: E402
from leafid_train.int8_rule import int8_worth_shipping  # noqa: E402
from leafid_train.quantize import compare, quantize_int8  # noqa: E402

pytestmark = pytest.mark.train


class ColourNet(torch.nn.Module):
    """Conv layers that keep each colour channel, then pool: logit i ~ mean of channel i."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, 3, 1)
        self.fc = torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.bias.zero_()
            for c in range(3):
                self.conv1.weight[c, c, 1, 1] = 1.0  # +channel
                self.conv1.weight[c + 3, c, 1, 1] = -1.0  # -channel
            self.conv2.weight.zero_()
            self.conv2.bias.zero_()
            for c in range(3):
                self.conv2.weight[c, c] = 1.0
                self.conv2.weight[c, c + 3] = -1.0
            self.fc.weight.copy_(torch.eye(3) * 4.0)
            self.fc.bias.zero_()

    # the parts of a timm model that LeafNet.forward_outputs reads
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self) -> torch.nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def colour_batch(spec: ModelSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    colours = list(TINY_COLOURS.values())
    photos = [noisy(colours[i % 3], (40, 36), seed=seed + i) for i in range(n)]
    return np.stack([preprocess(p, spec) for p in photos]), np.arange(n) % 3


def write_int8(fp32: Path, out: Path, range_images: np.ndarray, **options: bool) -> Path:
    save_onnx(quantize_int8(fp32, range_images, **options), out)
    return out


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, Path]:
    spec = tiny_spec(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    net = LeafNet(ColourNet(), spec.mean, spec.std)
    return spec, export_onnx(net, spec, tmp_path_factory.mktemp("fp32") / "fp32.onnx")


def test_int8_model_loads_with_the_same_spec_and_agrees(
    tmp_path: Path, fp32_model: tuple[ModelSpec, Path]
) -> None:
    spec, fp32 = fp32_model
    range_images, _ = colour_batch(spec, 12, seed=100)
    int8 = write_int8(fp32, tmp_path / "int8.onnx", range_images)
    proto = onnx.load(str(int8))
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]
    assert [p.name for p in fp32.parent.iterdir()] == ["fp32.onnx"]  # no temporary files left

    clf8, clf32 = Classifier(int8), Classifier(fp32)
    assert clf8.spec.to_json() == spec.to_json()
    batch, labels = colour_batch(spec, 30, seed=0)  # different images from range_images
    top8 = clf8.probabilities(batch).argmax(axis=1)
    top32 = clf32.probabilities(batch).argmax(axis=1)
    assert np.mean(top32 == labels) == 1.0  # the fp32 model is right by construction
    assert np.mean(top8 == top32) >= 0.9


def test_compare_reports_agreement_and_speed(
    tmp_path: Path, fp32_model: tuple[ModelSpec, Path]
) -> None:
    spec, fp32 = fp32_model
    batch, labels = colour_batch(spec, 9, seed=0)
    int8 = write_int8(
        fp32, tmp_path / "int8.onnx", batch, per_channel=False, unsigned_activations=False
    )
    report = compare(fp32, int8, batch, labels, threads=1, min_seconds=0.05)
    assert report["n"] == 9
    assert 0.0 <= report["top1_agreement"] <= 1.0
    for name in ("fp32", "int8"):
        assert report[name]["images_per_s_b1"] > 0 and report[name]["images_per_s_b16"] > 0
        assert report[name]["size_mb"] > 0
    assert report["fp32"]["top1"] == 1.0  # right by construction
    assert report["int8"]["top1"] >= 0.8


def test_int8_worth_shipping_rule() -> None:
    def report(top1_32: float, top1_8: float, speed_32: float, speed_8: float) -> dict:
        def figures(top1: float, speed: float) -> dict:
            return {"top1": top1, "images_per_s_b1": speed, "images_per_s_b16": speed * 3}

        return {
            "top1_agreement": 0.99,
            "fp32": figures(top1_32, speed_32),
            "int8": figures(top1_8, speed_8),
        }

    assert int8_worth_shipping(report(0.900, 0.896, 100, 150))
    assert not int8_worth_shipping(report(0.900, 0.890, 100, 150))  # one point lost
    assert 0.762 - 0.757 > 0.005  # in floats, exactly half a point comes out a hair over...
    assert int8_worth_shipping(report(0.762, 0.757, 100, 150))  # ...and still passes
    assert not int8_worth_shipping(report(0.762, 0.7569, 100, 150))
    assert not int8_worth_shipping(report(0.900, 0.900, 100, 90))  # slower
    no_labels = {
        "top1_agreement": 0.99,
        "fp32": {"images_per_s_b1": 1, "images_per_s_b16": 1},
        "int8": {"images_per_s_b1": 2, "images_per_s_b16": 2},
    }
    assert not int8_worth_shipping(no_labels)  # 1% disagreement may be a 1-point drop


def test_quantize_rejects_bad_calibration(
    tmp_path: Path, fp32_model: tuple[ModelSpec, Path]
) -> None:
    _, fp32 = fp32_model
    with pytest.raises(InvalidRequestError, match="uint8"):
        quantize_int8(fp32, np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(InvalidRequestError, match="uint8"):
        quantize_int8(fp32, np.zeros((0, 32, 32, 3), dtype=np.uint8))


def test_int8_model_takes_the_uint8_image_directly_when_that_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_spec(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)  # lite0's normalisation
    fp32 = export_onnx(LeafNet(ColourNet(), spec.mean, spec.std), spec, tmp_path / "fp32.onnx")
    range_images, _ = colour_batch(spec, 12, seed=100)
    int8 = write_int8(fp32, tmp_path / "int8.onnx", range_images)
    ops = [node.op_type for node in onnx.load(str(int8)).graph.node]
    assert "Cast" not in ops and "Div" not in ops  # no float normalisation left
    assert "GlobalAveragePool" in ops  # the mean over H and W, from the export
    # The same quantisation without the rewrite computes the same logits.
    monkeypatch.setattr("leafid_train.quantize.uint8_image_input", lambda proto: False)
    kept = write_int8(fp32, tmp_path / "kept.onnx", range_images)
    assert "Cast" in [node.op_type for node in onnx.load(str(kept)).graph.node]
    batch, labels = colour_batch(spec, 30, seed=0)
    np.testing.assert_allclose(onnx_logits(int8, batch), onnx_logits(kept, batch), atol=1e-5)
    top8 = Classifier(int8).probabilities(batch).argmax(axis=1)
    assert np.mean(top8 == labels) >= 0.9

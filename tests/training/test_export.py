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
from leafid.spec import METADATA_KEY, ModelSpec  # noqa: E402
from leafid_train.backbone import (  # noqa: E402
    PRETRAINED_MEAN,
    PRETRAINED_STD,
    LeafNet,
    build_leafnet,
)
from leafid_train.export import export_onnx, max_abs_diff  # noqa: E402

pytestmark = pytest.mark.train


def export_spec() -> ModelSpec:
    return tiny_spec(
        input_size=64,
        resize_size=72,
        mean=PRETRAINED_MEAN,
        std=PRETRAINED_STD,
        temperature=1.7,
        training_data={"images": 12},
        metrics={"top1": 0.5},
    )


def photo_batch(spec: ModelSpec, n: int = 6) -> np.ndarray:
    colours = list(TINY_COLOURS.values())
    photos = [noisy(colours[i % 3], (90 + 7 * i, 75), seed=i) for i in range(n)]
    return np.stack([preprocess(p, spec) for p in photos])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[LeafNet, ModelSpec, Path]:
    spec = export_spec()
    torch.manual_seed(0)
    model = build_leafnet(spec)  # pretrained lite0, fresh 3-class head
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    assert export_onnx(model, spec, out) == out
    return model, spec, out


def test_export_is_a_valid_onnx_file_with_named_io(
    exported: tuple[LeafNet, ModelSpec, Path],
) -> None:
    _, spec, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    (inp,), outs = proto.graph.input, proto.graph.output
    assert inp.name == "image"
    assert [o.name for o in outs] == ["logits", "embedding", "class_maps"]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {o.type.tensor_type.elem_type for o in outs} == {onnx.TensorProto.FLOAT}
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1:] == [64, 64, 3] and isinstance(dims[0], str)
    assert proto.producer_name == "leafid_train"
    ops = {node.op_type for node in proto.graph.node}
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops  # graph_rewrite
    assert [p.key for p in proto.metadata_props] == [METADATA_KEY]
    assert list(path.parent.iterdir()) == [path]  # no temporary files left behind


def test_class_maps_average_to_the_logits_and_embedding_feeds_the_head(
    exported: tuple[LeafNet, ModelSpec, Path],
) -> None:
    model, spec, path = exported
    batch = photo_batch(spec)
    logits, embedding, class_maps = Classifier(path).session.run(None, {"image": batch})
    n, k = logits.shape
    assert class_maps.shape[:2] == (n, k) and class_maps.shape[2] > 1
    np.testing.assert_allclose(class_maps.mean(axis=(2, 3)), logits, rtol=1e-4, atol=1e-4)
    head = model.backbone.get_classifier()
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    np.testing.assert_allclose(embedding @ weight.T + bias, logits, rtol=1e-4, atol=1e-4)
    # the maps differ across positions: they say where, not only how much
    assert float(class_maps.std(axis=(2, 3)).max()) > 1e-3


def test_spec_round_trips_through_the_classifier(exported: tuple[LeafNet, ModelSpec, Path]) -> None:
    _, spec, path = exported
    clf = Classifier(path)
    assert clf.spec == spec
    assert clf.spec.to_json() == spec.to_json()  # includes training_data and metrics


def test_dynamic_batch_and_parity_with_torch(exported: tuple[LeafNet, ModelSpec, Path]) -> None:
    model, spec, path = exported
    batch = photo_batch(spec)
    assert max_abs_diff(model, path, batch) < 1e-3
    assert max_abs_diff(model, path, batch[:1]) < 1e-3
    clf = Classifier(path)
    for n in (1, 3):
        assert clf.probabilities(batch[:n]).shape == (n, 3)


def test_classifier_top1_matches_torch(exported: tuple[LeafNet, ModelSpec, Path]) -> None:
    model, spec, path = exported
    batch = photo_batch(spec)
    with torch.no_grad():
        logits = model(torch.tensor(batch))
    ranked = [pred.results[0].slug for pred in Classifier(path).classify_arrays(batch, top_k=3)]
    top2 = logits.topk(2, dim=1).values
    for row, slug in enumerate(ranked):
        if float(top2[row, 0] - top2[row, 1]) > 1e-3:  # not a near-tie
            assert slug == spec.labels[int(logits[row].argmax())]
    # The temperature is applied by the Classifier, not baked into the graph.
    probs = Classifier(path).probabilities(batch)
    want = torch.softmax(logits / spec.temperature, dim=1).numpy()
    np.testing.assert_allclose(probs, want, atol=1e-4)


def test_export_rejects_wrong_specs(
    tmp_path: Path, exported: tuple[LeafNet, ModelSpec, Path]
) -> None:
    model, spec, _ = exported
    with pytest.raises(InvalidRequestError, match="uint8_nhwc"):
        export_onnx(model, spec.replace(input_format="float32_nchw"), tmp_path / "a.onnx")
    with pytest.raises(InvalidRequestError, match="classes"):
        export_onnx(model, spec.replace(classes=spec.classes[:2]), tmp_path / "b.onnx")
    with pytest.raises(InvalidRequestError, match="opset"):
        export_onnx(model, spec, tmp_path / "c.onnx", opset=11)
    assert list(tmp_path.iterdir()) == []

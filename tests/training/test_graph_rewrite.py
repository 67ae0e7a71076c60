from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from leafid_train.graph_rewrite import global_average_pools, uint8_image_input  # noqa: E402

pytestmark = pytest.mark.train


def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]):
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        outputs,
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, **feeds: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _mean_model(axes: list[int], keepdims: int = 1):
    dims: list[str | int] = ["n", 4, 5, 6]
    reduced = {a % 4 for a in axes}
    out_dims = [
        1 if i in reduced else d for i, d in enumerate(dims) if keepdims or i not in reduced
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
    return _model([node], [x], [y], {"axes": np.array(axes, dtype=np.int64)})


@pytest.mark.parametrize(
    ("axes", "keepdims", "ops"),
    [
        ([2, 3], 1, ["GlobalAveragePool"]),
        ([-1, -2], 1, ["GlobalAveragePool"]),
        ([2, 3], 0, ["GlobalAveragePool", "Flatten"]),
    ],
)
def test_spatial_mean_becomes_global_average_pool(
    axes: list[int], keepdims: int, ops: list[str]
) -> None:
    model = _mean_model(axes, keepdims)
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
    before = _run(model, x=x)
    assert global_average_pools(model) == 1
    assert [n.op_type for n in model.graph.node] == ops
    assert not model.graph.initializer  # the axes constant went with its node
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(_run(model, x=x), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes", [[1, 2], [3], [1, 2, 3]])
def test_other_means_are_left_alone(axes: list[int]) -> None:
    model = _mean_model(axes)
    assert global_average_pools(model) == 0
    assert [n.op_type for n in model.graph.node] == ["ReduceMean"]


def _normalised_qdq(mean: float, std: float, zero_point_type: type = np.uint8):
    """uint8 NHWC image -> Transpose -> Cast -> /255 -> -mean -> /std -> Q -> DQ -> Relu."""
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["n", 3, 3, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, 3, 3])
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "c255"], ["d"]),
        helper.make_node("Sub", ["d", "mean"], ["s"]),
        helper.make_node("Div", ["s", "std"], ["z"]),
        helper.make_node("QuantizeLinear", ["z", "q_scale", "q_zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zp"], ["dq"]),
        helper.make_node("Relu", ["dq"], ["out"]),
    ]
    zp = -128 if zero_point_type is np.int8 else 128
    inits = {
        "c255": np.array(255.0, dtype=np.float32),
        "mean": np.array(mean, dtype=np.float32),
        "std": np.array(std, dtype=np.float32),
        "q_scale": np.array(2 / 255, dtype=np.float32),  # a calibrated [-1, 1]-ish range
        "q_zp": np.array(zp, dtype=zero_point_type),
    }
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [4])
    return _model(nodes, [image], [out, shape], inits)


def test_uint8_image_feeds_the_first_dequantize_exactly() -> None:
    model = _normalised_qdq(127 / 255, 128 / 255)  # the lite0 weights' mean and std
    image = np.random.default_rng(1).integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
    exact = np.maximum((image.transpose(0, 3, 1, 2).astype(np.float64) - 127) / 128, 0)
    assert uint8_image_input(model)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Shape", "Transpose", "DequantizeLinear", "Relu"]
    assert {i.name for i in model.graph.initializer} == {"t_uint8_scale", "t_uint8_zero_point"}
    # No rounding left: the rewritten graph gives the normalised image itself.
    np.testing.assert_allclose(_run(model, image=image), exact, atol=1e-6)


@pytest.mark.parametrize(
    ("mean", "std", "zero_point_type"),
    [
        (0.5, 0.25, np.uint8),  # 255 * 0.5 is not a whole number
        (127 / 255, 128 / 255, np.int8),  # int8 activations: a uint8 image does not fit
    ],
)
def test_inexact_normalisation_is_left_alone(
    mean: float, std: float, zero_point_type: type
) -> None:
    model = _normalised_qdq(mean, std, zero_point_type)
    before = model.SerializeToString()
    assert not uint8_image_input(model)
    assert model.SerializeToString() == before

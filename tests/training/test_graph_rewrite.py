from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from leafid_train.graph_rewrite import (  # noqa: E402
    exact_input_normalisation,
    global_average_pools,
    head_weights,
    input_quant_overrides,
    replace_head,
    uint8_image_input,
)

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


def _normalised_qdq(
    mean: float = 127 / 255,  # the lite0 weights' mean and std
    std: float = 128 / 255,
    q_scale: float = 1 / 128,
    q_zero: int = 127,
    zero_point_type: type = np.uint8,
    extra_outputs: tuple[str, ...] = (),
    extra_nodes: tuple = (),
):
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
        *extra_nodes,
    ]
    inits = {
        "c255": np.array(255.0, dtype=np.float32),
        "mean": np.array(mean, dtype=np.float32),
        "std": np.array(std, dtype=np.float32),
        "q_scale": np.array(q_scale, dtype=np.float32),
        "q_zp": np.array(q_zero, dtype=zero_point_type),
    }
    outputs = [out, helper.make_tensor_value_info("shape", TensorProto.INT64, [4])]
    outputs += [
        helper.make_tensor_value_info(
            n, TensorProto.UINT8 if n == "q" else TensorProto.FLOAT, ["n", 3, 3, 3]
        )
        for n in extra_outputs
    ]
    return _model(nodes, [image], outputs, inits)


def _image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)


def test_exact_normalisation_is_found() -> None:
    norm = exact_input_normalisation(_normalised_qdq())
    assert norm is not None
    assert (norm.uint8_name, norm.float_name) == ("t", "z")
    assert [n.op_type for n in norm.nodes] == ["Cast", "Div", "Sub", "Div"]
    assert norm.scale == pytest.approx(1 / 128) and norm.zero_point == 127
    params = input_quant_overrides(_normalised_qdq())["z"][0]
    assert float(params["scale"]) == pytest.approx(1 / 128) and int(params["zero_point"]) == 127
    assert params["zero_point"].dtype == np.uint8


def test_uint8_image_feeds_the_first_dequantize_and_computes_the_same() -> None:
    model = _normalised_qdq()
    before = _run(model, image=_image())
    exact = np.maximum((_image().transpose(0, 3, 1, 2).astype(np.float64) - 127) / 128, 0)
    np.testing.assert_allclose(before, exact, atol=1e-6)
    assert uint8_image_input(model)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Shape", "Transpose", "DequantizeLinear", "Relu"]
    assert {i.name for i in model.graph.initializer} == {"q_scale", "q_zp"}
    np.testing.assert_array_equal(_run(model, image=_image()), before)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"q_scale": 2 / 255, "q_zero": 128},  # calibrated parameters: Q would round
        {"mean": 0.5, "std": 0.25, "q_scale": 1 / 63.75, "q_zero": 128},  # 255 * 0.5: no
        {"zero_point_type": np.int8, "q_zero": -1},  # int8 activations: uint8 does not fit
        {"extra_outputs": ("s",)},  # a chain tensor is a graph output
        {"extra_outputs": ("q",)},  # so is the quantised image
        {"extra_nodes": (helper.make_node("Neg", ["d"], ["neg"]),), "extra_outputs": ("neg",)},
    ],
)
def test_anything_else_is_left_alone(kwargs: dict) -> None:
    model = _normalised_qdq(**kwargs)
    before = model.SerializeToString()
    assert not uint8_image_input(model)
    assert model.SerializeToString() == before


def test_float_input_has_no_uint8_normalisation() -> None:
    model = _mean_model([2, 3])
    assert exact_input_normalisation(model) is None
    assert input_quant_overrides(model) == {}


def test_replace_head_needs_a_gemm_head_and_fitting_weights(tmp_path: Path) -> None:
    plain = onnx.load(str(make_tiny_model(tmp_path / "plain.onnx")))  # MatMul logits
    with pytest.raises(ValueError, match="not made by a Gemm"):
        replace_head(plain, np.zeros((4, 3), np.float32), np.zeros(4, np.float32))
    shaped = onnx.load(str(make_tiny_model(tmp_path / "e.onnx", embedding=True)))
    with pytest.raises(ValueError, match="do not fit"):
        replace_head(shaped, np.zeros((4, 5), np.float32), np.zeros(4, np.float32))
    replace_head(shaped, np.ones((4, 3), np.float32), np.arange(4, dtype=np.float32))
    dims = {o.name: o.type.tensor_type.shape.dim[1].dim_value for o in shaped.graph.output}
    assert dims == {"logits": 4, "embedding": 3, "class_maps": 4}


def test_head_weights_reads_the_head_replace_head_writes(tmp_path: Path) -> None:
    proto = onnx.load(str(make_tiny_model(tmp_path / "e.onnx", embedding=True)))
    weight, bias = np.arange(12, dtype=np.float32).reshape(4, 3), np.arange(4, dtype=np.float32)
    replace_head(proto, weight, bias)
    got_weight, got_bias = head_weights(proto)
    np.testing.assert_array_equal(got_weight, weight)
    np.testing.assert_array_equal(got_bias, bias)
    plain = onnx.load(str(make_tiny_model(tmp_path / "plain.onnx")))  # MatMul logits
    with pytest.raises(ValueError, match="not made by a Gemm"):
        head_weights(plain)

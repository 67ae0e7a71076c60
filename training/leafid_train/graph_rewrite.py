"""Small ONNX graph rewrites that make exported models cheaper to run in onnxruntime.

Each rewrite keeps what the graph computes (up to float rounding) and changes how
onnxruntime can run it: fewer float ops around the quantised ones, and operators that
onnxruntime has fast kernels for. ``leafid export``'s INT8 comparison measures the
result on each export.

Needs the [train] extra (onnx).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from leafid.classifier import CLASS_MAPS_OUTPUT, LOGITS_OUTPUT

log = logging.getLogger(__name__)


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The initializer called ``name`` as an array (only that one is converted), or None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Tensor names that nodes (also inside subgraphs) read or the graph outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= _used_names(sub)
    return used


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _used_names(graph)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def global_average_pools(proto: onnx.ModelProto) -> int:
    """Replace spatial means of 4-D tensors by ``GlobalAveragePool``, in place.

    torch exports the head's pooling as ``ReduceMean`` over H and W. onnxruntime runs
    ``GlobalAveragePool`` in INT8 on channels-last data, but for ``ReduceMean`` the INT8
    model first dequantises and transposes the last feature map. Only a ``ReduceMean``
    with constant axes {2, 3} (or {-2, -1}) of a rank-4 float input is replaced; without
    ``keepdims`` a ``Flatten`` follows the pool.

    Returns:
        How many nodes were replaced.
    """
    graph = proto.graph
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    float_ranks = {  # rank of each float tensor whose shape is known
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*inferred.value_info, *inferred.input, *inferred.output]
        if v.type.tensor_type.HasField("shape")
        and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    replaced = 0
    for node in list(graph.node):
        if node.op_type != "ReduceMean":
            continue
        if len(node.input) < 2 or float_ranks.get(node.input[0]) != 4:
            continue
        axes = _constant(graph, node.input[1])
        if axes is None or {int(a) % 4 for a in axes.reshape(-1)} != {2, 3}:
            continue
        keepdims = _attribute(node, "keepdims", 1) == 1
        pooled = node.output[0] if keepdims else f"{node.output[0]}_pooled"
        new = [onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [pooled])]
        if not keepdims:  # (N, C, 1, 1) -> (N, C)
            new.append(onnx.helper.make_node("Flatten", [pooled], [node.output[0]], axis=1))
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, added in enumerate(new):
            graph.node.insert(position + offset, added)
        replaced += 1
    if replaced:
        _drop_unused_initializers(graph)
    return replaced


def _scalar(graph: onnx.GraphProto, name: str) -> float | None:
    value = _constant(graph, name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


@dataclass(frozen=True, eq=False)
class InputNormalisation:
    """The graph's float normalisation of its uint8 image, exact in uint8.

    ``float_tensor = scale * (uint8_tensor - zero_point)`` holds for every uint8 value,
    so the uint8 tensor is the normalised image quantised with these parameters.
    """

    nodes: tuple[onnx.NodeProto, ...]  # the Cast and the scalar arithmetic after it
    uint8_name: str  # what the Cast reads: the image, or its Transpose
    float_name: str  # the normalised image
    scale: float
    zero_point: int


def exact_input_normalisation(proto: onnx.ModelProto) -> InputNormalisation | None:
    """Find ``Cast`` then scalar ``Div``/``Mul``/``Sub``/``Add`` on a uint8 image input.

    The exported graph normalises the image this way (``/255``, ``-mean``, ``/std``).
    With scalar mean and std and ``255 * mean`` a whole number (the lite0 weights:
    127/255 and 128/255), that is exact in uint8: scale ``1 / (255 * std)``, zero point
    ``255 * mean``. Each tensor of the chain must feed only the next node and not be a
    graph output.

    Returns:
        The chain, or None when there is none or it is not exact in uint8.
    """
    graph = proto.graph
    if len(graph.input) != 1 or graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        return None
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    current = uint8_name = graph.input[0].name
    nodes: list[onnx.NodeProto] = []
    scale, offset = 1.0, 0.0  # current = scale * uint8 + offset
    while current not in outputs:
        # Before the Cast, a Shape only reads the shape of a tensor that stays.
        following = [n for n in users.get(current, []) if nodes or n.op_type != "Shape"]
        if len(following) != 1:
            break
        node = following[0]
        if not nodes and node.op_type == "Transpose":
            uint8_name = node.output[0]
        elif not nodes and node.op_type == "Cast":
            if _attribute(node, "to", None) != onnx.TensorProto.FLOAT:
                return None
            nodes.append(node)
        elif nodes and node.op_type in ("Div", "Mul", "Sub", "Add") and node.input[0] == current:
            value = _scalar(graph, node.input[1])
            if value is None or (value == 0 and node.op_type == "Div"):
                break
            if node.op_type == "Div":
                scale, offset = scale / value, offset / value
            elif node.op_type == "Mul":
                scale, offset = scale * value, offset * value
            else:
                offset += -value if node.op_type == "Sub" else value
            nodes.append(node)
        else:
            break
        current = node.output[0]
    if not nodes or current in outputs or scale <= 0:
        return None
    zero_point = -offset / scale
    if abs(zero_point - round(zero_point)) > 1e-3 or not 0 <= round(zero_point) <= 255:
        return None
    return InputNormalisation(tuple(nodes), uint8_name, current, scale, round(zero_point))


def input_quant_overrides(proto: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """``TensorQuantOverrides`` that give the normalised image its exact uint8 parameters.

    For onnxruntime's ``quantize_static``: the parameters of
    :func:`exact_input_normalisation` replace min/max calibrated ones. Empty when the
    normalisation is not exact in uint8.
    """
    norm = exact_input_normalisation(proto)
    if norm is None:
        return {}
    params = {
        "scale": np.array(norm.scale, dtype=np.float32),
        "zero_point": np.array(norm.zero_point, dtype=np.uint8),
    }
    return {norm.float_name: [params]}


def uint8_image_input(proto: onnx.ModelProto) -> bool:
    """Feed the uint8 image straight to the first ``DequantizeLinear`` of a QDQ model.

    Where the graph normalises the image exactly in uint8
    (:func:`exact_input_normalisation`) and quantises the result with those very
    parameters (:func:`input_quant_overrides`), the ``QuantizeLinear`` gives back the
    uint8 image itself. The float chain and that ``QuantizeLinear`` are then removed, in
    place: the graph computes the same, with no float work on the image. Anything
    else is left as it is.

    Returns:
        Whether the graph was changed.
    """
    graph = proto.graph
    norm = exact_input_normalisation(proto)
    if norm is None:
        return False
    users = _consumers(graph)
    following = users.get(norm.float_name, [])
    if len(following) != 1 or following[0].op_type != "QuantizeLinear":
        return False
    quantize = following[0]
    if len(quantize.input) < 3 or quantize.output[0] in {o.name for o in graph.output}:
        return False
    q_scale, q_zero = _constant(graph, quantize.input[1]), _constant(graph, quantize.input[2])
    if (
        q_scale is None
        or q_zero is None
        or q_scale.size != 1
        or q_zero.dtype != np.uint8
        or int(q_zero.reshape(-1)[0]) != norm.zero_point
        or not np.isclose(float(q_scale.reshape(-1)[0]), norm.scale, rtol=1e-6, atol=0)
    ):
        return False
    dequantizers = users.get(quantize.output[0], [])
    if not dequantizers or any(
        d.op_type != "DequantizeLinear" or list(d.input[1:]) != list(quantize.input[1:])
        for d in dequantizers
    ):
        return False
    for dq in dequantizers:
        dq.input[0] = norm.uint8_name
    for node in [*norm.nodes, quantize]:
        graph.node.remove(node)
    _drop_unused_initializers(graph)
    log.info(
        "uint8 image fed to the first quantised op (scale %.6g, zero point %d)",
        norm.scale,
        norm.zero_point,
    )
    return True


def _set_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    """Replace (or add) the initializer called ``name``."""
    for init in graph.initializer:
        if init.name == name:
            graph.initializer.remove(init)
            break
    graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))


def _head_gemm(graph: onnx.GraphProto, logits: str) -> tuple[onnx.NodeProto, np.ndarray, bool]:
    """The ``Gemm`` that makes ``logits``, its constant weights and its ``transB``.

    Raises:
        ValueError: ``logits`` is not made by a ``Gemm`` with initializer weights.
    """
    gemm = next((n for n in graph.node if logits in n.output), None)
    weight = None if gemm is None or gemm.op_type != "Gemm" else _constant(graph, gemm.input[1])
    if gemm is None or weight is None:
        raise ValueError(f"the {logits!r} output is not made by a Gemm with constant weights")
    return gemm, weight, bool(_attribute(gemm, "transB", 0))


def head_weights(
    proto: onnx.ModelProto, *, logits: str = LOGITS_OUTPUT
) -> tuple[np.ndarray, np.ndarray]:
    """The linear head of an exported model: ``logits = embedding @ W.T + b``.

    Returns:
        Its weights (K, C) and biases (K,; zeros when the ``Gemm`` has none), float32.

    Raises:
        ValueError: The graph's head is not a ``Gemm`` with initializer weights.
    """
    graph = proto.graph
    gemm, weight, trans_b = _head_gemm(graph, logits)
    weight = (weight if trans_b else weight.T).astype(np.float32)
    bias = _constant(graph, gemm.input[2]) if len(gemm.input) > 2 and gemm.input[2] else None
    return weight, (np.zeros(len(weight)) if bias is None else bias).astype(np.float32)


def replace_head(
    proto: onnx.ModelProto,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    logits: str = LOGITS_OUTPUT,
    class_maps: str = CLASS_MAPS_OUTPUT,
) -> None:
    """Give an exported model a new linear head, in place: ``logits = embedding @ W.T + b``.

    The head is the ``Gemm`` that makes ``logits`` from the embedding, and the 1x1
    ``Conv`` that applies the same weights at each position of the last feature map
    (``class_maps``, when the model has it; its weight is the Gemm's, unsqueezed, or an
    initializer of its own). Every other node is kept, so the backbone is unchanged.

    Args:
        proto: An exported fp32 model.
        weight: The new head's weights (K, C).
        bias: Its biases (K,).
        logits: The logits output.
        class_maps: The class activation map output.

    Raises:
        ValueError: The graph's head is not a ``Gemm`` with initializer weights, or the
            new weights do not fit the embedding width.
    """
    graph = proto.graph
    made_by = {out: node for node in graph.node for out in node.output}
    gemm, old, trans_b = _head_gemm(graph, logits)
    width = old.shape[1] if trans_b else old.shape[0]
    n = len(bias)
    if weight.shape != (n, width):
        raise ValueError(f"new head weights {weight.shape} do not fit ({n}, {width})")
    new = {gemm.input[1]: weight if trans_b else weight.T}
    if len(gemm.input) < 3 or not gemm.input[2]:
        del gemm.input[2:]
        gemm.input.append(f"{gemm.name or logits}_bias")
    new[gemm.input[2]] = bias
    conv = made_by.get(class_maps)
    if conv is not None:
        if conv.op_type != "Conv":
            raise ValueError(f"the {class_maps!r} output is not made by a Conv")
        if _constant(graph, conv.input[1]) is not None:
            new[conv.input[1]] = weight[:, :, None, None]
        elif made_by[conv.input[1]].input[0] != gemm.input[1]:
            raise ValueError(f"the {class_maps!r} Conv does not use the logits' weights")
        if len(conv.input) > 2 and conv.input[2]:
            new[conv.input[2]] = bias
    for name, value in new.items():
        _set_initializer(graph, name, value)
    del graph.value_info[:]  # shapes of the old head; onnxruntime infers them again
    for out in graph.output:
        if out.name in (logits, class_maps):
            out.type.tensor_type.shape.dim[1].dim_value = n

"""Where Q/DQ pairs go, and the clean-ups applied to ONNX Runtime's quantiser output.

These functions work on ``onnx.ModelProto`` objects structurally (by op type and wiring, never by
node name), so they hold for the plain and the optimised exports alike. Each rule exists because
of a measurement or a runtime constraint, given in its docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ckbd.errors import require

#: Op types whose inputs get Q/DQ pairs.
QUANTIZED_OPS = ("Conv", "ConvTranspose")
#: The stage contract's name for the image tensor (analysis input, synthesis output).
IMAGE_TENSOR = "image"


def consumers_of(nodes: Iterable[Any]) -> dict[str, list[Any]]:
    """Tensor name -> nodes that read it."""
    result: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            result.setdefault(name, []).append(node)
    return result


def producers_of(nodes: Iterable[Any]) -> dict[str, Any]:
    """Tensor name -> the node that writes it."""
    return {out: node for node in nodes for out in node.output}


def gdn_norm_convs(model: Any) -> list[str]:
    """Conv nodes that compute a GDN/IGDN norm: those fed by ``Mul(x, x)`` or ``Pow(x, c)``.

    Their input is the *square* of an activation, so its dynamic range is squared too and one
    8-bit scale per tensor flushes the small values, which set the normalisation, to zero. They are
    1x1 convolutions (N to N channels), cheap enough to leave in float.
    """
    producers = producers_of(model.graph.node)
    constants = {init.name for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or not node.input or node.input[0] not in producers:
            continue
        src = producers[node.input[0]]
        square = src.op_type == "Mul" and len(src.input) == 2 and src.input[0] == src.input[1]
        power = src.op_type == "Pow" and len(src.input) == 2 and src.input[1] in constants
        if square or power:
            names.append(node.name)
    return names


def image_side_convs(model: Any) -> list[str]:
    """The convolution(s) that read the image (analysis) or write it (synthesis).

    Kept in float, as is usual for the first and last layer of a quantised network:

    * analysis' first layer would see a 7-bit image (symmetric int8 over [0, 1] is 127 levels);
    * synthesis' last layer (N to 3 channels) writes the reconstruction directly. Quantising it cost
      about 2 dB of int8-vs-fp32 PSNR on a briefly trained N=64/M=96 model (44.8 -> 46.9 dB without
      it) for no speed: with a float output ONNX Runtime cannot fuse it into an int8 kernel anyway.

    Found by walking from the ``image`` graph input forwards, and from the ``image`` graph output
    backwards, through non-convolution nodes to the first convolution met.
    """
    nodes = list(model.graph.node)
    found: list[str] = []
    if any(v.name == IMAGE_TENSOR for v in model.graph.input):
        found += _first_convs(nodes, IMAGE_TENSOR, consumers_of(nodes), forward=True)
    if any(v.name == IMAGE_TENSOR for v in model.graph.output):
        found += _first_convs(nodes, IMAGE_TENSOR, producers_of(nodes), forward=False)
    return found


#: Ops that only look at a tensor's shape: walks along data flow do not pass through them.
SHAPE_OPS = ("Shape", "Size")


def _first_convs(nodes: Sequence[Any], start: str, links: dict[str, Any], forward: bool) -> list[str]:
    """Convs reached from tensor ``start`` through non-conv data nodes, forwards or backwards.

    ``links`` maps a tensor to its readers (forwards) or to its producer (backwards).
    """
    found: list[str] = []
    seen: set[int] = set()
    stack = [start]
    while stack:
        tensor = stack.pop()
        if forward:
            nexts = links.get(tensor, [])
        else:
            nexts = [links[tensor]] if tensor in links else []
        for node in nexts:
            if id(node) in seen or node.op_type in SHAPE_OPS:
                continue
            seen.add(id(node))
            if node.op_type in QUANTIZED_OPS:
                found.append(node.name)
            else:
                stack.extend(node.output if forward else node.input)
    return found


def _dq_fed(node: Any, producers: dict[str, Any]) -> bool:
    """Whether a node's data input comes out of a DequantizeLinear (i.e. it was quantised)."""
    src = producers.get(node.input[0]) if node.input else None
    return src is not None and src.op_type == "DequantizeLinear"


def _reaches(start: Any, consumers: dict[str, list[Any]], targets: set[int]) -> bool:
    """Whether a node of ``targets`` (ids) lies downstream of ``start`` (depth-first)."""
    seen: set[int] = set()
    stack = list(start.output)
    while stack:
        for node in consumers.get(stack.pop(), []):
            if id(node) in targets:
                return True
            if id(node) not in seen:
                seen.add(id(node))
                stack.extend(node.output)
    return False


def float_outputs_to_graph(model: Any) -> list[str]:
    """Let readers that lead straight to graph outputs read a quantised Conv's float output.

    The quantiser puts a Q/DQ pair on every quantised Conv's output: ONNX Runtime needs it to fuse
    the layer into an int8 kernel, so it stays wherever another convolution follows. But where
    the output flows to the graph's outputs with no convolution in between (the latents leaving
    analysis, about to be rounded and entropy coded) the 8-bit grid would land directly on the
    result, so those readers are re-wired to the float tensor. Q/DQ nodes left without readers
    are removed. Returns the names of the Convs concerned.
    """
    nodes = list(model.graph.node)
    producers, consumers = producers_of(nodes), consumers_of(nodes)
    convs = {id(n) for n in nodes if n.op_type in QUANTIZED_OPS}
    quantized = [n for n in nodes if n.op_type in QUANTIZED_OPS and _dq_fed(n, producers)]
    changed: set[str] = set()
    for conv in quantized:
        for dq in _output_dqs(conv, consumers):
            for reader in consumers.get(dq.output[0], []):
                if id(reader) in convs or _reaches(reader, consumers, convs):
                    continue
                for i, name in enumerate(reader.input):
                    if name == dq.output[0]:
                        reader.input[i] = conv.output[0]
                changed.add(conv.name)
    if changed:
        drop_dead_qdq(model)
        drop_unused_initializers(model)
    return sorted(changed)


def _output_dqs(conv: Any, consumers: dict[str, list[Any]]) -> list[Any]:
    """The DequantizeLinear nodes behind the QuantizeLinear(s) on a Conv's output."""
    return [dq for q in consumers.get(conv.output[0], []) if q.op_type == "QuantizeLinear"
            for dq in consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"]


def private_quant_params(model: Any) -> int:
    """Give each QuantizeLinear of a tensor quantised more than once its own scale and zero point.

    With dedicated Q/DQ pairs, a tensor read by several Convs (the four phase convolutions of a
    decomposed transposed convolution) gets one Q/DQ pair per Conv, all naming the same scale
    initializer. ONNX Runtime's common-subexpression elimination then merges the Qs into one Q with
    several DQ readers, which its x86 int8-to-uint8 conversion skips, so none of those Convs was
    fused into an int8 kernel and the int8 graph ran about 15 % *slower* than fp32. Private copies
    (same values, new names) keep the pairs apart; the graph computes exactly the same thing.
    Returns the number of Q nodes changed.
    """
    nodes = list(model.graph.node)
    by_input: dict[str, list[Any]] = {}
    for node in nodes:
        if node.op_type == "QuantizeLinear":
            by_input.setdefault(node.input[0], []).append(node)
    inits = {init.name: init for init in model.graph.initializer}
    consumers = consumers_of(nodes)
    changed = 0
    for quants in by_input.values():
        for k, q in enumerate(quants[1:], start=1):
            dqs = [d for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
            for slot in range(1, len(q.input)):
                original = inits.get(q.input[slot])
                if original is None:
                    continue
                copy = model.graph.initializer.add()
                copy.CopyFrom(original)
                copy.name = f"{original.name}__q{k}"
                for node in (q, *dqs):
                    if len(node.input) > slot and node.input[slot] == original.name:
                        node.input[slot] = copy.name
            changed += 1
    return changed


def shared_quantize(model: Any) -> int:
    """Quantise each tensor once: its QuantizeLinear copies with equal scale and zero point become one.

    The opposite of :func:`private_quant_params`, for the ``cpu`` recipe: its activations are
    already uint8, so ONNX Runtime has no int8-to-uint8 conversion to skip and fuses every Conv
    behind a shared Q (each Conv keeps its own DequantizeLinear). Without it, the input of the four
    phase convolutions of a synthesis layer was quantised four times (paper-size model, 768x512,
    2 threads, AVX-512 Xeon: int8 synthesis 240 -> 225 ms, the same 12 QLinearConv nodes).
    Returns the number of Q nodes removed.
    """
    numpy_helper = require("onnx.numpy_helper", "calibration", "INT8 calibration")
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}

    def params(q: Any) -> list[Any]:
        return [values.get(name) for name in q.input[1:]]

    consumers = consumers_of(model.graph.node)
    first: dict[str, Any] = {}
    removed: set[int] = set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or any(v is None for v in params(node)):
            continue
        kept = first.setdefault(node.input[0], node)
        if kept is node or len(params(kept)) != len(params(node)):
            continue
        if not all(np.array_equal(a, b) for a, b in zip(params(kept), params(node))):
            continue
        for dq in consumers.get(node.output[0], []):
            for slot, name in enumerate(dq.input):
                if name == node.output[0]:
                    dq.input[slot] = kept.output[0]
                elif slot and node.input[slot:slot + 1] == [name]:
                    dq.input[slot] = kept.input[slot]
        removed.add(id(node))
    if removed:
        keep = [n for n in model.graph.node if id(n) not in removed]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        drop_unused_initializers(model)
    return len(removed)


def drop_dead_qdq(model: Any) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads (repeated: a dead DQ can leave a dead Q)."""
    graph_outputs = {v.name for v in model.graph.output}
    while True:
        used = {name for node in model.graph.node for name in node.input} | graph_outputs
        keep = [n for n in model.graph.node
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(keep)


def drop_unused_initializers(model: Any) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used.update(v.name for v in model.graph.output)
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def drop_unused_opsets(model: Any) -> None:
    """Keep only the operator domains the graph uses.

    ``quant_pre_process`` saves through ONNX Runtime, which lists all of its private domains
    (com.microsoft, nchwc, ...) although no node uses them; other runtimes such as TensorRT's parser
    should not have to know about them.
    """
    used = {node.domain or "" for node in model.graph.node} | {""}
    keep = [op for op in model.opset_import if (op.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def count_ops(model: Any, op_types: Sequence[str]) -> int:
    return sum(1 for node in model.graph.node if node.op_type in op_types)

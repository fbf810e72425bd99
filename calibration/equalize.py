"""Channel equalisation through (I)GDN before INT8 calibration: per-tensor ranges that fit every channel.

An int8 activation has one range per tensor, so a channel whose values span a tenth of the widest
channel's keeps only a tenth of the 256 levels. The channels of a GDN/IGDN layer can be rescaled
without changing what the network computes. With ``y = x * sqrt(beta + gamma @ x**2)`` (IGDN; GDN
divides instead) and a positive scale ``s_c`` per channel:

* the convolution(s) producing ``x`` get output channel ``c`` multiplied by ``s_c`` (weights, bias);
* the norm's ``gamma[c, j]`` is divided by ``s_j**2``, so ``gamma @ x**2`` is unchanged;
* then ``y_c`` is multiplied by ``s_c`` too, and the convolutions reading ``y`` divide their input
  channel ``c`` by ``s_c``.

So both quantised tensors of the layer, the convolution output ``x`` and the normalised ``y``, get
their channels rescaled, with ``s_c = (widest / range_c) ** strength`` from the calibration data
(``strength`` 0 changes nothing, 1 makes every channel as wide as the widest). The weights absorb the
opposite change; they are quantised per output channel, which keeps most of it harmless.

Layers are found structurally (the square, the norm convolution, the product), and the phase
convolutions of one up-sampling layer, which interleave into one tensor, share one scale vector.
The rewrite is checked by running the float graph before and after on a calibration feed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckbd.calibration.data import ImageFeedReader
from ckbd.calibration.qdq_graph import IMAGE_TENSOR, SHAPE_OPS, consumers_of, producers_of
from ckbd.calibration.sensitivity import cpu_session
from ckbd.errors import CkbdError, require

#: Ops a walk from a layer's output to the next convolutions may pass: they move pixels, not channels.
_PIXEL_MOVES = ("Unsqueeze", "Concat", "Reshape", "Identity")
_CONVS = ("Conv", "ConvTranspose")
#: How a per-channel factor broadcasts over a weight: its output channels, or its input channels.
_OUT_CHANNELS = {"Conv": (-1, 1, 1, 1), "ConvTranspose": (1, -1, 1, 1)}
_IN_CHANNELS = {"Conv": (1, -1, 1, 1), "ConvTranspose": (-1, 1, 1, 1)}
#: From the graph's latent inputs to the first layer: the checkerboard unpack slices them too.
_UNPACK_MOVES = (*_PIXEL_MOVES, "Slice")
#: How far channels are equalised (see the module docstring). GDN layers fully, on the geometric mean
#: of each channel's range before and after the norm; the latent input halfway. Shipped model, fake
#: int8 in torch, min/max ranges, 4 Kodak images: -0.30 dB unequalised, -0.19 with the layers,
#: -0.13 with the input halfway too, -0.18 with it fully. With ONNX Runtime's percentile ranges on 24
#: Kodak images, input strength 0.5, 0.75 and 1 gave -0.094, -0.092 and -0.095 dB.
LAYER_STRENGTH = 1.0
INPUT_STRENGTH = 0.5
#: Bound on a channel's scale, either way: a dead channel must not blow up its producer's weights.
MAX_SCALE = 16.0
#: Float graph after the rewrite against before, relative to the output's range.
MAX_REWRITE_ERROR = 1e-3


@dataclass(frozen=True)
class NormLayer:
    """One GDN/IGDN layer: its producing convolutions, norm convolutions, outputs and readers."""

    producers: tuple[str, ...]
    norms: tuple[str, ...]
    #: The tensors normalised (the producers' outputs) and the normalised ones, one per phase.
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    readers: tuple[str, ...]


def norm_layers(model: Any) -> list[NormLayer]:
    """The GDN/IGDN layers of ``model`` that can be equalised, phases of one layer merged."""
    nodes = list(model.graph.node)
    producers, consumers = producers_of(nodes), consumers_of(nodes)
    weights = {init.name for init in model.graph.initializer}
    merged: dict[tuple[str, ...], list[tuple[Any, str, str]]] = {}
    for norm in nodes:
        found = _norm_site(norm, producers, consumers, weights)
        if found is None:
            continue
        producer, output = found
        readers = _readers(output, consumers)
        if readers is None:
            continue
        merged.setdefault(tuple(sorted(readers)), []).append((producer, norm.name, output))
    return [NormLayer(tuple(p.name for p, _, _ in sites), tuple(n for _, n, _ in sites),
                      tuple(p.output[0] for p, _, _ in sites), tuple(o for _, _, o in sites), readers)
            for readers, sites in merged.items()]


def _norm_site(norm: Any, producers: dict[str, Any], consumers: dict[str, list[Any]],
               weights: set[str]) -> tuple[Any, str] | None:
    """(producing conv, output tensor) when ``norm`` is a GDN norm conv over ``Mul(x, x)``, else None."""
    if norm.op_type != "Conv" or len(norm.input) < 2 or norm.input[1] not in weights:
        return None
    square = producers.get(norm.input[0])
    if square is None or square.op_type != "Mul" or square.input[0] != square.input[1]:
        return None
    x = square.input[0]
    producer = producers.get(x)
    if producer is None or producer.op_type not in _CONVS or producer.input[1] not in weights:
        return None
    if int(next((a.i for a in producer.attribute if a.name == "group"), 1)) != 1:
        return None
    others = [node for node in consumers.get(x, []) if node is not square]
    if len(others) != 1 or others[0].op_type not in ("Mul", "Div") or others[0].input[0] != x:
        return None
    return producer, others[0].output[0]


def _readers(tensor: str, consumers: dict[str, list[Any]], moves: tuple[str, ...] = _PIXEL_MOVES
             ) -> tuple[str, ...] | None:
    """Convolutions reading ``tensor`` through ``moves`` only; None if anything else reads it.

    Shape queries are passed over: they read no values.
    """
    found: list[str] = []
    stack, seen = [tensor], {tensor}
    while stack:
        current = stack.pop()
        for node in consumers.get(current, []):
            if node.op_type in _CONVS and node.input[0] == current:
                found.append(node.name)
            elif node.op_type in SHAPE_OPS:
                continue
            elif node.op_type in moves and current in node.input:
                stack.extend(out for out in node.output if out not in seen)
                seen.update(node.output)
            else:
                return None
    return tuple(dict.fromkeys(found)) or None


@dataclass(frozen=True)
class InputSite:
    """The latent the first layer's convolutions read, after the checkerboard unpack."""

    tensor: str
    readers: tuple[str, ...]


def input_site(model: Any) -> InputSite | None:
    """Where a per-channel scale can go on a latent input; None for an image input (its layer stays float)."""
    if any(v.name == IMAGE_TENSOR for v in model.graph.input):
        return None
    nodes = list(model.graph.node)
    consumers, by_name = consumers_of(nodes), {node.name: node for node in nodes}
    readers: list[str] = []
    for value in model.graph.input:
        found = _readers(value.name, consumers, _UNPACK_MOVES)
        if found is None:
            return None
        readers += found
    tensors = {by_name[name].input[0] for name in readers}
    if len(tensors) != 1:
        return None
    return InputSite(tensors.pop(), tuple(dict.fromkeys(readers)))


def channel_scales(ranges: np.ndarray, strength: float) -> np.ndarray:
    """``(widest / range) ** strength`` per channel, bounded by :data:`MAX_SCALE` either way."""
    ranges = np.asarray(ranges, dtype=np.float64)
    widest = float(ranges.max()) if ranges.size else 0.0
    if widest <= 0:
        return np.ones_like(ranges)
    return np.clip((widest / np.maximum(ranges, 1e-30)) ** strength, 1 / MAX_SCALE, MAX_SCALE)


def tensor_peaks(model: Any, tensors: Sequence[str], feeds: Iterable[dict[str, np.ndarray]], threads: int = 0
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[np.ndarray]]:
    """Each tensor's largest magnitude per channel over the feeds; the first feed and the graph's outputs for it.

    The first feed's outputs are what the rewritten graph is checked against (:func:`rewrite_error`).
    """
    onnx = require("onnx", "calibration", "INT8 calibration")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = [v.name for v in probe.graph.output]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors if name not in outputs)
    session = cpu_session(probe, threads)
    peaks: dict[str, np.ndarray] = {}
    first: dict[str, np.ndarray] = {}
    expected: list[np.ndarray] = []
    for feed in feeds:
        wanted = list(tensors) if first else [*outputs, *tensors]
        values = session.run(wanted, feed)
        if not first:
            first, expected, values = feed, values[:len(outputs)], values[len(outputs):]
        for name, value in zip(tensors, values):
            peak = np.abs(value).max(axis=tuple(d for d in range(value.ndim) if d != 1))
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    if not first:
        raise CkbdError("no calibration feeds to equalise channels with")
    return peaks, first, expected


def equalize(model: Any, layers: Sequence[NormLayer], scales: Sequence[np.ndarray]) -> None:
    """Rescale the channels of each layer in place (see the module docstring)."""
    by_node = {node.name: node for node in model.graph.node}
    factors: list[tuple[str, np.ndarray, str]] = []
    for index, (layer, s) in enumerate(zip(layers, scales)):
        s = np.asarray(s, dtype=np.float64)
        for node in (by_node[name] for name in layer.producers):
            factors.append((node.input[1], s.reshape(_OUT_CHANNELS[node.op_type]), f"{index}:weight"))
            if len(node.input) > 2 and node.input[2]:
                factors.append((node.input[2], s, f"{index}:bias"))
        for name in layer.norms:
            factors.append((by_node[name].input[1], 1 / s.reshape(1, -1, 1, 1) ** 2, f"{index}:norm"))
        for node in (by_node[name] for name in layer.readers):
            factors.append((node.input[1], 1 / s.reshape(_IN_CHANNELS[node.op_type]), f"{index}:reader"))
    _rescale_constants(model, factors)


def _rescale_constants(model: Any, factors: Sequence[tuple[str, np.ndarray, str]]) -> None:
    """Multiply constants in place by (tensor, factor, role) factors.

    A constant read by several phases (directly or through an ``Identity`` copy) is scaled once per
    role, and the roles compose: a convolution's weight is a reader of one layer and a producer of the next.
    """
    numpy_helper = require("onnx.numpy_helper", "calibration", "INT8 calibration")
    inits = {init.name: init for init in model.graph.initializer}
    aliases = _identity_sources(model)
    unique: dict[tuple[str, str], np.ndarray] = {}
    for tensor, factor, role in factors:
        name = aliases.get(tensor, tensor)
        if name not in inits:
            raise CkbdError(f"cannot equalise channels: {name} is not a constant")
        unique[(name, role)] = factor
    originals = {name: numpy_helper.to_array(inits[name]) for name, _ in unique}
    edits = {name: array.astype(np.float64) for name, array in originals.items()}
    for (name, _), factor in unique.items():
        edits[name] = edits[name] * factor
    for name, array in edits.items():
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(originals[name].dtype), name))


def equalize_input(model: Any, site: InputSite, scales: np.ndarray) -> None:
    """Multiply the latent by ``scales`` per channel before its readers, which divide it back out.

    The ``Mul`` is float and runs on the latent (a sixteenth of the image's pixels, M channels);
    the int8 quantiser then sees the rescaled tensor as the first layer's input.
    """
    numpy_helper = require("onnx.numpy_helper", "calibration", "INT8 calibration")
    helper = require("onnx.helper", "calibration", "INT8 calibration")
    nodes = list(model.graph.node)
    scaled, factor = f"{site.tensor}_equalized", f"{site.tensor}_channel_scales"
    s = np.asarray(scales, dtype=np.float64)
    model.graph.initializer.append(numpy_helper.from_array(s.astype(np.float32).reshape(1, -1, 1, 1), factor))
    first = min(i for i, node in enumerate(nodes) if node.name in site.readers)
    model.graph.node.insert(first, helper.make_node("Mul", [site.tensor, factor], [scaled], name=f"{scaled}_mul"))
    readers = [node for node in model.graph.node if node.name in site.readers]
    for node in readers:
        node.input[0] = scaled
    _rescale_constants(model, [(node.input[1], 1 / s.reshape(_IN_CHANNELS[node.op_type]), "latent input")
                               for node in readers])


def equalize_channels(model: Any, feeds: Iterable[dict[str, np.ndarray]], threads: int = 0) -> dict[str, Any]:
    """Equalise ``model``'s GDN layers (and its latent input) in place from ``feeds``; returns the manifest note.

    Raises when the float graph's output moved (a structure the rewrite misread).
    """
    layers, site = norm_layers(model), input_site(model)
    if not layers and site is None:
        return {}
    tensors = [name for layer in layers for name in (*layer.inputs, *layer.outputs)]
    tensors += [site.tensor] if site is not None else []
    peaks, first, expected = tensor_peaks(model, list(dict.fromkeys(tensors)), feeds, threads)
    spans = []
    scales = []
    for layer in layers:
        before_norm = np.max([peaks[t] for t in layer.inputs], axis=0)
        ranges = np.sqrt(before_norm * np.max([peaks[t] for t in layer.outputs], axis=0))
        spans.append(_spread(ranges))
        scales.append(channel_scales(ranges, LAYER_STRENGTH))
    equalize(model, layers, scales)
    if site is not None:
        spans.append(_spread(peaks[site.tensor]))
        equalize_input(model, site, channel_scales(peaks[site.tensor], INPUT_STRENGTH))
    error = rewrite_error(expected, model, first, threads)
    if error > MAX_REWRITE_ERROR:
        raise CkbdError(f"channel equalisation changed the float graph's output (mean error {error:.2g} of its range); "
                        "calibrate with --no-equalize")
    return {"gdn_layers": len(layers), "latent_input": site is not None, "layer_strength": LAYER_STRENGTH,
            "input_strength": INPUT_STRENGTH, "channel_spread_before": [round(v, 1) for v in spans],
            "rewrite_error": float(f"{error:.3g}")}


def equalize_file(path: Path, reader: ImageFeedReader) -> dict[str, Any]:
    """Equalise the graph file at ``path`` in place with the reader's feeds; the manifest's note of it."""
    onnx = require("onnx", "calibration", "INT8 calibration")
    model = onnx.load(str(path))
    reader.rewind()
    label, reader.label = reader.label, f"{reader.label}: equalising channels"  # its own progress bar
    try:
        note = equalize_channels(model, reader)
    finally:
        reader.close()
        reader.label = label
    onnx.save(model, str(path))
    return {"equalization": note} if note else {}


def _spread(ranges: np.ndarray) -> float:
    """Widest channel range over the median one: how unevenly one per-tensor range is shared."""
    return float(np.max(ranges) / max(float(np.median(ranges)), 1e-30))


def _identity_sources(model: Any) -> dict[str, str]:
    """Tensor -> the initializer it is an ``Identity`` copy of (exports share a bias this way)."""
    producers = producers_of(model.graph.node)
    inits = {init.name for init in model.graph.initializer}
    sources = {}
    for name in producers:
        source = name
        while source in producers and producers[source].op_type == "Identity":
            source = producers[source].input[0]
        if source != name and source in inits:
            sources[name] = source
    return sources


def rewrite_error(expected: Sequence[np.ndarray], after: Any, feed: dict[str, np.ndarray], threads: int = 0) -> float:
    """Mean output difference of graph ``after`` on ``feed`` from ``expected``, relative to the output's range.

    The mean, not the largest: a synthesis writes rounded pixels, and a last-bit float difference
    may move a few of them by one level, where a wrong rewrite moves them all.
    """
    worst = 0.0
    for want, got in zip(expected, cpu_session(after, threads).run(None, feed)):
        a, b = np.asarray(want, dtype=np.float64), np.asarray(got, dtype=np.float64)
        worst = max(worst, float(np.abs(a - b).mean()) / max(float(np.ptp(a)), 1e-12))
    return worst

"""The integer entropy-parameter path: what the three index-deciding graphs compute, as data.

``hyper_synthesis``, ``anchor_params`` and ``nonanchor_params`` decide every scale index and mean
the range coder depends on. On the integer path they are specified here in integer arithmetic
(docs/DETERMINISM.md states the rules), so that every backend, thread count and machine gets
bit-identical indexes and means. The spec is plain numpy: the exporter writes it next to the
graphs (``entropy_params.npz``), :mod:`ckbd.runtime.intparams_reference` evaluates it in int64,
and the exported graphs evaluate it with float convolutions that are exact by construction.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckbd.errors import ModelError

INTEGER_PARAMS_NAME = "entropy_params.npz"

#: Bound on ``sum(|w|) * max|x| + |b|`` of every output element of every integer layer. Every
#: partial sum of the convolution, in any order, then stays below 2**23, so float32 (24-bit
#: significand) represents it exactly, and adding the rounding offset ``2**(s-1)`` (s <= 22) keeps
#: it below 2**24: the float convolution returns the exact integer result.
ACC_LIMIT = 2**23
#: Largest right shift a requantisation may use (keeps the rounding offset within the limit).
MAX_SHIFT = 22
#: Fixed-point fraction bits of the means (and of anchor_hat = symbol + mean): units of 2**-8.
MEAN_FRAC = 8
#: Fixed-point fraction bits of the z medians added to the z symbols.
Z_FRAC = 8
#: z symbols are saturated to this magnitude before use (a real z is far smaller).
Z_LIMIT = 2**14
#: Saturation of the decoded anchors the context reads, in latent units (exact in float32).
ANCHOR_LIMIT = 2**14


@dataclass
class IntLayer:
    """One integer convolution and its requantisation.

    ``acc = conv(x, weight) + bias`` exactly (``kind`` "conv": weight (Cout, Cin, k, k), stride
    ``stride``, zero padding ``padding``; "deconv": a transposed conv, weight (Cin, Cout, k, k),
    output size ``stride * input``), then a pixel shuffle by ``shuffle`` (channel ``c * r*r + i * r + j``
    -> pixel (i, j) of channel c) when it is above 1. Then, unless ``shift`` is None (a raw accumulator output):
    ``q = clip(floor(acc / 2**s + 1/2), -bound, bound)`` (round half up; s may be negative); with
    ``leaky`` = k, a negative ``acc`` is divided by ``2**(s+k)`` instead: a leaky ReLU of slope
    2**-k applied before the rounding (every step exact in float arithmetic).
    """

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    stride: int = 1
    padding: int = 0
    shift: np.ndarray | None = None
    bound: int = 127
    leaky: int | None = None
    shuffle: int = 1

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[1] if self.kind == "deconv" else self.weight.shape[0])


@dataclass
class PassParams:
    """One parameter pass: 1x1 layers to a raw (scales, means) accumulator, then the output rules.

    ``index = #{k : acc_scale > thresholds[k]}``; ``mean = floor((acc_mean + r) / 2**s)`` in units
    of 2**-MEAN_FRAC with the per-channel ``mean_shift`` s (round half up, as in IntLayer).
    """

    layers: list[IntLayer]
    thresholds: np.ndarray  # int64 (K-1,), non-decreasing
    mean_shift: np.ndarray  # int64 (M,)
    # How the graphs find the index fast: g = clip(floor(ln(max(acc, 1)) * a + b), 0, K-1), then
    # index = g + [acc > thresholds[g]]. The exporter proves index equals the count rule for every
    # reachable accumulator with a margin for float error (None: a binary search instead).
    guess: tuple[float, float] | None = None


@dataclass
class IntegerParams:
    """The whole integer path of one model (see the module docstring)."""

    M: int
    N: int
    z_medians: np.ndarray  # int64 (N,): round(median * 2**Z_FRAC)
    z_shift: np.ndarray  # int64 (N,): z in 2**-Z_FRAC units -> hyper-synthesis input activation
    z_bound: int
    hyper: list[IntLayer]
    context_shift: np.ndarray  # int64 (M,): anchor_hat in 2**-MEAN_FRAC units -> context input
    context_bound: int
    context: IntLayer  # masked 5x5 conv over the anchors (zeros elsewhere), M -> 2M
    anchor: PassParams
    nonanchor: PassParams
    parity: str = "even"
    meta: dict[str, object] = field(default_factory=dict)

    # -- persistence ------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every number of the spec as named int64 arrays plus one JSON description."""
        arrays: dict[str, np.ndarray] = {"z_medians": self.z_medians, "z_shift": self.z_shift,
                                         "context_shift": self.context_shift}
        layout: dict[str, object] = {
            "M": self.M, "N": self.N, "z_bound": self.z_bound, "context_bound": self.context_bound,
            "parity": self.parity, "meta": self.meta,
        }
        groups = {"hyper": self.hyper, "context": [self.context],
                  "anchor": self.anchor.layers, "nonanchor": self.nonanchor.layers}
        for group, layers in groups.items():
            described = []
            for i, layer in enumerate(layers):
                key = f"{group}.{i}"
                arrays[f"{key}.weight"], arrays[f"{key}.bias"] = layer.weight, layer.bias
                if layer.shift is not None:
                    arrays[f"{key}.shift"] = layer.shift
                described.append({"kind": layer.kind, "stride": layer.stride, "padding": layer.padding,
                                  "bound": layer.bound, "leaky": layer.leaky, "shift": layer.shift is not None,
                                  "shuffle": layer.shuffle})
            layout[group] = described
        for name, p in (("anchor", self.anchor), ("nonanchor", self.nonanchor)):
            arrays[f"{name}.thresholds"], arrays[f"{name}.mean_shift"] = p.thresholds, p.mean_shift
            layout[f"{name}.guess"] = list(p.guess) if p.guess is not None else None
        out = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in arrays.items()}
        out["layout"] = np.frombuffer(json.dumps(layout, sort_keys=True).encode(), dtype=np.uint8)
        return out

    def digest(self) -> str:
        """sha256 over every array (name, shape, little-endian values): part of the fingerprint."""
        h = hashlib.sha256(b"ckbd-integer-params-v1\0")
        for name, array in sorted(self.to_arrays().items()):
            raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
            h.update(json.dumps([name, str(raw.dtype), list(raw.shape)]).encode() + raw.tobytes())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        from ckbd.runtime.atomic import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: _narrowest(v) for k, v in self.to_arrays().items()})  # type: ignore[arg-type]
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> IntegerParams:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] if k == "layout" else npz[k].astype(np.int64) for k in npz.files}
            layout = json.loads(arrays.pop("layout").tobytes())
            return cls._from_arrays(arrays, layout)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"cannot read the integer entropy parameters {path}: {exc}") from None

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], layout: dict) -> IntegerParams:  # type: ignore[type-arg]
        def layers(group: str, described: list[dict]) -> list[IntLayer]:  # type: ignore[type-arg]
            return [
                IntLayer(kind=d["kind"], weight=arrays[f"{group}.{i}.weight"], bias=arrays[f"{group}.{i}.bias"],
                         stride=d["stride"], padding=d["padding"], bound=d["bound"],
                         shift=arrays[f"{group}.{i}.shift"] if d["shift"] else None,
                         leaky=d["leaky"], shuffle=d["shuffle"])
                for i, d in enumerate(described)
            ]

        def one_pass(name: str) -> PassParams:
            guess = layout.get(f"{name}.guess")
            return PassParams(layers(name, layout[name]), arrays[f"{name}.thresholds"], arrays[f"{name}.mean_shift"],
                              tuple(guess) if guess else None)  # type: ignore[arg-type]

        (context,) = layers("context", layout["context"])
        return cls(
            M=layout["M"], N=layout["N"], z_medians=arrays["z_medians"], z_shift=arrays["z_shift"],
            z_bound=layout["z_bound"], hyper=layers("hyper", layout["hyper"]),
            context_shift=arrays["context_shift"], context_bound=layout["context_bound"], context=context,
            anchor=one_pass("anchor"), nonanchor=one_pass("nonanchor"), parity=layout["parity"],
            meta=layout.get("meta", {}),
        )


def _narrowest(values: np.ndarray) -> np.ndarray:
    """The smallest integer type that holds ``values`` (the file stores int8/16/32; loading widens)."""
    if values.dtype == np.uint8:
        return values
    for kind in (np.int8, np.int16, np.int32):
        info = np.iinfo(kind)
        if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
            return values.astype(kind)
    return values

"""Import CompressAI-style checkpoints (and public checkerboard re-implementations) into ckbd models.

A foreign checkpoint carries weights only, so everything else is inferred from key names and
tensor shapes. Three source layouts are recognised:

``latent-codec``
    CompressAI's latent-codec models (``Cheng2020AnchorCheckerboard``, or any model built from
    ``HyperpriorLatentCodec`` + ``CheckerboardLatentCodec``): ``g_a.*``, ``g_s.*``,
    ``latent_codec.hyper.{h_a,h_s,entropy_bottleneck}.*`` and
    ``latent_codec.y.{context_prediction,entropy_parameters}.*``. ``CheckerboardLatentCodec.merge``
    concatenates (context, hyper), ``GaussianConditionalLatentCodec`` chunks (scales, means) and
    the default ``anchor_parity`` is "even" (anchors where row + col is even).
``mbt2018``
    CompressAI's flat Minnen 2018 models: ``JointAutoregressiveHierarchicalPriors`` (serial,
    concatenates (hyper, context)) and ``MeanScaleHyperprior`` (no context). The same layout with a
    checkerboard context (as in the public ``CheckerboardJointAutogressivev2``) concatenates
    (context, hyper) and puts anchors at odd row + col.
``cheng2020-flat``
    Public checkerboard implementations subclassing ``Cheng2020Anchor`` (``Cheng2020withCKBD``):
    flat keys with Cheng's residual-block ``g_a``, (context, hyper), (scales, means), odd anchors.

A bare ckbd ``state_dict`` (``entropy_bottleneck._matrices.*`` names) is read with ckbd's own
conventions. Every inferred convention can be overridden by keyword; the weights are permuted so
that the ckbd model, which concatenates (hyper, context) and chunks (scales, means), computes
exactly what the source model did.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ckbd.errors import ModelError
from ckbd.models.architectures import HyperpriorModel
from ckbd.models.config import PARITIES, ModelConfig
from ckbd.models.layers import checkerboard_kernel_mask, raster_kernel_mask
from ckbd.models.registry import ARCHITECTURES, build_model

#: Keys under which training scripts commonly nest the weights.
WRAPPER_KEYS = ("state_dict", "model", "network", "net", "model_state_dict")

#: Where CompressAI 1.2's latent-codec models (``HyperpriorLatentCodec`` holding a
#: ``HyperLatentCodec`` "hyper" and a ``CheckerboardLatentCodec`` "y") keep ckbd's modules. Reading
#: strips these prefixes (:data:`PREFIX_MAP`); :func:`to_compressai_state` adds them back.
LATENT_CODEC_MODULES = (
    ("latent_codec.hyper.", ("h_a.", "h_s.", "entropy_bottleneck.")),
    ("latent_codec.y.", ("context_prediction.", "entropy_parameters.")),
)

#: Foreign module prefixes -> ckbd module prefixes, tried in order (first match wins).
PREFIX_MAP = (
    ("latent_codec.z.", ""),  # newer CompressAI stores the hyper codec as ``z``
    ("latent_codec.h_a.", "h_a."),  # newer HyperpriorLatentCodec owns h_a / h_s itself
    ("latent_codec.h_s.", "h_s."),
    ("latent_codec.y.y.", ""),  # GaussianConditionalLatentCodec inside the checkerboard codec
    ("latent_codec.y.latent_codec.y.", ""),
    *((prefix, "") for prefix, _ in LATENT_CODEC_MODULES),  # after the longer ``latent_codec.y.*``
)

#: Entropy bottleneck parameter spellings: CompressAI < 1.2 (``_matrix0``), >= 1.2
#: (``matrices.0``) and ckbd (``_matrices.0``) -> ckbd's ParameterList names.
_EB_PARAM = re.compile(r"^entropy_bottleneck\.(_matrix|_bias|_factor|_?matrices\.|_?biases\.|_?factors\.)(\d+)$")
_EB_LISTS = {"matrix": "_matrices", "matrices": "_matrices", "bias": "_biases", "biases": "_biases",
             "factor": "_factors", "factors": "_factors"}
#: ckbd's ParameterList names -> CompressAI >= 1.2's, which are public (no leading underscore).
_EB_LISTS_COMPRESSAI = {ours: ours.lstrip("_") for ours in _EB_LISTS.values()}

#: Buffers CompressAI saves that ckbd recomputes (CDF tables, bounds, reparametrisation
#: pedestals, kernel masks, the aux-loss target), matched on the key's tail.
_RECOMPUTED = re.compile(
    r"(^|\.)(_quantized_cdf|_offset|_cdf_length|scale_table|scale_bound|pedestal|mask|target"
    r"|lower_bound\.bound|likelihood_lower_bound\.bound|lower_bound_scale\.bound)$"
)

CONCAT_ORDERS = ("hyper-ctx", "ctx-hyper")
CHUNK_ORDERS = ("scales-means", "means-scales")


@dataclass(frozen=True)
class Conventions:
    """How a source model wires its entropy parameters (what ckbd must permute or configure)."""

    layout: str
    arch: str
    concat: str = "hyper-ctx"
    chunks: str = "scales-means"
    parity: str = "even"


def import_compressai(
    raw: Mapping[str, Any],
    *,
    arch: str | None = None,
    anchor_parity: str | None = None,
    concat_order: str | None = None,
    chunk_order: str | None = None,
) -> HyperpriorModel:
    """Build the ckbd model equivalent to a foreign checkpoint (returned in eval mode).

    ``arch``/``anchor_parity`` override what is inferred; ``concat_order`` ("hyper-ctx" or
    "ctx-hyper") and ``chunk_order`` ("scales-means" or "means-scales") describe the source's
    entropy-parameter wiring when it differs from the layout's usual convention.
    """
    _check_choice("arch", arch, tuple(ARCHITECTURES))
    _check_choice("anchor_parity", anchor_parity, PARITIES)
    _check_choice("concat_order", concat_order, CONCAT_ORDERS)
    _check_choice("chunk_order", chunk_order, CHUNK_ORDERS)
    tensors = unwrap_state_dict(raw)
    state = rename_keys(tensors)
    conv = infer_conventions(state, arch, source=source_naming(tensors))
    conv = replace(
        conv,
        parity=anchor_parity or conv.parity,
        concat=concat_order or conv.concat,
        chunks=chunk_order or conv.chunks,
    )
    N, M = infer_channels(state)
    state = {k: v for k, v in state.items() if not _RECOMPUTED.search(k)}
    state = permute_entropy_parameters(state, conv)
    config = ModelConfig(arch=conv.arch, N=N, M=M, anchor_parity=conv.parity, eb_filters=infer_eb_filters(state))
    model = build_model(config)
    _check_fit(model, state, conv)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _check_choice(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ModelError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


# ---------------------------------------------------------------------------------------------
# Unwrapping and renaming


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and any(isinstance(v, Tensor) for v in obj.values())


def unwrap_state_dict(raw: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of a checkpoint, whether bare or nested under a usual key, without "module."."""
    state: Any = raw
    for _ in range(3):  # {"model": {"state_dict": ...}} exists in the wild
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not _is_state_dict(state):
        keys = ", ".join(list(map(str, raw))[:8])
        raise ModelError(f"checkpoint holds no weights (top-level keys: {keys or 'none'})")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    for prefix in ("module.", "_orig_mod."):  # DataParallel / torch.compile wrappers
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def rename_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Flatten latent-codec prefixes and normalise entropy-bottleneck parameter names."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = _strip_prefix(key)
        match = _EB_PARAM.match(new)
        if match:
            new = f"entropy_bottleneck.{_EB_LISTS[match.group(1).strip('_.')]}.{match.group(2)}"
        if new in out:
            raise ModelError(f"checkpoint has two tensors for {new} (one is {key})")
        out[new] = value
    return out


def _strip_prefix(key: str) -> str:
    for prefix, target in PREFIX_MAP:
        if key.startswith(prefix):
            return target + key[len(prefix):]
    return key


# ---------------------------------------------------------------------------------------------
# Inference


def infer_channels(state: Mapping[str, Tensor]) -> tuple[int, int]:
    """(N, M) from the analysis transform: its first layer has N outputs, its last M."""
    if "g_a.0.conv1.weight" in state:  # Cheng: residual blocks
        return int(state["g_a.0.conv1.weight"].shape[0]), int(state["g_a.6.weight"].shape[0])
    return int(state["g_a.0.weight"].shape[0]), int(state["g_a.6.weight"].shape[0])


def source_naming(tensors: Mapping[str, Tensor]) -> str:
    """What the original key names say before renaming erases it: "latent-codec", "ckbd" or "flat".

    Only ckbd spells the bottleneck's parameters ``_matrices.N``; only CompressAI's latent-codec
    models nest modules under ``latent_codec.``.
    """
    if any(k.startswith("latent_codec.") for k in tensors):
        return "latent-codec"
    if "entropy_bottleneck._matrices.0" in tensors:
        return "ckbd"
    return "flat"


def infer_eb_filters(state: Mapping[str, Tensor]) -> tuple[int, ...]:
    """Hidden widths of the factorized prior: matrix i maps filters[i-1] -> filters[i] channels."""
    count = 0
    while f"entropy_bottleneck._matrices.{count}" in state:
        count += 1
    if count < 1:
        return ModelConfig.eb_filters
    return tuple(int(state[f"entropy_bottleneck._matrices.{i}"].shape[1]) for i in range(count - 1))


def infer_conventions(state: Mapping[str, Tensor], arch: str | None, *, source: str = "flat") -> Conventions:
    """Which layout the (renamed) keys come from, hence the architecture and wiring conventions.

    ``source`` is :func:`source_naming` of the original keys, which renaming erases but which
    decides the concatenation order and anchor parity.
    """
    _require_backbone(state)
    cheng = "g_a.0.conv1.weight" in state
    has_context = "context_prediction.weight" in state and "entropy_parameters.0.weight" in state
    kind = context_kind(state) if has_context else None
    contradicts = arch not in (None, "mbt2018-mean") and (kind == "checkerboard") != arch.endswith("-ckbd")
    if kind is not None and contradicts:
        raise ModelError(f"the checkpoint's context mask is {kind}, which does not fit arch {arch}")
    if source == "ckbd":
        guess = _native_arch(cheng, has_context, kind)
        return Conventions("ckbd", arch or guess)
    if not has_context:  # a mean-scale hyperprior; a Cheng model without context fails to fit later
        layout, guess = ("cheng2020-flat", "cheng2020-ckbd") if cheng else ("mbt2018", "mbt2018-mean")
        return Conventions(layout, arch or guess)
    if source == "latent-codec":
        guess = "cheng2020-ckbd" if cheng else "mbt2018-ckbd"
        return Conventions("latent-codec", arch or guess, concat="ctx-hyper")
    if cheng:
        if kind == "serial":
            raise ModelError("serial (raster-scan) Cheng2020Anchor checkpoints are not supported; ckbd has no such arch")
        return Conventions("cheng2020-flat", arch or "cheng2020-ckbd", concat="ctx-hyper", parity="odd")
    chosen = arch or ("mbt2018-ckbd" if kind == "checkerboard" else "mbt2018")
    if chosen.endswith("-ckbd"):
        return Conventions("mbt2018", chosen, concat="ctx-hyper", parity="odd")
    return Conventions("mbt2018", chosen)


def _native_arch(cheng: bool, has_context: bool, kind: str | None) -> str:
    if cheng:
        return "cheng2020-ckbd"
    if not has_context:
        return "mbt2018-mean"
    return "mbt2018" if kind == "serial" else "mbt2018-ckbd"


def context_kind(state: Mapping[str, Tensor]) -> str | None:
    """"checkerboard" or "serial" from the saved mask, else from which taps are exactly zero.

    CompressAI multiplies the weight by its mask in place on every forward, so trained weights
    keep the mask's zero pattern even when the mask buffer itself was not saved.
    """
    masks = {"checkerboard": checkerboard_kernel_mask(5), "serial": raster_kernel_mask(5)}
    saved = state.get("context_prediction.mask")
    if saved is not None and saved.dim() == 4 and tuple(saved.shape[-2:]) == (5, 5):
        pattern = (saved[0, 0] != 0).float()
        for name, mask in masks.items():
            if torch.equal(pattern, mask):
                return name
        raise ModelError("context_prediction.mask is neither a checkerboard nor a raster-scan mask")
    weight = state.get("context_prediction.weight")
    if weight is None or weight.dim() != 4 or tuple(weight.shape[-2:]) != (5, 5) or not weight.any():
        return None
    fits = [name for name, mask in masks.items() if not (weight * (1 - mask)).any()]
    return fits[0] if len(fits) == 1 else None


def _require_backbone(state: Mapping[str, Tensor]) -> None:
    """Refuse anything without the transforms every supported layout has, naming what is missing."""
    needed = ["h_a.0.weight", "h_s.0.weight", "entropy_bottleneck.quantiles", "g_a.6.weight"]
    has_g_a = "g_a.0.weight" in state or "g_a.0.conv1.weight" in state
    missing = [k for k in needed if k not in state]
    if has_g_a and not missing:
        return
    if not has_g_a:
        missing.insert(0, "g_a.0.weight (or g_a.0.conv1.weight)")
    unexpected = [k for k in state if not k.startswith(("g_a.", "g_s.", "h_a.", "h_s.", "entropy_bottleneck.",
                                                         "gaussian_conditional.", "context_prediction.",
                                                         "entropy_parameters."))]
    raise ModelError(
        "not a recognised CompressAI-style checkpoint: missing expected keys "
        + ", ".join(missing)
        + (f"; unexpected keys: {_few(unexpected)}" if unexpected else "")
    )


def _few(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# ---------------------------------------------------------------------------------------------
# Weight permutations


def swap_halves(t: Tensor, dim: int) -> Tensor:
    """(a, b) -> (b, a) along ``dim``: both reorderings ckbd needs are swaps of equal halves."""
    a, b = t.chunk(2, dim=dim)
    return torch.cat((b, a), dim=dim)


def permute_entropy_parameters(state: dict[str, Tensor], conv: Conventions) -> dict[str, Tensor]:
    """Reorder input channels to (hyper, ctx) and output channels to (scales, means)."""
    state = dict(state)
    if "entropy_parameters.0.weight" in state:
        if conv.concat == "ctx-hyper":
            state["entropy_parameters.0.weight"] = swap_halves(state["entropy_parameters.0.weight"], 1)
        last = _last_conv(state, "entropy_parameters")
    else:  # mean-scale hyperprior: h_s itself yields (scales, means)
        last = _last_conv(state, "h_s")
    if conv.chunks == "means-scales" and last is not None:
        for suffix in ("weight", "bias"):
            key = f"{last}.{suffix}"
            if key in state:
                state[key] = swap_halves(state[key], 0)
    return state


def to_compressai_state(state: Mapping[str, Tensor], conv: Conventions) -> dict[str, Tensor]:
    """ckbd weights -> the key names and channel orders of the CompressAI (>= 1.2) model ``conv`` describes.

    The inverse of :func:`import_compressai`'s renaming (:data:`LATENT_CODEC_MODULES`, the bottleneck's
    list names) and permutation, which is a swap of equal halves and so its own inverse. Buffers that
    CompressAI recomputes are passed through: the caller loads non-strictly and rebuilds them.
    """
    out: dict[str, Tensor] = {}
    for key, value in permute_entropy_parameters(dict(state), conv).items():
        match = _EB_PARAM.match(key)
        if match:
            ours = _EB_LISTS[match.group(1).strip("_.")]
            key = f"entropy_bottleneck.{_EB_LISTS_COMPRESSAI[ours]}.{match.group(2)}"
        if conv.layout == "latent-codec":
            key = next((prefix + key for prefix, modules in LATENT_CODEC_MODULES if key.startswith(modules)), key)
        out[key] = value
    return out


def _last_conv(state: Mapping[str, Tensor], module: str) -> str | None:
    """Name of the highest-indexed layer of a Sequential that has a weight."""
    indices = [int(m.group(1)) for k in state if (m := re.match(rf"^{module}\.(\d+)\.weight$", k))]
    return f"{module}.{max(indices)}" if indices else None


def _check_fit(model: HyperpriorModel, state: Mapping[str, Tensor], conv: Conventions) -> None:
    """Raise ModelError naming missing/unexpected/mis-shaped keys instead of torch's RuntimeError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        return
    parts = [f"checkpoint ({conv.layout} layout) does not fit {model.config.arch} "
             f"(N={model.config.N}, M={model.config.M})"]
    if missing:
        parts.append(f"missing keys: {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {_few(shapes, 3)}")
    raise ModelError("; ".join(parts))

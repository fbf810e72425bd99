"""The JSON sidecar written beside every engine, and the check that an engine still fits.

A TensorRT engine only runs on the TensorRT version and GPU architecture it was built for, and it
silently encodes whatever ONNX graph it came from. The sidecar records those facts so that a stale
engine fails on load with the exact ``ckbd build`` command that replaces it, instead of crashing
inside TensorRT or, worse, decoding with the wrong weights. Everything here is pure Python.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ckbd.errors import ModelError, ModelMismatchError
from ckbd.runtime.atomic import atomic_write_bytes
from ckbd.runtime.manifest import GraphEntry, Manifest

METADATA_VERSION = 1
ENGINES_DIR = "engines"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineMetadata:
    """What an engine was built from and for."""

    stage: str
    precision: str  # the precision the engine set was built for (its file name)
    graph_precision: str  # the precision of the ONNX graph actually compiled (see precision policy)
    source_file: str  # ONNX file, relative to the model directory
    source_sha256: str
    engine_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"
    profile: dict[str, list[int]]  # {"min": [H, W], "opt": [H, W], "max": [H, W]}, image pixels
    forced_precision: bool = False
    model_fingerprint: str = ""
    format_version: int = METADATA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: Path | str = "sidecar") -> EngineMetadata:
        try:
            raw = json.loads(text)
            meta = cls(**raw)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"cannot read engine metadata {source}: {exc}") from None
        if meta.format_version != METADATA_VERSION:
            raise ModelError(
                f"engine metadata {source} has format {meta.format_version}, "
                f"this ckbd reads {METADATA_VERSION}"
            )
        return meta


def engine_path(model_dir: Path, stage: str, precision: str) -> Path:
    """``DIR/engines/<stage>.<precision>.engine``."""
    return Path(model_dir) / ENGINES_DIR / f"{stage}.{precision}.engine"


def sidecar_path(engine: Path) -> Path:
    """The metadata file of an engine: same name, ``.json`` instead of ``.engine``."""
    return engine.with_suffix(".json")


def write_metadata(engine: Path, meta: EngineMetadata) -> None:
    atomic_write_bytes(sidecar_path(engine), meta.to_json().encode())


def read_metadata(engine: Path) -> EngineMetadata:
    path = sidecar_path(engine)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError(f"cannot read engine metadata {path}: {exc.strerror or exc}") from None
    return EngineMetadata.from_json(text, path)


def graph_entry(manifest: Manifest, stage: str, precision: str) -> GraphEntry | None:
    """The manifest entry of ``stage`` at exactly ``precision`` (no fallback to fp32)."""
    if precision == "fp32":
        return manifest.graphs.get(stage)
    return manifest.variants.get(precision, {}).get(stage)


def rebuild_command(
    model_dir: Path,
    precision: str,
    profile: dict[str, list[int]] | None = None,
    forced_precision: bool = False,
) -> str:
    """The ``ckbd build`` command line that (re)creates the engines of ``model_dir``."""
    parts = ["ckbd", "build", str(model_dir), "--precision", precision]
    for key in ("min", "opt", "max"):
        size = (profile or {}).get(key)
        if size and len(size) == 2:
            parts += [f"--{key}-size", f"{size[0]}x{size[1]}"]
    if forced_precision:
        parts.append("--force-precision")
    return shlex.join(parts)


@dataclass(frozen=True)
class Expected:
    """What the loading process needs from an engine."""

    stage: str
    precision: str
    tensorrt_version: str
    compute_capability: str
    source_sha256: str  # the manifest's hash of the graph this engine must come from
    engine_sha256: str | None = None  # hash of the engine bytes read, when known


def mismatches(meta: EngineMetadata, expected: Expected) -> list[str]:
    """Human-readable reasons why ``meta`` does not fit ``expected``; empty when it fits."""
    reasons = []
    if meta.stage != expected.stage or meta.precision != expected.precision:
        reasons.append(
            f"it is the {meta.stage}/{meta.precision} engine, "
            f"not {expected.stage}/{expected.precision}"
        )
    if meta.tensorrt_version != expected.tensorrt_version:
        reasons.append(
            f"built with TensorRT {meta.tensorrt_version}, running TensorRT "
            f"{expected.tensorrt_version}"
        )
    if meta.compute_capability != expected.compute_capability:
        reasons.append(
            f"built for compute capability {meta.compute_capability} ({meta.gpu_name}), "
            f"this GPU has {expected.compute_capability}"
        )
    if meta.source_sha256 != expected.source_sha256:
        reasons.append(
            f"built from a graph with sha256 {meta.source_sha256[:12]}…, the manifest lists "
            f"{expected.source_sha256[:12]}… (the model was re-exported)"
        )
    if expected.engine_sha256 is not None and meta.engine_sha256 != expected.engine_sha256:
        reasons.append("the engine file does not match its metadata (interrupted or mixed copy)")
    return reasons


def check_compatible(
    meta: EngineMetadata, expected: Expected, model_dir: Path, engine: Path
) -> None:
    """Raise :class:`ModelMismatchError` naming every mismatch and the command that fixes it."""
    reasons = mismatches(meta, expected)
    if reasons:
        command = rebuild_command(
            model_dir, expected.precision, meta.profile, meta.forced_precision
        )
        raise ModelMismatchError(
            f"engine {engine} cannot be used: {'; '.join(reasons)}. Rebuild it with: {command}"
        )


def missing_engine_error(
    model_dir: Path, stage: str, precision: str, path: Path | None = None
) -> ModelError:
    """The error for an engine that was never built, with the command that builds the set.

    ``path`` is the file looked for when it is not the set's own (a shared fp32 engine).
    """
    path = path or engine_path(model_dir, stage, precision)
    return ModelError(
        f"no TensorRT engine {path} (or its metadata); build the engines with: "
        f"{rebuild_command(model_dir, precision)}"
    )

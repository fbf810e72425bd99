"""A fake model directory and engine metadata, shared by the engine-tooling and TensorRT-runner tests.

The graphs are placeholder bytes with real hashes: nothing here parses ONNX or needs TensorRT.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from gpu_fakes import write_tables

from ckbd.engines.metadata import EngineMetadata, engine_path, write_metadata
from ckbd.engines.profiles import DEFAULT_PROFILE
from ckbd.runtime.manifest import GraphEntry, Manifest
from ckbd.runtime.stages import ALL_STAGES, LATENT_SYNTHESIS

M, N = 192, 128


def _entry(model_dir: Path, name: str, content: bytes) -> GraphEntry:
    (model_dir / name).write_bytes(content)
    return GraphEntry(file=name, sha256=hashlib.sha256(content).hexdigest())


def fake_model_dir(tmp_path: Path) -> Path:
    """A model directory with (fake) graphs for every stage and an fp16 latent-synthesis variant."""
    folder = tmp_path / "model dir"
    folder.mkdir()
    graphs = {
        stage: _entry(folder, f"{stage}.onnx", f"graph {stage}".encode()) for stage in ALL_STAGES
    }
    fp16 = {LATENT_SYNTHESIS: _entry(folder, "latent_synthesis.fp16.onnx", b"fp16 graph")}
    manifest = Manifest(
        arch="mbt2018-ckbd",
        N=N,
        M=M,
        anchor_parity="even",
        fingerprint="ab" * 16,
        scale_table=[0.11, 0.2],
        opset=17,
        graphs=graphs,
        variants={"fp16": fp16},
    )
    manifest.save(folder)
    write_tables(folder, N, manifest.scale_table)
    return folder


def engine_metadata(**changes: Any) -> EngineMetadata:
    """Metadata of an fp16 latent-synthesis engine built on an H100; ``changes`` override fields."""
    fields: dict[str, Any] = dict(
        stage=LATENT_SYNTHESIS,
        precision="fp16",
        graph_precision="fp16",
        source_file="latent_synthesis.fp16.onnx",
        source_sha256="1" * 64,
        engine_sha256="2" * 64,
        tensorrt_version="10.13.0.35",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profile=DEFAULT_PROFILE.to_dict(),
    )
    fields.update(changes)
    return EngineMetadata(**fields)


def install_engine(model_dir: Path, stage: str, plan: bytes, **changes: Any) -> Path:
    """Write an fp32 engine file ``plan`` and a sidecar that matches the model (unless ``changes``)."""
    manifest = Manifest.load(model_dir)
    engine = engine_path(model_dir, stage, "fp32")
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(plan)
    fields: dict[str, Any] = dict(
        stage=stage,
        precision="fp32",
        graph_precision="fp32",
        source_file=manifest.graphs[stage].file,
        source_sha256=manifest.graphs[stage].sha256,
        engine_sha256=hashlib.sha256(plan).hexdigest(),
        compute_capability="9.0",
        gpu_name="Fake GPU",
    )
    fields.update(changes)
    write_metadata(engine, engine_metadata(**fields))
    return engine

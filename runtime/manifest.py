"""The model directory's manifest: what was exported, from what, and how to code with it.

A model directory holds one ONNX graph per stage, the entropy tables (``y_tables.npz``,
``z_tables.npz``) and
``manifest.json``. The manifest is validated on load so that a half-copied or hand-edited
directory fails with a clear message instead of producing a wrong image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ckbd.errors import ModelError

MANIFEST_NAME = "manifest.json"
Y_TABLES_NAME = "y_tables.npz"
Z_TABLES_NAME = "z_tables.npz"
FORMAT_VERSION = 1

#: Architecture ids as carried in bitstreams; never renumber.
ARCH_IDS = {"mbt2018-ckbd": 1, "cheng2020-ckbd": 2, "mbt2018": 3, "mbt2018-mean": 4}


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph: its file (relative to the model dir), content hash and precision."""

    file: str
    sha256: str
    precision: str = "fp32"


@dataclass
class Manifest:
    arch: str
    N: int
    M: int
    anchor_parity: str  # "even": anchors where (row + col) is even
    fingerprint: str  # hex; identifies weights + config + tables, carried by every bitstream
    scale_table: list[float]
    opset: int
    graphs: dict[str, GraphEntry] = field(default_factory=dict)
    # Alternative precisions of a stage, e.g. {"int8": {"latent_synthesis": GraphEntry(...)}}.
    variants: dict[str, dict[str, GraphEntry]] = field(default_factory=dict)
    # Entropy tables (EntropyTables .npz): Gaussian scale-table bins for y, per-channel for z.
    y_tables: str = Y_TABLES_NAME
    z_tables: str = Z_TABLES_NAME
    # sha256 of each table file by name, checked on load like the graphs' (absent in older exports).
    tables_sha256: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # How the index-deciding graphs compute: "integer" (exact, bit-identical on every backend, see
    # docs/DETERMINISM.md) or "float" (decodes only where the encoder's float results repeat).
    entropy_params: str = "float"
    # The integer path's spec (runtime.intparams), present exactly when entropy_params is "integer".
    integer_params: GraphEntry | None = None
    # Known-answer vectors of the integer stages (runtime.known_answers): what a runner other than
    # ONNX Runtime's CPU provider must reproduce before it computes indexes (integer path only).
    known_answers: GraphEntry | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def arch_id(self) -> int:
        return ARCH_IDS[self.arch]

    def graph_path(self, model_dir: Path, stage: str, precision: str = "fp32") -> Path:
        """The file to load for ``stage``, preferring a variant of ``precision`` when listed.

        Stages without a variant run in fp32 (the parameter graphs always do), but a precision the
        model has no graphs for at all is an error rather than a silent fp32 run.
        """
        return model_dir / self.graph_entry(model_dir, stage, precision).file

    def graph_entry(self, model_dir: Path, stage: str, precision: str = "fp32") -> GraphEntry:
        """The manifest entry :meth:`graph_path` names (file and sha256)."""
        if precision != "fp32" and precision not in self.variants:
            hint = "ckbd calibrate" if precision == "int8" else "ckbd export --fp16"
            raise ModelError(f"model directory {model_dir} has no {precision} graphs; make them with {hint}")
        entry = self.variants.get(precision, {}).get(stage) if precision != "fp32" else None
        entry = entry or self.graphs.get(stage)
        if entry is None:
            raise ModelError(f"model directory {model_dir} has no '{stage}' graph")
        return entry

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, model_dir: Path) -> None:
        from ckbd.runtime.atomic import atomic_write_bytes

        atomic_write_bytes(model_dir / MANIFEST_NAME, self.to_json().encode())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        try:
            graphs = {k: GraphEntry(**v) for k, v in raw.pop("graphs", {}).items()}
            variants = {
                p: {k: GraphEntry(**v) for k, v in stages.items()}
                for p, stages in raw.pop("variants", {}).items()
            }
            integer = raw.pop("integer_params", None)
            answers = raw.pop("known_answers", None)
            manifest = cls(graphs=graphs, variants=variants,
                           integer_params=GraphEntry(**integer) if integer else None,
                           known_answers=GraphEntry(**answers) if answers else None, **raw)
        except TypeError as exc:
            raise ModelError(f"manifest has unexpected or missing fields: {exc}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise ModelError(
                f"manifest format {manifest.format_version} is not supported "
                f"(this ckbd reads {FORMAT_VERSION}); re-export the model"
            )
        if manifest.arch not in ARCH_IDS:
            raise ModelError(f"unknown architecture '{manifest.arch}' in manifest")
        if manifest.entropy_params not in ("integer", "float"):
            raise ModelError(f"unknown entropy-parameter path '{manifest.entropy_params}' in manifest")
        if (manifest.entropy_params == "integer") != (manifest.integer_params is not None):
            raise ModelError("manifest's entropy_params and integer_params disagree; re-export the model")
        if manifest.known_answers is not None and manifest.integer_params is None:
            raise ModelError("manifest lists known-answer vectors but no integer path; re-export the model")
        return manifest

    @classmethod
    def load(cls, model_dir: Path) -> Manifest:
        path = Path(model_dir) / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"{model_dir} is not a model directory (no {MANIFEST_NAME})") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from None
        return cls.from_dict(raw)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
